#!/usr/bin/env bash
# Scale-out end to end on a real distributed store: portcullis replicas sharing a bucket on a
# three-node Garage cluster (replication factor 3) on loopback, with one Garage node killed in the
# middle of a pull and in the middle of an upload.
#
# Run from the repo root:
#   cargo install --locked garage --version 2.5.0 --no-default-features --features system-libs,lmdb \
#     --root ~/.cache/portcullis/garage          # once (libsodium-dev libzstd-dev pkg-config)
#   cargo build --release -p portcullis && bash benches/scale/garage.sh
# Env: PORTCULLIS_BIN (default $CARGO_TARGET_DIR/release/portcullis, CARGO_TARGET_DIR defaulting
# to ~/.cache/portcullis-release), GARAGE_BIN (default
# ${XDG_CACHE_HOME:-~/.cache}/portcullis/garage/bin/garage), SHARED_TIMEOUT (default 3s),
# KILL_AT_MIB (default 60: how far into a transfer the node is killed), KEEP_TMP=1 (keep the temp
# dir and logs). The report (markdown) goes to stdout, progress to stderr; run.sh rewrites
# last-run.md, so append this one after it: bash benches/scale/garage.sh >>benches/scale/last-run.md
# Needs: garage 2.x, docker-registry (distribution 2.8), curl (7.75+, for --aws-sigv4),
# sha256sum, openssl.
#
# Everything on 127.0.0.1: an upstream distribution holding two 200 MiB single-layer images
# (bench/big:v1, bench/big2:v1); Garage nodes g1, g2, g3 (lmdb, replication_factor = 3,
# consistency_mode = "consistent": read and write quorum 2 of 3, every node holds every block), one
# zone each, one bucket; replicas A, B, C with [cache.shared] on s3://$BUCKET/fleet, each talking
# to its own Garage node's S3 endpoint (A to g1, B to g2, C to g3), each with an empty cache.
#  a. A: cold GET of big from the upstream; A uploads it to the bucket (via g1).
#  b. B: cold GET of big from the bucket (via g2).
#  c. C: cold GET of big from the bucket (via g3); g2 is SIGKILLed once C has read KILL_AT_MIB MiB
#     of it from the bucket.
#  d. g2 restarted and healthy again; A: cold GET of big2, and g2 is SIGKILLed once KILL_AT_MIB MiB
#     of A's upload reached g1's disk; then C: cold GET of big2 from the bucket with g2 still down.
# shellcheck disable=SC2154 # PID_<name> are set by start() via printf -v
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-release}/release/portcullis}"
GARAGE_BIN="${GARAGE_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/garage/bin/garage}"
SHARED_TIMEOUT="${SHARED_TIMEOUT:-3s}"
KILL_AT_MIB="${KILL_AT_MIB:-60}"
BUCKET=portcullis-fleet
PREFIX=fleet
REGION=garage
MIB=$((1024 * 1024))

# A temp dir ($T) removed on exit with the processes in PIDS, benches/e2e/lib.sh, and helpers.
# shellcheck source=benches/scale/lib.sh
source "$HERE/lib.sh" garage
for tool in docker-registry curl sha256sum openssl; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y docker-registry curl openssl)"
done
[[ -x "$GARAGE_BIN" ]] || die "$GARAGE_BIN not found: see the install line at the top of $0, or set GARAGE_BIN"
[[ -x "$PORTCULLIS_BIN" ]] || die "$PORTCULLIS_BIN not found: cargo build --release -p portcullis"
[[ "$KILL_AT_MIB" =~ ^[1-9][0-9]*$ && "$KILL_AT_MIB" -lt 200 ]] || die "KILL_AT_MIB must be 1..199"

declare -A R # R[key] = figure, for the report

bytes_under() { du -sb "$1" 2>/dev/null | cut -f1; }

# ---- Garage -------------------------------------------------------------------------------------

RPC_SECRET="$(openssl rand -hex 32)"
garage() { # garage NODE ARGS...: the CLI, talking RPC to NODE (g1, g2 or g3)
  "$GARAGE_BIN" -c "$T/$1/garage.toml" "${@:2}"
}
garage_config() { # garage_config NODE: writes $T/NODE/garage.toml with fresh ports; sets S3_<NODE>
  local n=$1 rpc s3 admin d="$T/$1"; rpc="$(free_port)"; s3="$(free_port)"; admin="$(free_port)"
  mkdir -p "$d/meta" "$d/data"
  cat >"$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$RPC_SECRET"
[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(openssl rand -hex 16)"
EOF
  chmod 600 "$d/garage.toml"
  printf -v "S3_$n" '%s' "http://127.0.0.1:$s3"
}
start_garage() { # start_garage NODE: starts it and waits until its CLI gets an answer over RPC
  start "$1" env RUST_LOG=garage=info "$GARAGE_BIN" -c "$T/$1/garage.toml" server
  local v="PID_$1"
  for _ in $(seq 150); do
    garage "$1" node id -q >/dev/null 2>&1 && return 0
    kill -0 "${!v}" 2>/dev/null || { tail -20 "$T/$1.log" >&2; die "$1 exited during start"; }
    sleep 0.2
  done
  tail -20 "$T/$1.log" >&2; die "$1 not answering RPC"
}
health() { garage g1 health 2>/dev/null | awk '/Cluster health/ {print tolower($NF)}' || true; }
wait_health() { # wait_health STATUS SECONDS: until g1 reports the cluster as STATUS
  for _ in $(seq $(($2 * 5))); do [[ "$(health)" == "$1" ]] && return 0; sleep 0.2; done
  garage g1 status >&2 || true; die "cluster not $1 after $2 s (now: $(health))"
}

setup_garage() {
  local n ids=()
  log "garage: three nodes, replication factor 3"
  for n in g1 g2 g3; do garage_config "$n"; start_garage "$n"; done
  for n in g2 g3; do garage g1 node connect "$(garage "$n" node id -q)" >/dev/null; done
  for n in g1 g2 g3; do ids+=("$(garage "$n" node id -q | cut -d@ -f1)"); done
  garage g1 layout assign -z z1 -c 10G "${ids[0]}" >/dev/null
  garage g1 layout assign -z z2 -c 10G "${ids[1]}" >/dev/null
  garage g1 layout assign -z z3 -c 10G "${ids[2]}" >/dev/null
  garage g1 layout apply --version 1 >/dev/null
  wait_health healthy 60
  garage g1 key create bench >/dev/null
  KEY_ID="$(garage g1 key info bench --key-id)"
  KEY_SECRET="$(garage g1 key info bench --secret-key)"
  garage g1 bucket create "$BUCKET" >/dev/null
  garage g1 bucket allow --read --write --key bench "$BUCKET" >/dev/null
  R[garage_version]="$("$GARAGE_BIN" --version 2>/dev/null | head -1)"
}

# s3 ENDPOINT CURL-ARGS...: a request signed with the bench key (SigV4, region $REGION).
s3() {
  curl -sS --aws-sigv4 "aws:amz:$REGION:s3" --user "$KEY_ID:$KEY_SECRET" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "${@:2}" "$1"
}
s3_code() { s3 "$@" -o /dev/null -w '%{http_code}'; }
# s3_wait ENDPOINT KEY SECONDS: until KEY is in the bucket (multipart objects appear on completion).
s3_wait() {
  for _ in $(seq $(($3 * 10))); do
    [[ "$(s3_code "$1/$BUCKET/$2" -I)" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}
# Does the store refuse a create over an existing object (If-None-Match: *), and a replace that
# names a stale ETag (If-Match)? portcullis' leases, racing uploads and record updates rely on it.
probe_conditional_put() {
  local k="$1/$BUCKET/probe/conditional" first second third
  first="$(s3_code "$k" -X PUT -H 'If-None-Match: *' --data-binary one)"
  second="$(s3_code "$k" -X PUT -H 'If-None-Match: *' --data-binary two)"
  third="$(s3_code "$k" -X PUT -H 'If-Match: "0123456789abcdef0123456789abcdef"' --data-binary three)"
  R[cond_put]="\`If-None-Match: *\` on a new key $first, then on the same key $second; \`If-Match\` with a stale ETag $third (AWS S3 answers 200, 412, 412); the object now holds \"$(s3 "$k")\""
  s3 "$k" -X DELETE -o /dev/null
}

# ---- upstream and replicas (as benches/scale/run.sh) --------------------------------------------

setup_upstream() {
  UP_PORT="$(free_port)"; UP="http://127.0.0.1:$UP_PORT"
  registry_config "$T/up" "$UP_PORT" >"$T/up.yml"
  start upstream docker-registry serve "$T/up.yml"
  wait_ready upstream "$UP/v2/"
}
# push_image REPO VAR: a 200 MiB random single-layer image REPO:v1; sets VAR (the layer digest).
push_image() {
  local repo=$1 big cfg size csize
  log "generating and pushing a 200 MiB layer to $repo:v1"
  head -c $((200 * MIB)) /dev/urandom >"$T/big"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$T/config.json"
  big="$(digest_of "$T/big")"; cfg="$(digest_of "$T/config.json")"
  size="$(stat -c %s "$T/big")"; csize="$(stat -c %s "$T/config.json")"
  REPO=$repo push_blob "$T/big" "$big"; REPO=$repo push_blob "$T/config.json" "$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$cfg" "$csize" "$big" "$size" >"$T/manifest.json"
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$T/manifest.json" "$UP/v2/$repo/manifests/v1"
  rm -f "$T/big"
  printf -v "$2" '%s' "$big"
}
upstream_count() { # upstream_count METHOD REPO DIGEST: the upstream's access-log lines for a blob
  grep -c "\"$1 /v2/$2/blobs/$3" "$T/upstream.log" || true
}

# start_replica NAME GARAGE_NODE: a replica with an empty cache on the shared bucket through that
# node's S3 endpoint; sets BASE_<NAME> and MPORT_<NAME>.
start_replica() {
  local name=$1 s3v="S3_$2" port mport d="$T/$1"; port="$(free_port)"; mport="$(free_port)"
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
[cache.shared]
url = "s3://$BUCKET/$PREFIX"
endpoint = "${!s3v}"
region = "$REGION"
timeout = "$SHARED_TIMEOUT"
lease_ttl = "60s"
retry_after = "10s"
[[upstream]]
name = "127.0.0.1:$UP_PORT"
url = "$UP"
default = true
[policy]
default = "allow"
EOF
  # object_store reads AWS_* from the environment: the bench key and nothing of the caller's.
  start "$name" env -u AWS_CA_BUNDLE -u AWS_SESSION_TOKEN -u AWS_PROFILE -u AWS_ENDPOINT \
    -u AWS_ENDPOINT_URL -u AWS_DEFAULT_REGION AWS_ACCESS_KEY_ID="$KEY_ID" \
    AWS_SECRET_ACCESS_KEY="$KEY_SECRET" AWS_REGION="$REGION" HOSTNAME="$name" \
    "$PORTCULLIS_BIN" serve --config "$d/config.toml"
  wait_ready "$name" "http://127.0.0.1:$port/v2/"
  printf -v "BASE_$name" '%s' "http://127.0.0.1:$port"
  printf -v "MPORT_$name" '%s' "$mport"
}

# pull NAME REPO DIGEST KEY: the manifest, then a cold GET of the layer through replica NAME into
# $T/body; checks 200, size and sha256; R[KEY] = time_total, R[KEY_gets]/R[KEY_heads] = upstream
# GETs/HEADs of the layer meanwhile. Runs in the background if PULL_BG=1 (pid in PULL_PID).
pull_begin() {
  local b="BASE_$1"
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "${!b}/v2/$2/manifests/v1" || die "GET $2 manifest through $1 failed"
  P_GETS="$(upstream_count GET "$2" "$3")"; P_HEADS="$(upstream_count HEAD "$2" "$3")"
  curl -sS -o "$T/body" -w '%{http_code} %{size_download} %{time_total}\n' \
    "${!b}/v2/$2/blobs/$3" >"$T/pull.out" &
  PULL_PID=$!
}
pull_end() { # pull_end REPO DIGEST KEY
  local code size t got
  wait "$PULL_PID" || die "curl for $3 failed"
  read -r code size t <"$T/pull.out"
  [[ "$code" == 200 && "$size" == $((200 * MIB)) ]] || die "$3: status $code, $size bytes"
  got="sha256:$(sha256sum "$T/body" | cut -d' ' -f1)"; rm -f "$T/body"
  [[ "$got" == "$2" ]] || die "$3: wrong bytes, $got"
  R[$3]="$t"
  R[${3}_gets]=$(( $(upstream_count GET "$1" "$2") - P_GETS ))
  R[${3}_heads]=$(( $(upstream_count HEAD "$1" "$2") - P_HEADS ))
}
pull() { pull_begin "$1" "$2" "$3"; pull_end "$2" "$3" "$4"; }
# kill_when NODE MIB PID PROGRESS...: SIGKILL Garage NODE once the number PROGRESS prints grew by
# MIB; KILLED_AT says when. Returns 1 if PID (empty: none) ended first, or after 60 s.
kill_when() {
  local node=$1 mib=$2 pid=$3 base now t0 v="PID_$1"; shift 3
  base="$("$@")"; t0="$(date +%s.%N)"
  for _ in $(seq 3000); do
    [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null || return 1
    now="$("$@")"
    if (( now - base >= mib * MIB )); then
      kill -9 "${!v}"; wait "${!v}" 2>/dev/null || true
      KILLED_AT="$(( (now - base) / MIB )) MiB, $(secs_since "$t0") s in"
      log "killed $node at $KILLED_AT"
      return 0
    fi
    sleep 0.02
  done
  return 1
}
shared() { # shared NAME REGEX: replica NAME's shared-tier metric
  local v="MPORT_$1"; metric "${!v}" "$2"
}

bench() {
  local before t0
  log "a: A cold from the upstream, uploading to the bucket via g1"
  start_replica a g1
  t0="$(date +%s.%N)"
  pull a bench/big "$BIG" a
  s3_wait "$S3_g1" "$PREFIX/blobs/sha256/${BIG#sha256:}" 180 || die "A never put the blob in the bucket"
  R[a_landed]="$(secs_since "$t0")"

  log "b: B cold from the bucket via g2"
  start_replica b g2
  pull b bench/big "$BIG" b
  R[b_hits]="$(shared b '^portcullis_shared_hits_total.*kind="blob"')"

  log "c: C cold from the bucket via g3, g2 killed mid-pull"
  start_replica c g3
  pull_begin c bench/big "$BIG"
  if kill_when g2 "$KILL_AT_MIB" "$PULL_PID" shared c '^portcullis_shared_read_bytes'; then R[c_kill]="$KILLED_AT"; else R[c_kill]="never: the pull ended first"; fi
  pull_end bench/big "$BIG" c
  R[c_hits]="$(shared c '^portcullis_shared_hits_total.*kind="blob"')"
  R[c_errors]="$(shared c '^portcullis_shared_(errors|refused)')"
  # Garage notices a dead peer by its pings failing: give g1 up to 30 s to see g2 down.
  t0="$(date +%s.%N)"
  for _ in $(seq 150); do [[ "$(health)" == degraded ]] && break; sleep 0.2; done
  R[c_health]="$(health) $(secs_since "$t0") s after the pull ended"
  R[c_status]="$(garage g1 health 2>/dev/null | grep -E 'nodes up|quorum|healthy part' | tr -s ' ' | paste -sd';' | sed 's/;/; /g' || true)"

  log "d: g2 back; A cold big2 from the upstream, g2 killed mid-upload; C reads it with g2 down"
  mv "$T/g2.log" "$T/g2.killed.log"
  start_garage g2
  wait_health healthy 60
  before="$(bytes_under "$T/g1/data")"
  t0="$(date +%s.%N)"
  pull_begin a bench/big2 "$BIG2"
  if kill_when g2 "$KILL_AT_MIB" "" bytes_under "$T/g1/data"; then R[d_kill]="$KILLED_AT"; else R[d_kill]="never: the upload ended first"; fi
  pull_end bench/big2 "$BIG2" a2
  if s3_wait "$S3_g1" "$PREFIX/blobs/sha256/${BIG2#sha256:}" 180; then
    R[a2_landed]="$(secs_since "$t0")"
  else
    R[a2_landed]="never (180 s)"
  fi
  R[a2_written]="$(( ($(bytes_under "$T/g1/data") - before) / MIB ))"
  R[a_errors]="$(shared a '^portcullis_shared_(errors|refused)')"
  R[d_health]="$(health)"
  pull c bench/big2 "$BIG2" c2
  R[c2_hits]=$(( $(shared c '^portcullis_shared_hits_total.*kind="blob"') - R[c_hits] ))
  R[c2_errors]=$(( $(shared c '^portcullis_shared_(errors|refused)') - R[c_errors] ))
  R[b_errors]="$(shared b '^portcullis_shared_(errors|refused)')"
  R[objects]="$(s3 "$S3_g1/$BUCKET?list-type=2&prefix=$PREFIX%2Fblobs%2F" | grep -o '<Key>' | wc -l || true)"
}

report() {
  echo "## Garage: three nodes, replication factor 3, one killed mid-transfer"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r). ${R[garage_version]}: three nodes on loopback (lmdb, \`replication_factor = 3\`, \`consistency_mode = \"consistent\"\`, one zone each). Replicas A, B, C talk to g1, g2, g3's S3 endpoints; \`[cache.shared] timeout = \"$SHARED_TIMEOUT\"\`, cold_blobs = verify-first. Two 200 MiB random single-layer images on one upstream distribution."
  echo
  echo "| step | 200 MiB GET (s) | upstream GETs / HEADs of the layer | notes |"
  echo "|---|---|---|---|"
  echo "| a. A, empty cache and bucket: from the upstream | ${R[a]} | ${R[a_gets]} / ${R[a_heads]} | in the bucket ${R[a_landed]} s after the GET started |"
  echo "| b. B, empty cache: **from the bucket** (via g2) | ${R[b]} | ${R[b_gets]} / ${R[b_heads]} | ${R[b_hits]} shared-tier blob hit(s) |"
  echo "| c. C, empty cache: from the bucket (via g3), **g2 killed** mid-pull | ${R[c]} | ${R[c_gets]} / ${R[c_heads]} | killed at ${R[c_kill]} (C's bytes read from the bucket); ${R[c_hits]} hit(s), ${R[c_errors]} shared error(s); cluster then ${R[c_health]} |"
  echo "| d. A, big2 from the upstream, **g2 killed** mid-upload (via g1) | ${R[a2]} | ${R[a2_gets]} / ${R[a2_heads]} | killed at ${R[d_kill]} of the upload on g1's disk; in the bucket ${R[a2_landed]} s after the GET started; cluster then ${R[d_health]} |"
  echo "| d. C, big2 with g2 down: from the bucket (via g3) | ${R[c2]} | ${R[c2_gets]} / ${R[c2_heads]} | ${R[c2_hits]} hit(s), ${R[c2_errors]} shared error(s) |"
  echo
  echo "Every body sha256-checked against its digest, every GET checked for 200 and 200 MiB. After c, g1 reported: ${R[c_status]}."
  echo "Shared-tier errors/refusals over the run: A ${R[a_errors]}, B ${R[b_errors]}, C $(( R[c_errors] + R[c2_errors] )). Objects under \`$PREFIX/blobs/\` at the end: ${R[objects]}."
  echo
  echo "Conditional writes on Garage (\`PUT\`s on one key): ${R[cond_put]}."
}

# What the run must show (scripts/test runs it, so it fails the build otherwise): the replicas
# after A made no upstream GET of the layer, though a Garage node was killed mid-pull and
# mid-upload, and A's upload landed regardless.
check() {
  local k
  for k in b c c2; do
    [[ "${R[${k}_gets]}" == 0 ]] ||
      die "$k made ${R[${k}_gets]} upstream GET(s) of the layer: the bucket did not serve it"
  done
  [[ "${R[a2_landed]}" != never* ]] || die "A's upload, with g2 killed, never landed"
}

setup_garage
probe_conditional_put "$S3_g1"
setup_upstream
push_image bench/big BIG
push_image bench/big2 BIG2
bench
report
check
