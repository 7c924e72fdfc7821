"""The message log's record of a frame: any JSON the parser accepts can be recorded, however deep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chargers import ocpp_j
from chargers.batch import _jsonb_unsafe

# A payload (found by tests/chargers/test_fuzz.py) on which orjson 3.10.18 to 3.11.9 wrote past its output buffer:
# the heap corruption aborted the server seconds later ("realloc(): invalid next size").
NESTED_CRASH = Path(__file__).parent / "data" / "orjson_nested_crash.json"


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [{"n": value}]
    return value


def test_it_finds_a_nul_at_the_bottom_of_a_payload_nested_deeper_than_the_recursion_limit():
    # Given payloads nested 1,000 levels deep (orjson parses up to 1,024), one with U+0000 at the bottom
    clean, dirty = _nested(1000, "ok"), _nested(1000, "bad\x00")
    # When they are checked (jsonb cannot hold U+0000), Then the check answers instead of recursing out
    assert _jsonb_unsafe(dirty) is True
    assert _jsonb_unsafe({"k\x00": 1}) is True
    # and deep nesting alone keeps a value out of jsonb (and out of the native encoder)
    assert _jsonb_unsafe(clean) is True


def test_it_stores_a_shallow_payload_as_json():
    # Given a payload nested as deep as the store holds, and one level deeper
    shallow = _nested(ocpp_j.MAX_NESTING // 2 - 1, "ok")  # each level of _nested is a list and a dict
    deeper = _nested(ocpp_j.MAX_NESTING // 2 + 1, "ok")
    # Then the first goes to jsonb, the second is kept as text
    assert _jsonb_unsafe({"p": shallow}) is False
    assert _jsonb_unsafe({"p": deeper}) is True


def test_the_pinned_json_encoder_does_not_corrupt_memory_on_the_payload_that_crashed_the_server():
    # Given the payload that made orjson <= 3.11.9 write past its buffer, and CPython's debug allocator, which
    # aborts on the first byte written past a block (the release allocator noticed only later, at random)
    script = (
        "import json, sys\nfrom chargers import ocpp_j\n"
        "payload = json.loads(open(sys.argv[1]).read())\n"
        "for _ in range(20):\n    ocpp_j.dumps_bytes(payload)\n"
    )
    # When the project's encoder serialises it repeatedly in a process of its own
    done = subprocess.run(
        [sys.executable, "-c", script, str(NESTED_CRASH)],
        env={"PYTHONMALLOC": "debug", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the process ends normally
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(NESTED_CRASH.read_text())  # the fixture itself is plain JSON
