"""``manage.py markets <action>``: seed, import-prices, import-site-load, forecast, propose, export-bids,
import-awards, clear."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from markets.defaults import ensure_defaults
from markets.models import Bid, BidProposal, DepotSite, MarketOperator, PricePoint, Product
from markets.selectors import product_get
from markets.services.bids import Actor, MarketError
from markets.services.clearing import market_clear_simulated
from markets.services.exchange import awards_import_csv, bids_export_csv
from markets.services.prices import (
    price_forecast_from_history,
    prices_import_csv,
    prices_import_pjm_sr,
    site_load_import_csv,
)
from markets.services.proposals import delivery_window, proposal_claim, proposal_request, proposal_rerun, proposal_run

DATA = Path(__file__).resolve().parents[2] / "data"
PJM_SR = DATA / "pjm-synchronized-reserve-2017-07.csv"


def _product(ref: str) -> Product:
    try:
        return product_get(ref=ref)
    except Product.DoesNotExist:
        raise CommandError(f"unknown product {ref!r} (use operator:code, e.g. pjm:sync-reserve)") from None


def _operator(code: str) -> MarketOperator:
    try:
        return MarketOperator.objects.get(code=code)
    except MarketOperator.DoesNotExist:
        raise CommandError(f"unknown operator {code!r}") from None


class Command(BaseCommand):
    help = "Market set-up, price import and forecast, bid proposals, CSV bid export and award import."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("seed", help="default operators/products, the PJM example prices and a forecast for tomorrow")
        p = sub.add_parser("import-prices", help="import prices from CSV")
        p.add_argument("path")
        p.add_argument("--product", required=True, help="operator:code")
        p.add_argument("--format", choices=["pjm-sr", "generic"], default="generic")
        p.add_argument("--kind", choices=[k for k, _ in PricePoint.Kind.choices], default="forecast")
        p.add_argument("--subzone")
        f = sub.add_parser("forecast", help="hour-of-day forecast from cleared history")
        f.add_argument("--product", required=True)
        f.add_argument("--day", type=date.fromisoformat, help="delivery day (default tomorrow)")
        f.add_argument("--location")
        pr = sub.add_parser("propose", help="prepare (or re-run) the bid proposal for a delivery day")
        pr.add_argument("--operator", default="pjm")
        pr.add_argument("--portfolio", default="all")
        pr.add_argument("--day", type=date.fromisoformat)
        pr.add_argument("--scheduler", default="highs")
        e = sub.add_parser("export-bids", help="write approved/submitted bids of a day as CSV")
        e.add_argument("--operator", default="pjm")
        e.add_argument("--day", type=date.fromisoformat)
        e.add_argument("--status", action="append", default=None)
        e.add_argument("--out", default="-")
        sl = sub.add_parser("import-site-load", help="import a depot's site-meter load (peak shaving) from CSV")
        sl.add_argument("path")
        sl.add_argument("--site", required=True, help="depot site code")
        a = sub.add_parser("import-awards", help="import the market's awards CSV")
        a.add_argument("path")
        c = sub.add_parser("clear", help="simulated market operator: clear submitted bids of a day")
        c.add_argument("--operator", default="pjm")
        c.add_argument("--day", type=date.fromisoformat)

    def handle(self, *args: Any, **o: Any) -> None:
        action = o["action"].replace("-", "_")
        try:
            getattr(self, f"do_{action}")(o)
        except MarketError as exc:
            raise CommandError(str(exc)) from exc

    def _day(self, o: dict[str, Any]) -> date:
        return o.get("day") or (timezone.now() + timedelta(days=1)).date()

    def do_seed(self, o: dict[str, Any]) -> None:
        created = ensure_defaults(MarketOperator, DepotSite, Product)
        product = Product.objects.get(operator__code="pjm", code="sync-reserve")
        with PJM_SR.open() as fh:
            result = prices_import_pjm_sr(product=product, stream=fh, source_ref=PJM_SR.name)
        tomorrow = self._day(o)
        made = 0
        pjm = MarketOperator.objects.get(code="pjm")
        start, _ = delivery_window(pjm, tomorrow)
        if not PricePoint.objects.filter(product=product, interval_start=start, kind="forecast").exists():
            made = price_forecast_from_history(
                product=product, day_start=start, location="PJM Mid Atlantic Dominion (MAD)"
            )
        self.stdout.write(
            f"markets: {created} config rows created; PJM SR prices {result.created} new / {result.read} read; "
            f"{made} forecast intervals for {tomorrow}"
        )

    def do_import_prices(self, o: dict[str, Any]) -> None:
        product = _product(o["product"])
        path = Path(o["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        with path.open() as fh:
            if o["format"] == "pjm-sr":
                result = prices_import_pjm_sr(
                    product=product, stream=fh, source_ref=path.name, subzone=o.get("subzone")
                )
            else:
                result = prices_import_csv(product=product, stream=fh, source_ref=path.name, kind=o["kind"])
        self.stdout.write(f"{result.created} prices stored, {result.skipped_existing} already known")

    def do_import_site_load(self, o: dict[str, Any]) -> None:
        site = DepotSite.objects.filter(code=o["site"]).first()
        if site is None:
            raise CommandError(f"unknown depot site {o['site']!r}")
        path = Path(o["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        with path.open() as fh:
            n = site_load_import_csv(site_id=site.pk, stream=fh, source_ref=path.name)
        self.stdout.write(f"{n} site load intervals read for {site.code}")

    def do_forecast(self, o: dict[str, Any]) -> None:
        product = _product(o["product"])
        start, _ = delivery_window(product.operator, self._day(o))
        n = price_forecast_from_history(product=product, day_start=start, location=o.get("location"))
        self.stdout.write(f"{n} forecast intervals from {start:%Y-%m-%d %H:%M} UTC")

    def do_propose(self, o: dict[str, Any]) -> None:
        proposal, _ = proposal_request(operator=_operator(o["operator"]), portfolio=o["portfolio"], day=self._day(o))
        proposal_rerun(proposal_id=proposal.id)
        if not proposal_claim(proposal_id=proposal.id):
            raise CommandError(f"proposal {proposal.id} is being run elsewhere")
        # The optimiser is one call: the bar's length is how long the last run of this window took (its ETA).
        last = BidProposal.objects.filter(pk=proposal.id).values_list("solve_ms", flat=True).first()
        with _timed_bar(f"proposal {proposal.id}: optimising", (last or 0) / 1000 or None):
            done = proposal_run(proposal_id=proposal.id, scheduler=o["scheduler"])
        self.stdout.write(f"proposal {done.id}: {done.status} {done.error}\n{done.explanation}")

    def do_export_bids(self, o: dict[str, Any]) -> None:
        operator = _operator(o["operator"])
        start, end = delivery_window(operator, self._day(o))
        text = bids_export_csv(operator=operator, start=start, end=end, statuses=o["status"] or [Bid.Status.SUBMITTED])
        if o["out"] == "-":
            self.stdout.write(text, ending="")
        else:
            Path(o["out"]).write_text(text)

    def do_import_awards(self, o: dict[str, Any]) -> None:
        path = Path(o["path"])
        with path.open() as fh:
            n = awards_import_csv(stream=fh, source_ref=path.name, actor=Actor(label="cli"))
        self.stdout.write(f"{n} awards recorded")

    def do_clear(self, o: dict[str, Any]) -> None:
        operator = _operator(o["operator"])
        start, end = delivery_window(operator, self._day(o))
        counts = market_clear_simulated(operator=operator, start=start, end=end)
        self.stdout.write(f"cleared {start:%Y-%m-%d}: {counts}")


@contextlib.contextmanager
def _timed_bar(description: str, expected_s: float | None) -> Iterator[None]:
    """Elapsed time and an ETA (``expected_s``: the previous run's length) on a terminal while the block runs;
    nothing when stderr is not a terminal or ``CI`` is set."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        yield
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    done = threading.Event()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=expected_s)
        start = time.monotonic()

        def tick() -> None:
            while not done.wait(0.25):
                elapsed = time.monotonic() - start
                progress.update(task, completed=min(elapsed, expected_s * 0.99) if expected_s else elapsed)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


__all__ = ["UTC", "Command", "datetime"]
