"""How soon a killed worker's messages go out again (or are flagged): within a lease of the
kill, plus the dispatcher's period. With the defaults, within two minutes. Leases are
renewed meanwhile, however long a batch takes and however busy the database side is."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from django_reliable_mail import delivery
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.conf import get_config
from django_reliable_mail.models import OutboundMessage

from .helpers import expired_leases_seen_before_each_send, run_django, slow_recording, wait_for
from .test_backend import message, provider_for
from .test_queue import queue_async, queue_config

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
Status = OutboundMessage.Status


def test_the_defaults_recover_a_killed_worker_within_two_minutes(settings):
    """A killed worker renewed its leases at most a third of a lease before it died: they
    run out at most one lease after the kill, and the dispatcher (every minute) takes the
    messages back at its next run and queues their delivery."""
    import importlib

    from django.apps import apps
    from django_q.models import Schedule

    from django_reliable_mail import tasks

    settings.RELIABLE_MAIL = {"PROVIDERS": {"main": {"HOST": "127.0.0.1", "PORT": 25}}}
    lease = get_config().lease_seconds
    migration = importlib.import_module("django_reliable_mail.migrations.0003_dispatch_schedule")
    migration.create_schedule(apps, None)
    schedule = Schedule.objects.get(name=tasks.DISPATCH_SCHEDULE_NAME)
    assert (schedule.schedule_type, schedule.repeats) == (Schedule.MINUTES, -1)
    period = schedule.minutes * 60
    assert lease + period <= 120


def test_leases_are_renewed_three_times_a_lease():
    from django_reliable_mail.delivery import sending

    # A renewal may be late by a database call that keeps the worker's thread busy: up to
    # two thirds of a lease before the lease runs out.
    assert sending.LEASE_RENEWALS >= 3


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_a_long_rate_limited_batch_keeps_its_leases_while_the_database_side_is_busy(
    smtp_server, settings, monkeypatch, smtp_process
):
    """Eight messages at 4/s take two leases of one second; every recording keeps the
    database side busy for 0.3 s. No lease runs out, in the helper process or beside it."""
    server = smtp_server()
    paced = provider_for(server, MAX_CONNECTIONS=1, RATE_LIMIT="4/s")
    settings.RELIABLE_MAIL = {
        **queue_config(main=paced),
        "LEASE_SECONDS": 1,
        "SMTP_PROCESS": smtp_process,
    }
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(8)])
    expired = expired_leases_seen_before_each_send(monkeypatch)
    sizes = slow_recording(monkeypatch, chunk=1, seconds=0.3)
    summary = delivery.deliver_due(limit=8, keep_going_seconds=30)
    assert summary.sent == 8 and sum(sizes) == 8
    assert expired == []


# -- a real SIGKILL -------------------------------------------------------------------------

QUEUE = """
from django.core.mail import EmailMessage
from django_q.conf import Conf
from django_reliable_mail.backends import EmailBackend
Conf.SYNC = False  # stored only: the worker below sends
EmailBackend().send_messages(
    [EmailMessage(f"Order {i}", "Thanks.", "shop@example.com", [f"u{i}@example.com"])
     for i in range(3)]
)
"""

#: The periodic dispatcher, run back to back until everything is sent: the bound on how
#: soon recovery can happen is then the lease alone.
DISPATCHER = """
import json, sys, time
from django_q.conf import Conf
from django_reliable_mail import tasks
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage
Conf.SYNC = True  # the dispatcher's delivery tasks run here
print("ready", flush=True)
sys.stdin.readline()  # the worker is killed now
deadline = time.time() + 60
while OutboundMessage.objects.exclude(status="sent").exists() and time.time() < deadline:
    tasks.dispatch()
    time.sleep(0.05)
print(json.dumps({
    "done_at": time.time(),
    "statuses": sorted(OutboundMessage.objects.values_list("status", flat=True)),
    "attempts": sorted(
        DeliveryAttempt.objects.values_list("message__subject", "outcome", "possible_duplicate")
    ),
}), flush=True)
"""


@pytest.fixture
def worker_env(tmp_path):
    """``worker_env(config)``: the environment of a Django process on this test's database
    (PostgreSQL: the test database; SQLite: a file of its own, migrated)."""
    yield from _worker_env(tmp_path)
    if connection.vendor == "postgresql":
        from .conftest import end_other_sessions

        end_other_sessions()  # the killed worker's session


def _worker_env(tmp_path):
    def env_for(config):
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "RELIABLE_MAIL_TEST_CONFIG": json.dumps(config),
        }
        if connection.vendor == "postgresql":
            env["RELIABLE_MAIL_TEST_DB"] = "postgres"
            env["RELIABLE_MAIL_TEST_DB_NAME"] = connection.settings_dict["NAME"]
            return env
        env["RELIABLE_MAIL_TEST_DB"] = "sqlite"
        env["RELIABLE_MAIL_TEST_SQLITE_FILE"] = str(tmp_path / "mail.sqlite3")
        if not (tmp_path / "mail.sqlite3").exists():
            assert run_django(env, "migrate", "-v", "0").returncode == 0
        return env

    yield env_for


def spawn(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_a_killed_workers_messages_go_out_again_within_a_lease(
    smtp_server, worker_env, smtp_process
):
    lease = 2
    server = smtp_server(stall_after_body=30)  # the reply to the first body never comes
    env = worker_env(
        {
            "DEFAULT_PROVIDER": "main",
            "MODE": "queue",
            "LEASE_SECONDS": lease,
            "SMTP_PROCESS": smtp_process,
            "PROVIDERS": {
                "main": provider_for(
                    server, MAX_CONNECTIONS=1, RETRY={"BASE_SECONDS": 0.05, "JITTER": 0}
                )
            },
        }
    )
    queued = run_django(env, "shell", "-c", QUEUE)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    worker = spawn(env, "reliable_mail_send", "--no-progress", "--loop", "--interval", "0.1")
    dispatcher = None
    try:
        wait_for(lambda: len(server.messages) == 1)  # a body is out, its reply withheld
        server.stall_after_body = 0  # the next connections are answered at once
        dispatcher = spawn(env, "shell", "-c", DISPATCHER)
        for line in dispatcher.stdout:  # (the shell may say something first)
            if line.strip() == "ready":
                break
        worker.send_signal(signal.SIGKILL)
        killed_at = time.time()
        worker.communicate()
        out, _ = dispatcher.communicate("go\n", timeout=90)
    finally:
        for proc in (worker, dispatcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["statuses"] == ["sent"] * 3, out
    # The leases ran out at most a lease after the kill (renewed every third of one), and
    # the next dispatcher run took the messages back: everything out again soon after.
    # (Not before: the lease, renewed to the end, held them until then.)
    took = result["done_at"] - killed_at
    assert lease / 2 <= took <= lease + 3, took
    # The body that was out is flagged, and so are those marked with it (the mark errs on
    # the safe side); each went out again once, as a flagged possible duplicate.
    attempts = result["attempts"]
    assert [a for a in attempts if a[1] == "unknown"] and all(a[2] for a in attempts)
    assert len(server.messages) == 1 + 3
