"""What the server advertises, what we allow, and what we therefore use.

Effective capabilities = advertised EHLO keywords minus the provider's disabled
extensions. They are recomputed after every EHLO, so an override survives STARTTLS
(RFC 3207 §4.2 makes the client forget everything learnt before TLS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: EHLO keywords we know by name. Used to catch typos in settings; the transport itself
#: copes with any keyword a server sends.
KNOWN_EXTENSIONS: frozenset[str] = frozenset(
    {
        "8BITMIME",
        "ATRN",
        "AUTH",
        "BINARYMIME",
        "BURL",
        "CHECKPOINT",
        "CHUNKING",
        "CLIENTID",
        "CONNEG",
        "DELIVERBY",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "ETRN",
        "EXPN",
        "FUTURERELEASE",
        "HELP",
        "LIMITS",
        "MT-PRIORITY",
        "MTRK",
        "NO-SOLICITING",
        "PIPELINING",
        "REQUIRETLS",
        "RRVS",
        "SIZE",
        "SMTPUTF8",
        "STARTTLS",
        "SUBMITTER",
        "VERB",
        "VRFY",
        "XCLIENT",
        "XFORWARD",
    }
)

#: AUTH mechanisms the transport can perform, in our default order of preference.
SUPPORTED_AUTH_MECHANISMS: tuple[str, ...] = ("XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN")


def parse_ehlo(message: str) -> dict[str, str]:
    """Turn an EHLO reply text into ``{KEYWORD: parameters}``, keywords upper-cased.

    The first line is the server's greeting name, not an extension. The obsolete
    ``AUTH=PLAIN LOGIN`` form is folded into ``AUTH``.
    """
    extensions: dict[str, str] = {}
    for line in message.split("\n")[1:]:
        line = line.strip()
        if not line:
            continue
        keyword, _, params = line.partition(" ")
        keyword = keyword.upper()
        if keyword.startswith("AUTH="):
            params = (keyword[5:] + " " + params).strip()
            keyword = "AUTH"
        if keyword == "AUTH":
            # Both forms may appear; the mechanisms are the union, first mention first.
            existing = extensions.get("AUTH", "")
            params = " ".join(dict.fromkeys((existing + " " + params).upper().split()))
        extensions[keyword] = params.strip()
    return extensions


def _is_number(text: str) -> bool:
    # str.isdigit() also says yes to "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class Capabilities:
    """The advertised and the effective EHLO extensions of one connection."""

    advertised: Mapping[str, str] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, message: str, *, disabled: Iterable[str] = ()) -> Capabilities:
        return cls(advertised=parse_ehlo(message), disabled=frozenset(d.upper() for d in disabled))

    @property
    def effective(self) -> dict[str, str]:
        return {k: v for k, v in self.advertised.items() if k not in self.disabled}

    def has(self, keyword: str) -> bool:
        """True when the server offers ``keyword`` and the provider does not disable it."""
        keyword = keyword.upper()
        return keyword in self.advertised and keyword not in self.disabled

    @property
    def auth_mechanisms(self) -> list[str]:
        if not self.has("AUTH"):
            return []
        return self.advertised["AUTH"].upper().split()

    @property
    def size_limit(self) -> int | None:
        """The SIZE the server declared (RFC 1870); None when absent or 0 (no fixed limit)."""
        if not self.has("SIZE"):
            return None
        value = self.advertised["SIZE"].strip()
        return int(value) if _is_number(value) and int(value) > 0 else None

    def _limit(self, name: str) -> int | None:
        # RFC 9422 LIMITS: "LIMITS RCPTMAX=1000 MAILMAX=1000"
        if not self.has("LIMITS"):
            return None
        for item in self.advertised["LIMITS"].split():
            key, _, value = item.partition("=")
            if key.upper() == name and _is_number(value) and int(value) > 0:
                return int(value)
        return None

    @property
    def rcpt_max(self) -> int | None:
        return self._limit("RCPTMAX")

    @property
    def mail_max(self) -> int | None:
        return self._limit("MAILMAX")

    def advertised_lines(self) -> list[str]:
        return [f"{k} {v}".strip() for k, v in self.advertised.items()]

    def effective_lines(self) -> list[str]:
        return [f"{k} {v}".strip() for k, v in self.effective.items()]
