from django.db import migrations


def load(apps, schema_editor):
    from decimal import Decimal

    from usage.prices import shipped_prices

    ModelPrice = apps.get_model("usage", "ModelPrice")

    def micro(value):
        return int(Decimal(str(value)) * 1_000_000)

    for entry in shipped_prices():
        ModelPrice.objects.update_or_create(
            preset=entry["preset"],
            model=entry["model"],
            defaults={
                "input_per_mtok": micro(entry["input"]),
                "output_per_mtok": micro(entry["output"]),
                "cache_read_per_mtok": micro(entry["cache_read"])
                if "cache_read" in entry
                else None,
                "cache_write_per_mtok": micro(entry["cache_write"])
                if "cache_write" in entry
                else None,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
