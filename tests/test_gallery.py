"""Reference gallery: diverse selection, the nearest photo per candidate, the stored blob and its
refusals, and bundles exported with and without one."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image
from test_export import run  # noqa: F401 - the tiny trained run, a module fixture
from tiny import settings

from jianmu.bundle import GALLERY_KEY, load_model
from jianmu.engine.export import export
from jianmu.errors import JianmuError
from jianmu.gallery import (
    NO_LICENCE,
    THUMBNAIL_PX,
    Gallery,
    Reference,
    make_thumbnail,
    select_gallery,
)


def unit(*vector):
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def jpeg(colour=(120, 80, 40), size=(40, 30)):
    return make_thumbnail(Image.new("RGB", size, colour))


def small_gallery(licence="CC BY 4.0"):
    """Class 0: photos along x and y; class 1: along z; class 2: none."""
    embeddings = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)]) * 3.0  # any length
    names = ["a/x.jpg", "a/y.jpg", "b/z.jpg"]
    jpegs = [jpeg((10 * i, 0, 0)) for i in range(3)]
    return Gallery(embeddings, [0, 0, 1], jpegs, names, licence)


def test_selection_starts_at_the_class_centre_and_spreads_out():
    cluster = [unit(1, 0.01 * i, 0) for i in range(5)]  # five near-copies along x
    points = np.stack([*cluster, unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0)])
    targets = np.zeros(len(points), dtype=np.int64)
    chosen = select_gallery(points, targets, 3)
    assert chosen[0] in range(5)  # the most typical photo: the cluster, which the mean leans to
    assert set(chosen[1:]) == {5, 6}  # then the two farthest looks, not more near-copies
    assert select_gallery(points, targets, 3).tolist() == chosen.tolist()  # deterministic
    assert sorted(select_gallery(points, targets, 50).tolist()) == list(range(len(points)))


def test_selection_takes_up_to_per_class_of_each_class_by_class():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(23, 16))
    targets = np.array([0] * 10 + [1] * 2 + [2] * 10 + [-1])  # -1: a species not known, left out
    chosen = select_gallery(embeddings, targets, 4)
    assert targets[chosen].tolist() == [0] * 4 + [1] * 2 + [2] * 4
    assert len(set(chosen.tolist())) == len(chosen)
    with pytest.raises(JianmuError, match="per_class must be at least 1"):
        select_gallery(embeddings, targets, 0)


def test_nearest_picks_the_candidate_class_photo_closest_to_the_query():
    gallery = small_gallery()
    queries = np.stack([unit(0.2, 1, 0), unit(1, 0.1, 0.5)]) * 7.0
    found = gallery.nearest(queries, [[0, 1, 2], [1, 0, 9]])
    first, second = found
    assert [r.source if r else None for r in first] == ["a/y.jpg", "b/z.jpg", None]
    assert [r.source if r else None for r in second] == ["b/z.jpg", "a/x.jpg", None]
    expected = 1.0 - float(unit(0.2, 1, 0) @ unit(0, 1, 0))
    assert first[0].distance == pytest.approx(expected, abs=1e-3)
    assert isinstance(first[0], Reference) and first[0].class_index == 0 and first[0].index == 1
    assert first[0].jpeg == gallery.jpegs[1] and first[0].data_uri().startswith("data:image/jpeg")
    assert gallery.nearest(np.zeros((0, 3)), np.zeros((0, 3))) == []
    with pytest.raises(JianmuError, match="3 dimensions"):
        gallery.nearest(np.ones((1, 4)), [[0]])


def test_the_blob_round_trips_and_a_damaged_one_is_refused():
    gallery = small_gallery()
    blob = gallery.to_blob()
    again = Gallery.from_blob(blob, "m.onnx", num_classes=3)
    assert again.describe() == gallery.describe() and again.jpegs == gallery.jpegs
    assert again.embeddings.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(again.embeddings.astype(float), axis=1), 1, atol=1e-3)
    assert gallery.describe()["licence"] == "CC BY 4.0" and gallery.describe()["count"] == 3
    for damaged in (blob[: len(blob) // 2], b"junk" * 10, b""):
        with pytest.raises(JianmuError, match=r"^m.onnx: refused: unreadable reference gallery"):
            Gallery.from_blob(damaged, "m.onnx")
    with pytest.raises(JianmuError, match="class 1 of a model with 1 classes"):
        Gallery.from_blob(blob, "m.onnx", num_classes=1)
    from safetensors.numpy import load, save

    arrays = dict(load(blob))
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    shifted = {**arrays, "offsets": arrays["offsets"] + 1}
    with pytest.raises(JianmuError, match="refused: reference gallery offsets do not fit"):
        Gallery.from_blob(save(shifted, metadata=metadata), "m.onnx")
    fewer = {**arrays, "classes": arrays["classes"][:2]}
    with pytest.raises(JianmuError, match="refused: reference gallery of 2 classes"):
        Gallery.from_blob(save(fewer, metadata=metadata), "m.onnx")
    with pytest.raises(JianmuError, match="refused: not a jianmu.gallery/1"):
        Gallery.from_blob(save(arrays), "m.onnx")


def test_thumbnails_are_small_jpegs_of_the_photo():
    data = make_thumbnail(Image.new("RGB", (640, 480), (90, 60, 30)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (THUMBNAIL_PX, 120)
    assert Image.open(io.BytesIO(jpeg(size=(40, 30)))).size == (40, 30)  # never enlarged


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_export_with_a_gallery_carries_reference_photos_of_each_class(run, tmp_path, form):  # noqa: F811
    licence = "CC BY 4.0, test photos" if form == "onnx" else None
    config = settings(
        out=tmp_path / f"m.{form}", export__format=form, export__gallery=2,
        export__gallery_licence=licence,
    )  # fmt: skip
    result = export(config, run)
    bundle = load_model(result.path)
    gallery = bundle.gallery
    assert gallery is not None and len(gallery) == 6 and bundle.gallery is gallery  # decoded once
    assert sorted(gallery.classes.tolist()) == [0, 0, 1, 1, 2, 2]
    assert gallery.licence == (licence or NO_LICENCE) and gallery.per_class == 2
    assert bundle.meta["gallery"]["count"] == 6 and bundle.meta["gallery"]["licence"] == (
        licence or NO_LICENCE
    )
    assert result.gallery_bytes >= bundle.meta["gallery"]["bytes"] > 0
    assert bool(result.warnings) == (licence is None)
    root = run.parent / "data"
    for data, source in zip(gallery.jpegs, gallery.sources, strict=True):
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_PX
        assert (root / source).is_file() and not source.startswith("/")  # under the root
    # A gallery photo, run through the bundle as predict runs it, finds itself.
    photo = root / gallery.sources[3]
    embeddings = bundle.run([(photo, int(gallery.classes[3]))]).embeddings
    (best,) = gallery.nearest(embeddings, [[int(gallery.classes[3])]])[0]
    assert best.index == 3 and best.distance < 2e-3


def test_bundles_without_a_gallery_have_none(run, tmp_path):  # noqa: F811
    path = export(settings(out=tmp_path / "m.onnx"), run).path
    assert load_model(path).gallery is None and load_model(run).gallery is None
    assert GALLERY_KEY not in {p.key for p in onnx.load(str(path)).metadata_props}


def test_a_damaged_gallery_in_a_bundle_is_refused_and_needs_no_torch(run, tmp_path):  # noqa: F811
    path = export(settings(out=tmp_path / "m.onnx", export__gallery=1), run).path
    code = f"""
import sys, numpy as np, jianmu
gallery = jianmu.load_model({str(path)!r}).gallery
print(len(gallery), [m for m in sys.modules if m.split(".")[0] == "torch"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "[]"]
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == GALLERY_KEY)
    entry.value = base64.b64encode(base64.b64decode(entry.value)[:-50]).decode("ascii")
    onnx.save(model, str(tmp_path / "cut.onnx"))
    bundle = load_model(tmp_path / "cut.onnx")  # the model itself still loads
    with pytest.raises(JianmuError, match="cut.onnx: refused: "):
        _ = bundle.gallery
    entry.value = "not base64 !"
    onnx.save(model, str(tmp_path / "text.onnx"))
    with pytest.raises(JianmuError, match="refused: reference gallery not base64"):
        _ = load_model(tmp_path / "text.onnx").gallery
