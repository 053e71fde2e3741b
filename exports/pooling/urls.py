"""Consortium API on the public host (config/urls_public.py)."""

from django.urls import path

from exports.pooling import api

urlpatterns = [
    path("", api.ConsortiaView.as_view(), name="api-consortia"),
    path("<slug:slug>/runs/", api.ConsortiumRunsView.as_view(), name="api-consortium-runs"),
    path("<slug:slug>/runs/<int:run_id>/", api.PooledRunView.as_view(), name="api-pooled-run"),
    path("<slug:slug>/runs/<int:run_id>/files/<str:name>/", api.PooledFileView.as_view(), name="api-pooled-file"),
]
