"""Administration CLI: ``python -m admin <area> <action> ...``.

Reads the same settings as the app (environment variables, plus the
``Values`` of ``local.settings.json`` when present), so locally it talks to
Azurite and in Azure to the real tables (export the app's settings, with
``AUTH_STORAGE_TABLE_ENDPOINT`` and a credential that may write the tables).

    python -m admin clients add <client-id> <name> | list | disable <client-id> | enable <client-id>
    python -m admin policies list | create <file.json|-> | enable|disable|report-only|delete <name> | seed-default
    python -m admin locations set <name> <cidr>...
    python -m admin users list | create <email> [--password-stdin] | show <email> | remove-method <email> <id> | delete <email>
                          | disable <email> | enable <email> | unlock <email> | groups <email> <group>...
    python -m admin log tail [--limit N] [--days D]
    python -m admin extensions list | create <file.json|-> | enable|disable|delete <name> | test <name> [--user <email>]
    python -m admin doctor [--json]
    python -m admin sends [report [--day YYYYMMDD] [--json]] | suspend prefix|country <value> [--hours H] | lift <key>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.security import policy
from shared.storage import directory, signinlog
from shared.protocol.identifiers import InvalidIdentifier, normalize_email
from shared.settings import Settings, SettingsError, use_settings
from shared.storage.tables import get_storage


def load_local_settings(path: Path) -> None:
    """Like ``func start``: Values from local.settings.json; the environment wins."""
    if path.is_file():
        for key, value in json.loads(path.read_text()).get("Values", {}).items():
            os.environ.setdefault(key, str(value))


def _print(rows, columns) -> None:
    rows = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _user(storage, email: str) -> directory.User:
    try:
        user = directory.get_user(storage, normalize_email(email))
    except InvalidIdentifier:
        raise SystemExit(f"not an email address: {email}")
    if user is None:
        raise SystemExit(f"no such user: {email}")
    return user


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="local.settings.json", help="local settings file to read (if present)")
    sub = parser.add_subparsers(dest="area", required=True)

    c = sub.add_parser("clients").add_subparsers(dest="action", required=True)
    add = c.add_parser("add")
    add.add_argument("client_id")
    add.add_argument("name")
    c.add_parser("list")
    for name in ("disable", "enable"):
        c.add_parser(name).add_argument("client_id")

    p = sub.add_parser("policies").add_subparsers(dest="action", required=True)
    p.add_parser("list")
    p.add_parser("create").add_argument("file", help="policy JSON file, or - for stdin")
    for name in ("enable", "disable", "report-only", "delete"):
        p.add_parser(name).add_argument("name")
    p.add_parser("seed-default")

    loc = sub.add_parser("locations").add_subparsers(dest="action", required=True)
    ls = loc.add_parser("set")
    ls.add_argument("name")
    ls.add_argument("cidrs", nargs="+")

    u = sub.add_parser("users").add_subparsers(dest="action", required=True)
    u.add_parser("list")
    cu = u.add_parser("create")
    cu.add_argument("email")
    cu.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    cu.add_argument("--name", default="")
    for name in ("show", "disable", "enable", "unlock", "delete"):
        u.add_parser(name).add_argument("email")
    rm = u.add_parser("remove-method")
    rm.add_argument("email")
    rm.add_argument("method_id")
    g = u.add_parser("groups")
    g.add_argument("email")
    g.add_argument("groups", nargs="*")

    sd = sub.add_parser("sends").add_subparsers(dest="action")
    rep = sd.add_parser("report")
    rep.add_argument("--day", default=None, help="UTC day, YYYYMMDD (default: today)")
    rep.add_argument("--json", action="store_true")
    sus = sd.add_parser("suspend")
    sus.add_argument("kind", choices=["prefix", "country"])
    sus.add_argument("value", help="an E.164 prefix (the number less its last four digits) or a country code")
    sus.add_argument("--hours", type=float, default=6.0)
    sd.add_parser("lift").add_argument("key", help="a suspension key as `sends` shows it (pfx-… or cty-…)")

    ex = sub.add_parser("extensions").add_subparsers(dest="action", required=True)
    ex.add_parser("list")
    ex.add_parser("create").add_argument("file", help="extension JSON file, or - for stdin (README: Custom extensions)")
    for name in ("delete", "enable", "disable"):
        ex.add_parser(name).add_argument("name")
    tc = ex.add_parser("test", help="call the extension once with a sample payload of its event; nothing is issued")
    tc.add_argument("name")
    tc.add_argument("--user", help="a user's email, for events about a user")
    tc.add_argument("--client", default="00000000-0000-0000-0000-000000000000")

    dr = sub.add_parser("doctor", help="readiness report: settings, storage, tables, keys, delivery, monitoring, clock")
    dr.add_argument("--json", action="store_true")

    lg = sub.add_parser("log").add_subparsers(dest="action", required=True)
    t = lg.add_parser("tail")
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--days", type=int, default=1)

    args = parser.parse_args(argv)
    load_local_settings(Path(args.settings))
    if args.area == "doctor":
        return _doctor(args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"settings: {exc}", file=sys.stderr)
        return 2
    use_settings(settings)
    storage = get_storage(settings)
    try:
        return _run(args, storage)
    except policy.PolicyError as exc:
        print(f"policy: {exc}", file=sys.stderr)
        return 2


def _run(args, storage) -> int:
    if args.area == "clients":
        if args.action == "add":
            directory.register_client(storage, args.client_id, args.name)
            print(f"registered client {args.client_id}")
        elif args.action == "list":
            rows = storage.table("clients").query("PartitionKey eq @p", {"p": "client"})
            _print([{"client_id": r["RowKey"], "name": r.get("name"), "enabled": r.get("enabled")} for r in rows],
                   ["client_id", "name", "enabled"])
        else:
            row = storage.table("clients").get("client", args.client_id)
            if row is None:
                raise SystemExit(f"no such client: {args.client_id}")
            directory.register_client(storage, args.client_id, row.get("name", ""), enabled=args.action == "enable")
            print(f"{args.action}d client {args.client_id}")
    elif args.area == "policies":
        if args.action == "list":
            rows, _ = policy.load(storage)
            _print([{"name": r["name"], "state": r["state"], "grant": "block" if r["grant"]["block"] else
                     "second factor (" + ",".join(r["grant"]["methods"]) + ")"} for r in rows], ["name", "state", "grant"])
        elif args.action == "create":
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            saved = policy.save(storage, json.loads(text))
            print(f"saved policy {saved['name']!r} ({saved['state']})")
        elif args.action == "seed-default":
            policy.save(storage, policy.DEFAULT_LOCAL_POLICY)
            print(f"saved policy {policy.DEFAULT_LOCAL_POLICY['name']!r}")
        elif args.action == "delete":
            policy.delete(storage, args.name)
            print(f"deleted policy {args.name!r}")
        else:
            state = {"enable": "on", "disable": "off", "report-only": "report-only"}[args.action]
            policy.set_state(storage, args.name, state)
            print(f"policy {args.name!r} is now {state}")
    elif args.area == "locations":
        policy.save_location(storage, args.name, args.cidrs)
        print(f"named location {args.name!r}: {', '.join(args.cidrs)}")
    elif args.area == "users":
        return _users(args, storage)
    elif args.area == "sends":
        return _sends(args, storage)
    elif args.area == "extensions":
        return _extensions(args, storage)
    elif args.area == "log":
        rows = signinlog.tail(storage, days=args.days, limit=args.limit)
        for r in rows:
            r["policies"] = _policy_results(r.get("policies"))
        _print(rows, ["time", "result", "reason", "flow", "user", "user_oid", "client_id", "ip", "factors", "risk",
                      "policies", "correlation_id"])
    return 0


def _extensions(args, storage) -> int:
    """Custom authentication extensions (shared/extensions): configured here, stored next to the policies."""
    from shared.extensions import config
    from shared.settings import get_settings

    settings = get_settings()
    if args.action == "list":
        _print([{"name": e["name"], "event": e["event"], "state": e.get("state"), "url": e["url"],
                 "clients": ",".join(e["clients"]), "on_error": e["on_error"], "timeout_ms": e["timeout_ms"]}
                for e in config.load(storage, fresh=True)],
               ["name", "event", "state", "url", "clients", "on_error", "timeout_ms"])
        return 0
    if args.action == "create":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            saved = config.save(storage, settings, json.loads(text))
        except (config.ExtensionConfigError, ValueError) as exc:
            print(f"extension: {exc}", file=sys.stderr)
            return 2
        print(f"saved extension {saved['name']!r} ({saved['event']}, {saved['state']}); instances pick it up within "
              f"{int(config.CACHE_SECONDS)} s")
        return 0
    found = next((e for e in config.load(storage, fresh=True) if e["name"] == args.name), None)
    if found is None:
        print(f"no extension {args.name!r}", file=sys.stderr)
        return 2
    if args.action == "delete":
        config.delete(storage, args.name)
        print(f"deleted extension {args.name!r}")
    elif args.action in ("enable", "disable"):
        config.save(storage, settings, {**found, "state": "on" if args.action == "enable" else "off"})
        print(f"extension {args.name!r} is now {'on' if args.action == 'enable' else 'off'}")
    else:
        return _extension_test(storage, settings, found, args)
    return 0


def _extension_test(storage, settings, ext, args) -> int:
    """One call with a sample payload of the extension's event: the outcome, the latency and what the
    service would do with the answer (never the raw answer)."""
    from shared.extensions import caller, events

    user = _user(storage, args.user) if args.user else None
    probe = {**ext, "state": "on", "clients": ["all"], "on_error": "fail"}
    try:
        if ext["event"] == "tokenIssuanceStart":
            if user is None:
                raise SystemExit("--user is required for tokenIssuanceStart")
            result = events.call_event(storage, settings, probe, "token", client_id=args.client, user=user)
        elif ext["event"] in ("attributeCollectionStart", "attributeCollectionSubmit"):
            result = events.call_event(storage, settings, probe, ext["event"], client_id=args.client,
                                       email=(user.email if user else "someone@example.com"), attributes={})
        elif ext["event"] == "otpSend":
            result = events.call_event(storage, settings, probe, "otp", client_id=args.client,
                                       to=(user.email if user else "someone@example.com"), code="00000000")
        else:
            if user is None:
                raise SystemExit("--user is required for passwordSubmit")
            result = events.call_event(storage, settings, probe, "password", client_id=args.client, user=user,
                                       password="not-a-real-password")
    except caller.ExtensionFailed as exc:
        print(f"FAIL  {ext['name']}: {exc.kind} (AADSTS{exc.error_codes[0]})")
        return 1
    print(f"ok    {ext['name']} ({ext['event']}): {json.dumps(result, default=str)[:500]}")
    return 0


def _doctor(args) -> int:
    """Readiness report from this machine's settings (the app's, exported; or local.settings.json).
    Exit status 0 when nothing failed, 1 otherwise."""
    from shared.storage.maintenance import readiness

    checks = readiness()
    if args.json:
        print(json.dumps({"checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
        for c in checks:
            print(f"{marks[c.status]}  {c.name}: {c.detail}")
            if c.fix and c.status in ("warn", "fail"):
                print(f"      fix: {c.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def _sends(args, storage) -> int:
    """SMS sends, verifications and conversion per country and prefix, and the
    active suspensions (shared/security/limits.py, the pumping defence)."""
    import time

    from shared.security import limits
    from shared.settings import get_settings

    action = args.action or "report"
    if action == "suspend":
        kind = "pfx" if args.kind == "prefix" else "cty"
        value = args.value.strip().upper() if kind == "cty" else args.value.strip()
        limits.suspend(storage, get_settings(), kind, value, "suspended by an operator", int(args.hours * 3600))
        print(f"SMS to new numbers of {args.kind} {value} suspended for {args.hours:g} h")
        return 0
    if action == "lift":
        if not limits.lift(storage, args.key):
            print(f"no suspension {args.key}", file=sys.stderr)
            return 2
        print(f"lifted {args.key}")
        return 0
    report = limits.report(storage, getattr(args, "day", None))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, default=str))
        return 0

    def rows(block: dict) -> list[dict]:
        out = []
        for name, v in sorted(block.items(), key=lambda kv: -kv[1]["sent"]):
            conv = f"{100 * v['verified'] // v['sent']}%" if v["sent"] else "-"
            out.append({"where": name, "sent": v["sent"], "verified": v["verified"], "conversion": conv})
        return out

    print(f"SMS on {report['day']} (UTC), by country:")
    _print(rows(report["countries"]), ["where", "sent", "verified", "conversion"])
    print("\nby number prefix (E.164 less its last four digits):")
    _print(rows(report["prefixes"]), ["where", "sent", "verified", "conversion"])
    print("\nactive suspensions of SMS to new numbers:")
    _print([{"key": s["RowKey"], "what": s.get("label", ""), "until": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(s["until"]))),
             "reason": s.get("reason", "")} for s in report["suspensions"]], ["key", "what", "until", "reason"])
    return 0


def _policy_results(raw) -> str:
    """Each evaluated policy as ``name=result`` (``[report-only]`` marked), so
    report-only policies can be judged from the log."""
    try:
        results = json.loads(raw or "[]")
    except ValueError:
        return ""
    return "; ".join(f"{p.get('name')}={p.get('result')}" + (" [report-only]" if p.get("state") == "report-only" else "")
                     for p in results if p.get("result") not in (None, "not_applied", "not_evaluated")) or "-"


def _users(args, storage) -> int:
    if args.action == "list":
        rows = storage.table("users").query("RowKey eq @r", {"r": directory.USER_RK},
                                            select=["email", "oid", "disabled", "methods", "lockout_until"])
        _print([{"email": r["email"], "oid": r["oid"], "disabled": r.get("disabled"),
                 "methods": len(json.loads(r.get("methods") or "[]"))} for r in rows], ["email", "oid", "disabled", "methods"])
        return 0
    if args.action == "create":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        try:
            user = directory.create_user(storage, normalize_email(args.email), password=password, display_name=args.name)
        except directory.UserExists:
            raise SystemExit(f"user exists: {args.email}")
        except InvalidIdentifier:
            raise SystemExit(f"not an email address: {args.email}")
        print(f"created {user.email} ({user.oid})")
        return 0
    if args.action == "delete":
        # Idempotent, like DELETE /me: an address without an account is nothing to do.
        from shared.flows import account
        from shared.settings import get_settings

        try:
            found = directory.get_user(storage, normalize_email(args.email))
        except InvalidIdentifier:
            raise SystemExit(f"not an email address: {args.email}")
        if found is None:
            print(f"no account for {args.email} (nothing to delete)")
            return 0
        account.delete_user(storage, get_settings(), found, actor="admin")
        print(f"deleted {found.email}: account, methods, sessions and open flows; the sign-in log keeps a "
              f"pseudonymous record; a goodbye email was sent")
        return 0
    user = _user(storage, args.email)
    if args.action == "show":
        print(f"{user.email}  oid={user.oid}  disabled={user.disabled}  password={'yes' if user.has_password else 'no'}")
        _print([{**m, "target": m["target"]} for m in user.methods], ["id", "channel", "target", "default"])
    elif args.action == "remove-method":
        from shared.security import methods
        from shared.settings import get_settings

        if not methods.remove_method(storage, get_settings(), user, args.method_id):
            raise SystemExit(f"no method {args.method_id}")
        print(f"removed method {args.method_id} (the account was notified)")
    elif args.action in ("disable", "enable"):
        import time

        changes = {"disabled": args.action == "disable"}
        if args.action == "disable":
            changes["rt_not_before"] = time.time()  # every session and open flow ends now
        directory.update_user(storage, user, **changes)
        print(f"{args.action}d {user.email}")
    elif args.action == "unlock":
        directory.update_user(storage, user, failed_logins=0, lockout_until=0, **directory.all_code_failures_cleared())
        print(f"unlocked {user.email}")
    elif args.action == "groups":
        directory.update_user(storage, user, groups=",".join(args.groups))
        print(f"groups of {user.email}: {', '.join(args.groups) or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
