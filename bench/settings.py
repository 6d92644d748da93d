"""Django settings for the benchmark worker processes (see run.py).

Every system under test shares one database and one SMTP sink, configured from the
environment by run.py: BENCH_DB (sqlite file path or postgres database name), BENCH_DB_ENGINE,
BENCH_SMTP_PORT, BENCH_CONNECTIONS.
"""

import os

SECRET_KEY = "bench-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEBUG = False
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_q",
    "django_reliable_mail",
    "post_office",
    "mailer",
]
if os.environ.get("BENCH_DB_ENGINE") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "USER": "postgres",
            "NAME": os.environ["BENCH_DB"],
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB", "/tmp/bench.sqlite3"),
            # The same for every system; BENCH_SQLITE_WAL=1 adds WAL + synchronous=NORMAL,
            # BENCH_TXMODE=IMMEDIATE sets the transaction mode (for experiments).
            "OPTIONS": {
                **(
                    {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
                    if os.environ.get("BENCH_SQLITE_WAL") == "1"
                    else {}
                ),
                **(
                    {"transaction_mode": os.environ["BENCH_TXMODE"]}
                    if os.environ.get("BENCH_TXMODE")
                    else {}
                ),
            },
        }
    }
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "2525"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))
EMAIL_HOST, EMAIL_PORT = "127.0.0.1", SMTP_PORT
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@example.com"
RELIABLE_MAIL = {
    "DEFAULT_PROVIDER": "sink",
    "MODE": os.environ.get("BENCH_MODE", "queue"),
    # BENCH_SMTP_PROCESS=never keeps the SMTP side in the worker's process (for A/B runs).
    "SMTP_PROCESS": os.environ.get("BENCH_SMTP_PROCESS", "auto"),
    "PROVIDERS": {
        "sink": {
            "HOST": "127.0.0.1",
            "PORT": SMTP_PORT,
            "TLS": "none",
            "MAX_CONNECTIONS": CONNECTIONS,
            "MAX_MESSAGES_PER_CONNECTION": 1000,
            "TIMEOUT": 60,
        }
    },
}
Q_CLUSTER = {
    "name": "bench",
    "orm": "default",
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
}
POST_OFFICE = {
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
    "BATCH_SIZE": 500,
}
MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "ERROR", "handlers": []},
}
