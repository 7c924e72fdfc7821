"""Interval data parsers and the upload service: every bad line named, all or nothing, a re-upload stores nothing new,
a corrected value is a new belief, and every upload (refused ones too) is audited."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from markets.models import DepotSite
from markets.peak.interval_data import IntervalDataError, interval_data_parse_csv, interval_data_parse_json
from markets.peak.models import MeterSource, SiteDataUpload, SiteMeterReading
from markets.peak.services import site_interval_data_receive

T0 = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # 00:00 EST


def _csv(*lines: str, header: str = "interval_start,interval_minutes,import_w") -> str:
    return "\n".join([header, *lines]) + "\n"


def test_csv_rows_become_utc_interval_points_in_whole_watts():
    # Given the utility's CSV in local time with offsets, in kW
    text = _csv("2026-12-01T00:00:00-05:00,15,182.4", "2026-12-01T00:15:00-05:00,15,-3.0005",
                header="interval_start,interval_minutes,import_kw")  # fmt: skip
    # When parsed
    points = interval_data_parse_csv(io.StringIO(text))
    # Then each is (UTC start, interval s, W): 182.4 kW = 182,400 W; -3.0005 kW = -3,000.5 W -> -3,000 (half to even)
    assert points == [(T0, 900, 182_400), (T0 + timedelta(minutes=15), 900, -3_000)]


def test_a_csv_is_refused_with_every_bad_line_named():
    # Given a CSV whose 3rd line has no UTC offset and whose 5th has a fractional W and 4th a 90-min interval
    text = _csv(
        "2026-12-01T05:00:00Z,15,100000",
        "2026-12-01T00:15:00,15,100000",
        "2026-12-01T05:30:00Z,90,100000",
        "2026-12-01T05:45:00Z,15,1.5",
    )
    # When parsed; then all three lines are named (the header is line 1), and nothing is returned
    with pytest.raises(IntervalDataError) as refused:
        interval_data_parse_csv(io.StringIO(text))
    assert [where for where, _ in refused.value.errors] == ["line 3", "line 4", "line 5"]
    assert "no UTC offset" in refused.value.errors[0][1]


def test_an_infinite_or_not_a_number_kw_is_refused_on_its_line():
    # Given kW columns holding Infinity and NaN (a spreadsheet's overflow), between good lines
    text = "interval_start,interval_minutes,import_kw\n" + "\n".join(
        ["2026-12-01T05:00:00Z,15,80.5", "2026-12-01T05:15:00Z,15,Infinity", "2026-12-01T05:30:00Z,15,NaN"]
    )
    # When parsed; then both lines are named as not finite (no 500, nothing returned)
    with pytest.raises(IntervalDataError) as refused:
        interval_data_parse_csv(io.StringIO(text))
    assert [where for where, _ in refused.value.errors] == ["line 3", "line 4"]
    assert all("not a finite number" in why for _, why in refused.value.errors)


def test_a_csv_without_the_header_is_refused_on_line_1():
    with pytest.raises(IntervalDataError) as refused:
        interval_data_parse_csv(io.StringIO("start,kw\n2026-12-01T05:00:00Z,3\n"))
    assert refused.value.errors[0][0] == "line 1"


def test_a_json_reading_is_refused_by_its_pointer():
    body = {
        "readings": [
            {"interval_start": "2026-12-01T05:00:00Z", "interval_minutes": 15, "import_w": 5},
            {"interval_start": "2026-12-01T05:15:00Z", "interval_minutes": 15, "import_w": 5, "import_kw": "1"},
            "not an object",
        ]
    }
    with pytest.raises(IntervalDataError) as refused:
        interval_data_parse_json(body)
    assert [where for where, _ in refused.value.errors] == ["#/readings/1", "#/readings/2"]


def test_the_same_interval_twice_in_one_upload_is_refused():
    text = _csv("2026-12-01T05:00:00Z,15,1", "2026-12-01T00:00:00-05:00,15,2")  # the same instant, twice
    with pytest.raises(IntervalDataError, match="twice"):
        interval_data_parse_csv(io.StringIO(text))


@pytest.fixture
def site(db: None) -> DepotSite:
    return DepotSite.objects.create(code="depot-up", name="Upload depot", threshold_w=100_000, demand_charge=Decimal(0))


def _receive(site: DepotSite, body: bytes, source: str = MeterSource.CSV, at: datetime = T0 + timedelta(days=1)):
    return site_interval_data_receive(
        site=site, body=body, source=source, filename="dec.csv", actor_user_id=None, actor_label="alice", now=at
    )


def test_an_upload_with_one_bad_line_stores_nothing_and_is_audited_as_refused(site):
    # Given 96 good lines and one bad one (line 50)
    lines = [f"{(T0 + timedelta(minutes=15 * k)).isoformat()},15,{100_000 + k}" for k in range(97)]
    lines[48] = "2026-12-01T17:00:00+00:00,15,lots"
    # When it is uploaded
    with pytest.raises(IntervalDataError) as refused:
        _receive(site, _csv(*lines).encode())
    # Then nothing is stored, and the refusal is recorded with the line it names
    assert refused.value.errors[0][0] == "line 50"
    assert SiteMeterReading.objects.count() == 0
    audit = SiteDataUpload.objects.get()
    assert (audit.outcome, audit.created, audit.errors[0][0]) == (SiteDataUpload.Outcome.REFUSED, 0, "line 50")


def test_a_re_upload_stores_nothing_new_and_a_corrected_value_is_a_new_belief(site):
    # Given a day of 15-min interval data, uploaded once
    lines = [f"{(T0 + timedelta(minutes=15 * k)).isoformat()},15,{100_000 + k}" for k in range(96)]
    body = _csv(*lines).encode()
    first, stored = _receive(site, body)
    assert (stored.read, stored.created, stored.unchanged) == (96, 96, 0)
    # When the same file comes again a day later
    again, repeated = _receive(site, body, at=T0 + timedelta(days=2))
    # Then nothing new is stored, and both uploads are audited as accepted
    assert (repeated.created, repeated.unchanged) == (0, 96)
    assert SiteMeterReading.objects.count() == 96
    assert (again.outcome, again.created, again.sha256) == (SiteDataUpload.Outcome.ACCEPTED, 0, first.sha256)
    # When the utility corrects one interval
    lines[10] = f"{(T0 + timedelta(minutes=150)).isoformat()},15,123456"
    _, corrected = _receive(site, _csv(*lines).encode(), at=T0 + timedelta(days=3))
    # Then that interval gets a new belief, the old one is kept, and the readings name their upload
    assert corrected.created == 1
    beliefs = SiteMeterReading.objects.filter(start=T0 + timedelta(minutes=150)).order_by("belief_time")
    assert [r.import_w for r in beliefs] == [100_010, 123_456]
    assert beliefs[0].source_ref == f"upload {first.pk} by alice"


def test_a_spreadsheet_csv_with_a_byte_order_mark_is_read(site):
    body = "\ufeff".encode() + _csv("2026-12-01T05:00:00Z,15,42").encode()
    _, stored = _receive(site, body)
    assert SiteMeterReading.objects.get().import_w == 42
    assert stored.created == 1


def test_bytes_that_are_not_utf8_or_not_json_are_refused(site):
    with pytest.raises(IntervalDataError, match="not UTF-8"):
        _receive(site, b"interval_start\xff\xfe")
    with pytest.raises(IntervalDataError, match="not JSON"):
        _receive(site, b"{readings: []", source=MeterSource.JSON)
    assert list(SiteDataUpload.objects.values_list("outcome", flat=True)) == ["refused", "refused"]
