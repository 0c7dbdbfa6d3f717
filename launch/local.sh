#!/usr/bin/env bash
# Run one osteojax config on this machine with the project's virtual environment.
#   launch/local.sh configs/osteosim.py runs/osteosim [--config.data.scale=0.1 ...]
# To simulate N devices on a CPU host (pmap tests, debugging): XLA_DEVICES=4 launch/local.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
make -s setup
if [ -n "${XLA_DEVICES:-}" ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${XLA_DEVICES} ${XLA_FLAGS:-}"
fi
exec .venv/bin/python -m osteojax.main --config "$config" --workdir "$workdir" "$@"
