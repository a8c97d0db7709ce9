import pytest
import torch

from mea import models
from mea.errors import ArtifactError, ConfigError


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_architectures_map_images_to_ten_logits(arch):
    model = models.build(arch, seed=0)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_build_depends_on_the_seed_only_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = models.build("lenet5", 1), models.build("lenet5", 1), models.build("lenet5", 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_safetensors_roundtrip_and_fingerprint(tmp_path):
    model = models.build("small-cnn", 3)
    models.save(model, "small-cnn", tmp_path / "m.safetensors")
    loaded, arch = models.load(tmp_path / "m.safetensors")
    assert arch == "small-cnn" and not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    models.save(models.build("small-cnn", 4), "small-cnn", tmp_path / "n.safetensors")
    assert models.fingerprint(tmp_path / "m.safetensors") != models.fingerprint(tmp_path / "n.safetensors")


def test_refuses_what_is_not_a_mea_safetensors_file(tmp_path):
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + bytes(64))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        models.load(tmp_path / "pickle.safetensors")
    with pytest.raises(ArtifactError, match="no weights"):
        models.load(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="unknown architecture 'resnet'; choose one of: lenet5"):
        models.build("resnet", 0)
