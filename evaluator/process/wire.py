"""The messages of the process boundary itself, typed: the job file the launcher writes for a worker, a user
error's file, and what the parent and a warm worker's server say on their socket. Only the launcher, the worker and
the warm servers speak them (a contract keeps reports and analysis away)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobFile(_Wire):
    """``<task>.job.json``: which back-end module runs which task of the registry, where, on which job."""

    framework: str
    backend: str  # the back-end module the worker imports
    task: str  # a name of :data:`~xfverify.evaluator.process.tasks.TASKS`
    workdir: str
    job: dict[str, Any]  # the task's job, validated by the worker against the task's job type


class UserErrorFile(_Wire):
    """``<task>.error.json``: a user-caused failure's one line."""

    message: str


class ForkRequest(_Wire):
    """Parent -> warm server: fork a worker on this job file, in this folder, with this environment."""

    job: str
    cwd: str
    env: dict[str, str]


class Ready(_Wire):
    """Warm server -> parent: the back-end module is imported."""

    kind: Literal["ready"] = "ready"


class Started(_Wire):
    """Warm server -> parent: the worker of the last request is process ``pid``."""

    kind: Literal["started"] = "started"
    pid: int


class Exited(_Wire):
    """Warm server -> parent: worker ``pid`` ended with exit ``code``."""

    kind: Literal["exited"] = "exited"
    pid: int
    code: int


ServerMessage = Annotated[Union[Ready, Started, Exited], Field(discriminator="kind")]
SERVER_MESSAGE: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)
