"""Proposals as Celery beat prepares them: one per window, idempotently, for the next gate still open."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from markets import tasks
from markets.models import BidProposal


def test_the_beat_task_prepares_one_proposal_per_window_idempotently(
    db, monkeypatch, django_capture_on_commit_callbacks
) -> None:
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
