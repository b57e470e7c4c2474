#!/usr/bin/env bash
# Every GPU check in one call on the lent machine: the GPU tests, ONNX Runtime CUDA against native torch,
# then the native benchmark.
#
#   run(command='bash bench/device_check.sh', carry=[".whl"], timeout_s=590)
#
# Writes $OUT/test_gpu.txt, $OUT/onnx_gpu.json and $OUT/gpu_native.json (each benchmark saves after each
# part, so a run cut short by the time limit still returns what it measured). Extra arguments go to
# bench/gpu_native.py; default `--images=20000` (fits the call's 10 minutes with the rest).
# .whl/ must hold the cp312 wheels the machine lacks: `bash bench/fetch_device_wheels.sh` puts them there,
# and prints the calls that carry onnxruntime-gpu's pieces to /tmp/ortgpu/ first (without them the ONNX
# Runtime checks are skipped: the machine's own onnxruntime has no CUDA provider).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-/tmp/xfverify-device-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
started=$(date +%s)
if [ -s /tmp/ortgpu/name ]; then
    wheel="/tmp/ortgpu/$(cat /tmp/ortgpu/name)"
    cat /tmp/ortgpu/piece-* > "$wheel" && python3 -m pip install -q --no-index --no-deps --no-compile \
        --upgrade --target /tmp/site "$wheel" && echo "installed $(basename "$wheel")"
fi
timeout 150 bash "$repo/bench/device_run.sh" python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_gpu.py" \
    "$repo/tests/test_torch_gpu_step.py" > "$out/test_gpu.txt" 2>&1
echo "GPU tests: exit $? after $(( $(date +%s) - started )) s"; tail -15 "$out/test_gpu.txt"
timeout 170 bash "$repo/bench/device_run.sh" python3 "$repo/bench/onnx_gpu.py" --out "$out/onnx_gpu.json" \
    > "$out/onnx_gpu.log" 2>&1
echo "ONNX Runtime benchmark: exit $? after $(( $(date +%s) - started )) s"; tail -8 "$out/onnx_gpu.log"
left=$(( 570 - ($(date +%s) - started) ))
timeout "$left" bash "$repo/bench/device_run.sh" python3 "$repo/bench/gpu_native.py" --out "$out/gpu_native.json" \
    "${@:---images=20000}" \
    > "$out/gpu_native.log" 2>&1
echo "benchmark: exit $? after $(( $(date +%s) - started )) s"; tail -40 "$out/gpu_native.log"
