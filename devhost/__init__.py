"""Local stand-in for the Azure Functions host (`func start`): see devhost.server."""

from devhost.server import LocalHost, functions_of

__all__ = ["LocalHost", "functions_of"]
