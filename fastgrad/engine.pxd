# The engine's C interface for fastgrad's other compiled modules (the replay, the optimizers): the node's
# layout, the node array and the topological sort. For in-tree modules only: it is not shipped in the wheel,
# so nothing outside this repository can cimport it. The op codes and kernels are in _ops.pxd.
from cpython.object cimport PyObject


cdef class Value:
    # Every reference a node holds points to a node made before it (its children) or to an exact str,
    # so no reference cycle can form: the class is not tracked by the cyclic GC (no_gc, final).
    # The references are raw pointers, each owning one reference, so that freeing a deep graph is
    # done by the engine's own iterative loop (engine.pyx, "Freeing") instead of C recursion.
    cdef double value               # `data`
    cdef double gradient            # `grad`
    cdef PyObject* child_a          # NULL for a leaf
    cdef PyObject* child_b          # NULL for unary ops
    cdef PyObject* label_str        # exact str, or NULL for ''
    cdef PyObject* custom_op        # exact str for CUSTOM nodes, else NULL
    cdef double constant            # the exponent of POW_CONST
    cdef unsigned char op           # an OpCode (_ops.pxd)
    cdef unsigned char constant_is_int  # spell `**2` (not `**2.0`) when the exponent was given as int
    cdef unsigned char visited      # set during a topological sort, cleared by whoever ran it
    cdef unsigned int slab          # which slab of node memory holds the node (src/node_memory.h)


# How the engine makes nodes, data given (computed and checked by the op's kernel first): grad (_grad.pyx)
# builds its gradient graphs with them, so that every node is made in one place. A call per node across
# modules (~1 ns, against ~20 for making the node), where inlining them here would copy how nodes are made.
cdef Value leaf(double value)
cdef Value unary_node(unsigned char op, double value, Value a)
cdef Value binary_node(unsigned char op, double value, Value a, Value b)


# A growable C array of borrowed node pointers.
cdef struct NodeArray:
    PyObject** items
    Py_ssize_t length
    Py_ssize_t capacity

cdef void free_array(NodeArray* array) noexcept

# root's graph, leaves left out, appended to order children first, as micrograd's build_topo orders it;
# every node in order is left marked visited, for the caller to clear before any Python code runs.
cdef int sort_topologically(Value root, NodeArray* order, NodeArray* stack) except -1


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
