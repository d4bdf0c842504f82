"""AsyncLM engine. The core (scheduler, sampling, profiles, messages) imports neither Django,
Redis nor Celery; proc.py, intake.py, publish.py and health.py do the I/O."""
