"""Celery workers: they execute function calls and report their health."""
