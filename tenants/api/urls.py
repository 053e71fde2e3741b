from django.urls import path

from tenants.api import views

urlpatterns = [
    path("me/", views.MeView.as_view(), name="api-me"),
    path("tenant/", views.TenantView.as_view(), name="api-tenant"),
    path("members/", views.MemberListView.as_view(), name="api-members"),
    path("members/<int:membership_id>/", views.MemberDetailView.as_view(), name="api-member"),
    path("members/<int:membership_id>/resend-invitation/", views.MemberInvitationResendView.as_view(),
         name="api-member-resend-invitation"),
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("auth/token/current/", views.TokenRevokeView.as_view(), name="api-token-current"),
]
