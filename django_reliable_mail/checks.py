"""System checks: every problem conf.py finds, as ``reliable_mail.E0xx`` / ``W0xx``."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import validate


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    _config, problems = validate()
    return [
        (checks.Warning if p.warning else checks.Error)(p.message, hint=p.hint or None, id=p.id)
        for p in problems
    ]
