"""The OCSP client's outbound side, against the standard library's HTTP server on loopback: which URLs it asks,
how much it reads, and what one station (or all of them) can make it do: one HTTP client per event loop, at most
a few responders per message, a few lookups in flight per station and in total, failing responders left alone for a
while, and name lookups that cannot tie up the default executor."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.test import override_settings

from chargers.handlers import plug_and_charge
from chargers.jobs import StationRef
from chargers.pki import ocsp_client
from tests.chargers.mo_pki import certificate, mo_sub_ca, ocsp_request_data

LOOPBACK = ["127.0.0.0/8"]


class _Answering(http.server.BaseHTTPRequestHandler):
    """A plain HTTP server (the standard library's) that answers every POST with ``status`` and ``body`` after
    holding it ``hold`` seconds, and counts the POSTs and the most it held at once."""

    body = b""
    status = 200
    hold = 0.0
    posts = 0
    held = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.posts += 1
            cls.held += 1
            cls.most = max(cls.most, cls.held)
        try:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if cls.hold:
                time.sleep(cls.hold)
            self.send_response(cls.status)
            self.send_header("Content-Type", "application/ocsp-response")
            self.end_headers()  # no Content-Length: the body runs to the close, and only the client's limit stops it
            self.wfile.write(cls.body)
        finally:
            with cls.lock:
                cls.held -= 1

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def loopback_server() -> Iterator[tuple[str, type[_Answering]]]:
    handler = type("Handler", (_Answering,), {"body": b"ok", "posts": 0, "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ocsp", handler
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fresh_answers() -> Iterator[None]:
    """Kept answers and failures from other tests (whose loopback ports may come round again) are forgotten."""
    plug_and_charge.ANSWERS.forget()
    yield
    plug_and_charge.ANSWERS.forget()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/ocsp", "file:///etc/passwd", "http://:80/", "not a url"])
async def test_the_client_asks_only_http_and_https_urls(url: str) -> None:
    with pytest.raises(ocsp_client.FetchError):
        await ocsp_client.http_post(url, b"", content_type="x/y", accept="x/y", within_s=1, limit=10)


async def test_a_station_given_url_on_this_network_is_never_asked(loopback_server) -> None:
    # Given a responder on loopback (as cloud metadata or an internal service would be) and no networks allowed
    url, handler = loopback_server
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=[]):
        # When a station's responderURL names it / Then it is refused without a request
        for target in (url, url.replace("127.0.0.1", "localhost"), "http://169.254.169.254/latest/meta-data"):
            with pytest.raises(ocsp_client.FetchError, match="not a public address"):
                await ocsp_client.http_post(target, b"q", content_type="x/y", accept="x/y", within_s=2, limit=10)
        # And the operator's own settings (the contract-certificate provider) are still asked
        trusted = await ocsp_client.http_post(
            url, b"q", content_type="x/y", accept="x/y", within_s=2, limit=10, untrusted=False
        )
    assert trusted == b"ok"
    assert handler.posts == 1


async def test_an_allowed_network_is_asked_and_an_answer_over_the_limit_is_cut_off(loopback_server) -> None:
    # Given a responder on an allowed network that answers with more than the client takes
    url, handler = loopback_server
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK):
        assert await ocsp_client.http_post(url, b"q", content_type="x/y", accept="x/y", within_s=2, limit=10) == b"ok"
        handler.body = b"x" * 100_000
        # When it is asked with a limit below that / Then the answer is refused, not read whole
        with pytest.raises(ocsp_client.FetchError, match="larger than"):
            await ocsp_client.http_post(url, b"q", content_type="x/y", accept="x/y", within_s=2, limit=1000)


async def test_one_http_client_serves_every_request_on_an_event_loop(
    loopback_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given httpx's client counted as it is made (each one builds an SSL context: tens of ms on the event loop)
    url, handler = loopback_server
    made: list[object] = []

    class Counted(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ocsp_client.httpx, "AsyncClient", Counted)
    # When three responders' requests (pinned to the checked address) and the provider's go out on this loop
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK):
        for untrusted in (True, True, True, False):
            await ocsp_client.http_post(url, b"q", content_type="x/y", accept="x/y", within_s=2, limit=10,
                                        untrusted=untrusted)  # fmt: skip
    # Then all four were sent, through one client
    assert handler.posts == 4
    assert len(made) == 1


async def test_a_slow_name_server_never_ties_up_the_default_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a name server that does not answer for *.slow.test (and answers as usual for everything else)
    release, real = threading.Event(), socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".slow.test"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # When stations name forty responders there, more than the default executor has threads (at most 32)
    posts = [
        asyncio.create_task(
            ocsp_client.http_post(
                f"http://r{n}.slow.test/ocsp", b"q", content_type="x/y", accept="x/y", within_s=30, limit=10
            )
        )
        for n in range(40)
    ]
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        # Then the default executor still runs other work at once
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "free"), 10) == "free"
        # And the look-ups beyond the pending bound were refused straight away, not queued
        refused = [task for task in posts if task.done()]
        assert len(refused) == 40 - ocsp_client.RESOLVES_PENDING_MAX
        for task in refused:
            with pytest.raises(ocsp_client.FetchError, match="name look-ups pending"):
                task.result()
    finally:
        release.set()
        for task in posts:
            task.cancel()
        await asyncio.gather(*posts, return_exceptions=True)


def _chain_status_request(urls: list[str]) -> dict[str, Any]:
    """One certificateStatusRequests entry about a fresh contract certificate, asked at ``urls``."""
    mo = mo_sub_ca()
    data = ocsp_request_data(certificate("DEMOA1", issuer=mo).cert, mo.cert, "")
    del data["responderURL"]
    return {"source": "OCSP", "urls": urls, "certificateHashData": data}


def _station(n: int) -> StationRef:
    return StationRef(pk=n, station_id=f"cs-outbound-{n}", version="2.1")


async def test_one_message_asks_at_most_four_responders(loopback_server) -> None:
    # Given a responder that answers nothing usable, and a GetCertificateChainStatus naming four certificates with
    # five URLs each (the schema's most: twenty)
    url, handler = loopback_server
    requests = [_chain_status_request([f"{url}/{n}/{k}" for k in range(5)]) for n in range(4)]
    # When it is answered
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK):
        answer = await plug_and_charge.chain_status_prefetch(_station(1), {"certificateStatusRequests": requests})
    # Then four requests went out, and every entry is Failed
    assert handler.posts == 4
    assert answer is not None
    assert [entry["status"] for entry in answer["certificateStatus"]] == ["Failed"] * 4


async def test_a_station_has_at_most_its_share_of_lookups_in_flight(loopback_server) -> None:
    # Given a responder that holds each request a moment, and one look-up in flight per station
    url, handler = loopback_server
    handler.hold = 0.2
    requests = [_chain_status_request([f"{url}/{n}"]) for n in range(3)]
    # When one station's message names three certificates there
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK, PKI_OCSP_LOOKUPS_PER_STATION=1):
        await plug_and_charge.chain_status_prefetch(_station(2), {"certificateStatusRequests": requests})
    # Then all three were asked, one after the other
    assert handler.posts == 3
    assert handler.most == 1


async def test_all_stations_together_have_at_most_the_total_of_lookups_in_flight(loopback_server) -> None:
    # Given a responder that holds each request a moment, and two look-ups in flight in all
    url, handler = loopback_server
    handler.hold = 0.2
    payloads = [{"certificateStatusRequests": [_chain_status_request([f"{url}/{n}/{k}"]) for k in range(2)]}
                for n in range(3)]  # fmt: skip
    # When three stations each send a message naming two certificates there, at the same time
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK, PKI_OCSP_LOOKUPS_TOTAL=2):
        await asyncio.gather(*(plug_and_charge.chain_status_prefetch(_station(10 + n), payload)
                               for n, payload in enumerate(payloads)))  # fmt: skip
    # Then all six were asked, never more than two at once
    assert handler.posts == 6
    assert handler.most == 2


async def test_a_failing_responder_is_not_asked_again_for_a_while(loopback_server) -> None:
    # Given a responder that answers HTTP 503
    url, handler = loopback_server
    handler.status = 503
    mo = mo_sub_ca()
    contracts = [certificate("DEMOA1", issuer=mo).cert for _ in range(2)]
    # When two Authorize messages, about two certificates, name it
    with override_settings(PKI_OUTBOUND_ALLOWED_NETWORKS=LOOPBACK):
        answers = [
            await plug_and_charge.authorize_prefetch(
                _station(3), {"iso15118CertificateHashData": [ocsp_request_data(contract, mo.cert, url)]}
            )
            for contract in contracts
        ]
    # Then it was asked once; the second is refused at once, saying why
    assert handler.posts == 1
    assert [answer["certificateStatus"] for answer in answers if answer] == ["CertChainError"] * 2
    assert answers[1] is not None
    assert "HTTP 503" in answers[1]["reasons"][0]
