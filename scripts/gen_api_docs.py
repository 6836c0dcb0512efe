#!/usr/bin/env python3
"""Write docs/api.md from the OpenAPI document of the v1 API.

    python scripts/gen_api_docs.py           # rewrite docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is stale

Everything about paths, parameters, bodies and responses comes from
``convkit.http.openapi.openapi_document()``. The error-code table is the one hand-written part:
``ERROR_CODES`` below. Before writing, the generator scans ``src/convkit`` for every error code
the code can produce (``code="..."`` arguments, ``JobError("...")``, ``{"code": "..."}`` literals
and the default code of each error class that is raised without one) and refuses to run when the
table and the code disagree, so the table cannot silently go stale.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "convkit"
OUT = ROOT / "docs" / "api.md"

# code -> (HTTP status or "-", where it appears, retried as a job error?, meaning).
# "response": the error body of an HTTP request; "job": ``error.code`` of a failed job;
# "start-up": the one-line error of the CLI or the exception of ConvKit.from_settings().
ERROR_CODES: dict[str, tuple[str, str, str, str]] = {
    "invalid_json": ("400", "response", "", "The body of `POST /jobs` is not valid JSON."),
    "invalid_request": ("400", "response", "", "The `Content-Length` header is not a number."),
    "unauthorized": (
        "401",
        "response",
        "",
        "No API key, or a key that is not configured. Sent with `WWW-Authenticate`.",
    ),
    "template_not_allowed": (
        "403",
        "response",
        "",
        "`ALLOWED_TEMPLATES` or the key's template list in `API_KEYS` excludes the template.",
    ),
    "not_found": ("404", "response", "", "No route at this path."),
    "job_not_found": (
        "404",
        "response",
        "",
        "No job with this id for this key's tenant (another tenant's job looks the same).",
    ),
    "result_missing": (
        "404",
        "response",
        "",
        "The job succeeded but its artifact is gone from storage.",
    ),
    "method_not_allowed": (
        "405",
        "response",
        "",
        "The path exists but not with this method; see the `Allow` header.",
    ),
    "idempotency_conflict": (
        "409",
        "response",
        "",
        "The `Idempotency-Key` was used before by this tenant for a different request.",
    ),
    "job_not_finished": (
        "409",
        "response",
        "",
        "The result was asked for while the job is queued or running.",
    ),
    "job_failed": ("409", "response", "", "The result was asked for, but the job failed."),
    "job_not_failed": (
        "409",
        "response",
        "",
        "`POST /jobs/{job_id}/retry` of a job that is not failed.",
    ),
    "payload_too_large": ("413", "response", "", "The body is larger than `MAX_REQUEST_BYTES`."),
    "unsupported_media_type": (
        "415",
        "response",
        "",
        "`POST /jobs` without `Content-Type: application/json`.",
    ),
    "invalid_body": ("422", "response", "", "The JSON body is not an object."),
    "unknown_field": (
        "422",
        "response",
        "",
        "The body has a field other than template, data, format, locale, options.",
    ),
    "missing_field": ("422", "response", "", "`template` or `format` is missing."),
    "invalid_field": (
        "422",
        "response",
        "",
        "A field has the wrong type (`data` and `options` are objects, the others strings).",
    ),
    "invalid_template_name": (
        "422",
        "response",
        "",
        "The template name is not 1-64 letters, digits, `_`, `.`, `-` starting with a letter "
        "or digit.",
    ),
    "template_not_found": (
        "422",
        "response, job",
        "no",
        "No template of that name in `TEMPLATES_DIR` (as a job error: removed after submission).",
    ),
    "ambiguous_template": (
        "422",
        "response, job",
        "no",
        "Two files share the template name (`invoice.html` and `invoice.txt`).",
    ),
    "unsupported_template": (
        "422",
        "response, job",
        "no",
        "No installed template engine handles the template.",
    ),
    "invalid_format": ("422", "response", "", "`format` is not a short name such as `pdf`."),
    "missing_source_format": (
        "422",
        "response",
        "",
        "An upload's file name has no suffix and no `source_format` field says its format.",
    ),
    "unsupported_format": (
        "422",
        "response, job",
        "no",
        "No converter turns the template's format into the requested one.",
    ),
    "invalid_locale": ("422", "response", "", "`locale` is malformed or unknown to Babel."),
    "invalid_idempotency_key": (
        "422",
        "response",
        "",
        "`Idempotency-Key` is not 1 to 200 characters.",
    ),
    "invalid_limit": (
        "422",
        "response",
        "",
        "`limit` of `GET /jobs` is not a whole number from 1 to 200.",
    ),
    "invalid_cursor": ("422", "response", "", "`cursor` of `GET /jobs` is malformed."),
    "invalid_status": (
        "422",
        "response",
        "",
        "`status` of `GET /jobs` is not queued, running, succeeded or failed.",
    ),
    "template_error": (
        "422",
        "response, job",
        "no",
        "The template does not compile (checked at submission) or failed to render "
        "(undefined name with `strict`, sandbox violation, an exception in the template).",
    ),
    "template_limit_exceeded": (
        "-",
        "job",
        "no",
        "The rendered document exceeded the engine's output limit (50 MiB).",
    ),
    "unsupported_conversion": (
        "-",
        "job",
        "no",
        "LibreOffice has no filter for this pair of formats.",
    ),
    "conversion_failed": (
        "-",
        "job",
        "yes",
        "LibreOffice exited with an error or wrote no output.",
    ),
    "conversion_timeout": (
        "-",
        "job",
        "yes",
        "The conversion took longer than `OFFICE_TIMEOUT_SECONDS`; the LibreOffice process group "
        "was killed.",
    ),
    "invalid_data": (
        "422",
        "response",
        "no",
        "The job's `data` does not match the JSON Schema in `<template>.schema.json`; the "
        "message names the failing path.",
    ),
    "invalid_form": (
        "400/422",
        "response",
        "no",
        "A multipart upload is malformed: no boundary, a part without a name, a field twice.",
    ),
    "source_missing": (
        "-",
        "job",
        "no",
        "The uploaded document of an upload job is no longer in storage.",
    ),
    "invalid_job": (
        "-",
        "job",
        "no",
        "A stored job has neither a template nor an uploaded document (never from the API).",
    ),
    "document_not_found": (
        "-",
        "CLI",
        "no",
        "`convkit convert` / `convkit.convert()`: the input file does not exist.",
    ),
    "invalid_rich_content": (
        "-",
        "job",
        "no",
        "A `$image`, `$rich` or `$link` value in the data is malformed (see the templates "
        "guide); the message names what is wrong.",
    ),
    "invalid_option": (
        "422",
        "response",
        "",
        "A conversion option has a bad value, or a PDF option was given for another target "
        "(see [formats](formats.md#options)).",
    ),
    "conversion_crashed": (
        "-",
        "job",
        "yes",
        "LibreOffice died while converting the document, also on the pool's own retry with a "
        "fresh process; the job's attempts retry it, then it fails with this code.",
    ),
    "unsafe_document": (
        "422",
        "response, job",
        "no",
        "The document was refused before any parser or converter saw it: a zip bomb, an unsafe "
        "member name, macros, or XML with a DOCTYPE or entities.",
    ),
    "worker_lost": (
        "-",
        "job",
        "no",
        "The worker running the job's last attempt stopped (its lease expired); the sweeper "
        "failed the job.",
    ),
    "storage_error": (
        "500",
        "response, job",
        "yes",
        "The storage backend refused or failed an operation.",
    ),
    "invalid_key": (
        "500",
        "response, job",
        "yes",
        "A storage key failed validation (keys are made by the server, so this is a bug).",
    ),
    "internal_error": (
        "500",
        "response, job",
        "yes",
        "An unexpected exception; the server log has the traceback.",
    ),
    "service_unavailable": (
        "503",
        "response, job",
        "yes",
        "The database, queue, storage or LibreOffice is unavailable. Sent with "
        "`Retry-After: 5`; a submit answered this way stored nothing.",
    ),
    "not_ready": (
        "503",
        "response",
        "",
        "`GET /ready`: a dependency is down; `checks` names it.",
    ),
    "config_error": (
        "-",
        "start-up",
        "",
        "A setting is missing or malformed; the message names the variable.",
    ),
    "backend_unavailable": (
        "-",
        "start-up",
        "",
        "A configured backend needs a package that is not installed; the message says which "
        "`pip install 'convkit[...]'` to run.",
    ),
}

# Things core.py does that the OpenAPI document does not list per operation.
GENERAL_NOTES = """\
## Behaviour common to every operation

- Every error body has the shape shown under [Errors](#errors).
- `HEAD` is accepted wherever `GET` is; `GET /jobs/{job_id}/result` then sends the headers only.
- A method the path does not support answers `405` with an `Allow` header.
- When the database or queue cannot be reached, any operation that needs it answers `503`
  `service_unavailable` with `Retry-After: 5`; a submit that fails this way stores nothing.
- An unexpected exception answers `500` `internal_error`; the details are only in the server log.
- `POST /jobs` answers a replayed `Idempotency-Key` with the first job, `202`, and the header
  `Idempotent-Replayed: true`.
- `GET /jobs/{job_id}/result` sends `Content-Type` (the format's media type), `Content-Length`,
  `Content-Disposition: attachment; filename="<template>.<format>"` and
  `Cache-Control: private, no-store`.
"""


# --------------------------------------------------------------------------------------------------
# Error codes used by the source


def _error_classes() -> dict[str, tuple[str, int]]:
    """Error class name -> (default code, HTTP status), from convkit.errors."""
    import convkit.errors as errors

    out: dict[str, tuple[str, int]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.ConvKitError):
            out[name] = (cls.code, cls.status)
    return out


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def used_error_codes() -> dict[str, set[str]]:
    """Every error code the package can produce -> the files producing it."""
    classes = _error_classes()
    found: dict[str, set[str]] = {}

    def add(code: str, path: Path, line: int) -> None:
        found.setdefault(code, set()).add(f"{path.relative_to(ROOT).as_posix()}:{line}")

    for path in sorted(SRC.rglob("*.py")):
        if "testing" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = _callee(node)
                code_kw = [k for k in node.keywords if k.arg == "code"]
                for kw in code_kw:
                    if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        add(kw.value.value, path, node.lineno)
                if callee in classes and not code_kw:
                    add(classes[callee][0], path, node.lineno)
                if (
                    callee == "JobError"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    add(node.args[0].value, path, node.lineno)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        add(value.value, path, node.lineno)
    return found


def check_error_table() -> list[str]:
    """Problems between ERROR_CODES and the source (empty when they agree)."""
    used = used_error_codes()
    problems = [
        f"error code {code!r} (used at {', '.join(sorted(where))}) is missing from "
        "ERROR_CODES in scripts/gen_api_docs.py"
        for code, where in sorted(used.items())
        if code not in ERROR_CODES
    ]
    problems += [
        f"error code {code!r} is in ERROR_CODES but no longer used in src/convkit"
        for code in sorted(ERROR_CODES)
        if code not in used
    ]
    return problems


# --------------------------------------------------------------------------------------------------
# OpenAPI -> Markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(name: str) -> str:
    return name.lower()


def _type(schema: dict[str, Any]) -> str:
    """A short, readable type of ``schema``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "oneOf" in schema:
        return " or ".join(_type(s) for s in schema["oneOf"])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    parts = []
    for k in kinds:
        if k == "array" and "items" in schema:
            parts.append(f"array of {_type(schema['items'])}")
        elif k == "object" and schema.get("properties"):
            fields = ", ".join(f"`{p}`: {_type(s)}" for p, s in schema["properties"].items())
            parts.append(f"object {{{fields}}}")
        else:
            parts.append(f"`{k}`")
    text = " or ".join(parts)
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


def _notes(schema: dict[str, Any]) -> str:
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "minimum" in schema and "maximum" in schema:
        notes.append(f"{schema['minimum']} to {schema['maximum']}")
    if "maxLength" in schema:
        notes.append(f"at most {schema['maxLength']} characters")
    if "default" in schema:
        notes.append(f"default `{schema['default']}`")
    if "examples" in schema:
        notes.append("example " + ", ".join(f"`{v}`" for v in schema["examples"]))
    return "; ".join(notes)


def _properties_table(schema: dict[str, Any]) -> list[str]:
    # Response schemas list no required fields; a Required column would only say "no".
    if "required" in schema:
        required = set(schema["required"])
        lines = ["| Field | Type | Required | Notes |", "|---|---|---|---|"]
    else:
        required = None
        lines = ["| Field | Type | Notes |", "|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        req = "" if required is None else f" {'yes' if name in required else 'no'} |"
        lines.append(f"| `{name}` | {_cell(_type(prop))} |{req} {_cell(_notes(prop))} |")
    if schema.get("additionalProperties") is False:
        lines += ["", "No other fields are accepted."]
    return lines


def _auth(op: dict[str, Any], doc: dict[str, Any]) -> str:
    security = op.get("security", doc.get("security", []))
    if not security:
        return "Authentication: none."
    if {} in security:  # OpenAPI's way of saying "a key is optional"
        return "Authentication: optional API key."
    return "Authentication: API key (`Authorization: Bearer <key>` or `X-API-Key: <key>`)."


def _operation(
    method: str, path: str, op: dict[str, Any], doc: dict[str, Any], base: str
) -> list[str]:
    lines = [f"### {method.upper()} {base}{path}", "", op.get("summary", ""), ""]
    lines += [f"Operation id: `{op['operationId']}`. {_auth(op, doc)}", ""]
    params = op.get("parameters", [])
    if params:
        lines += [
            "Parameters:",
            "",
            "| Name | In | Required | Type | Notes |",
            "|---|---|---|---|---|",
        ]
        for p in params:
            notes = "; ".join(
                n for n in (p.get("description", "").rstrip("."), _notes(p["schema"])) if n
            )
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                f"| {_cell(_type(p['schema']))} | {_cell(notes)} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            req = "required" if body.get("required") else "optional"
            lines += [f"Request body ({req}): `{media}`, {_type(content['schema'])}.", ""]
    lines += ["Responses:", "", "| Status | Description | Body |", "|---|---|---|"]
    for status, resp in op["responses"].items():
        desc = resp.get("description", "")
        headers = resp.get("headers", {})
        if headers:
            desc += " (headers: " + ", ".join(f"`{h}`" for h in headers) + ")"
        bodies = [
            f"`{media}`, {_type(content['schema'])}"
            for media, content in resp.get("content", {}).items()
        ]
        lines.append(f"| {status} | {_cell(desc)} | {_cell('; '.join(bodies) or '-')} |")
    lines.append("")
    return lines


def _error_table() -> list[str]:
    lines = [
        "| Code | HTTP status | Where | Retried | Meaning |",
        "|---|---|---|---|---|",
    ]
    order = sorted(ERROR_CODES.items(), key=lambda kv: (kv[1][0] == "-", kv[1][0], kv[0]))
    for code, (status, where, retried, meaning) in order:
        lines.append(f"| `{code}` | {status} | {where} | {retried or '-'} | {_cell(meaning)} |")
    return lines


def render() -> str:
    """The Markdown text of docs/api.md."""
    from convkit.http.openapi import openapi_document

    problems = check_error_table()
    if problems:
        raise SystemExit("gen_api_docs: " + "\n  ".join(["error table is stale:", *problems]))
    doc = openapi_document()
    base = doc["servers"][0]["url"]
    out = [
        "<!-- Generated by scripts/gen_api_docs.py from convkit.http.openapi.openapi_document(). "
        "Do not edit: run `python scripts/gen_api_docs.py`. -->",
        "",
        "# HTTP API reference (v1)",
        "",
        doc["info"].get("description", ""),
        "",
        f"Every path below is under `{base}` where the API is mounted (the default prefix of all "
        "three adapters). The same OpenAPI 3.1 document is served at "
        f"`GET {base}/openapi.json`.",
        "",
        "Send the API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys and "
        "tenants are configured with `API_KEY` and `API_KEYS` ([configuration](configuration.md)).",
        "",
        "## Operations",
        "",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += _operation(method, path, op, doc, base)
    out += [GENERAL_NOTES, "## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        out += [f"### {name}", ""]
        if schema.get("properties"):
            out += _properties_table(schema)
        else:
            out.append(_type(schema))
        out.append("")
    out += [
        "## Errors",
        "",
        "Every error response has this body:",
        "",
        "```json",
        '{"error": {"code": "job_not_found", "message": "no job \'…\'"}}',
        "```",
        "",
        "`code` is stable and meant for programs; `message` is for people and may change. A "
        "failed job carries the same shape in its `error` field (`GET /jobs/{job_id}`).",
        "",
        "Where: *response* is the error body of a request, *job* is `error.code` of a failed "
        "job, *start-up* is the one-line error of the CLI (or the exception raised by "
        "`ConvKit.from_settings`). Retried: whether a job failing with this code is run again "
        "(up to `MAX_ATTEMPTS`, see [jobs](jobs.md)).",
        "",
        *_error_table(),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), "docs/api.md", "generated", lineterm=""
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)
            print("docs/api.md is stale: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT) if OUT.is_relative_to(ROOT) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
