from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm

from accounts.models import AUDIT_CATEGORIES, User, normalize_email


class SignupForm(forms.Form):
    email = forms.EmailField(
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Confirm password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(
                "An account with this email address already exists. Log in, or reset your "
                "password if you forgot it."
            )
        return email

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password1 = cleaned.get("password1")
        password2 = cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords do not match.")
        elif password1:
            candidate = User(email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password1, candidate)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned


RESET_EMAIL_TEMPLATE = "accounts/email/password_reset.txt"
RESET_SUBJECT_TEMPLATE = "accounts/email/password_reset_subject.txt"


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's reset form, for every active account with the address.

    Django leaves out accounts without a usable password (meant for outside log-ins); here
    that is an account an operator created, whose owner sets a password from this link.
    """

    def get_users(self, email: str) -> Any:
        return User.objects.filter(email__iexact=normalize_email(email), is_active=True)


class EmailAuthenticationForm(AuthenticationForm):
    """Django's login form, labelled for email and with one message for every failure."""

    username = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    error_messages = {
        "invalid_login": "That email and password do not match an account. Check both and try "
        "again.",
        "inactive": "That email and password do not match an account. Check both and try again.",
    }


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["display_name"]
        labels = {"display_name": "Display name"}
        help_texts = {"display_name": "Shown in the header instead of your email address."}


class ChatPreferencesForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["model_titles"]
        labels = {"model_titles": "Let the model write chat titles"}


class OtpTokenField(forms.CharField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("label", "Authentication code")
        kwargs.setdefault("max_length", 64)
        kwargs.setdefault(
            "help_text",
            "The 6-digit code from your authenticator app, or one of your recovery codes.",
        )
        kwargs.setdefault(
            "widget",
            forms.TextInput(
                attrs={
                    "autocomplete": "one-time-code",
                    "inputmode": "text",
                    "autocapitalize": "off",
                    "spellcheck": "false",
                }
            ),
        )
        super().__init__(**kwargs)


class OtpTokenForm(forms.Form):
    token = OtpTokenField()


class TotpConfirmForm(forms.Form):
    token = forms.CharField(
        label="Code from the app",
        max_length=12,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


class SudoForm(forms.Form):
    """Password (and the second factor when the user has one) for sudo mode."""

    password = forms.CharField(
        label="Password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )

    def __init__(self, *args: Any, needs_token: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if needs_token:
            self.fields["token"] = OtpTokenField()


class EmailChangeForm(forms.Form):
    email = forms.EmailField(label="New email address", max_length=254)


class SecurityLogFilterForm(forms.Form):
    category = forms.ChoiceField(required=False)
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        category = self.fields["category"]
        assert isinstance(category, forms.ChoiceField)
        category.choices = [("", "Everything")] + [
            (name, label) for name, (label, _prefixes) in AUDIT_CATEGORIES.items()
        ]


# --- the operator admin's user forms: no password field, ever -------------------------------


class OperatorUserCreationForm(forms.ModelForm):
    """An account created in the admin: an address only.

    SECURITY: no password field. The account gets an unusable password (set where the admin
    saves it), so no operator ever knows it; the owner chooses one from a reset link.
    """

    class Meta:
        model = User
        fields = ["email", "display_name"]

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email address already exists.")
        return email


class OperatorUserChangeForm(forms.ModelForm):
    """The admin's user form. SECURITY: no password field and no link to set one."""

    class Meta:
        model = User
        fields = ["email", "display_name", "is_active", "is_staff", "is_superuser", "groups"]
