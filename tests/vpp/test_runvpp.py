"""The README's run command, end to end: server, Celery side and simulated chargers with edge agents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from chargers.models import MeterValue, Station
from fleet.models import PlugSession
from tests.live import free_port
from vpp.management.commands.runvpp import _daphne_command, _fleet_command

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _database_url_of_test_db() -> str:
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _wait_for(predicate, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_runvpp_brings_up_a_fleet_that_reports_to_the_csms(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the demo seeded for two chargers (as `make run` does before starting), both processes sharing var/
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("VPP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", _database_url_of_test_db())
    call_command("demo_seed", "--stations", "2", "--id-prefix", "rt", "--history-days", "0")
    env = dict(os.environ)
    # when the run command starts
    port = free_port()
    console = tmp_path / "console.log"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runvpp", "--port", str(port), "--fleet", "2", "--id-prefix", "rt"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=console.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        # then both simulated chargers connect, authenticate and their meter values are stored
        assert _wait_for(lambda: Station.objects.filter(station_id__startswith="rt-", online=True).count() == 2, 60)
        assert _wait_for(lambda: MeterValue.objects.filter(station__station_id__startswith="rt-").exists(), 30)
        # and the fleet side matched the seeded cars to their charging sessions
        assert PlugSession.objects.filter(station_id__startswith="rt-", ended_at__isnull=True).exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    # and Ctrl-C stops the whole product cleanly
    assert process.returncode == 0
    # and the console kept the address and the logins readable: no access log, no Celery banner
    text = console.read_text()
    assert f"Dashboard: http://127.0.0.1:{port}/" in text
    assert "Demo admin (operator): admin / " in text
    assert "WSCONNECT" not in text
    assert '"GET ' not in text
    assert "celery beat v" not in text


def test_the_access_log_is_off_unless_asked_for() -> None:
    assert _daphne_command("127.0.0.1", 8000, 1)[5] == "0"  # Daphne's -v
    assert _daphne_command("127.0.0.1", 8000, 1, "1")[5] == "1"


def test_runvpp_refuses_several_workers_without_redis(settings: Any) -> None:
    # Given the embedded default (no REDIS_URL: the in-memory layer cannot cross processes)
    settings.REDIS_URL = None
    # When two Daphne workers are asked for / Then it stops before starting anything, saying why
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="needs REDIS_URL"):
        call_command("runvpp", "--port", str(free_port()), "--fleet", "0", "--workers", "2")


def test_the_simulated_fleet_gets_its_password_from_the_environment_not_argv(tmp_path: Path) -> None:
    # argv shows in `ps`, and a generated password starting with "-" would be read as an option.
    command = _fleet_command(tmp_path, "127.0.0.1", 8000, {"fleet": 2, "id_prefix": "demo"})
    assert "--password" not in command


def test_the_simulated_fleet_gets_the_ledger_file_when_one_is_asked_for(tmp_path: Path) -> None:
    # Given runvpp started with --ledger, and without it
    with_ledger = _fleet_command(tmp_path, "127.0.0.1", 8000, {"fleet": 2, "id_prefix": "demo", "ledger": "/x.jsonl"})
    without = _fleet_command(tmp_path, "127.0.0.1", 8000, {"fleet": 2, "id_prefix": "demo", "ledger": None})
    # Then only the first passes it on to edge-agent simulate
    assert with_ledger[-2:] == ["--ledger", "/x.jsonl"]
    assert "--ledger" not in without
