"""Celery workers: they execute function calls (next issue) and report their health."""
