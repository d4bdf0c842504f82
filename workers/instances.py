"""State of stateful tool instances, kept in Redis so that whichever worker process runs a call
sees the state the previous call on that instance left.

An instance is keyed by (task, instance name). A call runs under the instance's lock; the new
state, the call's order and its outcome are written in one transaction. So a call whose worker
died is either not applied (and runs again when redelivered) or applied exactly once (and a
redelivery gets the recorded outcome back instead of applying it twice).

The engine issues calls on one instance one at a time, in the model's order; a call that arrives
after a later call on the same instance already ran (it timed out in the engine, then ran late)
is refused rather than applied out of order.

State is pickled (the BFCL classes hold object graphs) and signed with a key derived from the
Django secret key, so writing to Redis does not let anyone run code in a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings

from workers.executors.base import CallFailed

STATE_TTL_S = 24 * 3600


def instance_key(task_id: int, name: str) -> str:
    return f"asynclm:instance:{task_id}:{name}"


def _mac_key() -> bytes:
    return hashlib.sha256(b"asynclm instance state|" + settings.SECRET_KEY.encode()).digest()


def _mac(key: str, body: bytes) -> bytes:
    # The Redis key is signed with the state: a blob copied to another task's or instance's key
    # does not verify there.
    return hmac.new(_mac_key(), key.encode() + b"\0" + body, hashlib.sha256).digest()


def seal(state: Any, key: str) -> bytes:
    body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    return _mac(key, body) + body


def unseal(blob: bytes, key: str) -> Any:
    mac, body = blob[:32], blob[32:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise CallFailed("state_corrupt", "the instance's stored state failed its integrity check")
    return pickle.loads(body)  # noqa: S301 - signed by us for this key, checked above


def _result(outcome: dict[str, Any]) -> Any:
    if outcome["ok"]:
        return outcome["value"]
    raise CallFailed(outcome["kind"], outcome["message"])


def run_on_instance(
    r: redis.Redis,
    task_id: int,
    name: str,
    call_id: str,
    order: int,
    lock_s: float,
    fn: Callable[[Any], tuple[Any, Any]],
) -> Any:
    """Run fn(state) -> (value, new state) on the instance, once per call id.

    fn raises CallFailed for a failed call: the failure is recorded and the state is left as it
    was (a half-applied call is discarded with its in-memory state)."""
    key = instance_key(task_id, name)
    lock = r.lock(f"{key}:lock", timeout=lock_s, blocking_timeout=lock_s)
    if not lock.acquire():
        raise CallFailed("instance_busy", f"instance {name} stayed busy for {lock_s:g} s")
    try:
        blob, last_order, recorded = r.hmget(key, "state", "order", f"out:{call_id}")
        if recorded is not None:
            return _result(json.loads(recorded))
        if last_order is not None and order < int(last_order):
            raise CallFailed("out_of_order", f"a later call on instance {name} already ran; this one was not applied")
        state = unseal(blob, key) if blob is not None else None
        try:
            value, new_state = fn(state)
            outcome = {"ok": True, "value": value}
        except CallFailed as exc:
            new_state, outcome = None, {"ok": False, "kind": exc.kind, "message": str(exc)}
        pipe = r.pipeline(transaction=True)
        if new_state is not None:
            pipe.hset(key, "state", seal(new_state, key))
        pipe.hset(key, mapping={"order": order, f"out:{call_id}": json.dumps(outcome)})
        pipe.expire(key, STATE_TTL_S)
        pipe.execute()
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired while the call ran: the outcome is written anyway
            pass
    return _result(outcome)


def load_state(r: redis.Redis, task_id: int, name: str) -> Any:
    """The instance's current state, or None before its first call (for checkers and tests)."""
    key = instance_key(task_id, name)
    blob = r.hget(key, "state")
    return unseal(blob, key) if blob is not None else None
