"""Errors in OpenAI's shape, so that OpenAI's client libraries raise their own exception types
(401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, ...) with our message."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse

TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_exceeded",
         503: "service_unavailable", 500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def document(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.document(), status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response
