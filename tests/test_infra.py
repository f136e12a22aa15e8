"""Offline checks of the deployment templates (infra/, azure.yaml).

The Bicep CLI is not available where these tests run, so every ``.bicep`` file
is parsed with tree-sitter-bicep and the security/contract rules are checked on
the syntax tree: identity-only storage, no keys in settings, hardened Function
App on Flex Consumption, Key Vault references for the two server secrets,
role assignments, and agreement between the app settings the templates set and
``shared.settings.SETTING_NAMES``.

Each rule is a ``check_*`` function that takes the template sources and returns
a list of problems. The tests run each check on the real files (expecting no
problems) and on deliberately broken copies (expecting a problem), so a check
that silently stopped seeing anything would fail too.

The azd project file (azure.yaml) is read with PyYAML; its postdeploy hook
(infra/hooks/postdeploy.py, the smoke test) is also run against a local
stand-in for the API.

Needs the dev packages ``tree-sitter``, ``tree-sitter-bicep`` and ``PyYAML``.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
import tree_sitter_bicep
import yaml
from tree_sitter import Language, Node, Parser

from conftest import send_json

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = "infra/main.bicep"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Settings that must be set on the Function App in Azure.
REQUIRED_IN_AZURE = (
    "AUTH_ENVIRONMENT",
    "AUTH_STORAGE_TABLE_ENDPOINT",
    "AUTH_STORAGE_CLIENT_ID",
    "AUTH_TABLE_PREFIX",
    "AUTH_ISSUER",
    "AUTH_TENANT_ID",
    "AUTH_CODE_HASH_KEY",
    "AUTH_SIGNING_KEY_SECRET",
    "AUTH_CORS_ALLOWED_ORIGINS",
    "AUTH_ENUMERATION_PROTECTION",
    "AUTH_DELIVERY",
    "AUTH_ACS_ENDPOINT",
    "AUTH_ACS_CLIENT_ID",
    "AUTH_EMAIL_SENDER",
    "AUTH_SMS_SENDER",
    "AUTH_APP_NAME",
)

# Settings that must never be set in Azure (secrets in plain text, or names
# Flex Consumption rejects because the runtime comes from functionAppConfig).
FORBIDDEN_SETTINGS = (
    "AUTH_STORAGE_CONNECTION_STRING",
    "AUTH_ACS_CONNECTION_STRING",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountKey",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
)

KEY_VAULT_SECRETS = {
    "AUTH_CODE_HASH_KEY": "auth-code-hash-key",
    "AUTH_SIGNING_KEY_SECRET": "auth-signing-key-secret",
}

EXPECTED_TABLES = (
    "nativeauthflows",
    "nativeauthusers",
    "nativeauthrefresh",
    "nativeauthkeys",
    "nativeauthlimits",
    "nativeauthclients",
    "nativeauthpolicies",
    "nativeauthsigninlog",
)

STORAGE = "Microsoft.Storage/storageAccounts"
ACS = "Microsoft.Communication/communicationServices"
VAULT = "Microsoft.KeyVault/vaults"
APPI = "Microsoft.Insights/components"

# role GUID -> (purpose, scope resource type)
APP_ROLES = {
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": ("Storage Table Data Contributor", STORAGE),
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": ("Storage Blob Data Owner", STORAGE),
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": ("Storage Queue Data Contributor", STORAGE),
    "09976791-48a7-449e-bb21-39d1a415f350": ("Communication and Email Service Owner", ACS),
    "4633458b-17de-408a-b874-0445c86b69e6": ("Key Vault Secrets User", VAULT),
    "3913510d-42f4-4e42-8a64-420c390055eb": ("Monitoring Metrics Publisher", APPI),
}
DEVELOPER_ROLES = {
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": ("Storage Table Data Contributor", STORAGE),
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": ("Storage Blob Data Owner", STORAGE),
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": ("Key Vault Secrets Officer", VAULT),
}

SETTING_KEY = re.compile(r"^(AUTH_\w+|APPLICATIONINSIGHTS_\w+|AzureWebJobs\w*|FUNCTIONS_\w+|WEBSITE_\w+|SCM_\w+)$")
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

Sources = dict  # relative path (posix) -> source text

# Flex Consumption maximum instance count: the range the Flex Consumption docs and
# Microsoft's Bicep samples give ("the lowest maximum instance count value is 40, and
# the highest supported maximum instance count value is 1000": Learn, Event-driven
# scaling in Azure Functions, Limit scale-out). Newer revisions of that page give 1 as
# the lowest; 40..1000 is valid under both.
FLEX_MAX_INSTANCES = (40, 1000)

# Azure Table Storage table names.
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
TABLE_NAME_MAX = 63
TABLE_NAME_MIN = 3

# Properties of a conditional resource (or module) that Bicep computes at compile
# time, so reading them raises no BCP318 "may be null" warning (the compiler's
# EmitConstants.ResourceInfoProperties; for modules only `name`).
RESOURCE_INFO_PROPERTIES = frozenset({"id", "name", "type", "apiVersion"})
MODULE_INFO_PROPERTIES = frozenset({"name"})

HOOK_SCRIPT = "infra/hooks/postdeploy.py"


# ---------------------------------------------------------------------------
# parsing helpers
# ---------------------------------------------------------------------------

_PARSER = Parser(Language(tree_sitter_bicep.language()))


@functools.lru_cache(maxsize=256)
def parse(text: str) -> Node:
    return _PARSER.parse(text.encode("utf-8")).root_node


def load_sources() -> Sources:
    files = sorted(INFRA.rglob("*.bicep"))
    return {f.relative_to(ROOT).as_posix(): f.read_text(encoding="utf-8") for f in files}


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Node | None) -> str:
    return "" if node is None else node.text.decode("utf-8")


def string_value(node: Node | None) -> str | None:
    """Value of a plain string literal (no interpolation), else None."""
    if node is None or node.type != "string":
        return None
    if any(c.type == "interpolation" for c in node.children):
        return None
    parts = []
    for c in node.children:
        if c.type == "string_content":
            parts.append(text(c))
        elif c.type == "escape_sequence":
            parts.append({"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\$": "$"}.get(text(c), text(c)))
    return "".join(parts)


def literal(node: Node | None):
    """Python value of a literal string/bool/number/empty array, else None."""
    if node is None:
        return None
    if node.type == "string":
        return string_value(node)
    if node.type == "boolean":
        return text(node) == "true"
    if node.type == "number":
        return int(text(node))
    if node.type == "array" and not node.named_children:
        return []
    return None


def prop_key(prop: Node) -> str | None:
    key = prop.named_children[0] if prop.named_children else None
    if key is None:
        return None
    if key.type == "identifier":
        return text(key)
    return string_value(key)


def obj_props(node: Node | None) -> dict[str, Node]:
    """Top-level properties of an object literal: key -> value node."""
    out: dict[str, Node] = {}
    if node is None or node.type != "object":
        return out
    for prop in node.named_children:
        if prop.type != "object_property" or len(prop.named_children) < 2:
            continue
        key = prop_key(prop)
        if key is not None:
            out[key] = prop.named_children[-1]
    return out


def get_path(node: Node | None, *keys: str) -> Node | None:
    for key in keys:
        node = obj_props(node).get(key)
        if node is None:
            return None
    return node


def declarations(root: Node, kind: str) -> dict[str, Node]:
    """Top-level declarations of a kind ('parameter', 'variable', 'output', ...)."""
    out = {}
    for child in root.named_children:
        if child.type == f"{kind}_declaration":
            out[text(child.named_children[0])] = child
    return out


def declaration_value(decl: Node) -> Node | None:
    """Value after '=' of a param/var/output declaration (None if absent)."""
    seen_eq = False
    for c in decl.children:
        if seen_eq:
            return c
        if c.type == "=":
            seen_eq = True
    return None


def decorator_names(decl: Node) -> set[str]:
    """Decorators of a declaration (they are the preceding 'decorators' sibling)."""
    prev = decl.prev_named_sibling
    names: set[str] = set()
    if prev is not None and prev.type == "decorators":
        for dec in prev.named_children:
            call = dec.named_children[0] if dec.named_children else None
            if call is not None and call.type == "call_expression":
                names.add(text(call.child_by_field_name("function")))
    return names


def decorator_args(decl: Node) -> dict[str, list[Node]]:
    """Decorators of a declaration: name -> argument nodes (``@maxLength(54)`` -> [number 54])."""
    prev = decl.prev_named_sibling
    out: dict[str, list[Node]] = {}
    if prev is not None and prev.type == "decorators":
        for dec in prev.named_children:
            call = dec.named_children[0] if dec.named_children else None
            if call is not None and call.type == "call_expression":
                args = call.child_by_field_name("arguments")
                out[text(call.child_by_field_name("function"))] = list(args.named_children) if args is not None else []
    return out


def decorator_literal(decl: Node, name: str):
    """Literal value of a one-argument decorator (``@minValue(40)`` -> 40), None if absent."""
    args = decorator_args(decl).get(name)
    return literal(args[0]) if args else None


class Resource:
    def __init__(self, file: str, node: Node, parent: "Resource | None"):
        self.file = file
        self.node = node
        self.symbol = text(node.named_children[0])
        type_string = string_value(node.named_children[1]) or ""
        type_name, _, api = type_string.partition("@")
        if parent is not None and "/" not in type_name:
            type_name = f"{parent.type}/{type_name}"
            api = api or parent.api
        self.type = type_name
        self.api = api
        self.existing = any(c.type == "existing" for c in node.children)
        self.condition: Node | None = None
        self.loop = False
        body = node.children[-1]
        if body.type == "if_statement":
            self.condition = body.named_children[0]
            body = body.named_children[-1]
        elif body.type == "for_statement":
            self.loop = True
            body = body.named_children[-1]
        self.body = body if body.type == "object" else None

    def get(self, *keys: str) -> Node | None:
        return get_path(self.body, *keys)

    def __repr__(self) -> str:
        return f"{self.file}:{self.symbol} ({self.type})"


def resources(sources: Sources) -> list[Resource]:
    out: list[Resource] = []

    def visit(file: str, node: Node, parent: Resource | None) -> None:
        for child in node.children:
            if child.type == "resource_declaration":
                res = Resource(file, child, parent)
                out.append(res)
                if res.body is not None:
                    visit(file, res.body, res)
            elif child.type == "object_property" and parent is not None:
                visit(file, child, parent)

    for file, src in sources.items():
        visit(file, parse(src), None)
    return out


def resources_of(sources: Sources, type_name: str, *, existing: bool = False) -> list[Resource]:
    return [r for r in resources(sources) if r.type.lower() == type_name.lower() and r.existing == existing]


def module_path(file: str, module: Node) -> str:
    return string_value(module.named_children[1]) or text(module.named_children[1])


def module_body(module: Node) -> Node | None:
    body = module.children[-1]
    if body.type in ("if_statement", "for_statement"):
        body = body.named_children[-1]
    return body if body.type == "object" else None


def app_settings(sources: Sources) -> dict[str, Node]:
    """Every app-setting-like key set in any object literal of the templates."""
    out: dict[str, Node] = {}
    for src in sources.values():
        for node in walk(parse(src)):
            if node.type == "object_property" and len(node.named_children) >= 2:
                key = prop_key(node)
                if key and SETTING_KEY.match(key):
                    out[key] = node.named_children[-1]
    return out


def var_object_lookup(root: Node, expr: Node) -> Node:
    """Resolve `someVar.key` where someVar is an object variable of the file."""
    if expr.type == "member_expression":
        obj = expr.child_by_field_name("object")
        prop = expr.child_by_field_name("property")
        if obj is not None and obj.type == "identifier":
            var = declarations(root, "variable").get(text(obj))
            if var is not None:
                value = get_path(declaration_value(var), text(prop))
                if value is not None:
                    return value
    if expr.type == "identifier":
        var = declarations(root, "variable").get(text(expr))
        if var is not None and declaration_value(var) is not None:
            return declaration_value(var)
    return expr


# ---------------------------------------------------------------------------
# checks: each returns a list of problems (empty = rule holds)
# ---------------------------------------------------------------------------


def check_syntax(sources: Sources) -> list[str]:
    problems = []
    if not sources:
        return ["no .bicep files under infra/"]
    for file, src in sources.items():
        for node in walk(parse(src)):
            if node.is_error or node.is_missing or node.type == "ERROR":
                row, col = node.start_point
                kind = "missing" if node.is_missing else "syntax error"
                problems.append(f"{file}:{row + 1}:{col + 1}: {kind} near {text(node)[:40]!r}")
    return problems


def _declared_names(root: Node) -> set[str]:
    names = set()
    for node in walk(root):
        if node.type in ("parameter_declaration", "variable_declaration", "resource_declaration", "module_declaration"):
            names.add(text(node.named_children[0]))
        elif node.type == "for_statement":
            init = node.child_by_field_name("initializer")
            if init is not None:
                names.update(text(n) for n in walk(init) if n.type == "identifier")
    return names


def _expression_identifiers(root: Node) -> Iterator[Node]:
    """Identifiers used as values (not declared names, keys, function names...)."""
    for node in walk(root):
        if node.type != "identifier":
            continue
        parent = node.parent
        if parent is None:
            continue
        if parent.type in ("parameter_declaration", "variable_declaration", "resource_declaration",
                           "module_declaration", "output_declaration", "type_declaration") and parent.named_children[0] == node:
            continue
        if parent.type == "object_property" and parent.named_children[0] == node:
            continue
        if parent.type == "call_expression" and parent.child_by_field_name("function") == node:
            continue
        if parent.type == "for_statement" and parent.child_by_field_name("initializer") == node:
            continue
        if parent.type == "resource_expression" and parent.named_children[0] != node:
            continue  # child name in parent::child
        yield node


def check_references(sources: Sources) -> list[str]:
    """A small stand-in for the Bicep compiler's name checks: undeclared
    identifiers, registry/missing modules, unknown or missing module params,
    unknown module outputs."""
    problems = []
    for file, src in sources.items():
        root = parse(src)
        declared = _declared_names(root)
        for ident in _expression_identifiers(root):
            if text(ident) not in declared:
                problems.append(f"{file}:{ident.start_point[0] + 1}: undeclared name {text(ident)!r}")

        modules: dict[str, dict] = {}
        for mod in declarations(root, "module").values():
            symbol = text(mod.named_children[0])
            path = module_path(file, mod)
            if re.match(r"^(br|ts)[:/]", path) or "://" in path:
                problems.append(f"{file}: module {symbol} uses a registry/remote module {path!r} (local modules only)")
                continue
            target = (ROOT / file).parent / path
            key = (target.resolve().relative_to(ROOT).as_posix()) if target.resolve().is_relative_to(ROOT) else None
            if key is None or key not in sources:
                problems.append(f"{file}: module {symbol} points to missing file {path!r}")
                continue
            mroot = parse(sources[key])
            params = declarations(mroot, "parameter")
            outputs = set(declarations(mroot, "output"))
            modules[symbol] = {"outputs": outputs, "file": key}
            given = obj_props(get_path(module_body(mod), "params"))
            for name in given:
                if name not in params:
                    problems.append(f"{file}: module {symbol} passes unknown param {name!r} to {key}")
            for name, decl in params.items():
                if declaration_value(decl) is None and name not in given:
                    problems.append(f"{file}: module {symbol} does not pass required param {name!r} of {key}")
        for node in walk(root):
            if node.type != "member_expression":
                continue
            obj = node.child_by_field_name("object")
            if obj is None or obj.type != "member_expression":
                continue
            base = obj.child_by_field_name("object")
            if base is None or base.type != "identifier" or text(obj.child_by_field_name("property")) != "outputs":
                continue
            mod = modules.get(text(base))
            name = text(node.child_by_field_name("property"))
            if mod is not None and name not in mod["outputs"]:
                problems.append(f"{file}:{node.start_point[0] + 1}: {text(base)}.outputs.{name} is not an output of {mod['file']}")
    return problems


def check_role_assignments(sources: Sources) -> list[str]:
    problems = []
    found: list[dict] = []
    by_symbol: dict[tuple[str, str], Resource] = {(r.file, r.symbol): r for r in resources(sources)}
    for ra in resources_of(sources, "Microsoft.Authorization/roleAssignments"):
        root = parse(sources[ra.file])
        name = ra.get("name")
        if name is None or name.type != "call_expression" or text(name.child_by_field_name("function")) != "guid":
            problems.append(f"{ra}: name must be a deterministic guid(...), got {text(name)!r}")
            guid_args = []
        else:
            guid_args = [text(a) for a in name.child_by_field_name("arguments").named_children]
            if len(guid_args) < 3:
                problems.append(f"{ra}: guid() name should combine scope, principal and role, got {text(name)!r}")
        role_expr = ra.get("properties", "roleDefinitionId")
        role_text = text(role_expr)
        guids = GUID.findall(role_text)
        if not guids and role_expr is not None:
            for n in walk(role_expr):
                if n.type == "member_expression" or n.type == "identifier":
                    guids += GUID.findall(text(var_object_lookup(root, n)))
        role = guids[0].lower() if guids else None
        if role is None:
            problems.append(f"{ra}: cannot resolve the role definition GUID from {role_text!r}")
        principal_type = ra.get("properties", "principalType")
        principal_type_value = string_value(principal_type)
        if principal_type is None:
            problems.append(f"{ra}: principalType is not set")
        scope = ra.get("scope")
        scope_res = by_symbol.get((ra.file, text(scope))) if scope is not None else None
        found.append({
            "res": ra,
            "role": role,
            "principal": text(ra.get("properties", "principalId")),
            "principal_type": principal_type_value if principal_type_value is not None else text(principal_type),
            "scope_type": scope_res.type if scope_res is not None else None,
            "conditional": ra.condition is not None,
            "guid_args": tuple(guid_args),
        })
    seen_names = {}
    for f in found:
        if f["guid_args"]:
            key = (f["res"].file, f["guid_args"])
            if key in seen_names:
                problems.append(f"{f['res']}: same guid() name inputs as {seen_names[key]}")
            seen_names[key] = f["res"]

    for role, (label, scope_type) in APP_ROLES.items():
        matches = [f for f in found if f["role"] == role and f["principal_type"] == "ServicePrincipal" and not f["conditional"]]
        if not matches:
            problems.append(f"missing role assignment {label} ({role}) for the app identity (principalType ServicePrincipal)")
        for f in matches:
            if f["scope_type"] is None or f["scope_type"].lower() != scope_type.lower():
                problems.append(f"{f['res']}: {label} should be scoped to a {scope_type}, got {f['scope_type']}")
            if f["role"] and not any(f["principal"] in a for a in f["guid_args"]):
                problems.append(f"{f['res']}: guid() name does not include the principal {f['principal']}")
    for role, (label, scope_type) in DEVELOPER_ROLES.items():
        matches = [f for f in found if f["role"] == role and f["conditional"] and f["principal_type"] != "ServicePrincipal"]
        if not matches:
            problems.append(f"missing optional (conditional) role assignment {label} ({role}) for the deploying user")
        for f in matches:
            if f["scope_type"] is None or f["scope_type"].lower() != scope_type.lower():
                problems.append(f"{f['res']}: {label} should be scoped to a {scope_type}, got {f['scope_type']}")
    return problems


def check_host_storage(sources: Sources) -> list[str]:
    settings = app_settings(sources)
    problems = []
    if string_value(settings.get("AzureWebJobsStorage__credential")) != "managedidentity":
        problems.append("AzureWebJobsStorage__credential must be 'managedidentity'")
    for suffix in ("clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri"):
        if f"AzureWebJobsStorage__{suffix}" not in settings:
            problems.append(f"AzureWebJobsStorage__{suffix} is not set")
    if "AzureWebJobsStorage" in settings:
        problems.append("AzureWebJobsStorage (a connection string) must not be set; use the identity-based settings")
    return problems


_SECRET_PATTERNS = (
    (re.compile(r"\blist\w*Keys\s*\(|\.listKeys\b", re.I), "listKeys()"),
    (re.compile(r"\blistConnectionStrings\b|\blistSecrets\b", re.I), "list* secret function"),
    (re.compile(r"AccountKey\s*=", re.I), "AccountKey="),
    (re.compile(r"SharedAccessKey\s*=", re.I), "SharedAccessKey="),
    (re.compile(r"accesskey\s*=", re.I), "accesskey= (ACS connection string)"),
    (re.compile(r"\bprimaryKey\b|\bsecondaryKey\b"), "access key property"),
)


def check_no_secrets(sources: Sources) -> list[str]:
    problems = []
    for file, src in sources.items():
        # Strip comments before matching so explanations may name what is banned.
        code = "\n".join(
            line for line in re.sub(r"/\*.*?\*/", "", src, flags=re.S).splitlines() if not line.lstrip().startswith("//")
        )
        for pattern, label in _SECRET_PATTERNS:
            for m in pattern.finditer(code):
                problems.append(f"{file}: {label} found: {m.group(0)!r}")
    settings = app_settings(sources)
    for name in FORBIDDEN_SETTINGS:
        if name in settings:
            problems.append(f"app setting {name} must not be set in Azure")
    for name, value in settings.items():
        if re.search(r"connection_?string", name, re.I) and name != "APPLICATIONINSIGHTS_CONNECTION_STRING":
            problems.append(f"app setting {name} looks like a connection string")
    return problems


def check_storage_account(sources: Sources) -> list[str]:
    accounts = resources_of(sources, STORAGE)
    if not accounts:
        return ["no storage account resource"]
    problems = []
    for acct in accounts:
        expect = {"allowSharedKeyAccess": False, "minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": False,
                  "supportsHttpsTrafficOnly": True}
        for key, want in expect.items():
            got = literal(acct.get("properties", key))
            if got != want:
                problems.append(f"{acct}: properties.{key} must be {want!r}, got {text(acct.get('properties', key)) or 'unset'}")
    containers = resources_of(sources, "Microsoft.Storage/storageAccounts/blobServices/containers")
    if not containers:
        problems.append("no blob container for the deployment package")
    for c in containers:
        access = literal(c.get("properties", "publicAccess"))
        if access not in (None, "None"):
            problems.append(f"{c}: publicAccess must be None")
    return problems


def _sites(sources: Sources) -> list[Resource]:
    return resources_of(sources, "Microsoft.Web/sites")


def check_function_app(sources: Sources) -> list[str]:
    sites = _sites(sources)
    if len(sites) != 1:
        return [f"expected exactly one Microsoft.Web/sites resource, found {len(sites)}"]
    site = sites[0]
    problems = []
    if literal(site.get("properties", "httpsOnly")) is not True:
        problems.append("httpsOnly must be true")
    if literal(site.get("properties", "siteConfig", "minTlsVersion")) != "1.2":
        problems.append("siteConfig.minTlsVersion must be '1.2'")
    if literal(site.get("properties", "siteConfig", "ftpsState")) != "Disabled":
        problems.append("siteConfig.ftpsState must be 'Disabled'")
    cors = site.get("properties", "siteConfig", "cors")
    origins = get_path(cors, "allowedOrigins")
    if origins is not None and not (origins.type == "array" and not origins.named_children):
        problems.append("platform CORS must stay empty (the app handles CORS itself)")
    if literal(site.get("identity", "type")) != "UserAssigned":
        problems.append("the Function App must run as a user-assigned identity (identity.type 'UserAssigned')")
    if site.get("properties", "keyVaultReferenceIdentity") is None:
        problems.append("keyVaultReferenceIdentity must be set to the user-assigned identity")
    policies = resources_of(sources, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    by_name = {literal(p.get("name")): p for p in policies}
    for name in ("ftp", "scm"):
        pol = by_name.get(name)
        if pol is None:
            problems.append(f"basicPublishingCredentialsPolicies '{name}' is missing")
        elif literal(pol.get("properties", "allow")) is not False:
            problems.append(f"basicPublishingCredentialsPolicies '{name}' must have allow: false")
    configs = [c for c in resources_of(sources, "Microsoft.Web/sites/config") if literal(c.get("name")) == "appsettings"]
    if not configs:
        problems.append("no sites/config 'appsettings' resource")
    return problems


def check_flex_consumption(sources: Sources) -> list[str]:
    problems = []
    plans = resources_of(sources, "Microsoft.Web/serverfarms")
    if len(plans) != 1:
        return [f"expected one App Service plan, found {len(plans)}"]
    plan = plans[0]
    if literal(plan.get("sku", "name")) != "FC1" or literal(plan.get("sku", "tier")) != "FlexConsumption":
        problems.append("the plan must be Flex Consumption (sku FC1 / tier FlexConsumption)")
    if literal(plan.get("properties", "reserved")) is not True:
        problems.append("the Flex Consumption plan must be Linux (reserved: true)")
    sites = _sites(sources)
    if not sites:
        return problems + ["no Function App"]
    site = sites[0]
    config = site.get("properties", "functionAppConfig")
    if config is None:
        return problems + ["the Function App has no functionAppConfig (required on Flex Consumption)"]
    storage = get_path(config, "deployment", "storage")
    if literal(get_path(storage, "type")) != "blobContainer":
        problems.append("functionAppConfig.deployment.storage.type must be 'blobContainer'")
    if literal(get_path(storage, "authentication", "type")) != "UserAssignedIdentity":
        problems.append("the deployment storage must authenticate with the user-assigned identity")
    if get_path(storage, "authentication", "userAssignedIdentityResourceId") is None:
        problems.append("deployment storage authentication needs userAssignedIdentityResourceId")
    if literal(get_path(config, "runtime", "name")) != "python":
        problems.append("functionAppConfig.runtime.name must be 'python'")
    scale = get_path(config, "scaleAndConcurrency")
    for key in ("instanceMemoryMB", "maximumInstanceCount", "alwaysReady"):
        value = get_path(scale, key)
        if value is None:
            problems.append(f"functionAppConfig.scaleAndConcurrency.{key} is missing")
        elif key != "alwaysReady" and value.type != "identifier":
            problems.append(f"scaleAndConcurrency.{key} should come from a parameter, got {text(value)!r}")
    always_ready = get_path(scale, "alwaysReady")
    if always_ready is not None and "'http'" not in text(always_ready):
        problems.append("alwaysReady should configure the 'http' group")
    return problems


def python_runtime_version(sources: Sources) -> str | None:
    """The Python version the templates deploy (resolved through main.bicep)."""
    sites = _sites(sources)
    if not sites:
        return None
    version = sites[0].get("properties", "functionAppConfig", "runtime", "version")
    if version is None:
        return None
    if literal(version) is not None:
        return literal(version)
    if version.type != "identifier":
        return None
    # A module parameter: find what main.bicep passes to that module.
    site_file = sites[0].file
    param_name = text(version)
    main_root = parse(sources[MAIN])
    for mod in declarations(main_root, "module").values():
        if not (ROOT / MAIN).parent.joinpath(module_path(MAIN, mod)).resolve() == (ROOT / site_file).resolve():
            continue
        passed = get_path(module_body(mod), "params", param_name)
        if passed is None:
            return None
        if literal(passed) is not None:
            return literal(passed)
        resolved = var_object_lookup(main_root, passed)
        if literal(resolved) is not None:
            return literal(resolved)
        if passed.type == "identifier":
            param = declarations(main_root, "parameter").get(text(passed))
            if param is not None:
                return literal(declaration_value(param))
    return None


def check_python_version(sources: Sources, expected: str) -> list[str]:
    got = python_runtime_version(sources)
    if got != expected:
        return [f"Function App Python version is {got!r}, tests run on {expected!r}"]
    return []


def check_key_vault(sources: Sources) -> list[str]:
    problems = []
    vaults = resources_of(sources, VAULT)
    if len(vaults) != 1:
        return [f"expected one Key Vault, found {len(vaults)}"]
    if literal(vaults[0].get("properties", "enableRbacAuthorization")) is not True:
        problems.append("Key Vault must use RBAC (enableRbacAuthorization: true)")
    secrets = {literal(s.get("name")): s for s in resources_of(sources, "Microsoft.KeyVault/vaults/secrets")}
    settings = app_settings(sources)
    for setting, secret_name in KEY_VAULT_SECRETS.items():
        secret = secrets.get(secret_name)
        if secret is None:
            problems.append(f"Key Vault secret {secret_name!r} is not created")
        else:
            value = secret.get("properties", "value")
            root = parse(sources[secret.file])
            params = declarations(root, "parameter")
            if value is None or value.type != "identifier" or text(value) not in params:
                problems.append(f"secret {secret_name} must take its value from a parameter, got {text(value)!r}")
            elif "secure" not in decorator_names(params[text(value)]):
                problems.append(f"parameter {text(value)} (secret {secret_name}) must be @secure()")
        value = settings.get(setting)
        if value is None:
            problems.append(f"{setting} is not set")
        elif not text(value).startswith("'@Microsoft.KeyVault(SecretUri=") or "${" not in text(value):
            problems.append(f"{setting} must be a Key Vault reference '@Microsoft.KeyVault(SecretUri=...)', got {text(value)!r}")
    # Secret values must be supplied, stable, by the deployer: no generated defaults.
    main_root = parse(sources[MAIN])
    for mod in declarations(main_root, "module").values():
        params = obj_props(get_path(module_body(mod), "params"))
        for node in params.values():
            if node.type != "identifier":
                continue
            param = declarations(main_root, "parameter").get(text(node))
            if param is None or "secure" not in decorator_names(param):
                continue
            default = declaration_value(param)
            if default is not None:
                problems.append(f"secure parameter {text(node)} must have no default (got {text(default)!r}); "
                                "a generated value would change the secret")
    for file, src in sources.items():
        if re.search(r"\bnewGuid\s*\(", src):
            problems.append(f"{file}: newGuid() would regenerate values on each deployment")
    return problems


def check_settings_contract(sources: Sources, setting_names, required) -> list[str]:
    settings = app_settings(sources)
    auth = {n for n in settings if n.startswith("AUTH_")}
    problems = [f"{n} is set by infra/ but the app does not read it (not in SETTING_NAMES)"
                for n in sorted(auth - set(setting_names))]
    problems += [f"{n} is required in Azure but infra/ does not set it" for n in required if n not in settings]
    if string_value(settings.get("AUTH_ENVIRONMENT")) != "azure":
        problems.append("AUTH_ENVIRONMENT must be 'azure'")
    if string_value(settings.get("AUTH_DELIVERY")) != "acs":
        problems.append("AUTH_DELIVERY must be 'acs'")
    issuer = text(settings.get("AUTH_ISSUER"))
    if not re.fullmatch(r"'https://\$\{[^}]*defaultHostName\}/api'", issuer):
        problems.append(f"AUTH_ISSUER must be 'https://<defaultHostName>/api', got {issuer!r}")
    for name in ("AUTH_STORAGE_CLIENT_ID", "AUTH_ACS_CLIENT_ID"):
        if "clientId" not in text(settings.get(name)):
            problems.append(f"{name} must be the user-assigned identity client id")
    return problems


def check_tables(sources: Sources) -> list[str]:
    root = parse(sources[MAIN])
    problems = []
    prefix = literal(declaration_value(declarations(root, "parameter").get("tablePrefix"))) \
        if "tablePrefix" in declarations(root, "parameter") else None
    if prefix != "nativeauth":
        problems.append(f"param tablePrefix should default to 'nativeauth', got {prefix!r}")
    suffix_var = declarations(root, "variable").get("tableSuffixes")
    suffixes = [literal(n) for n in declaration_value(suffix_var).named_children] if suffix_var is not None else []
    names = tuple(f"{prefix}{s}" for s in suffixes)
    if sorted(names) != sorted(EXPECTED_TABLES):
        problems.append(f"tables {names} differ from {EXPECTED_TABLES}")
    tables = resources_of(sources, "Microsoft.Storage/storageAccounts/tableServices/tables")
    if not tables or not any(t.loop for t in tables):
        problems.append("the tables must be created (a tableServices/tables resource loop)")
    return problems


def check_monitoring(sources: Sources) -> list[str]:
    problems = []
    comps = resources_of(sources, APPI)
    if len(comps) != 1:
        return [f"expected one Application Insights component, found {len(comps)}"]
    if literal(comps[0].get("properties", "DisableLocalAuth")) is not True:
        problems.append("Application Insights must have DisableLocalAuth: true")
    if comps[0].get("properties", "WorkspaceResourceId") is None:
        problems.append("Application Insights must be workspace-based (WorkspaceResourceId)")
    if not resources_of(sources, "Microsoft.OperationalInsights/workspaces"):
        problems.append("no Log Analytics workspace")
    settings = app_settings(sources)
    auth = text(settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING"))
    if not re.fullmatch(r"'ClientId=\$\{[^}]+\};Authorization=AAD'", auth):
        problems.append(f"APPLICATIONINSIGHTS_AUTHENTICATION_STRING must be 'ClientId=<uami>;Authorization=AAD', got {auth!r}")
    if "APPLICATIONINSIGHTS_CONNECTION_STRING" not in settings:
        problems.append("APPLICATIONINSIGHTS_CONNECTION_STRING is not set")
    return problems


def check_communication(sources: Sources) -> list[str]:
    problems = []
    acs = resources_of(sources, ACS)
    if len(acs) != 1:
        return [f"expected one Communication Services resource, found {len(acs)}"]
    if acs[0].get("properties", "linkedDomains") is None:
        problems.append("Communication Services must link the email domain (properties.linkedDomains)")
    if not resources_of(sources, "Microsoft.Communication/emailServices"):
        problems.append("no Email Communication Service")
    domains = resources_of(sources, "Microsoft.Communication/emailServices/domains")
    managed = [d for d in domains if literal(d.get("name")) == "AzureManagedDomain"
               and literal(d.get("properties", "domainManagement")) == "AzureManaged"]
    if not managed:
        problems.append("no AzureManagedDomain email domain")
    src = sources.get("infra/modules/communication.bicep", "") + sources.get(MAIN, "")
    if "DoNotReply" not in src or "mailFromSenderDomain" not in src:
        problems.append("sender address should be DoNotReply@<mailFromSenderDomain>")
    settings = app_settings(sources)
    if "outputs.senderAddress" not in text(settings.get("AUTH_EMAIL_SENDER")):
        problems.append("AUTH_EMAIL_SENDER should come from the communication module's sender address")
    if "outputs.endpoint" not in text(settings.get("AUTH_ACS_ENDPOINT")):
        problems.append("AUTH_ACS_ENDPOINT should be the ACS endpoint output")
    sms = settings.get("AUTH_SMS_SENDER")
    if sms is None or sms.type != "identifier" or text(sms) not in declarations(parse(sources[MAIN]), "parameter"):
        problems.append("AUTH_SMS_SENDER should come from a main.bicep parameter")
    return problems


def check_outputs(sources: Sources) -> list[str]:
    outputs = declarations(parse(sources[MAIN]), "output")
    need = ("AZURE_FUNCTION_APP_NAME", "API_BASE_URL", "EMAIL_SENDER_ADDRESS", "AZURE_LOCATION", "AZURE_TENANT_ID",
            "AZURE_KEY_VAULT_NAME", "AZURE_STORAGE_ACCOUNT_NAME")
    return [f"main.bicep does not output {n}" for n in need if n not in outputs]


def check_main_conventions(sources: Sources) -> list[str]:
    root = parse(sources[MAIN])
    problems = []
    params = declarations(root, "parameter")
    for name in ("environmentName", "location", "principalId"):
        if name not in params:
            problems.append(f"main.bicep lacks the azd parameter {name}")
    scope = [n for n in root.named_children if n.type == "target_scope_assignment"]
    if not scope or literal(scope[0].named_children[0]) not in ("resourceGroup", "subscription"):
        problems.append("main.bicep must declare targetScope")
    return problems


def _module_callers(sources: Sources, target_file: str) -> Iterator[tuple[str, Node]]:
    """(file, module declaration) of every module that deploys target_file."""
    for file, src in sources.items():
        for mod in declarations(parse(src), "module").values():
            target = ((ROOT / file).parent / module_path(file, mod)).resolve()
            if target == (ROOT / target_file).resolve():
                yield file, mod


def _param_chain(sources: Sources, file: str, value: Node | None) -> list[tuple[str, str, Node | None]]:
    """Follow a value back through module params: [(file, param name or literal text, param decl)]."""
    if value is None:
        return []
    if value.type != "identifier":
        return [(file, text(value), None)]
    name = text(value)
    decl = declarations(parse(sources[file]), "parameter").get(name)
    if decl is None:
        return [(file, name, None)]
    chain = [(file, name, decl)]
    for caller, mod in _module_callers(sources, file):
        chain += _param_chain(sources, caller, get_path(module_body(mod), "params", name))
    return chain


def _parameters_file_default(params: dict, name: str):
    """Default of an azd substitution '${VAR=default}' (or the literal value) in main.parameters.json."""
    value = params.get(name, {}).get("value")
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(?:=(.*))?\}", value)
        if m:
            value = m.group(1)
        try:
            return int(value) if value not in (None, "") else None
        except ValueError:
            return value
    return value


def check_max_instance_count(sources: Sources, parameters: dict | None = None) -> list[str]:
    """Flex Consumption maximumInstanceCount: every parameter it comes from (the site's
    module parameter and whatever main.bicep passes into it) allows exactly the documented
    range, says why, and its defaults (Bicep and main.parameters.json) lie inside it."""
    lo, hi = FLEX_MAX_INSTANCES
    sites = _sites(sources)
    if len(sites) != 1:
        return [f"expected one Function App, found {len(sites)}"]
    value = sites[0].get("properties", "functionAppConfig", "scaleAndConcurrency", "maximumInstanceCount")
    chain = _param_chain(sources, sites[0].file, value)
    if not chain:
        return ["functionAppConfig.scaleAndConcurrency.maximumInstanceCount is not set"]
    problems = []
    names_in_main = []
    for file, name, decl in chain:
        if decl is None:
            problems.append(f"{file}: maximumInstanceCount comes from {name!r}, not from a parameter with "
                            f"@minValue({lo})/@maxValue({hi})")
            continue
        if file == MAIN:
            names_in_main.append(name)
        got = (decorator_literal(decl, "minValue"), decorator_literal(decl, "maxValue"))
        if got != (lo, hi):
            problems.append(f"{file}: param {name} allows {got[0]}..{got[1]}; the Flex Consumption range is {lo}..{hi} "
                            f"(@minValue({lo}) @maxValue({hi}))")
        description = string_value((decorator_args(decl).get("description") or [None])[0]) or ""
        if str(lo) not in description or str(hi) not in description:
            problems.append(f"{file}: param {name} needs a @description that gives the range {lo}-{hi} and why")
        default = literal(declaration_value(decl))
        if not isinstance(default, int) or not lo <= default <= hi:
            problems.append(f"{file}: param {name} default {default!r} is outside {lo}..{hi}")
    if not names_in_main:
        problems.append(f"{MAIN} does not pass a parameter into the Function App's maximumInstanceCount")
    if parameters is not None:
        for name in names_in_main:
            if name not in parameters:
                continue
            default = _parameters_file_default(parameters, name)
            if not isinstance(default, int) or not lo <= default <= hi:
                problems.append(f"main.parameters.json: {name} default {default!r} is outside {lo}..{hi}")
    return problems


def table_suffixes(sources: Sources) -> list[str]:
    var = declarations(parse(sources[MAIN]), "variable").get("tableSuffixes")
    if var is None or declaration_value(var) is None:
        return []
    return [literal(n) for n in declaration_value(var).named_children if isinstance(literal(n), str)]


def table_prefix_bounds(suffixes: list[str]) -> tuple[int, int]:
    """(min, max) prefix length so that prefix + every suffix is a valid table name
    (3..63 characters), with at least one character: the first letter."""
    return max(1, TABLE_NAME_MIN - min(map(len, suffixes))), TABLE_NAME_MAX - max(map(len, suffixes))


def check_table_prefix(sources: Sources) -> list[str]:
    """tablePrefix: Bicep cannot match ^[A-Za-z][A-Za-z0-9]{2,62}$, so its length bounds are
    computed from the table suffixes (longest suffix -> max, shortest -> min), its description
    states the rule, and its default passes it."""
    root = parse(sources[MAIN])
    decl = declarations(root, "parameter").get("tablePrefix")
    if decl is None:
        return [f"{MAIN} has no param tablePrefix"]
    suffixes = table_suffixes(sources)
    if not suffixes:
        return [f"{MAIN} has no literal var tableSuffixes"]
    want_min, want_max = table_prefix_bounds(suffixes)
    got_min, got_max = decorator_literal(decl, "minLength"), decorator_literal(decl, "maxLength")
    longest = max(suffixes, key=len)
    problems = []
    if got_max != want_max:
        problems.append(f"tablePrefix @maxLength is {got_max}, must be {want_max} = {TABLE_NAME_MAX} - len({longest!r}) "
                        f"(table names are at most {TABLE_NAME_MAX} characters)")
    if got_min != want_min:
        problems.append(f"tablePrefix @minLength is {got_min}, must be {want_min} (a letter first; the shortest suffix "
                        f"{min(suffixes, key=len)!r} makes every name at least {TABLE_NAME_MIN} characters)")
    description = string_value((decorator_args(decl).get("description") or [None])[0]) or ""
    for needle in ("letter", "digit", str(want_max)):
        if needle not in description:
            problems.append(f"tablePrefix @description should state the rule (a letter, then letters or digits, "
                            f"{want_min}-{want_max} characters); it lacks {needle!r}")
    default = literal(declaration_value(decl))
    if not isinstance(default, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", default) \
            or not (got_min or 0) <= len(default) <= (got_max or 0):
        problems.append(f"tablePrefix default {default!r} is not a valid prefix")
    else:
        problems += [f"table name {default + s!r} is not a valid Azure table name" for s in suffixes
                     if not TABLE_NAME.match(default + s)]
    return problems


def _is_conditional(node: Node) -> bool:
    """A resource/module declaration with a condition that is not the literal true
    (directly, in a loop body, or through an enclosing conditional resource)."""
    body = node.children[-1]
    if body.type == "for_statement":
        body = body.named_children[-1]
    if body.type == "if_statement":
        cond = body.named_children[0]
        while cond.type == "parenthesized_expression" and cond.named_children:
            cond = cond.named_children[0]
        if text(cond) != "true":
            return True
    parent = node.parent
    while parent is not None:
        if parent.type == "resource_declaration":
            return _is_conditional(parent)
        parent = parent.parent
    return False


def check_conditional_dereference(sources: Sources) -> list[str]:
    """No property of a conditional resource or module is read without `.?` or `!`.

    Bicep types a resource/module declared with `if (...)` as "<type> | null" and warns
    (BCP318) on `res.properties...` / `mod.outputs...`, even inside a ternary on the same
    condition (the compiler does no flow analysis). The fixes are the safe-dereference
    operator `res.?properties.x ?? fallback` or, where a surrounding condition guarantees
    the resource exists, the non-null assertion `res!.properties.x`. id/name/type/apiVersion
    (module: name) are compile-time values and exempt."""
    problems = []
    for file, src in sources.items():
        root = parse(src)
        conditional: dict[str, tuple[frozenset, bool]] = {}
        for node in walk(root):
            if node.type in ("resource_declaration", "module_declaration") and _is_conditional(node):
                exempt = RESOURCE_INFO_PROPERTIES if node.type == "resource_declaration" else MODULE_INFO_PROPERTIES
                is_loop = node.children[-1].type == "for_statement"
                conditional[text(node.named_children[0])] = (exempt, is_loop)
        if not conditional:
            continue
        for node in walk(root):
            if node.type != "member_expression":
                continue
            base = node.child_by_field_name("object") or node.named_children[0]
            tokens = [c.type for c in node.children if not c.is_named]
            prop = text(node.child_by_field_name("property") or node.named_children[-1])
            symbol, safe_index = None, False
            if base.type == "identifier":
                symbol = text(base)
            elif base.type == "subscript_expression" and base.named_children and base.named_children[0].type == "identifier":
                symbol = text(base.named_children[0])
                safe_index = any(not c.is_named and c.type == "?" for c in base.children)
            if symbol not in conditional:
                continue
            exempt, is_loop = conditional[symbol]
            if base.type == "subscript_expression" and not is_loop:
                continue
            if "!" in tokens or ".?" in tokens or safe_index or prop in exempt:
                continue
            problems.append(f"{file}:{node.start_point[0] + 1}: {text(node)!r} reads {prop!r} of the conditional "
                            f"{symbol!r} (BCP318: may be null); use {symbol}.?{prop} (with ?? fallback) or "
                            f"{symbol}!.{prop} where the condition is known to hold")
    return problems


def _hook_entries(doc: dict, event: str) -> list:
    hooks = (doc or {}).get("hooks") or {}
    entry = hooks.get(event)
    if entry is None:
        return []
    return entry if isinstance(entry, list) else [entry]


def check_postdeploy_hook(doc: dict, sources: Sources) -> list[str]:
    """azure.yaml runs the smoke test after deploy, on POSIX (sh) and Windows (pwsh), and a
    failing smoke test fails the azd command."""
    entries = _hook_entries(doc, "postdeploy")
    if not entries:
        return ["azure.yaml has no hooks.postdeploy (the smoke test after azd deploy/up)"]
    problems = []
    outputs = declarations(parse(sources[MAIN]), "output")
    script = ROOT / HOOK_SCRIPT
    if not script.is_file():
        problems.append(f"{HOOK_SCRIPT} (run by the postdeploy hook) does not exist")
    else:
        code = script.read_text(encoding="utf-8")
        for needle in ("scripts", "smoke.py", "--base-url", "API_BASE_URL"):
            if needle not in code:
                problems.append(f"{HOOK_SCRIPT} should run scripts/smoke.py --base-url $API_BASE_URL (lacks {needle!r})")
        for var in sorted(set(re.findall(r"\"(AZURE_[A-Z0-9_]+|API_[A-Z0-9_]+|SERVICE_[A-Z0-9_]+)\"", code))):
            if var not in outputs:
                problems.append(f"{HOOK_SCRIPT} reads {var}, which is not an output of {MAIN}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"postdeploy hook #{i} is not a mapping")
            continue
        for os_name, shell in (("posix", "sh"), ("windows", "pwsh")):
            hook = entry.get(os_name)
            if not isinstance(hook, dict):
                problems.append(f"postdeploy hook has no {os_name} variant")
                continue
            where = f"postdeploy.{os_name}"
            if hook.get("shell") != shell:
                problems.append(f"{where}.shell must be {shell!r}, got {hook.get('shell')!r}")
            if hook.get("continueOnError", False) is not False:
                problems.append(f"{where}.continueOnError must be false: a failing smoke test has to fail the deployment")
            if hook.get("interactive") is not True:
                problems.append(f"{where}.interactive must be true (the sign-in may ask for a one-time code)")
            run = hook.get("run")
            if not isinstance(run, str) or HOOK_SCRIPT not in run:
                problems.append(f"{where}.run must run {HOOK_SCRIPT}")
                continue
            lines = [ln.strip() for ln in run.strip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
            if os_name == "posix":
                # sh: the script's status is the last command's; `set -e` stops at any earlier failure.
                if "set -e" not in lines or HOOK_SCRIPT not in lines[-1] or re.search(r"\|\|\s*true|;\s*true\s*$", run):
                    problems.append(f"{where}.run must `set -e` and end with the hook script, so its exit status "
                                    "becomes the hook's")
            else:
                # pwsh does not fail a script when a native command fails: pass $LASTEXITCODE on.
                after = run[run.index(HOOK_SCRIPT):]
                if not re.search(r"exit\s+\$LASTEXITCODE", after, re.I):
                    problems.append(f"{where}.run must `exit $LASTEXITCODE` after the hook script "
                                    "(pwsh ignores a native command's failure)")
    return problems


# ---------------------------------------------------------------------------
# tests on the real templates
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources() -> Sources:
    return load_sources()


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def test_expected_files_exist(sources):
    for rel in ("infra/main.bicep", "infra/main.parameters.json", "azure.yaml"):
        assert (ROOT / rel).is_file(), rel
    assert len(sources) >= 2, "main.bicep and its modules"


def test_every_bicep_file_parses(sources):
    assert check_syntax(sources) == []


def test_names_modules_and_outputs_resolve(sources):
    assert check_references(sources) == []


def test_role_assignments(sources):
    assert check_role_assignments(sources) == []


def test_host_storage_uses_identity(sources):
    assert check_host_storage(sources) == []


def test_no_keys_or_secret_connection_strings(sources):
    assert check_no_secrets(sources) == []


def test_storage_account_hardening(sources):
    assert check_storage_account(sources) == []


def test_function_app_hardening(sources):
    assert check_function_app(sources) == []


def test_flex_consumption(sources):
    assert check_flex_consumption(sources) == []


def test_python_version_matches_test_interpreter(sources):
    assert check_python_version(sources, python_version()) == []


def test_key_vault_references_for_server_secrets(sources):
    assert check_key_vault(sources) == []


def test_app_settings_match_settings_module(sources):
    from shared.settings import SETTING_NAMES

    for name in REQUIRED_IN_AZURE:
        assert name in SETTING_NAMES, f"REQUIRED_IN_AZURE lists {name}, which shared/settings.py does not read"
    assert check_settings_contract(sources, SETTING_NAMES, REQUIRED_IN_AZURE) == []


def test_app_starts_with_the_azure_settings(sources):
    """The settings infra/ provides are enough for Settings.from_env in Azure mode."""
    from shared.settings import Settings

    key = base64.b64encode(bytes(range(48))).decode()
    placeholders = {
        "AUTH_STORAGE_TABLE_ENDPOINT": "https://stexample.table.core.windows.net/",
        "AUTH_STORAGE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "AUTH_ACS_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "AUTH_ISSUER": "https://func-example.azurewebsites.net/api",
        "AUTH_TENANT_ID": "22222222-2222-2222-2222-222222222222",
        "AUTH_CODE_HASH_KEY": key,  # what the Key Vault reference resolves to
        "AUTH_SIGNING_KEY_SECRET": key,
        "AUTH_TABLE_PREFIX": "nativeauth",
        "AUTH_CORS_ALLOWED_ORIGINS": "https://app.example.com",
        "AUTH_ENUMERATION_PROTECTION": "true",
        "AUTH_ACS_ENDPOINT": "https://acs-example.unitedstates.communication.azure.com",
        "AUTH_EMAIL_SENDER": "DoNotReply@example.azurecomm.net",
        "AUTH_SMS_SENDER": "+18005550100",
        "AUTH_APP_NAME": "Native Auth",
    }
    env = {}
    for name, value in app_settings(sources).items():
        if not name.startswith("AUTH_"):
            continue
        plain = string_value(value)
        env[name] = plain if plain is not None else placeholders.get(name, "")
    settings = Settings.from_env(env)
    assert settings.environment == "azure"
    assert settings.delivery == "acs"
    assert settings.storage_connection_string is None and settings.acs_connection_string is None
    assert settings.storage_table_endpoint and settings.acs_endpoint and settings.email_sender


def test_tables(sources):
    assert check_tables(sources) == []


def test_tables_match_storage_module(sources):
    """The tables created by infra/ are exactly the ones the app opens."""
    from shared.storage.tables import TABLES

    var = declarations(parse(sources[MAIN]), "variable").get("tableSuffixes")
    assert var is not None, "main.bicep lost var tableSuffixes"
    suffixes = [literal(n) for n in declaration_value(var).named_children]
    assert sorted(suffixes) == sorted(TABLES)


def test_application_insights(sources):
    assert check_monitoring(sources) == []


def test_communication_services(sources):
    assert check_communication(sources) == []


def test_outputs_for_azd(sources):
    assert check_outputs(sources) == []


def test_main_follows_azd_conventions(sources):
    assert check_main_conventions(sources) == []


def test_parameters_file(sources):
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    params = data["parameters"]
    root = parse(sources[MAIN])
    declared = declarations(root, "parameter")
    unknown = set(params) - set(declared)
    assert not unknown, f"main.parameters.json sets parameters main.bicep does not declare: {unknown}"
    for name, decl in declared.items():
        if declaration_value(decl) is None:
            assert name in params, f"required parameter {name} is not in main.parameters.json"
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # Secure parameters come from the azd environment, never literal values.
    for name, decl in declared.items():
        if "secure" in decorator_names(decl) and name in params:
            assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", params[name]["value"]), (
                f"secure parameter {name} must be an azd environment substitution")


def load_azure_yaml(text_: str | None = None) -> dict:
    return yaml.safe_load(text_ if text_ is not None else (ROOT / "azure.yaml").read_text(encoding="utf-8"))


def test_azure_yaml():
    doc = load_azure_yaml()
    api = doc["services"]["api"]
    assert api["language"] in ("python", "py")
    assert api["host"] == "function"
    assert api["project"] in (".", "./")
    infra = doc.get("infra", {})
    assert infra.get("path", "infra") == "infra" and infra.get("module", "main") == "main"


def test_flex_maximum_instance_count(sources):
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert check_max_instance_count(sources, parameters) == []


def test_flex_maximum_instance_count_parameters_file_default(sources):
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["maximumInstanceCount"]["value"] == "${MAXIMUM_INSTANCE_COUNT=100}"
    for bad in ("${MAXIMUM_INSTANCE_COUNT=20}", "${MAXIMUM_INSTANCE_COUNT=1001}", "${MAXIMUM_INSTANCE_COUNT=}"):
        mutated = {**parameters, "maximumInstanceCount": {"value": bad}}
        assert check_max_instance_count(sources, mutated), bad


def test_table_prefix_length_follows_the_table_suffixes(sources):
    assert check_table_prefix(sources) == []
    suffixes = table_suffixes(sources)
    lo, hi = table_prefix_bounds(suffixes)
    # Concretely, for the app's tables: the longest suffix (signinlog) leaves 54 characters.
    assert max(map(len, suffixes)) == len("signinlog") and (lo, hi) == (1, 54)
    # Every prefix the decorators allow gives valid names (shortest and longest, for every suffix) ...
    for prefix in ("n", "n" * hi):
        assert all(TABLE_NAME.match(prefix + s) for s in suffixes), prefix
    # ... and one character more would not.
    assert not TABLE_NAME.match("n" * (hi + 1) + max(suffixes, key=len))


def test_table_prefix_bound_matches_the_settings_module(sources):
    """shared/settings.py checks the same rule at start-up (its own maximum, if it names one)."""
    from shared import settings

    app_max = getattr(settings, "TABLE_PREFIX_MAX", None)
    if app_max is None:
        pytest.skip("shared/settings.py names no TABLE_PREFIX_MAX")
    assert app_max == table_prefix_bounds(table_suffixes(sources))[1]


def test_conditional_resources_are_dereferenced_safely(sources):
    assert check_conditional_dereference(sources) == []
    # The rule has something to look at: conditional resources exist and are referenced.
    conditional = [r for r in resources(sources) if r.condition is not None]
    assert {r.symbol for r in conditional} >= {"customDomain", "pumpingActionGroup"}
    comm = sources[COMM]
    assert "customDomain!.properties.mailFromSenderDomain" in comm
    assert "customDomain.?properties.verificationRecords ?? {}" in comm


def test_azure_yaml_runs_the_smoke_test_after_deploy(sources):
    assert check_postdeploy_hook(load_azure_yaml(), sources) == []


def test_site_is_tagged_for_azd(sources):
    main = sources[MAIN]
    assert re.search(r"'azd-service-name':\s*'api'", main), "the Function App needs tag azd-service-name: api"


def test_deploy_doc_covers_the_secrets():
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in ("AUTH_CODE_HASH_KEY", "AUTH_SIGNING_KEY_SECRET", "openssl rand -base64 48", "azd up",
                   "az deployment group create", "func azure functionapp publish", "local.settings.json.example"):
        assert needle in doc, needle


# ---------------------------------------------------------------------------
# the checks catch broken templates (mutated copies)
# ---------------------------------------------------------------------------

FUNC = "infra/modules/functionapp.bicep"
ROLES = "infra/modules/roles.bicep"
STOR = "infra/modules/storage.bicep"
KV = "infra/modules/keyvault.bicep"
MON = "infra/modules/monitoring.bicep"
COMM = "infra/modules/communication.bicep"

MUTATIONS: list[tuple[str, Callable[[Sources], list[str]], str, str, str]] = [
    # (id, check, file, old, new)
    ("unterminated string", check_syntax, MAIN, "targetScope = 'resourceGroup'", "targetScope = 'resourceGroup"),
    ("missing brace", check_syntax, STOR, "    publicAccess: 'None'\n  }\n}", "    publicAccess: 'None'\n  }\n"),
    ("undeclared name", check_references, MAIN, "tableNames: tableNames", "tableNames: tableNamez"),
    ("unknown module output", check_references, MAIN, "AUTH_STORAGE_TABLE_ENDPOINT: storage.outputs.tableEndpoint",
     "AUTH_STORAGE_TABLE_ENDPOINT: storage.outputs.tableEndpiont"),
    ("unknown module param", check_references, MAIN, "tableNames: tableNames", "tableNamez: tableNames"),
    ("registry module", check_references, MAIN, "'modules/identity.bicep'",
     "'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1'"),
    ("role name not guid", check_role_assignments, ROLES,
     "name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)", "name: 'queue-role'"),
    ("role missing", check_role_assignments, ROLES, "'09976791-48a7-449e-bb21-39d1a415f350'",
     "'00000000-48a7-449e-bb21-39d1a415f350'"),
    ("role wrong scope", check_role_assignments, ROLES, "scope: communicationService", "scope: storage"),
    ("role wrong principal type", check_role_assignments, ROLES,
     "principalId: appPrincipalId\n    principalType: 'ServicePrincipal'",
     "principalId: appPrincipalId\n    principalType: 'User'"),
    ("developer role unconditional", check_role_assignments, ROLES,
     "resource developerVaultSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withDeveloper) {",
     "resource developerVaultSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {"),
    ("host storage credential", check_host_storage, FUNC, "AzureWebJobsStorage__credential: 'managedidentity'",
     "AzureWebJobsStorage__credential: 'connectionstring'"),
    ("host storage connection string", check_host_storage, FUNC, "AzureWebJobsStorage__credential: 'managedidentity'",
     "AzureWebJobsStorage: 'DefaultEndpointsProtocol=https'"),
    ("listKeys", check_no_secrets, FUNC, "AzureWebJobsStorage__clientId: identityClientId",
     "AzureWebJobsStorage__clientId: storage.listKeys().keys[0].value"),
    ("account key", check_no_secrets, MAIN, "AUTH_TABLE_PREFIX: tablePrefix",
     "AUTH_TABLE_PREFIX: tablePrefix\n      AUTH_STORAGE_CONNECTION_STRING: 'AccountName=x;AccountKey=${tablePrefix}'"),
    ("acs connection string", check_no_secrets, MAIN, "AUTH_TABLE_PREFIX: tablePrefix",
     "AUTH_TABLE_PREFIX: tablePrefix\n      AUTH_ACS_CONNECTION_STRING: tablePrefix"),
    ("worker runtime on flex", check_no_secrets, FUNC, "AzureWebJobsStorage__clientId: identityClientId",
     "AzureWebJobsStorage__clientId: identityClientId\n  FUNCTIONS_WORKER_RUNTIME: 'python'"),
    ("shared key", check_storage_account, STOR, "allowSharedKeyAccess: false", "allowSharedKeyAccess: true"),
    ("tls 1.0 storage", check_storage_account, STOR, "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
    ("public blobs", check_storage_account, STOR, "allowBlobPublicAccess: false", "allowBlobPublicAccess: true"),
    ("http allowed", check_function_app, FUNC, "httpsOnly: true", "httpsOnly: false"),
    ("tls 1.0 site", check_function_app, FUNC, "minTlsVersion: '1.2'", "minTlsVersion: '1.0'"),
    ("ftps", check_function_app, FUNC, "ftpsState: 'Disabled'", "ftpsState: 'FtpsOnly'"),
    ("scm basic auth", check_function_app, FUNC, "name: 'scm'\n  properties: {\n    allow: false",
     "name: 'scm'\n  properties: {\n    allow: true"),
    ("platform cors", check_function_app, FUNC, "allowedOrigins: []", "allowedOrigins: ['*']"),
    ("system identity", check_function_app, FUNC, "type: 'UserAssigned'\n", "type: 'SystemAssigned'\n"),
    ("not flex", check_flex_consumption, FUNC, "name: 'FC1'", "name: 'Y1'"),
    ("no functionAppConfig", check_flex_consumption, FUNC, "functionAppConfig: {", "functionAppConfigX: {"),
    ("deployment storage key", check_flex_consumption, FUNC, "type: 'UserAssignedIdentity'",
     "type: 'StorageAccountConnectionString'"),
    ("python version", lambda s: check_python_version(s, python_version()), MAIN,
     "var pythonVersion = '", "var pythonVersion = '9.9' // was '"),
    ("secret not a reference", check_key_vault, MAIN,
     "AUTH_CODE_HASH_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.codeHashKeyUri})'",
     "AUTH_CODE_HASH_KEY: authCodeHashKey"),
    ("vault access policies", check_key_vault, KV, "enableRbacAuthorization: true", "enableRbacAuthorization: false"),
    ("generated secret", check_key_vault, MAIN, "param authCodeHashKey string", "param authCodeHashKey string = newGuid()"),
    ("secret param not secure", check_key_vault, KV, "@secure()\n@minLength(44)\nparam codeHashKey string",
     "@minLength(44)\nparam codeHashKey string"),
    ("unknown AUTH setting", lambda s: check_settings_contract(s, _setting_names(), REQUIRED_IN_AZURE), MAIN,
     "AUTH_TABLE_PREFIX: tablePrefix", "AUTH_TABLE_PREFIX: tablePrefix\n      AUTH_TABLE_PREFIXX: tablePrefix"),
    ("required setting missing", lambda s: check_settings_contract(s, _setting_names(), REQUIRED_IN_AZURE), MAIN,
     "      AUTH_SMS_SENDER: smsSenderNumber\n", ""),
    ("local environment", lambda s: check_settings_contract(s, _setting_names(), REQUIRED_IN_AZURE), MAIN,
     "AUTH_ENVIRONMENT: 'azure'", "AUTH_ENVIRONMENT: 'local'"),
    ("table missing", check_tables, MAIN, "  'signinlog'\n", ""),
    ("app insights local auth", check_monitoring, MON, "DisableLocalAuth: true", "DisableLocalAuth: false"),
    ("domain not linked", check_communication, COMM, "linkedDomains:", "linkedDomainz:"),
    # maximumInstanceCount: the bounds before this rule (1..1000), a ceiling above the platform's,
    # a module parameter that no longer follows, a hard-coded value.
    ("max instances from 1 (main)", check_max_instance_count, MAIN,
     "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount"),
    ("max instances from 1 (module)", check_max_instance_count, FUNC,
     "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount"),
    ("max instances up to 2000", check_max_instance_count, MAIN,
     "@maxValue(1000)\nparam maximumInstanceCount", "@maxValue(2000)\nparam maximumInstanceCount"),
    ("max instances unbounded module param", check_max_instance_count, FUNC,
     "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "param maximumInstanceCount"),
    ("max instances default below range", check_max_instance_count, MAIN,
     "param maximumInstanceCount int = 100", "param maximumInstanceCount int = 10"),
    ("max instances description without range", check_max_instance_count, FUNC,
     "(per function group). 40-1000, the range", "(per function group), the range"),
    ("max instances hard-coded", check_max_instance_count, FUNC,
     "maximumInstanceCount: maximumInstanceCount", "maximumInstanceCount: 5"),
    # tablePrefix: the bounds before this rule (3..50), a maximum that ignores a longer suffix,
    # an empty prefix, a description without the rule, a default that is no table name.
    ("table prefix 3..50 (old bounds)", check_table_prefix, MAIN,
     "@minLength(1)\n@maxLength(54)\n", "@minLength(3)\n@maxLength(50)\n"),
    ("table prefix too long", check_table_prefix, MAIN, "@maxLength(54)", "@maxLength(55)"),
    ("table prefix empty", check_table_prefix, MAIN, "@minLength(1)\n@maxLength(54)", "@minLength(0)\n@maxLength(54)"),
    ("longer table suffix", check_table_prefix, MAIN, "  'signinlog'\n", "  'signinlog'\n  'signinlogarchive'\n"),
    ("table prefix description (old)", check_table_prefix, MAIN,
     "@description('Prefix of the app table names (AUTH_TABLE_PREFIX): a letter followed by letters or digits",
     "@description('Prefix of the app table names (AUTH_TABLE_PREFIX); letters and numbers"),
    ("table prefix default with hyphen", check_table_prefix, MAIN,
     "param tablePrefix string = 'nativeauth'", "param tablePrefix string = 'native-auth'"),
    # conditional resources/modules: the property reads before this change (guarded by a
    # ternary: still BCP318), and the same rule in other modules and for modules.
    ("conditional property in ternary (old)", check_conditional_dereference, COMM,
     "customDomain!.properties.mailFromSenderDomain", "customDomain.properties.mailFromSenderDomain"),
    ("conditional output (old)", check_conditional_dereference, COMM,
     "customDomain.?properties.verificationRecords ?? {}", "hasCustomDomain ? customDomain.properties.verificationRecords : {}"),
    ("conditional resource in another module", check_conditional_dereference, MON,
     "pumpingActionGroup.id", "pumpingActionGroup.properties.groupShortName"),
    ("conditional role assignment read", check_conditional_dereference, ROLES,
     "resource developerBlobData", "output devRole string = developerTableData.properties.principalId\n\nresource developerBlobData"),
    ("conditional module output", check_conditional_dereference, MAIN,
     "module keyVault 'modules/keyvault.bicep' = {", "module keyVault 'modules/keyvault.bicep' = if (!empty(principalId)) {"),
]


@functools.lru_cache(maxsize=1)
def _setting_names() -> tuple[str, ...]:
    from shared.settings import SETTING_NAMES

    return tuple(SETTING_NAMES)


@pytest.mark.parametrize("check,file,old,new", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_check_catches_mutation(sources, check, file, old, new):
    assert file in sources, file
    assert old in sources[file], f"mutation target not found in {file} (update the test): {old!r}"
    mutated = dict(sources)
    mutated[file] = sources[file].replace(old, new, 1)
    assert check(mutated), f"{check.__name__} did not notice the mutation in {file}"


def test_conditional_check_follows_the_compiler():
    """What Bicep flags (BCP318) and what it does not, on small templates."""
    def problems(body: str) -> list[str]:
        head = ("param on bool\n"
                "resource r 'Microsoft.Storage/storageAccounts@2023-05-01' = if (on) {\n  name: 'x'\n}\n"
                "resource always 'Microsoft.Storage/storageAccounts@2023-05-01' = if (true) {\n  name: 'y'\n}\n"
                "resource many 'Microsoft.Storage/storageAccounts@2023-05-01' = [for i in range(0, 2): if (on) {\n"
                "  name: 'z${i}'\n}]\n")
        return check_conditional_dereference({"infra/t.bicep": head + body})

    assert problems("output a string = r.properties.primaryEndpoints.blob\n")
    assert problems("output a string = on ? r.properties.primaryEndpoints.blob : ''\n")  # no flow analysis
    assert problems("output a string = many[0].properties.primaryEndpoints.blob\n")
    assert not problems("output a string = r.?properties.primaryEndpoints.blob ?? ''\n")
    assert not problems("output a string = on ? r!.properties.primaryEndpoints.blob : ''\n")
    assert not problems("output a string = many[0].?properties.primaryEndpoints.blob ?? ''\n")
    assert not problems("output a string = r.id\noutput b string = r.name\n")  # compile-time properties
    assert not problems("output a string = always.properties.primaryEndpoints.blob\n")  # if (true) is not conditional


YAML_MUTATIONS = [
    # (id, old, new) on azure.yaml's text
    ("no hooks (azure.yaml before this change)", "\n# After every `azd deploy`", "\n__CUT__"),
    ("no windows variant", "    windows:\n      shell: pwsh", "    windowz:\n      shell: pwsh"),
    ("no posix variant", "    posix:\n      shell: sh", "    unix:\n      shell: sh"),
    ("posix continues on error", "      shell: sh\n      interactive: true\n      continueOnError: false",
     "      shell: sh\n      interactive: true\n      continueOnError: true"),
    ("windows continues on error", "      shell: pwsh\n      interactive: true\n      continueOnError: false",
     "      shell: pwsh\n      interactive: true\n      continueOnError: true"),
    ("pwsh swallows the exit status", "; exit $LASTEXITCODE }", " }"),
    ("posix swallows the exit status", '"$PY" infra/hooks/postdeploy.py\n', '"$PY" infra/hooks/postdeploy.py || true\n'),
    ("posix without set -e", "        set -e\n", ""),
    ("posix wrong shell", "    posix:\n      shell: sh\n", "    posix:\n      shell: pwsh\n"),
    ("not interactive", "      shell: sh\n      interactive: true", "      shell: sh\n      interactive: false"),
    ("hook runs something else", '"$PY" infra/hooks/postdeploy.py', '"$PY" -c pass'),
    ("predeploy instead of postdeploy", "  postdeploy:", "  predeploy:"),
]


@pytest.mark.parametrize("old,new", [m[1:] for m in YAML_MUTATIONS], ids=[m[0] for m in YAML_MUTATIONS])
def test_postdeploy_check_catches_mutation(sources, old, new):
    original = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert old in original, f"mutation target not found in azure.yaml (update the test): {old!r}"
    mutated = original.replace(old, new, 1)
    if "__CUT__" in mutated:
        mutated = mutated[:mutated.index("__CUT__")]
    assert check_postdeploy_hook(load_azure_yaml(mutated), sources), "check_postdeploy_hook did not notice"


class _FakeApi(http.server.BaseHTTPRequestHandler):
    """A stand-in for the deployed API under /api: healthy, or failing everything."""

    healthy = True

    def do_GET(self):
        base = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        path = self.path.split("?")[0]
        answers = {
            "/api/health": {"status": "ok", "storage": "reachable"},
            "/api/health/detail": {"status": "ok", "checks": []},
            "/api/.well-known/openid-configuration": {"issuer": base},
            "/api/discovery/v2.0/keys": {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]},
        }
        status, body = (200, answers[path]) if self.healthy and path in answers else (503, {"error": "unavailable"})
        send_json(self, status, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    def start(healthy: bool) -> str:
        handler = type("Handler", (_FakeApi,), {"healthy": healthy})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/api"

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _run_posix_hook(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """Run azure.yaml's posix postdeploy hook the way azd does: sh, project root, azd env in the environment."""
    run = load_azure_yaml()["hooks"]["postdeploy"]["posix"]["run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMOKE_", "API_BASE_URL"))}
    env.update({"SMOKE_WAIT_SECONDS": "0", **env_extra})
    return subprocess.run(["sh", "-c", run], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)


def test_postdeploy_hook_fails_the_deployment_when_the_smoke_test_fails(fake_api):
    base = fake_api(healthy=False)
    r = _run_posix_hook({"API_BASE_URL": base, "SMOKE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
                         "SMOKE_USERNAME": "smoke@example.com", "SMOKE_PASSWORD": "not-on-the-command-line"})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "postdeploy smoke test: FAILED" in r.stderr, r.stdout + r.stderr
    assert "not-on-the-command-line" not in r.stdout + r.stderr


def test_postdeploy_hook_fails_without_the_api_url():
    r = _run_posix_hook({})
    assert r.returncode != 0 and "API_BASE_URL" in r.stderr, r.stdout + r.stderr


def test_postdeploy_hook_fails_on_half_configured_sign_in(fake_api):
    r = _run_posix_hook({"API_BASE_URL": fake_api(healthy=True), "SMOKE_USERNAME": "smoke@example.com"})
    assert r.returncode != 0 and "SMOKE_CLIENT_ID" in r.stderr, r.stdout + r.stderr


def test_postdeploy_hook_passes_against_a_healthy_api_without_an_account(fake_api):
    """A first azd up has no client and no account: the anonymous checks run (or, with a
    smoke.py that has no --readiness-only, the hook says it skipped) and the deploy goes on."""
    r = _run_posix_hook({"API_BASE_URL": fake_api(healthy=True)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "postdeploy smoke test:" in r.stdout


def test_sms_pumping_alert(sources):
    """The log alert the pumping defence relies on (shared/security/limits.py logs "pumping suspected" and one
    "metric" line per SMS sent and verified): scoped to Application Insights, on both signals."""
    rules = resources_of(sources, "Microsoft.Insights/scheduledQueryRules")
    assert len(rules) == 1, rules
    rule = rules[0]
    assert string_value(rule.get("kind")) == "LogAlert"
    query = text(rule.body)
    for needle in ("pumping suspected", "sms_sent", "sms_verified", "applicationInsights.id"):
        assert needle in query, needle
    import re as _re
    from shared.security import limits

    assert '"pumping suspected' in Path(limits.__file__).read_text()          # the app writes what the alert reads
    assert "sms_sent" in Path(limits.__file__).read_text() and "sms_verified" in Path(limits.__file__).read_text()
    assert _re.search(r"param alertEmail string", sources["infra/main.bicep"])
