# The op kernels for Cython: each op's forward and derivative on doubles live in src/ops.h (the only copy of
# op math, plain C so the batched replay's lane loops can compile them for several SIMD widths); here they are
# declared under their names without `fg_`, and op_error() maps a kernel's status to Python's exception, in
# one place. The eager ops (engine.pyx) call each kernel by name; the replays call forward() and derivative().

cdef extern from "ops.h" nogil:
    ctypedef enum OpCode "fg_op":
        LEAF "FG_LEAF"
        CUSTOM "FG_CUSTOM"
        ADD "FG_ADD"
        SUB "FG_SUB"
        MUL "FG_MUL"
        DIV "FG_DIV"
        NEG "FG_NEG"
        POW_CONST "FG_POW_CONST"
        POW "FG_POW"
        TANH "FG_TANH"
        EXP "FG_EXP"
        LOG "FG_LOG"
        RELU "FG_RELU"
        SIGMOID "FG_SIGMOID"
        SOFTPLUS "FG_SOFTPLUS"
        GATE "FG_GATE"
        SIN "FG_SIN"
        COS "FG_COS"
        SQRT "FG_SQRT"
        ABS "FG_ABS"
        QUOTIENT "FG_QUOTIENT"
        SIGN "FG_SIGN"
        PYTHON "FG_PYTHON"
        OP_COUNT "FG_OP_COUNT"

    ctypedef struct OpFacts "fg_op_facts":
        const char* name          # the code's name, as fastgrad.engine.OPS shows it
        int arity                 # children the op takes; -1: any number (PYTHON: any; CUSTOM: up to two)
        const char* spelling      # `_op`, as micrograd spells it (a `**` node appends its exponent)

    OpFacts op_facts "fg_facts" (int op) noexcept

    ctypedef enum Status "fg_status":
        OK "FG_OK"
        DIVISION_BY_ZERO "FG_DIVISION_BY_ZERO"
        ZERO_TO_NEGATIVE_POWER "FG_ZERO_TO_NEGATIVE_POWER"
        NEGATIVE_TO_FRACTIONAL_POWER "FG_NEGATIVE_TO_FRACTIONAL_POWER"
        POWER_OUT_OF_RANGE "FG_POWER_OUT_OF_RANGE"
        EXP_OUT_OF_RANGE "FG_EXP_OUT_OF_RANGE"
        MATH_DOMAIN "FG_MATH_DOMAIN"

    Status add_forward "fg_add_forward" (double a, double b, double k, double* out) noexcept
    void add_derivative "fg_add_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status sub_forward "fg_sub_forward" (double a, double b, double k, double* out) noexcept
    void sub_derivative "fg_sub_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status mul_forward "fg_mul_forward" (double a, double b, double k, double* out) noexcept
    void mul_derivative "fg_mul_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status div_forward "fg_div_forward" (double a, double b, double k, double* out) noexcept
    void div_derivative "fg_div_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status neg_forward "fg_neg_forward" (double a, double b, double k, double* out) noexcept
    void neg_derivative "fg_neg_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status pow_const_forward "fg_pow_const_forward" (double a, double b, double k, double* out) noexcept
    void pow_const_derivative "fg_pow_const_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status pow_forward "fg_pow_forward" (double a, double b, double k, double* out) noexcept
    void pow_derivative "fg_pow_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status tanh_forward "fg_tanh_forward" (double a, double b, double k, double* out) noexcept
    void tanh_derivative "fg_tanh_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status exp_forward "fg_exp_forward" (double a, double b, double k, double* out) noexcept
    void exp_derivative "fg_exp_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status log_forward "fg_log_forward" (double a, double b, double k, double* out) noexcept
    void log_derivative "fg_log_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status relu_forward "fg_relu_forward" (double a, double b, double k, double* out) noexcept
    void relu_derivative "fg_relu_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status sigmoid_forward "fg_sigmoid_forward" (double a, double b, double k, double* out) noexcept
    void sigmoid_derivative "fg_sigmoid_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status softplus_forward "fg_softplus_forward" (double a, double b, double k, double* out) noexcept
    void softplus_derivative "fg_softplus_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status gate_forward "fg_gate_forward" (double a, double b, double k, double* out) noexcept
    void gate_derivative "fg_gate_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status sin_forward "fg_sin_forward" (double a, double b, double k, double* out) noexcept
    void sin_derivative "fg_sin_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status cos_forward "fg_cos_forward" (double a, double b, double k, double* out) noexcept
    void cos_derivative "fg_cos_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status sqrt_forward "fg_sqrt_forward" (double a, double b, double k, double* out) noexcept
    void sqrt_derivative "fg_sqrt_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    Status abs_forward "fg_abs_forward" (double a, double b, double k, double* out) noexcept
    void abs_derivative "fg_abs_derivative" (double g, double out, double a, double b, double k,
        double* da, double* db) noexcept
    double logistic "fg_logistic" (double x) noexcept
    Status forward "fg_forward" (int op, double a, double b, double k, double* out) noexcept
    void derivative "fg_derivative" (int op, double g, double out, double a, double b, double k,
                                     double* da, double* db) noexcept

    # Derivatives as ops (ops.h), for grad(create_graph=True)
    ctypedef enum Register "fg_register":
        R_NONE "FG_R_NONE"
        R_G "FG_R_G"
        R_OUT "FG_R_OUT"
        R_A "FG_R_A"
        R_B "FG_R_B"
        R_ONE "FG_R_ONE"
        R_K "FG_R_K"
        R_DB1 "FG_R_DB1"
        R_ZERO "FG_R_ZERO"
        R_HALF "FG_R_HALF"
        R_K_MINUS_ONE "FG_R_K_MINUS_ONE"
        R_MINUS_ONE "FG_R_MINUS_ONE"
        R_MINUS_TWO "FG_R_MINUS_TWO"
        R_T0 "FG_R_T0"
    ctypedef struct Step "fg_step":
        unsigned char op, x, y
    ctypedef struct DerivativeSteps "fg_derivative_steps":
        int steps
        Step step[5]
        unsigned char result
    void derivative_ops "fg_derivative_ops" (int op, double g, double a, double b, double k,
                                             const DerivativeSteps** da, const DerivativeSteps** db) noexcept


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
