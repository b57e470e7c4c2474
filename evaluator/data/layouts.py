"""Datasets: find the images and their labels in any of the layouts people keep ImageNet in.

Every layout gives the same manifest for the same images: records sorted by image id,
each with its class indices (sorted WordNet-id order, as the frameworks number them).
Layouts, detected in this order:

* ``kaggle``: ``LOC_val_solution.csv`` + ``ILSVRC/Data/CLS-LOC/val/*.JPEG``;
* ``devkit``: flat ``ILSVRC2012_val_*.JPEG`` + the devkit's
  ``ILSVRC2012_validation_ground_truth.txt``, whose ILSVRC2012_IDs are mapped to WordNet
  ids through the devkit's ``meta.mat`` (they are *not* class indices); the devkit may be its
  extracted folder or ``ILSVRC2012_devkit_t12.tar.gz`` itself (as torchvision takes it), and
  ``--data`` may be the folder the two official tarballs were extracted in, side by side
  (``val/`` + ``ILSVRC2012_devkit_t12/``);
* ``class-folders``: ``<root>/<wnid>/*.JPEG``;
* ``folder``: any folder of images, with an optional ``labels.csv`` (columns ``image``,
  ``labels``; labels are class indices or WordNet ids, several separated by spaces).
  Images it does not list are unlabelled: predicted and reported, left out of the error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from xfverify.models.errors import UserError
from xfverify.models.imagenet import NUM_CLASSES, WNID_PATTERN, wnid_to_index
from xfverify.models.user_input import not_regular_kind, read_regular, shown

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"  # the embedded sample: a default that needs no download

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_VAL_DIR = Path("ILSVRC", "Data", "CLS-LOC", "val")
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_FOLDER = "ILSVRC2012_devkit_t12"
DEVKIT_TARBALL = "ILSVRC2012_devkit_t12.tar.gz"
LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id (file stem, or relative path where stems collide), file, acceptable labels."""

    image_id: str
    path: str
    labels: tuple[int, ...] = ()

    @property
    def labelled(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class Dataset:
    """An ordered, labelled list of images and where it came from."""

    root: str
    layout: str
    records: tuple[ImageRecord, ...]
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_labelled(self) -> int:
        return sum(1 for r in self.records if r.labelled)

    def manifest_sha256(self) -> str:
        """sha256 over the ordered (image id, labels) pairs: the same in every layout."""
        digest = hashlib.sha256()
        for record in self.records:
            labels = " ".join(str(label) for label in record.labels)
            digest.update(f"{record.image_id}\t{labels}\n".encode())
        return digest.hexdigest()

    def select(self, limit: int | None = None, per_class: int | None = None) -> "Dataset":
        """A deterministic subset: ``per_class`` first images of each class, then the first ``limit``."""
        records = self.records
        notes = list(self.notes)
        if per_class is not None:
            if per_class <= 0:
                raise UserError(f"--per-class must be positive, got {per_class}")
            taken: dict[int, int] = {}
            chosen = []
            for record in records:
                if not record.labelled:
                    continue
                first = record.labels[0]
                if taken.get(first, 0) < per_class:
                    taken[first] = taken.get(first, 0) + 1
                    chosen.append(record)
            if not chosen:
                raise UserError(
                    f"--per-class {per_class}: none of the {len(records)} images in {self.root} has a label, "
                    "so there are no classes to balance: leave --per-class out, or give labels (see --data)"
                )
            records = tuple(chosen)
            notes.append(f"class-balanced subset: at most {per_class} image(s) per class, first by image id")
        if limit is not None:
            if limit <= 0:
                raise UserError(f"--limit must be positive, got {limit}")
            if limit < len(records):
                notes.append(f"limited to the first {limit} images by image id")
            records = records[:limit]
        return replace(self, records=tuple(records), notes=tuple(notes))


    def calibration_split(self, n: int) -> tuple["Dataset", "Dataset"]:
        """The first ``n`` images by SPLIT_RULE (to calibrate on) and the others (to score), each in this order."""
        if n <= 0:
            raise UserError(f"--calibration-split must be positive, got {n}")
        if n >= len(self.records):
            raise UserError(f"--calibration-split {n}: the images asked for ({self.root}, after --limit and "
                            f"--per-class) are {len(self.records)}, none would be left to score: give fewer")
        groups: dict[tuple[bool, int], list[int]] = {}
        for index, record in enumerate(self.records):
            groups.setdefault((not record.labelled, record.labels[0] if record.labelled else 0), []).append(index)
        queues = [sorted(rows, key=lambda row: self.records[row].image_id) for _, rows in sorted(groups.items())]
        taken: set[int] = set()
        for depth in range(max(len(q) for q in queues)):
            for queue in queues:
                if depth < len(queue) and len(taken) < n:
                    taken.add(queue[depth])
        held = tuple(r for i, r in enumerate(self.records) if i in taken)
        scored = tuple(r for i, r in enumerate(self.records) if i not in taken)
        note = (f"{n} of the {len(self.records)} images held out to calibrate int8, never scored "
                f"(--calibration-split: {SPLIT_RULE})")
        return (replace(self, records=held, notes=(*self.notes, f"the {n} calibration images of --calibration-split")),
                replace(self, records=scored, notes=(*self.notes, note)))


SPLIT_RULE = ("a round robin over the classes in class-index order (unlabelled images last), each class's images "
              "by image id: the first image of every class, then the second, and so on")


# --- label parsing -----------------------------------------------------------------------


def parse_label_token(token: str, where: str) -> int:
    """A class index ('65') or WordNet id ('n01751748') -> class index."""
    token = token.strip()
    if WNID_PATTERN.match(token):
        index = wnid_to_index().get(token)
        if index is None:
            raise UserError(f"{where}: {token} is not one of the 1000 ImageNet-1k WordNet ids")
        return index
    try:
        index = int(token)
    except ValueError:
        raise UserError(f"{where}: label {token!r} is neither a class index (0-999) nor a WordNet id") from None
    if not 0 <= index < NUM_CLASSES:
        raise UserError(f"{where}: class index {index} is outside 0-{NUM_CLASSES - 1}")
    return index


def parse_labels(text: str, where: str) -> tuple[int, ...]:
    """Space- or comma-separated labels -> sorted unique class indices (empty: unlabelled)."""
    tokens = [t for t in text.replace(",", " ").split() if t]
    return tuple(sorted({parse_label_token(t, where) for t in tokens}))


def read_text(path: Path) -> str:
    """A UTF-8 text file (a byte-order mark is allowed); anything else is the user's to re-save."""
    return decode_text(read_regular(path, "the dataset's file"), str(path))


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 bytes (a byte-order mark is allowed) as text; anything else is the user's to re-save."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it as UTF-8"
        ) from None


def read_labels_csv(path: Path) -> list[tuple[int, str, tuple[int, ...]]]:
    """(line, image name, class indices) for each row of a labels.csv with columns ``image`` and ``labels``.

    Several labels go in one field separated by spaces (or commas inside quotes); unquoted commas,
    which a spreadsheet writes as extra columns, are read as more labels when ``labels`` is the last column.
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = []
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        if not {"image", "labels"} <= set(header):
            raise UserError(f"{path}: expected a header with columns image,labels")
        reader.fieldnames = header
        for row in reader:
            where = f"{path}:{reader.line_num}"
            extra = row.pop(None, None) or []
            if extra and header[-1] != "labels":
                raise UserError(
                    f"{where}: {len(header) + len(extra)} fields under a header of {len(header)}: "
                    "put several labels in the labels field, separated by spaces"
                )
            name = (row["image"] or "").strip()
            if not name:
                raise UserError(f"{where}: no image name")
            rows.append((reader.line_num, name, parse_labels(" ".join([row["labels"] or "", *extra]), where)))
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: not a readable CSV file ({exc})") from None
    return rows


# --- file walking ------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _images_in(directory: Path) -> list[Path]:
    """Image files directly in ``directory``; a name that cannot be followed (a link loop) or is not a regular file
    (a FIFO, a device) is kept, so decoding reports it as a bad image like any other unreadable file."""
    images = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not _is_image(entry.name):
                continue
            try:
                if entry.is_dir():
                    continue
            except OSError:
                pass
            images.append(Path(entry.path))
    return images


def _walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if _is_image(f))
    return found


def _assign_ids(paths: Iterable[Path], root: Path) -> dict[str, Path]:
    """Image id = the file stem where it is unique, else the relative path without suffix, else with it
    (``cat.jpg`` beside ``cat.png``), so no two files ever share an id."""
    paths = list(paths)
    names = []
    for path in paths:
        relative = path.relative_to(root)
        names.append((path.stem, relative.with_suffix("").as_posix(), relative.as_posix()))
    level = [0] * len(paths)
    while True:
        holders: dict[str, list[int]] = {}
        for i, candidates in enumerate(names):
            holders.setdefault(candidates[level[i]], []).append(i)
        clashing = [i for group in holders.values() if len(group) > 1 for i in group if level[i] < 2]
        if not clashing:
            return {names[i][level[i]]: path for i, path in enumerate(paths)}
        for i in clashing:
            level[i] += 1


def _records(ids: dict[str, Path], labels: dict[str, tuple[int, ...]]) -> tuple[ImageRecord, ...]:
    # Paths are under the already resolved root; resolving each of 50,000 files would take seconds.
    return tuple(ImageRecord(image_id=i, path=str(ids[i]), labels=labels.get(i, ())) for i in sorted(ids))


# --- layouts -----------------------------------------------------------------------------


def _load_kaggle(root: Path) -> Dataset:
    val_dir = root / KAGGLE_VAL_DIR
    if not val_dir.is_dir():
        raise UserError(f"{root / KAGGLE_SOLUTION} found but not the images in {val_dir} (Kaggle's layout)")
    ids = _assign_ids(_images_in(val_dir), val_dir)
    labels: dict[str, tuple[int, ...]] = {}
    reader = csv.DictReader(io.StringIO(read_text(root / KAGGLE_SOLUTION), newline=""))
    if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
        raise UserError(f"{root / KAGGLE_SOLUTION}: expected columns ImageId,PredictionString")
    for line, row in enumerate(reader, start=2):
        tokens = (row["PredictionString"] or "").split()
        if not tokens:
            raise UserError(f"{root / KAGGLE_SOLUTION}:{line}: empty PredictionString")
        # Every box of a validation image carries the image's class; the first names it.
        labels[row["ImageId"]] = (parse_label_token(tokens[0], f"{root / KAGGLE_SOLUTION}:{line}"),)
    notes = _unlabelled_note(ids, labels, KAGGLE_SOLUTION)
    return Dataset(str(root), "kaggle", _records(ids, labels), notes)


@dataclass(frozen=True)
class Devkit:
    """The devkit's ground truth and meta.mat: in a folder (its ``data/``), or inside the devkit tarball."""

    location: Path

    @property
    def is_tarball(self) -> bool:
        return self.location.is_file()

    def where(self, name: str) -> str:
        return f"{self.location}:data/{name}" if self.is_tarball else str(self.location / name)

    def has(self, name: str) -> bool:
        if self.is_tarball:
            return self._from_tarball(name) is not None
        return (self.location / name).is_file()

    def read(self, name: str) -> bytes:
        if self.is_tarball:
            data = self._from_tarball(name)
            if data is None:
                raise UserError(f"{self.location}: no data/{name} inside; is it {DEVKIT_TARBALL}?")
            return data
        return read_regular(self.location / name, "the devkit's file")

    def _from_tarball(self, name: str) -> bytes | None:
        try:
            with tarfile.open(self.location, "r:*") as tar:
                for member in tar:
                    if member.isfile() and PurePosixPath(member.name).parts[-2:] == ("data", name):
                        return tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise UserError(
                f"{self.location}: not a readable devkit tarball ({exc}); download {DEVKIT_TARBALL} again"
            ) from None
        return None


def _devkit_at(candidate: Path) -> Devkit | None:
    """The devkit a path holds: a tarball, a folder with the ground truth, or one whose data/ has it."""
    if candidate.is_file() and (candidate.name.endswith((".tar", ".tar.gz", ".tgz")) or tarfile.is_tarfile(candidate)):
        return Devkit(candidate)
    for folder in (candidate, candidate / "data"):
        if (folder / DEVKIT_GROUND_TRUTH).is_file():
            return Devkit(folder)
    return None


def _find_devkit(root: Path, devkit: Path | None) -> Devkit | None:
    """The devkit: the one given (only that), else one beside ``root`` (extracted, or still the tarball)."""
    if devkit is not None:
        return _devkit_at(devkit)
    for base in (root, root.parent):
        for candidate in (base, base / DEVKIT_FOLDER, base / "data", base / DEVKIT_TARBALL):
            found = _devkit_at(candidate)
            if found is not None and found.has(DEVKIT_GROUND_TRUTH):
                return found
    return None


def read_devkit_meta(data: bytes, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id, for the 1000 leaf classes, from the devkit's meta.mat."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{where}: not a readable ImageNet devkit meta.mat ({exc})") from None
    mapping = {}
    for entry in synsets:
        if int(entry["num_children"]) == 0:
            mapping[int(entry["ILSVRC2012_ID"])] = str(entry["WNID"])
    if len(mapping) != NUM_CLASSES:
        raise UserError(f"{where}: expected 1000 leaf synsets, found {len(mapping)}")
    return mapping


def _load_devkit(root: Path, images: list[Path], devkit: Devkit) -> Dataset:
    ground_truth = devkit.where(DEVKIT_GROUND_TRUTH)
    meta = devkit.where(DEVKIT_META)
    if not devkit.has(DEVKIT_META):
        raise UserError(
            f"{ground_truth} holds ILSVRC2012_IDs, which are not class indices, and meta.mat is not beside it "
            f"to map them to WordNet ids: put the devkit's data/meta.mat in {devkit.location}"
        )
    id_to_wnid = read_devkit_meta(devkit.read(DEVKIT_META), meta)
    index_of = wnid_to_index()
    ids = _assign_ids(images, root)
    labels: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(decode_text(devkit.read(DEVKIT_GROUND_TRUTH), ground_truth).splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            ilsvrc_id = int(text)
        except ValueError:
            raise UserError(f"{ground_truth}:{number}: {text[:40]!r} is not an ILSVRC2012_ID (a whole number)") from None  # noqa: E501
        if ilsvrc_id not in id_to_wnid:
            raise UserError(f"{ground_truth}:{number}: ILSVRC2012_ID {ilsvrc_id} is not a leaf class in {meta}")
        labels[f"ILSVRC2012_val_{number:08d}"] = (index_of[id_to_wnid[ilsvrc_id]],)
    notes = (f"labels: {DEVKIT_GROUND_TRUTH} mapped through {meta} (ILSVRC2012_ID -> WordNet id -> class index)",)
    notes += _unlabelled_note(ids, labels, DEVKIT_GROUND_TRUTH)
    return Dataset(str(root), "devkit", _records(ids, labels), notes)


def _load_class_folders(root: Path, class_dirs: list[Path]) -> Dataset:
    index_of = wnid_to_index()
    paths: list[Path] = []
    label_of_path: dict[Path, tuple[int, ...]] = {}
    for class_dir in class_dirs:
        if class_dir.name not in index_of:
            raise UserError(f"{class_dir}: folder name {class_dir.name} is not an ImageNet-1k WordNet id")
        for image in _images_in(class_dir):
            paths.append(image)
            label_of_path[image] = (index_of[class_dir.name],)
    ids = _assign_ids(paths, root)
    labels = {i: label_of_path[p] for i, p in ids.items()}
    return Dataset(str(root), "class-folders", _records(ids, labels))


def _load_folder(root: Path, notes: tuple[str, ...] = ()) -> Dataset:
    ids = _assign_ids(_walk_images(root), root)
    labels: dict[str, tuple[int, ...]] = {}
    labels_csv = root / LABELS_CSV
    if os.path.lexists(labels_csv):  # anything by that name is read, or refused in one line: never ignored silently
        labels = _labels_by_id(labels_csv, ids, root)
    elif any(n.startswith("ILSVRC2012_val_") for n in ids):
        notes += (
            "ImageNet validation files without labels: give the devkit (ILSVRC2012_validation_ground_truth.txt "
            "and meta.mat) or a labels.csv to get error rates",
        )
    return Dataset(str(root), "folder", _records(ids, labels), notes)


def _labels_by_id(labels_csv: Path, ids: dict[str, Path], root: Path) -> dict[str, tuple[int, ...]]:
    """labels.csv's rows by image id; a name that fits several images, or two rows that disagree, is refused."""
    by_relpath = {p.relative_to(root).as_posix(): i for i, p in ids.items()}
    by_name: dict[str, list[str]] = {}
    for i, p in ids.items():
        by_name.setdefault(p.name, []).append(i)
    labels: dict[str, tuple[int, ...]] = {}
    line_of: dict[str, int] = {}
    for line, name, row_labels in read_labels_csv(labels_csv):
        where = f"{labels_csv}:{line}"
        same_name = by_name.get(name, [])
        if len(same_name) > 1 and name not in by_relpath:
            places = ", ".join(sorted(ids[i].relative_to(root).as_posix() for i in same_name))
            raise UserError(f"{where}: {name!r} fits several images ({places}): give its path relative to {root}")
        image_id = by_relpath.get(name) or (same_name[0] if same_name else None) or (name if name in ids else None)
        if image_id is None:
            raise UserError(f"{where}: no image {name!r} under {root}")
        if image_id in labels and labels[image_id] != row_labels:
            raise UserError(
                f"{labels_csv}: two rows for image {name!r} disagree: line {line_of[image_id]} gives labels "
                f"{list(labels[image_id])}, line {line} gives {list(row_labels)}; keep one"
            )
        labels[image_id] = row_labels
        line_of.setdefault(image_id, line)
    return labels


def _unlabelled_note(ids: dict[str, Path], labels: dict[str, tuple[int, ...]], source: str) -> tuple[str, ...]:
    missing = sum(1 for i in ids if i not in labels)
    return (f"{missing} image(s) have no entry in {source} and are unlabelled",) if missing else ()


def _not_class_folders_note(root: Path, class_dirs: list[Path], subdirs: list[Path], flat: list[Path]) -> tuple[str, ...]:
    """Why folders named by WordNet id were not read as class folders (then their images are unlabelled)."""
    if not class_dirs or (root / LABELS_CSV).is_file():
        return ()
    strays = [p.name for p in subdirs if p not in class_dirs]
    why = []
    if strays:
        why.append(f"{len(strays)} folder(s) are not named by an ImageNet WordNet id ({', '.join(strays[:3])})")
    if flat:
        why.append(f"{len(flat)} image(s) lie directly in it")
    return (
        f"{len(class_dirs)} folder(s) in {root} are named by WordNet id, but {' and '.join(why)}: read as a folder "
        "of unlabelled images; for class folders move those out, or give a labels.csv",
    )


def _kaggle_root_of(root: Path) -> Path | None:
    """The Kaggle root when ``root`` is it, or is its ILSVRC/Data/CLS-LOC/val folder."""
    if (root / KAGGLE_SOLUTION).is_file():
        return root
    if root.parts[-4:] == KAGGLE_VAL_DIR.parts and (root.parents[3] / KAGGLE_SOLUTION).is_file():
        return root.parents[3]
    return None


def _images_folder_of(root: Path) -> Path:
    """``root/val`` when ``root`` is where the official tarballs were extracted side by side, else ``root``."""
    val = root / "val"
    if _images_in(root) or not val.is_dir():
        return root
    if any(p.name.startswith("ILSVRC2012_val_") for p in _images_in(val)):
        return val
    return root


def load_dataset(path: str | os.PathLike, devkit: str | os.PathLike | None = None) -> Dataset:
    """Detect the layout of ``path`` and return its manifest (records sorted by image id)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"--data {root}: no such file or folder")
    if not root.is_dir():
        raise UserError(f"--data {root}: expected a folder of images (an ImageNet layout or your own)")
    resolved = root.resolve()
    if resolved == Path(resolved.anchor) or Path.home().resolve().is_relative_to(resolved):
        which = "the root folder" if resolved == Path(resolved.anchor) else "your home folder or one above it"
        raise UserError(f"--data {shown(root)}: that is {which}: every file under it would be listed and decoded; "
                        "give the folder that holds the images")
    root = _images_folder_of(resolved)
    kaggle_root = _kaggle_root_of(root)
    if kaggle_root is not None:
        dataset = _load_kaggle(kaggle_root)
    else:
        flat = _images_in(root)
        devkit_found = _find_devkit(root, Path(devkit).expanduser() if devkit else None)
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        class_dirs = [p for p in subdirs if WNID_PATTERN.match(p.name)]
        validation_files = any(p.name.startswith("ILSVRC2012_val_") for p in flat)
        if devkit is not None and devkit_found is None:
            raise UserError(f"--devkit {devkit}: no {DEVKIT_GROUND_TRUTH} there or in its data/ folder, "
                            f"and not {DEVKIT_TARBALL}")
        if devkit is not None and not validation_files:
            raise UserError(f"--devkit {devkit}: --data {root} holds no ILSVRC2012_val_* images directly to label")
        if devkit_found is not None and validation_files:
            dataset = _load_devkit(root, flat, devkit_found)
        elif class_dirs and not flat and len(class_dirs) == len(subdirs):
            dataset = _load_class_folders(root, class_dirs)
        else:
            dataset = _load_folder(root, _not_class_folders_note(root, class_dirs, subdirs, flat))
    if not dataset.records:
        raise UserError(f"--data {root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return dataset


def records_from_paths(paths: Sequence[str | os.PathLike]) -> Dataset:
    """A dataset of individual image files given on the command line (unlabelled)."""
    records = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            raise UserError(f"{path} is a folder, not an image file: give the image files (a glob such as "
                            f"{path / '*.jpg'} works), or the folder as `xfverify native --data`")
        if not path.is_file():
            kind = not_regular_kind(os.stat(path).st_mode) if path.exists() else None
            raise UserError(f"{shown(path)}: {kind}, not an image file" if kind else f"{shown(path)}: no such image file")
        records.append(ImageRecord(image_id=path.stem, path=str(path.resolve())))
    return Dataset(root=os.getcwd(), layout="files", records=tuple(records))
