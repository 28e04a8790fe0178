#!/usr/bin/env bash
# Issue 7's benchmark in one command: the reactor against graphile-worker and
# the set-based floor, on one throwaway PostgreSQL, written to BENCHMARKS.md.
# Also issue 12's "history" workload: sweeps and polls over 10k, 100k and 1M
# handled rows with nothing pending (--workloads history --history-rows …).
# Issue 14's "wal" workload is opt-in (--workloads wal, or add it to a list):
# two durable clusters of its own (wal_level logical and replica), one
# reactor at a time; its section of the report lists the issue's targets.
# Issue 22's "work" workload is opt-in too (--workloads work): writers while
# the reactor works an own table, notify against poll mode (about half an
# hour at 1, 8 and 32 writers: full-speed writers leave minutes of backlog).
#
#   bench/run.sh                 # the full run (about 20-30 minutes on 2 cores)
#   bench/run.sh --ci            # ~2,000 rows, few samples: proves the harness works
#   bench/run.sh --durable       # every workload with fsync, synchronous_commit and
#                                # full_page_writes on (the cluster is otherwise fast, not durable)
#   bench/run.sh --fav-rows 20000 --samples 200   # any flag of the bench target
#
# Every flag (or BENCH_* variable) is listed in benches/reactor_vs_peer/cli.rs
# (or: cargo bench --bench reactor_vs_peer -- --help). BENCH_PEER=none skips
# the peer. Builds go to CARGO_TARGET_DIR when it is set (else target/).
#
# The peer (npm package graphile-worker 0.18) is installed into a scratch
# folder made with mktemp, outside the repository, and deleted at the end;
# its code is never committed. Needs: cargo, the PostgreSQL server binaries
# (initdb, postgres, pgbench), and for the peer node + npm.
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0
args=()
for a in "$@"; do
  case "$a" in
    --ci) ci=1 ;;
    *) args+=("$a") ;;
  esac
done
case "${BENCH_CI:-}" in 1 | true | yes) ci=1 ;; esac

log() { echo "bench: $*" >&2; }
target_dir="${CARGO_TARGET_DIR:-target}"

# --- the reactor ------------------------------------------------------------
if [ "$ci" = 1 ]; then
  # CI has the debug build from `cargo test` already; timings do not matter.
  log "building the reactor (debug, CI mode)"
  cargo build --bin reactor
  export BENCH_REACTOR_BIN="${BENCH_REACTOR_BIN:-$target_dir/debug/reactor}"
  bench=(cargo bench --profile dev --bench reactor_vs_peer -- --ci)
else
  log "building the reactor (release)"
  cargo build --release --bin reactor
  export BENCH_REACTOR_BIN="${BENCH_REACTOR_BIN:-$target_dir/release/reactor}"
  bench=(cargo bench --bench reactor_vs_peer --)
fi

# --- the peer ---------------------------------------------------------------
peer_dir=""
cleanup() { if [ -n "$peer_dir" ]; then rm -rf "$peer_dir"; fi; }
trap cleanup EXIT

if [ "${BENCH_PEER:-}" = none ]; then
  log "peer skipped (BENCH_PEER=none)"
elif ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$ci" = 1 ]; then
    log "node/npm not found: the peer is skipped in CI mode"
  else
    log "node and npm are needed for the peer (or set BENCH_PEER=none)"
    exit 1
  fi
else
  peer_dir="$(mktemp -d "${TMPDIR:-/tmp}/reactor-bench-peer.XXXXXX")"
  log "installing graphile-worker@0.18 into $peer_dir"
  if ! (cd "$peer_dir" && npm init -y >/dev/null 2>&1 &&
    npm install --no-audit --no-fund --loglevel=error graphile-worker@0.18 >npm-install.log 2>&1); then
    cat "$peer_dir/npm-install.log" >&2 || true
    if [ "$ci" = 1 ]; then
      log "installing the peer failed: skipped in CI mode"
      rm -rf "$peer_dir"
      peer_dir=""
    else
      exit 1
    fi
  fi
fi

if [ -n "$peer_dir" ]; then
  # The peer's side: graphile-worker doing the reactor's two SQL handlers.
  # The triggers that enqueue its jobs are created by the bench (PEER_TRIGGERS).
  cat >"$peer_dir/runner.mjs" <<'JS'
// node runner.mjs migrate|work|version <default|batched> <connection string>
import { run, runMigrations, Logger } from "graphile-worker";
import { readFileSync } from "node:fs";

const [cmd, mode, connectionString] = process.argv.slice(2);

// Warnings and errors only: no line per job (the reactor logs none either).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`[graphile-worker ${level}] ${message}`);
  }
});

if (cmd === "version") {
  const pkg = new URL("./node_modules/graphile-worker/package.json", import.meta.url);
  console.log(JSON.parse(readFileSync(pkg, "utf8")).version);
  process.exit(0);
}
if (cmd === "migrate") {
  await runMigrations({ connectionString, logger });
  process.exit(0);
}

// The same effects as the reactor's handlers, with the same ON CONFLICT rules.
const FAVORITES = `insert into public.collections (owner_id, name, is_default_favorites)
  values ($1, 'My Favorites', true)
  on conflict (owner_id) where is_default_favorites do nothing`;
const USAGE = `insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
  select j.owner_id, 'generation_debit', 1, jsonb_build_object('jobId', j.id), j.id
  from public.generation_jobs j where j.id = $1 and j.status = 'succeeded'
  on conflict (job_id) where kind = 'generation_debit' do nothing`;
const taskList = {
  favorites: async (payload, helpers) => {
    await helpers.query(FAVORITES, [payload.id]);
  },
  usage: async (payload, helpers) => {
    await helpers.query(USAGE, [payload.id]);
  },
};

// default: the library's defaults. batched: graphile-worker's performance
// page configuration (local queue of 500, batched completion).
const presets = {
  default: {},
  batched: {
    concurrentJobs: 24,
    maxPoolSize: 25,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
if (cmd !== "work" || !(mode in presets)) {
  console.error("usage: node runner.mjs migrate|work|version <default|batched> <connection string>");
  process.exit(2);
}
const runner = await run({
  connectionString,
  taskList,
  logger,
  noHandleSignals: true,
  preset: { worker: presets[mode] },
});
let stopping = false;
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    if (stopping) return;
    stopping = true;
    await runner.stop();
    process.exit(0);
  });
}
await runner.promise;
JS
  export BENCH_PEER_DIR="$peer_dir"
else
  unset BENCH_PEER_DIR
fi

# --- the run ----------------------------------------------------------------
log "running: ${bench[*]} ${args[*]:-}"
"${bench[@]}" ${args[@]+"${args[@]}"}
