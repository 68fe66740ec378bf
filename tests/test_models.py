import pickle

import pytest
import torch
from safetensors.torch import save_file

from jianmu.config import ModelConfig
from jianmu.errors import JianmuError
from jianmu.models import (
    atomic_write,
    build_model,
    load_checkpoint,
    resolve_preprocessing,
    save_checkpoint,
)

TINY = ModelConfig(name="test_resnet", img_size=32)


def test_build_and_preprocessing_from_model():
    model = build_model(TINY, num_classes=3)
    assert model.get_classifier().out_features == 3
    prep = resolve_preprocessing(model, TINY)
    assert prep.input_size == 32 and len(prep.mean) == 3 and prep.interpolation


def test_unknown_model_name_is_a_user_error():
    with pytest.raises(JianmuError, match="unknown timm model 'resnet_nope'"):
        build_model(ModelConfig(name="resnet_nope"), num_classes=2)


def test_pretrained_without_network_says_so_in_one_line():
    config = ModelConfig(name="test_resnet", pretrained=True)
    with pytest.raises(JianmuError, match="cannot be reached"):
        build_model(config, num_classes=2, hub_check=lambda: False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_replace_the_head(tmp_path, suffix):
    source = build_model(TINY, num_classes=10)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = build_model(TINY.model_copy(update={"pretrained_path": path}), num_classes=4)
    assert model.get_classifier().out_features == 4
    name, weight = next(iter(source.state_dict().items()))
    assert torch.equal(model.state_dict()[name], weight)  # backbone loaded


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(JianmuError, match="another architecture"):
        build_model(TINY.model_copy(update={"pretrained_path": path}), num_classes=2)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as stream:
        pickle.dump({"state_dict": _Evil()}, stream)
    with pytest.raises(JianmuError, match="refused"):
        build_model(TINY.model_copy(update={"pretrained_path": path}), num_classes=2)


def test_checkpoint_round_trip(tmp_path):
    model = build_model(TINY, num_classes=3).eval()
    meta = {
        "model_name": "test_resnet",
        "classes": ["a", "b", "c"],
        "preprocessing": resolve_preprocessing(model, TINY).to_dict(),
        "epoch": 2,
        "metrics": {"val_top1": 0.5},
    }
    path = save_checkpoint(tmp_path / "run" / "best.safetensors", model, meta)
    checkpoint = load_checkpoint(tmp_path / "run")  # a run folder means its best checkpoint
    assert checkpoint.classes == ["a", "b", "c"]
    assert checkpoint.meta["metrics"] == {"val_top1": 0.5}
    assert checkpoint.preprocessing.input_size == 32
    rebuilt = checkpoint.build_model()
    batch = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt(batch), model(batch))
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]  # no temp files left


def test_plain_weights_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(JianmuError, match="no jianmu metadata"):
        load_checkpoint(path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(JianmuError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


def test_checkpoint_extras_round_trip(tmp_path):
    model = build_model(TINY, num_classes=2)
    meta = {"model_name": "test_resnet", "classes": ["a", "b"], "preprocessing": {}}
    extras = {"openset.knn": torch.randn(4, 8)}
    save_checkpoint(tmp_path / "c.safetensors", model, meta, extras=extras)
    checkpoint = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(checkpoint.extras["openset.knn"], extras["openset.knn"])
    assert not any(key.startswith("jianmu_extra") for key in checkpoint.state_dict)
    checkpoint.build_model()  # the extras do not disturb loading the weights
