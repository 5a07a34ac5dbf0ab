#!/usr/bin/env bash
# The cpu-mini-long study (docs/scaling/cpu-mini-long/), continued on this machine.
#
#   scripts/cpu_mini_long.sh run [OUT]       train and evaluate what is left, one chain per core
#   scripts/cpu_mini_long.sh collect [OUT]   copy finished runs' records and the rows into docs/
#
# `run` first seeds OUT (default runs/cpu-mini-long) with the records committed in
# docs/scaling/cpu-mini-long/runs/, so that `fluid scale` skips those runs (after checking them
# against the current code and data), then runs two `fluid scale` chains side by side, one
# thread each: the continuous-token runs and the discrete-token runs. An interrupted run
# resumes from its latest checkpoint when the same command is run again. Start it in the
# background (nohup ... &); each chain logs to OUT/log-<token type>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
OUT=${2:-runs/cpu-mini-long}
DOCS=docs/scaling/cpu-mini-long
FLUID=${FLUID:-.venv/bin/fluid}
export HF_HUB_OFFLINE=1

runs_of() {  # the sweep's run names of one token type
    "$FLUID" scale --sweep cpu-mini-long --list | awk -v t="variant=$1-" '$1 ~ "^" t {print $1}'
}

case "$MODE" in
run)
    for rec in "$DOCS"/runs/*/run.json; do
        dest="$OUT/runs/$(basename "$(dirname "$rec")")"
        if [ ! -f "$dest/run.json" ]; then mkdir -p "$dest" && cp "$rec" "$dest/"; fi
    done
    pids=()
    for type in continuous discrete; do
        # shellcheck disable=SC2046  # one argument per run name
        "$FLUID" scale --sweep cpu-mini-long --out "$OUT" --threads 1 --only $(runs_of "$type") \
            > "$OUT/log-$type.txt" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    exit $status
    ;;
collect)
    for rec in "$OUT"/runs/*/run.json; do
        grep -q '"status": "done"' "$rec" || continue
        dest="$DOCS/runs/$(basename "$(dirname "$rec")")"
        mkdir -p "$dest" && cp "$rec" "$dest/"
    done
    cp "$OUT/results.csv" "$OUT/results.json" "$DOCS/"
    echo "copied the finished runs' records and the rows into $DOCS (commit them)"
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
