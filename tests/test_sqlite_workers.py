"""Several worker processes on one SQLite file (django-q2 runs one per core by default):
every message sent once and recorded once, no "database is locked" on the way."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from .helpers import run_django
from .test_backend import provider_for

ROOT = Path(__file__).resolve().parent.parent


def _env(db_file, config):
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RELIABLE_MAIL_TEST_DB": "sqlite",
        "RELIABLE_MAIL_TEST_SQLITE_FILE": str(db_file),
        "RELIABLE_MAIL_TEST_CONFIG": json.dumps(config),
    }


QUEUE = """
import os
from django.core.mail import EmailMessage
from django_q.conf import Conf
from django_reliable_mail.backends import EmailBackend
Conf.SYNC = False  # the wake-ups wait on the ORM broker; the workers below do the sending
count = int(os.environ["QUEUE_COUNT"])
messages = [EmailMessage(f"Order {i}", "Thanks.", "shop@example.com", [f"u{i}@example.com"])
            for i in range(count)]
for start in range(0, len(messages), 50):
    EmailBackend().send_messages(messages[start:start + 50])
"""


def test_three_workers_share_one_sqlite_file(smtp_server, tmp_path):
    server = smtp_server()
    config = {
        "DEFAULT_PROVIDER": "main",
        "MODE": "queue",
        "PROVIDERS": {"main": provider_for(server, MAX_CONNECTIONS=2)},
    }
    count = 400
    # Deliberately without transaction_mode "IMMEDIATE" (check W015 warns about that): the
    # app's own transactions must wait their turn whatever the project configured.
    env = {**_env(tmp_path / "mail.sqlite3", config), "QUEUE_COUNT": str(count)}
    for args in (["migrate", "-v", "0"], ["shell", "-c", QUEUE]):
        done = run_django(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr

    # Small batches, so that claims and recordings of the three interleave all the time.
    worker = ["reliable_mail_send", "--no-progress", "--loop", "--idle-exit", "2"]
    worker += ["--interval", "0.05", "--batch", "10"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "django", *worker],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "Traceback" not in out and "OperationalError" not in out, out
    assert all(not out.startswith("0 attempt") for out in outputs), outputs  # all took part

    with closing(sqlite3.connect(tmp_path / "mail.sqlite3")) as db:
        statuses = dict(
            db.execute(
                "SELECT status, COUNT(*) FROM django_reliable_mail_outboundmessage GROUP BY status"
            ).fetchall()
        )
        attempts = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM django_reliable_mail_deliveryattempt"
        ).fetchone()
    assert statuses == {"sent": count}
    assert attempts == (count, count)
    assert len(server.messages) == count


BURST = """
import os
from django.core.mail import send_mail
for i in range(int(os.environ["QUEUE_COUNT"])):
    send_mail(f"Order {i}", "Thanks.", "shop@example.com", [f"{os.getpid()}-{i}@example.com"])
"""


def _statuses(db_file):
    with closing(sqlite3.connect(db_file, timeout=30)) as db:
        return dict(
            db.execute(
                "SELECT status, COUNT(*) FROM django_reliable_mail_outboundmessage GROUP BY status"
            ).fetchall()
        )


def test_a_qcluster_and_three_senders_on_one_sqlite_file(smtp_server, tmp_path):
    """The production path: a django-q2 cluster with two workers, woken through the ORM
    broker, while three processes send bursts (each send_mail() its own transaction)."""
    server = smtp_server()
    config = {
        "DEFAULT_PROVIDER": "main",
        "MODE": "queue",
        "PROVIDERS": {"main": provider_for(server, MAX_CONNECTIONS=2)},
    }
    db_file = tmp_path / "mail.sqlite3"
    per_sender, senders = 150, 3
    env = {**_env(db_file, config), "QUEUE_COUNT": str(per_sender)}
    done = run_django(env, "migrate", "-v", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    cluster = subprocess.Popen(
        [sys.executable, "-m", "django", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        bursts = [
            subprocess.Popen(
                [sys.executable, "-m", "django", "shell", "-c", BURST],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(senders)
        ]
        for burst in bursts:
            out = burst.communicate(timeout=120)[0]
            assert burst.returncode == 0, out
        total = per_sender * senders
        deadline = time.monotonic() + 90
        while _statuses(db_file).get("sent", 0) < total and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        cluster.terminate()
        log = cluster.communicate(timeout=60)[0]
    assert _statuses(db_file) == {"sent": total}, log
    assert "OperationalError" not in log and "Failed '" not in log, log  # a failed task
    with closing(sqlite3.connect(db_file)) as db:
        attempts = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM django_reliable_mail_deliveryattempt"
        ).fetchone()
        failed_tasks = db.execute("SELECT COUNT(*) FROM django_q_task WHERE success = 0")
        failed_tasks = failed_tasks.fetchone()[0]
    assert attempts == (total, total)
    assert failed_tasks == 0
    assert len(server.messages) == total
