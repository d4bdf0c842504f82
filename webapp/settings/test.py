"""Settings for pytest: the same services as local, a file test database so subprocesses see it."""

import sys

from webapp.core.redis_dbs import TEST_DB
from webapp.settings.base import *  # noqa: F403
from webapp.settings.base import BASE_DIR, DATABASES, VAR_DIR, env

SECRET_KEY = "test-secret-key-not-for-production-use-0123456789"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The engine and web processes started by integration tests open the same file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

# Plumbing tests use the fast model; behaviour tests ask for the default model explicitly.
ASYNCLM_TEST_MODEL = env.str("ASYNCLM_TEST_MODEL", "smollm2-135m")

# Tests get their own Redis database number, so flushing it never touches a running service.
_test_db = env.int("ASYNCLM_TEST_REDIS_DB", TEST_DB, min=1, max=15)
REDIS_URL = f"{REDIS_URL.rsplit('/', 1)[0] if REDIS_URL.count('/') > 2 else REDIS_URL}/{_test_db}"  # noqa: F405
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "asynclm:channels"},
    }
}
CELERY_BROKER_URL = CELERY_RESULT_BACKEND = REDIS_URL
CACHES = {"default": {**CACHES["default"], "LOCATION": REDIS_URL}}  # noqa: F405

# Persistent connections held by channels' worker threads would keep the test database open.
DATABASES["default"]["CONN_MAX_AGE"] = 0

# Pages expose their live trace model to the browser tests (window.asynclmTrace).
ASYNCLM_TEST_HOOKS = True

# Low, so the rate-limit test needs few requests (the redis_client fixture resets the counters).
ASYNCLM_API_TASK_RATE = env.str("ASYNCLM_API_TASK_RATE", "5/m")

# The tests' own MCP server over stdio (tests/mcp_servers.py, built with the MCP SDK).
ASYNCLM_MCP_STDIO_COMMANDS = env.mapping(
    "ASYNCLM_MCP_STDIO_COMMANDS", {"test-weather": f"{sys.executable} {BASE_DIR / 'tests' / 'mcp_servers.py'} stdio"})
