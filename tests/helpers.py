import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django_reliable_mail.smtp import Envelope, ServerSettings

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-Zq8#secret"
BODY = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


def settings_for(server, ca_file=None, **overrides) -> ServerSettings:
    values = {
        "host": server.host,
        "port": server.port,
        "tls": server.tls,
        "ca_file": ca_file,
        "timeout": 5,
    }
    values.update(overrides)
    return ServerSettings(**values)


def envelope(recipients=("b@example.com",), data=BODY, **kwargs) -> Envelope:
    return Envelope(sender="a@example.com", recipients=list(recipients), data=data, **kwargs)


def oauth_token(*, username, force_refresh):
    """OAUTH2_TOKEN callable used by the settings-level tests."""
    return "ya29.token-Very-Secret"


def forbidden_strings(username: str, password: str, token: str) -> list[str]:
    """A secret in every form it travels in during AUTH."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [
        password,
        b64(password),
        b64(f"\0{username}\0{password}"),
        token,
        b64(f"user={username}\x01auth=Bearer {token}\x01\x01"),
    ]


def wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def gone(pid):
    """The process has exited (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def slow_recording(monkeypatch, *, chunk, seconds=0.02):
    """Store ``chunk`` attempts per transaction at most, each transaction taking a while
    (``seconds``; results keep arriving meanwhile); returns the list of the sizes stored."""
    from django_reliable_mail.delivery import sending

    monkeypatch.setattr(sending, "RECORD_CHUNK", chunk)
    monkeypatch.setattr(sending, "RECORD_WITHIN_SECONDS", 60)  # never a timed flush
    sizes = []
    record = sending.record_batch

    def counting(items, **kwargs):
        sizes.append(len(items))
        time.sleep(seconds)  # a transaction's worth of time
        return record(items, **kwargs)

    monkeypatch.setattr(sending, "record_batch", counting)
    return sizes


def run_django(env, *args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m django ARGS`` in the project's directory with ``env``, its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def expired_leases_seen_before_each_send(monkeypatch) -> list[int]:
    """The ids of messages still in ``sending`` with their lease over, looked up on the
    database side before each send (as a rate-limit slot is reserved); fills as it goes."""
    from django.utils import timezone

    from django_reliable_mail import throttle
    from django_reliable_mail.models import OutboundMessage

    expired: list[int] = []
    reserve = throttle.reserve_slot

    def reserve_and_look(*args, **kwargs):
        expired.extend(
            OutboundMessage.objects.filter(
                status=OutboundMessage.Status.SENDING, lease_expires_at__lt=timezone.now()
            ).values_list("pk", flat=True)
        )
        return reserve(*args, **kwargs)

    monkeypatch.setattr(throttle, "reserve_slot", reserve_and_look)
    return expired


@contextlib.contextmanager
def killing_the_helper_after(server, *, bodies: int):
    """SIGKILL the SMTP helper process once ``server`` has received ``bodies`` bodies."""
    from django_reliable_mail.smtp import helper

    def kill() -> None:
        wait_for(lambda: len(server.messages) >= bodies)
        os.kill(helper._shared.process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield
    finally:
        killer.join()
