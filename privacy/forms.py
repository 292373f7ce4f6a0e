from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import normalize_email


class AccountDeleteForm(forms.Form):
    confirmation = forms.CharField(
        label="Type your email address to confirm",
        max_length=254,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.email = email

    def clean_confirmation(self) -> str:
        typed = normalize_email(self.cleaned_data["confirmation"])
        if typed != normalize_email(self.email):
            raise forms.ValidationError("That is not your email address. Type it exactly.")
        return typed
