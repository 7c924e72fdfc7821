"""The OpenADR 3 VEN's searches are bounded: a VTN answering full pages forever, or the same page again (its
``skip`` ignored), neither keeps the client looping nor makes it withdraw events it did not get to read."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from tests.vpp.utility.factories import UtilityProgramFactory
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import Protocol, UtilityProgram
from vpp.utility.openadr3 import MAX_PAGES, PAGE, Ven3
from vpp.utility.selectors import Credentials

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def _program() -> UtilityProgram:
    program = UtilityProgramFactory.create(
        protocol=Protocol.OPENADR_3, endpoint="http://vtn.test", client_name="acme-ven", program_ref="acme-cbp"
    )
    return UtilityProgram.objects.select_related("product__operator", "organisation").get(pk=program.pk)


def _vtn(page: Any, gets: list[int]) -> httpx.MockTransport:
    """A VTN whose ``GET /events`` answers ``page(skip)``; ``gets`` records each skip asked."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
        skip = int(request.url.params["skip"])
        gets.append(skip)
        return httpx.Response(200, json=page(skip))

    return httpx.MockTransport(handle)


async def test_it_stops_at_the_page_cap_when_the_vtn_lists_full_pages_forever(caplog: pytest.LogCaptureFixture) -> None:
    # Given a VTN that answers every page full of objects never seen before
    program = await sync_to_async(_program)()
    gets: list[int] = []
    transport = _vtn(lambda skip: [{"id": f"e{skip + n}"} for n in range(PAGE)], gets)
    ven = Ven3(program, runs=EventRuns(), credentials=Credentials(None, None, None, "s"), transport=transport)
    try:
        # When the VEN searches its events
        with caplog.at_level(logging.WARNING, logger="vpp.utility.openadr3"):
            found = await asyncio.wait_for(ven._search("/events", programID="p"), 20)
    finally:
        await ven.http.aclose()
    # Then it read MAX_PAGES pages and no more, kept what they held, and logged that it stopped there
    assert len(gets) == MAX_PAGES
    assert len(found) == MAX_PAGES * PAGE
    assert any("still full pages after 20" in r.getMessage() for r in caplog.records)


async def test_a_vtn_repeating_the_same_page_ends_the_search_and_withdraws_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a VTN that ignores skip: the same full page (objects of no use to the VEN) again and again
    program = await sync_to_async(_program)()
    gets: list[int] = []
    transport = _vtn(lambda skip: [{"id": f"e{n}"} for n in range(PAGE)], gets)
    runs = EventRuns()
    ven = Ven3(program, runs=runs, credentials=Credentials(None, None, None, "s"), transport=transport)
    cancelled: list[str] = []

    def cancel(*, program_id: int, event_ref: str) -> bool:
        cancelled.append(event_ref)
        return True

    runs.cancel = cancel  # type: ignore[method-assign]
    # And an event the VEN listed before, not on that page
    ven._listed = {"earlier": timezone.now() + timedelta(hours=1)}
    try:
        # When the VEN polls
        with caplog.at_level(logging.WARNING, logger="vpp.utility.openadr3"):
            await asyncio.wait_for(ven.poll(), 20)
    finally:
        await ven.http.aclose()
    # Then it stopped at the second page (nothing new on it), kept each object once, and logged it
    assert gets == [0, PAGE]
    assert any("repeats what was listed" in r.getMessage() for r in caplog.records)
    # And the event it did not get to read is not taken as deleted by the VTN
    assert "earlier" not in cancelled
    assert "earlier" in ven._listed


async def test_a_listing_cut_short_forgets_the_events_that_have_ended() -> None:
    # Given a VEN that remembers an event which has ended and one still to come
    program = await sync_to_async(_program)()
    transport = _vtn(lambda skip: [{"id": f"e{n}"} for n in range(PAGE)], [])
    ven = Ven3(program, runs=EventRuns(), credentials=Credentials(None, None, None, "s"), transport=transport)
    ven._listed = {"ended": timezone.now() - timedelta(minutes=1), "coming": timezone.now() + timedelta(hours=1)}
    try:
        # When a poll's listing is cut short (a VTN repeating its page)
        await asyncio.wait_for(ven.poll(), 20)
    finally:
        await ven.http.aclose()
    # Then the ended event is forgotten (it can no longer be withdrawn), the one to come is kept
    assert "ended" not in ven._listed
    assert "coming" in ven._listed
