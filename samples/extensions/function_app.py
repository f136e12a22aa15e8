"""Sample custom authentication extensions (Azure Functions, Python v2 model).

Four HTTP endpoints answer Microsoft Entra's custom-authentication-extension
events with Entra's documented JSON, so they work against Entra External ID and
against the native-auth backend of this repository alike; only the configured
issuer (EXTENSION_ISSUER) and audience (EXTENSION_AUDIENCE) differ:

  POST /api/token-issuance-start         custom claims from ROLES_FILE
  POST /api/attribute-collection-start   prefill from PREFILL
  POST /api/attribute-collection-submit  invitation-code check, display-name clean-up
  POST /api/otp-send                     console OTP sender (email and SMS)
  POST /api/password-submit              just-in-time password migration from LEGACY_USERS
  GET  /api/health                       200 {"status": "ok"} (no token needed)

Every event call must carry the issuer's bearer token (see extsample/auth.py).
The logic lives in extsample/; this file is the HTTP adapter only.
"""

import json
import logging
import os
from collections.abc import Mapping

import azure.functions as func

from extsample import auth, events
from extsample.config import ConfigError, Settings

log = logging.getLogger("extensions_sample")


def _json(status: int, body: dict, headers: dict | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json",
                             headers=headers)


def _error(status: int, error: str, description: str, headers: dict | None = None) -> func.HttpResponse:
    return _json(status, {"error": error, "error_description": description}, headers)


def create_app(settings: Mapping[str, str] | None = None) -> func.FunctionApp:
    """A FunctionApp whose settings come from ``settings`` (default: the environment, read per request)."""
    values = os.environ if settings is None else dict(settings)
    state = events.State()
    keys = auth.SigningKeys()
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)  # the bearer token is the authentication
    app.signing_keys = keys  # for tests: how often the JWKS was fetched

    def run(event: events.Event, req: func.HttpRequest) -> func.HttpResponse:
        try:
            config = Settings(values)
            auth.check_bearer(req.headers.get("authorization"), config, keys)
            try:
                body = json.loads(req.get_body() or b"")
            except ValueError:
                raise events.BadRequest("the body is not JSON") from None
            return _json(200, event.handle(body, config, state))
        except auth.Unauthorized as exc:
            log.warning("%s: 401 %s", event.name, exc)
            return _error(401, "invalid_token", str(exc),
                          {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        except auth.KeysUnavailable as exc:
            log.error("%s: 503 %s", event.name, exc)
            return _error(503, "temporarily_unavailable", "The issuer's signing keys cannot be fetched.",
                          {"Retry-After": "5"})
        except events.BadRequest as exc:
            log.warning("%s: 400 %s", event.name, exc)
            return _error(400, "invalid_request", str(exc))
        except ConfigError as exc:
            log.error("%s: 500 configuration problem: %s", event.name, exc)
            return _error(500, "server_error", "The extension is misconfigured; see its log.")
        except Exception:  # noqa: BLE001 - a bug: log the traceback, answer JSON
            log.exception("%s: 500 unexpected error", event.name)
            return _error(500, "server_error", "The extension failed; see its log.")

    @app.route(route="token-issuance-start", methods=["POST"])
    def token_issuance_start(req: func.HttpRequest) -> func.HttpResponse:
        return run(events.TOKEN_ISSUANCE_START, req)

    @app.route(route="attribute-collection-start", methods=["POST"])
    def attribute_collection_start(req: func.HttpRequest) -> func.HttpResponse:
        return run(events.ATTRIBUTE_COLLECTION_START, req)

    @app.route(route="attribute-collection-submit", methods=["POST"])
    def attribute_collection_submit(req: func.HttpRequest) -> func.HttpResponse:
        return run(events.ATTRIBUTE_COLLECTION_SUBMIT, req)

    @app.route(route="otp-send", methods=["POST"])
    def otp_send(req: func.HttpRequest) -> func.HttpResponse:
        return run(events.OTP_SEND, req)

    @app.route(route="password-submit", methods=["POST"])
    def password_submit(req: func.HttpRequest) -> func.HttpResponse:
        return run(events.PASSWORD_SUBMIT, req)

    @app.route(route="health", methods=["GET"])
    def health(req: func.HttpRequest) -> func.HttpResponse:
        return _json(200, {"status": "ok"})

    return app


app = create_app()
