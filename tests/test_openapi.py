"""The OpenAPI 3.1 description (openapi/openapi.json): it is valid, it is served
at /api/openapi.json, it lists exactly the app's routes, its examples match
their schemas, and real responses of the main flows and of the error cases
(the native-auth API and the account API, /me) match the response schema the
document gives for that path and status (jsonschema with the OAS 3.1 dialect)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shared.flows import account
from shared.security import policy
from shared.storage import directory
from shared.storage.maintenance import ENDPOINTS
from shared.settings import _attribute_schema
from shared.storage.tables import StorageUnavailable

from conftest import ROOT, app_functions, unique_email

DOC_FILE = ROOT / "openapi" / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_FILE.read_text(encoding="utf-8"))
DOC_URI = "urn:native-auth:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource(contents=DOC, specification=DRAFT202012))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

PW = "correct horse battery staple"
NEW_PW = "a completely different passphrase"
SCOPE = "openid profile offline_access"
CAPS = "mfa_required registration_required"
PHONE = "+4915112345678"
ORIGIN = "http://localhost:5173"
ACCOUNT_SCOPE = "api://native-auth/account " + SCOPE
OTHER_SCOPE = "api://native-auth/access_as_user " + SCOPE
# Every operation of the account API: (path, method) -> operationId.
ACCOUNT_OPERATIONS = {(path, method): op["operationId"] for path, item in DOC["paths"].items()
                      if path.startswith("/me") for method, op in item.items()
                      if method in HTTP_METHODS and method != "options"}


# ---------------------------------------------------------------- helpers

def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(obj: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Follow an OpenAPI ``$ref`` (response objects are not JSON Schema)."""
    ref = obj.get("$ref")
    if ref is None:
        return obj, None
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, ref[1:]


def documented_response(path: str, method: str, status: int) -> tuple[dict[str, Any], str]:
    """The response object for (path, method, status) and a JSON pointer to it."""
    operation = DOC["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document status {status}"
    response, ref = _resolve(responses[str(status)])
    return response, ref or _pointer("paths", path, method.lower(), "responses", str(status))


def component_response(name: str) -> tuple[dict[str, Any], str]:
    return DOC["components"]["responses"][name], _pointer("components", "responses", name)


def validator_for(pointer: str) -> OAS31Validator:
    return OAS31Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=REGISTRY)


def _check_headers(response_obj: dict[str, Any], headers: dict[str, str], where: str) -> None:
    for name, header in response_obj.get("headers", {}).items():
        header, _ = _resolve(header)
        value = headers.get(name.lower())
        if value is None:
            assert not header.get("required"), f"{where}: required header {name} missing"
            continue
        schema = header.get("schema", {})
        instance: Any = value
        if schema.get("type") == "integer":
            assert value.strip().lstrip("-").isdigit(), f"{where}: header {name}={value!r} is not an integer"
            instance = int(value)
        errors_ = sorted(OAS31Validator(schema).iter_errors(instance), key=str)
        assert not errors_, f"{where}: header {name}={value!r}: {errors_[0].message}"


def _check_body(response_obj: dict[str, Any], pointer: str, resp, where: str) -> None:
    content = response_obj.get("content")
    if not content:
        return
    ctype = (resp.headers.get("content-type") or "").split(";")[0].strip()
    assert ctype in content, f"{where}: content type {ctype!r} not documented ({list(content)})"
    media_pointer = pointer + "/content/" + ctype.replace("~", "~0").replace("/", "~1")
    if "schema" not in content[ctype]:
        return
    assert isinstance(resp.body, (dict, list)), f"{where}: body is not JSON: {resp.raw[:200]!r}"
    errors_ = sorted(validator_for(media_pointer + "/schema").iter_errors(resp.body), key=lambda e: e.path)
    assert not errors_, f"{where}: body does not match the schema: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message}" for e in errors_[:5]) + f"\nbody: {json.dumps(resp.body)[:2000]}"


SEEN: set[tuple[str, str, int]] = set()


def check(resp, path: str, method: str = "post", status: int | None = None):
    """Assert ``resp`` matches what the document says for (path, method, its status)."""
    if status is not None:
        assert resp.status == status, f"{method.upper()} {path}: expected {status}, got {resp.status}: {resp.body}"
    response_obj, pointer = documented_response(path, method, resp.status)
    where = f"{method.upper()} {path} -> {resp.status}"
    _check_headers(response_obj, resp.headers, where)
    _check_body(response_obj, pointer, resp, where)
    SEEN.add((path, method.lower(), resp.status))
    return resp


def check_component(resp, name: str, status: int):
    assert resp.status == status, resp.body
    response_obj, pointer = component_response(name)
    _check_headers(response_obj, resp.headers, name)
    _check_body(response_obj, pointer, resp, name)
    return resp


def post(api, path: str, status: int | None = None, headers: dict[str, str] | None = None, **form):
    return check(api.post(path.lstrip("/"), headers=headers, **form), path, "post", status)


def get(api, path: str, status: int | None = None, headers: dict[str, str] | None = None):
    return check(api.get(path.lstrip("/"), headers=headers), path, "get", status)


def me(api, method: str, url: str, status: int | None = None, token: str | None = None, body: Any = None, *,
       raw: bytes | None = None, headers: dict[str, str] | None = None, path: str | None = None):
    """One account API call (JSON body), checked against the document (``path``: the
    documented path when ``url`` fills a template)."""
    h = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
    if token:
        h["Authorization"] = "Bearer " + token
    h.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return check(api.request(method.upper(), url.lstrip("/"), data, h), path or url, method.lower(), status)


def bearer_challenge(resp, error: str) -> dict[str, str]:
    """The ``WWW-Authenticate: Bearer`` challenge of a 401 as a dict; its error must be ``error``."""
    import re

    header = resp.headers.get("www-authenticate", "")
    assert header.startswith("Bearer "), header
    params = dict(re.findall(r'([a-z_]+)="([^"]*)"', header))
    assert params["error"] == error == resp["error"], (header, resp.body)
    assert set(resp.body) == {"error", "error_description"}, resp.body
    return params


@pytest.fixture
def policies(server):
    names: list[str] = []

    def add(**definition):
        definition.setdefault("name", f"openapi test policy {len(names)}")
        names.append(policy.save(server.storage, definition)["name"])

    yield add
    for name in names:
        policy.delete(server.storage, name)
    policy.clear_cache()


@pytest.fixture
def require_mfa(policies):
    policies(name="x", grant={"require_second_factor": True})


def sms_method() -> dict:
    return {"id": "m1", "channel": "sms", "target": PHONE, "default": True, "created": 1}


def password_first_factor(api, email: str, caps: str | None = CAPS, password: str = PW):
    r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="password oob redirect",
             capabilities=caps)
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=r["continuation_token"],
             challenge_type="password oob redirect")
    assert c["challenge_type"] == "password"
    return post(api, "/oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                password=password, scope=SCOPE, client_info="1")


# ---------------------------------------------------------------- the document itself

def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"] == "3.1.0"
    validate_spec(DOC)  # detects 3.1 from the document
    assert DOC["servers"] == [{"url": "/api", "description": DOC["servers"][0]["description"]}]


def test_every_schema_in_the_document_is_valid_json_schema():
    for name, schema in DOC["components"]["schemas"].items():
        OAS31Validator.check_schema(schema)


def test_document_is_served_and_equals_the_file(api):
    r = api.get("openapi.json")
    assert r.status == 200
    assert r.raw == DOC_FILE.read_bytes()
    assert r.headers["content-type"].startswith("application/json")
    check(r, "/openapi.json", "get", 200)
    assert r.headers["cache-control"].startswith("public")


def test_served_document_answers_preflight_and_other_methods(api):
    r = api.request("OPTIONS", "openapi.json", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    check(r, "/openapi.json", "options", 204)
    assert r.headers["access-control-allow-methods"] == "GET, OPTIONS"


def _routes() -> dict[str, tuple[str, set[str]]]:
    out = {}
    for f in app_functions():
        trigger = f.get_trigger()
        if getattr(trigger, "type", None) != "httpTrigger":
            continue
        methods = {getattr(m, "value", m).lower() for m in (trigger.methods or ())}
        out[f.get_function_name()] = (trigger.route, methods)
    return out


def test_routes_and_document_match_both_ways():
    routes = _routes()
    fallback = DOC["x-fallback-route"]
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in DOC["paths"].items()}
    seen_paths = set()
    tenant = DOC["x-tenant-routes"]
    for name, (route, methods) in routes.items():
        if route == fallback["route"]:
            assert name == fallback["function"]
            assert methods == {m.lower() for m in fallback["methods"]}
            continue
        if name.endswith(tenant["suffix"]):
            # The same endpoint under a tenant path segment (x-tenant-routes).
            assert route.startswith(tenant["prefix"]), (name, route)
            base = routes[name[: -len(tenant["suffix"])]]
            assert (route[len(tenant["prefix"]):], methods) == base, (name, route)
            continue
        path = "/" + route
        assert path in documented, f"route {route} ({name}) is not in the document"
        assert documented[path] == methods, f"{path}: app serves {sorted(methods)}, document {sorted(documented[path])}"
        # The function's own name is the operationId of its POST (else GET, else its only method).
        main = next(m for m in ("post", "get", "delete", "patch", "put") if m in methods)
        assert DOC["paths"][path][main]["operationId"] == name, (path, main, name)
        seen_paths.add(path)
    assert set(documented) == seen_paths, f"documented but not served: {set(documented) - seen_paths}"
    for ref in fallback["responses"].values():
        _resolve({"$ref": ref})


def test_native_auth_operations_are_form_posts_with_the_contract_statuses():
    from shared.storage.maintenance import ENDPOINTS

    for rel in ENDPOINTS:
        op = DOC["paths"]["/" + rel]["post"]
        body = op["requestBody"]
        assert body["required"] is True and list(body["content"]) == ["application/x-www-form-urlencoded"]
        schema = body["content"]["application/x-www-form-urlencoded"]["schema"]
        assert "client_id" in schema["properties"]
        assert {"200", "400", "413", "500", "503"} <= set(op["responses"]), rel
        assert "429" not in op["responses"], rel  # slow_down is a 400 (docs/sdk-compatibility.md)
        for status in ("400", "500", "503"):
            response, _ = _resolve(op["responses"][status])
            ref = response["content"]["application/json"]["schema"]
            assert ref == {"$ref": "#/components/schemas/Error"} or ref["allOf"] == [{"$ref": "#/components/schemas/Error"}]


def test_every_form_field_the_app_reads_is_documented():
    import re

    read = set()
    for source in (ROOT / "shared").rglob("*.py"):
        # Form parameters are lower-case snake_case (the contract's); a CamelCase name read through a
        # ``fields`` dict is something else (maintenance.py parses a connection string that way).
        read |= set(re.findall(r"\b(?:form|fields)\.(?:get|require)\(\s*\"([a-z_]+)\"", source.read_text()))
    documented = set()
    for item in DOC["paths"].values():
        body = item.get("post", {}).get("requestBody")
        if body and "application/x-www-form-urlencoded" in body["content"]:
            documented |= set(body["content"]["application/x-www-form-urlencoded"]["schema"]["properties"])
    assert read, "found no form reads in shared/"
    assert read <= documented, f"read by the app but not documented: {sorted(read - documented)}"


def test_every_json_field_the_account_api_reads_is_documented():
    """Each name shared/flows/account.py reads from a JSON body (``body.get("...")``) is a
    property of some account request body in the document, and each documented
    property is read (no stale documentation)."""
    import re

    read = set(re.findall(r"\bbody\.get\(\s*\"([A-Za-z_]+)\"", (ROOT / "shared" / "flows" / "account.py").read_text()))
    documented = set()
    for (path, method) in ACCOUNT_OPERATIONS:
        body = DOC["paths"][path][method].get("requestBody")
        if body:
            assert list(body["content"]) == ["application/json"], (path, method)
            schema, _ = _resolve(body["content"]["application/json"]["schema"])
            documented |= set(schema["properties"])
    assert read, "found no JSON reads in shared/flows/account.py"
    assert read == documented, f"read, not documented: {sorted(read - documented)}; " \
                               f"documented, not read: {sorted(documented - read)}"


def test_account_operations_are_bearer_protected_with_the_documented_errors():
    scheme = DOC["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "`account` scope" in scheme["description"]
    assert len(ACCOUNT_OPERATIONS) == 11, sorted(ACCOUNT_OPERATIONS)
    for (path, method), op_id in ACCOUNT_OPERATIONS.items():
        op = DOC["paths"][path][method]
        assert op["security"] == [{"bearerAuth": []}], op_id
        assert op["tags"] == ["Account"], op_id
        assert {"401", "403", "429", "500", "503"} <= set(op["responses"]), op_id
        assert any(s.startswith("2") for s in op["responses"]), op_id
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"]), op_id
        for status in ("403", "429"):
            response, _ = _resolve(op["responses"][status])
            assert response["content"]["application/json"]["schema"]["allOf"] == [{"$ref": "#/components/schemas/Error"}]
        assert "WWW-Authenticate" in _resolve(op["responses"]["401"])[0]["headers"], op_id
        assert "options" in DOC["paths"][path], path
    # The step-up (claims challenge) is described where a change needs fresh proof.
    for path, method in (("/me", "delete"), ("/me/methods", "post"), ("/me/methods/{id}", "delete")):
        response, _ = _resolve(DOC["paths"][path][method]["responses"]["401"])
        assert "insufficient_claims" in response["description"] and "claims" in response["description"]
        assert "confirmation_required" in response["description"]


def _examples() -> list[tuple[str, Any, str]]:
    """(where, example value, JSON pointer of the schema it must match) for every
    example in the document: request bodies, responses, parameters, schemas."""
    out: list[tuple[str, Any, str]] = []

    def media(node: dict[str, Any], pointer: str) -> None:
        for ctype, m in node.get("content", {}).items():
            mp = pointer + "/content/" + ctype.replace("~", "~0").replace("/", "~1")
            for name, ex in m.get("examples", {}).items():
                if "value" in ex and "schema" in m:
                    out.append((f"{mp}/examples/{name}", ex["value"], mp + "/schema"))

    for path, item in DOC["paths"].items():
        for i, param in enumerate(item.get("parameters", [])):
            for name, ex in param.get("examples", {}).items():
                out.append((f"{path} parameter {param['name']} {name}", ex["value"],
                            _pointer("paths", path, "parameters", str(i), "schema")))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            for i, param in enumerate(op.get("parameters", [])):
                for name, ex in param.get("examples", {}).items():
                    out.append((f"{method.upper()} {path} parameter {param['name']} {name}", ex["value"],
                                _pointer("paths", path, method, "parameters", str(i), "schema")))
            if "requestBody" in op:
                media(op["requestBody"], _pointer("paths", path, method, "requestBody"))
            for status, response in op["responses"].items():
                if "$ref" not in response:
                    media(response, _pointer("paths", path, method, "responses", status))
    for name, response in DOC["components"]["responses"].items():
        media(response, _pointer("components", "responses", name))
    for name, schema in DOC["components"]["schemas"].items():
        for i, ex in enumerate(schema.get("examples", [])):
            out.append((f"schema {name} example {i}", ex, _pointer("components", "schemas", name)))
        for prop, sub in schema.get("properties", {}).items():
            for i, ex in enumerate(sub.get("examples", []) if isinstance(sub, dict) else []):
                out.append((f"schema {name}.{prop} example {i}", ex,
                            _pointer("components", "schemas", name, "properties", prop)))
    return out


def test_every_example_matches_its_schema():
    examples = _examples()
    assert any("/me" in where for where, _, _ in examples), "the account API has no examples"
    for where, value, pointer in examples:
        errors_ = sorted(validator_for(pointer).iter_errors(value), key=str)
        assert not errors_, f"{where}: {errors_[0].message}"


def test_funcignore_keeps_the_document():
    import fnmatch

    patterns = [line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name in ("openapi", "openapi/openapi.json", "functions/openapi.py"):
        assert not any(fnmatch.fnmatch(name, p) or name.startswith(p + "/") for p in patterns), name


# ---------------------------------------------------------------- sign-in

def test_sign_in_with_password_then_refresh(api, make_user):
    email, _ = make_user()
    t = password_first_factor(api, email)
    check(t, "/oauth2/v2.0/token", status=200)
    r = post(api, "/oauth2/v2.0/token", 200, grant_type="refresh_token", refresh_token=t["refresh_token"],
             scope=SCOPE, client_info="1")
    assert r["refresh_token"] != t["refresh_token"]
    # The rotated token again (within the grace period): refused, contract error.
    again = post(api, "/oauth2/v2.0/token", 400, grant_type="refresh_token", refresh_token=t["refresh_token"],
                 scope=SCOPE)
    assert again["error"] == "invalid_grant"


def test_sign_in_wrong_password(api, make_user):
    email, _ = make_user()
    t = password_first_factor(api, email, password="not the password at all")
    check(t, "/oauth2/v2.0/token", status=400)
    assert t["error"] == "invalid_grant" and 50126 in t["error_codes"]


def test_sign_in_with_email_code(api, outbox, make_user):
    email, _ = make_user(password=None)
    r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="oob redirect")
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=r["continuation_token"],
             challenge_type="oob redirect")
    assert c["challenge_type"] == "oob" and c["challenge_channel"] == "email"
    wrong = post(api, "/oauth2/v2.0/token", 400, continuation_token=c["continuation_token"], grant_type="oob",
                 oob="00000000" if outbox.last_code(email) != "00000000" else "11111111", scope=SCOPE)
    assert wrong["suberror"] == "invalid_oob_value"
    t = post(api, "/oauth2/v2.0/token", 200, continuation_token=c["continuation_token"], grant_type="oob",
             oob=outbox.last_code(email), scope=SCOPE, client_info="1")
    assert t["token_type"] == "Bearer"


def test_sign_in_redirects_when_no_listed_challenge_type_fits(api, make_user):
    email, _ = make_user(password=None)
    r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="password redirect")
    assert r["challenge_type"] == "redirect" and r["redirect_reason"]


def test_mfa_by_sms(api, outbox, make_user, require_mfa):
    email, _ = make_user(methods=[sms_method()])
    r = password_first_factor(api, email)
    check(r, "/oauth2/v2.0/token", status=400)
    assert r["suberror"] == "mfa_required" and r["continuation_token"]
    early = post(api, "/oauth2/v2.0/challenge", 400, continuation_token=r["continuation_token"])
    assert early["suberror"] == "introspect_required"
    # A failed call does not consume the token: introspect with the same one.
    intro = post(api, "/oauth2/v2.0/introspect", 200, continuation_token=r["continuation_token"])
    assert intro["methods"][0] == {"id": "m1", "challenge_type": "oob", "challenge_channel": "sms",
                                   "login_hint": intro["methods"][0]["login_hint"]}
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=intro["continuation_token"], id="m1",
             challenge_type="password oob redirect")
    assert c["challenge_channel"] == "sms" and c["code_length"] == 6
    code = outbox.last_code(PHONE)
    wrong = post(api, "/oauth2/v2.0/token", 400, continuation_token=c["continuation_token"], grant_type="mfa_oob",
                 oob="000000" if code != "000000" else "111111", scope=SCOPE)
    assert wrong["suberror"] == "invalid_oob_value"
    t = post(api, "/oauth2/v2.0/token", 200, continuation_token=c["continuation_token"], grant_type="mfa_oob",
             oob=code, scope=SCOPE, client_info="1")
    assert t["access_token"]


def test_mfa_without_capability_is_a_200_redirect(api, make_user, require_mfa):
    email, _ = make_user(methods=[sms_method()])
    r = password_first_factor(api, email, caps=None)
    check(r, "/oauth2/v2.0/token", status=200)
    assert r.body == {"challenge_type": "redirect", "redirect_reason": r["redirect_reason"]}


def test_registration_of_a_second_factor(api, outbox, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email)
    check(r, "/oauth2/v2.0/token", status=400)
    assert r["suberror"] == "registration_required"
    intro = post(api, "/register/v1.0/introspect", 200, continuation_token=r["continuation_token"])
    assert {m["id"] for m in intro["methods"]} == {"email", "sms"}
    bad = post(api, "/register/v1.0/challenge", 400, continuation_token=intro["continuation_token"],
               challenge_type="oob", challenge_channel="sms", challenge_target="+12")
    assert 901001 in bad["error_codes"]
    second = unique_email("second")
    c = post(api, "/register/v1.0/challenge", 200, continuation_token=intro["continuation_token"],
             challenge_type="oob", challenge_channel="email", challenge_target=second)
    assert c["challenge_target"] == second
    done = post(api, "/register/v1.0/continue", 200, continuation_token=c["continuation_token"], grant_type="oob",
                oob=outbox.last_code(second))
    post(api, "/oauth2/v2.0/token", 200, continuation_token=done["continuation_token"],
         grant_type="continuation_token", scope=SCOPE, client_info="1")


# ---------------------------------------------------------------- sign-up

def test_sign_up_with_everything_at_start(api, outbox):
    email = unique_email("new")
    s = post(api, "/signup/v1.0/start", 200, username=email, challenge_type="oob password redirect", password=PW,
             attributes=json.dumps({"displayName": "New User"}), capabilities=CAPS)
    c = post(api, "/signup/v1.0/challenge", 200, continuation_token=s["continuation_token"],
             challenge_type="oob password redirect")
    assert c["challenge_type"] == "oob"
    done = post(api, "/signup/v1.0/continue", 200, continuation_token=c["continuation_token"], grant_type="oob",
                oob=outbox.last_code(email))
    assert done["expires_in"] > 0
    post(api, "/oauth2/v2.0/token", 200, continuation_token=done["continuation_token"],
         grant_type="continuation_token", username=email, scope=SCOPE, client_info="1")


def test_sign_up_password_and_attributes_after_verification(server, api, outbox):
    schema = [{"name": "city", "type": "string", "required": True, "regex": "^[A-Za-z .-]{2,40}$"}]
    with server.override(signup_attributes=_attribute_schema(json.dumps(schema))):
        email = unique_email("later")
        s = post(api, "/signup/v1.0/start", 200, username=email, challenge_type="oob password redirect")
        c = post(api, "/signup/v1.0/challenge", 200, continuation_token=s["continuation_token"])
        r = post(api, "/signup/v1.0/continue", 400, continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
        assert r["error"] == "credential_required" and r["error_codes"] == [55103]
        p = post(api, "/signup/v1.0/challenge", 200, continuation_token=r["continuation_token"],
                 challenge_type="oob password redirect")
        assert p.body == {"continuation_token": p["continuation_token"], "challenge_type": "password"}
        weak = post(api, "/signup/v1.0/continue", 400, continuation_token=p["continuation_token"],
                    grant_type="password", password="short")
        assert weak["suberror"] == "password_too_short"
        a = post(api, "/signup/v1.0/continue", 400, continuation_token=p["continuation_token"],
                 grant_type="password", password=PW)
        assert a["error"] == "attributes_required" and a["required_attributes"][0]["name"] == "city"
        bad = post(api, "/signup/v1.0/continue", 400, continuation_token=a["continuation_token"],
                   grant_type="attributes", attributes=json.dumps({"city": "0"}))
        assert bad["suberror"] == "attribute_validation_failed" and bad["invalid_attributes"] == [{"name": "city"}]
        done = post(api, "/signup/v1.0/continue", 200, continuation_token=a["continuation_token"],
                    grant_type="attributes", attributes=json.dumps({"city": "Oslo"}))
        post(api, "/oauth2/v2.0/token", 200, continuation_token=done["continuation_token"],
             grant_type="continuation_token", username=email, scope=SCOPE)


def test_sign_up_attributes_before_verification(api, outbox):
    email = unique_email("early")
    s = post(api, "/signup/v1.0/start", 200, username=email, challenge_type="oob redirect")
    a = post(api, "/signup/v1.0/continue", 200, continuation_token=s["continuation_token"], grant_type="attributes",
             attributes=json.dumps({"displayName": "Early"}))
    assert set(a.body) == {"continuation_token"}


def test_sign_up_without_oob_is_a_redirect(api):
    r = post(api, "/signup/v1.0/start", 200, username=unique_email(), challenge_type="password redirect")
    assert r["challenge_type"] == "redirect"


def test_sign_up_then_registration_refuses_the_sign_in_address(api, outbox, require_mfa):
    email = unique_email("pre")
    s = post(api, "/signup/v1.0/start", 200, username=email, challenge_type="oob password redirect", password=PW,
             capabilities=CAPS)
    c = post(api, "/signup/v1.0/challenge", 200, continuation_token=s["continuation_token"])
    done = post(api, "/signup/v1.0/continue", 200, continuation_token=c["continuation_token"], grant_type="oob",
                oob=outbox.last_code(email))
    t = post(api, "/oauth2/v2.0/token", 400, continuation_token=done["continuation_token"],
             grant_type="continuation_token", username=email, scope=SCOPE)
    assert t["suberror"] == "registration_required"
    intro = post(api, "/register/v1.0/introspect", 200, continuation_token=t["continuation_token"])
    refused = post(api, "/register/v1.0/challenge", 400, continuation_token=intro["continuation_token"],
                   challenge_type="oob", challenge_target=email, challenge_channel="email")
    assert 901001 in refused["error_codes"]
    other = unique_email("pre-inbox")
    sent = post(api, "/register/v1.0/challenge", 200, continuation_token=intro["continuation_token"],
                challenge_type="oob", challenge_target=other, challenge_channel="email")
    fin = post(api, "/register/v1.0/continue", 200, continuation_token=sent["continuation_token"], grant_type="oob",
               oob=outbox.last_code(other))
    post(api, "/oauth2/v2.0/token", 200, continuation_token=fin["continuation_token"],
         grant_type="continuation_token", scope=SCOPE, client_info="1")


def test_sign_up_of_existing_address_without_enumeration_protection(server, api, make_user):
    email, _ = make_user()
    with server.override(enumeration_protection=False):
        r = post(api, "/signup/v1.0/start", 400, username=email, challenge_type="oob password redirect")
        assert r["error"] == "user_already_exists"
        r = post(api, "/oauth2/v2.0/initiate", 400, username=unique_email("nobody"), challenge_type="oob redirect")
        assert r["error"] == "user_not_found"
        r = post(api, "/resetpassword/v1.0/start", 400, username=unique_email("nobody"), challenge_type="oob redirect")
        assert r["error"] == "user_not_found"


# ---------------------------------------------------------------- password reset

def test_password_reset_end_to_end(api, outbox, make_user):
    email, _ = make_user()
    s = post(api, "/resetpassword/v1.0/start", 200, username=email, challenge_type="oob redirect")
    c = post(api, "/resetpassword/v1.0/challenge", 200, continuation_token=s["continuation_token"],
             challenge_type="oob redirect")
    v = post(api, "/resetpassword/v1.0/continue", 200, continuation_token=c["continuation_token"], grant_type="oob",
             oob=outbox.last_code(email))
    early = post(api, "/resetpassword/v1.0/poll_completion", 200, continuation_token=v["continuation_token"])
    assert early["status"] == "not_started"
    weak = post(api, "/resetpassword/v1.0/submit", 400, continuation_token=v["continuation_token"],
                new_password="short")
    assert weak["suberror"] == "password_too_short"
    sub = post(api, "/resetpassword/v1.0/submit", 200, continuation_token=v["continuation_token"],
               new_password=NEW_PW)
    p = post(api, "/resetpassword/v1.0/poll_completion", 200, continuation_token=sub["continuation_token"])
    assert p["status"] == "succeeded"
    post(api, "/oauth2/v2.0/token", 200, continuation_token=p["continuation_token"],
         grant_type="continuation_token", username=email, scope=SCOPE, client_info="1")


def test_password_reset_redirects_without_oob(api):
    r = post(api, "/resetpassword/v1.0/start", 200, username=unique_email(), challenge_type="password redirect")
    assert r["challenge_type"] == "redirect"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("path", sorted(
    p for p, item in DOC["paths"].items()
    if "application/x-www-form-urlencoded" in item.get("post", {}).get("requestBody", {}).get("content", {})))
def test_common_errors_on_every_post_endpoint(api, path):
    r = check(api.post(path.lstrip("/"), client_id=""), path, "post", 400)
    assert r["error"] == "invalid_request"
    r = check(api.post(path.lstrip("/"), client_id="11111111-2222-3333-4444-555555555555"), path, "post", 400)
    assert r["error"] == "unauthorized_client"
    r = check(api.request("POST", path.lstrip("/"), b"{}", {"Content-Type": "application/json"}), path, "post", 400)
    assert r["error"] == "invalid_request"
    if "continuation_token" in DOC["paths"][path]["post"]["requestBody"]["content"][
            "application/x-www-form-urlencoded"]["schema"]["properties"] and path != "/oauth2/v2.0/token":
        r = check(api.post(path.lstrip("/"), continuation_token="not-a-token", grant_type="oob", oob="1",
                           challenge_target="x@example.com", new_password=NEW_PW), path, "post", 400)
        assert r["error"] == "invalid_grant"


def test_request_level_errors(api):
    r = post(api, "/oauth2/v2.0/initiate", 400, username="not an email", challenge_type="password redirect")
    assert r["error_codes"] == [90100] and "username parameter is empty or not valid" in r["error_description"]
    r = post(api, "/oauth2/v2.0/initiate", 400, username="a@example.com", challenge_type="password oob")
    assert r["error"] == "unsupported_challenge_type"
    r = post(api, "/oauth2/v2.0/token", 400, grant_type="client_credentials", scope=SCOPE)
    assert r["error"] == "unsupported_grant_type"
    r = post(api, "/oauth2/v2.0/token", 400, grant_type="password", continuation_token="x", scope="nope")
    assert r["error"] == "invalid_scope"
    r = post(api, "/oauth2/v2.0/token", 400, grant_type="refresh_token", refresh_token="garbage", scope=SCOPE)
    assert r["error"] == "invalid_grant"
    r = post(api, "/signup/v1.0/start", 400, username=unique_email(), challenge_type="oob redirect",
             attributes="[1]")
    assert r["error"] == "invalid_request"


def test_correlation_id_is_echoed(api):
    r = post(api, "/oauth2/v2.0/initiate", 400, headers={"client-request-id": "my-corr.id_1"})
    assert r["correlation_id"] == "my-corr.id_1" and r.headers["client-request-id"] == "my-corr.id_1"
    assert r["trace_id"] == r.headers["x-ms-request-id"]


def test_resend_too_early_is_400_slow_down_with_retry_after(server, api, make_user):
    email, _ = make_user(password=None)
    with server.override(resend_interval_seconds=60):
        r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="oob redirect")
        c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=r["continuation_token"])
        again = post(api, "/oauth2/v2.0/challenge", 400, continuation_token=c["continuation_token"])
        assert again["error"] == "slow_down" and 0 < int(again.headers["retry-after"]) <= 60


def _break_storage(server, monkeypatch, exc: Exception) -> None:
    """Every table access of the app's (process-wide) storage raises ``exc``."""
    def broken(*_a, **_k):
        raise exc

    monkeypatch.setattr(server.storage, "table", broken)
    monkeypatch.setattr(server.storage, "ping", broken)


def test_storage_down_is_503_with_retry_after(server, api, monkeypatch):
    _break_storage(server, monkeypatch, StorageUnavailable("test: storage is down"))
    r = post(api, "/oauth2/v2.0/initiate", 503, username="a@example.com", challenge_type="oob redirect")
    assert r["error"] == "temporarily_unavailable" and int(r.headers["retry-after"]) > 0
    r = post(api, "/resetpassword/v1.0/challenge", 503, continuation_token="f2026112721a." + "A" * 22 + "." + "B" * 43)
    assert r["error"] == "temporarily_unavailable"


def test_health_when_storage_is_down(server, api, monkeypatch):
    get(api, "/health", 200)
    _break_storage(server, monkeypatch, StorageUnavailable("test: storage is down"))
    r = get(api, "/health", 503)
    assert r.body == {"status": "unavailable", "storage": "unreachable"}


def test_unexpected_exception_is_500_contract_error(server, api, monkeypatch):
    _break_storage(server, monkeypatch, RuntimeError("test: secret internals"))
    r = post(api, "/resetpassword/v1.0/start", 500, username="a@example.com", challenge_type="oob redirect")
    assert r["error"] == "server_error" and "secret internals" not in r.raw.decode()


def test_unknown_path_is_404(api):
    r = api.post("oauth2/v2.0/authorize", client_id="x")
    check_component(r, "NotFound", 404)
    check_component(api.get("no/such/endpoint"), "NotFound", 404)


def test_wrong_method_on_a_post_endpoint_is_405(api):
    for path in ("oauth2/v2.0/token", "signup/v1.0/start", "register/v1.0/continue"):
        r = check_component(api.get(path), "MethodNotAllowed", 405)
        assert r.headers["allow"] == "POST, OPTIONS"


def test_wrong_method_on_a_get_endpoint_is_405(api):
    for path in ("health", ".well-known/openid-configuration", "discovery/v2.0/keys", "sample/sensitive",
                 "openapi.json"):
        r = check_component(api.post(path, client_id="x"), "MethodNotAllowed", 405)
        assert r.headers["allow"] == "GET, OPTIONS"


def test_body_over_the_host_limit_is_413(api):
    r = api.request("POST", "oauth2/v2.0/initiate", b"a" * (1024 * 1024 + 1),
                    {"Content-Type": "application/x-www-form-urlencoded"})
    check(r, "/oauth2/v2.0/initiate", "post", 413)


def test_body_over_the_app_limit_is_400(api):
    r = api.post("oauth2/v2.0/initiate", username="a@example.com", challenge_type="oob redirect",
                 padding="x" * (70 * 1024))
    check(r, "/oauth2/v2.0/initiate", "post", 400)


def test_cors_preflight_and_cors_headers(api):
    for path in ("/oauth2/v2.0/initiate", "/health"):
        r = api.request("OPTIONS", path.lstrip("/"), headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "client-request-id, x-client-sku"})
        check(r, path, "options", 204)
        assert r.headers["access-control-allow-origin"] == ORIGIN
        refused = api.request("OPTIONS", path.lstrip("/"), headers={"Origin": "https://evil.example"})
        check(refused, path, "options", 403)
    r = post(api, "/oauth2/v2.0/initiate", 400, headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-ms-request-id" in r.headers["access-control-expose-headers"]


# ---------------------------------------------------------------- GET endpoints

def test_discovery_documents(api):
    d = get(api, "/.well-known/openid-configuration", 200)
    assert d["token_endpoint"].endswith("/oauth2/v2.0/token")
    k = get(api, "/discovery/v2.0/keys", 200)
    assert k["keys"]


def test_sample_api_with_step_up(server, api, outbox, make_user, policies):
    ctx = server.settings.sample_auth_context
    r = get(api, "/sample/sensitive", 401)
    assert r["error"] == "invalid_token" and r.headers["www-authenticate"].startswith("Bearer ")
    get(api, "/sample/sensitive", 401, headers={"Authorization": "Bearer x.y.z"})
    policies(name="openapi step-up", conditions={"auth_contexts": [ctx]}, grant={"require_second_factor": True})
    email, _ = make_user(methods=[sms_method()])
    scope = "api://native-auth/access_as_user " + SCOPE
    t = password_first_factor(api, email)
    check(t, "/oauth2/v2.0/token", status=200)
    t = post(api, "/oauth2/v2.0/token", 200, grant_type="refresh_token", refresh_token=t["refresh_token"],
             scope=scope)
    denied = get(api, "/sample/sensitive", 401, headers={"Authorization": "Bearer " + t["access_token"]})
    assert denied["error"] == "insufficient_claims"
    claims_value = base64.b64decode(
        denied.headers["www-authenticate"].split('claims="')[1].split('"')[0]).decode()
    r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="password redirect", capabilities=CAPS)
    r = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=r["continuation_token"])
    m = post(api, "/oauth2/v2.0/token", 400, continuation_token=r["continuation_token"], grant_type="password",
             password=PW, scope=scope, claims=claims_value)
    assert m["suberror"] == "mfa_required"
    intro = post(api, "/oauth2/v2.0/introspect", 200, continuation_token=m["continuation_token"])
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=intro["continuation_token"], id="m1")
    t = post(api, "/oauth2/v2.0/token", 200, continuation_token=c["continuation_token"], grant_type="oob",
             oob=outbox.last_code(PHONE), scope=scope)
    ok = get(api, "/sample/sensitive", 200, headers={"Authorization": "Bearer " + t["access_token"]})
    assert ok["acrs"] == [ctx]


# ---------------------------------------------------------------- the account API (/me)

def account_token(api, email: str, *, scope: str = ACCOUNT_SCOPE, claims: str | None = None):
    """Sign in with the password for the account API (the token answer, checked)."""
    r = post(api, "/oauth2/v2.0/initiate", 200, username=email, challenge_type="password oob redirect",
             capabilities=CAPS)
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=r["continuation_token"],
             challenge_type="password oob redirect")
    return post(api, "/oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                password=PW, scope=scope, client_info="1", claims=claims)


def account_step_up(api, outbox, email: str, claims_value: str) -> str:
    """Answer the claims challenge: sign in again with ``claims``, the second factor by SMS."""
    m = account_token(api, email, claims=claims_value)
    check(m, "/oauth2/v2.0/token", status=400)
    assert m["suberror"] == "mfa_required", m.body
    intro = post(api, "/oauth2/v2.0/introspect", 200, continuation_token=m["continuation_token"])
    c = post(api, "/oauth2/v2.0/challenge", 200, continuation_token=intro["continuation_token"], id="m1")
    t = post(api, "/oauth2/v2.0/token", 200, continuation_token=c["continuation_token"], grant_type="mfa_oob",
             oob=outbox.last_code(PHONE), scope=ACCOUNT_SCOPE, client_info="1")
    return t["access_token"]


def other_code(code: str) -> str:
    return "0" * len(code) if code != "0" * len(code) else "1" * len(code)


@pytest.fixture(scope="module")
def account_tokens(server):
    """One user without a method: an account API token and one for another scope
    (read-only use: the tests that end sessions make their own users)."""
    from conftest import Api

    email = unique_email("openapi-me")
    directory.create_user(server.storage, email, password=PW)
    api = Api(server.host.base_url)
    ok = account_token(api, email)
    other = account_token(api, email, scope=OTHER_SCOPE)
    assert ok.status == 200 and other.status == 200, (ok.body, other.body)
    return {"account": ok["access_token"], "other": other["access_token"], "email": email}


@pytest.mark.parametrize("operation", sorted(ACCOUNT_OPERATIONS), ids=lambda o: f"{o[1].upper()} {o[0]}")
def test_common_errors_on_every_account_operation(api, account_tokens, operation):
    path, method = operation
    url = path.replace("{id}", "m1")
    body = {} if "requestBody" in DOC["paths"][path][method] else None
    # No token, a malformed one, an ID token-like garbage JWT: 401 invalid_token with the Bearer challenge.
    for token in (None, "x.y.z", "a" * 100):
        r = me(api, method, url, 401, token, body, path=path)
        bearer_challenge(r, "invalid_token")
    r = me(api, method, url, 401, None, body, path=path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    bearer_challenge(r, "invalid_token")
    # A valid token of this server without the account scope: 403 insufficient_scope.
    r = me(api, method, url, 403, account_tokens["other"], body, path=path)
    assert r["error"] == "insufficient_scope" and r["error_codes"] == [500011]
    # A valid token and a body that is not a JSON object (ops without a path parameter: that is checked first).
    if body is not None and "{id}" not in path:
        for raw, ctype in ((b"not json", "application/json"), (b"[1]", "application/json"),
                           (b'{"a":1,"a":2}', "application/json"), (b"a=1", "application/x-www-form-urlencoded")):
            r = me(api, method, url, 400, account_tokens["account"], raw=raw, headers={"Content-Type": ctype},
                   path=path)
            assert r["error"] == "invalid_request" and r["error_codes"] == [90100], r.body


def test_account_profile_attributes_methods_and_export(api, make_user):
    email, user = make_user(methods=[sms_method()], display_name="Ada")
    t = account_token(api, email)
    check(t, "/oauth2/v2.0/token", status=200)
    token = t["access_token"]
    p = me(api, "GET", "/me", 200, token)
    assert p["id"] == user.oid and p["email"] == email and p["displayName"] == "Ada" and p["hasPassword"] is True
    assert [m["id"] for m in p["methods"]] == ["m1"] and PHONE not in json.dumps(p.body)
    methods = me(api, "GET", "/me/methods", 200, token)
    assert methods.body == {"methods": p["methods"]}
    u = me(api, "PATCH", "/me", 200, token, {"attributes": {"displayName": "Grace"}})
    assert u["displayName"] == "Grace" and u["attributes"] == {"displayName": "Grace"}
    r = me(api, "PATCH", "/me", 400, token, {"attributes": {"email": "other@example.com"}})
    assert r["error"] == "invalid_request"
    r = me(api, "PATCH", "/me", 400, token, {"attributes": {}})
    assert r["error"] == "invalid_request"
    r = me(api, "PATCH", "/me", 400, token, {"attributes": {"displayName": "a\u0001b"}})
    assert r["suberror"] == "attribute_validation_failed" and r["invalid_attributes"] == [{"name": "displayName"}]
    x = me(api, "GET", "/me/export", 200, token)
    assert x.headers["content-disposition"].startswith("attachment")
    assert x["profile"]["displayName"] == "Grace" and x["methods"][0]["target"] == PHONE
    assert x["sessions"] and x["signInLog"] and user.password_hash not in x.raw.decode()


def test_account_password_change(api, outbox, make_user):
    email, _ = make_user()
    token = account_token(api, email)["access_token"]
    r = me(api, "POST", "/me/password", 400, token, {"currentPassword": "not the password", "newPassword": NEW_PW})
    assert r["error"] == "invalid_grant" and r["error_codes"] == [50126]
    r = me(api, "POST", "/me/password", 400, token, {"currentPassword": PW, "newPassword": "short"})
    assert r["suberror"] == "password_too_short" and r["error_codes"] == [399246]
    r = me(api, "POST", "/me/password", 400, token, {"currentPassword": PW, "newPassword": NEW_PW,
                                                     "signOutOtherSessions": "yes"})
    assert r["error"] == "invalid_request"
    me(api, "POST", "/me/password", 204, token, {"currentPassword": PW, "newPassword": NEW_PW})
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "password_changed"


def test_account_methods_with_the_step_up(server, api, outbox, make_user, policies):
    email, _ = make_user(methods=[sms_method()])
    token = account_token(api, email)["access_token"]
    ctx = server.settings.account_auth_context
    new = "+4915187654321"
    denied = me(api, "POST", "/me/methods", 401, token, {"channel": "sms", "target": new})
    challenge = bearer_challenge(denied, "insufficient_claims")
    # The target is checked before the proof is asked for: a mistyped one is a 400 at once.
    r = me(api, "POST", "/me/methods", 400, token, {"channel": "sms", "target": "not a phone"})
    assert r["error_codes"] == [901001]
    claims_value = base64.b64decode(challenge["claims"]).decode()
    assert json.loads(claims_value) == {"access_token": {"acrs": {"essential": True, "value": ctx}}}
    assert challenge["authorization_uri"].endswith("/oauth2/v2.0/authorize")
    r = me(api, "DELETE", "/me/methods/m1", 401, token, path="/me/methods/{id}")
    bearer_challenge(r, "insufficient_claims")
    r = me(api, "DELETE", "/me", 401, token)
    bearer_challenge(r, "insufficient_claims")
    r = me(api, "POST", "/me/confirmation", 401, token)                       # it has a method: the step-up instead
    bearer_challenge(r, "insufficient_claims")
    r = me(api, "DELETE", "/me/methods/nope", 404, token, path="/me/methods/{id}")
    assert r["error"] == "not_found" and r["error_codes"] == [90010]
    r = me(api, "DELETE", "/me/methods/m1", 400, token, raw=b"{not json", path="/me/methods/{id}")
    assert r["error"] == "invalid_request"
    fresh = account_step_up(api, outbox, email, claims_value)
    r = me(api, "POST", "/me/methods", 400, fresh, {"channel": "sms", "target": "not a phone"})
    assert r["error_codes"] == [901001]
    r = me(api, "POST", "/me/methods", 400, fresh, {"channel": "email", "target": email})
    assert r["error_codes"] == [901001]
    r = me(api, "POST", "/me/methods", 400, fresh, {"channel": "fax", "target": new})
    assert r["error"] == "invalid_request"
    sent = me(api, "POST", "/me/methods", 202, fresh, {"channel": "sms", "target": new})
    assert sent["channel"] == "sms" and sent["codeLength"] == 6 and new not in sent.raw.decode()
    code = outbox.last_code(new)
    wrong = me(api, "POST", "/me/methods/verify", 400, fresh, {"verification": sent["verification"],
                                                               "code": other_code(code)})
    assert wrong["suberror"] == "invalid_oob_value"
    r = me(api, "POST", "/me/methods/verify", 400, fresh, {"verification": "not-a-verification", "code": code})
    assert r["error"] == "invalid_grant"
    added = me(api, "POST", "/me/methods/verify", 201, fresh, {"verification": sent["verification"], "code": code})
    assert added["channel"] == "sms" and added["id"] != "m1"
    policies(name="openapi account last method", assignments={"users": {"include": [email]}},
             grant={"require_second_factor": True})
    me(api, "DELETE", f"/me/methods/{added['id']}", 204, fresh, path="/me/methods/{id}")
    last = me(api, "DELETE", "/me/methods/m1", 409, fresh, path="/me/methods/{id}")
    assert last["error"] == "last_method_required" and last["error_codes"] == [50079]
    assert [m["id"] for m in me(api, "GET", "/me/methods", 200, fresh)["methods"]] == ["m1"]


def test_account_without_a_method_confirms_by_email_and_deletes_itself(api, outbox, make_user):
    email, _ = make_user()
    token = account_token(api, email)["access_token"]
    r = me(api, "POST", "/me/methods", 401, token, {"channel": "sms", "target": PHONE})
    assert r["error"] == "confirmation_required" and r["error_codes"] == [50076]
    r = me(api, "DELETE", "/me", 401, token)
    assert r["error"] == "confirmation_required"
    conf = me(api, "POST", "/me/confirmation", 202, token)
    assert conf["channel"] == "email" and conf["codeLength"] == 8 and email not in conf.raw.decode()
    code = outbox.last_code(email)
    r = me(api, "DELETE", "/me", 400, token, {"confirmation": conf["confirmation"], "code": other_code(code)})
    assert r["suberror"] == "invalid_oob_value"
    r = me(api, "DELETE", "/me", 400, token, {"confirmation": "not-a-confirmation", "code": code})
    assert r["error"] == "invalid_grant"
    # A mistyped target is refused before the confirmation is used: it still confirms the deletion below.
    r = me(api, "POST", "/me/methods", 400, token, {"channel": "email", "target": "not an address",
                                                    "confirmation": conf["confirmation"], "code": code})
    assert r["error_codes"] == [901001]
    me(api, "DELETE", "/me", 204, token, {"confirmation": conf["confirmation"], "code": code})
    me(api, "DELETE", "/me", 204, token)                                         # idempotent
    bearer_challenge(me(api, "GET", "/me", 401, token), "invalid_token")
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "account_deleted"


def test_account_confirmation_send_limit_is_400_slow_down(server, api, make_user):
    email, _ = make_user()
    token = account_token(api, email)["access_token"]
    with server.override(email_cooldown_seconds=60):
        me(api, "POST", "/me/confirmation", 202, token)
        r = me(api, "POST", "/me/confirmation", 400, token)
    assert r["error"] == "slow_down" and 0 < int(r.headers["retry-after"]) <= 60


def test_account_sign_out_everywhere(api, make_user):
    email, _ = make_user()
    t = account_token(api, email)
    me(api, "POST", "/me/revoke-sessions", 204, t["access_token"])
    bearer_challenge(me(api, "GET", "/me/export", 401, t["access_token"]), "invalid_token")
    r = post(api, "/oauth2/v2.0/token", 400, grant_type="refresh_token", refresh_token=t["refresh_token"],
             scope=ACCOUNT_SCOPE)
    assert r["error"] == "invalid_grant"


def test_account_rate_limit_is_429_with_retry_after(api, make_user, monkeypatch):
    email, _ = make_user()
    token = account_token(api, email)["access_token"]
    monkeypatch.setattr(account, "READS_PER_HOUR", 2)
    me(api, "GET", "/me", 200, token)
    me(api, "GET", "/me/methods", 200, token)
    r = me(api, "GET", "/me/export", 429, token)
    assert r["error"] == "slow_down" and 0 < int(r.headers["retry-after"]) <= 3600


def test_account_api_when_storage_fails(server, api, make_user, monkeypatch):
    email, _ = make_user()
    token = account_token(api, email)["access_token"]
    with monkeypatch.context() as m:
        _break_storage(server, m, StorageUnavailable("test: storage is down"))
        r = me(api, "GET", "/me", 503, token)
        assert r["error"] == "temporarily_unavailable" and int(r.headers["retry-after"]) > 0
    with monkeypatch.context() as m:
        _break_storage(server, m, RuntimeError("test: secret internals"))
        r = me(api, "POST", "/me/revoke-sessions", 500, token)
        assert r["error"] == "server_error" and "secret internals" not in r.raw.decode()
    me(api, "GET", "/me", 200, token)


def test_account_body_over_the_host_limit_is_413(api, account_tokens):
    r = me(api, "PATCH", "/me", 413, account_tokens["account"], raw=b"{" + b" " * (1024 * 1024 + 1) + b"}")
    assert r.status == 413


def test_account_cors_preflight(api):
    for path, item in DOC["paths"].items():
        if not path.startswith("/me"):
            continue
        url = path.replace("{id}", "m1").lstrip("/")
        methods = ", ".join(m.upper() for m in ("get", "post", "patch", "delete") if m in item) + ", OPTIONS"
        r = check(api.request("OPTIONS", url, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization, content-type"}), path, "options", 204)
        assert r.headers["access-control-allow-methods"] == methods, path
        assert "authorization" in r.headers["access-control-allow-headers"]
        assert f"`{methods}`" in item["options"]["description"], path
        check(api.request("OPTIONS", url, headers={"Origin": "https://evil.example"}), path, "options", 403)


# ---------------------------------------------------------------- coverage of the document

def test_every_success_and_error_status_was_exercised(request):
    """Runs last: every POST operation was seen with 200 and 400 above, and the
    rarer statuses at least once (only checked when the whole module ran)."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    everything = {name for name in dir(request.module) if name.startswith("test_")}
    if not everything <= {n.split("[")[0] for n in selected}:
        pytest.skip("only meaningful when the whole module runs")
    post_paths = ["/" + p for p in ENDPOINTS]
    missing = [(p, s) for p in post_paths for s in (200, 400) if (p, "post", s) not in SEEN]
    assert not missing, f"never exercised: {missing}"
    for key in (("/oauth2/v2.0/initiate", "post", 503),
                ("/resetpassword/v1.0/start", "post", 500), ("/oauth2/v2.0/initiate", "post", 413),
                ("/health", "get", 503), ("/sample/sensitive", "get", 200), ("/sample/sensitive", "get", 401)):
        assert key in SEEN, key
    # The account API: every documented status of every operation was seen, except the ones only a
    # failure (500, 503), the host (413) or a rate limit (429) produce, which were seen at least once.
    rare = {"413", "429", "500", "503"}
    missing = [(p, m, s) for (p, m) in ACCOUNT_OPERATIONS for s in DOC["paths"][p][m]["responses"]
               if s not in rare and (p, m, int(s)) not in SEEN]
    assert not missing, f"never exercised: {missing}"
    for status in rare:
        assert any((p, m, int(status)) in SEEN for (p, m) in ACCOUNT_OPERATIONS), status


def test_every_error_and_suberror_the_code_gives_is_in_the_error_schema():
    """The `Error` schema's enums list every `error` and `suberror` value the code can answer with (the refresh
    grant's `basic_action` and `message_only` were missing: a client generated from the document rejected them)."""
    import ast
    import inspect

    from shared.protocol import errors

    props = DOC["components"]["schemas"]["Error"]["properties"]
    given_errors = {c.error for _, c in inspect.getmembers(errors, inspect.isclass)
                    if issubclass(c, errors.AuthError) and c is not errors.AuthError}
    given_suberrors = set()
    for path in (ROOT / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            pairs = []
            if isinstance(node, ast.Assign):           # class attribute: suberror = "..."
                pairs = [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.Call):           # suberror="..." / PasswordRejected("...", ...)
                pairs = [(k.arg, k.value) for k in node.keywords]
                if getattr(node.func, "id", getattr(node.func, "attr", "")) == "PasswordRejected" and node.args:
                    pairs.append(("suberror", node.args[0]))
            given_suberrors |= {v.value for name, v in pairs
                                if name == "suberror" and isinstance(v, ast.Constant) and isinstance(v.value, str)}
    assert {"basic_action", "message_only", "password_banned", "mfa_required"} <= given_suberrors   # the scan works
    assert given_errors <= set(props["error"]["enum"]), given_errors - set(props["error"]["enum"])
    assert given_suberrors <= set(props["suberror"]["enum"]), given_suberrors - set(props["suberror"]["enum"])


def test_the_misconfigured_health_answers_match_their_schema():
    """Both 503 `misconfigured` bodies of `/health` (settings, and function modules that failed to load) are
    allowed by `HealthUnavailable` (the second had a `handlers` field the schema refused)."""
    check = validator_for("/components/schemas/HealthUnavailable")
    for body in ({"status": "misconfigured", "handlers": "failed to load", "reason": "functions/signin.py: ImportError"},
                 {"status": "misconfigured", "reason": "AUTH_SIGNING_KEY_SECRET", "storage": "reachable",
                  "signing_keys": "unreadable"},
                 {"status": "unavailable", "storage": "unreachable"}):
        assert not list(check.iter_errors(body)), body
