from django.urls import path

from studies.api import views

urlpatterns = [
    path("studies/", views.StudyListView.as_view(), name="api-studies"),
    path("studies/<int:study_id>/", views.StudyDetailView.as_view(), name="api-study"),
    path("studies/<int:study_id>/activate/", views.StudyActivateView.as_view(), name="api-study-activate"),
    path("studies/<int:study_id>/schedule/", views.ScheduleView.as_view(), name="api-study-schedule"),
    path("studies/<int:study_id>/schedule/preview/", views.SchedulePreviewView.as_view(),
         name="api-study-schedule-preview"),
    path("studies/<int:study_id>/schedule/publish/", views.SchedulePublishView.as_view(),
         name="api-study-schedule-publish"),
    path("subjects/", views.SubjectListView.as_view(), name="api-subjects"),
    path("subjects/<int:subject_id>/", views.SubjectDetailView.as_view(), name="api-subject"),
    path("worklist/", views.WorklistView.as_view(), name="api-worklist"),
    path("tasks/<int:task_id>/attempts/", views.ContactAttemptView.as_view(), name="api-task-attempts"),
    path("tasks/<int:task_id>/complete/", views.TaskCompleteView.as_view(), name="api-task-complete"),
]
