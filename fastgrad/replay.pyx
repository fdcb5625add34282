"""fastgrad's compiled replay: `compile(root)` records a graph once into flat C arrays; its forward() and
backward() re-run the graph there, with the op kernels the eager ops use (_ops.pxd), and no Python per node.

The program. Every recorded node has a slot in `values` and `grads`: the inner nodes first, in the order the
program computes them, then the leaves; after them, a slot for each `x ** k` holding its k, and a scratch
slot that stands for the second child of one-child ops. So every instruction reads two slots and passes
both to the kernel, which ignores what it has no use for: the loops do not branch on the kind of op. An
instruction computes the next inner slot from its children's slots with the op's kernel, in backward()'s own
topological order: the same operations in the same order, hence the same bits, as eager. With fusion, a
neuron's sum (start + w1*x1 + ... + wn*xn, the 2n nodes that weighted_sum or sum() builds, each used by the
next one only) is one DOT instruction, which still computes all 2n of them, in that order, so that nothing is
missing when they are written back; where backward() visits other nodes between two of its terms, the sum is
one DOT only if that changes no grad's order of additions (see joins), so the bits stay the same.

Writing back. The nodes hold the numbers Python reads, and writing every node after each pass costs as much
as the pass (cache misses on 80-byte nodes). So a pass writes at once only what Python can reach without
going through the engine: the root, and the nodes something outside the graph references (more references
than the graph's own: `visible`, found again whenever Python may have taken new ones). Visible leaves (a
model's parameters, the inputs a user rebinds) have their data read before each pass and their grads read
and written around backward; a hidden leaf (a number an op wrapped) changes only when Python reaches it. The
other nodes wait until Python could reach them: the engine (engine.pyx, "Graphs ahead of their nodes") has
the graph write back first.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t
from libc.string cimport memset

cimport fastgrad._ops as ops
from fastgrad.engine cimport (Lagging, NodeArray, Value, catch_up, count_reach_in, free_array, reach_in_count,
                              sort_topologically, start_lagging, stop_lagging, type_name)

cdef extern from "Python.h":
    Py_ssize_t refcount "Py_REFCNT" (PyObject*)

cdef enum:
    DOT = 31                  # the replay's own op, a neuron's sum: the last code an instruction word holds
    OP_BITS = 5               # an instruction word: its first child's slot << OP_BITS | its op
    OP_MASK = (1 << OP_BITS) - 1
    MAX_SLOTS = 1 << (32 - OP_BITS)

# The marks record() leaves on a node, in its `visited` byte, while it records (cleared before it returns).
cdef enum:
    SORTED = 1                # sort_topologically's own mark: an inner node of the graph
    ONE_PARENT = 2            # `visited & PARENTS`: how many times the graph references it (2 bits, up to 3),
    PARENTS = 6               #   in units of ONE_PARENT
    IN_SUM = 8                # computed by the DOT of a sum above it, not by an instruction of its own
    PLACED = 16               # it has its slot, kept in its `gradient`
    LINK = 32                 # `sum + w * x` whose product (and, if IN_SUM, itself) a DOT computes
    TARGET = 64               # for a moment: a node whose grad the lower terms of a sum add to

cdef enum:
    JOIN_SCAN_TERMS = 64      # a sum is cut, not checked, at a gap above this many terms

cdef Py_ssize_t live_graphs = 0      # when there are others, a pass that writes nodes tells them


def compile(root, *, fuse=True):
    """Record root's graph as it stands into a CompiledGraph, whose forward() and backward() replay it in C.

    fuse: replay each neuron's sum (start + w1*x1 + ...) as one instruction (the numbers are the same bits).
    """
    if type(root) is not Value:
        raise TypeError(f"compile() records the graph of a Value, not of {type_name(root)!r}")
    graph = CompiledGraph.__new__(CompiledGraph)
    (<CompiledGraph>graph).record(<Value>root, fuse)
    return graph


@cython.final
@cython.no_gc          # it references its root; a node references nothing but nodes and strs: no cycle
cdef class CompiledGraph:
    """A graph recorded by fastgrad.compile(root): forward() and backward() replay it in C.

    forward() reads every leaf's current data, recomputes every other node, and returns the root's data;
    backward() means root.backward(). Whenever Python looks at a node, it shows the replay's numbers.
    """
    cdef Value root_node               # keeps every recorded node alive
    cdef bint fused
    cdef Py_ssize_t inner, size        # slots [0, inner): inner nodes, in program order; [inner, size): leaves;
    cdef Py_ssize_t slots              # [size, slots - 1): the exponents of `x ** k`; slots - 1: the scratch slot
    cdef Py_ssize_t leaves_placed      # while recording: leaves given their slots so far
    cdef double* values
    cdef double* grads
    cdef PyObject** nodes              # each slot's node, borrowed
    cdef uint32_t* code                # per instruction: first child's slot << OP_BITS | op (DOT: the start's)
    cdef int32_t* second               # per instruction: the second child's slot (POW_CONST: its exponent's, one
                                       # child: the scratch slot); for DOT the sum's index in `terms`
    cdef Py_ssize_t instructions
    cdef int32_t* terms                # per DOT: n, then w1, x1, ..., wn, xn (slots)
    cdef Py_ssize_t term_words
    cdef int32_t* visible              # the slots Python can reach without the engine: inner ones, then leaves
    cdef Py_ssize_t visible_count, visible_inner
    cdef Lagging lagging               # linked in the engine's list while the arrays are ahead of the nodes
    cdef unsigned long long known_reach_ins   # the engine's reach-in count when `visible` was found and the
                                              # arrays held the nodes' numbers, or newer ones

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
        PyMem_Free(self.values)
        PyMem_Free(self.grads)
        PyMem_Free(self.nodes)
        PyMem_Free(self.code)
        PyMem_Free(self.second)
        PyMem_Free(self.terms)
        PyMem_Free(self.visible)

    # -- what Python sees

    def forward(self):
        """Recompute every node from the leaves' current data; return the root's data.

        Afterwards the graph is as if just built from those leaves: every inner node's grad is 0, leaves
        keep theirs (the numbers ops wrapped too: they are the graph's leaves, not made anew). An op outside
        its domain raises what the eager op raises, at the first failing node; that node and every node
        computed from it (the root among them) keep their previous data.
        """
        cdef Py_ssize_t failed_at
        cdef ops.Status status = ops.OK
        cdef bint repartition
        self.check_recorded()
        repartition = self.known_reach_ins != reach_in_count()
        if repartition:
            self.find_visible()              # the one step that may fail (MemoryError) before anything changes
        self.catch_others_up()               # first: a graph sharing nodes with this one may be ahead of them
        if repartition:
            self.read_all(True)              # Python may have changed hidden leaves since
        else:
            self.read_leaves(False)
        memset(self.grads, 0, self.inner * sizeof(double))
        failed_at = self.run_forward(&status)
        self.show_pass(True)
        if status != ops.OK:
            self.raise_failure(failed_at, status)
        return self.values[self.root_slot()]

    def backward(self):
        """root.backward(): the root's grad becomes 1.0 and d(root)/d(node) is added to every node's grad.

        Allocates nothing and cannot fail."""
        self.check_recorded()
        self.catch_others_up()
        if self.known_reach_ins == reach_in_count():     # while a graph is ahead, the count cannot move
            self.read_leaves(True)
            self.root_grad()[0] = 1.0
            self.run_backward()
            self.show_pass(False)
        else:
            # Python may have changed nodes, or taken some (whose numbers then must be written at once):
            # every number is read, and every grad written back.
            self.read_all(True)
            self.root_grad()[0] = 1.0
            self.run_backward()
            self.write_all_back()
            if live_graphs > 1:
                count_reach_in()             # the others' arrays may no longer be their nodes' numbers

    def __init__(self, *args, **kwargs):
        raise TypeError("a CompiledGraph is made by fastgrad.compile(root)")

    cdef int check_recorded(self) except -1:
        if self.root_node is None:          # made by CompiledGraph.__new__ alone: nothing to replay
            raise TypeError("this CompiledGraph records no graph: fastgrad.compile(root) makes one")
        return 0

    def __len__(self):
        """The nodes recorded, leaves included."""
        return self.size

    @property
    def root(self):
        return self.root_node

    def __repr__(self):
        return (f"<CompiledGraph of {self.size:,} nodes: {self.instructions:,} instructions"
                f"{', fused' if self.fused else ''}>")

    def __sizeof__(self):
        return (sizeof(CompiledGraph) + self.slots * 2 * sizeof(double) + self.size * sizeof(PyObject*)
                + self.instructions * (sizeof(uint32_t) + sizeof(int32_t)) + self.term_words * sizeof(int32_t)
                + self.visible_count * sizeof(int32_t))

    def __reduce__(self):
        raise TypeError("a CompiledGraph cannot be pickled or copied: pickle (or copy) its root, "
                        "and compile the copy")

    def __copy__(self):
        self.__reduce__()

    def __deepcopy__(self, memo):
        self.__reduce__()

    # -- recording

    cdef int record(self, Value root, bint fuse) except -1:
        cdef NodeArray order = NodeArray(NULL, 0, 0)
        cdef NodeArray stack = NodeArray(NULL, 0, 0)
        catch_up()                           # record the numbers as Python sees them
        self.root_node = root
        self.fused = fuse
        try:
            sort_topologically(root, &order, &stack)
            self.lay_out(&order)
        finally:
            self.clear_marks(&order)
            free_array(&order)
            free_array(&stack)
        self.find_visible()
        self.known_reach_ins = reach_in_count()
        return 0

    cdef int lay_out(self, NodeArray* order) except -1:
        """Count, decide what fuses, allocate, then write the program. Meanwhile each placed node keeps its
        slot in its `gradient` (saved in `grads` first, restored by clear_marks): no map from node to slot."""
        cdef Py_ssize_t i, side, leaves = 0, links = 0, inner_links = 0, pow_consts = 0
        cdef PyObject* node
        cdef PyObject* child
        if order.length == 0:                # the root is a leaf
            self.allocate(0, 0, 1, 0, 0)
            self.slot_of(<PyObject*>self.root_node)
            return 0
        for i in range(order.length):        # references within the graph; leaves; exponents
            node = order.items[i]
            pow_consts += (<Value>node).op == ops.POW_CONST
            for side in range(2):
                child = (<Value>node).child_b if side else (<Value>node).child_a
                if child == NULL:
                    pass
                elif (<Value>child).child_a == NULL:
                    if not (<Value>child).visited & PLACED:
                        (<Value>child).visited |= PLACED       # counted once; placed for real below
                        leaves += 1
                elif (<Value>child).visited & PARENTS != PARENTS:
                    (<Value>child).visited += ONE_PARENT
        for i in range(order.length):
            node = order.items[i]
            for side in range(2):
                child = (<Value>node).child_b if side else (<Value>node).child_a
                if child != NULL and (<Value>child).child_a == NULL:
                    (<Value>child).visited &= ~PLACED
            # What each neuron's sum takes in: a link's product comes just before it in the order; the sum
            # below it joins the same DOT if it is a link used by this one alone, and nothing in between
            # (see joins) makes a grad's terms come in another order than backward() adds them.
            if self.fused and i >= 1 and sum_link(node) and order.items[i - 1] == (<Value>node).child_b:
                links += 1
                (<Value>node).visited |= LINK
                (<Value>(<Value>node).child_b).visited |= IN_SUM
                child = (<Value>node).child_a
                if (i >= 2 and (<Value>child).visited & LINK and (<Value>child).visited & PARENTS == ONE_PARENT
                        and joins(order, i - 2, child)):
                    (<Value>child).visited |= IN_SUM
                    inner_links += 1
        if order.length + leaves + pow_consts + 1 >= MAX_SLOTS:      # slots must fit an instruction word
            raise MemoryError(f"a compiled graph holds fewer than {MAX_SLOTS:,} nodes")
        # A sum of n terms is 2n nodes, one instruction and 2n + 1 words of terms.
        self.allocate(order.length - 2 * links + (links - inner_links), order.length, order.length + leaves,
                      2 * links + (links - inner_links), pow_consts)
        self.write_program(order)
        return 0

    cdef int allocate(self, Py_ssize_t instructions, Py_ssize_t inner, Py_ssize_t size, Py_ssize_t term_words,
                      Py_ssize_t exponents) except -1:
        self.instructions, self.inner, self.size, self.term_words = instructions, inner, size, term_words
        self.slots = size + exponents + 1
        self.values = <double*>PyMem_Malloc(self.slots * sizeof(double))
        self.grads = <double*>PyMem_Malloc(self.slots * sizeof(double))
        self.nodes = <PyObject**>PyMem_Malloc(size * sizeof(PyObject*))
        self.code = <uint32_t*>PyMem_Malloc(instructions * sizeof(uint32_t) + 1)      # + 1: never NULL for 0
        self.second = <int32_t*>PyMem_Malloc(instructions * sizeof(int32_t) + 1)
        self.terms = <int32_t*>PyMem_Malloc(term_words * sizeof(int32_t) + 1)
        if not (self.values and self.grads and self.nodes and self.code and self.second and self.terms):
            raise MemoryError()
        memset(self.values + size, 0, (self.slots - size) * sizeof(double))
        memset(self.grads + size, 0, (self.slots - size) * sizeof(double))
        return 0

    cdef void write_program(self, NodeArray* order) noexcept:
        cdef Py_ssize_t i, n, j, slot = 0, instruction = 0, term = 0, exponent = self.size
        cdef PyObject* node
        cdef PyObject* link
        cdef PyObject* product
        for i in range(order.length):
            node = order.items[i]
            if (<Value>node).visited & IN_SUM:
                continue                          # its sum's DOT computes it
            if (<Value>node).visited & LINK:      # the top of a sum: walk down its links to the start
                n = 1
                link = node
                while (<Value>(<Value>link).child_a).visited & IN_SUM:      # an inner link, not the start
                    link = (<Value>link).child_a
                    n += 1
                self.code[instruction] = self.slot_of((<Value>link).child_a) << OP_BITS | DOT
                self.second[instruction] = term
                self.terms[term] = n
                link = node
                for j in range(n - 1, -1, -1):    # from the top: term j is w * x, then the sum up to it
                    product = (<Value>link).child_b
                    self.terms[term + 1 + 2 * j] = self.slot_of((<Value>product).child_a)
                    self.terms[term + 2 + 2 * j] = self.slot_of((<Value>product).child_b)
                    self.place(product, slot + 2 * j)
                    self.place(link, slot + 2 * j + 1)
                    link = (<Value>link).child_a
                slot += 2 * n
                term += 2 * n + 1
            else:
                self.code[instruction] = self.slot_of((<Value>node).child_a) << OP_BITS | (<Value>node).op
                if (<Value>node).op == ops.POW_CONST:
                    self.values[exponent] = (<Value>node).constant
                    self.second[instruction] = exponent
                    exponent += 1
                elif (<Value>node).child_b != NULL:
                    self.second[instruction] = self.slot_of((<Value>node).child_b)
                else:
                    self.second[instruction] = self.slots - 1
                self.place(node, slot)
                slot += 1
            instruction += 1

    cdef void place(self, PyObject* node, Py_ssize_t slot) noexcept:
        self.values[slot] = (<Value>node).value
        self.grads[slot] = (<Value>node).gradient
        self.nodes[slot] = node
        (<Value>node).gradient = <double>slot
        (<Value>node).visited |= PLACED

    cdef Py_ssize_t slot_of(self, PyObject* node) noexcept:
        """An inner node's slot (placed before any node that uses it), or a leaf's, placed the first time."""
        if (<Value>node).child_a == NULL and not (<Value>node).visited & PLACED:
            self.place(node, self.inner + self.leaves_placed)
            self.leaves_placed += 1
        return <Py_ssize_t>(<Value>node).gradient

    cdef void clear_marks(self, NodeArray* order) noexcept:
        """Every node recorded gets its grad back and loses its marks, whatever point recording reached."""
        cdef Py_ssize_t i, side
        cdef PyObject* node
        cdef PyObject* child
        for i in range(order.length):
            node = order.items[i]
            for side in range(2):
                child = (<Value>node).child_b if side else (<Value>node).child_a
                if child != NULL and (<Value>child).child_a == NULL and (<Value>child).visited & PLACED:
                    (<Value>child).gradient = self.grads[<Py_ssize_t>(<Value>child).gradient]
                    (<Value>child).visited = 0
            if (<Value>node).visited & PLACED:
                (<Value>node).gradient = self.grads[<Py_ssize_t>(<Value>node).gradient]
            (<Value>node).visited = 0
        if order.length == 0 and self.root_node.visited & PLACED:     # the root alone, a leaf
            self.root_node.gradient = self.grads[0]
            self.root_node.visited = 0

    cdef int find_visible(self) except -1:
        """The nodes something outside the graph references: more references than the graph's own."""
        cdef Py_ssize_t slot, count = 0
        cdef int32_t* references = <int32_t*>PyMem_Malloc(self.size * sizeof(int32_t) + 1)
        if references == NULL:
            raise MemoryError()
        self.count_references(references)
        for slot in range(self.size):
            if slot == self.inner:
                self.visible_inner = count
            # The root is handed out by `root`: always written, and if it is a leaf always read.
            if refcount(self.nodes[slot]) > references[slot] or slot == self.root_slot():
                references[count] = <int32_t>slot          # in place: count <= slot
                count += 1
        PyMem_Free(self.visible)
        self.visible = <int32_t*>PyMem_Realloc(references, count * sizeof(int32_t) + 1)
        self.visible_count = count
        return 0

    cdef void count_references(self, int32_t* references) noexcept:
        cdef Py_ssize_t i, j, n, slot = 0
        cdef uint32_t word
        cdef int32_t* sum_terms
        memset(references, 0, self.size * sizeof(int32_t))
        references[self.root_slot()] = 1             # this graph's own
        for i in range(self.instructions):
            word = self.code[i]
            references[word >> OP_BITS] += 1
            if word & OP_MASK == DOT:
                sum_terms = self.terms + self.second[i]
                n = sum_terms[0]
                for j in range(n):
                    references[sum_terms[1 + 2 * j]] += 1
                    references[sum_terms[2 + 2 * j]] += 1
                    references[slot + 2 * j] += 1     # the product, by the sum up to it
                    if j:
                        references[slot + 2 * j - 1] += 1   # the sum before, by the next one
                slot += 2 * n
            else:
                if self.second[i] < self.size:           # not an exponent, not the scratch slot
                    references[self.second[i]] += 1
                slot += 1

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

    cdef inline Py_ssize_t root_slot(self) noexcept:
        return self.inner - 1 if self.inner else 0

    cdef inline double* root_grad(self) noexcept:
        return &self.grads[self.root_slot()]

    cdef Py_ssize_t run_forward(self, ops.Status* failure) noexcept:
        """Every inner slot from its children's; the failing instruction's index if an op fails, else -1."""
        cdef Py_ssize_t i, j, n, slot = 0
        cdef uint32_t word
        cdef int op
        cdef int32_t b, total
        cdef ops.Status status
        cdef int32_t* sum_terms
        # In locals: through a pointer to self, the compiler would reload them after every store to values.
        cdef double* values = self.values
        cdef uint32_t* code = self.code
        cdef int32_t* second = self.second
        cdef int32_t* terms = self.terms
        for i in range(self.instructions):
            word = code[i]
            op = word & OP_MASK
            b = second[i]
            if op == DOT:
                sum_terms = terms + b
                n = sum_terms[0]
                total = word >> OP_BITS
                for j in range(n):
                    ops.mul_forward(values[sum_terms[1 + 2 * j]], values[sum_terms[2 + 2 * j]], 0.0, &values[slot])
                    ops.add_forward(values[total], values[slot], 0.0, &values[slot + 1])
                    total = slot + 1
                    slot += 2
                continue
            if op == ops.CUSTOM:             # made by hand: its data is given, not computed
                values[slot] = (<Value>self.nodes[slot]).value
            else:                            # b is also k: the kernels ignore what they do not use
                status = ops.forward(op, values[word >> OP_BITS], values[b], values[b], &values[slot])
                if status != ops.OK:
                    failure[0] = status
                    return i
            slot += 1
        return -1

    cdef void run_backward(self) noexcept:
        cdef Py_ssize_t i, j, n, slot = self.inner
        cdef uint32_t word
        cdef int op
        cdef int32_t a, b, w, x, total
        cdef int32_t* sum_terms
        cdef double da = 0.0, db = 0.0
        cdef double* values = self.values
        cdef double* grads = self.grads
        cdef uint32_t* code = self.code
        cdef int32_t* second = self.second
        cdef int32_t* terms = self.terms
        for i in range(self.instructions - 1, -1, -1):
            word = code[i]
            op = word & OP_MASK
            a = word >> OP_BITS
            b = second[i]
            if op == DOT:                    # the sum's nodes in backward()'s order: each sum, then its product
                sum_terms = terms + b
                n = sum_terms[0]
                slot -= 2 * n
                for j in range(n - 1, -1, -1):
                    total = slot + 2 * j - 1 if j else a
                    ops.add_derivative(grads[slot + 2 * j + 1], values[slot + 2 * j + 1], values[total],
                                       values[slot + 2 * j], 0.0, &da, &db)
                    grads[total] += da
                    grads[slot + 2 * j] += db
                    w, x = sum_terms[1 + 2 * j], sum_terms[2 + 2 * j]
                    ops.mul_derivative(grads[slot + 2 * j], values[slot + 2 * j], values[w], values[x], 0.0,
                                       &da, &db)
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
        cdef Py_ssize_t i, slot = 0
        for i in range(instruction):
            slot += 2 * self.terms[self.second[i]] if self.code[i] & OP_MASK == DOT else 1
        error = ops.op_error(status)
        node = <Value>self.nodes[slot]
        raise type(error)(f"{error} ({node._op!r} at node {slot + 1:,} of {self.inner:,} in the compiled graph's "
                          "order; it and the nodes computed from it keep their previous data)")


cdef void write_back(void* graph) noexcept:
    """The engine's call, when Python is about to reach inner nodes (Lagging.write_back)."""
    (<CompiledGraph>graph).write_lagging_back()


cdef bint joins(NodeArray* order, Py_ssize_t position, PyObject* below) noexcept:
    """Whether a sum's link can join the DOT of the sum below it, whose top is `below`, when the product
    between them sits at order[position + 1].

    backward() visits a sum's nodes from the top down, and between two terms it visits the nodes first
    reached from the upper term's product (they lie between `below` and that product in the order: a
    gap); a DOT visits all its terms first, and those nodes after. The grads come out the same, bit for
    bit, unless a node in the gap adds into the grad of a node that a lower term adds into too: then
    their terms would come in another order. Checked by marking the lower terms' operands and the start
    (a sum of more than JOIN_SCAN_TERMS terms is cut instead) and looking at the gap's children."""
    cdef PyObject* node
    cdef bint clash = False
    if order.items[position] == below:
        return True                               # no gap
    if mark_lower_terms(below, True) < 0:
        mark_lower_terms(below, False)
        return False
    while not clash and order.items[position] != below:       # ends: below comes before the gap
        node = order.items[position]
        clash = (((<Value>node).child_a != NULL and (<Value>(<Value>node).child_a).visited & TARGET)
                 or ((<Value>node).child_b != NULL and (<Value>(<Value>node).child_b).visited & TARGET))
        position -= 1
    mark_lower_terms(below, False)
    return not clash


cdef Py_ssize_t mark_lower_terms(PyObject* top, bint on) noexcept:
    """Set (or clear) TARGET on the operands and the start of the sum whose DOT has `top` as its top. Walks
    at most JOIN_SCAN_TERMS terms: returns how many, or -1 for a longer sum (its start is not reached)."""
    cdef PyObject* link = top
    cdef PyObject* product
    cdef Py_ssize_t n
    for n in range(JOIN_SCAN_TERMS):
        product = (<Value>link).child_b
        set_mark((<Value>product).child_a, on)
        set_mark((<Value>product).child_b, on)
        link = (<Value>link).child_a
        if not (<Value>link).visited & IN_SUM:
            set_mark(link, on)                    # the start
            return n + 1
    return -1


cdef inline void set_mark(PyObject* node, bint on) noexcept:
    if on:
        (<Value>node).visited |= TARGET
    else:
        (<Value>node).visited &= ~TARGET


cdef inline bint sum_link(PyObject* node) noexcept:
    """node is `sum + w * x`, its product used by it alone: a link of a neuron's sum, which can fuse."""
    cdef PyObject* product
    if (<Value>node).op != ops.ADD:
        return False
    product = (<Value>node).child_b
    return (<Value>product).op == ops.MUL and (<Value>product).visited & PARENTS == ONE_PARENT
