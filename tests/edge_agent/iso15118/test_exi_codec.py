"""The agent's EXI codec (Josev's Java code with its JAXB contexts kept) against Josev's own codec, byte for byte.

Expected values are Josev's ExificientEXICodec's output for the same messages: the cached codec must put exactly
the same EXI on the wire and read back exactly the same JSON, for every message of an AC BPT session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest


@pytest.fixture(scope="module")
def codecs() -> Iterator[tuple[Any, Any]]:
    from iso15118.shared.exificient_exi_codec import ExificientEXICodec

    from edge_agent.secc.codec import CachedExiCodec

    josev, cached = ExificientEXICodec(), CachedExiCodec()
    try:
        yield josev, cached
    finally:
        for codec in (josev, cached):
            codec.gateway.shutdown()


def session_messages() -> list[tuple[str, str]]:
    return [tuple(m) for m in json.loads(resources.files("edge_agent.secc").joinpath("warmup.json").read_text())]


def test_the_cached_codec_writes_and_reads_every_session_message_as_josevs_own(codecs: tuple[Any, Any]) -> None:
    josev, cached = codecs
    messages = session_messages()
    assert len(messages) >= 20  # the whole AC BPT session: AppProtocol, setup, ..., charge loop, stop
    for namespace, text in messages:
        # given a message as Josev's state machines hand it to the codec
        # when both codecs encode it, and decode what the other one wrote
        ours = cached.encode(text, namespace)
        theirs = josev.encode(text, namespace)
        # then the bytes on the wire are the same, and so is what each reads back
        assert bytes(ours) == bytes(theirs), json.loads(text).keys()
        assert cached.decode(theirs, namespace) == josev.decode(ours, namespace)


def test_the_cached_codec_reports_a_message_it_cannot_encode_as_josevs_does(codecs: tuple[Any, Any]) -> None:
    josev, cached = codecs
    # given a message no schema has
    text, namespace = '{"NoSuchReq": {"Header": {}}}', "urn:iso:std:iso:15118:-20:CommonMessages"
    # when both try to encode it, then both refuse it with the same error
    with pytest.raises(Exception) as ours:
        cached.encode(text, namespace)
    with pytest.raises(Exception) as theirs:
        josev.encode(text, namespace)
    assert str(ours.value) == str(theirs.value)
    assert str(ours.value)
