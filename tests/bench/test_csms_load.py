"""Smoke test for the CSMS load generator against the bare reference server, so the bench tools cannot rot.

Both run as real processes over real sockets, exactly as ``bench/README.md`` tells a reader to run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.live


@pytest.fixture
def bare_server() -> Iterator[tuple[int, int]]:
    """A bare ocpp-library CSMS on a free port; yields (port, pid)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "ocpp_bare_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        assert match, f"bare server did not start: {line!r} {stderr}"
        yield int(match.group(1)), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_load(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "csms_load.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(out.read_text()), done.stdout


def test_it_boots_every_station_and_gets_every_meter_value_answered(bare_server, tmp_path):
    # Given a bare server and 6 stations sending 5 MeterValues/s each for 2 s over 2 generator processes
    port, pid = bare_server
    # When the fixed-rate load runs
    code, figures, table = run_load(
        tmp_path,
        *("--url", f"ws://127.0.0.1:{port}/ocpp", "--stations", "6", "--rate", "5", "--duration", "2"),
        *("--processes", "2", "--server-pid", str(pid), "--ocpp", "2.1"),
    )
    # Then every station booted, each sent exactly duration x rate CALLs and every one was answered
    assert code == 0, table
    assert figures["connected"] == figures["booted"] == 6
    assert figures["sent"] == figures["answered"] == 6 * 10
    assert figures["values_sent"] == 6 * 10 * 3
    assert figures["errors"] == {}
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["throughput"] > 0
    assert figures["server_rss_connected"] > 0
    assert figures["mem_per_conn"] is not None
    assert "latency p99" in table
    assert "memory per connection" in table


def test_it_reports_refused_stations_as_errors_not_as_connected(bare_server, tmp_path):
    # Given a URL the server refuses at the handshake (no /ocpp/ prefix => HTTP 404)
    port, _ = bare_server
    # When the load runs
    code, figures, table = run_load(
        tmp_path,
        *("--url", f"ws://127.0.0.1:{port}/wrong", "--stations", "3", "--duration", "1", "--processes", "1"),
    )
    # Then nothing counts as connected, the refusals are reported and the exit status says so
    assert code == 1
    assert figures["booted"] == 0
    assert figures["errors"] == {"connect: HTTP 404": 3}
    assert "MISS" in table


def test_idle_stations_send_heartbeats_and_none_is_missed(bare_server, tmp_path):
    # Given a bare server and 4 idle stations holding their connection for 2 s, a Heartbeat every 0.5 s
    port, pid = bare_server
    # When the idle load runs
    code, figures, table = run_load(
        tmp_path,
        *("--url", f"ws://127.0.0.1:{port}/ocpp", "--mode", "idle", "--stations", "4", "--duration", "2"),
        *("--heartbeat", "0.5", "--processes", "1", "--server-pid", str(pid)),
    )
    # Then every station sent one per interval (4 each, random phase), all answered in time, and all are still open
    assert code == 0, table
    assert figures["sent"] == figures["answered"] == 4 * 4
    assert figures["missed"] == 0
    assert figures["heartbeat_s"] == 0.5
    assert figures["open_at_end"] == 4
    assert figures["server_cpu_pct"] is not None
    assert "heartbeats (every 0.5 s) sent / answered / missed" in table
    assert "server CPU at rest" in table
