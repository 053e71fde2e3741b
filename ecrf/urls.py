"""Pages of the eCRF on a tenant host (the JSON API is ecrf/api/urls.py)."""

from django.urls import path

from ecrf import views

urlpatterns = [
    path("visits/<int:task_id>/forms/<int:form_id>/", views.entry_view, name="ecrf-entry"),
    path("visits/<int:task_id>/forms/<int:form_id>/queries/", views.entry_queries_view, name="ecrf-entry-queries"),
    path("visits/<int:task_id>/forms/<int:form_id>/queries/<int:query_id>/<str:action>/", views.query_act_view,
         name="ecrf-query-act"),
    path("visits/<int:task_id>/forms/<int:form_id>/queries/raise/", views.query_raise_view, name="ecrf-query-raise"),
    path("visits/<int:task_id>/forms/<int:form_id>/verify/", views.entry_verify_view, name="ecrf-entry-verify"),
    path("visits/<int:task_id>/forms/<int:form_id>/lock/", views.entry_lock_view, {"action": "lock"},
         name="ecrf-entry-lock"),
    path("visits/<int:task_id>/forms/<int:form_id>/unlock/", views.entry_lock_view, {"action": "unlock"},
         name="ecrf-entry-unlock"),
    path("subjects/<int:subject_id>/sign/", views.casebook_sign_view, name="ecrf-sign"),
    path("subjects/<int:subject_id>/casebook/lock/", views.casebook_lock_view, {"action": "lock"},
         name="ecrf-casebook-lock"),
    path("subjects/<int:subject_id>/casebook/unlock/", views.casebook_lock_view, {"action": "unlock"},
         name="ecrf-casebook-unlock"),
    path("subjects/<int:subject_id>/audit/", views.audit_view, name="ecrf-audit"),
    path("queries/", views.queries_view, name="ecrf-queries"),
    path("epro/thanks/", views.epro_thanks_view, name="ecrf-epro-thanks"),
    path("epro/<str:token>/", views.epro_view, name="ecrf-epro"),
]
