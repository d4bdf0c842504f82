"""The engine's dispatcher: calls go to Celery workers on the `tools` queue."""

from engine.messages import CallRequest
from webapp.celery import app


class CeleryDispatcher:
    def dispatch(self, request: CallRequest) -> None:
        timeout = float(request.tool.get("timeout_s", 10.0))
        # Soft limit first so the tool's error is reported; the hard limit kills a stuck child.
        app.send_task("workers.tasks.run_tool", args=[request.to_dict()], queue="tools",
                      soft_time_limit=timeout, time_limit=timeout + 1)
