"""HTTP tools: POST the arguments as JSON to a configured URL on an allow-listed host."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from engine.tools import ToolSpec
from workers.executors.base import CallContext, Executor, ToolError, TransientToolError


def checked_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ToolError(f"url {url!r} is not an http(s) URL")
    allowed = settings.ASYNCLM_HTTP_TOOL_HOSTS
    if parsed.hostname not in allowed:
        raise ToolError(f"host {parsed.hostname!r} is not on the allow-list ({', '.join(allowed) or 'empty'})")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead off the allow-list; treat it as the endpoint's answer instead.
    def redirect_request(self, *args, **kwargs):
        return None


class HttpExecutor(Executor):
    kind = "http"

    def check_config(self, config: dict[str, Any]) -> None:
        checked_url(str(config.get("url", "")))

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        url = checked_url(str(tool.config.get("url", "")))
        cap = int(tool.config.get("max_response_bytes", settings.ASYNCLM_WORKER_MAX_RESULT_BYTES))
        request = urllib.request.Request(
            url, data=json.dumps(args).encode(), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "X-AsyncLM-Task": str(ctx.task_id), "X-AsyncLM-Call": ctx.call_id},
        )
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=tool.timeout_s) as response:
                body = response.read(cap + 1)
        except urllib.error.HTTPError as exc:
            error = TransientToolError if exc.code >= 500 or exc.code == 429 else ToolError
            raise error(f"HTTP {exc.code} from {urlparse(url).hostname}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientToolError(f"request to {urlparse(url).hostname} failed: {reason}") from None
        if len(body) > cap:
            raise ToolError(f"response larger than {cap} bytes")
        try:
            return json.loads(body)
        except ValueError:
            return body.decode("utf-8", errors="replace")
