"""The operator's path in a real headless Chromium: log in, filter failed mail, open it,
read the transcript, retry it, see it sent. Screenshots go to artifacts/screenshots/."""

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import override_settings

from django_reliable_mail.models import OutboundMessage

from .test_admin import make_message
from .test_backend import provider_for

# CI installs both Chromium and Playwright: there a missing one is a failure, not a skip.
IN_CI = os.environ.get("CI") == "true"
if IN_CI:
    from playwright import sync_api as playwright
else:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[browser]'")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not IN_CI and not Path(CHROMIUM).exists(), reason="apt install chromium"),
]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_operator_retries_a_failed_message(live_server, page, smtp_server):
    server = smtp_server()
    config = {
        "DEFAULT_PROVIDER": "main",
        "MODE": "immediate",
        "PROVIDERS": {"main": provider_for(server)},
    }
    User.objects.create_superuser("ops", "ops@example.com", "correct horse")
    with override_settings(RELIABLE_MAIL=config):
        failed = make_message(subject="Password reset <3")
        make_message(status="sent", subject="Already delivered")

        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", "correct horse")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        shot(page, "01-logged-in")

        page.goto(f"{live_server.url}/admin/django_reliable_mail/outboundmessage/")
        page.click("#changelist-filter >> text=Failed")
        page.wait_for_url("**status__exact=failed**")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert "Password reset <3" in rows.first.inner_text()
        shot(page, "02-failed-filtered")

        rows.first.locator("a", has_text="Password reset").click()
        page.wait_for_selector("#attempts")
        transcript = page.locator(".rm-transcript").first.inner_text()
        assert "<script>alert('transcript')</script>" in transcript  # shown as text
        assert page.locator(".rm-transcript tr.server").count() >= 1
        shot(page, "03-transcript")

        page.click("#retry-now")
        page.wait_for_selector(".messagelist")
        assert "retry done" in page.locator(".messagelist").inner_text()
        shot(page, "04-after-retry")
        assert "Attempt 2" in page.locator("#attempts").inner_text()
        assert page.locator(".field-status .readonly").inner_text().strip().lower() == "sent"
    failed.refresh_from_db()
    assert failed.status == OutboundMessage.Status.SENT
    assert len(server.messages) == 1
