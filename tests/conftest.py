import contextlib
import warnings

import pytest
from hypothesis import settings as hypothesis_settings

# Examples run against real servers and databases on a shared two-core machine: a slow
# example is load, not a bug. Each test sets its own example count where it matters.
hypothesis_settings.register_profile("reliable_mail", deadline=None)
hypothesis_settings.load_profile("reliable_mail")


def pytest_configure(config):
    try:
        from django.utils.deprecation import RemovedInDjango2028Warning
    except ImportError:  # Django < 6.1
        return
    # We read Django's EMAIL_* settings on purpose (the drop-in fallback).
    warnings.filterwarnings("ignore", category=RemovedInDjango2028Warning)
    config.addinivalue_line(
        "filterwarnings", "ignore::django.utils.deprecation.RemovedInDjango2028Warning"
    )


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """(server SSL context, CA file path) from a throwaway trustme CA."""
    from django_reliable_mail.testing import make_certificate_authority

    return make_certificate_authority(str(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def smtp_server(tls):
    """Factory: ``smtp_server(tls="starttls", users={...}, ...)`` → a started server."""
    from django_reliable_mail.testing import LoopbackSMTPServer

    started = []

    def start(**kwargs):
        if kwargs.get("tls", "none") != "none":
            kwargs.setdefault("tls_context", tls[0])
        server = LoopbackSMTPServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def hostile_server():
    """Factory: ``hostile_server(always=…, final_reply=…, …)`` → a raw server that
    misbehaves as told (``tests/hostile.py``), served from a thread of its own."""
    from .hostile import HostileServer, serving_in_a_thread

    with contextlib.ExitStack() as started:
        yield lambda **kwargs: started.enter_context(serving_in_a_thread(HostileServer(**kwargs)))


def end_other_sessions():
    """PostgreSQL: terminate other sessions on the test database (killed workers, live
    server threads), which would otherwise block DROP DATABASE at the end of the run."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session", autouse=True)
def _no_lingering_sessions(django_db_setup, django_db_blocker):
    yield
    with django_db_blocker.unblock():
        end_other_sessions()
