from django.apps import AppConfig


class PayoutsConfig(AppConfig):
    name = "payouts"
    verbose_name = "Payouts"

    def ready(self) -> None:
        from payouts.webhooks import register_payout_handlers

        register_payout_handlers()
