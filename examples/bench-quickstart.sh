#!/usr/bin/env bash
# Measures the quickstarts for docs/quickstart-bench.md: median of RUNS runs
# (default 5) of each command, wall time of the whole process.
#
#   examples/bench-quickstart.sh [RUNS]
#
# Needs: cargo build --release -p quickstart -p daisy-cli (CARGO_TARGET_DIR
# or ./target), and pip install -r examples/quickstart-python/requirements.txt.
set -euo pipefail

runs=${1:-5}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
quickstart=$target/release/quickstart
daisy=$target/release/daisy
py=$repo/examples/quickstart-python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# median of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# wall seconds of one command (its output goes to $tmp/last.out); its CPU
# seconds (user + sys, children included) are appended to $tmp/cpu
wall() {
    /usr/bin/time -f "%e %U %S" -o "$tmp/time" "$@" > "$tmp/last.out" 2>&1 \
        || { cat "$tmp/last.out"; echo "FAILED: $*" >&2; exit 1; }
    awk '{ printf "%.2f\n", $2 + $3 }' "$tmp/time" >> "$tmp/cpu"
    awk '{ print $1 }' "$tmp/time"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "== Rust quickstart: $quickstart (process wall; the times it prints)"
: > "$tmp/rust_wall"; : > "$tmp/rust_blockwise"; : > "$tmp/rust_serial"; : > "$tmp/cpu"
for _ in $(seq "$runs"); do
    wall "$quickstart" >> "$tmp/rust_wall"
    awk '/^blockwise/ { print $(NF-2) }' "$tmp/last.out" >> "$tmp/rust_blockwise"
    awk '/^serial/ { print $(NF-1) }' "$tmp/last.out" >> "$tmp/rust_serial"
done
echo "process wall (input + blockwise + serial): $(median < "$tmp/rust_wall") s  [$(tr '\n' ' ' < "$tmp/rust_wall")]"
echo "process CPU (user + sys):                  $(median < "$tmp/cpu") s"
echo "blockwise (printed):                        $(median < "$tmp/rust_blockwise") s  [$(tr '\n' ' ' < "$tmp/rust_blockwise")]"
echo "serial (printed):                           $(median < "$tmp/rust_serial") s  [$(tr '\n' ' ' < "$tmp/rust_serial")]"

for mode in nditer vectorised; do
    if [ "$mode" = nditer ]; then pipeline=pipeline-nditer.toml; flag=--nditer; else pipeline=pipeline.toml; flag=; fi
    echo "== Python quickstart, $mode: daisy run $pipeline vs python3 serial.py $flag"
    : > "$tmp/daisy"; : > "$tmp/serial"; : > "$tmp/daisy_cpu"; : > "$tmp/serial_cpu"; : > "$tmp/serial_inner"
    for i in $(seq "$runs"); do
        (cd "$py" && python3 prepare.py > /dev/null)
        : > "$tmp/cpu"
        wall "$daisy" run "$py/$pipeline" --in-process --no-progress --state-dir "$tmp/state-$mode-$i" --log-dir "$tmp/logs-$mode-$i" >> "$tmp/daisy"
        cat "$tmp/cpu" >> "$tmp/daisy_cpu"; : > "$tmp/cpu"
        grep -q '"ok": true' "$py/data/result.json" || { echo "reduce did not check out" >&2; exit 1; }
        wall python3 "$py/serial.py" $flag >> "$tmp/serial"
        cat "$tmp/cpu" >> "$tmp/serial_cpu"
        awk '/^serial/ { print $(NF-1) }' "$tmp/last.out" >> "$tmp/serial_inner"
    done
    blockwise=$(median < "$tmp/daisy"); serial=$(median < "$tmp/serial")
    echo "daisy run (2 square workers): $blockwise s  [$(tr '\n' ' ' < "$tmp/daisy")]"
    echo "  CPU (user + sys, workers included): $(median < "$tmp/daisy_cpu") s"
    echo "serial (one process):         $serial s  [$(tr '\n' ' ' < "$tmp/serial")]"
    echo "  CPU (user + sys): $(median < "$tmp/serial_cpu") s; work after imports (printed): $(median < "$tmp/serial_inner") s"
    echo "speedup: $(echo "scale=2; $serial / $blockwise" | bc)"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
