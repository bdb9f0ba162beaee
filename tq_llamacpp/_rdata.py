"""R's serialization format (XDR, versions 2 and 3) and lazy-load databases, read without R: Jane
Austen's novels ship in Debian's r-cran-janeaustenr as such a database (data/Rdata.rdx + .rdb).

Written here rather than taken from a package: the maintained readers (e.g. `rdata`) read .rda/.rds
files into pandas/xarray objects and do not read lazy-load databases; this needs 150 lines and the
standard library.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib

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
