"""Deliver due mail in this process: the cron path, no qcluster needed.

manage.py reliable_mail_send                 # one pass over what is due, then exit
manage.py reliable_mail_send --loop          # keep going until stopped (SIGTERM/SIGINT)
manage.py reliable_mail_send --loop --idle-exit 30   # stop after 30 s with nothing to do

With ``--loop`` it is a service: a pass that fails is logged and the next one comes after
a growing wait; only SIGTERM/SIGINT (or ``--idle-exit``) stops it. A pass that claims
nothing is idle, whether nothing is due or its provider is paused.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from django.core.management.base import BaseCommand, CommandError

from ... import delivery
from ...conf import get_config
from ...exceptions import ReliableMailConfigError
from ...tasks import STREAM_BATCH

logger = logging.getLogger(__name__)
#: The longest wait between passes after failed ones (they double from the interval).
MAX_FAILURE_WAIT = 60.0


class Command(BaseCommand):
    help = "Deliver due messages now, in this process (cron or a long-running worker)."

    def add_arguments(self, parser):
        parser.add_argument("--provider", help="only this provider's messages")
        parser.add_argument(
            "--limit", type=int, default=0, help="stop after this many attempts (default: no limit)"
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=STREAM_BATCH,
            help=f"messages claimed at once (default {STREAM_BATCH})",
        )
        parser.add_argument(
            "--keep-going",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="keep claiming further batches of one provider over the open connections "
            "for up to this long (0: one batch at a time); SIGTERM waits for it",
        )
        parser.add_argument("--loop", action="store_true", help="keep polling for due mail")
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="seconds between polls when idle (with --loop)",
        )
        parser.add_argument(
            "--idle-exit",
            type=float,
            default=0,
            help="with --loop: exit after this many idle seconds",
        )
        parser.add_argument("--no-progress", action="store_true", help="never draw progress")

    def handle(self, *args, **options):
        try:
            config = get_config()
            if options["provider"]:
                config.provider(options["provider"])
        except ReliableMailConfigError as exc:
            raise CommandError(str(exc)) from exc
        stopping = threading.Event()

        def stop(signum, frame):
            stopping.set()

        # Put back on the way out: a caller's process (call_command) keeps its own handlers.
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run(config, options, stopping)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, config, options, stopping: threading.Event) -> None:
        progress = (
            not options["no_progress"] and hasattr(self.stdout, "isatty") and self.stdout.isatty()
        )
        total = delivery.RunSummary()
        idle_since = time.monotonic()
        limit = options["limit"]
        failures = 0
        while not stopping.is_set():
            try:
                summary = self._pass(config, options, total)
                failures = 0
            except Exception:
                # A pass that fails (the database gone, a bug) must not end a service: log
                # it, wait longer each time, go on. Its messages are in the database.
                failures += 1
                logger.exception("a delivery pass failed (%d in a row)", failures)
                summary = delivery.RunSummary()
            total.add(summary)
            if progress and summary.attempts:
                self.stdout.write(
                    f"\r{total.attempts} attempts: {total.sent} sent, {total.retrying} retrying, "
                    f"{total.failed} failed",
                    ending="",
                )
            if limit and total.attempts >= limit:
                break
            if summary.claimed:
                idle_since = time.monotonic()
                continue
            # Nothing claimed (nothing due, its provider paused, or the pass failed): idle.
            if not options["loop"]:
                break
            if options["idle_exit"] and time.monotonic() - idle_since >= options["idle_exit"]:
                break
            wait = options["interval"]
            if failures:
                wait = min(max(wait, 1.0) * 2 ** min(failures - 1, 6), MAX_FAILURE_WAIT)
            stopping.wait(wait)
        if progress:
            self.stdout.write("")
        self.stdout.write(
            f"{total.attempts} attempt(s) over {total.connections} connection(s): "
            f"{total.sent} sent, {total.retrying} retrying, {total.failed} failed, "
            f"{total.held} held, {total.released} released, {total.recovered} recovered."
        )
        sys.stdout.flush()

    def _pass(self, config, options, total: delivery.RunSummary) -> delivery.RunSummary:
        """Return expired leases, then deliver one batch (or stream) of what is due."""
        recovered = delivery.recover_expired_leases(config=config)
        limit = options["limit"]
        batch = options["batch"] if not limit else min(options["batch"], limit - total.attempts)
        summary = delivery.deliver_due(
            config=config,
            provider=options["provider"],
            limit=batch,
            # A limit counts attempts: a stream would overshoot it.
            keep_going_seconds=0 if limit else options["keep_going"],
        )
        summary.recovered += recovered
        return summary
