"""labels.csv, fed random valid and invalid files: exactly the labels written, or one clear UserError."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import wnid
from xfverify.evaluator.data.layouts import load_dataset
from xfverify.models.errors import UserError

# Names that need quoting (a comma, a quote), spaces, non-ASCII, a sub-folder; ids are their stems.
IMAGES = {"a.jpg": "a", "b b.jpg": "b b", "c,d.png": "c,d", 'q"uote.jpg': 'q"uote', "sub/e.JPEG": "e", "é.png": "é"}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def folder(tmp_path):
    for name in IMAGES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded: parsing only")
    return tmp_path


label = st.one_of(st.integers(0, 999).map(lambda i: (i, str(i))), st.integers(0, 999).map(lambda i: (i, wnid(i))))
rows = st.dictionaries(st.sampled_from(sorted(IMAGES)), st.lists(label, max_size=4), max_size=len(IMAGES))


@st.composite
def labels_files(draw):
    """A valid labels.csv in one of the ways people write one, and the labels it means."""
    table = draw(rows)
    style = draw(st.sampled_from(["spaces", "quoted-commas", "extra-columns"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(["image", "labels"])
    for name, labels in table.items():
        tokens = [token for _, token in labels]
        if style == "extra-columns":
            line = [name, *tokens] if tokens else [name, ""]
        else:
            line = [name, (" " if style == "spaces" else ",").join(tokens)]
        for _ in range(draw(st.integers(1, 2))):  # an identical duplicate row says the same thing
            writer.writerow(line)
    text = ("\ufeff" if draw(st.booleans()) else "") + buffer.getvalue()
    expected = {IMAGES[name]: tuple(sorted({index for index, _ in labels})) for name, labels in table.items()}
    return text, expected


@SETTINGS
@given(labels_files())
def test_valid_files_give_exactly_the_labels_written(folder, case):
    text, expected = case
    (folder / "labels.csv").write_text(text, encoding="utf-8")
    got = {r.image_id: r.labels for r in load_dataset(folder).records}
    assert got == {image_id: expected.get(image_id, ()) for image_id in IMAGES.values()}


def assert_one_clear_error(folder, data: bytes) -> None:
    (folder / "labels.csv").write_bytes(data)
    try:
        load_dataset(folder)
    except UserError as exc:
        message = str(exc)
        assert "labels.csv" in message and "\n" not in message, message


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.text(max_size=300).map(lambda t: ("image,labels\n" + t).encode())))
def test_any_file_is_read_or_refused_in_one_line(folder, data):
    assert_one_clear_error(folder, data)


@SETTINGS
@given(labels_files(), st.sampled_from(["1000", "-1", "n99999999", "cat", "3.5"]), st.data())
def test_a_bad_label_anywhere_is_refused(folder, case, bad, data):
    text, _ = case
    lines = text.splitlines()
    if len(lines) < 2:  # no rows: add one to spoil
        lines.append("a.jpg,")
    at = data.draw(st.integers(1, len(lines) - 1))
    lines[at] += f",{bad}" if lines[at].endswith('"') else f" {bad}"  # another label, in its own column or not
    (folder / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"labels.csv:\d+"):
        load_dataset(folder)
