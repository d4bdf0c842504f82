"""Redis is weather for the web too: a request that needs it while it is away gets a clear 503
("Redis unreachable"), not a server error."""

from __future__ import annotations

import logging

import redis
from django.http import HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)

MESSAGE = "Redis unreachable: the service cannot take this request now. Try again in a moment."


class RedisUnavailableMiddleware(MiddlewareMixin):
    """Sync and async (an async view, such as the OpenAI-compatible endpoint, stays on the event
    loop, where a client's disconnect can cancel it)."""

    def process_exception(self, request, exception):
        if not isinstance(exception, redis.RedisError):
            return None
        log.warning("%s %s: %s", request.method, request.path, exception)
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": MESSAGE}, status=503)
        if request.path.startswith("/v1/"):  # OpenAI's error shape
            return JsonResponse({"error": {"message": MESSAGE, "type": "service_unavailable", "param": None,
                                           "code": "redis_unreachable"}}, status=503)
        response = HttpResponse(f"<!doctype html><title>Redis unreachable</title><h1>503</h1><p>{MESSAGE}</p>",
                                status=503)
        response["Retry-After"] = "10"
        return response
