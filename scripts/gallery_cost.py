"""What reference photos cost (issue 14): bytes added to a bundle and time added to predict.

    python scripts/gallery_cost.py [--classes 145] [--per-class 3] [--photos DIR]
        [--models mobilenetv3_large_100:224,resnet18:160] [--bundle MODEL.onnx --inputs DIR]

Prints markdown tables of:

- bytes: a ``--classes`` x ``--per-class`` gallery (:class:`jianmu.gallery.Gallery`) per embedding
  size of ``--models`` (mobilenetv3_large_100: 1280, resnet18: 512): thumbnails made the way the
  export makes them, of the photos under ``--photos`` (default: the wood-swfu5 data set when
  present, else generated wood-like textures), the blob, and what it adds to an ONNX file (base64);
- pick time: :meth:`Gallery.nearest` per image for the top-3 and top-5 candidates on batches of
  ``--batch`` queries (and of one), against the model-only ONNX time per image of each model
  (timm, ``pretrained=False``, exported here; the same batch size, onnxruntime as a bundle runs
  it): a lower bound on predict's time per image, so the share is an upper bound; and the README's
  end-to-end predict (153 images/s on 1600x1200 photos with mobilenetv3_large_100);
- load time: opening the ONNX model with and without the gallery property, and decoding the
  gallery on first use (:meth:`Gallery.from_blob`);
- with ``--bundle`` and ``--inputs``: end-to-end :meth:`ModelBundle.stream` over the photos, with
  and without the pick on each batch (the bundle's own gallery, else a synthetic one of the
  requested size in the bundle's embedding size).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent))

from jianmu.gallery import Gallery, make_thumbnail  # noqa: E402

WOOD = HERE.parent.parent.parent / "shared" / "datasets" / "wood-swfu5"
EMBEDDING_SIZES = {"mobilenetv3_large_100": 1280, "resnet18": 512}
README_PREDICT_IMAGES_PER_S = 153.0  # README "Predict": 1600x1200, mobilenetv3_large_100, ONNX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=145)
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--photos", type=Path, help="photos to thumbnail (default: wood-swfu5)")
    parser.add_argument("--models", default="mobilenetv3_large_100:224,resnet18:160")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=200, help="timed picks per setting")
    parser.add_argument("--bundle", type=Path, help="an ONNX bundle for the end-to-end timing")
    parser.add_argument("--inputs", type=Path, help="photos for the end-to-end timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = args.classes * args.per_class
    jpegs, origin = thumbnails(args.photos, count, args.seed)
    print(f"gallery: {args.classes} classes x {args.per_class} photos; thumbnails of {origin}\n")
    models = [(name, int(size)) for name, size in (m.split(":") for m in args.models.split(","))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="jianmu-gallery-cost-") as folder:
        for name, size in models:
            gallery = synthetic_gallery(jpegs, args.classes, EMBEDDING_SIZES[name], args.seed)
            model = onnx_model(name, size, Path(folder))
            rows.append(measure(name, size, gallery, model, args))
    print(bytes_table(rows))
    print(time_table(rows, args.batch))
    print(load_table(rows))
    if args.bundle and args.inputs:
        print(end_to_end(args.bundle, args.inputs, args))


# --- the gallery ----------------------------------------------------------------------------------


def thumbnails(photos: Path | None, count: int, seed: int) -> tuple[list[bytes], str]:
    """``count`` thumbnails of real photos (cycled if fewer) or of generated textures."""
    folder = photos or (WOOD if WOOD.is_dir() else None)
    found = folder.rglob("*") if folder is not None else ()
    paths = sorted(p for p in found if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if paths:
        from jianmu.data.images import load_image

        made = [make_thumbnail(load_image(path, 160)) for path in paths[:count]]
        return [made[i % len(made)] for i in range(count)], f"{len(made)} photos in {folder}"
    return [make_thumbnail(texture(i, seed)) for i in range(count)], "generated textures"


def texture(index: int, seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A wood-like picture: a colour field, pores and grain lines, sensor noise."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    field = Image.fromarray(rng.integers(60, 200, (4, 5, 3), dtype=np.uint8))
    pixels = np.asarray(field.resize(size, Image.BICUBIC), dtype=np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    grain = 18 * np.sin(2 * np.pi * (y / rng.uniform(6, 30) + 0.02 * np.sin(x / 40)))
    pores = (rng.random((height, width)) < 0.004) * -80.0
    noise = rng.normal(0, 4, (height, width))
    pixels += (grain + pores + noise)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def synthetic_gallery(jpegs: list[bytes], classes: int, dim: int, seed: int) -> Gallery:
    """Embeddings shaped like a CNN's pooled features (non-negative), one cluster per class."""
    rng = np.random.default_rng(seed)
    per_class = len(jpegs) // classes
    centres = np.abs(rng.normal(size=(classes, dim)))
    embeddings = np.repeat(centres, per_class, axis=0) + 0.5 * rng.random((len(jpegs), dim))
    labels = np.repeat(np.arange(classes), per_class)
    sources = [f"class_{c:03d}/photo_{i:05d}.jpg" for i, c in enumerate(labels)]
    return Gallery(embeddings, labels, jpegs, sources, "synthetic", per_class=per_class)


# --- measuring ------------------------------------------------------------------------------------


def measure(name: str, size: int, gallery: Gallery, model: Path, args) -> dict:
    blob = gallery.to_blob()
    row = {"model": name, "size": size, "dim": gallery.dim, "count": len(gallery)}
    row["jpeg_bytes"] = sum(len(j) for j in gallery.jpegs)
    row["blob_bytes"] = len(blob)
    row["onnx_bytes"] = len(base64.b64encode(blob))
    row["model_bytes"] = model.stat().st_size
    row["model_ms"] = model_ms(model, size, args.batch)
    for k in (3, 5):
        row[f"pick_{k}_ms"] = pick_ms(gallery, args.batch, k, args.repeats, args.seed)
        row[f"pick_{k}_single_ms"] = pick_ms(gallery, 1, k, args.repeats, args.seed)
    row["open_ms"], row["open_gallery_ms"], row["decode_ms"] = load_ms(model, blob)
    return row


def pick_ms(gallery: Gallery, batch: int, k: int, repeats: int, seed: int) -> float:
    """Mean milliseconds per image of :meth:`Gallery.nearest` on ``batch`` queries (the mean:
    what it adds to a run, occasional stalls included)."""
    rng = np.random.default_rng(seed)
    classes = int(gallery.classes.max()) + 1
    queries = np.abs(rng.normal(size=(batch, gallery.dim))).astype(np.float32)
    candidates = np.argsort(rng.random((batch, classes)), axis=1)[:, :k]
    gallery.nearest(queries, candidates)  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gallery.nearest(queries, candidates)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.fmean(times) / batch


def onnx_model(name: str, size: int, folder: Path) -> Path:
    """timm ``name`` (random weights: speed does not depend on them) as ONNX, pooled features
    beside the logits as a bundle has them."""
    import timm
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            features = self.model.forward_head(self.model.forward_features(images), True)
            return self.model.get_classifier()(features), features

    module = Outputs(timm.create_model(name, pretrained=False, num_classes=145)).eval()
    path = folder / f"{name}.onnx"
    axes = {n: {0: "batch"} for n in ("images", "logits", "embeddings")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(2, 3, size, size),), str(path), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["logits", "embeddings"], dynamic_axes=axes,
        )  # fmt: skip
    return path


def session(model: str | bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxBundle
    return ort.InferenceSession(model, options, ["CPUExecutionProvider"])


def model_ms(model: Path, size: int, batch: int, repeats: int = 5) -> float:
    """Mean milliseconds per image of the model alone on a preprocessed batch."""
    runner = session(str(model))
    images = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    runner.run(None, {"images": images})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.run(None, {"images": images})
        times.append(time.perf_counter() - started)
    return 1000 * statistics.fmean(times) / batch


def load_ms(model: Path, blob: bytes, repeats: int = 3) -> tuple[float, float, float]:
    """Milliseconds to open the model and read its metadata without and with the gallery
    property, and to decode the gallery on first use."""
    import onnx

    proto = onnx.load(str(model))
    bare = proto.SerializeToString()
    entry = proto.metadata_props.add()
    entry.key, entry.value = "jianmu.gallery", base64.b64encode(blob).decode("ascii")
    carrying = proto.SerializeToString()

    def open_ms(data: bytes) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            _ = session(data).get_modelmeta().custom_metadata_map
            times.append(time.perf_counter() - started)
        return 1000 * min(times)

    started = time.perf_counter()
    Gallery.from_blob(blob, "gallery")
    decode = 1000 * (time.perf_counter() - started)
    return open_ms(bare), open_ms(carrying), decode


def end_to_end(path: Path, inputs: Path, args) -> str:
    """Images/s of ``bundle.stream`` over ``inputs``, with and without the pick on each batch."""
    from jianmu.bundle import load_model
    from jianmu.config import IMAGE_EXTENSIONS

    bundle = load_model(path)
    photos = sorted(p for p in inputs.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    gallery = bundle.gallery
    own = gallery is not None
    if gallery is None:
        dim = next(bundle.stream(photos[:1]))[2].shape[1]
        gallery = synthetic_gallery([b"\xff\xd8"] * args.classes * args.per_class,
                                    args.classes, dim, args.seed)  # fmt: skip
    classes = min(bundle.num_classes, int(gallery.classes.max()) + 1)
    lines = [
        f"\nend to end on {len(photos)} photos of {inputs}, {bundle.path.name} ({bundle.kind}, "
        f"{'its own' if own else 'a synthetic'} gallery of {len(gallery)}):\n",
        "| run | images/s | ms/image | picks ms/image |", "|---|---|---|---|",
    ]  # fmt: skip
    for label, pick in (("stream", False), ("stream + top-3 pick", True), ("stream", False)):
        started, picking = time.perf_counter(), 0.0
        for _, logits, embeddings in bundle.stream(photos):
            if pick and len(logits):
                top = np.argsort(-logits[:, :classes], axis=1)[:, :3]
                moment = time.perf_counter()
                gallery.nearest(embeddings, top)
                picking += time.perf_counter() - moment
        seconds = time.perf_counter() - started
        lines.append(
            f"| {label} | {len(photos) / seconds:.1f} | {1000 * seconds / len(photos):.2f} | "
            f"{1000 * picking / len(photos):.3f} |"
        )
    return "\n".join(lines)


# --- tables ---------------------------------------------------------------------------------------


def bytes_table(rows: list[dict]) -> str:
    lines = [
        "| model (embedding size) | photos | JPEG thumbnails | gallery blob | added to ONNX "
        "(base64) | model ONNX | growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['dim']}) | {r['count']} | {mb(r['jpeg_bytes'])} "
            f"({r['jpeg_bytes'] / r['count'] / 1e3:.1f} KB each) | {mb(r['blob_bytes'])} | "
            f"{mb(r['onnx_bytes'])} | {mb(r['model_bytes'])} | "
            f"+{100 * r['onnx_bytes'] / r['model_bytes']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def time_table(rows: list[dict], batch: int) -> str:
    readme_ms = 1000 / README_PREDICT_IMAGES_PER_S
    lines = [
        f"| model | model only, batch {batch} | top-3 pick, batch {batch} | share | top-5 pick | "
        f"share | top-3, batch 1 | share of README predict ({readme_ms:.2f} ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = r["model_ms"]
        lines.append(
            f"| {r['model']} {r['size']} px | {model:.2f} ms/image | {r['pick_3_ms']:.4f} ms | "
            f"{100 * r['pick_3_ms'] / model:.2f}% | {r['pick_5_ms']:.4f} ms | "
            f"{100 * r['pick_5_ms'] / model:.2f}% | {r['pick_3_single_ms']:.3f} ms | "
            f"{100 * r['pick_3_ms'] / readme_ms:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def load_table(rows: list[dict]) -> str:
    lines = [
        "| model | open ONNX | open ONNX with gallery | decode gallery (first use) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['open_ms']:.0f} ms | {r['open_gallery_ms']:.0f} ms | "
            f"{r['decode_ms']:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def mb(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


if __name__ == "__main__":
    main()
