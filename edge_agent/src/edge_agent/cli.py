"""``edge-agent`` command line.

edge-agent run --config /etc/edge-agent/agent.toml
EDGE_AGENT_PASSWORD_FILE=F edge-agent simulate --count 10 --csms ws://127.0.0.1:8000/ocpp --id-prefix demo [--ledger F]
edge-agent apply-config --bundle new.toml --signature new.sig --cert signer.pem --config /etc/edge-agent/agent.toml

The simulated stations' password comes from ``$EDGE_AGENT_PASSWORD_FILE`` (its first line) or ``$EDGE_AGENT_PASSWORD``,
never from the command line, where ``ps`` and shell history show it to every user of the machine; so does the
passphrase of encrypted ``--cert-dir`` keys: ``$EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE`` or
``$EDGE_AGENT_TLS_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

from edge_agent import __version__
from edge_agent.config import ConfigError, load_config
from edge_agent.sessionlog import configure_session_log
from edge_agent.tls import key_passphrase_from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="V2G charger-side edge agent (OCPP 2.1/2.0.1)")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("EDGE_AGENT_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one agent from a TOML config (env overrides: EDGE_AGENT_*)")
    run.add_argument("--config", required=False, help="TOML file (default: env and built-in defaults only)")

    sim = sub.add_parser("simulate", help="run N simulated chargers with cars in one process")
    sim.add_argument("--count", type=int, required=True, help="number of agents")
    sim.add_argument("--csms", required=True, help="CSMS base URL, e.g. ws://127.0.0.1:8000/ocpp")
    sim.add_argument("--id-prefix", default="sim", help="station ids are <prefix>-1 ... <prefix>-N")
    # --password is gone (argv is readable by every user of the machine); kept only to say where it went.
    sim.add_argument("--password", default=None, help=argparse.SUPPRESS)
    sim.add_argument("--ca", default="", metavar="FILE", help="wss://: CA bundle the CSMS certificate chains to")
    sim.add_argument(
        "--cert-dir", default=None, metavar="DIR", help="wss:// profile 3: <station id>.pem and .key per station"
    )
    sim.add_argument("--start-index", type=int, default=1)
    sim.add_argument("--tick", type=float, default=0.5, help="control-loop period of the simulated chargers, s")
    sim.add_argument("--meter-interval", type=float, default=1.0, help="meter values while regulating, s")
    sim.add_argument("--idle-meter-interval", type=float, default=1.0, help="meter values otherwise, s")
    sim.add_argument("--freq-source", choices=("replay", "sim"), default="replay")
    sim.add_argument("--ocpp", default="2.1,2.0.1", help="offered OCPP versions, preferred first")
    sim.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    sim.add_argument("--var-dir", default=os.environ.get("VPP_VAR_DIR"), help="outbox and session log location")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--ledger", default=None, metavar="FILE", help="append one JSON line per CALL the CSMS acknowledged"
    )
    sim.add_argument(
        "--message-attempts", type=int, default=3, help="E13: MessageAttempts[TransactionEvent] (then keep retrying)"
    )
    sim.add_argument(
        "--message-attempt-interval", type=float, default=10.0, help="E13: retry interval x attempt number, s"
    )
    apply = sub.add_parser("apply-config", help="install a signed configuration bundle (agent TOML)")
    apply.add_argument("--bundle", required=True, help="the new agent TOML")
    apply.add_argument("--signature", required=True, help="file with the base64 signature over the bundle")
    apply.add_argument("--cert", required=True, help="PEM signing certificate (intermediates may follow)")
    apply.add_argument("--config", default=None, help="current agent TOML: its [firmware] trust_anchor is used")
    apply.add_argument("--trust-anchor", default=None, help="firmware-signing CA PEM (default: from --config)")
    apply.add_argument("--crl-url", default=None, help="the signer's issuer's CRL (default: from --config)")
    apply.add_argument("--target", default=None, help="file to replace (default: --config)")
    return parser


def _cmd_apply_config(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from datetime import UTC, datetime
    from pathlib import Path

    from edge_agent.bundle import apply_config_bundle
    from edge_agent.revocation import CrlSettings, RevocationUnknown
    from edge_agent.signing import CertificateRejected, NoTrustAnchor, SignatureRejected

    target = args.target or args.config
    if target is None:
        print("edge-agent: apply-config needs --target or --config", file=sys.stderr)
        return 2
    try:
        anchor, crl = args.trust_anchor, CrlSettings()
        if args.config:
            current = load_config(args.config)
            anchor, crl = anchor or current.firmware.trust_anchor, current.firmware_crl()
        if args.crl_url:
            crl = replace(crl, url=args.crl_url, ca_file="")
        apply_config_bundle(
            bundle=Path(args.bundle).read_bytes(),
            signature_b64=Path(args.signature).read_text(),
            certificate_pem=Path(args.cert).read_text(),
            trust_anchor=anchor or "",
            target=Path(target),
            now=datetime.now(UTC),
            crl=crl,
        )
    except (CertificateRejected, SignatureRejected, NoTrustAnchor, RevocationUnknown) as exc:
        print(f"edge-agent: configuration bundle refused: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, OSError) as exc:
        print(f"edge-agent: configuration bundle not applied: {exc}", file=sys.stderr)
        return 2
    print(f"edge-agent: configuration bundle installed to {target} (used from the next start)", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.app import run_agent

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run_agent(cfg))
    return 0


def _password_from_env(env: Mapping[str, str]) -> str:
    path = env.get("EDGE_AGENT_PASSWORD_FILE", "")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return env.get("EDGE_AGENT_PASSWORD", "")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edge_agent.simulate import Fleet

    if args.password is not None:
        print("edge-agent: --password is no longer accepted: set EDGE_AGENT_PASSWORD_FILE or EDGE_AGENT_PASSWORD",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        password = _password_from_env(os.environ)
    except OSError as exc:
        print(f"edge-agent: cannot read EDGE_AGENT_PASSWORD_FILE: {exc}", file=sys.stderr)
        return 2
    try:
        key_passphrase = key_passphrase_from_env(os.environ)
    except OSError as exc:
        print(f"edge-agent: cannot read EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE: {exc}", file=sys.stderr)
        return 2
    if args.count < 1:
        print("edge-agent: --count must be >= 1", file=sys.stderr)
        return 2
    if not args.csms.startswith(("ws://", "wss://")):
        print("edge-agent: --csms must be a ws:// or wss:// URL", file=sys.stderr)
        return 2
    if args.var_dir:
        configure_session_log(os.path.join(args.var_dir, f"edge-fleet-{args.id_prefix}.log"))

    async def main() -> None:
        fleet = Fleet(
            args.count,
            args.csms,
            args.id_prefix,
            password,
            start_index=args.start_index,
            tick_s=args.tick,
            meter_interval_s=args.meter_interval,
            idle_meter_interval_s=args.idle_meter_interval,
            freq_source=args.freq_source,
            versions=[v.strip() for v in args.ocpp.split(",") if v.strip()],
            var_dir=os.path.join(args.var_dir, "edge-fleet") if args.var_dir else None,
            seed=args.seed,
            ledger=args.ledger,
            message_attempts=args.message_attempts,
            message_attempt_interval_s=args.message_attempt_interval,
            ca_file=args.ca,
            cert_dir=args.cert_dir,
            key_passphrase=key_passphrase,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, fleet.stop)
        report = await fleet.run(args.duration)
        print(
            f"edge-agent simulate: {report.count} agents, {report.connected} connected at the end, "
            f"{report.ticks} ticks in {report.duration_s:.1f} s, {report.queued} messages still queued",
            file=sys.stderr,
        )

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("ocpp").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "apply-config":
        return _cmd_apply_config(args)
    return _cmd_simulate(args)


if __name__ == "__main__":
    raise SystemExit(main())
