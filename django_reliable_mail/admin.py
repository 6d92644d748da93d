"""The operator's admin: lists of failed and retrying mail, a readable attempt timeline,
POST-only actions, and a dashboard.

Everything a server or a message can contain is rendered through Django's escaping; message
bodies are only reachable with the ``view_message_body`` permission. Every URL that names a
row checks the permission first and answers 404 for an id that is malformed or names no row,
so a user without the permission cannot tell which rows exist.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from . import operations
from .conf import get_config
from .dashboard import dashboard_context
from .exceptions import ReliableMailConfigError
from .models import (
    DeliveryAttempt,
    FailedMessage,
    OutboundMessage,
    RecipientStatus,
    RetryingMessage,
)
from .smtp.capabilities import KNOWN_EXTENSIONS

TRANSCRIPT_LINE = re.compile(r"^\[\+(?P<t>[\d.]+)s\] (?P<who>[CS*]): (?P<text>.*)$")
RETRY_PERMISSION = "django_reliable_mail.retry_outboundmessage"
BODY_PERMISSION = "django_reliable_mail.view_message_body"


def transcript_rows(transcript: str) -> list[dict[str, str]]:
    """Split a stored transcript into (time, side, text) rows for the template."""
    rows = []
    for line in transcript.splitlines():
        match = TRANSCRIPT_LINE.match(line)
        if match:
            who = {"C": "client", "S": "server", "*": "event"}[match["who"]]
            rows.append({"time": match["t"], "side": who, "text": match["text"]})
        else:
            rows.append({"time": "", "side": "event", "text": line})
    return rows


class ProviderChoiceForm(forms.Form):
    provider = forms.ChoiceField(label="Send through provider")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider"].choices = [(p, p) for p in sorted(get_config().providers)]


class DisableExtensionsForm(forms.Form):
    extensions = forms.MultipleChoiceField(
        label="Retry once without",
        choices=[(e, e) for e in sorted(KNOWN_EXTENSIONS - {"AUTH", "STARTTLS"})],
        widget=forms.CheckboxSelectMultiple,
    )


def row_or_404(queryset: QuerySet, object_id: str) -> Model:
    """The row an admin URL's id names, or 404 for an id that is malformed or names no row
    (Django's admin redirects to its index instead, and ``get(pk="abc")`` is a 500)."""
    model = queryset.model
    try:
        return queryset.get(pk=model._meta.pk.to_python(unquote(object_id)))
    except (model.DoesNotExist, ValidationError, ValueError):
        raise Http404(f"No {model._meta.verbose_name} with this id.") from None


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records are written by delivery and by operator actions, never edited by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def viewable_object(self, request: HttpRequest, object_id: str) -> Model:
        """The permission refusal first, then the row or 404: the same 403 whether or not the
        row exists (Django's history view reports a missing row before the permission)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return row_or_404(self.get_queryset(request), object_id)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.viewable_object(request, object_id)
        context = {**self.change_context(request, obj), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def change_context(self, request: HttpRequest, obj: Model) -> dict[str, Any]:
        """Template context for ``obj``'s change page, besides the admin's own."""
        return {}

    def history_view(self, request, object_id, extra_context=None):
        self.viewable_object(request, object_id)
        return super().history_view(request, object_id, extra_context)


@admin.register(OutboundMessage)
class OutboundMessageAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "status",
        "provider",
        "recipient_list",
        "subject",
        "attempt_count",
        "next_attempt_at",
        "short_error",
        "created_at",
    )
    list_display_links = ("id", "subject")
    list_filter = ("status", "provider", ("created_at", admin.DateFieldListFilter))
    search_fields = ("subject",)  # plus the exact lookups in get_search_results
    search_help_text = "An address, a Message-ID, a server queue id, or words of the subject."
    # A COUNT(*) over a filtered 100k-row table on every search is not worth it.
    show_full_result_count = False
    list_per_page = 50
    ordering = ("-created_at", "-id")
    fields = (
        "status",
        "provider",
        "from_email",
        "recipients",
        "subject",
        "message_id",
        "size",
        "priority",
        "send_at",
        "require_tls",
        "idempotency_key",
        "tags",
        "metadata",
        "attempt_count",
        "next_attempt_at",
        "last_error",
        "created_at",
        "sent_at",
    )
    readonly_fields = fields
    actions = ["retry_now", "cancel_messages", "retry_other_provider", "retry_without_extensions"]
    change_form_template = "admin/django_reliable_mail/outboundmessage/change_form.html"

    # -- permissions ------------------------------------------------

    def has_retry_permission(self, request):
        return request.user.has_perm(RETRY_PERMISSION)

    # -- list --------------------------------------------------------

    def get_search_results(self, request, queryset, search_term):
        """Exact, indexed lookups for what operators paste (an address, a Message-ID, a
        queue id), the subject words otherwise: a LIKE over joined tables would scan them
        all on every search."""
        term = search_term.strip()
        if not term:
            return queryset, False
        bracketed = term if term.startswith("<") else f"<{term}>"
        exact = (
            Q(message_id__in=[term, bracketed])
            | Q(pk__in=RecipientStatus.objects.filter(address=term.lower()).values("message_id"))
            | Q(pk__in=RecipientStatus.objects.filter(address=term).values("message_id"))
            | Q(pk__in=DeliveryAttempt.objects.filter(queue_id=term).values("message_id"))
        )
        if "@" in term and " " not in term:
            return queryset.filter(exact | Q(from_email=term)), False
        return queryset.filter(exact | Q(subject__icontains=term)), False

    @admin.display(description="recipients")
    def recipient_list(self, obj):
        shown = ", ".join(obj.recipients[:3])
        return shown + (f" (+{len(obj.recipients) - 3})" if len(obj.recipients) > 3 else "")

    @admin.display(description="last error")
    def short_error(self, obj):
        return obj.last_error[:120]

    # -- actions (POST from the changelist, CSRF-checked by the admin) ----------------------

    def _actor(self, request):
        return request.user.get_username()

    @admin.action(description="Retry now", permissions=["retry"])
    def retry_now(self, request, queryset):
        done = operations.retry(queryset, actor=self._actor(request))
        self.message_user(request, f"{len(done)} message(s) queued for another attempt.")

    @admin.action(description="Cancel", permissions=["retry"])
    def cancel_messages(self, request, queryset):
        done = operations.cancel(queryset, actor=self._actor(request))
        self.message_user(request, f"{len(done)} message(s) cancelled.")

    @admin.action(description="Retry through another provider…", permissions=["retry"])
    def retry_other_provider(self, request, queryset):
        form = ProviderChoiceForm(request.POST if "provider" in request.POST else None)
        if form.is_valid():
            done = operations.retry(
                queryset, actor=self._actor(request), provider=form.cleaned_data["provider"]
            )
            self.message_user(
                request, f"{len(done)} message(s) queued through {form.cleaned_data['provider']}."
            )
            return None
        return self._intermediate(
            request, queryset, form, "retry_other_provider", "Retry through another provider"
        )

    @admin.action(description="Retry once without some extensions…", permissions=["retry"])
    def retry_without_extensions(self, request, queryset):
        form = DisableExtensionsForm(request.POST if "extensions" in request.POST else None)
        if form.is_valid():
            done = operations.retry(
                queryset,
                actor=self._actor(request),
                disable_extensions=form.cleaned_data["extensions"],
            )
            self.message_user(
                request,
                f"{len(done)} message(s) queued without "
                f"{', '.join(form.cleaned_data['extensions'])}.",
            )
            return None
        return self._intermediate(
            request,
            queryset,
            form,
            "retry_without_extensions",
            "Retry once without some extensions",
        )

    def _intermediate(self, request, queryset, form, action, title):
        return TemplateResponse(
            request,
            "admin/django_reliable_mail/action_form.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "form": form,
                "action": action,
                "queryset": queryset,
                "opts": self.model._meta,
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            },
        )

    # -- change page ------------------------------------------------

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name="{}_{}_dashboard".format(*info)),
            # <path:…> as Django's own admin URLs: any id reaches the view, which answers 404.
            path("<path:object_id>/eml/", wrap(self.eml_view), name="{}_{}_eml".format(*info)),
            path(
                "<path:object_id>/operate/",
                wrap(self.operate_view),
                name="{}_{}_operate".format(*info),
            ),
            *super().get_urls(),
        ]

    def change_context(self, request, obj):
        attempts = list(obj.attempts.all())
        for attempt in attempts:
            attempt.transcript_rows = transcript_rows(attempt.transcript)
            advertised = {line.split()[0] for line in attempt.extensions_advertised if line}
            used = {line.split()[0] for line in attempt.extensions_used if line}
            attempt.not_used = sorted(advertised - used)
        return {
            "attempts": attempts,
            "recipient_statuses": list(obj.recipient_statuses.all()),
            "events": list(obj.events.all()),
            "can_retry": self.has_retry_permission(request),
            "can_view_body": request.user.has_perm(BODY_PERMISSION),
            "providers": sorted(get_config().providers) if self._config_ok() else [],
            "operate_url": reverse(
                f"{self.admin_site.name}:django_reliable_mail_outboundmessage_operate",
                args=[obj.pk],
            ),
            "eml_url": reverse(
                f"{self.admin_site.name}:django_reliable_mail_outboundmessage_eml",
                args=[obj.pk],
            ),
            "extension_choices": sorted(KNOWN_EXTENSIONS - {"AUTH", "STARTTLS"}),
        }

    @staticmethod
    def _config_ok():
        try:
            get_config()
        except ReliableMailConfigError:
            return False
        return True

    @method_decorator(require_POST)
    def operate_view(self, request, object_id):
        """The change page's buttons: retry, cancel, reroute, retry without extensions."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        message = row_or_404(self.get_queryset(request), object_id)
        pk = message.pk
        operation = request.POST.get("operation")
        actor = self._actor(request)
        try:
            if operation == "retry":
                done = operations.retry([message], actor=actor)
            elif operation == "cancel":
                done = operations.cancel([message], actor=actor)
            elif operation == "reroute":
                done = operations.retry(
                    [message], actor=actor, provider=request.POST.get("provider") or None
                )
            elif operation == "disable":
                done = operations.retry(
                    [message], actor=actor, disable_extensions=request.POST.getlist("extensions")
                )
            else:
                raise PermissionDenied("unknown operation")
        except ReliableMailConfigError as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            done = []
        if done:
            self.message_user(request, f"Message {pk}: {operation} done.")
        elif operation in ("retry", "cancel", "reroute", "disable"):
            self.message_user(
                request, f"Message {pk} is {message.status}; nothing to do.", level=messages.WARNING
            )
        return HttpResponseRedirect(
            reverse(
                f"{self.admin_site.name}:django_reliable_mail_outboundmessage_change", args=[pk]
            )
        )

    def eml_view(self, request, object_id):
        if not request.user.has_perm(BODY_PERMISSION):
            raise PermissionDenied
        message = row_or_404(self.get_queryset(request), object_id)
        response = HttpResponse(bytes(message.mime), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="message-{message.pk}.eml"'
        return response

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return TemplateResponse(
            request,
            "admin/django_reliable_mail/dashboard.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reliable mail dashboard",
                "opts": self.model._meta,
                **dashboard_context(),
            },
        )


@admin.register(FailedMessage)
class FailedMessageAdmin(OutboundMessageAdmin):
    list_filter = ("provider", ("created_at", admin.DateFieldListFilter))

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=OutboundMessage.Status.FAILED)

    def get_urls(self):
        return admin.ModelAdmin.get_urls(self)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # One change page for every message, wherever the list was opened: found whatever
        # its status now (it may have left this list since the list was shown).
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        message = row_or_404(OutboundMessage.objects.all(), object_id)
        return HttpResponseRedirect(
            reverse(
                f"{self.admin_site.name}:django_reliable_mail_outboundmessage_change",
                args=[message.pk],
            )
        )


@admin.register(RetryingMessage)
class RetryingMessageAdmin(FailedMessageAdmin):
    def get_queryset(self, request):
        return admin.ModelAdmin.get_queryset(self, request).filter(
            status=OutboundMessage.Status.RETRYING
        )


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    """Attempts across messages: what failed, where, with which reply."""

    list_display = (
        "id",
        "message_id",
        "number",
        "provider",
        "outcome",
        "reply_code",
        "reply_enhanced_code",
        "queue_id",
        "started_at",
    )
    list_filter = ("outcome", "provider")
    search_fields = ("=queue_id", "=message__message_id")
    show_full_result_count = False
    exclude = ("transcript",)
