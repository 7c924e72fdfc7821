"""The 2030.5 / CSIP client when the server sends what it cannot act on: a malformed control is stored refused
(answered 253 invalid) and the others, a cancellation among them, still go through (``sep_server``, real TLS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async

from markets.regulation.models import ReserveDeployment
from tests.vpp.utility.sep_server import SepServer
from tests.vpp.utility.test_csip import Pki, _client, _program, _until, sep  # noqa: F401 (sep: the fixture)
from tests.vpp.utility.test_openadr2 import _wait_for
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, UtilityEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


async def test_a_malformed_control_is_refused_and_the_others_and_a_cancellation_still_go_through(
    sep: tuple[SepServer, Pki],  # noqa: F811
) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        # Given a control under way
        server.add_control("A1" * 16, start, 60, opModFixedW=5_000)

        def deployed(mrid: str) -> bool:
            return ReserveDeployment.objects.filter(event_id__contains=f":{mrid}:").exists()

        await _wait_for(lambda: deployed("A1" * 16))
        # When the server lists, before a good one, a control starting past year 9999 (a valid Int64), and
        # cancels the first
        poison = server.add_control("A2" * 16, start, 60, opModFixedW=5_000)
        poison["start"] = 9_000_000_000_000_000
        server.add_control("A3" * 16, start, 60, opModFixedW=3_000)
        server.cancel("A1" * 16, datetime.now(UTC))

        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(
                event_id__contains=f":{'A1' * 16}:", end__lt=start + timedelta(seconds=60)
            ).exists()

        # Then the good one is deployed, the cancelled one withdrawn
        await _wait_for(lambda: deployed("A3" * 16))
        await _wait_for(withdrawn)
        # And the malformed one is stored refused with the reason and answered received, then invalid (253)
        await _until(lambda: [r["status"] for r in server.responses if r["subject"] == "A2" * 16][-1:] == [253])
    row = await UtilityEvent.objects.aget(program=program, event_ref="A2" * 16)
    assert row.status == EventStatus.REFUSED
    assert row.status_reason.startswith("malformed control: "), row.status_reason
