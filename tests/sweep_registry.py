"""Every URL pattern of the site and who may reach it. The sweeps fail on any pattern missing.

Adding a URL? Add its name here with its rule, and (if it takes a new kind of id) teach
`tests/test_sweep_urls.py::url_kwargs` where to find one of alice's objects of that kind.

Rules:
  PUBLIC   anyone; shows no user's data.
  ANON     for visitors who are not signed in (log-in, sign-up, password reset).
  LOGIN    signed-in users; shows only the visitor's own data. Visitors go to log in.
  OWNER    takes the id of a user's object: the owner only; anyone else gets a 404
           (or 405 for a method the view never takes). Visitors go to log in.
  STAFF    the operator site: staff with a verified second factor only.
"""

from __future__ import annotations

PUBLIC = "public"
ANON = "anon"
LOGIN = "login"
OWNER = "owner"
STAFF = "staff"

URL_RULES: dict[str, str] = {
    "home": PUBLIC,
    "healthz": PUBLIC,
    # accounts
    "accounts:signup": ANON,
    "accounts:login": ANON,
    "accounts:login_verify": ANON,
    "accounts:logout": LOGIN,
    "accounts:settings": LOGIN,
    "accounts:chat_preferences": LOGIN,
    "accounts:sudo": LOGIN,
    "accounts:email_change": LOGIN,
    "accounts:email_change_confirm": LOGIN,
    "accounts:two_factor_setup": LOGIN,
    "accounts:two_factor_verify": LOGIN,
    "accounts:two_factor_disable": LOGIN,
    "accounts:recovery_codes": LOGIN,
    "accounts:session_end": OWNER,
    "accounts:sessions_end_others": LOGIN,
    "accounts:security_log": LOGIN,
    "privacy:export": LOGIN,
    "privacy:export_status": OWNER,
    "privacy:export_download": OWNER,
    "privacy:delete": LOGIN,
    "accounts:password_change": LOGIN,
    "accounts:password_reset": ANON,
    "accounts:password_reset_done": ANON,
    "accounts:password_reset_confirm": ANON,
    "accounts:password_reset_complete": ANON,
    # keys
    "keys:list": LOGIN,
    "keys:add": LOGIN,
    "keys:add_endpoint": LOGIN,
    "keys:detail": OWNER,
    "keys:status": OWNER,
    "keys:verify": OWNER,
    "keys:rename": OWNER,
    "keys:expiry": OWNER,
    "keys:replace": OWNER,
    "keys:move": OWNER,
    "keys:revoke": OWNER,
    "keys:delete": OWNER,
    # chat
    "chat:home": LOGIN,
    "chat:models": LOGIN,
    "chat:search": LOGIN,
    "chat:conversation": OWNER,
    "chat:send": OWNER,
    "chat:rename": OWNER,
    "chat:archive": OWNER,
    "chat:pin": OWNER,
    "chat:temporary": OWNER,
    "chat:delete": OWNER,
    "chat:settings": OWNER,
    "chat:stream": OWNER,
    "chat:cancel": OWNER,
    "chat:markdown": OWNER,
    "chat:regenerate": OWNER,
    "chat:continue": OWNER,
    "chat:edit": OWNER,
    "chat:version": OWNER,
    # usage
    "usage:home": LOGIN,
    "usage:day": LOGIN,
    "usage:export": LOGIN,
    "usage:key": OWNER,
    "usage:caps": LOGIN,
    "usage:cap_set": OWNER,
    "usage:cap_remove": OWNER,
    "usage:preferences": LOGIN,
    # the operator site
    "admin_login": STAFF,
}

# Whole namespaces with one rule (every admin page is for verified staff only).
NAMESPACE_RULES: dict[str, str] = {"admin": STAFF}


def rule_for(name: str) -> str | None:
    if name in URL_RULES:
        return URL_RULES[name]
    namespace = name.split(":", 1)[0] if ":" in name else ""
    return NAMESPACE_RULES.get(namespace)
