"""How long `xfverify models` takes over the whole catalogue, and that it imports no ML framework.

Each command runs ``--repeat`` times as a fresh process (interleaved); wall and CPU seconds (user + system, which a
busy machine inflates less than wall time) are reported per command with their median, beside `xfverify --help`,
the start-up every command pays. A last run in one process lists the modules it imported: no framework may be among
them.

    python bench/models_listing.py --out bench/results/models_listing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "help": ["--help"],
    "models (all)": ["models"],
    "models --source timm --filter 'convnext*'": ["models", "--source", "timm", "--filter", "convnext*"],
    "models --json (all)": ["models", "--json"],
}
FRAMEWORKS = ("torch", "torchvision", "timm", "tensorflow", "keras", "mxnet", "gluoncv", "onnxruntime")


def _run(args: list[str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xfverify", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"xfverify {' '.join(args)} failed: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, len(done.stdout.splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            samples[name].append(_run(command))
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, contextlib, io\n"
         "from xfverify.evaluator.commands.cli import main\n"
         "with contextlib.redirect_stdout(io.StringIO()):\n"
         "    try: main(['models'])\n"
         "    except SystemExit: pass\n"
         f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"],
        capture_output=True, text=True, check=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "load_1min_at_end": os.getloadavg()[0], "python": platform.python_version()},
        "repeat": args.repeat,
        "commands": {
            name: {"wall_s_median": round(statistics.median(s[0] for s in runs), 3),
                   "cpu_s_median": round(statistics.median(s[1] for s in runs), 3),
                   "wall_s": [round(s[0], 3) for s in runs], "stdout_lines": runs[0][2]}
            for name, runs in samples.items()
        },
        "frameworks_imported_by_models": json.loads(probe.stdout.strip().replace("'", '"')),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
