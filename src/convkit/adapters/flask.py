"""Flask adapter: ``app.register_blueprint(convkit.adapters.flask.blueprint(kit))``."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from convkit.adapters._common import METHODS, as_api, base_of
from convkit.http import API_PREFIX, HttpApi, HttpRequest
from convkit.service import ConvKit

__all__ = ["blueprint", "create_app"]


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
            body=request.stream.read,
            base=base_of(request.script_root + request.path, sub),
        )
        resp = api.handle(neutral)
        native = Response(resp.body, status=resp.status)
        native.headers.clear()
        for key, value in resp.headers:
            native.headers[key] = value
        return native

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


def create_app(kit: ConvKit) -> Flask:
    """A Flask app with the v1 API mounted (the `convkit serve --framework flask` app)."""
    app = Flask("convkit")
    app.register_blueprint(blueprint(kit))
    return app
