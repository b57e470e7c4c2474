"""xfverify study: a study as data, cells that equal their commands' runs, resumed after a kill, reused when done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import needs_torch, run_cli, write_jpeg

from xfverify.models.cards import model_ids
from xfverify.models.errors import UserError
from xfverify.models.study import builtin_studies, cells_of, load_study


def test_the_shipped_studies_expand_to_their_cells():
    assert set(builtin_studies()) >= {"lite", "article"}
    lite = cells_of(load_study("lite"))
    assert [(c.run, c.model.split(":")[0]) for c in lite[:3]] == [
        ("native", "pypi/efficientnet_lite0"), ("onnx", "pypi/efficientnet_lite0"), ("diagnose", "pypi/efficientnet_lite0")]
    assert len(lite) == 9 and lite[2].variants == ("norm-imagenet-mean-std", "squash", "resize-pil")
    article = cells_of(load_study("article"))
    models = {c.model for c in article}
    assert len(models) == 15 and {c.run for c in article} == {"native", "onnx", "diagnose"}
    assert {m.split("/")[0] for m in models} == {"torchvision", "keras", "gluoncv"}


def test_an_onnx_cell_brings_its_native_cell_and_patterns_find_cards(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[[cells]]\nmodels = ["keras/ResNet*"]\nruns = ["onnx"]\n')
    cells = cells_of(load_study(str(path)))
    matched = model_ids("keras/ResNet*")  # the hand cards first, then the catalogue's (ResNet50V2, ResNet152, ...)
    assert matched[:2] == ["keras/ResNet50:imagenet", "keras/ResNet101:imagenet"]
    assert [(c.run, c.model) for c in cells] == [(run, m) for m in matched for run in ("native", "onnx")]


@pytest.mark.parametrize("text, message", [
    ('name = "s"\n[[cells]]\nmodels = ["no/such-model"]\n', "matches no card"),
    ('name = "s"\n[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["train"]\n', "cells.0.runs.0"),
    ('name = "s"\n[[cells]]\nmodel = ["keras/ResNet50"]\n', "cells.0.model"),
    ('name = "s"\n[[cells]\n', "not valid TOML"),
    ('name = "a b"\n[[cells]]\nmodels = ["keras/ResNet50"]\n', "name"),
    ('name = "s"\n[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["native"]\n[cells.onnx]\nvariants = ["fp16"]\n',
     r'cells.0: .*add "onnx" to runs'),
    ('name = "s"\n[[cells]]\nmodels = ["keras/ResNet50"]\n[cells.onnx]\nvariant = ["fp16"]\n', "cells.0.onnx.variant"),
])
def test_a_bad_study_file_is_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        cells_of(load_study(str(path)))


def test_unknown_studies_and_executors_are_one_line(tmp_path):
    done = run_cli("study", "nope", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "unknown study 'nope'" in done.stderr and "lite" in done.stderr
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    done = run_cli("study", str(folder), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "not a regular file" in done.stderr
    assert not (tmp_path / "o").exists()


MINI = """name = "mini"
[[cells]]
models = ["torchvision/mobilenet_v3_small:IMAGENET1K_V1"]
runs = ["native", "onnx", "diagnose"]
variants = ["squash"]
random_weights = true
"""


@needs_torch
def test_a_study_killed_mid_way_resumes_equals_its_commands_and_a_rerun_runs_nothing(tmp_path, made_export):
    study = tmp_path / "mini.toml"
    study.write_text(MINI)
    cache, out = tmp_path / "cache", tmp_path / "out"
    made_export(cache, "torchvision/mobilenet_v3_small:IMAGENET1K_V1")
    args = ["study", str(study), "--out", str(out), "--cache-dir", str(cache), "--device", "cpu", "--provider", "cpu",
            "--limit", "4"]
    # killed (SIGKILL: no clean-up) once the first cell is recorded
    process = subprocess.Popen([sys.executable, "-m", "xfverify", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("cells/*/cell.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    recorded = list(out.glob("cells/*/cell.json"))
    assert len(recorded) == 1 and not (out / "study.json").exists()

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((out / "study.json").read_text())
    assert (report["ran"], report["reused"]) == (2, 1)
    [row] = report["rows"]
    native = json.loads((out / "cells" / "native-torchvision_mobilenet_v3_small_IMAGENET1K_V1-random" /
                         "report.json").read_text())
    assert row["native"]["tensors_sha256"] == native["tensors_sha256"] == row["onnx"]["tensors_sha256"]
    assert row["onnx"]["top1_agreement"] == 100.0 and row["diagnose"]["n_variants"] == 1

    # the same run as its own command gives the same numbers
    alone = run_cli("native", "torchvision/mobilenet_v3_small:IMAGENET1K_V1", "--random-weights", "--device", "cpu",
                    "--limit", "4", "--out", str(tmp_path / "alone"), "--cache-dir", str(cache))
    assert alone.returncode == 0, alone.stderr[-3000:]
    own = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert (own["tensors_sha256"], own["top1_error"]) == (native["tensors_sha256"], native["top1_error"])
    assert (tmp_path / "alone" / "logits.npy").read_bytes() == (out / "cells" / (
        "native-torchvision_mobilenet_v3_small_IMAGENET1K_V1-random") / "logits.npy").read_bytes()

    again = run_cli(*args)
    assert again.returncode == 0 and "building" not in again.stderr  # no model was built: no pass
    second = json.loads((out / "study.json").read_text())
    assert (second["ran"], second["reused"]) == (0, 3)
    assert second["rows"] == report["rows"]

    # a cell whose report.json changed since (edited, replaced by another run) runs again: its numbers are not trusted
    native_report = out / "cells" / "native-torchvision_mobilenet_v3_small_IMAGENET1K_V1-random" / "report.json"
    native_report.write_text(native_report.read_text().replace('"top1_error": ', '"top1_error":  ', 1))
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (json.loads((out / "study.json").read_text())["ran"], json.loads((out / "study.json").read_text())[
        "reused"]) == (1, 2)

    edited = tmp_path / "edited.toml"
    edited.write_text(MINI.replace('variants = ["squash"]', 'variants = ["squash", "resize-opencv"]'))
    changed = run_cli(*args[:1], str(edited), *args[2:])
    assert changed.returncode == 0, changed.stderr[-3000:]
    third = json.loads((out / "study.json").read_text())
    assert (third["ran"], third["reused"]) == (1, 2) and third["rows"][0]["diagnose"]["n_variants"] == 2
    assert (out / "study.md").read_text().startswith("# xfverify study: mini")
    assert (out / "study.csv").read_text().splitlines()[0].startswith("architecture,model,framework")


DEPLOY = """name = "deploy"
[[cells]]
models = ["torchvision/mobilenet_v3_small:IMAGENET1K_V1"]
runs = ["onnx"]
random_weights = true
[cells.onnx]
variants = ["fp16", "int8"]
calibration = "calibration"
calibration_method = "percentile"
"""


@needs_torch
def test_an_onnx_cell_scores_its_deployment_variants_and_a_bad_one_is_refused_when_planned(tmp_path, made_export):
    """A study's onnx cell names fp16 and int8 (calibrated on generated images beside the study file, by percentile):
    each variant's error and agreement reach study.json, study.md and study.html's row; a variant no run can take is
    the command's one line, prefixed with its cell, before any cell runs."""
    study = tmp_path / "deploy.toml"
    study.write_text(DEPLOY)
    for i in range(3):
        write_jpeg(tmp_path / "calibration" / f"calib_{i}.jpg", seed=700 + i, width=160, height=120)
    out = tmp_path / "out"
    made_export(tmp_path / "cache", "torchvision/mobilenet_v3_small:IMAGENET1K_V1")
    args = ["study", str(study), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--provider", "cpu", "--limit", "3"]
    bad = tmp_path / "bad.toml"
    bad.write_text(DEPLOY.replace('"int8"]', '"int4"]'))
    refused = run_cli("study", str(bad), *args[2:])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "study cell onnx-torchvision_mobilenet_v3_small_IMAGENET1K_V1-random-" in refused.stderr
    assert "--variant 'int4': not a variant" in refused.stderr and not out.exists()
    uncalibrated = tmp_path / "uncalibrated.toml"
    uncalibrated.write_text(DEPLOY.replace('calibration = "calibration"\n', ""))
    refused = run_cli("study", str(uncalibrated), *args[2:])
    assert refused.returncode == 2 and "--variant int8 needs calibration images" in refused.stderr

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "study.json").read_text())
    [row] = report["rows"]
    variants = row["onnx"]["variants"]
    assert [v["name"] for v in variants] == ["fp16", "int8-percentile"]
    [cell] = [c for c in report["cells"] if c["run"] == "onnx"]
    onnx = json.loads((out / cell["folder"] / "report.json").read_text())
    for summary, full in zip(variants, onnx["variants"]["results"]):
        assert summary["top1_error"] == full["top1_error"] is not None
        assert summary["top1_agreement_plain"] == full["agreement_plain"]["top1_agreement"] is not None
        assert full["tensors_sha256"] == onnx["tensors_sha256"]
    assert row["onnx"]["calibration"].startswith("3 images, manifest sha256 ")
    shown = f"fp16 {variants[0]['top1_error']:.1f} ({variants[0]['top1_agreement_plain']:.1f})"
    assert shown in (out / "study.md").read_text() and shown in (out / "study.html").read_text()
    again = run_cli(*args)
    assert again.returncode == 0 and json.loads((out / "study.json").read_text())["ran"] == 0


def test_executor_ray_without_ray_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ray)
    done = run_cli("study", "--executor", "ray", "--limit", "1", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "pip install 'xfverify[ray]'" in done.stderr


TWO_NATIVE = """name = "two"
[[cells]]
models = ["torchvision/mobilenet_v3_large:IMAGENET1K_V1", "torchvision/mobilenet_v2:IMAGENET1K_V1"]
runs = ["native"]
random_weights = true
"""


def _cells_logits(out: Path) -> dict[str, bytes]:
    return {path.parent.name: path.read_bytes() for path in sorted(out.glob("cells/*/logits.npy"))}


TIMINGS = {"images_per_s", "data_wait_s", "compute_s", "onnx_over_native_time"}


def _study_rows(out: Path) -> list:
    """The study's rows, timings left out."""
    rows = json.loads((out / "study.json").read_text())["rows"]
    for row in rows:
        for cell in (row["native"], row["onnx"]):
            for name in TIMINGS & set(cell or {}):
                del cell[name]
    return rows


@pytest.fixture(scope="module")
def two_locally(tmp_path_factory):
    """The two-model study run by the local executor (what the Ray runs must equal)."""
    root = tmp_path_factory.mktemp("two")
    (root / "two.toml").write_text(TWO_NATIVE)
    args = ["study", str(root / "two.toml"), "--device", "cpu", "--limit", "3", "--cache-dir", str(root / "cache")]
    done = run_cli(*args, "--out", str(root / "local"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, args


needs_ray = pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason="needs Ray")


@pytest.mark.slow
@needs_ray
@needs_torch
def test_a_local_ray_instance_gives_the_local_executors_results(two_locally):
    import ray

    root, args = two_locally
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        done = run_cli(*args, "--executor", "ray", "--out", str(root / "ray"))
    finally:
        ray.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((root / "ray" / "study.json").read_text())["executor"] == "ray"
    assert _study_rows(root / "ray") == _study_rows(root / "local")
    assert _cells_logits(root / "ray") == _cells_logits(root / "local") and len(_cells_logits(root / "local")) == 2


@pytest.mark.slow
@needs_ray
@needs_torch
def test_a_node_removed_mid_study_has_its_cell_retried_elsewhere_with_the_same_results(two_locally):
    import threading

    from ray.cluster_utils import Cluster

    root, args = two_locally
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no cell
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = root / "cluster"
    outcome = {}
    study = threading.Thread(target=lambda: outcome.setdefault("done", run_cli(*args, "--executor", "ray",
                                                                                "--address", cluster.address,
                                                                                "--out", str(out))))
    study.start()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(out.glob("cells/*/.work"))) < 2:
            time.sleep(0.1)  # both cells have begun, one on each node
        assert len(list(out.glob("cells/*/.work"))) == 2
        cluster.remove_node(nodes[0])
        study.join(timeout=600)
    finally:
        cluster.shutdown()
    done = outcome["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert _study_rows(out) == _study_rows(root / "local")
    assert _cells_logits(out) == _cells_logits(root / "local")


def _synthetic_report():
    from xfverify.evaluator.reports.study import (
        Cause, CellResult, DiagnoseCell, ModelRow, NativeCell, OnnxCell, StudyDataset, StudyReport)

    native = NativeCell(top1_error=10.4, top1_error_ci95=[8.0, 13.4], top5_error=2.0, n_scored=500,
                        tensors_sha256="a" * 64, device="cpu", images_per_s=30.0, data_wait_s=0.5, compute_s=16.0)
    onnx = OnnxCell(top1_error=10.6, tensors_sha256="a" * 64, exporter="torch.onnx.export (dynamo=True)", opset=18,
                    top1_agreement=99.8, n_flips=1, mcnemar_p=1.0, max_abs_diff_over_max_abs_logit=1e-6,
                    providers=["CPUExecutionProvider"], images_per_s=45.0, data_wait_s=0.2, onnx_over_native_time=0.7)
    diagnose = DiagnoseCell(reproduced=10.4, n_variants=2, within_noise=["squash"], sentence="<b>not bold</b>",
                            causes=[Cause(name="norm-imagenet-mean-std", axis="preprocessing", delta=12.0,
                                          delta_ci95=[9.3, 15.7])])
    rows = [ModelRow(model="pypi/efficientnet_lite0", architecture="EfficientNet-Lite0", framework="torch",
                     published_top1_error=24.9, native=native, onnx=onnx, diagnose=diagnose, failed=[]),
            ModelRow(model="keras/<script>alert(1)</script>", architecture="X", framework="tensorflow",
                     published_top1_error=None, native=None, onnx=None, diagnose=None, failed=["native: failed: x"])]
    cells = [CellResult(key="b" * 64, run="native", model="keras/<script>alert(1)</script>", folder="cells/x",
                        status="failed", error="<i>boom</i>", seconds=1.0)]
    return StudyReport(name="page", about="a & b", dataset=StudyDataset(path="/d", n_images=500, n_labelled=500,
                       manifest_sha256="c" * 64), executor="local", cells=cells, rows=rows, ran=1, reused=0,
                       wall_s=1.0, xfverify_version="0")


def test_the_table_says_each_models_numbers_and_the_markdown_escapes_pipes():
    from xfverify.evaluator.reports.study import csv_text, markdown, row_cells

    report = _synthetic_report()
    cells = row_cells(report.rows[0])
    assert cells[2:9] == ["24.9", "10.4 (8.0-13.4)", "10.6", "99.80", "1", "1", "norm-imagenet-mean-std +12.0 (+9.3 to +15.7)"]
    assert "| EfficientNet-Lite0 | pypi/efficientnet_lite0 |" in markdown(report)
    assert "native keras/<script>" in markdown(report)
    assert csv_text(report).splitlines()[1].startswith("EfficientNet-Lite0,pypi/efficientnet_lite0,torch,24.9,")


# the page itself, in a browser: tests/test_pages.py


def test_the_python_api_raises_the_commands_user_errors():
    import xfverify

    with pytest.raises(UserError, match="unknown model 'no/such-model'"):
        xfverify.native("no/such-model")
    with pytest.raises(UserError, match="unknown study 'nope'"):
        xfverify.study("nope")
    with pytest.raises(UserError, match="--precisions: unknown precision fp64"):
        xfverify.diagnose(precisions=["fp64"])


@needs_torch
def test_the_python_api_returns_the_typed_report_the_command_writes(tmp_path):
    import xfverify
    from xfverify.evaluator.reports.run import NativeReport

    with xfverify.warm_workers() as servers:  # this test's own scope, inside the suite's
        report = xfverify.native(limit=2, out=str(tmp_path / "o"), device="cpu")
        assert "torch" in servers._servers  # the run's worker was forked from this scope's server
    assert isinstance(report, NativeReport) and report.dataset.n_images == 2
    on_disk = json.loads((tmp_path / "o" / "report.json").read_text())
    assert (on_disk["tensors_sha256"], on_disk["top1_error"]) == (report.tensors_sha256, report.top1_error)


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "--seed must be between 0"), ("--batch-size", "0", "--batch-size must be positive"),
    ("--workers", "0", "--workers must be positive")])
def test_options_every_cell_shares_are_refused_once_before_any_cell(tmp_path, option, value, message):
    done = run_cli("study", option, value, "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--device", "--provider"])
def test_cuda_asked_for_on_a_machine_without_a_gpu_is_refused_once_before_any_cell(tmp_path, monkeypatch, option):
    from xfverify.evaluator.system import devices

    monkeypatch.setattr(devices, "may_have_a_gpu", lambda: False)
    done = run_cli("study", option, "cuda", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{option} cuda: this machine has no GPU" in done.stderr and f"{option} cpu or auto" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_gpu_is_seen_by_its_driver_or_its_device_files(tmp_path, monkeypatch):
    from xfverify.evaluator.system import devices

    monkeypatch.setattr(devices, "nvidia_gpus", lambda: [])
    assert not devices.may_have_a_gpu(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the control file alone: the driver, no GPU
    assert not devices.may_have_a_gpu(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert devices.may_have_a_gpu(tmp_path)
    (tmp_path / "nvidia0").unlink()
    for device_file in ("kfd", "dxg", "nvhost-gpu", "nvgpu"):  # ROCm, WSL2, Jetson
        (tmp_path / device_file).touch()
        assert devices.may_have_a_gpu(tmp_path), device_file
        (tmp_path / device_file).unlink()
    monkeypatch.setattr(devices, "nvidia_gpus", lambda: ["NVIDIA H200"])
    assert devices.may_have_a_gpu(tmp_path / "empty")


def _lanes_plan(tmp_path):
    """Two GPU cells (torch native, then its ONNX cell) and two CPU cells (MXNet native, then its ONNX cell with
    --provider cpu), in plan order."""
    from xfverify.evaluator.pipeline.study import PlannedCell
    from xfverify.models.study import Cell

    plan = []
    for model in ("torchvision/resnet50:IMAGENET1K_V1", "gluoncv/resnet50_v1b"):
        native = PlannedCell(Cell(run="native", model=model), f"{model}-native", tmp_path / model / "native")
        plan += [native, PlannedCell(Cell(run="onnx", model=model), f"{model}-onnx", tmp_path / model / "onnx", native)]
    return plan


def test_cpu_only_cells_run_beside_gpu_cells_each_lane_in_order_and_after_the_cell_they_need(tmp_path):
    import threading

    from xfverify.evaluator.pipeline.study import computes_on_gpu, run_locally

    plan = _lanes_plan(tmp_path)
    cpu_lane_started = threading.Event()
    started, recorded = [], []

    def run(planned, results):
        started.append(planned.key)
        if planned.cell.model.startswith("gluoncv/"):
            cpu_lane_started.set()
        elif planned.cell.run == "native":  # the GPU lane's first cell finishes only once the CPU lane has begun
            assert cpu_lane_started.wait(timeout=30), "the CPU-only cells did not run beside the GPU cells"
        if planned.needs is not None:
            assert planned.needs.key in results  # what it needs is done and handed to it
        return f"result of {planned.key}"

    def on_gpu(planned):
        return computes_on_gpu(planned.cell, device="auto", provider="auto" if "torch" in planned.key else "cpu")

    ran = run_locally(plan, run, {}, lambda planned, result: recorded.append(planned.key), on_gpu=on_gpu)
    assert ran == {planned.key: f"result of {planned.key}" for planned in plan}
    assert sorted(recorded) == sorted(started) == sorted(planned.key for planned in plan)
    for lane in ([p.key for p in plan[:2]], [p.key for p in plan[2:]]):
        assert [key for key in started if key in lane] == lane  # each lane in plan order
    assert [computes_on_gpu(p.cell, "auto", "auto") for p in plan] == [True, True, False, True]
    assert not any(computes_on_gpu(p.cell, "cpu", "cpu") for p in plan)


def test_a_failing_lane_stops_the_other_after_its_current_cell_and_its_error_is_raised(tmp_path):
    from xfverify.evaluator.pipeline.study import run_locally

    plan = _lanes_plan(tmp_path)
    started = []

    def run(planned, results):
        started.append(planned.key)
        if planned.key == plan[2].key:
            raise RuntimeError("a bug in the CPU lane")
        time.sleep(0.5)  # the GPU lane's first cell is still running when the CPU lane fails
        return "done"

    with pytest.raises(RuntimeError, match="a bug in the CPU lane"):
        run_locally(plan, run, {}, lambda planned, result: None, on_gpu=lambda planned: "torch" in planned.key)
    assert plan[1].key not in started and plan[3].key not in started


@pytest.mark.parametrize("failure", [RuntimeError("a bug in the GPU lane"), KeyboardInterrupt()])
def test_when_the_gpu_lane_fails_the_cpu_lane_starts_no_new_cell(tmp_path, failure):
    """A bug: the CPU lane's current cell ends and is recorded before the error is raised. Ctrl-C: raised at once,
    and the cell that ends after it is not recorded (the study's folder is no longer the run's)."""
    import threading

    from xfverify.evaluator.pipeline.study import run_locally

    plan = _lanes_plan(tmp_path)
    cpu_cell_running = threading.Event()
    started, recorded = [], []

    def run(planned, results):
        started.append(planned.key)
        if planned.key == plan[2].key:
            cpu_cell_running.set()
            time.sleep(0.5)
        elif planned.key == plan[0].key:
            assert cpu_cell_running.wait(timeout=30)
            raise failure
        return "done"

    with pytest.raises(type(failure)):
        run_locally(plan, run, {}, lambda planned, result: recorded.append(planned.key),
                    on_gpu=lambda planned: "torch" in planned.key)
    if isinstance(failure, KeyboardInterrupt):
        assert recorded == []
        time.sleep(1.0)  # the CPU lane's cell ends meanwhile
    assert recorded == ([] if isinstance(failure, KeyboardInterrupt) else [plan[2].key])
    assert plan[3].key not in started


def test_a_gpu_lanes_onnx_exports_are_made_first_in_the_cpu_lane_and_its_onnx_cells_wait_for_them(tmp_path):
    import threading

    from xfverify.evaluator.pipeline.study import run_locally

    plan = _lanes_plan(tmp_path)
    torch_native, torch_onnx = plan[0], plan[1]
    exported = threading.Event()
    events = []

    def ahead(planned):
        events.append(("ahead", planned.key, threading.current_thread().name))
        exported.set()

    def run(planned, results):
        if planned is torch_native:  # the export is made while the GPU lane's native cell runs
            assert exported.wait(timeout=30), "the GPU lane's export was not made beside it"
        events.append(("run", planned.key, threading.current_thread().name))
        return "done"

    run_locally(plan, run, {}, lambda planned, result: None, on_gpu=lambda planned: "torch" in planned.key,
                ahead=ahead)
    assert [event for event in events if event[0] == "ahead"] == [("ahead", torch_onnx.key, "xfverify-cpu-lane")]
    position = {event[:2]: index for index, event in enumerate(events)}
    assert position["ahead", torch_onnx.key] < position["run", torch_onnx.key]
    assert position["ahead", torch_onnx.key] < position["run", plan[2].key]  # the CPU lane's own cells come after

    # without a GPU there is one lane, and nothing is exported ahead
    events.clear()
    run_locally(plan, lambda planned, results: events.append(("run", planned.key)) or "done", {},
                lambda planned, result: None, on_gpu=None, ahead=ahead)
    assert [event[1] for event in events] == [planned.key for planned in plan]


ONE_EXPORT = """name = "one"
[[cells]]
models = ["torchvision/resnet18:IMAGENET1K_V1"]
runs = ["native", "onnx"]
random_weights = true
"""


@needs_torch
def test_the_export_made_ahead_is_the_one_the_onnx_cell_finds_in_the_export_cache(tmp_path, monkeypatch):
    """The export job made ahead must be exactly the one the ONNX cell sends, or the cell exports again. Every cell
    is placed in the GPU lane here (lanes are scheduling only: they compute on the CPU)."""
    import threading

    import xfverify
    from xfverify.evaluator.pipeline import study as study_module

    threads = []
    export_ahead = study_module.export_ahead

    def recorded(options):
        threads.append(threading.current_thread().name)
        return export_ahead(options)

    monkeypatch.setattr(study_module, "_has_nvidia_gpu", lambda: True)
    monkeypatch.setattr(study_module, "computes_on_gpu", lambda cell, device, provider: True)
    monkeypatch.setattr(study_module, "export_ahead", recorded)
    (tmp_path / "one.toml").write_text(ONE_EXPORT)
    out = tmp_path / "out"
    report = xfverify.study(str(tmp_path / "one.toml"), device="cpu", provider="cpu", limit=2, out=str(out),
                            cache_dir=str(tmp_path / "cache"))
    assert threads == ["xfverify-cpu-lane"]
    onnx = json.loads((out / "cells" / "onnx-torchvision_resnet18_IMAGENET1K_V1-random" / "report.json").read_text())
    assert onnx["onnx"]["from_cache"] is True
    assert len(list((tmp_path / "cache" / "onnx").glob("*/model.onnx"))) == 1
    assert report.rows[0].onnx.top1_agreement == 100.0


def _export_marker(planned, folder: Path) -> None:
    """A stand-in export: leaves a file saying which model it exported and which resources its Ray task held."""
    import ray

    name = planned.cell.model.replace("/", "_").replace(":", "_")
    (folder / f"exported-{name}").write_text(json.dumps(ray.get_runtime_context().get_assigned_resources()))


def _cell_seeing_exports(planned, results) -> list[str]:
    """A stand-in cell: the exports made before it ran."""
    return sorted(path.name for path in planned.folder.parents[2].glob("exported-*"))


@pytest.mark.slow
@needs_ray
def test_on_a_ray_cluster_with_gpus_a_gpu_onnx_cells_export_is_a_cpu_task_that_cell_waits_for(tmp_path):
    """The driver's scheduling on a local Ray instance with one logical GPU (Ray only counts it here): the GPU
    ONNX cell's export is a task without a GPU, finished before that cell starts; the CPU ONNX cell gets none."""
    import functools

    import ray
    from ray import cloudpickle

    from xfverify.evaluator.pipeline.study_ray import _gather

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-ins travel to Ray's workers by value
    plan = _lanes_plan(tmp_path)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        recorded = []
        ran = _gather(ray, plan, _cell_seeing_exports, {}, lambda planned, result: recorded.append(planned.key),
                      on_gpu=lambda planned: "torch" in planned.key,
                      ahead=functools.partial(_export_marker, folder=tmp_path))
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    torch_export = "exported-torchvision_resnet50_IMAGENET1K_V1"
    assert sorted(path.name for path in tmp_path.glob("exported-*")) == [torch_export]
    assert "GPU" not in json.loads((tmp_path / torch_export).read_text())
    assert ran[plan[1].key] == [torch_export]  # the torch ONNX cell ran after its export
    assert sorted(recorded) == sorted(planned.key for planned in plan)


def test_a_cells_onnx_opset_keeps_other_cells_folders_and_is_refused_when_not_positive():
    """``[cells.onnx] opset`` (torch: below 18, the TorchScript exporter, for what dynamo cannot export) is part of
    its cell's options only when given: a cell without it keeps the folder name it always had."""
    from xfverify.models.study import Cell, OnnxRun

    plain = Cell(run="onnx", model="torchvision/mobilenet_v3_small:IMAGENET1K_V1", random_weights=True,
                 onnx=OnnxRun(variants=("fp16",)))
    assert plain.name == "onnx-torchvision_mobilenet_v3_small_IMAGENET1K_V1-random-7885a533"  # as before opset
    assert "opset" not in plain.onnx.model_dump() and OnnxRun(opset=17).model_dump()["opset"] == 17
    assert plain.model_copy(update={"onnx": OnnxRun(variants=("fp16",), opset=17)}).name != plain.name


@needs_torch
def test_an_onnx_cell_exports_at_its_opset_with_the_torchscript_exporter(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('name = "s"\n[[cells]]\nmodels = ["torchvision/mobilenet_v3_small:IMAGENET1K_V1"]\n'
                     'runs = ["onnx"]\nrandom_weights = true\n[cells.onnx]\nopset = 17\n')
    out = tmp_path / "out"
    args = ["study", str(study), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--provider", "cpu", "--limit", "2"]
    (tmp_path / "zero.toml").write_text(study.read_text().replace("opset = 17", "opset = 0"))
    refused = run_cli("study", str(tmp_path / "zero.toml"), *args[2:])
    assert refused.returncode == 2 and "--opset must be positive" in refused.stderr and not out.exists()
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = json.loads((out / "study.json").read_text())["rows"]
    assert row["onnx"]["exporter"] == "torch.onnx.export (dynamo=False)" and row["onnx"]["opset"] == 17
    assert row["onnx"]["native_varies"] is True  # the study row says the agreement was on outputs that vary
