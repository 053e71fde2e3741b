from django.urls import path

from ecrf.api import views

urlpatterns = [
    path("studies/<int:study_id>/forms/", views.StudyFormsView.as_view(), name="api-study-forms"),
    path("studies/<int:study_id>/forms/redcap/", views.RedcapDictionaryView.as_view(), name="api-study-redcap"),
    path("forms/<int:form_id>/versions/", views.FormVersionsView.as_view(), name="api-form-versions"),
    path("forms/<int:form_id>/publish/", views.FormPublishView.as_view(), name="api-form-publish"),
    path("tasks/<int:task_id>/forms/<int:form_id>/entry/", views.EntryView.as_view(), name="api-entry"),
    path("tasks/<int:task_id>/forms/<int:form_id>/files/", views.EntryFileUploadView.as_view(),
         name="api-entry-files"),
    path("files/<str:file_id>/", views.EntryFileView.as_view(), name="api-entry-file"),
    path("entries/<int:entry_id>/queries/", views.EntryQueriesView.as_view(), name="api-entry-queries"),
    path("entries/<int:entry_id>/verify/", views.EntryVerifyView.as_view(), name="api-entry-verify"),
    path("entries/<int:entry_id>/lock/", views.EntryLockView.as_view(), {"action": "lock"}, name="api-entry-lock"),
    path("entries/<int:entry_id>/unlock/", views.EntryLockView.as_view(), {"action": "unlock"},
         name="api-entry-unlock"),
    path("queries/", views.QueryListView.as_view(), name="api-queries"),
    path("queries/report/", views.QueryReportView.as_view(), name="api-query-report"),
    *[path(f"queries/<int:query_id>/{action}/", views.QueryActView.as_view(), {"action": action},
           name=f"api-query-{action}") for action in ("answer", "close", "reopen")],
    path("subjects/<int:subject_id>/casebook/lock/", views.CasebookLockView.as_view(), {"action": "lock"},
         name="api-casebook-lock"),
    path("subjects/<int:subject_id>/casebook/unlock/", views.CasebookLockView.as_view(), {"action": "unlock"},
         name="api-casebook-unlock"),
    path("subjects/<int:subject_id>/signatures/", views.SignaturesView.as_view(), name="api-signatures"),
    path("subjects/<int:subject_id>/audit/", views.SubjectAuditView.as_view(), name="api-subject-audit"),
]
urlpatterns.append(path("tasks/<int:task_id>/forms/<int:form_id>/epro-link/", views.EproLinkView.as_view(),
                        name="api-epro-link"))
