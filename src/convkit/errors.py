"""One exception hierarchy: each error knows its HTTP status and its stable error code."""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "Conflict",
    "ConvKitError",
    "ConversionCrashed",
    "ConversionError",
    "ConversionTimeout",
    "ConvkitError",
    "Forbidden",
    "InvalidRequest",
    "InvalidStorageKey",
    "JobNotFinished",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "StorageError",
    "TemplateError",
    "TemplateNotFound",
    "Unauthorized",
    "UnsafeDocument",
    "UnsupportedMediaType",
    "ValidationError",
]


class ConvKitError(Exception):
    """Base of every error convkit raises on purpose.

    ``status`` is the HTTP status the API answers with, ``code`` the stable machine-readable code
    in ``{"error": {"code", "message"}}``. ``retryable`` tells the worker whether running the job
    again may help (a crashed converter) or not (a template syntax error).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


#: The old spelling, kept as an alias so code written against convkit 0.1 keeps working.
ConvkitError = ConvKitError


class ConfigError(ConvKitError):
    """A setting is missing or malformed; start-up stops with this one-line message."""

    code = "config_error"


class InvalidRequest(ConvKitError):
    """The request is malformed (bad JSON, wrong types)."""

    status = 400
    code = "invalid_request"


class Unauthorized(ConvKitError):
    status = 401
    code = "unauthorized"


class Forbidden(ConvKitError):
    status = 403
    code = "forbidden"


class NotFound(ConvKitError):
    status = 404
    code = "not_found"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class MethodNotAllowed(ConvKitError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str = "") -> None:
        super().__init__(message)
        #: The methods the resource does allow, for the ``Allow`` header.
        self.allow = allow


class Conflict(ConvKitError):
    """The request conflicts with the job's state or with an earlier request."""

    status = 409
    code = "conflict"


class JobNotFinished(Conflict):
    code = "job_not_finished"


class PayloadTooLarge(ConvKitError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ConvKitError):
    status = 415
    code = "unsupported_media_type"


class ValidationError(ConvKitError):
    """The request is well-formed but asks for something convkit cannot do."""

    status = 422
    code = "validation_error"


class TemplateError(ValidationError):
    """The template could not be compiled or rendered (syntax, undefined name, sandbox)."""

    code = "template_error"


class ConversionError(ConvKitError):
    """The converter failed on this document; running it again may help."""

    status = 422
    code = "conversion_failed"
    retryable = True


class ConversionTimeout(ConversionError):
    code = "conversion_timeout"


class ConversionCrashed(ConversionError):
    """The converter process died while converting this document."""

    code = "conversion_crashed"


class UnsafeDocument(ValidationError):
    """A document refused before any converter or parser sees it (zip bomb, macros, XXE)."""

    code = "unsafe_document"


class StorageError(ConvKitError):
    """Storage refused or failed an operation (bad key, backend error)."""

    code = "storage_error"
    retryable = True


class InvalidStorageKey(StorageError):
    """A storage key that is not a safe relative key; retrying cannot help."""

    code = "invalid_key"
    retryable = False


class ServiceUnavailable(ConvKitError):
    """A dependency (database, queue, storage, converter) is down; try again later."""

    status = 503
    code = "service_unavailable"
    retryable = True


class BackendUnavailable(ConfigError):
    """A named backend needs an extra that is not installed."""

    code = "backend_unavailable"
