"""Read-only admin for messages and their attempts (the full operator admin builds on it)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from .models import (
    DeliveryAttempt,
    FailedMessage,
    OutboundMessage,
    RecipientStatus,
    RetryingMessage,
)


class ReadOnlyMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RecipientStatusInline(ReadOnlyMixin, admin.TabularInline):
    model = RecipientStatus
    fields = ("address", "state", "reply_code", "reply_enhanced_code", "reply_text")
    readonly_fields = fields
    extra = 0


class DeliveryAttemptInline(ReadOnlyMixin, admin.StackedInline):
    model = DeliveryAttempt
    fields = (
        "number",
        "outcome",
        "provider",
        "started_at",
        "finished_at",
        "host",
        "port",
        "peer_address",
        "tls_version",
        "tls_cipher",
        "certificate_subject",
        "auth_mechanism",
        "extensions_advertised",
        "extensions_used",
        "mail_parameters",
        "reply_code",
        "reply_enhanced_code",
        "reply_text",
        "queue_id",
        "error",
        "provider_level",
        "possible_duplicate",
        "transcript_view",
    )
    readonly_fields = fields
    extra = 0

    @admin.display(description="transcript")
    def transcript_view(self, obj):
        # Server text is data: format_html_join escapes every line.
        return format_html(
            '<pre style="white-space:pre-wrap">{}</pre>',
            format_html_join("\n", "{}", ((line,) for line in obj.transcript.splitlines())),
        )


@admin.register(OutboundMessage)
class OutboundMessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "status",
        "provider",
        "subject",
        "recipient_list",
        "attempt_count",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "provider")
    search_fields = ("subject", "message_id", "from_email", "recipient_statuses__address")
    exclude = ("mime",)
    inlines = [RecipientStatusInline, DeliveryAttemptInline]

    @admin.display(description="recipients")
    def recipient_list(self, obj):
        return ", ".join(obj.recipients[:5]) + (" …" if len(obj.recipients) > 5 else "")


@admin.register(FailedMessage)
class FailedMessageAdmin(OutboundMessageAdmin):
    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=OutboundMessage.Status.FAILED)


@admin.register(RetryingMessage)
class RetryingMessageAdmin(OutboundMessageAdmin):
    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=OutboundMessage.Status.RETRYING)
