"""What a worker and its parent tell each other besides the job and result files: progress events on stdout,
when each phase ended, the exit code of a user error, and the run a worker must not outlive."""

from __future__ import annotations

import time
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

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


class Event(BaseModel):
    """One line a worker sends while it runs: ``progress`` (done of total images), ``status`` (a message for the
    user), ``variant`` (pass ``index`` of ``total``, named ``name``, begins) or ``decoded`` (decode chunk ``index``
    is in its shard; its bad rows and caveats as (row, reason) pairs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["progress", "status", "variant", "decoded"]
    done: Optional[int] = None
    total: Optional[int] = None
    message: Optional[str] = None
    index: Optional[int] = None
    name: Optional[str] = None
    bad: Optional[list[tuple[int, str]]] = None
    caveats: Optional[list[tuple[int, str]]] = None


def emit(event: str, **fields) -> None:
    """Worker side: send an event to the parent (checked against :class:`Event` first)."""
    print(EVENT_PREFIX + Event(event=event, **fields).model_dump_json(exclude_none=True), flush=True)


def parsed_event(line: str) -> Event | None:
    """Parent side: the event a line of the worker's stdout carries (None for any other output)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    return Event.model_validate_json(line[len(EVENT_PREFIX):])
