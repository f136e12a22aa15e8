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
                          | import <file.jsonl|-> [--dry-run]
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
    im = u.add_parser("import", help="create users from JSON lines (email, displayName, attributes, methods, "
                                     "and migrate: true or passwordHash); existing addresses are skipped")
    im.add_argument("file", help="a JSON-lines file, or - for stdin")
    im.add_argument("--dry-run", action="store_true", help="validate every line, create nothing")

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
    t.add_argument("--days", type=int, default=1, help="the last D × 24 hours (default 1)")

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
    if args.action == "import":
        return _users_import(args, storage)
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
        password = "yes" if user.has_password else "to migrate at first sign-in" if user.password_migrating else "no"
        print(f"{user.email}  oid={user.oid}  disabled={user.disabled}  password={password}")
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


IMPORT_FIELDS = ("email", "displayName", "attributes", "methods", "migrate", "passwordHash")
IMPORT_MAX_LINE_CHARS = 64 * 1024
IMPORT_MAX_METHODS = 10


class _BadLine(ValueError):
    """A line that cannot be imported; the message names the field and the rule, never a hash."""


def _users_import(args, storage) -> int:
    """``users import <file.jsonl|->``: one user per JSON line. Every line is
    validated the way sign-up and registration validate (the address, the
    sign-up attribute schema, second-factor methods, and the password hash
    kinds the sign-in verifies); bad lines are reported by number and
    skipped, existing addresses are skipped (so a corrected file can be run
    again), hashes are never printed. Exit status 2 when a line was bad."""
    import secrets
    import time

    from shared.settings import get_settings

    settings = get_settings()
    stream = sys.stdin if args.file == "-" else None
    if stream is None:
        try:
            stream = open(args.file, encoding="utf-8")
        except OSError as exc:
            print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    created: dict[str, int] = {}
    skipped = bad = 0
    seen: dict[str, int] = {}
    number = 0
    try:
        for number, line in enumerate(stream, 1):
            if number == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                record = _import_record(line, settings)
            except _BadLine as exc:
                bad += 1
                print(f"line {number}: bad: {exc}")
                continue
            email = record["email"]
            if email in seen:
                bad += 1
                print(f"line {number}: bad: the same address as line {seen[email]}")
                continue
            seen[email] = number
            if args.dry_run:
                exists = directory.get_user(storage, email) is not None
            else:
                now = int(time.time())
                methods = [{"id": secrets.token_hex(8), "channel": m["channel"], "target": m["target"],
                            "default": m["default"], "created": now} for m in record["methods"]]
                try:
                    directory.create_user(storage, email, password_hash=record["password_hash"],
                                          display_name=record["display_name"], attributes=record["attributes"],
                                          methods=methods, migrate_password=record["migrate"],
                                          extra={"imported_at": now})
                    exists = False
                except directory.UserExists:
                    exists = True
            if exists:
                skipped += 1
                print(f"line {number}: skipped: {email} exists")
                continue
            created[record["kind"]] = created.get(record["kind"], 0) + 1
    except UnicodeDecodeError:
        bad += 1
        print(f"line {number + 1}: bad: not UTF-8 text (the rest of the file was not read)")
    finally:
        if stream is not sys.stdin:
            stream.close()
    labels = {"migrate": "to migrate at first sign-in", "argon2": "with an argon2id hash",
              "bcrypt": "with a bcrypt hash", "pbkdf2_sha256": "with a PBKDF2-SHA256 hash",
              "none": "without a password (email code sign-in)"}
    total = sum(created.values())
    detail = ", ".join(f"{created[k]} {labels[k]}" for k in labels if created.get(k))
    verb = "would import" if args.dry_run else "imported"
    print(f"{verb} {total} user{'s' if total != 1 else ''}" + (f" ({detail})" if detail else "") +
          f", skipped {skipped} existing, {bad} bad line{'s' if bad != 1 else ''}")
    return 2 if bad else 0


def _import_record(line: str, settings) -> dict:
    """One JSON line as the user to create, or :class:`_BadLine`."""
    from shared.flows import attributes as attribute_schema
    from shared.protocol import errors
    from shared.protocol.identifiers import BlockedNumber, normalize_phone
    from shared.security import methods as method_rules, passwords

    if len(line) > IMPORT_MAX_LINE_CHARS:
        raise _BadLine(f"longer than {IMPORT_MAX_LINE_CHARS} characters")
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise _BadLine(f"not JSON ({exc.msg if hasattr(exc, 'msg') else 'nested too deeply'})") from None
    if not isinstance(raw, dict):
        raise _BadLine("not a JSON object")
    unknown = sorted(set(raw) - set(IMPORT_FIELDS))
    if "password" in unknown:
        raise _BadLine("password: plain-text passwords are not imported (use passwordHash, or migrate: true)")
    if unknown:
        raise _BadLine("unknown fields: " + ", ".join(repr(k)[:40] for k in unknown[:5]))
    try:
        email = normalize_email(raw.get("email") if isinstance(raw.get("email"), str) else None)
    except InvalidIdentifier:
        raise _BadLine("email: missing or not an email address") from None

    submitted = raw.get("attributes", {})
    if not isinstance(submitted, dict):
        raise _BadLine("attributes: a JSON object")
    schema = settings.signup_attributes
    outside = sorted(set(submitted) - {spec["name"] for spec in schema})
    if outside:
        raise _BadLine("attributes: not in the sign-up schema (AUTH_SIGNUP_ATTRIBUTES): " +
                       ", ".join(repr(k)[:40] for k in outside[:5]))
    if "displayName" in raw:
        name = raw["displayName"]
        if submitted.get("displayName") not in (None, name):
            raise _BadLine("displayName and attributes.displayName differ")
        submitted = {**submitted, "displayName": name}
    try:
        values = attribute_schema.accept(schema, submitted)
    except errors.InvalidGrant as exc:
        names = [a["name"] for a in exc.extra.get("invalid_attributes", [])]
        raise _BadLine("attributes not valid for the sign-up schema: " + ", ".join(names)) from None
    display_name = values.get("displayName", "")
    if "displayName" in raw and not display_name:
        # No displayName in the schema: the sign-up rules for a string value still apply.
        try:
            display_name = attribute_schema.accept(({"name": "displayName", "type": "string", "required": False},),
                                                   {"displayName": raw["displayName"]}).get("displayName", "")
        except errors.InvalidGrant:
            display_name = ""
        if not display_name:
            raise _BadLine("displayName: a non-empty string without control characters")

    entries = raw.get("methods", [])
    if not isinstance(entries, list) or len(entries) > IMPORT_MAX_METHODS:
        raise _BadLine(f"methods: a list of at most {IMPORT_MAX_METHODS}")
    found: list[dict] = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) - {"channel", "target", "default"} \
                or entry.get("channel") not in ("email", "sms") or not isinstance(entry.get("target"), str) \
                or not isinstance(entry.get("default", False), bool):
            raise _BadLine(f'methods[{i}]: {{"channel": "email" or "sms", "target": "...", "default": true/false}}')
        try:
            if entry["channel"] == "email":
                target = normalize_email(entry["target"])
                if method_rules.mailbox_key(target) == method_rules.mailbox_key(email):
                    raise _BadLine(f"methods[{i}]: the sign-in address cannot be its own second factor")
            else:
                target = normalize_phone(entry["target"], region=settings.default_phone_region,
                                         allowed_countries=settings.sms_allowed_countries)
        except InvalidIdentifier:
            raise _BadLine(f"methods[{i}]: not a valid {'email address' if entry['channel'] == 'email' else 'mobile number'}") from None
        except BlockedNumber:
            raise _BadLine(f"methods[{i}]: SMS cannot go to this number (line type or country)") from None
        if any(m["channel"] == entry["channel"] and m["target"] == target for m in found):
            continue  # the same method twice: once
        found.append({"channel": entry["channel"], "target": target, "default": entry.get("default", False)})
    default = next((m for m in found if m["default"]), found[0] if found else None)
    for m in found:
        m["default"] = m is default

    migrate = raw.get("migrate", False)
    if not isinstance(migrate, bool):
        raise _BadLine("migrate: true or false")
    stored = raw.get("passwordHash")
    if stored is not None and migrate:
        raise _BadLine("migrate: true and passwordHash: one or the other")
    kind = "migrate" if migrate else "none"
    if stored is not None:
        try:
            kind = passwords.check_importable(stored)
        except passwords.UnsupportedHash as exc:
            raise _BadLine(f"passwordHash: {exc}") from None
    return {"email": email, "display_name": display_name, "attributes": values, "methods": found,
            "migrate": migrate, "password_hash": stored, "kind": kind}


if __name__ == "__main__":
    sys.exit(main())
