"""The sample's logic, kept apart from the Azure Functions adapter in function_app.py.

config   settings (app settings / environment variables) and the JSON files they name
auth     the bearer-token check every call gets (RS256 via the issuer's JWKS, iss, aud, azp)
events   the four events: request parsing, decisions, Entra-shaped responses
passwords  the password-submit JWE and the legacy password hashes (PBKDF2-SHA256, bcrypt)
"""
