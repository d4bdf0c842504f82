import time

from django.core.management.base import BaseCommand, CommandError

from webapp.tools.bfcl import DATASETS, import_bfcl
from workers.executors.bfcl import BFCL_CLASSES


def _names(value: str, known: tuple[str, ...]) -> list[str]:
    if value == "all":
        return list(known)
    if value == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


class Command(BaseCommand):
    help = ("Import BFCL function documents from the installed bfcl-eval package (idempotent): one pack "
            "per dataset entry (bfcl/parallel_12, simulated tools) and one per multi-turn class "
            "(bfcl/GorillaFileSystem, stateful bfcl tools).")

    def add_arguments(self, parser):
        parser.add_argument("--datasets", default="all", help=f"comma-separated, 'all' ({', '.join(DATASETS)}) "
                                                              "or 'none'")
        parser.add_argument("--classes", default="all", help="comma-separated class names, 'all' or 'none'")
        parser.add_argument("--limit", type=int, default=None, help="entries per dataset")

    def handle(self, *args, datasets, classes, limit, **options):
        started = time.monotonic()
        try:
            reports = import_bfcl(_names(datasets, DATASETS), _names(classes, tuple(BFCL_CLASSES)), limit)
        except (OSError, ValueError) as exc:  # ToolImportError is a ValueError
            raise CommandError(f"BFCL import failed: {exc}") from exc
        changed = [r for r in reports if not r.unchanged]
        for report in changed:
            if options["verbosity"] > 1:
                self.stdout.write(str(report))
        self.stdout.write(self.style.SUCCESS(
            f"BFCL: {len(reports)} packs ({len(changed)} changed, {len(reports) - len(changed)} unchanged), "
            f"{sum(r.created for r in reports)} tools created, {sum(r.updated for r in reports)} updated, "
            f"{sum(r.deleted for r in reports)} deleted in {time.monotonic() - started:.1f} s"))

