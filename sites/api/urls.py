from django.urls import path

from sites.api import views

urlpatterns = [
    path("", views.SiteListView.as_view(), name="api-sites"),
    path("<int:site_id>/", views.SiteDetailView.as_view(), name="api-site"),
    path("<int:site_id>/checklist/", views.SiteChecklistView.as_view(), name="api-site-checklist"),
    path("<int:site_id>/activate/", views.SiteActivateView.as_view(), name="api-site-activate"),
    path("<int:site_id>/close/", views.SiteCloseView.as_view(), name="api-site-close"),
    path("<int:site_id>/staff/", views.SiteStaffView.as_view(), name="api-site-staff"),
]
