"""The 2030.5 client stays on the configured server: every href a server lists (EndDevices, FSAs, DERPrograms,
DERControls, the DER status to PUT, a control's replyTo, a Location) that leads to another scheme, host or port is
refused with a log line, the status says so, and nothing is sent there (``sep_server``, real TLS)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import sync_to_async

from tests.live import free_port
from tests.vpp.utility.sep_server import SepServer
from tests.vpp.utility.test_csip import Pki, _program, sep  # noqa: F401 (sep: the fixture)
from tests.vpp.utility.test_openadr2 import _wait_for
from vpp.utility.csip import REFUSED_LOGGED_MAX, Csip, CsipError
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import UtilityProgram
from vpp.utility.selectors import Credentials

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
REFUSED = "refused a link off the configured server"


def _recorded(client: Csip) -> list[str]:
    """Every URL the client sends a request to (its TLS and certificate go wherever these point)."""
    sent: list[str] = []
    send = client.http.send

    async def recording(request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(str(request.url))
        return await send(request, **kwargs)

    client.http.send = recording  # type: ignore[method-assign]
    return sent


def _origins(urls: list[str]) -> set[str]:
    return {urlsplit(url).netloc for url in urls} | {urlsplit(url).scheme for url in urls}


@pytest.mark.parametrize(
    "link", ["FunctionSetAssignmentsListLink", "DERProgramListLink", "DERControlListLink", "DERStatusLink",
             "replyTo", "Location"],
)  # fmt: skip
async def test_a_link_to_another_port_is_refused_and_nothing_is_sent_there(
    sep: tuple[SepServer, Pki],  # noqa: F811
    link: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that lists one of its links on another port of its host
    server, pki = sep
    elsewhere = f"https://127.0.0.1:{free_port()}/stolen"
    server.foreign[link] = elsewhere
    server.add_control("B1" * 16, datetime.now(UTC) + timedelta(minutes=5), 60, opModExpLimW=2_000)
    program = await sync_to_async(_program)(server.url)
    client = Csip(program, runs=(runs := EventRuns()), credentials=Credentials(pki.client_cert, pki.client_key,
                                                                                pki.ca, None))  # fmt: skip
    sent = _recorded(client)
    with caplog.at_level(logging.WARNING, logger="vpp.utility.csip"):
        try:
            # When the client starts, polls and reports
            assert await client.start()

            def refused() -> bool:
                return UtilityProgram.objects.filter(pk=program.pk, last_error__contains=REFUSED).exists()

            await _wait_for(refused)
        finally:
            await runs.stop()
            await client.stop()
    # Then nothing went to the other port, the status says why, and the log has it
    assert sent
    assert _origins(sent) == _origins([server.url])
    assert any("/stolen" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "where", ["https://localhost:{port}/edev", "http://127.0.0.1:{port}/edev", "https://127.0.0.1:{other}/edev",
              "//127.0.0.2:{port}/edev"],
)  # fmt: skip
async def test_an_end_device_list_on_another_host_scheme_or_port_stops_the_start(
    sep: tuple[SepServer, Pki],  # noqa: F811
    where: str,
) -> None:
    # Given a DeviceCapability whose EndDeviceListLink leaves the server (by name, scheme, port or address)
    server, pki = sep
    port = urlsplit(server.url).port
    server.foreign["EndDeviceListLink"] = where.format(port=port, other=free_port())
    program = await sync_to_async(_program)(server.url)
    client = Csip(program, runs=EventRuns(), credentials=Credentials(pki.client_cert, pki.client_key, pki.ca, None))
    sent = _recorded(client)
    # When it starts: it does not, the status says why, and only the DeviceCapability was read
    assert not await client.start()
    await program.arefresh_from_db()
    assert program.last_error == f"2030.5: {REFUSED}: {server.foreign['EndDeviceListLink']}?l=255"
    assert sent == [server.url]


async def test_the_refused_hrefs_it_remembers_to_log_once_are_bounded(sep: tuple[SepServer, Pki]) -> None:  # noqa: F811
    # Given a client of a server that would list ever new links elsewhere
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    client = Csip(program, runs=EventRuns(), credentials=Credentials(pki.client_cert, pki.client_key, pki.ca, None))
    try:
        # When more distinct foreign hrefs than it remembers are refused
        for n in range(REFUSED_LOGGED_MAX + 5):
            with pytest.raises(CsipError):
                client._url(f"https://elsewhere.example/{n}")
        # Then what it remembers stays within its bound
        assert 0 < len(client._refused) <= REFUSED_LOGGED_MAX
    finally:
        await client.http.aclose()
