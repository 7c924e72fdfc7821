"""API key authentication of the regulation WebSocket (vpp.intake.auth on fleet.keys)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from fleet.keys import key_from_header
from fleet.models import ApiKey
from fleet.services.accounts import api_key_revoke
from tests.fleet.factories import api_key_for
from vpp.intake import auth


@pytest.fixture(autouse=True)
def _no_cached_verdicts() -> None:
    auth.forget_all()


def test_the_key_comes_from_the_authorization_header_else_the_subprotocol():
    # Given handshakes carrying a key in the header, in the subprotocol list, or nowhere
    header = {"headers": [(b"authorization", b"Api-Key abc.def "), (b"host", b"x")], "subprotocols": ["apikey.zz"]}
    offered = {"headers": [(b"authorization", b"Basic eDp5")], "subprotocols": ["vpp.regulation.v1", "apikey.p.k"]}
    # Then the header wins, the subprotocol is the fallback, and no key is ""
    assert auth.scope_key(header) == "abc.def"
    assert auth.scope_key(offered) == "p.k"
    assert auth.scope_key({"headers": []}) == ""
    # And the server accepts its own protocol, never the key's
    assert (auth.accepted_subprotocol(offered), auth.accepted_subprotocol(header)) == ("vpp.regulation.v1", None)
    assert (key_from_header("Api-Key k"), key_from_header(b"Bearer k"), key_from_header("Api-Key ")) == ("k", "k", "")
    assert (key_from_header("Token k"), key_from_header(None)) == (None, None)


def test_a_key_in_the_query_string_is_refused_even_with_a_good_header():
    scope = {"headers": [(b"authorization", b"Api-Key a.b")], "query_string": b"token=a.b"}
    with pytest.raises(auth.KeyInQueryString):
        auth.scope_key(scope)


@pytest.mark.django_db(transaction=True)
async def test_a_key_names_its_active_user_and_whether_it_may_send_signal_values():
    # Given a user without the permission holding a signal key, and a utility holding a read-only key
    viewer = await sync_to_async(User.objects.create_user)("viewer", password="a-long-test-password")
    viewer_key = await sync_to_async(api_key_for)(viewer, "signal")
    utility = await sync_to_async(User.objects.create_user)("utility", password="a-long-test-password")
    perm = await Permission.objects.aget(codename="submit_regulation_signal")
    await utility.user_permissions.aadd(perm)
    read_key = await sync_to_async(api_key_for)(utility, "read")
    signal_key = await sync_to_async(api_key_for)(utility, "signal", portfolio="east")
    # Then each verdict says who and whether, and an unknown key is nobody
    assert await auth.key_verdict(viewer_key) == auth.Verdict(viewer.pk, False, "")
    assert await auth.key_verdict(read_key) == auth.Verdict(utility.pk, False, "")
    assert await auth.key_verdict(signal_key) == auth.Verdict(utility.pk, True, "east")
    assert await auth.key_verdict("no-such.key") == auth.Verdict(None, False)


@pytest.mark.django_db(transaction=True)
async def test_a_revoked_key_stops_once_its_cached_verdict_is_older_than_the_ttl(monkeypatch):
    # Given a utility's key, verified once (cached)
    utility = await sync_to_async(User.objects.create_user)("utility", password="a-long-test-password")
    await utility.user_permissions.aadd(await Permission.objects.aget(codename="submit_regulation_signal"))
    raw = await sync_to_async(api_key_for)(utility, "signal")
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    assert (await auth.key_verdict(raw)).allowed
    # When it is revoked, it still passes from memory within the TTL
    key = await ApiKey.objects.aget(prefix=raw.partition(".")[0])
    await sync_to_async(api_key_revoke)(key=key)
    clock[0] += auth.KEY_TTL_S - 1
    assert (await auth.key_verdict(raw)).allowed
    # Then once the TTL has passed it is refused
    clock[0] += 2
    assert await auth.key_verdict(raw) == auth.Verdict(None, False)


@pytest.mark.django_db(transaction=True)
async def test_made_up_keys_are_not_cached(monkeypatch):
    # Given a small cache, when more made-up keys than it holds are tried, then none of them is kept
    monkeypatch.setattr(auth, "CACHE_MAX", 3)
    for n in range(10):
        assert await auth.key_verdict(f"made{n}.up") == auth.Verdict(None, False)
    assert len(auth._verdicts) == 0


@pytest.mark.django_db(transaction=True)
async def test_the_verdict_cache_is_bounded(monkeypatch):
    # Given a small cache, when more real keys than it holds are checked, then it keeps only the newest
    monkeypatch.setattr(auth, "CACHE_MAX", 3)
    for n in range(5):
        user = await sync_to_async(User.objects.create_user)(f"utility{n}", password="a-long-test-password")
        await auth.key_verdict(await sync_to_async(api_key_for)(user, "signal"))
    assert len(auth._verdicts) == 3


@pytest.mark.django_db(transaction=True)
async def test_an_address_past_its_unknown_keys_is_refused_without_a_lookup(monkeypatch, settings):
    # Given a limit of 5 unknown keys per address, and a count of the key lookups made
    settings.API_UNKNOWN_KEYS_PER_ADDRESS = 5
    lookups = []
    real_lookup = auth.aapi_key_user

    async def counted(key):
        lookups.append(key)
        return await real_lookup(key)

    monkeypatch.setattr(auth, "aapi_key_user", counted)
    # When one address tries 50 made-up keys
    for n in range(50):
        assert await auth.key_verdict(f"guess{n}.key", address="203.0.113.9") == auth.Verdict(None, False)
    # Then only the first 5 were looked up, and the address is blocked while another is not
    assert len(lookups) == 5
    assert auth.address_blocked("203.0.113.9")
    assert not auth.address_blocked("203.0.113.10")
    await auth.key_verdict("guess.other", address="203.0.113.10")
    assert len(lookups) == 6


@pytest.mark.django_db(transaction=True)
async def test_an_expired_key_is_nobody():
    utility = await sync_to_async(User.objects.create_user)("utility", password="a-long-test-password")
    raw = await sync_to_async(api_key_for)(utility, "signal")
    await ApiKey.objects.filter(user=utility).aupdate(expiry_date=timezone.now() - timedelta(seconds=1))
    assert await auth.key_verdict(raw) == auth.Verdict(None, False)
