"""A new user's first try: ``startproject``, the two apps, ``EMAIL_BACKEND``, ``migrate``,
nothing else; Django's password reset mails through a local SMTP server on the first try."""

import os
import subprocess
import sys
from pathlib import Path

import django

OURS = "django_reliable_mail.backends.EmailBackend"
RESET = """
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import User

User.objects.create_user("ann", "ann@example.com", "correct horse battery staple")
form = PasswordResetForm({"email": "ann@example.com"})
assert form.is_valid(), form.errors
form.save(domain_override="shop.example.com", from_email="shop@example.com")
print("reset requested")
"""


def run(command, cwd):
    # The new project's own settings, not this test run's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RELIABLE_MAIL"))}
    done = subprocess.run(
        [sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done


def test_a_fresh_project_sends_a_password_reset_on_the_first_try(tmp_path, smtp_server):
    server = smtp_server()
    run(["-m", "django", "startproject", "shop", str(tmp_path)], cwd=tmp_path)
    settings = Path(tmp_path, "shop", "settings.py")
    text = settings.read_text() + '\nINSTALLED_APPS += ["django_q", "django_reliable_mail"]\n'
    # The local server's port is the only other setting (25 needs privileges).
    if django.VERSION >= (6, 1):  # the project template defines MAILERS (console)
        console = "'BACKEND': 'django.core.mail.backends.console.EmailBackend',"
        assert console in text
        mailer = f"'BACKEND': {OURS!r}, 'OPTIONS': {{'host': 'localhost', 'port': {server.port}}},"
        text = text.replace(console, mailer)
    else:
        text += f'EMAIL_BACKEND = "{OURS}"\nEMAIL_PORT = {server.port}\n'
    settings.write_text(text)
    # Django's own password-reset views (a fresh project routes only the admin).
    urls = Path(tmp_path, "shop", "urls.py")
    urls.write_text(
        urls.read_text().replace(
            "from django.urls import path", "from django.urls import include, path"
        )
        + 'urlpatterns += [path("accounts/", include("django.contrib.auth.urls"))]\n'
    )
    migrated = run(["manage.py", "migrate", "--no-input"], cwd=tmp_path)
    assert "Applying django_reliable_mail.0001_initial... OK" in migrated.stdout
    done = run(["manage.py", "shell", "-c", RESET], cwd=tmp_path)
    assert "reset requested" in done.stdout
    assert "Traceback" not in done.stderr
    (received,) = server.messages
    assert received.rcpt_tos == ["ann@example.com"]
    assert b"Password reset on shop.example.com" in received.data
    # And it is on record, sent.
    stats = run(["manage.py", "reliable_mail_stats"], cwd=tmp_path)
    assert "sent" in stats.stdout and "1" in stats.stdout
