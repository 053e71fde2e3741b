"""The tenant's consortium pages (config/urls_tenant.py, under consortia/); the JSON
counterpart is exports.pooling.tenant_urls."""

from django.urls import path

from exports.pooling import tenant_views

urlpatterns = [
    path("", tenant_views.tenant_consortia_view, name="tenant-consortia"),
    path("<slug:slug>/", tenant_views.tenant_consortium_view, name="tenant-consortium"),
    path("<slug:slug>/withdraw/", tenant_views.tenant_withdraw_view, name="tenant-consortium-withdraw"),
]
