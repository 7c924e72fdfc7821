"""Bidding pages and API: an authorised bidding admin works, others are refused."""

from __future__ import annotations

from markets.models import Bid


def test_the_bidding_page_renders_for_a_bidding_admin(client, bidding_admin, bid_factory) -> None:
    bid = bid_factory()
    client.force_login(bidding_admin)
    day = bid.interval_start.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).date()
    response = client.get(f"/markets/pjm/{day}/")
    assert response.status_code == 200
    assert bid.external_ref in response.content.decode()
    assert "plotly/plotly.min.js" in response.content.decode()


def test_the_bidding_page_refuses_anonymous_and_unauthorised_users(client, plain_user) -> None:
    assert client.get("/markets/bidding/").status_code == 302
    client.force_login(plain_user)
    assert client.get("/markets/bidding/").status_code == 403


def test_an_admin_approves_from_the_page_and_a_bad_edit_is_refused(client, bidding_admin, bid_factory) -> None:
    bid = bid_factory()
    client.force_login(bidding_admin)
    assert client.post("/markets/bids/action/", {"action": "approve", "bid": [bid.id]}).status_code == 302
    assert Bid.objects.get(pk=bid.id).status == Bid.Status.APPROVED
    r = client.post(f"/markets/bids/{bid.id}/edit/", {"quantity_kw": "150", "price": "3", "version": "2"})
    assert r.status_code == 409
    assert "multiple" in r.content.decode()


def test_the_api_needs_authentication_and_the_permission_to_write(client, plain_user, bidding_admin, bid_factory):
    bid = bid_factory()
    assert client.get("/api/markets/bids/").status_code in (401, 403)
    client.force_login(plain_user)  # no bidding role: neither reads nor writes
    assert client.get("/api/markets/bids/").status_code == 403
    r = client.post(
        f"/api/markets/bids/{bid.id}/transition/", {"to_status": "approved"}, content_type="application/json"
    )
    assert r.status_code == 403
    client.force_login(bidding_admin)
    r = client.post(
        f"/api/markets/bids/{bid.id}/transition/", {"to_status": "approved"}, content_type="application/json"
    )
    assert r.json()["status"] == "approved"
    r = client.post(
        f"/api/markets/bids/{bid.id}/transition/", {"to_status": "approved"}, content_type="application/json"
    )
    assert r.status_code == 400


def test_the_api_edits_a_bid_and_refuses_a_stale_version(client, bidding_admin, bid_factory) -> None:
    # given a fresh draft bid (version 1) and a bidding admin
    bid = bid_factory()
    client.force_login(bidding_admin)
    url = f"/api/markets/bids/{bid.id}/edit/"
    # when the admin edits it on the current version, then the stored bid comes back one version on
    r = client.post(url, {"quantity_w": 600_000, "price": "12.5", "version": 1}, content_type="application/json")
    assert r.status_code == 200
    assert (r.json()["quantity_w"], Bid.objects.get(pk=bid.id).version) == (600_000, 2)
    # and an edit made on the old version is refused as a conflict, leaving the bid as it was
    r = client.post(url, {"quantity_w": 700_000, "price": "12.5", "version": 1}, content_type="application/json")
    assert r.status_code == 409
    assert "changed meanwhile" in r.json()["detail"]
    assert Bid.objects.get(pk=bid.id).quantity_w == 600_000
