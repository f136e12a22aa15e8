"""The Function App: it only registers the blueprints in functions/."""

import azure.functions as func

from functions import discovery, maintenance, signin, token

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (signin.bp, token.bp, discovery.bp, maintenance.bp):
    app.register_functions(blueprint)
