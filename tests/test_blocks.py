"""The typed precision and weights blocks write the JSON the untyped dicts wrote (same keys, order, nulls) and
read it back as the right block; the precision names are one list everywhere."""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import TypeAdapter, ValidationError

from xfverify.evaluator.process.blocks import (
    CheckedWeights,
    DiagnoseWeightsBlock,
    FileWeights,
    KerasPrecision,
    PlainPrecision,
    PrecisionBlock,
    RandomWeights,
    TorchPrecision,
    WeightsBlock,
)
from xfverify.evaluator.process.tasks import EvaluateJob
from xfverify.models.precision import DESCRIPTIONS, PRECISIONS

# Blocks as the back-ends wrote them before they were typed (key order included).
PRECISION_BLOCKS = [
    ({"requested": "bf16", "tf32": False, "autocast": "bfloat16", "channels_last": False, "cudnn_benchmark": None,
      "cuda_graphs": "off"}, TorchPrecision),
    ({"requested": "tf32", "tf32": True, "autocast": None, "channels_last": False, "cudnn_benchmark": True,
      "cuda_graphs": "on for batches of 32: replay bit-identical to eager on a probe batch"}, TorchPrecision),
    ({"requested": "fp16", "tf32": False, "policy": "mixed_float16"}, KerasPrecision),
    ({"requested": "fp32", "tf32": False}, PlainPrecision),
]
WEIGHTS_BLOCKS = [
    ({"source": "random", "sha256": "random", "seed": 7}, RandomWeights),
    ({"source": "/data/mine.pth", "sha256": "ab" * 32}, FileWeights),
    ({"source": "torchvision IMAGENET1K_V2", "sha256": "11" * 32, "file": "/hub/resnet50-11ad3fa6.pth",
      "license": "BSD-3-Clause (torchvision)", "checksum": "sha256:11ad3fa6"}, CheckedWeights),
    ({"source": "keras", "sha256": "cd" * 32, "file": "/k/mobilenet.h5", "license": ""}, CheckedWeights),
]


def test_diagnose_writes_a_checked_block_file_first_as_it_always_did():
    adapter = TypeAdapter(DiagnoseWeightsBlock)
    for block, _ in WEIGHTS_BLOCKS:
        typed = adapter.validate_python(block)
        written = json.loads(adapter.dump_json(typed))
        assert written == block
        if "file" in block:
            assert list(written)[:3] == ["source", "file", "sha256"]
        else:
            assert list(written) == list(block)


@pytest.mark.parametrize("block, kind", PRECISION_BLOCKS + WEIGHTS_BLOCKS)
def test_a_block_reads_back_as_its_kind_and_writes_the_same_json(block, kind):
    adapter = TypeAdapter(PrecisionBlock if kind in (TorchPrecision, KerasPrecision, PlainPrecision) else WeightsBlock)
    typed = adapter.validate_json(json.dumps(block))
    assert type(typed) is kind
    assert adapter.dump_json(typed, indent=2).decode() == json.dumps(block, indent=2)
    assert adapter.validate_python(typed) is typed  # a block handed on (worker result -> report) stays itself


def test_a_block_with_a_key_of_another_family_is_refused():
    with pytest.raises(ValidationError):
        TypeAdapter(PrecisionBlock).validate_python({"requested": "fp32", "tf32": False, "policy": "float32",
                                                     "autocast": None})
    with pytest.raises(ValidationError):  # a torch block without the key its back-end always writes
        TypeAdapter(PrecisionBlock).validate_python({"requested": "fp32", "tf32": False, "autocast": None,
                                                     "channels_last": False, "cudnn_benchmark": None})


def test_each_precision_block_says_what_the_arithmetic_was():
    torch_cpu = dict(channels_last=False, cudnn_benchmark=None, cuda_graphs="off")
    assert TorchPrecision(requested="fp16", tf32=False, autocast="float16", **torch_cpu).ran_at() == "autocast float16"
    assert TorchPrecision(requested="tf32", tf32=True, autocast=None, **torch_cpu).ran_at() == "fp32 + TF32"
    assert KerasPrecision(requested="bf16", tf32=False, policy="mixed_bfloat16").ran_at() == "policy mixed_bfloat16"
    assert KerasPrecision(requested="tf32", tf32=True, policy="float32").ran_at() == "fp32 + TF32"
    assert PlainPrecision(requested="fp32", tf32=False).ran_at() == "fp32"


def test_the_precision_names_are_one_list():
    from xfverify.evaluator.commands.diagnose import diagnose_command
    from xfverify.evaluator.commands.native import native_command

    assert PRECISIONS == ("fp32", "tf32", "bf16", "fp16") and tuple(DESCRIPTIONS) == PRECISIONS
    assert typing.get_args(EvaluateJob.model_fields["precision"].annotation) == PRECISIONS
    for command in (native_command, diagnose_command):
        (option,) = [p for p in command.params if p.name == "precision"]
        assert option.metavar == "[" + "|".join(PRECISIONS) + "]"  # --help lists them; options.py checks them
