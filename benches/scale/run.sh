#!/usr/bin/env bash
# Scale-out benchmark: portcullis replicas sharing an S3 bucket ([cache.shared]) below their own
# caches, against one replica alone and against distribution's proxy on the S3 storage driver.
#
# Run from the repo root:
#   cargo build --release -p portcullis && bash benches/scale/run.sh
# Env: PORTCULLIS_BIN (default $CARGO_TARGET_DIR/release/portcullis, CARGO_TARGET_DIR defaulting
# to ~/.cache/portcullis-release), MOTO_SERVER (default
# ${XDG_CACHE_HOME:-~/.cache}/portcullis/moto-venv/bin/moto_server, as scripts/setup --test
# installs it), OUT (default benches/scale/last-run.md), CLIENTS (default 20), SHARED_TIMEOUT
# (default 3s, the [cache.shared] timeout default), SKIP_PORTCULLIS=1 (distribution only),
# SKIP_DISTRIBUTION=1, KEEP_TMP=1 (keep the temp dir and logs).
# Needs: docker-registry (distribution 2.8), moto_server, curl, sha256sum, openssl.
#
# Everything on 127.0.0.1: one upstream distribution holding a 200 MiB random blob (bench/big:v1),
# one moto S3 server (in memory) with one bucket. Each scenario gets fresh caches and its own
# prefix in the bucket; replicas are stopped before the next scenario starts.
#  1. cold 200 MiB through replica B: from the upstream (no bucket), from the bucket that replica
#     A filled (B's cache empty), and from B's own cache (second GET).
#  2. CLIENTS concurrent cold GETs: all on one replica (no bucket) vs spread round-robin over
#     three replicas sharing a bucket. Wall time and the upstream's GETs of the blob.
#  3. The same as 1 with distribution's proxy (storage: s3 on moto) as the peer: D1 fills the
#     bucket, a second instance D2 sharing it serves the blob cold.
# shellcheck disable=SC2154 # PID_<name> are set by start() via printf -v
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-release}/release/portcullis}"
MOTO_SERVER="${MOTO_SERVER:-${PORTCULLIS_MOTO_SERVER:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/moto-venv/bin/moto_server}}"
OUT="${OUT:-$HERE/last-run.md}"
CLIENTS="${CLIENTS:-20}"
SHARED_TIMEOUT="${SHARED_TIMEOUT:-3s}"
SKIP_DISTRIBUTION="${SKIP_DISTRIBUTION:-0}"
SKIP_PORTCULLIS="${SKIP_PORTCULLIS:-0}"
REPO=bench/big
BUCKET=portcullis-scale
L1_RUNS=3
# moto checks no signature, but answers a request without Authorization as anonymous.
S3_AUTH='AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'
# The S3 clients (portcullis' object_store, distribution's aws-sdk-go) read AWS_* from the
# environment: give them moto's dummy credentials and nothing else of the caller's. aws-sdk-go
# refuses to start at all with AWS_CA_BUNDLE set, even to an empty string.
S3_ENV=(env -u AWS_CA_BUNDLE -u AWS_SESSION_TOKEN -u AWS_PROFILE -u AWS_ENDPOINT -u AWS_ENDPOINT_URL
  -u AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1)

# A temp dir ($T) removed on exit with the processes in PIDS, benches/e2e/lib.sh, and helpers.
# shellcheck source=benches/scale/lib.sh
source "$HERE/lib.sh" scale
for tool in docker-registry curl sha256sum openssl; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y docker-registry curl openssl)"
done
[[ -x "$MOTO_SERVER" ]] || die "$MOTO_SERVER not found: scripts/setup --test, or set MOTO_SERVER"
if [[ "$SKIP_PORTCULLIS" != 1 && ! -x "$PORTCULLIS_BIN" ]]; then
  die "$PORTCULLIS_BIN not found: cargo build --release -p portcullis, or set SKIP_PORTCULLIS=1"
fi
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive number"

# timed_get URL: one GET of the big blob to /dev/null; prints time_total, checks 200 and the size.
timed_get() {
  local code size t
  read -r code size t < <(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$1")
  [[ "$code" == 200 && "$size" == "$BIG_SIZE" ]] || die "GET $1: status $code, $size bytes (want 200, $BIG_SIZE)"
  echo "$t"
}
verify() { # verify URL: the body's sha256 must be the big blob's digest
  local got; got="sha256:$(curl -sS --fail "$1" | sha256sum | cut -d' ' -f1)"
  [[ "$got" == "$BIG_DGST" ]] || die "$1 served wrong bytes: $got"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
upstream_count() { # upstream_count METHOD: the upstream's access-log lines for the big blob
  grep -c "\"$1 /v2/$REPO/blobs/$BIG_DGST" "$T/upstream.log" || true
}
get_manifest() { # get_manifest BASE: clients fetch it first; blobs are served for a verified one
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$1/v2/$REPO/manifests/v1" || die "GET manifest through $1 failed"
}
s3() { curl -sS -H "Authorization: $S3_AUTH" "$@"; }
# s3_wait KEY SECONDS: until KEY is in the bucket (whole: multipart objects appear on completion).
s3_wait() {
  local i
  for i in $(seq $(($2 * 10))); do
    [[ "$(s3 -o /dev/null -w '%{http_code}' -I "$S3/$BUCKET/$1")" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}
s3_keys() { # s3_keys PREFIX: how many objects under PREFIX (one page is plenty here)
  s3 "$S3/$BUCKET?list-type=2&prefix=$1" | grep -o '<Key>' | wc -l
}

setup_upstream() {
  UP_PORT="$(free_port)"; UP="http://127.0.0.1:$UP_PORT"
  registry_config "$T/up" "$UP_PORT" >"$T/up.yml"
  start upstream docker-registry serve "$T/up.yml"
  wait_ready upstream "$UP/v2/"
  log "generating and pushing a 200 MiB blob"
  head -c $((200 * 1024 * 1024)) /dev/urandom >"$T/big"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$T/config.json"
  BIG_DGST="$(digest_of "$T/big")"; CFG_DGST="$(digest_of "$T/config.json")"
  BIG_SIZE="$(stat -c %s "$T/big")"; CFG_SIZE="$(stat -c %s "$T/config.json")"
  push_blob "$T/big" "$BIG_DGST"; push_blob "$T/config.json" "$CFG_DGST"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$CFG_DGST" "$CFG_SIZE" "$BIG_DGST" "$BIG_SIZE" >"$T/manifest.json"
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$T/manifest.json" "$UP/v2/$REPO/manifests/v1"
  rm -f "$T/big"
  BLOB_PATH="/v2/$REPO/blobs/$BIG_DGST"
}

setup_s3() {
  local port; port="$(free_port)"; S3="http://127.0.0.1:$port"
  start moto env PYTHONUNBUFFERED=1 "$MOTO_SERVER" -H 127.0.0.1 -p "$port"
  wait_ready moto "$S3/"
  s3 --fail -o /dev/null -X PUT "$S3/$BUCKET" || die "cannot create bucket $BUCKET"
  # Context: one plain GET of a 200 MiB object straight from moto (PUT, GET, DELETE).
  head -c $((200 * 1024 * 1024)) /dev/zero >"$T/zero"
  s3 --fail -o /dev/null -X PUT -T "$T/zero" "$S3/$BUCKET/probe/zero"; rm -f "$T/zero"
  MOTO_GET="$(s3 -o /dev/null -w '%{time_total}' "$S3/$BUCKET/probe/zero")"
  s3 --fail -o /dev/null -X DELETE "$S3/$BUCKET/probe/zero"
}

# start_portcullis NAME [PREFIX]: a replica with a fresh cache, with [cache.shared] on
# s3://$BUCKET/PREFIX if PREFIX is given; sets BASE_<NAME> and MPORT_<NAME>.
start_portcullis() {
  local name=$1 prefix=${2:-} port mport d="$T/$1"; port="$(free_port)"; mport="$(free_port)"
  mkdir -p "$d/cache"
  cat >"$d/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[metrics]
listen = "127.0.0.1:$mport"
[cache]
dir = "$d/cache"
max_size = "20GiB"
tag_ttl = "5m"
max_stale = "24h"
[[upstream]]
name = "127.0.0.1:$UP_PORT"
url = "$UP"
default = true
[policy]
default = "allow"
EOF
  if [[ -n "$prefix" ]]; then
    cat >>"$d/config.toml" <<EOF
[cache.shared]
url = "s3://$BUCKET/$prefix"
endpoint = "$S3"
region = "us-east-1"
timeout = "$SHARED_TIMEOUT"
lease_ttl = "60s"
retry_after = "10s"
EOF
  fi
  start "$name" "${S3_ENV[@]}" HOSTNAME="$name" "$PORTCULLIS_BIN" serve --config "$d/config.toml"
  wait_ready "$name" "http://127.0.0.1:$port/v2/"
  printf -v "BASE_$name" '%s' "http://127.0.0.1:$port"
  printf -v "MPORT_$name" '%s' "$mport"
}
shared_errors() { # shared_errors NAME...: the replicas' shared-tier errors and refusals, summed
  local n s=0 v
  for n in "$@"; do v="MPORT_$n"; s=$((s + $(metric "${!v}" '^portcullis_shared_(errors|refused)'))); done
  echo "$s"
}

declare -A R # R[key] = figure, for the report

# Scenario 1: replica B cold from the upstream, from a bucket that A filled, and from its L1.
bench_cold() {
  local n0 t0 i runs=()
  log "1: B with no bucket: cold from the upstream"
  start_portcullis bplain
  get_manifest "$BASE_bplain"
  n0="$(upstream_count GET)"
  R[b_upstream]="$(timed_get "$BASE_bplain$BLOB_PATH")"
  verify "$BASE_bplain$BLOB_PATH"
  R[b_upstream_gets]=$(( $(upstream_count GET) - n0 ))
  stop bplain

  log "1: A fills the bucket (its cache and the bucket empty)"
  start_portcullis a cold
  get_manifest "$BASE_a"
  n0="$(upstream_count GET)"
  t0="$(date +%s.%N)"
  R[a_upstream]="$(timed_get "$BASE_a$BLOB_PATH")"
  s3_wait "cold/blobs/sha256/${BIG_DGST#sha256:}" 120 || die "A never put the blob in the bucket"
  R[a_landed]="$(secs_since "$t0")"
  R[a_upstream_gets]=$(( $(upstream_count GET) - n0 ))
  R[a_errors]="$(shared_errors a)"
  stop a

  log "1: B with the bucket, its cache empty: cold from the bucket"
  start_portcullis b cold
  get_manifest "$BASE_b"
  n0="$(upstream_count GET)"
  R[b_bucket]="$(timed_get "$BASE_b$BLOB_PATH")"
  verify "$BASE_b$BLOB_PATH"
  for i in $(seq "$L1_RUNS"); do runs+=("$(timed_get "$BASE_b$BLOB_PATH")"); done
  R[b_l1]="$(median "${runs[@]}")"
  log "1: B from L1: ${runs[*]}"
  R[b_bucket_gets]=$(( $(upstream_count GET) - n0 ))
  R[b_hits]="$(metric "$MPORT_b" '^portcullis_shared_hits_total.*kind="blob"')"
  R[b_errors]="$(shared_errors b)"
  stop b
}

# concurrent_get URL...: $CLIENTS concurrent GETs of the blob, client i on URL[i mod n]; prints
# the wall seconds, and leaves each client's time_total in $T/par.times.
concurrent_get() {
  local urls=("$@") i t0 code size pids=()
  t0="$(date +%s.%N)"
  for i in $(seq 0 $((CLIENTS - 1))); do
    curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
      "${urls[i % ${#urls[@]}]}$BLOB_PATH" >"$T/par.$i" & pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  secs_since "$t0"
  for i in $(seq 0 $((CLIENTS - 1))); do
    read -r code size _ <"$T/par.$i"
    [[ "$code" == 200 && "$size" == "$BIG_SIZE" ]] || die "concurrent GET $i: $(cat "$T/par.$i")"
  done
  for i in $(seq 0 $((CLIENTS - 1))); do awk '{print $3}' "$T/par.$i"; done >"$T/par.times"
}
spread() { sort -g "$T/par.times" | awk '{a[NR]=$1} END {printf "%.2f / %.2f", a[1], a[NR]}'; }

# Scenario 2: CLIENTS concurrent cold GETs, one replica alone vs three sharing a bucket.
bench_concurrent() {
  local n0 h0 n
  log "2: $CLIENTS concurrent cold GETs on one replica (no bucket)"
  start_portcullis solo
  get_manifest "$BASE_solo"
  n0="$(upstream_count GET)"; h0="$(upstream_count HEAD)"
  R[solo_wall]="$(concurrent_get "$BASE_solo")"
  R[solo_spread]="$(spread)"
  R[solo_gets]=$(( $(upstream_count GET) - n0 )); R[solo_heads]=$(( $(upstream_count HEAD) - h0 ))
  verify "$BASE_solo$BLOB_PATH"
  stop solo

  log "2: $CLIENTS concurrent cold GETs over three replicas sharing a bucket"
  for n in r1 r2 r3; do start_portcullis "$n" fleet; done
  for n in r1 r2 r3; do n="BASE_$n"; get_manifest "${!n}"; done
  n0="$(upstream_count GET)"; h0="$(upstream_count HEAD)"
  R[fleet_wall]="$(concurrent_get "$BASE_r1" "$BASE_r2" "$BASE_r3")"
  R[fleet_spread]="$(spread)"
  R[fleet_gets]=$(( $(upstream_count GET) - n0 )); R[fleet_heads]=$(( $(upstream_count HEAD) - h0 ))
  for n in r1 r2 r3; do n="BASE_$n"; verify "${!n}$BLOB_PATH"; done
  R[fleet_hits]=0; R[fleet_waits]=0
  for n in r1 r2 r3; do
    n="MPORT_$n"
    R[fleet_hits]=$((R[fleet_hits] + $(metric "${!n}" '^portcullis_shared_hits_total.*kind="blob"')))
    R[fleet_waits]=$((R[fleet_waits] + $(metric "${!n}" '^portcullis_shared_lease_waits')))
  done
  R[fleet_errors]="$(shared_errors r1 r2 r3)"
  R[fleet_objects]="$(s3_keys fleet/blobs/)"
  for n in r1 r2 r3; do stop "$n"; done
}

# start_distribution NAME ROOTDIR: distribution's proxy on the S3 driver, at prefix ROOTDIR of the
# bucket; sets BASE_<NAME>. Blobs are served by the registry itself (redirect disabled), not by a
# redirect to the bucket.
start_distribution() {
  local port; port="$(free_port)"
  cat >"$T/$1.yml" <<YAML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage:
  s3: {region: us-east-1, bucket: $BUCKET, regionendpoint: "$S3", accesskey: bench, secretkey: bench, secure: false, v4auth: true, rootdirectory: /$2}
  redirect: {disable: true}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port, secret: portcullis-scale-bench}
proxy: {remoteurl: $UP}
YAML
  start "$1" "${S3_ENV[@]}" docker-registry serve "$T/$1.yml"
  wait_ready "$1" "http://127.0.0.1:$port/v2/"
  printf -v "BASE_$1" '%s' "http://127.0.0.1:$port"
}

# Scenario 3: scenario 1 with distribution's proxy on S3. D1 fills the bucket; D2 shares it.
bench_distribution() {
  local n0 t0 i runs=()
  log "3: distribution D1 on S3: cold from the upstream, filling the bucket"
  start_distribution d1 dist
  get_manifest "$BASE_d1"
  n0="$(upstream_count GET)"
  t0="$(date +%s.%N)"
  R[d1_upstream]="$(timed_get "$BASE_d1$BLOB_PATH")"
  # It answers first and commits after (upload, then a server-side copy into blobs/): D2 finds
  # the blob once the repository's layer link is written.
  s3_wait "dist/docker/registry/v2/repositories/$REPO/_layers/sha256/${BIG_DGST#sha256:}/link" 180 ||
    { R[dist_skip]="D1 never committed the blob to the bucket (180 s); see its log"; stop d1; return 0; }
  R[d1_landed]="$(secs_since "$t0")"
  R[d1_upstream_gets]=$(( $(upstream_count GET) - n0 ))
  stop d1

  log "3: distribution D2 sharing the bucket: cold from the bucket"
  start_distribution d2 dist
  get_manifest "$BASE_d2"
  n0="$(upstream_count GET)"
  R[d2_bucket]="$(timed_get "$BASE_d2$BLOB_PATH")"
  verify "$BASE_d2$BLOB_PATH"
  for i in $(seq "$L1_RUNS"); do runs+=("$(timed_get "$BASE_d2$BLOB_PATH")"); done
  R[d2_again]="$(median "${runs[@]}")"
  log "3: D2 again: ${runs[*]}"
  R[d2_bucket_gets]=$(( $(upstream_count GET) - n0 ))
  stop d2
}

# The floor for a cold verified blob: hashing it on one core (openssl's fastest SHA-256).
sha_floor() {
  local kbs
  kbs="$(openssl speed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null | awk '/^sha256/ {print $NF}' | tr -d k)"
  SHA_FLOOR="$(awk -v k="$kbs" 'BEGIN {printf "%.0f MB/s", k / 1000}')"
  SHA_SECS="$(awk -v k="$kbs" 'BEGIN {printf "%.3f", 200 * 1048576 / (k * 1000)}')"
}

report() {
  echo "# portcullis scale-out benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r)."
  echo "One 200 MiB random blob on one upstream distribution ($(docker-registry --version | awk '{print $NF}')); the bucket is moto $("${MOTO_SERVER%/*}/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') (in memory, one Python process) on loopback. Every replica starts with an empty cache; \`[cache.shared] timeout = \"$SHARED_TIMEOUT\"\`, cold_blobs = verify-first (the default)."
  echo
  echo "## 1. One cold 200 MiB GET"
  echo
  echo "| path | 200 MiB GET (s) | upstream GETs of the blob |"
  echo "|---|---|---|"
  echo "| upstream direct (reference) | ${R[up_direct]} | - |"
  if [[ -n "${R[b_bucket]:-}" ]]; then
    echo "| portcullis B, no bucket, empty cache: from the upstream | ${R[b_upstream]} | ${R[b_upstream_gets]} |"
    echo "| portcullis A, empty bucket, empty cache: from the upstream, then uploads to the bucket | ${R[a_upstream]} | ${R[a_upstream_gets]} |"
    echo "| portcullis B, bucket filled by A, empty cache: **from the bucket** | ${R[b_bucket]} | ${R[b_bucket_gets]} (B's GETs, this and the next row) |"
    echo "| portcullis B, further GETs: from its own cache (median of $L1_RUNS) | ${R[b_l1]} | (in the row above) |"
  fi
  if [[ -n "${R[d2_bucket]:-}" ]]; then
    echo "| distribution D1 (S3 driver), empty bucket: from the upstream | ${R[d1_upstream]} | ${R[d1_upstream_gets]} |"
    echo "| distribution D2 (S3 driver), bucket filled by D1: **from the bucket** | ${R[d2_bucket]} | ${R[d2_bucket_gets]} (D2's GETs, this and the next row) |"
    echo "| distribution D2, further GETs: from the bucket again (median of $L1_RUNS) | ${R[d2_again]} | (in the row above) |"
  fi
  echo
  if [[ -n "${R[b_bucket]:-}" ]]; then
    echo "A's blob was in the bucket ${R[a_landed]} s after A's GET started; B counted ${R[b_hits]} shared-tier blob hit(s). Shared-tier errors/refusals: A ${R[a_errors]}, B ${R[b_errors]}."
  fi
  if [[ -n "${R[d1_landed]:-}" ]]; then
    echo "distribution D1 answered first and committed after: the blob was linked in the bucket ${R[d1_landed]} s after its GET started (an upload to \`_uploads/\`, then a server-side copy)."
  fi
  if [[ -n "${R[dist_skip]:-}" ]]; then echo; echo "distribution on S3: skipped, ${R[dist_skip]}."; fi
  echo "A plain GET of a 200 MiB object straight from moto took $MOTO_GET s (what any client of this bucket pays)."
  echo
  if [[ -n "${R[fleet_wall]:-}" ]]; then
    echo "## 2. $CLIENTS concurrent cold GETs of the 200 MiB blob"
    echo
    echo "| setup | wall time (s) | fastest / slowest client (s) | upstream GETs of the blob | upstream HEADs of the blob |"
    echo "|---|---|---|---|---|"
    echo "| one replica, no bucket | ${R[solo_wall]} | ${R[solo_spread]} | ${R[solo_gets]} | ${R[solo_heads]} |"
    echo "| three replicas sharing a bucket (round-robin) | ${R[fleet_wall]} | ${R[fleet_spread]} | ${R[fleet_gets]} | ${R[fleet_heads]} |"
    echo
    echo "Three replicas: ${R[fleet_hits]} shared-tier blob hit(s), ${R[fleet_waits]} lease wait(s), ${R[fleet_errors]} shared-tier error(s)/refusal(s), ${R[fleet_objects]} object(s) under the blob prefix afterwards. Each replica fetched the manifest first (untimed)."
    echo
  fi
  echo "All bodies sha256-verified against the digest; every GET checked for 200 and the full size."
  echo
  echo "SHA-256 floor on this machine (one core, \`openssl speed -evp sha256\`, 16 KiB blocks): $SHA_FLOOR; 200 MiB at that speed takes $SHA_SECS s."
}

setup_upstream
setup_s3
if [[ "$SKIP_PORTCULLIS" == 1 ]]; then
  log "SKIP_PORTCULLIS=1: no portcullis rows"
else
  bench_cold
  bench_concurrent
fi
R[up_direct]="$(timed_get "$UP$BLOB_PATH")"
if [[ "$SKIP_DISTRIBUTION" == 1 ]]; then
  R[dist_skip]="SKIP_DISTRIBUTION=1"
else
  bench_distribution
fi
sha_floor
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
