#!/usr/bin/env bash
# End-to-end load benchmark: portcullis vs. its peers, side by side in one run.
#
# Run from the repo root:
#   cargo build --release -p portcullis && bash benches/e2e/run.sh
# Peers only (no portcullis binary yet):
#   SKIP_PORTCULLIS=1 bash benches/e2e/run.sh
# Env: PORTCULLIS_BIN (default $CARGO_TARGET_DIR/release/portcullis, with scripts/test's
# CARGO_TARGET_DIR default), OUT (default
# benches/e2e/last-run.md), SKIP_PORTCULLIS=1, KEEP_TMP=1 (keep the temp dir and logs).
# Needs: docker-registry (distribution 2.8), nginx, wrk, curl, sha256sum.
#
# Paths, all on 127.0.0.1 against one upstream distribution holding a 200 MiB and a 64 KiB random
# blob: upstream direct, distribution in proxy mode, nginx proxy_cache, portcullis. Each proxy
# gets a fresh cache dir, runs alone, and is stopped before the next one starts.
# shellcheck disable=SC2154,SC2016 # PID_<name> are set by start() via printf -v; awk in '...'
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}/release/portcullis}"
OUT="${OUT:-$HERE/last-run.md}"
SKIP_PORTCULLIS="${SKIP_PORTCULLIS:-0}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
REPO=bench/big
WARM_RUNS=5
PAR=8

T="$(mktemp -d -t portcullis-e2e.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benches/e2e/lib.sh
source "$HERE/lib.sh"
for tool in docker-registry wrk curl sha256sum "$NGINX"; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y docker-registry nginx wrk)"
done
if [[ "$SKIP_PORTCULLIS" != 1 && ! -x "$PORTCULLIS_BIN" ]]; then
  die "$PORTCULLIS_BIN not found: cargo build --release -p portcullis, or set SKIP_PORTCULLIS=1"
fi

# timed_get URL SIZE: one GET to /dev/null; prints time_total, checks status 200 and the size.
timed_get() {
  local code size t
  read -r code size t < <(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$1")
  [[ "$code" == 200 && "$size" == "$2" ]] || die "GET $1: status $code, $size bytes (want 200, $2)"
  echo "$t"
}
# verify URL DIGEST: the body's sha256 must match the digest.
verify() {
  local got; got="sha256:$(curl -sS --fail "$1" | sha256sum | cut -d' ' -f1)"
  [[ "$got" == "$2" ]] || die "$1 served wrong bytes: $got"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rps() { # wrk against URL; prints requests/s, fails on non-2xx answers
  wrk -t2 -c16 -d5s "$1" >"$T/wrk.out" 2>&1 || { cat "$T/wrk.out" >&2; die "wrk failed"; }
  grep -q 'Non-2xx' "$T/wrk.out" && { cat "$T/wrk.out" >&2; die "wrk saw non-2xx at $1"; }
  awk '/Requests\/sec/ {printf "%.0f", $2}' "$T/wrk.out"
}
hwm_reset() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
hwm_mib() { printf '/proc/%s/status\n' "$@" | xargs awk '/VmHWM/ {s += $2} END {print int(s / 1024)}'; }
# parallel_get URL: $PAR concurrent GETs of the big blob; prints wall seconds.
parallel_get() {
  local i t0 t1 pids=()
  t0="$(date +%s.%N)"
  for i in $(seq "$PAR"); do
    curl -sS -o /dev/null -w '%{http_code} %{size_download}\n' "$1" >"$T/par.$i" & pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  t1="$(date +%s.%N)"
  for i in $(seq "$PAR"); do [[ "$(cat "$T/par.$i")" == "200 $BIG_SIZE" ]] || die "parallel GET $i: $(cat "$T/par.$i")"; done
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}'
}
upstream_gets() { grep -c "\"GET /v2/$REPO/blobs/$BIG_DGST" "$T/upstream.log" || true; }
declare -A COLD WARM RPS PARW RSS UPGETS

# bench_proxy NAME BASE [PIDs for RSS...]: the same measurements for every proxy. Cold is the
# first GET; one untimed GET verifies the bytes (and lets a background cache commit finish).
bench_proxy() {
  local name=$1 base=$2; shift 2
  local big="$base/v2/$REPO/blobs/$BIG_DGST" small="$base/v2/$REPO/blobs/$SMALL_DGST" runs=() i n0
  # Clients fetch the manifest first; portcullis serves a blob only for a manifest that passed.
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$base/v2/$REPO/manifests/v1" || die "$name: GET manifest failed"
  n0="$(upstream_gets)"
  log "$name: cold 200 MiB"
  COLD[$name]="$(timed_get "$big" "$BIG_SIZE")"
  settle "$name" "$BIG_DGST" "$BIG_SIZE"
  verify "$big" "$BIG_DGST"
  for i in $(seq "$WARM_RUNS"); do runs+=("$(timed_get "$big" "$BIG_SIZE")"); done
  WARM[$name]="$(median "${runs[@]}")"
  UPGETS[$name]=$(( $(upstream_gets) - n0 ))
  log "$name: warm runs ${runs[*]}; 64 KiB wrk"
  verify "$small" "$SMALL_DGST"; settle "$name" "$SMALL_DGST" "$SMALL_SIZE"; verify "$small" "$SMALL_DGST"
  RPS[$name]="$(rps "$small")"
  log "$name: $PAR parallel warm 200 MiB"
  hwm_reset "$@"
  PARW[$name]="$(parallel_get "$big")"
  RSS[$name]="$(hwm_mib "$@")"
}
settle() { # distribution proxy commits in the background after answering: wait for the file
  [[ "$1" == "distribution proxy" ]] || return 0
  local f="$T/dproxy/docker/registry/v2/blobs/sha256/${2:7:2}/${2:7}/data" i
  for i in $(seq 600); do [[ -f "$f" && "$(stat -c %s "$f")" == "$3" ]] && return 0; sleep 0.1; done
  die "distribution proxy never stored $2"
}

setup_upstream() {
  UP_PORT="$(free_port)"; UP="http://127.0.0.1:$UP_PORT"
  registry_config "$T/up" "$UP_PORT" >"$T/up.yml"
  start upstream docker-registry serve "$T/up.yml"
  wait_ready upstream "$UP/v2/"
  log "generating and pushing blobs"
  head -c $((200 * 1024 * 1024)) /dev/urandom >"$T/big"; head -c $((64 * 1024)) /dev/urandom >"$T/small"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$T/config.json"
  BIG_DGST="$(digest_of "$T/big")"; SMALL_DGST="$(digest_of "$T/small")"; CFG_DGST="$(digest_of "$T/config.json")"
  BIG_SIZE="$(stat -c %s "$T/big")"; SMALL_SIZE="$(stat -c %s "$T/small")"; CFG_SIZE="$(stat -c %s "$T/config.json")"
  push_blob "$T/big" "$BIG_DGST"; push_blob "$T/small" "$SMALL_DGST"; push_blob "$T/config.json" "$CFG_DGST"
  local l='application/vnd.oci.image.layer.v1.tar+gzip'
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"%s","digest":"%s","size":%s},{"mediaType":"%s","digest":"%s","size":%s}]}' \
    "$CFG_DGST" "$CFG_SIZE" "$l" "$BIG_DGST" "$BIG_SIZE" "$l" "$SMALL_DGST" "$SMALL_SIZE" >"$T/manifest.json"
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$T/manifest.json" "$UP/v2/$REPO/manifests/v1"
  rm -f "$T/big" "$T/small"
}

bench_upstream() {
  local name=upstream big="$UP/v2/$REPO/blobs/$BIG_DGST"
  log "upstream: cold 200 MiB, 64 KiB wrk"
  COLD[$name]="$(timed_get "$big" "$BIG_SIZE")"
  verify "$big" "$BIG_DGST"; verify "$UP/v2/$REPO/blobs/$SMALL_DGST" "$SMALL_DGST"
  RPS[$name]="$(rps "$UP/v2/$REPO/blobs/$SMALL_DGST")"
}

bench_distribution() {
  local port; port="$(free_port)"
  registry_config "$T/dproxy" "$port" "$UP" >"$T/dproxy.yml"
  start dproxy docker-registry serve "$T/dproxy.yml"
  wait_ready dproxy "http://127.0.0.1:$port/v2/"
  bench_proxy "distribution proxy" "http://127.0.0.1:$port" "$PID_dproxy"
  stop dproxy
}

bench_nginx() {
  local port d="$T/nginx"; port="$(free_port)"; mkdir -p "$d/cache"
  cat >"$d/nginx.conf" <<EOF
daemon off;
user $(id -un) $(id -gn);
worker_processes auto;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log $d/access.log;
  client_body_temp_path $d/client_temp; proxy_temp_path $d/proxy_temp;
  fastcgi_temp_path $d/fastcgi_temp; uwsgi_temp_path $d/uwsgi_temp; scgi_temp_path $d/scgi_temp;
  # tcp_nopush (TCP_CORK) is left off: with it, keep-alive 64 KiB hits stall ~40 ms each.
  sendfile on; keepalive_requests 1000000;
  proxy_cache_path $d/cache levels=1:2 keys_zone=blobs:10m max_size=4g inactive=1h use_temp_path=off;
  server {
    listen 127.0.0.1:$port;
    location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}\$" {
      proxy_pass $UP; proxy_buffering on;
      proxy_cache blobs; proxy_cache_valid 200 1h; proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
    }
    location / { proxy_pass $UP; }
  }
}
EOF
  start nginx "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
  wait_ready nginx "http://127.0.0.1:$port/v2/"
  local workers; workers="$(pgrep -P "$PID_nginx" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # word splitting of the worker PIDs is intended
  bench_proxy nginx "http://127.0.0.1:$port" $workers
  stop nginx
}

# bench_portcullis MODE: one instance with `[cache] cold_blobs = MODE` (verify-first | stream).
bench_portcullis() {
  local mode=$1 port d="$T/portcullis-$1"; port="$(free_port)"; mkdir -p "$d/cache"
  cat >"$d/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[cache]
dir = "$d/cache"
max_size = "20GiB"
tag_ttl = "5m"
max_stale = "24h"
cold_blobs = "$mode"
[[upstream]]
name = "127.0.0.1:$UP_PORT"
url = "$UP"
default = true
[policy]
default = "allow"
EOF
  start portcullis "$PORTCULLIS_BIN" serve --config "$d/config.toml"
  wait_ready portcullis "http://127.0.0.1:$port/v2/"
  bench_proxy "portcullis ($mode)" "http://127.0.0.1:$port" "$PID_portcullis"
  stop portcullis
}

report() {
  local n
  echo "# portcullis e2e benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r)."
  echo "200 MiB and 64 KiB random blobs on one upstream distribution; warm = median of $WARM_RUNS; wrk -t2 -c16 -d5s; $PAR parallel = wall time of $PAR concurrent curls; peak RSS = VmHWM during the parallel run (nginx: sum over workers)."
  echo
  echo "| path | cold 200 MiB (s) | warm 200 MiB median (s) | 64 KiB req/s | $PAR parallel warm 200 MiB (s) | peak RSS (MiB) | upstream GETs of the 200 MiB blob |"
  echo "|---|---|---|---|---|---|---|"
  for n in upstream "distribution proxy" nginx "portcullis (verify-first)" "portcullis (stream)"; do
    [[ -n "${COLD[$n]:-}" ]] || continue
    echo "| $n | ${COLD[$n]} | ${WARM[$n]:--} | ${RPS[$n]} | ${PARW[$n]:--} | ${RSS[$n]:--} | ${UPGETS[$n]:--} |"
  done
  echo
  echo "All bodies sha256-verified against their digests; every timed GET checked for 200 and full size."
  echo
  echo "SHA-256 floor on this machine (one core): $SHA_FLOOR; 200 MiB at that speed takes $SHA_SECS s."
}

# The floor for a cold verified blob: hashing it on one core (openssl's fastest SHA-256).
sha_floor() {
  local kbs
  kbs="$(openssl speed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null | awk '/^sha256/ {print $NF}' | tr -d k)"
  SHA_FLOOR="$(awk -v k="$kbs" 'BEGIN {printf "%.0f MB/s", k / 1000}')"
  SHA_SECS="$(awk -v k="$kbs" 'BEGIN {printf "%.3f", 200 * 1048576 / (k * 1000)}')"
}

setup_upstream
bench_upstream
bench_distribution
bench_nginx
if [[ "$SKIP_PORTCULLIS" == 1 ]]; then
  log "SKIP_PORTCULLIS=1: no portcullis rows"
else
  bench_portcullis verify-first
  bench_portcullis stream
fi
sha_floor
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
