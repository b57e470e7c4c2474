"""The decode pool for decoders that run in a framework's worker: ``nvjpeg`` (a torch worker decodes on the GPU),
MXNet's own decoder (``mx.image.imdecode`` in an mxnet worker) and TensorFlow's crop-window decode
(``decode_and_crop_jpeg`` in a tensorflow worker); the CPU pool does the rest."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

from xfverify.evaluator.cache.decoding import decode_chunk, digest_chunk
from xfverify.evaluator.process.events import EventSink
from xfverify.evaluator.process.tasks import DECODE_JOBS, DecodeChunk
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PreprocessSpec


WHY_THIS_WORKER = {
    "tensorflow": "decodes each crop window with TensorFlow's decode_and_crop_jpeg, as the original does",
    "mxnet": "decodes with MXNet's own decoder (mx.image.imdecode), as GluonCV does (--set decoder=opencv decodes "
             "with opencv-python instead, up to 2 levels apart on some JPEGs)",
}


class WorkerDecodePool:
    """The decode pool's interface (submit, shutdown) for a decoder that runs in a framework's worker
    (``spec.decode_worker``): one worker takes every decode chunk (evaluator/backends/torch/nvjpeg.py,
    mxnet/decode.py, tensorflow/crop_window.py) and reports each as it is done; the chunk's digests, and any other task, go to the CPU pool as usual."""

    def __init__(self, spec: PreprocessSpec, cpu_pool: ProcessPoolExecutor, normalisation_keys: list[str]):
        self.spec, self.cpu_pool, self.keys = spec, cpu_pool, normalisation_keys
        self.chunks: list[DecodeChunk] = []
        self.futures: list[Future] = []
        self.reported: set[int] = set()
        self.process = None
        self.thread: threading.Thread | None = None

    def submit(self, function: Callable, *args: Any) -> Future:
        if function is not decode_chunk:
            return self.cpu_pool.submit(function, *args)
        tmp_path, row, paths = args
        future: Future = Future()
        self.chunks.append(DecodeChunk(tmp_path=tmp_path, row=row, paths=list(paths)))
        self.futures.append(future)
        return future

    def start(self) -> None:
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),  # the caller's warm
                                       name=f"xfverify-decode-{self.spec.decode_worker}", daemon=True)  # workers too
        self.thread.start()

    def _decoded(self, index: int, bad: list, caveats: list) -> None:
        """A chunk is in its shard: its digests are computed from the rows the worker wrote, then it is done."""
        self.reported.add(index)
        chunk, future = self.chunks[index], self.futures[index]
        try:
            digests = self.cpu_pool.submit(digest_chunk, chunk.tmp_path, chunk.row, len(chunk.paths), self.keys)
        except BaseException as exc:  # the CPU pool cannot start: the chunk fails with why, never waits forever
            future.set_exception(exc)
            return

        def finish(done: Future) -> None:
            if done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result((bad, caveats, done.result()))

        digests.add_done_callback(finish)

    def _run(self) -> None:
        from xfverify.evaluator.process.launcher import run_worker

        on_event = EventSink(decoded=lambda event: self._decoded(event.index, event.bad, event.caveats),
                             status=lambda event: None)

        def on_start(process) -> None:
            self.process = process

        framework = self.spec.decode_worker
        try:
            job = DECODE_JOBS[framework](spec=self.spec, chunks=self.chunks)
            run_worker(framework, job, on_event=on_event, on_start=on_start)
            failure: BaseException = RuntimeError(f"the {framework} decode worker ended without decoding every chunk")
        except UserError as exc:  # no GPU for nvJPEG, no TensorFlow or MXNet: every waiting chunk gets it
            why = WHY_THIS_WORKER.get(framework)
            failure = UserError(f"{self.spec.name} {why}: {exc}") if why else exc
        except BaseException as exc:  # a crash: every waiting chunk gets it
            failure = exc
        for index, future in enumerate(self.futures):
            if index not in self.reported:
                future.set_exception(failure)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.thread is not None and wait:
            self.thread.join()
        self.cpu_pool.shutdown(wait=wait, cancel_futures=cancel_futures)
