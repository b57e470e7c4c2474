#!/usr/bin/env bash
# Every GPU check in one call on the lent machine: the GPU tests, the `article` study on the GPU, ONNX Runtime
# CUDA against native torch, then the native benchmark.
#
#   run(command='SECONDS_FOR_ALL=560 bash bench/device_check.sh', carry=[".whl"], timeout_s=590)
#
# SECONDS_FOR_ALL (default 570) is shared out in that order: each part gets a fixed slice and the native
# benchmark what is left; PARTS (default "tests study onnx native") picks parts. Writes to $OUT: gpu.txt,
# test_gpu.txt, study_gpu.json and study_article_gpu.tgz (the study's own study.json/.md/.csv/.html),
# onnx_gpu.json, gpu_native.json and log.txt (every part's output). Each benchmark saves after each part, so a
# run cut short still returns what it measured. Extra arguments go to bench/gpu_native.py (default
# `--images=10000`).
# .whl/ must hold the cp312 wheels the machine lacks: `bash bench/fetch_device_wheels.sh` puts them there,
# and prints the calls that carry onnxruntime-gpu's pieces to /tmp/ortgpu/ first (without them the ONNX
# Runtime checks are skipped: the machine's own onnxruntime has no CUDA provider).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-/tmp/xfverify-device-out}"
total="${SECONDS_FOR_ALL:-570}"
parts=" ${PARTS:-tests study onnx native} "
mkdir -p "$out"
log="$out/log.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
started=$(date +%s)
left() { echo $(( total - ($(date +%s) - started) )); }
slice() { local want=$1 rest; rest=$(left); rest=$(( rest > 1 ? rest : 1 )); echo $(( want < rest ? want : rest )); }  # never 0: timeout 0 waits forever
if [ -s /tmp/ortgpu/name ]; then
    wheel="/tmp/ortgpu/$(cat /tmp/ortgpu/name)"
    cat /tmp/ortgpu/piece-* > "$wheel" && python3 -m pip install -q --no-index --no-deps --no-compile \
        --upgrade --target /tmp/site "$wheel" && echo "installed $(basename "$wheel")" | tee -a "$log"
fi
if [[ $parts == *" tests "* ]]; then
    timeout "$(slice 110)" bash "$repo/bench/device_run.sh" python3 -m pytest -q -p no:cacheprovider \
        "$repo/tests/test_gpu.py" "$repo/tests/test_torch_gpu_step.py" > "$out/test_gpu.txt" 2>&1
    echo "GPU tests: exit $? after $(( $(date +%s) - started )) s" | tee -a "$log"; tail -15 "$out/test_gpu.txt"
fi
if [[ $parts == *" study "* ]]; then
    budget=$(slice 230)
    timeout $(( budget + 30 )) bash "$repo/bench/device_run.sh" python3 "$repo/bench/study_gpu.py" \
        --out "$out/study_gpu.json" --budget-s "$budget" --keep /tmp/study_article_gpu >> "$log" 2>&1
    echo "article study: exit $? after $(( $(date +%s) - started )) s" | tee -a "$log"
    [ -d /tmp/study_article_gpu ] && tar czf "$out/study_article_gpu.tgz" -C /tmp/study_article_gpu .
fi
if [[ $parts == *" onnx "* ]]; then
    timeout "$(slice 120)" bash "$repo/bench/device_run.sh" python3 "$repo/bench/onnx_gpu.py" \
        --out "$out/onnx_gpu.json" >> "$log" 2>&1
    echo "ONNX Runtime benchmark: exit $? after $(( $(date +%s) - started )) s" | tee -a "$log"
fi
if [[ $parts == *" native "* ]]; then
    timeout "$(slice "$total")" bash "$repo/bench/device_run.sh" python3 "$repo/bench/gpu_native.py" \
        --out "$out/gpu_native.json" "${@:---images=10000}" >> "$log" 2>&1
    echo "native benchmark: exit $? after $(( $(date +%s) - started )) s" | tee -a "$log"
fi
tail -60 "$log"
