"""A SunSpec inverter for tests and benches, laid out by pysunspec2 from the official model definitions.

Nothing here comes from the agent's driver: every model image is encoded by ``sunspec2.device.Model`` from the
model JSON that pysunspec2 ships (the SunSpec Alliance's definitions), and every point is read back the same way.
It behaves as a bidirectional inverter that follows its 704 active-power setpoint while connected, and implements
the 704 reversion: ``WSetRvrtTms`` seconds after the last write of the WSet controls it falls back to
``WSetEnaRvrt``/``WSetRvrt`` on its own (``reverted_at``, ``zero_at`` record when). Faults can be injected:
``fail_reads`` (models whose reads answer a Modbus exception), ``fail_writes`` and ``hang`` (no answer at all).

Run it alone (``python -m tests.edge_agent.sunspec_inverter PORT``) to point an agent at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspec2 import device

BASE = 40000
SUNS = [0x5375, 0x6E53]  # "SunS"
WRITE_CODES = {6, 16, 23}

INITIAL: dict[int, dict[str, Any]] = {
    1: {"Mn": "Example", "Md": "BPT-11", "SN": "SIM-0001", "Vr": "1.0", "DA": 1},
    701: {
        "ACType": 1, "St": 1, "InvSt": 3, "ConnSt": 1, "W": 0, "LNV": 2401, "LLV": 2401, "Hz": 59_987,
        "TotWhInj": 7_890, "TotWhAbs": 123_456, "TmpSnk": 412, "TmpOt": 287,
        "W_SF": 0, "V_SF": -1, "Hz_SF": -3, "TotWh_SF": 0, "Tmp_SF": -1, "A_SF": 0, "PF_SF": -3,
    },
    713: {"WHRtg": 6_000, "WH_SF": 1, "SoC": 645, "Pct_SF": -1},
    704: {"WSetEna": 0, "WSetMod": 1, "WSet": 0, "WSetRvrt": 0, "WSetEnaRvrt": 0, "WSetRvrtTms": 0,
          "WSetRvrtRem": 0, "WSet_SF": 0},
    123: {"Conn": 1, "WMaxLimPct": 100, "WMaxLim_Ena": 0, "OutPFSet": 1000, "OutPFSet_Ena": 0, "VArPct_Ena": 0,
          "WMaxLimPct_SF": 0, "OutPFSet_SF": -3},
}  # fmt: skip


def _words(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


class SunSpecInverter:
    """The device behind a pymodbus server; ``models`` in the order they appear after the "SunS" marker."""

    def __init__(
        self,
        models: tuple[int, ...] = (1, 701, 713, 704, 123),
        *,
        base: int = BASE,
        values: dict[tuple[int, str], Any] | None = None,
    ) -> None:
        self.base = base
        self._output: tuple[Any, bool] | None = None  # (W target, connected) last put into model 701
        self.regs: list[int] = list(SUNS)
        self.at: dict[int, int] = {}  # model id -> address of its ID register
        self.length: dict[int, int] = {}
        for mid in models:
            model = device.Model(model_id=mid, data={"ID": mid, "L": 0, **INITIAL.get(mid, {})})
            length = len(model.get_mb()) // 2 - 2
            model.points["L"].value = length
            self.at[mid], self.length[mid] = base + len(self.regs), length
            self.regs += _words(model.get_mb())
        self.regs += [0xFFFF, 0]
        for (mid, point), value in (values or {}).items():
            self.set(mid, point, value)
        self.fail_reads: set[int] = set()
        self.fail_writes = False
        self.hang = False
        self.writes: list[tuple[int, list[int]]] = []
        self.last_control_write: float | None = None
        self.reverted_at: float | None = None
        self.reverted_after_write: float | None = None  # the last control write the reversion counted from
        self.zero_at: float | None = None
        self.device = SimDevice(
            id=0, simdata=[SimData(base, values=list(self.regs), datatype=DataType.REGISTERS)], action=self._action
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for: tuple[float, int] | None = None
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._hung = asyncio.Event()

    # -- points, through pysunspec2 ------------------------------------------------------------------------------
    def _model(self, mid: int) -> device.Model:
        start = self.at[mid] - self.base
        data = struct.pack(f">{self.length[mid] + 2}H", *self.regs[start : start + self.length[mid] + 2])
        model = device.Model(model_id=mid, model_len=self.length[mid])
        model.set_mb(data)
        return model

    def get(self, mid: int, point: str, *, scaled: bool = False) -> Any:
        p = self._model(mid).points[point]
        return p.cvalue if scaled else p.value

    def set(self, mid: int, point: str, value: Any) -> None:
        model = self._model(mid)
        model.points[point].value = value
        self._store(mid, model)
        self._output = None

    def address(self, mid: int, point: str) -> int:
        return self.at[mid] + int(self._model(mid).points[point].offset)

    # -- behaviour -----------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return all(self.get(mid, pt) == 1 for mid, pt in ((123, "Conn"), (703, "ES")) if mid in self.at)

    @property
    def power_w(self) -> float:
        """Active power, + = injecting (SunSpec's sign)."""
        return float(self.get(701, "W", scaled=True))

    def _store(self, mid: int, model: device.Model) -> None:
        start = self.at[mid] - self.base
        self.regs[start : start + self.length[mid] + 2] = _words(model.get_mb())

    def update(self, now: float | None = None) -> None:
        """Run the reversion timer, then make W follow the enabled setpoint (0 W while disconnected)."""
        now = time.monotonic() if now is None else now
        ctl = self._model(704)
        pts = ctl.points
        tms = pts["WSetRvrtTms"].value or 0
        if self.last_control_write is not None and tms > 0:
            elapsed = now - self.last_control_write
            if elapsed >= tms:  # reversion: the controls fall back on their own
                pts["WSetEna"].value = pts["WSetEnaRvrt"].value or 0
                pts["WSet"].value = pts["WSetRvrt"].value or 0
                pts["WSetRvrtRem"].value = 0
                self._store(704, ctl)
                self.reverted_after_write = self.last_control_write
                self.last_control_write = None
                self.reverted_at = now
            elif pts["WSetRvrtRem"].value != int(tms - elapsed):
                pts["WSetRvrtRem"].value = int(tms - elapsed)
                self._store(704, ctl)
        if self.last_control_write is not None and tms > 0 and self._timer_for != (self.last_control_write, tms):
            if self._timer is not None:  # the timer restarts on every control write: fire exactly when it runs out
                self._timer.cancel()
            delay = self.last_control_write + tms - time.monotonic()
            with contextlib.suppress(RuntimeError):  # no running loop: only the explicit calls advance it
                self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self.update)
                self._timer_for = (self.last_control_write, tms)
        on = self.connected
        target = pts["WSet"].cvalue if on and pts["WSetEna"].value == 1 else 0
        if (target, on) == self._output:
            return
        self._output = (target, on)
        before = self.power_w
        model = self._model(701)
        model.points["W"].cvalue = target
        model.points["ConnSt"].value = int(on)
        self._store(701, model)
        if before != 0 and self.power_w == 0 and self.zero_at is None:
            self.zero_at = now

    async def _action(
        self, function_code: int, start_address: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> ExcCodes | None:
        self.regs = registers  # the server's live register array
        if self.hang:
            await self._hung.wait()  # never set: the request is never answered
        if function_code in WRITE_CODES:
            if self.fail_writes:
                return ExcCodes.DEVICE_FAILURE
            self.writes.append((address, list(set_values or [])))
            lo, hi = self.address(704, "WSetEna"), self.address(704, "WSetRvrtTms") + 1
            if address <= hi and address + count > lo:
                self.last_control_write = time.monotonic()
            asyncio.get_running_loop().call_soon(self.update)  # after the server has stored the values
            return None
        for mid in self.fail_reads:
            lo, hi = self.at[mid], self.at[mid] + self.length[mid] + 1
            if address <= hi and address + count > lo:
                return ExcCodes.DEVICE_FAILURE
        return None  # state is kept current by the writes and the timer task

    async def _tick(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.update()

    # -- server --------------------------------------------------------------------------------------------------
    async def start(self, port: int, *, host: str = "127.0.0.1", period_s: float = 0.1) -> SunSpecInverter:
        self._server = ModbusTcpServer(self.device, address=(host, port))
        await self._server.serve_forever(background=True)
        core: Any = self._server.context
        live: list[int] = core.devices[0].block["x"][2]  # the server's register array (pymodbus SimRuntime)
        live[:] = self.regs
        self.regs = live
        self._task = asyncio.ensure_future(self._tick(period_s))
        return self

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            await self._server.shutdown()


async def _main(port: int) -> None:
    inverter = await SunSpecInverter().start(port, host="0.0.0.0")
    print(f"SunSpec inverter on port {port}: models {sorted(inverter.at)}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 5020))
