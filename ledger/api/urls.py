from django.urls import path

from ledger.api.views import AccountDetailView, AccountListView, AccountStatementView, TransactionReverseView

app_name = "ledger-api"

urlpatterns = [
    path("accounts/", AccountListView.as_view(), name="account-list"),
    path("accounts/<str:code>/", AccountDetailView.as_view(), name="account-detail"),
    path("accounts/<str:code>/statement/", AccountStatementView.as_view(), name="account-statement"),
    path(
        "transactions/<int:transaction_id>/reverse/",
        TransactionReverseView.as_view(),
        name="transaction-reverse",
    ),
]
