import factory

from core.money import Money
from ledger.models import Account
from ledger.services import account_create, credit, debit, transaction_post


class AccountFactory(factory.Factory):
    """Accounts made through `account_create`, so balance rows exist as in production."""

    class Meta:
        model = Account

    code = factory.Sequence(lambda n: f"user:{n}:wallet")
    name = factory.LazyAttribute(lambda o: f"Wallet {o.code}")
    type = Account.Type.LIABILITY
    currency = "USD"
    allow_negative = False
    owner_type = ""
    owner_id = ""

    @classmethod
    def _create(cls, model_class: type, **kwargs: object) -> Account:
        return account_create(**kwargs)  # type: ignore[arg-type]


def hot_account(code: str = "platform:clearing", currency: str = "USD", type: str = "asset") -> Account:
    return AccountFactory(code=f"{code}:{currency}", currency=currency, type=type, allow_negative=True)


def fund(account: Account, minor: int, *, source: Account, key: str) -> None:
    """Move money from a hot source account into `account`'s normal balance."""
    money = Money(minor, account.currency)
    transaction_post(idempotency_key=key, kind="funding", legs=[debit(source.code, money), credit(account.code, money)])
