"""The precisions a model can run at (``--precision``, ``--precisions``), in one place, with what each means."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)  # what --precision takes, in this order

# What each precision's arithmetic is, in a few words (diagnose's precision variants say it).
DESCRIPTIONS: dict[str, str] = {
    "fp32": "float32 throughout, TF32 off",
    "tf32": "TF32 matmuls and convolutions (CUDA GPUs)",
    "bf16": "mixed precision in bfloat16",
    "fp16": "mixed precision in float16",
}
MIXED = ("bf16", "fp16")  # the precisions that run in a lower-precision float type (autocast, a mixed policy)
