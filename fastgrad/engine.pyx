"""fastgrad's engine: the compiled Value node, its eager ops, and backward's C topological sort and sweep.

The rooms, in the order this file has them:

- The node: the Value class, its attributes as the seed names them, its ops. The layout is in engine.pxd.
- Numbers in, nodes out: what an operand may be, and how nodes are made.
- Ops: each op's math lives in _ops.pxd, on doubles (shared with the compiled replay); here the eager ops
  check it, build the node, and map a kernel's status to Python's exception. weighted_sum: a neuron's sum.
- backward: an iterative depth-first sort into a C array, then the reverse sweep.
- Graphs ahead of their nodes: how the compiled replay (replay.pyx) writes back lazily, and where it must.
- Freeing: an iterative loop, so that dropping a deep graph does not recurse in C.
- Pickle and copy: a graph pickles flat, children first (rebuild_graph keeps its name: pickles name it).
- Nodes with Python state: hand-made nodes, subclasses, `_backward` closures, and their GC slots.
- Custom ops: fastgrad.op(name, forward, derivative), an op whose functions on floats are Python's.
- Node memory: tp_alloc and tp_free over the slabs of src/node_memory.h.
- Import-time wiring, in one place at the end.

Nothing here imports the rest of fastgrad.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject, destructor, freefunc
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.string cimport memset

cimport fastgrad._ops as ops
from libc.math cimport floor, isfinite

import numbers
import operator
import os
import sys
from collections import namedtuple

cdef extern from "Python.h":
    # Reference counting on the raw child and label pointers of a node (see engine.pxd; incref is declared there).
    void decref "Py_DECREF" (PyObject*)
    void xdecref "Py_XDECREF" (PyObject*)
    Py_ssize_t refcount "Py_REFCNT" (PyObject*)
    PyTypeObject* type_of "Py_TYPE" (PyObject*)
    bint is_heap_type "PyType_HasFeature" (PyTypeObject*, unsigned long)   # with Py_TPFLAGS_HEAPTYPE
    unsigned long Py_TPFLAGS_HEAPTYPE
    PyObject* init_object "PyObject_Init" (PyObject* op, PyTypeObject* t)
    PyObject* no_memory "PyErr_NoMemory" ()
    void* object_malloc "PyObject_Malloc" (size_t)
    void object_free "PyObject_Free" (void*)
    PyObject* generic_alloc "PyType_GenericAlloc" (PyTypeObject*, Py_ssize_t)
    void gc_untrack "PyObject_GC_UnTrack" (void*)
    void gc_del "PyObject_GC_Del" (void*)
    unsigned long Py_TPFLAGS_HAVE_GC
    unsigned long Py_TPFLAGS_BASETYPE
    # The slots the engine sets on its type (cpython.object declares no tp_alloc).
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef PyObject* (*allocfunc)(PyTypeObject*, Py_ssize_t) noexcept
    ctypedef PyObject* (*newfunc)(PyTypeObject*, PyObject*, PyObject*) noexcept
    ctypedef PyObject* (*vectorcallfunc)(PyObject*, PyObject* const* args, size_t, PyObject*) noexcept
    Py_ssize_t vectorcall_nargs "PyVectorcall_NARGS" (size_t)
    ctypedef struct TypeSlots "PyTypeObject":
        unsigned long tp_flags
        allocfunc tp_alloc
        newfunc tp_new
        freefunc tp_free
        destructor tp_dealloc
        traverseproc tp_traverse
        inquiry tp_clear
        inquiry tp_is_gc
        vectorcallfunc tp_vectorcall

cdef extern from *:
    """
    #ifndef Py_TPFLAGS_IMMUTABLETYPE     /* before 3.10 a static type's attributes cannot be set at all */
    #define Py_TPFLAGS_IMMUTABLETYPE 0
    #endif
    """
    unsigned long Py_TPFLAGS_IMMUTABLETYPE

cdef extern from "node_memory.h":
    Value slab_node "fg_slab_node" (PyTypeObject* type, unsigned int* slab_index)
    fg_node_memory fg_memory
    void* node_alloc "fg_node_alloc" (unsigned int* slab_index) noexcept nogil
    void node_free "fg_node_free" (void* node, unsigned int slab_index) noexcept nogil
    void return_spare_slabs "fg_return_spare_slabs" () noexcept nogil
    void check_node_size "fg_check_node_size" (size_t node_bytes) noexcept nogil


# ---------------------------------------------------------------------------------------------------
# The node

@cython.no_gc        # the GC slots are the engine's own: see "Nodes with Python state"
cdef class Value:
    """A scalar in a computation graph: its data, its gradient, and how it was made."""

    __array_ufunc__ = None     # so that `numpy.float64(2) * v` asks Value, and gives a Value

    def __init__(self, data, _children=(), _op="", label=""):
        # Everything is checked before anything is set: a refused call leaves the node as it was.
        children = tuple(_children)
        for child in children:
            if not isinstance(child, Value):
                raise TypeError(f"_children must be Values, not {type_name(child)!r}")
        cdef double value = real_number(data, "Value data")
        cdef str op_name = exact_str(_op, "_op")
        cdef str label_name = exact_str(label, "label")
        if children or op_name:
            # Children are given once: a node that has some keeps them (replacing them would let a graph
            # built on this node change under it).
            if self.child_a != NULL or self.op != ops.LEAF:
                raise TypeError("a Value's children are fixed when it is made")
            check_can_take_state(self, "children and an op")
        if self.child_a != NULL:
            python_reaches_in()         # an inner node's data is changing: compiled graphs write back first
        self.value = value
        self.label = label_name
        if children or op_name:
            set_children(self, children, op_name)

    # -- attributes, as the seed names them

    @property
    def data(self):
        return self.value

    @data.setter
    def data(self, value):
        cdef double number = real_number(value, "data")
        if self.child_a != NULL:
            python_reaches_in()
        self.value = number

    @property
    def grad(self):
        return self.gradient

    @grad.setter
    def grad(self, value):
        cdef double number = real_number(value, "grad")
        if self.child_a != NULL:
            python_reaches_in()
        self.gradient = number

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
        if self.op == ops.PYTHON:
            return (<CustomOp>self.state).name
        if self.op == ops.CUSTOM or self.op == ops.LEAF:
            return "" if self.state == NULL else (<_NodeState>self.state).op
        if self.op == ops.POW_CONST:
            return "**" + (str(int(self.constant)) if self.constant_is_int else repr(self.constant))
        return SPELLINGS[self.op]

    @_op.setter
    def _op(self, value):
        cdef str op_name = exact_str(value, "_op")
        check_can_take_state(self, "an _op")
        if self.op > ops.CUSTOM:
            raise TypeError(f"the _op of a node made by {self._op!r} is fixed")
        node_state(self).op = op_name
        if op_name and self.op == ops.LEAF:
            self.op = ops.CUSTOM

    @property
    def _prev(self):
        children = set()
        if self.child_a != NULL:
            children.add(<Value>self.child_a)
        bundle = self.child_b
        while bundle != NULL and (<Value>bundle).flags & BUNDLE:    # the children past the first two
            children.add(<Value>(<Value>bundle).child_a)
            bundle = (<Value>bundle).child_b
        if bundle != NULL:
            children.add(<Value>bundle)
        # Last: making the set can run Python code (a GC pass, another thread), and a compiled graph that
        # replays then must already see the children held, or be told again that Python reached in.
        python_reaches_in()
        return children

    @_prev.setter
    def _prev(self, value):
        # As a subclass's __init__ written the micrograd way sets them: `self._prev = set(_children)`.
        children = tuple(value)
        for child in children:
            if not isinstance(child, Value):
                raise TypeError(f"_prev must hold Values, not {type_name(child)!r}")
        check_can_take_state(self, "children")
        if self.op > ops.CUSTOM:
            raise TypeError(f"the children of a node made by {self._op!r} are fixed")
        python_reaches_in()
        set_children(self, children, None)

    @property
    def _backward(self):
        """One step: the callable assigned to `_backward`, or else the built-in one (add this node's grad,
        times its local derivative, into its children's grads)."""
        if self.flags & HAS_CLOSURE:
            return (<_NodeState>self.state).backward
        return self._builtin_backward

    @_backward.setter
    def _backward(self, value):
        global closures_alive
        check_can_take_state(self, "a _backward")
        if self.op == ops.PYTHON:
            raise TypeError(f"a node made by the custom op {self._op!r} has that op's derivative as its _backward")
        node_state(self).backward = value
        if not self.flags & HAS_CLOSURE:
            closures_alive += 1
            self.flags |= HAS_CLOSURE

    def _builtin_backward(self):
        """Add this node's grad, times its local derivative, into its children's grads (one step)."""
        python_reaches_in()
        if self.op == ops.PYTHON:
            custom_step(self)
        else:
            step(<PyObject*>self)

    def backward(self, *, bint create_graph=False):
        """Set this node's grad to 1.0 and add d(self)/d(node) into the grad of every node below it.

        A node's grad is a float: create_graph=True, PyTorch's way to ask for grads that can be differentiated
        again, is refused, and fastgrad.grad(self, inputs, create_graph=True) returns them as Values."""
        if create_graph:
            raise ValueError("backward(create_graph=True): a node's .grad is a float; "
                             "fastgrad.grad(output, inputs, create_graph=True) returns the gradients as Values")
        python_reaches_in()
        run_backward(self)

    def __sizeof__(self):
        # The type has GC slots, so sys.getsizeof adds a GC header on some Pythons: not to a built-in node.
        return object.__sizeof__(self) if self.flags & HEADERED else sizeof(Value) - plain_size_correction

    def __repr__(self):
        return f"Value(data={self.value!r})"

    def __reduce__(self):
        python_reaches_in()
        return rebuild_graph, (PICKLE_FORMAT, graph_entries(self))

    # -- ops: a number operand becomes a leaf; a numpy array gets the op element by element; anything
    #    else is NotImplemented, for Python to refuse

    def __add__(self, other):
        cdef Value b = as_value(other)
        return array_op(operator.add, self, other) if b is None else add(self, b)

    def __radd__(self, other):
        cdef Value a = as_value(other)
        return array_op(operator.add, other, self) if a is None else add(a, self)

    def __sub__(self, other):
        cdef Value b = as_value(other)
        return array_op(operator.sub, self, other) if b is None else sub(self, b)

    def __rsub__(self, other):
        cdef Value a = as_value(other)
        return array_op(operator.sub, other, self) if a is None else sub(a, self)

    def __mul__(self, other):
        cdef Value b = as_value(other)
        return array_op(operator.mul, self, other) if b is None else mul(self, b)

    def __rmul__(self, other):
        cdef Value a = as_value(other)
        return array_op(operator.mul, other, self) if a is None else mul(a, self)

    def __truediv__(self, other):
        cdef Value b = as_value(other)
        return array_op(operator.truediv, self, other) if b is None else div(self, b)

    def __rtruediv__(self, other):
        cdef Value a = as_value(other)
        return array_op(operator.truediv, other, self) if a is None else div(a, self)

    def __pow__(self, exponent, modulo):
        cdef double k
        if modulo is not None:
            return NotImplemented
        if isinstance(exponent, Value):
            return pow_value(self, exponent)
        if as_double(exponent, &k):
            return pow_const(self, k, isinstance(exponent, numbers.Integral))
        return array_op(operator.pow, self, exponent)

    def __rpow__(self, base, modulo):
        cdef Value a = as_value(base)
        if modulo is not None:
            return NotImplemented
        return array_op(operator.pow, base, self) if a is None else pow_value(a, self)

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

    def sin(self):
        return sin_(self)

    def cos(self):
        return cos_(self)

    def sqrt(self):
        return sqrt_(self)

    def abs(self):
        return abs_(self)

    def __abs__(self):
        return abs_(self)


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
    if getattr(x, "ndim", 0):                    # an array of numbers is not a number: see array_op
        return 0
    if hasattr(type(x), "__float__") or hasattr(type(x), "__index__"):   # numpy scalars, Fraction, Decimal
        out[0] = float(x)
        return 1
    return 0


cdef object array_op(op, left, right):
    """op element by element when the operand that is not this Value is a numpy array (of numbers or of
    Values) of one or more dimensions, as numpy applies an op to an object array: an object array of the
    results, which is what micrograd gives for `array * v`. Anything else: NotImplemented.

    numpy asks Value first (Value.__array_ufunc__ is None, so that a numpy scalar times a Value is a Value),
    so without this an array operand would be refused. The Value goes in as a 0-d object array: given as
    itself, numpy would refuse it as an operand of the ufunc (again __array_ufunc__ = None)."""
    array = right if isinstance(left, Value) else left
    if not getattr(array, "ndim", 0) or not hasattr(type(array), "__array_ufunc__"):
        return NotImplemented
    import numpy
    node = numpy.empty((), dtype=object)
    node[()] = left if array is right else right
    return numpy.frompyfunc(op, 2, 1)(node, right) if array is right else numpy.frompyfunc(op, 2, 1)(left, node)


cdef double real_number(object x, str what) except? -1.0:
    cdef double value
    if not as_double(x, &value):
        raise TypeError(f"{what} must be a real number, not {type_name(x)!r}")
    return value


cdef str exact_str(object s, str what):
    """s as an exact str: a str subclass could carry a __dict__, and with it a reference cycle."""
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type_name(s)!r}")
    return str.__str__(s)


cpdef str type_name(object x):
    """The name error messages give x's type: `str`, `micrograd.engine.Value`, `fastgrad.engine.Value` (a bare
    `Value` would not tell a user that they passed micrograd's node to fastgrad). Every module's messages use it."""
    cls = type(x)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


cdef inline Value plain_node():
    """A new node without a GC header, every field zeroed: op LEAF, no children, grad 0.0. What Value.__new__(Value)
    makes, with the slab's fast path inline instead of behind Cython's tp_new and the tp_alloc slot (a third of
    the cost of a node that grad(create_graph=True) makes)."""
    cdef unsigned int slab = 0          # set by slab_node; 0 keeps gcc from warning it may not be
    cdef Value n
    if not use_slabs:
        return Value.__new__(Value)
    n = slab_node(<PyTypeObject*>Value, &slab)
    n.slab = slab
    return n


cdef inline Value leaf(double value):
    cdef Value n = plain_node()
    n.value = value
    return n


cdef inline Value as_value(object x):
    """x itself if it is a Value (or a subclass's), a new leaf if it is a number, None otherwise."""
    cdef double value
    if type(x) is Value:
        return <Value>x
    if as_double(x, &value):
        return leaf(value)
    if isinstance(x, Value):
        return <Value>x
    return None


cdef inline Value unary_node(unsigned char op, double value, Value a):
    # A node made from a node with a GC header gets one too: it may lie on a reference cycle through that
    # node's Python state, which the GC can only break if it sees every node on it.
    cdef Value n = headered_node() if a.flags & HEADERED else plain_node()
    n.value = value
    n.op = op
    incref(<PyObject*>a)
    n.child_a = <PyObject*>a
    return n


cdef inline Value binary_node(unsigned char op, double value, Value a, Value b):
    cdef Value n = headered_node() if (a.flags | b.flags) & HEADERED else plain_node()
    link_binary(<PyObject*>n, op, value, <PyObject*>a, <PyObject*>b)
    return n


cdef PyObject* new_binary_node(unsigned char op, double value, PyObject* a, PyObject* b) except NULL:
    """binary_node as a new reference: engine.pxd's inline take_binary_node where it applies, else the whole path."""
    cdef PyObject* n = take_binary_node(node_memory(), op, value, a, b)
    cdef Value made
    if n != NULL:
        return n
    made = binary_node(op, value, <Value>a, <Value>b)
    incref(<PyObject*>made)
    return <PyObject*>made


cdef fg_node_memory* node_memory() noexcept:
    return &fg_memory if use_slabs else NULL


# ---------------------------------------------------------------------------------------------------
# Ops. Each calls its kernel (_ops.pxd), which computes the node's data or reports the domain error before
# anything is built, so a failed op leaves the graph as it was; then it builds the node. The kernels are
# called by name, not through _ops.forward's switch, so each op compiles to its own code alone.

cdef int failed(ops.Status status) except -1:
    raise ops.op_error(status)


cdef inline int check(ops.Status status) except -1:
    if status != ops.OK:
        failed(status)              # out of line: the ops' fast paths stay short
    return 0


cdef inline Value add(Value a, Value b):
    cdef double out = 0.0
    check(ops.add_forward(a.value, b.value, 0.0, &out))
    return binary_node(ops.ADD, out, a, b)


cdef Value sub(Value a, Value b):
    cdef double out = 0.0
    check(ops.sub_forward(a.value, b.value, 0.0, &out))
    return binary_node(ops.SUB, out, a, b)


cdef inline Value mul(Value a, Value b):
    cdef double out = 0.0
    check(ops.mul_forward(a.value, b.value, 0.0, &out))
    return binary_node(ops.MUL, out, a, b)


cdef Value div(Value a, Value b):
    cdef double out = 0.0
    check(ops.div_forward(a.value, b.value, 0.0, &out))
    return binary_node(ops.DIV, out, a, b)


cdef Value neg(Value a):
    cdef double out = 0.0
    check(ops.neg_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.NEG, out, a)


cdef Value pow_const(Value a, double k, bint given_as_int):
    cdef double out = 0.0
    check(ops.pow_const_forward(a.value, 0.0, k, &out))
    cdef Value n = unary_node(ops.POW_CONST, out, a)
    n.constant = k
    n.constant_is_int = given_as_int and spelled_as_int(k)
    return n


cdef inline bint spelled_as_int(double k) noexcept:
    """`_op` spells the exponent as an int (`**2`, as micrograd does for v ** 2) only if it is one: an int
    subclass whose __float__ gives nan, or a doctored pickle, must not make `_op` fail."""
    return isfinite(k) and k == floor(k)


cdef Value pow_value(Value a, Value b):
    cdef double out = 0.0
    check(ops.pow_forward(a.value, b.value, 0.0, &out))
    return binary_node(ops.POW, out, a, b)


cdef Value tanh_(Value a):
    cdef double out = 0.0
    check(ops.tanh_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.TANH, out, a)


cdef Value exp_(Value a):
    cdef double out = 0.0
    check(ops.exp_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.EXP, out, a)


cdef Value log_(Value a):
    cdef double out = 0.0
    check(ops.log_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.LOG, out, a)


cdef Value relu(Value a):
    cdef double out = 0.0
    check(ops.relu_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.RELU, out, a)


cdef Value sigmoid(Value a):
    cdef double out = 0.0
    check(ops.sigmoid_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.SIGMOID, out, a)


cdef Value softplus(Value a):
    cdef double out = 0.0
    check(ops.softplus_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.SOFTPLUS, out, a)


cdef Value sin_(Value a):
    cdef double out = 0.0
    check(ops.sin_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.SIN, out, a)


cdef Value cos_(Value a):
    cdef double out = 0.0
    check(ops.cos_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.COS, out, a)


cdef Value sqrt_(Value a):
    cdef double out = 0.0
    check(ops.sqrt_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.SQRT, out, a)


cdef Value abs_(Value a):
    cdef double out = 0.0
    check(ops.abs_forward(a.value, 0.0, 0.0, &out))
    return unary_node(ops.ABS, out, a)


cdef inline void propagate(PyObject* node) noexcept:
    """Run one node's local derivative: add its grad, scaled, into its children's grads.

    The node is a borrowed pointer (a `cdef Value` variable would count a reference in and out per node)."""
    cdef unsigned char op = (<Value>node).op
    cdef PyObject* a = (<Value>node).child_a
    cdef PyObject* b = (<Value>node).child_b
    cdef double da = 0.0, db = 0.0
    if op <= ops.CUSTOM:               # nothing flows out of a leaf, or of a hand-made node (as in the seed)
        return
    ops.derivative(op, (<Value>node).gradient, (<Value>node).value, (<Value>a).value,
               0.0 if b == NULL else (<Value>b).value, (<Value>node).constant, &da, &db)
    (<Value>a).gradient += da
    if b != NULL:
        (<Value>b).gradient += db


cdef void step(PyObject* node) noexcept:
    """propagate, for the callers outside backward's loop: inlined there alone, it stays inlined."""
    propagate(node)


def weighted_sum(weights, inputs, start):
    """start + w0*x0 + w1*x1 + ..., left to right over zip(weights, inputs): the nodes and numbers of
    `sum((w * x for w, x in zip(weights, inputs)), start)`, a neuron's sum, without a Python-level
    operator call per node. A pair without a Value, or with an operand that is no Value and no real
    number, goes through Python's operators, as in the sum above."""
    cdef Py_ssize_t i = 0
    total = start
    if type(weights) is list and type(inputs) is list:
        # A neuron's lists, read by index: zip's iterators and pairs were a tenth of micrograd's moons step.
        # The lengths are read again each time, as zip's iterators do: Python's operators may change the lists.
        while i < len(<list>weights) and i < len(<list>inputs):
            total = weighted_term(total, (<list>weights)[i], (<list>inputs)[i])
            i += 1
        return total
    for w, x in zip(weights, inputs):
        total = weighted_term(total, w, x)
    return total


cdef inline object weighted_term(total, w, x):
    """total + w * x, in C where total and one of w and x are Values and the other a Value or a number."""
    cdef Value a = None, b = None
    if type(total) is Value and (type(w) is Value or type(x) is Value):
        a = as_value(w)
        b = as_value(x)
    if a is None or b is None:
        return total + w * x
    return add(<Value>total, mul(a, b))


# module: namedtuple guesses it from the caller's Python frame, which compiled code has not; pickle needs it.
OpInfo = namedtuple("OpInfo", "code name arity spelling", module=__name__)
OpInfo.__doc__ = "One row of the op table: the code a node stores, its name, how many children it takes, `_op`."


def op_table():
    """The engine's ops, indexed by code (for pickles, tests and the curious)."""
    cdef ops.OpFacts facts
    rows = []
    for code in range(<int>ops.OP_COUNT):
        facts = ops.op_facts(code)
        rows.append(OpInfo(code, facts.name.decode(), facts.arity, facts.spelling.decode()))
    return tuple(rows)


OPS = op_table()


def kernel_forward(int op, double a, double b=0.0, double k=0.0):
    """What _ops.forward, the dispatch the compiled replay runs, gives for op on these numbers: the node's
    data, or the exception the eager op raises. For tests that hold the eager ops and the kernels together."""
    cdef double out = 0.0
    if not ops.ADD <= op < ops.OP_COUNT:
        raise ValueError(f"{op} is not the code of an op with a forward")
    check(ops.forward(op, a, b, k, &out))
    return out


def kernel_derivative(int op, double g, double out, double a, double b=0.0, double k=0.0):
    """What _ops.derivative gives for op: (what g adds to the first child's grad, to the second's)."""
    cdef double da = 0.0, db = 0.0
    if not ops.ADD <= op < ops.OP_COUNT:
        raise ValueError(f"{op} is not the code of an op with a derivative")
    ops.derivative(op, g, out, a, b, k, &da, &db)
    return da, db
cdef list SPELLINGS = [op.spelling for op in OPS]


# ---------------------------------------------------------------------------------------------------
# backward: an iterative depth-first sort into a C array, then the reverse sweep

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


cdef void free_array(NodeArray* array) noexcept:
    PyMem_Free(array.items)
    array.items = NULL
    array.length = array.capacity = 0


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


# backward's arrays are kept from one call to the next: a training loop sorts a graph of about the
# same size every step. Safe to share: backward holds the GIL and runs no Python code while using them.
cdef NodeArray backward_order = NodeArray(NULL, 0, 0)
cdef NodeArray backward_stack = NodeArray(NULL, 0, 0)
cdef enum:
    KEPT_CAPACITY = 1 << 20       # entries (8 MiB); a bigger array is returned after the call


cdef int run_backward(Value root) except -1:
    cdef NodeArray* order = &backward_order
    cdef Py_ssize_t i
    cdef bint closures
    order.length = 0
    try:
        sort_topologically(root, order, &backward_stack)
        root.gradient = 1.0
        closures = closures_alive != 0          # while no node anywhere has one, no node is checked
        for i in range(order.length - 1, -1, -1):
            if closures and (<Value>order.items[i]).flags & (HAS_CLOSURE | CALLS_PYTHON):
                sweep_calling_python(order, i)      # from here on, Python code runs
                break
            (<Value>order.items[i]).visited = False
            propagate(order.items[i])
    finally:
        if order.capacity > KEPT_CAPACITY:
            free_array(order)
        if backward_stack.capacity > KEPT_CAPACITY:
            free_array(&backward_stack)
    return 0


# ---------------------------------------------------------------------------------------------------
# Graphs ahead of their nodes. A compiled graph (replay.pyx) replays in its own arrays and writes back at once
# only the nodes Python can reach: its leaves, its root, and the inner nodes something outside the graph
# references. It leaves the others behind and joins `lagging`. Python gets to those only through the paths
# below (the nodes' own children, a sweep, a pickling) and through the setters of inner nodes; each of them
# first has every lagging graph write its numbers back, and counts one more in `reach_ins`, which tells a
# graph that what it knows of its nodes (which ones Python holds, that they equal its arrays) may be old.

cdef Lagging* lagging = NULL                 # first of the graphs whose arrays are ahead of their nodes
cdef unsigned long long reach_ins = 0


cdef void start_lagging(Lagging* graph) noexcept:
    global lagging
    if graph.linked:
        return
    graph.next = lagging
    graph.previous = NULL
    if lagging != NULL:
        lagging.previous = graph
    lagging = graph
    graph.linked = True


cdef void stop_lagging(Lagging* graph) noexcept:
    global lagging
    if not graph.linked:
        return
    if graph.previous != NULL:
        graph.previous.next = graph.next
    else:
        lagging = graph.next
    if graph.next != NULL:
        graph.next.previous = graph.previous
    graph.linked = False


cdef void catch_up() noexcept:
    cdef Lagging* graph
    while lagging != NULL:
        graph = lagging
        stop_lagging(graph)
        graph.write_back(graph.owner)


cdef unsigned long long reach_in_count() noexcept:
    return reach_ins


cdef void count_reach_in() noexcept:
    global reach_ins
    reach_ins += 1


cdef inline void python_reaches_in() noexcept:
    """Python is about to read, write or get hold of inner nodes: every compiled graph writes back first."""
    if lagging != NULL:
        catch_up()
    count_reach_in()


# ---------------------------------------------------------------------------------------------------
# Freeing. Dropping a node's last reference would free its children from inside its dealloc, and
# theirs from inside theirs: C recursion as deep as the graph, which crashes on long chains. Instead a
# dying node whose children may die with it waits, memory and all, on a stack that one loop empties:
# the loop drops the node's references to its children, whose deallocs (one level down, never more)
# put them on the stack in turn, and then frees the node. The stack is chained through the waiting
# nodes' own label field (its str is dropped first), so freeing allocates nothing and cannot fail: it
# works when memory has run out, and never touches the error state of an exception on its way up.

cdef PyObject* waiting = NULL         # the stack's top: a dying node whose children are not released yet
cdef bint freeing = False             # the loop is running, further up the C stack


cdef void dealloc_node(PyObject* node) noexcept:
    """tp_dealloc: drop the node's label, then its state and children through the loop above, then its memory.

    A built-in node refers to strs and nodes only, so nothing here runs Python code for it; dropping a
    node's state (a closure, what its cells hold) can, and whatever dies there joins the stack too.
    """
    global waiting, freeing
    if (<Value>node).flags & HEADERED:
        start_dealloc_with_header(node)
    xdecref((<Value>node).label_str)
    if (<Value>node).child_a == NULL and (<Value>node).state == NULL:    # nothing can die with it
        free_memory(node)
        return
    (<Value>node).label_str = waiting
    waiting = node
    if freeing:
        return
    freeing = True
    while waiting != NULL:        # the GIL is held throughout
        node = waiting
        waiting = (<Value>node).label_str
        xdecref((<Value>node).state)              # what dies here (nodes included) joins the stack
        xdecref((<Value>node).child_a)            # a child that dies here joins the stack
        xdecref((<Value>node).child_b)
        free_memory(node)
    freeing = False
    return_spare_slabs()


cdef void start_dealloc_with_header(PyObject* node) noexcept:
    global closures_alive
    gc_untrack(node)
    closures_alive -= (<Value>node).flags & (HAS_CLOSURE | CALLS_PYTHON) != 0
    if is_heap_type(type_of(node), Py_TPFLAGS_HEAPTYPE):
        # A subclass's dealloc drops the class's reference when this returns, and the memory, freed later
        # by the loop, is found through the class (its GC pre-header's size): keep the class till then.
        incref(<PyObject*>type_of(node))


cdef inline void free_memory(PyObject* node) noexcept:
    cdef PyTypeObject* type
    if (<Value>node).flags & HEADERED:
        type = type_of(node)
        gc_del(node)
        if is_heap_type(type, Py_TPFLAGS_HEAPTYPE):
            decref(<PyObject*>type)              # the reference dealloc_node kept
    else:
        free_plain(node)


# ---------------------------------------------------------------------------------------------------
# Pickle and copy. Pickling node by node would recurse as deep as the graph, so a node pickles as its
# whole graph, flat, children first: each leaf as itself (pickle's memo keeps a model's parameters and
# the graph's leaves one object), each other node as its fields and its children's indices in the list.

cdef enum:
    PICKLE_FORMAT = 1


cdef tuple node_fields(Value n):
    if type(n) is not Value or n.flags & (HAS_CLOSURE | HAS_MORE | BUNDLE | CALLS_PYTHON):
        # A bundle (see set_children) comes before the node that holds it: it stands for that node.
        what = ("a node with a _backward closure" if n.flags & HAS_CLOSURE else
                f"a node of the custom op {n._op!r} (its forward and derivative are Python functions)"
                if n.flags & CALLS_PYTHON else
                "a node made by hand with more than two children" if n.flags & (HAS_MORE | BUNDLE) else
                f"an instance of the subclass {type(n).__name__!r}")
        node = "" if n.flags & BUNDLE else f" at {n!r} (_op {n._op!r}, label {n.label!r})"
        raise TypeError(f"cannot pickle a graph holding {what}{node}: its Python state would not come back. "
                        f"Values made by the built-in ops, or by hand with at most two children and no "
                        f"_backward, pickle")
    return (n.value, n.gradient, n.label, n.op, n.constant, n.constant_is_int,
            n._op if n.op == ops.CUSTOM else None)


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
    for n in nodes:       # named as such, not as the bundle that holds its third input and comes first
        if n.flags & CALLS_PYTHON:
            node_fields(n)
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
    cdef Py_ssize_t op, a, b, int_flag
    cdef double constant
    if format != PICKLE_FORMAT:
        raise ValueError(f"this fastgrad reads pickle format {PICKLE_FORMAT}, not {format}")
    if not entries:
        raise ValueError("not a pickled fastgrad graph: no nodes")
    nodes = []
    for entry in entries:
        if type(entry) is Value:
            nodes.append(entry)
            continue
        value, gradient, label, op_field, constant_field, int_flag_field, custom_op, a_field, b_field = entry
        # Each number becomes a C number once, and is checked and used as that: an int subclass could
        # answer the checks' comparisons one way and give another value where it is used.
        op, a, b, int_flag = (pickled_index(op_field), pickled_index(a_field), pickled_index(b_field),
                              pickled_index(int_flag_field))
        constant = real_number(constant_field, "a pickled exponent")
        if not (0 <= op < ops.OP_COUNT and op != ops.PYTHON
                and -1 <= a < len(nodes) and -1 <= b < len(nodes) and not a < 0 <= b
                and ops.op_facts(op).arity in (-1, (a >= 0) + (b >= 0))
                and (op == ops.CUSTOM) == (custom_op is not None)        # a CUSTOM node's _op is its own
                and int_flag in (0, 1) and (not int_flag or op == ops.POW_CONST and spelled_as_int(constant))):
            raise ValueError("not a pickled fastgrad graph")
        # A node made by hand can take Python state, and a node over one may lie on a cycle through it.
        n = headered_node() if op == ops.CUSTOM or (
            a >= 0 and (<Value>nodes[a]).flags & HEADERED or b >= 0 and (<Value>nodes[b]).flags & HEADERED
        ) else leaf(0.0)
        n.value = real_number(value, "data")
        n.gradient = real_number(gradient, "grad")
        n.label = label
        n.op = <unsigned char>op
        n.constant = constant
        n.constant_is_int = <unsigned char>int_flag
        if custom_op is not None:
            node_state(n).op = exact_str(custom_op, "_op")
        if a >= 0:
            incref(<PyObject*>nodes[a])
            n.child_a = <PyObject*>nodes[a]
        if b >= 0:
            incref(<PyObject*>nodes[b])
            n.child_b = <PyObject*>nodes[b]
        nodes.append(n)
    return nodes[-1]


cdef Py_ssize_t pickled_index(object field) except? -3:
    """An integer field of a pickled node as a C integer; -2, which no check admits, if it is out of range."""
    try:
        return operator.index(field)
    except OverflowError:
        return -2


# ---------------------------------------------------------------------------------------------------
# Nodes with Python state. micrograd adds an op as a node made by hand, `Value(data, children, op)`, with a
# `_backward` closure that refers to the node: a reference cycle, which only the cyclic GC can free. Such
# nodes (and a subclass's instances, which have a __dict__) are allocated with a GC header and tracked; so is
# every node an op makes from one, since a cycle through a node's state can pass through the nodes above it.
# The type says which of its instances the GC may look at through tp_is_gc (as CPython's own type objects
# do): the built-in node has no header, is never tracked, and costs what it always did.

@cython.final
cdef class _NodeState:
    """What a node with a GC header holds beyond the built-in fields."""
    cdef str op               # `_op` of a node made by hand
    cdef object backward      # the callable assigned to `_backward` (flags & HAS_CLOSURE)

    def __cinit__(self):
        self.op = ""


cdef Value headered_node():
    """A new, zeroed, tracked node with a GC header."""
    cdef PyObject* p = alloc_with_header(<PyTypeObject*>Value, 0)
    if p == NULL:
        raise MemoryError()
    cdef Value n = <Value>p
    decref(p)
    return n


cdef int check_can_take_state(Value node, str what) except -1:
    if not node.flags & HEADERED:
        raise TypeError(
            f"{what} can only be given to a Value made by hand (Value(data, children, op)) or to an instance "
            f"of a subclass of Value; this one was made by a built-in op or as a plain leaf ({node!r}), "
            f"which holds no Python objects so that the garbage collector need not track it")
    return 0


cdef _NodeState node_state(Value node):
    """node's _NodeState, made on first use (node must have a GC header)."""
    cdef _NodeState state
    if node.state == NULL:
        state = _NodeState()
        incref(<PyObject*>state)
        node.state = <PyObject*>state
    return <_NodeState>node.state


cdef int set_children(Value node, tuple children, str op_name) except -1:
    """Give a node with a GC header these children (and op_name as its `_op`, unless None).

    A node holds two children. Past two, its second is a bundle: a hidden node whose first child is the
    second child and whose second is the rest, bundled the same way. The sort, freeing, the GC and the
    replays then see an ordinary binary graph (a bundle is a hand-made node: nothing flows through it), in
    the children's order; only _prev (and so trace and draw_dot) looks through bundles."""
    cdef _NodeState state = node_state(node)
    cdef PyObject* old_a = node.child_a
    cdef PyObject* old_b = node.child_b
    link_children(node, children)
    if op_name is not None:
        state.op = op_name
    node.op = ops.CUSTOM if children or state.op else ops.LEAF
    xdecref(old_a)          # last: dropping them can run Python code, and the node is whole again
    xdecref(old_b)
    return 0


cdef int link_children(Value node, tuple children) except -1:
    """Point node's child fields at children (bundled past two), each holding a reference; the old ones are the
    caller's to drop."""
    cdef Value rest = None
    if len(children) > 2:
        rest = children[-1]
        for child in reversed(children[1:-1]):
            rest = bundle_node(child, rest)
    for i, child in enumerate(children[:2]):
        if i == 1 and rest is not None:
            child = rest
        incref(<PyObject*>child)
        if i == 0:
            node.child_a = <PyObject*>child
        else:
            node.child_b = <PyObject*>child
    if len(children) < 2:
        node.child_b = NULL
    if not children:
        node.child_a = NULL
    node.flags = (node.flags | HAS_MORE) if len(children) > 2 else (node.flags & ~HAS_MORE)
    return 0


cdef Value bundle_node(Value first, Value rest):
    cdef Value n = headered_node()
    n.op = ops.CUSTOM
    n.flags |= BUNDLE
    incref(<PyObject*>first)
    n.child_a = <PyObject*>first
    incref(<PyObject*>rest)
    n.child_b = <PyObject*>rest
    return n


cdef int sweep_calling_python(NodeArray* order, Py_ssize_t last) except -1:
    """backward's sweep over order[last], ..., order[0], where order[last] has a `_backward` closure or is a
    custom op's.

    Python code runs from here on (the closures, and whatever they call: backward() on another graph, a
    GC pass), so first every mark is cleared, and the nodes are held by a list: a closure may drop the last
    reference to a node still to be swept, and may reuse backward's arrays."""
    cdef Py_ssize_t i
    cdef Value node
    for i in range(last + 1):
        (<Value>order.items[i]).visited = False
    nodes = [<Value>order.items[i] for i in range(last + 1)]
    for i in range(last, -1, -1):
        node = nodes[i]
        if node.flags & HAS_CLOSURE:
            (<_NodeState>node.state).backward()      # an exception stops the sweep; added grads stay
        elif node.op == ops.PYTHON:
            custom_step(node)
        else:
            step(<PyObject*>node)
    return 0


cdef int check_replayable(NodeArray* order, str user) except -1:
    cdef Py_ssize_t i
    cdef PyObject* found = NULL
    if closures_alive == 0:                 # no node anywhere has one: no pass over the graph (as backward())
        return 0
    for i in range(order.length):
        if (<Value>order.items[i]).flags & HAS_CLOSURE and found == NULL:
            found = order.items[i]
    if found == NULL:
        return 0
    for i in range(order.length):           # before any Python code runs (the message, a GC pass)
        (<Value>order.items[i]).visited = False
    node = <Value>found
    if user == "grad":
        raise TypeError(
            f"grad cannot differentiate through {node!r} (_op {node._op!r}, label {node.label!r}): its "
            f"derivative is a _backward closure, which only backward() calls; build it from fastgrad's ops, "
            f"define the op with fastgrad.op(name, forward, derivative) (create_graph=False), or use backward()")
    raise TypeError(
        f"compile cannot replay {node!r} (_op {node._op!r}, label {node.label!r}): its derivative is a "
        f"_backward closure, which cannot recompute the node from new leaf values; define the op with "
        f"fastgrad.op(name, forward, derivative), which compile replays, or build it from fastgrad's ops")


cdef int traverse_node(PyObject* node, visitproc visit, void* arg) noexcept:
    """tp_traverse: what a node with a GC header refers to (the GC skips children without one)."""
    cdef int status = 0
    if (<Value>node).state != NULL:
        status = visit((<Value>node).state, arg)
    if status == 0 and (<Value>node).child_a != NULL:
        status = visit((<Value>node).child_a, arg)
    if status == 0 and (<Value>node).child_b != NULL:
        status = visit((<Value>node).child_b, arg)
    return status


cdef int clear_node(PyObject* node) noexcept:
    """tp_clear, on a node the GC found on a cycle of garbage: it drops everything and becomes a leaf."""
    cdef PyObject* state = (<Value>node).state
    cdef PyObject* a = (<Value>node).child_a
    cdef PyObject* b = (<Value>node).child_b
    global closures_alive
    (<Value>node).state = (<Value>node).child_a = (<Value>node).child_b = NULL
    closures_alive -= (<Value>node).flags & (HAS_CLOSURE | CALLS_PYTHON) != 0
    (<Value>node).flags &= ~(HAS_CLOSURE | HAS_MORE | CALLS_PYTHON)
    (<Value>node).op = ops.LEAF
    xdecref(state)
    xdecref(a)
    xdecref(b)
    return 0


cdef int is_gc_node(PyObject* node) noexcept:
    """tp_is_gc: only nodes with a GC header are the GC's business."""
    return (<Value>node).flags & HEADERED


cdef bint gives_children_or_op(PyObject* args, PyObject* kwds) noexcept:
    """Whether a call Value(*args, **kwds) makes a node by hand: _children or _op given and not empty."""
    cdef tuple positional = <tuple>args
    cdef dict keywords = None if kwds == NULL else <dict>kwds
    children = positional[1] if len(positional) > 1 else None if keywords is None else keywords.get("_children")
    op = positional[2] if len(positional) > 2 else None if keywords is None else keywords.get("_op")
    return not (is_empty(children) and is_empty(op))


cdef bint vector_gives_children_or_op(PyObject* const* args, Py_ssize_t count, PyObject* names) noexcept:
    """gives_children_or_op for a vectorcall: count positional arguments, then one for each name."""
    if count <= 1 and names == NULL:                 # Value(number): a leaf, the common call
        return False
    children = <object>args[1] if count > 1 else None
    op = <object>args[2] if count > 2 else None
    if names != NULL:
        for i, name in enumerate(<tuple>names):
            if name == "_children":
                children = <object>args[count + i]
            elif name == "_op":
                op = <object>args[count + i]
    return not (is_empty(children) and is_empty(op))


cdef inline bint is_empty(object x) noexcept:
    """None or an empty str, tuple, list or set; anything else may hold something (a generator does)."""
    return x is None or type(x) in (str, tuple, list, set, frozenset) and len(x) == 0


cdef Py_ssize_t closures_alive = 0      # nodes with a `_backward` closure or a custom op's: while none, backward
                                        # runs no check
cdef bint making_by_hand = False          # Value(...) is making a node by hand: tp_alloc adds a GC header
cdef newfunc cython_new = NULL         # the type's own tp_new, which calls tp_alloc
cdef vectorcallfunc cython_call = NULL  # the type's own vectorcall (Value(...) from Python), if it has one


cdef PyObject* new_value(PyTypeObject* type, PyObject* args, PyObject* kwds) noexcept:
    """tp_new: a node called into being from Python gets a GC header when __init__ will give it children or
    an op (a subclass's instances always do). The ops make theirs without this."""
    global making_by_hand
    making_by_hand = type == <PyTypeObject*>Value and gives_children_or_op(args, kwds)
    cdef PyObject* node = cython_new(type, args, kwds)
    making_by_hand = False
    if node != NULL and type != <PyTypeObject*>Value:
        # A subclass (a heap type) allocates with PyType_GenericAlloc, not ours: a GC header, tracked.
        (<Value>node).flags = HEADERED
    return node


cdef PyObject* call_value(PyObject* type, PyObject* const* args, size_t flags, PyObject* names) noexcept:
    """tp_vectorcall: Value(...) from Python, as new_value decides."""
    global making_by_hand
    making_by_hand = vector_gives_children_or_op(args, vectorcall_nargs(flags), names)
    cdef PyObject* node = cython_call(type, args, flags, names)
    making_by_hand = False
    return node


# ---------------------------------------------------------------------------------------------------
# Custom ops. fastgrad.op(name, forward, derivative) defines an op by two Python functions on floats, so that
# the replays can run it again on new numbers (a `_backward` closure cannot recompute its node). A node of it
# is a node with Python state (a GC header, tracked): op PYTHON, its CustomOp in `state`, its inputs as a
# hand-made node holds its children (bundled past two), their count in `constant`. backward() calls the
# derivative at the node's place in the sweep; the replays call both functions per node (replay.pyx,
# batched.pyx), grad() the derivative (_grad.pyx).

@cython.final
cdef class CustomOp:
    """An op made by fastgrad.op(name, forward, derivative): calling it on Values (or numbers) makes its node."""
    cdef readonly str name
    cdef readonly object forward
    cdef readonly object derivative

    def __init__(self, name, forward, derivative):
        cdef str op_name = exact_str(name, "a custom op's name")
        if not op_name:
            raise ValueError("a custom op's name must not be empty: trace, draw_dot and errors show it")
        for what, f in (("forward", forward), ("derivative", derivative)):
            if not callable(f):
                raise TypeError(f"{what} must be callable (a function of the inputs' floats), not {type_name(f)!r}")
        self.name, self.forward, self.derivative = op_name, forward, derivative

    def __call__(self, *inputs):
        """The op's node over inputs (Values, or real numbers, which become leaves as with the built-in ops)."""
        cdef Value node
        cdef tuple children = inputs
        if not inputs:
            raise TypeError(f"the custom op {self.name!r} takes one input or more, not none")
        for x in inputs:
            if not isinstance(x, Value):
                children = tuple([self.as_input(y) for y in inputs])
                break
        cdef double value = call_forward(self, data_of(children))
        global closures_alive
        node = headered_node()
        node.value = value
        link_children(node, children)
        incref(<PyObject*>self)
        node.state = <PyObject*>self
        node.constant = len(children)
        node.op = ops.PYTHON
        node.flags |= CALLS_PYTHON
        closures_alive += 1
        return node

    cdef Value as_input(self, x):
        cdef Value v = as_value(x)
        if v is None:
            raise TypeError(f"the inputs of the custom op {self.name!r} must be Values or real numbers, "
                            f"not {type_name(x)!r}")
        return v

    def __repr__(self):
        return f"<fastgrad custom op {self.name!r}>"

    def __reduce__(self):
        raise TypeError(f"the custom op {self.name!r} cannot be pickled: define it again where it is needed")


def op(name, forward, derivative):
    """A new op, as fastgrad.compile and the batched replay can run it: forward(*xs) gives the op's data from its
    inputs' data (floats), derivative(*xs) the local derivative in each input (a sequence of one number per
    input; one number for one input). Returns a callable: `op(name, ...)(a, b, ...)` makes the node, whose _op is
    name. Both functions are called once per node per pass, from Python."""
    return CustomOp(name, forward, derivative)


cdef double call_forward(CustomOp custom, tuple args) except? -1.0:
    result = custom.forward(*args)
    cdef double value
    if not as_double(result, &value):
        raise TypeError(f"the forward of the custom op {custom.name!r} must return a real number, "
                        f"not {type_name(result)!r}")
    return value


cdef int call_derivative(CustomOp custom, tuple args, double* out) except -1:
    cdef Py_ssize_t i, n = len(args)
    result = custom.derivative(*args)
    if n == 1 and as_double(result, out):
        return 0
    try:
        slopes = tuple(result)
    except TypeError:
        slopes = None
    if slopes is None or len(slopes) != n:
        got = f"{len(slopes)} numbers" if slopes is not None else repr(type_name(result))
        raise TypeError(f"the derivative of the custom op {custom.name!r} must return one number per input "
                        f"({n}), not {got}")
    for i in range(n):
        if not as_double(slopes[i], &out[i]):
            raise TypeError(f"the derivative of the custom op {custom.name!r} must return real numbers, not "
                            f"{type_name(slopes[i])!r} (for input {i})")
    return 0


cdef tuple data_of(tuple nodes):
    """The nodes' data, a tuple of floats (filled in place: no list made first)."""
    cdef Py_ssize_t k
    cdef object x
    cdef tuple args = PyTuple_New(len(nodes))
    for k in range(len(nodes)):
        x = (<Value>nodes[k]).value
        incref(<PyObject*>x)                     # the tuple takes this reference
        PyTuple_SET_ITEM(args, k, x)
    return args


cdef tuple custom_inputs(Value node):
    if not node.flags & HAS_MORE:
        return (<Value>node.child_a,) if node.child_b == NULL else (<Value>node.child_a, <Value>node.child_b)
    cdef list inputs = [<Value>node.child_a]
    cdef PyObject* rest = node.child_b
    while rest != NULL and (<Value>rest).flags & BUNDLE:
        inputs.append(<Value>(<Value>rest).child_a)
        rest = (<Value>rest).child_b
    if rest != NULL:
        inputs.append(<Value>rest)
    return tuple(inputs)


cdef double custom_forward(Value node, tuple args) except? -1.0:
    return call_forward(<CustomOp>node.state, args)


cdef int custom_derivative(Value node, tuple args, double* out) except -1:
    return call_derivative(<CustomOp>node.state, args, out)


cdef int custom_step(Value node) except -1:
    """backward()'s step at a custom op's node: its grad times each local derivative into each input's grad, in
    the inputs' order, once the derivative has returned them all (so that one raising adds nothing)."""
    cdef tuple inputs = custom_inputs(node)
    cdef Py_ssize_t i, n = len(inputs)
    cdef double few[4]
    cdef double* slopes = &few[0]
    if n > 4:
        slopes = <double*>PyMem_Malloc(n * sizeof(double))
    if slopes == NULL:
        raise MemoryError()
    try:
        call_derivative(<CustomOp>node.state, data_of(inputs), slopes)
        for i in range(n):
            (<Value>inputs[i]).gradient += node.gradient * slopes[i]
    finally:
        if slopes != &few[0]:
            PyMem_Free(slopes)
    return 0


cdef object failure_at(object error, str where):
    if not isinstance(error, Exception):
        return error                     # KeyboardInterrupt and the like go up as they are
    try:
        wrapped = type(error)(f"{error} ({where})")
    except Exception:
        wrapped = None
    if type(wrapped) is not type(error):    # an exception class that takes other arguments: the user's own
        return error
    wrapped.__cause__ = error
    return wrapped


# ---------------------------------------------------------------------------------------------------
# Node memory: the type's allocation slots. A built-in node lives in src/node_memory.h's slabs (under
# PYTHONMALLOC=debug or -X dev in its own block of Python's allocator, which the debug hooks check); a node
# with a GC header is Python's usual GC object.

cdef bint use_slabs = "debug" not in os.environ.get("PYTHONMALLOC", "") and not sys.flags.dev_mode


cdef PyObject* alloc_in_slab(PyTypeObject* type, Py_ssize_t items) noexcept:
    """tp_alloc: a zeroed node, or NULL with MemoryError set. Only Value's own instances come here: type()
    gives a subclass PyType_GenericAlloc (a GC header, tracked), and new_value marks those."""
    cdef unsigned int slab
    if making_by_hand:
        return alloc_with_header(type, items)
    cdef PyObject* node = <PyObject*>node_alloc(&slab)
    if node == NULL:
        return no_memory()
    init_object(node, type)
    (<Value>node).slab = slab
    return node


cdef PyObject* alloc_in_heap(PyTypeObject* type, Py_ssize_t items) noexcept:
    """tp_alloc under PYTHONMALLOC=debug or -X dev: a node is its own block of Python's allocator."""
    if making_by_hand:
        return alloc_with_header(type, items)
    cdef PyObject* node = <PyObject*>object_malloc(sizeof(Value))
    if node == NULL:
        return no_memory()
    memset(node, 0, sizeof(Value))
    return init_object(node, type)


cdef PyObject* alloc_with_header(PyTypeObject* type, Py_ssize_t items) noexcept:
    cdef PyObject* node = generic_alloc(type, items)          # tracked from here on
    if node != NULL:
        (<Value>node).flags = HEADERED
    return node


cdef inline void free_plain(PyObject* node) noexcept:
    """A node without a GC header goes back where tp_alloc took it from."""
    if use_slabs:
        node_free(node, (<Value>node).slab)
    else:
        object_free(node)


cdef void free_node(void* node) noexcept:
    """tp_free."""
    if (<Value><PyObject*>node).flags & HEADERED:
        gc_del(node)
    else:
        free_plain(<PyObject*>node)


cdef Py_ssize_t plain_size_correction = 0      # what sys.getsizeof adds to a built-in node's __sizeof__


# ---------------------------------------------------------------------------------------------------
# Import-time wiring, before any node exists (a node must go back to the allocator it came from)

check_node_size(sizeof(Value))                      # a compile-time check: a node must fit its slot
cdef TypeSlots* slots = <TypeSlots*>Value
slots.tp_dealloc = dealloc_node                     # the class has no __dealloc__: this is it
slots.tp_alloc = alloc_in_slab if use_slabs else alloc_in_heap
slots.tp_free = free_node
cython_new = slots.tp_new
slots.tp_new = new_value
cython_call = slots.tp_vectorcall
if cython_call != NULL:
    slots.tp_vectorcall = call_value
# Collectable per instance (tp_is_gc): nodes with a GC header only. Subclassable, and open to new methods
# (`Value.sin = sin`): a class in Python is, and micrograd's users extend theirs that way.
slots.tp_traverse = traverse_node
slots.tp_clear = clear_node
slots.tp_is_gc = is_gc_node
slots.tp_flags = (slots.tp_flags | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE) & ~Py_TPFLAGS_IMMUTABLETYPE
plain_size_correction = sys.getsizeof(leaf(0.0)) - sizeof(Value)
