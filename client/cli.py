"""Arguments and commands of ``python -m client``.

Exit status: 0 done, 1 an error (shown as one sentence on stderr), 2 wrong
usage, 3 the server wants the browser (web fallback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from . import __version__, flows
from .account import DEFAULT_ACCOUNT_SCOPE, Account, code_challenge, describe_method, when
from .api import ApiError, ClientError, NativeAuthApi, RedirectRequired
from .cache import MsalStore, TokenStore, builtin_path, decode_jwt, open_store, write_private
from .messages import PASSWORD_SUBERRORS, browser_needed, describe
from .prompts import Prompter

DEFAULT_BASE_URL = "http://127.0.0.1:7071/api"
DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-000000000001"
DEFAULT_SCOPE = "openid profile offline_access"
DEFAULT_CACHE = "~/.native-auth-cli/cache.json"

EXIT_ERROR, EXIT_BROWSER, EXIT_INTERRUPTED = 1, 3, 130

EPILOG = """\
examples:
  python -m client signup alice@example.com -a displayName="Alice Example"
  python -m client signin alice@example.com
  python -m client signin alice@example.com --email-code
  python -m client reset alice@example.com
  python -m client token                      # a fresh access token on stdout
  python -m client token --force-refresh --scope "api://native-auth/access_as_user"
  python -m client whoami
  python -m client account                    # the account API (/me): profile, attributes
  python -m client account set displayName="Alice B."
  python -m client password                   # change the password (other sessions signed out)
  python -m client methods                    # second factors: list, add, remove
  python -m client methods add sms +4915112345678
  python -m client methods remove <id>
  python -m client export -o account.json     # everything stored about the account
  python -m client signout --everywhere       # end every session of the account, on every device
  python -m client delete                     # delete the account (asks to type its address)
  python -m client signout

Adding or removing a second factor and deleting the account need a fresh
second factor: the client signs in again (password, then a code) when the
server asks; an account without a second factor confirms with an email code.

Answers are read from stdin (passwords without echo on a terminal). Codes
appear on the API console and in .local/outbox.jsonl when the server runs
locally. With an https base URL, MSAL Python keeps and refreshes the tokens;
with http, the client refreshes them itself (MSAL Python needs https).
Use REQUESTS_CA_BUNDLE for a server with a private CA.
"""


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The connection options, accepted before and after the command. Only the
    top-level parser has defaults; the sub-parsers leave values unset
    (SUPPRESS) so that they do not overwrite options given earlier."""
    env = os.environ.get

    def d(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("--base-url", default=d(env("NATIVE_AUTH_BASE_URL", DEFAULT_BASE_URL)),
                        help=f"API base URL (default {DEFAULT_BASE_URL}; env NATIVE_AUTH_BASE_URL)")
    parser.add_argument("--client-id", default=d(env("NATIVE_AUTH_CLIENT_ID", DEFAULT_CLIENT_ID)),
                        help=f"public client id (default {DEFAULT_CLIENT_ID}; env NATIVE_AUTH_CLIENT_ID)")
    parser.add_argument("--scope", default=d(env("NATIVE_AUTH_SCOPE", DEFAULT_SCOPE)),
                        help=f"space-separated scopes (default '{DEFAULT_SCOPE}'; env NATIVE_AUTH_SCOPE)")
    parser.add_argument("--cache", default=d(env("NATIVE_AUTH_CACHE", DEFAULT_CACHE)),
                        help=f"token cache file (default {DEFAULT_CACHE}; the http path uses <name>.builtin.json "
                             "next to it; env NATIVE_AUTH_CACHE)")
    parser.add_argument("--token-cache", choices=("auto", "msal", "builtin"), default=d("auto"),
                        help="who keeps and refreshes tokens: auto (MSAL Python for https, built-in for http), "
                             "msal, or builtin")
    parser.add_argument("-v", "--verbose", action="store_true", default=d(False),
                        help="show each HTTP call (endpoint, status, error codes; never secrets) on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Sign up, sign in and reset passwords against a native-auth API (Entra External ID V1 wire "
                    "protocol), then get access tokens from the terminal.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p, top=False)
        return p

    p = command("signup", "create an account (email code, password, attributes), then sign in")
    p.add_argument("username", nargs="?", help="email address (asked when omitted)")
    p.add_argument("-a", "--attribute", action="append", default=[], metavar="NAME=VALUE",
                   help="a sign-up attribute, e.g. -a displayName='Alice' (repeatable)")
    p.add_argument("--no-password", action="store_true",
                   help="an account without a password (sign-in by email code only)")

    p = command("signin", "sign in with a password or an email code (then a second factor if required)")
    p.add_argument("username", nargs="?", help="email address (asked when omitted)")
    p.add_argument("--email-code", action="store_true", help="sign in with a one-time email code instead of a password")

    p = command("reset", "reset a forgotten password by email code, then sign in")
    p.add_argument("username", nargs="?", help="email address (asked when omitted)")

    p = command("token", "print a fresh access token (refreshed silently when needed)")
    p.add_argument("--force-refresh", action="store_true", help="redeem the refresh token even if a cached token is valid")
    p.add_argument("-u", "--username", help="which signed-in account (when there are several)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the token")

    p = command("whoami", "show the claims of the cached ID token")
    p.add_argument("-u", "--username", help="which signed-in account (when there are several)")
    p.add_argument("--json", action="store_true", help="print the claims as JSON only")

    p = command("signout", "forget cached tokens (all of them, or one account's); --everywhere ends the "
                           "account's sessions on the server too")
    p.add_argument("-u", "--username", help="forget only this account")
    p.add_argument("--everywhere", action="store_true",
                   help="sign the account out everywhere (every session, every device) through the account API, "
                        "then forget its tokens here")
    p.add_argument("--account-scope", default=os.environ.get("NATIVE_AUTH_ACCOUNT_SCOPE", DEFAULT_ACCOUNT_SCOPE),
                   help=f"with --everywhere: the account API's scope (default {DEFAULT_ACCOUNT_SCOPE}; "
                        "env NATIVE_AUTH_ACCOUNT_SCOPE)")

    p = command("account", "show the signed-in account (account API), or set its attributes")
    p.add_argument("action", nargs="?", choices=("show", "set"), default="show",
                   help="show (the default) or set NAME=VALUE ...")
    p.add_argument("attributes", nargs="*", metavar="NAME=VALUE",
                   help="with set: attributes to change, e.g. displayName='Alice B.' (those of the sign-up schema)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON only")
    _add_account(p, top=True)

    p = command("password", "change the password (asks for the current and the new one)")
    p.add_argument("--keep-sessions", action="store_true",
                   help="keep the account's other sessions signed in (by default they are signed out; "
                        "this one stays signed in)")
    _add_account(p, top=True)

    p = command("methods", "list the account's second factors, add one (with a code) or remove one")
    _add_account(p, top=True)
    actions = p.add_subparsers(dest="methods_action", metavar="ACTION")
    q = actions.add_parser("list", help="list the second factors (the default)", description="list the second factors")
    _add_common(q, top=False)
    _add_account(q, top=False)
    q = actions.add_parser("add", help="add a second factor: a code is sent to it",
                           description="add a second factor: a code is sent to it, then asked for")
    q.add_argument("channel", choices=("email", "sms"), help="email (another mailbox than the sign-in one) or sms")
    q.add_argument("target", nargs="?", help="the address or mobile number (+4915112345678); asked when omitted")
    _add_common(q, top=False)
    _add_account(q, top=False)
    q = actions.add_parser("remove", help="remove a second factor by its id (see `methods`)",
                           description="remove a second factor by its id (see `methods`)")
    q.add_argument("id", help="the method's id, as `methods` lists it")
    _add_common(q, top=False)
    _add_account(q, top=False)

    p = command("delete", "delete the signed-in account for good (asks to type its email address)")
    _add_account(p, top=True)

    p = command("export", "write everything stored about the account as JSON (to stdout or a file)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout ('-')")
    _add_account(p, top=True)
    return parser


def _add_account(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options of the account API commands (repeated on `methods`' actions without defaults)."""
    def d(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("-u", "--username", default=d(None), help="which signed-in account (when there are several)")
    parser.add_argument("--account-scope", default=d(os.environ.get("NATIVE_AUTH_ACCOUNT_SCOPE", DEFAULT_ACCOUNT_SCOPE)),
                        help=f"the account API's scope (default {DEFAULT_ACCOUNT_SCOPE}; env NATIVE_AUTH_ACCOUNT_SCOPE)")


# ---------------------------------------------------------------------- helpers

def _cache_path(args) -> Path:
    return Path(os.path.expanduser(args.cache))


def _store(args, api: NativeAuthApi) -> TokenStore:
    return open_store(args.token_cache, args.base_url, args.client_id, _cache_path(args), api)


def _parse_attributes(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ClientError(f"Attributes are NAME=VALUE; got {item!r}.")
        out[name.strip()] = value
    return out


def _username(args, io: Prompter) -> str:
    return (args.username or io.ask_nonempty("Email address: ")).strip()


def _finish_flow(args, io: Prompter, store: TokenStore, tokens: dict) -> int:
    name = store.save_sign_in(tokens, args.scope)
    io.say(f"Signed in as {name}.")
    io.say(f"Tokens are kept by {store.describe()}.")
    io.say("Run `python -m client token` for an access token.")
    return 0


def _run_flow(args, io: Prompter, api: NativeAuthApi, run: Callable[[flows.Context, str], dict]) -> int:
    store = _store(args, api)
    if isinstance(store, MsalStore):
        store.app  # discovery now: a misconfigured authority is reported before anything is typed
    username = _username(args, io)
    ctx = flows.Context(api, io, args.scope)
    return _finish_flow(args, io, store, run(ctx, username))


# ---------------------------------------------------------------------- commands

def cmd_signup(args, io: Prompter, api: NativeAuthApi) -> int:
    attributes = _parse_attributes(args.attribute)
    return _run_flow(args, io, api, lambda ctx, username: flows.sign_up(
        ctx, username, attributes=attributes, passwordless=args.no_password))


def cmd_signin(args, io: Prompter, api: NativeAuthApi) -> int:
    return _run_flow(args, io, api, lambda ctx, username: flows.sign_in(ctx, username, email_code=args.email_code))


def cmd_reset(args, io: Prompter, api: NativeAuthApi) -> int:
    return _run_flow(args, io, api, lambda ctx, username: flows.reset_password(ctx, username))


def cmd_token(args, io: Prompter, api: NativeAuthApi) -> int:
    store = _store(args, api)
    token, source, username = store.access_token(args.scope, args.username, args.force_refresh)
    print(token, flush=True)
    if not args.quiet:
        exp = decode_jwt(token).get("exp")
        left = f", expires in {int(exp - time.time())} s" if isinstance(exp, (int, float)) else ""
        how = "refreshed from the server" if source == "identity_provider" else "from the cache"
        print(f"Access token for {username} {how}{left}; {store.describe()}.", file=sys.stderr, flush=True)
    return 0


def _when(value) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_whoami(args, io: Prompter, api: NativeAuthApi) -> int:
    store = _store(args, api)
    claims = store.id_token_claims(args.username)
    if args.json:
        print(json.dumps(claims, indent=2, sort_keys=True))
        return 0
    amr = claims.get("amr")
    io.say(f"User:          {claims.get('preferred_username') or claims.get('email') or '?'}")
    io.say(f"Name:          {claims.get('name', '')}")
    io.say(f"Object id:     {claims.get('oid', '')}")
    io.say(f"Tenant:        {claims.get('tid', '')}")
    io.say(f"Signed in by:  {', '.join(amr) if isinstance(amr, list) else amr or '?'} (acr {claims.get('acr', '?')}) "
           f"at {_when(claims.get('auth_time'))}")
    io.say(f"ID token:      issued by {claims.get('iss', '?')}, expires {_when(claims.get('exp'))}")
    io.say(f"Token store:   {store.describe()}")
    io.say("Claims:")
    io.say(json.dumps(claims, indent=2, sort_keys=True))
    return 0


def cmd_signout(args, io: Prompter, api: NativeAuthApi) -> int:
    if args.everywhere:
        return _signout_everywhere(args, io, api)
    path = _cache_path(args)
    if args.username:
        store = _store(args, api)
        if store.remove(args.username):
            io.say(f"Signed out {args.username}: its tokens were removed from {store.describe()}.")
        else:
            io.say(f"{args.username} was not signed in here.")
        return 0
    removed = []
    for file in (path, builtin_path(path)):
        try:
            file.unlink()
            removed.append(str(file))
        except FileNotFoundError:
            pass
    io.say(("Signed out: removed " + " and ".join(removed) + ".") if removed else "Nothing to do: no cached tokens.")
    io.say("(The server keeps no session to end; the removed refresh tokens are simply forgotten.)")
    return 0


# ---------------------------------------------------------------------- the account API (/me)

def _account(args, io: Prompter, api: NativeAuthApi) -> tuple[Account, TokenStore]:
    store = _store(args, api)
    return Account(api, io, store, args.account_scope, args.username), store


def _show_profile(io: Prompter, profile: dict) -> None:
    attributes = profile.get("attributes") if isinstance(profile.get("attributes"), dict) else {}
    has_password = profile.get("hasPassword")
    io.say(f"User:          {profile.get('email') or '?'}")
    io.say(f"Name:          {profile.get('displayName') or ''}")
    io.say(f"Object id:     {profile.get('id') or ''}")
    changed = f", last changed {when(profile.get('passwordChanged'))}" if profile.get("passwordChanged") else ""
    io.say("Password:      " + (f"set{changed}" if has_password else "none (signs in with an email code)"))
    io.say(f"Created:       {when(profile.get('created'))}")
    io.say(f"Last sign-in:  {when(profile.get('lastSignIn'))}")
    io.say("Attributes:    " + (", ".join(f"{k}={v}" for k, v in sorted(attributes.items())) or "none"))
    lines = _method_lines(profile.get("methods") or [])
    for i, line in enumerate(lines or ["none"]):
        io.say(("Methods:       " if i == 0 else " " * 15) + line)


def _method_lines(methods: list) -> list[str]:
    return [f"{describe_method(m)} (id {m.get('id')}{', default' if m.get('default') else ''}, "
            f"added {when(m.get('created'))})" for m in methods if isinstance(m, dict)]


def cmd_account(args, io: Prompter, api: NativeAuthApi) -> int:
    account, _ = _account(args, io, api)
    if args.action == "set":
        changes = _parse_attributes(args.attributes)
        profile = account.call("PATCH", "me", {"attributes": changes}) or {}
        if not args.json:
            io.say(f"Saved: {', '.join(sorted(changes))}.")
    else:
        profile = account.call("GET", "me") or {}
    if args.json:
        print(json.dumps(profile, indent=2, sort_keys=True))
        return 0
    _show_profile(io, profile)
    return 0


def cmd_password(args, io: Prompter, api: NativeAuthApi) -> int:
    account, _ = _account(args, io, api)
    profile = account.call("GET", "me") or {}
    if profile.get("hasPassword") is False:
        raise ClientError(f"{profile.get('email') or account.username} has no password: it signs in with an email "
                          "code. Set one with `python -m client reset`.")
    io.say(f"Changing the password of {profile.get('email') or account.username}.")
    current = io.secret("Current password: ")
    while True:
        new = io.new_password("New password: ")
        try:
            account.call("POST", "me/password", {"currentPassword": current, "newPassword": new,
                                                 "signOutOtherSessions": not args.keep_sessions})
        except ApiError as exc:
            if exc.has_code(50126):
                raise ClientError("The current password is not correct. The password was not changed.") from None
            if exc.suberror not in PASSWORD_SUBERRORS:
                raise
            io.warn(describe(exc))
            continue
        break
    io.say("Your password was changed.")
    if args.keep_sessions:
        io.say("Other sessions stay signed in.")
        return 0
    io.say("Every other session of the account was signed out; this one stays signed in.")
    try:
        account.token(force_refresh=True)  # the server renewed this session: replace the cached access token
    except ClientError as exc:
        io.warn(f"This session could not be renewed: {exc}")
    return 0


def cmd_methods(args, io: Prompter, api: NativeAuthApi) -> int:
    account, _ = _account(args, io, api)
    action = args.methods_action or "list"
    if action == "list":
        listed = (account.call("GET", "me/methods") or {}).get("methods") or []
        if not listed:
            io.say(f"{account.username} has no second factor. Add one: `python -m client methods add email|sms <target>`.")
            return 0
        io.say(f"Second factors of {account.username}:")
        for line in _method_lines(listed):
            io.say(f"  {line}")
        return 0
    if action == "remove":
        listed = (account.call("GET", "me/methods") or {}).get("methods") or []
        method = next((m for m in listed if isinstance(m, dict) and m.get("id") == args.id), None)
        if method is None:
            raise ClientError(f"{account.username} has no method with id {args.id!r} "
                              "(`python -m client methods` lists them).")
        account.call("DELETE", f"me/methods/{quote(args.id, safe='')}")
        io.say(f"Removed {describe_method(method)} (id {args.id}).")
        return 0
    channel = args.channel
    target = (args.target or "").strip()
    while not target:
        target = io.ask("Email address for your codes (another mailbox than the one you sign in with): "
                        if channel == "email" else "Mobile number in international format (e.g. +4915112345678): ")
    sent = account.call("POST", "me/methods", {"channel": channel, "target": target}) or {}
    added = flows.code_loop(
        account.ctx, code_challenge(sent, "verification"),
        resend=lambda _handle: code_challenge(
            account.call("POST", "me/methods", {"channel": channel, "target": target}) or {}, "verification"),
        submit=lambda handle, code: account.call("POST", "me/methods/verify",
                                                 {"verification": handle, "code": code}) or {})
    io.say(f"Added {describe_method(added)} as a second factor (id {added.get('id')}).")
    return 0


def cmd_delete(args, io: Prompter, api: NativeAuthApi) -> int:
    account, store = _account(args, io, api)
    profile = account.call("GET", "me") or {}
    email = profile.get("email") or account.username or "?"
    io.say(f"This deletes the account {email} for good: its profile, second factors and sessions. "
           "It cannot be undone.")
    typed = io.ask("Type the account's email address to confirm: ")
    if typed.lower() != email.lower():
        raise ClientError("That is not the account's address. Nothing was deleted.")
    account.call("DELETE", "me")
    io.say(f"The account {email} was deleted.")
    if account.username and store.remove(account.username):
        io.say(f"Its tokens were removed from {store.describe()}.")
    return 0


def cmd_export(args, io: Prompter, api: NativeAuthApi) -> int:
    account, _ = _account(args, io, api)
    data = account.call("GET", "me/export") or {}
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    counts = ", ".join(_count(len(data.get(key) or []), what) for key, what in (
        ("methods", "method"), ("sessions", "session"), ("signInLog", "sign-in log entry")))
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"Exported the data of {account.username} ({counts}).", file=sys.stderr, flush=True)
        return 0
    path = Path(os.path.expanduser(args.output))
    write_private(path, text)
    io.say(f"Exported the data of {account.username} ({counts}) to {path} (readable by you only).")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what[:-1] + 'ies' if what.endswith('y') else what + 's'}"


def _signout_everywhere(args, io: Prompter, api: NativeAuthApi) -> int:
    account, store = _account(args, io, api)
    account.call("POST", "me/revoke-sessions")
    io.say(f"Signed out everywhere: every session of {account.username} has ended, on every device.")
    if account.username and store.remove(account.username):
        io.say(f"Its tokens were removed from {store.describe()}.")
    return 0


COMMANDS = {"signup": cmd_signup, "signin": cmd_signin, "reset": cmd_reset, "token": cmd_token,
            "whoami": cmd_whoami, "signout": cmd_signout, "account": cmd_account, "password": cmd_password,
            "methods": cmd_methods, "delete": cmd_delete, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "account" and (args.action == "set") != bool(args.attributes):
        parser.error("account set needs NAME=VALUE arguments (and account show takes none)")
    args.base_url = args.base_url.rstrip("/")
    io = Prompter()
    api = NativeAuthApi(args.base_url, args.client_id, verbose=args.verbose)
    try:
        return COMMANDS[args.command](args, io, api)
    except RedirectRequired as exc:
        print(browser_needed(exc.reason), file=sys.stderr, flush=True)
        return EXIT_BROWSER
    except ApiError as exc:
        print(f"Error: {describe(exc)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except ClientError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nCancelled.", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `python -m client whoami | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
