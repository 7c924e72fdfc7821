"""The message log's record of a frame: any JSON the parser accepts can be recorded, however deep."""

from __future__ import annotations

from chargers.batch import _has_nul


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [{"n": value}]
    return value


def test_it_finds_a_nul_at_the_bottom_of_a_payload_nested_deeper_than_the_recursion_limit():
    # Given payloads nested 1,000 levels deep (orjson parses up to 1,024), one with U+0000 at the bottom
    clean, dirty = _nested(1000, "ok"), _nested(1000, "bad\x00")
    # When they are checked for U+0000 (jsonb cannot hold it), Then the check answers instead of recursing out
    assert _has_nul(clean) is False
    assert _has_nul(dirty) is True
    assert _has_nul({"k\x00": 1}) is True
