"""The tiny training config the tests share (a plain module: import, not a fixture)."""

from jianmu.config import Config, load_config


def tiny_config(root, out, *overrides: str) -> Config:
    """timm's ``test_resnet`` at 32 px, a few epochs on ``root``: trains in seconds on a CPU."""
    return load_config(
        overrides=[
            f"data.root={root}",
            f"out={out}",
            "model.name=test_resnet",
            "model.img_size=32",
            "train.epochs=3",
            "train.batch_size=8",
            "train.workers=0",
            "train.lr=0.01",
            "data.min_images_per_class=2",
            *overrides,
        ]
    )


def settings(*overrides: str, **options) -> Config:
    """A default config with ``overrides`` (``a.b=v``) and ``options`` (``a__b=v``), as the CLI
    builds one from its options."""
    return load_config(None, list(overrides), **options)
