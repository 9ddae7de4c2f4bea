#!/usr/bin/env bash
# Instructions per lock+unlock cycle, counted by valgrind's callgrind (repeatable, unlike time).
#
#   Benchmarks/Profiling/profile.sh [NODES] [LOW] [HIGH]      (defaults: 5 200 400)
#
# Starts NODES redis-server processes on free 127.0.0.1 ports (outside valgrind), runs
# CycleProfile under callgrind for each workload (WORKLOADS, default: the whole ladder from floor
# to cycle, see Sources/CycleWorkloads) with LOW and HIGH iterations, and prints
# (total(HIGH) - total(LOW)) / (HIGH - LOW): the whole process's instructions per cycle, I/O
# threads included, start-up and connects cancelled out. The callgrind files of the HIGH runs
# stay in $OUT (default /tmp/redlock-callgrind) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-5}
LOW=${2:-200}
HIGH=${3:-400}
OUT=${OUT:-/tmp/redlock-callgrind}
mkdir -p "$OUT"

swift build -c release --product CycleProfile >/dev/null
# valgrind 3.19 cannot read Swift's DWARF 5 debug info: profile a stripped copy (symbols stay).
cp .build/release/CycleProfile "$OUT/CycleProfile"
strip --strip-debug "$OUT/CycleProfile"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ports=()
for _ in $(seq "$NODES"); do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
        --logfile "$OUT/redis-$port.log" &
    pids+=($!)
    ports+=("$port")
done
for port in "${ports[@]}"; do
    for _ in $(seq 50); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
done

total() {
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$1-$2.out" "$OUT/CycleProfile" "$1" "$2" "${ports[@]}" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-26s %14s %14s %14s\n' workload "total($LOW)" "total($HIGH)" "instr/cycle"
for workload in ${WORKLOADS:-floor floor+tasks floor+tasks+budget cycle-plain cycle}; do
    low=$(total "$workload" "$LOW")
    high=$(total "$workload" "$HIGH")
    printf '%-26s %14s %14s %14s\n' "$workload" "$low" "$high" $(( (high - low) / (HIGH - LOW) ))
done
echo "callgrind files: $OUT/*-$HIGH.out (callgrind_annotate --inclusive=yes FILE | swift demangle --simplified)"
