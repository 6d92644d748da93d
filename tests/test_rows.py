"""The prepared INSERT and UPDATE statements store exactly what the ORM would."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_reliable_mail.delivery import rows
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, RecipientStatus

pytestmark = pytest.mark.django_db


def new_message(i, **fields):
    return OutboundMessage(
        provider="main",
        from_email=f"s{i}@example.com",
        recipients=[f"r{i}@example.com", "ü@example.com"],
        subject=f"Subject {i} ü",
        mime=b"\x00\xffbody\r\n" * (i + 1),
        tags=["a", i],
        metadata={"order": i, "nested": {"x": [1, 2]}},
        **fields,
    )


def test_insert_sets_keys_and_stores_every_kind_of_value():
    later = timezone.now() + timedelta(hours=1)
    messages = [new_message(i, send_at=later if i else None) for i in range(3)]
    rows.insert(OutboundMessage, messages)
    assert all(m.pk for m in messages) and len({m.pk for m in messages}) == 3
    for m in messages:
        stored = OutboundMessage.objects.get(pk=m.pk)
        assert bytes(stored.mime) == m.mime
        assert (stored.recipients, stored.tags, stored.metadata) == (
            m.recipients,
            m.tags,
            m.metadata,
        )
        assert stored.subject == m.subject and stored.send_at == m.send_at
        assert stored.created_at is not None and stored.status == OutboundMessage.Status.QUEUED


def test_update_shared_and_individual_values():
    messages = [new_message(i) for i in range(5)]
    rows.insert(OutboundMessage, messages)
    now = timezone.now()
    for i, m in enumerate(messages):
        m.status = "sent" if i < 3 else "retrying"  # three alike, two each their own
        m.attempt_count = 1
        m.next_attempt_at = None if i < 3 else now + timedelta(seconds=i)
        m.options = {} if i < 3 else {"n": i}
        m.last_error = "" if i < 3 else f"451 try again {i}"
    fields = ["status", "attempt_count", "next_attempt_at", "options", "last_error"]
    rows.update(OutboundMessage, messages, fields)
    for m in messages:
        stored = OutboundMessage.objects.get(pk=m.pk)
        assert [getattr(stored, f) for f in fields] == [getattr(m, f) for f in fields]


def test_recipient_rows_get_their_own_attempt():
    message = new_message(0)
    rows.insert(OutboundMessage, [message])
    now = timezone.now()
    attempts = [
        DeliveryAttempt(
            message=message,
            number=n,
            provider="main",
            started_at=now,
            finished_at=now,
            outcome="accepted",
            extensions_advertised=["PIPELINING", "SIZE 1000"],
            recipient_replies={"r0@example.com": {"code": 250}},
        )
        for n in (1, 2)
    ]
    rows.insert(DeliveryAttempt, attempts)
    statuses = [
        RecipientStatus(message=message, address=a) for a in ("r0@example.com", "x@example.com")
    ]
    rows.insert(RecipientStatus, statuses)
    for status, attempt, code in zip(statuses, attempts, (250, 451), strict=True):
        status.state, status.reply_code, status.attempt = "accepted", code, attempt
        status.reply_text = f"reply {code}"
    rows.update(RecipientStatus, statuses, ["state", "reply_code", "reply_text", "attempt"])
    stored = {s.address: s for s in RecipientStatus.objects.all()}
    assert stored["r0@example.com"].attempt_id == attempts[0].pk
    assert stored["x@example.com"].attempt_id == attempts[1].pk
    assert stored["x@example.com"].reply_code == 451
    assert DeliveryAttempt.objects.get(pk=attempts[1].pk).extensions_advertised == [
        "PIPELINING",
        "SIZE 1000",
    ]
    rows.set_by_ids(OutboundMessage, [message.pk], body_started_at=now)
    assert OutboundMessage.objects.get().body_started_at == now
    assert rows.values_by_ids(OutboundMessage, [message.pk], ["status"]) == {
        message.pk: ("queued",)
    }


def test_insert_values_returns_keys_in_order_and_stores_what_the_orm_would():
    message = new_message(0)
    rows.insert(OutboundMessage, [message])
    now = timezone.now()
    names = [f.attname for f in DeliveryAttempt._meta.concrete_fields if not f.primary_key]
    base = {name: DeliveryAttempt._meta.get_field(name).get_default() for name in names}
    values = [
        {
            **base,
            "message_id": message.pk,
            "number": n,
            "provider": "main",
            "started_at": now,
            "finished_at": now + timedelta(seconds=n),
            "port": 25 if n else None,
            "extensions_advertised": ["PIPELINING", "SIZE"],  # the same list on every row
            "recipient_replies": {"r@example.com": {"code": 250, "text": f"ok ü {n}"}},
            "outcome": DeliveryAttempt.Outcome.ACCEPTED,
            "transcript": f"S: 250 ok {n}\r\n",
        }
        for n in range(1, 4)
    ]
    pks = rows.insert_values(DeliveryAttempt, values)
    assert len(set(pks)) == 3
    for pk, row in zip(pks, values, strict=True):
        stored = DeliveryAttempt.objects.get(pk=pk)
        assert {name: getattr(stored, name) for name in names} == row
    with pytest.raises(ValueError, match="auto_now"):
        rows.insert_values(OutboundMessage, [{}])
