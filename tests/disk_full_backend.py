"""A stand-in back-end whose task's write meets a full disk (ENOSPC), as a worker writing logits.npy would."""

import errno
import os


def evaluate(job, workdir):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "logits.npy"))


TASKS = {"evaluate": evaluate}
