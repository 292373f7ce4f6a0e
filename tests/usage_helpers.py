"""Helpers for the usage tests."""

from __future__ import annotations

from usage.models import ModelPrice


def price(preset, model, *, input=3.0, output=15.0, cache_read=0.3, cache_write=None):
    """Set a model's price, in USD per million tokens."""

    def micro(value):
        return None if value is None else round(value * 1_000_000)

    ModelPrice.objects.update_or_create(
        preset=preset,
        model=model,
        defaults={
            "input_per_mtok": micro(input),
            "output_per_mtok": micro(output),
            "cache_read_per_mtok": micro(cache_read),
            "cache_write_per_mtok": micro(cache_write),
        },
    )
