"""llama.cpp's RPC backend: layers and their KV cache on other hosts, each running ggml-rpc-server.

A host runs `tq-llama rpc-server --host 0.0.0.0 --port 50052` (the ggml-rpc-server this package
builds from the patched llama.cpp, so it knows the tq types); a client passes
`Llama(model, rpc_servers="host:50052", type_k="tq3", type_v="tq3")`, or `--rpc host:50052` to
`tq-llama serve` and to llama.cpp's tools. docs/rpc.md has the commands for two hosts.

Before llama.cpp connects (where a refused connection or a server without the tq types would abort
the process), `check_server` speaks the first two steps of the protocol itself: the HELLO that
carries the protocol version, and an allocation-size query for each tq type, which a server that
lacks the type answers by closing the connection (ggml-rpc.cpp, rpc_server::deserialize_tensor).
"""
from __future__ import annotations

import ctypes
import socket
import struct
import threading
from typing import Iterable, Union

from .cache_types import CACHE_TYPES, CacheType
from .errors import RpcError, TqTypeError, TqValueError

__all__ = ["RpcError", "check_server", "devices", "parse_endpoints", "server_binary"]

# ggml/include/ggml-rpc.h and ggml/src/ggml-rpc/ggml-rpc.cpp of the pinned llama.cpp
PROTO_MAJOR, PROTO_MINOR = 7, 0
_CMD_GET_ALLOC_SIZE, _CMD_HELLO = 13, 14
_CONN_CAPS_SIZE = 24
_MAX_DIMS, _MAX_SRC, _MAX_OP_PARAMS, _MAX_NAME = 4, 10, 64, 64
# struct rpc_tensor (packed): id, type, buffer, ne[4], nb[4], op, op_params, flags, src[10],
# view_src, view_offs, data, name, use_count
_TENSOR = struct.Struct(f"<QIQ{_MAX_DIMS}I{_MAX_DIMS}II{_MAX_OP_PARAMS // 4}ii{_MAX_SRC}QQQQ{_MAX_NAME}si")
assert _TENSOR.size == 296
# a row of 512 values: no backend pads it (CUDA pads quantized rows that are not a multiple of 512)
_PROBE_ROW = 512
_TIMEOUT_S = 10.0

_checked: set[str] = set()
_lock = threading.Lock()


def parse_endpoints(value: Union[str, Iterable[str]]) -> list[str]:
    """"host:port,host:port" (or a list of them) -> ["host:port", ...]; ValueError names a bad one."""
    if isinstance(value, str):
        items = [x.strip() for x in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [x.strip() if isinstance(x, str) else x for x in value]
    else:
        raise TqTypeError(f"rpc_servers must be a str ('host:port,...') or a list of them, not {type(value).__name__}")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise TqTypeError(f"rpc_servers: each server is a 'host:port' str, not {type(item).__name__}")
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TqValueError(f"rpc_servers: {item!r} is not host:port (e.g. 192.168.1.2:50052)")
        if item in out:
            raise TqValueError(f"rpc_servers: {item} is listed twice")
        out.append(item)
    if not out:
        raise TqValueError("rpc_servers is empty: give at least one host:port")
    if len(out) > 16:  # GGML_RPC_MAX_SERVERS
        raise TqValueError(f"rpc_servers: {len(out)} servers, llama.cpp takes at most 16")
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed")
        data += chunk
    return data


def _request(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"reply of {size} bytes to command {cmd}, expected {reply_size}")
    return _recv_exact(sock, size)


def _probe_tensor(ggml_id: int, type_size: int, block: int) -> bytes:
    row = _PROBE_ROW // block * type_size
    ne = (_PROBE_ROW, 1, 1, 1)
    nb = (type_size, row, row, row)
    return _TENSOR.pack(1, ggml_id, 0, *ne, *nb, 0, *([0] * (_MAX_OP_PARAMS // 4)), 0, *([0] * _MAX_SRC),
                        0, 0, 0, b"tq-probe", 0)


def check_server(endpoint: str, types: Iterable[Union[str, CacheType]] = ("tq4", "tq3", "tq2", "tq4j", "tq3j", "tq3t", "tq2t", "tq3ts", "tq2ts"),
                 timeout: float = _TIMEOUT_S) -> tuple[int, int, int]:
    """Connect to a ggml-rpc-server, check its protocol version and that it stores each tq type
    with this package's block layout; return its version. RpcError says what is wrong."""
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise RpcError(f"cannot connect to the RPC server {endpoint}: {exc.strerror or exc}; is "
                       "`tq-llama rpc-server` running there, and is the port open?") from None
    with sock:
        try:
            reply = _request(sock, _CMD_HELLO, bytes(_CONN_CAPS_SIZE), 4 + _CONN_CAPS_SIZE)
        except socket.timeout:
            raise RpcError(f"the RPC server {endpoint} did not answer in {timeout:g} s: a ggml-rpc-server serves "
                           "one client at a time; is another program connected to it?") from None
        except (OSError, ConnectionError) as exc:
            raise RpcError(f"{endpoint} does not answer as a ggml-rpc-server ({exc})") from None
        major, minor, patch = reply[0], reply[1], reply[2]
        if major != PROTO_MAJOR or minor > PROTO_MINOR:
            raise RpcError(f"the RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; this build speaks "
                           f"{PROTO_MAJOR}.{PROTO_MINOR}: run the ggml-rpc-server of this package there "
                           "(`tq-llama rpc-server`)")
        for t in (CACHE_TYPES[x] if isinstance(x, str) else x for x in types):
            name = t.name
            # device 0, the tensor, no sources
            request = (struct.pack("<I", 0) + _probe_tensor(t.ggml_id, t.block_bytes, t.block)
                       + bytes(_TENSOR.size * _MAX_SRC))
            try:
                (size,) = struct.unpack("<Q", _request(sock, _CMD_GET_ALLOC_SIZE, request, 8))
            except (OSError, ConnectionError):
                raise RpcError(f"the RPC server {endpoint} does not know the {name} cache type (ggml type "
                               f"{t.ggml_id}): it is not built from this package's patched llama.cpp; run "
                               "`tq-llama rpc-server` there") from None
            want = t.row_bytes(_PROBE_ROW)
            if size != want:
                raise RpcError(f"the RPC server {endpoint} stores a {name} row of {_PROBE_ROW} values in {size} bytes, "
                               f"this build in {want}: run the same tq-llamacpp version on both hosts")
    return major, minor, patch


def check_servers(endpoints: list[str]) -> None:
    """check_server once per endpoint and process (a server that this process already uses is
    busy with it: rpc-server serves one client at a time)."""
    with _lock:
        for ep in endpoints:
            if ep not in _checked:
                check_server(ep)
                _checked.add(ep)


# ---- the devices llama.cpp puts layers on ------------------------------------------------------------

_DEV_GPU, _DEV_IGPU = 1, 2  # enum ggml_backend_dev_type


def _ggml():
    from ._libs import lib_dir  # noqa: PLC0415

    g = ctypes.CDLL(str(lib_dir() / "libggml.so"))
    for name, res, args in (
        ("ggml_backend_reg_by_name", ctypes.c_void_p, [ctypes.c_char_p]),
        ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ("ggml_backend_reg_dev_count", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_reg_dev_get", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
        ("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
        ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p]),
    ):
        f = getattr(g, name)
        f.restype, f.argtypes = res, args
    return g


def devices(endpoints: list[str]):
    """The NULL-terminated device list for llama_model_params.devices: every device of each RPC
    server, then this machine's GPUs, the order llama.cpp's `--rpc` gives (the servers first, to
    keep the transfers few). The servers are not registered globally, so a Llama without
    rpc_servers in the same process stays local."""
    check_servers(endpoints)
    g = _ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError("this build of llama.cpp has no RPC backend (GGML_RPC=OFF)")
    add = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add)
    out = []
    for ep in endpoints:
        r = add_server(ep.encode())
        n = g.ggml_backend_reg_dev_count(r) if r else 0
        if not n:
            raise RpcError(f"the RPC server {ep} offers no device")
        out += [g.ggml_backend_reg_dev_get(r, i) for i in range(n)]
    local = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    gpus = [d for d in local if g.ggml_backend_dev_type(d) == _DEV_GPU
            and g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(d)) != b"RPC"]
    out += gpus or [d for d in local if g.ggml_backend_dev_type(d) == _DEV_IGPU]
    return (ctypes.c_void_p * (len(out) + 1))(*out, None)


class CountingRelay:
    """A port on 127.0.0.1 that forwards every connection to an RPC server and counts the bytes
    each way: what crosses the network between a client and its server (tests/test_rpc.py and
    benchmarks/rpc_bench.py measure with it; it adds latency, so time runs without it)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host.strip("[]"), int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.to_server = self.to_client = 0
        self._count = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, "to_server"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "to_client"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while data := src.recv(1 << 20):
                # counted before it is passed on: once the other side has it, the count includes it
                with self._count:
                    setattr(self, counter, getattr(self, counter) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def total(self) -> int:
        with self._count:
            return self.to_server + self.to_client

    def close(self) -> None:
        self._listener.close()


def server_binary():
    """Path of the ggml-rpc-server this package installs."""
    from ._libs import tool  # noqa: PLC0415

    return tool("ggml-rpc-server")
