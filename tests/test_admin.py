"""The read-only admin shows messages and attempts, escaping what servers and senders wrote."""

import pytest
from django.urls import reverse
from django.utils import timezone

from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, RecipientStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_message():
    message = OutboundMessage.objects.create(
        status="failed",
        provider="main",
        from_email="a@example.com",
        recipients=["b@example.com"],
        subject="<b>Bold</b> offer",
        mime=b"x",
        size=1,
    )
    RecipientStatus.objects.create(
        message=message,
        address="b@example.com",
        state="rejected",
        reply_code=550,
        reply_text="<script>alert(1)</script>",
    )
    now = timezone.now()
    DeliveryAttempt.objects.create(
        message=message,
        number=1,
        provider="main",
        started_at=now,
        finished_at=now,
        outcome="permanent_failure",
        reply_code=550,
        reply_text="5.7.1 <script>alert('reply')</script>",
        transcript="[+0.001s] S: 550 5.7.1 <script>alert('transcript')</script>",
    )
    return message


@pytest.mark.parametrize("model", ["outboundmessage", "failedmessage"])
def test_change_page_escapes_server_text(admin_client, failed_message, model):
    url = reverse(f"admin:django_reliable_mail_{model}_change", args=[failed_message.pk])
    page = admin_client.get(url).content.decode()
    assert "&lt;script&gt;alert(&#x27;transcript&#x27;)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "&lt;b&gt;Bold&lt;/b&gt;" in page


def test_lists_are_filtered_by_status(admin_client, failed_message):
    OutboundMessage.objects.create(
        status="retrying",
        provider="main",
        from_email="a@example.com",
        recipients=["c@example.com"],
        subject="later",
        mime=b"x",
    )
    failed = admin_client.get(reverse("admin:django_reliable_mail_failedmessage_changelist"))
    retrying = admin_client.get(reverse("admin:django_reliable_mail_retryingmessage_changelist"))
    assert b"Bold" in failed.content and b"later" not in failed.content
    assert b"later" in retrying.content and b"Bold" not in retrying.content


def test_anonymous_users_are_refused(client, failed_message):
    url = reverse("admin:django_reliable_mail_outboundmessage_change", args=[failed_message.pk])
    response = client.get(url)
    assert response.status_code == 302 and "/login/" in response["Location"]
