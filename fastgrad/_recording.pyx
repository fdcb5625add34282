"""fastgrad's recorder: compile(root) records root's graph once into a program of flat C arrays, which the
two replays run (replay.pyx: on the nodes' own numbers; batched.pyx: one sample's graph over many samples).

The program. Every recorded node has a slot in `values` and `grads`: the inner nodes first, in the order the
program computes them, then the leaves; after them a scratch slot that stands for the second child of one-child
ops, and a slot for each distinct k of the `x ** k` nodes, holding it. So every instruction reads two slots and passes
both to the kernel, which ignores what it has no use for: the loops do not branch on the kind of op. An
instruction computes the next inner slot from its children's slots with the op's kernel, in backward()'s own
topological order: the same operations in the same order, hence the same bits, as eager. With fusion, a
neuron's sum (start + w1*x1 + ... + wn*xn, the 2n nodes that weighted_sum or sum() builds, each used by the
next one only) is one DOT instruction, which still computes all 2n of them, in that order, so that nothing is
missing when they are written back; where backward() visits other nodes between two of its terms, the sum is
one DOT only if that changes no grad's order of additions (see joins), so the bits stay the same. A custom op's
node (fastgrad.op) is a PYTHON instruction, whose inputs are listed in `terms`: the replays run their C loops up
to it, call its Python function, and go on (`call_at`).
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

cimport fastgrad._ops as ops
from fastgrad.engine cimport (BUNDLE, NodeArray, Value, catch_up, check_replayable, free_array,
                              sort_topologically)

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
    KEPT_CAPACITY = 1 << 20   # entries of the sort's arrays kept between recordings (8 MiB each)

cdef NodeArray kept_order = NodeArray(NULL, 0, 0)
cdef NodeArray kept_stack = NodeArray(NULL, 0, 0)
cdef bint recording = False          # the kept arrays are in use


@cython.no_gc          # it references its root; a node references nothing but nodes and strs: no cycle
cdef class Recording:
    """A recorded program; the replays are its subclasses."""

    def __dealloc__(self):
        give_back(self.block, self.block_bytes)

    def __len__(self):
        """The nodes recorded, leaves included."""
        return self.size

    @property
    def root(self):
        return self.root_node

    def __reduce__(self):
        raise TypeError(f"a {type(self).__name__} cannot be pickled or copied: pickle (or copy) its root, "
                        "and compile the copy")

    def __copy__(self):
        self.__reduce__()

    def __deepcopy__(self, memo):
        self.__reduce__()

    cdef int check_recorded(self, str what) except -1:
        if self.root_node is None:          # made by __new__ alone: nothing to replay
            raise TypeError(f"this {what} records no graph: fastgrad.compile(root) makes one")
        return 0

    cdef Py_ssize_t root_slot(self) noexcept:
        return self.inner - 1 if self.inner else 0

    cdef Py_ssize_t program_bytes(self) noexcept:
        return self.block_bytes

    cdef int record(self, Value root, bint fuse) except -1:
        # The sort's arrays are kept from one recording to the next, as backward() keeps its own: a training
        # script compiles graphs of about one size, and fresh megabytes cost a page fault every 4 KiB.
        global recording
        cdef NodeArray local_order = NodeArray(NULL, 0, 0)
        cdef NodeArray local_stack = NodeArray(NULL, 0, 0)
        cdef bint kept = not recording             # a recording inside a recording (a GC pass) has its own
        cdef NodeArray* order = &kept_order if kept else &local_order
        cdef NodeArray* stack = &kept_stack if kept else &local_stack
        catch_up()                           # record the numbers as Python sees them
        self.root_node = root
        self.fused = fuse
        recording = recording or kept
        order.length = 0
        try:
            sort_topologically(root, order, stack)
            check_replayable(order, "compile")        # a `_backward` closure cannot be replayed: TypeError
            self.lay_out(order)
        finally:
            self.clear_marks(order)
            if kept:
                recording = False
                if order.capacity > KEPT_CAPACITY:
                    free_array(order)
                if stack.capacity > KEPT_CAPACITY:
                    free_array(stack)
            else:
                free_array(order)
                free_array(stack)
        return 0

    cdef int lay_out(self, NodeArray* order) except -1:
        """Count, decide what fuses, allocate, then write the program. Meanwhile each placed node keeps its
        slot in its `gradient` (saved in `grads` first, restored by clear_marks): no map from node to slot."""
        cdef Py_ssize_t i, side, leaves = 0, links = 0, inner_links = 0, pow_consts = 0
        cdef PyObject* node
        cdef PyObject* child
        cdef ExponentSlots exponents = ExponentSlots(NULL, NULL, 0, 0)
        if order.length == 0:                # the root is a leaf
            self.allocate(0, 0, 1, 0, 0, &exponents)
            self.slot_of(<PyObject*>self.root_node)
            return 0
        try:
            self.lay_out_nodes(order, &exponents)
        finally:
            PyMem_Free(exponents.table)
            PyMem_Free(exponents.keys)
        return 0

    cdef int lay_out_nodes(self, NodeArray* order, ExponentSlots* exponents) except -1:
        cdef Py_ssize_t i, side, leaves = 0, links = 0, inner_links = 0, pow_consts = 0, calls = 0, call_words = 0
        cdef PyObject* node
        cdef PyObject* child
        for i in range(order.length):        # references within the graph; leaves; exponents; custom ops
            node = order.items[i]
            pow_consts += (<Value>node).op == ops.POW_CONST
            if (<Value>node).op == ops.PYTHON:
                calls += 1
                call_words += 2 + <Py_ssize_t>(<Value>node).constant       # its inputs' count
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
        make_exponent_table(exponents, pow_consts)
        for i in range(order.length):
            node = order.items[i]
            if (<Value>node).op == ops.POW_CONST:
                exponent_index(exponents, (<Value>node).constant)
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
        # A sum of n terms is 2n nodes, one instruction and 2n + 1 words of terms; of one term, two instructions
        # (write_program decides: room for either).
        self.allocate(order.length - 2 * links + 2 * (links - inner_links), order.length, order.length + leaves,
                      2 * links + (links - inner_links) + call_words, calls, exponents)
        self.write_program(order, exponents)
        return 0

    cdef int allocate(self, Py_ssize_t instructions, Py_ssize_t inner, Py_ssize_t size, Py_ssize_t term_words,
                      Py_ssize_t calls, ExponentSlots* exponents) except -1:
        """The program's arrays, in one block: the numbers (the scratch slot 0, the exponents their k), the
        nodes, the instructions, the terms, the calls."""
        cdef Py_ssize_t i
        cdef size_t doubles, pointers
        self.instructions, self.inner, self.size, self.term_words = instructions, inner, size, term_words
        self.slots = size + 1 + exponents.count
        doubles = 2 * self.slots * sizeof(double)
        pointers = size * sizeof(PyObject*)
        self.block_bytes = doubles + pointers + (2 * instructions + term_words + 2 * calls) * sizeof(int32_t)
        self.block = take_block(self.block_bytes)
        if self.block == NULL:
            self.block_bytes = 0
            raise MemoryError()
        self.values = <double*>self.block
        self.grads = self.values + self.slots
        self.nodes = <PyObject**>(<char*>self.block + doubles)
        self.code = <uint32_t*>(<char*>self.block + doubles + pointers)
        self.second = <int32_t*>(self.code + instructions)
        self.terms = self.second + instructions
        self.call_at = self.terms + term_words
        self.call_slot = self.call_at + calls
        memset(self.values + size, 0, (self.slots - size) * sizeof(double))
        memset(self.grads + size, 0, (self.slots - size) * sizeof(double))
        for i in range(exponents.count):
            self.values[size + 1 + i] = exponents.keys[i]
        return 0

    cdef int write_program(self, NodeArray* order, ExponentSlots* exponents) except -1:
        cdef Py_ssize_t i, n, j, slot = 0, instruction = 0, term = 0, call = 0
        cdef PyObject* node
        cdef PyObject* link
        cdef PyObject* product
        for i in range(order.length):
            node = order.items[i]
            if (<Value>node).visited & IN_SUM:
                continue                          # its sum's DOT computes it
            n = 1
            if (<Value>node).visited & LINK:      # the top of a sum: walk down its links to the start
                link = node
                while (<Value>(<Value>link).child_a).visited & IN_SUM:      # an inner link, not the start
                    link = (<Value>link).child_a
                    n += 1
            if n > 1:
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
                if (<Value>node).visited & LINK:  # a sum of one term: as fast as two instructions, and smaller
                    self.write_op((<Value>node).child_b, slot, instruction, exponents)
                    slot += 1
                    instruction += 1
                if (<Value>node).op == ops.PYTHON:
                    self.call_at[call] = <int32_t>instruction
                    self.call_slot[call] = <int32_t>slot
                    call += 1
                    term += self.write_call(node, slot, instruction, term)
                else:
                    self.write_op(node, slot, instruction, exponents)
                slot += 1
            instruction += 1
        self.instructions, self.term_words, self.calls = instruction, term, call
        return 0

    cdef int write_op(self, PyObject* node, Py_ssize_t slot, Py_ssize_t instruction,
                      ExponentSlots* exponents) except -1:
        """The instruction computing one node by its op, into its slot."""
        self.code[instruction] = self.slot_of((<Value>node).child_a) << OP_BITS | (<Value>node).op
        if (<Value>node).op == ops.POW_CONST:
            self.second[instruction] = <int32_t>(self.size + 1 + exponent_index(exponents, (<Value>node).constant))
        elif (<Value>node).child_b != NULL:
            self.second[instruction] = self.slot_of((<Value>node).child_b)
        else:
            self.second[instruction] = self.size      # the scratch slot
        self.place(node, slot)
        return 0

    cdef Py_ssize_t write_call(self, PyObject* node, Py_ssize_t slot, Py_ssize_t instruction,
                               Py_ssize_t term) noexcept:
        """The instruction calling a custom op's Python function, its inputs at terms[term]: the words taken.
        Its inputs past the second are read through the bundles that hold them (engine.pyx, set_children), in
        C: no Python code may run while nodes hold their slots."""
        cdef Py_ssize_t k = 1, n = <Py_ssize_t>(<Value>node).constant
        cdef PyObject* rest = (<Value>node).child_b
        self.code[instruction] = self.slot_of((<Value>node).child_a) << OP_BITS | ops.PYTHON
        self.second[instruction] = <int32_t>term
        self.terms[term] = <int32_t>n
        self.terms[term + 1] = <int32_t>(self.size if rest == NULL else self.slot_of(rest))
        self.terms[term + 2] = <int32_t>self.slot_of((<Value>node).child_a)
        while rest != NULL and (<Value>rest).flags & BUNDLE:
            self.terms[term + 2 + k] = <int32_t>self.slot_of((<Value>rest).child_a)
            rest = (<Value>rest).child_b
            k += 1
        if rest != NULL:
            self.terms[term + 2 + k] = <int32_t>self.slot_of(rest)
        self.place(node, slot)
        return 2 + n

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
            elif word & OP_MASK == ops.PYTHON:
                if self.terms[self.second[i] + 1] < self.size:     # its second child, if it has one
                    references[self.terms[self.second[i] + 1]] += 1
                slot += 1
            else:
                if self.second[i] < self.size:           # not an exponent, not the scratch slot
                    references[self.second[i]] += 1
                slot += 1


cdef tuple call_inputs(const int32_t* call_terms, const double* values, Py_ssize_t stride, Py_ssize_t lane):
    cdef Py_ssize_t k
    cdef object x
    cdef tuple args = PyTuple_New(call_terms[0])           # filled in place: no list made first
    for k in range(call_terms[0]):
        x = values[<Py_ssize_t>call_terms[2 + k] * stride + lane]
        Py_INCREF(x)                                       # the tuple takes this reference
        PyTuple_SET_ITEM(args, k, x)
    return args


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


# Exponents: one slot a distinct k (by its bits), so that `x ** 2` a thousand times is one slot.

cdef int make_exponent_table(ExponentSlots* exponents, Py_ssize_t count) except -1:
    """Room for count exponents, in an open-addressing table at most half full."""
    cdef Py_ssize_t capacity = 16
    if count == 0:
        return 0
    while capacity < 2 * count:
        capacity *= 2
    exponents.table = <int32_t*>PyMem_Malloc(capacity * sizeof(int32_t))
    exponents.keys = <double*>PyMem_Malloc(count * sizeof(double))
    if exponents.table == NULL or exponents.keys == NULL:
        raise MemoryError()
    memset(exponents.table, 0xff, capacity * sizeof(int32_t))        # -1: free
    exponents.mask = capacity - 1
    return 0


cdef Py_ssize_t exponent_index(ExponentSlots* exponents, double k) noexcept:
    """k's index among the distinct exponents, given at its first sight."""
    cdef Py_ssize_t i
    cdef uint64_t key
    memcpy(&key, &k, sizeof(double))
    key = (key ^ (key >> 32)) * <uint64_t>0x7FEB352D                  # mix the bits, then take a few
    i = <Py_ssize_t>((key ^ (key >> 29)) >> 16) & exponents.mask
    while exponents.table[i] >= 0:
        if memcmp(&exponents.keys[exponents.table[i]], &k, sizeof(double)) == 0:
            return exponents.table[i]
        i = (i + 1) & exponents.mask
    exponents.table[i] = <int32_t>exponents.count
    exponents.keys[exponents.count] = k
    exponents.count += 1
    return exponents.count - 1


# The program's block. Freeing a large block and taking a new one for the next graph costs a page fault
# every 4 KiB (glibc maps large blocks anew), as much as recording itself: the last one freed is kept, for a
# graph of about its size (a script that compiles compiles graphs of one size), and given back otherwise.

cdef void* spare_block = NULL
cdef size_t spare_bytes = 0

cdef enum:
    SPARE_MIN = 1 << 16                  # smaller blocks come cheap from the allocator
    SPARE_MAX = 1 << 28


cdef void* take_block(size_t size) noexcept:
    global spare_block
    cdef void* block
    if spare_block != NULL and size <= spare_bytes <= size + size // 4:
        block = spare_block
        spare_block = NULL
        return block
    return PyMem_Malloc(size + 1)         # + 1: never NULL for 0


cdef void give_back(void* block, size_t size) noexcept:
    global spare_block, spare_bytes
    if block != NULL and SPARE_MIN <= size <= SPARE_MAX:
        PyMem_Free(spare_block)
        spare_block, spare_bytes = block, size
    else:
        PyMem_Free(block)
