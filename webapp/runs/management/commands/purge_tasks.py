from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from webapp.runs.models import Task, TraceEvent


class Command(BaseCommand):
    help = ("Delete finished tasks (with their trace events and calls) created more than N days ago; "
            "per-token events are the bulk of the data. Running and queued tasks are kept.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, default=settings.ASYNCLM_TASK_RETENTION_DAYS,
                            help="default: ASYNCLM_TASK_RETENTION_DAYS (%(default)s)")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, older_than_days, dry_run, **options):
        cutoff = timezone.now() - timedelta(days=older_than_days)
        old = Task.objects.filter(created_at__lt=cutoff, status__in=Task.FINAL)
        tasks, events = old.count(), TraceEvent.objects.filter(task__in=old).count()
        if dry_run:
            self.stdout.write(f"would delete {tasks} tasks and {events} trace events older than "
                              f"{cutoff:%Y-%m-%d %H:%M}")
            return
        deleted = 0
        # In batches: one huge DELETE of millions of events would hold the database for long.
        while ids := list(old.values_list("pk", flat=True)[:200]):
            TraceEvent.objects.filter(task_id__in=ids).delete()
            deleted += Task.objects.filter(pk__in=ids).delete()[1].get("runs.Task", 0)
        self.stdout.write(self.style.SUCCESS(
            f"deleted {deleted} tasks and {events} trace events older than {cutoff:%Y-%m-%d %H:%M}"))
