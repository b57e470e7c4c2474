"""Every ImageNet layout gives the same (image id, labels) manifest; the devkit ID trap is avoided."""

from __future__ import annotations

import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from helpers import imagenet_val_files, run_cli, wnid, write_jpeg
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.models.errors import UserError
from xfverify.models.imagenet import class_table

TRUTH = dict(imagenet_val_files(10))  # file name -> class index


def make_kaggle(root: Path, images: dict[str, Path]) -> Path:
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    rows = []
    for name, path in images.items():
        shutil.copy(path, val / name)
        w = wnid(TRUTH[name])
        rows.append(f"{Path(name).stem},{w} 10 20 30 40 {w} 1 2 3 4")
    random.Random(0).shuffle(rows)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return root


def devkit_permutation() -> list[int]:
    """ILSVRC2012_ID - 1 -> sorted-wnid class index: a fixed shuffle, like the real devkit's own order."""
    order = list(range(1000))
    random.Random(2012).shuffle(order)
    return order


def write_meta_mat(path: Path, id_to_class: list[int]) -> None:
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((1002, 1), dtype=[(f, "O") for f in fields])
    table = class_table()
    for ilsvrc_id in range(1, 1001):
        wn, words = table[id_to_class[ilsvrc_id - 1]]
        synsets[ilsvrc_id - 1, 0] = (ilsvrc_id, wn, words, "", 0, np.zeros((0,)), 0, 1300)
    # Two inner (non-leaf) synsets, as the real meta.mat has 860 of them after the leaves.
    synsets[1000, 0] = (1001, "n00001740", "entity", "", 2, np.array([1, 2]), 18, 0)
    synsets[1001, 0] = (1002, "n00002684", "object", "", 1, np.array([3]), 17, 0)
    savemat(path, {"synsets": synsets})


def make_devkit(root: Path, images: dict[str, Path], with_meta: bool = True) -> Path:
    root.mkdir(parents=True)
    for name, path in images.items():
        shutil.copy(path, root / name)
    data = root.parent / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    id_to_class = devkit_permutation()
    class_to_id = {c: i + 1 for i, c in enumerate(id_to_class)}
    lines = [str(class_to_id[TRUTH[name]]) for name, _ in sorted(TRUTH.items())]
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    if with_meta:
        write_meta_mat(data / "meta.mat", id_to_class)
    return root


def make_class_folders(root: Path, images: dict[str, Path]) -> Path:
    for name, path in images.items():
        folder = root / wnid(TRUTH[name])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return root


def make_own_folder(root: Path, images: dict[str, Path]) -> Path:
    root.mkdir(parents=True)
    rows = ["image,labels"]
    for i, (name, path) in enumerate(sorted(images.items())):
        shutil.copy(path, root / name)
        label = wnid(TRUTH[name]) if i % 2 else str(TRUTH[name])  # both spellings are accepted
        rows.append(f"{name},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def manifest(dataset) -> list[tuple[str, tuple[int, ...]]]:
    return [(r.image_id, r.labels) for r in dataset.records]


def test_all_layouts_give_the_same_manifest(tmp_path, val_images):
    expected = [(Path(name).stem, (cls,)) for name, cls in sorted(TRUTH.items())]
    datasets = {
        "kaggle": load_dataset(make_kaggle(tmp_path / "kaggle", val_images)),
        "devkit": load_dataset(make_devkit(tmp_path / "official" / "val", val_images)),
        "class-folders": load_dataset(make_class_folders(tmp_path / "folders", val_images)),
        "folder": load_dataset(make_own_folder(tmp_path / "own", val_images)),
    }
    for layout, dataset in datasets.items():
        assert dataset.layout == layout
        assert manifest(dataset) == expected, layout
    hashes = {d.manifest_sha256() for d in datasets.values()}
    assert len(hashes) == 1


def test_kaggle_val_folder_given_directly_finds_its_solution_file(tmp_path, val_images):
    root = make_kaggle(tmp_path / "kaggle", val_images)
    direct = load_dataset(root / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    assert direct.layout == "kaggle"
    assert manifest(direct) == manifest(load_dataset(root))


def test_devkit_ids_are_mapped_through_meta_mat_not_used_as_indices(tmp_path, val_images):
    dataset = load_dataset(make_devkit(tmp_path / "official" / "val", val_images))
    ground_truth = (tmp_path / "official" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt")
    naive = [int(line) - 1 for line in ground_truth.read_text().split()]  # the classic 99 %-error mistake
    mapped = [r.labels[0] for r in dataset.records]
    assert mapped == [TRUTH[n] for n in sorted(TRUTH)]
    assert sum(a == b for a, b in zip(naive, mapped)) < len(mapped)  # the trap would have changed labels
    assert any("meta.mat" in note for note in dataset.notes)


def test_devkit_without_meta_mat_is_a_clear_error(tmp_path, val_images):
    root = make_devkit(tmp_path / "official" / "val", val_images, with_meta=False)
    with pytest.raises(UserError, match="meta.mat"):
        load_dataset(root)


def test_own_folder_multi_labels_and_unlabelled_images(tmp_path):
    root = tmp_path / "mine"
    for i in range(3):
        write_jpeg(root / "sub" / f"p{i}.png", seed=i)
    (root / "labels.csv").write_text("image,labels\nsub/p0.png,1 n01443537 7\np1.png,\n")
    dataset = load_dataset(root)
    by_id = {r.image_id: r.labels for r in dataset.records}
    assert by_id == {"p0": (1, 7), "p1": (), "p2": ()}
    assert dataset.n_labelled == 1


@pytest.mark.parametrize(
    "row, message",
    [("nope.jpg,3", "no image"), ("a.jpg,1000", "outside 0-999"), ("a.jpg,n99999999", "not one of the 1000"), ("a.jpg,cat", "neither")],
)
def test_bad_labels_csv_rows_name_the_line(tmp_path, row, message):
    write_jpeg(tmp_path / "d" / "a.jpg", seed=1)
    (tmp_path / "d" / "labels.csv").write_text("image,labels\n" + row + "\n")
    with pytest.raises(UserError, match=message) as info:
        load_dataset(tmp_path / "d")
    assert "labels.csv:2" in str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        load_dataset(tmp_path / "empty")


def test_limit_and_class_balanced_subset_are_deterministic(tmp_path):
    root = tmp_path / "folders"
    for i in range(12):
        write_jpeg(root / wnid(i % 3) / f"ILSVRC2012_val_{i + 1:08d}.JPEG", seed=i, width=40, height=30)
    dataset = load_dataset(root)
    assert [r.image_id for r in dataset.select(limit=4).records] == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 5)]
    balanced = dataset.select(per_class=2)
    counts = {}
    for r in balanced.records:
        counts[r.labels[0]] = counts.get(r.labels[0], 0) + 1
    assert counts == {0: 2, 1: 2, 2: 2}
    assert [r.image_id for r in balanced.records] == sorted(r.image_id for r in balanced.records)
    assert dataset.select(per_class=2).manifest_sha256() == balanced.manifest_sha256()
    with pytest.raises(UserError):
        dataset.select(limit=0)


# --- hostile and mistaken inputs: a clear error or the right labels, never a silent guess --------------------


def test_same_stem_with_other_extensions_gets_an_id_each(tmp_path):
    root = tmp_path / "d"
    write_jpeg(root / "cat.jpg", seed=1)
    write_jpeg(root / "sub" / "cat.jpg", seed=2)
    (root / "cat.png").write_bytes((root / "cat.jpg").read_bytes())
    (root / "labels.csv").write_text("image,labels\ncat.png,5\ncat.jpg,7\nsub/cat.jpg,9\n")
    dataset = load_dataset(root)
    by_id = {r.image_id: (Path(r.path).relative_to(root).as_posix(), r.labels) for r in dataset.records}
    assert by_id == {"cat.jpg": ("cat.jpg", (7,)), "cat.png": ("cat.png", (5,)), "sub/cat": ("sub/cat.jpg", (9,))}


def test_unquoted_extra_label_columns_are_more_labels(tmp_path):
    write_jpeg(tmp_path / "d" / "grace_hopper.jpg", seed=1)
    (tmp_path / "d" / "labels.csv").write_text("image,labels\ngrace_hopper.jpg,667,652\n")
    assert load_dataset(tmp_path / "d").records[0].labels == (652, 667)
    (tmp_path / "d" / "labels.csv").write_text("labels,image\n667,grace_hopper.jpg,652\n")
    with pytest.raises(UserError, match="labels.csv:2: 3 fields under a header of 2"):
        load_dataset(tmp_path / "d")


def test_conflicting_duplicate_rows_are_refused_naming_both(tmp_path):
    write_jpeg(tmp_path / "d" / "a.jpg", seed=1)
    (tmp_path / "d" / "labels.csv").write_text("image,labels\na.jpg,3\na.jpg,3\n")
    assert load_dataset(tmp_path / "d").records[0].labels == (3,)  # the same row twice says one thing
    (tmp_path / "d" / "labels.csv").write_text("image,labels\na.jpg,3\na.jpg,4\n")
    with pytest.raises(UserError, match=r"two rows for image 'a.jpg' disagree: line 2 gives labels \[3\], line 3 gives \[4\]"):
        load_dataset(tmp_path / "d")


def test_a_name_that_fits_two_images_is_refused(tmp_path):
    write_jpeg(tmp_path / "d" / "x" / "a.jpg", seed=1)
    write_jpeg(tmp_path / "d" / "y" / "a.jpg", seed=2)
    (tmp_path / "d" / "labels.csv").write_text("image,labels\na.jpg,3\n")
    with pytest.raises(UserError, match=r"'a.jpg' fits several images \(x/a.jpg, y/a.jpg\)"):
        load_dataset(tmp_path / "d")


def test_labels_csv_with_a_bom_is_read_and_one_not_in_utf8_is_refused(tmp_path):
    write_jpeg(tmp_path / "d" / "café.jpg", seed=1)
    (tmp_path / "d" / "labels.csv").write_bytes("\ufeffimage,labels\r\ncafé.jpg,967\r\n".encode())
    assert load_dataset(tmp_path / "d").records[0].labels == (967,)
    (tmp_path / "d" / "labels.csv").write_bytes("image,labels\ncafé.jpg,967\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text.*save it as UTF-8"):
        load_dataset(tmp_path / "d")


@pytest.mark.parametrize("line, message", [("12x", "'12x' is not an ILSVRC2012_ID"), ("\ufeff490", None)])
def test_devkit_ground_truth_with_a_bad_line_or_a_bom(tmp_path, val_images, line, message):
    root = make_devkit(tmp_path / "official" / "val", val_images)
    truth = tmp_path / "official" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    lines = truth.read_text().splitlines()
    first = lines[0]
    truth.write_text("\n".join([line.replace("490", first)] + lines[1:]) + "\n", encoding="utf-8")
    if message:
        with pytest.raises(UserError, match=message):
            load_dataset(root)
    else:
        assert [r.labels[0] for r in load_dataset(root).records] == [TRUTH[n] for n in sorted(TRUTH)]


def test_an_explicit_devkit_is_used_or_refused(tmp_path, val_images):
    root = make_devkit(tmp_path / "official" / "val", val_images)  # a devkit beside --data would be found
    with pytest.raises(UserError, match="--devkit .*nonexistent: no ILSVRC2012_validation_ground_truth.txt"):
        load_dataset(root, devkit=tmp_path / "nonexistent")
    folders = make_class_folders(tmp_path / "folders", val_images)
    devkit = tmp_path / "official" / "ILSVRC2012_devkit_t12"
    with pytest.raises(UserError, match="holds no ILSVRC2012_val_\\* images directly"):
        load_dataset(folders, devkit=devkit)


def test_class_folders_with_a_stray_folder_say_why_they_are_unlabelled(tmp_path, val_images):
    root = make_class_folders(tmp_path / "folders", val_images)
    write_jpeg(root / "holiday" / "beach.jpg", seed=1)
    dataset = load_dataset(root)
    assert dataset.layout == "folder" and dataset.n_labelled == 0
    assert any("not named by an ImageNet WordNet id (holiday)" in note for note in dataset.notes), dataset.notes


def test_a_self_referencing_link_is_kept_as_an_image_for_decoding_to_report(tmp_path, val_images):
    root = make_own_folder(tmp_path / "own", val_images)
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "deeper").mkdir()
    (root / "deeper" / "loop2.jpg").symlink_to(root / "deeper" / "loop2.jpg")
    ids = {r.image_id for r in load_dataset(root).records}
    assert {"loop", "loop2"} <= ids
    flat = tmp_path / "flat"
    flat.mkdir()
    write_jpeg(flat / "a.jpg", seed=1)
    (flat / "loop.jpg").symlink_to(flat / "loop.jpg")
    assert [r.image_id for r in load_dataset(flat).records] == ["a", "loop"]


def test_per_class_on_unlabelled_images_is_refused(tmp_path):
    write_jpeg(tmp_path / "d" / "a.jpg", seed=1)
    with pytest.raises(UserError, match="--per-class 1: none of the 1 images .* has a label"):
        load_dataset(tmp_path / "d").select(per_class=1)


def _devkit_tarball(official: Path) -> Path:
    """The devkit as downloaded: ILSVRC2012_devkit_t12.tar.gz, made from the extracted folder, which then goes."""
    tarball = official / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(official / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    shutil.rmtree(official / "ILSVRC2012_devkit_t12")
    return tarball


def test_the_official_tarballs_extracted_side_by_side(tmp_path, val_images):
    make_devkit(tmp_path / "official" / "val", val_images)
    beside = load_dataset(tmp_path / "official")  # holds val/ and ILSVRC2012_devkit_t12/
    assert beside.layout == "devkit" and beside.root.endswith("val")
    assert manifest(beside) == manifest(load_dataset(make_class_folders(tmp_path / "cf", val_images)))


def test_the_devkit_tarball_is_read_in_place_of_its_folder(tmp_path, val_images):
    make_devkit(tmp_path / "official" / "val", val_images)
    tarball = _devkit_tarball(tmp_path / "official")
    expected = manifest(load_dataset(make_class_folders(tmp_path / "cf", val_images)))
    found = load_dataset(tmp_path / "official")  # the tarball beside val/
    assert found.layout == "devkit" and manifest(found) == expected
    assert any("ILSVRC2012_devkit_t12.tar.gz" in note for note in found.notes)
    moved = tmp_path / "elsewhere.tar.gz"
    tarball.rename(moved)
    assert manifest(load_dataset(tmp_path / "official" / "val", devkit=moved)) == expected


def test_a_damaged_devkit_tarball_is_one_line(tmp_path, val_images):
    make_devkit(tmp_path / "official" / "val", val_images)
    tarball = _devkit_tarball(tmp_path / "official")
    tarball.write_bytes(tarball.read_bytes()[:200])
    with pytest.raises(UserError, match="--devkit .*no ILSVRC2012_validation_ground_truth.txt"):
        load_dataset(tmp_path / "official" / "val", devkit=tmp_path / "nothing-here")
    result = run_cli("native", "--data", str(tmp_path / "official" / "val"), "--devkit", str(tarball), "--random-weights")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(tarball) in result.stderr
