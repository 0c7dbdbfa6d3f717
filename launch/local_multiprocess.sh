#!/usr/bin/env bash
# N processes on this machine, as N hosts would run: for testing the multi-host path.
#   launch/local_multiprocess.sh N CONFIG WORKDIR [overrides...]
# Each process gets DEVICES_PER_PROCESS simulated CPU devices (default 2) and its own log
# WORKDIR/process_<i>.log; they meet at 127.0.0.1:$PORT (default 12355) through jax.distributed
# with the gloo CPU collectives. Exits with the first non-zero status of the processes.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: launch/local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
config=${2:?usage: launch/local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
workdir=${3:?usage: launch/local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
shift 3
mkdir -p "$workdir"
port=${PORT:-12355}
devices=${DEVICES_PER_PROCESS:-2}
pids=()
for ((i = 0; i < n; i++)); do
  COORDINATOR=127.0.0.1:$port NUM_PROCESSES=$n PROCESS_ID=$i JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}" \
    .venv/bin/python -m osteojax.main --config "$config" --workdir "$workdir" --multihost "$@" \
    > "$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  s=0
  wait "${pids[$i]}" || s=$?
  if [ "$s" -ne 0 ]; then
    echo "error: process $i of $n exited with status $s; see $workdir/process_$i.log" >&2
    [ "$status" -eq 0 ] && status=$s
  fi
done
exit "$status"
