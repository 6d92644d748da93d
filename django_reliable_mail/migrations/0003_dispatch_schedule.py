"""Create (or update) the django-q2 Schedule that runs the dispatcher every minute.

Idempotent: keyed by name, so re-running migrations or several hosts migrating at once
never creates a second schedule. Set Q_CLUSTER["catch_up"] = False so that a cluster
coming back from downtime does not replay every missed run (the checks warn otherwise).
"""

from django.db import migrations

NAME = "django_reliable_mail.dispatch"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={
            "func": "django_reliable_mail.tasks.dispatch",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("django_reliable_mail", "0002_claim_token_body_marker_provider_state"),
        ("django_q", "__latest__"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
