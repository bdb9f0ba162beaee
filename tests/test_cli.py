"""The `tq-llama` command as a user runs it (the installed console script)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tq_llamacpp.data import calib_dir, text_path

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


def _fresh_text(tmp_path):
    # a text of its own, so that the f16 reference (cached per model, text, ctx and chunks) runs here
    t = tmp_path / "text.txt"
    t.write_text(text_path("pride-and-prejudice").read_text(encoding="utf-8")[20000:60000], encoding="utf-8")
    return t


def test_compare_kv_options_bits(tmp_path):
    # bits=2.5 on tq2ts moves K of layers 0-21 of SmolLM2's 30 to tq3ts: K (22 x 3.125 + 8 x 2.125) / 30,
    # V 2.125, 2.49 bits per value on average; the f16 reference takes no per-layer types
    proc = subprocess.run([EXE, "compare", "--types", "tq2ts", "--kv-options", "bits=2.5", "--ctx", "256",
                           "--chunks", "1", "--text", str(_fresh_text(tmp_path)), "--out", str(tmp_path / "cmp")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tq2ts [bits=2.5] | 2.49 |" in proc.stdout
    assert "--kv-options 'bits=2.5'" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_bits_from_the_environment_leaves_the_reference_f16(tmp_path):
    env = dict(os.environ, LLAMA_KV_BITS="2.5")
    proc = subprocess.run([EXE, "compare", "--types", "tq2ts", "--ctx", "256", "--chunks", "1",
                           "--text", str(_fresh_text(tmp_path)), "--out", str(tmp_path / "cmp")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tq2ts | 2.49 |" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--chunks", "-1"], "chunks must be at least 1, got -1"),
    (["--chunks", "0"], "chunks must be at least 1, got 0"),
    (["--threads", "-2"], "threads must be at least 1, got -2"),
])
def test_compare_counts_checked_before_any_run(args, message):
    # llama-perplexity takes --chunks -1 as the whole novel: hours on two cores, not an error
    proc = subprocess.run([EXE, "compare", "--types", "tq3", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]
    assert "chunk" not in proc.stderr.replace(message, "")  # no run started


def test_compare_kv_options_a_type_cannot_take():
    # refused before any run, naming the type
    proc = subprocess.run([EXE, "compare", "--types", "tq2ts,q8_0", "--kv-options", "bits=2.5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cache q8_0: " in proc.stderr and "needs a K cache of tq2" in proc.stderr
    assert "f16 reference" not in proc.stderr


def test_compare_bad_type_names_the_problem():
    proc = subprocess.run([EXE, "compare", "--types", "tq5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unknown KV cache type 'tq5'" in proc.stderr


def test_compare_missing_model():
    proc = subprocess.run([EXE, "compare", "--model", "/nonexistent.gguf"], capture_output=True, text=True)
    assert proc.returncode != 0 and "model file not found: /nonexistent.gguf" in proc.stderr


def test_chat_takes_kv_options():
    proc = subprocess.run([EXE, "chat", "--type-k", "tq2ts", "--type-v", "tq2ts", "--kv-options", "bits=2.5",
                           "--max-tokens", "4", "--ctx", "512"], input="Hi.\n/exit\n", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([EXE, "chat", "--kv-options", "bits=lots"], input="/exit\n", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "bits must be a number of bits per value" in proc.stderr, proc.stderr[-3000:]


def test_chat_streams_a_reply():
    proc = subprocess.run([EXE, "chat", "--seed", "1", "--max-tokens", "12", "--ctx", "512"],
                          input="Say hello.\n/exit\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "KV cache tq3/tq3" in proc.stderr
    assert proc.stdout.replace(">", "").strip()
