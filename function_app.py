"""The Function App: it only registers the blueprints in functions/."""

import azure.functions as func

from functions import discovery, maintenance, register, sample, signin, token

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (signin.bp, token.bp, register.bp, discovery.bp, sample.bp, maintenance.bp):
    app.register_functions(blueprint)
