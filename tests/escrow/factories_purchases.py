"""Test data for purchases: a catalogue service with prices, buyers, a delivery service account, finance staff."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from escrow.models import PurchasableService, ServicePrice

User = get_user_model()


def service_create(
    *, code: str = "phone-verification", prices: dict[str, int] | None = None, timeout: timedelta | None = None
) -> PurchasableService:
    service = PurchasableService.objects.create(
        code=code, name=code.replace("-", " ").title(), delivery_timeout=timeout or timedelta(minutes=15)
    )
    for currency, amount_minor in (prices or {"USD": 10_000, "PHP": 25_000}).items():
        ServicePrice.objects.create(service=service, currency=currency, amount_minor=amount_minor)
    return service


def user_create(prefix: str, *codenames: str, staff: bool = False):
    user = User.objects.create_user(f"{prefix}-{uuid.uuid4().hex[:8]}", is_staff=staff)
    if codenames:
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="escrow", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def buyer_create():
    return user_create("buyer")


def deliverer_create():
    """The service back end's account: holds escrow.deliver_purchase, is not staff."""
    return user_create("svc", "deliver_purchase")


def finance_create():
    return user_create("finance", "refund_purchase", "sync_purchase", "view_purchase", staff=True)
