from django.urls import path

from . import views

app_name = "billing"
urlpatterns = [
    path("billing/stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    # Customers
    path("customer/billing/", views.customer_billing, name="customer-billing"),
    path("customer/billing/receipts/<int:bid_id>/", views.receipt, name="receipt"),
    path("customer/billing/topup/", views.topup, name="topup"),
    path("customer/billing/refund-balance/", views.balance_refund, name="balance-refund"),
    # Owners
    path("owner/earnings/", views.owner_earnings, name="owner-earnings"),
    path("owner/earnings.csv", views.owner_earnings_csv, name="owner-earnings-csv"),
    path("owner/payouts/", views.owner_payouts, name="owner-payouts"),
    path("owner/payouts/onboard/", views.owner_onboard, name="owner-onboard"),
    path("owner/payouts/return/", views.owner_onboard_return, name="owner-onboard-return"),
    # Staff
    path("staff/finance/", views.staff_finance, name="staff-finance"),
]
