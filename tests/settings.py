"""Test settings: SQLite by default, PostgreSQL with RELIABLE_MAIL_TEST_DB=postgres."""

import json
import os

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "django_reliable_mail",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
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
if os.environ.get("RELIABLE_MAIL_TEST_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "NAME": os.environ.get("PGDATABASE", "test"),
        }
    }
    # Worker processes started by the tests join the test database of the parent run.
    if os.environ.get("RELIABLE_MAIL_TEST_DB_NAME"):
        DATABASES["default"]["NAME"] = os.environ["RELIABLE_MAIL_TEST_DB_NAME"]
        DATABASES["default"]["TEST"] = {"NAME": os.environ["RELIABLE_MAIL_TEST_DB_NAME"]}
elif os.environ.get("RELIABLE_MAIL_TEST_SQLITE_FILE"):
    # Worker processes of the SQLite multi-process tests share one database file.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["RELIABLE_MAIL_TEST_SQLITE_FILE"],
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
Q_CLUSTER = {
    "name": "tests",
    "orm": "default",
    "sync": True,
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
}
RELIABLE_MAIL = {
    "PROVIDERS": {"loopback": {"HOST": "127.0.0.1", "PORT": 2525, "TLS": "none"}},
    "MODE": "immediate",
}
if os.environ.get("RELIABLE_MAIL_TEST_CONFIG"):
    RELIABLE_MAIL = json.loads(os.environ["RELIABLE_MAIL_TEST_CONFIG"])
if os.environ.get("RELIABLE_MAIL_TEST_SQLITE_FILE"):
    # A real cluster (qcluster) in those tests: two workers, as on a two-core machine.
    Q_CLUSTER = {**Q_CLUSTER, "sync": False, "workers": 2, "poll": 0.1}
    EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"
