"""A tenant's side of consortia (config/urls_tenant.py): its agreements."""

from django.urls import path

from exports.pooling import api

urlpatterns = [
    path("consortia/", api.TenantConsortiaView.as_view(), name="api-tenant-consortia"),
    path("consortia/<slug:slug>/agreement/", api.TenantAgreementView.as_view(), name="api-tenant-agreement"),
]
