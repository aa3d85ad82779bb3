from django.apps import AppConfig


class EscrowConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "escrow"
    verbose_name = "Escrow, purchases and spend limits"

    def ready(self) -> None:
        from escrow.deal_webhooks import register_deal_handlers
        from escrow.deals import register_deal_operations

        register_deal_operations()
        register_deal_handlers()

        from escrow.purchases import register_purchase_handlers, register_purchase_operations

        register_purchase_operations()
        register_purchase_handlers()

        from escrow.limits import SPEND_LIMITS_GUARD
        from providers.payments import register_spend_guard

        register_spend_guard(SPEND_LIMITS_GUARD)
