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
    path("studies/<int:study_id>/reminder-rules/", views.ReminderRuleListView.as_view(),
         name="api-study-reminder-rules"),
    path("reminder-rules/<int:rule_id>/", views.ReminderRuleDetailView.as_view(), name="api-reminder-rule"),
    path("subjects/", views.SubjectListView.as_view(), name="api-subjects"),
    path("subjects/<int:subject_id>/", views.SubjectDetailView.as_view(), name="api-subject"),
    path("subjects/<int:subject_id>/status/", views.SubjectStatusView.as_view(), name="api-subject-status"),
    path("subjects/<int:subject_id>/unscheduled-visits/", views.UnscheduledVisitView.as_view(),
         name="api-subject-unscheduled"),
    path("studies/<int:study_id>/imports/", views.SubjectImportView.as_view(), name="api-study-imports"),
    path("imports/<str:job_id>/", views.ImportJobView.as_view(), name="api-import-job"),
    path("tasks/reassign/", views.TaskReassignView.as_view(), name="api-tasks-reassign"),
    path("worklist/", views.WorklistView.as_view(), name="api-worklist"),
    path("tasks/<int:task_id>/attempts/", views.ContactAttemptView.as_view(), name="api-task-attempts"),
    path("tasks/<int:task_id>/complete/", views.TaskCompleteView.as_view(), name="api-task-complete"),
]
