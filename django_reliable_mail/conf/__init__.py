"""Settings: read lazily, validated in one place, frozen into dataclasses.

Precedence for a provider's values: backend keyword options (a Django 6.1 ``MAILERS``
entry's OPTIONS, or ``get_connection(**kwargs)``) → ``RELIABLE_MAIL["PROVIDERS"][name]`` →
the provider's ``PRESET`` → defaults. Without ``RELIABLE_MAIL``, one provider named
``default`` is built from Django's ``EMAIL_*`` settings.

Every problem is a :class:`Problem` with a stable id; ``checks.py`` turns them into system
check messages and :func:`get_config` into one :class:`ReliableMailConfigError`.

Modules: ``values`` (the frozen types), ``tables`` (every key: kind, range, default, ids),
``kinds`` (the checks a key's value goes through), ``rules`` (cross-field rules),
``validation`` (the walk), ``sources`` (Django's EMAIL_* and backend options), ``loading``
(the cached configuration), ``reading``/``report``/``wording`` (the machinery).
"""

from .kinds import LONGEST_SECONDS, RATE_RE, RATE_UNITS
from .loading import config_for_mailer, config_with_options, get_config, uses_mailer_defaults
from .sources import DJANGO_OPTION_ALIASES, SECRET_ARGUMENTS, options_to_provider_keys
from .tables import (
    BACKOFFS,
    DEFAULT_PORTS,
    MODES,
    PROVIDER_DEFAULTS,
    RETRY_DEFAULTS,
    RULE_KEYS,
    RULE_OUTCOMES,
    SMTP_PROCESS_POLICIES,
    TOP_LEVEL_DEFAULTS,
    TRANSCRIPT_POLICIES,
    UNKNOWN_POLICIES,
)
from .validation import validate
from .values import SETTING, Config, Problem, ProviderConfig, RateLimit, RetryPolicy

__all__ = [
    "BACKOFFS",
    "DEFAULT_PORTS",
    "DJANGO_OPTION_ALIASES",
    "LONGEST_SECONDS",
    "MODES",
    "PROVIDER_DEFAULTS",
    "RATE_RE",
    "RATE_UNITS",
    "RETRY_DEFAULTS",
    "RULE_KEYS",
    "RULE_OUTCOMES",
    "SECRET_ARGUMENTS",
    "SETTING",
    "SMTP_PROCESS_POLICIES",
    "TOP_LEVEL_DEFAULTS",
    "TRANSCRIPT_POLICIES",
    "UNKNOWN_POLICIES",
    "Config",
    "Problem",
    "ProviderConfig",
    "RateLimit",
    "RetryPolicy",
    "config_for_mailer",
    "config_with_options",
    "get_config",
    "options_to_provider_keys",
    "uses_mailer_defaults",
    "validate",
]
