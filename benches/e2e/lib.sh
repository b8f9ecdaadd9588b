#!/usr/bin/env bash
# Shared by the end-to-end benchmarks (run.sh, slow-upstream.sh): processes on 127.0.0.1 with
# their logs under $T, free ports, readiness, and an upstream distribution to push to.
# The caller sets T (a temp dir), PIDS=() and its own cleanup trap, then sources this file.
# shellcheck shell=bash disable=SC2154 # PID_<name> are set by start() via printf -v

log() { echo "[$(date +%T)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# free_port: a port on 127.0.0.1 that nothing answers on, no socket uses, and not handed out yet.
# Below the kernel's ephemeral range: a port some outgoing connection holds as its local port
# answers nothing, but cannot be bound (a run opens and closes many connections).
USED_PORTS=" "
EPHEMERAL_MIN="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (EPHEMERAL_MIN - 10000)))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] || continue
    USED_PORTS+="$p "; echo "$p"; return
  done
}
# start NAME CMD...: run in the background, logs in $T/NAME.log, pid in PID_<NAME>.
start() {
  local name=$1; shift
  "$@" >"$T/$name.log" 2>&1 &
  PIDS+=($!); printf -v "PID_$name" '%s' "$!"
}
# stop NAME: SIGTERM, up to 20 s to exit (dockerd and containerd take a moment), then SIGKILL.
stop() {
  local v="PID_$1" p keep=()
  kill "${!v}" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "${!v}" 2>/dev/null || break; sleep 0.1; done
  kill -9 "${!v}" 2>/dev/null || true; wait "${!v}" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ "$p" == "${!v}" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
# wait_ready NAME URL: poll until GET URL answers 200 (30 s), failing early if NAME died.
wait_ready() {
  local v="PID_$1"
  for _ in $(seq 300); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$2" || true)" == 200 ]] && return 0
    kill -0 "${!v}" 2>/dev/null || { tail -20 "$T/$1.log" >&2; die "$1 exited during start"; }
    sleep 0.1
  done
  tail -20 "$T/$1.log" >&2; die "$1 not ready at $2"
}
registry_config() { # registry_config ROOTDIR PORT [REMOTEURL]
  cat <<YAML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $1}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$2}
YAML
  if [[ -n "${3:-}" ]]; then echo "proxy: {remoteurl: $3}"; fi
}
push_blob() { # push_blob FILE DIGEST: monolithic upload to $UP/v2/$REPO, streamed from the file
  local loc
  loc="$(curl -sS --fail -X POST -D - -o /dev/null "$UP/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')"
  [[ "$loc" == http* ]] || loc="$UP$loc"
  [[ "$loc" == *\?* ]] && loc+="&digest=$2" || loc+="?digest=$2"
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc"
}
digest_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
