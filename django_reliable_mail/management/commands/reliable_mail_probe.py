"""Connect to a provider and report what it offers and what we would use.

    manage.py reliable_mail_probe strato
    manage.py reliable_mail_probe strato --send-to me@example.com
    manage.py reliable_mail_probe strato --json

Connects with the provider's TLS policy, EHLO, AUTH; prints advertised and effective
extensions and warnings where the settings (or the preset) and the server disagree. Exits
non-zero when the connection, TLS, AUTH or the test message fails.
"""

from __future__ import annotations

import json
import sys
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...bridge import SyncBridge
from ...conf import ProviderConfig, get_config
from ...exceptions import ReliableMailConfigError
from ...providers import PRESETS
from ...smtp.transport import Envelope, SMTPFailure, SMTPSession, wire_format


def differences(provider: ProviderConfig, session: SMTPSession) -> list[str]:
    """Where configuration and server disagree: stale overrides, surprises, limits."""
    caps = session.capabilities
    notes = []
    for name in sorted(provider.disable_extensions):
        if name not in caps.advertised:
            notes.append(
                f"DISABLE_EXTENSIONS has {name}, which the server does not advertise "
                "(the override may no longer be needed)"
            )
        else:
            notes.append(f"{name} is advertised and disabled by the settings")
    if "REQUIRETLS" in caps.advertised and "REQUIRETLS" not in provider.disable_extensions:
        notes.append(
            "REQUIRETLS is advertised and enabled: it is used only for messages that "
            "ask for it; some providers (Strato) accept such mail and drop it"
        )
    offered = caps.auth_mechanisms
    if provider.username and offered and not set(offered) & set(provider.auth_mechanisms):
        notes.append(
            f"no common AUTH mechanism: server {' '.join(offered)}, "
            f"allowed {' '.join(provider.auth_mechanisms)}"
        )
    if provider.preset:
        preset_host = PRESETS[provider.preset].get("HOST", "")
        if "{" not in preset_host and preset_host and provider.host != preset_host:
            notes.append(
                f"HOST {provider.host} differs from preset {provider.preset!r} ({preset_host})"
            )
    if caps.size_limit:
        notes.append(f"the server accepts messages up to {caps.size_limit} bytes")
    if caps.rcpt_max or caps.mail_max:
        notes.append(f"LIMITS: RCPTMAX={caps.rcpt_max} MAILMAX={caps.mail_max}")
    return notes


class Command(BaseCommand):
    help = "Probe a provider: TLS, EHLO, AUTH, advertised vs effective extensions."

    def add_arguments(self, parser):
        parser.add_argument("provider")
        parser.add_argument("--send-to", metavar="ADDRESS", help="also send a test message")
        parser.add_argument("--from", dest="from_email", help="sender of the test message")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        try:
            config = get_config()
            provider = config.provider(options["provider"])
        except ReliableMailConfigError as exc:
            raise CommandError(str(exc)) from exc
        settings = provider.server_settings(
            transcript_max_chars=config.transcript_max_chars, record=True
        )
        report: dict[str, Any] = {
            "provider": provider.name,
            "host": provider.host,
            "port": provider.port,
            "tls_mode": provider.tls,
            "ok": False,
        }

        async def probe(bridge: SyncBridge) -> None:
            session = SMTPSession(settings)
            try:
                await session.open()
                report.update(
                    peer=session.peer_address,
                    tls_version=session.tls_version,
                    tls_cipher=session.tls_cipher,
                    certificate=session.certificate_subject,
                    auth_mechanism=session.auth_mechanism,
                    advertised=session.capabilities.advertised_lines(),
                    effective=session.capabilities.effective_lines(),
                    warnings=differences(provider, session),
                    ok=True,
                )
                if options["send_to"]:
                    result = await session.send(self._test_envelope(options, provider))
                    report["test_message"] = {
                        "outcome": result.outcome,
                        "reply_code": result.reply_code,
                        "reply": result.reply_text,
                        "queue_id": result.queue_id,
                        "error": result.error,
                    }
                    report["ok"] = result.outcome == "accepted"
            except SMTPFailure as failure:
                report["error"] = session.transcript.scrub(str(failure))
            finally:
                await session.close()
                report["transcript"] = session.transcript.render()

        SyncBridge().run(probe)
        if options["json"]:
            self.stdout.write(json.dumps(report, sort_keys=True))
        else:
            self._print(report)
        if not report["ok"]:
            sys.exit(1)

    def _test_envelope(self, options: dict[str, Any], provider: ProviderConfig) -> Envelope:
        sender = options["from_email"] or provider.username or "probe@localhost"
        message = EmailMessage()
        message["From"] = sender
        message["To"] = options["send_to"]
        message["Subject"] = f"django-reliable-mail probe of {provider.name}"
        message["Message-ID"] = make_msgid(domain="reliable-mail.probe")
        message.set_content(
            f"A test message sent by reliable_mail_probe through "
            f"{provider.name} ({provider.host}:{provider.port}).\n"
        )
        return Envelope(
            sender=sender, recipients=[options["send_to"]], data=wire_format(message.as_bytes())
        )

    def _print(self, report: dict[str, Any]) -> None:
        write = self.stdout.write
        write(
            f"Provider {report['provider']}: {report['host']}:{report['port']} "
            f"(TLS {report['tls_mode']})"
        )
        if "error" in report:
            write(self.style.ERROR(f"FAILED: {report['error']}"))
        else:
            write(
                f"Connected to {report['peer']}; TLS {report['tls_version'] or 'none'} "
                f"{report['tls_cipher']}; certificate {report['certificate'] or '-'}"
            )
            write(f"AUTH: {report['auth_mechanism'] or 'not used'}")
            write("Advertised: " + ", ".join(report["advertised"]))
            write("Effective:  " + ", ".join(report["effective"]))
            for note in report["warnings"]:
                write(self.style.WARNING(f"Note: {note}"))
        if "test_message" in report:
            test = report["test_message"]
            style = self.style.SUCCESS if test["outcome"] == "accepted" else self.style.ERROR
            write(
                style(
                    f"Test message: {test['outcome']} {test['reply_code'] or ''} "
                    f"{test['reply'] or test['error']}"
                )
            )
        write("Transcript:")
        write(report.get("transcript", ""))
