"""/me: the account API of the signed-in user (shared/flows/account.py). Not part of the native-auth
authority, so no tenant-path aliases."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "account_me", "me", lazy("shared.flows.account", "me"), "GET, PATCH, DELETE", tenant_alias=False)
endpoint(bp, "account_password", "me/password", lazy("shared.flows.account", "password"), tenant_alias=False)
endpoint(bp, "account_methods", "me/methods", lazy("shared.flows.account", "methods_endpoint"), "GET, POST", tenant_alias=False)
endpoint(bp, "account_method_verify", "me/methods/verify", lazy("shared.flows.account", "method_verify"), tenant_alias=False)
endpoint(bp, "account_method", "me/methods/{id}", lazy("shared.flows.account", "method_item"), "DELETE", tenant_alias=False)
endpoint(bp, "account_revoke_sessions", "me/revoke-sessions", lazy("shared.flows.account", "revoke_sessions"), tenant_alias=False)
endpoint(bp, "account_export", "me/export", lazy("shared.flows.account", "export"), "GET", tenant_alias=False)
endpoint(bp, "account_confirmation", "me/confirmation", lazy("shared.flows.account", "confirmation"), tenant_alias=False)
