"""Flask adapter: ``app.register_blueprint(convkit.adapters.flask.blueprint(kit))``."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import ClientDisconnected

from convkit.adapters._common import METHODS, as_api, base_of, guarded
from convkit.http import API_PREFIX, HttpApi, HttpRequest, HttpResponse
from convkit.service import ConvKit

__all__ = ["blueprint", "create_app", "metrics_blueprint"]


def _to_native(resp: HttpResponse) -> Response:
    native = Response(resp.body, status=resp.status)
    native.headers.clear()
    for key, value in resp.headers:
        native.headers[key] = value
    return native


def blueprint(
    kit: ConvKit | HttpApi, *, name: str = "convkit", url_prefix: str = API_PREFIX
) -> Blueprint:
    """A Blueprint serving the v1 API under ``url_prefix``."""
    api = as_api(kit)
    bp = Blueprint(name, __name__, url_prefix=url_prefix)

    def view(path: str = "") -> Response:
        sub = "/" + path
        neutral = HttpRequest(
            method=request.method,
            path=sub,
            headers=dict(request.headers),
            query=request.args.to_dict(flat=True),
            body=guarded(request.stream.read, (ClientDisconnected, OSError)),
            base=base_of(request.script_root + request.path, sub),
        )
        return _to_native(api.handle(neutral))

    # provide_automatic_options=False: OPTIONS reaches the core like every other method.
    bp.add_url_rule(
        "/",
        "root",
        view,
        methods=list(METHODS),
        strict_slashes=False,
        provide_automatic_options=False,
    )
    bp.add_url_rule(
        "/<path:path>", "api", view, methods=list(METHODS), provide_automatic_options=False
    )
    return bp


def metrics_blueprint(kit: ConvKit | HttpApi, *, name: str = "convkit_metrics") -> Blueprint:
    """A Blueprint serving ``GET /metrics`` (Prometheus); register it without a prefix to
    serve it at the app's root, as ``convkit serve`` does."""
    api = as_api(kit)
    bp = Blueprint(name, __name__)

    def view() -> Response:
        neutral = HttpRequest(
            method=request.method, path="/metrics", headers=dict(request.headers), base=""
        )
        return _to_native(api.handle_metrics(neutral))

    bp.add_url_rule(
        "/metrics", "metrics", view, methods=list(METHODS), provide_automatic_options=False
    )
    return bp


def create_app(kit: ConvKit) -> Flask:
    """A Flask app with the v1 API and ``/metrics`` mounted (the `convkit serve --framework
    flask` app)."""
    api = as_api(kit)
    app = Flask("convkit")
    app.register_blueprint(blueprint(api))
    app.register_blueprint(metrics_blueprint(api))
    return app
