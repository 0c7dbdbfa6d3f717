#!/usr/bin/env bash
# The accelerator checks in one call: paper-size train steps (ResNet34-3D, 3-D Swin-T, ViT-B,
# nnFormer's encoder at 64^3, batch 32) beside the CPU default's slim step, texture maps against pyradiomics' maps,
# the all-pairs correlation and registration at the paper's resolution. Each benchmark prints
# its JSON; all of it is written under $OUT (default results/gpu). Every step has its own time
# limit so that one slow compile leaves the others' numbers.
#
#   bash tools/gpu_checks.sh               # the environment as tools/gpu_env.sh sets it up
#   WHEELS=.whl bash tools/gpu_checks.sh   # first installs the wheels in .whl/ to /tmp/site
#
# The texture step compares with pyradiomics maps saved by
#   python tools/bench_texture.py --n32 16 --n64 4 --save-reference .gpu/texture_ref.npz
# on a machine that has pyradiomics (TEXTURE_REF names the file; skipped when it is absent).
set -u
source "$(dirname "$0")/gpu_env.sh" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null
step() {   # step NAME SECONDS COMMAND...: run with a limit, JSON to $OUT/NAME.json
  local name=$1 limit=$2; shift 2
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac   # ONLY="a b": these steps
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
  if [ $rc -ne 0 ]; then tail -c 1200 "$OUT/$name.err"; fi
  tail -c 1500 "$OUT/$name.json"; echo
}
step train_paper 260 $PY tools/bench_train_step.py --sizes 64 --batch 32 --widths full \
  --conv lax --encoders resnet3d swin3d vit3d nnformer3d --steps 10
step train_slim 50 $PY tools/bench_train_step.py --sizes 32 --batch 32 --widths slim \
  --conv lax --steps 10
step correlation 50 $PY tools/bench_correlation.py --sizes 10,32,100 --skip-loop-above 10
step registration 90 $PY tools/bench_registration.py --data bodysim --scales 1 4 --pairs 6
REF=${TEXTURE_REF:-.gpu/texture_ref.npz}
if [ -f "$REF" ]; then
  step texture 60 $PY tools/bench_texture.py --n32 16 --n64 4 --repeats 5 --reference "$REF"
else
  echo "== texture: skipped, no pyradiomics reference at $REF"
fi
