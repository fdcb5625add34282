# The engine's C interface for fastgrad's other compiled modules (the replay, the optimizers): the node's
# layout, the node array and the topological sort. For in-tree modules only: it is not shipped in the wheel,
# so nothing outside this repository can cimport it. The op codes and kernels are in _ops.pxd.
from cpython.object cimport PyObject, PyTypeObject


cdef class Value:
    # A node made by a built-in op holds only nodes made before it (its children) and exact strs, so no
    # reference cycle can form: it has no GC header and the cyclic GC never sees it. Nodes that can carry
    # Python state (made by hand with Value(data, children, op), a subclass's instances, and what ops make
    # from them) are allocated with a GC header and tracked (flags & HEADERED): see engine.pyx, "Nodes
    # with Python state". The references are raw pointers, each owning one reference, so that freeing a
    # deep graph is done by the engine's own iterative loop (engine.pyx, "Freeing") instead of C recursion.
    cdef double value               # `data`
    cdef double gradient            # `grad`
    cdef PyObject* child_a          # NULL for a leaf
    cdef PyObject* child_b          # NULL for unary ops
    cdef PyObject* label_str        # exact str, or NULL for ''
    cdef PyObject* state            # a _NodeState (engine.pyx) on HEADERED nodes that have one, else NULL
    cdef double constant            # the exponent of POW_CONST
    cdef unsigned char op           # an OpCode (_ops.pxd)
    cdef unsigned char constant_is_int  # spell `**2` (not `**2.0`) when the exponent was given as int
    cdef unsigned char visited      # set during a topological sort, cleared by whoever ran it
    cdef unsigned char flags        # NodeFlags
    cdef unsigned int slab          # which slab of node memory holds the node (src/node_memory.h)


cdef enum NodeFlags:
    HEADERED = 1          # allocated with a GC header, tracked by the cyclic GC
    HAS_CLOSURE = 2       # state.backward is a callable assigned to _backward: backward() calls it
    HAS_MORE = 4          # more than two children: child_b is a BUNDLE of all but the first
    BUNDLE = 8            # a hidden node holding a hand-made node's second child and the rest (engine.pyx)
    CALLS_PYTHON = 16     # a fastgrad.op node (op PYTHON): state is its CustomOp, whose functions backward() calls


# How the engine makes nodes, data given (computed and checked by the op's kernel first): grad (_grad.pyx)
# builds its gradient graphs with them, so that every node is made in one place, with a GC header where a
# child has one. new_binary_node returns a new reference, for callers that hold raw ones.
cdef Value leaf(double value)
cdef Value unary_node(unsigned char op, double value, Value a)
cdef PyObject* new_binary_node(unsigned char op, double value, PyObject* a, PyObject* b) except NULL

# Its common case, inline where it is called: grad's sweep makes about two nodes a node of the graph it
# differentiates, and a call across modules a node was a quarter of the instructions making one took
# (callgrind). The slot comes from the engine's own slabs, through the pointer node_memory() gives.
cdef extern from "node_memory.h":
    ctypedef struct fg_node_memory:
        pass
    void* node_take "fg_node_take" (fg_node_memory* memory, unsigned int* slab_index) noexcept nogil
    PyObject* node_header "fg_node_header" (void* slot, PyTypeObject* type) noexcept

cdef extern from "Python.h":
    # Reference counting on the raw child and label pointers of a node.
    void incref "Py_INCREF" (PyObject*)

cdef fg_node_memory* node_memory() noexcept    # NULL where nodes do not live in the slabs (PYTHONMALLOC=debug)


cdef inline void link_binary(PyObject* n, unsigned char op, double value, PyObject* a, PyObject* b) noexcept:
    """A new node's data, op and two children (each one more reference): binary_node's and take_binary_node's."""
    (<Value>n).value = value
    (<Value>n).op = op
    incref(a)
    (<Value>n).child_a = a
    incref(b)
    (<Value>n).child_b = b


cdef inline PyObject* take_binary_node(fg_node_memory* memory, unsigned char op, double value, PyObject* a,
                                       PyObject* b) noexcept:
    """binary_node(op, value, a, b) as a new reference where its slot comes from an open slab in use and no
    child has a GC header; NULL (nothing done) otherwise: new_binary_node then takes the whole path."""
    cdef unsigned int slab = 0
    cdef void* slot
    cdef PyObject* n
    if memory == NULL or ((<Value>a).flags | (<Value>b).flags) & HEADERED:
        return NULL
    slot = node_take(memory, &slab)
    if slot == NULL:
        return NULL
    n = node_header(slot, <PyTypeObject*>Value)
    (<Value>n).slab = slab
    link_binary(n, op, value, a, b)
    return n


# A growable C array of borrowed node pointers.
cdef struct NodeArray:
    PyObject** items
    Py_ssize_t length
    Py_ssize_t capacity

cdef void free_array(NodeArray* array) noexcept

# root's graph, leaves left out, appended to order children first, as micrograd's build_topo orders it;
# every node in order is left marked visited, for the caller to clear before any Python code runs.
cdef int sort_topologically(Value root, NodeArray* order, NodeArray* stack) except -1

# A fastgrad.op node (op PYTHON, engine.pyx "Custom ops"), for the replays and grad, which call its Python
# functions per node: its inputs, in order; its forward on the inputs' numbers (a real number, or the user's
# exception); its local derivatives into out[0 .. len(args)); what a replay raises where a custom op raised
# error: the same type, its message followed by `where` (the node, the row), the user's exception as its cause.
cdef tuple custom_inputs(Value node)
cdef double custom_forward(Value node, tuple args) except? -1.0
cdef int custom_derivative(Value node, tuple args, double* out) except -1
cdef object failure_at(object error, str where)

# compile() cannot recompute a node whose derivative is a `_backward` closure, nor can grad() build or
# skip that derivative. The recorder and grad call this on sort_topologically's order, before anything else
# (user: "compile" or "grad"): if a node in it has a closure, it clears the marks of every node in order and
# raises TypeError naming the node and what to use instead.
cdef int check_replayable(NodeArray* order, str user) except -1


# A compiled graph whose arrays are ahead of its nodes (replay.pyx) is linked into the engine's list of
# lagging graphs, through this struct in it; every path by which Python reaches inner nodes calls
# write_back(owner) for each linked graph first (catch_up), and counts one more reach-in.
cdef struct Lagging:
    void (*write_back)(void* owner) noexcept
    void* owner
    Lagging* next
    Lagging* previous
    bint linked

cdef void start_lagging(Lagging* graph) noexcept       # link it (again: nothing)
cdef void stop_lagging(Lagging* graph) noexcept        # unlink it (not linked: nothing)
cdef void catch_up() noexcept                           # every linked graph writes back, and is unlinked
cdef unsigned long long reach_in_count() noexcept       # how many times Python has reached in so far
cdef void count_reach_in() noexcept                     # a graph wrote nodes another graph may hold too

# The name error messages give an object's type (`micrograd.engine.Value`, not a bare `Value`).
cpdef str type_name(object x)
