"""Passkey retrieval: a random 5-digit pass key hidden at several depths of filler text that fills
the context, asked for at the end; accuracy per cache type and depth. Shared by `tq-llama needle`.

The prompt is the standard passkey test (Mohtashami & Jaggi 2023, "Landmark Attention"; LongLoRA) as
raw completion: an instruction, filler with the needle sentence between two filler sentences, then
"What is the pass key? The pass key is", decoded greedily. Every prompt is built from tokenized
pieces, so its length and the needle's position are exact token counts.

The default filler is that test's repeated neutral sentences. A novel is the harder haystack:
SmolLM2-135M-Instruct with an f16 cache finds the key in Pride and Prejudice at 2K-6K tokens but at
none of the depths at its full 8K, with or without its chat template (2026-11-28), so a novel at
8K would compare cache types on a test every one of them fails.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ._progress import Progress
from .cache_types import pair_name
from .gguf_meta import attention_shape, read_metadata

INSTRUCTION = "There is a pass key hidden in the text below. Remember it."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
MAX_NEW_TOKENS = 8
# the haystack of Mohtashami & Jaggi's passkey test
NEUTRAL_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again.")
# Below this much filler the "haystack" is smaller than the needle and depths mean nothing.
MIN_FILLER_TOKENS = 64

Tokenize = Callable[[str, bool], list]  # (text, add_bos) -> token ids


@dataclass
class Prompt:
    tokens: list[int]
    passkey: str
    depth: float  # requested, fraction of the filler before the needle
    needle_at: int  # index of the needle's first token
    needle_len: int
    filler_start: int  # index of the first filler token (after the instruction)
    filler_tokens: int

    @property
    def actual_depth(self) -> float:
        return (self.needle_at - self.filler_start) / self.filler_tokens


@dataclass
class Trial:
    depth: float
    trial: int
    passkey: str
    answer: str
    correct: bool
    prompt_tokens: int
    evaluated_tokens: int  # prompt tokens not reused from the previous trial's cache
    seconds: float
    actual_depth: float


@dataclass
class TypeResult:
    type: str
    bits_per_value: float
    kv_mib: float
    seconds: float  # model load and every trial
    trials: list[Trial] = field(default_factory=list)

    def accuracy(self, depth: Optional[float] = None) -> tuple[int, int]:
        ts = [t for t in self.trials if depth is None or t.depth == depth]
        return sum(t.correct for t in ts), len(ts)


# --- filler --------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z])")


def filler_sentences(text: str) -> list[str]:
    """The text's sentences, whitespace collapsed. Sentences with a digit are left out, so that the
    only number in the prompt is the pass key (a chapter number could otherwise be the answer)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        start = 0
        for m in _SENTENCE_END.finditer(para):
            out.append(para[start:m.end()].strip())
            start = m.end()
        out.append(para[start:].strip())
    return [s for s in out if s and not re.search(r"\d", s)]


class Filler:
    """Tokenized filler sentences, tokenized on demand and cycled if the text runs out."""

    def __init__(self, sentences: Sequence[str], tokenize: Tokenize) -> None:
        if not sentences:
            raise ValueError("the filler text has no sentence without a digit")
        self.sentences, self.tokenize = list(sentences), tokenize
        self._tokens: list[list[int]] = []

    def take(self, budget: int) -> list[list[int]]:
        """Leading sentences (as token lists) whose total length is at most `budget`."""
        out, n, i = [], 0, 0
        while True:
            while i >= len(self._tokens):
                s = self.sentences[len(self._tokens) % len(self.sentences)]
                self._tokens.append(self.tokenize(" " + s, False))
            toks = self._tokens[i]
            if n + len(toks) > budget:
                return out
            out.append(toks)
            n += len(toks)
            i += 1


# --- prompts -------------------------------------------------------------------------------------

def check_depths(depths: Sequence[float]) -> list[float]:
    if not depths:
        raise ValueError("no depths given: pass fractions of the filler such as 0.1,0.5,0.9")
    out = []
    for d in depths:
        d = float(d)
        if not 0.0 <= d <= 1.0:  # also refuses NaN
            raise ValueError(f"depth {d:g} is outside [0, 1]: a depth is the fraction of the filler text before "
                             "the needle (0 = right after the instruction, 1 = right before the question)")
        if d not in out:
            out.append(d)
    return out


def build_prompt(tokenize: Tokenize, filler: Filler, n_ctx: int, depth: float, passkey: str,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> Prompt:
    """Instruction, filler with the needle at `depth` (at the sentence boundary nearest to it), question;
    at most n_ctx - max_new_tokens tokens."""
    check_depths([depth])
    head = tokenize(INSTRUCTION, True)
    needle = tokenize(" " + NEEDLE.format(key=passkey), False)
    tail = tokenize(" " + QUESTION, False)
    fixed = len(head) + len(needle) + len(tail)
    budget = n_ctx - max_new_tokens - fixed
    if budget < MIN_FILLER_TOKENS:
        raise ValueError(f"context {n_ctx} is too small for the needle test: the instruction, needle and question "
                         f"take {fixed} tokens, the answer {max_new_tokens}, and the filler needs at least "
                         f"{MIN_FILLER_TOKENS}; use a context of at least {fixed + max_new_tokens + MIN_FILLER_TOKENS}")
    sentences = filler.take(budget)
    n_filler = sum(map(len, sentences))
    # boundary b puts sentences[:b] before the needle; pick the one nearest the requested depth
    ends, acc = [0], 0
    for s in sentences:
        acc += len(s)
        ends.append(acc)
    b = min(range(len(ends)), key=lambda i: abs(ends[i] - depth * n_filler))
    tokens = list(head)
    for s in sentences[:b]:
        tokens += s
    needle_at = len(tokens)
    tokens += needle
    for s in sentences[b:]:
        tokens += s
    tokens += tail
    return Prompt(tokens=tokens, passkey=passkey, depth=depth, needle_at=needle_at, needle_len=len(needle),
                  filler_start=len(head), filler_tokens=n_filler)


def passkeys(seed: Optional[int], depths: Sequence[float], trials: int) -> dict[tuple[float, int], str]:
    """One random 5-digit key per (depth, trial), the same for every cache type."""
    rng = random.Random(seed)
    return {(d, t): str(rng.randint(10000, 99999)) for d in depths for t in range(trials)}


def run_order(depths: Sequence[float], trials: int) -> list[tuple[float, int]]:
    """Deepest needle first: llama-cpp-python keeps the prompt prefix shared with the previous one in
    the cache, and the filler before the needle is shared, so each prompt then re-evaluates only the
    part from its own needle on (1 - depth of the context) instead of the whole context."""
    return [(d, t) for d in sorted(depths, reverse=True) for t in range(trials)]


# --- running -------------------------------------------------------------------------------------

class Vocab:
    """The model's tokenizer without its weights or a context (llama.cpp's public C API on a
    vocab-only model: a vocab-only Llama would still create a context, and log a warning about it)."""

    def __init__(self, model_path: Union[str, Path]) -> None:
        from .errors import LlamaError
        from .llama import llama_cpp  # binds llama_cpp to the patched libraries first

        self._c = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        # llama-cpp-python prints llama.cpp's log through this logger: quiet while the vocabulary loads
        log = logging.getLogger("llama-cpp-python")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            self._model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        finally:
            log.setLevel(level)
        if not self._model:
            raise LlamaError(f"llama.cpp cannot read the vocabulary of {model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        raw = text.encode("utf-8")
        n = len(raw) + 8
        buf = (self._c.llama_token * n)()
        got = self._c.llama_tokenize(self._vocab, raw, len(raw), buf, n, add_bos, False)
        if got < 0:  # the buffer was too small: -got tokens
            n = -got
            buf = (self._c.llama_token * n)()
            got = self._c.llama_tokenize(self._vocab, raw, len(raw), buf, n, add_bos, False)
        return list(buf[:got])

    def detokenize(self, tokens: Sequence[int]) -> str:
        out = bytearray()
        piece = ctypes.create_string_buffer(256)
        for t in tokens:
            n = self._c.llama_token_to_piece(self._vocab, t, piece, len(piece), 0, False)
            out += piece.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._model:
            self._c.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Vocab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def context_limit(model_path: Union[str, Path]) -> int:
    """The model's training context (GGUF <arch>.context_length)."""
    n = attention_shape(read_metadata(model_path))["n_ctx_train"]
    if not n:
        raise ValueError(f"{Path(model_path).name} has no context_length in its GGUF metadata: pass the context size")
    return int(n)


def _check_ctx(model_path: Path, n_ctx: int) -> None:
    if n_ctx < 1:
        raise ValueError(f"context must be positive, got {n_ctx}")
    limit = context_limit(model_path)
    if n_ctx > limit:
        raise ValueError(f"context {n_ctx} is larger than {model_path.name}'s training context ({limit}): "
                         "past it the model's retrieval says nothing about the cache")


def run_needle(model_path: Union[str, Path], types: Sequence[str], n_ctx: Optional[int] = None,
               depths: Sequence[float] = DEFAULT_DEPTHS, trials: int = 1, seed: Optional[int] = 0,
               text: Union[str, Path, None] = None, threads: Optional[int] = None, n_batch: int = 512,
               max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = False,
               kv_options: Union[None, str, dict] = None) -> list[TypeResult]:
    """Passkey retrieval with each cache type, given as `tq-llama compare --types` takes them ("tq3",
    a K/V pair "q8_0/tq3", a centring "tq3@off"): the same prompts, one Llama per type. `n_ctx`
    defaults to the model's training context; `text` (a file) replaces the repeated neutral filler
    with its sentences; `kv_options` (as Llama takes them, e.g. {"layers": "k10:tq4"}) go to every
    type, and a type's label and bits per value include them."""
    from .llama import Llama, check_cache_types, kv_bytes, kv_options_string, parse_spec

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    specs = [parse_spec(t) for t in types]
    if not specs:
        raise ValueError("no cache types given")
    for k, v, _ in specs:
        check_cache_types(model_path, k, v)
    options = kv_options_string(None, kv_options)  # a malformed option fails here, before any model runs
    depths = check_depths(depths)
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    n_ctx = context_limit(model_path) if n_ctx is None else n_ctx
    _check_ctx(model_path, n_ctx)
    if text is not None:
        text = Path(text)
        if not text.is_file():
            raise FileNotFoundError(f"text file not found: {text}")
        sentences = filler_sentences(text.read_text(encoding="utf-8"))
    else:
        sentences = list(NEUTRAL_FILLER)

    # the tokenizer alone builds every prompt before any cache type runs, so a context too small
    # for the needle fails at once rather than after a model load
    with Vocab(model_path) as vocab:
        filler = Filler(sentences, vocab.tokenize)
        keys = passkeys(seed, depths, trials)
        order = run_order(depths, trials)
        prompts = {dt: build_prompt(vocab.tokenize, filler, n_ctx, dt[0], keys[dt], max_new_tokens) for dt in order}

    threads = threads or os.cpu_count() or 1
    # the f16 cache that the bits are counted against has no per-layer types, whatever LLAMA_KV_LAYERS
    # or LLAMA_KV_BITS say
    f16_size = kv_bytes(model_path, "f16", "f16", n_ctx=n_ctx, n_ubatch=n_batch, kv_options={"layers": "", "bits": 0})
    results = []
    for k, v, center in specs:
        label = pair_name(k, v) + (f"@{center}" if center else "") + (f" [{options}]" if options else "")
        t0 = time.perf_counter()
        # flash attention for every type, f16 included, as `tq-llama compare` runs them: the same
        # attention code for all, and llama.cpp's fast tiled path for f16
        llm = Llama(model_path, type_k=k, type_v=v, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, flash_attn=True,
                    n_threads=threads, n_threads_batch=threads, seed=seed if seed is not None else 0,
                    kv_center=center, kv_options=options or None, verbose=False)
        size = kv_bytes(model_path, k, v, n_ctx=n_ctx, n_ubatch=n_batch, kv_options=options or None)
        # with per-layer types the average over the cache, every scale counted
        bits = 16.0 * size / f16_size
        res = TypeResult(type=label, bits_per_value=bits, kv_mib=size / 2**20, seconds=0.0)
        try:
            prev: list[int] = []
            bar = Progress(label, total=len(order), unit="prompt", enabled=progress)
            for i, (d, t) in enumerate(order):
                p = prompts[(d, t)]
                reused = _common_prefix(prev, p.tokens)
                s0 = time.perf_counter()
                out = llm(p.tokens, max_tokens=max_new_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0)
                sec = time.perf_counter() - s0
                answer = out["choices"][0]["text"]
                prev = p.tokens
                trial = Trial(depth=d, trial=t, passkey=p.passkey, answer=answer, correct=p.passkey in answer,
                              prompt_tokens=len(p.tokens), evaluated_tokens=len(p.tokens) - reused, seconds=sec,
                              actual_depth=p.actual_depth)
                res.trials.append(trial)
                bar.write(f"{label}: depth {d:g} key {p.passkey} -> {answer.strip()!r} "
                          f"({'ok' if trial.correct else 'MISS'}, {trial.evaluated_tokens} tokens, {sec:.1f} s)")
                bar.update_to(i + 1)
        finally:
            bar.close()
            llm.close()
        res.seconds = time.perf_counter() - t0
        res.trials.sort(key=lambda tr: (tr.depth, tr.trial))
        results.append(res)
    return results


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    # what llama-cpp-python keeps; it re-evaluates one token when the whole prompt matches
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return min(n, len(b) - 1)


# --- output --------------------------------------------------------------------------------------

def _pct(d: float) -> str:
    return f"{100 * d:g} %"


def markdown(results: Sequence[TypeResult], title: str = "") -> str:
    depths = sorted({t.depth for r in results for t in r.trials})
    rows = [f"{title}\n" if title else "",
            "| cache K/V | bits/value | KV MiB | " + " | ".join(f"depth {_pct(d)}" for d in depths)
            + " | all | seconds |",
            "|---" * (len(depths) + 5) + "|"]
    for r in results:
        cells = [f"{k}/{n}" for k, n in (r.accuracy(d) for d in depths)]
        k, n = r.accuracy()
        rows.append(f"| {r.type} | {r.bits_per_value:.2f} | {r.kv_mib:.1f} | " + " | ".join(cells)
                    + f" | {k}/{n} | {r.seconds:.0f} |")
    return "\n".join(x for x in rows if x) + "\n"


def to_json(results: Sequence[TypeResult], meta: dict) -> str:
    out = []
    for r in results:
        d = asdict(r)
        d["accuracy"] = {f"{depth:g}": list(r.accuracy(depth)) for depth in sorted({t.depth for t in r.trials})}
        out.append(d)
    return json.dumps({"meta": meta, "results": out}, indent=2) + "\n"

