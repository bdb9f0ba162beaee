"""KL-divergence of next-token distributions in this process (llama-perplexity does the same for
`tq-llama compare`): the log-probabilities a Llama gives a token sequence, evaluated from an empty
cache with its first eval of a chosen size, and their divergence from a reference."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def log_probs(llm, tokens: Sequence[int], first: Optional[int] = None) -> np.ndarray:
    """Log-probabilities of the next token at every position of `tokens` (the Llama needs
    logits_all=True), evaluated from an empty cache: `first` tokens in the first eval, then the rest
    (None: all at once)."""
    tokens = list(tokens)
    llm.reset()  # the next eval removes every cell past n_tokens = 0: an empty cache
    if first is None or first >= len(tokens):
        llm.eval(tokens)
    else:
        llm.eval(tokens[:first])
        llm.eval(tokens[first:])
    x = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def mean_kl(reference: np.ndarray, other: np.ndarray, start: int = 0) -> tuple[float, float]:
    """Mean KL(reference || other) over positions start.., and the percentage of those positions
    whose most likely token is the same."""
    p, q = reference[start:], other[start:]
    kl = (np.exp(p) * (p - q)).sum(axis=1)
    same = (p.argmax(axis=1) == q.argmax(axis=1)).mean()
    return float(kl.mean()), float(100 * same)
