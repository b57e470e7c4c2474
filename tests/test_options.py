"""Every option value a user can type that no run can take is one line, the same through the command line, the Python
API and a study's TOML file, refused before anything runs (pipeline/options.py holds the types and their checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

import xfverify
from helpers import run_cli_here
from xfverify.models.errors import UserError

NO_RUN = {"out": None}  # every case is refused before a folder or a worker is made


def cli_line(*args: str) -> str:
    done = run_cli_here(*args)
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0].removeprefix("xfverify: error: ")


def api_line(call, *args, **options) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **options)
    return str(caught.value)


# (verb, the command line's options, the API's options, the line's start)
CHOICES = [
    ("native", ["--device", "gpu"], {"device": "gpu"}, "--device 'gpu': not one of auto, cpu, cuda"),
    ("native", ["--device", "CPU"], {"device": "CPU"}, "--device 'CPU': not one of auto, cpu, cuda"),
    ("native", ["--device", ""], {"device": ""}, "--device '': not one of auto, cpu, cuda"),
    ("native", ["--precision", "fp64"], {"precision": "fp64"}, "--precision 'fp64': not one of fp32, tf32, bf16, fp16"),
    ("native", ["--precision", "FP16"], {"precision": "FP16"}, "--precision 'FP16': not one of"),
    ("native", ["--on-bad-image", "ignore"], {"on_bad_image": "ignore"}, "--on-bad-image 'ignore': not one of error, skip"),
    ("native", ["--device", "cpu", "--precision", "tf32"], {"device": "cpu", "precision": "tf32"},
     "--precision tf32 applies to CUDA GPUs only"),
    ("native", ["--batch-size", "0"], {"batch_size": 0}, "--batch-size must be positive, got 0"),
    ("native", ["--seed", "-1"], {"seed": -1}, "--seed must be between 0 and"),
    ("onnx", ["--provider", "gpu"], {"provider": "gpu"}, "--provider 'gpu': not one of auto, cpu, cuda"),
    ("onnx", ["--device", "tpu"], {"device": "tpu"}, "--device 'tpu': not one of auto, cpu, cuda"),
    ("onnx", ["--atol", "-1"], {"atol": -1.0}, "--atol must be a finite number, not negative, got -1.0"),
    ("onnx", ["--opset", "0"], {"opset": 0}, "--opset must be positive, got 0"),
    ("onnx", ["--localize-images", "0"], {"localize_images": 0}, "--localize-images must be positive, got 0"),
    ("diagnose", ["--precision", "fp64"], {"precision": "fp64"}, "--precision 'fp64': not one of"),
    ("diagnose", ["--precisions", "fp64"], {"precisions": ["fp64"]}, "--precisions: unknown precision fp64; choose"),
    ("diagnose", ["--device", "gpu"], {"device": "gpu"}, "--device 'gpu': not one of auto, cpu, cuda"),
    ("study", ["--device", "gpu"], {"device": "gpu"}, "--device 'gpu': not one of auto, cpu, cuda"),
    ("study", ["--provider", "gpu"], {"provider": "gpu"}, "--provider 'gpu': not one of auto, cpu, cuda"),
    ("study", ["--executor", "dask"], {"executor": "dask"}, "--executor 'dask': not one of local, ray"),
    ("study", ["--on-bad-image", "ignore"], {"on_bad_image": "ignore"}, "--on-bad-image 'ignore': not one of"),
    ("study", ["--workers", "0"], {"workers": 0}, "--workers must be positive, got 0"),
    ("study", ["--address", "auto"], {"address": "auto"}, "--address auto names a Ray cluster: add --executor ray"),
]


@pytest.mark.parametrize("verb, args, options, line", CHOICES, ids=[" ".join([c[0], *c[1]]) for c in CHOICES])
def test_a_bad_value_is_the_same_line_from_the_command_line_and_the_api(verb, args, options, line, tmp_path):
    from_cli = cli_line(verb, *args, "--out", str(tmp_path / "out"))
    from_api = api_line(getattr(xfverify, verb), **options, out=tmp_path / "out")
    assert from_cli == from_api, (from_cli, from_api)
    assert from_cli.startswith(line), from_cli
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, line", [
    ({"limit": "5"}, "--limit '5': input should be a valid integer"),
    ({"limit": True}, "--limit True: input should be a valid integer"),
    ({"random_weights": "yes"}, "--random-weights 'yes': input should be a valid boolean"),
    ({"overrides": 0.9}, "--set 0.9: input should be a valid tuple"),
    ({"dvice": "cpu"}, "unknown option 'dvice'; the options are: batch_size, cache_dir, calibration_split, cuda_graphs,"),
])
def test_a_wrong_type_or_name_through_the_api_is_one_line(options, line):
    assert api_line(xfverify.native, **options).startswith(line)


def test_the_api_takes_paths_and_lists_as_the_command_line_takes_text(tmp_path):
    from xfverify.evaluator.pipeline.options import DiagnoseOptions, OnnxOptions

    missing = tmp_path / "nowhere" / "model.onnx"
    assert api_line(xfverify.onnx, missing, preprocess="lite-tf-224") == f"{missing}: no such ONNX file"
    assert cli_line("onnx", str(missing), "--preprocess", "lite-tf-224") == f"{missing}: no such ONNX file"
    options = DiagnoseOptions.of(data=tmp_path, variants=["squash", "resize-pil"], precisions=("bf16",),
                                 overrides=["crop_pct=0.9"], spec_files=[tmp_path / "a.json"])
    assert (options.data, options.variants, options.precisions) == (str(tmp_path), "squash,resize-pil", "bf16")
    assert options.overrides == ("crop_pct=0.9",) and options.spec_files == (str(tmp_path / "a.json"),)
    assert DiagnoseOptions.of(overrides="crop_pct=0.9").overrides == ("crop_pct=0.9",)  # one value alone
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert OnnxOptions.of(target=model, preprocess="lite-tf-224", against=tmp_path).target == str(model)


def _study(tmp_path: Path, group: str) -> str:
    path = tmp_path / "mine.toml"
    path.write_text(f'name = "mine"\n[[cells]]\nmodels = ["pypi/efficientnet_lite0"]\n{group}\n')
    return str(path)


@pytest.mark.parametrize("group, args", [
    ('runs = ["diagnose"]\nprecisions = ["fp64"]', ["--precisions", "fp64"]),
    ('runs = ["diagnose"]\nvariants = ["squahs"]', ["--variants", "squahs"]),
    ('runs = ["diagnose"]\nprecisions = ["fp32"]', ["--precisions", "fp32"]),
])
def test_a_bad_value_in_a_study_file_is_the_commands_line_before_any_cell_runs(tmp_path, group, args):
    study = _study(tmp_path, group)
    from_study = api_line(xfverify.study, study, out=tmp_path / "study")
    from_cli = cli_line("diagnose", "pypi/efficientnet_lite0", *args, "--out", str(tmp_path / "out"))
    cell, _, line = from_study.partition(": ")
    assert cell.startswith("study cell diagnose-pypi_efficientnet_lite0") and line == from_cli, from_study
    assert cli_line("study", study, "--out", str(tmp_path / "study")) == from_study
    assert not (tmp_path / "study").exists()  # refused while planning: nothing ran


def test_the_options_one_verb_hands_another_carry_every_field_they_share(tmp_path):
    """onnx's native run and diagnose's ONNX Runtime row are given their options field by field (no reflection
    copies them): a field added to the run options and forgotten there fails here."""
    import dataclasses

    from xfverify.evaluator.pipeline.options import DiagnoseOptions, OnnxOptions, RunOptions

    shared = {f.name for f in dataclasses.fields(RunOptions)} - {"extra_notes"}
    values = {"data": "d", "devkit": "k", "preprocess": "lite-tf-224", "overrides": ("crop_pct=0.9",), "limit": 3,
              "per_class": 1, "device": "cpu", "batch_size": 2, "workers": 1, "cache_dir": "c", "random_weights": True,
              "seed": 7, "on_bad_image": "skip", "out": "o", "calibration_split": 2}
    assert set(values) | {"weights"} == shared  # weights excludes random_weights; checked on its own below
    native = OnnxOptions(**values, target="pypi/efficientnet_lite0", variants=("int8",)).native_options(out="n")
    assert {name: getattr(native, name) for name in values} == {**values, "out": "n"}
    assert native.model == "pypi/efficientnet_lite0" and native.precision == "fp32"
    onnx = DiagnoseOptions(**values, model="pypi/efficientnet_lite0", onnx_variants=("int8",)).onnx_options()
    # the row runs on the reference's tensors: its preprocessing is the reference's, its outputs go nowhere
    carried = {name: getattr(onnx, name) for name in values if name not in ("preprocess", "overrides", "out")}
    assert carried == {k: v for k, v in values.items() if k not in ("preprocess", "overrides", "out")}
    assert onnx.target == "pypi/efficientnet_lite0" and onnx.provider == "auto" and onnx.out is None
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    assert OnnxOptions(weights=weights).native_options(out="n").weights == str(weights)
    assert DiagnoseOptions(weights=weights).onnx_options().weights == str(weights)
