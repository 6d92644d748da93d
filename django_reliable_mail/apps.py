from django.apps import AppConfig


class ReliableMailConfig(AppConfig):
    name = "django_reliable_mail"
    verbose_name = "Reliable mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from .checks import check_q_cluster, check_settings, check_sqlite_locking

        checks.register(check_settings, "reliable_mail")
        checks.register(check_q_cluster, "reliable_mail")
        checks.register(check_sqlite_locking, "reliable_mail")
