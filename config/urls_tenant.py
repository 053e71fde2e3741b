"""URLs served on a tenant host (<slug>.<BASE_DOMAIN>)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from studies import dashboard_views
from studies import views as study_views
from tenants import views

urlpatterns = [
    # The API first, under one prefix: an API request is resolved without trying every
    # page's pattern, and a page request skips the API with one prefix check. Data entry
    # first inside it (its save is the busiest request; no other API route matches its
    # paths: tests/test_urls.py resolves every named route back to itself).
    path("api/v1/", include([
        path("", include("ecrf.api.urls")),
        path("", include("tenants.api.urls")),
        path("sites/", include("sites.api.urls")),
        path("", include("studies.api.urls")),
        path("", include("studies.metrics_api")),
        path("", include("exports.api.urls")),
        path("", include("exports.pooling.tenant_urls")),
    ])),
    path("", views.home, name="home"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("members/", views.members_view, name="members"),
    path("worklist/", study_views.worklist_view, name="worklist"),
    path("subjects/<int:subject_id>/", study_views.subject_view, name="subject"),
    path("subjects/<int:subject_id>/unscheduled/", study_views.subject_unscheduled_visit_view,
         name="subject-unscheduled"),
    path("subjects/<int:subject_id>/status/", study_views.subject_status_view, name="subject-status"),
    path("subjects/import/", study_views.subject_import_view, name="subject-import"),
    path("subjects/import/<str:job_id>/", study_views.subject_import_job_view, name="subject-import-job"),
    path("tasks/<int:task_id>/attempts/", study_views.contact_attempt_view, name="contact-attempt"),
    path("sites/", include("sites.urls")),
    path("", include("exports.urls")),
    path("consortia/", include("exports.pooling.tenant_page_urls")),
    path("dashboard/", dashboard_views.dashboard_view, name="dashboard"),
    path("", include("ecrf.urls")),
    path("members/<int:membership_id>/resend-invitation/", views.member_resend_invitation_view,
         name="member-resend-invitation"),
    path("invite/accept/", views.invitation_accept_view, name="invitation-accept"),
    path("invite/<str:token>/", views.invitation_link_view, name="invitation-link"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]

handler400 = "config.views.bad_request"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
handler403 = "config.views.forbidden"
