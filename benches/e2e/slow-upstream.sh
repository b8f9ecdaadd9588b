#!/usr/bin/env bash
# Real clients against a 2 GiB layer from a slow upstream, through portcullis in both
# `[cache] cold_blobs` modes (issue #10: no client may time out in verify-first, where no body
# byte of a cold blob goes out before the whole blob has arrived and matched its digest).
#
# Run from the repo root (as root: containerd and dockerd need it):
#   cargo build --release -p portcullis && bash benches/e2e/slow-upstream.sh
# Env: PORTCULLIS_BIN (default $CARGO_TARGET_DIR/release/portcullis, CARGO_TARGET_DIR defaulting
# to ~/.cache/portcullis-release), RATE (nginx limit_rate towards portcullis, default 30m = 30 MiB/s,
# about 70 s for the layer), MODES (default "verify-first stream"), CLIENTS (default
# "curl skopeo ctr docker"), DIRECT (clients that also pull straight from the slow upstream, no
# portcullis, for reference; default "curl"; "" for none),
# GUARD (seconds before a client is killed and counted as hung, default 900), OUT (default
# benches/e2e/slow-upstream.md), KEEP_TMP=1 (keep the temp dir and logs).
# Needs: docker-registry (distribution 2.8), nginx, curl, tar, sha256sum, skopeo, containerd + ctr;
# dockerd + docker for the Docker rows (skipped, with the reason, if dockerd cannot start).
#
# One upstream distribution holds bench/huge:v1 (OCI manifest, one uncompressed tar layer of
# exactly 2 GiB: a single file of random bytes, so clients can unpack it). nginx proxies it with
# limit_rate: the slow upstream portcullis pulls from. Every client pull starts a fresh portcullis
# with an empty cache (the blob is cold each time), and fresh containerd/dockerd state; everything
# runs alone, one after the other, on 127.0.0.1.
# shellcheck disable=SC2154,SC2016 # PID_<name> are set by start() via printf -v; awk in '...'
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}/release/portcullis}"
OUT="${OUT:-$HERE/slow-upstream.md}"
RATE="${RATE:-30m}"
MODES="${MODES-verify-first stream}"
CLIENTS="${CLIENTS-curl skopeo ctr docker}"
DIRECT="${DIRECT-curl}"
GUARD="${GUARD:-900}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
DOCKER="$(command -v /usr/bin/docker || command -v docker || echo docker)"
REPO=bench/huge
TAG=v1
LAYER_SIZE=$(( ${LAYER_MIB:-2048} * 1024 * 1024 ))  # LAYER_MIB: a smaller layer for a quick trial

T="$(mktemp -d -t portcullis-slow.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # containerd's overlay snapshots may still be mounted if a pull was cut short.
  grep -o " $T/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benches/e2e/lib.sh
source "$HERE/lib.sh"
for tool in docker-registry curl tar sha256sum skopeo containerd ctr timeout "$NGINX"; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y docker-registry nginx skopeo containerd)"
done
[[ -x "$PORTCULLIS_BIN" ]] || die "$PORTCULLIS_BIN not found: cargo build --release -p portcullis"
# No client may reach 127.0.0.1 through a proxy.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY http_proxy https_proxy all_proxy no_proxy

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN {printf "%.2f", b - a}'; }
hwm_mib() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo '?'; }
dir_bytes() { { find "$1" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{s += $1} END {printf "%d", s}'; }
# watch_growth DIR OUTFILE (in the background): writes the time at which the files under DIR
# first hold 1 MiB more than when it started: the first body bytes a client wrote to disk.
watch_growth() {
  local base; base="$(dir_bytes "$1")"
  while (( $(dir_bytes "$1") - base <= 1048576 )); do sleep 0.1; done
  now >"$2"
}

setup_upstream() {
  UP_PORT="$(free_port)"; UP="http://127.0.0.1:$UP_PORT"
  registry_config "$T/up" "$UP_PORT" >"$T/up.yml"
  start upstream docker-registry serve "$T/up.yml"
  wait_ready upstream "$UP/v2/"
  log "generating the $((LAYER_SIZE >> 20)) MiB layer (one file of random bytes in a tar with 512-byte records)"
  mkdir -p "$T/layer"
  head -c $((LAYER_SIZE - 1536)) /dev/urandom >"$T/layer/huge.bin"
  tar -b1 --format=gnu --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$T/layer.tar" -C "$T/layer" huge.bin
  rm -rf "$T/layer"
  [[ "$(stat -c %s "$T/layer.tar")" == "$LAYER_SIZE" ]] || die "layer is $(stat -c %s "$T/layer.tar") bytes"
  LAYER_DGST="$(digest_of "$T/layer.tar")"
  # Uncompressed layer: its diff_id is its own digest.
  printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/huge.bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$LAYER_DGST" >"$T/config.json"
  CFG_DGST="$(digest_of "$T/config.json")"; CFG_SIZE="$(stat -c %s "$T/config.json")"
  log "pushing $REPO:$TAG (layer $LAYER_DGST)"
  push_blob "$T/layer.tar" "$LAYER_DGST"; push_blob "$T/config.json" "$CFG_DGST"
  rm -f "$T/layer.tar"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "$CFG_DGST" "$CFG_SIZE" "$LAYER_DGST" "$LAYER_SIZE" >"$T/manifest.json"
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$T/manifest.json" "$UP/v2/$REPO/manifests/$TAG"
}

# The slow upstream: nginx in front of distribution, every response rate-limited to $RATE.
start_slow() {
  local d="$T/nginx"; SLOW_PORT="$(free_port)"; SLOW="http://127.0.0.1:$SLOW_PORT"; mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
daemon off;
user $(id -un) $(id -gn);
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log $d/access.log;
  client_body_temp_path $d/client_temp; proxy_temp_path $d/proxy_temp;
  fastcgi_temp_path $d/fastcgi_temp; uwsgi_temp_path $d/uwsgi_temp; scgi_temp_path $d/scgi_temp;
  server {
    listen 127.0.0.1:$SLOW_PORT;
    location / {
      proxy_pass $UP; proxy_http_version 1.1; proxy_set_header Host \$http_host;
      # limit_rate is not applied to unbuffered proxying; in-memory buffers only (no temp
      # file), so nginx reads distribution about as fast as it sends.
      proxy_buffering on; proxy_max_temp_file_size 0; limit_rate $RATE;
    }
  }
}
EOF
  start nginx "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
  wait_ready nginx "$SLOW/v2/"
}

start_portcullis() { # start_portcullis MODE: fresh cache; sets PC_HOST
  local mode=$1 port d; port="$(free_port)"; d="$(mktemp -d "$T/pc.XXXX")"; mkdir -p "$d/cache"
  PC_HOST="127.0.0.1:$port"; PC_DIR="$d"
  cat >"$d/config.toml" <<EOF
[server]
listen = "$PC_HOST"
[cache]
dir = "$d/cache"
max_size = "20GiB"
cold_blobs = "$mode"
[[upstream]]
name = "127.0.0.1:$SLOW_PORT"
url = "$SLOW"
default = true
[policy]
default = "allow"
EOF
  start portcullis "$PORTCULLIS_BIN" serve --config "$d/config.toml"
  wait_ready portcullis "http://$PC_HOST/v2/"
}

# A private containerd (no CRI), as tests/support/src/containerd.rs starts it; sets CTD_SOCK.
start_containerd() {
  local d="$1"; mkdir -p "$d"; CTD_SOCK="$d/ctd.sock"
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
[ttrpc]
  address = "$CTD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
  start containerd containerd --config "$d/config.toml"
  for _ in $(seq 300); do
    [[ -S "$CTD_SOCK" ]] && ctr --address "$CTD_SOCK" version >/dev/null 2>&1 && return 0
    kill -0 "$PID_containerd" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$T/containerd.log" >&2; die "containerd did not start"
}

# A private dockerd (vfs, no networking) on that containerd, as tests/e2e/operations/clients.rs
# starts it. Returns 1 (log in $T/dockerd.log) if it does not come up.
start_dockerd() { # start_dockerd DIR INSECURE_HOST
  local d="$1"; mkdir -p "$d/e"; DOCKER_SOCK="$d/docker.sock"
  printf '{"insecure-registries": ["%s"]}\n' "$2" >"$d/daemon.json"
  start dockerd dockerd --config-file "$d/daemon.json" --iptables=false --ip-forward=false \
    --ip-masq=false --bridge=none --storage-driver=vfs --data-root "$d/d" --exec-root "$d/e" \
    --pidfile "$d/e/d.pid" --host "unix://$DOCKER_SOCK" --containerd "$CTD_SOCK"
  for _ in $(seq 300); do
    "$DOCKER" -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1 && return 0
    kill -0 "$PID_dockerd" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Can dockerd run here at all? Sets DOCKER_OK=1, or DOCKER_WHY to the reason it cannot.
probe_dockerd() {
  DOCKER_OK=0 DOCKER_WHY=""
  if ! command -v dockerd >/dev/null; then DOCKER_WHY="dockerd not installed"; return; fi
  DOCKERD_VERSION="$(dockerd --version 2>&1 || true)"
  start_containerd "$T/probe-ctd"
  if start_dockerd "$T/probe-dk" "127.0.0.1:1"; then
    DOCKER_OK=1
  else
    DOCKER_WHY="dockerd did not start: $(grep -iE 'level=(fatal|error)|failed' "$T/dockerd.log" | tail -1 | tr '|' '/')"
    [[ -n "$DOCKER_WHY" ]] || DOCKER_WHY="dockerd did not start: $(tail -1 "$T/dockerd.log")"
  fi
  [[ -z "${PID_dockerd:-}" ]] || stop dockerd
  stop containerd
  rm -rf "$T/probe-ctd" "$T/probe-dk"
}

declare -A EXIT WALL FBB TST TIMEDOUT RSS GETS NOTE
# timeout_in FILE STATUS: did the client report a timeout (or hang until the guard)?
timeout_in() {
  if [[ "$2" == 124 ]]; then echo "yes: no exit within ${GUARD} s (killed)"; return; fi
  local line
  line="$(grep -iE 'time(d)? ?out|deadline exceeded' "$1" | head -1 | cut -c1-160 | tr '|' '/' || true)"
  if [[ -n "$line" ]]; then echo "yes: $line"; else echo no; fi
}

# curl_get KEY BASE: the manifest, then one raw GET of the layer, piped through sha256sum. Time to
# first body byte is when the first byte came out of curl's stdout; time_starttransfer is curl's
# (the first response byte: the status line and headers).
curl_get() {
  local key=$1 base=$2 t0 st
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$base/v2/$REPO/manifests/$TAG" || die "$key: GET manifest failed"
  rm -f "$T/fb"
  t0="$(now)"
  set +e
  timeout "$GUARD" curl -sS -w '%{stderr}%{http_code} %{size_download} %{time_starttransfer}\n' \
      "$base/v2/$REPO/blobs/$LAYER_DGST" 2>"$T/curl.err" \
    | { dd bs=1 count=1 status=none; now >"$T/fb"; cat; } | sha256sum >"$T/curl.sum"
  st=("${PIPESTATUS[@]}")
  set -e
  WALL[$key]="$(since "$t0")"; EXIT[$key]="${st[0]}"
  local code size tst
  read -r code size tst < <(grep -E '^[0-9]{3} ' "$T/curl.err" | tail -1 || true) || true
  TST[$key]="$(awk -v t="${tst:--}" 'BEGIN {if (t == "-") print t; else printf "%.3f", t}')"
  [[ -s "$T/fb" && "${size:-0}" -gt 0 ]] && FBB[$key]="$(since "$t0" "$(cat "$T/fb")")"
  if [[ "$code" != 200 || "$size" != "$LAYER_SIZE" ]]; then
    NOTE[$key]="status ${code:-?}, ${size:-?} bytes"
  elif [[ "sha256:$(cut -d' ' -f1 "$T/curl.sum")" != "$LAYER_DGST" ]]; then
    NOTE[$key]="wrong bytes"
  else
    NOTE[$key]="200, all $size bytes, sha256 ok"
  fi
  TIMEDOUT[$key]="$(timeout_in "$T/curl.err" "${st[0]}")"
  cp "$T/curl.err" "$T/out.${key//\//.}.log"
}

# run_client KEY WATCHDIR CMD...: times CMD under the guard while watching WATCHDIR grow.
run_client() {
  local key=$1 dir=$2 t0 st wpid out="$T/out.${1//\//.}.log"; shift 2
  mkdir -p "$dir"; rm -f "$T/fb"
  watch_growth "$dir" "$T/fb" & wpid=$!
  t0="$(now)"
  set +e; timeout "$GUARD" "$@" >"$out" 2>&1; st=$?; set -e
  WALL[$key]="$(since "$t0")"; EXIT[$key]=$st
  kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  [[ -s "$T/fb" ]] && FBB[$key]="$(since "$t0" "$(cat "$T/fb")")"
  TIMEDOUT[$key]="$(timeout_in "$out" "$st")"
  if [[ $st != 0 ]]; then NOTE[$key]="$(grep -v '^\s*$' "$out" | tail -1 | cut -c1-160 | tr '|' '/')"; fi
  return 0
}

# one MODE CLIENT: a fresh portcullis (cold cache) and a fresh client, one pull. MODE "direct":
# no portcullis, the client pulls straight from the slow upstream.
one() {
  local mode=$1 client=$2 key="$1/$2"
  if [[ "$mode" == direct ]]; then
    log "$key: pulling straight from the slow upstream"
    PC_HOST="127.0.0.1:$SLOW_PORT"
  else
    log "$key: pulling through portcullis"
    start_portcullis "$mode"
  fi
  case "$client" in
    curl) curl_get "$key" "http://$PC_HOST" ;;
    skopeo)
      printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$T/policy.json"
      run_client "$key" "$T/skopeo-out" skopeo --policy "$T/policy.json" copy --src-tls-verify=false \
        "docker://$PC_HOST/$REPO:$TAG" "dir:$T/skopeo-out"
      [[ "${EXIT[$key]}" != 0 ]] || NOTE[$key]="dir: layer $(stat -c %s "$T/skopeo-out/${LAYER_DGST#sha256:}" 2>/dev/null || echo '?') bytes"
      rm -rf "$T/skopeo-out" ;;
    ctr)
      start_containerd "$T/ctd"
      run_client "$key" "$T/ctd/root/io.containerd.content.v1.content" \
        ctr --address "$CTD_SOCK" images pull --plain-http "$PC_HOST/$REPO:$TAG"
      [[ "${EXIT[$key]}" != 0 ]] || NOTE[$key]="pulled, unpacked (ctr: fetch $(grep -oE 'elapsed: [0-9.]+ ?s' "$T/out.$mode.$client.log" | tail -1 | cut -c10-), unpack $(grep -o 'done: [0-9.a-z]*' "$T/out.$mode.$client.log" | tail -1 | cut -c7-))"
      stop containerd
      grep -o " $T/ctd/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
      rm -rf "$T/ctd" ;;
    docker)
      if [[ "$DOCKER_OK" != 1 ]]; then
        EXIT[$key]="-"; NOTE[$key]="not run: $DOCKER_WHY"
      else
        start_containerd "$T/ctd"
        start_dockerd "$T/dk" "$PC_HOST" || die "dockerd did not start (it did in the probe): $(tail -3 "$T/dockerd.log")"
        run_client "$key" "$T/dk/d" "$DOCKER" -H "unix://$DOCKER_SOCK" pull "$PC_HOST/$REPO:$TAG"
        [[ "${EXIT[$key]}" != 0 ]] || NOTE[$key]="pulled, extracted ($(grep -c 'Pull complete' "$T/out.$mode.$client.log") layer)"
        stop dockerd; stop containerd
        rm -rf "$T/dk" "$T/ctd"
      fi ;;
    *) die "unknown client $client" ;;
  esac
  if [[ "$mode" != direct ]]; then finish_portcullis "$key"; fi
  log "$key: exit ${EXIT[$key]}, ${WALL[$key]:--} s, first body byte ${FBB[$key]:--} s, timeout: ${TIMEDOUT[$key]:--}"
}
finish_portcullis() { # finish_portcullis KEY: its peak RSS and any abort in its log; stop it
  local key=$1
  RSS[$key]="$(hwm_mib "$PID_portcullis")"
  # A client that timed out and retried would show up as a second GET of the layer.
  GETS[$key]="$(grep -c "portcullis::request: method=GET path=/v2/$REPO/blobs/$LAYER_DGST " "$T/portcullis.log" || true)"
  if grep -qiE 'stalled|took longer|stream aborted' "$T/portcullis.log"; then
    NOTE[$key]+="; portcullis: $(grep -iE 'stalled|took longer|stream aborted' "$T/portcullis.log" | head -1 | cut -c1-120 | tr '|' '/')"
  fi
  cp "$T/portcullis.log" "$T/portcullis.${key//\//.}.log"
  stop portcullis
  rm -rf "$PC_DIR"
}

report() {
  local mode client key
  echo "# Real clients, a 2 GiB layer, a slow upstream (issue #10)"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r); load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Written by \`benches/e2e/slow-upstream.sh\`. Upstream: distribution $(docker-registry --version 2>&1 | awk '{print $3}') behind nginx with \`limit_rate $RATE\` (buffering in memory only)."
  echo "Image \`$REPO:$TAG\`: OCI manifest, one uncompressed tar layer of exactly $LAYER_SIZE bytes (one file of random bytes)."
  echo "Each row: a fresh portcullis with an empty cache (the layer is cold), \`[policy] default = \"allow\"\`, and fresh client state; one pull at a time."
  echo
  echo "Clients: $(curl --version | head -1 | awk '{print $1, $2}'); $(skopeo --version); $(ctr --version) (\`images pull --plain-http\`, unpacked with the default snapshotter); ${DOCKERD_VERSION:-dockerd not found} (vfs, \`insecure-registries\`, \`docker pull\`)."
  echo
  echo "| cold_blobs | client | exit | wall (s) | first body byte (s) | curl time_starttransfer (s) | client timed out? | layer GETs at portcullis | portcullis peak RSS (MiB) | notes |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for key in $(for client in $DIRECT; do echo "direct/$client"; done) \
      $(for mode in $MODES; do for client in $CLIENTS; do echo "$mode/$client"; done; done); do
    mode="${key%/*}" client="${key#*/}"
    [[ "$mode" != direct ]] || mode="none (straight from the slow upstream)"
    echo "| $mode | $client | ${EXIT[$key]:--} | ${WALL[$key]:--} | ${FBB[$key]:--} | ${TST[$key]:--} | ${TIMEDOUT[$key]:--} | ${GETS[$key]:--} | ${RSS[$key]:--} | ${NOTE[$key]:-} |"
  done
  echo
  echo "- wall: from starting the client to its exit; for ctr and docker it includes unpacking the layer."
  echo "- first body byte: curl: when the first body byte came out of curl; skopeo, ctr, docker: when the files the client writes the download to (skopeo's dir, containerd's content store, dockerd's data root) first grew by over 1 MiB, polled every 0.1 s."
  echo "- curl time_starttransfer: curl's time to the first response byte, i.e. the status line and headers (portcullis sends those at once in both modes)."
  echo "- client timed out: the client's exit status and output (timeout, timed out, deadline exceeded), or still running after $GUARD s."
  echo "- layer GETs at portcullis: requests for the layer in portcullis's request log (a client that gave up and retried would show more than 1)."
  echo "- portcullis peak RSS: VmHWM of the portcullis process, which served only that one pull."
  if [[ "$DOCKER_OK" != 1 ]]; then echo "- Docker engine: not run here: $DOCKER_WHY."; fi
  local n=0
  for key in "${!TIMEDOUT[@]}"; do [[ "${TIMEDOUT[$key]}" != yes* ]] || n=$((n + 1)); done
  echo
  echo "Client timeouts: $n."
}

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
setup_upstream
start_slow
probe_dockerd
if [[ "$DOCKER_OK" == 1 ]]; then log "dockerd runs here ($DOCKERD_VERSION)"; else log "Docker rows skipped: $DOCKER_WHY"; fi
for client in $DIRECT; do one direct "$client"; done
for mode in $MODES; do
  for client in $CLIENTS; do one "$mode" "$client"; done
done
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
