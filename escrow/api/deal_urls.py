"""URLs of the escrow deals API, mounted at /api/v1/escrow/."""

from django.urls import path

from escrow.api.deals import DealApproveView, DealCancelView, DealDetailView, DealListCreateView, DealReleaseView

app_name = "escrow-deals-api"

urlpatterns = [
    path("deals/", DealListCreateView.as_view(), name="deal-list"),
    path("deals/<int:deal_id>/", DealDetailView.as_view(), name="deal-detail"),
    path("deals/<int:deal_id>/release/", DealReleaseView.as_view(), name="deal-release"),
    path("deals/<int:deal_id>/cancel/", DealCancelView.as_view(), name="deal-cancel"),
    path("deals/<int:deal_id>/approve/", DealApproveView.as_view(), name="deal-approve"),
]
