"""Issue 13: message-id dedup keyed on the payload's digest within a window; columns as wide as the schemas allow.

The unique (station, message id) index goes (ids are unique per connection only); ``payload_sha256`` is backfilled
for the incoming CALLs of the last ``OCPP_RETRANSMIT_WINDOW``, the only rows a retransmit can still be matched to,
so a station retransmitting across the upgrade is answered from the log rather than stored twice.

Not atomic: each step commits on its own and the backfill in batches of 2,000 rows, so the message log is not
locked against the stations' writes for the whole migration (the writer answers InternalError while it waits, and
stations retransmit). The backfill covers the last day only (a retransmit across the upgrade comes within it)
whatever the window is set to: it must not scan weeks of a large log.
"""

import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def payload_digest(payload):
    """chargers.ocpp_j.payload_digest as of this migration (the contract with the edge agent's ledger)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


BACKFILL_S = 86400


def digests_backfill(apps, schema_editor):
    MessageLog = apps.get_model("chargers", "MessageLog")
    since = timezone.now() - timedelta(seconds=min(settings.OCPP_RETRANSMIT_WINDOW, BACKFILL_S))
    rows = MessageLog.objects.filter(
        direction="in", message_type=2, created_at__gte=since, payload__isnull=False, payload_sha256=""
    ).only("pk", "payload")
    batch = []
    for row in rows.iterator(chunk_size=2000):
        row.payload_sha256 = payload_digest(row.payload)
        batch.append(row)
        if len(batch) >= 2000:
            MessageLog.objects.bulk_update(batch, ["payload_sha256"])
            batch = []
    MessageLog.objects.bulk_update(batch, ["payload_sha256"])


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('chargers', '0002_stationcommand'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='messagelog',
            name='messagelog_unique_incoming_call',
        ),
        migrations.AddField(
            model_name='messagelog',
            name='payload_sha256',
            field=models.CharField(blank=True, default='', help_text='incoming CALL: hex SHA-256 of the payload as received (chargers.ocpp_j.payload_digest)', max_length=64),
        ),
        migrations.RunPython(digests_backfill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name='chargingprofile',
            name='purpose',
            field=models.CharField(help_text='ChargingProfilePurposeEnumType (up to 34 characters)', max_length=40),
        ),
        migrations.AlterField(
            model_name='metervalue',
            name='unit',
            field=models.CharField(help_text="stored unit, or the station's own (schema: up to 20 characters)", max_length=20),
        ),
        migrations.AlterField(
            model_name='stationevent',
            name='kind',
            field=models.CharField(choices=[('Connected', 'Connected'), ('Disconnected', 'Disconnected'), ('HeartbeatTimeout', 'Heartbeat Timeout'), ('Replaced', 'Replaced'), ('Booted', 'Booted'), ('NotifyEvent', 'Notify Event'), ('SecurityEvent', 'Security Event'), ('FirmwareStatus', 'Firmware Status'), ('LogStatus', 'Log Status'), ('ChargingLimit', 'Charging Limit'), ('ChargingLimitCleared', 'Charging Limit Cleared'), ('DataTransfer', 'Data Transfer'), ('DERStartStop', 'Der Start Stop'), ('ReservationStatus', 'Reservation Status'), ('Registration', 'Registration'), ('Other', 'Other')], max_length=24),
        ),
        migrations.AddIndex(
            model_name='messagelog',
            index=models.Index(condition=models.Q(('direction', 'in'), ('error_code', ''), ('message_type', 2)), fields=['station', 'message_id', 'created_at'], name='messagelog_incoming_call'),
        ),
    ]
