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


def test_inference_pooling_is_max_pool2d_bit_for_bit():
    from mea.models import max_pool2

    generator = torch.Generator().manual_seed(0)
    for shape in ((1, 6, 28, 28), (5, 6, 28, 28), (30, 16, 13, 11), (20, 6, 32, 32)):
        x = torch.randn(*shape, generator=generator).contiguous(memory_format=torch.channels_last)
        x[:, :, :4, :4] = 0.25  # ties, as on a digit's flat background
        with torch.inference_mode():
            assert torch.equal(max_pool2(x), torch.nn.functional.max_pool2d(x, 2))
    # With autograd the gradient goes where max_pool2d sends it (training is unchanged).
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    max_pool2(x).sum().backward()
    assert x.grad.sum().item() == 1.0 and (x.grad == 1).sum().item() == 1
