from __future__ import annotations

from django import forms
from django.conf import settings

from providers.catalog import PRESETS


def preset_choices() -> list[tuple[str, str]]:
    """The providers to offer; the local demo only where it runs (development)."""
    return [("", "Choose a provider…")] + [
        (slug, preset.name)
        for slug, preset in PRESETS.items()
        if slug != "demo" or settings.BYOK_DEMO_PROVIDER
    ]


class SecretField(forms.CharField):
    """A pasted API key: a password input that never renders its value back."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("strip", True)
        kwargs.setdefault(
            "widget",
            forms.PasswordInput(
                render_value=False,
                attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "off"},
            ),
        )
        super().__init__(**kwargs)  # type: ignore[arg-type]


class ProviderKeyAddForm(forms.Form):
    preset = forms.ChoiceField(label="Provider", choices=preset_choices)
    label = forms.CharField(
        max_length=80,
        required=False,
        help_text="A name to tell your keys apart, like “Work” or “Personal”. Optional.",
    )
    secret = SecretField(
        label="API key",
        required=False,
        max_length=8192,
        help_text=(
            "Encrypted before it is stored. After saving you will only see its last characters."
        ),
    )
    base_url = forms.CharField(
        label="Base URL",
        required=False,
        max_length=500,
        widget=forms.URLInput(attrs={"placeholder": "https://api.example.com/v1"}),
        help_text="Where the OpenAI-compatible API lives, usually ending in /v1.",
    )
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional. BYOK stops using the key after this date.",
    )


class ProviderKeyRenameForm(forms.Form):
    label = forms.CharField(max_length=80)


class ProviderKeyReplaceForm(forms.Form):
    secret = SecretField(label="New API key", max_length=8192)


class ProviderKeyExpiryForm(forms.Form):
    expires_on = forms.DateField(
        label="Expires on", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
