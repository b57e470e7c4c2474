"""The report's precision and weights blocks, typed: what a back-end ran at, and which weights it ran.

A worker makes them, the parent writes them into report.json unchanged (each block's keys in its fields' order),
and a report read back is parsed into them again. Each family of back-ends has its precision block; the key that
only one family writes (torch's ``autocast``, Keras's ``policy``) tells them apart when a report is read.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    WrapSerializer,
)

from xfverify.models.precision import Precision


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _with_tf32(ran: str, tf32: bool) -> str:
    return ran + (" + TF32" if tf32 else "")


class PlainPrecision(_Block):
    """A back-end that runs float32 as it comes (MXNet, ONNX Runtime)."""

    requested: Precision
    tf32: bool

    def ran_at(self) -> str:
        """What the arithmetic actually was, in a few words."""
        return _with_tf32("fp32", self.tf32)


class TorchPrecision(_Block):
    """torch: TF32 flags, autocast (bf16, fp16), the memory format, cuDNN autotuning and CUDA graphs."""

    requested: Precision
    tf32: bool
    autocast: Optional[Literal["bfloat16", "float16"]] = Field(description="None: no autocast")
    channels_last: bool
    cudnn_benchmark: Optional[bool] = Field(description="None on the CPU")
    cuda_graphs: str = Field(description='"off", or what became of the capture')

    def ran_at(self) -> str:
        return _with_tf32(f"autocast {self.autocast}" if self.autocast else "fp32", self.tf32)


class KerasPrecision(_Block):
    """Keras: TF32 and the global mixed-precision policy the network was built under."""

    requested: Precision
    tf32: bool
    policy: str

    def ran_at(self) -> str:
        return _with_tf32(f"policy {self.policy}" if self.policy != "float32" else "fp32", self.tf32)


def _family_by_key(by_key: dict[str, str], default: str) -> Callable[[Any], str]:
    """A discriminator: a model's own class, or for a dict read back from JSON the class its telling key names."""

    def family(value: Any) -> str:
        if isinstance(value, BaseModel):
            return type(value).__name__
        keys = value.keys() if isinstance(value, dict) else ()
        return next((name for key, name in by_key.items() if key in keys), default)

    return family


_precision_family = _family_by_key({"autocast": "TorchPrecision", "policy": "KerasPrecision"}, "PlainPrecision")


PrecisionBlock = Annotated[
    Union[Annotated[TorchPrecision, Tag("TorchPrecision")], Annotated[KerasPrecision, Tag("KerasPrecision")],
          Annotated[PlainPrecision, Tag("PlainPrecision")]],
    Discriminator(_precision_family),
]


class RandomWeights(_Block):
    """Seeded random weights (``--random-weights``)."""

    source: Literal["random"] = "random"
    sha256: Literal["random"] = "random"
    seed: int


class FileWeights(_Block):
    """A file's weights, by its path and sha256: a user's ``--weights`` file, or the .onnx file ONNX Runtime ran."""

    source: str
    sha256: str


class CheckedWeights(_Block):
    """The card's own weights file, checked against the card's checksum (where it names one)."""

    source: str
    sha256: str
    file: str
    license: str
    checksum: Optional[str] = Field(default=None, exclude_if=lambda value: value is None,
                                    description="the card's checksum it matched; absent when the card names none")


_weights_kind = _family_by_key({"seed": "RandomWeights", "file": "CheckedWeights"}, "FileWeights")


WeightsBlock = Annotated[
    Union[Annotated[RandomWeights, Tag("RandomWeights")], Annotated[CheckedWeights, Tag("CheckedWeights")],
          Annotated[FileWeights, Tag("FileWeights")]],
    Discriminator(_weights_kind),
]


def _file_before_sha256(block: Any, write: SerializerFunctionWrapHandler) -> Any:
    written = write(block)
    if isinstance(block, CheckedWeights):
        order = ("source", "file", "sha256", "license", "checksum")
        return {key: written[key] for key in order if key in written}
    return written


# The same blocks as diagnose's report.json has always written them: a checked block's file before its sha256 (a
# native report's schema puts sha256 second in every block).
DiagnoseWeightsBlock = Annotated[WeightsBlock, WrapSerializer(_file_before_sha256)]
