"""Redis database numbers. Each user of Redis other than the service itself has its own, so that
flushing it never touches a running service (or another of these)."""

SERVICE_DB = 0  # `make run`
BENCH_DB = 11  # python manage.py bench
BENCH_ENGINE_DB = 12  # bench_engine, bench_tools
TEST_DB = 13  # the test suite (ASYNCLM_TEST_REDIS_DB overrides it)
