"""The demo: real SMTP servers on loopback, real mail, the main path and the Strato incident.

python example_project/manage.py demo            # runs through it, then stops
python example_project/manage.py demo --serve    # then opens the admin, with a login
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import textwrap
import time

import aiosmtplib
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, send_mass_mail
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_reliable_mail.exceptions import DeliveryError
from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.testing import LoopbackSMTPServer, make_certificate_authority

PASSWORD = "demo-password-not-shown"
GREYLISTED = "new-customer@example.net"


class Command(BaseCommand):
    help = "Send mail through loopback SMTP servers and show what django-reliable-mail records."

    def add_arguments(self, parser):
        parser.add_argument(
            "--serve",
            action="store_true",
            help="afterwards, create a throwaway admin login and serve the admin on :8000",
        )

    def handle(self, *args, **options):
        call_command("migrate", verbosity=0, interactive=False)
        first_id = OutboundMessage.objects.order_by("-id").values_list("id", flat=True).first() or 0
        with tempfile.TemporaryDirectory() as tmp:
            tls_context, ca_file = make_certificate_authority(tmp)
            servers = Servers(tls_context)
            try:
                self.run_demo(servers, ca_file)
            finally:
                servers.stop()
        count = OutboundMessage.objects.filter(id__gt=first_id).count()
        self.heading("Done")
        self.stdout.write(f"{count} messages and their attempts are stored in the demo database.")
        if options["serve"]:
            self.serve()
        else:
            self.stdout.write(
                "See them in the admin: python example_project/manage.py demo --serve"
            )

    # -- the story ------------------------------------------------------------------------

    def run_demo(self, servers, ca_file):
        self.heading("1. An order burst: five confirmations stored in the view's transaction")
        with override_settings(RELIABLE_MAIL=self.settings(servers, ca_file, mode="queue")):
            with transaction.atomic():
                send_mass_mail(
                    [
                        (f"Order #{n} confirmed", "Thanks for your order.", None, [to])
                        for n, to in enumerate(self.customers(), start=1001)
                    ]
                )
            self.stdout.write(
                f"send_mass_mail() returned at once; statuses: {self.statuses()}. "
                f"The relay has {len(servers.relay.messages)} message(s) so far."
            )
            self.heading("2. A worker drains the queue (a qcluster in production)")
            self.stdout.write("$ manage.py reliable_mail_send")
            call_command("reliable_mail_send", "--no-progress", stdout=self.stdout)
            self.stdout.write(f"Statuses: {self.statuses()}")
            waiting = OutboundMessage.objects.get(recipients=[GREYLISTED])
            self.show(waiting, transcript=False)

            self.heading("3. The greylisted message is retried when it is due")
            pause = max(0.0, (waiting.next_attempt_at - timezone.now()).total_seconds())
            self.stdout.write(f"(its retry is due in {pause:.1f} s)")
            time.sleep(pause + 0.2)  # a demo may wait; the worker would be polling meanwhile
            call_command("reliable_mail_send", "--no-progress", stdout=self.stdout)
            waiting.refresh_from_db()
            self.show(waiting, transcript=False)

        self.heading("4. The drop-in: only EMAIL_BACKEND changed, Django's EMAIL_* kept")
        local = servers.local
        with override_settings(RELIABLE_MAIL=None, EMAIL_HOST=local.host, EMAIL_PORT=local.port):
            msg = EmailMessage(
                "Reset your password", "Follow this link.", None, ["ann@example.com"]
            )
            msg.send()
        status = msg.reliable_mail_status
        self.stdout.write(
            f"msg.send() sent it in the call, as Django's SMTP backend would: "
            f"msg.reliable_mail_status is #{status.id}, {self.styled(status.status)}."
        )
        self.show(OutboundMessage.objects.get(pk=status.id))

        self.heading("5. The incident: a client that uses REQUIRETLS because Strato offers it")
        reply = asyncio.run(self.naive_client(servers.strato, ca_file))
        self.stdout.write(f"Server replied: {reply.code} {reply.message}")
        self.stdout.write(
            f"Messages delivered by the Strato-like server: {len(servers.strato.messages)}; "
            f"silently discarded: {len(servers.strato.log.discarded)}."
        )
        self.stdout.write(self.style.WARNING("Everything looked green, and the mail was lost."))

        self.heading("6. Ordinary mail through Strato: REQUIRETLS is never used unasked")
        with override_settings(RELIABLE_MAIL=self.settings(servers, ca_file, strato_preset=False)):
            msg = EmailMessage("Your receipt", "Thanks for your order.", None, ["ann@example.com"])
            msg.reliable_mail = {"provider": "strato"}
            msg.send()
        self.show(OutboundMessage.objects.latest("id"), transcript=False)
        self.stdout.write(f"Delivered by the Strato-like server: {len(servers.strato.messages)}.")

        self.heading("7. A message that asks for REQUIRETLS (RFC 8689)")
        self.stdout.write("Without the override, the provider advertises it, so it is used:")
        with override_settings(RELIABLE_MAIL=self.settings(servers, ca_file, strato_preset=False)):
            self.send_requiring_tls()
        lost = OutboundMessage.objects.latest("id")
        self.show(lost, transcript=False)
        self.stdout.write(
            self.style.WARNING(
                f"  → the server said {lost.attempts.last().reply_code} and discarded it "
                f"(discarded so far: {len(servers.strato.log.discarded)}). "
                "The default would have lost it."
            )
        )
        self.stdout.write(
            "With DISABLE_EXTENSIONS ['REQUIRETLS'] (the 'strato' preset), it fails loudly:"
        )
        with override_settings(RELIABLE_MAIL=self.settings(servers, ca_file)):
            try:
                self.send_requiring_tls()
            except DeliveryError as exc:
                self.stdout.write(f"  msg.send() raised {type(exc).__name__}: {exc}")
        self.show(OutboundMessage.objects.latest("id"))
        self.stdout.write(
            self.style.SUCCESS(
                "  → nothing was handed to the server; the message is stored as failed with the "
                "reason, for an operator to resend through a provider that honours REQUIRETLS."
            )
        )

    def customers(self):
        return [
            "ann@example.com",
            "bob@example.com",
            GREYLISTED,
            "dora@example.com",
            "emil@example.com",
        ]

    def settings(self, servers, ca_file, *, mode="immediate", strato_preset=True):
        credentials = {"USERNAME": "shop@example.com", "PASSWORD": PASSWORD, "CA_FILE": ca_file}
        strato = {"HOST": servers.strato.host, "PORT": servers.strato.port, "TLS": "implicit"}
        if strato_preset:
            # What the "strato" preset does: never use the REQUIRETLS it advertises.
            strato["DISABLE_EXTENSIONS"] = ["REQUIRETLS"]
        relay = {"HOST": servers.relay.host, "PORT": servers.relay.port, "TLS": "starttls"}
        # A quick retry, so that the demo need not wait a minute for it.
        relay["RETRY"] = {"BASE_SECONDS": 2, "JITTER": 0}
        return {
            "DEFAULT_PROVIDER": "relay",
            "MODE": mode,
            "PROVIDERS": {
                "relay": {**relay, **credentials, "TIMEOUT": 10},
                "strato": {**strato, **credentials, "TIMEOUT": 10},
            },
        }

    def send_requiring_tls(self):
        msg = EmailMessage(
            "Your medical results", "Strictly confidential.", None, ["patient@example.com"]
        )
        msg.reliable_mail = {"provider": "strato", "require_tls": True}
        msg.send()

    async def naive_client(self, strato, ca_file):
        # Like MailKit 4.4.0: append REQUIRETLS whenever the server advertises it.
        smtp = aiosmtplib.SMTP(
            hostname=strato.host,
            port=strato.port,
            use_tls=True,
            cert_bundle=ca_file,
            username="shop@example.com",
            password=PASSWORD,
        )
        async with smtp:
            options = ["REQUIRETLS"] if smtp.supports_extension("requiretls") else []
            _refused, reply = await smtp.sendmail(
                "shop@example.com",
                ["customer@example.com"],
                b"Subject: Reset your password\r\n\r\nLink inside.\r\n",
                mail_options=options,
            )
        return aiosmtplib.SMTPResponse(250, reply)  # sendmail() raises for anything but 250

    # -- the admin ------------------------------------------------------------------------

    def serve(self):
        username, password = "demo", secrets.token_urlsafe(12)
        User = get_user_model()
        user = User.objects.filter(username=username).first() or User(username=username)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.heading("The admin")
        self.stdout.write(
            "Open http://127.0.0.1:8000/admin/django_reliable_mail/outboundmessage/ and log in as\n"
            f"  user {username}, password {password}   (a throwaway login, new on every run)\n"
            "The dashboard is at …/outboundmessage/dashboard/. Stop with Ctrl-C."
        )
        call_command("runserver", "127.0.0.1:8000", use_reloader=False)

    # -- output ---------------------------------------------------------------------------

    def statuses(self):
        counts = {}
        for status in OutboundMessage.objects.filter(subject__startswith="Order #").values_list(
            "status", flat=True
        ):
            counts[status] = counts.get(status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

    def heading(self, text):
        self.stdout.write("\n" + self.style.MIGRATE_HEADING(text))

    def show(self, message, *, transcript=True):
        self.stdout.write(
            f"Message #{message.pk} {message.subject!r} to {', '.join(message.recipients)}: "
            f"status {self.styled(message.status)}, provider {message.provider}"
        )
        for attempt in message.attempts.order_by("number"):
            self.stdout.write(
                f"  attempt {attempt.number}: {attempt.outcome}; "
                f"reply {attempt.reply_code or '-'} {attempt.reply_text or attempt.error}"
            )
            self.stdout.write(
                f"    TLS {attempt.tls_version or 'none'} {attempt.tls_cipher}; "
                f"AUTH {attempt.auth_mechanism or '-'}; "
                f"MAIL FROM parameters: {' '.join(attempt.mail_parameters) or '-'}"
            )
            self.stdout.write(f"    advertised: {', '.join(attempt.extensions_advertised)}")
            self.stdout.write(f"    effective:  {', '.join(attempt.extensions_used)}")
            if transcript and attempt.transcript:
                self.stdout.write("    transcript:")
                self.stdout.write(textwrap.indent(attempt.transcript, "      "))

    def styled(self, status):
        if status == OutboundMessage.Status.SENT:
            return self.style.SUCCESS(status)
        if status in (OutboundMessage.Status.QUEUED, OutboundMessage.Status.RETRYING):
            return self.style.WARNING(status)
        return self.style.ERROR(status)


class Servers:
    """The demo's SMTP servers on loopback: a relay (STARTTLS, AUTH, greylisting one new
    address), a Strato-like server (implicit TLS, REQUIRETLS that it drops) and a plain
    local relay such as a project's own Postfix."""

    def __init__(self, tls_context):
        greylisted = set()

        def greylist(address):
            if address == GREYLISTED and address not in greylisted:
                greylisted.add(address)
                return "451 4.7.1 Greylisted, please try again later"
            return None

        users = {"shop@example.com": PASSWORD}
        self.relay = LoopbackSMTPServer(
            tls="starttls", tls_context=tls_context, users=users, rcpt_reply=greylist
        ).start()
        self.strato = LoopbackSMTPServer(
            tls="implicit",
            tls_context=tls_context,
            users=users,
            extensions=["REQUIRETLS", "LIMITS RCPTMAX=1000"],
            discard_when_requiretls=True,
        ).start()
        self.local = LoopbackSMTPServer().start()

    def stop(self):
        for server in (self.relay, self.strato, self.local):
            server.stop()
