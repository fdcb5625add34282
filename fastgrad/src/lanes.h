/* The batched replay's lane loops: one sample's program (recorded by compile(), laid out by batched.pyx) run
   over a block of FG_LANES samples at once. Numbers are slot-major: slot s of lane l is values[s * FG_LANES + l],
   so each instruction is a loop over lanes that the compiler turns into SIMD, calling the same kernels as the
   eager ops (ops.h), in the same order per lane: each lane's numbers are the bits one sample's eager graph
   gives. The loops are compiled once per SIMD width (lanes.c) and the widest the CPU has is chosen at run time:
   a wheel runs on any CPU of its architecture. */
#ifndef FASTGRAD_LANES_H
#define FASTGRAD_LANES_H

#include <stddef.h>
#include <stdint.h>
#include "ops.h"

/* Lanes a block: a multiple of the widest SIMD width (8 doubles). Per pass each shared leaf is copied into
   every lane and its grad summed over them, so fewer lanes cost less at small N: measured on the moons step
   (a 2-core Xeon, CPU time), 32 lanes took 38 us at N=100 against 47 us for 64; at N=10,000, 64 lanes took 6%
   less, and 16 lanes 2.3 times as long (GCC 12 vectorises those loops far worse). */
#define FG_LANES 32

/* The batched program's own ops beside ops.h's: a neuron's sum, start + w1*x1 + ... + wn*xn; and a layer,
   the sums of k neurons over the same n inputs whose starts and weights are all uniform slots, and the op each
   sum alone feeds, if it is one of FG_LAYER_ACTIVATIONS for every neuron. Each of these ops' derivatives reads
   its output alone: such a layer does not store its sums, which nothing else reads. */
#define FG_LANE_DOT 31
#define FG_LANE_LAYER 32
#define FG_LAYER_ACTIVATIONS(X) X(FG_RELU, fg_relu) X(FG_TANH, fg_tanh) X(FG_SIGMOID, fg_sigmoid)

/* Whether a layer computes op for its sums (batched.pyx asks, when it lays a layer out). */
FG_KERNEL int fg_layer_activation(int op) {
    switch (op) {
#define FG_ACTIVATION_CASE(code, kernel) case code:
    FG_LAYER_ACTIVATIONS(FG_ACTIVATION_CASE)
#undef FG_ACTIVATION_CASE
        return 1;
    default:
        return 0;
    }
}

typedef struct {
    int32_t op;        /* an fg_op with kernels, FG_CUSTOM (data given: nothing to compute), FG_LANE_DOT or
                          FG_LANE_LAYER;
                          FG_PYTHON (a custom op's) is never run here: the caller runs the loops on the slices
                          of the program between such instructions, and those itself (batched.pyx) */
    int32_t out;       /* the slot it computes; LAYER: the first of its k consecutive slots */
    int32_t a;         /* its first child's slot; DOT: the sum's start; LAYER: its activation's op (the
                          activations in the k slots after its sums), or FG_LEAF for none */
    int32_t b;         /* its second child's slot (x ** k: k's, one child: a scratch slot); DOT, LAYER: its terms */
} fg_lane_instruction;

typedef struct {
    const fg_lane_instruction *code;
    const int32_t *terms;            /* per DOT: n, then w1, x1, ..., wn, xn (slots); per LAYER: k, n, then
                                        x1, ..., xn, then per neuron its start, w1, ..., wn */
    ptrdiff_t instructions;
    int32_t inputs_begin;                 /* slots [inputs_begin, uniform_begin): the inputs, whose grads
                                             nobody reads: a layer adds nothing to them */
    int32_t uniform_begin, uniform_end;   /* slots whose lanes all hold one number (shared, given) */
    /* Those numbers once each, contiguous: a neuron's weights read from here take a few cache lines, not one
       a weight, and leave L1 to the block. */
    const double *uniform_values;
    ptrdiff_t folded;                     /* past a block's grads: 8 folded grads a uniform slot (lanes.c) */
} fg_lane_program;

/* A failed forward: the instruction and the lowest lane where a kernel reported status. */
typedef struct {
    ptrdiff_t instruction;           /* -1: none failed */
    int lane;
    fg_status status;
} fg_lane_failure;

typedef struct {
    const char *name;                /* "baseline", "avx2", "avx512" */
    int fused_multiply_add;          /* whether a layer's backward pass fuses its multiply-adds (layer_backward.h) */
    /* Every instruction's slot from its children's, over all lanes; stops at the first failing instruction. */
    fg_lane_failure (*forward)(const fg_lane_program *program, double *values);
    /* Each instruction's derivative, last first, added into its children's grads over all lanes: the
       caller has set the root's grads, the computed slots' others being 0. Each instruction clears its own
       grads once it has read them, so they are 0 again at the end, for the next block: one store a lane while
       the line is in L1, where clearing the block's grads before each pass cost 9% of a physics-informed
       step (its 534 slots' grads take 137 kB). */
    void (*backward)(const fg_lane_program *program, const double *values, double *grads);
    /* sums[k] = slot k's numbers summed over the lanes, with its 8 folded ones, in a fixed order (the same
       bits at every width); both are left at 0, for the next sums. lanes_added[k]: whether any instruction adds
       to slot k's lanes rather than folding; the others' lanes hold 0 and are neither read nor cleared. NULL:
       every slot's lanes (a short block adds every grad lane by lane). */
    void (*take_lane_sums)(double *slots, double *folded, ptrdiff_t count, const unsigned char *lanes_added,
                           double *sums);
} fg_lane_loops;

/* The loops for `wanted` ("baseline", "avx2", "avx512"), or for the widest the CPU runs when wanted is NULL
   or empty. NULL if this build or this CPU has no loops of that name. */
FG_HIDDEN const fg_lane_loops *fg_lane_loops_for(const char *wanted);

#endif
