# The op kernels: the only copy of each op's math, on doubles. The eager ops (engine.pyx) and the compiled
# replay (replay.pyx) both call them, inlined, so an op is added or fixed here and nowhere else.
#
# Per op, side by side as in micrograd's engine.py:
#   <op>_forward(a, b, k, &out)               out = the op on its children's data (b: second child, k: the
#                                             exponent of `x ** k`); returns OK, or the domain error, and then
#                                             leaves out as it was;
#   <op>_derivative(g, out, a, b, k, &da, &db)  what the node's grad g adds to each child's grad (db only for
#                                             two-child ops), given the node's data `out`.
# No Python objects and no errors raised here (noexcept nogil): the caller maps a status to Python's exception
# with op_error(), in one place. Adding an op: its code in OpCode and its row in op_facts, its two kernels,
# a case in forward() and derivative(), and a method on Value.
#
# Derivatives divide as IEEE does (x/0 -> inf, nan): a forward never admits a zero divisor, but a user may set
# `data` to 0 afterwards, and an inf or nan grad is then the honest answer (as in PyTorch).
cimport cython
from libc.math cimport NAN, exp, floor, isfinite, isinf, log, log1p, pow, tanh


cdef enum OpCode:
    LEAF          # made by the user: no children, nothing to propagate
    CUSTOM        # made by the user with _children/_op: like the seed's, its _backward does nothing
    ADD
    SUB
    MUL
    DIV
    NEG
    POW_CONST     # x ** k with k a number stored in the node
    POW           # x ** y with y a Value
    TANH
    EXP
    LOG
    RELU
    SIGMOID
    SOFTPLUS
    OP_COUNT


cdef struct OpFacts:
    const char* name          # the code's name, as fastgrad.engine.OPS shows it
    int arity                 # children the op takes; -1: any number up to two
    const char* spelling      # `_op`, as micrograd spells it (a `**` node appends its exponent)


cdef inline OpFacts op_facts(int op) noexcept nogil:
    #                                  name         arity  spelling
    if op == LEAF:      return OpFacts(b"LEAF",      0,    b"")
    if op == CUSTOM:    return OpFacts(b"CUSTOM",   -1,    b"")
    if op == ADD:       return OpFacts(b"ADD",       2,    b"+")
    if op == SUB:       return OpFacts(b"SUB",       2,    b"-")
    if op == MUL:       return OpFacts(b"MUL",       2,    b"*")
    if op == DIV:       return OpFacts(b"DIV",       2,    b"/")
    if op == NEG:       return OpFacts(b"NEG",       1,    b"neg")
    if op == POW_CONST: return OpFacts(b"POW_CONST", 1,    b"**")
    if op == POW:       return OpFacts(b"POW",       2,    b"**")
    if op == TANH:      return OpFacts(b"TANH",      1,    b"tanh")
    if op == EXP:       return OpFacts(b"EXP",       1,    b"exp")
    if op == LOG:       return OpFacts(b"LOG",       1,    b"log")
    if op == RELU:      return OpFacts(b"RELU",      1,    b"ReLU")
    if op == SIGMOID:   return OpFacts(b"SIGMOID",   1,    b"sigmoid")
    if op == SOFTPLUS:  return OpFacts(b"SOFTPLUS",  1,    b"softplus")
    return OpFacts(b"", -2, b"")          # not an op: no arity matches


cdef enum Status:
    OK
    DIVISION_BY_ZERO
    ZERO_TO_NEGATIVE_POWER
    NEGATIVE_TO_FRACTIONAL_POWER
    POWER_OUT_OF_RANGE
    EXP_OUT_OF_RANGE
    LOG_DOMAIN


cdef inline object op_error(Status status):
    """The exception Python's float arithmetic and math module raise where a kernel reported status."""
    if status == DIVISION_BY_ZERO:
        return ZeroDivisionError("float division by zero")
    if status == ZERO_TO_NEGATIVE_POWER:
        return ZeroDivisionError("0.0 cannot be raised to a negative power")
    if status == NEGATIVE_TO_FRACTIONAL_POWER:
        return ValueError("a negative number cannot be raised to a fractional power "
                          "(fastgrad does not make complex numbers)")
    if status == POWER_OUT_OF_RANGE:
        return OverflowError("numerical result out of range")
    if status == EXP_OUT_OF_RANGE:
        return OverflowError("math range error")
    return ValueError("math domain error")


# --- a + b
cdef inline Status add_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = a + b
    return OK

cdef inline void add_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = g
    db[0] = g


# --- a - b
cdef inline Status sub_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = a - b
    return OK

cdef inline void sub_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = g
    db[0] = -g


# --- a * b
cdef inline Status mul_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = a * b
    return OK

cdef inline void mul_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = b * g
    db[0] = a * g


# --- a / b
@cython.cdivision(True)       # the zero divisor is refused first
cdef inline Status div_forward(double a, double b, double k, double* out) noexcept nogil:
    if b == 0.0:
        return DIVISION_BY_ZERO
    out[0] = a / b
    return OK

@cython.cdivision(True)       # IEEE division, see the top of this file
cdef inline void div_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = g / b
    db[0] = -(g * out / b)


# --- -a
cdef inline Status neg_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = -a
    return OK

cdef inline void neg_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = -g


# --- a ** k and a ** b: Python's float power, with ValueError where Python would go complex
cdef inline Status power(double x, double k, double* out) noexcept nogil:
    cdef double y
    if isfinite(x) and isfinite(k):
        if x == 0.0 and k < 0.0:
            return ZERO_TO_NEGATIVE_POWER
        if x < 0.0 and k != floor(k):
            return NEGATIVE_TO_FRACTIONAL_POWER
    y = pow(x, k)
    if isinf(y) and isfinite(x) and isfinite(k):
        return POWER_OUT_OF_RANGE
    out[0] = y
    return OK

cdef inline Status pow_const_forward(double a, double b, double k, double* out) noexcept nogil:
    return power(a, k, out)

cdef inline void pow_const_derivative(double g, double out, double a, double b, double k,
                                      double* da, double* db) noexcept nogil:
    da[0] = k * pow(a, k - 1.0) * g

cdef inline Status pow_forward(double a, double b, double k, double* out) noexcept nogil:
    return power(a, b, out)

cdef inline void pow_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    cdef double slope_in_exponent      # d(a**b)/db = a**b * log(a): real for a > 0 only
    if a > 0.0:
        slope_in_exponent = out * log(a)
    elif a == 0.0:
        slope_in_exponent = 0.0        # 0**b is flat in b for b > 0, the only zero base forward admits
    else:
        slope_in_exponent = NAN
    da[0] = b * pow(a, b - 1.0) * g
    db[0] = slope_in_exponent * g


# --- tanh(a): C's tanh, stable where the seed's (e^2x - 1)/(e^2x + 1) overflows
cdef inline Status tanh_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = tanh(a)
    return OK

cdef inline void tanh_derivative(double g, double out, double a, double b, double k,
                                 double* da, double* db) noexcept nogil:
    da[0] = (1.0 - out * out) * g


# --- exp(a)
cdef inline Status exp_forward(double a, double b, double k, double* out) noexcept nogil:
    cdef double y = exp(a)
    if isinf(y) and isfinite(a):
        return EXP_OUT_OF_RANGE
    out[0] = y
    return OK

cdef inline void exp_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = out * g


# --- log(a)
cdef inline Status log_forward(double a, double b, double k, double* out) noexcept nogil:
    if a <= 0.0:
        return LOG_DOMAIN
    out[0] = log(a)
    return OK

@cython.cdivision(True)       # IEEE division, see the top of this file
cdef inline void log_derivative(double g, double out, double a, double b, double k,
                                double* da, double* db) noexcept nogil:
    da[0] = g / a


# --- relu(a)
cdef inline Status relu_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = 0.0 if a < 0.0 else a
    return OK

cdef inline void relu_derivative(double g, double out, double a, double b, double k,
                                 double* da, double* db) noexcept nogil:
    da[0] = (1.0 if out > 0.0 else 0.0) * g


# --- sigmoid(a), in the form that cannot overflow on either side
cdef inline double logistic(double x) noexcept nogil:
    cdef double e
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)

cdef inline Status sigmoid_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = logistic(a)
    return OK

cdef inline void sigmoid_derivative(double g, double out, double a, double b, double k,
                                    double* da, double* db) noexcept nogil:
    da[0] = out * (1.0 - out) * g


# --- softplus(a) = log(1 + e^a), as a + log(1 + e^-a) for a > 0 so that it cannot overflow
cdef inline Status softplus_forward(double a, double b, double k, double* out) noexcept nogil:
    out[0] = a + log1p(exp(-a)) if a > 0.0 else log1p(exp(a))
    return OK

cdef inline void softplus_derivative(double g, double out, double a, double b, double k,
                                     double* da, double* db) noexcept nogil:
    da[0] = logistic(a) * g


# --- dispatch on the op code: one switch, every kernel inlined into it
cdef inline Status forward(int op, double a, double b, double k, double* out) noexcept nogil:
    """The op's forward; LEAF and CUSTOM have none (their data is given) and leave out as it was."""
    if op == ADD:       return add_forward(a, b, k, out)
    if op == SUB:       return sub_forward(a, b, k, out)
    if op == MUL:       return mul_forward(a, b, k, out)
    if op == DIV:       return div_forward(a, b, k, out)
    if op == NEG:       return neg_forward(a, b, k, out)
    if op == POW_CONST: return pow_const_forward(a, b, k, out)
    if op == POW:       return pow_forward(a, b, k, out)
    if op == TANH:      return tanh_forward(a, b, k, out)
    if op == EXP:       return exp_forward(a, b, k, out)
    if op == LOG:       return log_forward(a, b, k, out)
    if op == RELU:      return relu_forward(a, b, k, out)
    if op == SIGMOID:   return sigmoid_forward(a, b, k, out)
    if op == SOFTPLUS:  return softplus_forward(a, b, k, out)
    return OK


cdef inline void derivative(int op, double g, double out, double a, double b, double k,
                            double* da, double* db) noexcept nogil:
    """The op's derivative; LEAF and CUSTOM propagate nothing (da and db are left as they were)."""
    if op == ADD:         add_derivative(g, out, a, b, k, da, db)
    elif op == SUB:       sub_derivative(g, out, a, b, k, da, db)
    elif op == MUL:       mul_derivative(g, out, a, b, k, da, db)
    elif op == DIV:       div_derivative(g, out, a, b, k, da, db)
    elif op == NEG:       neg_derivative(g, out, a, b, k, da, db)
    elif op == POW_CONST: pow_const_derivative(g, out, a, b, k, da, db)
    elif op == POW:       pow_derivative(g, out, a, b, k, da, db)
    elif op == TANH:      tanh_derivative(g, out, a, b, k, da, db)
    elif op == EXP:       exp_derivative(g, out, a, b, k, da, db)
    elif op == LOG:       log_derivative(g, out, a, b, k, da, db)
    elif op == RELU:      relu_derivative(g, out, a, b, k, da, db)
    elif op == SIGMOID:   sigmoid_derivative(g, out, a, b, k, da, db)
    elif op == SOFTPLUS:  softplus_derivative(g, out, a, b, k, da, db)
