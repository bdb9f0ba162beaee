"""`tq-llama serve`: llama-cpp-python's OpenAI-compatible server (llama_cpp.server) on the patched
llama.cpp, with KV-cache types by name.

Every setting of `python -m llama_cpp.server` is accepted in its own spelling (`--n_ctx`) and with
dashes (`--n-ctx`); what differs: `--type-k/--type-v` take names ("tq4") as well as ggml ids, flash
attention is switched on when the cache needs it (as `Llama` does), `--model` also takes a test
model's name, and bad settings are refused with a message before any model is loaded.

llama_cpp.server builds its model with `llama_cpp.Llama`; `create_app` points that name at
`tq_llamacpp.Llama` (a subclass) in this process, so the server's model, its prompt reuse and its
state cache (`--cache`) run with the tq cache and its checks.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from .llama import Llama, check_cache_types, kv_bytes, llama_cpp

_OURS = {"type_k", "type_v", "flash_attn", "model", "kv_options"}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "on", "true", "yes", "y", "t"):
        return True
    if value in ("0", "off", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llama_cpp.server.cli import _contains_dict_type, _contains_list_type, _get_base_type  # noqa: PLC0415
    from llama_cpp.server.settings import Settings  # noqa: PLC0415

    p.add_argument("--model", metavar="GGUF", help="model file, or a test model's name (smollm2, qwen2.5-coder-0.5b, "
                   "gemma3-270m; fetched and cached); default: smollm2")
    p.add_argument("--type-k", "--type_k", dest="type_k", default="tq4",
                   help="K cache type: a name (tq4, tq3, q8_0, f16, ...) or a ggml id (default: tq4)")
    p.add_argument("--type-v", "--type_v", dest="type_v", default="tq3",
                   help="V cache type, as --type-k (default: tq3)")
    p.add_argument("--flash-attn", "--flash_attn", dest="flash_attn", type=_bool, default=None,
                   help="flash attention (default: on when the cache needs it, i.e. a tq K or a quantized V)")
    p.add_argument("--kv-options", "--kv_options", dest="kv_options", metavar="OPTS", default=None,
                   help='KV-cache options, as Llama\'s kv_options string: e.g. "bits=2.5" with --type-k tq2ts '
                   '--type-v tq2ts, or "layers=k10:tq4" (README, Python)')
    group = p.add_argument_group("llama_cpp.server settings (python -m llama_cpp.server --help)")
    for name, field in Settings.model_fields.items():
        if name in _OURS:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        flags += ["--rpc"] if name == "rpc_servers" else []  # llama.cpp's tools spell it so
        help_text = field.description or ""
        if not field.is_required() and field.default is not None:
            help_text += f" (default: {field.default})"
        base = _get_base_type(field.annotation) if field.annotation is not None else str
        if _contains_dict_type(field.annotation):
            import json  # noqa: PLC0415

            kind: Any = json.loads
        elif base is bool:
            kind = _bool
        else:
            kind = base
        group.add_argument(*flags, dest=name, type=kind, nargs="*" if _contains_list_type(field.annotation) else None,
                           help=help_text.replace("%", "%%"))


def settings_from_args(args: argparse.Namespace, model_path: str):
    """(ServerSettings, ModelSettings) for llama_cpp.server, with the cache types resolved and
    checked against the model before anything is loaded."""
    from llama_cpp.server.settings import ModelSettings, ServerSettings  # noqa: PLC0415

    k, v = check_cache_types(model_path, args.type_k, args.type_v)
    needs_fa = v.quantized or k.turboquant
    flash_attn = needs_fa if args.flash_attn is None else args.flash_attn
    if needs_fa and not flash_attn:
        raise ValueError(f"the {k.name}/{v.name} cache needs flash attention: drop --flash-attn false")
    if args.kv_options:
        try:  # the options and the per-layer types they give, as a context checks them
            kv_bytes(model_path, k, v, kv_options=args.kv_options)
        except ValueError as e:
            raise ValueError(f"--kv-options {args.kv_options!r}: {e}") from None
    values = {n: x for n, x in vars(args).items() if x is not None and n not in _OURS}
    if values.get("rpc_servers") is not None:
        from .rpc import check_servers, parse_endpoints  # noqa: PLC0415

        check_servers(parse_endpoints(values["rpc_servers"]))
        values.setdefault("n_gpu_layers", -1)  # as Llama(rpc_servers=...): every layer on the servers
    values.update(model=str(model_path), type_k=k.ggml_id, type_v=v.ggml_id, flash_attn=flash_attn)
    server = ServerSettings(**{n: x for n, x in values.items() if n in ServerSettings.model_fields})
    model = ModelSettings(**{n: x for n, x in values.items() if n in ModelSettings.model_fields})
    return server, model


def _with_kv_options(kv_options: str) -> type:
    # llama_cpp.server's ModelSettings have no field for them: every model it builds gets them here
    class LlamaWithKVOptions(Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("kv_options", kv_options)
            super().__init__(*args, **kwargs)

    return LlamaWithKVOptions


def create_app(server_settings, model_settings: Optional[list] = None, kv_options: Optional[str] = None):
    """llama_cpp.server's FastAPI app, its models built as tq_llamacpp.Llama (see the module doc)
    with kv_options, and a request body that does not fit the endpoint answered 400
    (llama_cpp.server answers 500)."""
    from llama_cpp.server.app import create_app as _create_app  # noqa: PLC0415

    llama_cpp.Llama = _with_kv_options(kv_options) if kv_options else Llama
    app = _create_app(server_settings=server_settings, model_settings=model_settings)
    app.middleware("http")(_invalid_request_is_400)
    return app


async def _invalid_request_is_400(request, call_next):
    """OpenAI's answer to a body that does not validate: 400, type invalid_request_error, the field
    and the reason; the request never reaches the model."""
    from llama_cpp.server import types  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415

    schema = {"/v1/chat/completions": types.CreateChatCompletionRequest,
              "/v1/completions": types.CreateCompletionRequest,
              "/v1/embeddings": types.CreateEmbeddingRequest}.get(request.url.path)
    if schema is not None and request.method == "POST":
        body = await request.body()
        try:
            schema.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(x) for x in err.get("loc", ()))
            return JSONResponse({"error": {"message": f"{param}: {err.get('msg')}", "type": "invalid_request_error",
                                           "param": param or None, "code": None}}, status_code=400)
    return await call_next(request)


def serve(args: argparse.Namespace, model_path: str) -> int:
    import uvicorn  # noqa: PLC0415

    server, model = settings_from_args(args, model_path)
    app = create_app(server, [model], kv_options=args.kv_options)
    uvicorn.run(app, host=server.host, port=server.port, ssl_keyfile=server.ssl_keyfile,
                ssl_certfile=server.ssl_certfile)
    return 0
