"""The `tq-llama` command as a user runs it (the installed console script)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tq_llamacpp.data import calib_dir

pytestmark = pytest.mark.model
EXE = shutil.which("tq-llama")


@pytest.fixture(autouse=True)
def _installed():
    if EXE is None:
        pytest.fail("the tq-llama console script is not on PATH: install the package")


def test_compare_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "cmp"
    # the llama.cpp tools' own default for calibrations is under XDG_CACHE_HOME (or ~/.cache): the
    # package's runs keep them in TQ_CACHE_DIR/kv-calib, where Llama keeps them and CI starts empty
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    proc = subprocess.run([EXE, "compare", "--types", "tq4,q8_0/tq3", "--ctx", "256", "--chunks", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "xdg" / "tq-llamacpp").exists()
    assert list(calib_dir().glob("*.kvcalib"))
    assert "| tq4 | 4.25 |" in proc.stdout and "| q8_0/tq3 | 5.88 |" in proc.stdout
    assert "tq4: 1/1 chunk" in proc.stderr  # progress, a line per step without a terminal
    data = json.loads((out / "compare.json").read_text())
    assert [r["type"] for r in data["results"]] == ["tq4", "q8_0/tq3"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_bad_type_names_the_problem():
    proc = subprocess.run([EXE, "compare", "--types", "tq5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unknown KV cache type 'tq5'" in proc.stderr


def test_compare_missing_model():
    proc = subprocess.run([EXE, "compare", "--model", "/nonexistent.gguf"], capture_output=True, text=True)
    assert proc.returncode != 0 and "model file not found: /nonexistent.gguf" in proc.stderr


def test_chat_streams_a_reply():
    proc = subprocess.run([EXE, "chat", "--seed", "1", "--max-tokens", "12", "--ctx", "512"],
                          input="Say hello.\n/exit\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "KV cache tq3/tq3" in proc.stderr
    assert proc.stdout.replace(">", "").strip()
