"""Message texts for one-time codes and account notices (email and SMS).

``render(message, app_name)`` turns a ``shared.delivery.Message`` (anything
with ``channel``, ``purpose``, ``code``, ``locale`` and ``origin_domain``
attributes) into a :class:`Rendered` text.

Safety rules, applied to every interpolated value (app name, code, domain):

* control characters (C0/C1, DEL), format characters (bidi overrides,
  zero-width characters) and line/paragraph separators are replaced by a
  space and runs of white space collapsed, so a value is always one line:
  nothing can break out of a subject line (no header injection) or forge an
  extra SMS line such as a fake ``@domain #code`` line;
* the HTML body escapes every value with ``html.escape`` (and the
  translated strings too), so user data never adds markup;
* formatting is a single ``str.format_map`` pass over trusted table strings:
  values are never parsed again, so ``{{7*7}}`` or ``{code}`` inside a value
  stays literal text.

Languages are chosen from ``message.locale``: an OAuth ``ui_locales`` value
(``"de-DE fr"``) or an ``Accept-Language`` header
(``"de-DE,de;q=0.9,en;q=0.8"``). English is the fallback. Shipped: en, de, fr.
SMS texts stay within the GSM-7 alphabet and one 160-character segment for a
typical app name; see :func:`gsm7_length`.

Standard library only; never imports Azure packages.
"""

from __future__ import annotations

import html as _html
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

PURPOSES = (
    "signup_code",
    "signin_code",
    "mfa_code",
    "register_code",
    "reset_code",
    "password_changed",
    "signup_attempt_notice",
    "method_added",
    "method_removed",
    "account_code",
    "account_deleted",
)
# Purposes whose message carries a one-time code.
CODE_PURPOSES = frozenset({"signup_code", "signin_code", "mfa_code", "register_code", "reset_code", "account_code"})

DEFAULT_LANGUAGE = "en"
MAX_APP_NAME = 64
MAX_CODE = 16


@dataclass(frozen=True)
class Rendered:
    subject: str          # always one line
    text: str             # plain-text body (for SMS: the SMS text)
    html: str | None      # email only
    sms: str | None       # SMS only
    language: str = DEFAULT_LANGUAGE


# --------------------------------------------------------------------------
# String tables. Placeholders: {app}, {code}. Keep SMS texts GSM-7 only
# (no ç, ê, ô, â, curly quotes...) so a message fits one 160-char segment.
# --------------------------------------------------------------------------

_COMMON: dict[str, dict[str, str]] = {
    "en": {
        "do_not_share": "Do not share this code with anyone. {app} will never ask you for it.",
        "ignore": "If you did not request this code, you can ignore this email.",
        "sms_do_not_share": "Do not share it with anyone.",
        "signoff": "{app}",
        "code_label": "Your code",
        "a_method": "A sign-in method",
    },
    "de": {
        "do_not_share": "Geben Sie diesen Code an niemanden weiter. {app} wird Sie nie danach fragen.",
        "ignore": "Wenn Sie diesen Code nicht angefordert haben, können Sie diese E-Mail ignorieren.",
        "sms_do_not_share": "Geben Sie ihn an niemanden weiter.",
        "signoff": "{app}",
        "code_label": "Ihr Code",
        "a_method": "Eine Anmeldemethode",
    },
    "fr": {
        "do_not_share": "Ne communiquez ce code à personne. {app} ne vous le demandera jamais.",
        "ignore": "Si vous n'avez pas demandé ce code, vous pouvez ignorer cet e-mail.",
        "sms_do_not_share": "Ne le partagez avec personne.",
        "signoff": "{app}",
        "code_label": "Votre code",
        "a_method": "Une méthode de connexion",
    },
}

# Per purpose: subject, intro (email, first paragraph), detail (email,
# notices only), sms.
_TEXTS: dict[str, dict[str, dict[str, str]]] = {
    "en": {
        "signup_code": {
            "subject": "Your {app} sign-up code",
            "intro": "Use this code to finish creating your {app} account:",
            "sms": "{code} is your {app} sign-up code.",
        },
        "signin_code": {
            "subject": "Your {app} sign-in code",
            "intro": "Use this code to sign in to {app}:",
            "sms": "{code} is your {app} sign-in code.",
        },
        "mfa_code": {
            "subject": "Your {app} verification code",
            "intro": "Use this code to confirm it is you and finish signing in to {app}:",
            "sms": "{code} is your {app} verification code.",
        },
        "register_code": {
            "subject": "Confirm your contact details for {app}",
            "intro": "Use this code to confirm this address and add it to your {app} account:",
            "sms": "{code} is your {app} code to confirm this phone number.",
        },
        "reset_code": {
            "subject": "Your {app} password reset code",
            "intro": "Use this code to reset your {app} password:",
            "sms": "{code} is your {app} password reset code.",
        },
        "password_changed": {
            "subject": "Your {app} password was changed",
            "intro": "The password for your {app} account was just changed.",
            "detail": "If you made this change, there is nothing else to do. If you did not, reset your password right away and review your account.",
            "sms": "Your {app} password was changed. If this was not you, reset it now.",
        },
        "signup_attempt_notice": {
            "subject": "Someone tried to sign up for {app} with your address",
            "intro": "Someone tried to create a new {app} account with this address, but an account already exists.",
            "detail": "If this was you, sign in instead, or reset your password if you forgot it. If it was not you, you can ignore this message; your account has not changed.",
            "sms": "Someone tried to sign up for {app} with this number, which already has an account. If it was not you, ignore this.",
        },
        "method_added": {
            "subject": "A sign-in method was added to your {app} account",
            "intro": "{target} was just added to your {app} account as a way to confirm it is you.",
            "detail": "If you made this change, there is nothing else to do. If you did not, reset your password right away and contact support: someone else may be able to sign in as you.",
            "sms": "{target} was added to your {app} account. If this was not you, reset your password now.",
        },
        "method_removed": {
            "subject": "A sign-in method was removed from your {app} account",
            "intro": "{target} was just removed from your {app} account.",
            "detail": "If you made this change, there is nothing else to do. If you did not, reset your password right away and contact support.",
            "sms": "{target} was removed from your {app} account. If this was not you, reset your password now.",
        },
        "account_code": {
            "subject": "Confirm the change to your {app} account",
            "intro": "Use this code to confirm the change you asked for in your {app} account:",
            "sms": "{code} is your {app} code to confirm a change to your account.",
        },
        "account_deleted": {
            "subject": "Your {app} account was deleted",
            "intro": "Your {app} account and the data kept about it were deleted, as you asked.",
            "detail": "You can create a new account with this address at any time. If you did not ask for this, contact support right away.",
            "sms": "Your {app} account was deleted. If you did not ask for this, contact support.",
        },
    },
    "de": {
        "signup_code": {
            "subject": "Ihr Registrierungscode für {app}",
            "intro": "Verwenden Sie diesen Code, um die Erstellung Ihres {app}-Kontos abzuschließen:",
            "sms": "{code} ist Ihr Registrierungscode für {app}.",
        },
        "signin_code": {
            "subject": "Ihr Anmeldecode für {app}",
            "intro": "Verwenden Sie diesen Code, um sich bei {app} anzumelden:",
            "sms": "{code} ist Ihr Anmeldecode für {app}.",
        },
        "mfa_code": {
            "subject": "Ihr Bestätigungscode für {app}",
            "intro": "Verwenden Sie diesen Code, um Ihre Identität zu bestätigen und die Anmeldung bei {app} abzuschließen:",
            "sms": "{code} ist Ihr Bestätigungscode für {app}.",
        },
        "register_code": {
            "subject": "Bestätigen Sie Ihre Kontaktdaten für {app}",
            "intro": "Verwenden Sie diesen Code, um diese Adresse zu bestätigen und Ihrem {app}-Konto hinzuzufügen:",
            "sms": "{code} ist Ihr Code für {app} zur Bestätigung dieser Nummer.",
        },
        "reset_code": {
            "subject": "Ihr Code zum Zurücksetzen des Passworts für {app}",
            "intro": "Verwenden Sie diesen Code, um Ihr Passwort für {app} zurückzusetzen:",
            "sms": "{code} ist Ihr Code zum Zurücksetzen des Passworts für {app}.",
        },
        "password_changed": {
            "subject": "Ihr Passwort für {app} wurde geändert",
            "intro": "Das Passwort Ihres {app}-Kontos wurde soeben geändert.",
            "detail": "Wenn Sie das waren, ist nichts weiter zu tun. Falls nicht, setzen Sie Ihr Passwort sofort zurück und überprüfen Sie Ihr Konto.",
            "sms": "Ihr Passwort für {app} wurde geändert. Falls Sie das nicht waren, setzen Sie es sofort zurück.",
        },
        "signup_attempt_notice": {
            "subject": "Registrierungsversuch bei {app} mit Ihrer Adresse",
            "intro": "Jemand hat versucht, mit dieser Adresse ein neues {app}-Konto zu erstellen, aber es gibt bereits ein Konto.",
            "detail": "Wenn Sie das waren, melden Sie sich stattdessen an oder setzen Sie Ihr Passwort zurück. Falls nicht, können Sie diese Nachricht ignorieren; Ihr Konto wurde nicht verändert.",
            "sms": "Jemand wollte sich mit dieser Nummer bei {app} registrieren, es gibt aber schon ein Konto. Falls nicht Sie, bitte ignorieren.",
        },
        "method_added": {
            "subject": "Ihrem {app}-Konto wurde eine Anmeldemethode hinzugefügt",
            "intro": "{target} wurde soeben Ihrem {app}-Konto als Methode zur Bestätigung Ihrer Identität hinzugefügt.",
            "detail": "Wenn Sie das waren, ist nichts weiter zu tun. Falls nicht, setzen Sie Ihr Passwort sofort zurück und wenden Sie sich an den Support: Jemand anderes könnte sich als Sie anmelden.",
            "sms": "{target} wurde Ihrem {app}-Konto hinzugefuegt. Falls nicht Sie, setzen Sie Ihr Passwort sofort zurueck.",
        },
        "method_removed": {
            "subject": "Aus Ihrem {app}-Konto wurde eine Anmeldemethode entfernt",
            "intro": "{target} wurde soeben aus Ihrem {app}-Konto entfernt.",
            "detail": "Wenn Sie das waren, ist nichts weiter zu tun. Falls nicht, setzen Sie Ihr Passwort sofort zurück und wenden Sie sich an den Support.",
            "sms": "{target} wurde aus Ihrem {app}-Konto entfernt. Falls nicht Sie, setzen Sie Ihr Passwort sofort zurueck.",
        },
        "account_code": {
            "subject": "Bestätigen Sie die Änderung an Ihrem {app}-Konto",
            "intro": "Verwenden Sie diesen Code, um die gewünschte Änderung an Ihrem {app}-Konto zu bestätigen:",
            "sms": "{code} ist Ihr Code für {app} zur Bestätigung einer Kontoänderung.",
        },
        "account_deleted": {
            "subject": "Ihr {app}-Konto wurde gelöscht",
            "intro": "Ihr {app}-Konto und die dazu gespeicherten Daten wurden wie gewünscht gelöscht.",
            "detail": "Sie können mit dieser Adresse jederzeit ein neues Konto erstellen. Falls Sie das nicht veranlasst haben, wenden Sie sich sofort an den Support.",
            "sms": "Ihr {app}-Konto wurde geloescht. Falls nicht Sie, wenden Sie sich an den Support.",
        },
    },
    "fr": {
        "signup_code": {
            "subject": "Votre code d'inscription {app}",
            "intro": "Utilisez ce code pour terminer la création de votre compte {app} :",
            "sms": "{code} est votre code d'inscription {app}.",
        },
        "signin_code": {
            "subject": "Votre code de connexion {app}",
            "intro": "Utilisez ce code pour vous connecter à {app} :",
            "sms": "{code} est votre code de connexion {app}.",
        },
        "mfa_code": {
            "subject": "Votre code de vérification {app}",
            "intro": "Utilisez ce code pour confirmer votre identité et terminer la connexion à {app} :",
            "sms": "{code} est votre code de vérification {app}.",
        },
        "register_code": {
            "subject": "Confirmez vos coordonnées pour {app}",
            "intro": "Utilisez ce code pour confirmer cette adresse et l'ajouter à votre compte {app} :",
            "sms": "{code} est votre code {app} pour confirmer ce numéro.",
        },
        "reset_code": {
            "subject": "Votre code de réinitialisation du mot de passe {app}",
            "intro": "Utilisez ce code pour réinitialiser votre mot de passe {app} :",
            "sms": "{code} est votre code de réinitialisation du mot de passe {app}.",
        },
        "password_changed": {
            "subject": "Votre mot de passe {app} a été modifié",
            "intro": "Le mot de passe de votre compte {app} vient d'être modifié.",
            "detail": "Si vous êtes à l'origine de ce changement, vous n'avez rien à faire. Sinon, réinitialisez immédiatement votre mot de passe et vérifiez votre compte.",
            "sms": "Votre mot de passe {app} a été modifié. Si ce n'était pas vous, réinitialisez-le maintenant.",
        },
        "signup_attempt_notice": {
            "subject": "Tentative d'inscription à {app} avec votre adresse",
            "intro": "Quelqu'un a essayé de créer un compte {app} avec cette adresse, mais un compte existe déjà.",
            "detail": "Si c'était vous, connectez-vous ou réinitialisez votre mot de passe. Sinon, ignorez ce message ; votre compte n'a pas été modifié.",
            "sms": "Quelqu'un a voulu s'inscrire à {app} avec ce numéro, qui a déjà un compte. Si ce n'était pas vous, ignorez ce message.",
        },
        "method_added": {
            "subject": "Une méthode de connexion a été ajoutée à votre compte {app}",
            "intro": "{target} vient d'être ajouté à votre compte {app} comme moyen de confirmer votre identité.",
            "detail": "Si vous êtes à l'origine de ce changement, vous n'avez rien à faire. Sinon, réinitialisez immédiatement votre mot de passe et contactez le support : quelqu'un d'autre pourrait se connecter à votre place.",
            "sms": "{target} a ete ajoute a votre compte {app}. Si ce n'etait pas vous, reinitialisez votre mot de passe.",
        },
        "method_removed": {
            "subject": "Une méthode de connexion a été retirée de votre compte {app}",
            "intro": "{target} vient d'être retiré de votre compte {app}.",
            "detail": "Si vous êtes à l'origine de ce changement, vous n'avez rien à faire. Sinon, réinitialisez immédiatement votre mot de passe et contactez le support.",
            "sms": "{target} a ete retire de votre compte {app}. Si ce n'etait pas vous, reinitialisez votre mot de passe.",
        },
        "account_code": {
            "subject": "Confirmez la modification de votre compte {app}",
            "intro": "Utilisez ce code pour confirmer la modification demandée de votre compte {app} :",
            "sms": "{code} est votre code {app} pour confirmer une modification de votre compte.",
        },
        "account_deleted": {
            "subject": "Votre compte {app} a été supprimé",
            "intro": "Votre compte {app} et les données qui s'y rapportent ont été supprimés, comme vous l'avez demandé.",
            "detail": "Vous pouvez créer un nouveau compte avec cette adresse à tout moment. Si vous n'êtes pas à l'origine de cette demande, contactez immédiatement le support.",
            "sms": "Votre compte {app} a ete supprime. Si ce n'etait pas vous, contactez le support.",
        },
    },
}

SUPPORTED_LANGUAGES = tuple(_TEXTS)


# --------------------------------------------------------------------------
# Language negotiation
# --------------------------------------------------------------------------

_Q_RE = re.compile(r"^q=([0-9.]+)$", re.IGNORECASE)


def _language_candidates(locale: str) -> list[str]:
    """Language tags in preference order from ui_locales or Accept-Language."""
    # Accept-Language allows "de;q=0.9" and "de ; q=0.9"; ui_locales is
    # space-separated. Glue parameters to their tag first, then split.
    text = re.sub(r"\s*;\s*", ";", locale.strip())
    text = re.sub(r"\s*=\s*", "=", text)
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(t for t in re.split(r"[,\s]+", text) if t):
        tag, *params = item.split(";")
        q = 1.0
        for p in params:
            m = _Q_RE.match(p)
            if m:
                try:
                    q = float(m.group(1))
                except ValueError:
                    q = 0.0
        if q <= 0 or tag == "*" or len(tag) > 35:
            continue
        ranked.append((-q, index, tag.replace("_", "-").lower()))
    ranked.sort()
    return [tag for _, _, tag in ranked]


def pick_language(locale: str | None, supported: tuple[str, ...] = SUPPORTED_LANGUAGES) -> str:
    """Best supported language for a ``ui_locales``/``Accept-Language`` value."""
    if not locale or not isinstance(locale, str):
        return DEFAULT_LANGUAGE
    for tag in _language_candidates(locale[:512]):
        if tag in supported:
            return tag
        primary = tag.split("-", 1)[0]
        if primary in supported:
            return primary
    return DEFAULT_LANGUAGE


# --------------------------------------------------------------------------
# Sanitising interpolated values
# --------------------------------------------------------------------------

def one_line(value: Any, max_len: int = 200) -> str:
    """``value`` as a single line: control, format and separator characters
    become spaces, white space runs collapse, the result is trimmed."""
    out = []
    for ch in str(value):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or ch.isspace():
            out.append(" ")
        else:
            out.append(ch)
    text = re.sub(r" {2,}", " ", "".join(out)).strip()
    return text[:max_len].rstrip()


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def origin_host(value: str | None) -> str | None:
    """The host for an origin-bound code line (``@host #code``), or None.

    Accepts ``example.com``, ``https://example.com`` or ``https://example.com/``;
    drops a port; IDNs become punycode. Anything else gives None (no line)."""
    if not value:
        return None
    host = str(value).strip().lower()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in host or host.startswith("["):
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.rstrip(".")
    try:
        host = host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    return host if _HOST_RE.match(host) else None


# --------------------------------------------------------------------------
# GSM-7 length (3GPP TS 23.038 default alphabet + extension table)
# --------------------------------------------------------------------------

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")


def gsm7_length(text: str) -> int | None:
    """Septets needed to send ``text`` in GSM-7, or None if it needs UCS-2."""
    n = 0
    for ch in text:
        if ch in _GSM7_BASIC:
            n += 1
        elif ch in _GSM7_EXT:
            n += 2
        else:
            return None
    return n


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def _fmt(template: str, values: Mapping[str, str]) -> str:
    # Single pass: values are inserted verbatim and never re-parsed.
    return template.format_map(values)


def _html_fmt(template: str, values: Mapping[str, str]) -> str:
    escaped = {k: _html.escape(v, quote=True) for k, v in values.items()}
    return _html.escape(template, quote=False).format_map(escaped)


_P = '<p style="margin:0 0 16px;font-size:15px;line-height:1.5">'
_P_MUTED = '<p style="margin:0 0 8px;font-size:13px;line-height:1.5;color:#616161">'


def render(message: Any, app_name: str) -> Rendered:
    """Subject, plain text, HTML (email) and SMS text for ``message``."""
    purpose = getattr(message, "purpose", None)
    channel = getattr(message, "channel", None)
    if purpose not in PURPOSES:
        raise ValueError("unknown message purpose")
    if channel not in ("email", "sms"):
        raise ValueError("unknown message channel")

    lang = pick_language(getattr(message, "locale", None))
    texts = _TEXTS[lang][purpose]
    common = _COMMON[lang]

    app = one_line(app_name, MAX_APP_NAME) or "Native Auth"
    values = {"app": app, "code": "", "target": one_line(getattr(message, "detail", None) or "", 64) or common["a_method"]}
    has_code = purpose in CODE_PURPOSES
    if has_code:
        code = one_line(getattr(message, "code", None) or "", MAX_CODE).replace(" ", "")
        if not code:
            raise ValueError("this purpose needs a code")
        values["code"] = code

    subject = one_line(_fmt(texts["subject"], values), 250)

    if channel == "sms":
        lines = [_fmt(texts["sms"], values)]
        if has_code:
            lines.append(_fmt(common["sms_do_not_share"], values))
            host = origin_host(getattr(message, "origin_domain", None))
            if host:
                # Origin-bound one-time code (WebOTP / iOS): must be the last line.
                lines.append("")
                lines.append(f"@{host} #{values['code']}")
        sms = "\n".join(lines)
        return Rendered(subject=subject, text=sms, html=None, sms=sms, language=lang)

    # email: plain text
    parts = [_fmt(texts["intro"], values)]
    if has_code:
        parts.append("    " + values["code"])
        parts.append(_fmt(common["do_not_share"], values))
        parts.append(_fmt(common["ignore"], values))
    else:
        parts.append(_fmt(texts["detail"], values))
    parts.append("-- \n" + _fmt(common["signoff"], values))
    text = "\n\n".join(parts) + "\n"

    # email: HTML (every value and every table string escaped)
    h = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_html.escape(subject)}</title></head>",
        '<body style="margin:0;padding:24px;background:#f3f3f3;'
        'font-family:\'Segoe UI\',Helvetica,Arial,sans-serif;color:#1b1b1b">',
        '<div style="max-width:480px;margin:0 auto;background:#ffffff;padding:32px;border-radius:8px">',
        f'<p style="margin:0 0 16px;font-size:14px;color:#616161">{_html.escape(app)}</p>',
        f'<h1 style="margin:0 0 16px;font-size:20px;font-weight:600">{_html.escape(subject)}</h1>',
        f"{_P}{_html_fmt(texts['intro'], values)}</p>",
    ]
    if has_code:
        h.append(
            f'<p aria-label="{_html.escape(common["code_label"], quote=True)}" '
            'style="margin:24px 0;font-size:32px;font-weight:600;letter-spacing:4px;'
            f'font-family:Consolas,Menlo,monospace">{_html.escape(values["code"])}</p>'
        )
        h.append(f"{_P}{_html_fmt(common['do_not_share'], values)}</p>")
        h.append(f"{_P_MUTED}{_html_fmt(common['ignore'], values)}</p>")
    else:
        h.append(f"{_P}{_html_fmt(texts['detail'], values)}</p>")
    h.append("</div></body></html>")
    return Rendered(subject=subject, text=text, html="\n".join(h), sms=None, language=lang)
