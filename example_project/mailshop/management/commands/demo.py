"""The demo: real SMTP servers on loopback, real mail, and the Strato incident replayed.

python example_project/manage.py demo
"""

from __future__ import annotations

import asyncio
import tempfile
import textwrap

import aiosmtplib
from django.core.mail import EmailMessage, send_mail
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test import override_settings

from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.testing import LoopbackSMTPServer, make_certificate_authority

PASSWORD = "demo-password-not-shown"


class Command(BaseCommand):
    help = "Send mail through loopback SMTP servers and show what django-reliable-mail records."

    def handle(self, *args, **options):
        call_command("migrate", verbosity=0, interactive=False)
        first_id = OutboundMessage.objects.order_by("-id").values_list("id", flat=True).first() or 0
        with tempfile.TemporaryDirectory() as tmp:
            tls_context, ca_file = make_certificate_authority(tmp)
            relay = LoopbackSMTPServer(
                tls="starttls", tls_context=tls_context, users={"shop@example.com": PASSWORD}
            ).start()
            strato = LoopbackSMTPServer(
                tls="implicit",
                tls_context=tls_context,
                users={"shop@example.com": PASSWORD},
                extensions=["REQUIRETLS", "LIMITS RCPTMAX=1000"],
                discard_when_requiretls=True,
            ).start()
            try:
                self.run_demo(relay, strato, ca_file)
            finally:
                relay.stop()
                strato.stop()
        count = OutboundMessage.objects.filter(id__gt=first_id).count()
        self.heading("Done")
        self.stdout.write(
            f"{count} messages and their attempts are stored in example_project/db.sqlite3.\n"
            "Browse them in the admin: python example_project/manage.py createsuperuser, then\n"
            "python example_project/manage.py runserver and open http://127.0.0.1:8000/admin/"
        )

    def providers(self, relay, strato, ca_file, *, strato_override: bool):
        credentials = {
            "USERNAME": "shop@example.com",
            "PASSWORD": PASSWORD,
            "CA_FILE": ca_file,
            "TIMEOUT": 10,
        }
        strato_settings = {
            "HOST": strato.host,
            "PORT": strato.port,
            "TLS": "implicit",
            **credentials,
        }
        if strato_override:
            # What the "strato" preset does: never use the REQUIRETLS it advertises.
            strato_settings["DISABLE_EXTENSIONS"] = ["REQUIRETLS"]
        return {
            "DEFAULT_PROVIDER": "relay",
            "MODE": "immediate",
            "PROVIDERS": {
                "relay": {"HOST": relay.host, "PORT": relay.port, "TLS": "starttls", **credentials},
                "strato": strato_settings,
            },
        }

    def run_demo(self, relay, strato, ca_file):
        self.heading("1. A password-reset mail through a STARTTLS relay with AUTH")
        with override_settings(
            RELIABLE_MAIL=self.providers(relay, strato, ca_file, strato_override=True)
        ):
            send_mail(
                "Reset your password",
                "Follow this link to reset your password.",
                None,
                ["customer@example.com"],
            )
        message = OutboundMessage.objects.latest("id")
        self.show(message)
        self.stdout.write(f"The relay's mailbox now holds {len(relay.messages)} message(s).")

        self.heading("2. The incident: a client that uses REQUIRETLS because Strato offers it")
        reply = asyncio.run(self.naive_client(strato, ca_file))
        self.stdout.write(f"Server replied: {reply.code} {reply.message}")
        self.stdout.write(
            f"Messages delivered by the Strato-like server: {len(strato.messages)}; "
            f"silently discarded: {len(strato.log.discarded)}."
        )
        self.stdout.write(self.style.WARNING("Everything looked green, and the mail was lost."))

        self.heading("3. Ordinary mail through Strato: REQUIRETLS is never used unasked")
        with override_settings(
            RELIABLE_MAIL=self.providers(relay, strato, ca_file, strato_override=False)
        ):
            msg = EmailMessage(
                "Your receipt", "Thanks for your order.", None, ["customer@example.com"]
            )
            msg.reliable_mail = {"provider": "strato"}
            msg.send()
        message = OutboundMessage.objects.latest("id")
        self.show(message, transcript=False)
        self.stdout.write(f"Delivered by the Strato-like server: {len(strato.messages)}.")

        self.heading("4. A message that asks for REQUIRETLS (RFC 8689)")
        self.stdout.write("Without the override, the provider advertises it, so it is used:")
        with override_settings(
            RELIABLE_MAIL=self.providers(relay, strato, ca_file, strato_override=False)
        ):
            self.send_requiring_tls()
        lost = OutboundMessage.objects.latest("id")
        self.show(lost, transcript=False)
        self.stdout.write(
            self.style.WARNING(
                f"  → the server said {lost.attempts.last().reply_code} and discarded it "
                f"(discarded so far: {len(strato.log.discarded)}). The default would have lost it."
            )
        )
        self.stdout.write(
            "With DISABLE_EXTENSIONS ['REQUIRETLS'] (the 'strato' preset), it fails loudly:"
        )
        with override_settings(
            RELIABLE_MAIL=self.providers(relay, strato, ca_file, strato_override=True)
        ):
            self.send_requiring_tls()
        saved = OutboundMessage.objects.latest("id")
        self.show(saved)
        self.stdout.write(
            self.style.SUCCESS(
                "  → nothing was handed to the server; the message is stored as failed with the "
                "reason, for an operator to resend through a provider that honours REQUIRETLS."
            )
        )

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

    def heading(self, text):
        self.stdout.write("\n" + self.style.MIGRATE_HEADING(text))

    def show(self, message, *, transcript=True):
        self.stdout.write(
            f"Message #{message.pk} {message.subject!r} to {', '.join(message.recipients)}: "
            f"status {self.styled_status(message.status)}, provider {message.provider}"
        )
        for attempt in message.attempts.all():
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
            self.stdout.write(f"    used:       {', '.join(attempt.extensions_used)}")
            if transcript and attempt.transcript:
                self.stdout.write("    transcript:")
                self.stdout.write(textwrap.indent(attempt.transcript, "      "))

    def styled_status(self, status):
        if status == OutboundMessage.Status.SENT:
            return self.style.SUCCESS(status)
        return self.style.ERROR(status)
