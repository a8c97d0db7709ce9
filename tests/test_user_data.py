"""A user's own images by path (mea.data.files): .npz files and image folders as pools and
evaluation sets, a model file's sidecar naming its dataset, and every mistake refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli import mea, one_error_line
from mea.data import load, make_pool
from mea.data.pools import check_pool_name
from mea.errors import ArtifactError, ConfigError, DataError
from mea.victim import load_victim


def save_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_npz_images_in_every_layout_become_the_victims_input(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=grey, labels=np.arange(6))
    data = load(str(tmp_path / "grey.npz"), "test")
    assert data.images.shape == (6, 1, 28, 28) and data.images.dtype == torch.float32
    assert torch.equal(data.images[:, 0], torch.from_numpy(grey).float() / 255)
    assert data.labels.tolist() == list(range(6))

    # RGB, channels last, 56x56 floats: grey by ITU-R 601 luma, then resized to 28x28.
    colour = np.zeros((2, 56, 56, 3), dtype=np.float32)
    colour[0, ..., 0] = 1.0  # pure red: luma 0.299
    colour[1] = 0.5
    pool = make_pool(_save(tmp_path / "colour.npz", images=colour))
    assert pool.images.shape == (2, 1, 28, 28) and pool.labels is None
    assert pool.images[0].mean().item() == pytest.approx(0.299, abs=1e-4)
    assert pool.images[1].mean().item() == pytest.approx(0.5, abs=1e-4)

    # Keras's layout: two parts, (N, 1) label columns.
    keras = _save(
        tmp_path / "keras.npz",
        x_train=np.zeros((3, 28, 28), np.uint8),
        y_train=np.zeros((3, 1), np.int64),
        x_test=np.full((2, 28, 28), 255, np.uint8),
        y_test=np.array([[4], [7]]),
    )
    assert len(load(keras, "train")) == 3
    test = load(keras, "test")
    assert test.labels.tolist() == [4, 7] and test.images.min().item() == 1.0


def _save(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_image_folders_label_images_by_their_subfolders(tmp_path):
    rng = np.random.default_rng(1)
    for name, count in (("dog", 2), ("cat", 3)):
        for i in range(count):
            save_png(tmp_path / "named" / name / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    named = make_pool(str(tmp_path / "named"))
    assert named.images.shape == (5, 1, 28, 28)
    assert named.labels.tolist() == [0, 0, 0, 1, 1]  # cat before dog: sorted folder names

    for part, digits in (("train", (3, 7)), ("test", (7,))):
        for digit in digits:
            save_png(tmp_path / "parts" / part / str(digit) / "a.png", np.zeros((28, 28), np.uint8))
    assert load(str(tmp_path / "parts"), "train").labels.tolist() == [3, 7]  # numbered folders: their numbers
    assert load(str(tmp_path / "parts"), "test").labels.tolist() == [7]

    for i in range(4):
        save_png(tmp_path / "flat" / f"{i}.jpg", np.full((28, 28), 60 * i, np.uint8))
    flat = make_pool(str(tmp_path / "flat"), size=3)
    assert len(flat) == 3 and flat.labels is None
    with pytest.raises(DataError, match="has no labels, which an evaluation set needs"):
        load(str(tmp_path / "flat"), "test")


def test_bad_user_data_is_refused_with_the_fix(tmp_path):
    mixed = tmp_path / "mixed"
    save_png(mixed / "a.png", np.zeros((28, 28), np.uint8))
    save_png(mixed / "b.png", np.zeros((32, 32), np.uint8))
    broken = tmp_path / "broken"
    save_png(broken / "0" / "a.png", np.zeros((28, 28), np.uint8))
    (broken / "0" / "b.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "objects.npz", images=np.array([object()], dtype=object))
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((2, 28, 28), np.uint8))
    np.savez(tmp_path / "wide.npz", images=np.zeros((2, 28, 40), np.uint8))
    np.savez(tmp_path / "counts.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.arange(2))
    np.savez(tmp_path / "bright.npz", images=np.full((2, 28, 28), 255.0, np.float32))
    cases = {
        "mixed": "holds images of different sizes (a.png: 28x28, b.png: 32x32); resize them to one size",
        "broken": "b.png is not a readable image",
        "empty": "no images in",
        "objects.npz": "object arrays, which mea never unpickles",
        "keys.npz": "holds arrays ['pixels']; name the images 'images'",
        "wide.npz": "images of 40x28 are not square",
        "counts.npz": "3 images but labels of shape [2]",
        "bright.npz": "float images must lie in [0, 1]",
    }
    for name, message in cases.items():
        with pytest.raises(DataError) as caught:
            make_pool(str(tmp_path / name))
        assert message in str(caught.value), (name, str(caught.value))
    with pytest.raises(DataError, match=r"no dataset at .*missing\.npz; pass a \.npz file, a folder of images"):
        load(str(tmp_path / "missing.npz"), "test")
    with pytest.raises(ConfigError, match="unknown pool 'cifar'; choose one of: mnist-train, fashion-mnist"):
        check_pool_name("cifar")


def test_a_bad_pool_on_the_command_line_is_one_line_and_leaves_no_run(victim_dir, data_dir, tmp_path):
    save_png(tmp_path / "mixed" / "a.png", np.zeros((28, 28), np.uint8))
    save_png(tmp_path / "mixed" / "b.png", np.zeros((30, 30), np.uint8))
    out = tmp_path / "run"
    args = ("attack", "--victim", str(victim_dir), "--queries", "50", "--out", str(out))
    line = one_error_line(mea(*args, "--pool", str(tmp_path / "mixed"), data_dir=data_dir, threads=1))
    assert "different sizes" in line and not out.exists()
    line = one_error_line(mea(*args, "--pool", str(tmp_path / "nowhere"), data_dir=data_dir, threads=1))
    assert "no pool at" in line and not out.exists()


@pytest.fixture(scope="module")
def model_file(victim_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("sidecar") / "digits.onnx"
    done = mea("export", "--victim", str(victim_dir), "--out", str(path), threads=1)
    assert done.returncode == 0, done.stderr
    return path


def test_the_export_writes_a_sidecar_that_names_the_dataset(model_file, victim):
    sidecar = json.loads(model_file.with_suffix(".json").read_text())
    assert sidecar == {"dataset": "mnist", "class_names": list("0123456789"), "calibration_size": 5000}
    loaded = load_victim(model_file)
    assert loaded.dataset == "mnist" and loaded.splits == victim.splits


def test_a_sidecar_can_name_the_owners_own_evaluation_set(model_file, victim, data_dir, tmp_path):
    test = load("mnist", "test", data_dir)
    own = tmp_path / "own"
    own.mkdir()
    (own / "model.onnx").write_bytes(model_file.read_bytes())
    np.savez(own / "holdout.npz", images=(test.images[:500, 0] * 255).round().byte().numpy(), labels=test.labels[:500])
    (own / "model.json").write_text(json.dumps({"dataset": "holdout.npz"}))
    mine = load_victim(own / "model.onnx")
    assert mine.dataset == str((own / "holdout.npz").resolve()) and mine.dataset_title == "holdout.npz"
    assert len(mine.test_set()) == 500
    # The defender's calibration split comes from the owner's images too: the sidecar sizes it.
    with pytest.raises(ConfigError, match=r"between 1 and 499 .*holds 500 training images.*sidecar's calibration_size"):
        mine.calibration_set()
    (own / "model.json").write_text(json.dumps({"dataset": "holdout.npz", "calibration_size": 100}))
    calibration = load_victim(own / "model.onnx").calibration_set()
    assert torch.equal(calibration.labels, test.labels[400:500])

    # Labels the victim's ten classes cannot answer: the model and the data disagree on the task.
    np.savez(own / "holdout.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0, 5, 11]))
    with pytest.raises(DataError, match=r"labels up to 11, but the victim .* answers 10 classes"):
        load_victim(own / "model.onnx").test_set()

    (own / "model.json").write_text(json.dumps({"dataset": "mnist", "owner": "me"}))
    with pytest.raises(ArtifactError, match="may hold only the keys dataset, class_names, calibration_size"):
        load_victim(own / "model.onnx")
    (own / "model.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    with pytest.raises(ArtifactError, match=r"names 2 classes, but .* answers 10; list the model.s classes in order"):
        load_victim(own / "model.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter
def test_a_sidecar_says_how_the_model_wants_its_pixels(victim, tmp_path):
    """An ONNX graph of 0..255 pixels answers as the victim once its sidecar says `scale: 255`."""

    class Bytes(torch.nn.Module):  # the victim, taking 0..255 pixels
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images / 255)

    pytest.importorskip("onnxruntime")
    path = tmp_path / "bytes.onnx"
    batch = {"input_names": ["images"], "dynamic_axes": {"images": {0: "batch"}}}
    torch.onnx.export(Bytes(victim.model).eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, **batch)
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = victim.model(images)
    assert not torch.allclose(load_victim(path).model(images), expected, atol=1e-3)  # fed [0, 1]: wrong
    path.with_suffix(".json").write_text(json.dumps({"input": {"scale": 255}}))
    scaled = load_victim(path)
    assert torch.allclose(scaled.model(images), expected, atol=1e-3)
    assert len(scaled.model.features(images)) == 3  # its two convolutions and the logits, for the detector
    path.with_suffix(".json").write_text(json.dumps({"input": {"scale": "255"}}))
    with pytest.raises(ArtifactError, match="input must map scale, mean, std to numbers"):
        load_victim(path)
    path.with_suffix(".json").write_text(json.dumps({"input": {"std": 0}}))
    with pytest.raises(ArtifactError, match="positive scale and std"):
        load_victim(path)
