"""fastgrad.grad: the gradients of some outputs with respect to some inputs, without touching any node's .grad;
with create_graph=True, as Values whose graphs express them in terms of the original leaves, so that they can
be differentiated again (Newton steps, Hessian-vector products, losses that hold u'(x)).

Two phases.

make_plan(): the engine's C topological sort over every output's graph, then one pass that gives each node a
place (inner nodes in the sort's order, then the leaves as they are met) and records each inner node's
children's places. A node's place is kept in its `gradient` for the length of that pass (the grads saved
beside it, and put back), as the replay's recorder does; every mark and grad is restored before make_plan()
returns, on every path. What follows works on arrays indexed by place, and may run Python code freely.

The sweep, in backward()'s order and with its order of additions (each node's grad into its first child,
then into its second), into a side array instead of the nodes' grads, only along paths that reach an input
(as PyTorch does: a derivative nobody asked for is not built, and cannot fail):
- floats: the kernels' derivatives (_ops.pxd), the very code backward() runs, so the same bits;
- Values: each op's derivative as ops (ops.h, beside its kernels), the same formula as its derivative kernel,
  each op made into a node with that op's own kernels, so that the first derivatives are backward()'s bits
  as well.
A custom op's node (fastgrad.op) has its derivative as a Python function on floats: the float sweep calls it,
as backward() does; it has no derivative as Values, so create_graph=True refuses a graph where one lies on a
path to an input, naming it.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from libc.math cimport signbit
from libc.string cimport memset

cimport fastgrad._ops as ops
from fastgrad.engine cimport (NodeArray, Value, binary_node, catch_up, check_replayable, count_reach_in,
                              custom_derivative, custom_inputs, free_array, leaf, sort_topologically, unary_node)


def grad(outputs, inputs, *, grad_outputs=None, bint create_graph=False):
    """The gradients of outputs (a Value or a sequence of Values, weighted by grad_outputs: one number or
    Value each, default 1.0) with respect to each of inputs, as a list in the order of inputs.

    No node's .grad changes. create_graph=False: floats, the numbers backward() would add into the inputs'
    grads. create_graph=True: Values built from the original nodes, to use in further expressions, to
    backward() or grad() again (higher orders), or to compile(). An input outside the outputs' graphs gets
    0.0 (a new zero Value with create_graph).
    """
    cdef tuple outs = as_values(outputs, "outputs")
    cdef tuple ins = as_values(inputs, "inputs")
    cdef list seeds = seed_list(grad_outputs, len(outs), create_graph)
    cdef Plan own
    cdef Plan* plan = &kept
    cdef Py_ssize_t* out_places = NULL
    cdef Py_ssize_t* in_places = NULL
    global kept_busy
    if kept_busy:              # grad called from a finalizer that ran during grad: it gets its own arrays
        own = Plan(NodeArray(NULL, 0, 0), NodeArray(NULL, 0, 0), 0, 0, NULL, 0, NULL, 0)
        plan = &own
    kept_busy |= plan == &kept
    try:
        # per output its place, then per output whether it is the first at its place; per input its place
        out_places = <Py_ssize_t*>PyMem_Malloc((2 * len(outs) + len(ins) + 1) * sizeof(Py_ssize_t))
        if out_places == NULL:
            raise MemoryError()
        in_places = out_places + 2 * len(outs)
        # Compiled graphs write their numbers back into the nodes read here; and with create_graph, Python
        # gets hold of inner nodes through the new graph (see engine.pyx, "Graphs ahead of their nodes").
        catch_up()
        count_reach_in()
        make_plan(plan, outs, ins, out_places, in_places)
        if create_graph:
            check_no_custom_op(plan)
            return sweep_values(plan, seeds, out_places, in_places, len(ins))
        return sweep_floats(plan, seeds, out_places, in_places, len(ins))
    finally:
        PyMem_Free(out_places)
        release(plan, plan != &kept)
        if plan == &kept:
            kept_busy = False


cdef tuple as_values(object values, str what):
    """values as a tuple of Values (one Value: a tuple of one). The tuple keeps the graphs alive."""
    cdef tuple result
    try:
        result = (values,) if isinstance(values, Value) else tuple(values)
    except TypeError:
        raise TypeError(f"grad's {what} must be a Value or a sequence of Values, not {type(values).__name__!r}")
    for v in result:
        if not isinstance(v, Value):
            raise TypeError(f"grad's {what} must be Values, not {type(v).__name__!r}")
    return result


cdef list seed_list(object grad_outputs, Py_ssize_t count, bint create_graph):
    """grad_outputs, one per output, as floats, or with create_graph as Values (a number becomes a leaf)."""
    cdef list seeds
    if grad_outputs is None or isinstance(grad_outputs, Value) or not hasattr(grad_outputs, "__len__"):
        seeds = [grad_outputs] * count if count == 1 or grad_outputs is None else None
        if seeds is None:
            raise TypeError(f"grad_outputs must be a sequence of {count}, one per output")
    else:
        seeds = list(grad_outputs)
        if len(seeds) != count:
            raise ValueError(f"grad_outputs has {len(seeds)} entries for {count} outputs")
    for i, seed in enumerate(seeds):
        if seed is None:
            seed = 1.0
        if isinstance(seed, Value):
            seeds[i] = seed if create_graph else (<Value>seed).value
        elif isinstance(seed, (int, float)) or hasattr(type(seed), "__float__"):
            seeds[i] = leaf(float(seed)) if create_graph else float(seed)
        else:
            raise TypeError(f"grad_outputs must be numbers or Values, not {type(seed).__name__!r}")
    return seeds


# ---------------------------------------------------------------------------------------------------
# The plan

cdef enum:
    PLACED = 1               # sort_topologically's mark (True), and place_leaf's: its place is in `gradient`
    INPUT = 2                # an input lies at or below the node
    SEEDED = 4               # an output, given a weight already


cdef struct Plan:
    NodeArray nodes          # borrowed (the outputs hold them): inner nodes children first, then the leaves
    NodeArray stack          # the sort's
    Py_ssize_t inner         # how many of nodes are inner
    Py_ssize_t spare         # a place after the nodes' (the last of numbers), which nothing reads
    Py_ssize_t* children     # inner node i's children's places: 2 * i and 2 * i + 1; `spare`: no such
    Py_ssize_t children_capacity     # child, or none of the inputs lies at or below it
    double* numbers          # while planning, each placed node's grad (its `gradient` holds its place);
    Py_ssize_t numbers_capacity      # then the sweep's gradients by place, floats or Value pointers


# The arrays are kept from one call to the next, as backward()'s are: a training loop (a physics-informed
# loss, a gradient penalty) calls grad on a graph of about the same size every step, and fresh arrays of
# that size come from the system each time, page fault after page fault.
cdef Plan kept = Plan(NodeArray(NULL, 0, 0), NodeArray(NULL, 0, 0), 0, 0, NULL, 0, NULL, 0)
cdef bint kept_busy = False
cdef enum:
    KEPT_CAPACITY = 1 << 20       # entries; a bigger array is returned after the call


cdef void release(Plan* plan, bint everything) noexcept:
    if everything or plan.nodes.capacity > KEPT_CAPACITY:
        free_array(&plan.nodes)
    if everything or plan.stack.capacity > KEPT_CAPACITY:
        free_array(&plan.stack)
    if everything or plan.children_capacity > 2 * KEPT_CAPACITY:
        PyMem_Free(plan.children)
        plan.children = NULL
        plan.children_capacity = 0
    if everything or plan.numbers_capacity > KEPT_CAPACITY:
        PyMem_Free(plan.numbers)
        plan.numbers = NULL
        plan.numbers_capacity = 0


cdef int reserve(void** array, Py_ssize_t* capacity, Py_ssize_t needed, size_t item_size) noexcept:
    """Make room for needed items in *array, keeping what it holds; 0, or -1 if memory ran out."""
    cdef void* grown
    if needed <= capacity[0]:
        return 0
    grown = PyMem_Realloc(array[0], needed * item_size)
    if grown == NULL:
        return -1
    array[0] = grown
    capacity[0] = needed
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int make_plan(Plan* plan, tuple outs, tuple ins, Py_ssize_t* out_places,
                   Py_ssize_t* in_places) except -1:
    cdef double* saved                   # each placed node's grad, while its `gradient` holds its place
    cdef Py_ssize_t i, j, count, capacity
    cdef PyObject* node
    cdef PyObject* child
    cdef NodeArray* nodes = &plan.nodes
    nodes.length = 0
    for root in outs:           # the union of the graphs, children first: a valid order for all outputs
        if not (<Value>root).visited:          # an output below another, or given twice, is placed once
            sort_topologically(<Value>root, nodes, &plan.stack)
    # backward() calls a `_backward` closure, which grad cannot see into: rather than pass nothing through
    # it, TypeError (the marks cleared)
    check_replayable(nodes, "grad")
    plan.inner = nodes.length
    # Every leaf is a child of an inner node or an output: room for all of them, so nothing fails below.
    capacity = 3 * nodes.length + len(outs) + 1
    if (reserve(<void**>&nodes.items, &nodes.capacity, capacity, sizeof(PyObject*)) < 0
            or reserve(<void**>&plan.numbers, &plan.numbers_capacity, capacity, sizeof(double)) < 0
            or reserve(<void**>&plan.children, &plan.children_capacity, 2 * nodes.length + 1,
                       sizeof(Py_ssize_t)) < 0):
        for i in range(nodes.length):
            (<Value>nodes.items[i]).visited = False
        raise MemoryError()
    saved = plan.numbers
    # No Python code and no failure from here to the end: the marks are all cleared below. An input is marked
    # INPUT first; an inner node gets the mark when a child has it (children come first).
    for j in range(len(ins)):
        (<Value>ins[j]).visited |= INPUT
    plan.spare = capacity - 1
    count = nodes.length
    for i in range(plan.inner):
        node = nodes.items[i]
        saved[i] = (<Value>node).gradient
        (<Value>node).gradient = <double>i
        for j in range(2):
            child = (<Value>node).child_a if j == 0 else (<Value>node).child_b
            plan.children[2 * i + j] = plan.spare
            if child == NULL:
                continue
            if not (<Value>child).visited & PLACED:     # a leaf met for the first time (the sort placed the rest)
                place_leaf(nodes, saved, &count, child)
            if (<Value>child).visited & INPUT:
                plan.children[2 * i + j] = <Py_ssize_t>(<Value>child).gradient
                (<Value>node).visited = (<Value>node).visited | INPUT      # (`|=` would take a reference)
    # An output's weight is its gradient, as backward() sets the root's grad (-0.0 stays -0.0); an output given
    # again, or below another, adds its weight: the first at its place is told by a mark, SEEDED.
    for j in range(len(outs)):
        node = <PyObject*>outs[j]
        if not (<Value>node).visited & PLACED:          # an output that is a leaf
            place_leaf(nodes, saved, &count, node)
        out_places[j] = <Py_ssize_t>(<Value>node).gradient
        out_places[len(outs) + j] = not (<Value>node).visited & SEEDED
        (<Value>node).visited |= SEEDED
    for j in range(len(ins)):
        node = <PyObject*>ins[j]
        in_places[j] = <Py_ssize_t>(<Value>node).gradient if (<Value>node).visited & PLACED else -1
        (<Value>node).visited = 0                        # an input outside the graphs was marked too
    nodes.length = count
    for i in range(count):
        (<Value>nodes.items[i]).gradient = saved[i]
        (<Value>nodes.items[i]).visited = 0
    return 0


cdef inline void place_leaf(NodeArray* nodes, double* saved, Py_ssize_t* count, PyObject* node) noexcept:
    saved[count[0]] = (<Value>node).gradient
    (<Value>node).gradient = <double>count[0]
    (<Value>node).visited |= PLACED
    nodes.items[count[0]] = node
    count[0] += 1


# ---------------------------------------------------------------------------------------------------
# The sweep into floats: backward()'s, into an array

@cython.boundscheck(False)
@cython.wraparound(False)
cdef list sweep_floats(Plan* plan, list seeds, Py_ssize_t* out_places, Py_ssize_t* in_places,
                       Py_ssize_t count):
    cdef double* grads = plan.numbers         # the spare place is added into, never read: not zeroed
    cdef Py_ssize_t i, j
    cdef PyObject* node
    cdef PyObject* a
    cdef PyObject* b
    cdef unsigned char op
    cdef double da, db
    memset(grads, 0, plan.nodes.length * sizeof(double))
    for j in range(len(seeds)):
        if out_places[len(seeds) + j]:          # the first output at its place: see make_plan
            grads[out_places[j]] = <double>seeds[j]
        else:
            grads[out_places[j]] += <double>seeds[j]
    for i in range(plan.inner - 1, -1, -1):
        node = plan.nodes.items[i]
        op = (<Value>node).op
        if op <= ops.CUSTOM:       # a hand-made node: nothing flows through it, as in backward()
            continue
        if op == ops.PYTHON:
            custom_step(plan, grads, i)
            continue
        a = (<Value>node).child_a
        b = (<Value>node).child_b
        da = db = 0.0
        ops.derivative(op, grads[i], (<Value>node).value, (<Value>a).value,
                       0.0 if b == NULL else (<Value>b).value, (<Value>node).constant, &da, &db)
        grads[plan.children[2 * i]] += da       # into the spare place for a pruned child
        grads[plan.children[2 * i + 1]] += db
    return [grads[in_places[j]] if in_places[j] >= 0 else 0.0 for j in range(count)]


cdef int custom_step(Plan* plan, double* grads, Py_ssize_t i) except -1:
    """backward()'s step at a custom op's node i: its grad times each local derivative into each input's place,
    in the inputs' order. Past the second, the inputs' places are read through the bundles that hold them
    (engine.pyx, set_children): inner nodes, each with its first child's place and the rest's."""
    cdef Value node = <Value>plan.nodes.items[i]
    cdef tuple inputs = custom_inputs(node)
    cdef Py_ssize_t k, place, n = len(inputs), rest = plan.children[2 * i + 1]
    cdef double* slopes = <double*>PyMem_Malloc(n * sizeof(double))
    if slopes == NULL:
        raise MemoryError()
    try:
        custom_derivative(node, tuple([(<Value>v).value for v in inputs]), slopes)
        for k in range(n):
            if k == 0:
                place = plan.children[2 * i]
            elif k == n - 1 or rest == plan.spare:      # the last input, or no input lies below the rest
                place = rest
            else:
                place = plan.children[2 * rest]
                rest = plan.children[2 * rest + 1]
            grads[place] += grads[i] * slopes[k]
    finally:
        PyMem_Free(slopes)
    return 0


cdef int check_no_custom_op(Plan* plan) except -1:
    cdef Py_ssize_t i
    cdef Value node
    for i in range(plan.inner):
        node = <Value>plan.nodes.items[i]
        if node.op == ops.PYTHON and (plan.children[2 * i] != plan.spare or plan.children[2 * i + 1] != plan.spare):
            raise TypeError(
                f"grad(create_graph=True) cannot differentiate through {node!r} (_op {node._op!r}, label "
                f"{node.label!r}): the custom op's derivative is a Python function on floats, not made of Values; "
                f"use create_graph=False, or build the op from fastgrad's ops")
    return 0


# ---------------------------------------------------------------------------------------------------
# The sweep into Values

@cython.final
cdef class _Sweep:
    """The gradient built so far for each place (NULL: nothing has flowed into it), and the registers that a
    derivative's steps (ops.h) read and write. Everything per node works on borrowed pointers: a reference is
    taken only where a node is kept (a gradient at its place, a step's result until its derivative is added)."""
    cdef PyObject** grads          # owned references, in the plan's numbers (a pointer is as big as a double)
    cdef Py_ssize_t spare
    cdef Value one                 # the constants' registers point at these
    cdef Value zero
    cdef Value half
    cdef PyObject* registers[ops.R_T0 + 5]     # by ops.h's register numbers; the steps' results are owned
    cdef int made                  # how many steps' results the registers hold now

    cdef void set_constants(self) noexcept:
        self.registers[<int>ops.R_NONE] = NULL
        self.registers[<int>ops.R_ONE] = <PyObject*>self.one
        self.registers[<int>ops.R_ZERO] = <PyObject*>self.zero
        self.registers[<int>ops.R_HALF] = <PyObject*>self.half

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int add_to(self, Py_ssize_t place, PyObject* term) except -1:
        """Add term (borrowed) into the gradient at place, as backward() adds into a grad that starts at 0.0.
        NULL: the kernel adds 0.0, which changes a grad only if it is -0.0 (a place nothing flowed into yet
        stays empty, which the sweep reads as 0.0)."""
        cdef PyObject* total = self.grads[place]
        cdef Value made
        if term == NULL:
            if total != NULL and (<Value>total).value == 0.0 and signbit((<Value>total).value):
                term = <PyObject*>self.zero           # -0.0 + 0.0 is 0.0
            else:
                return 0
        if total != NULL:
            made = apply2(ops.ADD, <Value>total, <Value>term)        # it holds total now
            self.grads[place] = <PyObject*>made
            Py_INCREF(made)
            Py_DECREF(<object>total)
        elif (<Value>term).value == 0.0 and signbit((<Value>term).value):
            made = apply2(ops.ADD, self.zero, <Value>term)   # 0.0 + -0.0 is 0.0, as backward() has it
            self.grads[place] = <PyObject*>made
            Py_INCREF(made)
        else:
            self.grads[place] = term
            Py_INCREF(<object>term)
        return 0

    cdef PyObject* build(self, const ops.DerivativeSteps* steps, Value out) except? NULL:
        """Make a derivative's steps (ops.h) into nodes, one a step with its op's own kernels, in order, the
        node's registers set; the register holding the result (borrowed: NULL where the kernel adds 0.0)."""
        cdef int i
        cdef const ops.Step* step
        cdef Value made
        cdef Value x
        for i in range(steps.steps):
            step = &steps.step[i]
            x = self.operand(step.x, out)
            if step.op == ops.POW_CONST:
                made = pow_const(x, step.y, out)
            elif ops.op_facts(step.op).arity == 1:
                made = apply1(step.op, x)
            else:
                made = apply2(step.op, x, self.operand(step.y, out))
            Py_INCREF(made)
            self.registers[ops.R_T0 + i] = <PyObject*>made
            self.made = i + 1
        if steps.result == ops.R_NONE:
            return NULL
        return self.registers[steps.result]

    cdef inline Value operand(self, int register, Value out):
        """A step's operand: its register, or a new leaf for the constants of this node (its k, its slope)."""
        cdef double da = 0.0, db = 0.0
        if register == ops.R_K:
            return leaf(out.constant)
        if register == ops.R_DB1:
            ops.derivative(out.op, 1.0, out.value, (<Value>out.child_a).value, (<Value>out.child_b).value,
                           out.constant, &da, &db)
            return leaf(db)
        return <Value>self.registers[register]

    cdef void release(self) noexcept:
        """Drop the steps' results (the nodes made from them, or the gradient they were added into, hold them)."""
        cdef int i
        for i in range(self.made):
            Py_DECREF(<object>self.registers[ops.R_T0 + i])
        self.made = 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef list sweep_values(Plan* plan, list seeds, Py_ssize_t* out_places, Py_ssize_t* in_places,
                       Py_ssize_t count):
    cdef _Sweep sweep = _Sweep.__new__(_Sweep)
    cdef Py_ssize_t i, j
    cdef PyObject* node
    cdef PyObject* g
    sweep.grads = <PyObject**>plan.numbers
    memset(sweep.grads, 0, plan.nodes.length * sizeof(PyObject*))   # derivative_values never adds to spare
    sweep.spare = plan.spare
    sweep.one = leaf(1.0)
    sweep.zero = leaf(0.0)
    sweep.half = leaf(0.5)
    sweep.set_constants()
    try:
        for j in range(len(seeds)):
            if out_places[len(seeds) + j]:
                Py_INCREF(seeds[j])
                sweep.grads[out_places[j]] = <PyObject*>seeds[j]
            else:
                sweep.add_to(out_places[j], <PyObject*>seeds[j])
        for i in range(plan.inner - 1, -1, -1):
            node = plan.nodes.items[i]
            if (<Value>node).op <= ops.CUSTOM:    # nothing flows through a hand-made node, as in backward()
                continue
            # A node nothing but 0.0 flowed into (under x ** 0, or a hand-made node) still sends its children
            # 0 times its local derivative, as backward() does: nan where that derivative is inf or nan.
            g = sweep.grads[i]
            derivative_values(sweep, <PyObject*>sweep.zero if g == NULL else g, node,
                              plan.children[2 * i], plan.children[2 * i + 1])
        result = []
        for j in range(count):
            g = sweep.grads[in_places[j]] if in_places[j] >= 0 else NULL
            result.append(leaf(0.0) if g == NULL else <Value>g)
        return result
    finally:
        sweep.release()
        for i in range(plan.nodes.length):
            Py_XDECREF(sweep.grads[i])


# Each op's derivative as Values is a table beside its kernels in ops.h ("Derivatives as ops"), which build()
# interprets: the alternative, a Cython function per op building nodes, could not sit beside the kernel (a
# Value cannot appear in C, and the kernels sit below the engine), so an op's derivative would be written in
# two places in two languages; as steps of ops it is written once more, next to the kernel it must match.
cdef int derivative_values(_Sweep s, PyObject* g, PyObject* out, Py_ssize_t pa, Py_ssize_t pb) except -1:
    """Add what out's gradient g gives its children into their gradients at places pa and pb (s.spare:
    a child no input lies below, whose term is not built)."""
    cdef const ops.DerivativeSteps* da
    cdef const ops.DerivativeSteps* db
    cdef PyObject* b = (<Value>out).child_b
    s.registers[<int>ops.R_G] = g
    s.registers[<int>ops.R_OUT] = out
    s.registers[<int>ops.R_A] = (<Value>out).child_a
    s.registers[<int>ops.R_B] = b                      # NULL for a one-child op, whose steps do not read it
    ops.derivative_ops((<Value>out).op, (<Value>(<Value>out).child_a).value, 0.0 if b == NULL else (<Value>b).value,
                       (<Value>out).constant, &da, &db)
    # (most derivatives are g itself, a sum's: no step to make, no call)
    if pa != s.spare:
        s.add_to(pa, s.build(da, <Value>out) if da.steps else s.registers[da.result])
        if s.made:
            s.release()
    if pb != s.spare:
        s.add_to(pb, s.build(db, <Value>out) if db.steps else s.registers[db.result])
        if s.made:
            s.release()
    return 0


cdef inline Value apply2(int op, Value x, Value y):
    """The node op(x, y), its data from the op's kernel, or the eager op's exception."""
    cdef double value = 0.0
    cdef ops.Status status = ops.forward(op, x.value, y.value, 0.0, &value)
    if status != ops.OK:
        raise ops.op_error(status)
    return binary_node(op, value, x, y)


cdef inline Value apply1(int op, Value x):
    cdef double value = 0.0
    cdef ops.Status status = ops.forward(op, x.value, 0.0, 0.0, &value)
    if status != ops.OK:
        raise ops.op_error(status)
    return unary_node(op, value, x)


cdef Value pow_const(Value x, int exponent, Value out):
    """x ** k, k the number in the exponent register (ops.h): out's k - 1, spelled `**2` rather than `**2.0` if
    out's was given as an int, or -1 or -2, as micrograd spells b ** -1."""
    cdef double k = out.constant - 1.0 if exponent == ops.R_K_MINUS_ONE else (
        -1.0 if exponent == ops.R_MINUS_ONE else -2.0)
    cdef bint given_as_int = out.constant_is_int if exponent == ops.R_K_MINUS_ONE else True
    cdef double value = 0.0
    cdef ops.Status status = ops.pow_const_forward(x.value, 0.0, k, &value)
    if status != ops.OK:
        raise ops.op_error(status)
    cdef Value n = unary_node(ops.POW_CONST, value, x)
    n.constant = k
    n.constant_is_int = given_as_int
    return n
