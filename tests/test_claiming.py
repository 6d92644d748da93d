"""Claiming: both ways of taking due messages (one UPDATE … RETURNING, or pick-update-read
where a database has no UPDATE … RETURNING) must take the same rows, in the same order, and
hand back fully converted model instances."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from django_reliable_mail import throttle
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.conf import get_config
from django_reliable_mail.delivery import claiming
from django_reliable_mail.models import OutboundMessage

from .test_backend import message
from .test_queue import queue_async, queue_config, queue_sync

pytestmark = pytest.mark.django_db(transaction=True)
Status = OutboundMessage.Status


@pytest.fixture(autouse=True)
def _restore_sync():
    yield
    queue_sync()


@pytest.fixture(params=["returning", "queryset"])
def strategy(request, monkeypatch):
    if request.param == "queryset":
        monkeypatch.setattr(claiming, "_updates_returning", lambda connection: False)
    elif not claiming._updates_returning(claiming.connection):
        pytest.skip("this database has no UPDATE … RETURNING")
    return request.param


@pytest.fixture
def two_providers(settings):
    settings.RELIABLE_MAIL = queue_config(
        main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"},
        other={"HOST": "127.0.0.1", "PORT": 3, "TLS": "none"},
    )
    queue_async(settings)
    return get_config()


def queue(subject, **reliable_mail):
    mail = message(subject=subject, to=[f"{subject}@example.com", f"{subject}2@example.com"])
    mail.reliable_mail = reliable_mail
    EmailBackend().send_messages([mail])


def test_claims_due_messages_in_queue_order(strategy, two_providers):
    queue("low")
    queue("later", send_at=timezone.now() + timedelta(hours=1))
    queue("high", priority=5)
    queue("low2")
    queue("elsewhere", provider="other")
    first = claiming.claim(config=two_providers, provider="main", limit=2)
    assert [m.subject for m in first] == ["high", "low"]
    rest = claiming.claim(config=two_providers, provider="main", limit=10)
    assert [m.subject for m in rest] == ["low2"]
    assert claiming.claim(config=two_providers, provider="main", limit=10) == []
    claimed = {m.pk for m in first + rest}
    assert set(
        OutboundMessage.objects.filter(status=Status.SENDING).values_list("pk", flat=True)
    ) == (claimed)
    tokens = {m.claim_token for m in first}
    assert len(tokens) == 1 and len(next(iter(tokens))) == 32


def test_claimed_rows_are_converted_like_a_queryset(strategy, two_providers):
    queue("one", priority=2, tags=["receipt"], require_tls=False)
    (claimed,) = claiming.claim(config=two_providers, limit=5)
    stored = OutboundMessage.objects.get(pk=claimed.pk)
    for field in OutboundMessage._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(stored, field.attname), field.name
    assert isinstance(claimed.lease_expires_at, datetime) and claimed.lease_expires_at.tzinfo
    assert isinstance(bytes(claimed.mime), bytes) and claimed.tags == ["receipt"]
    assert claimed.status == Status.SENDING and not claimed._state.adding
    assert [r.address for r in claimed.recipient_rows] == ["one@example.com", "one2@example.com"]
    assert all(r.message_id == claimed.pk for r in claimed.recipient_rows)


def test_claims_only_the_given_ids_and_skips_paused_providers(strategy, two_providers):
    queue("a")
    queue("b")
    queue("c", provider="other")
    ids = {m.subject: m.pk for m in OutboundMessage.objects.all()}
    throttle.mark_degraded("other", "refused")
    taken = claiming.claim(config=two_providers, ids=[ids["b"], ids["c"]], limit=10)
    assert [m.subject for m in taken] == ["b"]
    assert claiming.claim(config=two_providers, ids=[], limit=10) == []
    assert OutboundMessage.objects.get(pk=ids["c"]).status == Status.QUEUED


def test_a_message_without_its_body_row_is_failed_not_sent_empty(strategy, two_providers):
    from django_reliable_mail.models import MessageBody

    queue("whole")
    queue("bodiless")
    bodiless = OutboundMessage.objects.get(subject="bodiless")
    MessageBody.objects.filter(message=bodiless).delete()
    (claimed,) = claiming.claim(config=two_providers, limit=5)
    assert claimed.subject == "whole" and claimed.mime.startswith(b"Content-Type")
    bodiless.refresh_from_db()
    assert bodiless.status == Status.FAILED and bodiless.claim_token == ""
    assert "no stored body" in bodiless.last_error
