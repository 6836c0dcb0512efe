"""The v1 HTTP API in neutral types; adapters in :mod:`convkit.adapters` mount it."""

from convkit.http.core import API_PREFIX, HttpApi, HttpRequest, HttpResponse

__all__ = ["API_PREFIX", "HttpApi", "HttpRequest", "HttpResponse"]
