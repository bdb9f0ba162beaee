#!/usr/bin/env python3
"""A synthetic GGUF of a real model's shape for speed measurements: random Q4_0 weights (every layer
shares one random buffer per tensor shape: speed does not depend on the values), unit norms, and the
real tokenizer copied from a vocab-only GGUF of llama.cpp's models/ folder.

    python benchmarks/make_synthetic_gguf.py OUT.gguf --vocab llama.cpp/models/ggml-vocab-llama-bpe.gguf
        [--shape llama-3.1-8b | tiny]

Needs numpy and the gguf package (llama.cpp's gguf-py on PYTHONPATH will do).
"""
import argparse
import sys

import numpy as np

import gguf

SHAPES = {
    # Meta Llama-3.1-8B: 32 layers, 4096 wide, 32 query / 8 KV heads of 128, FFN 14336, 128K context
    "llama-3.1-8b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_ctx=131072, rope_theta=500000.0),
    # SmolLM2-135M (head size 64, GQA 3): the GPU tests' stand-in for the real model, which is too
    # large to carry to the GPU machine
    "smollm2-135m": dict(n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, n_ctx=8192, rope_theta=100000.0),
    # for checking this script quickly
    "tiny": dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_ctx=4096, rope_theta=500000.0),
}
QK4_0, Q4_0_BYTES = 32, 18


def q4_0_random(rng, n_out, n_in, rms):
    """n_out rows of n_in Q4_0 values, uniform codes; the scale makes the values' RMS about `rms`."""
    nb = n_in // QK4_0
    raw = rng.integers(0, 256, size=(n_out, nb, Q4_0_BYTES), dtype=np.uint8)
    # codes 0..15 -> d*(q-8): RMS of q-8 over uniform q is ~4.61
    d = np.float16(rms / 4.61)
    raw[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    return raw.reshape(n_out, nb * Q4_0_BYTES)


def copy_tokenizer(writer, vocab_path):
    reader = gguf.GGUFReader(vocab_path)
    n_vocab = None
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        writer.add_key_value(name, val, vtype, sub_type=sub)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(val)
    return n_vocab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    args = ap.parse_args()
    s = SHAPES[args.shape]
    rng = np.random.default_rng(0)

    w = gguf.GGUFWriter(args.out, "llama", use_temp_file=False)
    n_vocab = copy_tokenizer(w, args.vocab)
    if n_vocab is None:
        sys.exit(f"{args.vocab}: no tokenizer.ggml.tokens")
    hd = s["n_embd"] // s["n_head"]
    w.add_name(f"synthetic {args.shape}")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)

    E, F, KV = s["n_embd"], s["n_ff"], s["n_head_kv"] * hd
    Q = gguf.GGMLQuantizationType.Q4_0
    # a matrix n_out x n_in with values of RMS 1/sqrt(n_in) keeps activations O(1)
    shared = {}

    def mat(n_out, n_in):
        key = (n_out, n_in)
        if key not in shared:
            shared[key] = q4_0_random(rng, n_out, n_in, 1.0 / np.sqrt(n_in))
        return shared[key]

    ones = np.ones(E, dtype=np.float32)
    w.add_tensor("token_embd.weight", q4_0_random(rng, n_vocab, E, 1.0), raw_dtype=Q)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", mat(E, E), raw_dtype=Q)
        w.add_tensor(p + "attn_k.weight", mat(KV, E), raw_dtype=Q)
        w.add_tensor(p + "attn_v.weight", mat(KV, E), raw_dtype=Q)
        w.add_tensor(p + "attn_output.weight", mat(E, E), raw_dtype=Q)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", mat(F, E), raw_dtype=Q)
        w.add_tensor(p + "ffn_up.weight", mat(F, E), raw_dtype=Q)
        w.add_tensor(p + "ffn_down.weight", mat(E, F), raw_dtype=Q)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", mat(n_vocab, E), raw_dtype=Q)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {args.shape}, vocab {n_vocab}")


if __name__ == "__main__":
    main()
