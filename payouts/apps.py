from django.apps import AppConfig


class PayoutsConfig(AppConfig):
    name = "payouts"
    verbose_name = "Payouts"

    def ready(self) -> None:
        from payouts.services import register_payout_operations
        from payouts.webhooks import register_payout_handlers

        register_payout_operations()
        register_payout_handlers()
