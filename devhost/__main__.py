"""python -m devhost [--host H] [--port P] [--app module:attr] [--cert FILE --key FILE]

Serves the Function App from the current directory until Ctrl-C / SIGTERM,
loading local.settings.json "Values" into the environment first like
`func start` (variables already set in the environment win).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

from devhost.server import LocalHost


def load_local_settings(path: Path) -> None:
    if not path.is_file():
        return
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    for key, value in values.items():
        if key in os.environ:
            print(f"Skipping '{key}' from local settings as it's already defined "
                  "in current environment variables.")
        else:
            os.environ[key] = str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost",
                                     description="Serve the Function App locally, like `func start`.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--cert", help="PEM certificate chain (enables https)")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument("--settings", default="local.settings.json")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    sys.path.insert(0, os.getcwd())
    load_local_settings(Path(args.settings))
    module_name, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "app")

    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    host = LocalHost(app, host=args.host, port=args.port, ssl_context=context).start()
    print(f"devhost listening on {host.origin} (route prefix '/{host.route_prefix}')\n")
    print("Functions:\n")
    for line in host.describe():
        print(f"\t{line}\n")
    print("For detailed output, see the devhost log lines. Press Ctrl+C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
    print("devhost stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
