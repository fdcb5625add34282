# cython: language_level=3
"""fastgrad's engine: the compiled Value node, its ops, and backward's C topological sort and sweep.

The node layout is declared in engine.pxd. Nothing here imports the rest of fastgrad.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from libc.string cimport memset
from libc.math cimport INFINITY, exp, floor, isfinite, isinf, log, log1p, pow, tanh

import numbers
import os
import sys

cdef extern from "Python.h":
    # Reference counting on the raw child and label pointers of a node (see engine.pxd).
    void incref "Py_INCREF" (PyObject*)
    void decref "Py_DECREF" (PyObject*)
    void xdecref "Py_XDECREF" (PyObject*)
    Py_ssize_t refcount "Py_REFCNT" (PyObject*)


# ---------------------------------------------------------------------------------------------------
# Numbers in, nodes out

cdef int as_double(object x, double* out) except -1:
    """Store the real number x in *out and return 1; return 0 if x is not a real number."""
    if isinstance(x, float):
        out[0] = <double>x
        return 1
    if isinstance(x, int):                       # bool too; an int beyond a double raises OverflowError
        out[0] = <double>x
        return 1
    if isinstance(x, (Value, str, bytes)) or isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real):
        return 0
    if hasattr(type(x), "__float__") or hasattr(type(x), "__index__"):   # numpy scalars, Fraction, Decimal
        out[0] = float(x)
        return 1
    return 0


cdef double real_number(object x, str what) except? -1.0:
    cdef double value
    if not as_double(x, &value):
        raise TypeError(f"{what} must be a real number, not {type(x).__name__!r}")
    return value


cdef str exact_str(object s, str what):
    """s as an exact str: a str subclass could carry a __dict__, and with it a reference cycle."""
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type(s).__name__!r}")
    return str.__str__(s)


cdef inline Value leaf(double value):
    cdef Value n = Value.__new__(Value)       # fields start zeroed: op LEAF, no children, grad 0.0
    n.value = value
    return n


cdef inline Value as_value(object x):
    """x itself if it is a Value, a new leaf if it is a number, None otherwise (-> NotImplemented)."""
    cdef double value
    if type(x) is Value:
        return <Value>x
    if as_double(x, &value):
        return leaf(value)
    return None


cdef inline Value unary_node(unsigned char op, double value, Value a):
    cdef Value n = leaf(value)
    n.op = op
    incref(<PyObject*>a)
    n.child_a = <PyObject*>a
    return n


cdef inline Value binary_node(unsigned char op, double value, Value a, Value b):
    cdef Value n = unary_node(op, value, a)
    incref(<PyObject*>b)
    n.child_b = <PyObject*>b
    return n


# ---------------------------------------------------------------------------------------------------
# The ops. Each is its forward (check the domain, then build the node) and, right below it, its local
# derivative: how the node's grad flows into its children's grads. `register` files the derivative
# under the op code and the spelling micrograd uses for `_op`. A unary op's derivative gets b = NULL.
#
# Derivatives divide as IEEE does (x/0 -> inf, nan): a forward never admits a zero divisor, but a user
# may set `data` to 0 afterwards, and an inf or nan grad is then the honest answer (as in PyTorch).

ctypedef void (*Derivative)(Value out, Value a, Value b) noexcept

cdef extern from *:
    """
    /* Cython would take a reference to each argument cast from a raw pointer, and b is NULL for
       unary ops: pass the node pointers through as the borrowed references they are. */
    #define fastgrad_call_derivative(f, out, a, b) ((f)((void *)(out), (void *)(a), (void *)(b)))
    """
    void call_derivative "fastgrad_call_derivative" (
        Derivative f, PyObject* out, PyObject* a, PyObject* b) noexcept

cdef Derivative DERIVATIVES[<int>OP_COUNT]
cdef int ARITIES[<int>OP_COUNT]                 # children the op takes; -1: any, up to two
cdef list SPELLINGS = [""] * <int>OP_COUNT

cdef void register(OpCode op, str spelling, int arity, Derivative derivative):
    DERIVATIVES[<int>op] = derivative
    ARITIES[<int>op] = arity
    SPELLINGS[<int>op] = spelling


cdef void no_derivative(Value out, Value a, Value b) noexcept:
    pass

register(LEAF, "", 0, no_derivative)
register(CUSTOM, "", -1, no_derivative)       # like the seed's `_backward = lambda: None`


cdef Value add(Value a, Value b):
    return binary_node(ADD, a.value + b.value, a, b)

cdef void add_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.gradient
    b.gradient += out.gradient

register(ADD, "+", 2, add_derivative)


cdef Value sub(Value a, Value b):
    return binary_node(SUB, a.value - b.value, a, b)

cdef void sub_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.gradient
    b.gradient -= out.gradient

register(SUB, "-", 2, sub_derivative)


cdef Value mul(Value a, Value b):
    return binary_node(MUL, a.value * b.value, a, b)

cdef void mul_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += b.value * out.gradient
    b.gradient += a.value * out.gradient

register(MUL, "*", 2, mul_derivative)


cdef Value div(Value a, Value b):
    if b.value == 0.0:
        raise ZeroDivisionError("float division by zero")
    return binary_node(DIV, a.value / b.value, a, b)

@cython.cdivision(True)   # IEEE division in derivatives, see the section comment
cdef void div_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.gradient / b.value
    b.gradient -= out.gradient * out.value / b.value

register(DIV, "/", 2, div_derivative)


cdef Value neg(Value a):
    return unary_node(NEG, -a.value, a)

cdef void neg_derivative(Value out, Value a, Value b) noexcept:
    a.gradient -= out.gradient

register(NEG, "neg", 1, neg_derivative)


cdef double checked_pow(double x, double k) except? -1.0:
    """x ** k with the errors of Python's float power, and ValueError where Python would go complex."""
    cdef double y
    if isfinite(x) and isfinite(k):
        if x == 0.0 and k < 0.0:
            raise ZeroDivisionError("0.0 cannot be raised to a negative power")
        if x < 0.0 and k != floor(k):
            raise ValueError("a negative number cannot be raised to a fractional power "
                             "(fastgrad does not make complex numbers)")
    y = pow(x, k)
    if isinf(y) and isfinite(x) and isfinite(k):
        raise OverflowError("numerical result out of range")
    return y


cdef Value pow_const(Value a, double k, bint k_is_int):
    cdef Value n = unary_node(POW_CONST, checked_pow(a.value, k), a)
    n.constant = k
    n.constant_is_int = k_is_int
    return n

cdef void pow_const_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.constant * pow(a.value, out.constant - 1.0) * out.gradient

register(POW_CONST, "**", 1, pow_const_derivative)     # `_op` appends the exponent: `**2`


cdef Value pow_value(Value a, Value b):
    return binary_node(POW, checked_pow(a.value, b.value), a, b)

cdef void pow_derivative(Value out, Value a, Value b) noexcept:
    cdef double slope_in_exponent      # d(a**b)/db = a**b * log(a): real for a > 0 only
    if a.value > 0.0:
        slope_in_exponent = out.value * log(a.value)
    elif a.value == 0.0:
        slope_in_exponent = 0.0        # 0**b is flat in b for b > 0, the only zero base forward admits
    else:
        slope_in_exponent = float("nan")
    a.gradient += b.value * pow(a.value, b.value - 1.0) * out.gradient
    b.gradient += slope_in_exponent * out.gradient

register(POW, "**", 2, pow_derivative)


cdef Value tanh_(Value a):
    return unary_node(TANH, tanh(a.value), a)    # C tanh: stable where (e^2x-1)/(e^2x+1) overflows

cdef void tanh_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += (1.0 - out.value * out.value) * out.gradient

register(TANH, "tanh", 1, tanh_derivative)


cdef Value exp_(Value a):
    cdef double y = exp(a.value)
    if isinf(y) and isfinite(a.value):
        raise OverflowError("math range error")
    return unary_node(EXP, y, a)

cdef void exp_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.value * out.gradient

register(EXP, "exp", 1, exp_derivative)


cdef Value log_(Value a):
    if a.value <= 0.0:
        raise ValueError("math domain error")
    return unary_node(LOG, log(a.value), a)

@cython.cdivision(True)   # IEEE division in derivatives, see the section comment
cdef void log_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.gradient / a.value

register(LOG, "log", 1, log_derivative)


cdef Value relu(Value a):
    return unary_node(RELU, 0.0 if a.value < 0.0 else a.value, a)

cdef void relu_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += (1.0 if out.value > 0.0 else 0.0) * out.gradient

register(RELU, "ReLU", 1, relu_derivative)


cdef Value sigmoid(Value a):
    cdef double e
    if a.value >= 0.0:
        return unary_node(SIGMOID, 1.0 / (1.0 + exp(-a.value)), a)
    e = exp(a.value)                               # the form that cannot overflow for x < 0
    return unary_node(SIGMOID, e / (1.0 + e), a)

cdef void sigmoid_derivative(Value out, Value a, Value b) noexcept:
    a.gradient += out.value * (1.0 - out.value) * out.gradient

register(SIGMOID, "sigmoid", 1, sigmoid_derivative)


cdef Value softplus(Value a):
    # log(1 + e^x) in the form that cannot overflow: x + log(1 + e^-x) for x > 0
    if a.value > 0.0:
        return unary_node(SOFTPLUS, a.value + log1p(exp(-a.value)), a)
    return unary_node(SOFTPLUS, log1p(exp(a.value)), a)

cdef void softplus_derivative(Value out, Value a, Value b) noexcept:
    cdef double e
    if a.value >= 0.0:                              # sigmoid(x), as sigmoid computes it
        a.gradient += 1.0 / (1.0 + exp(-a.value)) * out.gradient
    else:
        e = exp(a.value)
        a.gradient += e / (1.0 + e) * out.gradient

register(SOFTPLUS, "softplus", 1, softplus_derivative)


cdef inline void propagate(PyObject* node) noexcept:
    """Run one node's local derivative: add its grad, scaled, into its children's grads."""
    call_derivative(DERIVATIVES[(<Value>node).op], node, (<Value>node).child_a, (<Value>node).child_b)


def weighted_sum(weights, inputs, start):
    """start + w0*x0 + w1*x1 + ..., left to right over zip(weights, inputs): the nodes and numbers of
    `sum((w * x for w, x in zip(weights, inputs)), start)`, a neuron's sum, without a Python-level
    operator call per node. A pair without a Value, or with an operand that is no Value and no real
    number, goes through Python's operators, as in the sum above."""
    cdef Value a, b
    total = start
    for w, x in zip(weights, inputs):
        a = b = None
        if type(total) is Value and (type(w) is Value or type(x) is Value):
            a = as_value(w)
            b = as_value(x)
        if a is None or b is None:
            total = total + w * x
        else:
            total = add(<Value>total, mul(a, b))
    return total


# ---------------------------------------------------------------------------------------------------
# backward: an iterative depth-first sort into a C array, then the reverse sweep

cdef struct NodeArray:
    PyObject** items
    Py_ssize_t length
    Py_ssize_t capacity


cdef int grow(NodeArray* array) except -1:
    cdef Py_ssize_t capacity = array.capacity * 2 if array.capacity else 1024
    cdef PyObject** items = <PyObject**>PyMem_Realloc(array.items, capacity * sizeof(PyObject*))
    if items == NULL:
        raise MemoryError()
    array.items = items
    array.capacity = capacity
    return 0


cdef inline int push(NodeArray* array, PyObject* node) except -1:
    if array.length == array.capacity:
        grow(array)
    array.items[array.length] = node
    array.length += 1
    return 0


cdef inline bint unvisited_op(PyObject* node) noexcept:
    """A node the sort still has to place. Leaves are never placed: nothing flows out of a leaf."""
    return node != NULL and (<Value>node).child_a != NULL and not (<Value>node).visited


cdef int sort_topologically(Value root, NodeArray* order, NodeArray* stack) except -1:
    """Append root's graph, leaves left out, to order, children before parents, as build_topo does.

    stack is scratch space. Every node in order is left marked visited: the caller clears the marks.
    On failure (MemoryError) the marks are cleared here. Nodes are borrowed: root keeps them alive,
    and no Python code runs until the caller is done with them.
    """
    cdef PyObject* top
    cdef PyObject* child
    cdef Py_ssize_t i
    stack.length = 0
    if root.child_a == NULL:
        return 0
    try:
        push(stack, <PyObject*>root)
        root.visited = True
        while stack.length:
            top = stack.items[stack.length - 1]
            child = (<Value>top).child_a
            if not unvisited_op(child):
                child = (<Value>top).child_b
            if unvisited_op(child):                  # descend, as the recursion would
                push(stack, child)
                (<Value>child).visited = True
            else:                                    # all children done: top follows them
                push(order, top)
                stack.length -= 1
    except MemoryError:
        for i in range(stack.length):
            (<Value>stack.items[i]).visited = False
        for i in range(order.length):
            (<Value>order.items[i]).visited = False
        raise
    return 0


cdef void free_array(NodeArray* array) noexcept:
    PyMem_Free(array.items)
    array.items = NULL
    array.length = array.capacity = 0


# backward's arrays are kept from one call to the next: a training loop sorts a graph of about the
# same size every step. Safe to share: backward holds the GIL and runs no Python code while using them.
cdef NodeArray backward_order = NodeArray(NULL, 0, 0)
cdef NodeArray backward_stack = NodeArray(NULL, 0, 0)
DEF KEPT_CAPACITY = 1 << 20       # entries (8 MiB); a bigger array is returned after the call


# ---------------------------------------------------------------------------------------------------
# Freeing. Dropping a node's last reference would free its children from inside its dealloc, and
# theirs from inside theirs: C recursion as deep as the graph, which crashes on long chains. Instead a
# node whose last reference is going away is handed to one loop, which frees the nodes one at a time.

cdef NodeArray doomed = NodeArray(NULL, 0, 0)    # nodes whose last reference the loop holds
cdef bint freeing = False                        # the loop is running (further up the C stack)


cdef inline void release(PyObject* node) noexcept:
    if node == NULL:
        return
    if refcount(node) > 1 or doomed.length == doomed.capacity and not grow_doomed():
        decref(node)                             # not the last reference (or out of memory: recurse)
    else:
        doomed.items[doomed.length] = node
        doomed.length += 1


cdef bint grow_doomed() noexcept:
    try:
        grow(&doomed)
        return True
    except MemoryError:
        return False


cdef void release_children(Value n) noexcept:
    global freeing
    release(n.child_a)
    release(n.child_b)
    n.child_a = n.child_b = NULL
    if freeing:
        return
    freeing = True
    while doomed.length:          # the GIL is held throughout: nothing here runs Python code
        doomed.length -= 1
        decref(doomed.items[doomed.length])      # its dealloc adds its own children to doomed
    if doomed.capacity > KEPT_CAPACITY:
        free_array(&doomed)
    freeing = False
    return_spare_slabs()


cdef void dealloc_node(PyObject* node) noexcept:
    """tp_dealloc: drop the node's references, its children through the loop above, then its memory.

    Cython's own tp_dealloc would also save and restore the exception state around __dealloc__, for
    code that can run Python: nothing here can (a str or a node is all a node refers to).
    """
    xdecref((<Value>node).label_str)
    xdecref((<Value>node).custom_op)
    release_children(<Value>node)
    free_object(node)


# ---------------------------------------------------------------------------------------------------
# Pickle and copy. Pickling node by node would recurse as deep as the graph, so a node pickles as its
# whole graph, flat, children first: each leaf as itself (pickle's memo keeps a model's parameters and
# the graph's leaves one object), each other node as its fields and its children's indices in the list.

DEF PICKLE_FORMAT = 1


cdef tuple node_fields(Value n):
    return (n.value, n.gradient, n.label, n.op, n.constant, n.constant_is_int,
            None if n.custom_op == NULL else <str>n.custom_op)


cdef list graph_entries(Value root):
    cdef NodeArray order = NodeArray(NULL, 0, 0)
    cdef NodeArray stack = NodeArray(NULL, 0, 0)     # not backward's: Python code runs below
    cdef Py_ssize_t i
    cdef Value n
    try:
        sort_topologically(root, &order, &stack)
        # Clear the marks before any Python code runs: a GC pass or another thread may sort this
        # graph too (backward, another pickling) and would take marked nodes for sorted ones.
        for i in range(order.length):
            (<Value>order.items[i]).visited = False
        nodes = [<Value>order.items[i] for i in range(order.length)]
    finally:
        free_array(&order)
        free_array(&stack)
    entries = []
    index_of = {}         # id(node) -> its place in entries
    for n in nodes:
        for child in n._prev:
            if id(child) not in index_of:     # a leaf: the sort leaves them out
                index_of[id(child)] = len(entries)
                entries.append(child)
        index_of[id(n)] = len(entries)
        entries.append(node_fields(n) + (
            index_of[id(<Value>n.child_a)],
            -1 if n.child_b == NULL else index_of[id(<Value>n.child_b)]))
    return entries or [node_fields(root) + (-1, -1)]


def rebuild_graph(int format, list entries):
    """Unpickle what Value.__reduce__ made: the graph's nodes, children first; return the last."""
    cdef Value n
    if format != PICKLE_FORMAT:
        raise ValueError(f"this fastgrad reads pickle format {PICKLE_FORMAT}, not {format}")
    if not entries:
        raise ValueError("not a pickled fastgrad graph: no nodes")
    nodes = []
    for entry in entries:
        if type(entry) is Value:
            nodes.append(entry)
            continue
        value, gradient, label, op, constant, constant_is_int, custom_op, a, b = entry
        if (not 0 <= op < <int>OP_COUNT or not -1 <= a < len(nodes) or not -1 <= b < len(nodes)
                or a < 0 <= b or ARITIES[op] not in (-1, (a >= 0) + (b >= 0))
                or (op == CUSTOM) != (custom_op is not None)):     # _op reads custom_op of CUSTOM nodes
            raise ValueError("not a pickled fastgrad graph")
        n = leaf(value)
        n.gradient = gradient
        n.label = label
        n.op = op
        n.constant = constant
        n.constant_is_int = constant_is_int
        if custom_op is not None:
            custom_op = exact_str(custom_op, "_op")
            incref(<PyObject*>custom_op)
            n.custom_op = <PyObject*>custom_op
        for index, slot in ((a, 0), (b, 1)):
            if index >= 0:
                child = nodes[index]
                incref(<PyObject*>child)
                if slot == 0:
                    n.child_a = <PyObject*>child
                else:
                    n.child_b = <PyObject*>child
        nodes.append(n)
    return nodes[-1]


# ---------------------------------------------------------------------------------------------------
# Node memory. Nodes live in 2 MiB slabs, and a new node takes the lowest free slot of the lowest slab
# that has one; a slab is mapped only when all are full. So a graph's nodes lie in memory in the order
# they were made, however the previous graph was freed, and backward's sort and sweep walk memory in
# order. A LIFO free list (Cython's @freelist, pymalloc's pools) hands back the last freed slot first
# instead: a graph is freed in another order than it is built, so each training step scrambles the next
# one's layout further (measured on the 64x512 layer: backward went from 11 to 46 ns a node over 25 steps).
#
# Under PYTHONMALLOC=debug or -X dev the slabs are not used: every node is then its own block, which
# the debug allocator checks. Under AddressSanitizer free slots are poisoned, so a use after free of a
# node is still caught.

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int fastgrad_lowest_bit(unsigned long long w) { unsigned long i; _BitScanForward64(&i, w); return (int)i; }
    #else
    #define fastgrad_lowest_bit(w) __builtin_ctzll(w)
    #endif
    #if defined(__SANITIZE_ADDRESS__)
    #define FASTGRAD_ASAN 1
    #elif defined(__has_feature)
    #if __has_feature(address_sanitizer)
    #define FASTGRAD_ASAN 1
    #endif
    #endif
    #ifdef FASTGRAD_ASAN
    #include <sanitizer/asan_interface.h>
    #define fastgrad_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
    #define fastgrad_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
    #else
    #define fastgrad_poison(p, n) ((void)0)
    #define fastgrad_unpoison(p, n) ((void)0)
    #endif
    #if defined(__linux__)
    #include <sys/mman.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23          /* Linux 5.14; older kernels refuse it, and nothing is lost */
    #endif
    #ifndef MADV_HUGEPAGE
    #define MADV_HUGEPAGE 14
    #endif
    /* Huge pages where the kernel offers them, then every page mapped in one call. */
    #define fastgrad_prefault(p, n) \
        ((void)madvise((p), (n), MADV_HUGEPAGE), (void)madvise((p), (n), MADV_POPULATE_WRITE))
    #else
    #define fastgrad_prefault(p, n) ((void)0)
    #endif
    static void fastgrad_set_allocator(PyTypeObject *t, allocfunc alloc, freefunc free) {
        t->tp_alloc = alloc;
        t->tp_free = free;
    }
    #if defined(_WIN32)
    #include <windows.h>
    static double fastgrad_seconds(void) { return (double)GetTickCount64() / 1000.0; }
    #else
    #include <time.h>
    static double fastgrad_seconds(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    #endif
    static void fastgrad_set_dealloc(PyTypeObject *t, destructor dealloc) { t->tp_dealloc = dealloc; }
    static void fastgrad_free_object(PyObject *o) {
        PyTypeObject *t = Py_TYPE(o);
        t->tp_free(o);
        if (PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE)) Py_DECREF(t);   /* PyObject_Init took one */
    }
    """
    int lowest_bit "fastgrad_lowest_bit" (unsigned long long word) nogil
    void poison "fastgrad_poison" (void* p, Py_ssize_t n) nogil
    void unpoison "fastgrad_unpoison" (void* p, Py_ssize_t n) nogil
    void prefault "fastgrad_prefault" (void* p, Py_ssize_t n) nogil
    ctypedef PyObject* (*allocfunc)(PyTypeObject*, Py_ssize_t)
    ctypedef void (*freefunc)(void*)
    void set_allocator "fastgrad_set_allocator" (PyTypeObject* t, allocfunc alloc, freefunc free)
    ctypedef void (*destructor)(PyObject*)
    void set_dealloc "fastgrad_set_dealloc" (PyTypeObject* t, destructor dealloc)
    double seconds "fastgrad_seconds" () nogil
    void free_object "fastgrad_free_object" (PyObject* o) noexcept
    PyObject* init_object "PyObject_Init" (PyObject* op, PyTypeObject* t)
    PyObject* no_memory "PyErr_NoMemory" ()
    ctypedef struct PyObjectArenaAllocator:
        void* ctx
        void* (*alloc)(void* ctx, size_t size) noexcept
        void (*free)(void* ctx, void* ptr, size_t size) noexcept
    void PyObject_GetArenaAllocator(PyObjectArenaAllocator* allocator)
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr)

DEF SLAB_BYTES = 2 << 20                   # one huge page: a slab maps in one fault where huge pages exist
DEF SLAB_WORDS = 409                       # bitmap words a slab
DEF SLAB_SLOTS = SLAB_WORDS * 64           # 26176 nodes of 80 bytes (fits SLAB_BYTES, checked at import)
DEF KEPT_EMPTY_SLABS = 5                   # 10 MiB of empty slabs always kept mapped (return_spare_slabs)
DEF TRACEMALLOC_DOMAIN = 0x66677261        # tracemalloc sees slabs that hold nodes in this domain ("fgra")
DEF STALE_SECONDS = 1.0                    # an empty slab unused this long goes back at the next drop

cdef struct Slab:
    char* slots                            # SLAB_SLOTS nodes; NULL: memory returned, refilled on demand
    unsigned long long free_bits[SLAB_WORDS]   # bit i of word w set: slot 64 * w + i is free
    int live                               # slots in use
    int first_free_word                    # the words below it have no free slot
    double emptied_at                      # when it last became empty (seconds, monotonic clock)

cdef Slab* slabs = NULL
cdef Py_ssize_t slab_count = 0
cdef Py_ssize_t slab_capacity = 0
cdef Py_ssize_t lowest_open = 0            # the mapped slabs below it have no free slot
cdef Py_ssize_t empty_slabs = 0            # mapped slabs with no node in them
cdef Py_ssize_t unmapped_slabs = 0         # slabs whose memory was returned (slots NULL)
cdef double next_return = INFINITY         # when the earliest empty slab beyond the kept ones turns stale
# Slabs come from the allocator pymalloc takes its arenas from (mmap, VirtualAlloc), which gives memory
# back to the system when a slab is freed: malloc would keep it while a later block sits above it.
cdef PyObjectArenaAllocator pages
PyObject_GetArenaAllocator(&pages)


cdef char* map_slab() noexcept:
    cdef char* slots = <char*>pages.alloc(pages.ctx, SLAB_BYTES)
    if slots != NULL:
        # Map every page now, in one system call: a slab is filled before the next is touched, and
        # faulting its pages in one at a time costs more than making the nodes (up to 2 us a fault).
        prefault(slots, SLAB_BYTES)
    return slots


cdef void unmap_slab(char* slots) noexcept:
    unpoison(slots, SLAB_BYTES)
    pages.free(pages.ctx, slots, SLAB_BYTES)


cdef bint fill_slab(Slab* slab) noexcept:
    """Give a slab memory, every slot free. False (nothing changed) when out of memory."""
    cdef char* slots = map_slab()
    if slots == NULL:
        return False
    poison(slots, SLAB_BYTES)
    slab.slots = slots
    memset(slab.free_bits, 0xFF, sizeof(slab.free_bits))
    slab.live = 0
    slab.first_free_word = 0
    return True


cdef bint add_slab() noexcept:
    global slabs, slab_count, slab_capacity, unmapped_slabs
    cdef Py_ssize_t capacity
    cdef Slab* grown
    if slab_count == slab_capacity:
        capacity = slab_capacity * 2 if slab_capacity else 64
        grown = <Slab*>PyMem_Realloc(slabs, capacity * sizeof(Slab))
        if grown == NULL:
            return False
        slabs, slab_capacity = grown, capacity
    slabs[slab_count].slots = NULL
    slab_count += 1
    unmapped_slabs += 1
    return True


cdef Py_ssize_t open_slab() noexcept:
    """The lowest mapped slab with a free slot. Memory is mapped only when every mapped slab is full:
    then for the lowest unmapped slab, or a new one. -1 when out of memory."""
    global lowest_open, empty_slabs, unmapped_slabs
    cdef Py_ssize_t index = 0
    while lowest_open < slab_count and (slabs[lowest_open].slots == NULL
                                        or slabs[lowest_open].live == SLAB_SLOTS):
        lowest_open += 1
    if lowest_open < slab_count:
        return lowest_open
    if unmapped_slabs == 0 and not add_slab():
        return -1
    while slabs[index].slots != NULL:         # ends: some slab is unmapped
        index += 1
    if not fill_slab(&slabs[index]):
        return -1
    unmapped_slabs -= 1
    empty_slabs += 1
    lowest_open = index                       # every other mapped slab is full
    return index


cdef PyObject* alloc_node(PyTypeObject* type, Py_ssize_t items) noexcept:
    """tp_alloc: a zeroed node in the lowest free slot, or NULL with MemoryError set."""
    global empty_slabs
    cdef Py_ssize_t index = lowest_open
    cdef Slab* slab
    cdef int word, bit
    cdef char* node
    if index == slab_count or slabs[index].slots == NULL or slabs[index].live == SLAB_SLOTS:
        index = open_slab()
        if index < 0:
            return no_memory()
    slab = &slabs[index]
    if slab.live == 0:
        empty_slabs -= 1
        PyTraceMalloc_Track(TRACEMALLOC_DOMAIN, <size_t>slab.slots, SLAB_BYTES)
    word = slab.first_free_word
    while slab.free_bits[word] == 0:          # ends: live < SLAB_SLOTS, so some bit is set
        word += 1
    slab.first_free_word = word
    bit = lowest_bit(slab.free_bits[word])
    slab.free_bits[word] &= slab.free_bits[word] - 1
    slab.live += 1
    node = slab.slots + (64 * word + bit) * sizeof(Value)
    unpoison(node, sizeof(Value))
    memset(node, 0, sizeof(Value))
    init_object(<PyObject*>node, type)
    (<Value><PyObject*>node).slab = <unsigned int>index
    return <PyObject*>node


@cython.cdivision(True)   # the divisor is sizeof(Value), never 0, and the offset is never negative
cdef void free_node(void* node) noexcept:
    """tp_free: mark the node's slot free. An emptied slab stays mapped until return_spare_slabs."""
    global lowest_open, empty_slabs, next_return
    cdef Py_ssize_t index = (<Value><PyObject*>node).slab
    cdef Slab* slab = &slabs[index]
    cdef Py_ssize_t slot = (<char*>node - slab.slots) // sizeof(Value)
    slab.free_bits[slot >> 6] |= 1ULL << (slot & 63)
    if slot >> 6 < slab.first_free_word:
        slab.first_free_word = <int>(slot >> 6)
    slab.live -= 1
    poison(node, sizeof(Value))
    if index < lowest_open:
        lowest_open = index
    if slab.live == 0:
        empty_slabs += 1
        PyTraceMalloc_Untrack(TRACEMALLOC_DOMAIN, <size_t>slab.slots)
        slab.emptied_at = seconds()
        next_return = min(next_return, slab.emptied_at + STALE_SECONDS)


cdef void return_spare_slabs() noexcept:
    """Run when a graph has been dropped: return the slabs that have stayed empty for STALE_SECONDS.

    A training loop's next step rebuilds its graph in the slabs the previous step emptied, which stay
    mapped for it (mapping and zeroing fresh memory costs as much as making the nodes); what no step
    reuses goes back to the system at a drop a second later, the highest slabs first. KEPT_EMPTY_SLABS
    always stay. Checked at drops only, and then only when there is something to return: one clock read.
    """
    global next_return, empty_slabs, unmapped_slabs, slab_count, lowest_open
    cdef double now
    cdef Py_ssize_t index = slab_count - 1
    if empty_slabs <= KEPT_EMPTY_SLABS:
        next_return = INFINITY
        return
    now = seconds()
    if now < next_return:
        return
    next_return = INFINITY                    # the earliest that a slab kept below turns stale
    while index >= 0:
        if slabs[index].slots != NULL and slabs[index].live == 0:
            if empty_slabs > KEPT_EMPTY_SLABS and now - slabs[index].emptied_at >= STALE_SECONDS:
                unmap_slab(slabs[index].slots)
                slabs[index].slots = NULL
                empty_slabs -= 1
                unmapped_slabs += 1
            else:
                next_return = min(next_return, slabs[index].emptied_at + STALE_SECONDS)
        index -= 1
    while slab_count and slabs[slab_count - 1].slots == NULL:   # forget unmapped slabs at the end
        slab_count -= 1
        unmapped_slabs -= 1
    lowest_open = min(lowest_open, slab_count)


# ---------------------------------------------------------------------------------------------------
# The node

@cython.final        # a subclass could add fields, and with them reference cycles the GC must see
@cython.no_gc        # no cycle can form: see engine.pxd and tests/test_leaks.py
cdef class Value:
    """A scalar in a computation graph: its data, its gradient, and how it was made."""

    __array_ufunc__ = None     # so that `numpy.float64(2) * v` asks Value, and gives a Value

    def __init__(self, data, _children=(), _op="", label=""):
        # Everything is checked before anything is set: a refused call leaves the node as it was.
        children = tuple(_children)
        if len(children) > 2:
            raise ValueError(f"a Value has at most two children, got {len(children)}")
        for child in children:
            if type(child) is not Value:
                raise TypeError(f"_children must be Values, not {type(child).__name__!r}")
        cdef double value = real_number(data, "Value data")
        cdef str op_name = exact_str(_op, "_op")
        cdef str label_name = exact_str(label, "label")
        if (children or op_name) and refcount(<PyObject*>self) > 1:
            raise TypeError("a Value's children are fixed when it is made")   # reachable: maybe a cycle
        self.value = value
        self.label = label_name
        if children or op_name:
            self.op = CUSTOM
            incref(<PyObject*>op_name)
            xdecref(self.custom_op)
            self.custom_op = <PyObject*>op_name
            for i, child in enumerate(children):
                incref(<PyObject*>child)
                if i == 0:
                    self.child_a = <PyObject*>child
                else:
                    self.child_b = <PyObject*>child

    # -- attributes, as the seed names them

    @property
    def data(self):
        return self.value

    @data.setter
    def data(self, value):
        self.value = real_number(value, "data")

    @property
    def grad(self):
        return self.gradient

    @grad.setter
    def grad(self, value):
        self.gradient = real_number(value, "grad")

    @property
    def label(self):
        return "" if self.label_str == NULL else <str>self.label_str

    @label.setter
    def label(self, value):
        cdef str s = exact_str(value, "label")
        incref(<PyObject*>s)
        xdecref(self.label_str)
        self.label_str = <PyObject*>s

    @property
    def _op(self):
        if self.op == CUSTOM:
            return <str>self.custom_op
        if self.op == POW_CONST:
            return "**" + (str(int(self.constant)) if self.constant_is_int else repr(self.constant))
        return SPELLINGS[self.op]

    @property
    def _prev(self):
        children = set()
        if self.child_a != NULL:
            children.add(<Value>self.child_a)
        if self.child_b != NULL:
            children.add(<Value>self.child_b)
        return children

    def _backward(self):
        """Add this node's grad, times its local derivative, into its children's grads (one step)."""
        propagate(<PyObject*>self)

    def backward(self):
        """Set this node's grad to 1.0 and add d(self)/d(node) into the grad of every node below it."""
        cdef NodeArray* order = &backward_order
        cdef Py_ssize_t i
        order.length = 0
        try:
            sort_topologically(self, order, &backward_stack)
            self.gradient = 1.0
            for i in range(order.length - 1, -1, -1):
                (<Value>order.items[i]).visited = False
                propagate(order.items[i])
        finally:
            if order.capacity > KEPT_CAPACITY:
                free_array(order)
            if backward_stack.capacity > KEPT_CAPACITY:
                free_array(&backward_stack)

    def __repr__(self):
        return f"Value(data={self.value!r})"

    def __reduce__(self):
        return rebuild_graph, (PICKLE_FORMAT, graph_entries(self))

    # -- ops

    def __add__(self, other):
        cdef Value b = as_value(other)
        return NotImplemented if b is None else add(self, b)

    def __radd__(self, other):
        cdef Value a = as_value(other)
        return NotImplemented if a is None else add(a, self)

    def __sub__(self, other):
        cdef Value b = as_value(other)
        return NotImplemented if b is None else sub(self, b)

    def __rsub__(self, other):
        cdef Value a = as_value(other)
        return NotImplemented if a is None else sub(a, self)

    def __mul__(self, other):
        cdef Value b = as_value(other)
        return NotImplemented if b is None else mul(self, b)

    def __rmul__(self, other):
        cdef Value a = as_value(other)
        return NotImplemented if a is None else mul(a, self)

    def __truediv__(self, other):
        cdef Value b = as_value(other)
        return NotImplemented if b is None else div(self, b)

    def __rtruediv__(self, other):
        cdef Value a = as_value(other)
        return NotImplemented if a is None else div(a, self)

    def __pow__(self, exponent, modulo):
        cdef double k
        if modulo is not None:
            return NotImplemented
        if type(exponent) is Value:
            return pow_value(self, exponent)
        if as_double(exponent, &k):
            return pow_const(self, k, isinstance(exponent, numbers.Integral))
        return NotImplemented

    def __rpow__(self, base, modulo):
        cdef Value a = as_value(base)
        return NotImplemented if a is None or modulo is not None else pow_value(a, self)

    def __neg__(self):
        return neg(self)

    def tanh(self):
        return tanh_(self)

    def exp(self):
        return exp_(self)

    def log(self):
        return log_(self)

    def relu(self):
        return relu(self)

    def sigmoid(self):
        return sigmoid(self)

    def softplus(self):
        return softplus(self)


set_dealloc(<PyTypeObject*>Value, dealloc_node)     # the class has no __dealloc__: this is it

# Before any node exists: a node must go back to the allocator it came from. A node bigger than 80
# bytes (an interpreter built with Py_TRACE_REFS) would not fit SLAB_SLOTS into a slab.
if ("debug" not in os.environ.get("PYTHONMALLOC", "") and not sys.flags.dev_mode
        and SLAB_SLOTS * sizeof(Value) <= SLAB_BYTES):
    set_allocator(<PyTypeObject*>Value, alloc_node, free_node)
