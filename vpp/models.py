"""What regulation dispatch and peak shaving sent and how the stations answered: written after the fan-out, off the
hot path.

Power in integer W (+ charging), times UTC, latencies in milliseconds from the instant the signal was received.
"""

from __future__ import annotations

from django.db import models


class Dispatch(models.Model):
    """One signal value turned into one fleet setpoint, its allocation and the fan-out of the commands."""

    product = models.ForeignKey("markets.Product", on_delete=models.PROTECT, related_name="dispatches")
    portfolio = models.CharField(max_length=64, default="default")
    node = models.CharField(max_length=32, help_text="server process that dispatched")
    signal_at = models.DateTimeField(help_text="instant the operator's value applies from")
    signal = models.DecimalField(max_digits=7, decimal_places=5)
    source = models.CharField(max_length=16, help_text="utility_api, websocket, file, simulated")
    received_at = models.DateTimeField(help_text="when the signal reached the dispatcher")
    capacity_w = models.BigIntegerField(help_text="regulation capacity awarded (AREG)")
    basepoint_w = models.BigIntegerField()
    reserve_w = models.BigIntegerField(default=0, help_text="reserve deployment in force (W of discharge)")
    setpoint_w = models.BigIntegerField(help_text="fleet setpoint asked of the allocation")
    allocated_w = models.BigIntegerField(help_text="sum of the vehicle setpoints (the nearest feasible total)")
    feasible = models.BooleanField()
    reason = models.TextField(blank=True)
    vehicles = models.PositiveIntegerField()
    commands = models.PositiveIntegerField()
    accepted = models.PositiveIntegerField(help_text="CALLRESULTs with status Accepted")
    failed = models.PositiveIntegerField(help_text="rejected, CALLERROR, timeout or offline")
    compute_ms = models.FloatField(help_text="signal received -> commands ready (allocation and payloads)")
    p50_ms = models.FloatField(null=True, blank=True, help_text="median signal -> CALLRESULT")
    last_ms = models.FloatField(null=True, blank=True, help_text="signal -> last station's CALLRESULT")
    state_age_s = models.FloatField(help_text="age of the in-memory fleet state used")
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["-signal_at"]
        indexes = [models.Index(fields=["product", "portfolio", "signal_at"], name="dispatch_product_signal")]

    def __str__(self) -> str:
        return f"{self.product_id}/{self.portfolio} {self.signal_at:%H:%M:%S} {self.setpoint_w} W"


class DispatchCommand(models.Model):
    """One station's share of a dispatch and its answer."""

    dispatch = models.ForeignKey(Dispatch, on_delete=models.CASCADE, related_name="station_commands")
    station_id = models.CharField(max_length=48)
    evse_id = models.PositiveIntegerField()
    vehicle_id = models.BigIntegerField()
    power_w = models.IntegerField()
    status = models.CharField(max_length=16, help_text="result, error, timeout, offline")
    answer = models.CharField(max_length=40, blank=True, help_text="CALLRESULT status or CALLERROR code")
    latency_ms = models.FloatField(null=True, blank=True, help_text="signal received -> this CALLRESULT")

    class Meta:
        ordering = ["dispatch", "station_id"]

    def __str__(self) -> str:
        return f"{self.station_id}: {self.power_w} W {self.status}"


# Utility programs (OpenADR, IEEE 2030.5): the utility interfaces' models, kept in their package.
from vpp.utility.models import *  # noqa: E402, F403


class PowerCap(models.Model):
    """A cap on a portfolio's net power over a time window, from a utility's event (an export or import limit).

    Dispatch reads the caps in force (:func:`vpp.dispatch.selectors.dispatch_state_load`) and bounds both the
    regulation dispatcher's and the reserve run's allocation with them (:func:`vpp.dispatch.values.capped_allocate`):
    an export cap lowers each car's discharge power pro rata (never more discharge, floors untouched); an import
    cap lowers the fleet setpoint and each car's charging headroom, except where a car's departure need asks for
    more (the departure need wins). W: ``export_w`` >= 0 is the most the portfolio may send out, ``import_w`` the
    most it may draw (+ import).
    """

    portfolio = models.CharField(max_length=64)
    export_w = models.BigIntegerField(null=True, blank=True, help_text="net export at most this, W")
    import_w = models.BigIntegerField(null=True, blank=True, help_text="net import at most this, W")
    start = models.DateTimeField()
    end = models.DateTimeField()
    source = models.CharField(max_length=16, help_text="who asked: utility_api, ...")
    source_ref = models.CharField(max_length=100, unique=True, help_text="the event (and interval) it comes from")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-start", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="power_cap_ends_after_start"),
            models.CheckConstraint(
                condition=models.Q(export_w__isnull=False) | models.Q(import_w__isnull=False),
                name="power_cap_caps_something",
            ),
            models.CheckConstraint(
                condition=models.Q(export_w__isnull=True) | models.Q(export_w__gte=0), name="power_cap_export_positive"
            ),
        ]
        indexes = [models.Index(fields=["portfolio", "end"], name="power_cap_portfolio_end")]

    def __str__(self) -> str:
        caps = f"export<={self.export_w} import<={self.import_w}"
        return f"{self.portfolio} {caps} {self.start:%H:%M:%S}-{self.end:%H:%M:%S}"


class PeakStep(models.Model):
    """One peak-shaving decision that sent commands to a depot's cars: which site, what was asked (the fleet
    setpoint, or a release), why, when, by which server process, and how the stations answered. The calls
    themselves are in the CSMS's message log; this is the decision that made them (``vpp.peak.services``)."""

    site = models.ForeignKey("markets.DepotSite", on_delete=models.PROTECT, related_name="peak_steps")
    node = models.CharField(max_length=32, help_text="server process whose shaver decided")
    at = models.DateTimeField(help_text="the site-meter reading's decision instant")
    action = models.CharField(max_length=16, help_text="shave, charge or release")
    import_w = models.BigIntegerField(help_text="site net import read")
    fleet_w = models.BigIntegerField(help_text="the cars' power counted in it")
    cap_w = models.BigIntegerField(help_text="the cap in force (raised where the cars cannot hold the plan's)")
    setpoint_w = models.BigIntegerField(null=True, blank=True, help_text="fleet power asked; none for a release")
    achieved_w = models.BigIntegerField(null=True, blank=True, help_text="the nearest feasible total allocated")
    reason = models.TextField()
    commands = models.PositiveIntegerField()
    accepted = models.PositiveIntegerField(help_text="CALLRESULTs with status Accepted")
    failed = models.PositiveIntegerField(help_text="rejected, CALLERROR, timeout or offline")
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["site", "at"], name="peak_step_site_at")]

    def __str__(self) -> str:
        asked = "release" if self.setpoint_w is None else f"{self.setpoint_w} W"
        return f"site {self.site_id} {self.at:%Y-%m-%d %H:%M:%S}: {self.action} {asked}"
