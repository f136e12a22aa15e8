"""OpenID discovery and the JWKS.

Discovery is served where every client looks for it: ``/.well-known/openid-configuration``
(OIDC Discovery, MSAL Python's ``oidc_authority``) and ``/v2.0/.well-known/openid-configuration``
(MSAL iOS's silent refresh: IdentityCore ``MSIDAADEndpointProvider``), each also under a tenant
path segment (docs/sdk-compatibility.md)."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "openid_configuration", ".well-known/openid-configuration", lazy("shared.protocol.discovery", "openid_configuration"), "GET",
         aliases={"openid_configuration_v2": "v2.0/.well-known/openid-configuration"})
endpoint(bp, "jwks", "discovery/v2.0/keys", lazy("shared.protocol.discovery", "jwks"), "GET")
