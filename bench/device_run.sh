#!/usr/bin/env bash
# Run a command on the lent GPU machine with xfverify importable, without installing it.
#
#   bash bench/device_run.sh python3 "$PWD/bench/gpu_native.py" --out "$OUT/gpu_native.json"
#   bash bench/device_run.sh python3 -m pytest -q "$PWD/tests/test_gpu.py" -p no:cacheprovider
#
# That machine has torch, torchvision, timm, OpenCV, Pillow, click, rich, xxhash and scipy, but not
# pydantic: carry its wheels (cp312) in .whl/ (see .git/info/exclude) with `carry: [".whl"]`.
# The command runs from /tmp: from the repository root, ./xfverify (without its mapped subpackages)
# would shadow the assembled package on PYTHONPATH.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$repo"/.whl/*.whl
fi
rm -rf /tmp/xfv && mkdir -p /tmp/xfv/xfverify
cp "$repo"/xfverify/*.py /tmp/xfv/xfverify/
for part in models converter evaluator; do
    ln -s "$repo/$part" "/tmp/xfv/xfverify/$part"
done
export PYTHONPATH="/tmp/xfv:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd /tmp
exec "$@"
