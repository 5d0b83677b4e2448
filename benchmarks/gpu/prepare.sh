#!/usr/bin/env bash
# Run HERE (needs the package registries), in the repository root:
#     bash benchmarks/gpu/prepare.sh
# Downloads into .whl/ (ignored by .gitignore) the wheels that kdg needs on the
# bare GPU machine and that its image lacks, for CPython 3.12 on manylinux
# x86_64, and checks that they stay under 50 MiB. benchmarks/gpu/run.sh
# installs them there with `pip install --no-index --no-deps --target`.
#
# The GPU image (/work/.library/device/KINDS.md) has Python 3.12, CUDA JAX
# 0.11 and CUDA PyTorch 2.11, numpy, absl-py, h5py, ml-dtypes, packaging,
# rich, click, pyyaml, regex, tokenizers, sentencepiece, typing-extensions,
# but no Keras and no TensorFlow. What `import keras; import kdg` and
# `kdg bench` (ResNet-50 through keras-hub) need beyond that:
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
WHEELS=(
  keras==3.15.1            # the Keras kdg is tested with (keras>=3.15,<3.16)
  namex==0.1.0             # keras' needs
  optree==0.20.0
  keras-hub==0.32.0        # the ResNets (kdg.models); its tensorflow-text, kagglehub are not imported
  pydantic==2.14.4         # kdg.recipes (the CLI imports it)
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0   # pydantic needs a recent one; the image's may be older
)
PYTHON=${PYTHON:-python3}
mkdir -p .whl
rm -f .whl/*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any \
  -d .whl "${WHEELS[@]}"
ls -1 .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "wheels: $((total / 1024)) KiB in $(ls .whl/*.whl | wc -l) files"
if [ "$total" -gt $((50 * 1024 * 1024)) ]; then
  echo "error: the wheels take more than 50 MiB; the working tree may carry 64 MiB in all" >&2
  exit 1
fi
