# The layout of a node, declared here so that later compiled modules (fused ops, replay) can cimport it.
from cpython.object cimport PyObject

cdef enum OpCode:
    LEAF          # made by the user: no children, nothing to propagate
    CUSTOM        # made by the user with _children/_op: like the seed, its _backward does nothing
    ADD
    SUB
    MUL
    DIV
    NEG
    POW_CONST     # x ** k with k a number stored in the node
    POW           # x ** y with y a Value
    TANH
    EXP
    LOG
    RELU
    SIGMOID
    SOFTPLUS
    OP_COUNT

cdef class Value:
    # Every reference a node holds points to a node made before it (its children) or to an exact str,
    # so no reference cycle can form: the class is not tracked by the cyclic GC (no_gc, final).
    # The references are raw pointers, each owning one reference, so that freeing a deep graph is
    # done by the engine's own iterative loop (see release_children) instead of C recursion.
    cdef double value               # `data`
    cdef double gradient            # `grad`
    cdef PyObject* child_a          # NULL for a leaf
    cdef PyObject* child_b          # NULL for unary ops
    cdef PyObject* label_str        # exact str, or NULL for ''
    cdef PyObject* custom_op        # exact str for CUSTOM nodes, else NULL
    cdef double constant            # the exponent of POW_CONST
    cdef unsigned char op           # an OpCode
    cdef unsigned char constant_is_int  # spell `**2` (not `**2.0`) when the exponent was given as int
    cdef unsigned char visited      # set during backward's topological sort, cleared by its sweep
    cdef unsigned int slab          # which slab of node memory holds the node (engine.pyx, "Node memory")
