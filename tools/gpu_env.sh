# Sourced by the GPU scripts: $OUT, $PY, PYTHONPATH with this checkout, and the missing Python
# packages from wheels. A GPU machine with its own Python, JAX and flax (but no SimpleITK,
# ml-collections, ott-jax or jaxopt) gets them as wheels in $WHEELS, downloaded where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 -d .whl SimpleITK==2.5.7 ml-collections==1.1.0 \
#       ott-jax==0.6.0 jaxopt==0.8.5
# Then imports what the tools need, or stops with the error.
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}     # the tools import osteojax from here
if [ -n "${WHEELS:-}" ]; then
  rm -rf /tmp/site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl || return 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
$PY -c "import flax, optax, jax, orbax.checkpoint; from osteojax.diagnosis import pretrain, finetune
from osteojax.align import register
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" \
  || return 1
