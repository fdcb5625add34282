"""fastgrad's compiled replay: `compile(root)` records a graph once (the program: _recording.pyx); a
CompiledGraph's forward() and backward() re-run it there, on the nodes' own numbers, with the op kernels the
eager ops use (src/ops.h), and no Python per node. With `inputs=`, compile() returns a BatchedGraph instead
(batched.pyx), which runs one sample's graph over many samples.

Writing back. The nodes hold the numbers Python reads, and writing every node after each pass costs as much
as the pass (cache misses on 80-byte nodes). So a pass writes at once only what Python can reach without
going through the engine: the root, and the nodes something outside the graph references (more references
than the graph's own: `visible`, found again whenever Python may have taken new ones). Visible leaves (a
model's parameters, the inputs a user rebinds) have their data read before each pass and their grads read
and written around backward; a hidden leaf (a number an op wrapped) changes only when Python reaches it. The
other nodes wait until Python could reach them: the engine (engine.pyx, "Graphs ahead of their nodes") has
the graph write back first.

Custom ops (fastgrad.op). A pass runs its C loop up to a custom op's node, calls the op's Python function there
with the GIL held, and goes on; a graph without one runs one loop, as if there were none. backward() calls
every custom op's derivative first, at the numbers of the last forward(), and only then sweeps: a derivative
that raises leaves every grad as it was. Their functions see floats; a node they read from the graph shows its
numbers from before the pass, as to another thread.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t
from libc.string cimport memset

cimport fastgrad._ops as ops
from fastgrad._recording cimport DOT, OP_BITS, OP_MASK, Recording, call_inputs
from fastgrad.engine cimport Lagging, Value, catch_up, count_reach_in, reach_in_count, start_lagging, stop_lagging
from fastgrad.engine cimport custom_derivative, custom_forward, failure_at, type_name

cdef extern from "Python.h":
    Py_ssize_t refcount "Py_REFCNT" (PyObject*)

cdef enum:
    LONG_RUN = 256            # instructions between two calls worth releasing the GIL for (it costs ~0.1 us)

cdef str KEPT = "it and the nodes computed from it keep their previous data"
cdef Py_ssize_t live_graphs = 0      # when there are others, a pass that writes nodes tells them


def compile(root, *, fuse=True, inputs=None, threads=None):
    """Record root's graph as it stands into a CompiledGraph, whose forward() and backward() replay it in C.

    fuse: replay each neuron's sum (start + w1*x1 + ...) as one instruction (the numbers are the same bits).
    inputs: the leaves of one sample (its features, its label, ...): root is then that sample's output, and
    the result a BatchedGraph, which runs the graph over many samples at once (fastgrad.batched), on up to
    `threads` threads (None: the cores this process may use).
    """
    if type(root) is not Value:
        raise TypeError(f"compile() records the graph of a Value, not of {type_name(root)!r}")
    if inputs is not None:
        from fastgrad.batched import _batch
        return _batch(root, fuse, inputs, threads)
    if threads is not None:
        raise TypeError("threads= goes with inputs=: a CompiledGraph replays on one thread")
    graph = CompiledGraph.__new__(CompiledGraph)
    (<CompiledGraph>graph).record(<Value>root, fuse)
    if (<CompiledGraph>graph).calls:
        (<CompiledGraph>graph).slopes = <double*>PyMem_Malloc((<CompiledGraph>graph).term_words * sizeof(double))
        if (<CompiledGraph>graph).slopes == NULL:
            raise MemoryError()
    (<CompiledGraph>graph).find_visible()
    (<CompiledGraph>graph).known_reach_ins = reach_in_count()
    return graph


@cython.final
@cython.no_gc          # it references its root; a node references nothing but nodes and strs: no cycle
cdef class CompiledGraph(Recording):
    """A graph recorded by fastgrad.compile(root): forward() and backward() replay it in C.

    forward() reads every leaf's current data, recomputes every other node, and returns the root's data;
    backward() means root.backward(). Whenever Python looks at a node, it shows the replay's numbers.
    """
    cdef int32_t* visible              # the slots Python can reach without the engine: inner ones, then leaves
    cdef Py_ssize_t visible_count, visible_inner
    cdef Lagging lagging               # linked in the engine's list while the arrays are ahead of the nodes
    cdef unsigned long long known_reach_ins   # the engine's reach-in count when `visible` was found and the
                                              # arrays held the nodes' numbers, or newer ones
    cdef bint running                  # a pass is on, with the GIL released: another call must wait its turn
    cdef double* slopes                # per custom op's node, its local derivatives, where `terms` has its inputs
    cdef bint grads_zero               # every inner slot's grad is 0.0, as forward() left it (see run_backward)

    def __cinit__(self):
        global live_graphs
        live_graphs += 1
        self.lagging.write_back = write_back
        self.lagging.owner = <void*>self

    def __dealloc__(self):
        global live_graphs
        live_graphs -= 1
        if self.lagging.linked:              # the root, and so the nodes below it, may live on
            stop_lagging(&self.lagging)
            self.write_lagging_back()
        PyMem_Free(self.visible)
        PyMem_Free(self.slopes)

    # -- what Python sees

    def forward(self):
        """Recompute every node from the leaves' current data; return the root's data.

        Afterwards the graph is as if just built from those leaves: every inner node's grad is 0, leaves
        keep theirs (the numbers ops wrapped too: they are the graph's leaves, not made anew). An op outside
        its domain raises what the eager op raises, at the first failing node; that node and every node
        computed from it (the root among them) keep their previous data. So does an exception a custom op's
        forward raises: it goes up as that type, its message naming the node.
        """
        cdef Py_ssize_t failed_at
        cdef ops.Status status = ops.OK
        cdef bint repartition
        cdef unsigned long long reach_ins
        self.check_recorded("CompiledGraph")
        self.check_idle()
        repartition = self.known_reach_ins != reach_in_count()
        if repartition:
            self.find_visible()              # the one step that may fail (MemoryError) before anything changes
        self.catch_others_up()               # first: a graph sharing nodes with this one may be ahead of them
        if repartition:
            self.read_all(True)              # Python may have changed hidden leaves since
        else:
            self.read_leaves(False)
        memset(self.grads, 0, self.inner * sizeof(double))
        self.grads_zero = True
        reach_ins = self.begin_pass()
        error = None
        if self.calls == 0:
            with nogil:
                failed_at = self.run_forward(0, self.instructions, 0, &status)
        else:
            failed_at, error = self.forward_calling(&status)
        self.end_pass(reach_ins, True)
        if error is not None:
            raise failure_at(error, f"{self.where(failed_at)}; {KEPT}")
        if status != ops.OK:
            self.raise_failure(failed_at, status)
        return self.values[self.root_slot()]

    cdef tuple forward_calling(self, ops.Status* status):
        """run_forward between the calls, each call's function in between: (the failing instruction, the
        exception a call raised, or None), or (-1, None)."""
        cdef Py_ssize_t call, failed, begin = 0, slot = 0, end
        for call in range(self.calls + 1):
            end = self.call_at[call] if call < self.calls else self.instructions
            if end - begin >= LONG_RUN:
                with nogil:
                    failed = self.run_forward(begin, end, slot, status)
            else:
                failed = self.run_forward(begin, end, slot, status)
            if failed >= 0 or call == self.calls:
                return failed, None
            slot = self.call_slot[call]
            try:
                self.values[slot] = custom_forward(<Value>self.nodes[slot],
                                                   call_inputs(self.terms + self.second[end], self.values, 1, 0))
            except BaseException as error:
                return end, error
            begin, slot = end + 1, slot + 1
        return -1, None

    def backward(self):
        """root.backward(): the root's grad becomes 1.0 and d(root)/d(node) is added to every node's grad.

        Allocates nothing and cannot fail, but where a custom op's derivative raises: then no grad changes."""
        cdef unsigned long long reach_ins
        cdef bint ahead
        self.check_recorded("CompiledGraph")
        self.check_idle()
        self.catch_others_up()
        ahead = self.known_reach_ins == reach_in_count()     # while a graph is ahead, the count cannot move
        if ahead:
            self.read_leaves(True)
        else:
            # Python may have changed nodes, or taken some (whose numbers then must be written at once):
            # every number is read, and every grad written back.
            self.grads_zero = False
            self.read_all(True)
        reach_ins = self.begin_pass()
        failed_at, error = self.take_slopes() if self.calls else (-1, None)
        if error is None:
            self.root_grad()[0] = 1.0
            if ahead:
                with nogil:
                    self.backward_pass(self.grads_zero)
            else:
                self.backward_pass(False)
            self.grads_zero = False
        if ahead:
            self.end_pass(reach_ins, False)
        else:
            self.running = False
            self.write_all_back()
            if live_graphs > 1:
                count_reach_in()             # the others' arrays may no longer be their nodes' numbers
        if error is not None:
            raise failure_at(error, f"{self.where(failed_at)}; no grad was changed")

    cdef tuple take_slopes(self):
        """Every custom op's local derivatives into `slopes`: (-1, None), or (its instruction, the exception)."""
        cdef Py_ssize_t call, i, t
        for call in range(self.calls):
            i = self.call_at[call]
            t = self.second[i]
            try:
                custom_derivative(<Value>self.nodes[self.call_slot[call]],
                                  call_inputs(self.terms + t, self.values, 1, 0), self.slopes + t + 2)
            except BaseException as error:
                return i, error
        return -1, None

    cdef void backward_pass(self, bint grads_zero) noexcept nogil:
        """run_backward between the calls, last first; at each call, its grad times its slopes into its inputs'
        grads, in their order, as backward() adds them. (A call's inputs are never a sum's inner nodes, which
        have one parent: grads_zero holds for every stretch.)"""
        cdef Py_ssize_t call, k, end = self.instructions, slot = self.inner
        cdef int32_t* inputs
        cdef double g
        for call in range(self.calls - 1, -1, -1):
            self.run_backward(self.call_at[call] + 1, end, slot, grads_zero)
            end = self.call_at[call]
            slot = self.call_slot[call]
            inputs = self.terms + self.second[end]
            g = self.grads[slot]
            for k in range(inputs[0]):
                self.grads[inputs[2 + k]] += g * self.slopes[self.second[end] + 2 + k]
        self.run_backward(0, end, slot, grads_zero)

    def __init__(self, *args, **kwargs):
        raise TypeError("a CompiledGraph is made by fastgrad.compile(root)")

    def __repr__(self):
        return (f"<CompiledGraph of {self.size:,} nodes: {self.instructions:,} instructions"
                f"{', fused' if self.fused else ''}>")

    def __sizeof__(self):
        return sizeof(CompiledGraph) + self.program_bytes() + self.visible_count * sizeof(int32_t)

    # -- the GIL is released during a pass

    cdef int check_idle(self) except -1:
        if self.running:
            raise RuntimeError("this CompiledGraph is replaying in another thread: one pass at a time")
        return 0

    cdef unsigned long long begin_pass(self) noexcept:
        self.running = True
        return reach_in_count()

    cdef void end_pass(self, unsigned long long reach_ins, bint data_too) noexcept:
        """Show the pass. If another thread reached into nodes meanwhile (it may hold inner ones now, and
        saw the numbers from before the pass), every node gets the new numbers, and the next pass finds
        again which ones Python holds."""
        self.running = False
        if reach_in_count() == reach_ins:
            self.show_pass(data_too)
        else:
            self.write_all_back()
            if live_graphs > 1:
                count_reach_in()

    # -- which nodes Python can reach

    cdef int find_visible(self) except -1:
        """The nodes something outside the graph references: more references than the graph's own."""
        cdef Py_ssize_t slot, count = 0, root = self.root_slot()
        cdef int32_t* references = <int32_t*>PyMem_Malloc(self.size * sizeof(int32_t) + 1)
        if references == NULL:
            raise MemoryError()
        self.count_references(references)
        for slot in range(self.size):
            if slot == self.inner:
                self.visible_inner = count
            # The root is handed out by `root`: always written, and if it is a leaf always read.
            if refcount(self.nodes[slot]) > references[slot] or slot == root:
                references[count] = <int32_t>slot          # in place: count <= slot
                count += 1
        PyMem_Free(self.visible)
        self.visible = <int32_t*>PyMem_Realloc(references, count * sizeof(int32_t) + 1)
        self.visible_count = count
        return 0

    # -- replaying

    cdef void catch_others_up(self) noexcept:
        """Other compiled graphs write back first: they may hold some of these nodes too."""
        stop_lagging(&self.lagging)
        catch_up()

    cdef void read_leaves(self, bint grads_too) noexcept:
        """The visible leaves' numbers: what a parameter update or a rebound input changed."""
        cdef Py_ssize_t i, slot
        for i in range(self.visible_inner, self.visible_count):
            slot = self.visible[i]
            self.values[slot] = (<Value>self.nodes[slot]).value
            if grads_too:
                self.grads[slot] = (<Value>self.nodes[slot]).gradient

    cdef void read_all(self, bint grads_too) noexcept:
        cdef Py_ssize_t slot
        for slot in range(self.size):
            self.values[slot] = (<Value>self.nodes[slot]).value
            if grads_too:
                self.grads[slot] = (<Value>self.nodes[slot]).gradient

    cdef inline double* root_grad(self) noexcept:
        return &self.grads[self.root_slot()]

    cdef Py_ssize_t run_forward(self, Py_ssize_t begin, Py_ssize_t end, Py_ssize_t slot,
                                ops.Status* failure) noexcept nogil:
        """Instructions [begin, end) (slot: begin's), each inner slot from its children's; the failing
        instruction's index if an op fails, else -1."""
        cdef Py_ssize_t i, j, n
        cdef uint32_t word
        cdef int op
        cdef int32_t b
        cdef double total, product
        cdef ops.Status status
        cdef int32_t* sum_terms
        # In locals: through a pointer to self, the compiler would reload them after every store to values.
        cdef double* values = self.values
        cdef uint32_t* code = self.code
        cdef int32_t* second = self.second
        cdef int32_t* terms = self.terms
        for i in range(begin, end):
            word = code[i]
            op = word & OP_MASK
            b = second[i]
            if op == DOT:
                # The sum so far stays in a register: read back from values[], each term would wait for the
                # store before it (no operand of a term is a product or sum of the same DOT: those have one
                # parent, the next sum; the same operations, in the same order)
                sum_terms = terms + b
                n = sum_terms[0]
                total = values[word >> OP_BITS]
                for j in range(n):
                    ops.mul_forward(values[sum_terms[1 + 2 * j]], values[sum_terms[2 + 2 * j]], 0.0, &product)
                    ops.add_forward(total, product, 0.0, &total)
                    values[slot] = product
                    values[slot + 1] = total
                    slot += 2
                continue
            # A hand-made node's data is given, not computed: its slot holds it (read with every other number
            # whenever Python may have set it, since setting an inner node's data is a reach-in).
            if op != ops.CUSTOM:             # b is also k: the kernels ignore what they do not use
                status = ops.forward(op, values[word >> OP_BITS], values[b], values[b], &values[slot])
                if status != ops.OK:
                    failure[0] = status
                    return i
            slot += 1
        return -1

    cdef void run_backward(self, Py_ssize_t begin, Py_ssize_t end, Py_ssize_t slot, bint grads_zero) noexcept nogil:
        """Instructions [begin, end), last first (slot: the one after end's); grads_zero: every inner grad is 0.0
        (the first backward() since forward())."""
        cdef Py_ssize_t i, j, n
        cdef uint32_t word
        cdef int op
        cdef int32_t a, b, w, x, total
        cdef int32_t* sum_terms
        cdef double da = 0.0, db = 0.0, sum_grad, product_grad, inner_grad
        cdef double* values = self.values
        cdef double* grads = self.grads
        cdef uint32_t* code = self.code
        cdef int32_t* second = self.second
        cdef int32_t* terms = self.terms
        for i in range(end - 1, begin - 1, -1):
            word = code[i]
            op = word & OP_MASK
            a = word >> OP_BITS
            b = second[i]
            if op == DOT:                    # the sum's nodes in backward()'s order: each sum, then its product
                # The grads of the sums and products are carried in registers, for the reason in run_forward:
                # nothing else in the DOT adds into them, so the memory holds the same numbers in the same order.
                sum_terms = terms + b
                n = sum_terms[0]
                slot -= 2 * n
                sum_grad = grads[slot + 2 * n - 1]
                if grads_zero:
                    # Below the top, each sum and each product starts at 0.0 and has one parent, whose grad it
                    # gets (the add kernel's da and db are g): 0.0 + the top's grad, the same number for all of
                    # them (0.0 + x is never -0.0, so adding it to 0.0 again changes nothing). Computed once, it
                    # frees the terms from waiting on each other's additions; the start's grad adds it as before.
                    ops.add_derivative(sum_grad, values[slot + 2 * n - 1], values[slot + 2 * n - 3] if n > 1
                                       else values[a], values[slot + 2 * n - 2], 0.0, &da, &db)
                    inner_grad = 0.0 + da
                    for j in range(n - 1, -1, -1):
                        if j:
                            grads[slot + 2 * j - 1] = inner_grad
                        else:
                            grads[a] += inner_grad
                        grads[slot + 2 * j] = inner_grad
                        w, x = sum_terms[1 + 2 * j], sum_terms[2 + 2 * j]
                        ops.mul_derivative(inner_grad, values[slot + 2 * j], values[w], values[x], 0.0, &da, &db)
                        grads[w] += da
                        grads[x] += db
                    continue
                for j in range(n - 1, -1, -1):
                    total = slot + 2 * j - 1 if j else a
                    ops.add_derivative(sum_grad, values[slot + 2 * j + 1], values[total], values[slot + 2 * j], 0.0,
                                       &da, &db)
                    sum_grad = grads[total] + da
                    grads[total] = sum_grad
                    product_grad = grads[slot + 2 * j] + db
                    grads[slot + 2 * j] = product_grad
                    w, x = sum_terms[1 + 2 * j], sum_terms[2 + 2 * j]
                    ops.mul_derivative(product_grad, values[slot + 2 * j], values[w], values[x], 0.0, &da, &db)
                    grads[w] += da
                    grads[x] += db
                continue
            slot -= 1
            if op == ops.CUSTOM:             # like the seed's hand-made node: nothing flows through it
                continue
            # A one-child op leaves db as it was: it goes to the scratch slot (or the exponent's), never read.
            ops.derivative(op, grads[slot], values[slot], values[a], values[b], values[b], &da, &db)
            grads[a] += da
            grads[b] += db

    # -- writing back

    cdef void show_pass(self, bint data_too) noexcept:
        """After a pass: the nodes Python can reach get their numbers now, the others when Python reaches in."""
        cdef Py_ssize_t i, slot
        if data_too:
            for i in range(self.visible_inner):
                slot = self.visible[i]
                (<Value>self.nodes[slot]).value = self.values[slot]
                (<Value>self.nodes[slot]).gradient = self.grads[slot]
        else:
            for i in range(self.visible_count):
                slot = self.visible[i]
                (<Value>self.nodes[slot]).gradient = self.grads[slot]
        start_lagging(&self.lagging)
        if live_graphs > 1:
            count_reach_in()                 # the others' arrays may no longer be their nodes' numbers
        self.known_reach_ins = reach_in_count()

    cdef void write_all_back(self) noexcept:
        """Every node gets the graph's numbers (a leaf's data is its own: only its grad)."""
        cdef Py_ssize_t slot
        for slot in range(self.size):
            if slot < self.inner:
                (<Value>self.nodes[slot]).value = self.values[slot]
            (<Value>self.nodes[slot]).gradient = self.grads[slot]

    cdef void write_lagging_back(self) noexcept:
        """What the graph is ahead with: its inner nodes and its hidden leaves' grads. Not the visible leaves'
        grads: those are the nodes' own between passes (a zero_grad() after forward() must stay)."""
        cdef Py_ssize_t slot, i = self.visible_inner
        for slot in range(self.inner):
            (<Value>self.nodes[slot]).value = self.values[slot]
            (<Value>self.nodes[slot]).gradient = self.grads[slot]
        for slot in range(self.inner, self.size):
            if i < self.visible_count and self.visible[i] == slot:      # `visible` is in slot order
                i += 1
            else:
                (<Value>self.nodes[slot]).gradient = self.grads[slot]

    cdef int raise_failure(self, Py_ssize_t instruction, ops.Status status) except -1:
        error = ops.op_error(status)
        raise type(error)(f"{error} ({self.where(instruction)}; {KEPT})")

    cdef str where(self, Py_ssize_t instruction):
        """Where a pass failed, for its exception's message."""
        cdef Py_ssize_t i, slot = 0
        for i in range(instruction):
            slot += 2 * self.terms[self.second[i]] if self.code[i] & OP_MASK == DOT else 1
        node = <Value>self.nodes[slot]
        return f"{node._op!r} at node {slot + 1:,} of {self.inner:,} in the compiled graph's order"


cdef void write_back(void* graph) noexcept:
    """The engine's call, when Python is about to reach inner nodes (Lagging.write_back)."""
    (<CompiledGraph>graph).write_lagging_back()
