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
MONEY_PARTS = (
    ("capacity_credit", "capacity credit"),
    ("performance_credit", "performance credit"),
    ("energy_amount", "energy"),
)


def revenue_chart(report: RegulationReport, by: str = "day") -> dict[str, Any]:
    """Settled revenue per ``by`` (hour or day): its parts stacked, degradation below zero, the net as markers."""
    rows = report.revenue.get(by, [])
    currency = report.currency
    symbol = currency_symbol(currency)
    x = [_utc(r["key"]) if isinstance(r["key"], datetime) else str(r["key"]) for r in rows]
    # Bars and markers stand in the middle of their hour or day (plotly's period positioning; x is its start).
    period: dict[str, Any] = {"xperiod": PERIOD_MS[by], "xperiodalignment": "middle"} if by in PERIOD_MS else {}
    traces: list[dict[str, Any]] = [
        {"type": "bar", "name": f"{label} ({symbol})", "x": x, "y": [float(r[key]) for r in rows], **period}
        for key, label in MONEY_PARTS
    ]
    traces.append(
        {
            "type": "bar",
            "name": f"battery degradation ({symbol})",
            "x": x,
            "y": [-float(r["degradation_cost"]) for r in rows],
            **period,
        }
    )
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "marker": {"size": 10, "symbol": "diamond", "color": "#1d2430"},
            "name": f"net ({symbol})",
            "x": x,
            "y": [float(r["net"]) for r in rows],
            **period,
        }
    )
    return {
        "data": traces,
        "layout": {
            "title": {"text": f"Settled regulation revenue per {by} ({currency})"},
            "barmode": "relative",
            "xaxis": {"title": {"text": f"{by} (UTC)"}, "type": "date" if by in ("hour", "day") else "category"},
            "yaxis": {"title": {"text": f"revenue ({symbol})"}, "zeroline": True},
            "legend": {"orientation": "h", "y": -0.25},
            "margin": {"t": 50, "r": 20, "l": 60},
        },
    }
