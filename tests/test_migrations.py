"""Migrations that move stored data keep every message whole, both ways."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

APP = "django_reliable_mail"
BEFORE_BODIES, WITH_BODIES = (APP, "0006_fewer_indexes"), (APP, "0007_message_body")


def migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


@pytest.fixture
def at_latest_afterwards():
    yield
    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes(APP)[0])


@pytest.mark.django_db(transaction=True)
def test_bodies_move_to_their_own_table_and_back(at_latest_afterwards):
    old = migrate(BEFORE_BODIES)
    message = old.get_model(APP, "OutboundMessage")
    bodies = {
        message.objects.create(
            provider="main", from_email="a@example.com", mime=data, size=len(data)
        ).pk: data
        for data in (b"Subject: one\r\n\r\n\x00\xff\r\n", b"Subject: two\r\n\r\n" + b"x" * 5000)
    }

    new = migrate(WITH_BODIES)
    body = new.get_model(APP, "MessageBody")
    assert {b.message_id: bytes(b.mime) for b in body.objects.all()} == bodies
    assert "mime" not in {f.name for f in new.get_model(APP, "OutboundMessage")._meta.fields}

    back = migrate(BEFORE_BODIES)
    restored = back.get_model(APP, "OutboundMessage").objects.all()
    assert {m.pk: bytes(m.mime) for m in restored} == bodies
