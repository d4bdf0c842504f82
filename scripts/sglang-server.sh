#!/usr/bin/env bash
# A real SGLang server on this machine's CPU, for `make test-sglang` (not part of `make run` or
# `make test`). It runs from a virtualenv of its own (.venv-sglang, requirements/sglang-server.txt)
# with the stand-in `sgl_kernel` of scripts/sglang_standin on PYTHONPATH, and serves the model
# converted from our GGUF file (finetune/convert.py) into var/sglang/models/.
#
# usage: scripts/sglang-server.sh install|convert|start|stop|status
#   install  create .venv-sglang (idempotent: skipped while requirements/sglang-server.txt is unchanged)
#   convert  the GGUF model -> var/sglang/models/<model> (Hugging Face folder; skipped when present)
#   start    start the server in the background and wait until it answers (log: var/sglang/server-MODEL.log)
#   stop     stop the server this script started (its pid is in var/sglang/server-MODEL.pid)
#   status   exit 0 when the server runs and answers, 1 otherwise
# environment: ASYNCLM_SGLANG_PORT (30123), ASYNCLM_SGLANG_MODEL (smollm2-135m: a catalog name),
#   ASYNCLM_SGLANG_START_TIMEOUT (180 s), ASYNCLM_SGLANG_MAX_TOTAL_TOKENS (32768: the KV cache;
#   SGLang would otherwise take most of the free memory for it, 14 GB here, and spend 40 s on it)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SG_VENV="$ROOT/.venv-sglang"
SG_PY="$SG_VENV/bin/python"
SG_REQ="$ROOT/requirements/sglang-server.txt"
SG_DIR="$ROOT/var/sglang"
SG_MODEL="${ASYNCLM_SGLANG_MODEL:-smollm2-135m}"
SG_MODEL_DIR="$SG_DIR/models/$SG_MODEL"
SG_HOST=127.0.0.1
SG_PORT="${ASYNCLM_SGLANG_PORT:-30123}"
SG_URL="http://$SG_HOST:$SG_PORT"
SG_LOG="$SG_DIR/server-$SG_MODEL.log"
SG_PIDFILE="$SG_DIR/server-$SG_MODEL.pid"
SG_TIMEOUT="${ASYNCLM_SGLANG_START_TIMEOUT:-180}"
SG_MAX_TOKENS="${ASYNCLM_SGLANG_MAX_TOTAL_TOKENS:-32768}"
# SGLANG_USE_CPU_ENGINE=1: sglang 0.5.23 takes its CPU code paths only when it is set (is_cpu()
# reads it; --device cpu alone is not enough: the rotary embedding then imports vllm and the
# server fails). PYTHONPATH: the stand-in sgl_kernel (scripts/sglang_standin).
SG_ENV=(SGLANG_USE_CPU_ENGINE=1 "PYTHONPATH=$ROOT/scripts/sglang_standin${PYTHONPATH:+:$PYTHONPATH}")

installed_marker() { echo "$SG_VENV/.installed-$(sha256sum "$SG_REQ" | cut -c1-16)"; }

cmd_install() {
  local marker started
  marker=$(installed_marker)
  if [ -f "$marker" ]; then say "the SGLang virtualenv is up to date ($SG_VENV)"; return 0; fi
  started=$(date +%s)
  say "installing the SGLang server's virtualenv ($SG_VENV, from requirements/sglang-server.txt: ~6 GB)"
  [ -x "$SG_PY" ] || python3 -m venv "$SG_VENV"
  # --no-deps: the file pins every package of the virtualenv (see its header).
  "$SG_PY" -m pip install --quiet --progress-bar off --no-deps -r "$SG_REQ" 2>&1 | pip_filter
  env "${SG_ENV[@]}" "$SG_PY" -c "import sgl_kernel, xgrammar, sglang.srt.entrypoints.http_server" 2>/dev/null \
    || die "the SGLang virtualenv does not import sglang's server (see: env ${SG_ENV[*]} $SG_PY -c 'import sglang.srt.entrypoints.http_server')"
  rm -f "$SG_VENV"/.installed-*
  touch "$marker"
  say "installed in $(( $(date +%s) - started )) s ($(du -sh "$SG_VENV" | cut -f1))"
}

cmd_convert() {
  if [ -f "$SG_MODEL_DIR/config.json" ]; then say "model already converted: $SG_MODEL_DIR"; return 0; fi
  [ -x "$SG_PY" ] || die "no SGLang virtualenv: run scripts/sglang-server.sh install first"
  say "converting $SG_MODEL (GGUF) -> $SG_MODEL_DIR"
  "$SG_PY" -m finetune.convert --model "$SG_MODEL" --out "$SG_MODEL_DIR"
}

server_pid() {  # the pid of the server this script started, when it still runs
  local pid
  [ -f "$SG_PIDFILE" ] || return 1
  pid=$(cat "$SG_PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() { curl -sf --max-time "${1:-5}" "$SG_URL/health_generate" >/dev/null 2>&1; }

log_tail() { printf '%s\n' "--- last lines of $SG_LOG:"; grep -v "Ignore import error" "$SG_LOG" | tail -n "${1:-30}" | cut -c1-300 || true; }

cmd_start() {
  local pid started waited
  if pid=$(server_pid); then
    say "the SGLang server already runs (pid $pid, $SG_URL)"
    answers 30 || die "it does not answer at $SG_URL/health_generate"
    return 0
  fi
  [ -x "$SG_PY" ] || die "no SGLang virtualenv: run scripts/sglang-server.sh install first"
  [ -f "$SG_MODEL_DIR/config.json" ] || die "no converted model in $SG_MODEL_DIR: run scripts/sglang-server.sh convert first"
  if curl -s --max-time 2 "$SG_URL/" >/dev/null 2>&1; then
    die "something else already listens on $SG_URL (set ASYNCLM_SGLANG_PORT)"
  fi
  mkdir -p "$SG_DIR"
  say "starting the SGLang server on $SG_URL (model $SG_MODEL_DIR, log $SG_LOG)"
  started=$(date +%s)
  # setsid: the server and its scheduler/detokenizer processes form one process group, which
  # `stop` ends as a whole. --sleep-on-idle: without it the idle scheduler spins a whole core
  # (measured 100% vs 1%; abort -> resubmission latency unchanged: it waits on its sockets).
  setsid env "${SG_ENV[@]}" "$SG_PY" -m sglang.launch_server \
    --model-path "$SG_MODEL_DIR" --host "$SG_HOST" --port "$SG_PORT" \
    --device cpu --attention-backend torch_native --sampling-backend pytorch \
    --disable-overlap-schedule --disable-cuda-graph --dtype float32 \
    --max-total-tokens "$SG_MAX_TOKENS" --sleep-on-idle "$@" </dev/null >"$SG_LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$SG_PIDFILE"
  while true; do
    waited=$(( $(date +%s) - started ))
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$SG_PIDFILE"
      log_tail
      die "the SGLang server exited during start-up (after ${waited} s)"
    fi
    if answers 10; then
      say "the SGLang server answers after ${waited} s (pid $pid)"
      return 0
    fi
    if [ "$waited" -ge "$SG_TIMEOUT" ]; then
      log_tail
      cmd_stop >/dev/null || true
      die "the SGLang server did not answer within ${SG_TIMEOUT} s"
    fi
    printf '    waiting for %s (%s s): %s\n' "$SG_URL" "$waited" \
      "$(grep -v -e "Ignore import error" -e "^\s*$" "$SG_LOG" | tail -n 1 | cut -c1-110)"
    sleep 5
  done
}

cmd_stop() {
  local pid
  if ! pid=$(server_pid); then rm -f "$SG_PIDFILE"; say "the SGLang server is not running"; return 0; fi
  say "stopping the SGLang server (pid $pid and its process group)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || pgrep -g "$pid" >/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$SG_PIDFILE"
}

cmd_status() {
  local pid
  if ! pid=$(server_pid); then echo "not running"; return 1; fi
  if answers 10; then
    echo "running (pid $pid) at $SG_URL: $(curl -s --max-time 5 "$SG_URL/get_model_info")"
  else
    echo "running (pid $pid) at $SG_URL but not answering (yet): see $SG_LOG"
    return 1
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  convert) cmd_convert ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: scripts/sglang-server.sh install|convert|start [extra server flags]|stop|status" ;;
esac
