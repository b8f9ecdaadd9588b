#!/usr/bin/env bash
# Soak (issue #12): 1,000 concurrent clients for a bounded time against one portcullis, pulling a
# mix of warm, cold, denied and malformed requests; then the same load against distribution in
# proxy mode, in the same run, for comparison. Records requests by kind and status, unexpected
# answers, latency per kind, and the server's RSS, open descriptors and threads (sampled every
# second, before, during and after the load).
#
# Run from the repo root:
#   cargo build --release -p portcullis && bash benches/soak/run.sh
# Env: PORTCULLIS_BIN (default $CARGO_TARGET_DIR/release/portcullis, CARGO_TARGET_DIR defaulting
# to ~/.cache/portcullis-target), DURATION (seconds of load per server, default 60), CLIENTS
# (default 1000), COOLDOWN (seconds sampled after the load, default 15), COLD_BLOBS (fresh
# blobs for cold pulls, default 200, plus 4 of 32 MiB), FRESH_IMAGES (signed images whose
# manifests are first asked for during the run, default 40), OUT (default
# benches/soak/last-run.md), SKIP_DISTRIBUTION=1, NO_UVLOOP=1 (asyncio's own event loop for the
# clients instead of uvloop from PyPI), PROBE_FATAL=0 (run even if the probe of each kind, done
# before the load, got an unexpected answer), KEEP_TMP=1 (keep the temp dir and logs).
# Needs: docker-registry (distribution 2.8), curl, openssl, python3 (3.11+, with venv for uvloop),
# sha256sum, base64.
#
# Everything is on 127.0.0.1. One upstream distribution holds:
# - soak/signed/warm{0..3}:v1, signed with the soak's cosign key (ECDSA P-256, a legacy
#   `sha256-<hex>.sig` signature made with openssl): fetched once before the load ("warm");
# - soak/signed/fresh{00..}:v1, signed: manifests first asked for during the load ("cold
#   manifest", verified under load), each by 3 clients at about the same time;
# - soak/signed/cold:v1, signed, COLD_BLOBS layers of 16 KiB-1 MiB and 4 of 32 MiB: its
#   manifest is fetched before the load (a blob is served only for a manifest that passed), each
#   layer is first asked for during the load ("cold blob"), by 3 clients at about the same time;
# - soak/unsigned/app{0,1} (no rule covers them: `[policy] default = "deny"`), soak/signed/nosig
#   (the keyed rule, no signature) and soak/signed/forged (signed with another key): denied.
# portcullis runs with the keyed rule for 127.0.0.1:<port>/soak/signed/**, default limits except
# `[server] max_connections = 4096` and `max_connections_per_peer = 2048` (the defaults, 1024 and
# 256, would refuse most of 1,000 clients that all come from 127.0.0.1), and `ulimit -n` raised
# to the hard limit (for the clients too). Malformed requests: bad digests and tags, invalid and
# unknown names, unknown blobs, an 80 KiB header, a garbage request line, requests sent slowly
# over 3 s (2 a second) and requests whose headers never end (1 a second). See load.py for
# the kinds, the mix and each server's expected answers.
# shellcheck disable=SC2154 # PID_<name> are set by start() via printf -v
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}/release/portcullis}"
OUT="${OUT:-$HERE/last-run.md}"
DURATION="${DURATION:-60}"
CLIENTS="${CLIENTS:-1000}"
COOLDOWN="${COOLDOWN:-15}"
SETTLE="${SETTLE:-120}"
COLD_BLOBS="${COLD_BLOBS:-200}"
FRESH_IMAGES="${FRESH_IMAGES:-40}"
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

T="$(mktemp -d -t portcullis-soak.XXXXXX)"
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
source "$HERE/../e2e/lib.sh"
for tool in docker-registry curl openssl python3 sha256sum base64 timeout; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y docker-registry curl openssl python3-venv)"
done
[[ -x "$PORTCULLIS_BIN" ]] || die "$PORTCULLIS_BIN not found: cargo build --release -p portcullis (or set PORTCULLIS_BIN)"
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY http_proxy https_proxy all_proxy no_proxy

# 1,000 clients, each server's cache and logs: the soft descriptor limit goes up to the hard one,
# for everything started from here.
ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
[[ "$NOFILE" == unlimited ]] || (( NOFILE >= 3 * CLIENTS + 1024 )) ||
  die "ulimit -n is $NOFILE (hard limit): $CLIENTS clients need about $((3 * CLIENTS + 1024))"

META="$T/meta.tsv"
meta() { local IFS=$'\t'; echo "$*" >>"$META"; }

python_env() {
  PY=python3
  if [[ "${NO_UVLOOP:-0}" != 1 ]] && python3 -m venv "$T/venv" >/dev/null 2>&1 &&
     "$T/venv/bin/pip" install -q uvloop >"$T/pip.log" 2>&1; then
    PY="$T/venv/bin/python"
  else
    log "no uvloop (NO_UVLOOP=1, or venv/pip failed: see below); the clients use asyncio's loop"
    tail -3 "$T/pip.log" 2>/dev/null >&2 || true
  fi
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "python 3.11+ needed (asyncio.timeout)"'
}

# --- the upstream and its content ------------------------------------------------------------
SPEC="$T/spec.tsv"   # what load.py asks for: `image CLASS REPO TAG DIGEST`, `blob CLASS REPO DIGEST SIZE`

# push_file FILE: pushes FILE to $REPO; prints "DIGEST SIZE".
push_file() {
  local d; d="$(digest_of "$1")"
  push_blob "$1" "$d"
  echo "$d $(stat -c %s "$1")"
}
# put_manifest REPO REF FILE: prints the manifest's digest.
put_manifest() {
  curl -sS --fail -o /dev/null -X PUT -H "Content-Type: $MT_MANIFEST" --data-binary "@$3" "$UP/v2/$1/manifests/$2"
  digest_of "$3"
}
# image CLASS REPO TAG BLOBCLASS LAYER...: a config naming the image, the layer files, an OCI
# manifest; records them in $SPEC and sets IMG_DIGEST.
image() {
  local class=$1 repo=$2 tag=$3 bclass=$4; shift 4
  local cfg="$T/cfg.json" man="$T/man.json" layers="" out d s f
  REPO=$repo
  printf '{"architecture":"amd64","os":"linux","config":{"Labels":{"soak":"%s:%s"}},"rootfs":{"type":"layers","diff_ids":[]}}' \
    "$repo" "$tag" >"$cfg"
  out="$(push_file "$cfg")"; read -r d s <<<"$out"
  echo "blob $bclass $repo $d $s" >>"$SPEC"
  local config="{\"mediaType\":\"$MT_CONFIG\",\"digest\":\"$d\",\"size\":$s}"
  for f in "$@"; do
    out="$(push_file "$f")"; read -r d s <<<"$out"
    echo "blob ${LAYER_CLASS:-$bclass} $repo $d $s" >>"$SPEC"
    layers+="${layers:+,}{\"mediaType\":\"$MT_LAYER\",\"digest\":\"$d\",\"size\":$s}"
  done
  printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]}' "$MT_MANIFEST" "$config" "$layers" >"$man"
  IMG_DIGEST="$(put_manifest "$repo" "$tag" "$man")"
  echo "image $class $repo $tag $IMG_DIGEST" >>"$SPEC"
}
# sign REPO DIGEST KEY: a cosign legacy signature (what `cosign sign --key` pushes, as
# tests/support/src/cosign.rs builds it): the simple-signing payload as the layer, its DER
# ECDSA-SHA256 signature (base64) in the layer's annotation, at tag sha256-<hex>.sig.
sign() {
  local repo=$1 dgst=$2 key=$3 p="$T/payload.json" c="$T/sigcfg.json" m="$T/sigman.json" sig out pd ps cd cs
  printf '{"critical":{"identity":{"docker-reference":"127.0.0.1:%s/%s"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
    "$UP_PORT" "$repo" "$dgst" >"$p"
  sig="$(openssl dgst -sha256 -sign "$key" "$p" | base64 -w0)"
  REPO=$repo
  out="$(push_file "$p")"; read -r pd ps <<<"$out"
  printf '{"architecture":"","os":"","created":"0001-01-01T00:00:00Z","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$pd" >"$c"
  out="$(push_file "$c")"; read -r cd cs <<<"$out"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","size":%s,"digest":"%s"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":%s,"digest":"%s","annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
    "$MT_MANIFEST" "$MT_CONFIG" "$cs" "$cd" "$ps" "$pd" "$sig" >"$m"
  put_manifest "$repo" "sha256-${dgst#sha256:}.sig" "$m" >/dev/null
}
rand_file() { head -c "$2" /dev/urandom >"$1"; }

setup_upstream() {
  UP_PORT="$(free_port)"; UP="http://127.0.0.1:$UP_PORT"
  registry_config "$T/up" "$UP_PORT" >"$T/up.yml"
  start upstream docker-registry serve "$T/up.yml"
  wait_ready upstream "$UP/v2/"
  openssl ecparam -name prime256v1 -genkey -noout -out "$T/cosign.key" 2>/dev/null
  openssl ec -in "$T/cosign.key" -pubout -out "$T/cosign.pub" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$T/other.key" 2>/dev/null
  local i n l=() f sizes=0
  log "pushing warm, fresh and denied images"
  for i in 0 1 2 3; do
    rand_file "$T/l1" $((32 * 1024)); rand_file "$T/l2" $((256 * 1024))
    image warm "soak/signed/warm$i" v1 warm "$T/l1" "$T/l2"
    sign "soak/signed/warm$i" "$IMG_DIGEST" "$T/cosign.key"
  done
  for i in $(seq -w 0 "$FRESH_IMAGES"); do   # one more than FRESH_IMAGES: the last is the probe's
    rand_file "$T/l1" $((16 * 1024))
    local class=fresh; (( 10#$i == FRESH_IMAGES )) && class=probe
    image "$class" "soak/signed/fresh$i" v1 freshblob "$T/l1"
    sign "soak/signed/fresh$i" "$IMG_DIGEST" "$T/cosign.key"
  done
  for i in 0 1; do
    rand_file "$T/l1" $((64 * 1024)); image unsigned "soak/unsigned/app$i" v1 denied "$T/l1"
  done
  rand_file "$T/l1" $((64 * 1024)); image nosig soak/signed/nosig v1 denied "$T/l1"
  rand_file "$T/l1" $((64 * 1024)); image forged soak/signed/forged v1 denied "$T/l1"
  sign soak/signed/forged "$IMG_DIGEST" "$T/other.key"
  log "pushing the cold image: $COLD_BLOBS layers of 16 KiB-1 MiB and 4 of 32 MiB"
  mkdir -p "$T/cold"
  for i in $(seq "$COLD_BLOBS"); do
    f="$T/cold/$i"; n=$(( (RANDOM % 1009 + 16) * 1024 )); sizes=$((sizes + n))
    rand_file "$f" "$n"; l+=("$f")
  done
  for i in 1 2 3 4; do f="$T/cold/big$i"; rand_file "$f" $((32 << 20)); l+=("$f"); done
  f="$T/cold/probe"; rand_file "$f" $((512 * 1024)); l+=("$f")
  LAYER_CLASS=cold image coldimage soak/signed/cold v1 coldcfg "${l[@]}"
  sign soak/signed/cold "$IMG_DIGEST" "$T/cosign.key"
  # The last layer is the probe's, not the run's.
  local last; last="$(grep -n '^blob cold ' "$SPEC" | tail -1 | cut -d: -f1)"
  sed -i "${last}s/^blob cold /blob probe /" "$SPEC"
  rm -rf "$T/cold" "$T/l1" "$T/l2"
  COLD_MIB=$(( (sizes + (128 << 20)) >> 20 ))
  log "upstream ready: $(grep -c '^image' "$SPEC") images, $(grep -c '^blob' "$SPEC") blobs"
}

# --- one soak --------------------------------------------------------------------------------
status_of() { awk '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2} /^Threads/ {t = $2} END {print r, h, t}' "/proc/$1/status"; }
fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# sampler PID FILE: "epoch rss_kib hwm_kib threads fds" once a second while PID lives.
sampler() {
  while kill -0 "$1" 2>/dev/null; do
    echo "$(date +%s.%N) $(status_of "$1") $(fds_of "$1")" >>"$2"
    sleep 1
  done
}
# fd_breakdown PID PORT: what PID's descriptors are (PORT: the one it serves clients on).
fd_breakdown() {
  local pid=$1 port=$2 socks files clients ups
  socks="$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 -lname 'socket:*' 2>/dev/null | wc -l)"
  files="$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 -lname '/*' 2>/dev/null | wc -l)"
  clients="$(ss -Htanp "( sport = :$port )" 2>/dev/null | grep -v LISTEN | grep -c "pid=$pid," || true)"
  ups="$(ss -Htanp "( dport = :$UP_PORT )" 2>/dev/null | grep -c "pid=$pid," || true)"
  echo "$clients client and $ups upstream connections, $((socks - clients - ups)) other sockets (listeners and the like), $files files, $(( $(fds_of "$pid") - socks - files )) other (epoll, eventfd, pipes)"
}
upstream_requests() { grep -cE '"(GET|HEAD) /v2/' "$T/upstream.log" || true; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# log_summary LOGFILE WARN_REGEX ERROR_REGEX EXPECTED_REGEX: counts of WARN and ERROR lines that
# are not EXPECTED (a denial portcullis logs on purpose), and the most frequent of them with
# timestamps, digests, ids and generated names folded, in $T/problems.<flavor>.
log_summary() {
  local lines="$T/problems.lines"
  grep -E "$2|$3" "$1" | grep -vE "$4" >"$lines" || true
  meta res "$label" log_warn "$(grep -cE "$2" "$lines" || true)"
  meta res "$label" log_error "$(grep -cE "$3" "$lines" || true)"
  sed -E 's/^[0-9T:.Z-]+ +//; s/time="[^"]*" //; s/sha256:[0-9a-f]{64}/sha256:<hex>/g; s/sha256-[0-9a-f]{64}/sha256-<hex>/g' "$lines" |
    sed -E 's/ (go\.version|instance\.id|version|http\.request\.[a-z]+|vars\.[a-z]+|trace\.[a-z]+)=("[^"]*"|[^ ]*)//g' |
    sed -E 's/(nope|nothing|UPPER)[0-9]+/\1N/g; s/-bad\.[0-9]+/-bad.N/g; s/127\.0\.0\.1:[0-9]+/127.0.0.1:<port>/g' |
    cut -c1-240 | sort | uniq -c | sort -rn | head -8 >"$T/problems.$flavor" || true
}

# soak LABEL FLAVOR BASE PID LOGNAME WARN_REGEX ERROR_REGEX EXPECTED_REGEX
soak() {
  local label=$1 flavor=$2 base=$3 pid=$4 logname=$5 samples="$T/samples.$2" res="$T/result.$2.json"
  local idle up0 up1 cpu0 cpu1 hwm t0 t1 final rc=0
  log "$label: warm-up, then one probe of each kind"
  "$PY" "$HERE/load.py" warm --base "$base" --spec "$SPEC" || die "$label: warm-up failed"
  if ! "$PY" "$HERE/load.py" probe --base "$base" --spec "$SPEC" --flavor "$flavor"; then
    [[ "${PROBE_FATAL:-1}" == 0 ]] || die "$label: a probe got an unexpected answer (PROBE_FATAL=0 runs anyway)"
    meta note "The probe before the load got an unexpected answer from $label (see the run's log)."
  fi
  sleep 2
  idle="$(status_of "$pid") $(fds_of "$pid")"
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true   # VmHWM := VmRSS
  start "sampler_$flavor" sampler "$pid" "$samples"
  up0="$(upstream_requests)"; cpu0="$(cpu_of "$pid")"
  meta load "before $label" "$(loadavg)"
  log "$label: $CLIENTS clients for $DURATION s"
  t0="$(date +%s.%N)"
  timeout $((${DURATION%.*} + 180)) "$PY" "$HERE/load.py" run --base "$base" --spec "$SPEC" --flavor "$flavor" \
    --label "$label" --clients "$CLIENTS" --duration "$DURATION" --out "$res" || rc=$?
  t1="$(date +%s.%N)"
  (( rc == 0 )) || die "$label: the load generator failed (exit $rc)"
  hwm="$(status_of "$pid" | cut -d' ' -f2)"; cpu1="$(cpu_of "$pid")"
  meta load "end of $label's load" "$(loadavg)"
  log "$label: load done; $COOLDOWN s of quiet"
  sleep "$COOLDOWN"
  up1="$(upstream_requests)"
  final="$(status_of "$pid") $(fds_of "$pid")"
  meta res "$label" fd_what "$(fd_breakdown "$pid" "${base##*:}")"
  # Still holding descriptors: watch them for up to SETTLE s more (the sampler keeps going).
  local k fd_idle="${idle##* }" settled="during the cool-down"
  if (( ${final##* } > fd_idle + 8 )); then
    settled="not after $((COOLDOWN + SETTLE)) s"
    for ((k = 1; k <= SETTLE; k++)); do
      sleep 1
      if (( $(fds_of "$pid") <= fd_idle + 8 )); then settled="after $((COOLDOWN + k)) s"; break; fi
    done
    log "$label: descriptors back within idle + 8: $settled"
  fi
  meta res "$label" fd_settled "$settled"
  stop "sampler_$flavor"
  # idle/final: "rss hwm threads fds"; the peak is over the samples taken during the load.
  awk -v t0="$t0" -v t1="$t1" -v idle="$idle" -v final="$final" -v hwm="$hwm" -v label="$label" \
      -v cpu="$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz}')" \
      -v ups="$((up1 - up0))" -v settled="$settled" -v cool="$COOLDOWN" '
    BEGIN { split(idle, i, " "); split(final, f, " "); OFS = "\t" }
    $1 >= t0 && $1 <= t1 + 1 { if ($2 > rss) rss = $2; if ($4 > thr) thr = $4; if ($5 > fd) fd = $5 }
    $1 >= t0 && $1 <= t1 { b = int(($1 - t0) / 10); last[b] = int($2 / 1024); if (b > nb) nb = b }
    END {
      mib = 1024
      print "res", label, "rss_idle", int(i[1] / mib); print "res", label, "rss_peak", int(rss / mib)
      print "res", label, "rss_final", int(f[1] / mib); print "res", label, "hwm", int(hwm / mib)
      print "res", label, "fd_idle", i[4]; print "res", label, "fd_peak", fd; print "res", label, "fd_final", f[4]
      print "res", label, "thr_idle", i[3]; print "res", label, "thr_peak", thr; print "res", label, "thr_final", f[3]
      v = "FDs: " f[4] - i[4] " over idle after " cool " s; within idle + 8 " settled ". RSS: " int(100 * f[1] / (rss > 0 ? rss : 1)) "% of peak, " int((f[1] - i[1]) / mib) " MiB over idle"
      print "res", label, "verdict", v
      series = ""; for (b = 0; b <= nb; b++) if (b in last) series = series (series == "" ? "" : " ") last[b]
      print "res", label, "rss_series", series
      print "res", label, "upstream_requests", ups; print "res", label, "cpu", cpu
    }' "$samples" >>"$META"
  log_summary "$T/$logname.log" "$6" "$7" "$8"
}

# --- portcullis ------------------------------------------------------------------------------
run_portcullis() {
  local port mport d="$T/portcullis"; port="$(free_port)"; mport="$(free_port)"; mkdir -p "$d/cache"
  cat >"$d/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
# 1,000 clients from one address: the defaults (1024 in all, 256 per peer) would refuse most.
max_connections = 4096
max_connections_per_peer = 2048
[metrics]
listen = "127.0.0.1:$mport"
[cache]
dir = "$d/cache"
[[upstream]]
name = "127.0.0.1:$UP_PORT"
url = "$UP"
default = true
[policy]
default = "deny"
[[trust.key]]
name = "soak"
path = "$T/cosign.pub"
[[rule]]
name = "soak-signed"
images = ["127.0.0.1:$UP_PORT/soak/signed/**"]
mode = "enforce"
[[rule.authority]]
key = "soak"
EOF
  "$PORTCULLIS_BIN" check-config --config "$d/config.toml" >/dev/null || die "portcullis rejects the soak's config"
  start portcullis "$PORTCULLIS_BIN" serve --config "$d/config.toml"
  wait_ready portcullis "http://127.0.0.1:$port/v2/"
  soak portcullis portcullis "http://127.0.0.1:$port" "$PID_portcullis" portcullis ' WARN ' ' ERROR ' \
    'portcullis::gate: denied name=[^ ]*/soak/signed/(nosig|forged) '
  curl -s "http://127.0.0.1:$mport/metrics" >"$T/portcullis.metrics" || true
  kill -0 "$PID_portcullis" 2>/dev/null || die "portcullis exited during the soak: $(tail -5 "$T/portcullis.log")"
  stop portcullis
}

run_distribution() {
  local port; port="$(free_port)"
  registry_config "$T/dproxy" "$port" "$UP" >"$T/dproxy.yml"
  start dproxy docker-registry serve "$T/dproxy.yml"
  wait_ready dproxy "http://127.0.0.1:$port/v2/"
  soak "distribution proxy" distribution "http://127.0.0.1:$port" "$PID_dproxy" dproxy 'level=warning' \
    'level=(error|fatal|panic)' '^$'
  stop dproxy
}

# --- main ------------------------------------------------------------------------------------
python_env
setup_upstream
meta when "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta machine "$(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, Linux $(uname -r); other work was running on the machine (see the load average). Clients and servers share the cores. portcullis: $PORTCULLIS_BIN ($("$PORTCULLIS_BIN" --version), built $(date -u -r "$PORTCULLIS_BIN" '+%Y-%m-%d %H:%M UTC')); $(docker-registry --version | awk '{print "distribution", $3}'); $("$PY" --version), ulimit -n $NOFILE."
meta setup "Upstream content: 4 signed warm images (config, 32 KiB and 256 KiB layers), $FRESH_IMAGES signed images first asked for during the load, one signed image with $COLD_BLOBS layers of 16 KiB-1 MiB plus 4 of 32 MiB ($COLD_MIB MiB) first asked for during the load (each cold item by 3 clients at about the same time, paced evenly over 5-85% of the run), 2 unsigned images no rule covers, one unsigned and one signed with another key under the keyed rule. portcullis: keyed rule for soak/signed/**, \`[policy] default = \"deny\"\`, \`[cache] cold_blobs\` at its default (verify-first), default limits except \`[server] max_connections = 4096\` and \`max_connections_per_peer = 2048\` (the defaults, 1024 and 256, would refuse most of $CLIENTS clients from one address). Mix: 70% warm (15 manifest by tag, 10 by digest, 45 blob), 11% denied, 15% malformed, plus the paced cold items, 2 slowly-sent requests and 1 never-finished request a second. Every 200 body is sha256-checked against its digest."
meta cooldown "$COOLDOWN"
meta settle "$SETTLE"
meta load "before the runs" "$(loadavg)"
run_portcullis
if [[ "${SKIP_DISTRIBUTION:-0}" != 1 ]]; then run_distribution; fi
results=("$T/result.portcullis.json")
[[ -f "$T/result.distribution.json" ]] && results+=("$T/result.distribution.json")
for f in portcullis distribution; do
  [[ -s "$T/problems.$f" ]] || continue
  meta note "Most frequent WARN/ERROR log lines of $f, expected denials left out (count, line with timestamps, digests, ids and generated names folded):"
  meta note ""
  while IFS= read -r line; do meta note "    $line"; done <"$T/problems.$f"
  meta note ""
done
mkdir -p "$(dirname "$OUT")"
"$PY" "$HERE/load.py" report --meta "$META" --out "$OUT" "${results[@]}"
cat "$OUT"
