"""`xfverify native`: each framework in its worker, real predictions offline, honest reports, clear failures."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from helpers import SAMPLE_DIR, broken_images, native_json, needs_mxnet, needs_tensorflow, needs_torch, run_cli, without_gpus
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.evaluator.pipeline.preprocess import reference_tensors
from xfverify.models.preprocess import PRESETS


def predictions(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


def torchvision_tensors_sha256(data: Path) -> str:
    """tensors_sha256 as ARCHITECTURE.md defines it (sha256 of each image's float32 C-order tensor's sha256, in
    manifest order), over the tensors torchvision's own transforms give (the reference worker runs them)."""
    paths = [record.path for record in load_dataset(data).records]
    tensors, _ = reference_tensors("torchvision-256", paths)
    total = hashlib.sha256()
    for tensor in tensors:
        total.update(hashlib.sha256(np.ascontiguousarray(tensor, dtype=np.float32).tobytes()).digest())
    return total.hexdigest()


# report.json's fields, as the README documents them: a field renamed or lost fails here, not in a user's script
NATIVE_REPORT_FIELDS = {
    "report_version", "kind", "model", "architecture", "builder", "random_weights", "framework", "device", "precision",
    "weights", "preprocess", "dataset", "tensors_sha256", "tensor_proof", "logits_sha256", "predictions_sha256",
    "batch_size", "batch_size_source", "output",
    "top1_error", "top5_error", "top1_error_ci95", "top5_error_ci95", "n_scored", "published", "other_published",
    "delta_vs_published", "real_labels", "timing", "cache", "skipped_images", "notes", "created", "xfverify_version",
}


@needs_torch
def test_real_weights_predict_the_sample_offline(tmp_path):
    report = native_json(NativeOptions(out=str(tmp_path / "r"), batch_size=2))
    preds = predictions(tmp_path / "r")
    assert preds["grace_hopper"]["top5"].split()[0] == "652"  # military uniform (bicubic, the reference)
    assert preds["coffee"]["top5"].split()[0] == "967"  # espresso
    assert preds["camera"]["status"] == "unlabelled"
    assert report["n_scored"] == 4 and report["top1_error"] == 0.0
    assert report["weights"]["sha256"].startswith("57934424")
    assert report["random_weights"] is False
    logits = np.load(tmp_path / "r" / "logits.npy")
    assert logits.shape == (5, 1000) and logits.dtype == np.float32


@needs_torch
def test_a_normalisation_variant_reuses_the_decoded_images(tmp_path):
    trap = run_cli("native", "--preprocess", "lite-imagenet-norm-224", "--limit", "4", "--out", str(tmp_path / "trap"),
                   "--device", "cpu", env={"XFVERIFY_CACHE": str(tmp_path / "cache")})
    again = run_cli("native", "--preprocess", "lite-timm-224", "--limit", "4", "--out", str(tmp_path / "again"),
                    "--device", "cpu", env={"XFVERIFY_CACHE": str(tmp_path / "cache")})
    assert trap.returncode == 0 and again.returncode == 0, trap.stderr + again.stderr
    trap_report = json.loads((tmp_path / "trap" / "report.json").read_text())
    again_report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert trap_report["preprocess"]["name"] == "lite-imagenet-norm-224"
    assert again_report["cache"]["reused_shards"] >= 1  # same geometry: only the normalisation table differs
    # fed on the host, each run hashes what it feeds: no digests are stored for a device (test_cache checks those)
    assert (trap_report["cache"]["digested"], again_report["cache"]["digested"]) == (0, 0)
    assert not list((tmp_path / "cache").glob("*/shards/*.digests"))
    assert (trap_report["batch_size"], trap_report["batch_size_source"]) == (4, "default for cpu")
    assert trap_report["tensor_proof"] == "hashed on host"
    assert trap_report["tensors_sha256"] != again_report["tensors_sha256"]
    assert "note: only 3 labelled images scored" in trap.stdout  # the report's notes close the summary


@needs_torch
def test_torch_random_weights_report(tmp_path, generated_folder):
    out = tmp_path / "r"
    report = native_json(
        NativeOptions(model="torchvision/mobilenet_v3_large:IMAGENET1K_V1", data=str(generated_folder),
                      out=str(out), random_weights=True, batch_size=3, workers=1)
    )
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk) == NATIVE_REPORT_FIELDS
    assert report["random_weights"] and report["weights"]["sha256"] == "random"
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text()
    assert report["dataset"]["n_images"] == 7 and report["n_scored"] == 7
    assert report["preprocess"] == PRESETS["torchvision-256"].to_dict()
    assert report["published"]["top1_error"] == pytest.approx(25.958)
    assert report["timing"]["batch_ms_mean"] > 0 and report["timing"]["wall_s"] > 0
    assert (report["batch_size"], report["batch_size_source"], report["timing"]["n_batches"]) == (3, "--batch-size", 3)
    assert report["tensors_sha256"] == torchvision_tensors_sha256(generated_folder)
    logits = np.load(out / "logits.npy")
    assert logits.shape == (7, 1000) and 0.2 < float(logits.std()) < 5  # a well-scaled random model
    assert on_disk["tensors_sha256"] == report["tensors_sha256"]
    timeline = report["timing"]["timeline_s"]  # parent and worker phases, in the order they ended
    assert list(timeline.values()) == sorted(timeline.values())
    for phase in ("dataset_listed", "worker_started", "framework_imported", "model_ready", "warmed_up",
                  "first_batch_done", "last_batch_done", "decode_done", "logits_saved"):
        assert phase in timeline, phase
    assert timeline["worker_started"] < timeline["model_ready"] < timeline["last_batch_done"] < timeline["logits_saved"]
    assert timeline["model_ready"] < timeline["warmed_up"] < timeline["first_batch_done"]  # set-up is not timed
    assert report["timing"]["warmup_s"] > 0
    assert "Where the time went" in (out / "report.md").read_text()


ZERO_HEAD = """
import sys, numpy as np, torch
from xfverify.evaluator.backends.torch.backend import TorchBackend
from xfverify.evaluator.backends.weights import calibration_batch
backend = TorchBackend()
backend.seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(8, 10)).eval()
torch.nn.init.zeros_(model[-1].weight); torch.nn.init.zeros_(model[-1].bias)  # as torchvision's ViT does
backend.calibrate(model, calibration_batch(0, 4, "NCHW", 16), None)
with torch.no_grad():
    out = model(torch.from_numpy(calibration_batch(1, 3, "NCHW", 16))).numpy()
print(backend.random_scheme, float(np.ptp(out, axis=0).max()))
"""


@needs_torch
def test_a_zero_initialised_head_gets_random_weights_so_outputs_differ_between_images():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", ZERO_HEAD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    scheme, spread = done.stdout.split()
    assert scheme == "-head-initialised" and float(spread) > 1e-3


@needs_tensorflow
def test_keras_random_weights_report(tmp_path, generated_folder):
    report = native_json(
        NativeOptions(model="keras/MobileNet", data=str(generated_folder), out=str(tmp_path / "r"),
                      random_weights=True, batch_size=4, workers=1, limit=5)
    )
    assert report["framework"]["name"] == "tensorflow" and report["output"] == "softmax"
    assert report["preprocess"]["layout"] == "NHWC" and report["n_scored"] == 5
    probs = np.load(tmp_path / "r" / "logits.npy")
    assert probs.shape == (5, 1000) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@needs_mxnet
def test_mxnet_random_weights_report(tmp_path, generated_folder):
    report = native_json(
        NativeOptions(model="gluoncv/mobilenet1.0", data=str(generated_folder), out=str(tmp_path / "r"),
                      random_weights=True, batch_size=4, workers=1, limit=5)
    )
    assert report["framework"]["name"] == "mxnet" and report["device"]["type"] == "cpu"
    logits = np.load(tmp_path / "r" / "logits.npy")
    assert logits.shape == (5, 1000) and np.isfinite(logits).all()


@needs_torch
def test_the_same_images_give_the_same_tensor_hash_across_layouts_and_batch_sizes(tmp_path, generated_folder):
    a = native_json(NativeOptions(model="torchvision/resnet50:IMAGENET1K_V1", data=str(generated_folder),
                                 out=str(tmp_path / "a"), random_weights=True, batch_size=2, limit=4))
    b = native_json(NativeOptions(model="torchvision/resnet101:IMAGENET1K_V1", data=str(generated_folder),
                                 out=str(tmp_path / "b"), random_weights=True, batch_size=3, limit=4))
    assert a["tensors_sha256"] == b["tensors_sha256"]  # same spec, same images, other model and batching
    assert b["cache"]["decoded"] == 0  # and the second run decoded nothing


# --- user errors: one line, exit code 2 ---------------------------------------------------------


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if "error:" in line]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr, result.stderr
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, (fragment, result.stderr)


@needs_torch
def test_cuda_requested_without_gpu_fails_clearly(tmp_path):
    result = run_cli("native", "--device", "cuda", "--limit", "1", "--out", str(tmp_path / "r"),
                     env=without_gpus())
    assert_user_error(result, "--device cuda", "no usable CUDA GPU")


@needs_tensorflow
def test_keras_cuda_requested_without_gpu_fails_clearly(tmp_path):
    result = run_cli("native", "keras/MobileNet", "--random-weights", "--device", "cuda", "--limit", "1",
                     "--out", str(tmp_path / "r"), env=without_gpus())
    assert_user_error(result, "--device cuda", "TensorFlow", "sees no GPU")


@needs_mxnet
def test_mxnet_cuda_requested_without_gpu_names_the_hopper_limit(tmp_path):
    result = run_cli("native", "gluoncv/mobilenet1.0", "--random-weights", "--device", "cuda", "--limit", "1",
                     "--out", str(tmp_path / "r"))
    assert_user_error(result, "--device cuda", "sm_89/sm_90", "--device cpu")


@needs_torch
def test_cuda_graphs_need_a_gpu_and_torch(tmp_path):
    result = run_cli("native", "--device", "cpu", "--cuda-graphs", "--limit", "1", "--out", str(tmp_path / "r"))
    assert_user_error(result, "--cuda-graphs", "needs a CUDA GPU")
    result = run_cli("native", "keras/MobileNet", "--random-weights", "--cuda-graphs", "--limit", "1",
                     "--out", str(tmp_path / "k"))
    assert_user_error(result, "--cuda-graphs", "torch models", "tensorflow")


@needs_torch
def test_tf32_on_cpu_is_refused(tmp_path):
    result = run_cli("native", "--device", "cpu", "--precision", "tf32", "--limit", "1", "--out", str(tmp_path / "r"))
    assert_user_error(result, "--precision tf32", "CUDA GPUs only")


@needs_torch
def test_missing_torchvision_weights_offline(tmp_path):
    result = run_cli("native", "torchvision/resnet50", "--limit", "1", "--out", str(tmp_path / "r"),
                     env={"TORCH_HOME": str(tmp_path / "torch-home")})
    assert_user_error(result, "resnet50-11ad3fa6.pth", str(tmp_path / "torch-home"), "--weights FILE")


@needs_tensorflow
def test_missing_keras_weights_offline(tmp_path):
    result = run_cli("native", "keras/ResNet50", "--limit", "1", "--out", str(tmp_path / "r"),
                     env={"KERAS_HOME": str(tmp_path / "keras-home")})
    assert_user_error(result, "resnet50_weights_tf_dim_ordering_tf_kernels.h5", "keras-home")


@needs_mxnet
def test_missing_gluoncv_weights_offline(tmp_path):
    result = run_cli("native", "gluoncv/resnet50_v1b", "--limit", "1", "--out", str(tmp_path / "r"),
                     env={"MXNET_HOME": str(tmp_path / "mx-home")})
    assert_user_error(result, "resnet50_v1b-0ecdba34.params", "mx-home")


@needs_torch
def test_weights_file_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fc.weight": Evil()}))
    result = run_cli("native", "torchvision/resnet50", "--weights", str(evil), "--limit", "1", "--out", str(tmp_path / "r"))
    assert_user_error(result, "weights_only=True")
    assert "this must never run" not in result.stdout + result.stderr


def test_unknown_model_and_bad_data_path(tmp_path):
    assert_user_error(run_cli("native", "torchvision/resnet5000"), "unknown model", "torchvision/resnet5000")
    assert_user_error(run_cli("native", "--data", str(tmp_path / "nowhere")), "no such file or folder")
    assert_user_error(run_cli("native", "--preprocess", "keras-caffe"), "NHWC", "layout=NCHW")
    assert_user_error(run_cli("native", "--workers", "0"), "--workers must be positive")
    assert_user_error(run_cli("native", "--weights", str(tmp_path)), "--weights", "a folder, not a weights file")


def test_folders_that_cannot_be_created_are_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_user_error(run_cli("native", "--out", str(blocker / "out")), "--out", "cannot create this folder")
    assert_user_error(run_cli("native", "--cache-dir", str(blocker / "cache"), "--out", str(tmp_path / "o")),
                      "--cache-dir", "cannot create this folder")
    assert_user_error(run_cli("native", "--out", str(tmp_path / "o"), env={"XFVERIFY_CACHE": str(blocker / "c")}),
                      "$XFVERIFY_CACHE", "cannot create this folder")


@needs_torch
def test_bad_image_stops_then_skip_lists_it(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for name in ("coffee.png", "grace_hopper.jpg"):
        (data / name).write_bytes((SAMPLE_DIR / name).read_bytes())
    bad = broken_images(data)["truncated"]
    (data / "empty.JPEG").unlink()
    (data / "text.JPEG").unlink()
    (data / "labels.csv").write_text("image,labels\ncoffee.png,967\ngrace_hopper.jpg,652\ntruncated.JPEG,1\n")
    stopped = run_cli("native", "--data", str(data), "--out", str(tmp_path / "r1"))
    assert_user_error(stopped, str(bad), "--on-bad-image skip")
    report = native_json(NativeOptions(data=str(data), out=str(tmp_path / "r2"), on_bad_image="skip"))
    assert [s["image_id"] for s in report["skipped_images"]] == ["truncated"]
    assert report["n_scored"] == 2 and report["cache"]["decoded"] == 0  # the stopped run's work was kept
    assert predictions(tmp_path / "r2")["truncated"]["status"] == "skipped"
    assert np.isnan(np.load(tmp_path / "r2" / "logits.npy")[2]).all()


@needs_torch
@pytest.mark.slow
def test_ctrl_c_gives_one_line_and_keeps_finished_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import write_jpeg

    data = tmp_path / "d"
    for i in range(300):
        write_jpeg(data / f"im_{i:03d}.jpg", seed=i, width=320, height=240)
    cache = tmp_path / "cache"
    env = {**os.environ, "XFVERIFY_CACHE": str(cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "xfverify", "native", "torchvision/resnet101:IMAGENET1K_V1", "--random-weights",
         "--data", str(data), "--batch-size", "4", "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        # a test worker (pytest-xdist) ignores SIGINT, and a child would inherit that: Ctrl-C as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("*/shards/*.json")):
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: the whole process group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("a rerun resumes")
    assert list(cache.glob("*/shards/*.json")), "the finished shard is kept"


WRAPPER = """#!{python}
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
sys.meta_path.insert(0, Block())
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_framework_missing_in_the_worker_interpreter_is_a_user_error(tmp_path):
    import sys

    wrapper = tmp_path / "python-without-torch"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    result = run_cli("native", "--limit", "1", "--out", str(tmp_path / "r"), env={"XFVERIFY_PYTHON_TORCH": str(wrapper)})
    assert_user_error(result, "cannot import torch", "pip install 'xfverify[torch]'")
    missing = run_cli("native", "--limit", "1", "--out", str(tmp_path / "r2"),
                      env={"XFVERIFY_PYTHON_TORCH": str(tmp_path / "no-such-python")})
    assert_user_error(missing, "XFVERIFY_PYTHON_TORCH")


def test_a_worker_killed_by_sigkill_is_one_line_that_names_the_out_of_memory_killer_only_on_its_evidence(
        tmp_path, monkeypatch):
    """Before: a traceback (WorkerCrashed, exit code -9), and a study stopped as if on a bug."""
    import itertools
    import sys

    from xfverify.evaluator.process import launcher

    wrapper = tmp_path / "python-killed"
    wrapper.write_text(f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    wrapper.chmod(0o755)
    env = {"XFVERIFY_PYTHON_TORCH": str(wrapper)}
    killed = run_cli("native", "--limit", "1", "--out", str(tmp_path / "r"), env=env)
    assert_user_error(killed, "torch worker (evaluate) was killed by SIGKILL from outside xfverify",
                      "out-of-memory count did not change")
    counts = itertools.count(7)  # the kernel's count goes up while each worker runs
    monkeypatch.setattr(launcher, "out_of_memory_kills", lambda: next(counts))
    oom = run_cli("native", "--limit", "1", "--out", str(tmp_path / "o"), env=env)
    assert_user_error(oom, "torch worker (evaluate) was ended by the kernel's out-of-memory killer", "free memory")


@needs_torch
def test_local_weights_file_is_loaded_and_fingerprinted(tmp_path, generated_folder):
    import subprocess
    import sys

    good, wrong = tmp_path / "mnv2.pth", tmp_path / "other.pth"
    subprocess.run([sys.executable, "-c", (
        "import sys, torch, torchvision; torch.manual_seed(1);"
        "torch.save(torchvision.models.mobilenet_v2().state_dict(), sys.argv[1]);"
        "torch.save({'state_dict': torchvision.models.squeezenet1_0().state_dict()}, sys.argv[2])"
    ), str(good), str(wrong)], check=True, timeout=300)
    report = native_json(NativeOptions(model="torchvision/mobilenet_v2:IMAGENET1K_V1", data=str(generated_folder),
                                      out=str(tmp_path / "r"), weights=str(good), limit=2, workers=1))
    assert report["weights"]["source"] == str(good)
    assert report["weights"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    result = run_cli("native", "torchvision/mobilenet_v2:IMAGENET1K_V1", "--weights", str(wrong), "--data",
                     str(generated_folder), "--limit", "1", "--out", str(tmp_path / "r2"))
    assert_user_error(result, "does not fit this architecture")


# --- hostile and mistaken runs: one line and exit 2, or a whole report; never a silent or empty score --------


def test_a_second_run_in_the_same_out_is_refused_naming_the_first(tmp_path):
    import os

    from xfverify.evaluator.system.files import RUN_LOCK, owned_folder

    out = tmp_path / "r"
    out.mkdir()
    with owned_folder(out, "--out"):
        result = run_cli("native", "--random-weights", "--limit", "1", "--out", str(out))
    assert_user_error(result, f"--out {out} is in use by another xfverify run (pid {os.getpid()})")
    assert not (out / RUN_LOCK).exists() and not (out / ".work").exists()


def test_a_run_lock_that_is_a_link_or_a_folder_is_refused_and_nothing_is_followed(tmp_path):
    from xfverify.evaluator.system.files import RUN_LOCK

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "r"
    out.mkdir()
    (out / RUN_LOCK).symlink_to(victim)
    result = run_cli("native", "--random-weights", "--limit", "1", "--out", str(out))
    assert_user_error(result, f"--out: {out / RUN_LOCK} is not a regular file", "remove it")
    assert victim.read_text() == "precious" and (out / RUN_LOCK).is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]
    (out / RUN_LOCK).unlink()
    (out / RUN_LOCK).mkdir()
    assert_user_error(run_cli("native", "--random-weights", "--limit", "1", "--out", str(out)),
                      f"{out / RUN_LOCK} is not a regular file")


@needs_torch
def test_a_work_folder_that_is_a_link_a_file_or_not_xfverifys_is_refused_and_a_killed_runs_is_replaced(tmp_path):
    from xfverify.evaluator.pipeline.outdir import WORK_MARKER

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("precious")
    out = tmp_path / "r"
    out.mkdir()
    work = out / ".work"
    work.symlink_to(elsewhere)
    run = ("native", "--random-weights", "--limit", "1", "--out", str(out))
    assert_user_error(run_cli(*run), f"--out {out}: .work there is not a folder", "move it away")
    assert work.is_symlink() and sorted(p.name for p in elsewhere.iterdir()) == ["mine.txt"]
    work.unlink()
    work.write_text("a file")
    assert_user_error(run_cli(*run), ".work there is not a folder")
    assert work.read_text() == "a file"
    work.unlink()
    work.mkdir()
    (work / "mine.txt").write_text("precious")
    assert_user_error(run_cli(*run), f".work there is a folder xfverify did not make (it lacks {WORK_MARKER})")
    assert (work / "mine.txt").read_text() == "precious"
    (work / "mine.txt").unlink()
    (work / WORK_MARKER).write_text("")  # what a killed run leaves
    (work / "logits.npy").write_text("half-written")
    result = run_cli(*run)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".xfverify-outputs.json", "logits.npy", "predictions.csv", "report.html", "report.json", "report.md"]


def test_numbers_and_names_a_worker_would_choke_on_are_refused_first(tmp_path):
    for seed in ("-5", str(2**32)):
        assert_user_error(run_cli("native", "--seed", seed, "--out", str(tmp_path / "r")), "--seed must be between 0 and 4294967295")
    assert_user_error(run_cli("native", "", "--out", str(tmp_path / "r")), "MODEL is empty")
    assert_user_error(run_cli("preprocess", "", str(SAMPLE_DIR / "coffee.png"), "--out", str(tmp_path / "x")), "MODEL is empty")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert_user_error(run_cli("native", "--weights", str(tmp_path / "empty.pth"), "--out", str(tmp_path / "r")),
                      "empty.pth: the file is empty")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "coffee.png").write_bytes((SAMPLE_DIR / "coffee.png").read_bytes())
    assert_user_error(run_cli("native", "--data", str(unlabelled), "--per-class", "1", "--out", str(tmp_path / "r")),
                      "--per-class 1: none of the 1 images", "has a label")
    assert not (tmp_path / "r").exists()  # no run started, nothing left


def test_preprocess_names_the_bad_file_without_a_native_option_and_says_where_it_wrote(tmp_path):
    from helpers import decompression_bomb

    bomb = decompression_bomb(tmp_path / "bomb.png")
    result = run_cli("preprocess", "torchvision/resnet50", str(bomb), "--out", str(tmp_path / "x"))
    assert_user_error(result, f"cannot decode image {bomb}", "exceeds limit", "leave it out")
    assert "--on-bad-image" not in result.stderr
    result = run_cli("preprocess", "torchvision/resnet50", str(SAMPLE_DIR / "coffee.png"), "--out", str(tmp_path / "x"))
    assert result.returncode == 0 and f"wrote {tmp_path / 'x.npy'}:" in result.stderr
    assert np.load(tmp_path / "x.npy").shape == (1, 3, 224, 224)


def hostile_folder(root: Path) -> Path:
    """A photo, a 16-bit grayscale PNG, a decompression bomb and a link to itself; no labels."""
    from PIL import Image

    from helpers import decompression_bomb

    root.mkdir()
    (root / "coffee.png").write_bytes((SAMPLE_DIR / "coffee.png").read_bytes())
    Image.fromarray(np.full((60, 80), 40000, dtype=np.uint16)).save(root / "depth.png")
    decompression_bomb(root / "bomb.png")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    return root


@needs_torch
def test_bombs_and_link_loops_are_bad_images_and_a_16_bit_png_gets_a_note(tmp_path):
    data = hostile_folder(tmp_path / "d")
    stopped = run_cli("native", "--random-weights", "--data", str(data), "--out", str(tmp_path / "r1"))
    assert_user_error(stopped, f"cannot decode image {data / 'bomb.png'}", "exceeds limit", "--on-bad-image skip")
    assert not (tmp_path / "r1").exists(), "a failed run leaves no folder it made, nor .work"
    report = native_json(NativeOptions(data=str(data), out=str(tmp_path / "r2"), random_weights=True, on_bad_image="skip"))
    skipped = {s["image_id"]: s["reason"] for s in report["skipped_images"]}
    assert set(skipped) == {"bomb", "loop"} and "symbolic links" in skipped["loop"]
    notes = " ".join(report["notes"])
    assert f"the first {data / 'depth.png'}: PIL mode I;16" in notes
    assert "nothing was scored: these are predictions only" in notes
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == [".xfverify-outputs.json", "logits.npy", "predictions.csv", "report.html", "report.json", "report.md"]


@needs_torch
def test_every_image_skipped_is_an_error_not_an_empty_report(tmp_path):
    data = tmp_path / "d"
    broken_images(data)
    out = tmp_path / "r"
    out.mkdir()
    result = run_cli("native", "--random-weights", "--data", str(data), "--on-bad-image", "skip", "--out", str(out))
    assert_user_error(result, "nothing was scored: 3 of 3 images were skipped as undecodable")
    assert list(out.iterdir()) == [], "no report, no .work"


@needs_torch
def test_earlier_outputs_are_replaced_as_a_set_and_said(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "report.json").chmod(0o444)
    (out / "predictions.csv").write_text("old")
    (out / ".xfverify-outputs.json").write_text('{"files": ["report.json", "predictions.csv"]}')  # an earlier run's
    result = run_cli("native", "--random-weights", "--limit", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"--out {out} holds an earlier report: this run replaces it" in " ".join(result.stderr.split())
    report = json.loads((out / "report.json").read_text())
    assert f"this report replaced an earlier one in {out}" in report["notes"]
    assert (out / "predictions.csv").read_text().startswith("image_id")
    assert sorted(p.name for p in out.iterdir()) == [".xfverify-outputs.json", "logits.npy", "predictions.csv", "report.html", "report.json", "report.md"]
    (out / "report.json").unlink()
    (out / "report.json").mkdir()  # cannot be replaced: refused before any work
    (out / "logits.npy").unlink()
    refused = run_cli("native", "--random-weights", "--limit", "1", "--out", str(out))
    assert_user_error(refused, "report.json there is a folder")
    assert not (out / "logits.npy").exists() and not (out / ".work").exists()


@needs_torch
def test_weights_files_that_are_not_state_dicts_give_one_clean_line(tmp_path):
    import subprocess
    import sys

    whole = tmp_path / "whole.pth"
    subprocess.run([sys.executable, "-c", "import sys, torch, torchvision; torch.save(torchvision.models.mobilenet_v2(), sys.argv[1])",
                    str(whole)], check=True, timeout=300)
    result = run_cli("native", "torchvision/mobilenet_v2:IMAGENET1K_V1", "--weights", str(whole), "--limit", "1",
                     "--out", str(tmp_path / "r"))
    assert_user_error(result, "holds Python objects (torchvision.models.mobilenetv2.MobileNetV2)", "state_dict()")
    assert "\x1b[" not in result.stderr


@needs_mxnet
def test_mxnet_weights_file_that_is_not_params_gives_one_clean_line(tmp_path):
    bad = tmp_path / "bad.params"
    bad.write_bytes(bytes(range(256)) * 4)
    result = run_cli("native", "gluoncv/mobilenet1.0", "--weights", str(bad), "--limit", "1", "--out", str(tmp_path / "r"))
    assert_user_error(result, "cannot be loaded into mobilenet1.0", "Invalid NDArray file format")
    assert ".cc" not in result.stderr and "Traceback" not in result.stderr


def test_framework_error_text_fits_one_line():
    from xfverify.evaluator.backends.weights import exception_text

    assert exception_text(EOFError()) == "EOFError"  # torch's text for an empty file is empty
    mxnet = 'Traceback (most recent call last):\n  File "../src/ndarray/ndarray.cc", line 1858\nMXNetError: Check failed: header == kMagic: Invalid NDArray file format'
    assert exception_text(RuntimeError(mxnet)) == "Invalid NDArray file format"
    torch = "Weights only load failed. You have \x1b[1mtwo options\x1b[0m. \n\t(1) " + "Long advice. " * 30
    text = exception_text(RuntimeError(torch))
    assert text == "Weights only load failed. You have two options. (1) Long advice." + " Long advice." * 10


def test_keras_random_weights_are_calibrated_on_photo_like_pixels_of_the_models_own_input():
    from xfverify.evaluator.backends.weights import calibration_batch
    from xfverify.models.cards import get_card

    raw = calibration_batch(0, 2, "NHWC", 64, get_card("keras/EfficientNetB0").reference_spec)  # takes 0-255 pixels
    assert raw.dtype == np.float32 and raw.shape == (2, 64, 64, 3)
    assert raw.min() >= 0 and raw.max() <= 255 and 80 < raw.mean() < 150
    rows = raw[..., 0].reshape(-1, 64)
    assert np.corrcoef(rows[:, :-1].ravel(), rows[:, 1:].ravel())[0, 1] > 0.5  # neighbours alike, as in photos
    caffe = calibration_batch(0, 2, "NHWC", 64, get_card("keras/ResNet50").reference_spec)  # BGR means subtracted
    assert abs(caffe.mean()) < 30 and caffe.std() > 20
    assert np.array_equal(calibration_batch(0, 2, "NCHW", 8),  # without a spec: the standard-normal batch as before
                          np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32))
