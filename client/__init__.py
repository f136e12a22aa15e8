"""``python -m client``: a command-line client for the native-auth API (V1).

It walks a person through sign-up, sign-in (password or email code, then a
second factor or the registration of one) and password reset by speaking the
wire protocol of ``native-auth-contract.md`` (§3, §5) against any base URL,
then keeps the tokens so that ``token`` prints a fresh access token:

* with an ``https`` base URL, **MSAL Python** takes over the refresh token
  (``PublicClientApplication(oidc_authority=base_url)``, a
  ``SerializableTokenCache`` in a file) and refreshes silently;
* with an ``http`` base URL (local development), MSAL Python cannot be used
  (it accepts only https authorities, contract §7.9), so the client redeems
  the refresh token itself (``grant_type=refresh_token``) and keeps its own
  token file.

The signed-in user's account (profile, attributes, password, second factors,
sign out everywhere, export, deletion) goes through the account API (``/me``)
with an access token for ``api://native-auth/account``; changes that need a
fresh second factor sign in again with the server's claims challenge.

Modules: :mod:`client.api` (HTTP and errors), :mod:`client.messages` (human
error messages), :mod:`client.prompts` (stdin / TTY), :mod:`client.flows`
(the flows), :mod:`client.cache` (the two token stores), :mod:`client.account`
(the account API and its step-up), :mod:`client.cli` (arguments and commands).
"""

__version__ = "0.1.0"
