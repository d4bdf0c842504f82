from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp.tools.mcp import import_tools
from webapp.tools.models import McpServer
from workers.executors import ToolError


class Command(BaseCommand):
    help = ("Register an MCP server and import its tools into the pack mcp-NAME (run again to re-import: "
            "changed tools are updated, tools the server no longer lists are removed). TARGET is a streamable "
            "HTTP URL on an allow-listed host (ASYNCLM_MCP_HOSTS) or the name of an allow-listed stdio command "
            "(ASYNCLM_MCP_STDIO_COMMANDS).")

    def add_arguments(self, parser):
        parser.add_argument("name", help="a short name (letters, digits, - and _)")
        parser.add_argument("target", help="http(s)://host:port/path, or a stdio command's name")
        parser.add_argument("--timeout-s", type=float, default=30.0, help="per call, and for the import")

    def handle(self, *args, name, target, timeout_s, **options):
        http = "://" in target  # a URL (only http and https are accepted); else a command's name
        server = McpServer.objects.filter(name=name).first() or McpServer(name=name)
        server.transport = McpServer.Transport.HTTP if http else McpServer.Transport.STDIO
        server.url, server.command = (target, "") if http else ("", target)
        server.timeout_s = timeout_s
        try:
            server.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        server.save()
        self.stdout.write(f"MCP server {name} ({target}): listing its tools…")
        try:
            report = import_tools(server)
        except ToolError as exc:
            raise CommandError(f"server {name} is registered, but its tools could not be listed: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"pack {server.pack_name}: {report}"))
