"""Seller accounts: linking a seller to their Stripe connected account, and reading its state back from Stripe.

Invariants kept:
- a seller account is linked only to a connected account Stripe knows: it is retrieved through the provider
  client (providers.stripe.client) before the row is written, and a refusal or an unknown answer writes nothing;
- `can_receive_transfers` changes only through `seller_account_updated` (escrow.deals.recorders), whether the
  news comes from Stripe's account.updated webhook or from a retrieval here, so a newer state is never
  overwritten by an older one;
- every link and refresh by staff checks its permission (core.roles: Finance approver) and writes an audit row.
No money moves here: the capability only decides whether a deal's transfer can be sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidRequest, NotFound, ProviderUnavailable
from core.permissions import require_permission
from core.services import audit_record
from escrow.deals import seller_account_updated
from escrow.models import CommissionTier, SellerAccount
from providers.base import Declined, Succeeded
from providers.retry import call_provider
from providers.stripe.client import stripe_client

LINK_PERMISSION = "escrow.add_selleraccount"
REFRESH_PERMISSION = "escrow.change_selleraccount"
_ACCOUNT_ID = re.compile(r"^acct_[A-Za-z0-9]{1,250}$")


@dataclass(frozen=True)
class ConnectedAccountState:
    """What Stripe said of a connected account: its `transfers` capability (active, inactive, pending)."""

    stripe_account_id: str
    transfers: str
    retrieved_at: datetime

    @property
    def active(self) -> bool:
        return self.transfers == "active"


def connected_account_state(stripe_account_id: str) -> ConnectedAccountState:
    """Retrieve the account through the provider client; AppError when it is not a Stripe account we can read."""
    if not _ACCOUNT_ID.match(stripe_account_id or ""):
        raise InvalidRequest(
            f"{stripe_account_id!r} is not a connected account id",
            user_message="The Stripe account id must look like acct_1A2b3C.",
            action_required="Copy the seller's connected account id from the Stripe dashboard.",
            details={"stripe_account_id": stripe_account_id},
        )
    # A read, through the breaker, availability figures and retries like every provider call.
    client = stripe_client()
    result = call_provider(
        "stripe", "accounts.retrieve", lambda: client.retrieve_account(account_id=stripe_account_id), idempotent=True
    )
    if isinstance(result, Succeeded):
        return ConnectedAccountState(stripe_account_id, result.status, timezone.now())
    if isinstance(result, Declined) and result.code == "resource_missing":
        raise NotFound(
            f"Stripe has no account {stripe_account_id}: {result.reason}",
            user_message=f"Stripe has no connected account {stripe_account_id} for this platform.",
            action_required="Check the id, or ask the seller to finish creating their Stripe account first.",
            details={"stripe_account_id": stripe_account_id, "provider_code": result.code},
        )
    if isinstance(result, Declined) and not result.retryable:
        raise InvalidRequest(
            f"Stripe refused to retrieve {stripe_account_id}: {result.reason}",
            user_message=f"Stripe refused to show the connected account {stripe_account_id}: {result.reason}",
            action_required="Check the id and the platform's Stripe settings; nothing was saved.",
            details={"stripe_account_id": stripe_account_id, "provider_code": result.code},
        )
    raise ProviderUnavailable(
        f"retrieving {stripe_account_id} from Stripe: {getattr(result, 'reason', result)}",
        action_required="Try again in a few minutes; nothing was saved.",
        details={"stripe_account_id": stripe_account_id},
    )


def _check_link(user: AbstractBaseUser, stripe_account_id: str, tier: CommissionTier) -> None:
    if SellerAccount.objects.filter(user=user).exists():
        raise Conflict(
            f"user {user.pk} already has a seller account",
            user_message=f"{user.get_username()} already has a seller account.",
            action_required="Open the existing seller account instead of adding another.",
            details={"user": user.pk},
        )
    if SellerAccount.objects.filter(stripe_account_id=stripe_account_id).exists():
        raise Conflict(
            f"{stripe_account_id} is linked already",
            user_message=f"The connected account {stripe_account_id} belongs to another seller already.",
            action_required="Check the id: one connected account is one seller.",
            details={"stripe_account_id": stripe_account_id},
        )
    if not tier.active:
        raise InvalidRequest(
            f"commission tier {tier.name} is inactive",
            user_message=f"The commission tier {tier.name} is inactive and cannot be given to new sellers.",
            action_required="Choose an active commission tier.",
            details={"commission_tier": tier.pk},
        )


def seller_account_link(
    *,
    user: AbstractBaseUser,
    stripe_account_id: str,
    commission_tier: CommissionTier,
    actor: AbstractBaseUser,
    state: ConnectedAccountState | None = None,
) -> SellerAccount:
    """Make `user` a seller paid into their Stripe connected account. `state` is a retrieval the caller made just
    before (the admin form checks the id while the staff member types it); otherwise it is retrieved here."""
    require_permission(actor, LINK_PERMISSION)
    if state is None or state.stripe_account_id != stripe_account_id:
        state = connected_account_state(stripe_account_id)
    with transaction.atomic():
        _check_link(user, stripe_account_id, commission_tier)
        try:
            with transaction.atomic():
                seller = SellerAccount.objects.create(
                    user=user, stripe_account_id=stripe_account_id, commission_tier=commission_tier
                )
        except IntegrityError as error:  # linked by someone else between the check and the insert
            raise Conflict(
                f"linking {stripe_account_id} to user {user.pk} hit {error}",
                user_message="This seller or connected account was linked by someone else just now.",
                action_required="Reload the seller accounts and check the existing one.",
            ) from error
        seller_account_updated(
            stripe_account_id=stripe_account_id, transfers=state.transfers, event_at=state.retrieved_at
        )
        seller.refresh_from_db()
        after = {"user": user.pk, "stripe_account_id": stripe_account_id, "commission_tier": commission_tier.name,
                 "transfers": state.transfers}  # fmt: skip
        audit_record(actor=actor, action="escrow.selleraccount.link", obj=seller, after=after)
    return seller


def seller_account_refresh(*, seller_id: int, actor: AbstractBaseUser) -> SellerAccount:
    """Read the connected account's capability from Stripe now (as account.updated would bring it), audited."""
    require_permission(actor, REFRESH_PERMISSION)
    seller = SellerAccount.objects.filter(pk=seller_id).first()
    if seller is None:
        raise NotFound(f"seller account {seller_id} does not exist", details={"seller_account": seller_id})
    state = connected_account_state(seller.stripe_account_id)
    with transaction.atomic():
        before = {"can_receive_transfers": seller.can_receive_transfers}
        seller_account_updated(
            stripe_account_id=seller.stripe_account_id, transfers=state.transfers, event_at=state.retrieved_at
        )
        seller.refresh_from_db()
        after = {"can_receive_transfers": seller.can_receive_transfers, "transfers": state.transfers}
        audit_record(actor=actor, action="escrow.selleraccount.refresh", obj=seller, before=before, after=after)
    return seller
