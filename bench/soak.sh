#!/usr/bin/env bash
# The chaos soak of issue 11, long version: reactor processes, a PostgreSQL that
# is crashed and restarted, a loopback Replicate with webhooks, a client
# workload and seeded faults; then every invariant is checked from table state.
#
#   bench/soak.sh                          # 30 minutes, random seed, 2 reactors
#   bench/soak.sh --minutes 5 --seed 42 --reactors 3
#
# It runs the `soak` test target (tests/soak/) in release mode. The last line
# it prints is the summary; it exits non-zero when anything was lost, doubled,
# left in reactor.handler_state, or a reactor exited on its own. Needs cargo
# and the PostgreSQL server binaries (initdb, postgres, pg_ctl).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
seed=""
reactors=2
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --reactors) reactors=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$minutes$reactors" in
  *[!0-9]*) echo "soak: --minutes and --reactors take whole numbers" >&2; exit 2 ;;
esac

REACTOR_SOAK_SECONDS=$((minutes * 60)) REACTOR_SOAK_SEED="$seed" REACTOR_SOAK_REACTORS="$reactors" \
  cargo test --release --test soak -- --nocapture
