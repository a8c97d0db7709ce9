"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

A file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data.  Both datasets only use unsigned bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from mea.errors import DataError

_UBYTE = 0x08


def decompress(raw: bytes, name: str) -> bytes:
    """Return the IDX bytes of a raw or gzip-compressed file."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name} is a damaged gzip file ({exc}); delete it and fetch the data again") from exc


def parse(data: bytes, name: str) -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array, refusing anything truncated or padded."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number); delete it and fetch the data again")
    if data[2] != _UBYTE:
        raise DataError(f"{name} holds IDX type 0x{data[2]:02x}, expected unsigned bytes (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated inside its header; delete it and fetch the data again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its header promises {expected} (shape {list(shape)}): "
            "the file is truncated or corrupt; delete it and fetch the data again"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return array


def encode(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (used to write test fixtures and subsets)."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding supports uint8 arrays only, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
