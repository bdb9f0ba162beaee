"""Write the C source of a cffi API-mode module from a cdef file and a C prelude.

Usage: python cffi_gen_src.py MODULE CDEF CSRC OUT

The same job as `python -m cffi.gen_src read-sources` (cffi >= 2.1), done through
FFI.set_source + FFI.emit_c_code so that any cffi the build environment has works (2.0 has no
gen_src). Compile flags, include paths and libraries belong to CMake, not to set_source.
"""
import os
import sys

import cffi


def main(argv: list[str]) -> None:
    module, cdef_path, csrc_path, out = argv
    ffi = cffi.FFI()
    with open(cdef_path, encoding="utf-8") as f:
        ffi.cdef(f.read())
    with open(csrc_path, encoding="utf-8") as f:
        ffi.set_source(module, f.read())
    ffi.emit_c_code(out)
    # emit_c_code leaves an unchanged file alone; touch it so the build sees the output as new.
    os.utime(out)


if __name__ == "__main__":
    main(sys.argv[1:])
