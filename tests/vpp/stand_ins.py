"""Stand-ins shared by the dispatch and intake tests: stations that answer, a fleet on them, awards in force."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from fleet.numerics.arrays import FleetArrays
from fleet.numerics.snapshot import VehicleSnapshot
from markets.models import Award, Product
from vpp.dispatch.dispatcher import Route
from vpp.replay.harness import award_create


class AnsweringStation:
    """Stands in for an OcppConsumer in this process's registry: answers every call Accepted after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call_local(self, action: str, payload: dict[str, Any], deadline: float) -> asyncio.Future[dict[str, Any]]:
        self.calls.append((action, payload))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def answer() -> None:
            future.set_result({"status": "result", "payload": {"status": "Accepted"}, "answered_at": time.time()})

        asyncio.get_running_loop().call_later(self.delay, answer)
        return future


def fleet_of(n: int) -> tuple[FleetArrays, list[Route]]:
    """``n`` plugged-in 60 kWh cars at 60 %, 11 kW both ways, on stations ``disp-1`` ... ``disp-n`` (OCPP 2.1)."""
    snapshots = [
        VehicleSnapshot(
            vehicle_id=i + 1,
            capacity_wh=60_000,
            soc_wh=36_000,
            floor_wh=12_000,
            max_charge_w=11_000,
            max_discharge_w=11_000,
            station_id=f"disp-{i + 1}",
            evse_id=1,
        )
        for i in range(n)
    ]
    return FleetArrays.from_snapshots(snapshots), [Route(f"disp-{i + 1}", 1, "2.1", f"tx-{i + 1}") for i in range(n)]


def award(product: Product, portfolio: str, start: datetime, end: datetime, awarded_w: int) -> Award:
    """An award (and the bid it answers) of ``awarded_w`` to ``portfolio`` for ``[start, end)``; awards may overlap."""
    return award_create(product=product, portfolio=portfolio, capacity_w=awarded_w, start=start, end=end)


def award_now(product: Product, portfolio: str, awarded_w: int = 100_000) -> Award:
    """An award to ``portfolio`` in force from an hour ago to an hour from now."""
    now = timezone.now()
    return award(product, portfolio, now - timedelta(hours=1), now + timedelta(hours=1), awarded_w)
