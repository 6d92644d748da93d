import warnings

import pytest


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
