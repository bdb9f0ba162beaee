"""`tq-llama serve` end to end: the installed command started as a user starts it, on the default
model with a tq4/tq3 cache, driven by the OpenAI Python client (plain and streamed chat), with
llama-cpp-python's prompt reuse and its RAM state cache; every answer equal to the same calls on
tq_llamacpp.Llama in this process. Bad requests and bad settings get clear errors."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tq_llamacpp.data import model_path

pytestmark = [pytest.mark.model, pytest.mark.slow]
EXE = shutil.which("tq-llama")
# greedy, no penalties: the server's and Llama's own defaults differ, so every call names them
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24}
EXTRA = {"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0}
SETTINGS = {"n_ctx": 1024, "n_threads": 2, "n_threads_batch": 2, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(log, *serve_args):
    """`tq-llama serve` on smollm2 with SETTINGS and serve_args, started and answering; (base URL, log)."""
    if EXE is None:
        pytest.fail("the tq-llama console script is not on PATH: install the package")
    port = _free_port()
    args = [EXE, "serve", "--model", str(model_path("smollm2")), "--host", "127.0.0.1", "--port", str(port),
            "--verbose", "true", *serve_args]
    args += [a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tq-llama serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"tq-llama serve did not answer within 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _serving(tmp_path_factory.mktemp("serve") / "server.log", "--type-k", "tq4", "--type-v", "tq3",
                  "--cache", "true", "--cache-type", "ram") as started:
        yield started


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key="unused", timeout=300)


@pytest.fixture(scope="module")
def local(tq):
    """The same model, cache and settings in this process, with the same RAM state cache."""
    from tq_llamacpp.llama import llama_cpp

    llm = tq.Llama(model_path("smollm2"), type_k="tq4", type_v="tq3", verbose=False, **SETTINGS)
    llm.set_cache(llama_cpp.LlamaRAMCache())
    yield llm
    llm.close()


def _ask(client, messages, stream=False):
    if stream:
        chunks = client.chat.completions.create(model="m", messages=messages, stream=True, extra_body=EXTRA, **SAMPLING)
        return "".join(c.choices[0].delta.content or "" for c in chunks)
    return client.chat.completions.create(model="m", messages=messages, extra_body=EXTRA, **SAMPLING).choices[0].message.content


def _ask_local(llm, messages):
    out = llm.create_chat_completion(messages=messages, **SAMPLING, **EXTRA)
    return out["choices"][0]["message"]["content"]


FIRST = [{"role": "user", "content": "Name three colours of the rainbow."}]
OTHER = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_plain_streamed_prefix_reuse_and_state_cache(server, client, local):
    """One sequence of requests, made to the server and to Llama in this process: the answers agree.
    The third request continues the first conversation after another one came in between, so the
    server serves it from its RAM cache (a saved tq state, loaded) and reuses the prefix."""
    base, log = server
    first = _ask(client, FIRST)
    assert first.strip() and first == _ask_local(local, FIRST)
    # the same request streamed: the same tokens
    assert _ask(client, FIRST, stream=True) == first
    assert _ask_local(local, FIRST) == first
    other = _ask(client, OTHER)
    assert other == _ask_local(local, OTHER)
    follow = FIRST + [{"role": "assistant", "content": first}, {"role": "user", "content": "And two more?"}]
    again = _ask(client, follow)
    assert again.strip() and again == _ask_local(local, follow)
    text = log.read_text()
    assert "cache hit" in text and "cache saved" in text, text[-3000:]  # the state cache served the follow-up
    assert "prefix-match hit" in text, text[-3000:]
    assert "tq4" in text and "mean-centred K = 1" in text  # the server's cache is the tq one, centred


def test_bad_request_is_an_error_not_a_crash(server):
    base, _ = server
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps({"messages": "not a list"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=60)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages", error
    # the OpenAI client sees its own error type for it
    from openai import BadRequestError, OpenAI

    with pytest.raises(BadRequestError):
        OpenAI(base_url=base + "/v1", api_key="unused").chat.completions.create(model="m", messages="nope")
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:  # still serving
        assert r.status == 200


def test_kv_options_reach_the_servers_model(tmp_path):
    """--kv-options are the model's kv_options: bits=2.5 on a tq2ts cache puts K of SmolLM2's layers 0-21
    in tq3ts (the line llama.cpp logs when it builds the cache), and the server answers as Llama with
    the same options in this process."""
    with _serving(tmp_path / "server.log", "--type-k", "tq2ts", "--type-v", "tq2ts", "--kv-options", "bits=2.5") \
            as (base, log):
        from openai import OpenAI

        answer = _ask(OpenAI(base_url=base + "/v1", api_key="unused", timeout=300), FIRST)
        assert "KV-cache option bits=2.5: K of layers 0-21 in tq3ts" in log.read_text(), log.read_text()[-3000:]
    from tq_llamacpp import Llama

    llm = Llama(model_path("smollm2"), type_k="tq2ts", type_v="tq2ts", kv_options="bits=2.5", verbose=False, **SETTINGS)
    try:
        assert answer.strip() and answer == _ask_local(llm, FIRST)
    finally:
        llm.close()


@pytest.mark.parametrize("args,message", [
    (["--type-k", "tq9"], "unknown KV cache type 'tq9'"),
    (["--type-k", "q8_0", "--kv-options", "bits=2.5"], "needs a K cache of tq2"),
    (["--kv-options", "layers=k99:tq4"], "--kv-options 'layers=k99:tq4'"),
    (["--type-v", "tq3", "--flash-attn", "false"], "needs flash attention"),
    (["--model", "/nonexistent.gguf"], "model file not found: /nonexistent.gguf"),
    (["--n-ctx", "-5"], "n_ctx"),
])
def test_bad_settings_are_refused_before_loading(args, message):
    t0 = time.time()
    proc = subprocess.run([EXE, "serve", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PORT="0"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.time() - t0 < 60
