#!/usr/bin/env bash
# Wheels that the lent GPU machine lacks, for its Python 3.12 (it has torch, transformers, numpy,
# scipy, xarray, pandas, matplotlib, rich, pyyaml, psutil, safetensors, pytest, but no network).
# Run here, where pip reaches PyPI:   bash bench/gpu_kit.sh      -> .whl/ (git-ignored, ~61 MB)
# Then on the device, carrying .whl:  bash bench/gpu_session.sh check|throughput
# Left out to stay under the device tool's 64 MiB per call: pyogrio/geopandas (regions; the GPU
# benchmarks run without regions), exactextract (zonal statistics over regions), prefect, pydicom.
# numcodecs 0.17 (Python >= 3.12 only) instead of 0.16: 1.4 MB instead of 9.3 MB, same codecs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  monai==1.6.1 nibabel==5.4.2 connected-components-3d==4.1.1 \
  zarr==3.1.6 numcodecs==0.17.1 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 rioxarray==0.19.0 \
  pyproj==3.7.2 shapely==2.2.0 dask==2026.8.0 importlib_metadata==10.2.0 lazy_importer==0.1.0
du -sh .whl
