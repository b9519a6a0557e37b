#!/usr/bin/env bash
# Everything a session with a GPU runs, in two device calls of < 10 minutes each (device tool:
# run(command="bash bench/gpu_session.sh check", carry=[".whl"]), then the same with "throughput").
# Installs the kit from bench/gpu_kit.sh, then writes each step's output to $OUT (or ./gpu-out).
#   check:      bench/gpu_check.py (GPU labels == CPU labels), then gpu_throughput.py at 16384^2
#   throughput: landcover_throughput.py (4 scenes, 2 and 4 in flight), end_to_end.py CT 300x512x512
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
step() { local name=$1; shift; echo "== $name: $*"; "$@" 2>&1 | tee "$OUT/$name.log"; echo "== $name exit ${PIPESTATUS[0]}"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
case "${1:-check}" in
  check)
    step check python3 bench/gpu_check.py --device cuda
    step throughput-2048 python3 bench/gpu_throughput.py --device cuda --side 16384
    step throughput-1024 python3 bench/gpu_throughput.py --device cuda --side 16384 --block 1024 --models segformer-b0
    ;;
  throughput)
    step landcover-p2 python3 bench/landcover_throughput.py --device cuda --side 16384 --scenes 4 --parallel 2
    step landcover-p4 python3 bench/landcover_throughput.py --device cuda --side 16384 --scenes 4 --parallel 4
    step ct python3 bench/end_to_end.py --device cuda --only volume --warm-up --ct 300 512 512
    ;;
  *) echo "usage: bench/gpu_session.sh check|throughput"; exit 2 ;;
esac
