"""Bid lifecycle, audit, price and award CSV import, simulated clearing."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from markets.defaults import ensure_defaults
from markets.models import Award, Bid, BidEvent, DepotSite, MarketOperator, PricePoint, Product, SiteLoadPoint
from markets.selectors import latest_site_load
from markets.services.bids import CsvImportError, MarketError, StaleBid, bid_edit, bid_transition
from markets.services.clearing import award_record, market_clear_simulated
from markets.services.exchange import BID_EXPORT_COLUMNS, awards_import_csv, bids_export_csv
from markets.services.prices import prices_import_csv, prices_import_pjm_sr

PJM_FILE = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-synchronized-reserve-2017-07.csv"
S = Bid.Status


def test_a_bid_goes_through_its_lifecycle_and_every_change_is_audited(bid_factory, bidding_admin) -> None:
    bid = bid_factory()
    for to in (S.APPROVED, S.SUBMITTED):
        bid_transition(bid_id=bid.id, to_status=to, actor=bidding_admin)
    award_record(
        bid_id=bid.id, awarded_w=300_000, clearing_price=Decimal("12"), source="csv", source_ref="t", actor=None
    )
    bid_transition(bid_id=bid.id, to_status=S.DELIVERED, actor=None)
    bid_transition(bid_id=bid.id, to_status=S.SETTLED, actor=None)
    events = list(BidEvent.objects.filter(bid=bid).values_list("from_status", "to_status", "actor_label"))
    assert events == [
        (S.DRAFT, S.APPROVED, "bidder"),
        (S.APPROVED, S.SUBMITTED, "bidder"),
        (S.SUBMITTED, S.PARTIALLY_AWARDED, "system"),
        (S.PARTIALLY_AWARDED, S.DELIVERED, "system"),
        (S.DELIVERED, S.SETTLED, "system"),
    ]
    assert Bid.objects.get(pk=bid.id).version == 6


def test_it_refuses_transitions_the_lifecycle_does_not_allow(bid_factory) -> None:
    bid = bid_factory()
    with pytest.raises(MarketError, match="cannot become submitted"):
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    with pytest.raises(MarketError):
        bid_transition(bid_id=bid.id, to_status=S.SETTLED, actor=None)
    assert Bid.objects.get(pk=bid.id).status == S.DRAFT
    assert not BidEvent.objects.filter(bid=bid).exists()


def test_a_stale_edit_is_refused_and_changes_nothing(bid_factory, bidding_admin) -> None:
    bid = bid_factory()
    bid_edit(bid_id=bid.id, quantity_w=700_000, price=Decimal("11"), version=1, actor=bidding_admin)
    with pytest.raises(StaleBid):
        bid_edit(bid_id=bid.id, quantity_w=900_000, price=Decimal("11"), version=1, actor=bidding_admin)
    bid.refresh_from_db()
    assert (bid.quantity_w, bid.version) == (700_000, 2)
    assert BidEvent.objects.get(bid=bid).changes["quantity_w"] == "500000 -> 700000"


@pytest.mark.parametrize(("quantity", "reason"), [(50_000, "below"), (250_000, "multiple"), (-1, ">= 0")])
def test_edits_must_respect_minimum_size_and_increment(bid_factory, quantity, reason) -> None:
    bid = bid_factory()
    with pytest.raises(MarketError, match=reason):
        bid_edit(bid_id=bid.id, quantity_w=quantity, price=Decimal(1), version=1, actor=None)


def test_editing_an_approved_bid_sends_it_back_to_draft(bid_factory) -> None:
    bid = bid_factory()
    bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
    edited = bid_edit(bid_id=bid.id, quantity_w=200_000, price=Decimal("9.999"), version=2, actor=None)
    assert edited.status == S.DRAFT
    assert edited.price == Decimal("10.00")  # rounded up to the operator's 0.01 tick


def test_it_imports_the_real_pjm_file_once(db) -> None:
    product = Product.objects.get(operator__code="pjm", code="sync-reserve")
    with PJM_FILE.open() as fh:
        first = prices_import_pjm_sr(product=product, stream=fh, source_ref=PJM_FILE.name)
    with PJM_FILE.open() as fh:
        again = prices_import_pjm_sr(product=product, stream=fh, source_ref=PJM_FILE.name)
    assert (first.created, again.created) == (1488, 0)
    p = PricePoint.objects.get(location="Non PJM Mid Atlantic Dominion (MAD)", interval_start="2017-07-01T14:00Z")
    assert p.price == Decimal("3.59")
    assert p.belief_time.isoformat() == "2017-12-07T14:59:17+00:00"


def test_a_bad_price_row_rejects_the_whole_file_with_its_line(db) -> None:
    product = Product.objects.get(operator__code="pjm", code="reg-d")
    text = "interval_start,interval_minutes,price\n2026-07-01T00:00Z,60,5\n2026-07-01T01:00,60,5\n"
    with pytest.raises(CsvImportError, match="line 3"):
        prices_import_csv(product=product, stream=io.StringIO(text), source_ref="t", kind="forecast")
    assert not PricePoint.objects.exists()


def test_awards_import_is_all_or_nothing(bid_factory) -> None:
    a, b = bid_factory(), bid_factory()
    for bid in (a, b):
        bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    bad = f"bid_ref,awarded_mw,clearing_price\n{a.external_ref},0.5,12\n{b.external_ref},0.9,12\n"
    with pytest.raises(CsvImportError, match="line 3"):
        awards_import_csv(stream=io.StringIO(bad), source_ref="f", actor=None)
    assert not Award.objects.exists()
    good = f"bid_ref,awarded_mw,clearing_price\n{a.external_ref},0.5,12\n{b.external_ref},0,12\n"
    assert awards_import_csv(stream=io.StringIO(good), source_ref="f", actor=None) == 2
    assert Bid.objects.get(pk=a.id).status == S.AWARDED
    assert Bid.objects.get(pk=b.id).status == S.REJECTED


def test_the_simulated_operator_clears_against_its_price_curve(bid_factory) -> None:
    cheap, dear, capped = bid_factory(price=Decimal(5)), bid_factory(price=Decimal(50)), bid_factory(price=Decimal(1))
    for bid in (cheap, dear, capped):
        bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    prices = {("reg-d", b.interval_start): Decimal(20) for b in (cheap, dear, capped)}
    counts = market_clear_simulated(
        operator=cheap.product.operator,
        start=cheap.interval_start,
        end=capped.interval_end,
        clearing_prices=prices,
        requirement_w={("reg-d", capped.interval_start): 200_000},
    )
    assert counts == {"awarded": 1, "partially_awarded": 1, "rejected": 1}
    assert Award.objects.get(bid=capped).awarded_w == 200_000
    assert Award.objects.get(bid=dear).awarded_w == 0


def test_bids_export_in_the_documented_format(bid_factory) -> None:
    bid = bid_factory()
    bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
    text = bids_export_csv(
        operator=bid.product.operator, start=bid.interval_start, end=bid.interval_end, statuses=[S.APPROVED]
    )
    header, row = text.strip().splitlines()
    assert header == ",".join(BID_EXPORT_COLUMNS)
    assert row.split(",")[6:8] == ["0.5", "10.0000"]


def test_the_beat_task_prepares_one_proposal_per_window_idempotently(
    db, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from datetime import timedelta

    from markets import tasks
    from markets.models import BidProposal

    # given gate closure within the preparation lead, and a broker we can watch
    monkeypatch.setattr(tasks, "PREPARE_LEAD", timedelta(days=2))
    sent: list[int] = []
    monkeypatch.setattr(tasks.run_proposal, "delay", sent.append)
    # when beat fires: nothing is sent before the proposal row commits
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = tasks.prepare_proposals()
    assert first
    assert sent == []
    for callback in callbacks:
        callback()
    assert sent == first
    # then the worker runs it once; a duplicate delivery finds it claimed
    assert [tasks.run_proposal(pid) for pid in sent] == ["done"] * len(sent)
    assert tasks.run_proposal(sent[0]) == "already claimed"
    # and the next beat has nothing left to prepare
    assert tasks.prepare_proposals() == []
    assert BidProposal.objects.filter(status=BidProposal.Status.DONE).count() == len(first)


def test_after_tomorrows_gate_has_closed_the_beat_prepares_the_next_open_day(db, monkeypatch) -> None:
    from datetime import UTC, date, datetime, timedelta
    from zoneinfo import ZoneInfo

    from markets import tasks
    from markets.models import BidProposal

    # Given 23:04 in New York, after both New York operators' gates for tomorrow closed (10:30 and 23:00), and a
    # 12-hour preparation lead that reaches PJM's next gate (10:30 tomorrow) but not the 23:00 one
    monkeypatch.setattr(tasks.timezone, "now", lambda: datetime(2026, 11, 26, 4, 4, tzinfo=UTC))
    monkeypatch.setattr(tasks, "PREPARE_LEAD", timedelta(hours=12))
    monkeypatch.setattr(tasks.run_proposal, "delay", lambda _pk: None)
    # When the beat fires
    queued = tasks.prepare_proposals()
    # Then it prepares the day after tomorrow for the operator whose gate is within the lead, and only that
    proposals = list(BidProposal.objects.filter(pk__in=queued).select_related("operator"))
    new_york = ZoneInfo("America/New_York")
    assert [(p.operator.gate_closure_local.hour, p.horizon_start.astimezone(new_york).date()) for p in proposals] == [
        (10, date(2026, 11, 27))
    ]


def test_a_depot_site_load_file_is_imported_for_peak_shaving_and_a_bad_line_refuses_it(db: None, tmp_path) -> None:
    ensure_defaults(MarketOperator, DepotSite, Product)
    site = DepotSite.objects.get(code="depot-1")
    good = tmp_path / "load.csv"
    good.write_text(
        "interval_start,interval_minutes,load_w\n2025-07-01T14:00:00Z,60,42000\n2025-07-01T15:00:00Z,60,0\n"
    )
    call_command("markets", "import-site-load", str(good), "--site", "depot-1")
    start = datetime(2025, 7, 1, 14, tzinfo=UTC)
    loads = latest_site_load(site=site, start=start, end=start + timedelta(hours=2), known_at=timezone.now())
    assert loads == {start: 42000, start + timedelta(hours=1): 0}
    bad = tmp_path / "bad.csv"
    bad.write_text("interval_start,interval_minutes,load_w\n2025-07-01T16:00:00,60,1\n")  # no UTC offset
    with pytest.raises(CommandError, match="line 2"):
        call_command("markets", "import-site-load", str(bad), "--site", "depot-1")
    assert SiteLoadPoint.objects.count() == 2
