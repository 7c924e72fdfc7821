"""The bidding pages' chart and CSV, both built from one :class:`markets.selectors.BiddingDay`: what the CSV holds is
what the chart plots and the table lists. Pure: no queries (the selector made them).

plotly.js figures as dicts (handed to the page with ``json_script``): every chart has a title, axis titles with
units (``title: {text: ...}``), a legend naming each trace, and ranges from zero for quantities.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from markets.selectors import BiddingDay, BidOutcome
from markets.templatetags.money import price_unit

MW = Decimal(1_000_000)


def _local(moment: datetime, tz: ZoneInfo) -> str:
    """A wall-clock time in the operator's zone (plotly.js draws dates as given, without zones)."""
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _mw(watts: int | None) -> float | None:
    return None if watts is None else float(Decimal(watts) / MW)


def bidding_chart(day: BiddingDay) -> dict[str, Any]:
    """Offered and awarded capacity per product (top) beside the price forecast and the offer and clearing prices
    (bottom), on the operator's delivery hours; the fleet's headroom from the proposal when there is one."""
    operator = day.operator
    tz = ZoneInfo(operator.timezone)
    unit = price_unit(operator)
    # Bars and markers stand in the middle of their interval (plotly's period positioning; x is the interval start).
    period = {"xperiod": operator.interval_minutes * 60_000, "xperiodalignment": "middle"}
    traces: list[dict[str, Any]] = []
    by_product: dict[str, list[BidOutcome]] = {}
    for outcome in day.outcomes:
        by_product.setdefault(outcome.bid.product.code, []).append(outcome)
    for code, rows in by_product.items():
        x = [_local(o.bid.interval_start, tz) for o in rows]
        traces.append(
            {
                "type": "bar",
                "name": f"{code}: offered (MW)",
                "x": x,
                "y": [_mw(o.bid.quantity_w) for o in rows],
                **period,
            }
        )
        if any(o.award is not None for o in rows):
            traces.append(
                {
                    "type": "bar",
                    "name": f"{code}: awarded (MW)",
                    "x": x,
                    "y": [_mw(o.award.awarded_w) if o.award is not None else None for o in rows],
                    **period,
                }
            )
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "marker": {"symbol": "diamond"},
                    "yaxis": "y2",
                    "name": f"{code}: clearing price ({unit})",
                    "x": x,
                    "y": [float(o.award.clearing_price) if o.award is not None else None for o in rows],
                    **period,
                }
            )
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "yaxis": "y2",
                "name": f"{code}: offer price ({unit})",
                "x": x,
                "y": [float(o.bid.price) for o in rows],
                **period,
            }
        )
    for code, prices in day.forecasts.items():
        if prices:
            starts = sorted(prices)
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "line": {"shape": "hv"},
                    "yaxis": "y2",
                    "name": f"{code}: price forecast ({unit})",
                    "x": [_local(s, tz) for s in starts],
                    "y": [float(prices[s]) for s in starts],
                }
            )
    traces += _headroom(day, tz)
    title = f"{operator.name}, delivery day {day.delivery.day:%Y-%m-%d}<br>capacity offered and price forecast"
    return {
        "data": traces,
        "layout": {
            "title": {"text": title},
            "barmode": "group",
            "xaxis": {
                "title": {"text": f"delivery time ({operator.timezone})"},
                "anchor": "y2",
                "type": "date",
                "range": [_local(day.delivery.start, tz), _local(day.delivery.end, tz)],
            },
            "yaxis": {"title": {"text": "capacity (MW)"}, "domain": [0.45, 1], "rangemode": "tozero"},
            "yaxis2": {"title": {"text": f"price ({unit})"}, "domain": [0, 0.33], "rangemode": "tozero"},
            "legend": {"orientation": "h", "y": -0.25},
            "margin": {"t": 70, "r": 20, "l": 60},
        },
    }


def _headroom(day: BiddingDay, tz: ZoneInfo) -> list[dict[str, Any]]:
    proposal = day.proposal
    envelope = (proposal.inputs or {}).get("envelope") if proposal is not None else None
    if not envelope or "start" not in proposal.inputs:  # type: ignore[union-attr]
        return []
    start = datetime.fromisoformat(proposal.inputs["start"])  # type: ignore[union-attr]
    step = timedelta(seconds=proposal.inputs["step_s"])  # type: ignore[union-attr]
    traces = []
    for key, label in (("up_w", "fleet headroom up (MW)"), ("down_w", "fleet headroom down (MW)")):
        values = envelope.get(key) or []
        points = [(start + k * step, v) for k, v in enumerate(values)]
        inside = [(t, v) for t, v in points if day.delivery.start <= t < day.delivery.end]
        if inside:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "line": {"dash": "dot", "shape": "hv"},
                    "name": label,
                    "x": [_local(t, tz) for t, _ in inside],
                    "y": [v / 1_000_000 for _, v in inside],
                }
            )
    return traces


BID_COLUMNS = [
    "bid_ref",
    "product",
    "portfolio",
    "interval_start_utc",
    "interval_end_utc",
    "offered_mw",
    "offer_price",
    "forecast_price",
    "status",
    "awarded_mw",
    "not_awarded_mw",
    "clearing_price",
    "score",
    "revenue",
    "currency",
    "price_unit",
]


def bidding_csv(day: BiddingDay) -> str:
    """The day's bids as the page's table lists them: one row per bid, prices in the operator's unit, money Decimal."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(BID_COLUMNS)
    unit = price_unit(day.operator)
    for o in day.outcomes:
        b, a = o.bid, o.award
        writer.writerow(
            [
                b.external_ref,
                str(b.product),
                b.portfolio,
                b.interval_start.isoformat(),
                b.interval_end.isoformat(),
                Decimal(b.quantity_w) / MW,
                b.price,
                "" if o.forecast is None else o.forecast,
                b.status,
                "" if a is None else Decimal(a.awarded_w) / MW,
                "" if o.shortfall_w is None else Decimal(o.shortfall_w) / MW,
                "" if a is None else a.clearing_price,
                "" if o.score is None else o.score,
                "" if o.revenue is None else o.revenue,
                day.operator.currency,
                unit,
            ]
        )
    return out.getvalue()
