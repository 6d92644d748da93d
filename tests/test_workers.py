"""Several real worker processes on PostgreSQL: exactly-once delivery, SIGKILL at the worst
moments, and a rate limit that holds across processes. Counted on the server side."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage

from .helpers import gone, wait_for
from .test_backend import message, provider_for
from .test_queue import queue_async

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.skipif(
        os.environ.get("RELIABLE_MAIL_TEST_DB") != "postgres",
        reason="multi-process tests need PostgreSQL (RELIABLE_MAIL_TEST_DB=postgres)",
    ),
]
ROOT = Path(__file__).resolve().parent.parent
Status = OutboundMessage.Status
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


@pytest.fixture(autouse=True)
def _workers_gone():
    """A SIGKILLed worker's database session ends a moment after the process; end any that
    linger, so that nothing holds the test database when it is dropped."""
    yield
    from .conftest import end_other_sessions

    end_other_sessions()


def config_for(server, smtp_process="auto", **provider):
    return {
        "DEFAULT_PROVIDER": "main",
        "MODE": "queue",
        "LEASE_SECONDS": 2,
        "SMTP_PROCESS": smtp_process,
        "PROVIDERS": {
            "main": provider_for(
                server, RETRY={"BASE_SECONDS": 0.05, "JITTER": 0, "MAX_ATTEMPTS": 10}, **provider
            )
        },
    }


def start_worker(config, *args):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELIABLE_MAIL_TEST_DB": "postgres",
        "RELIABLE_MAIL_TEST_DB_NAME": connection.settings_dict["NAME"],
        "RELIABLE_MAIL_TEST_CONFIG": json.dumps(config),
    }
    command = [sys.executable, "-m", "django", "reliable_mail_send", "--no-progress", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def run_until_idle(config, *, workers=1, idle=2.0, timeout=120):
    procs = [
        start_worker(
            config, "--loop", "--idle-exit", str(idle), "--interval", "0.1", "--batch", "25"
        )
        for _ in range(workers)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out.decode())
        assert proc.returncode == 0, out.decode()
    return outputs


def queue_messages(settings, config, count, *, prefix="u"):
    settings.RELIABLE_MAIL = config
    queue_async(settings)
    batch = [message(to=[f"{prefix}{i}@example.com"]) for i in range(count)]
    for start in range(0, count, 100):
        EmailBackend().send_messages(batch[start : start + 100])
    return count


def copies_by_message_id(server):
    return Counter(MESSAGE_ID.search(m.data).group(1).decode() for m in server.messages)


def assert_delivered_and_duplicates_flagged(server, expected):
    rows = list(OutboundMessage.objects.all())
    assert len(rows) == expected
    stuck = [r.pk for r in rows if r.status != Status.SENT]
    assert stuck == [], f"not sent: {stuck}"
    copies = copies_by_message_id(server)
    flagged = set(
        DeliveryAttempt.objects.filter(possible_duplicate=True).values_list(
            "message__message_id", flat=True
        )
    )
    for row in rows:
        assert copies[row.message_id] >= 1, f"message {row.pk} never reached the server"
        if copies[row.message_id] > 1:
            assert row.message_id in flagged, f"message {row.pk} duplicated without a flag"
    return copies, flagged


def test_four_workers_greylisting_exactly_once(smtp_server, settings):
    server = smtp_server(greylist=True)
    config = config_for(server, MAX_CONNECTIONS=2)
    total = queue_messages(settings, config, 500)
    outputs = run_until_idle(config, workers=4, idle=2.5)
    copies, flagged = assert_delivered_and_duplicates_flagged(server, total)
    assert len(server.messages) == total and set(copies.values()) == {1}
    assert flagged == set()
    assert DeliveryAttempt.objects.count() == 2 * total  # greylisted once, then accepted
    # the work really was shared: every worker made attempts
    assert all(not out.startswith("0 attempt") for out in outputs), outputs


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_random_sigkill_never_loses_and_only_flagged_duplicates(
    smtp_server, settings, smtp_process
):
    server = smtp_server(reply_delay=0.01)
    config = config_for(server, smtp_process, MAX_CONNECTIONS=2)
    total = queue_messages(settings, config, 150)
    rng = random.Random(20261127)
    procs = [
        start_worker(config, "--loop", "--interval", "0.05", "--batch", "10") for _ in range(2)
    ]
    kills = 0
    deadline = time.time() + 5
    while time.time() < deadline:
        time.sleep(rng.uniform(0.1, 0.4))
        victim = rng.randrange(len(procs))
        kill(procs[victim])
        kills += 1
        procs[victim] = start_worker(config, "--loop", "--interval", "0.05", "--batch", "10")
    for proc in procs:
        kill(proc)
    time.sleep(2.5)  # leases of the killed workers expire
    run_until_idle(config, workers=1, idle=2.0)
    copies, _ = assert_delivered_and_duplicates_flagged(server, total)
    assert kills >= 10
    assert sum(copies.values()) >= total


class BlackHole:
    """Accepts TCP connections and never says a word: a worker waits in its connect."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self):
        for conn in self.held:
            conn.close()
        self.sock.close()


def helpers_of(pid):
    """The SMTP helper processes that this worker started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"smtp.helper" in cmdline:
            found.append(int(entry.name))
    return found


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reap it and close its pipe


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_sigkill_before_the_server_answered(smtp_server, settings, smtp_process):
    server = smtp_server()
    hole = BlackHole()
    try:
        stuck = config_for(server, smtp_process, PORT=hole.port, TIMEOUT=30)
        queue_messages(settings, stuck, 1)
        worker = start_worker(stuck, "--loop", "--interval", "0.1")
        wait_for(hole.accepted.is_set)
        kill(worker)
    finally:
        hole.close()
    time.sleep(2.5)
    run_until_idle(config_for(server, smtp_process), idle=1.5)
    row = OutboundMessage.objects.get()
    assert row.status == Status.SENT and len(server.messages) == 1
    assert list(row.attempts.values_list("outcome", "possible_duplicate")) == [("accepted", False)]


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_sigkill_in_the_middle_of_data(smtp_server, settings, smtp_process):
    server = smtp_server(stall_after_body=30)
    config = config_for(server, smtp_process)
    queue_messages(settings, config, 1)
    worker = start_worker(config, "--loop", "--interval", "0.1")
    wait_for(lambda: len(server.messages) == 1)
    helpers = helpers_of(worker.pid)
    assert len(helpers) == (1 if smtp_process == "always" else 0)
    kill(worker)
    for pid in helpers:  # the worker's SMTP side goes with it, mid-batch
        wait_for(lambda pid=pid: gone(pid), timeout=5)
    server.stall_after_body = 0
    time.sleep(2.5)
    run_until_idle(config, idle=1.5)
    row = OutboundMessage.objects.get()
    assert row.status == Status.SENT
    outcomes = list(row.attempts.values_list("outcome", "possible_duplicate"))
    assert outcomes == [("unknown", True), ("accepted", True)]
    assert len(server.messages) == 2  # the one duplicate, and it is flagged


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_sigkill_after_the_reply_before_it_is_stored(smtp_server, settings, smtp_process):
    import psycopg

    server = smtp_server()
    config = config_for(server, smtp_process)
    queue_messages(settings, config, 1)
    params = connection.settings_dict
    locker = psycopg.connect(
        host=params["HOST"], port=params["PORT"], user=params["USER"], dbname=params["NAME"]
    )
    try:
        locker.execute("LOCK TABLE django_reliable_mail_deliveryattempt IN ACCESS EXCLUSIVE MODE")
        worker = start_worker(config, "--loop", "--interval", "0.1")
        wait_for(lambda: len(server.messages) == 1)
        time.sleep(0.5)  # the 250 has arrived; storing it waits on the lock
        kill(worker)
    finally:
        locker.rollback()
        locker.close()
    time.sleep(2.5)
    run_until_idle(config, idle=1.5)
    row = OutboundMessage.objects.get()
    assert row.status == Status.SENT
    outcomes = list(row.attempts.values_list("outcome", "possible_duplicate"))
    assert outcomes == [("unknown", True), ("accepted", True)]
    assert len(server.messages) == 2


def test_rate_limit_holds_across_two_processes(smtp_server, settings):
    server = smtp_server()
    config = config_for(server, RATE_LIMIT="10/s", MAX_CONNECTIONS=2)
    total = queue_messages(settings, config, 30)
    run_until_idle(config, workers=2, idle=1.5)
    # Slots are taken when a transaction starts: count MAIL commands as the server saw them.
    times = sorted(server.mail_at)
    assert len(times) == total and len(server.messages) == total
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 11, f"{busiest} transactions in one second with RATE_LIMIT 10/s"
    assert times[-1] - times[0] >= (total - 1) / 10 * 0.95


def test_a_pending_wake_up_stays_locked_until_the_sender_commits(settings):
    """A worker cannot take the coalesced wake-up between our check and our commit (it
    would run before the new message is visible and miss it)."""
    from datetime import timedelta

    from django.db import OperationalError, transaction
    from django.utils import timezone
    from django_q.models import OrmQ

    from .test_queue import queue_config, queue_sync

    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    try:
        EmailBackend().send_messages([message()])
        row = OrmQ.objects.get()
        outcome = {}

        def worker_takes_it():  # django-q2's ORM broker: a compare-and-set on the lock
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SET lock_timeout = '300ms'")
                outcome["taken"] = OrmQ.objects.filter(pk=row.pk, lock=row.lock).update(
                    lock=timezone.now() + timedelta(seconds=60)
                )
            except OperationalError as exc:
                outcome["blocked"] = str(exc)
            finally:
                connection.close()

        with transaction.atomic():
            EmailBackend().send_messages([message()])
            taker = threading.Thread(target=worker_takes_it)
            taker.start()
            taker.join()
        assert "lock timeout" in outcome.pop("blocked")
        assert OrmQ.objects.count() == 1  # the second message rode on the first wake-up
        taker = threading.Thread(target=worker_takes_it)
        taker.start()
        taker.join()
        assert outcome == {"taken": 1}  # after the commit the worker gets it
    finally:
        queue_sync()
