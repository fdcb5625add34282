"""fastgrad.grad: the gradients of some outputs with respect to some inputs, without touching any node's .grad;
with create_graph=True, as Values whose graphs express them in terms of the original leaves, so that they can
be differentiated again (Newton steps, Hessian-vector products, losses that hold u'(x)).

Two phases, each one pass over the graph's nodes (80 bytes each, read from memory: a pass costs its cache
misses, whatever it does per node).

make_plan(): a depth-first sort of every output's graph that, as it puts a node after its children (backward()'s
order), gives it a place (leaves get theirs where they are first met) and records its children's places. A
node's place is kept in its `gradient` (its grad saved beside it, in `saved`), as the replay's recorder does.
What follows works on arrays indexed by place.

The sweep, in backward()'s order and with its order of additions (each node's grad into its first child,
then into its second), into a side array instead of the nodes' grads, only along paths that reach an input
(as PyTorch does: a derivative nobody asked for is not built, and cannot fail):
- floats: the kernels' derivatives (_ops.pxd), the very code backward() runs, so the same bits;
- Values: each op's derivative as ops (ops.h, beside its kernels), the same formula as its derivative kernel,
  each op made into a node with that op's own kernels, so that the first derivatives are backward()'s bits
  as well.
The sweep gives each node its grad and clears its mark as it reaches it (the give-back), while no Python code
can run: a sweep that may run some (a custom op's functions; nodes with a GC header, whose making can start a
GC pass and whose freeing can run finalizers) gives every grad and mark back before it starts, and a failing
sweep gives back the rest before its exception is made. So no Python code ever sees a place or a mark.
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

cdef extern from "portability.h":
    void prefetch "fg_prefetch" (const void* p) noexcept nogil
from fastgrad.engine cimport (CALLS_PYTHON, HAS_CLOSURE, HEADERED, NodeArray, Value, catch_up,
                              check_replayable, count_reach_in, custom_derivative, custom_inputs, fg_node_memory,
                              free_array, leaf, new_binary_node, node_memory, take_binary_node, unary_node)


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
    cdef _Sweep sweep = _Sweep.new() if create_graph else None    # before the plan: making it can start a GC pass
    cdef Plan own
    cdef Plan* plan = &kept
    cdef Py_ssize_t* out_places = NULL
    cdef Py_ssize_t* in_places = NULL
    cdef NodeArray found
    global kept_busy
    if kept_busy:              # grad called from a finalizer that ran during grad: it gets its own arrays
        own = empty_plan()
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
        # backward() calls a `_backward` closure, which grad cannot see into: rather than pass nothing through
        # it, the engine's TypeError (every grad and mark given back first)
        if plan.closure != NULL:
            give_back(plan)
            found = NodeArray(&plan.closure, 1, 1)
            check_replayable(&found, "grad")
        if create_graph:
            if plan.custom != NULL:
                give_back(plan)
                raise custom_op_error(<Value>plan.custom)
            return sweep_values(sweep, plan, seeds, out_places, in_places, len(ins))
        return sweep_floats(plan, seeds, out_places, in_places, len(ins))
    finally:
        give_back(plan)           # nothing left to give back unless a failure came past the sweeps
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


cdef object custom_op_error(Value node):
    return TypeError(
        f"grad(create_graph=True) cannot differentiate through {node!r} (_op {node._op!r}, label "
        f"{node.label!r}): the custom op's derivative is a Python function on floats, not made of Values; "
        f"use create_graph=False, or build the op from fastgrad's ops")


# ---------------------------------------------------------------------------------------------------
# The plan

cdef enum:
    PLACED = 1               # on the sort's stack, then placed: its place is in `gradient`
    INPUT = 2                # an input lies at or below the node
    SEEDED = 4               # an output, given a weight already
    ASKED = 8                # an input itself: the sweep keeps its gradient for the result
    NONE = -1                # a child's place where there is no child, or no input lies at or below it: the
                             # spare place before the others, which the float sweep adds into and nothing reads


cdef struct Plan:
    NodeArray nodes          # borrowed (the outputs hold them): every placed node, by place; inner nodes in
                             # backward()'s order, each leaf just after the node where it was first met
    NodeArray stack          # the sort's
    Py_ssize_t capacity      # places the arrays below (and nodes.items) have room for
    double* saved            # each placed node's grad, while its `gradient` holds its place
    Py_ssize_t* children     # place p's children's places: 2 * p and 2 * p + 1 (leaves: not set)
    double* numbers          # the sweep's gradients, floats or Value pointers: place p's at p + 1, NONE's at 0
    Py_ssize_t holding       # the nodes at places below it still hold their place and their mark
    unsigned char flags      # every placed node's flags, or-ed
    PyObject* closure        # the first inner node with a `_backward` closure, if any
    PyObject* custom         # the first custom op's node that an input lies below, if any


cdef inline Plan empty_plan() noexcept:
    return Plan(NodeArray(NULL, 0, 0), NodeArray(NULL, 0, 0), 0, NULL, NULL, NULL, 0, 0, NULL, NULL)


# The arrays are kept from one call to the next, as backward()'s are: a training loop (a physics-informed
# loss, a gradient penalty) calls grad on a graph of about the same size every step, and fresh arrays of
# that size come from the system each time, page fault after page fault.
cdef Plan kept = empty_plan()
cdef bint kept_busy = False
cdef enum:
    AHEAD = 16
    KEPT_CAPACITY = 1 << 20       # places; bigger arrays are returned after the call


cdef void release(Plan* plan, bint everything) noexcept:
    if everything or plan.capacity > KEPT_CAPACITY:
        free_array(&plan.nodes)
        PyMem_Free(plan.saved)
        PyMem_Free(plan.children)
        PyMem_Free(plan.numbers)
        plan.saved = plan.numbers = NULL
        plan.children = NULL
        plan.capacity = 0
    if everything or plan.stack.capacity > KEPT_CAPACITY:
        free_array(&plan.stack)


cdef int reserve(void** array, Py_ssize_t needed, size_t item_size) noexcept:
    """Make room for needed items in *array, keeping what it holds; 0, or -1 if memory ran out."""
    cdef void* grown = PyMem_Realloc(array[0], needed * item_size)
    if grown == NULL:
        return -1
    array[0] = grown
    return 0


cdef int grow(Plan* plan, Py_ssize_t needed) except -1:
    """Room for needed places (at least), in every array indexed by place."""
    cdef Py_ssize_t capacity = max(needed, 2 * plan.capacity, 1024)
    if (reserve(<void**>&plan.nodes.items, capacity, sizeof(PyObject*)) < 0
            or reserve(<void**>&plan.saved, capacity, sizeof(double)) < 0
            or reserve(<void**>&plan.children, 2 * capacity, sizeof(Py_ssize_t)) < 0
            or reserve(<void**>&plan.numbers, capacity + 1, sizeof(double)) < 0):
        raise MemoryError()                     # (each array grown so far keeps its room: realloc kept it valid)
    plan.capacity = plan.nodes.capacity = capacity
    return 0


cdef int push(NodeArray* stack, PyObject* node) except -1:
    cdef PyObject** items
    cdef Py_ssize_t capacity
    if stack.length == stack.capacity:
        capacity = max(2 * stack.capacity, 1024)
        items = <PyObject**>PyMem_Realloc(stack.items, capacity * sizeof(PyObject*))
        if items == NULL:
            raise MemoryError()
        stack.items = items
        stack.capacity = capacity
    stack.items[stack.length] = node
    stack.length += 1
    return 0


cdef inline void place(Plan* plan, PyObject* node) noexcept:
    """Give node the next place (room for it is made beforehand)."""
    cdef Py_ssize_t p = plan.nodes.length
    plan.saved[p] = (<Value>node).gradient
    (<Value>node).gradient = <double>p
    (<Value>node).visited = (<Value>node).visited | PLACED      # (`|=` would take a reference)
    plan.flags |= (<Value>node).flags
    plan.nodes.items[p] = node
    plan.nodes.length = p + 1


cdef inline bint unplaced_op(PyObject* node) noexcept:
    return node != NULL and (<Value>node).child_a != NULL and not (<Value>node).visited & PLACED


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void place_inner(Plan* plan, PyObject* node) noexcept:
    """Place an inner node whose inner children all have places; its leaves met for the first time after it.
    An inner node is marked INPUT when a child is (children come first)."""
    cdef Py_ssize_t p = plan.nodes.length
    cdef PyObject* child
    cdef bint below = False
    cdef int j
    place(plan, node)
    for j in range(2):
        child = (<Value>node).child_a if j == 0 else (<Value>node).child_b
        plan.children[2 * p + j] = NONE
        if child == NULL:
            continue
        if not (<Value>child).visited & PLACED:
            place(plan, child)
        if (<Value>child).visited & INPUT:
            plan.children[2 * p + j] = <Py_ssize_t>(<Value>child).gradient
            below = True
    if below:
        (<Value>node).visited = (<Value>node).visited | INPUT
        if (<Value>node).op == ops.PYTHON and plan.custom == NULL:
            plan.custom = node
    if (<Value>node).flags & HAS_CLOSURE and plan.closure == NULL:
        plan.closure = node


cdef int place_graph(Plan* plan, PyObject* root) except -1:
    """root's graph, in the order of the engine's sort_topologically (backward()'s): an iterative depth-first
    search, first child first, each node placed once its children are."""
    cdef NodeArray* stack = &plan.stack
    cdef PyObject* top
    cdef PyObject* child
    stack.length = 0
    if not unplaced_op(root):      # a leaf (placed as an output), or below an output placed before
        return 0
    push(stack, root)
    (<Value>root).visited = (<Value>root).visited | PLACED
    while stack.length:
        top = stack.items[stack.length - 1]
        child = (<Value>top).child_a
        if not unplaced_op(child):
            child = (<Value>top).child_b
        if unplaced_op(child):                   # descend, as the recursion would
            prefetch((<Value>child).child_b)
            push(stack, child)
            (<Value>child).visited = (<Value>child).visited | PLACED
        else:                                    # all children placed: top follows them, then its new leaves
            if plan.nodes.length + 3 > plan.capacity:
                grow(plan, plan.nodes.length + 3)
            place_inner(plan, top)
            stack.length -= 1
    return 0


cdef int make_plan(Plan* plan, tuple outs, tuple ins, Py_ssize_t* out_places,
                   Py_ssize_t* in_places) except -1:
    cdef Py_ssize_t i, j
    cdef PyObject* node
    plan.nodes.length = plan.holding = 0
    plan.flags = 0
    plan.closure = plan.custom = NULL
    for j in range(len(ins)):
        (<Value>ins[j]).visited |= INPUT | ASKED
    try:
        for root in outs:       # the union of the graphs, children first: a valid order for all outputs
            place_graph(plan, <PyObject*>root)
        if plan.nodes.length + len(outs) > plan.capacity:      # outputs that are leaves
            grow(plan, plan.nodes.length + len(outs))
    except MemoryError:
        plan.holding = plan.nodes.length
        give_back(plan)
        for i in range(plan.stack.length):        # pushed, not placed
            (<Value>plan.stack.items[i]).visited = 0
        for j in range(len(ins)):
            (<Value>ins[j]).visited = 0
        raise
    # An output's weight is its gradient, as backward() sets the root's grad (-0.0 stays -0.0); an output given
    # again, or below another, adds its weight: the first at its place is told by a mark, SEEDED.
    for j in range(len(outs)):
        node = <PyObject*>outs[j]
        if not (<Value>node).visited & PLACED:          # an output that is a leaf
            place(plan, node)
        out_places[j] = <Py_ssize_t>(<Value>node).gradient
        out_places[len(outs) + j] = not (<Value>node).visited & SEEDED
        (<Value>node).visited |= SEEDED
    for j in range(len(ins)):
        node = <PyObject*>ins[j]
        if (<Value>node).visited & PLACED:
            in_places[j] = <Py_ssize_t>(<Value>node).gradient
        else:
            in_places[j] = -1
            (<Value>node).visited = 0                    # an input outside the graphs was marked too
    plan.holding = plan.nodes.length
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void give_back_at(Plan* plan, Py_ssize_t p) noexcept:
    (<Value>plan.nodes.items[p]).gradient = plan.saved[p]
    (<Value>plan.nodes.items[p]).visited = 0


cdef void give_back(Plan* plan) noexcept:
    """Every node still holding a place gets its grad back and loses its marks."""
    cdef Py_ssize_t p
    for p in range(plan.holding):
        give_back_at(plan, p)
    plan.holding = 0


# ---------------------------------------------------------------------------------------------------
# The sweep into floats: backward()'s, into an array

@cython.boundscheck(False)
@cython.wraparound(False)
cdef list sweep_floats(Plan* plan, list seeds, Py_ssize_t* out_places, Py_ssize_t* in_places,
                       Py_ssize_t count):
    cdef double* grads = plan.numbers + 1     # the spare place, grads[NONE], is added into, never read
    cdef Py_ssize_t i, j
    cdef PyObject* node
    cdef PyObject* a
    cdef PyObject* b
    cdef unsigned char op
    cdef double da, db
    cdef bint giving_back = not plan.flags & CALLS_PYTHON     # else a custom op's functions run in the sweep
    if not giving_back:
        give_back(plan)
    memset(grads, 0, plan.nodes.length * sizeof(double))
    for j in range(len(seeds)):
        if out_places[len(seeds) + j]:          # the first output at its place: see make_plan
            grads[out_places[j]] = <double>seeds[j]
        else:
            grads[out_places[j]] += <double>seeds[j]
    for i in range(plan.nodes.length - 1, -1, -1):
        node = plan.nodes.items[i]
        if giving_back:
            give_back_at(plan, i)
        op = (<Value>node).op
        if op <= ops.CUSTOM:       # a leaf, or a hand-made node: nothing flows through it, as in backward()
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
    plan.holding = 0
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
            elif k == n - 1 or rest == NONE:      # the last input, or no input lies below the rest
                place = rest
            else:
                place = plan.children[2 * rest]
                rest = plan.children[2 * rest + 1]
            grads[place] += grads[i] * slopes[k]
    finally:
        PyMem_Free(slopes)
    return 0


# ---------------------------------------------------------------------------------------------------
# The sweep into Values

@cython.final
cdef class _Sweep:
    """The gradient built so far for each place (NULL: nothing has flowed into it), and the registers that a
    derivative's steps (ops.h) read and write. Everything per node works on borrowed pointers: a reference is
    taken only where a node is kept (a gradient at its place, a step's result until its derivative is added)."""
    cdef PyObject** grads          # owned references, in the plan's numbers (a pointer is as big as a double)
    cdef Plan* plan
    cdef Value one                 # the constants' registers point at these
    cdef Value zero
    cdef Value half
    cdef PyObject* registers[ops.R_T0 + 5]     # by ops.h's register numbers; the steps' results are owned
    cdef int made                  # how many steps' results the registers hold now
    cdef fg_node_memory* memory    # the engine's slabs, for make_node

    @staticmethod
    cdef _Sweep new():
        cdef _Sweep sweep = _Sweep.__new__(_Sweep)
        sweep.one = leaf(1.0)
        sweep.zero = leaf(0.0)
        sweep.half = leaf(0.5)
        sweep.registers[<int>ops.R_NONE] = NULL
        sweep.registers[<int>ops.R_ONE] = <PyObject*>sweep.one
        sweep.registers[<int>ops.R_ZERO] = <PyObject*>sweep.zero
        sweep.registers[<int>ops.R_HALF] = <PyObject*>sweep.half
        return sweep

    cdef int fail(self, ops.Status status) except -1:
        """An op's kernel refused its operands (a derivative outside its domain): the eager op's exception,
        made once every grad and mark is given back."""
        give_back(self.plan)
        raise ops.op_error(status)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline int add_to(self, Py_ssize_t place, PyObject* term) except -1:
        """Add term (borrowed) into the gradient at place, as backward() adds into a grad that starts at 0.0.
        NULL: the kernel adds 0.0, which changes a grad only if it is -0.0 (a place nothing flowed into yet
        stays empty, which the sweep reads as 0.0). The first term at a place, the common case, is kept here;
        the rest is add_term's, out of line."""
        if (self.grads[place] == NULL and term != NULL
                and not ((<Value>term).value == 0.0 and signbit((<Value>term).value))):
            Py_INCREF(<object>term)
            self.grads[place] = term
            return 0
        return self.add_term(place, term)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int add_term(self, Py_ssize_t place, PyObject* term) except -1:
        cdef PyObject* total = self.grads[place]
        cdef double value = 0.0
        if term == NULL:
            if total == NULL or not ((<Value>total).value == 0.0 and signbit((<Value>total).value)):
                return 0
            term = <PyObject*>self.zero                   # -0.0 + 0.0 is 0.0
        elif total == NULL:                               # term is -0.0 (add_to keeps any other first term):
            total = <PyObject*>self.zero                  # 0.0 + -0.0 is 0.0, as backward() has it
            Py_INCREF(<object>total)
        ops.add_forward((<Value>total).value, (<Value>term).value, 0.0, &value)     # never fails
        self.grads[place] = self.make_node(ops.ADD, value, total, term)          # it holds total now
        Py_DECREF(<object>total)
        return 0

    cdef PyObject* build(self, const ops.DerivativeSteps* steps, Value out) except? NULL:
        """Make a derivative's steps (ops.h) into nodes, one a step with its op's own kernels, in order, the
        node's registers set; the register holding the result (borrowed: NULL where the kernel adds 0.0)."""
        cdef int i
        cdef const ops.Step* step
        cdef Value made
        cdef Value x
        cdef Value y
        for i in range(steps.steps):
            step = &steps.step[i]
            x = self.operand(step.x, out)
            if step.op == ops.POW_CONST:
                made = self.pow_const(x, step.y, out)
            elif ops.op_facts(step.op).arity == 1:
                made = self.apply1(step.op, x)
            else:
                y = self.operand(step.y, out)
                self.registers[ops.R_T0 + i] = self.make2(step.op, <PyObject*>x, <PyObject*>y)
                self.made = i + 1
                continue
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

    cdef inline PyObject* make2(self, int op, PyObject* x, PyObject* y) except NULL:
        """The node op(x, y) as a new reference, its data from the op's kernel, or the eager op's exception."""
        cdef double value = 0.0
        cdef ops.Status status = ops.forward(op, (<Value>x).value, (<Value>y).value, 0.0, &value)
        if status != ops.OK:
            self.fail(status)
        return self.make_node(op, value, x, y)

    cdef inline PyObject* make_node(self, int op, double value, PyObject* x, PyObject* y) except NULL:
        """The node op(x, y) of data value, a new reference: inline where the engine allows (engine.pxd)."""
        cdef PyObject* n = take_binary_node(self.memory, op, value, x, y)
        return n if n != NULL else new_binary_node(op, value, x, y)

    cdef inline Value apply1(self, int op, Value x):
        cdef double value = 0.0
        cdef ops.Status status = ops.forward(op, x.value, 0.0, 0.0, &value)
        if status != ops.OK:
            self.fail(status)
        return unary_node(op, value, x)

    cdef Value pow_const(self, Value x, int exponent, Value out):
        """x ** k, k the number in the exponent register (ops.h): out's k - 1, spelled `**2` rather than `**2.0`
        if out's was given as an int, or -1 or -2, as micrograd spells b ** -1."""
        cdef double k = out.constant - 1.0 if exponent == ops.R_K_MINUS_ONE else (
            -1.0 if exponent == ops.R_MINUS_ONE else -2.0)
        cdef bint given_as_int = out.constant_is_int if exponent == ops.R_K_MINUS_ONE else True
        cdef double value = 0.0
        cdef ops.Status status = ops.pow_const_forward(x.value, 0.0, k, &value)
        if status != ops.OK:
            self.fail(status)
        cdef Value n = unary_node(ops.POW_CONST, value, x)
        n.constant = k
        n.constant_is_int = given_as_int
        return n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef list sweep_values(_Sweep sweep, Plan* plan, list seeds, Py_ssize_t* out_places, Py_ssize_t* in_places,
                       Py_ssize_t count):
    cdef Py_ssize_t i, j, p
    cdef PyObject* node
    cdef PyObject* ahead
    cdef PyObject* g
    cdef unsigned char flags = plan.flags
    cdef bint giving_back, keep
    for seed in seeds:
        flags |= (<Value>seed).flags
    # With a GC header in the graph or a seed, the nodes made here get one too (tracked: making one can start a
    # GC pass), and freeing one can run finalizers: every grad and mark is given back first.
    giving_back = not flags & HEADERED
    if not giving_back:
        give_back(plan)
    sweep.plan = plan
    sweep.memory = node_memory()
    sweep.grads = <PyObject**>(plan.numbers + 1)
    memset(sweep.grads, 0, plan.nodes.length * sizeof(PyObject*))   # derivative_values never adds to NONE
    try:
        for j in range(len(seeds)):
            if out_places[len(seeds) + j]:
                Py_INCREF(seeds[j])
                sweep.grads[out_places[j]] = <PyObject*>seeds[j]
            else:
                sweep.add_to(out_places[j], <PyObject*>seeds[j])
        for i in range(plan.nodes.length - 1, -1, -1):
            if i >= AHEAD:
                ahead = plan.nodes.items[i - AHEAD // 2]
                prefetch(plan.nodes.items[i - AHEAD])
                prefetch((<Value>ahead).child_a)
                prefetch((<Value>ahead).child_b)
            node = plan.nodes.items[i]
            g = sweep.grads[i]
            # Nothing flows to this place any more: its gradient is dropped here (where it is still in the
            # cache) unless it is an input's, for the result.
            keep = True
            if giving_back:
                keep = (<Value>node).visited & ASKED
                give_back_at(plan, i)
                plan.holding = i
            if (<Value>node).op > ops.CUSTOM:    # nothing flows through a leaf or a hand-made node (backward())
                # A node nothing but 0.0 flowed into (under x ** 0, or a hand-made node) still sends its
                # children 0 times its local derivative, as backward() does: nan where that derivative is
                # inf or nan.
                derivative_values(sweep, <PyObject*>sweep.zero if g == NULL else g, node,
                                  plan.children[2 * i], plan.children[2 * i + 1])
            if not keep and g != NULL:
                sweep.grads[i] = NULL
                Py_DECREF(<object>g)
        result = []
        for j in range(count):
            g = sweep.grads[in_places[j]] if in_places[j] >= 0 else NULL
            result.append(leaf(0.0) if g == NULL else <Value>g)
    except BaseException:
        give_back(plan)
        sweep.release()
        for p in range(plan.nodes.length):
            Py_XDECREF(sweep.grads[p])
        raise
    if giving_back:        # only the inputs' gradients are left (an input given twice: once)
        for j in range(count):
            if in_places[j] >= 0:
                Py_XDECREF(sweep.grads[in_places[j]])
                sweep.grads[in_places[j]] = NULL
    else:
        for p in range(plan.nodes.length):
            Py_XDECREF(sweep.grads[p])
    return result


# Each op's derivative as Values is a table beside its kernels in ops.h ("Derivatives as ops"), which build()
# interprets: the alternative, a Cython function per op building nodes, could not sit beside the kernel (a
# Value cannot appear in C, and the kernels sit below the engine), so an op's derivative would be written in
# two places in two languages; as steps of ops it is written once more, next to the kernel it must match.
cdef int derivative_values(_Sweep s, PyObject* g, PyObject* out, Py_ssize_t pa, Py_ssize_t pb) except -1:
    """Add what out's gradient g gives its children into their gradients at places pa and pb (NONE: a child no
    input lies below, whose term is not built)."""
    cdef const ops.DerivativeSteps* da
    cdef const ops.DerivativeSteps* db
    cdef PyObject* b = (<Value>out).child_b
    s.registers[<int>ops.R_G] = g
    s.registers[<int>ops.R_OUT] = out
    s.registers[<int>ops.R_A] = (<Value>out).child_a
    s.registers[<int>ops.R_B] = b                      # NULL for a one-child op, whose steps do not read it
    ops.derivative_ops((<Value>out).op, (<Value>g).value, (<Value>(<Value>out).child_a).value,
                       0.0 if b == NULL else (<Value>b).value, (<Value>out).constant, &da, &db)
    if pa != NONE:
        add_derivative(s, pa, da, <Value>out)
    if pb != NONE:
        add_derivative(s, pb, db, <Value>out)
    return 0


cdef inline int add_derivative(_Sweep s, Py_ssize_t place, const ops.DerivativeSteps* d, Value out) except -1:
    """Make one child's derivative d and add it into the gradient at place. Most derivatives are g itself (a
    sum's: no step to make) or one op on two registers (a product's): those are made without build()'s
    registers."""
    cdef const ops.Step* step = &d.step[0]
    if d.steps == 0:
        return s.add_to(place, s.registers[d.result])
    if (d.steps == 1 and d.result == ops.R_T0 and step.op != ops.POW_CONST and ops.op_facts(step.op).arity == 2
            and step.x != ops.R_K and step.x != ops.R_DB1 and step.y != ops.R_K and step.y != ops.R_DB1):
        s.registers[<int>ops.R_T0] = s.make2(step.op, s.registers[step.x], s.registers[step.y])
        s.made = 1
        s.add_to(place, s.registers[<int>ops.R_T0])
        s.release()
        return 0
    s.add_to(place, s.build(d, out))
    s.release()
    return 0
