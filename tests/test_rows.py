"""The prepared INSERT and UPDATE statements store exactly what the ORM would."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_reliable_mail.delivery import rows
from django_reliable_mail.models import (
    DeliveryAttempt,
    MessageBody,
    OutboundMessage,
    RecipientStatus,
)

pytestmark = pytest.mark.django_db


def new_message(i, **fields):
    return OutboundMessage(
        provider="main",
        from_email=f"s{i}@example.com",
        recipients=[f"r{i}@example.com", "ü@example.com"],
        subject=f"Subject {i} ü",
        tags=["a", i],
        metadata={"order": i, "nested": {"x": [1, 2]}},
        **fields,
    )


def insert(model, objects):
    """Store new instances through ``insert_values`` and give them their keys."""
    now = timezone.now()
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    values = [
        {
            f.attname: now
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
            else getattr(obj, f.attname)
            for f in fields
        }
        for obj in objects
    ]
    for obj, pk in zip(objects, rows.insert_values(model, values), strict=True):
        obj.pk = pk
        obj._state.adding = False


def test_insert_sets_keys_and_stores_every_kind_of_value():
    later = timezone.now() + timedelta(hours=1)
    messages = [new_message(i, send_at=later if i else None) for i in range(3)]
    insert(OutboundMessage, messages)
    assert all(m.pk for m in messages) and len({m.pk for m in messages}) == 3
    bodies = [b"\x00\xffbody\r\n" * (i + 1) for i in range(3)]
    given = [{"message_id": m.pk, "mime": body} for m, body in zip(messages, bodies, strict=True)]
    # A one-to-one primary key is given, and comes back as given.
    assert rows.insert_values(MessageBody, given) == [m.pk for m in messages]
    for m, body in zip(messages, bodies, strict=True):
        stored = OutboundMessage.objects.get(pk=m.pk)
        assert stored.mime == body and isinstance(stored.mime, bytes)
        assert (stored.recipients, stored.tags, stored.metadata) == (
            m.recipients,
            m.tags,
            m.metadata,
        )
        assert stored.subject == m.subject and stored.send_at == m.send_at
        assert stored.created_at is not None and stored.status == OutboundMessage.Status.QUEUED


def test_update_shared_and_individual_values():
    messages = [new_message(i) for i in range(5)]
    insert(OutboundMessage, messages)
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
    insert(OutboundMessage, [message])
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
    insert(DeliveryAttempt, attempts)
    statuses = [
        RecipientStatus(message=message, address=a) for a in ("r0@example.com", "x@example.com")
    ]
    insert(RecipientStatus, statuses)
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
    insert(OutboundMessage, [message])
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
    with pytest.raises(KeyError):
        rows.insert_values(OutboundMessage, [{}])  # every field is given (nothing stamps)


def message_values(now, **given):
    """A new message row with every field a row needs, through ``new_values``."""
    return rows.new_values(
        OutboundMessage,
        **{
            "created_at": now,
            "updated_at": now,
            "provider": "main",
            "from_email": "s@example.com",
            "recipients": ["r@example.com"],
            "next_attempt_at": now,
            **given,
        },
    )


def assert_same_row(made, read):
    """Every concrete field equal, and of the type read back (a choices enum counts as its
    str)."""
    for field in type(read)._meta.concrete_fields:
        made_value, read_value = getattr(made, field.attname), getattr(read, field.attname)
        assert made_value == read_value, field.name
        assert isinstance(made_value, type(read_value)), field.name


def test_new_values_and_stored_instance_match_what_is_read_back():
    values = message_values(timezone.now())
    assert values["status"] == "queued" and values["tags"] == [] and values["metadata"] == {}
    (pk,) = rows.insert_values(OutboundMessage, [values])
    made = rows.stored(OutboundMessage, pk, values, "default")
    assert not made._state.adding and made._state.db == "default"
    assert_same_row(made, OutboundMessage.objects.get(pk=pk))


def test_repeated_values_are_converted_once_but_stored_exactly():
    """Empty containers are cached per process, lists of strings per call, timestamps per
    value: none of that may mix up values that are equal in Python but not in JSON, or
    keep a caller's object that changes later."""
    from datetime import timezone as tz

    now = timezone.now()
    elsewhere = now.astimezone(tz(timedelta(hours=5)))  # the same instant
    base = message_values(now, updated_at=elsewhere)
    shared = {}
    first = {**base, "metadata": shared, "tags": [1], "recipients": ["a@example.com"]}
    second = {**base, "metadata": {}, "tags": [True], "recipients": ["a@example.com"]}
    third = {**base, "metadata": {}, "tags": [1.5], "recipients": ["b@example.com"]}
    pks = rows.insert_values(OutboundMessage, [first, second, third])
    shared["changed"] = "after the insert"
    (later,) = rows.insert_values(OutboundMessage, [{**base, "metadata": {}}])
    stored = {m.pk: m for m in OutboundMessage.objects.all()}
    assert [stored[pk].tags for pk in pks] == [[1], [True], [1.5]]
    assert [type(stored[pk].tags[0]) for pk in pks] == [int, bool, float]
    assert [stored[pk].recipients for pk in pks] == [["a@example.com"]] * 2 + [["b@example.com"]]
    assert stored[later].metadata == {}
    assert all(stored[pk].updated_at == now == stored[pk].created_at for pk in pks)


def test_load_reads_rows_as_the_orm_does():
    from django.db import connection

    later = timezone.now() + timedelta(hours=1)
    messages = [new_message(i, send_at=later if i else None) for i in range(3)]
    messages[1].metadata, messages[1].tags = {}, []
    messages[2].options = {"dsn_notify": ["FAILURE"]}
    insert(OutboundMessage, messages)
    rows.set_by_ids(OutboundMessage, [m.pk for m in messages], lease_expires_at=later)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {rows.columns(OutboundMessage, connection)} "
            f"FROM {OutboundMessage._meta.db_table} ORDER BY id"
        )
        loaded = rows.load(OutboundMessage, connection, cursor.fetchall())
    for made, read in zip(loaded, OutboundMessage.objects.order_by("id"), strict=True):
        assert_same_row(made, read)
    # Empty JSON values are each their own object, as json.loads would give.
    loaded[0].options["x"] = 1
    assert loaded[1].options == {} and loaded[1].metadata == {}


def test_update_groups_only_rows_that_bind_the_same_values():
    messages = [new_message(i) for i in range(6)]
    insert(OutboundMessage, messages)
    values = [
        ({}, 1, ["a"]),
        ({}, 1, ["a"]),  # the same as the first: one statement for both
        ({"n": 1}, True, ["a"]),  # equal to 1 in Python, but a bool
        ({"n": 1}, 1, [1]),
        ({"n": 1}, 1, [True]),
        ({"n": 1}, 1, ("x", ["y"])),  # a tuple holding a list: not hashable
    ]
    for message, (options, count, tags) in zip(messages, values, strict=True):
        message.options, message.attempt_count, message.tags = options, count, tags
    rows.update(OutboundMessage, messages, ["options", "attempt_count", "tags"])
    stored = [OutboundMessage.objects.get(pk=m.pk) for m in messages]
    assert [(m.options, m.attempt_count, m.tags) for m in stored] == [
        ({}, 1, ["a"]),
        ({}, 1, ["a"]),
        ({"n": 1}, 1, ["a"]),
        ({"n": 1}, 1, [1]),
        ({"n": 1}, 1, [True]),
        ({"n": 1}, 1, ["x", ["y"]]),
    ]
    assert [type(m.tags[0]) for m in stored[3:5]] == [int, bool]
