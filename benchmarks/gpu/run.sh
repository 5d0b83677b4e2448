#!/usr/bin/env bash
# kdg's GPU run, in one go (benchmarks/gpu/README.md). In the repository root:
#
#   on the bare GPU machine (wheels from benchmarks/gpu/prepare.sh in .whl/):
#       bash benchmarks/gpu/run.sh [drive.py options, e.g. --budget 450]
#   here, on the CPU, the dry run with the small CNN:
#       PYTHON=/path/to/venv/bin/python bash benchmarks/gpu/run.sh --small
#
# Installs the wheels of .whl/ (if any) into /tmp/kdg-site, puts the
# repository and them on PYTHONPATH (kdg is not pip-installed), prints the
# environment, checks that JAX and PyTorch see the GPU (not with --small),
# then runs benchmarks/gpu/drive.py: its parts write their tables under $OUT
# (default ./gpu-out): SUMMARY.md, check_steps.json, bench.json, gga.json,
# and this script's whole output in log.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-out}
PYTHON=${PYTHON:-python3}
SMALL=0
for arg in "$@"; do [ "$arg" = "--small" ] && SMALL=1; done
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "== kdg GPU run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), args: $*"
START=$SECONDS

SITE=
if ls .whl/*.whl >/dev/null 2>&1 && [ "$SMALL" = 0 ]; then
  SITE=/tmp/kdg-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "error: installing the wheels of .whl/ failed" >&2; exit 2; }
  echo "installed: $(ls .whl | tr '\n' ' ')"
fi
export PYTHONPATH="$REPO${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# the parent process imports Keras without computing; no TensorFlow there
export KERAS_BACKEND=${KERAS_BACKEND:-jax}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" - "$SMALL" <<'EOF'
import importlib, platform, sys
small = sys.argv[1] == "1"
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "keras", "keras_hub", "jax", "jaxlib", "torch", "tensorflow", "pydantic", "click"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"{name}: not importable ({type(error).__name__})")
import kdg
print("kdg from", kdg.__file__)
problems = []
import jax
print("jax devices:", jax.devices())
if not small and jax.default_backend() != "gpu":
    problems.append(f"JAX sees no GPU (default backend {jax.default_backend()!r})")
import torch
print("torch cuda:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if not small and not torch.cuda.is_available():
    problems.append("PyTorch sees no GPU (torch.cuda.is_available() is False)")
if problems:
    sys.exit("error: " + "; ".join(problems) + ". Nothing was measured.")
EOF
status=$?
if [ $status -ne 0 ]; then
  echo "error: the environment check failed (exit $status); see above" >&2
  exit $status
fi
echo "== setup took $((SECONDS - START)) s"

"$PYTHON" benchmarks/gpu/drive.py --out "$OUT" "$@"
status=$?
echo "== drive.py exit $status; $((SECONDS - START)) s in all"
cat "$OUT/SUMMARY.md" 2>/dev/null
rm -f "$OUT"/*.tmp
exit $status
