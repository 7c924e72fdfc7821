"""Packaging contracts: no Django anywhere in the agent, config from TOML + env, the CLI runs a fleet."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.frequency import ReplayFrequency, load_recording
from tests.edge_agent.conftest import PASSWORD
from tests.edge_agent.csms import RecordingCsms


def test_no_module_of_the_agent_imports_django() -> None:
    # given a fresh interpreter, when every module of the package is imported
    code = textwrap.dedent(
        """
        import importlib, importlib.util, pkgutil, sys
        import edge_agent
        names = [m.name for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")]
        if importlib.util.find_spec("iso15118") is None:  # the iso15118 extra's modules import Josev
            extra = ("edge_agent.secc.codec", "edge_agent.secc.controller", "edge_agent.secc.server")
            names = [n for n in names if n not in extra]
        for name in names:
            importlib.import_module(name)
        assert len(names) >= 15, names
        print("django" in sys.modules, len(names))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # then Django was never loaded
    django_loaded, count = out.stdout.split()
    assert django_loaded == "False"
    assert int(count) >= 15


def test_config_reads_toml_and_env_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            """
            station_id = "depot-7"
            csms_url = "wss://csms.example.com/ocpp"
            [control]
            floor_soc = 0.3
            [failsafe]
            mode = "Idle"
            """
        )
    )
    cfg = load_config(path, env={"EDGE_AGENT_CONTROL_FLOOR_SOC": "0.25", "EDGE_AGENT_PASSWORD": "pw"})
    assert cfg.station_id == "depot-7"
    assert cfg.control.floor_soc == 0.25
    assert cfg.failsafe.mode == "Idle"
    assert cfg.password == "pw"
    assert cfg.versions == ["2.1", "2.0.1"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('station_id = "x"\ncsms_url = "http://nope"', "ws://"),
        ('station_id = "x"\ncsms_url = "ws://h/ocpp"\npassword = "in-file"', "password belongs in env"),
        ('station_id = "x"\ncsms_url = "ws://h/ocpp"\n[failsafe]\nlink_loss_timeout_s = 5', "link_loss_timeout_s"),
        ('station_id = "x"\ncsms_url = "ws://h/ocpp"\n[control]\nfloor_soc = "lots"', "control.floor_soc"),
        ('station_id = "x"\ncsms_url = "ws://h/ocpp"\n[contorl]\nfloor_soc = 0.2', "unknown setting contorl"),
        ('station_id = "x"\ncsms_url = "wss://h/ocpp"\n[tls]\ncert_file = "c.pem"', "go together"),
        ('station_id = "x"\ncsms_url = "ws://h/ocpp"\n[tls]\nca_file = "ca.pem"', "need a wss://"),
    ],
)
def test_bad_config_is_refused_with_a_reason(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_the_packaged_recording_replays_real_frequency() -> None:
    freq, volt = load_recording()
    assert len(freq) == 86_400
    assert 59.95 < min(freq) < max(freq) < 60.06
    assert 0.9 < min(volt) < max(volt) < 1.1
    src = ReplayFrequency(offset_s=10.0)
    f0, _, locked = src(100.0)
    assert f0 == pytest.approx(freq[10])
    assert locked
    assert src(100.5)[0] == pytest.approx((freq[10] + freq[11]) / 2)


@pytest.mark.timeout(60)
async def test_edge_agent_simulate_runs_a_fleet_against_a_csms(tmp_path: Path) -> None:
    # given a CSMS that knows three stations
    csms = await RecordingCsms(stations={f"cli-{i}": PASSWORD for i in (1, 2, 3)}).start()
    try:
        # when the CLI runs three simulated agents for a few seconds
        exe = Path(sys.executable).parent / "edge-agent"
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_PASSWORD")}
        proc = await asyncio.create_subprocess_exec(
            str(exe), "simulate", "--count", "3", "--csms", csms.url, "--id-prefix", "cli",
            "--duration", "4", "--var-dir", str(tmp_path),
            env={**env, "EDGE_AGENT_PASSWORD_FILE": str(secret)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 40)
        # then each booted, started a transaction and sent meter values every second
        assert proc.returncode == 0, err.decode()
        boots = {b["charging_station"]["serial_number"] for b in csms.of("BootNotification")}
        assert boots == {"cli-1", "cli-2", "cli-3"}
        assert len(csms.of("NotifyEVChargingNeeds")) == 3
        updated: dict[str, int] = {}
        for rec in csms.received:
            if rec.action == "TransactionEvent" and rec.payload["event_type"] == "Updated":
                updated[rec.station] = updated.get(rec.station, 0) + 1
        assert all(n >= 2 for n in updated.values()), updated
        assert (tmp_path / "edge-fleet-cli.log").exists()
    finally:
        await csms.stop()


def test_simulate_refuses_bad_arguments() -> None:
    exe = Path(sys.executable).parent / "edge-agent"
    out = subprocess.run(
        [str(exe), "simulate", "--count", "0", "--csms", "ws://x/ocpp"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "--count" in out.stderr


def test_edge_agent_simulate_refuses_a_password_on_the_command_line() -> None:
    # Given a password offered as an argument (visible to every user of the machine through ps)
    exe = Path(sys.executable).parent / "edge-agent"
    result = subprocess.run(
        [str(exe), "simulate", "--count", "1", "--csms", "ws://127.0.0.1:9/ocpp", "--password", "a-secret-on-argv-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # Then the agent does not start, and says where the password goes instead
    assert result.returncode == 2
    assert "EDGE_AGENT_PASSWORD_FILE" in result.stderr
