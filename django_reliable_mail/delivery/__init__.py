"""The service layer: store, claim, run the transport, record, schedule the retry.

Everything that touches the database goes through here, so the backend, the tasks, the
admin and the commands share one path. No transaction is ever held open while SMTP runs:
claiming and recording are short transactions around the network work.

- ``outbox``: validate and store messages in the caller's transaction;
- ``claiming``: take due messages with a lease, give them back untried;
- ``sending``: run the transport over claimed messages, streaming batches (the SMTP side
  in the worker's helper process where it has one);
- ``recording``: store attempts and move each message on;
- ``recovery``: return messages whose worker vanished;
- ``rows``: the prepared INSERT and UPDATE statements of the hot paths.
"""

from .claiming import claim, due_messages, fail_over, recipient_rows, release
from .outbox import (
    enqueue,
    enqueue_in_one_statement,
    enqueues_in_one_statement,
    prepare,
    validate,
)
from .recording import record, record_batch
from .recovery import recover_expired_leases
from .sending import RunSummary, deliver_due, deliver_message, deliver_messages, envelope_for
from .states import DISABLE_ONCE

__all__ = [
    "DISABLE_ONCE",
    "RunSummary",
    "claim",
    "deliver_due",
    "deliver_message",
    "deliver_messages",
    "due_messages",
    "enqueue",
    "enqueue_in_one_statement",
    "enqueues_in_one_statement",
    "envelope_for",
    "fail_over",
    "prepare",
    "recipient_rows",
    "record",
    "record_batch",
    "recover_expired_leases",
    "release",
    "validate",
]
