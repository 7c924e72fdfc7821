"""Transactions (OCPP block E): TransactionEvent.

The batch's transactions and stored seqNos are loaded once per batch (``chargers.batch.transactions_load``) and
their new state written once (``BatchContext.flush``); this handler works on them in memory.
"""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.authorization import id_token_info
from chargers.handlers.common import datetime_parse
from chargers.handlers.meter_values import meter_rows_queue
from chargers.jobs import StationRef
from chargers.models import ENERGY_IMPORT_REGISTER, Transaction


def transaction_event_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """TransactionEvent: stored once per (transaction, seqNo); the transaction's state follows the highest seqNo.

    Offline-queued events replayed out of order still land as their own rows (read them ordered by seqNo), and an
    older event never overwrites the state set by a newer one. Set-based per batch: the batch's transactions and
    their stored seqNos are read in one go (``transactions_load``), events are COPYed and the transactions'
    new state written once in ``BatchContext.flush`` (a regulating fleet sends one event per vehicle a second).
    """
    info = payload["transactionInfo"]
    at = datetime_parse(payload["timestamp"], ctx.now)
    seq_no = payload["seqNo"]
    evse = payload.get("evse") or {}
    tx = ctx.transactions.get((station.pk, info["transactionId"]))
    if tx is None:  # a new transaction (its first event, or the first after a restart of the CSMS's cache)
        tx, _ = Transaction.objects.get_or_create(
            station_id=station.pk,
            transaction_id=info["transactionId"],
            defaults={"evse_id": evse.get("id"), "connector_id": evse.get("connectorId"), "started_at": at},
        )
        ctx.transactions[(station.pk, info["transactionId"])] = tx
    response: dict[str, Any] = {}
    if "idToken" in payload:
        response["idTokenInfo"] = id_token_info(payload["idToken"])
    if (tx.pk, seq_no) in ctx.stored_events:
        return response  # the same event again (e.g. replayed after a reconnect): already stored
    # Meter values first: one it cannot read refuses the whole event (CALLERROR), nothing of it stored.
    update = meter_rows_queue(
        ctx,
        station,
        payload.get("meterValue", []),
        evse_id=evse.get("id", tx.evse_id or 0),
        source="TransactionEvent",
        transaction=tx,
    )
    ctx.stored_events.add((tx.pk, seq_no))
    ctx.tx_events.append(
        (tx.pk, seq_no, payload["eventType"], payload["triggerReason"], at, ctx.now, bool(payload.get("offline")),
         info.get("chargingState", ""), payload)
    )  # fmt: skip
    if update is not None:
        ctx.telemetry.append(update)
    changed = tx.event_apply(payload, at=at, energy_wh=update.values.get(ENERGY_IMPORT_REGISTER) if update else None)
    if changed:
        ctx.tx_changed.setdefault(tx.pk, set()).update(changed)
    return response
