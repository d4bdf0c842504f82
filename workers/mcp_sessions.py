"""Sessions with MCP servers, kept per process and server, for the `mcp` tool kind and the import.

The SDK is asynchronous and a Celery prefork child is not, so each process runs one event loop on
a daemon thread. Each server gets one long-lived session task there, which enters the SDK's client
and serves calls from a queue: the SDK's cancel scopes must be entered and left by the same task.
A session that fails (the server died, the connection dropped) ends, and its pending calls fail;
the next call opens a new one. A call that fails mid-way is not repeated on the new session: the
tool may have acted, and the model sees the error and may call again.

Where a server may be: a streamable HTTP URL on an allow-listed host and port
(`ASYNCLM_MCP_HOSTS`), or a command from the allow-list in settings
(`ASYNCLM_MCP_STDIO_COMMANDS`, name -> command line), named by its key. Nothing typed into the
registry is run as a command.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shlex
import sys
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from workers.executors.base import ToolError, TransientToolError


@dataclass(frozen=True)
class McpConnection:
    transport: str  # "http" | "stdio"
    url: str = ""
    command: str = ""  # a key of ASYNCLM_MCP_STDIO_COMMANDS

    @classmethod
    def of(cls, config: dict[str, Any]) -> McpConnection:
        connection = cls(str(config.get("transport", "")), str(config.get("url", "")), str(config.get("command", "")))
        connection.check()
        return connection

    def check(self) -> None:
        if self.transport == "http":
            checked_mcp_url(self.url)
        elif self.transport == "stdio":
            stdio_command(self.command)
        else:
            raise ToolError(f"unknown MCP transport {self.transport!r} (http or stdio)")

    def client(self, timeout_s: float) -> Any:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if self.transport == "http":
            return Client(checked_mcp_url(self.url), read_timeout_seconds=timeout_s)
        argv = stdio_command(self.command)
        # The server's stderr goes to the process's own (a Celery worker replaces sys.stderr with a
        # logging proxy that has no file descriptor to give a child).
        transport = stdio_client(StdioServerParameters(command=argv[0], args=argv[1:]), errlog=sys.__stderr__)
        return Client(transport, read_timeout_seconds=timeout_s)

    def __str__(self) -> str:
        return self.url if self.transport == "http" else f"stdio:{self.command}"


def checked_mcp_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ToolError(f"MCP url {url!r} is not an http(s) URL")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise ToolError(f"MCP url {url!r} has an invalid port") from None
    allowed = settings.ASYNCLM_MCP_HOSTS
    if parsed.hostname not in allowed and f"{parsed.hostname}:{port}" not in allowed:
        raise ToolError(f"MCP server {parsed.hostname}:{port} is not on the allow-list "
                        f"(ASYNCLM_MCP_HOSTS: {', '.join(allowed) or 'empty'})")
    return url


def stdio_command(key: str) -> list[str]:
    commands = settings.ASYNCLM_MCP_STDIO_COMMANDS
    if key not in commands:
        raise ToolError(f"MCP command {key!r} is not on the allow-list "
                        f"(ASYNCLM_MCP_STDIO_COMMANDS: {', '.join(commands) or 'empty'})")
    argv = shlex.split(commands[key])
    if not argv:
        raise ToolError(f"MCP command {key!r} is empty")
    return argv


class _Session:
    def __init__(self, pool: SessionPool, connection: McpConnection, timeout_s: float) -> None:
        self.queue: asyncio.Queue[tuple[str, Any, asyncio.Future[Any]]] = asyncio.Queue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._serve(pool, connection, timeout_s))

    async def _serve(self, pool: SessionPool, connection: McpConnection, timeout_s: float) -> None:
        failure: BaseException = TransientToolError(f"the MCP session with {connection} ended")
        try:
            async with connection.client(timeout_s) as client:
                self.ready.set_result(None)
                while True:
                    method, payload, done = await self.queue.get()
                    try:
                        result = await getattr(client, method)(*payload)
                    except Exception as exc:
                        done.set_exception(exc)
                        failure = exc
                        return  # the session may be broken: the next call opens a new one
                    done.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every way out fails what waits
            failure = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            pool.sessions.pop(connection, None)
            if not self.ready.done():
                self.ready.set_exception(_connect_error(connection, failure))
            while not self.queue.empty():
                _, _, done = self.queue.get_nowait()
                if not done.done():
                    done.set_exception(_connect_error(connection, failure))


def _connect_error(connection: McpConnection, exc: BaseException) -> ToolError:
    if isinstance(exc, ToolError):
        return exc
    return TransientToolError(f"MCP server {connection} unreachable: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The innermost message of an exception group (anyio wraps the transport's failure)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


class SessionPool:
    """One per process (`pool()`): an event loop thread and a session per server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sessions: dict[McpConnection, _Session] = {}
        threading.Thread(target=self.loop.run_forever, name="mcp-sessions", daemon=True).start()

    def request(self, connection: McpConnection, method: str, *payload: Any, timeout_s: float) -> Any:
        """`client.<method>(*payload)` on the server's session; ToolError on any failure."""
        future = asyncio.run_coroutine_threadsafe(self._request(connection, method, payload, timeout_s), self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ToolError(f"MCP server {connection} did not answer within {timeout_s:g} s") from None
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"MCP call failed: {_reason(exc)}") from None
        finally:
            future.cancel()

    async def _request(self, connection: McpConnection, method: str, payload: tuple[Any, ...],
                       timeout_s: float) -> Any:
        session = self.sessions.get(connection)
        if session is None or session.task.done():
            session = self.sessions[connection] = _Session(self, connection, timeout_s)
        await asyncio.shield(session.ready)
        done: asyncio.Future[Any] = self.loop.create_future()
        session.queue.put_nowait((method, payload, done))
        return await done

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self.loop.call_soon_threadsafe(session.task.cancel)


_POOL: SessionPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> SessionPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SessionPool()
        return _POOL
