"""Example project: SQLite, the admin, and django-reliable-mail on loopback SMTP servers."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-project-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "django_reliable_mail",
    "mailshop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demo_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB", str(BASE_DIR / "db.sqlite3")),
        # The web process and the qcluster workers write to this file at the same time:
        # transactions take the write lock when they begin, so a writer waits its turn.
        "OPTIONS": {"transaction_mode": "IMMEDIATE"},
    }
}
Q_CLUSTER = {
    "name": "demo",
    "orm": "default",
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    # django-q2 logs every queued task at INFO through a handler of its own.
    "log_level": "WARNING",
}

EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@example.com"
# The demo command starts the servers and fills in the ports and the CA file.
RELIABLE_MAIL = {
    "DEFAULT_PROVIDER": "local",
    "PROVIDERS": {
        "local": {"HOST": "127.0.0.1", "PORT": 2525, "TLS": "none"},
    },
    "MODE": "immediate",
}

# The demo prints what happened itself; the library's own log lines (failed attempts are
# logged at WARNING) would repeat it on stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_reliable_mail": {"level": "ERROR"}},
}
