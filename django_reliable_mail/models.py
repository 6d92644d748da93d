"""What is stored: every message (exact bytes), every attempt (with transcript), every
recipient's state."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class OutboundMessage(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        RETRYING = "retrying", _("Retrying")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")
        HELD = "held", _("Held for an operator")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    provider = models.CharField(max_length=100)

    from_email = models.CharField("envelope sender", max_length=320)
    recipients = models.JSONField("envelope recipients", default=list)
    subject = models.CharField(max_length=998, blank=True)
    message_id = models.CharField("Message-ID", max_length=998, blank=True, db_index=True)
    #: Of the MIME bytes (kept in :class:`MessageBody`); 0 once the body is purged.
    size = models.PositiveIntegerField(default=0)

    priority = models.SmallIntegerField(default=0)
    send_at = models.DateTimeField(null=True, blank=True)
    require_tls = models.BooleanField("requires REQUIRETLS", default=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    #: Other per-message options (DSN) as given at enqueue time.
    options = models.JSONField(default=dict, blank=True)

    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    #: Which claim holds the lease (set and read back in one short transaction). Not
    #: indexed: it is always read together with the id or the status.
    claim_token = models.CharField(max_length=32, blank=True)
    #: Set (and committed) just before the body is written: a lease that expires with this
    #: set means the server may have the message.
    body_started_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The worker's question: what is due now?
            models.Index(fields=["status", "next_attempt_at"], name="rmail_msg_due"),
            models.Index(fields=["provider", "status"], name="rmail_msg_provider_status"),
            models.Index(fields=["status", "-created_at"], name="rmail_msg_status_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="rmail_msg_unique_idempotency_key",
            )
        ]
        permissions = [
            ("view_message_body", "Can view and download message bodies"),
            ("retry_outboundmessage", "Can retry or cancel outbound messages"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject[:60]!r} → {', '.join(self.recipients[:3])}"

    @property
    def mime(self) -> bytes:
        """The exact bytes handed to DATA (empty once purged with ``--bodies-only``): read
        from :class:`MessageBody` once per instance, unless the claim loaded them already."""
        try:
            return self._mime
        except AttributeError:
            pass
        stored = MessageBody.objects.filter(message_id=self.pk).values_list("mime", flat=True)
        found = stored[:1] if self.pk is not None else []
        self._mime = bytes(found[0]) if found else b""
        return self._mime


class MessageBody(models.Model):
    """A message's MIME bytes, so a retry sends what the first attempt sent.

    Apart from the message row because that row is rewritten at every step of a send (the
    claim, the body mark, the outcome): with the body in it, each step would copy kilobytes.
    """

    message = models.OneToOneField(
        OutboundMessage, primary_key=True, on_delete=models.CASCADE, related_name="body"
    )
    mime = models.BinaryField("MIME bytes", editable=False)

    class Meta:
        verbose_name_plural = "message bodies"

    def __str__(self) -> str:
        return f"body of #{self.message_id} ({len(self.mime)} bytes)"


class DeliveryAttempt(models.Model):
    class Outcome(models.TextChoices):
        ACCEPTED = "accepted", _("Accepted")
        PARTIAL = "partial", _("Partially accepted")
        TRANSIENT_FAILURE = "transient_failure", _("Transient failure")
        PERMANENT_FAILURE = "permanent_failure", _("Permanent failure")
        UNKNOWN = "unknown", _("Unknown (connection lost after the body)")
        CONFIG_ERROR = "config_error", _("Configuration error")

    # No index of its own: the unique (message, number) constraint starts with it.
    message = models.ForeignKey(
        OutboundMessage, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )
    number = models.PositiveIntegerField()
    provider = models.CharField(max_length=100)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()

    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    peer_address = models.CharField(max_length=100, blank=True)
    tls_version = models.CharField(max_length=32, blank=True)
    tls_cipher = models.CharField(max_length=100, blank=True)
    certificate_subject = models.TextField(blank=True)
    auth_mechanism = models.CharField(max_length=32, blank=True)
    extensions_advertised = models.JSONField(default=list, blank=True)
    extensions_used = models.JSONField(default=list, blank=True)
    mail_parameters = models.JSONField("MAIL FROM parameters", default=list, blank=True)
    rcpt_parameters = models.JSONField("RCPT TO parameters", default=list, blank=True)
    recipient_replies = models.JSONField(default=dict, blank=True)

    reply_code = models.PositiveSmallIntegerField(null=True, blank=True)
    reply_enhanced_code = models.CharField(max_length=16, blank=True)
    reply_text = models.TextField(blank=True)
    queue_id = models.CharField("server queue id", max_length=255, blank=True, db_index=True)
    outcome = models.CharField(max_length=24, choices=Outcome.choices, db_index=True)
    error = models.TextField(blank=True)
    provider_level = models.BooleanField(
        default=False, help_text="The failure was the provider's; it did not count as an attempt."
    )
    possible_duplicate = models.BooleanField(default=False)
    transcript = models.TextField(blank=True)

    class Meta:
        ordering = ["message", "number"]
        indexes = [models.Index(fields=["started_at"], name="rmail_attempt_started")]
        constraints = [
            models.UniqueConstraint(
                fields=["message", "number"], name="rmail_attempt_unique_number"
            )
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of message #{self.message_id}: {self.outcome}"


class RecipientStatus(models.Model):
    """One envelope recipient of one message: where it stands after the latest attempt."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        ACCEPTED = "accepted", _("Accepted")
        DEFERRED = "deferred", _("Deferred")
        REJECTED = "rejected", _("Rejected")
        UNKNOWN = "unknown", _("Unknown")

    # No index of its own: the unique (message, address) constraint starts with it.
    message = models.ForeignKey(
        OutboundMessage,
        on_delete=models.CASCADE,
        related_name="recipient_statuses",
        db_index=False,
    )
    address = models.CharField(max_length=320, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    reply_code = models.PositiveSmallIntegerField(null=True, blank=True)
    reply_enhanced_code = models.CharField(max_length=16, blank=True)
    reply_text = models.TextField(blank=True)
    attempt = models.ForeignKey(
        DeliveryAttempt, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["message", "id"]
        constraints = [
            models.UniqueConstraint(fields=["message", "address"], name="rmail_rcpt_unique")
        ]
        verbose_name_plural = "recipient statuses"

    def __str__(self) -> str:
        return f"{self.address}: {self.state}"


class MessageEvent(models.Model):
    """Something an operator (or a command) did to a message: the audit trail."""

    message = models.ForeignKey(OutboundMessage, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=150, help_text="user name, or the command that acted")
    action = models.CharField(max_length=50)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["message", "at", "id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"


class ProviderState(models.Model):
    """Shared across workers and hosts: a provider's health and its rate-limit clock."""

    name = models.CharField(max_length=100, unique=True)
    degraded_until = models.DateTimeField(null=True, blank=True)
    degraded_reason = models.TextField(blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    #: GCRA "theoretical arrival time": the earliest moment the next message may start.
    next_send_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FailedMessage(OutboundMessage):
    class Meta:
        proxy = True
        verbose_name = "failed message"


class RetryingMessage(OutboundMessage):
    class Meta:
        proxy = True
        verbose_name = "retrying message"
