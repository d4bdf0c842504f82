"""`python manage.py soak`: the soak and fault benchmark (webapp/bench/soak.py) -> var/bench/soak.json."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.bench.soak import Plan, Soak, verdict
from webapp.core.processes import ProcessError


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--tasks", type=int, default=200)
        parser.add_argument("--users", type=int, default=5)
        parser.add_argument("--rate", type=float, default=0.5, help="tasks submitted per second")
        parser.add_argument("--model", default="smollm2-135m")
        parser.add_argument("--max-tokens", type=int, default=48)
        parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the tasks to end")
        parser.add_argument("--out", default=str(settings.ASYNCLM_BENCH_DIR))

    def handle(self, *args, tasks, users, rate, model, max_tokens, timeout, out, **options):
        if tasks < 10 or users < 1 or rate <= 0:
            raise CommandError("--tasks must be at least 10, --users at least 1 and --rate positive")
        out_dir = Path(out)
        soak = Soak(Plan(tasks, users, rate, model, max_tokens, timeout), out_dir / "soak-logs", self.stdout.write)
        try:
            soak.start()
            result = soak.run()
        except ProcessError as exc:
            raise CommandError(str(exc)) from None
        finally:
            soak.stop()
        result["misses"] = verdict(result)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        t, c = result["tasks"], result["calls"]
        self.stdout.write(
            f"soak: {t['accepted']} tasks in {result['wall_s']} s: {t['finished']} finished ({t['resumed']} of them "
            f"resumed after their engine died), {t['failed_with_reason']} failed with a reason, {t['stuck']} stuck; "
            f"calls {c['dispatched']} dispatched, {c['injected']} injected, {len(c['duplicates'])} twice, "
            f"{len(c['missing'])} never; faults: {', '.join(f['what'] for f in result['faults'])}")
        self.stdout.write(f"queue wait per user (ms): {result['queue_wait_ms']}")
        self.stdout.write(f"-> {out_dir / 'soak.json'}")
        if result["misses"]:
            raise CommandError("soak goals missed: " + "; ".join(result["misses"]))
