"""Delete (or slim) finished messages older than the retention period, in batches.

manage.py reliable_mail_purge                  # older than RETENTION_DAYS
manage.py reliable_mail_purge --days 7 --bodies-only   # keep the record, drop bodies
manage.py reliable_mail_purge --dry-run
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from ...conf import get_config
from ...models import DeliveryAttempt, MessageBody, OutboundMessage
from ...transactions import writing
from ..progress import Progress

Status = OutboundMessage.Status
FINISHED = (Status.SENT, Status.FAILED, Status.CANCELLED)


class Command(BaseCommand):
    help = "Delete sent, failed and cancelled messages older than the retention period."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, help="retention in days (default RETENTION_DAYS)")
        parser.add_argument(
            "--bodies-only",
            action="store_true",
            help="keep the messages and attempts; drop bodies and transcripts",
        )
        parser.add_argument("--batch", type=int, default=1000, help="rows per transaction")
        parser.add_argument("--dry-run", action="store_true", help="only count")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **options):
        days = options["days"] if options["days"] is not None else get_config().retention_days
        cutoff = timezone.now() - timedelta(days=days)
        old = OutboundMessage.objects.filter(status__in=FINISHED, updated_at__lt=cutoff)
        if options["bodies_only"]:
            old = old.exclude(size=0)
        total = old.count()
        verb = "slimmed" if options["bodies_only"] else "deleted"
        if options["dry_run"]:
            self.stdout.write(f"{total} message(s) older than {days} day(s) would be {verb}.")
            return
        progress = Progress(
            self.stdout,
            total=total,
            label=f"{verb.capitalize()}",
            enabled=None if not options["no_progress"] else False,
        )
        done = 0
        while True:
            ids = list(old.order_by("pk").values_list("pk", flat=True)[: options["batch"]])
            if not ids:
                break
            with writing():
                if options["bodies_only"]:
                    MessageBody.objects.filter(message_id__in=ids).delete()
                    OutboundMessage.objects.filter(pk__in=ids).update(size=0)
                    DeliveryAttempt.objects.filter(message_id__in=ids).update(transcript="")
                else:
                    OutboundMessage.objects.filter(pk__in=ids).delete()
            done += len(ids)
            progress.advance(len(ids))
        progress.finish()
        self.stdout.write(f"{done} message(s) older than {days} day(s) {verb}.")
