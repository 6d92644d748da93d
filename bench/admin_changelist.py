"""How fast is the admin changelist with 100,000 messages and 300,000 attempts (SQLite)?

    python bench/admin_changelist.py [--messages 100000] [--repeat 7]

Builds a throwaway SQLite database, fills it with bulk inserts, then renders the message
changelist through Django's test client (server time: URL resolution, queries, template)
for the views an operator uses. Prints the median and the range per view, and the number
of SQL queries per page (constant means no N+1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def configure(db_path: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.pop("RELIABLE_MAIL_TEST_DB", None)
    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = db_path
    settings.DEBUG = False
    django.setup()


def fill(messages: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from django_reliable_mail.models import (
        DeliveryAttempt,
        MessageBody,
        OutboundMessage,
        RecipientStatus,
    )

    now = timezone.now()
    statuses = ["sent"] * 80 + ["failed"] * 10 + ["retrying"] * 8 + ["queued"] * 2
    providers = ["strato", "ses", "office365", "postfix"]
    batch = 5000
    for start in range(0, messages, batch):
        with transaction.atomic():
            rows = OutboundMessage.objects.bulk_create(
                OutboundMessage(
                    status=statuses[i % len(statuses)],
                    provider=providers[i % 4],
                    from_email="shop@example.com",
                    recipients=[f"user{i}@example.com"],
                    subject=f"Order {i} confirmation",
                    message_id=f"<{i}@shop.example.com>",
                    size=22,
                    attempt_count=3,
                    last_error="451 4.7.1 Greylisted" if i % 10 else "",
                    created_at=now - timedelta(minutes=i),
                )
                for i in range(start, min(start + batch, messages))
            )
            MessageBody.objects.bulk_create(
                MessageBody(message=row, mime=b"Subject: x\r\n\r\nbody\r\n") for row in rows
            )
            RecipientStatus.objects.bulk_create(
                RecipientStatus(message=row, address=row.recipients[0], state="accepted")
                for row in rows
            )
            DeliveryAttempt.objects.bulk_create(
                DeliveryAttempt(
                    message=row,
                    number=n,
                    provider=row.provider,
                    started_at=now,
                    finished_at=now,
                    outcome="accepted" if n == 3 else "transient_failure",
                    reply_code=250 if n == 3 else 451,
                    queue_id=f"Q{row.pk}N{n}",
                    transcript="[+0.001s] C: EHLO x\n[+0.002s] S: 250 ok",
                )
                for row in rows
                for n in (1, 2, 3)
            )
    # created_at is auto_now_add: spread it so date filters have something to do.
    OutboundMessage.objects.update(created_at=now)


def measure(repeat: int) -> list[tuple[str, float, float, float, int]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    User.objects.create_superuser("bench", "b@example.com", "pw")
    client = Client()
    client.login(username="bench", password="pw")
    base = "/admin/django_reliable_mail/outboundmessage/"
    views = [
        ("changelist", base),
        ("filter status=failed", base + "?status__exact=failed"),
        ("filter provider+status", base + "?provider__exact=ses&status__exact=retrying"),
        ("page 100", base + "?p=100"),
        ("search recipient", base + "?q=user4242%40example.com"),
        ("search queue id", base + "?q=Q4242N3"),
        ("failed list", "/admin/django_reliable_mail/failedmessage/"),
        ("dashboard", base + "dashboard/"),
    ]
    results = []
    for name, url in views:
        client.get(url)  # warm caches
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        results.append(
            (name, statistics.median(times), min(times), max(times), len(queries.captured_queries))
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configure(os.path.join(tmp, "bench.sqlite3"))
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        fill(args.messages)
        print(
            f"filled {args.messages} messages, {3 * args.messages} attempts in "
            f"{time.perf_counter() - started:.1f} s"
        )
        print("| view | median ms | min-max ms | queries |\n|---|---|---|---|")
        for name, median, low, high, queries in measure(args.repeat):
            print(f"| {name} | {median:.1f} | {low:.1f}-{high:.1f} | {queries} |")


if __name__ == "__main__":
    main()
