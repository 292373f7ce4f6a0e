"""Error reports that never carry a secret.

Django's filter hides POST fields and locals only where a view or function was decorated,
and only with DEBUG off. This one also blanks, always, every local variable whose name says
it holds key material, and hides settings that are URLs with credentials in them
(REDIS_URL, the Celery broker).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

SECRET_LOCAL_NAMES = frozenset(
    {"secret", "dek", "kek", "api_key", "plaintext", "password", "key_bytes", "keyring"}
)


class ByokExceptionReporterFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|_URL$|BROKER|DATABASES",
        flags=re.IGNORECASE,
    )

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [
            (name, self.cleansed_substitute if name in SECRET_LOCAL_NAMES else value)
            for name, value in variables
        ]
