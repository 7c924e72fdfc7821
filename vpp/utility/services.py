"""Writes of the utility interfaces: program configuration (audited), connection status, events and reports.

Configuration is validated here, whoever writes it (API, admin, command): the portfolio must be one of the
organisation's fleets (a whole-aggregator portfolio is an operator's), the product an active regulation
or reserve product, the endpoint ``https`` (plain ``http`` only where the operator sets ``UTILITY_ALLOW_HTTP``),
credential file names inside the organisation's own directory (``UTILITY_CREDENTIALS_DIR/<slug>/``) and secrets
environment variables of its own prefix (``UTILITY_ORG<id>_``): a tenant must not be able to make the aggregator
present another organisation's keys, its own or ``SECRET_KEY`` to a server the tenant names.
Each change is a :class:`~vpp.utility.models.UtilityProgramChange`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from fleet.models import Fleet, Organisation
from fleet.selectors import fleet_portfolio, is_operator
from markets.models import Product
from markets.regulation.models import ReserveDeployment
from markets.regulation.services import reserve_deployment_end
from vpp.dispatch.services import power_cap_end
from vpp.models import PowerCap
from vpp.utility.models import (
    EventStatus,
    Protocol,
    ReportKind,
    UtilityEvent,
    UtilityProgram,
    UtilityProgramChange,
    UtilityReport,
)
from vpp.utility.selectors import (
    ENDPOINT_RULE,
    CredentialError,
    credential_path,
    endpoint_allowed,
    event_newer,
    program_refs,
    secret_env_allowed,
    secret_env_prefix,
)
from vpp.utility.signals import MAX_EVENT

LOG = logging.getLogger(__name__)

CONFIG_FIELDS = (
    "name", "protocol", "endpoint", "program_ref", "client_name", "portfolio", "product", "cert_file", "key_file",
    "ca_file", "secret_env", "level_step_w", "poll_s", "report_s", "enabled",
)  # fmt: skip
# Events become reserve deployments, which dispatch by themselves (vpp.dispatch.reserve): of the program's reserve
# product, or an offset only on a regulation product's portfolio.
DISPATCHABLE_KINDS = (Product.Kind.REGULATION, Product.Kind.RESERVE)
EXPIRED_REASON = "already over when received"
DISABLED_WITHDRAWN = "withdrawn: the program was disabled"
STALE_REASON = "older than the version stored: a delayed or replayed message, not applied"


class ProgramInvalid(ValueError):
    """A configuration refused: ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _actor(user: AbstractBaseUser | AnonymousUser | None) -> tuple[int | None, str]:
    if user is None or not user.is_authenticated:
        return None, "system:utility"
    return user.pk, user.get_username()


def utility_program_check(program: UtilityProgram, *, user: AbstractBaseUser | AnonymousUser | None) -> None:
    """Raise :class:`ProgramInvalid` unless ``program`` (unsaved changes included) may be saved by ``user``."""
    if program.protocol not in Protocol.values:
        raise ProgramInvalid("protocol", f"one of {', '.join(Protocol.values)}")
    if not endpoint_allowed(program.endpoint):
        raise ProgramInvalid("endpoint", ENDPOINT_RULE)
    fleets = Fleet.objects.filter(organisation_id=program.organisation_id).values_list("pk", flat=True)
    if program.portfolio not in {fleet_portfolio(pk) for pk in fleets}:
        whole = not program.portfolio.startswith("fleet-")
        if not (whole and user is not None and is_operator(user)):
            raise ProgramInvalid("portfolio", "a fleet of the organisation (fleet-<id>)")
    product = program.product
    if not product.active or product.kind not in DISPATCHABLE_KINDS:
        raise ProgramInvalid("product", "an active regulation or reserve product (its events deploy it)")
    for field in ("cert_file", "key_file", "ca_file"):
        name = getattr(program, field)
        if name:
            try:
                credential_path(name, program.organisation)
            except CredentialError as exc:
                raise ProgramInvalid(field, str(exc)) from None
    if program.secret_env and not secret_env_allowed(program.secret_env, program.organisation):
        prefix = secret_env_prefix(program.organisation)
        raise ProgramInvalid("secret_env", f"the NAME of an environment variable starting {prefix} (never the secret)")
    if program.poll_s < 1 or program.report_s < 1:
        raise ProgramInvalid("poll_s", "at least 1 s")
    _protocol_check(program)


def _protocol_check(program: UtilityProgram) -> None:
    """What each client needs to start (refused here rather than failing on the status page later)."""
    if program.protocol == Protocol.IEEE_2030_5:
        for field in ("cert_file", "key_file"):  # 2030.5 identifies a client by its certificate (the LFDI)
            if not getattr(program, field):
                raise ProgramInvalid(field, "IEEE 2030.5 needs a client certificate and its key")
    if program.protocol == Protocol.OPENADR_3:
        if not (program.secret_env or program.key_file):
            raise ProgramInvalid("secret_env", "OpenADR 3 needs the OAuth client secret (secret_env or key_file)")
        if not program.program_ref:
            raise ProgramInvalid("program_ref", "OpenADR 3: the VTN's programName")


def _value(program: UtilityProgram, field: str) -> Any:
    return program.product_id if field == "product" else getattr(program, field)


def utility_program_create(
    *, organisation: Organisation, user: AbstractBaseUser | AnonymousUser | None, **fields: Any
) -> UtilityProgram:
    """A new program (validated, audited as ``created``)."""
    program = UtilityProgram(organisation=organisation, **fields)
    utility_program_check(program, user=user)
    actor_id, label = _actor(user)
    with transaction.atomic():
        try:
            program.save()
        except IntegrityError as exc:
            raise ProgramInvalid("name", "the organisation already has a program of that name") from exc
        changes = {f: [None, str(_value(program, f))] for f in CONFIG_FIELDS}
        UtilityProgramChange.objects.create(
            program=program, at=timezone.now(), actor_id=actor_id, actor_label=label, action="created", changes=changes
        )
    LOG.info("utility program %s created by %s", program.pk, label)
    return program


def utility_program_update(
    *, program: UtilityProgram, user: AbstractBaseUser | AnonymousUser | None, **fields: Any
) -> UtilityProgram:
    """Change a program's configuration (validated, audited with each field's before and after); a running client
    picks the change up at its next poll."""
    unknown = set(fields) - set(CONFIG_FIELDS)
    if unknown:
        raise ProgramInvalid(sorted(unknown)[0], "not a configuration field")
    with transaction.atomic():
        row = UtilityProgram.objects.select_for_update().get(pk=program.pk)
        before = {f: _value(row, f) for f in fields}
        for field, value in fields.items():
            setattr(row, field, value)
        utility_program_check(row, user=user)
        changes = {f: [str(before[f]), str(_value(row, f))] for f in fields if before[f] != _value(row, f)}
        if not changes:
            return row
        try:
            row.save(update_fields=[("product" if f == "product" else f) for f in fields])
        except IntegrityError as exc:
            raise ProgramInvalid("name", "the organisation already has a program of that name") from exc
        actor_id, label = _actor(user)
        action = "changed"
        if set(changes) == {"enabled"}:
            action = "enabled" if row.enabled else "disabled"
        UtilityProgramChange.objects.create(
            program=row, at=timezone.now(), actor_id=actor_id, actor_label=label, action=action, changes=changes
        )
        if "enabled" in changes and not row.enabled:  # no discharge for it from now, whether a runner is up or not
            utility_events_withdraw(program_id=row.pk, reason=DISABLED_WITHDRAWN)
            utility_program_dispatch_end(program_id=row.pk, reason=DISABLED_WITHDRAWN)
    LOG.info("utility program %s %s by %s: %s", row.pk, action, label, ", ".join(changes))
    return row


# --- connection status (written by the clients) --------------------------------------------------------------------


def connection_contact(*, program_id: int, registration_ref: str | None = None, at: datetime | None = None) -> None:
    """The server answered: record the contact (and the id it gave us), clear the error run."""
    fields: dict[str, Any] = {"last_contact_at": at or timezone.now(), "errors_in_a_row": 0}
    if registration_ref is not None:
        fields["registration_ref"] = registration_ref[:120]
    UtilityProgram.objects.filter(pk=program_id).update(**fields)


def connection_error(*, program_id: int, error: str, at: datetime | None = None) -> None:
    """The server did not answer, or answered wrongly: the status page shows it; logged once per run of errors."""
    moment = at or timezone.now()
    updated = UtilityProgram.objects.filter(pk=program_id).update(
        last_error=error[:2000], last_error_at=moment, errors_in_a_row=F("errors_in_a_row") + 1
    )
    if updated:
        count = UtilityProgram.objects.filter(pk=program_id).values_list("errors_in_a_row", flat=True).first()
        if count == 1:
            LOG.warning("utility program %s: %s", program_id, error)


# --- events and reports ---------------------------------------------------------------------------------------------


def utility_event_record(
    *,
    program: UtilityProgram,
    event_ref: str,
    modification: int,
    kind: str,
    start: datetime,
    end: datetime,
    power_w: int,
    payload: dict[str, Any],
    limit_w: int | None = None,
    received_at: datetime | None = None,
) -> tuple[UtilityEvent, bool]:
    """Store one version of a utility's event as received (idempotent: the same version again is the stored row).

    A version that cannot be dispatched is still stored, as ``refused`` with the reason: the utility sent it, and
    the answer the aggregator gave must be explainable afterwards.
    """
    moment = received_at or timezone.now()
    existing = UtilityEvent.objects.filter(program=program, event_ref=event_ref, modification=modification).first()
    if existing is not None:
        return existing, False
    status, reason = EventStatus.RECEIVED, ""
    newer = event_newer(program, event_ref, modification)
    if newer is not None:  # a delayed or replayed message: stored for the record, never applied over the newer one
        status, reason = EventStatus.REFUSED, f"{STALE_REASON} (modification {newer.modification} is stored)"
        end = max(end, start + timedelta(seconds=1))
    elif end <= start:
        status, reason, end = EventStatus.REFUSED, "the event ends before it starts", start + timedelta(seconds=1)
    elif end - start > MAX_EVENT:
        status, reason = EventStatus.REFUSED, f"longer than {MAX_EVENT}: not a DR event this aggregator dispatches"
    elif end <= moment:
        status, reason = EventStatus.REFUSED, EXPIRED_REASON
    try:
        with transaction.atomic():
            row = UtilityEvent.objects.create(
                program=program,
                protocol=program.protocol,
                source=program.endpoint,
                event_ref=event_ref[:120],
                modification=modification,
                kind=kind[:32],
                start=start,
                end=end,
                power_w=power_w,
                limit_w=limit_w,
                payload=payload,
                received_at=moment,
                status=status,
                status_reason=reason,
            )
    except IntegrityError:  # another client process stored it first
        return UtilityEvent.objects.get(program=program, event_ref=event_ref, modification=modification), False
    UtilityProgram.objects.filter(pk=program.pk).update(last_event_at=moment)
    if newer is not None:
        LOG.warning("utility program %s: event %s#%s: %s", program.pk, event_ref, modification, reason)
        return row, True
    # An earlier version of the same event is replaced by this one.
    UtilityEvent.objects.filter(program=program, event_ref=event_ref, modification__lt=modification).exclude(
        status__in=[EventStatus.COMPLETED, EventStatus.REFUSED]
    ).update(status=EventStatus.CANCELLED, status_reason=f"replaced by modification {modification}")
    return row, True


def utility_event_status(*, event_id: int, status: str, reason: str | None = None, **fields: Any) -> None:
    """The event's new status (its reason kept when none is given: a note such as a departure need winning over
    an import limit stays with the event to its end)."""
    if reason is not None:
        fields["status_reason"] = reason
    UtilityEvent.objects.filter(pk=event_id).update(status=status, **fields)


def utility_event_cancel(*, program: UtilityProgram, event_ref: str, reason: str) -> int:
    """The utility cancelled (or withdrew) an event: every version not yet over is cancelled."""
    return (
        UtilityEvent.objects.filter(program=program, event_ref=event_ref)
        .exclude(status__in=[EventStatus.COMPLETED, EventStatus.REFUSED, EventStatus.CANCELLED])
        .update(status=EventStatus.CANCELLED, status_reason=reason)
    )


def utility_events_withdraw(*, program_id: int, reason: str) -> int:
    """The aggregator stops taking part in a program's events still to do (the program was disabled, deleted or
    re-enrolled): each scheduled or active version is opted out, with the reason kept."""
    return UtilityEvent.objects.filter(
        program_id=program_id, status__in=[EventStatus.SCHEDULED, EventStatus.ACTIVE]
    ).update(status=EventStatus.OPTED_OUT, status_reason=reason, opt="optOut")


def utility_program_dispatch_end(*, program_id: int, reason: str, at: datetime | None = None) -> list[int]:
    """End now what the program's events put in force, whichever process (or none: a runner that is down) ran them:
    every reserve deployment and power cap not over yet whose ref is the program's (``<protocol>:<pk>:``, as
    :func:`vpp.utility.dispatch.reserve_ref` makes it). The deployments ended: each one's reserve run, wherever it
    runs, sees its new end within ``vpp.dispatch.reserve.END_CHECK_S`` (the runner also wakes those of its process
    at once) and releases its setpoints."""
    moment = at or timezone.now()
    deployments, caps = program_refs(program_id, "event_id"), program_refs(program_id, "source_ref")
    ended = []
    for pk in ReserveDeployment.objects.filter(deployments, end__gt=moment).values_list("pk", flat=True):
        if reserve_deployment_end(deployment_id=pk, at=moment, reason=reason) is not None:
            ended.append(pk)
    refs = list(PowerCap.objects.filter(caps, end__gt=moment).values_list("source_ref", flat=True))
    for ref in refs:
        power_cap_end(source_ref=ref, at=moment)
    if ended or refs:
        LOG.warning(
            "utility program %s: %s deployment(s), %s cap(s) ended: %s", program_id, len(ended), len(refs), reason
        )
    return ended


def utility_report_record(
    *,
    program: UtilityProgram,
    kind: str,
    period_start: datetime,
    period_end: datetime,
    values: dict[str, Any],
    basis: dict[str, Any] | None = None,
    event: UtilityEvent | None = None,
) -> UtilityReport:
    """A report about to be sent (stored first: what was sent is on record even if the answer never comes)."""
    if kind not in ReportKind.values:
        raise ValueError(f"report kind {kind!r}")
    return UtilityReport.objects.create(
        program=program,
        event=event,
        kind=kind,
        period_start=period_start,
        period_end=period_end,
        values=values,
        basis=basis or {},
        created_at=timezone.now(),
    )


def utility_report_answered(*, report_id: int, accepted: bool, error: str = "") -> None:
    now = timezone.now()
    UtilityReport.objects.filter(pk=report_id).update(sent_at=now, accepted=accepted, error=error[:2000])
    report = UtilityReport.objects.filter(pk=report_id).values_list("program_id", flat=True).first()
    if accepted and report is not None:
        UtilityProgram.objects.filter(pk=report).update(last_report_at=now)


def utility_report_pending(*, report_ids: list[int], error: str) -> None:
    """A send not acknowledged: the reports stay pending (neither sent nor answered) for the next try, the error
    kept."""
    UtilityReport.objects.filter(pk__in=report_ids, accepted__isnull=True).update(error=error[:2000])
