from __future__ import annotations

from django import forms

from accounts.models import User
from chat.models import MAX_OUTPUT_TOKENS_LIMIT, TEMPERATURE_MAX, ReasoningEffort
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
    """The composer: the text, and the key and model the turn runs on (the picker's; in a
    conversation, a change switches it for this turn and the next)."""

    text = forms.CharField(strip=True, widget=forms.Textarea(attrs={"rows": 2}))
    key = forms.UUIDField(required=False)
    model = forms.CharField(required=False, max_length=200, strip=True)


class StartForm(MessageForm):
    """The composer of a new chat: the conversation is created by its first message."""

    system_prompt = forms.CharField(required=False, strip=True)
    temporary = forms.BooleanField(required=False)


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200)


class VersionForm(forms.Form):
    """Which version of a message to show (1 is the oldest); the service checks the range."""

    version = forms.IntegerField(min_value=1, max_value=100_000)


class ConversationSettingsForm(forms.Form):
    """What a conversation's next turns are sent. Ranges are checked here; what the model
    can take is the service's rule (`chat.services.conversation_settings_update`)."""

    system_prompt = forms.CharField(
        required=False,
        strip=True,
        label="System prompt",
        widget=forms.Textarea(
            attrs={"rows": 4, "placeholder": "Optional: how the assistant should behave"}
        ),
        help_text="Used from the next reply on.",
    )
    temperature = forms.FloatField(
        required=False,
        min_value=0,
        max_value=TEMPERATURE_MAX,
        label="Temperature",
        widget=forms.NumberInput(
            attrs={"step": "0.05", "inputmode": "decimal", "placeholder": "Provider default"}
        ),
        help_text="0 to 2: lower is steadier, higher more varied. Blank: the provider's default.",
        error_messages={
            "invalid": "Enter a number between 0 and 2, or leave it blank.",
            "min_value": "The temperature must be between 0 and 2.",
            "max_value": "The temperature must be between 0 and 2.",
        },
    )
    max_output_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_OUTPUT_TOKENS_LIMIT,
        label="Reply length limit (tokens)",
        widget=forms.NumberInput(attrs={"step": "1", "inputmode": "numeric"}),
        error_messages={
            "invalid": "Enter a whole number of tokens, or leave it blank.",
            "min_value": f"The limit must be between 1 and {MAX_OUTPUT_TOKENS_LIMIT:,} tokens.",
            "max_value": f"The limit must be between 1 and {MAX_OUTPUT_TOKENS_LIMIT:,} tokens.",
        },
    )
    reasoning_effort = forms.ChoiceField(
        required=False,
        label="Reasoning effort",
        choices=[("", "Model default"), *ReasoningEffort.choices],
        help_text="How much the model thinks before it answers: more is slower and costs more.",
        error_messages={
            "invalid_choice": "Pick a reasoning effort of low, medium or high, or the default."
        },
    )

    def __init__(self, *args: object, default_max_output_tokens: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        field = self.fields["max_output_tokens"]
        field.widget.attrs["placeholder"] = f"Default ({default_max_output_tokens:,})"
        field.help_text = (
            f"Blank: {default_max_output_tokens:,}. Your spend caps may make a reply shorter."
        )
