"""The validated configuration as frozen values, and the problems found on the way there.

Invariant: an instance of these types is only ever built from values that passed the
settings table (``tables.py``), so code that reads them never re-checks a type or a range.
The password is kept out of ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from ..exceptions import UnknownProviderError
from ..smtp.capabilities import SUPPORTED_AUTH_MECHANISMS
from ..smtp.classify import ReplyRule
from ..smtp.transport import ServerSettings
from .wording import did_you_mean

SETTING = "RELIABLE_MAIL"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff: str = "exponential"
    base_seconds: float = 60
    max_seconds: float = 3600
    max_age_seconds: float = 86400
    jitter: float = 0.2


@dataclass(frozen=True)
class RateLimit:
    count: int
    per_seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{self.per_seconds}s"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    host: str
    port: int
    tls: str
    preset: str | None = None
    ca_file: str | None = None
    client_certfile: str | None = None
    client_keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth2_token: str | None = None
    disable_extensions: frozenset[str] = frozenset()
    auth_mechanisms: tuple[str, ...] = SUPPORTED_AUTH_MECHANISMS
    timeout: float = 30
    local_hostname: str | None = None
    allow_plaintext_auth: bool = False
    max_connections: int = 2
    max_messages_per_connection: int = 100
    max_recipients: int | None = None
    rate_limit: RateLimit | None = None
    retry: RetryPolicy = RetryPolicy()
    reply_rules: tuple[ReplyRule, ...] = ()
    fallback: str | None = None

    def server_settings(self, *, transcript_max_chars: int, record: bool) -> ServerSettings:
        token = import_string(self.oauth2_token) if self.oauth2_token else None
        return ServerSettings(
            host=self.host,
            port=self.port,
            tls=self.tls,
            ca_file=self.ca_file,
            client_certfile=self.client_certfile,
            client_keyfile=self.client_keyfile,
            username=self.username,
            password=self.password,
            oauth2_token=token,
            auth_mechanisms=self.auth_mechanisms,
            disable_extensions=self.disable_extensions,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            allow_plaintext_auth=self.allow_plaintext_auth,
            reply_rules=self.reply_rules,
            max_recipients=self.max_recipients,
            transcript_max_chars=transcript_max_chars,
            record_transcript=record,
        )


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, ProviderConfig]
    default_provider: str
    routes: Mapping[str, str] = field(default_factory=dict)
    mode: str = "queue"
    transcripts: str = "always"
    transcript_max_chars: int = 64 * 1024
    retention_days: int = 30
    unknown_outcome: str = "retry"
    lease_seconds: int = 45
    smtp_process: str = "auto"
    stalled_queue_seconds: int = 600
    #: Where the raw settings came from, for error messages.
    source: str = SETTING
    #: The raw provider values after presets and backend options, as they were given.
    raw_providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def provider(self, name: str) -> ProviderConfig:
        try:
            return self.providers[name]
        except KeyError:
            hint = did_you_mean(name, self.providers)
            raise UnknownProviderError(
                f"Unknown provider {name!r}; {self.source}['PROVIDERS'] defines "
                f"{', '.join(sorted(self.providers))}." + (f" {hint}" if hint else "")
            ) from None

    def route(self, from_email: str) -> str:
        """The provider for a sender: ROUTES by sender domain, else DEFAULT_PROVIDER."""
        domain = from_email.rpartition("@")[2].lower()
        return self.routes.get(domain, self.default_provider)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings; ``id`` is stable (``reliable_mail.E0xx``)."""

    id: str
    message: str
    hint: str = ""
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
