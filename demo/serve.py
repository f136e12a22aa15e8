"""Build and serve the demo web app (demo/web): a sign-in page on Microsoft's
MSAL JS ``custom-auth`` SDK pointed at this backend.

* :func:`build` bundles ``demo/web/app.js`` with the repository's esbuild
  (``node_modules/.bin/esbuild``) into ``out_dir`` (never into the work tree)
  and copies the static files next to it.
* :func:`serve` serves ``out_dir`` on ``http://localhost:<port>/`` (a secure
  context, which the SDK's crypto needs; the API's default local CORS rule
  allows ``http://localhost:*``) with a stdlib threaded HTTP server, and
  answers ``/config.js`` with the API base URL given at serve time.

Manual use::

    python -m demo.serve --port 7072 --api http://127.0.0.1:7071/api
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WEB = HERE / "web"
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
STATIC_FILES = ("index.html", "styles.css")

DEFAULT_API = "http://127.0.0.1:7071/api"
DEFAULT_PORT = 7072
CLIENT_ID = "00000000-0000-0000-0000-000000000001"


class DemoError(RuntimeError):
    pass


def build(out_dir: Path) -> None:
    """Bundle demo/web/app.js (and @azure/msal-browser/custom-auth) into out_dir."""
    out_dir = Path(out_dir)
    if out_dir.resolve().is_relative_to(WEB.resolve()):
        raise DemoError(f"refusing to build into the sources ({out_dir})")
    if not ESBUILD.exists():
        raise DemoError(f"{ESBUILD.relative_to(ROOT)} is missing: run `npm ci` in {ROOT} (`make bootstrap` does).")
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(ESBUILD), str(WEB / "app.js"), "--bundle", "--format=iife", "--platform=browser",
           "--target=es2020", "--minify", "--sourcemap", "--log-level=warning", f"--outfile={out_dir / 'app.js'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise DemoError(f"esbuild failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for name in STATIC_FILES:
        shutil.copyfile(WEB / name, out_dir / name)


def config_script(api_base: str, client_id: str = CLIENT_ID) -> bytes:
    """The /config.js the page loads before app.js."""
    data = json.dumps({"apiBase": api_base, "clientId": client_id})
    # "<" escaped so the value can never close a script element.
    return f"window.NATIVE_AUTH_DEMO = Object.freeze({data.replace('<', chr(92) + 'u003c')});\n".encode()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


class _Handler(http.server.SimpleHTTPRequestHandler):
    config_js: bytes = b""
    csp: str = ""
    quiet: bool = True

    def do_GET(self):  # noqa: N802 - the base class's name
        if self.path.split("?", 1)[0] == "/config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(self.config_js)))
            self.end_headers()
            self.wfile.write(self.config_js)
            return
        super().do_GET()

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", self.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if not self.quiet:
            super().log_message(format, *args)


class DemoSite:
    """The demo on http://localhost:<port>/ (listening on 127.0.0.1); ``stop()`` ends it."""

    def __init__(self, port: int, api_base: str, out_dir: Path, *, quiet: bool = True):
        connect = " ".join(o for o in ("'self'", _origin(api_base)) if o)
        handler = type("DemoHandler", (_Handler,), {
            "config_js": config_script(api_base),
            "csp": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                    f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
            "quiet": quiet,
        })
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", port), functools.partial(handler, directory=str(out_dir)))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.api_base = api_base
        self.url = f"http://localhost:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-site", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "DemoSite":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(port: int, api_base: str, out_dir: Path, *, quiet: bool = True) -> DemoSite:
    """Serve a built demo (see :func:`build`) on http://localhost:<port>/ (port 0: any free port)."""
    if not (Path(out_dir) / "app.js").is_file():
        raise DemoError(f"{out_dir} has no app.js: call build({out_dir!s}) first")
    return DemoSite(port, api_base.rstrip("/"), Path(out_dir), quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.serve", description="Build and serve the demo sign-in page.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api", default=DEFAULT_API, help=f"the API base URL (default {DEFAULT_API})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="native-auth-demo-") as tmp:
        try:
            build(Path(tmp))
            site = serve(args.port, args.api, Path(tmp), quiet=False)
        except (DemoError, OSError) as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        print(f"demo app on {site.url} (API {site.api_base}); Ctrl-C stops it", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            site.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
