"""Default market configuration: a PJM-like RTO and the demo depot. Plain data, used by the data migration and by
``manage.py markets seed`` (which only creates what is missing, never overwrites an admin's edits).

Figures and where they come from (configurable defaults; see /work/shared/reference/grid-and-market-figures.md):
- PJM: hourly intervals, offers for the next operating day due 10:30 EPT, hourly offer updates up to 65 minutes
  before the operating hour; regulation and synchronized reserve in 0.1 MW steps, prices in USD per MW-h.
- RegD follows a 2-s signal; expected activation per W offered per hour is the mean positive / negative part of the
  PJM RegD 40-minute test signal (0.32 up, 0.25 down; ../shared/data/pjm-regd-test-signal-40min.csv).
- Synchronized reserve: full response in 10 minutes, held up to 30 minutes; deployments are rare (0.5 % of hours).
- Depot peak shaving: 15-minute meter intervals, threshold and demand charge per kW-month of a typical US
  commercial tariff (*check* against the depot's own tariff).
"""

from __future__ import annotations

from datetime import time
from decimal import Decimal
from typing import Any

OPERATORS: list[dict[str, Any]] = [
    {
        "code": "pjm",
        "name": "PJM Interconnection (RTO)",
        "timezone": "America/New_York",
        "interval_minutes": 60,
        "gate_closure_local": time(10, 30),
        "intraday_gate_minutes": 65,
        "min_bid_w": 100_000,
        "bid_increment_w": 100_000,
        "price_unit": "per_mw_h",
        "currency": "USD",
        "price_tick": Decimal("0.01"),
    },
    {
        "code": "depot",
        "name": "Depot site meter (demand charge)",
        "timezone": "America/New_York",
        "interval_minutes": 15,
        "gate_closure_local": time(23, 0),
        "intraday_gate_minutes": 15,
        "min_bid_w": 1_000,
        "bid_increment_w": 1_000,
        "price_unit": "per_kw_month",
        "currency": "USD",
        "price_tick": Decimal("0.01"),
    },
]

SITES: list[dict[str, Any]] = [
    {
        "code": "depot-1",
        "name": "Demo depot",
        "meter_id": "DEPOT-1-MAIN",
        "threshold_w": 400_000,
        "demand_charge": Decimal("15.00"),
        "currency": "USD",
        "node": "default",
    }
]

PRODUCTS: list[dict[str, Any]] = [
    {
        "operator": "pjm",
        "code": "reg-d",
        "name": "Regulation D (symmetric, 2-s signal)",
        "kind": "regulation",
        "direction": "symmetric",
        "signal_period_s": 2,
        "response_time_s": 2,
        "sustain_minutes": 15,
        "expected_up_activation": Decimal("0.32"),
        "expected_down_activation": Decimal("0.25"),
    },
    {
        "operator": "pjm",
        "code": "sync-reserve",
        "name": "Synchronized (spinning) reserve",
        "kind": "reserve",
        "direction": "up",
        "response_time_s": 600,
        "sustain_minutes": 30,
        "expected_up_activation": Decimal("0.005"),
        "expected_down_activation": Decimal("0"),
    },
    {
        "operator": "depot",
        "code": "peak-shaving",
        "name": "Depot peak shaving",
        "kind": "peak_shaving",
        "direction": "up",
        "response_time_s": 60,
        "sustain_minutes": 15,
        "expected_up_activation": Decimal("1"),
        "expected_down_activation": Decimal("0"),
        "site": "depot-1",
    },
]


def ensure_defaults(operator_model: Any, site_model: Any, product_model: Any) -> int:
    """Create the default operators, sites and products that are missing; return how many rows were created.

    Takes the model classes so the data migration can pass its historical models.
    """
    created = 0
    operators = {}
    for spec in OPERATORS:
        fields = dict(spec)
        operators[spec["code"]], made = operator_model.objects.get_or_create(code=fields.pop("code"), defaults=fields)
        created += made
    sites = {}
    for spec in SITES:
        fields = dict(spec)
        sites[spec["code"]], made = site_model.objects.get_or_create(code=fields.pop("code"), defaults=fields)
        created += made
    for spec in PRODUCTS:
        fields = dict(spec)
        operator = operators[fields.pop("operator")]
        site_code = fields.pop("site", None)
        if site_code:
            fields["site"] = sites[site_code]
        _, made = product_model.objects.get_or_create(operator=operator, code=fields.pop("code"), defaults=fields)
        created += made
    return created
