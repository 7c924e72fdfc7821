"""Agent settings: a TOML file, overridden by environment variables, with safe defaults.

Every setting ``[section] key`` can be overridden by ``EDGE_AGENT_<SECTION>_<KEY>`` (top-level keys by
``EDGE_AGENT_<KEY>``), e.g. ``EDGE_AGENT_CSMS_URL``, ``EDGE_AGENT_CONTROL_FLOOR_SOC``. The station password is
never read from the TOML file: it comes from ``EDGE_AGENT_PASSWORD`` (or the file named by
``EDGE_AGENT_PASSWORD_FILE``, e.g. a systemd credential). Nor is the client key's passphrase: it comes from the file
``[tls] key_passphrase_file`` names (or ``EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE``) or ``EDGE_AGENT_TLS_KEY_PASSPHRASE``;
likewise the SECC key's (``[iso15118] key_passphrase_file``, ``EDGE_AGENT_ISO15118_KEY_PASSPHRASE``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import grid_code
from edge_agent.failsafe import FAILSAFE_DEADLINE_S

if TYPE_CHECKING:
    from edge_agent.revocation import CrlSettings

ENV_PREFIX = "EDGE_AGENT_"
SECRETS = ("password", "key_passphrase")  # from the environment only, never from the TOML file


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass
class OcppSettings:
    versions: str = "2.1,2.0.1"  # offered subprotocols, preferred first
    meter_interval_s: float = 1.0  # TransactionEvent meter values while regulating
    idle_meter_interval_s: float = 60.0  # ... while only charging or idle
    heartbeat_s: float = 300.0  # until BootNotification says otherwise
    call_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    ping_interval_s: float = 20.0  # WebSocket keep-alive (0 = off)
    validate_messages: bool = True  # JSON-schema validation of every message (the ocpp library's)
    # E13 retries of buffered messages (until the CSMS sets OCPPCommCtrlr.MessageAttempt*[TransactionEvent]):
    # wait interval x number of failed transmissions, at most max; past `message_attempts` keep retrying at that pace.
    message_attempts: int = 3
    message_attempt_interval_s: float = 10.0
    message_attempt_interval_max_s: float = 60.0


@dataclass
class ControlSettings:
    tick_s: float = 0.1  # local loop period (sample -> command); 100 ms keeps it well under 200 ms
    nominal_hz: float = 60.0
    deadband_hz: float = 0.036
    droop_pct: float = 5.0
    max_charge_w: float = 11_000.0
    max_discharge_w: float = 11_000.0
    ramp_w_per_s: float = 22_000.0
    floor_soc: float = 0.20
    filter_samples: int = 5
    lookahead_s: float = 0.0
    default_mode: str = "ChargingOnly"  # without any charging profile
    islanding_clearing_s: float = 1.0  # <= 2 s (IEEE 1547)
    enter_service_delay_s: float = 300.0
    enter_service_ramp_s: float = 300.0


@dataclass
class ProtectionSettings:
    """IEEE 1547 abnormal operating performance category, and the agent's own passive islanding detection.

    The category bounds every protection setting the CSMS may send (SetDERControl). ROCOF and vector-shift
    thresholds of 0 mean the category's defaults (``edge_agent.grid_code``: Cat I 1.0, II 2.5, III 3.5 Hz/s over
    0.5 s; 65 degrees single-phase, 25 degrees three-phase); others must exceed IEEE 1547's ride-through.
    """

    category: str = "II"  # I | II | III
    phases: int = 1  # 1: single-phase DER (rides through 60 degree phase jumps), 3: multi-phase (20 degrees)
    rocof_hz_per_s: float = 0.0
    rocof_window_s: float = 0.5
    vector_shift_deg: float = 0.0

    def resolved(self) -> tuple[float, float, float]:
        """(ROCOF threshold, window, vector-shift threshold) with the category's defaults filled in."""
        rocof = self.rocof_hz_per_s or grid_code.default_rocof(self.category)
        shift = self.vector_shift_deg or grid_code.default_vector_shift(self.phases)
        return rocof, self.rocof_window_s, shift


@dataclass
class FailsafeSettings:
    link_loss_timeout_s: float = 2.0
    mode: str = "ChargingOnly"  # until the CSMS sets EdgeAgentCtrlr.FailSafeMode
    charge_limit_w: float = 7_400.0


@dataclass
class HardwareSettings:
    driver: str = "sim"  # sim | modbus | can
    modbus_host: str = "127.0.0.1"
    modbus_port: int = 502
    modbus_unit_id: int = 1
    can_interface: str = "socketcan"
    can_channel: str = "can0"
    can_dbc: str = ""  # the charger model's DBC file (required with driver = "can")
    # The device's own revert timer: with no fresh setpoint for this long it goes to 0 W by itself (agent dead or
    # hung). SunSpec 704 WSetRvrtTms (whole seconds), CAN CommandTimeout. At most the 2 s fail-safe deadline.
    revert_s: float = 2.0
    io_timeout_s: float = 0.5  # a read or write taking longer is a hardware fault (0 W, de-energise, Faulted)
    fault_recover_s: float = 5.0  # a hardware fault clears after this long with every read and write working
    nominal_voltage_v: float = 240.0
    # simulator (default driver): the car plugged in at start
    sim_capacity_wh: float = 60_000.0
    sim_initial_soc: float = 0.5
    sim_target_soc: float = 0.8
    sim_departure_h: float = 8.0
    sim_ambient_c: float = 25.0


@dataclass
class SiteMeterSettings:
    """The depot's main meter, read by this agent and reported as MeterValues for EVSE 0 (peak shaving)."""

    driver: str = ""  # "" (none) | sunspec (Modbus TCP, SunSpec meter model 201-204)
    host: str = ""
    port: int = 502
    unit_id: int = 1
    interval_s: float = 5.0  # one reading (one MeterValues) every this many seconds
    import_positive: bool = True  # SunSpec counts W + for import; false for a meter wired the other way round


@dataclass
class FrequencySettings:
    source: str = "replay"  # sim | replay | meter
    replay_path: str = ""  # empty: the packaged one-day 1-s recording
    replay_offset_s: float = 0.0


@dataclass
class FirmwareSettings:
    # PEM file with the firmware-signing CA certificate(s): UpdateFirmware packages and configuration bundles must
    # be signed by a certificate issued under one of them. Empty: every signed update is refused.
    trust_anchor: str = ""
    # The signing certificate's issuer's CRL, checked before anything is installed (edge_agent.revocation). Empty:
    # the CSMS's own, csms_url's host + /pki/crl (https for wss://, trusting [tls] ca_file). No fresh CRL (none
    # fetched or cached, or past its nextUpdate + crl_grace_s): nothing is installed.
    crl_url: str = ""
    crl_cache_dir: str = ""  # the last good CRL per issuer; empty: <var_dir>/crl
    crl_grace_s: float = 86_400.0


@dataclass
class TlsSettings:
    """wss:// only. Paths, not secrets (the key file is the station's own, 0600, like the password file)."""

    ca_file: str = ""  # CA bundle the CSMS certificate must chain to; empty: the system trust store
    cert_file: str = ""  # security profile 3: this station's certificate chain (PEM), CN = station_id
    key_file: str = ""  # ... and its private key (PEM; encrypted PKCS#8 from `manage.py pki station-cert`)
    key_passphrase_file: str = ""  # the encrypted key's passphrase, first line (a path, not the secret)
    key_passphrase: str = field(default="", repr=False)  # env EDGE_AGENT_TLS_KEY_PASSPHRASE only, never the TOML


@dataclass
class Iso15118Settings:
    """ISO 15118-20 towards the car (edge_agent.secc; needs ``pip install ./edge_agent[iso15118]`` and Java)."""

    interface: str = ""  # the network interface to the car (PLC modem); empty: no ISO 15118, the simulated car
    # TLS 1.3 towards the car (all three, or none for plain TCP): the SECC chain and key from `manage.py pki
    # secc-cert`, and the OEM root(s) the cars' vehicle certificates must chain to.
    cert_file: str = ""
    key_file: str = ""
    ev_ca_file: str = ""
    key_passphrase_file: str = ""  # the encrypted key's passphrase, first line (a path, not the secret)
    key_passphrase: str = field(default="", repr=False)  # env EDGE_AGENT_ISO15118_KEY_PASSPHRASE only


@dataclass
class AgentConfig:
    station_id: str = ""
    csms_url: str = ""  # e.g. wss://csms.example.com/ocpp (the station id is appended)
    password: str = field(default="", repr=False)
    var_dir: str = "/var/lib/edge-agent"
    session_log: str = ""  # empty: <var_dir>/session.log
    vendor: str = "OpenV2G"
    model: str = "EdgeAgent-11kW-BPT"
    ocpp: OcppSettings = field(default_factory=OcppSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)
    failsafe: FailsafeSettings = field(default_factory=FailsafeSettings)
    hardware: HardwareSettings = field(default_factory=HardwareSettings)
    frequency: FrequencySettings = field(default_factory=FrequencySettings)
    site_meter: SiteMeterSettings = field(default_factory=SiteMeterSettings)
    firmware: FirmwareSettings = field(default_factory=FirmwareSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    iso15118: Iso15118Settings = field(default_factory=Iso15118Settings)

    @property
    def versions(self) -> list[str]:
        return [v.strip() for v in self.ocpp.versions.split(",") if v.strip()]

    def firmware_crl(self) -> CrlSettings:
        """Where signed packages' revocation is checked: ``[firmware] crl_*``, by default the CSMS's /pki/crl."""
        from edge_agent.revocation import CrlSettings, default_crl_url

        own = not self.firmware.crl_url  # the CSMS's: its server certificate chains to [tls] ca_file
        return CrlSettings(
            url=self.firmware.crl_url or default_crl_url(self.csms_url),
            cache_dir=self.firmware.crl_cache_dir or str(Path(self.var_dir) / "crl"),
            grace_s=self.firmware.crl_grace_s,
            ca_file=self.tls.ca_file if own else "",
        )

    def validate(self) -> AgentConfig:
        if not self.station_id:
            raise ConfigError("station_id is required")
        if not self.csms_url.startswith(("ws://", "wss://")):
            raise ConfigError("csms_url must be a ws:// or wss:// URL")
        if bool(self.tls.cert_file) != bool(self.tls.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together")
        if any((self.tls.ca_file, self.tls.cert_file)) and not self.csms_url.startswith("wss://"):
            raise ConfigError("tls.* settings need a wss:// csms_url")
        iso = self.iso15118
        if len({bool(iso.cert_file), bool(iso.key_file), bool(iso.ev_ca_file)}) > 1:
            raise ConfigError("iso15118.cert_file, key_file and ev_ca_file go together (TLS towards the car)")
        if iso.cert_file and not iso.interface:
            raise ConfigError("iso15118.cert_file needs iso15118.interface")
        if not set(self.versions) <= {"2.1", "2.0.1"} or not self.versions:
            raise ConfigError("ocpp.versions must list 2.1 and/or 2.0.1")
        if not 0 < self.failsafe.link_loss_timeout_s <= 2.0:
            raise ConfigError("failsafe.link_loss_timeout_s must be in (0, 2]")
        if self.failsafe.mode not in ("ChargingOnly", "Idle"):
            raise ConfigError("failsafe.mode must be ChargingOnly or Idle")
        if not 0.0 <= self.control.floor_soc < 1.0:
            raise ConfigError("control.floor_soc must be in [0, 1)")
        if not 0 < self.control.tick_s <= 0.2:
            raise ConfigError("control.tick_s must be in (0, 0.2] s (the fast loop is sub-200 ms)")
        self._validate_protection()
        if self.hardware.driver not in ("sim", "modbus", "can"):
            raise ConfigError("hardware.driver must be sim, modbus or can")
        if self.hardware.driver == "can" and not self.hardware.can_dbc:
            raise ConfigError("hardware.can_dbc: the charger model's DBC file is required with the can driver")
        if not 0 < self.hardware.revert_s <= FAILSAFE_DEADLINE_S:
            raise ConfigError(f"hardware.revert_s must be in (0, {FAILSAFE_DEADLINE_S:g}] s (the fail-safe deadline)")
        if not 0 < self.hardware.io_timeout_s < FAILSAFE_DEADLINE_S / 2:
            raise ConfigError(f"hardware.io_timeout_s must be in (0, {FAILSAFE_DEADLINE_S / 2:g}) s")
        if self.hardware.fault_recover_s < 0:
            raise ConfigError("hardware.fault_recover_s must be >= 0")
        if self.firmware.crl_url and not self.firmware.crl_url.startswith(("http://", "https://")):
            raise ConfigError("firmware.crl_url must be an http:// or https:// URL")
        if self.firmware.crl_grace_s < 0:
            raise ConfigError("firmware.crl_grace_s must be >= 0")
        if self.site_meter.driver not in ("", "sunspec"):
            raise ConfigError('site_meter.driver must be "" (none) or sunspec')
        if self.site_meter.driver and not self.site_meter.host:
            raise ConfigError("site_meter.host: the meter's address is required with a site_meter.driver")
        if not 1.0 <= self.site_meter.interval_s <= 60.0:
            raise ConfigError("site_meter.interval_s must be in [1, 60] s (the CSMS holds a reading at most 60 s)")
        if self.frequency.source not in ("sim", "replay", "meter"):
            raise ConfigError("frequency.source must be sim, replay or meter")
        if self.ocpp.message_attempts < 1:
            raise ConfigError("ocpp.message_attempts must be >= 1")
        if not 0 < self.ocpp.message_attempt_interval_s <= self.ocpp.message_attempt_interval_max_s:
            raise ConfigError("ocpp.message_attempt_interval_s must be > 0 and <= ocpp.message_attempt_interval_max_s")
        return self

    def _validate_protection(self) -> None:
        p = self.protection
        if p.category not in grid_code.CATEGORIES:
            raise ConfigError("protection.category must be I, II or III")
        if p.phases not in (1, 3):
            raise ConfigError("protection.phases must be 1 or 3")
        rocof, window, shift = p.resolved()
        try:
            grid_code.check_islanding(
                p.category, p.phases, rocof_hz_per_s=rocof, rocof_window_s=window, vector_shift_deg=shift
            )
        except grid_code.SettingRefused as exc:
            raise ConfigError(f"protection: {exc.info}") from exc


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {raw!r} as {type(default).__name__}") from exc


def _fill(obj: Any, data: Mapping[str, Any], env: Mapping[str, str], path: str) -> None:
    known = {f.name for f in dataclasses.fields(obj)}
    for key in data:
        if key not in known or key in SECRETS:
            raise ConfigError(f"unknown setting {path}{key}" if key not in SECRETS else f"{key} belongs in env")
    for f in dataclasses.fields(obj):
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            section = data.get(f.name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"[{path}{f.name}] must be a table")
            _fill(current, section, env, f"{path}{f.name}.")
            continue
        name = f"{path}{f.name}"
        env_key = ENV_PREFIX + name.replace(".", "_").upper()
        if env_key in env:
            setattr(obj, f.name, _coerce(name, env[env_key], current))
        elif f.name in data:
            setattr(obj, f.name, _coerce(name, data[f.name], current))


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (TOML; None = defaults only), apply environment overrides, validate."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    cfg = AgentConfig()
    _fill(cfg, data, env, "")
    if env.get(ENV_PREFIX + "PASSWORD_FILE"):
        cfg.password = Path(env[ENV_PREFIX + "PASSWORD_FILE"]).read_text().strip()
    if env.get(ENV_PREFIX + "PASSWORD"):
        cfg.password = env[ENV_PREFIX + "PASSWORD"]
    for section, keys in (("tls", cfg.tls), ("iso15118", cfg.iso15118)):
        if keys.key_passphrase_file and not keys.key_passphrase:  # the variable, when set, wins (as the password)
            try:
                keys.key_passphrase = Path(keys.key_passphrase_file).read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(
                    f"{section}.key_passphrase_file: cannot read a passphrase from {keys.key_passphrase_file}"
                ) from exc
    return cfg.validate()
