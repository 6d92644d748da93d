"""Built-in provider presets: each provider's known quirks, as data, with sources.

A preset fills any provider key the settings leave out; anything set beside ``PRESET`` wins.
Keys are those of ``RELIABLE_MAIL["PROVIDERS"][name]``. ``SOURCES`` lists where each fact
comes from; the docs' presets table is generated from it. Reply rules use ``OUTCOME``
``transient`` / ``permanent`` / ``provider`` (pause the provider, do not count the
attempt) and may add ``PAUSE_PROVIDER`` to a permanent rule (this message fails, and the
provider stops until an operator fixes its configuration).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "strato": {
        "HOST": "smtp.strato.de",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
        # Advertised, but mail sent with it got "250 queued" and was never delivered.
        "DISABLE_EXTENSIONS": ["REQUIRETLS"],
        "MAX_RECIPIENTS": 1000,
        "REPLY_RULES": [
            {
                "CODE": "421",
                "TEXT": r"No SMTP service",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Strato refuses this client's IP (MBL); retrying soon will not help",
            },
        ],
    },
    "ionos": {
        "HOST": "smtp.ionos.de",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["LOGIN", "PLAIN"],
        "MAX_RECIPIENTS": 200,
        "REPLY_RULES": [
            {
                "CODE": "450",
                "TEXT": r"send limit exceeded",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "IONOS hourly sending limit",
            },
            {
                "CODE": "554",
                "TEXT": r"policy restrictions",
                "OUTCOME": "permanent",
                "DESCRIPTION": "IONOS policy rejection (e.g. non-ASCII sender name)",
            },
        ],
    },
    "gmail": {
        "HOST": "smtp.gmail.com",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["XOAUTH2", "PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 100,
        "REPLY_RULES": [
            {
                "CODE": "550",
                "ENHANCED": "5.4.5",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Gmail daily sending quota (rolling 24 h), not a hard bounce",
            },
            {
                "CODE": "454",
                "ENHANCED": "4.7.0",
                "TEXT": r"login attempts",
                "OUTCOME": "provider",
                "RETRY_AFTER": 600,
                "DESCRIPTION": "Gmail login throttling: back off and reuse connections",
            },
            {
                "CODE": "550",
                "ENHANCED": "5.7.1",
                "TEXT": r"relay limit",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Workspace SMTP relay daily limit",
            },
            {
                "CODE": "450",
                "ENHANCED": "4.2.1",
                "TEXT": r"relay limit",
                "OUTCOME": "provider",
                "RETRY_AFTER": 600,
                "DESCRIPTION": "Workspace SMTP relay peak limit",
            },
        ],
    },
    "office365": {
        "HOST": "smtp.office365.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["XOAUTH2", "LOGIN", "PLAIN"],
        "MAX_CONNECTIONS": 3,
        "RATE_LIMIT": "30/m",
        "MAX_RECIPIENTS": 1000,
        "REPLY_RULES": [
            {
                "TEXT": r"SendAsDenied|not allowed to send as|permissions to send as",
                "OUTCOME": "permanent",
                "PAUSE_PROVIDER": True,
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Microsoft 365: the login may not send as this From address",
            },
            {
                "CODE": "432",
                "ENHANCED": "4.3.2",
                "OUTCOME": "transient",
                "RETRY_AFTER": 60,
                "DESCRIPTION": "Microsoft 365: more than 3 concurrent connections",
            },
            {
                "TEXT": r"SubmissionQuotaExceeded",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Microsoft 365: 10,000 recipients per day exceeded",
            },
            {
                "ENHANCED": "5.7.30",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Microsoft 365: basic authentication retired, use XOAUTH2",
            },
        ],
    },
    "ses": {
        "HOST": "email-smtp.{region}.amazonaws.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 50,
        # Endpoints sit behind load balancers that recycle instances.
        "MAX_MESSAGES_PER_CONNECTION": 50,
        "REPLY_RULES": [
            {
                "CODE": "454",
                "TEXT": r"Maximum sending rate exceeded",
                "OUTCOME": "provider",
                "RETRY_AFTER": 5,
                "DESCRIPTION": "SES sending rate exceeded: slow down, retry",
            },
            {
                "CODE": "454",
                "TEXT": r"Daily message quota exceeded",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "SES daily quota exceeded",
            },
            {
                "CODE": "421",
                "TEXT": r"Too many concurrent",
                "OUTCOME": "transient",
                "RETRY_AFTER": 30,
                "DESCRIPTION": "SES: too many concurrent connections",
            },
        ],
    },
    "sendgrid": {
        "HOST": "smtp.sendgrid.net",
        "PORT": 587,
        "TLS": "starttls",
        "USERNAME": "apikey",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_MESSAGES_PER_CONNECTION": 1000,
        "REPLY_RULES": [
            {
                "CODE": "451",
                "TEXT": r"Maximum credits exceeded",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "SendGrid plan credits used up",
            },
            {
                "CODE": "550",
                "TEXT": r"verified Sender Identity",
                "OUTCOME": "permanent",
                "PAUSE_PROVIDER": True,
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "SendGrid: From is not a verified sender",
            },
        ],
    },
    "mailgun": {
        "HOST": "smtp.mailgun.org",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 1000,
        "REPLY_RULES": [
            {
                "CODE": "550",
                "ENHANCED": "5.7.1",
                "TEXT": r"Relaying denied",
                "OUTCOME": "permanent",
                "PAUSE_PROVIDER": True,
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Mailgun: not authenticated for this domain",
            },
        ],
    },
    "postmark": {
        "HOST": "smtp.postmarkapp.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
        "MAX_RECIPIENTS": 50,
        "REPLY_RULES": [
            {
                "TEXT": r"not a Sender Signature",
                "OUTCOME": "permanent",
                "PAUSE_PROVIDER": True,
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Postmark: From has no Sender Signature",
            },
        ],
    },
    "brevo": {
        "HOST": "smtp-relay.brevo.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["LOGIN", "PLAIN"],
        "REPLY_RULES": [
            {
                "CODE": "502",
                "TEXT": r"authenticate first",
                "OUTCOME": "provider",
                "RETRY_AFTER": 600,
                "DESCRIPTION": "Brevo did not accept the authentication",
            },
        ],
    },
    "mailjet": {
        "HOST": "in-v3.mailjet.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "REPLY_RULES": [
            {
                "CODE": "435",
                "ENHANCED": "4.7.8",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Mailjet answers bad credentials with a 4xx: do not retry blindly",
            },
        ],
    },
    "fastmail": {
        "HOST": "smtp.fastmail.com",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
    },
    "zoho": {
        "HOST": "smtp.zoho.com",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["LOGIN", "PLAIN"],
        "REPLY_RULES": [
            {
                "CODE": "550",
                "ENHANCED": "5.4.6",
                "OUTCOME": "provider",
                "RETRY_AFTER": 86400,
                "DESCRIPTION": "Zoho blocked the account for unusual activity (manual unblock)",
            },
            {
                "CODE": "553",
                "TEXT": r"Relaying disallowed",
                "OUTCOME": "permanent",
                "DESCRIPTION": "Zoho: From is not the account or one of its aliases",
            },
        ],
    },
    "postfix": {
        "HOST": "localhost",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
    },
}

#: Where each preset's facts come from (provider docs first; issue threads for quirks).
SOURCES: dict[str, list[str]] = {
    "strato": [
        "Thunderbird ISPDB ispdb/strato.de.xml (hosts, 465 implicit TLS, full address login)",
        "MailKit issues #1737 and #1745, MailKit 4.5.0 release notes: REQUIRETLS advertised, "
        "mail sent with it accepted and never delivered",
        "MailKit issue #162 and PR #163: EHLO after AUTH breaks the session",
        "MailKit #1745 (EHLO): LIMITS RCPTMAX=1000 MAILMAX=1000, SIZE 104857600",
        "evertramos/docker-nextcloud-letsencrypt#20: 421 No SMTP service (MBL-B)",
    ],
    "ionos": [
        "Thunderbird ISPDB ispdb/1und1.de.xml; PHPMailer#1672 (ports and hosts)",
        "ionos.co.uk help id=17026 and ionos.com limits pages: hourly limits, "
        "'450 Mail send limit exceeded', 200 recipients per message",
        "nodemailer lib/well-known/services.json (LOGIN)",
    ],
    "gmail": [
        "support.google.com/a/answer/2956491 (SMTP relay ports and limits)",
        "support.google.com/a/answer/3726730 (SMTP error reference)",
        "Gmail sending limits: 100 recipients per message over SMTP (answer/166852)",
        "gen-smtp/gen_smtp#140, iiuni/projektzapisy#766: 550 5.4.5 is a daily quota",
        "nodemailer#1388: 454 4.7.0 too many login attempts",
    ],
    "office365": [
        "Microsoft Learn: fix issues with printers, scanners and LOB applications that send "
        "email using Microsoft 365 (587 STARTTLS, TLS 1.2, send-as errors)",
        "MicrosoftDocs/SupportArticles-docs smtp-submission-improvements.md: 30 messages/min, "
        "10,000 recipients/day, 3 concurrent connections, 432 4.3.2, "
        "SubmissionQuotaExceededException",
        "Exchange Online basic-auth retirement for SMTP AUTH: 550 5.7.30",
    ],
    "ses": [
        "AWS SES developer guide smtp-connect.md (ports: STARTTLS 25/587/2587, TLS 465/2465)",
        "AWS SES quotas.md (50 recipients per message, 40 MB)",
        "AWS SES manage-sending-quotas-errors.md: 454 Throttling failure (message dropped, "
        "client must retry)",
        "AWS SES troubleshoot-smtp.md: connections are recycled; 421 too many connections",
    ],
    "sendgrid": [
        "sendgrid/docs integrating-with-the-smtp-api.md (username 'apikey', 5k messages per "
        "connection)",
        "sendgrid/docs smtp-errors-and-troubleshooting.md (451 Maximum credits exceeded, "
        "550 verified Sender Identity)",
    ],
    "mailgun": [
        "mailgun/documentation user_manual.rst 'Sending via SMTP' (ports, 1,000 recipients)",
        "pivorakmeetup/pivorak-web-app#712, lowercasename/gathio#194 (550 5.7.1 Relaying denied)",
    ],
    "postmark": [
        "postmarkapp.com support article 811 (hosts, ports 25/2525/587 STARTTLS, token login)",
        "postmarkapp.com developer docs (50 recipients, 10 MB)",
        "feedadoc/feedadoc#110 (Sender Signature required)",
    ],
    "brevo": [
        "developers.brevo.com/docs/smtp-integration (host, 587/2525/465, SMTP key)",
        "frappe/frappe#38806 (502 5.7.0 Please authenticate first)",
    ],
    "mailjet": [
        "Mailjet Ruby gem Mailjet::Mailer docs (in-v3.mailjet.com, API key/secret, PLAIN)",
        "mailjet/mailjet-gem#17 (435 4.7.8 authentication failed)",
    ],
    "fastmail": [
        "fastmail.com/help/technical/servernamesandports.html (465 implicit TLS, app passwords)",
        "corecode/dma#50 (EHLO: AUTH PLAIN LOGIN, SIZE 71000000)",
    ],
    "zoho": [
        "Thunderbird ISPDB ispdb/zoho.com.xml (465 implicit, 587 STARTTLS; regional hosts)",
        "zoho.com/mail/help/usage-policy.html (blocking for unusual activity)",
        "PHPAuth/PHPAuth#282 (minimal EHLO), frappe/erpnext#19057 (553 Relaying disallowed)",
    ],
    "postfix": ["Postfix SASL_README and TLS_README (submission on 587 with STARTTLS)"],
}


def preset(name: str, *, region: str | None = None) -> dict[str, Any]:
    """A copy of one preset, with ``{region}`` filled in where the host needs it."""
    values = {key: _copy(value) for key, value in PRESETS[name].items()}
    if "{region}" in values.get("HOST", ""):
        values["HOST"] = values["HOST"].format(region=region or "us-east-1")
    return values


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value
