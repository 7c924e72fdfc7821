"""fleet.jobs: the fleet's tasks are enqueued by their registered name, after the surrounding transaction commits."""

from __future__ import annotations

from typing import Any

import pytest
from celery import current_app

from fleet import jobs


def test_every_name_the_fleet_enqueues_is_a_registered_task() -> None:
    # The Celery app imports every app's tasks module when it finalises: the names resolve without importing them here.
    for name in (jobs.REFRESH_VEHICLE_STATE, jobs.INGEST_TELEMETRY):
        assert name in current_app.tasks


@pytest.mark.django_db
def test_it_enqueues_the_named_task_only_after_commit(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the refresh task, its sends recorded
    sent: list[tuple[tuple[Any, ...], float | None]] = []
    task = current_app.tasks[jobs.REFRESH_VEHICLE_STATE]
    monkeypatch.setattr(task, "apply_async", lambda args, countdown=None: sent.append((args, countdown)))

    # When it is enqueued inside a transaction
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        jobs.task_enqueue_on_commit(name=jobs.REFRESH_VEHICLE_STATE, args=(7,), countdown=2.0)

    # Then nothing is sent before the commit, and exactly the call asked for after it
    assert sent == []
    for callback in callbacks:
        callback()
    assert sent == [((7,), 2.0)]


@pytest.mark.django_db
def test_it_refuses_an_unknown_task_name_at_once() -> None:
    # A misspelt name must not become a message nobody consumes.
    with pytest.raises(KeyError):
        jobs.task_enqueue_on_commit(name="fleet.no_such_task")
