"""The study's cells as Ray tasks (``xfverify study --executor ray``): one task per cell with its resource request,
an ONNX cell started once its native cell is back (on the same node, where the native run's folder is), results
gathered by the driver as they come, and a task lost with its node retried by Ray. On a cluster with GPUs, the
GPU cells' ONNX exports are CPU tasks of their own, submitted first, so no GPU is held while an exporter runs."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from xfverify.evaluator.system.files import writable_folder
from xfverify.models.errors import UserError
from xfverify.models.user_input import shown

RETRIES = 3  # a task whose node dies is run again elsewhere, up to this many times (Ray's max_retries)
CPUS_PER_CPU_CELL = 2  # decoding and the model pass share them
CPUS_PER_GPU_CELL = 1


def ray_executor(address: str | None, on_gpu: Callable[[Any], bool],
                 ahead: Callable[[Any], None] | None = None) -> Callable:
    """An executor with the same signature as ``study.run_locally``, running on the Ray cluster at ``address``
    (None: a local Ray instance; "auto": the cluster this machine belongs to); ``on_gpu``: whether a planned cell
    computes on a GPU where there is one; ``ahead``: a GPU ONNX cell's export, run first as a CPU task."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'xfverify[ray]' (or use --executor local)") from None
    check_cluster(address)

    def execute(todo: list, run: Callable, done: dict, record: Callable) -> dict:
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise UserError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                                "`ray start --head`, or leave --address out for a local instance") from None
        try:
            return _gather(ray, todo, run, done, record, on_gpu, ahead)
        finally:
            if started_here:
                ray.shutdown()

    return execute


PROBE_S = 10  # how long a cluster's address is given to answer before the study is refused


def check_cluster(address: str | None) -> None:
    """Before any cell: the cluster to join (``--address``, else ``RAY_ADDRESS``) is ``auto``, ``local`` or a
    HOST:PORT that accepts a connection within PROBE_S; a local instance's RAY_TMPDIR is a folder that can be made.
    Anything else is one line (Ray itself retries an unreachable address for minutes)."""
    named, value = ("--address", address) if address else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    if not value or value in ("auto", "local"):
        if os.environ.get("RAY_TMPDIR") and value != "auto":
            writable_folder(Path(os.environ["RAY_TMPDIR"]), "RAY_TMPDIR")
        return
    try:
        parts = urllib.parse.urlsplit("//" + value.removeprefix("ray://"))
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None or parts.path or parts.query or parts.fragment:
        raise UserError(f"{named} {shown(value)}: not a Ray cluster's address; give auto or HOST:PORT (e.g. "
                        "10.0.0.5:6379), or leave it out for a local Ray instance")
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UserError(f"{named} {shown(value)}: no Ray cluster answers there ({reason}; waited up to {PROBE_S} s): "
                        "check the host and port, start one with `ray start --head`, or leave it out for a local "
                        "Ray instance") from None


def _gather(ray, todo: list, run: Callable, done: dict, record: Callable, on_gpu: Callable[[Any], bool],
            ahead: Callable[[Any], None] | None = None) -> dict:
    """Submit each cell once what it needs is back (its native cell; a GPU ONNX cell's export too, submitted first
    as a CPU task where the cluster has GPUs); record each result as it comes."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_run_cell_task)
    results = dict(done)
    pending: dict[Any, Any] = {}  # object ref -> planned cell
    waiting = list(todo)
    node_of: dict[str, str] = {}  # a finished cell's key -> the node it ran on
    exports: dict[Any, Any] = {}  # object ref -> the GPU ONNX cell whose export it makes
    if has_gpus and ahead is not None:
        export = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_export_task)
        exports = {export.options(num_cpus=CPUS_PER_GPU_CELL).remote(ahead, planned): planned
                   for planned in todo if planned.cell.run == "onnx" and on_gpu(planned)}
    exporting = {planned.key for planned in exports.values()}

    def submit_ready() -> None:
        for planned in list(waiting):
            needs = planned.needs
            if needs is not None and needs.key not in results:
                continue  # its native cell is still running
            if planned.key in exporting:
                continue  # its export is still being made
            waiting.remove(planned)
            options: dict[str, Any] = _resources(has_gpus and on_gpu(planned))
            if needs is not None and needs.key in node_of:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_of[needs.key], soft=True)
            needed = results.get(needs.key) if needs is not None else None
            pending[task.options(**options).remote(run, planned, needed)] = planned

    submit_ready()
    while pending or exports:
        [ready], _ = ray.wait([*pending, *exports], num_returns=1)
        if ready in exports:
            with contextlib.suppress(Exception):  # an export lost with its nodes: the cell exports itself
                ray.get(ready)
            exporting.discard(exports.pop(ready).key)
        else:
            planned = pending.pop(ready)
            result, node = ray.get(ready)
            results[planned.key] = result
            node_of[planned.key] = node
            record(planned, result)
        submit_ready()
    return {key: result for key, result in results.items() if key not in done}


def _resources(gpu: bool) -> dict[str, Any]:
    """One GPU for a cell that computes on one, CPU cores otherwise."""
    return {"num_gpus": 1, "num_cpus": CPUS_PER_GPU_CELL} if gpu else {"num_cpus": CPUS_PER_CPU_CELL}


def _run_cell_task(run: Callable, planned, needed) -> tuple[Any, str]:
    """Inside the Ray worker: the cell, and the node it ran on (its dependants are sent there)."""
    import ray

    results = {planned.needs.key: needed} if planned.needs is not None and needed is not None else {}
    return run(planned, results), ray.get_runtime_context().get_node_id() or socket.gethostname()


def _export_task(ahead: Callable[[Any], None], planned) -> None:
    """Inside the Ray worker: a GPU ONNX cell's export, into the export cache (a shared --cache-dir lets the cell find
    it on whichever node it runs; otherwise the cell exports again on its own)."""
    ahead(planned)
