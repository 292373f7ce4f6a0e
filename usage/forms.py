from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import forms


class CapForm(forms.Form):
    limit = forms.CharField(
        label="Monthly cap (USD)",
        max_length=20,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "e.g. 25"}),
    )
    confirm_raise = forms.BooleanField(
        required=False,
        label="Yes, raise the cap",
        help_text="Raising a cap lets this month's spend go higher.",
    )

    def clean_limit(self) -> int:
        raw = self.cleaned_data["limit"].strip().lstrip("$").replace(",", "")
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise forms.ValidationError("Enter an amount in dollars, like 25 or 12.50.") from None
        if not value.is_finite() or value <= 0:
            raise forms.ValidationError("A cap must be more than $0. To remove a cap, use Remove.")
        if value > 1_000_000:
            raise forms.ValidationError("A cap can be at most $1,000,000 a month.")
        return int(value * 1_000_000)


class UsagePreferencesForm(forms.Form):
    allow_unknown_prices = forms.BooleanField(
        required=False,
        label="Allow models with an unknown price when a cap applies",
        help_text="Their cost cannot be counted against your caps.",
    )
