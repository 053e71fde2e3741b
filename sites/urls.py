"""Site-onboarding pages, included under "sites/" in config/urls_tenant.py."""

from django.urls import path

from sites import views

urlpatterns = [
    path("", views.site_list_view, name="sites"),
    path("<int:site_id>/", views.site_detail_view, name="site"),
    path("<int:site_id>/checklist/", views.site_checklist_view, name="site-checklist"),
    path("<int:site_id>/activate/", views.site_activate_view, name="site-activate"),
    path("<int:site_id>/close/", views.site_close_view, name="site-close"),
    path("<int:site_id>/staff/", views.site_staff_assign_view, name="site-staff-assign"),
    path("<int:site_id>/staff/<int:staff_id>/remove/", views.site_staff_remove_view, name="site-staff-remove"),
]
