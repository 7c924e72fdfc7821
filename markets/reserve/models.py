"""Synchronized reserve events as measured and penalised: the rows an auditor traces a reserve shortfall through.

Imported by ``markets/models.py`` (so these are ``markets`` models). The event itself is
:class:`markets.regulation.models.ReserveDeployment` (the API has recorded it there since before reserve was a
product); these rows hold what the meters said it delivered and what a shortfall cost. Power in integer W (a
response is + when the fleet draws less / injects more than at the event start), money ``Decimal``, UTC.
"""

from __future__ import annotations

from django.db import models

__all__ = ["ReserveEventLine", "ReserveEventPerformance"]


class ReserveEventPerformance(models.Model):
    """One reserve event measured from meter values (:mod:`markets.reserve.measurement`) and its shortfall penalty.

    ``credited_w`` = min(response at 10 minutes, mean response over the rest of the event, assigned);
    ``shortfall_w`` = assigned - credited. ``penalty_exact`` is PJM's retroactive charge (shortfall MW x SRMCP over
    the cleared hours of the look-back, :mod:`markets.reserve.penalty`); the settlement of the award period the
    event starts in carries it, rounded once to the cent.
    """

    deployment = models.OneToOneField("markets.ReserveDeployment", on_delete=models.PROTECT, related_name="performance")
    assigned_w = models.PositiveBigIntegerField(help_text="reserve the event asked for (W)")
    baseline_w = models.BigIntegerField(help_text="fleet power in force at the event start (W, + charging)")
    response_10min_w = models.BigIntegerField(help_text="baseline - fleet power at start + 10 min")
    sustained_w = models.BigIntegerField(null=True, blank=True, help_text="mean response from 10 min to the end")
    credited_w = models.PositiveBigIntegerField()
    shortfall_w = models.PositiveBigIntegerField()
    rows = models.PositiveIntegerField(help_text="10-s rows read, the start row included")
    meter_values = models.PositiveIntegerField(help_text="distinct power readings used")
    duplicates_ignored = models.PositiveIntegerField()
    stations = models.PositiveIntegerField()
    lookback_days = models.DecimalField(max_digits=8, decimal_places=4, help_text="days the penalty reaches back")
    penalty_exact = models.DecimalField(max_digits=20, decimal_places=10, help_text="unrounded retroactive penalty")
    penalty_hours = models.JSONField(
        default=list, blank=True, help_text="[award id, interval start, cleared W, penalised W, hours, SRMCP, exact $]"
    )
    currency = models.CharField(max_length=3, default="USD")
    inputs = models.JSONField(default=dict, blank=True, help_text="measurement choices made")
    computed_at = models.DateTimeField()
    simulated = models.BooleanField(default=False)

    class Meta:
        ordering = ["-deployment__start"]

    def __str__(self) -> str:
        return f"{self.deployment} credited {self.credited_w} W shortfall {self.shortfall_w} W"


class ReserveEventLine(models.Model):
    """One charge point's part of an event's response, with the meter values it was measured from."""

    performance = models.ForeignKey(ReserveEventPerformance, on_delete=models.CASCADE, related_name="lines")
    station = models.ForeignKey("chargers.Station", on_delete=models.PROTECT, related_name="reserve_event_lines")
    evse_id = models.PositiveIntegerField()
    vehicle = models.ForeignKey(
        "fleet.Vehicle", null=True, blank=True, on_delete=models.PROTECT, related_name="reserve_event_lines"
    )
    vehicle_ref = models.CharField(max_length=140)
    baseline_w = models.BigIntegerField()
    response_10min_w = models.BigIntegerField()
    sustained_w = models.BigIntegerField(null=True, blank=True)
    meter_count = models.PositiveIntegerField()
    duplicates_ignored = models.PositiveIntegerField(default=0)
    meter_first = models.ForeignKey(
        "chargers.MeterValue", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    meter_last = models.ForeignKey(
        "chargers.MeterValue", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    meter_digest = models.CharField(max_length=64)

    class Meta:
        ordering = ["performance", "station", "evse_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["performance", "station", "evse_id"], name="markets_reserve_one_line_per_chargepoint"
            )
        ]

    def __str__(self) -> str:
        return f"{self.performance_id} {self.station_id}/{self.evse_id} {self.response_10min_w} W"
