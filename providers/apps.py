from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Payment providers"

    def ready(self) -> None:
        from providers.payment_operations import register_payment_operations
        from providers.payment_webhooks import register_payment_handlers
        from providers.verifiers import register_verifiers

        register_verifiers()
        register_payment_handlers()
        register_payment_operations()
