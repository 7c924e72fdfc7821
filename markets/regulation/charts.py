"""The regulation pages' charts (plotly.js figures as dicts, handed to the page with ``json_script``), each built
from the :class:`~markets.regulation.reports.RegulationReport` its CSV comes from. Pure: no queries.

Every chart: a title, axis titles with units (``title: {text: ...}``), one legend entry per trace, ranges that show
the quantity (scores 0-1 with the pass mark, money from zero).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from markets.regulation.reports import RegulationReport, SignalSeries
from markets.regulation.scoring import PASS_MARK
from markets.templatetags.money import currency_symbol


def _utc(moment: datetime) -> str:
    """A UTC wall-clock time (plotly.js draws dates as given, without zones; the axis title says UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def signal_chart(series: SignalSeries) -> dict[str, Any]:
    score = series.score
    x = [_utc(t) for t in series.times]
    # Symmetric about zero, a little over the award: the signal spans +-AREG, the response should follow it.
    reach = max([series.capacity_mw, *map(abs, series.signal_mw), *map(abs, series.response_mw)], default=1.0)
    reach = round(reach * 1.1, 3) or 1.0
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "name": "signal x award (MW)", "x": x, "y": series.signal_mw},
            {"type": "scatter", "mode": "lines", "name": "fleet response (MW)", "x": x, "y": series.response_mw},
            {
                "type": "scatter",
                "mode": "lines",
                "name": "fleet power (kW, + charging)",
                "x": x,
                "y": series.fleet_kw,
                "yaxis": "y2",
                "line": {"dash": "dot"},
                "visible": "legendonly",
            },
        ],
        "layout": {
            "title": {
                "text": f"Signal vs fleet response<br>{score.product}, {score.portfolio}, "
                f"{score.period_start:%Y-%m-%d %H:%M} UTC, award {series.capacity_mw:g} MW"
            },
            "xaxis": {"title": {"text": "time (UTC)"}, "type": "date"},
            "yaxis": {"title": {"text": "regulation (MW, + = up)"}, "range": [-reach, reach], "zeroline": True},
            "yaxis2": {
                "title": {"text": "fleet power (kW)"},
                "overlaying": "y",
                "side": "right",
                "showgrid": False,
            },
            "legend": {"orientation": "h", "y": -0.2},
            "margin": {"t": 70, "r": 60, "l": 60},
        },
    }


def scores_chart(report: RegulationReport) -> dict[str, Any]:
    scores = sorted(report.scores, key=lambda s: s.period_start)
    x = [_utc(s.period_start) for s in scores]
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": x,
            "y": [float(getattr(s, name)) for s in scores],
            **({"line": {"width": 3}} if name == "composite" else {}),
        }
        for name in ("composite", "accuracy", "delay", "precision")
    ]
    if scores:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"pass mark ({PASS_MARK:g})",
                "x": [x[0], x[-1]],
                "y": [PASS_MARK, PASS_MARK],
                "line": {"dash": "dash", "color": "#b42318"},
            }
        )
    return {
        "data": traces,
        "layout": {
            "title": {"text": "Performance score per scored hour"},
            "xaxis": {"title": {"text": "hour start (UTC)"}, "type": "date"},
            "yaxis": {"title": {"text": "score (0-1)"}, "range": [0, 1.05]},
            "legend": {"orientation": "h", "y": -0.25},
            "margin": {"t": 50, "r": 20, "l": 60},
        },
    }


PERIOD_MS = {"hour": 3_600_000, "day": 86_400_000}
PRODUCT_ORDER = ("regulation", "synchronized reserve", "peak shaving")


def revenue_chart(report: RegulationReport, by: str = "day") -> dict[str, Any]:
    """Settled revenue per ``by`` (hour or day), each product's net side by side (stacked: one bar per product,
    named in the legend), the total net as markers. The tables and CSVs hold each product's parts."""
    rows = report.revenue.get(by, [])
    currency = report.currency
    symbol = currency_symbol(currency)
    keys = sorted({r["key"] for r in rows}, key=str)
    x = [_utc(k) if isinstance(k, datetime) else str(k) for k in keys]
    net: dict[str, dict[Any, float]] = {}
    for r in rows:
        per_key = net.setdefault(r["product"], {})
        per_key[r["key"]] = per_key.get(r["key"], 0.0) + float(r["net"])
    products = [p for p in PRODUCT_ORDER if p in net] + sorted(p for p in net if p not in PRODUCT_ORDER)
    # Bars and markers stand in the middle of their hour or day (plotly's period positioning; x is its start).
    period: dict[str, Any] = {"xperiod": PERIOD_MS[by], "xperiodalignment": "middle"} if by in PERIOD_MS else {}
    traces: list[dict[str, Any]] = [
        {"type": "bar", "name": f"{product} ({symbol})", "x": x, "y": [net[product].get(k, 0.0) for k in keys],
         **period}
        for product in products
    ]  # fmt: skip
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "marker": {"size": 10, "symbol": "diamond", "color": "#1d2430"},
            "name": f"net, all products ({symbol})",
            "x": x,
            "y": [sum(net[p].get(k, 0.0) for p in products) for k in keys],
            **period,
        }
    )
    return {
        "data": traces,
        "layout": {
            "title": {"text": f"Settled revenue per {by} by product, net of degradation ({currency})"},
            "barmode": "relative",
            "xaxis": {"title": {"text": f"{by} (UTC)"}, "type": "date" if by in ("hour", "day") else "category"},
            "yaxis": {"title": {"text": f"revenue ({symbol})"}, "zeroline": True},
            "legend": {"orientation": "h", "y": -0.25},
            "margin": {"t": 50, "r": 20, "l": 60},
        },
    }
