"""Smart charging (OCPP block K): what stations report about limits, installed profiles and the EV's needs.

NotifyEVChargingNeeds (2.0.1 and 2.1 incl. V2X parameters), NotifyChargingLimit / ClearedChargingLimit,
ReportChargingProfiles, NotifyEVChargingSchedule and (2.1) PullDynamicScheduleUpdate. Profiles go to stations
as CSMS-initiated calls (SetChargingProfile).
"""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_parse, event_handler
from chargers.jobs import StationRef
from chargers.models import ChargingProfile, EvChargingNeeds, ProfileSource, StationEventKind


def charging_limit_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    limit = payload["chargingLimit"]
    ctx.event(station, StationEventKind.CHARGING_LIMIT, summary=limit["chargingLimitSource"], **payload)
    return {}


def charging_profiles_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """ReportChargingProfiles: the station's installed profiles replace what it reported before for them."""
    evse_id = payload["evseId"]
    profiles = payload["chargingProfile"]
    ChargingProfile.objects.filter(
        station_id=station.pk,
        evse_id=evse_id,
        source=ProfileSource.REPORTED,
        profile_id__in=[p["id"] for p in profiles],
    ).update(active=False)
    ChargingProfile.objects.bulk_create(
        ChargingProfile(
            station_id=station.pk,
            evse_id=evse_id,
            profile_id=p["id"],
            stack_level=p["stackLevel"],
            purpose=p["chargingProfilePurpose"],
            kind=p["chargingProfileKind"],
            source=ProfileSource.REPORTED,
            limit_source=str(payload["chargingLimitSource"]),
            payload=p,
            recorded_at=ctx.now,
        )
        for p in profiles
    )
    return {}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else round(float(value))


def ev_charging_needs_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """NotifyEVChargingNeeds (2.0.1 and 2.1 incl. v2xChargingParameters), stored in W / Wh."""
    needs = payload["chargingNeeds"]
    ac = needs.get("acChargingParameters") or {}
    dc = needs.get("dcChargingParameters") or {}
    v2x = needs.get("v2xChargingParameters") or {}
    departure = needs.get("departureTime")
    EvChargingNeeds.objects.create(
        station_id=station.pk,
        evse_id=payload["evseId"],
        received_at=ctx.now,
        requested_energy_transfer=needs["requestedEnergyTransfer"],
        control_mode=needs.get("controlMode", ""),
        mobility_needs_mode=needs.get("mobilityNeedsMode", ""),
        departure_time=datetime_parse(departure, ctx.now) if departure else None,
        energy_amount_wh=_int_or_none(ac.get("energyAmount", dc.get("energyAmount"))),
        ev_max_power_w=_int_or_none(dc.get("evMaxPower")),
        min_charge_power_w=_int_or_none(v2x.get("minChargePower")),
        max_charge_power_w=_int_or_none(v2x.get("maxChargePower")),
        min_discharge_power_w=_int_or_none(v2x.get("minDischargePower")),
        max_discharge_power_w=_int_or_none(v2x.get("maxDischargePower")),
        ev_target_energy_request_wh=_int_or_none(v2x.get("evTargetEnergyRequest")),
        ev_min_energy_request_wh=_int_or_none(v2x.get("evMinEnergyRequest")),
        ev_max_energy_request_wh=_int_or_none(v2x.get("evMaxEnergyRequest")),
        ev_min_v2x_energy_request_wh=_int_or_none(v2x.get("evMinV2XEnergyRequest")),
        ev_max_v2x_energy_request_wh=_int_or_none(v2x.get("evMaxV2XEnergyRequest")),
        target_soc=v2x.get("targetSoC"),
        payload=needs,
    )
    return {"status": "Accepted"}


charging_limit_cleared_record = event_handler(StationEventKind.CHARGING_LIMIT_CLEARED, "chargingLimitSource")


def ev_charging_schedule_accept(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # Kept in the message log only: this CSMS does not use the schedule the EV chose.
    return {"status": "Accepted"}


def dynamic_schedule_update_refuse(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # No dynamic schedules are run by this CSMS.
    return {"status": "Rejected"}
