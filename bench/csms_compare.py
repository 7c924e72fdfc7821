"""Run the same OCPP loads against the Django CSMS (Daphne) and the bare ocpp-library server; print one table.

For each load (fixed rate, saturation, idle) each server is started fresh on a free port (so RSS figures start
from a clean process), loaded with ``bench/csms_load.py``'s generator, and stopped. The Django side runs exactly
as ``runvpp`` starts it (``python -m vpp.serve PORT [--workers N]``) on PostgreSQL (``--database-url``,
default ``postgres://postgres@127.0.0.1:5432/vpp_bench``; the database is created and migrated if needed), with
the in-memory channel layer unless ``--redis-url`` is given. The bench stations are provisioned in bulk with
``python manage.py station add <id> ... --org bench --create-org --password-file F`` (a 0600 temporary file).

Persistence is verified, not assumed: the MeterValue rows in PostgreSQL are counted before and after each load
against the Django server, and stored must equal sent (every sampled value of every MeterValues CALL).

Targets (issue 2, on this 2-core machine): 1,000 stations at 1 msg/s with p99 <= 50 ms and every value persisted;
saturation throughput >= 2x the bare server's; 10,000 idle connections in one server process.

Defaults take about two minutes; ``--full`` runs the full-size loads (1,000 x 1 msg/s x 30 s, saturation with
500 and with 3,000 stations x 30 s each, 10,000 idle for 30 s with a Heartbeat every 20 s), about ten minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench._progress import track  # noqa: E402
from bench.csms_load import (  # noqa: E402
    IDLE_TARGET,
    P99_TARGET_MS,
    LoadConfig,
    LoadResult,
    format_table,
    raise_fd_limit,
    station_ids,
)
from bench.csms_load import run_load as run_generator  # noqa: E402

VAR_DIR = Path(os.environ.get("VPP_VAR_DIR", "/tmp/vpp-bench"))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/vpp_bench"
SATURATION_RATIO_TARGET = 2.0
MEMORY_PER_CONNECTION_TARGET_KIB = 50  # issue 17: idle connections held by one process


@dataclass
class Persistence:
    stored: int
    values_sent: int
    values_answered: int

    @property
    def ok(self) -> bool:
        return self.stored == self.values_sent == self.values_answered


# ---------------------------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; last log lines:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {port} within {timeout:g} s; last log lines:\n{_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(name: str, argv: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """Start a server process, wait until it listens, yield its pid, stop it (SIGTERM, then SIGKILL)."""
    log = VAR_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bare_argv(port: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "ocpp_bare_server.py"), "--host", "127.0.0.1", "--port", str(port)]


SERVERS = ("bare", "node", "django")
NODE_PEER = ROOT / "bench" / "ocpp_rpc_server"


def node_argv(port: int) -> list[str]:
    """The Node.js peer: ocpp-rpc's strict RPCServer (``bench/ocpp_rpc_server``), storing nothing."""
    return ["node", str(NODE_PEER / "server.js"), "--host", "127.0.0.1", "--port", str(port)]


def node_ready() -> bool:
    """Whether the Node peer can run: node and npm installed, its pinned packages installed (``npm ci``) once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("node peer skipped: node and npm are not installed (apt-get install nodejs npm)", file=sys.stderr)
        return False
    if not (NODE_PEER / "node_modules" / "ocpp-rpc").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_PEER)], check=False)
        if done.returncode != 0:
            print("node peer skipped: npm ci failed in bench/ocpp_rpc_server", file=sys.stderr)
            return False
    return True


def daphne_argv(port: int, workers: int) -> list[str]:
    """The Django CSMS exactly as ``make run`` serves it (``vpp.serve``: Daphne, the project's options)."""
    return [sys.executable, "-m", "vpp.serve", str(port), "", "0", "--workers", str(workers)]


# ---------------------------------------------------------------------------------------------------------------
# The Django side: database, provisioning, row counts


def django_env(database_url: str, redis_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="vpp.settings",
        DATABASE_URL=database_url,
        VPP_VAR_DIR=str(VAR_DIR),
        DEBUG="0",  # DEBUG keeps every SQL query in memory: never benchmark with it
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def ensure_database(database_url: str) -> None:
    """Create the PostgreSQL database named in the URL if it does not exist (connects to the `postgres` db)."""
    import psycopg

    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        return
    name = parts.path.lstrip("/")
    admin_url = urlunsplit((parts.scheme.replace("postgres", "postgresql", 1) if parts.scheme == "postgres"
                            else parts.scheme, parts.netloc, "/postgres", parts.query, ""))  # fmt: skip
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        cmd = " ".join(shlex.quote(a) for a in args[:4])
        raise RuntimeError(
            f"manage.py {cmd} ... failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def provision(env: dict[str, str], ids: Sequence[str], password: str, chunk: int = 5000) -> None:
    """Bulk-provision the bench stations (the same password for all: they are throwaway load-test identities), owned
    by organisation ``bench``. The password goes through a 0600 file, never the argument list."""
    with tempfile.TemporaryDirectory() as folder:
        password_file = Path(folder) / "station-password"
        password_file.touch(mode=0o600)
        password_file.write_text(password)
        for start in range(0, len(ids), chunk):
            batch = ids[start : start + chunk]
            manage(
                env, "station", "add", *batch, "--org", "bench", "--create-org", "--password-file", str(password_file)
            )


_COUNT_SNIPPET = (
    "from django.apps import apps; m = apps.get_model({label!r}); "
    "print('ROWS', m.objects.filter(**{{{field!r}: {prefix!r}}}).count() if {field!r} else m.objects.count())"
)


def count_rows(env: dict[str, str], label: str, station_field: str, prefix: str) -> int:
    out = manage(env, "shell", "-c", _COUNT_SNIPPET.format(label=label, field=station_field, prefix=prefix))
    match = re.search(r"ROWS (\d+)", out)
    if not match:
        raise RuntimeError(f"could not count {label}: {out!r}")
    return int(match.group(1))


# ---------------------------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Plan:
    name: str  # the mode, and the size for a saturation load ("saturation 3000"): one run per plan and server
    load: LoadConfig


def plans(args: argparse.Namespace, url: str) -> list[Plan]:
    base = LoadConfig(url=url, processes=args.processes, ocpp_version=args.ocpp_version, password=args.password,
                      prefix=args.prefix, values=args.values)  # fmt: skip
    out = []
    if args.stations:
        out.append(Plan("fixed", replace(base, mode="fixed", stations=args.stations, rate=args.rate,
                                         duration=args.duration)))  # fmt: skip
    for n in args.saturation_stations:
        if n:
            out.append(Plan(f"saturation {n}", replace(base, mode="saturation", stations=n,
                                                       duration=args.saturation_duration)))  # fmt: skip
    if args.idle:
        out.append(Plan("idle", replace(base, mode="idle", stations=args.idle, duration=args.idle_duration,
                                        heartbeat=args.idle_heartbeat)))  # fmt: skip
    return out


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == math.inf:
        return "not all booted"
    return f"{value:{spec}}{unit}"


def _ratio(ours: float | None, bare: float | None) -> str:
    if not ours or not bare:
        return "-"
    return f"{ours / bare:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


Row = tuple[str, str, str, str, str, str, str]  # figure, bare, node, django, ratio, target, verdict
Trio = tuple[LoadResult | None, LoadResult | None, LoadResult | None]  # bare, node, django


def _row(
    label: str,
    figure: str,
    results: Trio,
    attr: Callable[[LoadResult], float | None],
    spec: str,
    unit: str = "",
    target: str = "",
    ok: Callable[[float], bool] | None = None,
    ratio: bool = False,
) -> Row:
    """One figure for both servers; the verdict judges the Django CSMS against the target."""
    bare, node, ours = (attr(r) if r is not None else None for r in results)
    verdict = _verdict(ok(ours) if ok is not None and ours is not None else None)
    return (f"{label}: {figure}", _fmt(bare, spec, unit), _fmt(node, spec, unit), _fmt(ours, spec, unit),
            _ratio(ours, bare) if ratio else "", target, verdict)  # fmt: skip


def compare_rows(results: dict[tuple[str, str], LoadResult], persisted: dict[str, Persistence]) -> list[Row]:
    """(figure, bare, django, ratio, target, verdict-for-django) rows, one block per plan in the order run; a run
    that did not happen shows as '-'."""
    rows: list[Row] = []
    for name in dict.fromkeys(name for name, _ in results):
        pair = (results.get((name, "bare")), results.get((name, "node")), results.get((name, "django")))
        some = pair[2] or pair[0] or pair[1]
        assert some is not None
        rows += _mode_rows(some.config.mode, pair, persisted.get(name))
    return rows


def _mode_rows(mode: str, pair: Trio, p: Persistence | None) -> list[Row]:
    rows: list[Row] = []
    some = pair[2] or pair[0] or pair[1]
    assert some is not None
    n, rate = some.config.stations, some.config.rate
    label = {"fixed": f"fixed {n} x {rate:g}/s", "saturation": f"saturation {n}", "idle": f"idle {n}"}[mode]
    rows.append(_row(label, "stations booted", pair, lambda r: r.booted, "d", "", f"{n}", lambda v: v == n))
    # 1,000 stations within 10 s is a rate; below 1,000 the figure is shown, not judged.
    reconnect_target = 10.0 * n / 1000
    judged = n >= 1000
    # A partial wave's last boot proves nothing: its reconnect time is not shown, and judged a miss.
    rows.append(_row(label, "reconnect (all booted)", pair,
                     lambda r: r.reconnect_s if r.booted == r.config.stations else math.inf, ".2f", " s",
                     f"<= {reconnect_target:g} s" if judged else "",
                     (lambda v: v <= reconnect_target) if judged else None))  # fmt: skip
    if mode == "idle":
        rows.append(_row(label, "still open after hold", pair, lambda r: r.open_at_end, "d", "",
                         f"{n} ({IDLE_TARGET:,} full)", lambda v: v == n))  # fmt: skip
        if some.heartbeat_s:
            rows.append(_row(label, f"heartbeats sent (every {some.heartbeat_s:g} s)", pair, lambda r: r.sent, "d"))
            rows.append(_row(label, "heartbeats missed or unanswered", pair,
                             lambda r: r.missed + r.sent - r.answered, "d", "", "0", lambda v: v == 0))  # fmt: skip
            rows.append(_row(label, "heartbeat latency p99", pair, lambda r: r.p99_ms, ".1f", " ms"))
        rows.append(_row(label, "server CPU at rest", pair, lambda r: r.server_cpu_pct, ".1f", " %"))
        rows.append(_row(label, "server RSS connected", pair, lambda r: (r.server_rss_connected or 0) / 1e6,
                         ".1f", " MB"))  # fmt: skip
    else:
        offered = n * rate if mode == "fixed" else None
        rows.append(_row(label, "throughput", pair, lambda r: r.throughput, ",.0f", " msg/s",
                         f">= {offered:,.0f}" if offered else f">= {SATURATION_RATIO_TARGET:g}x bare",
                         (lambda v: v >= 0.98 * offered) if offered else None, ratio=True))  # fmt: skip
        rows.append(_row(label, "latency p50", pair, lambda r: r.p50_ms, ".1f", " ms"))
        rows.append(_row(label, "latency p99", pair, lambda r: r.p99_ms, ".1f", " ms",
                         f"<= {P99_TARGET_MS:g} ms" if mode == "fixed" else "",
                         (lambda v: v <= P99_TARGET_MS) if mode == "fixed" else None))  # fmt: skip
        rows.append(_row(label, "latency max", pair, lambda r: r.max_ms, ".1f", " ms"))
        rows.append(_row(label, "server CPU", pair, lambda r: r.server_cpu_pct, ".0f", " %"))
        rows.append(_row(label, "server CPU per CALL", pair, lambda r: r.server_cpu_us_per_msg, ".0f", " us",
                         ratio=True))  # fmt: skip
    rows.append(_row(label, "errors", pair, lambda r: sum(r.errors.values()), "d", "", "0", lambda v: v == 0))
    rows.append(_row(label, "memory per connection", pair, lambda r: (r.mem_per_conn or 0) / 1024, ".1f", " KiB",
                     f"<= {MEMORY_PER_CONNECTION_TARGET_KIB} KiB" if mode == "idle" else "",
                     (lambda v: v <= MEMORY_PER_CONNECTION_TARGET_KIB) if mode == "idle" else None))  # fmt: skip
    bare, _, ours = pair
    if mode == "saturation" and bare and ours:
        ratio = ours.throughput / bare.throughput if bare.throughput else 0.0
        rows.append((f"{label}: ours / bare throughput", "", "", "", f"{ratio:.2f}x",
                     f">= {SATURATION_RATIO_TARGET:g}x", _verdict(ratio >= SATURATION_RATIO_TARGET)))  # fmt: skip
    if p is not None:
        rows.append((f"{label}: values stored / sent / acked", "(stores nothing)", "(stores nothing)",
                     f"{p.stored} / {p.values_sent} / {p.values_answered}", "", "all equal",
                     _verdict(p.ok)))  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> tuple[dict[tuple[str, str], LoadResult], dict[str, Persistence], list[str]]:
    raise_fd_limit()  # inherited by both servers: 10,000 idle sockets need 10,000 fds
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], LoadResult] = {}
    persisted: dict[str, Persistence] = {}
    failures: list[str] = []
    servers = [s for s in SERVERS if s in args.servers]
    if "node" in servers and not node_ready():
        servers.remove("node")
    env = django_env(args.database_url, args.redis_url)
    if "django" in servers:
        needed = max(args.stations, *args.saturation_stations, args.idle)
        print(f"preparing Django: database {args.database_url}, migrate, provision {needed} stations", file=sys.stderr)
        ensure_database(args.database_url)
        manage(env, "migrate", "--noinput")
        provision(env, station_ids(args.prefix, needed), args.password)
    runs = [(plan, server) for plan in plans(args, "ws://127.0.0.1:0/ocpp") for server in servers]
    for plan, server in track(runs, "csms compare: runs"):
        if True:  # one run per (plan, server), as before
            port = free_port()
            load = replace(plan.load, url=f"ws://127.0.0.1:{port}/ocpp")
            argv = {"bare": bare_argv, "node": node_argv}.get(server, lambda p: daphne_argv(p, args.workers))(port)
            server_env = env if server == "django" else dict(os.environ)
            counting = server == "django" and plan.name != "idle" and args.meter_model
            try:
                with running(f"{server}-{plan.name}", argv, server_env, port) as pid:
                    before = count_rows(env, args.meter_model, args.meter_station_field, args.prefix) if counting else 0
                    print(f"--- {server} / {plan.name} (pid {pid})", file=sys.stderr)
                    res = run_generator(replace(load, server_pid=pid))
                    results[(plan.name, server)] = res
                    if counting:
                        stored = count_rows(env, args.meter_model, args.meter_station_field, args.prefix) - before
                        persisted[plan.name] = Persistence(stored, res.values_sent, res.values_answered)
            except Exception as exc:  # one broken run must not hide the others' figures
                failures.append(f"{server} / {plan.name}: {type(exc).__name__}: {exc}")
                print(f"!!! {failures[-1]}", file=sys.stderr)
            time.sleep(1.0)  # let the kernel reap the closed sockets before the next server starts
    return results, persisted, failures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true",
                   help="full-size loads: 1,000 fixed, 500 and 3,000 saturation, 10,000 idle")  # fmt: skip
    p.add_argument("--stations", type=int, default=200, help="fixed-rate stations (0 skips the fixed load)")
    p.add_argument("--rate", type=float, default=1.0, help="fixed-rate MeterValues/s per station")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--saturation-stations", type=int, nargs="+", default=[100],
                   help="one saturation load per size (0 skips the saturation load)")  # fmt: skip
    p.add_argument("--saturation-duration", type=float, default=10.0)
    p.add_argument("--idle", type=int, default=1000, help="idle connections (0 skips the idle load)")
    p.add_argument("--idle-duration", type=float, default=5.0)
    p.add_argument(
        "--idle-heartbeat",
        type=float,
        default=None,
        help="s between an idle station's Heartbeats (default: the boot answer's interval; 0: silent)",
    )
    p.add_argument("--processes", type=int, default=2, help="load-generator processes")
    p.add_argument("--ocpp", dest="ocpp_version", choices=("2.0.1", "2.1"), default="2.0.1")
    p.add_argument("--values", type=int, default=3, help="sampled values per MeterValues (1-3)")
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
                   help="node: the Node.js peer, run when node and npm are installed")  # fmt: skip
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"), help="e.g. redis://127.0.0.1:6379/4")
    p.add_argument("--workers", type=int, default=1, help="Daphne worker processes on one socket (needs --redis-url)")
    p.add_argument("--prefix", default="bench-")
    p.add_argument("--password", default=os.environ.get("BENCH_STATION_PASSWORD", LoadConfig.password))
    p.add_argument("--meter-model", default="chargers.MeterValue", help="app_label.Model holding one sampled value")
    p.add_argument("--meter-station-field", default="station__station_id__startswith",
                   help="lookup restricting the count to the bench stations ('' counts every row)")  # fmt: skip
    p.add_argument("--json", dest="json_path", help="also write all figures as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.full:
        args.stations, args.duration = max(args.stations, 1000), max(args.duration, 30.0)
        args.saturation_stations = sorted({max(n, 500) for n in args.saturation_stations} | {3000})
        args.saturation_duration = 30.0
        args.idle, args.idle_duration = max(args.idle, IDLE_TARGET), 30.0
        if args.idle_heartbeat is None:  # every station heartbeats once or twice within the hold (~500/s)
            args.idle_heartbeat = 20.0
    results, persisted, failures = run(args)
    if args.workers > 1 and not args.redis_url:
        raise SystemExit("--workers > 1 needs --redis-url (workers reach each other's stations over Redis)")
    title = (f"CSMS comparison: Django CSMS ({args.workers} Daphne process(es), "
             f"{'Redis' if args.redis_url else 'in-memory'} layer, "
             f"{urlsplit(args.database_url).scheme}) vs the bare ocpp-library server and Node ocpp-rpc; "
             f"OCPP {args.ocpp_version}, "
             f"{args.processes} generator processes, {os.cpu_count()} CPUs shared")  # fmt: skip
    rows = compare_rows(results, persisted)
    header = ("figure", "bare ocpp", "node ocpp-rpc", "django csms", "ratio", "target", "django")
    print(format_table(title, rows, header))
    for failure in failures:
        print(f"RUN FAILED: {failure}")
    if args.json_path:
        data: dict[str, Any] = {f"{mode}/{server}": r.to_dict() for (mode, server), r in results.items()}
        data["persistence"] = {m: vars(p) for m, p in persisted.items()}
        Path(args.json_path).write_text(json.dumps(data, indent=1, default=list))
    return 0 if not failures and all(r[5] != "MISS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
