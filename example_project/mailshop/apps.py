from django.apps import AppConfig


class MailshopConfig(AppConfig):
    name = "mailshop"
    default_auto_field = "django.db.models.BigAutoField"
