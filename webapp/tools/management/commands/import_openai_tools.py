import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from webapp.tools.imports import import_pack, openai_tools


class Command(BaseCommand):
    help = "Import OpenAI-style tool JSON into a pack (idempotent). Tools default to the simulated kind."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--pack", required=True)
        parser.add_argument("--latency-ms", type=int, default=110, help="estimated and simulated latency")

    def handle(self, *args, file, pack, latency_ms, **options):
        try:
            document = json.loads(file.read_text())
            defaults = {"kind": "simulated", "est_latency_ms": latency_ms,
                        "config": {"latency_ms": {"dist": "fixed", "value": latency_ms}}}
            report = import_pack(pack, openai_tools(document), defaults=defaults)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot import {file}: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(
            f"pack {report.pack}: {report.created} tools created, {report.updated} updated"))
