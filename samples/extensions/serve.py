"""Start the sample on a free port, in this process, with given settings; stop it.

For tests of the main project (and this sample's own tests). The app is served
over real HTTP by the repository's ``devhost`` (the local stand-in for
``func start``), with the route prefix of this folder's host.json::

    import importlib.util, pathlib
    spec = importlib.util.spec_from_file_location(
        "extensions_sample_serve", pathlib.Path("samples/extensions/serve.py"))
    serve = importlib.util.module_from_spec(spec); spec.loader.exec_module(serve)

    base_url, stop = serve.start({"EXTENSION_ISSUER": issuer, "EXTENSION_AUDIENCE": "api://localhost/extensions",
                                  "ROLES_FILE": str(roles_json), ...})
    try:
        ...  # POST f"{base_url}/token-issuance-start" etc.; base_url ends in /api
    finally:
        stop()

or ``with serve.running(settings) as base_url: ...``. Settings are passed to the
app as a dict; the process environment is neither read nor changed, so several
instances with different settings can run side by side.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
_MODULE_NAME = "extensions_sample_function_app"  # not "function_app": the main app has that name
_lock = threading.Lock()


def _function_app_module():
    with _lock:
        module = sys.modules.get(_MODULE_NAME)
        if module is None:
            if str(HERE) not in sys.path:
                sys.path.insert(0, str(HERE))  # for `import extsample`, as the Functions host would
            spec = importlib.util.spec_from_file_location(_MODULE_NAME, HERE / "function_app.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[_MODULE_NAME] = module
        return module


def _local_host_class():
    try:
        from devhost.server import LocalHost
    except ImportError:
        if str(REPO_ROOT) not in sys.path:
            sys.path.append(str(REPO_ROOT))
        from devhost.server import LocalHost
    return LocalHost


def start_host(settings: Mapping[str, str], *, host: str = "127.0.0.1", port: int = 0):
    """The started devhost ``LocalHost`` serving a new app instance: ``.base_url``, ``.stop()``,
    ``.app_settings`` (the settings given) and ``.app.signing_keys.fetches`` (JWKS downloads so far)."""
    values = {k: str(v) for k, v in settings.items()}
    app = _function_app_module().create_app(values)
    local_host = _local_host_class()(app, host=host, port=port, host_json_path=HERE / "host.json")
    local_host.app, local_host.app_settings = app, values
    return local_host.start()


def start(settings: Mapping[str, str], *, host: str = "127.0.0.1",
          port: int = 0) -> tuple[str, Callable[[], None]]:
    """(base_url, stop): the sample listening on ``host``:``port`` (0: a free port).

    ``base_url`` includes the route prefix, e.g. ``http://127.0.0.1:41234/api``.
    """
    local_host = start_host(settings, host=host, port=port)
    return local_host.base_url, local_host.stop


@contextlib.contextmanager
def running(settings: Mapping[str, str], **kwargs) -> Iterator[str]:
    base_url, stop = start(settings, **kwargs)
    try:
        yield base_url
    finally:
        stop()
