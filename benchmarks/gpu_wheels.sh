#!/usr/bin/env bash
# Wheels of mtv's dependencies that the lent GPU machine's image lacks (it has torch, numpy,
# typer, rich, pyyaml, pillow, fsspec, pyarrow, tokenizers, matplotlib, transformers, scipy, h5py,
# but not these), downloaded HERE into .whl/ for Python 3.12 on x86_64 Linux, at the versions
# this machine's environment runs. Carry `.whl` in the device call; gpu_check.sh installs them.
#
#   bash benchmarks/gpu_wheels.sh && grep -q '^/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
packages=(pydantic pydantic_core annotated-types typing-inspection
          zarr numcodecs donfig google-crc32c torchdata torchjd)
mkdir -p .whl
for name in "${packages[@]}"; do
  version=$("$python" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  spec=$name${version:+==$version}
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$spec"
done
# polars 2's runtime wheel alone is 54 MB and a device call carries 64 MiB in all: polars 1.30
# (36 MB, one wheel) keeps the carry at about 50 MB; mtv needs polars >= 1.0.
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "polars==1.30.0"
du -bc .whl/* | tail -1
