/* The batched replay's lane loops (lanes.h), written once as inline bodies and compiled once per SIMD width:
   each width's functions carry a target attribute, so the module is built for the baseline CPU and only
   these functions use wider instructions, chosen at run time by what the CPU reports. */
#include <math.h>
#include <string.h>
#include "lanes.h"
#if FG_X86_TARGETS
#include <immintrin.h>
#endif

/* Per lane: the loops the compiler turns into SIMD. */
#define FG_EACH_LANE for (int l = 0; l < FG_LANES; l++)


/* A slot whose lanes all hold one number (a shared leaf's, a given one's): a sum's term reads it once, as a
   scalar from uniform_values, and folds its grad (fg_fold_into). The numbers and their order are the same. */
FG_KERNEL int fg_uniform(const fg_lane_program *program, int32_t slot) {
    return program->uniform_begin <= slot && slot < program->uniform_end;
}

FG_KERNEL void fg_dot_forward(const fg_lane_program *program, const int32_t *terms, const double *start,
                              double *restrict out, const double *values) {
    /* The sum as weighted_sum builds it: ((start + w1*x1) + w2*x2) + ..., each product rounded first. */
    double total[FG_LANES];
    int32_t n = terms[0];
    FG_EACH_LANE total[l] = start[l];
    for (int32_t j = 0; j < n; j++) {
        const double *w = values + (ptrdiff_t)terms[1 + 2 * j] * FG_LANES;
        const double *x = values + (ptrdiff_t)terms[2 + 2 * j] * FG_LANES;
        double product;
        if (fg_uniform(program, terms[1 + 2 * j])) {
            const double weight = program->uniform_values[terms[1 + 2 * j] - program->uniform_begin];
            FG_EACH_LANE {
                fg_mul_forward(weight, x[l], 0.0, &product);
                fg_add_forward(total[l], product, 0.0, &total[l]);
            }
        } else {
            FG_EACH_LANE {
                fg_mul_forward(w[l], x[l], 0.0, &product);
                fg_add_forward(total[l], product, 0.0, &total[l]);
            }
        }
    }
    FG_EACH_LANE out[l] = total[l];
}

/* A shared leaf's grad from a block's lanes, folded into its 8 numbers past the block's grads (program->folded):
   each group of 8 lanes added in lane order, as fg_take_lane_sums then adds the lanes'. A term then stores one
   vector instead of a block's, and the folded grads lie together, where slots' 256-byte stride would put every
   weight's grad in a quarter of L1's sets (perf: its load was the backward loop's hottest instruction then).
   The same order at every SIMD width; a layer's folds (layer_backward.h) keep it, part by part. The 8
   numbers go through a local copy, by loops: added in place, GCC 12 left the whole fold scalar (the backward
   pass 45% slower); copied by memcpy, it moved them 16 bytes at a time for AVX2, and each 32-byte load waited
   on two stores (the AVX2 layer backward 3.5 times as slow). */
FG_KERNEL void fg_fold_into(double *folded, const double *lanes) {
    double sum[8];
    for (int i = 0; i < 8; i++)
        sum[i] = folded[i];
    for (int group = 0; group < FG_LANES / 8; group++)
        for (int i = 0; i < 8; i++)
            sum[i] += lanes[group * 8 + i];
    for (int i = 0; i < 8; i++)
        folded[i] = sum[i];
}

FG_KERNEL double *fg_folded(const fg_lane_program *program, double *grads, int32_t slot) {
    return grads + program->folded + (ptrdiff_t)(slot - program->uniform_begin) * 8;
}

/* A slot's grad from a block: folded if the slot is uniform, else lane by lane (in a short block, every slot). */
FG_KERNEL void fg_add_to_grad(const fg_lane_program *program, double *grads, int32_t slot, const double *lanes) {
    if (fg_uniform(program, slot))
        fg_fold_into(fg_folded(program, grads, slot), lanes);
    else
        FG_EACH_LANE grads[(ptrdiff_t)slot * FG_LANES + l] += lanes[l];
}

FG_KERNEL void fg_dot_backward(const fg_lane_program *program, const int32_t *terms, int32_t start,
                               double *grad, const double *values, double *grads) {
    /* The eager graph's order, as the plain replay runs it: from the top term down, each product's grad into
       w and x. Every partial sum and product below the top has one parent and starts at 0, so its grad is
       0.0 + the top's (the top's, but for the sign of a zero); so is the start's (a sum has two terms or more:
       the recorder leaves a sum of one term to two instructions). */
    double inner[FG_LANES];
    int32_t n = terms[0];
    FG_EACH_LANE {
        inner[l] = 0.0 + grad[l];
        grad[l] = 0.0;
    }
    for (int32_t j = n - 1; j >= 0; j--) {
        const double *w = values + (ptrdiff_t)terms[1 + 2 * j] * FG_LANES;
        const double *x = values + (ptrdiff_t)terms[2 + 2 * j] * FG_LANES;
        double *x_grad = grads + (ptrdiff_t)terms[2 + 2 * j] * FG_LANES;
        double dw[FG_LANES], dx;
        if (fg_uniform(program, terms[1 + 2 * j])) {
            const double weight = program->uniform_values[terms[1 + 2 * j] - program->uniform_begin];
            FG_EACH_LANE {
                fg_mul_derivative(inner[l], 0.0, weight, x[l], 0.0, &dw[l], &dx);
                x_grad[l] += dx;
            }
            fg_fold_into(fg_folded(program, grads, terms[1 + 2 * j]), dw);
        } else {
            double *w_grad = grads + (ptrdiff_t)terms[1 + 2 * j] * FG_LANES;
            FG_EACH_LANE {
                fg_mul_derivative(inner[l], 0.0, w[l], x[l], 0.0, &dw[l], &dx);
                w_grad[l] += dw[l];
                x_grad[l] += dx;
            }
        }
    }
    fg_add_to_grad(program, grads, start, inner);
}

/* A layer: k neurons over the same inputs, each sum made as fg_dot_forward makes it, with uniform starts and
   weights. Its forward pass takes `part` lanes of the block at a time and `neurons` sums side by side, as many as
   the width's vector registers hold (FG_LANE_LOOPS; its backward pass: layer_backward.h): each x_j is loaded
   once for them, and their sums are independent chains of adds, where one neuron's sum waits on each add before
   the next (perf: the moons model's forward pass took 1.9 times its adds and multiplies at 2 a cycle as one DOT
   a neuron). */
#define FG_MOST_NEURONS 4

/* A layer's activation (FG_LAYER_ACTIVATIONS) in `part` lanes, the kernels its own instruction would call, on
   the sums while they are in registers; an instruction a neuron loaded them again, and its backward pass stored
   the sums' grads for the layer to load and store again (the moons step at 10,000 rows: 4% less time). */
FG_KERNEL void fg_activation_forward(const int op, const double *sum, double *restrict out, const int part) {
    switch (op) {
#define FG_ACTIVATION_FORWARD(code, kernel) \
    case code: for (int l = 0; l < part; l++) (void)kernel##_forward(sum[l], 0.0, 0.0, &out[l]); break;
    FG_LAYER_ACTIVATIONS(FG_ACTIVATION_FORWARD)
#undef FG_ACTIVATION_FORWARD
    }
}

/* Its derivative, which becomes the sum's grad: 0.0 + (the sum's grad + the derivative), the sum's grad being
   0 (its activation is its one reader), as its instruction's backward adds it. Kept in the activation's grad
   slot, where the layer reads it and clears it (layer_backward.h); the sum's slot is not touched. The
   derivative reads the activation's output alone (lanes.h), so the sum it would also get is not kept. */
FG_KERNEL void fg_activation_backward(const int op, double *grad, const double *out) {
    double da[FG_LANES];      /* then stored: in place, GCC made ReLU's a conditional store, scalar for AVX2 */
    switch (op) {
#define FG_ACTIVATION_BACKWARD(code, kernel) \
    case code: \
        FG_EACH_LANE { \
            double db; \
            kernel##_derivative(grad[l], out[l], 0.0, 0.0, 0.0, &da[l], &db); \
        } \
        FG_EACH_LANE grad[l] = 0.0 + da[l]; \
        break;
    FG_LAYER_ACTIVATIONS(FG_ACTIVATION_BACKWARD)
#undef FG_ACTIVATION_BACKWARD
    }
}

FG_KERNEL void fg_neurons_forward(const fg_lane_program *program, const int32_t *terms, const int activation,
                                  int32_t first, const int count, double *restrict out, const double *values,
                                  int lane0, const int part) {
    const int32_t k = terms[0], n = terms[1];
    const int32_t *x_slots = terms + 2;
    const int32_t *neuron = terms + 2 + n + (ptrdiff_t)first * (n + 1);     /* start, w1, ..., wn */
    double total[FG_MOST_NEURONS][FG_LANES];
    for (int q = 0; q < count; q++) {
        const double start = program->uniform_values[neuron[q * (n + 1)] - program->uniform_begin];
        for (int l = 0; l < part; l++)
            total[q][l] = start;
    }
    for (int32_t j = 0; j < n; j++) {
        const double *x = values + (ptrdiff_t)x_slots[j] * FG_LANES + lane0;
        for (int q = 0; q < count; q++) {
            const double weight = program->uniform_values[neuron[q * (n + 1) + 1 + j] - program->uniform_begin];
            for (int l = 0; l < part; l++) {
                double product;
                fg_mul_forward(weight, x[l], 0.0, &product);
                fg_add_forward(total[q][l], product, 0.0, &total[q][l]);
            }
        }
    }
    for (int q = 0; q < count; q++) {
        if (activation == FG_LEAF)
            for (int l = 0; l < part; l++)
                out[(ptrdiff_t)(first + q) * FG_LANES + lane0 + l] = total[q][l];
        else          /* the sums are read by their activations alone, which need them no more (lanes.h) */
            fg_activation_forward(activation, total[q], out + (ptrdiff_t)(k + first + q) * FG_LANES + lane0, part);
    }
}

FG_KERNEL void fg_layer_forward(const fg_lane_program *program, const int32_t *terms, const int activation,
                                double *restrict out, const double *values, const int part, const int neurons) {
    const int32_t k = terms[0];
    for (int lane0 = 0; lane0 < FG_LANES; lane0 += part) {
        int32_t first = 0;
        for (; first + neurons <= k; first += neurons)
            fg_neurons_forward(program, terms, activation, first, neurons, out, values, lane0, part);
        for (; first < k; first++)
            fg_neurons_forward(program, terms, activation, first, 1, out, values, lane0, part);
    }
}

/* Inputs a layer's backward pass takes side by side, as many as the width's vector registers hold: each neuron's
   grad is then loaded once for them (measured on a 16 x 16 layer, a 2-core Xeon: AVX-512's backward took 0.86
   times the time with one; AVX2 spills two inputs' numbers and takes one). */
#define FG_MOST_INPUTS 2

FG_KERNEL int fg_grad_read(const fg_lane_program *program, int32_t slot) {
    return slot < program->inputs_begin || program->uniform_begin <= slot;
}

/* A layer's backward pass but its activations': one copy per width (layer_backward.h, included below for each,
   its part of a block's lanes and inputs side by side as the width's registers hold them). */
typedef void fg_layer_weights_backward(const fg_lane_program *program, const int32_t *terms, double *grad,
                                       const double *values, double *grads);

#define FG_VECTOR_SUFFIX baseline
#define FG_VECTOR_TARGET
#define FG_VECTOR double
#define FG_VECTOR_DOUBLES 1
#define FG_VECTOR_LOAD(p) (*(p))
#define FG_VECTOR_STORE(p, v) (*(p) = (v))
#define FG_VECTOR_SPLAT(x) (x)
#define FG_VECTOR_ADD(a, b) ((a) + (b))
#define FG_VECTOR_MUL(a, b) ((a) * (b))
#if defined(__aarch64__) || defined(FP_FAST_FMA)
#define FG_VECTOR_MUL_ADD(a, b, c) fma(a, b, c)
#define FG_VECTOR_FUSES 1
#else         /* x86-64's baseline has no FMA (unless built for it, -mfma): C's fma() is a call there (measured:
                 ten times the backward pass's time) */
#define FG_VECTOR_MUL_ADD(a, b, c) ((c) + (a) * (b))
#define FG_VECTOR_FUSES 0
#endif
#define FG_VECTOR_PART 16
#define FG_VECTOR_INPUTS 1
#include "layer_backward.h"
#if FG_X86_TARGETS
#define FG_VECTOR_SUFFIX avx2
#define FG_VECTOR_TARGET __attribute__((target(FG_AVX2_TARGET)))
#define FG_VECTOR __m256d
#define FG_VECTOR_DOUBLES 4
#define FG_VECTOR_LOAD _mm256_loadu_pd
#define FG_VECTOR_STORE _mm256_storeu_pd
#define FG_VECTOR_SPLAT _mm256_set1_pd
#define FG_VECTOR_ADD _mm256_add_pd
#define FG_VECTOR_MUL _mm256_mul_pd
#define FG_VECTOR_MUL_ADD _mm256_fmadd_pd
#define FG_VECTOR_FUSES 1
#define FG_VECTOR_PART 16
#define FG_VECTOR_INPUTS 1
#include "layer_backward.h"
#define FG_VECTOR_SUFFIX avx512
#define FG_VECTOR_TARGET __attribute__((target(FG_AVX512_TARGET)))
#define FG_VECTOR __m512d
#define FG_VECTOR_DOUBLES 8
#define FG_VECTOR_LOAD _mm512_loadu_pd
#define FG_VECTOR_STORE _mm512_storeu_pd
#define FG_VECTOR_SPLAT _mm512_set1_pd
#define FG_VECTOR_ADD _mm512_add_pd
#define FG_VECTOR_MUL _mm512_mul_pd
#define FG_VECTOR_MUL_ADD _mm512_fmadd_pd
#define FG_VECTOR_FUSES 1
#define FG_VECTOR_PART 32
#define FG_VECTOR_INPUTS FG_MOST_INPUTS
#include "layer_backward.h"
#endif

FG_KERNEL void fg_layer_backward(const fg_lane_program *program, const int32_t *terms, const int activation,
                                 const double *out, double *grad, const double *values, double *grads,
                                 fg_layer_weights_backward *weights_backward) {
    /* Each neuron's grad, 0.0 + its grad as in fg_dot_backward, or its activation's share (in the
       activation's grad slots: grad, the k sums' grads then the k activations', is scratch of this block); then
       the inputs', weights' and starts' grads. */
    const int32_t k = terms[0];
    double *neuron_grads = activation != FG_LEAF ? grad + (ptrdiff_t)k * FG_LANES : grad;
    for (int32_t i = 0; i < k; i++) {
        double *inner = neuron_grads + (ptrdiff_t)i * FG_LANES;
        if (activation != FG_LEAF)
            fg_activation_backward(activation, inner, out + (ptrdiff_t)(k + i) * FG_LANES);
        else
            FG_EACH_LANE inner[l] = 0.0 + inner[l];
    }
    weights_backward(program, terms, neuron_grads, values, grads);
}

/* The loops read the program through a copy of its header on their own stack: Python's headers make the build
   -fno-strict-aliasing, so any double stored through `values` or `grads` might otherwise have changed the
   header, and every term would wait on reloading it (perf: the weight's broadcast was the hottest instruction). */
#define FG_LOCAL_PROGRAM(program) \
    const fg_lane_program local_program = *(program); \
    program = &local_program

FG_KERNEL fg_lane_failure fg_lanes_forward_body(const fg_lane_program *program, double *values, const int part,
                                                const int neurons) {
    fg_lane_failure failure = {-1, 0, FG_OK};
    FG_LOCAL_PROGRAM(program);
    for (ptrdiff_t i = 0; i < program->instructions; i++) {
        const fg_lane_instruction ins = program->code[i];
        double *restrict out = values + (ptrdiff_t)ins.out * FG_LANES;
        const double *a = values + (ptrdiff_t)ins.a * FG_LANES;
        const double *b = values + (ptrdiff_t)ins.b * FG_LANES;
        int refused = 0;
        switch (ins.op) {
        case FG_LANE_DOT:
            fg_dot_forward(program, program->terms + ins.b, a, out, values);
            break;
        case FG_LANE_LAYER:
            fg_layer_forward(program, program->terms + ins.b, ins.a, out, values, part, neurons);
            break;
#define FG_FORWARD_LANES(code, kernel) \
        case code: FG_EACH_LANE refused |= kernel##_forward(a[l], b[l], b[l], &out[l]) != FG_OK; break;
        FG_KERNEL_OPS(FG_FORWARD_LANES)
#undef FG_FORWARD_LANES
        default:               /* CUSTOM: its data is given */
            break;
        }
        if (refused) {         /* rare: find the lowest lane and its status, once */
            for (int l = 0; l < FG_LANES; l++) {
                double scratch;
                fg_status status = fg_forward(ins.op, a[l], b[l], b[l], &scratch);
                if (status != FG_OK) {
                    failure.instruction = i;
                    failure.lane = l;
                    failure.status = status;
                    return failure;
                }
            }
        }
    }
    return failure;
}

FG_KERNEL void fg_lanes_backward_body(const fg_lane_program *program, const double *values, double *grads,
                                      fg_layer_weights_backward *weights_backward) {
    FG_LOCAL_PROGRAM(program);
    for (ptrdiff_t i = program->instructions - 1; i >= 0; i--) {
        const fg_lane_instruction ins = program->code[i];
        const double *out = values + (ptrdiff_t)ins.out * FG_LANES;
        double *grad = grads + (ptrdiff_t)ins.out * FG_LANES;
        const double *a = values + (ptrdiff_t)ins.a * FG_LANES;
        const double *b = values + (ptrdiff_t)ins.b * FG_LANES;
        double *a_grad = grads + (ptrdiff_t)ins.a * FG_LANES;
        double *b_grad = grads + (ptrdiff_t)ins.b * FG_LANES;
        switch (ins.op) {
        case FG_LANE_DOT:
            fg_dot_backward(program, program->terms + ins.b, ins.a, grad, values, grads);
            break;
        case FG_LANE_LAYER:
            fg_layer_backward(program, program->terms + ins.b, ins.a, out, grad, values, grads, weights_backward);
            break;
/* A one-child op's b is the scratch slot (or an exponent's): its grad is not added to, which saved a load and a
   store a lane for each neuron's relu. */
#define FG_BACKWARD_LANES(code, kernel) \
        case code: \
            FG_EACH_LANE { \
                double da = 0.0, db = 0.0; \
                kernel##_derivative(grad[l], out[l], a[l], b[l], b[l], &da, &db); \
                a_grad[l] += da; \
                if (fg_facts(code).arity == 2) \
                    b_grad[l] += db; \
                grad[l] = 0.0; \
            } \
            break;
        FG_KERNEL_OPS(FG_BACKWARD_LANES)
#undef FG_BACKWARD_LANES
        default:               /* CUSTOM: nothing flows through it, as in the seed */
            FG_EACH_LANE grad[l] = 0.0;
            break;
        }
    }
}

FG_KERNEL void fg_take_lane_sums_body(double *slots, double *folded, ptrdiff_t count,
                                      const unsigned char *lanes_added, double *sums) {
    /* Eight running sums, each from a folded number and every eighth lane, then a fixed tree over the eight:
       vertical adds a vector unit of any width makes, and no order left to the compiler. Lanes of zeros add
       + 0.0 to each, once as often: the same bits (the moons step reads its 338 weights' lanes no more: 2% of
       its time). */
    for (ptrdiff_t k = 0; k < count; k++) {
        double *lane = slots + k * FG_LANES;
        double part[8];
        for (int i = 0; i < 8; i++)
            part[i] = folded[k * 8 + i];
        if (lanes_added == NULL || lanes_added[k]) {
            for (int group = 0; group < FG_LANES / 8; group++)
                for (int i = 0; i < 8; i++)
                    part[i] += lane[group * 8 + i];
            memset(lane, 0, FG_LANES * sizeof(double));
        } else {
            for (int i = 0; i < 8; i++)
                part[i] += 0.0;
        }
        sums[k] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        memset(folded + k * 8, 0, 8 * sizeof(double));
    }
}

/* One copy of the loops per width. GCC and Clang compile a function for the target its attribute names; the
   inline bodies and kernels are compiled into it. Elsewhere (MSVC, other architectures) the baseline only:
   SSE2 on x86-64, NEON on aarch64, both 2 doubles wide. A layer's forward pass takes part of a block's lanes at
   a time and sums a few neurons side by side, as the width's registers hold them; its backward pass takes the
   parts and inputs given with each width's vector above (measured on a layer of 16 x 16, a 2-core Xeon: taken
   whole, AVX2's backward had spilled its sums to the stack and took 3.5 times AVX-512's time). */
#define FG_LANE_LOOPS(suffix, attribute, forward_part, neurons) \
    attribute static fg_lane_failure fg_lanes_forward_##suffix(const fg_lane_program *program, double *values) { \
        FG_STATIC_ASSERT(FG_LANES % (forward_part) == 0 && (neurons) <= FG_MOST_NEURONS); \
        return fg_lanes_forward_body(program, values, forward_part, neurons); \
    } \
    attribute static void fg_lanes_backward_##suffix(const fg_lane_program *program, const double *values, \
                                                     double *grads) { \
        fg_lanes_backward_body(program, values, grads, fg_layer_weights_backward_##suffix); \
    } \
    attribute static void fg_take_lane_sums_##suffix(double *slots, double *folded, ptrdiff_t count, \
                                                     const unsigned char *lanes_added, double *sums) { \
        fg_take_lane_sums_body(slots, folded, count, lanes_added, sums); \
    } \
    static const fg_lane_loops fg_lane_loops_##suffix = { \
        #suffix, fg_backward_fuses_##suffix, fg_lanes_forward_##suffix, fg_lanes_backward_##suffix, \
        fg_take_lane_sums_##suffix};

FG_LANE_LOOPS(baseline, , 8, 2)
#if FG_X86_TARGETS
FG_LANE_LOOPS(avx2, __attribute__((target(FG_AVX2_TARGET))), 8, 4)
FG_LANE_LOOPS(avx512, __attribute__((target(FG_AVX512_TARGET))), 32, FG_MOST_NEURONS)
#endif

FG_HIDDEN const fg_lane_loops *fg_lane_loops_for(const char *wanted) {
    int any = wanted == NULL || wanted[0] == '\0';
#if FG_X86_TARGETS
    __builtin_cpu_init();
    if ((any || strcmp(wanted, "avx512") == 0) && __builtin_cpu_supports("avx512f"))
        return &fg_lane_loops_avx512;
    if ((any || strcmp(wanted, "avx2") == 0) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &fg_lane_loops_avx2;
#endif
    if (any || strcmp(wanted, "baseline") == 0)
        return &fg_lane_loops_baseline;
    return NULL;
}
