"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any, Optional


class APIError(Exception):
    """An error answered to the client with its HTTP status and an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> APIError:
    """A 400 for a request the server cannot accept as written."""
    return APIError(400, message, param=param, code=code)


def from_exception(exc: BaseException) -> APIError:
    """The answer to an exception raised while serving a request: APIErrors as they are; ValueError and
    TypeError (the runtime's bad-argument errors, which name the parameter) as 400 with their message;
    anything else as a 500 whose body carries no detail beyond the exception's class."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, str(exc) or type(exc).__name__, code="invalid_value")
    return internal_error(exc)


def internal_error(exc: BaseException) -> APIError:
    """A 500 for an unexpected exception; the details (traceback) go to the server log only."""
    return APIError(500, f"internal server error ({type(exc).__name__}); see the server log",
                    type="internal_error", code="internal_error")


def shutting_down() -> APIError:
    """The answer to requests the server ends or turns down because it is stopping."""
    return APIError(503, "the server is shutting down", type="server_overloaded", code="server_shutting_down")
