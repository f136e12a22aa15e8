"""Health endpoint, the not-found fallback, and the timer that purges expired state."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.storage import maintenance

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET", "OPTIONS"], auth_level=ANON)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return serve("health", req, maintenance.health, methods="GET")


@bp.function_name("health_detail")
@bp.route(route="health/detail", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def health_detail(req: func.HttpRequest) -> func.HttpResponse:
    """The readiness report (python -m admin doctor): the host's admin (master) key is required in Azure."""
    return serve("health_detail", req, maintenance.health_detail, methods="GET")


@bp.function_name("purge_expired")
@bp.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False, use_monitor=True)
def purge_expired(timer: func.TimerRequest) -> None:
    counts = maintenance.purge_expired()
    logging.getLogger("nativeauth.maintenance").info("purged %s", counts)


@bp.function_name("not_found")
@bp.route(route="{*path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"], auth_level=ANON)
def not_found(req: func.HttpRequest) -> func.HttpResponse:
    """Unknown paths get the contract's JSON error (404), known paths with the wrong method 405."""
    return serve("not_found", req, maintenance.not_found, methods="GET, POST, PUT, PATCH, DELETE, HEAD")
