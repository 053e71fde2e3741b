"""Export pages, included at the root of config/urls_tenant.py."""

from django.urls import path

from exports import views

urlpatterns = [
    path("exports/", views.exports_index_view, name="exports"),
    path("studies/<int:study_id>/exports/", views.study_exports_view, name="study-exports"),
    path("exports/<int:job_id>/", views.export_job_view, name="export-job"),
    path("exports/<int:job_id>/retry/", views.export_retry_view, name="export-retry"),
]
