"""`make run`: everything a fresh clone needs to serve the API locally.

1. creates ``local.settings.json`` from the example on first run, with freshly
   generated secrets (the code-hashing key and the secret that encrypts the
   signing keys the app generates and stores in Table Storage);
2. starts Azurite (Table) on 127.0.0.1:10002 with its data under ``.local/``
   (or reuses one already listening there);
3. serves the Function App on http://127.0.0.1:7071/api until Ctrl-C.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from pathlib import Path

from devhost import azurite

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "local.settings.json"
EXAMPLE = ROOT / "local.settings.json.example"
LOCAL = ROOT / ".local"
AZURITE_PORT = 10002
API_PORT = 7071


def ensure_settings() -> dict:
    if not SETTINGS.exists():
        data = json.loads(EXAMPLE.read_text())
        for name in ("AUTH_CODE_HASH_KEY", "AUTH_SIGNING_KEY_SECRET"):
            data["Values"][name] = base64.b64encode(secrets.token_bytes(48)).decode()
        SETTINGS.write_text(json.dumps(data, indent=2) + "\n")
        os.chmod(SETTINGS, 0o600)
        print(f"created {SETTINGS.name} with freshly generated development secrets")
    return json.loads(SETTINGS.read_text())["Values"]


def seed_default_policy(values: dict) -> None:
    """The local default: a second factor for every sign-in (only when no policy exists yet)."""
    from shared.security import policy
    from shared.settings import Settings
    from shared.storage.tables import Storage

    env = {**values, **{k: v for k, v in os.environ.items() if k.startswith("AUTH_")}}
    storage = Storage(Settings.from_env(env))
    storage.ensure_tables()
    if not policy.load(storage)[0]:
        policy.save(storage, policy.DEFAULT_LOCAL_POLICY)
        print(f"added the local default policy: {policy.DEFAULT_LOCAL_POLICY['name']!r} "
              "(python -m admin policies list|disable ...)")


DEMO_PORT = 7072


def start_demo():
    """Build the demo page (esbuild, into .local/demo) and serve it on http://localhost:7072/."""
    from demo.serve import DemoError, build, serve

    out = LOCAL / "demo"
    try:
        build(out)
        return serve(DEMO_PORT, f"http://127.0.0.1:{API_PORT}/api", out)
    except (DemoError, OSError) as exc:
        print(f"demo page not started: {exc}", file=sys.stderr)
        return None


def main() -> int:
    os.chdir(ROOT)
    LOCAL.mkdir(exist_ok=True)
    values = ensure_settings()
    if azurite.port_open(API_PORT):
        print(f"port {API_PORT} is already in use: is 'make run' already running? Stop it first.", file=sys.stderr)
        return 1
    store = None
    if azurite.port_open(AZURITE_PORT):
        print(f"reusing the Azurite already listening on 127.0.0.1:{AZURITE_PORT}")
    else:
        store = azurite.Azurite(AZURITE_PORT, location=LOCAL / "azurite", log_path=LOCAL / "azurite.log").start()
        print(f"started Azurite (Table) on 127.0.0.1:{AZURITE_PORT}, data in .local/azurite")
    seed_default_policy(values)
    demo = start_demo()
    outbox = values.get("AUTH_OUTBOX_PATH", ".local/outbox.jsonl")
    print("\n  API base URL        http://127.0.0.1:%d/api" % API_PORT)
    print("  development client  %s" % values.get("AUTH_DEV_CLIENT_ID"))
    if demo is not None:
        print("  demo sign-in page   %s  (MSAL JS custom-auth)" % demo.url)
    print("  one-time codes      printed below and appended to %s" % outbox)
    if values.get("AUTH_LOCAL_DEVELOPER_RELIEF", "true").lower() not in ("0", "false", "no", "off") \
            and values.get("AUTH_DELIVERY", "outbox").lower() == "outbox":
        print("  send limits         relaxed for this machine (loopback): no per-IP or per-account limit, 10x the")
        print("                      per-address caps, no global budget; other clients, and everyone once")
        print("                      AUTH_DELIVERY=acs sends real messages, get the production limits")
        print("                      (AUTH_LOCAL_DEVELOPER_RELIEF=false in local.settings.json to turn it off)")
    print(flush=True)
    from devhost.__main__ import main as serve

    try:
        return serve(["--port", str(API_PORT)])
    finally:
        if demo is not None:
            demo.stop()
        if store is not None:
            store.stop()
            print("stopped Azurite")


if __name__ == "__main__":
    sys.exit(main())
