"""A one-line progress bar for long-running commands: drawn on a terminal, silent in cron."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self, stdout: Any, *, total: int | None, label: str, enabled: bool | None = None):
        self.stdout = stdout
        self.total = total
        self.label = label
        self.done = 0
        if enabled is None:
            enabled = bool(getattr(stdout, "isatty", lambda: False)())
        self.enabled = enabled

    def advance(self, count: int = 1, *, note: str = "") -> None:
        self.done += count
        if not self.enabled:
            return
        if self.total:
            filled = int(30 * min(self.done, self.total) / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total} {note}"
        else:
            text = f"\r{self.label} {self.done} {note}"
        self.stdout.write(text, ending="")
        self.stdout.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stdout.write("")
