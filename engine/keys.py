"""Redis key names shared by the web, engine and worker processes."""

INTAKE_STREAM = "asynclm:intake"
INTAKE_GROUP = "engines"
HEARTBEAT_PREFIX = "asynclm:hb:"  # + "<kind>:<id>"


def trace_stream(task_id: int) -> str:
    """Recent live events of one task: lets a late subscriber fill the gap between the last
    batch stored in the database and the first live event it receives."""
    return f"asynclm:trace:{task_id}"


def inbox_stream(engine_id: str) -> str:
    """What is sent to the tasks an engine holds: call reports and control messages (durable:
    survives a reader's hiccup)."""
    return f"asynclm:inbox:{engine_id}"


INBOX_STREAM_TTL_S = 86400
