"""Built-in provider presets: each provider's known quirks, as data, with sources.

A preset fills any provider key the settings leave out; anything set beside ``PRESET``
wins. Keys are the provider keys of ``RELIABLE_MAIL["PROVIDERS"][name]``. Sources are
given per entry; the docs' presets table repeats them.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Strato: implicit TLS on 465 (Thunderbird ISPDB ispdb/strato.de.xml). Advertises
    # REQUIRETLS, but mail sent with it was answered "250 queued" and never delivered
    # (MailKit issues #1737 and #1745; MailKit 4.5.0 made REQUIRETLS opt-in "to fix sending
    # mail via Strato.de"). Re-EHLO after AUTH breaks the session (MailKit #162) - this
    # transport never does that. LIMITS RCPTMAX=1000 MAILMAX=1000 advertised (MailKit #1745).
    "strato": {
        "HOST": "smtp.strato.de",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
        "DISABLE_EXTENSIONS": ["REQUIRETLS"],
        "MAX_RECIPIENTS": 1000,
    },
    # IONOS: 465 implicit / 587 STARTTLS (ISPDB ispdb/ionos.de.xml); hourly send limits
    # answered with "450 Mail send limit exceeded" (provider help pages, see docs).
    "ionos": {
        "HOST": "smtp.ionos.de",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 200,
    },
    # Gmail / Google Workspace: smtp.gmail.com 465/587 (Google "Send email from a printer,
    # scanner, or app"); app password or XOAUTH2; 550 5.4.5 is a daily sending quota, not a
    # permanent failure (Google "Gmail sending limits in Google Workspace").
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
                "DESCRIPTION": "Gmail daily sending quota exceeded",
            },
            {
                "CODE": "454",
                "ENHANCED": "4.7.0",
                "OUTCOME": "provider",
                "RETRY_AFTER": 600,
                "DESCRIPTION": "Gmail login throttling",
            },
        ],
    },
    # Microsoft 365: smtp.office365.com:587 STARTTLS, TLS 1.2+ (Microsoft Learn "How to set
    # up a multifunction device or application to send email using Microsoft 365"); 30
    # messages/min and 3 concurrent connections per mailbox (Exchange Online limits);
    # STOREDRV.Submission.Exception:SendAsDeniedException is a configuration problem.
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
                "TEXT": r"SendAsDenied",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Microsoft 365: the login may not send as this From address",
            },
            {
                "CODE": "432",
                "ENHANCED": "4.3.2",
                "OUTCOME": "transient",
                "RETRY_AFTER": 60,
                "DESCRIPTION": "Microsoft 365: too many concurrent connections",
            },
        ],
    },
    # Amazon SES: email-smtp.<region>.amazonaws.com, 587 STARTTLS or 465 implicit (SES
    # developer guide "Connecting to an Amazon SES SMTP endpoint"); "454 Throttling failure"
    # means slow down and retry (SES guide "sending quotas").
    "ses": {
        "HOST": "email-smtp.{region}.amazonaws.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 50,
        "REPLY_RULES": [
            {
                "CODE": "454",
                "TEXT": r"Throttling failure",
                "OUTCOME": "provider",
                "RETRY_AFTER": 60,
                "DESCRIPTION": "Amazon SES sending rate exceeded",
            },
        ],
    },
    # SendGrid: smtp.sendgrid.net 587 STARTTLS, username "apikey" (SendGrid docs "Integrating
    # with the SMTP API").
    "sendgrid": {
        "HOST": "smtp.sendgrid.net",
        "PORT": 587,
        "TLS": "starttls",
        "USERNAME": "apikey",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
    },
    # Mailgun: smtp.mailgun.org 587 STARTTLS (Mailgun docs "SMTP"); EU: smtp.eu.mailgun.org.
    "mailgun": {
        "HOST": "smtp.mailgun.org",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "MAX_RECIPIENTS": 1000,
    },
    # Postmark: smtp.postmarkapp.com 587 STARTTLS, server token as user and password
    # (Postmark "SMTP" developer docs); at most 50 recipients per message.
    "postmark": {
        "HOST": "smtp.postmarkapp.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
        "MAX_RECIPIENTS": 50,
    },
    # Brevo: smtp-relay.brevo.com 587 STARTTLS with the SMTP key (Brevo help centre).
    "brevo": {
        "HOST": "smtp-relay.brevo.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
    },
    # Mailjet: in-v3.mailjet.com 587 STARTTLS, API key / secret key (Mailjet SMTP docs).
    "mailjet": {
        "HOST": "in-v3.mailjet.com",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
    },
    # Fastmail: smtp.fastmail.com 465 implicit, app password (Fastmail help "Server names
    # and ports").
    "fastmail": {
        "HOST": "smtp.fastmail.com",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
    },
    # Zoho: smtp.zoho.com 465 implicit (Zoho Mail help "SMTP configuration"); 550 5.4.6
    # "unusual activity" blocks the account until it is unblocked by hand.
    "zoho": {
        "HOST": "smtp.zoho.com",
        "PORT": 465,
        "TLS": "implicit",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN"],
        "REPLY_RULES": [
            {
                "CODE": "550",
                "ENHANCED": "5.4.6",
                "OUTCOME": "provider",
                "RETRY_AFTER": 3600,
                "DESCRIPTION": "Zoho blocked the account for unusual activity",
            },
        ],
    },
    # Your own Postfix, usually on the same host or network: STARTTLS on 587.
    "postfix": {
        "HOST": "localhost",
        "PORT": 587,
        "TLS": "starttls",
        "AUTH_MECHANISMS": ["PLAIN", "LOGIN", "CRAM-MD5"],
    },
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
