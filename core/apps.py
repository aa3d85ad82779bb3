from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from core import staff_audit
        from core.logging import configure_structlog
        from core.roles import roles_sync

        configure_structlog()
        # After every app's permissions exist (auth creates them on post_migrate first).
        post_migrate.connect(roles_sync, dispatch_uid="core.roles_sync")
        staff_audit.connect()
