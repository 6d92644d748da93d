"""The operator admin through Django's test client: pages, permissions, actions, escaping."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_reliable_mail.models import (
    DeliveryAttempt,
    MessageBody,
    MessageEvent,
    OutboundMessage,
    RecipientStatus,
)

from .test_backend import provider_for

pytestmark = pytest.mark.django_db
Status = OutboundMessage.Status
CONFIG = {
    "DEFAULT_PROVIDER": "main",
    "MODE": "queue",
    "PROVIDERS": {
        "main": {"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"},
        "backup": {"HOST": "127.0.0.1", "PORT": 3, "TLS": "none"},
    },
}


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.RELIABLE_MAIL = CONFIG


def make_message(status="failed", subject="<b>Bold</b> offer", **kwargs):
    message = OutboundMessage.objects.create(
        status=status,
        provider="main",
        from_email="a@example.com",
        recipients=["b@example.com"],
        subject=subject,
        size=30,
        attempt_count=1,
        **kwargs,
    )
    MessageBody.objects.create(message=message, mime=b"Subject: x\r\n\r\nsecret body\r\n")
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
        reply_enhanced_code="5.7.1",
        reply_text="5.7.1 <script>alert('reply')</script>",
        extensions_advertised=["8BITMIME", "REQUIRETLS"],
        extensions_used=["8BITMIME"],
        transcript="[+0.001s] C: MAIL FROM:<a@example.com>\n"
        "[+0.002s] S: 550 5.7.1 <script>alert('transcript')</script>\n"
        "[+0.003s] *: TLS established",
    )
    return message


def staff(*permissions):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in (
        "view_outboundmessage",
        "view_failedmessage",
        "view_retryingmessage",
        *permissions,
    ):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def url(name, *args):
    return reverse(f"admin:django_reliable_mail_{name}", args=args)


def test_change_page_shows_the_timeline_escaped(admin_client):
    message = make_message()
    page = admin_client.get(url("outboundmessage_change", message.pk)).content.decode()
    assert "&lt;script&gt;alert(&#x27;transcript&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;reply&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "&lt;b&gt;Bold&lt;/b&gt;" in page
    assert 'class="client"' in page and 'class="server"' in page and 'class="event"' in page
    assert "not used: REQUIRETLS" in page
    assert "secret body" not in page  # bodies need their own permission


def test_failed_and_retrying_lists(admin_client):
    make_message()
    make_message(status="retrying", subject="later")
    failed = admin_client.get(url("failedmessage_changelist")).content.decode()
    retrying = admin_client.get(url("retryingmessage_changelist")).content.decode()
    assert "Bold" in failed and "later" not in failed
    assert "later" in retrying and "Bold" not in retrying
    everything = admin_client.get(
        url("outboundmessage_changelist") + "?status=failed&q=b%40example.com"
    )
    assert everything.status_code == 200 and "Bold" in everything.content.decode()
    follow = admin_client.get(
        url("failedmessage_change", OutboundMessage.objects.first().pk), follow=True
    )
    assert follow.status_code == 200


@pytest.mark.parametrize(
    "page",
    [
        "outboundmessage_changelist",
        "failedmessage_changelist",
        "retryingmessage_changelist",
        "outboundmessage_dashboard",
        "deliveryattempt_changelist",
    ],
)
def test_every_list_page_renders(admin_client, page):
    make_message()
    response = admin_client.get(url(page))
    assert response.status_code == 200


def test_search_by_queue_id_and_message_id(admin_client):
    message = make_message(message_id="<abc@example.com>")
    DeliveryAttempt.objects.filter(message=message).update(queue_id="Q123ABC")
    for term in ("Q123ABC", "<abc@example.com>"):
        page = admin_client.get(url("outboundmessage_changelist"), {"q": term}).content.decode()
        assert "Bold" in page, term


def test_dashboard_figures_and_chart(admin_client):
    make_message()
    page = admin_client.get(url("outboundmessage_dashboard")).content.decode()
    assert 'id="chart-24h"' in page and 'id="chart-30d"' in page
    assert page.count(": 1 attempts, 1 failed</title>") == 2  # this hour and today
    assert "550 5.7.1" in page
    assert "0.0% of 1 attempts" in page
    assert "https://" not in page.split('id="content-main"')[1]  # no CDN: works offline


def test_anonymous_and_non_staff_are_refused(client):
    message = make_message()
    for target in (
        url("outboundmessage_change", message.pk),
        url("outboundmessage_dashboard"),
        url("outboundmessage_eml", message.pk),
    ):
        response = client.get(target)
        assert response.status_code == 302 and "/login/" in response["Location"]
    User.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    assert client.get(url("outboundmessage_changelist")).status_code == 302
    response = client.post(url("outboundmessage_operate", message.pk), {"operation": "retry"})
    assert response.status_code == 302
    assert OutboundMessage.objects.get().status == Status.FAILED


def test_staff_without_retry_permission_cannot_retry(client):
    message = make_message()
    client.force_login(staff())
    page = client.get(url("outboundmessage_change", message.pk)).content.decode()
    assert 'id="operations"' not in page
    response = client.post(url("outboundmessage_operate", message.pk), {"operation": "retry"})
    assert response.status_code == 403
    response = client.post(
        url("outboundmessage_changelist"), {"action": "retry_now", "_selected_action": [message.pk]}
    )
    assert OutboundMessage.objects.get().status == Status.FAILED
    assert MessageEvent.objects.count() == 0
    assert client.get(url("outboundmessage_eml", message.pk)).status_code == 403


def test_a_get_changes_nothing(admin_client):
    message = make_message()
    response = admin_client.get(url("outboundmessage_operate", message.pk), {"operation": "retry"})
    assert response.status_code == 405
    admin_client.get(
        url("outboundmessage_changelist"), {"action": "retry_now", "_selected_action": message.pk}
    )
    assert OutboundMessage.objects.get().status == Status.FAILED
    assert MessageEvent.objects.count() == 0


def test_body_download_needs_its_permission(client):
    message = make_message()
    client.force_login(staff("view_message_body"))
    page = client.get(url("outboundmessage_change", message.pk)).content.decode()
    assert 'id="download-eml"' in page
    response = client.get(url("outboundmessage_eml", message.pk))
    assert response["Content-Type"] == "message/rfc822"
    assert b"secret body" in response.content


def test_retry_and_cancel_actions_are_recorded(client, django_capture_on_commit_callbacks):
    first, second = make_message(), make_message(status="retrying")
    client.force_login(staff("retry_outboundmessage"))
    with django_capture_on_commit_callbacks(execute=False):
        client.post(
            url("outboundmessage_changelist"),
            {"action": "retry_now", "_selected_action": [first.pk]},
        )
    first.refresh_from_db()
    assert first.status == Status.RETRYING and first.next_attempt_at <= timezone.now()
    assert first.recipient_statuses.get().state == "pending"
    event = MessageEvent.objects.get(message=first)
    assert (event.action, event.actor) == ("retry", "operator")
    client.post(url("outboundmessage_operate", second.pk), {"operation": "cancel"})
    second.refresh_from_db()
    assert second.status == Status.CANCELLED
    assert MessageEvent.objects.filter(message=second, action="cancel").exists()


def test_reroute_through_the_intermediate_form(admin_client, django_capture_on_commit_callbacks):
    message = make_message()
    changelist = url("outboundmessage_changelist")
    form = admin_client.post(
        changelist, {"action": "retry_other_provider", "_selected_action": [message.pk]}
    )
    assert b'name="provider"' in form.content
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(
            changelist,
            {
                "action": "retry_other_provider",
                "_selected_action": [message.pk],
                "provider": "backup",
            },
        )
    message.refresh_from_db()
    assert message.provider == "backup" and message.status == Status.RETRYING
    assert "through provider 'backup'" in MessageEvent.objects.get().detail


@pytest.mark.django_db(transaction=True)
def test_retry_once_without_an_extension_then_move_to_sent(admin_client, smtp_server):
    server = smtp_server(extensions=["REQUIRETLS"])
    config = {
        "DEFAULT_PROVIDER": "main",
        "MODE": "immediate",
        "PROVIDERS": {"main": provider_for(server)},
    }
    with override_settings(RELIABLE_MAIL=config):
        message = make_message()
        admin_client.post(
            url("outboundmessage_operate", message.pk),
            {"operation": "disable", "extensions": ["8BITMIME"]},
        )
    message.refresh_from_db()
    assert message.status == Status.SENT
    attempt = message.attempts.order_by("-number").first()
    assert "8BITMIME" not in " ".join(attempt.extensions_used)
    assert "disable_extensions_once" not in message.options
    assert server.messages[0].rcpt_tos == ["b@example.com"]


# -- ids in URLs: the permission refusal first, then 404, never a 500 -----------------------

BAD_IDS = ["abc", "0", "-1", "999999", "1.5", "1 OR 1=1", "%00", "99999999999999999999999"]
ROW_URLS = [
    ("outboundmessage_change", "get"),
    ("outboundmessage_history", "get"),
    ("outboundmessage_eml", "get"),
    ("outboundmessage_operate", "post"),
    ("failedmessage_change", "get"),
    ("failedmessage_history", "get"),
    ("retryingmessage_change", "get"),
    ("retryingmessage_history", "get"),
    ("deliveryattempt_change", "get"),
    ("deliveryattempt_history", "get"),
]


def fetch(client, name, method, object_id):
    target = url(name, object_id)
    return client.post(target, {"operation": "retry"}) if method == "post" else client.get(target)


@pytest.mark.parametrize(("name", "method"), ROW_URLS)
def test_a_bad_id_is_a_404_for_a_superuser(admin_client, name, method):
    make_message()
    for object_id in BAD_IDS:
        assert fetch(admin_client, name, method, object_id).status_code == 404, object_id


@pytest.mark.parametrize(("name", "method"), ROW_URLS)
def test_without_permission_existing_and_missing_rows_look_the_same(client, name, method):
    message = make_message()
    attempt = message.attempts.get()
    client.force_login(User.objects.create_user("nobody", password="pw", is_staff=True))
    existing = attempt.pk if name.startswith("deliveryattempt") else message.pk
    responses = [fetch(client, name, method, i) for i in [existing, *BAD_IDS]]
    assert {r.status_code for r in responses} == {403}
    assert len({r.content for r in responses}) == 1


@pytest.mark.parametrize(("name", "method"), ROW_URLS)
def test_anonymous_users_are_sent_to_the_login_page_whatever_the_id(client, name, method):
    make_message()
    for object_id in ["1", *BAD_IDS]:
        response = fetch(client, name, method, object_id)
        assert response.status_code == 302 and "/login/" in response["Location"], object_id


def test_existing_rows_still_open(admin_client):
    message = make_message(status="retrying")
    attempt = message.attempts.get()
    assert admin_client.get(url("outboundmessage_change", message.pk)).status_code == 200
    assert admin_client.get(url("outboundmessage_history", message.pk)).status_code == 200
    assert admin_client.get(url("outboundmessage_eml", message.pk)).status_code == 200
    assert admin_client.get(url("deliveryattempt_change", attempt.pk)).status_code == 200
    assert admin_client.get(url("deliveryattempt_history", attempt.pk)).status_code == 200
    # The Failed list's link still finds a message that has moved on to another status.
    for proxy in ("failedmessage_change", "retryingmessage_change"):
        response = admin_client.get(url(proxy, message.pk))
        assert response.status_code == 302
        assert response["Location"] == url("outboundmessage_change", message.pk)


def test_a_legacy_url_without_change_redirects_then_404s(admin_client):
    # Django's catch-all "<id>/" redirects to "<id>/change/", which then answers.
    response = admin_client.get(url("outboundmessage_changelist") + "abc/", follow=True)
    assert response.status_code == 404


def test_staff_with_view_permission_gets_404_for_a_bad_id(client):
    make_message()
    client.force_login(staff())
    for object_id in BAD_IDS:
        response = client.get(url("outboundmessage_change", object_id))
        assert response.status_code == 404, object_id
        # and the body download still asks for its own permission first
        assert client.get(url("outboundmessage_eml", object_id)).status_code == 403


@pytest.mark.parametrize("name", ["outboundmessage_delete", "deliveryattempt_delete"])
def test_read_only_delete_urls_refuse_whatever_the_id(admin_client, name):
    message = make_message()
    existing = message.attempts.get().pk if name.startswith("delivery") else message.pk
    for object_id in [existing, *BAD_IDS]:
        assert admin_client.get(url(name, object_id)).status_code == 403, object_id
