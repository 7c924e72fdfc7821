"""OCPP-J framing: frames encode and parse exactly, whatever the payload holds."""

from __future__ import annotations

import json

import pytest

from chargers import ocpp_j


def test_a_call_frame_round_trips_unicode_floats_and_integers_beyond_64_bits():
    # Given a payload with text outside ASCII, a float and an integer orjson cannot encode
    payload = {"text": "Zürich €", "setpoint": -3456.5, "big": 2**70, "list": [1, None, True]}
    # When it is framed as a CALL
    frame = ocpp_j.call_frame("m-1", "DataTransfer", payload)
    # Then the text is compact JSON that parses back to the same frame
    assert json.loads(frame) == [2, "m-1", "DataTransfer", payload]
    assert ", " not in frame
    assert ": " not in frame


@pytest.mark.parametrize("text", ['[2,"m-1","Heartbeat",{"x":NaN}]', '[2,"m-1","Heartbeat",{}', "\ud800"])
def test_it_refuses_text_that_is_not_json_with_a_rpc_framework_error(text):
    with pytest.raises(ocpp_j.OcppError) as caught:
        ocpp_j.parse(text, "2.0.1")
    assert caught.value.code == "RpcFrameworkError"


@pytest.mark.parametrize(
    ("frame", "version"),
    [('[2,"m-1","Heartbeat",[]]', "2.0.1"), ('[2,"m-1","Heartbeat",[]]', "2.1")],
)
def test_it_names_a_payload_that_is_not_an_object_with_the_ocpp2_spelling_format_violation(frame, version):
    # OCPP-J 2.0.1 and 2.1 list FormatViolation; "FormationViolation" is OCPP 1.6's and not a valid 2.x code
    with pytest.raises(ocpp_j.OcppError) as caught:
        ocpp_j.parse(frame, version)
    assert caught.value.code == "FormatViolation"


def test_it_names_a_property_the_schema_does_not_allow_with_format_violation():
    # Given a Heartbeat with a property its schema forbids (additionalProperties: false)
    frame = ocpp_j.parse('[2,"m-1","Heartbeat",{"extra":1}]', "2.1")
    # Then the CALLERROR code is OCPP-J 2.x's FormatViolation
    with pytest.raises(ocpp_j.OcppError) as caught:
        ocpp_j.validate_station_request(frame, "2.1")
    assert caught.value.code == "FormatViolation"


def test_a_frame_orjson_refuses_but_json_allows_is_answered_under_its_own_message_id():
    # Given a CALL whose payload holds a lone surrogate escape (allowed by the JSON grammar, not valid Unicode)
    text = '[2,"m-42","DataTransfer",{"vendorId":"\\udb5d}"}]'
    # When it is parsed / Then the error names the station's message id, so the station can match it
    with pytest.raises(ocpp_j.OcppError) as refused:
        ocpp_j.parse(text, "2.0.1")
    assert refused.value.message_id == "m-42"
