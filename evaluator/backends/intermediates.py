"""Capturing a network's intermediate tensors for ``xfverify onnx --localize``, framework-free: what a back-end
that :class:`CapturesIntermediates` implements, and the writer that streams each tensor to its own .npy file.

A few images are run one at a time; each tensor a back-end records is written into its row of a memory-mapped
``(n_images, *shape)`` file at once, so no more than one image's tensors exist together (torch hands them over
one by one, as its hooks see them).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xfverify.evaluator.backends.running import Device
from xfverify.evaluator.process.tasks import CapturedTensor, IntermediatesJob
from xfverify.models.errors import UserError

Record = Callable[..., None]  # record(name, array, **CapturedTensor fields other than name, file, shape, order)


class CapturesIntermediates(ABC):
    """Runs a network on one image and records every intermediate tensor it computes, in computation order."""

    def load_for_capture(self, job: IntermediatesJob, device: Device) -> Any:
        """The network of a job that names no card (an .onnx file); a card's is built by the back-end's loader."""
        raise UserError("capturing intermediates needs a model card's network here: the job names none")

    @abstractmethod
    def capture(self, model: Any, image: np.ndarray, device: Device, record: Record) -> None:
        """Run a batch of one image and give ``record`` each tensor as it is computed (the same names, in the same
        order, for every image)."""


class TensorWriter:
    """Writes each recorded tensor into row ``image`` of its own ``(n_images, *shape)`` .npy file, with plain
    writes at the row's offset (no memory map stays open: the process holds no more than the tensor at hand)."""

    def __init__(self, folder: Path, n_images: int):
        self.folder, self.n_images = folder, n_images
        folder.mkdir(parents=True, exist_ok=True)
        self.tensors: dict[str, CapturedTensor] = {}
        self._layout: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}  # data offset, row shape, dtype
        self.started = time.perf_counter()
        self.bytes_per_image = 0
        self.ragged: set[str] = set()  # names whose shape or type changed from one image to another

    def recorder(self, image: int) -> Record:
        """The ``record`` callable for one image: a name recorded again in the same image is numbered (a torch
        module called twice), so every call site keeps its own file."""
        seen: dict[str, int] = {}

        def record(name: str, array: Any, **details: Any) -> None:
            array = np.asarray(array)
            if array.ndim == 0 or array.dtype.kind not in "fiub":
                return
            count = seen.get(name, 0)
            seen[name] = count + 1
            key = name if count == 0 else f"{name}#{count}"
            row = np.ascontiguousarray(array[0] if array.shape[:1] == (1,) else array)
            if image == 0:
                self._create(key, row, details)
                self.bytes_per_image += row.nbytes
            offset, shape, dtype = self._layout.get(key, (0, None, None))
            if shape != row.shape or dtype != row.dtype:  # a data-dependent shape (NonZero): not comparable
                self.ragged.add(key)
                return
            with open(self.tensors[key].file, "r+b") as handle:
                handle.seek(offset + image * row.nbytes)
                handle.write(row.data)

        return record

    def _create(self, key: str, row: np.ndarray, details: dict[str, Any]) -> None:
        """The file, its .npy header for every image's row, sized for all of them."""
        index = len(self.tensors)
        path = self.folder / f"{index:05d}.npy"
        header = {"descr": np.lib.format.dtype_to_descr(row.dtype), "fortran_order": False,
                  "shape": (self.n_images, *row.shape)}
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            offset = handle.tell()
            handle.truncate(offset + self.n_images * row.nbytes)
        self._layout[key] = (offset, row.shape, row.dtype)
        self.tensors[key] = CapturedTensor(name=key, file=str(path), shape=list(row.shape), order=index, **details)

    def close(self) -> list[CapturedTensor]:
        """The tensors recorded in the same shape for every image (the others' files removed)."""
        for key in self.ragged:
            if key in self.tensors:
                Path(self.tensors.pop(key).file).unlink(missing_ok=True)
        return list(self.tensors.values())

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
