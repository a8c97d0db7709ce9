#!/usr/bin/env bash
# Retake every time in README.md and docs/benchmarks.md, on a machine nobody else is using, then re-render.
#
#   benchmarks/regenerate_timings.sh [VICTIM_DIR] [DEFENSE_DIR]     (default: runs/victim runs/defense)
#
# Needs the victim (`mea train-victim --out runs/victim`), the defense (`mea defend fit --victim
# runs/victim --out runs/defense`) and ART (`pip install -e '.[bench]'`).  About an hour on 2 cores.
# Before each measurement it waits (up to 3 minutes) for the 1-minute load average to fall below
# 0.5, so that one benchmark's tail does not count against the next; each results file records the
# load it started at, and README.md flags the blocks measured on a busy machine.
#
# The accuracy-only files (defense_keys, attack_curves, adaptive_attackers) do not depend on the
# machine's load and are not rerun here; their commands are under their blocks in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VICTIM=${1:-runs/victim}
DEFENSE=${2:-runs/defense}

quiet() {
  for _ in $(seq 36); do
    awk '{ exit !($1 < 0.5) }' /proc/loadavg && return 0
    sleep 5
  done
  echo "warning: load average still $(cut -d' ' -f1 /proc/loadavg); measuring anyway" >&2
}

run() {
  quiet
  echo "+ $*" >&2
  "$@"
}

run python -m benchmarks.headline --victim "$VICTIM" --train-victim
run python -m benchmarks.clone_time_to_98 --victim "$VICTIM"
run python -m benchmarks.channels_last
run python -m benchmarks.seed_table --victim "$VICTIM"
run python -m benchmarks.detector_overhead --victim "$VICTIM" --defense "$DEFENSE"
run python -m benchmarks.art_timing --victim "$VICTIM"
run python -m benchmarks.run --victim "$VICTIM" --defense "$DEFENSE"
run python -m benchmarks.sweep_timings --victim "$VICTIM" --defense "$DEFENSE"
run python -m benchmarks.serve_throughput --victim "$VICTIM" --defense "$DEFENSE"
if [ -f benchmarks/load_fault.py ]; then
  run python -m benchmarks.load_fault --victim "$VICTIM" --defense "$DEFENSE"
fi
python -m benchmarks.readme  # the test suite timed next checks README.md against the files written so far
run python -m benchmarks.startup --before 7180e0b --repeat 10
run python -m benchmarks.quickstart
run python -m benchmarks.ci  # CI's whole script on a fresh clone of HEAD (commit first): about 12 minutes
python -m benchmarks.readme
python -m benchmarks.readme --check
