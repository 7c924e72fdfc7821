"""The compiled fast path of schema validation must never change a verdict of the `jsonschema` reference path."""

from __future__ import annotations

import copy
import os
from typing import Any

import jsonschema_rs
import ocpp.messages
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match

from chargers import ocpp_j
from tests.chargers.payloads import station_payloads

VERSIONS = ("2.0.1", "2.1")


def reference_verdict(validator: Draft4Validator, payload: Any) -> str | None:
    """The error code the CSMS answered before the fast path existed (None = valid)."""
    error = best_match(validator.iter_errors(payload))
    return None if error is None else ocpp_j._error_code(error)


def verdict(validator: Draft4Validator, payload: Any) -> str | None:
    try:
        ocpp_j.check(validator, payload)
    except ocpp_j.OcppError as exc:
        return exc.code
    return None


@pytest.mark.parametrize("version", VERSIONS)
def test_every_shipped_schema_compiles_for_the_fast_path(version):
    # Given every JSON schema the ocpp package ships for the version
    folder = os.path.join(os.path.dirname(ocpp.messages.__file__), f"v{version.replace('.', '')}", "schemas")
    names = sorted(n.removesuffix(".json") for n in os.listdir(folder) if n.endswith(".json"))
    assert len(names) > 100
    for name in names:
        # When each request and response schema is compiled by jsonschema-rs
        kind = "Request" if name.endswith("Request") else "Response" if name.endswith("Response") else None
        if kind is None:  # 2.1 SEND payloads carry no suffix
            validator = ocpp_j.send_validator(version, name)
        else:
            message_type = ocpp_j.CALL if kind == "Request" else ocpp_j.CALLRESULT
            validator = ocpp.messages.get_validator(message_type, name.removesuffix(kind), version)
        # Then it compiles (no unresolvable $ref) and is reused afterwards
        assert isinstance(ocpp_j._fast_validator(validator), jsonschema_rs.Draft4Validator)
        assert ocpp_j._fast_validator(validator) is ocpp_j._fast_validator(validator)


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_station_payloads_pass_the_fast_path(version):
    for action, payload in station_payloads(version).items():
        validator = ocpp_j.request_validator(version, action)
        assert ocpp_j._fast_validator(validator).is_valid(payload), action
        assert verdict(validator, payload) is None


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=60),
)


_values = _scalars | st.lists(_scalars, max_size=2) | st.dictionaries(st.text(max_size=5), _scalars, max_size=2)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, Any]:
    """A valid station payload with one to three nodes replaced, deleted or given an extra property."""
    version = draw(st.sampled_from(VERSIONS))
    payloads = station_payloads(version)
    action = draw(st.sampled_from(sorted(payloads)))
    payload = copy.deepcopy(payloads[action])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(payload)))
        if not path:
            continue
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        how = draw(st.sampled_from(("replace", "delete", "extra")))
        if how == "replace":
            parent[path[-1]] = draw(_values)
        elif how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_scalars)
    return version, action, payload


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_fast_path_gives_the_reference_verdict_for_any_payload(case):
    # Given a (usually invalid) mutation of a valid station payload
    version, action, payload = case
    validator = ocpp_j.request_validator(version, action)
    # When the CSMS checks it / Then it answers exactly what the jsonschema-only path answered
    assert verdict(validator, payload) == reference_verdict(validator, payload)
