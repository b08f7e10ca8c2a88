#!/bin/sh
# The GPU check from a bundle of `make gpu-bundle DIR=<bundle>` (docs/gpu.md). From the repository root:
#
#     sh <bundle>/gpu_check.sh OUT [gpu_check arguments]
#
# Needs python3 with torch, torchvision, lightning, torchmetrics and scikit-learn (any versions the
# project runs on). The bundle's wheels go into a scratch folder of their own on PYTHONPATH (this
# Python's site-packages stay untouched), the CIFAR-10 archive is unpacked there too, and OUT receives
# only gpu_check.json and gpu_check.txt. The scratch folder is removed at the end; nothing else is
# written (no make, no install into this Python).
set -eu
OUT=${1:?usage: sh BUNDLE/gpu_check.sh OUT [gpu_check arguments]}
shift
BUNDLE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
if "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check \
    --target "$SCRATCH/site" "$BUNDLE"/*.whl
else  # a pure-Python wheel is a zip of its site-packages files
  for w in "$BUNDLE"/*.whl; do "$PY" -m zipfile -e "$w" "$SCRATCH/site"; done
fi
if [ -f "$BUNDLE/cifar10.tar.gz" ]; then
  mkdir -p "$SCRATCH/cifar10"
  tar -xzf "$BUNDLE/cifar10.tar.gz" -C "$SCRATCH/cifar10"
  set -- --data "$SCRATCH/cifar10" "$@"
fi
# byte code, temp files and the caches of torch (Inductor, Triton, CUDA's kernel JIT) and Matplotlib go
# to the scratch folder too: nothing lands in the repository, $HOME or the temp dir outside it
mkdir -p "$SCRATCH/tmp"
TMPDIR="$SCRATCH/tmp" PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
  PYTHONPYCACHEPREFIX="$SCRATCH/pycache" \
  TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton" \
  CUDA_CACHE_PATH="$SCRATCH/nv" MPLCONFIGDIR="$SCRATCH/mpl" XDG_CACHE_HOME="$SCRATCH/cache" \
  "$PY" -m benchmarks.gpu_check --out "$OUT" --workdir "$SCRATCH/work" "$@"
