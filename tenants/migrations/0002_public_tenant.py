"""The public schema's own Tenant row and its Domain (the bare BASE_DOMAIN), which
django-tenants needs to route the public site. `migrate_tenants` keeps the domain in
step with BASE_DOMAIN afterwards (tenants.services.public_tenant_ensure)."""

from django.conf import settings
from django.db import migrations


def create_public_tenant(apps, schema_editor):
    Tenant = apps.get_model("tenants", "Tenant")
    Domain = apps.get_model("tenants", "Domain")
    tenant, _ = Tenant.objects.get_or_create(
        schema_name="public",
        defaults={"name": "Suifang", "slug": "public", "kind": "other", "status": "active",
                  "time_zone": "UTC", "default_language": "zh-hans"},
    )
    Domain.objects.get_or_create(domain=settings.BASE_DOMAIN, defaults={"tenant": tenant, "is_primary": True})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_public_tenant, migrations.RunPython.noop)]
