"""Transforms (geometry -> appearance -> normalize), the augment presets and the preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jianmu.config import AugmentConfig, find_configs_dir, read_yaml
from jianmu.data.preprocess import DIHEDRAL_VIEWS, augmented_views, dihedral
from jianmu.data.preview import PADDING, render_preview
from jianmu.data.spec import resolve_transform_spec
from jianmu.data.transforms import (
    TransformSpec,
    build_appearance,
    build_eval_transform,
    build_spec_transform,
    build_train_transform,
)
from jianmu.errors import JianmuError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRESETS = sorted((find_configs_dir() / "augment").glob("*.yaml"))


def _image(height: int = 60, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_presets_are_shipped():
    assert {p.stem for p in PRESETS} >= {"end_grain", "seed", "insect"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_and_gives_normalized_tensors(path):
    augment = AugmentConfig.model_validate(read_yaml(path))
    assert augment.preset is None and augment.appearance
    transform = build_train_transform(augment, 32, MEAN, STD, seed=0)
    low = (0 - np.array(MEAN)) / np.array(STD)
    high = (1 - np.array(MEAN)) / np.array(STD)
    for seed in range(8):  # enough draws that most appearance entries fire at least once
        out = transform(_image(seed=seed))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.shape == (3, 32, 32)
        per_channel = out.reshape(3, -1)
        assert torch.all(per_channel.min(1).values >= torch.tensor(low, dtype=torch.float32) - 1e-4)
        assert torch.all(
            per_channel.max(1).values <= torch.tensor(high, dtype=torch.float32) + 1e-4
        )


def test_normalization_uses_mean_and_std():
    augment = AugmentConfig(rotate_limit=0, appearance=None)
    transform = build_train_transform(augment, 16, MEAN, STD)
    value = np.array([51, 102, 204], dtype=np.uint8)
    out = transform(np.broadcast_to(value, (20, 30, 3)).copy())
    expected = (value / 255.0 - np.array(MEAN)) / np.array(STD)
    assert torch.allclose(out[:, 5, 5], torch.tensor(expected, dtype=torch.float32), atol=1e-3)


def test_normalize_false_gives_uint8_images():
    transform = build_train_transform(AugmentConfig(), 24, MEAN, STD, normalize=False)
    out = transform(_image())
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (24, 24, 3)


def test_test_time_views_are_those_training_covers():
    batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    views = [dihedral(batch, view).tobytes() for view in range(DIHEDRAL_VIEWS)]
    assert len(set(views)) == 8  # the 8 symmetries of a square, each once
    flips = [batch, batch[..., ::-1], batch[..., ::-1, :], batch[..., ::-1, ::-1]]
    assert views[:2] == [flip.tobytes() for flip in flips[:2]]  # as is, left-right
    assert views[:4] == [flip.tobytes() for flip in flips]  # and upside down, and both
    shipped = {path.stem: augmented_views(AugmentConfig.model_validate(read_yaml(path)))
               for path in PRESETS}  # fmt: skip
    assert shipped == {"end_grain": 8, "seed": 8, "insect": 4}  # a wing has an up
    assert augmented_views(AugmentConfig()) == 2  # left-right flips only
    assert augmented_views(AugmentConfig(hflip=False, vflip=True)) == 1
    assert augmented_views(AugmentConfig(hflip=False, rotate90=True)) == 1
    assert augmented_views(AugmentConfig(hflip=False, vflip=True, rotate90=True)) == 8


def test_same_seed_same_augmentations():
    augment = AugmentConfig.model_validate(read_yaml(PRESETS[0]))
    first = build_train_transform(augment, 32, MEAN, STD, seed=5)
    second = build_train_transform(augment, 32, MEAN, STD, seed=5)
    other = build_train_transform(augment, 32, MEAN, STD, seed=6)
    images = [_image(seed=i) for i in range(4)]
    outputs = [(first(i), second(i), other(i)) for i in images]
    assert all(torch.equal(a, b) for a, b, _ in outputs)
    assert not all(torch.equal(a, c) for a, _, c in outputs)


def test_set_random_state_reproduces_an_item():
    import random

    transform = build_train_transform(AugmentConfig(rotate_limit=30), 32, MEAN, STD)
    image = _image()
    transform.set_random_state(np.random.default_rng(1), random.Random(1))
    first = transform(image)
    transform(image)
    transform.set_random_state(np.random.default_rng(1), random.Random(1))
    assert torch.equal(first, transform(image))


def test_unknown_transform_name_has_hint():
    with pytest.raises(JianmuError, match=r"augment.appearance\[1\].*'GausNoise'.*'GaussNoise'"):
        build_appearance([{"HorizontalFlip": {}}, {"GausNoise": {"p": 0.5}}])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"GaussNoise": {"var_limit": [10, 50]}}, "unknown argument 'var_limit'"),
        ({"ImageCompression": {"quality_lower": 50}}, "did you mean"),
        ({"ImageCompression": {"quality_range": [0, 200]}}, r"ImageCompression: quality_range"),
        ({"GaussNoise": {"p": 2}}, "p: Input should be less than or equal to 1"),
        ({"Normalize": {}}, "unknown albumentations transform"),
        ("GaussNoise", "expected one"),
        ({"GaussNoise": {}, "ISONoise": {}}, "expected one"),
    ],
)
def test_bad_entries_name_the_entry(entry, message):
    with pytest.raises(JianmuError, match=message) as caught:
        build_appearance([entry])
    assert "augment.appearance[0]" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_nested_one_of_builds_and_reports_inner_errors():
    built = build_appearance([{"OneOf": {"transforms": [{"Defocus": {"radius": [1, 2]}}], "p": 1}}])
    assert type(built[0]).__name__ == "OneOf"
    with pytest.raises(JianmuError, match=r"OneOf.transforms\[0\]: unknown.*'MotionBlur'"):
        build_appearance([{"OneOf": {"transforms": [{"MotionBlr": {}}]}}])


def test_eval_transform_is_deterministic_and_center_crops():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, :50] = (255, 0, 0)
    image[:, 150:] = (0, 0, 255)
    image[:, 50:150] = (0, 255, 0)
    transform = build_eval_transform(50, MEAN, STD, normalize=False)
    out = transform(image)
    assert out.shape == (50, 50, 3)
    assert np.all(out[:, 2:-2, 1] > 240) and np.all(out[:, 2:-2, 0] < 15)  # only the centre
    assert np.array_equal(out, transform(image))
    tensors = build_eval_transform(50, MEAN, STD)
    assert torch.equal(tensors(image), tensors(image))


def test_crop_pct_resizes_larger_before_cropping():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[8:56, 8:56] = 255  # a white square with a 8 px black frame
    full = build_eval_transform(32, MEAN, STD, crop_pct=1.0, normalize=False)(image)
    cropped = build_eval_transform(32, MEAN, STD, crop_pct=0.5, normalize=False)(image)
    assert full[0, 0, 0] < 20  # the frame is in view
    assert cropped.min() > 235  # resized to 64, center 32 crop: only white


def test_spec_round_trip_and_timm_data_config():
    data_config = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": MEAN,
        "std": STD,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    spec = resolve_transform_spec(data_config, img_size=192, crop_pct=1.0)
    assert spec == TransformSpec(192, MEAN, STD, "bilinear", 1.0)
    assert TransformSpec.from_dict(spec.to_dict()) == spec
    assert resolve_transform_spec(data_config).crop_pct == 0.875
    out = build_spec_transform(spec)(_image(250, 300))
    assert out.shape == (3, 192, 192)
    with pytest.raises(JianmuError):
        TransformSpec.from_dict({"input_size": 10})
    with pytest.raises(JianmuError, match="interpolation"):
        build_eval_transform(32, MEAN, STD, interpolation="fancy")


def test_render_preview_grid_size(tmp_path):
    paths = []
    for index in range(2):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(_image(40 + 10 * index, 70, seed=index)).save(path)
        paths.append(path)
    augment = AugmentConfig.model_validate(read_yaml(PRESETS[0]))
    out = render_preview(augment, paths, tmp_path / "out" / "p.png", 32, columns=2, per_image=3)
    step = 32 + PADDING
    with Image.open(out) as grid:
        # one original column + 2 views; 3 views per image wrap onto 2 rows per image
        assert grid.size == (PADDING + 3 * step, PADDING + 2 * 2 * step)
        assert grid.mode == "RGB"
    again = render_preview(augment, paths, tmp_path / "again.png", 32, columns=2, per_image=3)
    assert again.read_bytes() == out.read_bytes()  # the seed fixes the samples
    with pytest.raises(JianmuError):
        render_preview(augment, [], tmp_path / "none.png", 32)


def test_workers_draw_different_augmentations():
    """albumentations 2.0 copies one random state into every DataLoader worker; ours reseeds."""

    class Same(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform, self.image = transform, _image()

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return self.transform(self.image)

    transform = build_train_transform(AugmentConfig(scale=(0.2, 1.0)), 16, MEAN, STD, seed=0)
    loader = torch.utils.data.DataLoader(
        Same(transform), batch_size=2, num_workers=2, multiprocessing_context="fork"
    )
    first, second = list(loader)
    assert not torch.equal(first, second)
