"""What each reply means at each stage of the dialogue: the one table the transport obeys.

Invariant: a reply counts as success only when its code is the one its stage expects
(RFC 5321 §4.3.2 lists, per command, the codes that mean it worked). Every other 2xx or
3xx is a *transient* failure of that stage: the server said something we did not ask
for, so what it did is unknown, and the next attempt may go better. 4xx is transient,
5xx permanent (RFC 5321 §4.2.1); a provider's reply rules may reclassify any failure,
but no rule turns a failure into success (:class:`~.classify.ReplyRule` refuses an
``ok`` verdict). What a failure leaves of the message is the transport's matter: a
positive reply other than 250 to a whole body means the server may have taken it, so its
recipients are ``unknown``, not deferred. Replies whose code is not 200-599, or that break
the reply syntax, never get this far: the protocol raises
:class:`~.transport.MalformedReply` for them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .classify import Classification, Reply, ReplyRule, Verdict

__all__ = [
    "EXPECTED",
    "HIGHEST_CODE",
    "LOWEST_CODE",
    "Stage",
    "StageReplies",
    "is_success",
    "is_unexpected",
    "judge",
]

#: RFC 5321 §4.2: a reply code's first digit is 2, 3, 4 or 5.
LOWEST_CODE = 200
HIGHEST_CODE = 599


class Stage(enum.StrEnum):
    """Where in the dialogue a reply came (stored with each recipient's reply)."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"
    RSET = "rset"
    QUIT = "quit"

    @property
    def label(self) -> str:
        """How error messages name it."""
        return _LABELS[self]


_LABELS = {
    Stage.GREETING: "the greeting",
    Stage.EHLO: "EHLO",
    Stage.HELO: "HELO",
    Stage.STARTTLS: "STARTTLS",
    Stage.AUTH: "AUTH",
    Stage.MAIL: "MAIL FROM",
    Stage.RCPT: "RCPT TO",
    Stage.DATA: "DATA",
    Stage.END_OF_DATA: "the end of the message data",
    Stage.RSET: "RSET",
    Stage.QUIT: "QUIT",
}


@dataclass(frozen=True)
class StageReplies:
    #: The codes that complete the stage successfully.
    success: frozenset[int]
    #: Codes that carry the stage's own exchange on (RFC 4954 §4: 334 inside AUTH); at
    #: the end of the exchange they are as unexpected as any other.
    continuation: frozenset[int] = frozenset()


EXPECTED: Mapping[Stage, StageReplies] = MappingProxyType(
    {
        Stage.GREETING: StageReplies(frozenset({220})),
        Stage.EHLO: StageReplies(frozenset({250})),
        Stage.HELO: StageReplies(frozenset({250})),
        Stage.STARTTLS: StageReplies(frozenset({220})),
        Stage.AUTH: StageReplies(frozenset({235}), continuation=frozenset({334})),
        Stage.MAIL: StageReplies(frozenset({250})),
        # 251 "user not local; will forward" accepts too; 252 is VRFY's, never an accept.
        Stage.RCPT: StageReplies(frozenset({250, 251})),
        Stage.DATA: StageReplies(frozenset({354})),
        Stage.END_OF_DATA: StageReplies(frozenset({250})),
        Stage.RSET: StageReplies(frozenset({250})),
        Stage.QUIT: StageReplies(frozenset({221})),
    }
)


def is_success(stage: Stage, code: int) -> bool:
    return code in EXPECTED[stage].success


def is_unexpected(stage: Stage, code: int) -> bool:
    """A positive reply (2xx/3xx) that is not the stage's success: the server's state is
    not what the client thinks, so the connection is given up (RFC 5321 §3.8)."""
    return LOWEST_CODE <= code < 400 and not is_success(stage, code)


def judge(stage: Stage, reply: Reply, rules: Sequence[ReplyRule] = ()) -> Classification:
    """What ``reply`` means at ``stage``: ``ok`` only for the stage's expected codes."""
    if is_success(stage, reply.code):
        return Classification(Verdict.OK)
    for rule in rules:
        if rule.verdict != Verdict.OK and rule.matches(reply):
            return Classification(rule.verdict, rule)
    if 500 <= reply.code <= HIGHEST_CODE:
        return Classification(Verdict.PERMANENT)
    # 4xx, and any 2xx/3xx the stage did not expect.
    return Classification(Verdict.TRANSIENT)
