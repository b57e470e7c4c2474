"""A stand-in back-end for worker tests: its task says it has begun (the worker watches its run by then), then waits
until the process is ended from outside."""

import time
from pathlib import Path


def wait_forever(job, workdir):
    (Path(workdir) / "waiting").write_text("")
    while True:
        time.sleep(0.1)


TASKS = {"describe_onnx": wait_forever}
