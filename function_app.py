"""The Function App: it only registers the blueprints in functions/."""

import azure.functions as func

from functions import account, discovery, maintenance, openapi, register, resetpassword, sample, signin, signup, token

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

for blueprint in (signin.bp, token.bp, signup.bp, resetpassword.bp, register.bp, account.bp, discovery.bp, sample.bp,
                  openapi.bp, maintenance.bp):
    app.register_functions(blueprint)
