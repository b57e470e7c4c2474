"""Hostile and mistaken input, fourth round (`study`, the Python API, warm workers, the caches): every case ends in a
correct result or one line and exit 2; nothing written outside --out or through a link under it, no user's file
replaced, no hang, no process or folder left behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import needs_torch, run_cli
from test_native import assert_user_error

from xfverify.models.errors import UserError

MINI = """name = "mini"
[[cells]]
models = ["torchvision/mobilenet_v3_large:IMAGENET1K_V1"]
runs = ["native"]
random_weights = true
"""
NATIVE_CELL = "native-torchvision_mobilenet_v3_large_IMAGENET1K_V1-random"


def _study(tmp_path: Path, out: Path, text: str = MINI, **options):
    """``xfverify.study`` on a small study file, two images, on the CPU."""
    import xfverify

    path = tmp_path / "mini.toml"
    path.write_text(text)
    return xfverify.study(str(path), out=str(out), limit=2, device="cpu", provider="cpu",
                          cache_dir=str(tmp_path / "cache"), **options)


def _refused(call, *fragments: str) -> str:
    with pytest.raises(UserError) as caught:
        call()
    text = str(caught.value)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


# --- 1: a study never writes through a link under --out ------------------------------------------------------------


@pytest.mark.parametrize("linked", ["cells", f"cells/{NATIVE_CELL}"])
def test_a_linked_cells_folder_is_refused_and_nothing_is_written_in_its_target(tmp_path, linked):
    out, target = tmp_path / "out", tmp_path / "elsewhere"
    target.mkdir()
    (target / "report.md").write_text("the user's own\n")
    (out / linked).parent.mkdir(parents=True)
    (out / linked).symlink_to(target)
    _refused(lambda: _study(tmp_path, out), linked.split("/")[-1], "symbolic link", "never followed")
    assert sorted(os.listdir(target)) == ["report.md"] and (target / "report.md").read_text() == "the user's own\n"


# --- 14: things in the way are one line ----------------------------------------------------------------------------


def test_cells_a_file_or_a_cell_json_a_folder_is_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cells").write_text("")
    _refused(lambda: _study(tmp_path, out), "cells there is not a folder")
    (out / "cells").unlink()
    (out / "cells" / NATIVE_CELL / "cell.json").mkdir(parents=True)
    _refused(lambda: _study(tmp_path, out), "cell.json there is not a regular file")


def test_out_on_a_pseudo_file_system_is_one_line(tmp_path):
    result = run_cli("native", "--random-weights", "--limit", "1", "--out", "/proc", "--cache-dir", str(tmp_path / "c"))
    assert_user_error(result, "/proc")


# --- 2: a user's own files in --out are never replaced ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["report.md", "report.html", "predictions.csv", "logits.npy", "report.json"])
def test_a_users_file_where_a_run_writes_its_output_is_refused_before_any_work(tmp_path, name):
    import xfverify

    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine\n")
    _refused(lambda: xfverify.native(out=str(out), limit=1, random_weights=True, cache_dir=str(tmp_path / "c")),
             name, "not a file an earlier xfverify run wrote", "move it away")
    assert (out / name).read_text() == "mine\n"


@pytest.mark.parametrize("name", ["study.md", "study.csv", "study.json", "study.html"])
def test_a_users_file_where_a_study_writes_is_refused_before_any_cell(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("{}\n")
    _refused(lambda: _study(tmp_path, out), name, "not a file an earlier xfverify run wrote")
    assert (out / name).read_text() == "{}\n" and not (out / "cells").exists()


@pytest.mark.parametrize("broad", ["home", "above home", "root"])
def test_the_home_folder_and_the_root_are_refused_as_out(tmp_path, monkeypatch, broad):
    import xfverify

    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    out = {"home": home, "above home": home.parent, "root": Path("/")}[broad]
    from xfverify.evaluator.pipeline import native_pass

    def would_write(*args):  # without the check, the run stops here: nothing is ever written in / or ~
        raise AssertionError(f"a run was started in {out}")

    from xfverify.evaluator.pipeline import study

    monkeypatch.setattr(native_pass, "_native_pass", would_write)
    monkeypatch.setattr(study, "_run_in", would_write)
    _refused(lambda: xfverify.native(out=str(out), limit=1, random_weights=True, cache_dir=str(tmp_path / "c")),
             "not a folder for one run's outputs")
    _refused(lambda: xfverify.study("lite", out=str(out), limit=1), "not a folder for one run's outputs")
    assert sorted(os.listdir(home)) == []


@needs_torch
def test_a_rerun_replaces_the_outputs_an_earlier_run_wrote(tmp_path):
    import xfverify

    out = tmp_path / "out"
    options = dict(out=str(out), limit=1, random_weights=True, cache_dir=str(tmp_path / "c"), device="cpu")
    xfverify.native(**options)
    (out / "report.md").write_text("edited since")  # still the run's file: the ledger names it
    xfverify.native(**options)
    ledger = json.loads((out / ".xfverify-outputs.json").read_text())["files"]
    assert ledger == sorted(["report.json", "report.md", "report.html", "logits.npy", "predictions.csv"])
    assert (out / "report.md").read_text().startswith("# xfverify native")


# --- 13: a study's --out holding another study -----------------------------------------------------------------------


def test_a_study_does_not_take_over_another_studys_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    theirs = json.dumps({"name": "theirs", "cells": []})
    (out / "study.json").write_text(theirs)
    _refused(lambda: _study(tmp_path, out), "holds another study, theirs", "choose another --out")
    assert (out / "study.json").read_text() == theirs and not (out / "cells").exists()
    shutil.rmtree(out)


# --- 5: one folder per cell ------------------------------------------------------------------------------------------


def test_diagnose_cells_of_one_model_differing_in_variants_or_precisions_get_their_own_folders(tmp_path):
    from xfverify.models.study import cells_of, load_study

    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n'
                    '[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["diagnose"]\nvariants = ["squash"]\n'
                    '[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["diagnose"]\nvariants = ["resize-pil"]\n'
                    '[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["diagnose"]\nvariants = ["squash"]\n'
                    'precisions = ["bf16"]\n'
                    '[[cells]]\nmodels = ["keras/ResNet50"]\nruns = ["native"]\n')
    cells = cells_of(load_study(str(path)))
    assert len(cells) == 4 and len({cell.name for cell in cells}) == 4
    assert cells[3].name == "native-keras_ResNet50_imagenet"  # a cell with nothing to tell apart keeps its plain name


# --- 12: a study file's values are what they say ---------------------------------------------------------------------


@pytest.mark.parametrize("line, where", [('models = [""]', "cells.0.models.0"), ('models = ["  "]', "cells.0.models.0"),
                                         ('models = ["keras/ResNet50"]\nrandom_weights = "yes"', "random_weights"),
                                         ('models = ["keras/ResNet50"]\nrandom_weights = 1', "random_weights")])
def test_an_empty_model_pattern_or_a_non_boolean_random_weights_is_one_line(tmp_path, line, where):
    from xfverify.models.study import cells_of, load_study

    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\n[[cells]]\n{line}\n')
    _refused(lambda: cells_of(load_study(str(path))), where)


# --- 7, 8: a reused cell's numbers are its report's, its files intact -------------------------------------------------


@needs_torch
def test_a_reused_cells_numbers_come_from_its_checked_report_and_damaged_logits_run_it_again(tmp_path):
    import numpy as np

    out = tmp_path / "out"
    first = _study(tmp_path, out)
    assert (first.ran, first.reused) == (1, 0)
    true_error = first.cells[0].native.top1_error
    recorded = out / "cells" / NATIVE_CELL / "cell.json"
    edited = json.loads(recorded.read_text())
    edited["native"]["top1_error"] = 1.5  # "better" numbers typed into cell.json
    recorded.write_text(json.dumps(edited))
    second = _study(tmp_path, out)
    assert (second.ran, second.reused) == (0, 1)
    assert second.cells[0].native.top1_error == true_error
    assert json.loads((out / "study.json").read_text())["cells"][0]["native"]["top1_error"] == true_error

    logits = out / "cells" / NATIVE_CELL / "logits.npy"
    values = np.load(logits)
    values[0, 0] += 1
    np.save(logits, values)  # damaged after the run: the cell is not done
    third = _study(tmp_path, out)
    assert (third.ran, third.reused) == (1, 0)


# --- 3: the README's Python example saved as a script, without a main guard ------------------------------------------


UNGUARDED_SCRIPT = """import xfverify

report = xfverify.native("pypi/efficientnet_lite0", random_weights=True, limit=3, cache_dir={cache!r}, device="cpu")
print("scored", report.n_scored)
"""


def test_decode_processes_start_under_a_temporary_folder_too_long_for_a_socket(tmp_path):
    """Before: the fork server's socket went in TMPDIR, and a TMPDIR over ~70 characters stopped every decode
    process from starting ("AF_UNIX path too long")."""
    import subprocess
    import sys

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    script = ("import os\nfrom concurrent.futures import ProcessPoolExecutor\n"
              "from xfverify.evaluator.cache.starting import WITHOUT_MAIN\n"
              "with ProcessPoolExecutor(1, mp_context=WITHOUT_MAIN) as pool:\n"
              "    print(pool.submit(os.getpid).result() != os.getpid())\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(deep)},
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]
    assert list(deep.iterdir()) == []


@needs_torch
def test_a_script_without_a_main_guard_runs_once_on_a_cold_cache(tmp_path):
    """Before: the decode pool's fork server children imported the script again and ran its call of xfverify there:
    a deadlock with the default --out, a broken pool with one given."""
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(UNGUARDED_SCRIPT.format(cache=str(tmp_path / "cold-cache")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the script did not finish: its decode processes ran it again")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("scored") == 1 and len(list((tmp_path / "xfverify-out").iterdir())) == 1


# --- 4: warm workers are each caller's own ---------------------------------------------------------------------------


class _Server:
    def __init__(self, closed: list, name: str) -> None:
        self.closed, self.name = closed, name

    def close(self) -> None:
        self.closed.append(self.name)


def test_two_threads_warm_worker_scopes_neither_use_nor_close_each_others_servers():
    """Before: one process-global scope: the thread whose scope ended first closed the other's servers (a running
    cell killed) and left it with no scope."""
    import threading

    from xfverify.evaluator.process import warm

    closed: list[str] = []
    a_entered, a_left = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first():
        with warm.warm_workers() as scope:
            scope._servers["torch"] = _Server(closed, "first's")
            scope._framework_locks["torch"] = threading.Lock()
            seen["first"] = warm.active()
            a_entered.set()
            b_entered.wait(10)
        a_left.set()

    b_entered = threading.Event()

    def second():
        a_entered.wait(10)
        with warm.warm_workers() as scope:
            scope._servers["torch"] = _Server(closed, "second's")
            scope._framework_locks["torch"] = threading.Lock()
            b_entered.set()
            a_left.wait(10)
            seen["second after first left"] = (warm.active() is scope, list(closed))
        seen["second after its own"] = warm.active()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen["second after first left"] == (True, ["first's"])
    assert closed == ["first's", "second's"] and seen["second after its own"] is None


def test_a_studys_cpu_lane_runs_in_the_studys_warm_workers(tmp_path):
    """The scope is each caller's (a context variable): the lane thread the study starts is handed the study's."""
    from xfverify.evaluator.pipeline.study import PlannedCell, run_locally
    from xfverify.evaluator.process import warm
    from xfverify.models.study import Cell

    plan = [PlannedCell(Cell(run="native", model=model), model, tmp_path / model)
            for model in ("torchvision/resnet50:IMAGENET1K_V1", "gluoncv/resnet50_v1b")]
    scopes = {}

    def run(planned, results):
        scopes[planned.key] = warm.active()
        return "done"

    run_locally(plan, run, {}, lambda planned, result: None, on_gpu=lambda planned: "torch" in planned.key)
    assert len(scopes) == 2 and None not in scopes.values() and len(set(map(id, scopes.values()))) == 1


def test_a_study_run_in_the_callers_warm_workers_uses_its_servers_and_leaves_them_to_it(tmp_path):
    """Before: every study started servers of its own, importing each framework again, inside a caller's scope."""
    import contextvars

    from xfverify.evaluator.pipeline.study import PlannedCell, run_locally
    from xfverify.evaluator.process import warm
    from xfverify.models.study import Cell

    plan = [PlannedCell(Cell(run="native", model="torchvision/resnet50:IMAGENET1K_V1"), "cell", tmp_path / "cell")]

    def scope_of_its_cell() -> object:
        seen = []
        run_locally(plan, lambda planned, results: seen.append(warm.active()) or "done", {},
                    lambda planned, result: None)
        return seen[0]

    with warm.warm_workers() as callers:
        assert scope_of_its_cell() is callers and warm.active() is callers
    own = contextvars.Context().run(scope_of_its_cell)  # no scope around it: the study's own, closed after
    assert own is not None and own is not callers and own._closed


# --- 15: a killed run leaves no folder in the temporary folder --------------------------------------------------------


@needs_torch
def test_a_run_killed_while_its_export_worker_runs_leaves_nothing_in_the_temporary_folder(tmp_path):
    """Before: the export worker's folder was made in $TMPDIR, and a SIGKILL left it there for good."""
    import signal
    import subprocess
    import sys
    import time

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A small torchvision network: its native pass needs no TensorFlow (the default card decodes in a TF worker).
    process = subprocess.Popen([sys.executable, "-m", "xfverify", "onnx", "torchvision/squeezenet1_1:IMAGENET1K_V1",
                                "--random-weights", "--limit", "2",
                                "--provider", "cpu", "--device", "cpu", "--out", str(tmp_path / "out"),
                                "--cache-dir", str(tmp_path / "cache")], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "stderr.txt", "w"), start_new_session=True)
    deadline = time.time() + 300  # its native run comes first: seconds alone, minutes on a loaded machine
    while time.time() < deadline and process.poll() is None and not list(tmp_path.rglob("export.job.json")):
        time.sleep(0.2)
    exporting = bool(list(tmp_path.rglob("export.job.json")))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert exporting, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert [p.name for p in temporary.iterdir() if p.name.startswith("xfverify-")] == []


# --- 10, 14: a Ray cluster that is not there, or not an address, is one line soon -------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_ray_address_is_one_line_within_a_bounded_time(tmp_path):
    """Before: Ray retried the address for over five minutes, saying only its retries."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed")
    result = run_cli("study", "lite", "--executor", "ray", "--address", f"127.0.0.1:{_closed_port()}", "--out",
                     str(tmp_path / "o"), isolated=True, timeout=90)
    assert_user_error(result, "--address 127.0.0.1:", "no Ray cluster answers there")
    assert not (tmp_path / "o").exists()


def test_an_address_that_drops_connections_is_refused_after_the_probe_time(monkeypatch):
    import time

    from xfverify.evaluator.pipeline import study_ray

    def silent(address, timeout):
        time.sleep(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(study_ray, "PROBE_S", 0.2)
    monkeypatch.setattr(study_ray.socket, "create_connection", silent)
    started = time.time()
    _refused(lambda: study_ray.check_cluster("10.255.255.1:6379"), "timed out", "waited up to 0.2 s")
    assert time.time() - started < 2


@pytest.mark.parametrize("address, environment, named", [
    ("not an address", {}, "--address not an address: not a Ray cluster's address"),
    ("host:port", {}, "--address host:port: not a Ray cluster's address"),
    ("ray://", {}, "--address ray://: not a Ray cluster's address"),
    (None, {"RAY_ADDRESS": "garbage:xx"}, "RAY_ADDRESS garbage:xx: not a Ray cluster's address"),
    (None, {"RAY_TMPDIR": "{file}/ray"}, "RAY_TMPDIR"),
])
def test_a_malformed_address_or_a_bad_ray_variable_is_one_line(tmp_path, monkeypatch, address, environment, named):
    """Before: Ray's ValueError or NotADirectoryError, as a traceback."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed")
    (tmp_path / "file").write_text("")
    args = ["study", "lite", "--executor", "ray", "--out", str(tmp_path / "o"), "--limit", "1"]
    env = {name: value.format(file=tmp_path / "file") for name, value in environment.items()}
    result = run_cli(*args, *(["--address", address] if address else []), env=env, isolated=True, timeout=120)
    assert_user_error(result, named)


# --- 9: names from the data or the user cannot drive a terminal ------------------------------------------------------


ESCAPE = "\x1b]0;owned\x07\x1b[2J"


def test_a_studys_about_and_data_path_are_escaped_in_study_md():
    from test_study import _synthetic_report

    from xfverify.evaluator.reports.study import markdown

    report = _synthetic_report()
    report = report.model_copy(update={"about": f"about {ESCAPE}",
                                       "dataset": report.dataset.model_copy(update={"path": f"/data/{ESCAPE}"})})
    text = markdown(report)
    assert "\x1b" not in text and "\x07" not in text
    assert "about \\x1b]0;owned\\x07\\x1b[2J" in text and "/data/\\x1b]0;owned" in text
    assert text.count("\n") == markdown(_synthetic_report()).count("\n")  # line breaks kept


def test_an_onnx_node_name_is_escaped_in_the_console_table_and_report_md(tmp_path, capsys):
    from test_metrics_and_report import minimal_report

    from xfverify.evaluator.commands.output import print_grid, print_table
    from xfverify.evaluator.reports.run import NativeReport, write_markdown
    from xfverify.models.preprocess import PRESETS

    print_table("onnx", [("localization", f"first divergent node /conv{ESCAPE}")])
    print_grid("nodes", ("node",), [[f"/conv{ESCAPE}"]])
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "/conv\\x1b]0;owned" in shown
    report = NativeReport.model_validate({**minimal_report(), "preprocess": PRESETS["torchvision-256"].to_dict(),
                                          "model": f"file/model{ESCAPE}"})
    write_markdown(tmp_path / "report.md", report, [])
    text = (tmp_path / "report.md").read_text()
    assert "\x1b" not in text and "model\\x1b]0;owned" in text


# --- weak messages: preprocess --out a device or a FIFO, --data a whole file system; an export cache's onnx a file ----


def test_preprocess_out_naming_a_fifo_is_one_line_and_nothing_is_written_beside_it(tmp_path):
    """Before: `--out /dev/full` wrote /dev/full.npy (the name with .npy added), after computing everything."""
    from helpers import SAMPLE_DIR

    target = tmp_path / "target"
    os.mkfifo(target)  # as /dev/full is a device: not a file to write a .npy into, nor one to put one beside
    result = run_cli("preprocess", "torchvision/resnet50", str(SAMPLE_DIR / "coffee.png"), "--out", str(target))
    assert_user_error(result, f"--out {target}:", "not a file", "give the path of a .npy file")
    assert sorted(os.listdir(tmp_path)) == ["target"]


@pytest.mark.parametrize("which", ["home", "above home"])
def test_data_naming_the_home_folder_or_one_above_it_is_refused_before_listing(tmp_path, monkeypatch, which):
    """Before: --data / (or ~) listed every file under it and filled the cache before saying a word."""
    from xfverify.evaluator.data.layouts import load_dataset

    home = tmp_path / "home"
    (home / "pictures").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    _refused(lambda: load_dataset(home if which == "home" else tmp_path), "give the folder that holds the images")


def test_an_export_cache_onnx_that_is_a_file_is_one_line(tmp_path):
    """Before: the export worker's makedirs failed on it: a worker crash with its traceback."""
    from xfverify.evaluator.pipeline.onnx_pass import export_ahead
    from xfverify.evaluator.pipeline.options import OnnxOptions

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "onnx").write_text("")
    _refused(lambda: export_ahead(OnnxOptions(random_weights=True, cache_dir=str(cache), limit=1)),
             "--cache-dir", "onnx there is not a folder")
