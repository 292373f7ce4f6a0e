from __future__ import annotations

from django import forms

from accounts.models import User
from keys.models import ProviderKey


class KeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ProviderKey) -> str:
        # A key labelled after its provider (the default) names the provider once.
        if obj.label == obj.preset_name:
            return f"{obj.label} ({obj.fingerprint})"
        return f"{obj.label} · {obj.preset_name} ({obj.fingerprint})"


class NewConversationForm(forms.Form):
    key = KeyChoiceField(
        queryset=ProviderKey.objects.none(),
        label="Key",
        empty_label=None,
        to_field_name="pk",
    )
    model = forms.CharField(
        max_length=200,
        label="Model",
        widget=forms.TextInput(
            attrs={"list": "model-options", "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text="Pick a suggestion or type any model id your key can use.",
    )
    system_prompt = forms.CharField(
        required=False,
        label="System prompt",
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "Optional: how the assistant should behave"}
        ),
    )
    temporary = forms.BooleanField(
        required=False, label="Temporary chat", help_text="Deleted 24 hours after its last message."
    )

    def __init__(self, *args: object, owner: User, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        field = self.fields["key"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = (
            ProviderKey.objects.for_owner(owner).usable().order_by("preset", "priority")
        )


class MessageForm(forms.Form):
    text = forms.CharField(strip=True, widget=forms.Textarea(attrs={"rows": 2}))


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200)


class VersionForm(forms.Form):
    """Which version of a message to show (1 is the oldest); the service checks the range."""

    version = forms.IntegerField(min_value=1, max_value=100_000)
