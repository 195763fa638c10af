#!/usr/bin/env bash
# Prepare, on a machine with the package registry, what bench/gpu_suite.py needs on a GPU host that has
# PyTorch (Python 3.12) but no internet: gsplat and pykdtree wheels in .whl/ and the EndoNeRF pulling clip in
# .devdata/ (both git-ignored; carry them: about 61 MiB of the device tool's 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${SURG3D_DATA:-../shared/data}/endonerf/pulling_soft_tissues"
[ -f "$data/poses_bounds.npy" ] || { echo "gpu_prepare: no EndoNeRF clip at $data (set SURG3D_DATA)" >&2; exit 2; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl gsplat==1.5.3 pykdtree==1.4.3
mkdir -p .devdata
rm -rf .devdata/pulling_soft_tissues
cp -r "$data" .devdata/
du -sh .whl .devdata
