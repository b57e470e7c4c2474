"""What a worker and its parent tell each other besides the job and result files: progress events on stdout,
when each phase ended, the exit code of a user error, and the run a worker must not outlive."""

from __future__ import annotations

import json
import time
from typing import Any

EVENT_PREFIX = "@xfverify "
USER_ERROR_EXIT = 2  # a user-caused failure: error.json holds its one line
RUN_PID_ENV = "XFVERIFY_RUN_PID"  # set by the launcher: the process a worker must not outlive


_MILESTONES: dict[str, float] = {}


def milestone(name: str) -> None:
    """Worker side: note when a phase ended (wall-clock seconds since the epoch; the first call per name wins)."""
    _MILESTONES.setdefault(name, time.time())


def milestones() -> dict[str, float]:
    """The phases noted so far in this process."""
    return dict(_MILESTONES)


def emit(event: str, **fields: Any) -> None:
    """Worker side: send a progress event to the parent."""
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)
