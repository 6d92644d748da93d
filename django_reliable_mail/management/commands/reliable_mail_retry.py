"""Requeue messages by id or by filter.

manage.py reliable_mail_retry 12 13            # these messages
manage.py reliable_mail_retry --status failed --provider strato --since 2d --dry-run
manage.py reliable_mail_retry --status failed --to-provider backup
manage.py reliable_mail_retry 12 --without REQUIRETLS   # once, without an extension
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ... import operations
from ...exceptions import ReliableMailConfigError
from ...models import OutboundMessage
from ..filters import add_filter_arguments, filtered_messages


class Command(BaseCommand):
    help = "Make failed, retrying or held messages due now (optionally via another provider)."

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", type=int, help="message ids")
        add_filter_arguments(parser, default_status="failed when no ids are given")
        parser.add_argument("--to-provider", help="send them through this provider instead")
        parser.add_argument(
            "--without",
            action="append",
            default=[],
            metavar="EXTENSION",
            help="retry once without this EHLO extension (repeatable)",
        )
        parser.add_argument("--dry-run", action="store_true", help="only show what would move")

    def handle(self, *args, **options):
        if not options["ids"] and not options["status"]:
            options["status"] = OutboundMessage.Status.FAILED
        messages = filtered_messages(options)
        selected = list(messages.values_list("pk", flat=True)[: options["limit"] or None])
        if options["dry_run"]:
            self.stdout.write(
                f"{len(selected)} message(s) would be retried"
                + (f": {', '.join(map(str, selected[:20]))}" if selected else "")
                + (" …" if len(selected) > 20 else "")
            )
            return
        try:
            done = operations.retry(
                OutboundMessage.objects.filter(pk__in=selected).order_by("pk"),
                actor="reliable_mail_retry",
                provider=options["to_provider"],
                disable_extensions=options["without"],
            )
        except ReliableMailConfigError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{len(done)} message(s) queued for another attempt"
            + (f" through {options['to_provider']}" if options["to_provider"] else "")
            + "."
        )
        skipped = len(selected) - len(done)
        if skipped:
            self.stdout.write(f"{skipped} skipped (sent, or being sent right now).")
