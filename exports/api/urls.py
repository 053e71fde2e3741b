from django.urls import path

from exports.api import views

urlpatterns = [
    path("studies/<int:study_id>/exports/", views.StudyExportsView.as_view(), name="api-study-exports"),
    path("exports/<int:job_id>/", views.ExportJobView.as_view(), name="api-export"),
    path("exports/<int:job_id>/files/<int:file_id>/link/", views.ExportFileLinkView.as_view(),
         name="api-export-file-link"),
    path("exports/download/<str:token>/", views.ExportDownloadView.as_view(), name="api-export-download"),
]
