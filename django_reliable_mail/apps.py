from django.apps import AppConfig


class ReliableMailConfig(AppConfig):
    name = "django_reliable_mail"
    verbose_name = "Reliable mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from .checks import (
            check_broker,
            check_q_cluster,
            check_settings,
            check_sqlite_locking,
            check_stalled_queue,
        )

        checks.register(check_settings, "reliable_mail")
        checks.register(check_q_cluster, "reliable_mail")
        checks.register(check_sqlite_locking, "reliable_mail")
        checks.register(check_broker, "reliable_mail")
        checks.register(check_stalled_queue, "reliable_mail", checks.Tags.database)
