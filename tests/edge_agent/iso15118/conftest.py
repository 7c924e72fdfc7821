"""The virtual link between the charger and the car, and the car itself (Josev's EVCC in its own process).

The car lives in a network namespace the test creates, on one end of a veth pair; the agent's SECC listens on the
other end, in the test's own namespace: IPv6 link-local, SDP multicast and the V2G TCP session cross the pair as they
would cross a charging cable's PLC modems. This needs root (``ip netns``), Java (Josev's EXI codec) and the
``iso15118`` package: ``make test`` runs these tests in their own venv (.venv-iso15118) where CI installs all three;
anywhere else they skip and say which is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if importlib.util.find_spec("iso15118") is None:
        return "iso15118 (Josev) is not installed in this environment: `make test` runs these tests in .venv-iso15118"
    if shutil.which("java") is None:
        return "no Java runtime for Josev's EXI codec (apt-get install default-jre-headless)"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "creating the veth pair and network namespace needs root and iproute2"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Link:
    secc_iface: str  # in the test's namespace
    ev_iface: str  # in ``namespace``
    namespace: str


def _link_local_ready(iface: str, namespace: str | None = None) -> bool:
    cmd = ["ip", "-6", "addr", "show", "dev", iface, "scope", "link"]
    if namespace:
        cmd = ["ip", "netns", "exec", namespace, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    return "inet6 fe80" in out and "tentative" not in out


def make_link() -> Link:
    """A veth pair: one end here, the other in a new network namespace; returns once both have link-local IPv6."""
    tag = uuid.uuid4().hex[:6]
    link = Link(secc_iface=f"v2gs{tag}", ev_iface=f"v2ge{tag}", namespace=f"v2g-ev-{tag}")
    _ip("netns", "add", link.namespace)
    try:
        _ip("link", "add", link.secc_iface, "type", "veth", "peer", "name", link.ev_iface)
        _ip("link", "set", link.ev_iface, "netns", link.namespace)
        _ip("link", "set", link.secc_iface, "up")
        _ip("netns", "exec", link.namespace, "ip", "link", "set", "lo", "up")
        _ip("netns", "exec", link.namespace, "ip", "link", "set", link.ev_iface, "up")
        for _ in range(100):  # duplicate address detection: about a second
            if _link_local_ready(link.secc_iface) and _link_local_ready(link.ev_iface, link.namespace):
                break
            subprocess.run(["sleep", "0.1"], check=False)
    except BaseException:
        remove_link(link)
        raise
    return link


def remove_link(link: Link) -> None:
    with contextlib.suppress(subprocess.SubprocessError):
        _ip("link", "del", link.secc_iface)
    with contextlib.suppress(subprocess.SubprocessError):
        _ip("netns", "del", link.namespace)


@pytest.fixture
def v2g_link() -> Iterator[Link]:
    link = make_link()
    try:
        yield link
    finally:
        remove_link(link)


@dataclass
class Car:
    """Josev's EVCC running in the car's namespace; ``events`` are its JSON lines as they come."""

    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    async def wait_for(self, predicate: Callable[[], Any], within_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + within_s
        while not predicate():
            if asyncio.get_running_loop().time() > deadline or self.proc.returncode is not None:
                raise TimeoutError(f"condition not met; the car's last events: {self.events[-5:]}")
            await asyncio.sleep(0.05)

    async def say(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()


async def start_car_process(
    link: Link, *, soc: float = 0.6, departure_s: float = 8 * 3600.0, pki: Path | None = None
) -> Car:
    """Josev's EVCC (tests/edge_agent/iso15118/ev.py) in the car's namespace; it looks for a charger at once.
    ``pki``: the car's TLS files (tests/edge_agent/iso15118/pki.py ``ev_pki_dir``); none: plain TCP."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", link.namespace, sys.executable, "-m", "tests.edge_agent.iso15118.ev",
        "--iface", link.ev_iface, "--soc", str(soc), "--departure-s", str(departure_s),
        *(["--pki", str(pki)] if pki else []),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "edge_agent" / "src")])},
    )  # fmt: skip
    car = Car(proc)
    car.reader = asyncio.ensure_future(car._read())
    return car


async def stop_car(car: Car) -> None:
    if car.proc.returncode is None:
        car.proc.kill()
    await car.proc.wait()
    if car.reader is not None:
        await asyncio.gather(car.reader, return_exceptions=True)


@pytest.fixture
async def start_car(v2g_link: Link) -> AsyncIterator[Callable[..., Any]]:
    cars: list[Car] = []

    async def _start(**kwargs: Any) -> Car:
        cars.append(await start_car_process(v2g_link, **kwargs))
        return cars[-1]

    yield _start
    for car in cars:
        await stop_car(car)


@dataclass(frozen=True)
class Tls:
    """Both sides' TLS files: the charger's (the project's PKI) for ``run_secc``, the car's for ``start_car``."""

    secc: Any  # edge_agent.secc.pki.SeccTlsFiles
    secc_pki_dir: Path  # where the agent writes Josev's copy
    ev_pki_dir: Path
    oem: Any  # tests.edge_agent.iso15118.pki.OemPki
    v2g_root: Path


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """The charger's SECC certificate from the project's V2G PKI (``manage.py pki``), the car's from an OEM's."""
    from edge_agent.secc.pki import SeccTlsFiles
    from tests.edge_agent.iso15118 import pki

    if (reason := pki.csms_missing()) is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("v2g-pki")
    project = pki.project_pki(base / "csms")
    oem = pki.oem_pki()
    secc = SeccTlsFiles(
        cert_file=project.secc_chain,
        key_file=project.secc_key,
        ev_ca_file=pki.write_pem(base / "oem-roots.pem", oem.root.cert),
        key_passphrase=project.key_passphrase,
    )
    ev_dir = pki.ev_pki_dir(base / "ev", v2g_root=project.v2g_root, oem=oem)
    return Tls(secc=secc, secc_pki_dir=base / "agent-var" / "iso15118-pki", ev_pki_dir=ev_dir, oem=oem,
               v2g_root=project.v2g_root)  # fmt: skip
