"""URLs served on the bare BASE_DOMAIN: landing page and the operator console."""

from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from exports.pooling import views as pooling_views
from tenants import views

admin.site.site_header = _("Suifang operator console")

urlpatterns = [
    path("", views.public_home, name="public-home"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    # Consortium members (exports.pooling): pooled, de-identified outputs only.
    path("consortia/", pooling_views.consortia_page, name="consortia"),
    path("consortia/login/", views.login_view, {"consortium": True}, name="consortium-login"),
    path("consortia/logout/", pooling_views.consortia_logout, name="consortium-logout"),
    path("consortia/<slug:slug>/", pooling_views.consortium_page, name="consortium"),
    path("consortia/<slug:slug>/runs/", pooling_views.consortium_run_start, name="consortium-run-start"),
    path("api/v1/consortia/", include("exports.pooling.urls")),
]

handler400 = "config.views.bad_request"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
handler403 = "config.views.forbidden"
