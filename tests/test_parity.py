"""xfverify's framework-free preprocessing against each preset's source, on real photographs.

The references (:mod:`xfverify.evaluator.references`) are the frameworks' and the weights' origins' own
code, with their parameters written out as their sources state them; they import nothing from xfverify
(an import contract checks that). Each runs in its framework's worker, as `xfverify preprocess --verify`
does. Photos: the embedded sample, a few dozen of imagenet-sample-500, and real-world oddities made from
a real photo (CMYK, grayscale, PNG named .JPEG, EXIF-rotated). The resize libraries no preset uses (tf2, torch)
are checked against the frameworks' resize calls directly, at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    PHOTOS,
    SAMPLE_DIR,
    needs_mxnet,
    needs_tensorflow,
    needs_torch,
    odd_images,
    real_photos,
    synthetic_image,
)

from xfverify.evaluator import references as references_package
from xfverify.evaluator.data.imaging import resize
from xfverify.evaluator.pipeline.preprocess import (
    catalogue_reference,
    catalogue_reference_tensors,
    compare_with_reference,
    describe_match,
    preprocess_files,
    reference_tensors,
)
from xfverify.evaluator.references import REFERENCES
from xfverify.models.errors import UserError
from xfverify.models.preprocess import (
    LIBRARY_INTERPOLATIONS,
    PRESETS,
    PreprocessSpec,
    shorter_side_size,
)

MARKS = {"torch": needs_torch, "tensorflow": needs_tensorflow, "mxnet": needs_mxnet}

# The TensorFlow original never decodes these: its ImageNet conversion script (build_imagenet_data.py in
# tensorflow/tpu) re-encodes PNG and CMYK files as RGB JPEGs, and tf.image.decode_and_crop_jpeg refuses PNG.
NOT_FED_TO_THE_TPU_ORIGINAL = {"cmyk", "png_named_jpeg"}


def test_every_preset_has_a_reference():
    assert set(REFERENCES) == set(PRESETS)


def _photos(tmp_path: Path, preset: str) -> list[str]:
    odd = odd_images(tmp_path)
    if REFERENCES[preset].module == "tpu_efficientnet":
        odd = {kind: path for kind, path in odd.items() if kind not in NOT_FED_TO_THE_TPU_ORIGINAL}
        sample = [name for name in PHOTOS if name.endswith(".jpg")]
    else:
        sample = PHOTOS
    return [str(SAMPLE_DIR / name) for name in sample] + [str(p) for p in odd.values()] + real_photos(every=25)


# Runs each framework's references for every preset in one process (the reference modules import nothing of
# xfverify and are loaded from their files): one TensorFlow start-up for its eight presets, not eight.
REFERENCES_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
import numpy as np
folder, job, out = sys.argv[1:]
sys.path.insert(0, folder)  # a reference module may import its package's siblings by file
results, modules = {}, {}
for preset, (module_name, paths) in json.loads(Path(job).read_text()).items():
    if module_name not in modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(folder) / (module_name + ".py"))
        modules[module_name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[module_name])
    module = modules[module_name]
    batch = np.asarray(module.PIPELINES[preset](paths), dtype=np.float32)
    if module.LAYOUT == "NHWC":
        batch = batch.transpose(0, 3, 1, 2)
    results[preset] = np.ascontiguousarray(batch)
np.savez(out, **results)
"""


@pytest.fixture(scope="module")
def framework_references(tmp_path_factory):
    """preset -> (the photos, the preset's reference tensors in NCHW); each framework's presets run in one process
    (GluonCV's single preset through the worker, which makes GluonCV importable beside its MXNet)."""
    done: dict[str, tuple[list[str], np.ndarray]] = {}

    def get(preset: str) -> tuple[list[str], np.ndarray]:
        if preset not in done:
            framework = REFERENCES[preset].framework
            folder = tmp_path_factory.mktemp(framework)
            presets = [p for p in sorted(PRESETS) if REFERENCES[p].framework == framework]
            photos = {p: _photos(folder, p) for p in presets}
            if framework == "mxnet":
                for name in presets:
                    tensors, _ = reference_tensors(name, photos[name])
                    done[name] = (photos[name], _nchw(tensors, PRESETS[name].layout))
                return done[preset]
            job = folder / "job.json"
            job.write_text(json.dumps({p: (REFERENCES[p].module, photos[p]) for p in presets}))
            ran = subprocess.run([sys.executable, "-c", REFERENCES_SCRIPT, str(Path(references_package.__file__).parent),
                                  str(job), str(folder / "out.npz")], capture_output=True, text=True, timeout=900)
            assert ran.returncode == 0, ran.stderr[-3000:]
            with np.load(folder / "out.npz") as out:
                done.update({p: (photos[p], out[p]) for p in presets})
        return done[preset]

    return get


def _nchw(batch: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if layout == "NHWC" else batch


@pytest.mark.parametrize("preset", [pytest.param(p, marks=MARKS[REFERENCES[p].framework]) for p in sorted(PRESETS)])
def test_preset_matches_its_source(preset, framework_references):
    paths, theirs = framework_references(preset)
    ours = _nchw(preprocess_files(paths, PRESETS[preset]), PRESETS[preset].layout)
    reference = REFERENCES[preset]
    match = compare_with_reference(ours, theirs, reference)
    if reference.exact:
        assert match.identical, f"{preset} differs from its source: {describe_match(match, reference, paths)}"
        return
    assert match.outside == (), describe_match(match, reference, paths)


@needs_tensorflow
def test_the_tpu_original_resizes_a_window_that_already_has_the_input_size(tmp_path):
    """Run as its scripts run it (a tf.data map, graph mode), the original does not know the window's size when the
    resize is traced, so tf.compat.v1's resize always runs and the picture is fed (run eagerly, the window would
    pass through as uint8 and be fed as uint8 / 255, every value near -1)."""
    from PIL import Image

    path = tmp_path / "short_side_256.jpg"  # window = int(0.875 * 256) = 224: the input size
    Image.open(SAMPLE_DIR / "rocket.jpg").convert("RGB").resize((300, 256)).save(path, quality=95)
    theirs, _ = reference_tensors("lite-tf-224", [str(path)])
    ours = preprocess_files([str(path)], PRESETS["lite-tf-224"])
    assert theirs.min() < -0.5 < 0.5 < theirs.max()  # the picture, not uint8 / 255
    assert np.array_equal(ours, theirs)


@needs_tensorflow
def test_the_crop_window_is_decoded_as_decode_and_crop_jpeg_decodes_it(tmp_path):
    """A 4:2:0 JPEG whose window starts on an iMCU boundary (left = (416 - 224 + 1) // 2 = 96) and ends mid-chroma:
    libjpeg-turbo's partial decode upsamples the chroma of the window's first and last columns as an image's edges.
    xfverify's tensors equal the original's; the same window cut from the whole decoded image does not."""
    from PIL import Image

    from xfverify.evaluator.data.imaging import apply_geometry, decode
    from xfverify.evaluator.data.normalise import normalise

    path = tmp_path / "window_on_an_imcu_boundary.jpg"
    Image.open(SAMPLE_DIR / "rocket.jpg").convert("RGB").resize((416, 256)).save(path, quality=90, subsampling=2)
    spec = PRESETS["lite-tf-224"]
    theirs, _ = reference_tensors("lite-tf-224", [str(path)])
    assert np.array_equal(preprocess_files([str(path)], spec), theirs)
    whole = normalise(apply_geometry(decode(path, "tensorflow"), spec)[None], spec)
    edges = np.nonzero((whole != theirs).any(axis=(0, 1, 2)))[0]  # the columns where the two decodes differ
    assert edges.size and set(edges) <= {0, 1, 222, 223}, edges  # the bilinear resize reaches one column in


# --- tf2 and torch: xfverify's numpy resizes against the frameworks' own resize calls ------------------------------
# No preset uses them (they are diagnose's resize-tf2[-antialias] and resize-torch[-antialias] variants), so they are
# checked resize by resize: each interpolation the spec allows, with and without antialias, shrinking and enlarging,
# odd sizes and one side unchanged, on the sample photos, real photographs and generated pictures. The frameworks'
# calls (evaluator/references/tensorflow_resize.py, torchvision_resize.py) run as scripts, one framework per process.

RESIZE_REFERENCE_SCRIPTS = {"tf2": "tensorflow_resize.py", "torch": "torchvision_resize.py"}


def _resize_images() -> list[np.ndarray]:
    from PIL import Image

    photos = [SAMPLE_DIR / name for name in PHOTOS] + [Path(p) for p in real_photos(every=100)]
    images = [np.asarray(Image.open(path).convert("RGB")) for path in photos]
    return images + [np.asarray(synthetic_image(3, 131, 77)), np.asarray(synthetic_image(5, 9, 7))]


def _resize_sizes(height: int, width: int) -> list[tuple[int, int]]:
    return [shorter_side_size(height, width, 256), (224, 224), (97, 131), (2 * height + 1, width + 3),
            (height, width // 3 + 1)]


def _resize_specs(library: str) -> list[PreprocessSpec]:
    """Every (interpolation, antialias) the spec allows for the library."""
    specs = []
    for interpolation in LIBRARY_INTERPOLATIONS[library]:
        for antialias in (False, True):
            try:
                specs.append(PRESETS["torchvision-256"].replace(resize_library=library, interpolation=interpolation,
                                                                antialias=antialias))
            except UserError:
                pass
    return specs


def _framework_resizes(library: str, images: list[np.ndarray], cases: list[list], tmp_path: Path) -> list[np.ndarray]:
    job, out = tmp_path / f"{library}-job.npz", tmp_path / f"{library}-out.npz"
    np.savez(job, cases=json.dumps(cases), **{f"image_{i}": image for i, image in enumerate(images)})
    script = Path(references_package.__file__).parent / RESIZE_REFERENCE_SCRIPTS[library]
    done = subprocess.run([sys.executable, str(script), str(job), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as theirs:
        return [theirs[f"out_{j}"] for j in range(len(cases))]


def _resize_cases(library: str) -> tuple[list[np.ndarray], list[PreprocessSpec], list[list]]:
    images, specs = _resize_images(), _resize_specs(library)
    cases = [[i, h, w, spec.interpolation, spec.antialias] for i, image in enumerate(images)
             for h, w in _resize_sizes(*image.shape[:2]) for spec in specs]
    return images, specs, cases


@needs_torch
def test_torch_resize_is_bit_identical_to_torchvision(tmp_path):
    """torchvision returns uint8 and so does xfverify's numpy copy of torch's uint8 kernels (the same double weights,
    the same int16 weights and precision, the same two integer passes): held bit-identical, every value of every case
    (measured: max |diff| 0 over 13 images x 5 sizes x 5 interpolation/antialias pairs)."""
    images, specs, cases = _resize_cases("torch")
    assert {(s.interpolation, s.antialias) for s in specs} == {
        ("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True)}
    theirs = _framework_resizes("torch", images, cases, tmp_path)
    by_method = {(s.interpolation, s.antialias): s for s in specs}
    differing = []
    for (i, h, w, interpolation, antialias), their in zip(cases, theirs):
        ours = resize(images[i], h, w, by_method[interpolation, antialias])
        if ours.shape != their.shape or not np.array_equal(ours, their):
            differing.append((images[i].shape[:2], (h, w), interpolation, antialias))
    assert not differing, f"{len(differing)} of {len(cases)} resizes differ from torchvision: {differing[:5]}"


@needs_tensorflow
def test_tf2_resize_matches_tf_image_resize(tmp_path):
    """tf.image.resize returns float32 (nearest: uint8), and the cache keeps it as it is. Bounds:
    * nearest: bit-identical (both uint8);
    * the float result: within 1e-3 of TensorFlow's (float32 arithmetic in the same order; measured 0, bit-identical,
      for bilinear and bicubic with and without antialias, 1.5e-4 for lanczos3, whose sin differs), overshoot kept."""
    images, specs, cases = _resize_cases("tf2")
    assert {s.interpolation for s in specs} == {"nearest", "bilinear", "bicubic", "lanczos"} and len(specs) == 7
    theirs = _framework_resizes("tf2", images, cases, tmp_path)
    by_method = {(s.interpolation, s.antialias): s for s in specs}
    float_diff, differing = 0.0, []
    for (i, h, w, interpolation, antialias), their in zip(cases, theirs):
        ours = resize(images[i], h, w, by_method[interpolation, antialias])
        assert ours.shape == their.shape and ours.dtype == their.dtype, (interpolation, antialias, ours.dtype)
        if interpolation == "nearest":
            if not np.array_equal(ours, their):
                differing.append((images[i].shape[:2], (h, w), interpolation))
            continue
        float_diff = max(float_diff, float(np.abs(ours - their).max()))
    assert not differing, f"nearest differs from tf.image.resize: {differing[:5]}"
    assert float_diff <= 1e-3, float_diff


# --- the zoos' catalogue: a few configurations per source against the source's own transform for that entry -------
# bench/zoo_parity.py checks every distinct configuration on the 500 photos (bench/results/zoo_parity.json); these
# are its sample: odd sizes and normalisations, both of timm's crop modes, on the sample, the oddities and 5 photos.

CATALOGUE_SAMPLE = [
    "torchvision/vgg16:IMAGENET1K_FEATURES",  # x / 255 normalised by 1/255 std: the unusual normalisation
    "torchvision/inception_v3:IMAGENET1K_V1",  # 342 -> 299
    "torchvision/regnet_y_16gf:IMAGENET1K_SWAG_E2E_V1",  # 384 x 384 bicubic, resize size = crop size
    "timm/resnet50:a1_in1k",  # crop_pct 0.95, bicubic
    "timm/coat_lite_medium_384:in1k",  # crop_mode squash
    "timm/vit_base_patch16_224:augreg_in21k_ft_in1k",  # crop_pct 0.9, mean = std = 0.5
    "keras/EfficientNetB1:imagenet",  # 274 -> 240, raw pixels (the model normalises in its graph)
    "gluoncv/inceptionv3:imagenet",  # ceil(299 / 0.875) = 342 -> 299
]


def test_every_catalogue_source_has_a_reference():
    from xfverify.evaluator.references import CATALOGUE_REFERENCES
    from xfverify.models.zoos import SOURCES

    assert set(SOURCES) <= set(CATALOGUE_REFERENCES)


@pytest.mark.parametrize("card_id", [pytest.param(c, marks=MARKS[catalogue_reference(c).framework])
                                     for c in CATALOGUE_SAMPLE])
def test_catalogue_configuration_matches_its_source(card_id, tmp_path):
    from xfverify.models.cards import get_card

    spec = get_card(card_id).reference_spec
    if card_id.startswith("timm/coat_lite"):
        assert spec.resize_mode == "squash"
    paths = [str(SAMPLE_DIR / name) for name in PHOTOS] + [str(p) for p in odd_images(tmp_path).values()]
    paths += real_photos(every=100)
    theirs, _ = catalogue_reference_tensors(card_id, paths, spec.layout)
    ours = preprocess_files(paths, spec)
    assert ours.shape == theirs.shape
    differing = [Path(p).name for p, a, b in zip(paths, ours, theirs) if not np.array_equal(a, b)]
    assert not differing, f"{card_id} ({spec.name}) differs from its source on {differing}"
