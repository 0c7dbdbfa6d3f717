#!/usr/bin/env bash
# Multi-host training: one process per host, all running this script with the same arguments.
# jax.distributed.initialize() finds the coordinator from the environment:
#   - TPU pod slice: nothing to set (run on every worker, e.g.
#       gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd osteojax && launch/multihost.sh CONFIG WORKDIR")
#   - SLURM: one task per node (srun --ntasks-per-node=1 launch/multihost.sh CONFIG WORKDIR); JAX reads
#     SLURM_* variables. Elsewhere set COORDINATOR=host:port, NUM_PROCESSES and PROCESS_ID.
# WORKDIR must be on storage every host sees (orbax writes one checkpoint cooperatively).
# The global batch (config.batch_size) is split over all devices of all hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}
shift 2
exec .venv/bin/python -m osteojax.main --config "$config" --workdir "$workdir" --multihost "$@"
