from django.db import migrations


def seed(apps, schema_editor):
    from markets.defaults import ensure_defaults

    ensure_defaults(
        apps.get_model("markets", "MarketOperator"),
        apps.get_model("markets", "DepotSite"),
        apps.get_model("markets", "Product"),
    )


def create_group(apps, schema_editor):
    """The "bidding admin" group carries markets.bid_admin; permissions are created after migrate, so make it here."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    content_type, _ = ContentType.objects.get_or_create(app_label="markets", model="bid")
    perm, _ = Permission.objects.get_or_create(
        codename="bid_admin",
        content_type=content_type,
        defaults={"name": "Can prepare, approve and submit market bids"},
    )
    group, _ = Group.objects.get_or_create(name="bidding admin")
    group.permissions.add(perm)


class Migration(migrations.Migration):
    dependencies = [
        ("markets", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(seed, migrations.RunPython.noop),
        migrations.RunPython(create_group, migrations.RunPython.noop),
    ]
