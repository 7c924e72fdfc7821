"""Admin of the vpp app: utility programs (operators), their audit trail, events and reports, and the peak-shaving
steps (read-only)."""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms import ModelForm
from django.http import HttpRequest

from vpp.models import PeakStep
from vpp.utility.models import UtilityEvent, UtilityProgram, UtilityProgramChange, UtilityReport
from vpp.utility.services import (
    CONFIG_FIELDS,
    ProgramInvalid,
    utility_program_check,
    utility_program_create,
    utility_program_update,
)

STATUS_FIELDS = (
    "registration_ref", "last_contact_at", "last_event_at", "last_report_at", "last_error", "last_error_at",
    "errors_in_a_row", "created_at",
)  # fmt: skip


class ProgramForm(ModelForm):
    """Checked by the services' rules (:func:`~vpp.utility.services.utility_program_check`) before saving."""

    user: Any = None
    endpoint = forms.URLField(assume_scheme="https", max_length=300)

    class Meta:
        model = UtilityProgram
        fields = ["organisation", *CONFIG_FIELDS]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.errors:
            candidate = copy.copy(self.instance)  # the instance takes the form's values only after clean()
            for field in ("organisation", *CONFIG_FIELDS):
                if field in cleaned:
                    setattr(candidate, field, cleaned[field])
            try:
                utility_program_check(candidate, user=self.user)
            except ProgramInvalid as exc:
                raise ValidationError({exc.field: exc.message}) from exc
        return cleaned


class ChangeInline(admin.TabularInline):
    model = UtilityProgramChange
    extra = 0
    can_delete = False
    readonly_fields = ("at", "actor_label", "action", "changes")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UtilityProgram)
class UtilityProgramAdmin(admin.ModelAdmin):
    """Writes go through the services (validated, audited), like the API's."""

    form = ProgramForm
    list_display = ("name", "organisation", "protocol", "portfolio", "product", "enabled", "last_contact_at",
                    "last_event_at", "errors_in_a_row")  # fmt: skip
    list_filter = ("protocol", "enabled", "organisation")
    readonly_fields = STATUS_FIELDS
    inlines = [ChangeInline]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its audit trail, events and reports stay: a program is disabled, never deleted

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.user = request.user  # type: ignore[attr-defined]  # ProgramForm's: the rules depend on who saves
        return form

    def save_model(self, request: HttpRequest, obj: UtilityProgram, form: Any, change: bool) -> None:
        fields = {f: form.cleaned_data[f] for f in CONFIG_FIELDS if f in form.cleaned_data}
        if change:
            original = UtilityProgram.objects.get(pk=obj.pk)
            fields = {f: v for f, v in fields.items() if f in form.changed_data}
            saved = utility_program_update(program=original, user=request.user, **fields)
        else:
            organisation = form.cleaned_data["organisation"]
            saved = utility_program_create(organisation=organisation, user=request.user, **fields)
        obj.pk = saved.pk


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UtilityEvent)
class UtilityEventAdmin(ReadOnly):
    list_display = ("event_ref", "modification", "program", "kind", "start", "end", "power_w", "status", "received_at")
    list_filter = ("protocol", "status", "program")


@admin.register(UtilityReport)
class UtilityReportAdmin(ReadOnly):
    list_display = ("program", "kind", "period_start", "period_end", "event", "accepted", "sent_at")
    list_filter = ("kind", "accepted", "program")


@admin.register(PeakStep)
class PeakStepAdmin(ReadOnly):
    list_display = (
        "at",
        "site",
        "action",
        "setpoint_w",
        "achieved_w",
        "cap_w",
        "import_w",
        "accepted",
        "failed",
        "node",
    )
    list_filter = ("action", "site")
    search_fields = ("reason",)
