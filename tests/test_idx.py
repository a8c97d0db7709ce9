import gzip

import numpy as np
import pytest

from mea.data import idx
from mea.errors import DataError


def test_roundtrip_raw_and_gzip():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx.encode(array)
    assert raw[:4] == b"\x00\x00\x08\x03"
    np.testing.assert_array_equal(idx.parse(raw, "x"), array)
    np.testing.assert_array_equal(idx.parse(idx.decompress(gzip.compress(raw), "x.gz"), "x"), array)


def test_truncated_file_is_refused():
    raw = idx.encode(np.zeros((5, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=r"truncated or corrupt.*fetch the data again"):
        idx.parse(raw[:-1], "train-images")


def test_padded_file_is_refused():
    raw = idx.encode(np.zeros((5,), dtype=np.uint8))
    with pytest.raises(DataError, match="header promises"):
        idx.parse(raw + b"\x00", "labels")


def test_bad_magic_and_type():
    with pytest.raises(DataError, match="not an IDX file"):
        idx.parse(b"PK\x03\x04" + bytes(20), "zip")
    with pytest.raises(DataError, match="expected unsigned bytes"):
        idx.parse(b"\x00\x00\x0d\x01" + bytes(8), "floats")


def test_damaged_gzip():
    damaged = gzip.compress(idx.encode(np.zeros(100, dtype=np.uint8)))[:-8]
    with pytest.raises(DataError, match="damaged gzip"):
        idx.decompress(damaged, "labels.gz")
