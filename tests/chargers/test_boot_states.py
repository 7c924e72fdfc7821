"""Registration states (OCPP 2.0.1/2.1 B02, B03): a Pending or Rejected station's own CALLs other than
BootNotification get SecurityError; what the CSMS asked a Pending station for is accepted; an operator accepts it."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from chargers.handlers.provisioning import boot_refusal_check, boot_triggers
from chargers.models import BootStatus, MessageLog, Station, StationEvent
from chargers.ocpp_j import OcppError
from chargers.services.provisioning import station_accept
from tests.chargers.conftest import raw_station
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import COMMON


@pytest.mark.parametrize(
    ("status", "action", "triggered", "refused"),
    [
        (BootStatus.ACCEPTED, "StatusNotification", set(), False),
        (BootStatus.PENDING, "BootNotification", set(), False),
        (BootStatus.PENDING, "StatusNotification", set(), True),  # B02.FR.09
        (BootStatus.PENDING, "NotifyEvent", set(), True),
        (BootStatus.PENDING, "StatusNotification", {"StatusNotification"}, False),  # triggered by the CSMS
        (BootStatus.PENDING, "NotifyReport", {"NotifyReport"}, False),  # asked for by GetBaseReport
        (BootStatus.REJECTED, "StatusNotification", {"StatusNotification"}, True),  # B03.FR.07: no exception
        (BootStatus.REJECTED, "BootNotification", set(), False),
    ],
)
def test_only_boot_and_what_the_csms_asked_for_pass_before_acceptance(status, action, triggered, refused):
    if not refused:
        boot_refusal_check(status, action, triggered, "m-1")
        return
    with pytest.raises(OcppError) as caught:
        boot_refusal_check(status, action, triggered, "m-1")
    assert (caught.value.code, caught.value.message_id) == ("SecurityError", "m-1")


def test_the_csms_calls_that_let_a_pending_station_send_name_what_they_ask_for():
    assert boot_triggers("TriggerMessage", {"requestedMessage": "StatusNotification"}) == {"StatusNotification"}
    assert boot_triggers("TriggerMessage", {"requestedMessage": "SignV2GCertificate"}) == {"SignCertificate"}
    assert boot_triggers("GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"}) == {"NotifyReport"}
    assert boot_triggers("Reset", {"type": "Immediate"}) == set()


def _status(message_id: str) -> list:
    return [2, message_id, "StatusNotification", COMMON["StatusNotification"]]


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
async def test_a_pending_station_is_refused_until_accepted_and_accepted_at_its_next_boot(live_csms):
    # Given a station provisioned Pending
    station = await sync_to_async(StationFactory.create)(boot_status=BootStatus.PENDING)
    boot = [2, "b-1", "BootNotification", COMMON["BootNotification"]]
    async with raw_station(live_csms, station.station_id) as cs:
        assert (await cs.rpc(boot))[2]["status"] == "Pending"
        # When it sends its own StatusNotification and NotifyEvent / Then each gets SecurityError, nothing stored
        assert (await cs.rpc(_status("s-1")))[:3] == [4, "s-1", "SecurityError"]
        assert (await cs.rpc([2, "e-1", "NotifyEvent", COMMON["NotifyEvent"]]))[:3] == [4, "e-1", "SecurityError"]
    assert not await StationEvent.objects.filter(station=station, kind="NotifyEvent").aexists()
    codes = {row.error_code async for row in MessageLog.objects.filter(station=station, message_id__in=["s-1", "e-1"])}
    assert codes == {"SecurityError"}
    # And when an operator accepts it (offline meanwhile), its next boot is Accepted and it may send again
    result = await sync_to_async(station_accept)(station_id=station.station_id, actor_user_id=None, actor_label="ops")
    assert (result.previous, result.triggered) == ("Pending", False)
    async with raw_station(live_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "b-2", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Accepted"
        assert await cs.rpc(_status("s-2")) == [3, "s-2", {}]
    event = await StationEvent.objects.aget(station=station, kind="Registration")
    assert event.summary == "Pending -> Accepted by ops"


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="the test process reaches the server's sockets only through Redis")
async def test_accepting_an_online_pending_station_asks_it_to_boot_again_now(live_csms):
    # Given a Pending station, connected and booted
    station = await sync_to_async(StationFactory.create)(boot_status=BootStatus.PENDING)
    async with raw_station(live_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "b-1", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Pending"
        # When an operator accepts it
        accepting = asyncio.create_task(
            sync_to_async(station_accept)(station_id=station.station_id, actor_user_id=None, actor_label="ops")
        )
        # Then the station is asked for a BootNotification (TriggerMessage, the B02 way) and, booting, is Accepted
        trigger = await cs.recv()
        assert trigger[2:] == ["TriggerMessage", {"requestedMessage": "BootNotification"}]
        await cs.send([3, trigger[1], {"status": "Accepted"}])
        assert (await accepting).triggered
        assert (await cs.rpc([2, "b-2", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Accepted"
        assert await cs.rpc(_status("s-1")) == [3, "s-1", {}]
    assert (await Station.objects.aget(pk=station.pk)).boot_status == "Accepted"


@pytest.mark.django_db
def test_only_staff_who_may_change_stations_get_the_accept_action(rf):
    # Given a staff user who may only view stations, and one who may change them
    from django.contrib.admin.sites import site
    from django.contrib.auth.models import Permission, User

    from chargers.models import Station

    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_station"))
    changer = User.objects.create_user("changer", is_staff=True)
    changer.user_permissions.add(Permission.objects.get(codename="change_station"))
    model_admin = site._registry[Station]
    actions = {}
    for user in (viewer, changer):
        request = rf.get("/admin/chargers/station/")
        request.user = User.objects.get(pk=user.pk)  # fresh: permissions are cached per instance
        actions[user.username] = set(model_admin.get_actions(request))
    # Then only the one who may change stations can accept them (and so command them to reboot)
    assert "accept" not in actions["viewer"]
    assert "accept" in actions["changer"]
