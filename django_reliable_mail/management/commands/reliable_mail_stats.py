"""Counts by status and provider, failure reasons and success rates.

manage.py reliable_mail_stats
manage.py reliable_mail_stats --json
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from ...dashboard import statistics
from ...health import stalled_queue


class Command(BaseCommand):
    help = "Show delivery statistics (table, or --json for machines)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON object")

    def handle(self, *args, **options):
        stats = statistics()
        stall = stalled_queue()
        stats["stalled"] = str(stall) if stall else None
        if options["json"]:
            self.stdout.write(json.dumps(stats, sort_keys=True))
            return
        write = self.stdout.write
        if stall is not None:
            self.stderr.write(self.style.WARNING(f"Warning: {stall}\n  {stall.hint}"))
        write("Messages by status")
        for status, n in sorted(stats["by_status"].items()):
            write(f"  {status:<10} {n:>8}")
        write("Messages by provider")
        for provider, counts in stats["by_provider"].items():
            write(f"  {provider:<20} " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
        write(
            f"Attempts in the last 24 h: {stats['attempts_24h']} ({stats['failures_24h']} failed)"
        )
        write("Success rate per provider (30 days)")
        for row in stats["success_rates"]:
            write(f"  {row['provider']:<20} {row['rate']:>5}% of {row['attempts']} attempts")
        write("Top failure reasons (30 days)")
        for row in stats["failure_reasons"]:
            code = f"{row['reply_code'] or '—'} {row['enhanced_code']}".strip()
            write(f"  {code:<12} {row['outcome']:<18} {row['count']:>6}")
        if not stats["failure_reasons"]:
            write("  none")
