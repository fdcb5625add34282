/* The op kernels: the only copy of each op's math, on doubles. The eager ops (engine.pyx), the compiled
   replay (replay.pyx) and the batched replay's lane loops (lanes.h) all call them, inlined, so an op is
   added or fixed here and nowhere else. _ops.pxd declares them for Cython under the names without `fg_`.

   Per op, side by side as in micrograd's engine.py:
     fg_<op>_forward(a, b, k, &out)               out = the op on its children's data (b: second child, k: the
                                                  exponent of `x ** k`); returns FG_OK, or the domain error,
                                                  and then leaves out as it was;
     fg_<op>_derivative(g, out, a, b, k, &da, &db)  what the node's grad g adds to each child's grad (db only
                                                  for two-child ops), given the node's data `out`;
     fg_<op>_derivative_ops(g, a, b, k, &da, &db)  the same derivative as steps of ops (see "Derivatives as
                                                  ops"), which grad(create_graph=True) builds into nodes.
   Adding an op: its code in fg_op and its row in fg_facts' table, its three kernels, its entry in
   FG_KERNEL_OPS (at the end), and a method on Value (engine.pyx).

   Derivatives divide as IEEE does (x/0 -> inf, nan): a forward never admits a zero divisor, but a user may set
   `data` to 0 afterwards, and an inf or nan grad is then the honest answer (as in PyTorch). Where a local
   derivative is 0 whatever the data (relu below 0, x ** 0), it is 0 whatever grad reaches it, as in PyTorch:
   0 * inf would make it nan.

   NaN bits: a NaN operand gives the same NaN on every path (eager, replay, lanes), but for one case. Where two
   NaNs meet in `x + y` or `x * y` (an op's, a derivative's, or an addition into a grad), x86 returns the first
   operand's, and C lets the compiler put a commutative op's operands in either order, which it does differently
   in each inlined copy: the result is a NaN, but which of the two may differ between paths. Picking it with a
   select after each + and * cost 8-12% of the scalar replay's forward and 37% of the batched forward (or, the
   select written the other way, 35-40% and 2-8%; a 2-core Intel Xeon VM, GCC 12), so it is documented instead.
   x - y and x / y keep the first operand's (no compiler swaps them), pow is one libm function everywhere.

   Plain C with no Python in it, so the lane loops can be compiled for several SIMD widths in one module
   (lanes.h). Build with -ffp-contract=off: `acc + w * x` contracted into one FMA would round once where
   Python rounds twice (setup.py). */
#ifndef FASTGRAD_OPS_H
#define FASTGRAD_OPS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "portability.h"

typedef enum {
    FG_LEAF,          /* made by the user: no children, nothing to propagate */
    FG_CUSTOM,        /* made by the user with _children/_op: like the seed's, its _backward does nothing */
    FG_ADD,
    FG_SUB,
    FG_MUL,
    FG_DIV,
    FG_NEG,
    FG_POW_CONST,     /* x ** k with k a number stored in the node */
    FG_POW,           /* x ** y with y a Value */
    FG_TANH,
    FG_EXP,
    FG_LOG,
    FG_RELU,
    FG_SIGMOID,
    FG_SOFTPLUS,
    FG_GATE,          /* b where a > 0 (or is nan), else 0: relu's derivative, for grad(create_graph=True) */
    FG_SIN,
    FG_COS,
    FG_SQRT,
    FG_ABS,
    FG_QUOTIENT,      /* a / b as IEEE divides (inf, nan at 0): what derivatives divide with, for grad */
    FG_SIGN,          /* 1, -1, or 0 (at 0 and nan): abs's slope, for grad */
    FG_PYTHON,        /* a fastgrad.op node: its forward and derivative are Python functions on floats, which
                         the engine and the replays call per node (engine.pyx, "Custom ops"); no kernels here */
    FG_OP_COUNT
} fg_op;

typedef struct {
    const char *name;         /* the code's name, as fastgrad.engine.OPS shows it */
    int arity;                /* children the op takes; -1: any number (PYTHON: any; CUSTOM: up to two) */
    const char *spelling;     /* `_op`, as micrograd spells it (a `**` node appends its exponent) */
} fg_op_facts;

static inline fg_op_facts fg_facts(int op) {
    static const fg_op_facts table[FG_OP_COUNT] = {
        /*                 name         arity  spelling */
        [FG_LEAF]      = {"LEAF",       0,    ""},
        [FG_CUSTOM]    = {"CUSTOM",    -1,    ""},
        [FG_ADD]       = {"ADD",        2,    "+"},
        [FG_SUB]       = {"SUB",        2,    "-"},
        [FG_MUL]       = {"MUL",        2,    "*"},
        [FG_DIV]       = {"DIV",        2,    "/"},
        [FG_NEG]       = {"NEG",        1,    "neg"},
        [FG_POW_CONST] = {"POW_CONST",  1,    "**"},
        [FG_POW]       = {"POW",        2,    "**"},
        [FG_TANH]      = {"TANH",       1,    "tanh"},
        [FG_EXP]       = {"EXP",        1,    "exp"},
        [FG_LOG]       = {"LOG",        1,    "log"},
        [FG_RELU]      = {"RELU",       1,    "ReLU"},
        [FG_SIGMOID]   = {"SIGMOID",    1,    "sigmoid"},
        [FG_SOFTPLUS]  = {"SOFTPLUS",   1,    "softplus"},
        [FG_GATE]      = {"GATE",       2,    "gate"},
        [FG_SIN]       = {"SIN",        1,    "sin"},
        [FG_COS]       = {"COS",        1,    "cos"},
        [FG_SQRT]      = {"SQRT",       1,    "sqrt"},
        [FG_ABS]       = {"ABS",        1,    "abs"},
        [FG_QUOTIENT]  = {"QUOTIENT",   2,    "quotient"},
        [FG_SIGN]      = {"SIGN",       1,    "sign"},
        [FG_PYTHON]    = {"PYTHON",    -1,    ""},     /* any number of children; `_op` is the op's name */
    };
    fg_op_facts none = {"", -2, ""};          /* not an op: no arity matches */
    return 0 <= op && op < FG_OP_COUNT ? table[op] : none;
}

typedef enum {
    FG_OK,
    FG_DIVISION_BY_ZERO,
    FG_ZERO_TO_NEGATIVE_POWER,
    FG_NEGATIVE_TO_FRACTIONAL_POWER,
    FG_POWER_OUT_OF_RANGE,
    FG_EXP_OUT_OF_RANGE,
    FG_MATH_DOMAIN
} fg_status;

/* Derivatives as ops. grad(create_graph=True) (_grad.pyx) needs each derivative as nodes, so that it can be
   differentiated again: beside each derivative kernel, the same formula as a few steps, each one op on
   registers, which the builder makes into one node each with that op's own kernels, in order. The same
   operations in the same order give the derivative kernel's bits. fg_<op>_derivative_ops(g, a, b, k, &da, &db)
   points da and db at the steps for each child (the numbers g, a, b and k choose between forms where the kernel
   branches on them). */
typedef enum {
    FG_R_NONE,        /* no steps: the kernel adds 0.0 to that child's grad (its derivative is 0 there) */
    FG_R_G,           /* the node's gradient */
    FG_R_OUT,         /* the node itself, its data `out` */
    FG_R_A,           /* its children */
    FG_R_B,
    FG_R_ONE,         /* the constant 1.0 */
    FG_R_K,           /* the constant k, the node's exponent */
    FG_R_DB1,         /* the derivative kernel's db at g = 1, as a constant: a factor flat in every leaf */
    FG_R_ZERO,        /* the constants 0.0 and 0.5 */
    FG_R_HALF,
    FG_R_K_MINUS_ONE, /* exponents, for POW_CONST steps only: k - 1, -1 and -2 */
    FG_R_MINUS_ONE,
    FG_R_MINUS_TWO,
    FG_R_T0,          /* the steps' results, in order */
    FG_R_T1,
    FG_R_T2,
    FG_R_T3,
    FG_R_T4
} fg_register;

typedef struct {
    unsigned char op, x, y;   /* an fg_op on registers; y unused by one-child ops; POW_CONST: x ** (y's number) */
} fg_step;

typedef struct {
    int steps;
    fg_step step[5];
    unsigned char result;     /* the register that holds the derivative, once the steps are made */
} fg_derivative_steps;

static const fg_derivative_steps fg_nothing = {0, {{0, 0, 0}}, FG_R_NONE};
static const fg_derivative_steps fg_just_g = {0, {{0, 0, 0}}, FG_R_G};


/* --- a + b */
FG_KERNEL fg_status fg_add_forward(double a, double b, double k, double *out) {
    (void)k;
    *out = a + b;
    return FG_OK;
}
FG_KERNEL void fg_add_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)a; (void)b; (void)k;
    *da = g;
    *db = g;
}
FG_KERNEL void fg_add_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    (void)g; (void)a; (void)b; (void)k;
    *da = *db = &fg_just_g;
}

/* --- a - b: micrograd's a + b * -1 gives the same numbers (IEEE subtraction is the addition of the negation;
   through the hidden b * -1 node b gets -1 * (0 + g), which differs from -g only for g = -0.0, and adding either
   zero into a grad that started at 0.0 gives the same bits) */
FG_KERNEL fg_status fg_sub_forward(double a, double b, double k, double *out) {
    (void)k;
    *out = a - b;
    return FG_OK;
}
FG_KERNEL void fg_sub_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)a; (void)b; (void)k;
    *da = g;
    *db = -g;
}
FG_KERNEL void fg_sub_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps minus_g = {1, {{FG_NEG, FG_R_G, FG_R_NONE}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k;
    *da = &fg_just_g;
    *db = &minus_g;
}

/* --- a * b */
FG_KERNEL fg_status fg_mul_forward(double a, double b, double k, double *out) {
    (void)k;
    *out = a * b;
    return FG_OK;
}
FG_KERNEL void fg_mul_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)k;
    *da = b * g;
    *db = a * g;
}
FG_KERNEL void fg_mul_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps b_g = {1, {{FG_MUL, FG_R_B, FG_R_G}}, FG_R_T0};
    static const fg_derivative_steps a_g = {1, {{FG_MUL, FG_R_A, FG_R_G}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k;
    *da = &b_g;
    *db = &a_g;
}

/* --- -a */
FG_KERNEL fg_status fg_neg_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = -a;
    return FG_OK;
}
FG_KERNEL void fg_neg_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)a; (void)b; (void)k; (void)db;
    *da = -g;
}
FG_KERNEL void fg_neg_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps minus_g = {1, {{FG_NEG, FG_R_G, FG_R_NONE}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &minus_g;
}

/* --- a ** k and a ** b: Python's float power, with ValueError where Python would go complex */
FG_KERNEL fg_status fg_power(double x, double k, double *out) {
    double y;
    if (isfinite(x) && isfinite(k)) {
        if (x == 0.0 && k < 0.0)
            return FG_ZERO_TO_NEGATIVE_POWER;
        if (x < 0.0 && k != floor(k))
            return FG_NEGATIVE_TO_FRACTIONAL_POWER;
    }
    y = pow(x, k);
    if (isinf(y) && isfinite(x) && isfinite(k))
        return FG_POWER_OUT_OF_RANGE;
    *out = y;
    return FG_OK;
}
FG_KERNEL fg_status fg_pow_const_forward(double a, double b, double k, double *out) {
    (void)b;
    return fg_power(a, k, out);
}
FG_KERNEL void fg_pow_const_derivative(double g, double out, double a, double b, double k,
                                       double *da, double *db) {
    (void)out; (void)b; (void)db;
    *da = k == 0.0 ? 0.0 : k * pow(a, k - 1.0) * g;     /* x ** 0 is flat, at 0 too */
}
FG_KERNEL void fg_pow_const_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                     const fg_derivative_steps **db) {
    static const fg_derivative_steps k_a_to_k_minus_1_g = {3, {
        {FG_POW_CONST, FG_R_A, FG_R_K_MINUS_ONE}, {FG_MUL, FG_R_K, FG_R_T0}, {FG_MUL, FG_R_T1, FG_R_G}}, FG_R_T2};
    (void)g; (void)a; (void)b; (void)db;
    if (k == 1.0)          /* 1 * a ** 0 * g is g for every a: no a ** 0 node to differentiate again */
        *da = &fg_just_g;
    else if (k == 0.0)
        *da = &fg_nothing;
    else
        *da = &k_a_to_k_minus_1_g;
}
FG_KERNEL fg_status fg_pow_forward(double a, double b, double k, double *out) {
    (void)k;
    return fg_power(a, b, out);
}
FG_KERNEL void fg_pow_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    double slope_in_exponent;          /* d(a**b)/db = a**b * log(a): real for a > 0 only */
    (void)k;
    if (a > 0.0)
        slope_in_exponent = out * log(a);
    else if (a == 0.0)
        slope_in_exponent = 0.0;       /* 0**b is flat in b for b > 0, the only zero base forward admits */
    else
        slope_in_exponent = NAN;
    *da = b == 0.0 ? 0.0 : b * pow(a, b - 1.0) * g;     /* as x ** 0 (the steps below: at b == 0 too) */
    *db = slope_in_exponent * g;
}
FG_KERNEL void fg_pow_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps b_a_to_b_minus_1_g = {4, {
        {FG_SUB, FG_R_B, FG_R_ONE}, {FG_POW, FG_R_A, FG_R_T0}, {FG_MUL, FG_R_B, FG_R_T1},
        {FG_MUL, FG_R_T2, FG_R_G}}, FG_R_T3};
    static const fg_derivative_steps out_log_a_g = {3, {
        {FG_LOG, FG_R_A, FG_R_NONE}, {FG_MUL, FG_R_OUT, FG_R_T0}, {FG_MUL, FG_R_T1, FG_R_G}}, FG_R_T2};
    static const fg_derivative_steps constant_g = {1, {{FG_MUL, FG_R_DB1, FG_R_G}}, FG_R_T0};
    (void)k;
    /* where the kernel branches on the children's data, the branch is chosen when the node is built. At b == 0
       the kernel's da is 0.0, flat in a but not in b (its d/db is g / a): b * a ** (b - 1) * g is that zero
       (its sign set right as it is added), wherever that product is finite; elsewhere the second derivative
       in b is infinite or nan anyway, and the zero is kept as a constant. */
    if (b == 0.0)
        *da = isfinite(g) && isfinite(a) && isfinite(1.0 / a) ? &b_a_to_b_minus_1_g : &fg_nothing;
    else
        *da = &b_a_to_b_minus_1_g;
    *db = a > 0.0 ? &out_log_a_g : &constant_g;    /* the kernel's constant slope at a == 0 and below */
}

/* --- a / b, as micrograd and the notebook compute it: a * b**-1, the power rounded first (Python's, with its
   errors: b == 0 is refused as a division by zero). The derivative is that of the two nodes the chain makes: a
   gets b**-1 * g from the product; b gets (-1 * b**-2) times the grad of the b**-1 node, which starts at 0 and
   receives a * g. Python takes b ** -1 from libm's pow, which is not always rounded as 1 / b is, and given
   a constant exponent the compiler would replace pow(b, -1.0) by 1.0 / b: the exponents are read as volatile. */
static const volatile double fg_minus_one = -1.0, fg_minus_two = -2.0;
FG_KERNEL double fg_python_pow(double x, volatile const double *k) {
    return isnan(x) ? x : pow(x, *k);          /* Python gives a NaN base back as it is, bits and all */
}
/* x * y as Python's float product is on x86: the first operand's NaN where both are NaNs (C may put a
   product's operands in either order), so that the NaN bits are the same on every path */
FG_KERNEL double fg_python_product(double x, double y) {
    return isnan(x) ? x : x * y;
}
FG_KERNEL fg_status fg_div_forward(double a, double b, double k, double *out) {
    double inverse = 0.0;
    fg_status status;
    (void)k;
    if (b == 0.0)
        return FG_DIVISION_BY_ZERO;
    status = fg_power(b, fg_minus_one, &inverse);     /* its range error, where b**-1 overflows */
    if (status != FG_OK)
        return status;
    *out = fg_python_product(a, fg_python_pow(b, &fg_minus_one));
    return FG_OK;
}
FG_KERNEL void fg_div_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    double slope = fg_python_pow(b, &fg_minus_two);
    (void)out; (void)k;
    slope = isnan(slope) ? slope : -slope;      /* -1 * slope, which keeps a NaN's sign in Python */
    *da = fg_python_product(fg_python_pow(b, &fg_minus_one), g);
    *db = fg_python_product(slope, 0.0 + fg_python_product(a, g));
}
FG_KERNEL void fg_div_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    /* the kernel's operations, as micrograd's two nodes do them; -(b**-2) for -1 * b**-2 differs in a NaN's sign
       only */
    static const fg_derivative_steps inverse_b_g = {2, {
        {FG_POW_CONST, FG_R_B, FG_R_MINUS_ONE}, {FG_MUL, FG_R_T0, FG_R_G}}, FG_R_T1};
    static const fg_derivative_steps minus_inverse_square_b_a_g = {5, {
        {FG_POW_CONST, FG_R_B, FG_R_MINUS_TWO}, {FG_NEG, FG_R_T0, FG_R_NONE}, {FG_MUL, FG_R_A, FG_R_G},
        {FG_ADD, FG_R_ZERO, FG_R_T2}, {FG_MUL, FG_R_T1, FG_R_T3}}, FG_R_T4};
    (void)g; (void)a; (void)b; (void)k;
    *da = &inverse_b_g;
    *db = &minus_inverse_square_b_a_g;
}

/* --- quotient(a, b): a / b as IEEE divides, x / 0 giving inf or nan. No method makes it: it is how the
   derivatives below divide, as ops for grad(create_graph=True) (`/` rounds as micrograd's a * b**-1). */
FG_KERNEL fg_status fg_quotient_forward(double a, double b, double k, double *out) {
    (void)k;
    *out = a / b;
    return FG_OK;
}
FG_KERNEL void fg_quotient_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)a; (void)k;
    *da = g / b;
    *db = -(g * out / b);
}
FG_KERNEL void fg_quotient_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                    const fg_derivative_steps **db) {
    static const fg_derivative_steps g_over_b = {1, {{FG_QUOTIENT, FG_R_G, FG_R_B}}, FG_R_T0};
    static const fg_derivative_steps minus_g_out_over_b = {3, {
        {FG_MUL, FG_R_G, FG_R_OUT}, {FG_QUOTIENT, FG_R_T0, FG_R_B}, {FG_NEG, FG_R_T1, FG_R_NONE}}, FG_R_T2};
    (void)g; (void)a; (void)b; (void)k;
    *da = &g_over_b;
    *db = &minus_g_out_over_b;
}

/* --- tanh(a): fastgrad's own, not libm's. Only IEEE +, -, *, / and selects: the same bits on every CPU, OS and
   SIMD width, and the lane loops compute 8 lanes at once (libm's tanh, called lane by lane, took 30% of a
   physics-informed step). Within 1.5 ulp of the exact tanh (1.38 the worst of 10^6 samples; glibc's: 2.1), checked
   by tests/test_engine.py. */
FG_KERNEL double fg_exp_plus_one(double y) {
    /* e^y + 1 for y in [1, 44]: y = k ln2 + r with Cody and Waite's two-part ln2 (r exact), |r| <= ln2/2, e^r - 1
       by its series to r^13 (the rest below 0.1 ulp), then 2^k (e^r - 1) + (2^k + 1), rounded once. */
    static const double inv_ln2 = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
                        ln2_lo = 1.90821492927058770002e-10, shift = 6755399441055744.0;     /* 1.5 * 2^52 */
    double kd = y * inv_ln2 + shift, r, r2, r4, q, p, s;
    uint64_t bits;
    memcpy(&bits, &kd, sizeof bits);                 /* k, an integer, in its low bits */
    kd -= shift;
    r = (y - kd * ln2_hi) - kd * ln2_lo;
    r2 = r * r;
    r4 = r2 * r2;
    q = ((1.0 / 2 + r * (1.0 / 6)) + r2 * (1.0 / 24 + r * (1.0 / 120)))
        + r4 * (((1.0 / 720 + r * (1.0 / 5040)) + r2 * (1.0 / 40320 + r * (1.0 / 362880)))
                + r4 * ((1.0 / 3628800 + r * (1.0 / 39916800)) + r2 * (1.0 / 479001600 + r * (1.0 / 6227020800))));
    p = r + r2 * q;
    bits = (bits + 1023) << 52;                      /* 2^k: k + 1023 in the exponent field */
    memcpy(&s, &bits, sizeof s);
    return s * p + (s + 1.0);
}
FG_KERNEL double fg_tanh(double x) {
    /* Below ln(3)/2: |x| + |x| z G(z), z = x^2, G a Chebyshev fit of (tanh(sqrt z)/sqrt z - 1)/z on [0, ln(3)^2/4]
       (mpmath.chebyfit, degree 10; off by 2e-18 of it), which is -1/3 at 0: below 2^-27 this is |x| itself.
       Above: 1 - 2 / (e^2|x| + 1), with e^44 for |x| > 22, where tanh rounds to 1. Both are computed (a select,
       no branch, for the lane loops); x's sign is set last, and a nan comes back as x + x (quieted). */
    const double ax = fabs(x), z = ax * ax;
    const double g = -0.3333333333333333 + z * (0.13333333333332728 + z * (-0.05396825396745119
        + z * (0.021869488494452378 + z * (-0.008863234415954168 + z * (0.003592110618190448
        + z * (-0.0014556637472391653 + z * (0.00058894551539517 + z * (-0.00023466287885907128
        + z * (8.515932180302729e-05 + z * -2.0634899771792012e-05)))))))));
    const double near_zero = ax + ax * (z * g);
    const double away = 1.0 - 2.0 / fg_exp_plus_one(2.0 * (ax < 22.0 ? ax : 22.0));
    return x != x ? x + x : copysign(ax < 0.5493061443340549 ? near_zero : away, x);
}
FG_KERNEL fg_status fg_tanh_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = fg_tanh(a);
    return FG_OK;
}
FG_KERNEL void fg_tanh_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)a; (void)b; (void)k; (void)db;
    *da = (1.0 - out * out) * g;
}
FG_KERNEL void fg_tanh_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                const fg_derivative_steps **db) {
    static const fg_derivative_steps one_minus_out_squared_g = {3, {
        {FG_MUL, FG_R_OUT, FG_R_OUT}, {FG_SUB, FG_R_ONE, FG_R_T0}, {FG_MUL, FG_R_T1, FG_R_G}}, FG_R_T2};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &one_minus_out_squared_g;
}

/* --- exp(a) */
FG_KERNEL fg_status fg_exp_forward(double a, double b, double k, double *out) {
    double y = exp(a);
    (void)b; (void)k;
    if (isinf(y) && isfinite(a))
        return FG_EXP_OUT_OF_RANGE;
    *out = y;
    return FG_OK;
}
FG_KERNEL void fg_exp_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)a; (void)b; (void)k; (void)db;
    *da = out * g;
}
FG_KERNEL void fg_exp_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps out_g = {1, {{FG_MUL, FG_R_OUT, FG_R_G}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &out_g;
}

/* --- log(a) */
FG_KERNEL fg_status fg_log_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    if (a <= 0.0)
        return FG_MATH_DOMAIN;
    *out = log(a);
    return FG_OK;
}
FG_KERNEL void fg_log_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)b; (void)k; (void)db;
    *da = g / a;
}
FG_KERNEL void fg_log_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps g_over_a = {1, {{FG_QUOTIENT, FG_R_G, FG_R_A}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &g_over_a;
}

/* --- relu(a) */
FG_KERNEL fg_status fg_relu_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = a < 0.0 ? 0.0 : a;
    return FG_OK;
}
FG_KERNEL void fg_relu_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)a; (void)b; (void)k; (void)db;
    *da = out <= 0.0 ? 0.0 : g;        /* PyTorch's mask: a nan output passes g on */
}
FG_KERNEL void fg_relu_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                const fg_derivative_steps **db) {
    static const fg_derivative_steps gate_out_g = {1, {{FG_GATE, FG_R_OUT, FG_R_G}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &gate_out_g;
}

/* --- sigmoid(a), in the form that cannot overflow on either side */
FG_KERNEL double fg_logistic(double x) {
    double e;
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    e = exp(x);
    return e / (1.0 + e);
}
FG_KERNEL fg_status fg_sigmoid_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = fg_logistic(a);
    return FG_OK;
}
FG_KERNEL void fg_sigmoid_derivative(double g, double out, double a, double b, double k,
                                     double *da, double *db) {
    (void)a; (void)b; (void)k; (void)db;
    *da = out * (1.0 - out) * g;
}
FG_KERNEL void fg_sigmoid_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                   const fg_derivative_steps **db) {
    static const fg_derivative_steps out_one_minus_out_g = {3, {
        {FG_SUB, FG_R_ONE, FG_R_OUT}, {FG_MUL, FG_R_OUT, FG_R_T0}, {FG_MUL, FG_R_T1, FG_R_G}}, FG_R_T2};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &out_one_minus_out_g;
}

/* --- softplus(a) = log(1 + e^a), as a + log(1 + e^-a) for a > 0 so that it cannot overflow */
FG_KERNEL fg_status fg_softplus_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = a > 0.0 ? a + log1p(exp(-a)) : log1p(exp(a));
    return FG_OK;
}
FG_KERNEL void fg_softplus_derivative(double g, double out, double a, double b, double k,
                                      double *da, double *db) {
    (void)out; (void)b; (void)k; (void)db;
    *da = fg_logistic(a) * g;
}
FG_KERNEL void fg_softplus_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                    const fg_derivative_steps **db) {
    static const fg_derivative_steps sigmoid_a_g = {
        2, {{FG_SIGMOID, FG_R_A, FG_R_NONE}, {FG_MUL, FG_R_T0, FG_R_G}}, FG_R_T1};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &sigmoid_a_g;
}

/* --- gate(a, b): b where a > 0 or a is nan, else 0.0: relu's derivative kernel as an op (a: relu's output,
   b: its grad), so that grad(create_graph=True) gives relu's bits. Flat in a; in b, it is itself. */
FG_KERNEL fg_status fg_gate_forward(double a, double b, double k, double *out) {
    (void)k;
    *out = a <= 0.0 ? 0.0 : b;
    return FG_OK;
}
FG_KERNEL void fg_gate_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)b; (void)k;
    *da = 0.0;
    *db = a <= 0.0 ? 0.0 : g;
}
FG_KERNEL void fg_gate_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                const fg_derivative_steps **db) {
    static const fg_derivative_steps gate_a_g = {1, {{FG_GATE, FG_R_A, FG_R_G}}, FG_R_T0};
    (void)g; (void)a; (void)b; (void)k;
    *da = &fg_nothing;
    *db = &gate_a_g;
}

/* --- sin(a) and cos(a), with math.sin's and math.cos's error: ValueError at an infinity */
FG_KERNEL fg_status fg_sin_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    if (isinf(a))
        return FG_MATH_DOMAIN;
    *out = sin(a);
    return FG_OK;
}
FG_KERNEL void fg_sin_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)b; (void)k; (void)db;
    *da = cos(a) * g;
}
FG_KERNEL void fg_sin_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps cos_a_g = {2, {{FG_COS, FG_R_A, FG_R_NONE}, {FG_MUL, FG_R_T0, FG_R_G}}, FG_R_T1};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &cos_a_g;
}
FG_KERNEL fg_status fg_cos_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    if (isinf(a))
        return FG_MATH_DOMAIN;
    *out = cos(a);
    return FG_OK;
}
FG_KERNEL void fg_cos_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)b; (void)k; (void)db;
    *da = -sin(a) * g;
}
FG_KERNEL void fg_cos_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps minus_sin_a_g = {3, {
        {FG_SIN, FG_R_A, FG_R_NONE}, {FG_NEG, FG_R_T0, FG_R_NONE}, {FG_MUL, FG_R_T1, FG_R_G}}, FG_R_T2};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &minus_sin_a_g;
}

/* --- sqrt(a), with math.sqrt's error: ValueError below 0 (sqrt(-0.0) is -0.0) */
FG_KERNEL fg_status fg_sqrt_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    if (a < 0.0)
        return FG_MATH_DOMAIN;
    *out = sqrt(a);
    return FG_OK;
}
FG_KERNEL void fg_sqrt_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)a; (void)b; (void)k; (void)db;
    *da = 0.5 / out * g;
}
FG_KERNEL void fg_sqrt_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                const fg_derivative_steps **db) {
    static const fg_derivative_steps half_over_out_g = {2, {
        {FG_QUOTIENT, FG_R_HALF, FG_R_OUT}, {FG_MUL, FG_R_T0, FG_R_G}}, FG_R_T1};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &half_over_out_g;
}

/* --- abs(a): its slope is the sign of a, 0 at 0 (as in PyTorch) and at nan */
FG_KERNEL double fg_sign(double a) {
    return a > 0.0 ? 1.0 : a < 0.0 ? -1.0 : 0.0;
}
FG_KERNEL fg_status fg_abs_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = fabs(a);
    return FG_OK;
}
FG_KERNEL void fg_abs_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)out; (void)b; (void)k; (void)db;
    *da = fg_sign(a) * g;
}
FG_KERNEL void fg_abs_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                               const fg_derivative_steps **db) {
    static const fg_derivative_steps sign_a_g = {2, {{FG_SIGN, FG_R_A, FG_R_NONE}, {FG_MUL, FG_R_T0, FG_R_G}}, FG_R_T1};
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &sign_a_g;
}

/* --- sign(a): abs's slope as an op, for grad(create_graph=True); flat everywhere (the kernel adds 0.0) */
FG_KERNEL fg_status fg_sign_forward(double a, double b, double k, double *out) {
    (void)b; (void)k;
    *out = fg_sign(a);
    return FG_OK;
}
FG_KERNEL void fg_sign_derivative(double g, double out, double a, double b, double k, double *da, double *db) {
    (void)g; (void)out; (void)a; (void)b; (void)k; (void)db;
    *da = 0.0;
}
FG_KERNEL void fg_sign_derivative_ops(double g, double a, double b, double k, const fg_derivative_steps **da,
                                                const fg_derivative_steps **db) {
    (void)g; (void)a; (void)b; (void)k; (void)db;
    *da = &fg_nothing;
}


/* --- dispatch on the op code. Every op with kernels, once: fg_forward(), fg_derivative() and the batched
   replay's lane loops (lanes.c) each make their switch from this list. */
#define FG_KERNEL_OPS(X) \
    X(FG_ADD, fg_add) X(FG_SUB, fg_sub) X(FG_MUL, fg_mul) X(FG_DIV, fg_div) X(FG_NEG, fg_neg) \
    X(FG_POW_CONST, fg_pow_const) X(FG_POW, fg_pow) X(FG_TANH, fg_tanh) X(FG_EXP, fg_exp) X(FG_LOG, fg_log) \
    X(FG_RELU, fg_relu) X(FG_SIGMOID, fg_sigmoid) X(FG_SOFTPLUS, fg_softplus) X(FG_GATE, fg_gate) X(FG_SIN, fg_sin) \
    X(FG_COS, fg_cos) X(FG_SQRT, fg_sqrt) X(FG_ABS, fg_abs) X(FG_QUOTIENT, fg_quotient) X(FG_SIGN, fg_sign)

/* The op's forward; LEAF, CUSTOM and PYTHON have none (their data is given) and leave out as it was. */
FG_KERNEL fg_status fg_forward(int op, double a, double b, double k, double *out) {
#define FG_FORWARD_CASE(code, kernel) case code: return kernel##_forward(a, b, k, out);
    switch (op) {
    FG_KERNEL_OPS(FG_FORWARD_CASE)
    default: return FG_OK;
    }
#undef FG_FORWARD_CASE
}

/* The op's derivative; LEAF, CUSTOM and PYTHON propagate nothing (da and db are left as they were). */
FG_KERNEL void fg_derivative(int op, double g, double out, double a, double b, double k, double *da, double *db) {
#define FG_DERIVATIVE_CASE(code, kernel) case code: kernel##_derivative(g, out, a, b, k, da, db); break;
    switch (op) {
    FG_KERNEL_OPS(FG_DERIVATIVE_CASE)
    default: break;
    }
#undef FG_DERIVATIVE_CASE
}

/* The op's derivative as ops, for each child (nothing for a child the op has not; LEAF and CUSTOM: nothing). */
FG_KERNEL void fg_derivative_ops(int op, double g, double a, double b, double k, const fg_derivative_steps **da,
                                 const fg_derivative_steps **db) {
#define FG_DERIVATIVE_OPS_CASE(code, kernel) case code: kernel##_derivative_ops(g, a, b, k, da, db); break;
    *da = *db = &fg_nothing;
    switch (op) {
    FG_KERNEL_OPS(FG_DERIVATIVE_OPS_CASE)
    default: break;
    }
#undef FG_DERIVATIVE_OPS_CASE
}

#endif
