#!/usr/bin/env bash
# Run a command and start it again whenever it exits on its own (a crash): after 1 s, then twice
# as long each time up to 30 s, back to 1 s once it has run for a minute. SIGTERM or SIGINT (Ctrl-C
# under honcho) stop it for good. Used by the Procfile, so `make run` survives a dead engine or
# worker (its tasks are recovered by the engine that comes back).
# usage: scripts/supervise.sh COMMAND [ARGS...]
set -u
stopping=0
child=0
stop() {
  stopping=1
  if [ "$child" -ne 0 ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap stop TERM INT
delay=1
while :; do
  started=$(date +%s)
  "$@" &
  child=$!
  status=0
  # `wait` returns early when a trapped signal arrives: wait until the child is really gone.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
  [ "$stopping" = 1 ] && exit "$status"
  [ $(( $(date +%s) - started )) -ge 60 ] && delay=1
  echo "supervise: '$*' exited with status $status; starting it again in ${delay} s" >&2
  sleep "$delay" &
  child=$!
  wait "$child"
  [ "$stopping" = 1 ] && exit "$status"
  child=0
  delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))
done
