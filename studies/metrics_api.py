"""Follow-up metrics API: GET metrics/?study=<id>&site=<id>, scoped by the member's sites.

Include under "api/v1/" in config/urls_tenant.py:
    path("api/v1/", include("studies.metrics_api")),
"""

from __future__ import annotations

from django.urls import path
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.permissions import IsTenantMember, request_membership
from config.errors import NotFound
from sites import selectors as site_selectors
from studies import selectors
from studies.metrics import followup_metrics


class MetricsQuerySerializer(serializers.Serializer):
    study = serializers.IntegerField(min_value=1, required=False)
    site = serializers.IntegerField(min_value=1, required=False)


class FollowUpMetricsView(APIView):
    permission_classes = [IsTenantMember]

    @extend_schema(parameters=[MetricsQuerySerializer],
                   responses={200: OpenApiResponse(description="overall, by_site, by_event and enrolment")},
                   summary="Follow-up metrics of the studies and sites I may see")
    def get(self, request: Request) -> Response:
        query = MetricsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        membership = request_membership(request)
        study_id = query.validated_data.get("study")
        site_id = query.validated_data.get("site")
        if study_id is not None and selectors.study_get(membership=membership, study_id=study_id) is None:
            raise NotFound("not_found", _("No such study."))
        if site_id is not None and site_selectors.site_get(membership=membership, site_id=site_id) is None:
            raise NotFound("not_found", _("No such site, or it is not one of yours."))
        return Response(followup_metrics(membership=membership, study_id=study_id, site_id=site_id))


urlpatterns = [
    path("metrics/", FollowUpMetricsView.as_view(), name="api-metrics"),
]
