/* Block layouts of the TurboQuant cache types: the one contract shared by C, C++ and CUDA.
 *
 * Every type codes TQ_BLOCK = 64 consecutive values of an (already rotated) vector with
 * b-bit Lloyd-Max codes (tq-codebooks.h) and one fp16 scale d: value j = d * CODEBOOK_b[code_j].
 * 64 divides every head size llama.cpp rotates (64/128/256) and equals its V rotation size,
 * so a block never mixes two rotations (native/README.md has the measurement behind it).
 *
 * Codes are stored in bit planes with a stride, never as a dense 3-bit stream, so that the
 * four consecutive codes i..i+3 (i % 4 == 0) come out of one 32-bit word with one shift and
 * one mask:
 *   2-bit plane qs[16]:  code bits 0-1 of value j = (qs[j % 16] >> (2 * (j / 16))) & 3
 *   1-bit plane qh[8]:   code bit  2   of value j = (qh[j % 8]  >> (j / 8)) & 1
 *   4-bit plane qs[32]:  code of value j          = (qs[j % 32] >> (4 * (j / 32))) & 15
 *   sign plane qj[8]:    QJL sign of coordinate j = (qj[j % 8]  >> (j / 8)) & 1   (1 = +)
 *
 * The trellis-coded types (tq2t, tq3t; tq-math.h) store a b-bit code per value as one trellis
 * branch bit and b-1 level bits. The branch bits are one little-endian 64-bit word, bit j for
 * value j (the decoder shifts the whole word to find every value's trellis state at once):
 *   branch word qu[8]:   branch bit of value j    = (qu[j / 8] >> (j % 8)) & 1
 *   level bits:          tq3t in a 2-bit plane qs[16] as above, tq2t in a word ql[8] like qu
 * tq2ts and tq3ts hold the same codes as tq2t and tq3t in the same order behind a one-byte scale
 * code e (tq-math.h, tq_scale8_to_float): 2.125 and 3.125 bits per value.
 */
#ifndef TQ_BLOCKS_H
#define TQ_BLOCKS_H

#include <stdint.h>

#define TQ_BLOCK 64

/* fp16 stored as raw bits: the C API has no half type, and ggml_half is the same uint16_t. */
typedef uint16_t tq_half;

typedef struct {
    tq_half d;
    uint8_t qs[TQ_BLOCK / 4];
} block_tq2;

typedef struct {
    tq_half d;
    uint8_t qs[TQ_BLOCK / 4];
    uint8_t qh[TQ_BLOCK / 8];
} block_tq3;

typedef struct {
    tq_half d;
    uint8_t qs[TQ_BLOCK / 2];
} block_tq4;

typedef struct {
    tq_half d;
    uint8_t qu[TQ_BLOCK / 8];
    uint8_t ql[TQ_BLOCK / 8];
} block_tq2t;

typedef struct {
    tq_half d;
    uint8_t qs[TQ_BLOCK / 4];
    uint8_t qu[TQ_BLOCK / 8];
} block_tq3t;

typedef struct {
    uint8_t e;
    uint8_t qu[TQ_BLOCK / 8];
    uint8_t ql[TQ_BLOCK / 8];
} block_tq2ts;

typedef struct {
    uint8_t e;
    uint8_t qs[TQ_BLOCK / 4];
    uint8_t qu[TQ_BLOCK / 8];
} block_tq3ts;

/* TurboQuant_prod (QJL): a (b-1)-bit MSE code, then the signs of S*r for the residual
 * r = x - x_mse under a fixed randomized Hadamard S, and gamma = |r| (fp16). */
typedef struct {
    tq_half d;
    tq_half gamma;
    uint8_t qs[TQ_BLOCK / 4];
    uint8_t qj[TQ_BLOCK / 8];
} block_tq3j;

typedef struct {
    tq_half d;
    tq_half gamma;
    uint8_t qs[TQ_BLOCK / 4];
    uint8_t qh[TQ_BLOCK / 8];
    uint8_t qj[TQ_BLOCK / 8];
} block_tq4j;

#ifdef __cplusplus
#define TQ_STATIC_ASSERT static_assert
#else
#define TQ_STATIC_ASSERT _Static_assert
#endif
TQ_STATIC_ASSERT(sizeof(block_tq2) == 2 + 16, "block_tq2 size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq3) == 2 + 16 + 8, "block_tq3 size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq4) == 2 + 32, "block_tq4 size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq2t) == 2 + 8 + 8, "block_tq2t size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq3t) == 2 + 16 + 8, "block_tq3t size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq2ts) == 1 + 8 + 8, "block_tq2ts size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq3ts) == 1 + 16 + 8, "block_tq3ts size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq3j) == 4 + 16 + 8, "block_tq3j size/padding");
TQ_STATIC_ASSERT(sizeof(block_tq4j) == 4 + 16 + 8 + 8, "block_tq4j size/padding");

#endif
