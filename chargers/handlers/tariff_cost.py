"""Tariff and cost (OCPP 2.1): VatNumberValidation."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.jobs import StationRef


def vat_number_refuse(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # No VAT lookup is run by this CSMS: the number is echoed back, Rejected.
    return {"status": "Rejected", "vatNumber": payload["vatNumber"]}
