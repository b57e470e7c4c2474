"""Hostile and mistaken input (issue 20, third round): every case ends in a correct result or one line and exit 2;
nothing written, followed or deleted outside what the user named; no half-replaced report, no silent wrong score,
no hang, no traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import SAMPLE_DIR, needs_torch, run_cli
from test_native import assert_user_error
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.evaluator.pipeline.native_run import NATIVE_OUTPUTS, check_scores, load_native
from xfverify.evaluator.pipeline.options import NativeOptions
from xfverify.models.errors import UserError
from xfverify.models.preprocess import PRESETS


@pytest.fixture(scope="module")
def native_run(tmp_path_factory) -> Path:
    """One finished native run (random weights, two sample images); tests copy it before changing anything."""
    from xfverify.evaluator.pipeline.native import run_native

    if not _torch():
        pytest.skip("torch not installed")
    root = tmp_path_factory.mktemp("native")
    run_native(NativeOptions(out=str(root / "run"), limit=2, random_weights=True, cache_dir=str(root / "cache")))
    return root / "run"


def _torch() -> bool:
    from helpers import framework_available

    return framework_available("torch")


def copied(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as caught:
        load_native(folder)
    text = str(caught.value)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


# --- 6: --against binds the report to its files -----------------------------------------------------------------


def test_a_native_report_records_its_files_digests_and_loads_back(native_run):
    import hashlib

    report = json.loads((native_run / "report.json").read_text())
    for name, key in (("logits.npy", "logits_sha256"), ("predictions.csv", "predictions_sha256")):
        assert report[key] == hashlib.sha256((native_run / name).read_bytes()).hexdigest()
    loaded = load_native(native_run)
    assert loaded.outputs.shape == (2, 1000) and np.array_equal(loaded.outputs, np.load(native_run / "logits.npy"))


def test_another_runs_logits_or_predictions_are_refused_naming_the_file(native_run, tmp_path):
    """Before: any float32 (N, 1000) logits.npy was compared as this report's."""
    run = copied(native_run, tmp_path)
    np.save(run / "logits.npy", np.load(run / "logits.npy")[::-1].copy())
    refused(run, "logits.npy is not the file its report.json was written with", "another run's or an edited file",
            "run `xfverify native` again")
    run = copied(native_run, tmp_path, "copy2")
    (run / "predictions.csv").write_text((run / "predictions.csv").read_text() + "x,,,,\n")
    refused(run, "predictions.csv is not the file its report.json was written with")


def test_an_edited_error_in_report_json_is_refused(native_run, tmp_path):
    """Before: top1_error was taken as written and compared with confidence."""
    run = copied(native_run, tmp_path)
    report = json.loads((run / "report.json").read_text())
    report["top1_error"] = 0.0 if report["top1_error"] else 50.0
    (run / "report.json").write_text(json.dumps(report))
    dataset = load_dataset(str(SAMPLE_DIR)).select(limit=2)
    with pytest.raises(UserError, match=re.escape(f"its top1_error {report['top1_error']} is not what its logits.npy "
                                                  "gives on these images")):
        check_scores(load_native(run), dataset)
    check_scores(load_native(native_run), dataset)  # the untouched run passes


def test_a_report_without_the_digests_says_to_run_native_again(native_run, tmp_path):
    run = copied(native_run, tmp_path)
    report = json.loads((run / "report.json").read_text())
    del report["logits_sha256"], report["predictions_sha256"]
    (run / "report.json").write_text(json.dumps(report))
    refused(run, "report.json records no sha256 of its logits.npy", "run `xfverify native` again")


# --- 12: --against's files parsed without a traceback or a huge allocation ----------------------------------------


def test_a_deeply_nested_report_json_is_one_line(native_run, tmp_path):
    """Before: RecursionError from json.loads."""
    run = copied(native_run, tmp_path)
    (run / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(run, "report.json is nested too deeply")
    (run / "report.json").write_text('{"kind": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(run, "report.json is nested too deeply")


def test_a_logits_header_claiming_terabytes_is_refused_before_loading(native_run, tmp_path):
    """Before: np.load tried to allocate 3.6 TiB for a header claiming (1e9, 1000)."""
    run = copied(native_run, tmp_path)
    with open(run / "logits.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                       "shape": (10**9, 1000)})
        handle.write(b"\0" * 64)
    refused(run, "logits.npy holds float32 (1000000000, 1000), not the float32 (2, 1000)")
    with open(run / "logits.npy", "wb") as handle:  # the right header, the data cut short
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (2, 1000)})
        handle.write(b"\0" * 64)
    refused(run, "logits.npy is", "bytes, not the", "(a truncated or damaged file)")
    (run / "logits.npy").write_bytes(b"not numpy at all")
    refused(run, "logits.npy is not a readable .npy file")


# --- 8: files that are not regular files never block a run ------------------------------------------------------


@pytest.mark.timeout(60)
def test_fifos_and_devices_in_an_against_folder_are_refused_without_waiting(native_run, tmp_path):
    run = copied(native_run, tmp_path)
    (run / "logits.npy").unlink()
    os.mkfifo(run / "logits.npy")
    refused(run, "logits.npy", "a FIFO (named pipe), not a regular file")
    (run / "logits.npy").unlink()
    (run / "logits.npy").symlink_to("/dev/zero")
    refused(run, "logits.npy", "a character device, not a regular file")
    (run / "report.json").unlink()
    os.mkfifo(run / "report.json")
    refused(run, "report.json", "a FIFO (named pipe), not a regular file")


# --- 5: a run's outputs move in as a whole; another command's run is not mixed with ------------------------------


def _fake_run(out: Path, kind: str, inner: str | None = None) -> dict[str, bytes]:
    """A folder as an earlier run of ``kind`` leaves it (contents are placeholders); its files by relative path."""
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"kind": kind, "model": "earlier"}))
    (out / "report.md").write_text("earlier")
    if inner:
        (out / inner).mkdir()
        for name in NATIVE_OUTPUTS:
            (out / inner / name).write_text(f"earlier {name}")
    return _contents(out)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("verb, kind", [("native", "diagnose"), ("native", "onnx"), ("diagnose", "native"),
                                        ("onnx", "diagnose"), ("native", "study")])
def test_an_out_holding_another_commands_run_is_refused_naming_it(verb, kind, tmp_path):
    """Before: the new run's files were moved in beside the other command's (logits.npy next to report.html...)."""
    out = tmp_path / "o"
    before = _fake_run(out, kind, "reference" if kind == "diagnose" else None)
    if kind == "study":  # a study's folder: study.json and its cells
        (out / "report.json").rename(out / "study.json")
        before = _contents(out)
    result = run_cli(verb, "--random-weights", "--limit", "3", "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert_user_error(result, f"--out {out} holds an `xfverify {kind}` run (its "
                              f"{'study.json' if kind == 'study' else 'report.json'})",
                      f"a {verb} run does not mix its outputs with another command's", "choose another --out")
    assert _contents(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        {Path(k).parts[0] for k in before})


def test_a_study_refuses_an_out_holding_a_commands_run(tmp_path):
    out = tmp_path / "o"
    before = _fake_run(out, "native")
    result = run_cli("study", "lite", "--random-weights", "--limit", "3", "--out", str(out))
    assert_user_error(result, f"--out {out} holds an `xfverify native` run (its report.json)",
                      "a study does not mix its outputs with another command's")
    assert _contents(out) == before


def test_onnx_against_its_own_out_is_refused(native_run, tmp_path):
    """Before: `onnx --against X --out X` replaced the native run it compared with."""
    run = copied(native_run, tmp_path)
    before = _contents(run)
    result = run_cli("onnx", "--against", str(run), "--out", str(run))
    assert_user_error(result, f"--out {run} is the --against folder", "choose another --out")
    assert _contents(run) == before


@needs_torch
def test_a_diagnose_that_fails_after_its_reference_leaves_the_earlier_diagnosis_whole(tmp_path, monkeypatch):
    """Before: the new reference/ was moved in, then the failure left the earlier report.json describing other data."""
    from xfverify.evaluator.pipeline import diagnose
    from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, run_diagnose

    out = tmp_path / "o"
    before = _fake_run(out, "diagnose", "reference")

    def broken(*args, **kwargs):
        raise UserError("the report could not be written (simulated)")

    monkeypatch.setattr(diagnose, "write_diagnose_outputs", broken)
    options = DiagnoseOptions(out=str(out), limit=3, variants="squash", random_weights=True,
                              cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="simulated"):
        run_diagnose(options)
    assert _contents(out) == before and not (out / ".work").exists()
    monkeypatch.undo()
    (out / "onnx").mkdir()  # an earlier diagnose --onnx's run: this run, without --onnx, removes it
    for name in NATIVE_OUTPUTS:
        (out / "onnx" / name).write_text("earlier")
    report = run_diagnose(options).report
    assert sorted(p.name for p in out.iterdir()) == [".xfverify-outputs.json", "reference", "report.html",
                                                     "report.json", "report.md"]
    assert sorted(p.name for p in (out / "reference").iterdir()) == sorted([*NATIVE_OUTPUTS, ".xfverify-outputs.json"])
    assert load_native(out / "reference").report.tensors_sha256 == report.reference.tensors_sha256


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path):
    from xfverify.evaluator.pipeline.outdir import earlier_outputs_note

    out = tmp_path / "o"
    _fake_run(out, "diagnose", "reference")
    (out / "reference" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=re.escape("reference/notes.txt there is not a file xfverify writes")):
        earlier_outputs_note(out, ("report.json",), "diagnose", {"reference": NATIVE_OUTPUTS})
    assert (out / "reference" / "notes.txt").read_text() == "mine"


# --- 7, 11: ONNX files: external data by onnx's path rules first, graphs a worker would crash on ------------------


def _external_location(path: Path, location: str, offset: int | None = None) -> Path:
    """The converter tests' tiny model with its tensor's external data entry pointing at ``location``."""
    import onnx

    from test_converter import tiny_model

    tiny_model(True, path)
    model = onnx.load(str(path), load_external_data=False)
    [tensor] = [t for t in model.graph.initializer if t.external_data]
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
        if entry.key == "offset" and offset is not None:
            entry.value = str(offset)
    if offset is not None and not any(e.key == "offset" for e in tensor.external_data):
        tensor.external_data.add(key="offset", value=str(offset))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("location", ["/etc/passwd", "../../../../etc/passwd", "../outside.data", "link.data"])
def test_external_data_outside_the_models_folder_is_refused_before_its_size_is_read(location, tmp_path):
    """Before: the size of /etc/shadow (or any file) was told, with 'the external data file is truncated'."""
    from xfverify.converter.onnx_file import check, describe

    (tmp_path / "outside.data").write_bytes(b"secret")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.data").symlink_to(tmp_path / "outside.data")
    path = _external_location(folder / "tiny.onnx", location)
    for call in (lambda: check(path), lambda: describe(path, "x", "1", "NCHW")):
        with pytest.raises(UserError) as caught:
            call()
        text = str(caught.value)
        assert "outside the model's folder" in text and "truncated" not in text and "bytes" not in text, text


def test_a_negative_external_data_offset_is_one_line(tmp_path):
    """Before: onnx's ValueError traceback."""
    from xfverify.converter.onnx_file import check

    path = _external_location(tmp_path / "tiny.onnx", "tiny.onnx.data", offset=-8)
    with pytest.raises(UserError, match=r"tensor bias's external data entry is invalid \(External data offset must be "
                                        "non-negative"):
        check(path)


@pytest.mark.timeout(60)
def test_external_data_that_is_a_fifo_or_a_device_is_refused_without_waiting(tmp_path):
    from xfverify.converter.onnx_file import check

    path = _external_location(tmp_path / "tiny.onnx", "tiny.onnx.data")
    (tmp_path / "tiny.onnx.data").unlink()
    os.mkfifo(tmp_path / "tiny.onnx.data")
    with pytest.raises(UserError, match="is a FIFO \\(named pipe\\), not a regular file"):
        check(path)


def test_a_graph_without_outputs_is_one_line(tmp_path):
    """Before: onnx's checker passed it, then the worker's step died on an IndexError."""
    import onnx

    from test_onnx import users_onnx_file
    from xfverify.converter.onnx_file import check

    path = users_onnx_file(tmp_path / "none.onnx")
    model = onnx.load(str(path))
    del model.graph.output[:]
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="its graph has no outputs"):
        check(path)
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(done, f"{path}: its graph has no outputs")


@pytest.mark.parametrize("feed", ["host", "device"])
def test_of_two_outputs_the_scored_one_is_named(feed, tmp_path):
    """Before: two 1000-wide outputs, the first taken silently."""
    import onnx
    from onnx import TensorProto, helper

    from test_onnx import users_onnx_file

    path = users_onnx_file(tmp_path / "two.onnx")
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Neg", ["logits"], ["negated"]))
    model.graph.output.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["N", 1000]))
    onnx.save(model, str(path))
    out = tmp_path / "o"
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(out), "--cache-dir", str(tmp_path / "cache"), env={"XFVERIFY_ORT_FEED": feed})
    assert done.returncode == 0, done.stderr[-3000:]
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert f"{path} has 2 outputs (logits, negated): the first, logits, is scored as the class scores" in notes


def test_an_allocation_no_batch_size_fixes_is_not_blamed_on_the_batch_size():
    from xfverify.evaluator.backends.feeding import out_of_memory_message

    huge = "Failed to allocate memory for requested buffer of size 4000000000000000"
    message = out_of_memory_message("cpu", 4, huge)
    assert "the graph itself asks for it" in message and "smaller --batch-size" not in message
    assert "use a smaller --batch-size" in out_of_memory_message("cpu", 64, "Failed to allocate memory for requested "
                                                                            "buffer of size 4000000")
    assert "does not fit this device" in out_of_memory_message("cpu", 1, "out of memory")


# --- 9: --spec values --set refuses, and names a report cannot show ----------------------------------------------


SPECS = {
    "an unknown field": ('{"name": "x", "set": {"colour": 1}}', "unknown preprocessing field 'colour'"),
    "name in set": ('{"name": "x", "set": {"name": "y"}}', "unknown preprocessing field 'name'"),
    "a list as preset": ('{"name": "x", "preset": ["a"]}', "unknown preset ['a']"),
    "an infinite size": ('{"name": "x", "set": {"resize_size": Infinity}}', "resize_size must be a whole number, got inf"),
    "an overflowing size": ('{"name": "x", "set": {"crop_size": 1e400}}', "crop_size must be a whole number, got inf"),
    "a fractional size": ('{"name": "x", "set": {"resize_size": 224.9}}', "resize_size must be a whole number, got 224.9"),
    "a NaN scale": ('{"name": "x", "set": {"scale": NaN}}', "scale must be a finite number"),
    "set as a list": ('{"name": "x", "set": []}', "set must be an object of field: value, got list"),
    "an empty list": ("[]", "an empty list names no variant"),
    "an empty name": ('{"name": ""}', "name must be a non-empty string"),
    "a null name": ('{"name": null}', "name must be a non-empty string"),
    "a pipe in the name": ('{"name": "a|b"}', "cannot be shown in a report"),
    "a newline in the name": ('{"name": "a\\nb"}', "cannot be shown in a report"),
    "an escape sequence in the name": ('{"name": "\\u001b]0;owned\\u0007"}', "cannot be shown in a report"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
}


@pytest.mark.parametrize("case", SPECS)
def test_spec_files_that_set_would_refuse_are_one_line(case, tmp_path):
    """Before: TypeError, OverflowError, RecursionError tracebacks, or silently nothing (an empty list, set [])."""
    from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, chosen_variants
    from xfverify.models.cards import get_card
    from xfverify.models.preprocess import resolve_preprocess

    text, fragment = SPECS[case]
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    card = get_card("pypi/efficientnet_lite0")
    reference = resolve_preprocess(None, default=card.reference_spec)
    with pytest.raises(UserError) as caught:
        chosen_variants(card, reference, DiagnoseOptions(variants="squash", spec_files=(str(spec),)))
    message = str(caught.value)
    assert fragment in message and "\n" not in message and "\x1b" not in message, message


@pytest.mark.timeout(60)
def test_a_spec_file_that_is_not_utf8_a_fifo_or_missing_is_one_line(tmp_path):
    from xfverify.evaluator.pipeline.diagnose import DiagnoseOptions, chosen_variants
    from xfverify.models.cards import get_card
    from xfverify.models.preprocess import resolve_preprocess

    card = get_card("pypi/efficientnet_lite0")
    reference = resolve_preprocess(None, default=card.reference_spec)
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    os.mkfifo(tmp_path / "fifo.json")
    for name, fragment in (("latin1.json", "not UTF-8 text (byte 13)"), ("fifo.json", "a FIFO (named pipe), not a "
                                                                                       "regular file"),
                           ("absent.json", "no such file")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            chosen_variants(card, reference, DiagnoseOptions(variants="squash", spec_files=(str(tmp_path / name),)))


def test_a_whole_number_given_as_a_float_is_taken_and_the_spec_is_what_was_asked():
    from xfverify.models.preprocess import resolve_preprocess

    assert resolve_preprocess("torchvision-256", overrides={"resize_size": 240.0}).resize_size == 240
    assert resolve_preprocess("torchvision-256", overrides={"resize_size": "240"}).resize_size == 240


def test_report_html_draws_a_variant_name_holding_dollars_as_text():
    """Before: matplotlib parsed '$...$' in a variant's name as mathtext and the whole page failed after the run."""
    from xfverify.evaluator.reports.diagnose import Decomposition, DiagnoseReport, Step, errors_svg, waterfall_svg

    from test_diagnose import _row

    name = "cost $x^2$ of $\\frac{a}{$"  # mathtext: drawn as other text, or (this one) a ValueError for the page
    reference = _row("reference", 0.0, False, ci95=[8.0, 12.0])
    variant = _row(name, 4.0, True, ci95=[12.0, 16.0])
    step = Step(name=name, axis="preprocessing", delta=4.0, delta_ci95=[2.0, 6.0], start=10.0, end=14.0)
    report = DiagnoseReport.model_construct(reference=reference, variants=[variant], decomposition=Decomposition(
        published=None, reproduced=10.0, steps=[step], ranked=[name], within_noise=[], sentence=""))
    for drawn in (errors_svg(report), waterfall_svg(report)):
        assert "cost $x^2$" in drawn


# --- 8: FIFOs and devices among the images, as labels.csv, as --weights --------------------------------------------


def _hostile_images(root: Path) -> Path:
    root.mkdir()
    for name in ("coffee.png", "camera.png"):
        shutil.copy(SAMPLE_DIR / name, root / name)
    os.mkfifo(root / "fifo.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    return root


@pytest.mark.timeout(60)
def test_a_fifo_or_a_device_named_like_an_image_is_a_bad_image_never_waited_on():
    """Before: a FIFO hung the decode, /dev/zero grew a decode process past 3 GB."""
    from xfverify.evaluator.data.imaging import BadImageError, decode

    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        root = _hostile_images(Path(scratch) / "d")
        for name, kind in (("fifo.jpg", "a FIFO (named pipe)"), ("zero.jpg", "a character device")):
            for decoder in ("pil", "opencv", "tensorflow"):
                with pytest.raises(BadImageError, match=re.escape(f"{kind}, not a regular file")):
                    decode(root / name, decoder)


@needs_torch
@pytest.mark.timeout(300)
def test_a_run_over_fifos_and_devices_stops_or_skips_and_lists_them(tmp_path):
    data = _hostile_images(tmp_path / "d")
    stopped = run_cli("native", "--random-weights", "--data", str(data), "--out", str(tmp_path / "r1"),
                      "--cache-dir", str(tmp_path / "c"))
    assert_user_error(stopped, "cannot decode image", "not a regular file", "--on-bad-image skip")
    done = run_cli("native", "--random-weights", "--data", str(data), "--on-bad-image", "skip", "--out",
                   str(tmp_path / "r2"), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = {s["image_id"]: s["reason"] for s in json.loads((tmp_path / "r2" / "report.json").read_text())[
        "skipped_images"]}
    assert skipped == {"fifo": "a FIFO (named pipe), not a regular file", "zero": "a character device, not a regular file"}


@pytest.mark.timeout(60)
def test_a_labels_csv_that_is_a_fifo_is_refused_not_ignored(tmp_path):
    """Before: a FIFO labels.csv was silently ignored (is_file() is false), the images scored as unlabelled."""
    root = tmp_path / "d"
    root.mkdir()
    shutil.copy(SAMPLE_DIR / "coffee.png", root / "coffee.png")
    os.mkfifo(root / "labels.csv")
    with pytest.raises(UserError, match=re.escape(f"{root / 'labels.csv'}: a FIFO (named pipe), not a regular file")):
        load_dataset(str(root))


@pytest.mark.timeout(60)
def test_weights_and_an_onnx_file_that_are_fifos_are_refused(tmp_path):
    os.mkfifo(tmp_path / "w.pth")
    assert_user_error(run_cli("native", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "r")),
                      f"--weights {tmp_path / 'w.pth'}: a FIFO (named pipe), not a weights file")
    os.mkfifo(tmp_path / "m.onnx")
    assert_user_error(run_cli("onnx", str(tmp_path / "m.onnx"), "--preprocess", "torchvision-256", "--out",
                              str(tmp_path / "r")), "a FIFO (named pipe), not an ONNX file")


# --- 10: a full disk anywhere in a run is one line, finished work kept ---------------------------------------------


def test_a_full_disk_at_the_out_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Before: OSError [Errno 28] traceback from the --out ownership."""
    from xfverify.evaluator.pipeline import outdir

    def full(out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / ".work"))

    monkeypatch.setattr(outdir, "_fresh_work_folder", full)
    out = tmp_path / "r"
    result = run_cli("native", "--random-weights", "--limit", "3", "--out", str(out))
    assert_user_error(result, f"no space left on the disk of {out} (free: ", "free some space there")
    assert not out.exists()


def test_a_worker_meeting_a_full_disk_says_so_in_one_line(tmp_path):
    """Before: a traceback in the worker, or a WorkerCrashed with empty stderr when not even error.json fit."""
    import subprocess
    import sys

    job = tmp_path / "evaluate.job.json"
    job.write_text(json.dumps({"framework": "test", "backend": "disk_full_backend", "task": "evaluate",
                               "workdir": str(tmp_path), "job": {"model": None, "device": "cpu",
                                                                "preprocess": PRESETS["torchvision-256"].to_dict(),
                                                                "precision": "fp32", "n_images": 0, "hw": [8, 8]}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "xfverify.evaluator.process.worker", str(job)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    message = json.loads((tmp_path / "evaluate.error.json").read_text())["message"]
    assert message.startswith(f"no space left on the disk of {tmp_path} (free: ")


def test_a_worker_that_died_silently_on_a_full_disk_is_named_by_the_parent(tmp_path, monkeypatch):
    import shutil as shutil_module

    from xfverify.evaluator.process import launcher

    class Usage:
        free = 4096

    monkeypatch.setattr(shutil_module, "disk_usage", lambda folder: Usage())
    found = launcher._disk_full_at(tmp_path)
    assert isinstance(found, UserError) and f"no space left on the disk of {tmp_path} (free: 0.0 MB)" in str(found)
    Usage.free = 10 << 30
    assert launcher._disk_full_at(tmp_path) is None


# --- SIGTERM is handled like Ctrl-C -------------------------------------------------------------------------------


@needs_torch
@pytest.mark.timeout(300)
def test_sigterm_removes_the_work_folder_and_the_lock(tmp_path):
    """Before: SIGTERM killed the run where it stood, leaving --out/.work and .xfverify-run.lock behind."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import write_jpeg

    data = tmp_path / "d"
    for i in range(200):
        write_jpeg(data / f"im_{i:03d}.jpg", seed=i, width=320, height=240)
    out = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "xfverify", "native", "--random-weights", "--data", str(data),
                                "--batch-size", "1", "--out", str(out), "--cache-dir", str(tmp_path / "c")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".work").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM)" in err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_escape_sequences_from_names_and_paths_are_printed_escaped(tmp_path):
    """Before: a spec name or a file name holding terminal escape sequences was printed raw (retitling, recolouring
    or clearing the user's terminal)."""
    hostile = tmp_path / "a\x1b]0;owned\x07\x1b[2Jb"
    hostile.mkdir()
    result = run_cli("native", "--random-weights", "--data", str(hostile), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "\x1b" not in result.stderr and "\x07" not in result.stderr, repr(result.stderr)
    assert "a\\x1b]0;owned\\x07\\x1b[2Jb" in result.stderr


# --- the same classes elsewhere: the study's TOML ------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_text("a = " + "[" * 100_000 + "]" * 100_000), "TOML nested too deeply to read"),
    (lambda p: p.write_bytes(b'name = "caf\xe9"\n'), "not UTF-8 text"),
    (lambda p: os.mkfifo(p), "a FIFO (named pipe), not a regular file"),
])
def test_a_study_file_nested_too_deeply_not_utf8_or_a_fifo_is_one_line(make, fragment, tmp_path):
    """Before: RecursionError from tomllib; a FIFO passed is_file()'s race."""
    from xfverify.models.study import load_study

    path = tmp_path / "s.toml"
    make(path)
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_study(str(path))


# --- the same classes elsewhere: the tensor cache's own files (in the --cache-dir the user names) -------------------


@needs_torch
@pytest.mark.timeout(300)
def test_cache_files_that_are_fifos_devices_or_deep_json_are_damaged_and_made_again(native_run, tmp_path):
    """Before: a FIFO sidecar hung the survey; deeply nested JSON was a RecursionError traceback."""
    cache = tmp_path / "cache"
    shutil.copytree(native_run.parent / "cache", cache)
    sidecars = sorted(cache.glob("*/shards/*.json"))
    shards = sorted(cache.glob("*/shards/*.npy"))
    assert sidecars and shards
    sidecars[0].unlink()
    os.mkfifo(sidecars[0])
    if len(sidecars) > 1:
        sidecars[1].write_text("[" * 100_000 + "]" * 100_000)
    shards[-1].unlink()
    shards[-1].symlink_to("/dev/zero")
    out = tmp_path / "r"
    done = run_cli("native", "--random-weights", "--limit", "2", "--out", str(out), "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["tensors_sha256"] == json.loads((native_run / "report.json").read_text())["tensors_sha256"]
    assert report["cache"]["decoded"] > 0


@pytest.mark.timeout(60)
def test_preprocess_given_a_fifo_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    assert_user_error(run_cli("preprocess", "torchvision/resnet50", str(tmp_path / "pipe.jpg"), "--out",
                              str(tmp_path / "x")), f"{tmp_path / 'pipe.jpg'}: a FIFO (named pipe), not an image file")


def test_a_graph_asking_for_terabytes_is_not_told_to_lower_the_batch_size(tmp_path):
    """Before: 'ran out of memory at --batch-size 4: use a smaller --batch-size' for a 4 TB Expand inside the graph."""
    import onnx
    from onnx import helper

    from test_onnx import users_onnx_file

    path = users_onnx_file(tmp_path / "tera.onnx")
    model = onnx.load(str(path))
    graph = model.graph
    graph.node[-1].output[0] = "scores"
    graph.initializer.extend([onnx.numpy_helper.from_array(np.asarray([10**6, 10**6], dtype=np.int64), "huge_shape"),
                              onnx.numpy_helper.from_array(np.asarray(1.0, dtype=np.float32), "one")])
    graph.node.extend([helper.make_node("Expand", ["one", "huge_shape"], ["huge"]),
                       helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
                       helper.make_node("Mul", ["scores", "total"], ["logits"])])
    onnx.save(model, str(path))
    done = run_cli("onnx", str(path), "--preprocess", "torchvision-256", "--provider", "cpu", "--limit", "2", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(done, "the model asked for one buffer of 4,000 GB", "the graph itself asks for it")
    assert "smaller --batch-size" not in done.stderr


@needs_torch
def test_an_onnx_run_failing_after_its_native_run_keeps_it_only_where_no_report_describes_other_data(tmp_path,
                                                                                                     monkeypatch):
    from xfverify.evaluator.pipeline import onnx_pass
    from xfverify.evaluator.pipeline.onnx import run_onnx
    from xfverify.evaluator.pipeline.options import OnnxOptions

    def export_fails(*args, **kwargs):
        raise UserError("the export failed (simulated)")

    monkeypatch.setattr(onnx_pass, "_export", export_fails)
    fresh = tmp_path / "fresh"
    options = dict(limit=3, random_weights=True, provider="cpu", cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="simulated"):
        run_onnx(OnnxOptions(out=str(fresh), **options))
    assert sorted(p.name for p in fresh.iterdir()) == ["native"]  # finished work kept: the next run reuses it
    assert load_native(fresh / "native", "--out").outputs.shape == (3, 1000)
    earlier = tmp_path / "earlier"
    before = _fake_run(earlier, "onnx", "native")
    with pytest.raises(UserError, match="simulated"):
        run_onnx(OnnxOptions(out=str(earlier), **options))
    assert _contents(earlier) == before  # the earlier report and the native run it describes, untouched


def test_report_md_keeps_one_line_per_item_for_names_holding_newlines(tmp_path):
    from xfverify.evaluator.reports.run import NativeReport, Prediction, write_markdown

    from test_metrics_and_report import minimal_report

    from xfverify.models.preprocess import PRESETS

    report = NativeReport.model_validate({**minimal_report(), "preprocess": PRESETS["torchvision-256"].to_dict(),
                                          "notes": ["first\nsecond \x1b[2J"]})
    rows = [Prediction(image_id="evil\nname", labels=(1,), top5=(1, 2, 3, 4, 5), status="correct")]
    write_markdown(tmp_path / "report.md", report, rows)
    text = (tmp_path / "report.md").read_text()
    assert "- first\\nsecond \\x1b[2J" in text and "`evil\\nname`" in text and "\x1b" not in text
