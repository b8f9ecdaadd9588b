# What the scale benchmarks (run.sh, garage.sh) share, on top of benches/e2e/lib.sh: a temp
# dir ($T, named after $1) removed on exit together with the processes in PIDS, and helpers.
# Sourced, with HERE set to this directory.
# shellcheck shell=bash
T="$(mktemp -d -t "portcullis-$1.XXXXXX")"
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

secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}'; }
metric() { # metric PORT REGEX: the sum of the portcullis metrics whose line matches REGEX
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re {s += $NF} END {printf "%d", s}'
}
