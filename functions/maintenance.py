"""Health endpoint, the not-found fallback, and the timer that purges expired state."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.protocol.http import Request, Response
from shared.settings import Settings

from ._http import ANON, lazy, serve, unresolved

bp = func.Blueprint()
_health = lazy("shared.storage.maintenance", "health")
_health_detail = lazy("shared.storage.maintenance", "health_detail")
_purge_expired = lazy("shared.storage.maintenance", "purge_expired")
_not_found = lazy("shared.storage.maintenance", "not_found")


def _checked_health(request: Request, settings: Settings) -> Response:
    broken = unresolved()   # the first health check also loads every handler's modules
    if broken:
        return Response(503, {"status": "misconfigured", "handlers": "failed to load",
                              "reason": "; ".join(broken)[:1000]}, {"Retry-After": "30"})
    return _health(request, settings)


@bp.function_name("health")
@bp.route(route="health", methods=["GET", "OPTIONS"], auth_level=ANON)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return serve("health", req, _checked_health, methods="GET")


@bp.function_name("health_detail")
@bp.route(route="health/detail", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def health_detail(req: func.HttpRequest) -> func.HttpResponse:
    """The readiness report (python -m admin doctor): the host's admin (master) key is required in Azure."""
    return serve("health_detail", req, _health_detail, methods="GET")


@bp.function_name("purge_expired")
@bp.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False, use_monitor=True)
def purge_expired(timer: func.TimerRequest) -> None:
    counts = _purge_expired()
    logging.getLogger("nativeauth.maintenance").info("purged %s", counts)


@bp.function_name("not_found")
@bp.route(route="{*path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"], auth_level=ANON)
def not_found(req: func.HttpRequest) -> func.HttpResponse:
    """Unknown paths get the contract's JSON error (404), known paths with the wrong method 405."""
    return serve("not_found", req, _not_found, methods="GET, POST, PUT, PATCH, DELETE, HEAD")
