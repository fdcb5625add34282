/* A layer's inputs' backward pass (lanes.c's FG_LANE_LAYER), written once over a vector of the SIMD width and
   compiled once per width: lanes.c includes this file for each, with FG_VECTOR_* naming the width's vector type
   and its operations. Written over vectors rather than over lanes, as lanes.c's other loops are: GCC's
   vectoriser copied each input's lanes through the stack, spilled its grads after the loop and loaded each
   neuron's grads twice.

   Each input gathers every neuron's share of its grad in registers (last neuron first, as the eager graph's
   backward() adds them), and its weights' grads are folded into their 8 numbers in fg_fold_into's order (as are
   the starts' below) or, in a short block, added lane by lane. In a whole block both are multiply-adds, grad +
   weight * neuron's grad and fold + input * neuron's grad, fused (one rounding) where the width has FMA: AVX2,
   AVX-512 and aarch64's baseline (x86-64's too if built for FMA), the same bits on each; x86-64's baseline rounds
   the product first, as the eager graph does (C's fma() is a call there). Measured on the moons step at 10,000
   rows (a 2-core Xeon, AVX-512): the backward pass took 17% less time than with a product and a sum, and 3% less
   unfused. A layer's inputs, starts and weights are distinct slots (batched.pyx: distinct_numbers), which the
   registers an input's grad is gathered in rely on.

   Included by lanes.c once per width, after fg_folded, fg_grad_read and FG_MOST_INPUTS, with FG_VECTOR_*
   defined; alone (as .ci/check_c.py compiles each header) it declares nothing. */
#ifdef FG_VECTOR_SUFFIX
#include "lanes.h"

#define FG_VECTOR_NAME(name) FG_VECTOR_PASTE(name, FG_VECTOR_SUFFIX)
#define FG_VECTOR_PASTE(name, suffix) FG_VECTOR_PASTE_(name, suffix)
#define FG_VECTOR_PASTE_(name, suffix) name##_##suffix

/* c + a * b: fused where the width has FMA, in a whole block; in a short block rounded twice, as the eager graph
   does, so that a row alone gives its eager graph's grads bit for bit. */
#define FG_TERM(fuse, a, b, c) ((fuse) ? FG_VECTOR_MUL_ADD(a, b, c) : FG_VECTOR_ADD(c, FG_VECTOR_MUL(a, b)))

/* A block's lanes a pass takes, in vectors; a fold's 8 numbers, in vectors. */
#define FG_VECTORS (FG_VECTOR_PART / FG_VECTOR_DOUBLES)
#define FG_FOLD_VECTORS (8 / FG_VECTOR_DOUBLES)

FG_VECTOR_TARGET FG_KERNEL void FG_VECTOR_NAME(fg_inputs_backward_body)(
        const fg_lane_program *program, const int32_t *terms, const double *grad, const double *values,
        double *grads, const int32_t first, const int count, const int grads_read, const int lane0, const int folds) {
    const int32_t k = terms[0], n = terms[1];
    const int32_t *neurons = terms + 2 + n;
    FG_VECTOR x[FG_MOST_INPUTS][FG_VECTORS], sum[FG_MOST_INPUTS][FG_VECTORS];
    for (int c = 0; c < count; c++)
        for (int v = 0; v < FG_VECTORS; v++) {
            const ptrdiff_t lane = (ptrdiff_t)terms[2 + first + c] * FG_LANES + lane0 + v * FG_VECTOR_DOUBLES;
            x[c][v] = FG_VECTOR_LOAD(values + lane);
            sum[c][v] = grads_read ? FG_VECTOR_LOAD(grads + lane) : FG_VECTOR_SPLAT(0.0);
        }
    for (int32_t i = k - 1; i >= 0; i--) {
        const double *inner = grad + (ptrdiff_t)i * FG_LANES + lane0;
        const int32_t *w = neurons + (ptrdiff_t)i * (n + 1) + 1 + first;
        FG_VECTOR g[FG_VECTORS];
        for (int v = 0; v < FG_VECTORS; v++)
            g[v] = FG_VECTOR_LOAD(inner + v * FG_VECTOR_DOUBLES);
        for (int c = 0; c < count; c++) {
            if (grads_read) {
                const FG_VECTOR weight = FG_VECTOR_SPLAT(program->uniform_values[w[c] - program->uniform_begin]);
                for (int v = 0; v < FG_VECTORS; v++)
                    sum[c][v] = FG_TERM(folds, weight, g[v], sum[c][v]);
            }
            if (folds) {
                double *folded = fg_folded(program, grads, w[c]);
                FG_VECTOR total[FG_FOLD_VECTORS];
                for (int t = 0; t < FG_FOLD_VECTORS; t++)
                    total[t] = FG_VECTOR_LOAD(folded + t * FG_VECTOR_DOUBLES);
                for (int v = 0; v < FG_VECTORS; v++)
                    total[v % FG_FOLD_VECTORS] = FG_TERM(1, x[c][v], g[v], total[v % FG_FOLD_VECTORS]);
                for (int t = 0; t < FG_FOLD_VECTORS; t++)
                    FG_VECTOR_STORE(folded + t * FG_VECTOR_DOUBLES, total[t]);
            } else {
                double *w_grad = grads + (ptrdiff_t)w[c] * FG_LANES + lane0;
                for (int v = 0; v < FG_VECTORS; v++)
                    FG_VECTOR_STORE(w_grad + v * FG_VECTOR_DOUBLES,
                                    FG_TERM(0, x[c][v], g[v], FG_VECTOR_LOAD(w_grad + v * FG_VECTOR_DOUBLES)));
            }
        }
    }
    if (grads_read)
        for (int c = 0; c < count; c++)
            for (int v = 0; v < FG_VECTORS; v++)
                FG_VECTOR_STORE(grads + (ptrdiff_t)terms[2 + first + c] * FG_LANES + lane0 + v * FG_VECTOR_DOUBLES,
                                sum[c][v]);
}

/* `count` inputs from `first`, their grads read or not, the weights' grads folded or not: each case its own copy
   of the loop, whose tests the compiler then drops. */
FG_VECTOR_TARGET FG_KERNEL void FG_VECTOR_NAME(fg_inputs_backward)(
        const fg_lane_program *program, const int32_t *terms, const double *grad, const double *values,
        double *grads, const int32_t first, const int count, const int grads_read, const int lane0, const int folds) {
#define FG_INPUTS_CASE(count_, read_, folds_) \
    if (count == (count_) && grads_read == (read_) && folds == (folds_)) { \
        FG_VECTOR_NAME(fg_inputs_backward_body)(program, terms, grad, values, grads, first, count_, read_, lane0, \
                                                folds_); \
        return; \
    }
    FG_INPUTS_CASE(1, 1, 1) FG_INPUTS_CASE(1, 0, 1) FG_INPUTS_CASE(1, 1, 0) FG_INPUTS_CASE(1, 0, 0)
#if FG_VECTOR_INPUTS == 2
    FG_INPUTS_CASE(2, 1, 1) FG_INPUTS_CASE(2, 0, 1)
#endif
#undef FG_INPUTS_CASE
    FG_VECTOR_NAME(fg_inputs_backward_body)(program, terms, grad, values, grads, first, count, grads_read, lane0,
                                            folds);                      /* any other case, tests and all */
}

/* A layer's backward pass once its neurons' grads (grad: k slots, scratch of this block) are in place (lanes.c:
   fg_layer_backward): the inputs' and weights' grads, FG_VECTOR_PART lanes at a time, two inputs side by side
   where the width takes two and both or neither have their grads read; then each start's grad, the neuron's,
   as fg_add_to_grad adds it, written over vectors here (calling it made the AVX2 step 5-9% slower: GCC loads
   its lanes 16 bytes at a time there); then the neurons' grads cleared. */
FG_VECTOR_TARGET static void FG_VECTOR_NAME(fg_layer_weights_backward)(
        const fg_lane_program *program, const int32_t *terms, double *grad, const double *values, double *grads) {
    const int32_t k = terms[0], n = terms[1];
    const int32_t *neurons = terms + 2 + n;
    const int folds = program->uniform_end > program->uniform_begin;   /* no uniform slot: a short block */
    FG_STATIC_ASSERT(FG_LANES % FG_VECTOR_PART == 0 && FG_VECTOR_PART % 8 == 0
                     && FG_VECTOR_INPUTS <= FG_MOST_INPUTS);
    for (int lane0 = 0; lane0 < FG_LANES; lane0 += FG_VECTOR_PART)
        for (int32_t j = 0; j < n;) {
            const int read = fg_grad_read(program, terms[2 + j]);
            const int count = FG_VECTOR_INPUTS == 2 && folds && j + 1 < n
                              && fg_grad_read(program, terms[3 + j]) == read ? 2 : 1;
            FG_VECTOR_NAME(fg_inputs_backward)(program, terms, grad, values, grads, j, count, read, lane0, folds);
            j += count;
        }
    for (int32_t i = k - 1; i >= 0; i--) {
        double *inner = grad + (ptrdiff_t)i * FG_LANES;
        const int32_t start = neurons[(ptrdiff_t)i * (n + 1)];
        if (folds) {
            double *folded = fg_folded(program, grads, start);
            FG_VECTOR total[FG_FOLD_VECTORS];
            for (int t = 0; t < FG_FOLD_VECTORS; t++)
                total[t] = FG_VECTOR_LOAD(folded + t * FG_VECTOR_DOUBLES);
            for (int v = 0; v < FG_LANES / FG_VECTOR_DOUBLES; v++)
                total[v % FG_FOLD_VECTORS] = FG_VECTOR_ADD(total[v % FG_FOLD_VECTORS],
                                                           FG_VECTOR_LOAD(inner + v * FG_VECTOR_DOUBLES));
            for (int t = 0; t < FG_FOLD_VECTORS; t++)
                FG_VECTOR_STORE(folded + t * FG_VECTOR_DOUBLES, total[t]);
        } else {
            double *start_grad = grads + (ptrdiff_t)start * FG_LANES;
            for (int v = 0; v < FG_LANES / FG_VECTOR_DOUBLES; v++)
                FG_VECTOR_STORE(start_grad + v * FG_VECTOR_DOUBLES,
                                FG_VECTOR_ADD(FG_VECTOR_LOAD(start_grad + v * FG_VECTOR_DOUBLES),
                                              FG_VECTOR_LOAD(inner + v * FG_VECTOR_DOUBLES)));
        }
        for (int v = 0; v < FG_LANES / FG_VECTOR_DOUBLES; v++)
            FG_VECTOR_STORE(inner + v * FG_VECTOR_DOUBLES, FG_VECTOR_SPLAT(0.0));
    }
}

/* Whether this width fuses, for its FG_LANE_LOOPS. */
enum { FG_VECTOR_NAME(fg_backward_fuses) = FG_VECTOR_FUSES };

#undef FG_VECTORS
#undef FG_FOLD_VECTORS
#undef FG_VECTOR_SUFFIX
#undef FG_VECTOR_TARGET
#undef FG_VECTOR
#undef FG_VECTOR_DOUBLES
#undef FG_VECTOR_LOAD
#undef FG_VECTOR_STORE
#undef FG_VECTOR_SPLAT
#undef FG_VECTOR_MUL_ADD
#undef FG_VECTOR_ADD
#undef FG_VECTOR_MUL
#undef FG_TERM
#undef FG_VECTOR_PART
#undef FG_VECTOR_INPUTS
#undef FG_VECTOR_FUSES
#endif
