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

from . import __version__, flows
from .api import ApiError, ClientError, NativeAuthApi, RedirectRequired
from .cache import MsalStore, TokenStore, builtin_path, decode_jwt, open_store
from .messages import browser_needed, describe
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
  python -m client signout

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

    p = command("signout", "forget cached tokens (all of them, or one account's)")
    p.add_argument("-u", "--username", help="forget only this account")
    return parser


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


COMMANDS = {"signup": cmd_signup, "signin": cmd_signin, "reset": cmd_reset, "token": cmd_token,
            "whoami": cmd_whoami, "signout": cmd_signout}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
