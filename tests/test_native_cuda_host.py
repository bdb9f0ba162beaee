"""The CUDA decode kernel's header (native/cuda/tq-fattn-decode.cuh) compiled with nvcc where nvcc is
installed, no GPU needed: every kernel instance must compile, its host-side choice of key splits
(tq_fa_tiles_per_split) must fill the GPU in whole waves, and short caches must get fewer query rows
per block (tq_fa_rows_per_block). native/tests/tq_cuda_fattn_test.cu --plans-only runs those checks on
the host; the GPU machine runs the same binary's kernel tests."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="needs nvcc and cmake")


@pytest.fixture(scope="module")
def fattn_test(tmp_path_factory) -> Path:
    """native/CMakeLists.txt's own target (TQ_CUDA_TESTS), as the GPU machine builds it."""
    d = tmp_path_factory.mktemp("cuda-host")
    subprocess.run(["cmake", "-S", str(ROOT / "native"), "-B", str(d), "-DCMAKE_BUILD_TYPE=Release",
                    "-DTQ_BUILD_TESTS=ON", "-DTQ_CUDA_TESTS=ON", f"-DCMAKE_CUDA_COMPILER={NVCC}"],
                   check=True, capture_output=True)
    r = subprocess.run(["cmake", "--build", str(d), "--target", "tq_cuda_fattn_test", "-j", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return d / "tq_cuda_fattn_test"


def test_key_splits_fill_whole_waves(fattn_test):
    r = subprocess.run([str(fattn_test), "--plans-only"], capture_output=True, text=True, timeout=60)
    lines = [line for line in r.stdout.splitlines() if " plan " in line]
    assert r.returncode == 0 and len(lines) == 18 and all(line.startswith("PASS") for line in lines), r.stdout
    # 16 sequences of 8K keys on 264 block slots: 2 splits (256 blocks), where 3 left a second wave
    assert "PASS plan 16 x 8K : 32 tiles per split (2 splits), want 32" in lines
    # a decode step at depth 0 (256 keys, two tiles, 32 blocks): one split, no combine to launch
    assert "PASS plan 1 x 256 RB 1: 2 tiles per split (1 splits), want 2" in lines


def test_short_caches_take_one_row_per_block(fattn_test):
    r = subprocess.run([str(fattn_test), "--plans-only"], capture_output=True, text=True, timeout=60)
    # a decode step at depth 0 (256 keys, G 4, 8 KV heads): 32 blocks of one row, not 8 of four
    assert "PASS plan 1 x 256   : 1 rows per block, want 1" in r.stdout.splitlines(), r.stdout
    assert "PASS plan 1 x 4K    : 4 rows per block, want 4" in r.stdout.splitlines(), r.stdout


def test_unknown_type_is_refused(fattn_test):
    r = subprocess.run([str(fattn_test), "--type", "tq5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown type 'tq5'" in r.stdout
