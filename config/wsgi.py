import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.prod")
application = get_wsgi_application()

# Django imports the URL confs (and with them every view module) on the first request
# that resolves a path: each gunicorn worker's first request took ~100 ms more, and the
# modules were loaded after the fork, unshared. Loading them here runs once, in the
# master (preload_app), before gc.freeze() in infra/gunicorn.conf.py.
for _urlconf in {settings.ROOT_URLCONF, getattr(settings, "PUBLIC_SCHEMA_URLCONF", settings.ROOT_URLCONF)}:
    get_resolver(_urlconf).url_patterns  # noqa: B018 (the property loads the module)
