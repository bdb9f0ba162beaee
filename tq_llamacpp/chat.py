"""Interactive chat with streaming output, using the model's own chat template."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO


def chat(llm, prompts: Optional[Iterable[str]] = None, out: TextIO = sys.stdout, max_tokens: int = 512,
         system: Optional[str] = None) -> list[dict]:
    """Read user turns (from `prompts`, else stdin, until EOF or /exit) and stream each reply to `out`.
    Returns the whole conversation."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = prompts is None
    source = _stdin_turns() if interactive else iter(prompts)
    for user in source:
        if user.strip() in ("/exit", "/quit"):
            break
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        reply = []
        for chunk in llm.create_chat_completion(messages=messages, stream=True, max_tokens=max_tokens):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                reply.append(piece)
                out.write(piece)
                out.flush()
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return messages


def _stdin_turns():
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        yield line
