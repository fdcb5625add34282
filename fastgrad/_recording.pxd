# The recorder shared by fastgrad's two replays: compile(root) records root's graph once into flat C arrays, a
# program (replay.pyx's CompiledGraph replays it on the nodes' own numbers, batched.pyx's BatchedGraph over many
# samples at once). Only the replays cimport this.
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t

from fastgrad.engine cimport NodeArray, Value

cdef enum:
    DOT = 31                  # the replay's own op, a neuron's sum: the last code an instruction word holds
    OP_BITS = 5               # an instruction word: its first child's slot << OP_BITS | its op
    OP_MASK = (1 << OP_BITS) - 1
    MAX_SLOTS = 1 << (32 - OP_BITS)


cdef struct ExponentSlots:             # while recording: the distinct exponents, and a table to find them
    int32_t* table                     # open addressing: an index into keys, or -1
    double* keys
    Py_ssize_t mask
    Py_ssize_t count


cdef class Recording:
    cdef Value root_node               # keeps every recorded node alive
    cdef bint fused
    cdef Py_ssize_t inner, size        # slots [0, inner): inner nodes, in program order; [inner, size): leaves;
    cdef Py_ssize_t slots              # size: the scratch slot; (size, slots): the distinct exponents of `x ** k`
    cdef Py_ssize_t leaves_placed      # while recording: leaves given their slots so far
    cdef void* block                   # the arrays below, in one allocation
    cdef size_t block_bytes
    cdef double* values                # each slot's data as recorded (the exponents' k), then the replay's
    cdef double* grads                 # each slot's grad as recorded, then the replay's
    cdef PyObject** nodes              # each slot's node, borrowed
    cdef uint32_t* code                # per instruction: first child's slot << OP_BITS | op (DOT: the start's)
    cdef int32_t* second               # per instruction: the second child's slot (POW_CONST: its exponent's, one
                                       # child: the scratch slot); for DOT and PYTHON its index in `terms`
    cdef Py_ssize_t instructions
    cdef int32_t* terms                # per DOT: n, then w1, x1, ..., wn, xn (slots); per PYTHON (a custom op's
    cdef Py_ssize_t term_words         # node): n, its second child's slot (or the scratch slot), its n inputs'
    cdef Py_ssize_t calls              # the PYTHON instructions, which the replays run from Python, between runs
    cdef int32_t* call_at              # of their C loops: each one's instruction, in program order,
    cdef int32_t* call_slot            # and its node's slot

    cdef int record(self, Value root, bint fuse) except -1
    cdef int lay_out(self, NodeArray* order) except -1
    cdef int lay_out_nodes(self, NodeArray* order, ExponentSlots* exponents) except -1
    cdef int allocate(self, Py_ssize_t instructions, Py_ssize_t inner, Py_ssize_t size, Py_ssize_t term_words,
                      Py_ssize_t calls, ExponentSlots* exponents) except -1
    cdef int write_program(self, NodeArray* order, ExponentSlots* exponents) except -1
    cdef int write_op(self, PyObject* node, Py_ssize_t slot, Py_ssize_t instruction,
                      ExponentSlots* exponents) except -1
    cdef Py_ssize_t write_call(self, PyObject* node, Py_ssize_t slot, Py_ssize_t instruction,
                               Py_ssize_t term) noexcept
    cdef void place(self, PyObject* node, Py_ssize_t slot) noexcept
    cdef Py_ssize_t slot_of(self, PyObject* node) noexcept
    cdef void clear_marks(self, NodeArray* order) noexcept
    cdef void count_references(self, int32_t* references) noexcept
    cdef Py_ssize_t root_slot(self) noexcept
    cdef Py_ssize_t program_bytes(self) noexcept
    cdef int check_recorded(self, str what) except -1


# The numbers a PYTHON instruction's function takes, its terms at call_terms (the recording's or the batched
# layout's): values[input * stride + lane] for each of its inputs, as a tuple of floats.
cdef tuple call_inputs(const int32_t* call_terms, const double* values, Py_ssize_t stride, Py_ssize_t lane)
