"""``writing()``: our transactions take SQLite's write lock when they begin."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.transactions import writing

pytestmark = pytest.mark.django_db(transaction=True)


def _begins(queries):
    return [q["sql"] for q in queries if q["sql"].upper().startswith("BEGIN")]


def test_outermost_block_begins_immediate_and_leaves_the_mode_as_configured():
    connection.ensure_connection()
    configured = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode")
    with CaptureQueriesContext(connection) as queries:
        with writing():
            OutboundMessage.objects.count()
            with writing():  # nested: a savepoint, no second BEGIN
                OutboundMessage.objects.count()
    if connection.vendor == "sqlite":
        assert _begins(queries.captured_queries) == ["BEGIN IMMEDIATE"]
        assert connection.transaction_mode == configured
    else:
        assert "BEGIN IMMEDIATE" not in _begins(queries.captured_queries)


def test_inside_a_callers_transaction_it_is_a_plain_nested_block():
    with CaptureQueriesContext(connection) as queries:
        with transaction.atomic():
            with writing():
                OutboundMessage.objects.count()
    assert "BEGIN IMMEDIATE" not in _begins(queries.captured_queries)


def test_an_error_rolls_back_and_restores_the_mode():
    connection.ensure_connection()
    before = connection.transaction_mode if connection.vendor == "sqlite" else None
    with pytest.raises(RuntimeError):
        with writing():
            OutboundMessage.objects.update(subject="x")
            raise RuntimeError("boom")
    if connection.vendor == "sqlite":
        assert connection.transaction_mode == before
    assert not connection.in_atomic_block
