"""/me: the account API of the signed-in user (shared/flows/account.py). Not part of the native-auth
authority, so no tenant-path aliases."""

import azure.functions as func

from shared.flows import account

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "account_me", "me", account.me, "GET, PATCH, DELETE", tenant_alias=False)
endpoint(bp, "account_password", "me/password", account.password, tenant_alias=False)
endpoint(bp, "account_methods", "me/methods", account.methods_endpoint, "GET, POST", tenant_alias=False)
endpoint(bp, "account_method_verify", "me/methods/verify", account.method_verify, tenant_alias=False)
endpoint(bp, "account_method", "me/methods/{id}", account.method_item, "DELETE", tenant_alias=False)
endpoint(bp, "account_revoke_sessions", "me/revoke-sessions", account.revoke_sessions, tenant_alias=False)
endpoint(bp, "account_export", "me/export", account.export, "GET", tenant_alias=False)
endpoint(bp, "account_confirmation", "me/confirmation", account.confirmation, tenant_alias=False)
