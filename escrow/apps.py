from django.apps import AppConfig


class EscrowConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "escrow"
    verbose_name = "Escrow, purchases and spend limits"
