"""tq caches on llama.cpp's RPC backend, on loopback: ggml-rpc-server processes on 127.0.0.1 started and
stopped here (through `tq-llama rpc-server`), clients in subprocesses (an abort there fails a test
instead of ending the run)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import llama_logits, rel_rms

pytestmark = pytest.mark.model

_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
         "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
         "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
         "considered the rightful property of some one or other of their daughters.")

# one client per mode (save, load, traffic, gone); argv: model, type_k, type_v, rpc servers ("" = local),
# mode, file
_CLIENT = r"""
import json, pickle, sys
import numpy as np
import tq_llamacpp
import tq_llamacpp.rpc
from tq_llamacpp.errors import LlamaError
model, type_k, type_v, rpc, mode, path = sys.argv[1:7]
relay = tq_llamacpp.rpc.CountingRelay(rpc) if mode == "traffic" else None
kw = dict(rpc_servers=relay.endpoint if relay else rpc) if rpc else {}
# keys centred after RoPE here too: a cache on a server is (docs/rpc.md), and a state records which
llm = tq_llamacpp.Llama(model, type_k=type_k, type_v=type_v, n_ctx=1024, n_batch=512, logits_all=True, seed=7,
                        verbose=False, kv_options={"rope": "post"}, **kw)
toks = llm.tokenize(sys.stdin.readline().strip().encode())
if mode == "save":  # the state after the text, then the logits of two more tokens
    llm.eval(toks)
    state = llm.save_state()
    pickle.dump(state, open(path, "wb"))
    llm.eval([11, 22])
    after = np.asarray(llm.scores)[llm.n_tokens - 2:llm.n_tokens].copy()
    llm.reset()
    llm.eval([5, 6, 7])            # something else in the cache
    llm.load_state(state)          # back, on the same server
    llm.eval([11, 22])
    again = np.asarray(llm.scores)[llm.n_tokens - 2:llm.n_tokens]
    print(json.dumps({"after": after.tolist(), "again": again.tolist()}))
elif mode == "load":  # the state saved by "save", then the same two tokens
    llm.load_state(pickle.load(open(path, "rb")))
    llm.eval([11, 22])
    print(json.dumps({"after": np.asarray(llm.scores)[llm.n_tokens - 2:llm.n_tokens].tolist()}))
elif mode == "traffic":  # bytes each way per decoded token, near the start and deep in the cache
    fill, out = toks * (900 // len(toks) + 1), {}
    for depth in (64, 832):
        llm.eval(fill[llm.n_tokens:depth])
        before = relay.total
        for t in range(16):
            llm.eval([100 + t])
        out[depth] = (relay.total - before) / 16
        llm.n_tokens -= 16
    print(json.dumps(out))
elif mode == "gone":  # the server is killed between two evals
    llm.eval(toks)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        llm.eval([11])
    except LlamaError as exc:
        print("LlamaError:", exc, flush=True)
        sys.exit(0)
    print("no error", flush=True)
    sys.exit(3)
"""


# the subprocesses run elsewhere than the checkout: `python -c` and `-m` put the working directory
# first on sys.path, where the checkout's tq_llamacpp (without its built parts) would shadow the
# installed one
_CWD = tempfile.gettempdir()


def _client(model, type_k, type_v, rpc, mode, path="", timeout=600):
    proc = subprocess.run([sys.executable, "-c", _CLIENT, str(model), type_k, type_v, rpc, mode, str(path)],
                          input=_TEXT + "\n", capture_output=True, text=True, timeout=timeout, cwd=_CWD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcServer:
    """`tq-llama rpc-server` on 127.0.0.1, until stop()."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tq_llamacpp.cli", "rpc-server", "--port", str(self.port),
                                      "--threads", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     cwd=_CWD)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"rpc-server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "rpc-server did not listen within 60 s"
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def server():
    s = RpcServer()
    yield s
    s.stop()


@pytest.mark.parametrize("types", [("tq3", "tq3"), ("tq4", "tq3")])
def test_logits_over_rpc_match_local(smollm2, server, types):
    """Every layer and its tq cache on the server: the cache allocated there (RPC0 KV buffer) and none
    here, and logits as the same cache gives locally, within the GPU-vs-CPU test's bound (a code can
    differ where float rounding moves a value across a decision boundary)."""
    ref16, _ = llama_logits(smollm2, "f16", "f16")
    # keys centred after RoPE on both sides: a cache on a server is (rope=auto; docs/rpc.md)
    local, _ = llama_logits(smollm2, *types, kv_options={"rope": "post"})
    remote, log = llama_logits(smollm2, *types, rpc_servers=server.endpoint)
    assert re.search(r"RPC0\[127\.0\.0\.1:\d+\] KV buffer size", log), log[-2000:]
    assert "CPU KV buffer size" not in log, log[-2000:]
    rel, rel16 = rel_rms(remote, local), rel_rms(local, ref16)
    print(f"{types}: logits RPC vs local rel RMS {rel:.2e}; local vs an f16 cache {rel16:.2e}")
    assert rel < max(0.3 * rel16, 2e-3), (rel, rel16)
    assert (remote.argmax(axis=1) == local.argmax(axis=1)).mean() >= 0.8


@pytest.mark.parametrize("types,kv_options,message", [
    (("tq2ts", "tq2ts"), None, r"K cache type tq2ts of layer 0 runs on the CPU only.*use tq2t"),
    (("tq3t", "tq3t"), {"layers": "v4:tq3ts"}, r"V cache type tq3ts of layer 4 runs on the CPU only.*use tq3t"),
])
def test_cpu_only_types_are_refused_on_a_server(smollm2, tq, server, types, kv_options, message):
    """tq2ts/tq3ts have no code but the CPU's: a cache that would sit in a server's memory (or a
    GPU's) is refused when the context is made, naming the layer and what to use instead."""
    from tq_llamacpp.errors import LlamaError

    with pytest.raises(LlamaError, match=message):
        tq.Llama(smollm2, type_k=types[0], type_v=types[1], kv_options=kv_options, rpc_servers=server.endpoint,
                 n_ctx=256, verbose=False)


def test_state_saved_over_rpc_loads_there_and_here(smollm2, server, tmp_path):
    """A state saved from a cache on the server restores there exactly, and loads into a local
    Llama with the same cache, which continues as the server does."""
    import numpy as np

    path = tmp_path / "state.pkl"
    saved, _ = _client(smollm2, "tq3", "tq3", server.endpoint, "save", path)
    after, again = np.array(saved["after"]), np.array(saved["again"])
    assert np.array_equal(after, again)
    loaded, _ = _client(smollm2, "tq3", "tq3", "", "load", path)
    assert rel_rms(np.array(loaded["after"]), after) < 2e-3


def test_the_cache_stays_on_the_server(smollm2, server):
    """Decoding a token sends the server its inputs and the graph and gets the logits back; the cache
    does not cross: 768 more tokens in the tq3 cache (3.6 MB) add the attention mask's 2 bytes per
    cell (measured 271,636 -> 273,172 bytes per token), not the cache."""
    from tq_llamacpp.llama import kv_bytes

    traffic, _ = _client(smollm2, "tq3", "tq3", server.endpoint, "traffic")
    near, deep = traffic["64"], traffic["832"]
    grown = kv_bytes(smollm2, "tq3", "tq3", n_ctx=1024) * 768 // 1024
    print(f"bytes per decoded token over the socket: depth 64 {near:.0f}, depth 832 {deep:.0f}; "
          f"the cache grew by {grown}")
    assert near > 4 * 49152  # at least the logits (SmolLM2's vocabulary, f32) come back
    assert deep - near <= 4 * 768, (near, deep, grown)  # the mask: at most an f32 per new cell


def test_server_gone_mid_run_is_an_error(smollm2, server):
    """The server dies between two evals: the client's next eval raises LlamaError naming the lost
    connection, within seconds, and the process lives on."""
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, str(smollm2), "tq3", "tq3", server.endpoint, "gone", ""],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=_CWD)
    try:
        proc.stdin.write(_TEXT + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
        server.stop()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, out, err[-3000:])
    assert "LlamaError:" in out and "connection lost" in out, out


def test_unreachable_server_is_refused_before_llama_cpp(smollm2, tq):
    from tq_llamacpp.errors import RpcError

    port = _free_port()
    with pytest.raises(RpcError, match=f"cannot connect to the RPC server 127.0.0.1:{port}"):
        tq.Llama(smollm2, type_k="tq3", type_v="tq3", rpc_servers=f"127.0.0.1:{port}")


def test_server_without_a_type_is_refused(server):
    """The check a client makes first: the server answers for each tq type with this build's row size;
    a type it does not have (here an id past its GGML_TYPE_COUNT, as 161 is for a stock
    ggml-rpc-server) ends the connection, and the client says which type and what to run."""
    from tq_llamacpp.cache_types import CacheType
    from tq_llamacpp.errors import RpcError
    from tq_llamacpp.rpc import PROTO_MAJOR, check_server

    assert check_server(server.endpoint)[0] == PROTO_MAJOR
    with pytest.raises(RpcError, match=r"does not know the tq9 cache type \(ggml type 200\).*tq-llama rpc-server"):
        check_server(server.endpoint, [CacheType("tq9", 200, 64, 26)])
    assert check_server(server.endpoint, ["tq3"])[0] == PROTO_MAJOR  # and it serves the next client


@pytest.mark.parametrize("value, message", [
    ("localhost", "is not host:port"), ("h:0", "is not host:port"), (":50052", "is not host:port"),
    ("h:1,h:1", "listed twice"), ("", "is not host:port"), (["h:1", 5], "each server"),
])
def test_bad_rpc_servers(value, message):
    from tq_llamacpp.rpc import parse_endpoints

    with pytest.raises((TypeError, ValueError), match=message):
        parse_endpoints(value)


def test_no_layers_on_the_servers_is_refused(smollm2, tq):
    with pytest.raises(ValueError, match="n_gpu_layers=0"):
        tq.Llama(smollm2, type_k="tq3", type_v="tq3", rpc_servers="127.0.0.1:50052", n_gpu_layers=0)


def test_serve_takes_rpc(smollm2, server):
    """`tq-llama serve --rpc` checks the servers before loading and puts every layer on them."""
    from tq_llamacpp.cli import build_parser
    from tq_llamacpp.server import settings_from_args

    args = build_parser().parse_args(["serve", "--model", str(smollm2), "--rpc", server.endpoint])
    _, model = settings_from_args(args, str(smollm2))
    assert model.rpc_servers == server.endpoint and model.n_gpu_layers == -1
    from tq_llamacpp.errors import RpcError

    args = build_parser().parse_args(["serve", "--model", str(smollm2), "--rpc", f"127.0.0.1:{_free_port()}"])
    with pytest.raises(RpcError, match="cannot connect"):
        settings_from_args(args, str(smollm2))
