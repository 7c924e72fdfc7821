"""Periodic CSMS work."""

from __future__ import annotations

from celery import shared_task

from chargers.services.certificates import certificate_signings_sweep, station_certificates_renew
from chargers.services.heartbeat import station_heartbeat_timeouts_mark


@shared_task(name="chargers.station_heartbeat_sweep", ignore_result=True)
def station_heartbeat_sweep() -> int:
    """Mark silent stations offline with a HeartbeatTimeout event (idempotent: each station is claimed once)."""
    return station_heartbeat_timeouts_mark()


@shared_task(name="chargers.certificate_signings_sweep", ignore_result=True)
def certificate_signings_sweep_task() -> int:
    """Deliver signed station certificates the answering server could not (idempotent: each request is claimed)."""
    return certificate_signings_sweep()


@shared_task(name="chargers.station_certificates_renew", ignore_result=True)
def station_certificates_renew_task() -> int:
    """Ask connected stations whose certificate expires soon for a new CSR (at most once a day per station)."""
    return len(station_certificates_renew())


BEAT_SCHEDULE = {
    "chargers-heartbeat-sweep": {"task": "chargers.station_heartbeat_sweep", "schedule": 15.0},
    "chargers-certificate-signings-sweep": {"task": "chargers.certificate_signings_sweep", "schedule": 60.0},
    "chargers-certificates-renew": {"task": "chargers.station_certificates_renew", "schedule": 3600.0},
}
