"""What a worker and its parent tell each other besides the job and result files: progress events on stdout,
when each phase ended, the exit code of a user error, and the run a worker must not outlive."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


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


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Progress(_Event):
    """``done`` of ``total`` images have gone through the model."""

    event: Literal["progress"] = "progress"
    done: int
    total: int


class Status(_Event):
    """A message for the user."""

    event: Literal["status"] = "status"
    message: str


class VariantStarts(_Event):
    """Pass ``index`` of ``total`` (diagnose's variant ``name``) begins."""

    event: Literal["variant"] = "variant"
    index: int
    total: int
    name: str


class ModelLoaded(_Event):
    """The worker has built a network and placed it on its device."""

    event: Literal["model_loaded"] = "model_loaded"
    model: str


class Decoded(_Event):
    """Decode chunk ``index`` is in its shard; its bad rows and caveats as (row, reason) pairs."""

    event: Literal["decoded"] = "decoded"
    index: int
    bad: list[tuple[int, str]]
    caveats: list[tuple[int, str]]


Event = Annotated[Union[Progress, Status, VariantStarts, ModelLoaded, Decoded], Field(discriminator="event")]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def emit(event: Event) -> None:
    """Worker side: send an event to the parent."""
    print(EVENT_PREFIX + event.model_dump_json(), flush=True)


def parsed_event(line: str) -> Event | None:
    """Parent side: the event a line of the worker's stdout carries (None for any other output)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    return _EVENT.validate_json(line[len(EVENT_PREFIX):])


@dataclass
class EventSink:
    """Where a worker's events go, one handler per kind: status lines to the console unless told otherwise, the
    others nowhere unless given; it counts the networks the worker loaded."""

    progress: Callable[[Progress], None] | None = None
    variant: Callable[[VariantStarts], None] | None = None
    decoded: Callable[[Decoded], None] | None = None
    status: Callable[[Status], None] = field(default=lambda event: _to_console(event))
    models_loaded: int = 0

    def __call__(self, event: Event) -> None:
        match event:
            case Progress():
                if self.progress:
                    self.progress(event)
            case Status():
                self.status(event)
            case VariantStarts():
                if self.variant:
                    self.variant(event)
            case ModelLoaded():
                self.models_loaded += 1
            case Decoded():
                if self.decoded:
                    self.decoded(event)


def _to_console(event: Status) -> None:
    from xfverify.evaluator.system import console  # the parent's; a worker never handles events

    console.info(event.message)
