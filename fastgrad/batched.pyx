"""fastgrad's batched replay: `compile(root, inputs=[...])` takes root as one sample's output (its loss), records its
graph with the same recorder as CompiledGraph, and runs it over many samples at once: a BatchedGraph.

Every leaf that is not an input (the parameters, the numbers ops wrapped) is shared by all samples. The program
is laid out again for lanes (src/lanes.h): the computed slots first (a neuron's sum is one slot, not 2n), then
the inputs, the shared leaves, the numbers given (exponents, hand-made nodes' data) and a scratch slot. Samples
go through in blocks of FG_LANES, slot-major, with each shared leaf's grad kept per lane for a whole chunk of
blocks and summed over lanes once at its end. Chunks are fixed by the number of rows alone and their sums are
added in chunk order, so the grads are the same bits whatever the number of threads. The nodes are never
written but for the shared leaves' grads after backward(): the recorded graph stays a template.

Custom ops (fastgrad.op) run in Python, lane by lane: a block's lane loops run up to a custom op's instruction,
the worker takes the GIL, calls the op's forward for each row of the block, and runs the loops on from the next
instruction; backward takes every custom op's derivatives for the block first, then sweeps. Rows are still
computed as one sample's graph each, and the chunks and their sums are the same, so the bits do not depend on
the number of threads either: the threads take turns at the GIL for the calls.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock, PyThread_release_lock,
                               PyThread_type_lock, WAIT_LOCK)
from libc.stdint cimport int32_t, uint32_t, uintptr_t
from libc.string cimport memcpy, memset

cimport fastgrad._ops as ops
from fastgrad._recording cimport DOT, OP_BITS, OP_MASK, Recording, call_inputs
from fastgrad.engine cimport Value, count_reach_in, custom_derivative, custom_forward, failure_at, type_name

import array
import numbers
import os
import threading
import time

cdef extern from "Python.h":
    int check_signals "PyErr_CheckSignals" () except -1

cdef extern from "portability.h" nogil:
    Py_ssize_t fg_atomic_add(Py_ssize_t* p, Py_ssize_t n)
    Py_ssize_t fg_atomic_load(Py_ssize_t* p)
    void fg_atomic_store(Py_ssize_t* p, Py_ssize_t v)
    void fg_spin_pause()

cdef extern from "lanes.h" nogil:
    enum: FG_LANES
    enum: FG_LANE_DOT
    enum: FG_LANE_LAYER
    ctypedef struct fg_lane_instruction:
        int32_t op, out, a, b
    ctypedef struct fg_lane_program:
        const fg_lane_instruction* code
        const int32_t* terms
        ptrdiff_t instructions
        int32_t inputs_begin, uniform_begin, uniform_end
        const double* uniform_values
        ptrdiff_t folded
    ctypedef struct fg_lane_failure:
        ptrdiff_t instruction
        int lane
        ops.Status status
    ctypedef fg_lane_failure (*forward_loop)(const fg_lane_program*, double*) noexcept nogil
    ctypedef void (*backward_loop)(const fg_lane_program*, const double*, double*) noexcept nogil
    ctypedef void (*sum_loop)(double*, double*, ptrdiff_t, const unsigned char*, double*) noexcept nogil
    ctypedef struct fg_lane_loops:
        const char* name
        int fused_multiply_add
        forward_loop forward
        backward_loop backward
        sum_loop take_lane_sums
    const fg_lane_loops* fg_lane_loops_for(const char* wanted)
    bint fg_layer_activation(int op)

cdef enum:
    CHUNK_BLOCKS = 32         # blocks a chunk at least: each chunk's lanes are summed once, at its end (2.5 us
                              # for the moons model's 337 shared leaves; at 16 blocks the 10,000-row step
                              # took 3% longer, and 2 threads ran it 1.64x faster than one, not 1.72x)
    MAX_CHUNKS = 256          # chunks a pass is cut into at most, so that their sums take little memory
    WORKER_ROWS = 2048        # rows a thread at least: fewer do not pay for waking it
    SPINS_AT_JOIN = 100000    # pauses a pass waits for its helpers before it sleeps (a few ms at most)
    HOT_SPINS = 20000         # pauses a helper waits for the next pass before it sleeps (0.2 ms on a 2-core
                              # Xeon, 10 ns a pause; a training loop's steps are closer than that)
    CACHE_LINE = 64

cdef const fg_lane_loops* lane_loops = NULL


def choose_simd(wanted=None):
    """Use the lane loops of `wanted` ("baseline", "avx2", "avx512"), or the widest this CPU runs (None). The
    FASTGRAD_SIMD environment variable chooses at import. Returns the name of the loops in use."""
    global lane_loops
    cdef bytes name = (wanted or "").encode()
    cdef const fg_lane_loops* loops = fg_lane_loops_for(name)
    if loops == NULL:
        raise ValueError(f"no lane loops {wanted!r} on this CPU or in this build")
    lane_loops = loops
    return simd()


def simd():
    """The name of the lane loops in use: "baseline", "avx2" or "avx512"."""
    return lane_loops.name.decode()


def fused_multiply_add():
    """Whether the lane loops in use fuse a layer's multiply-adds in its backward pass (each weight's and input's
    grad term added with one rounding): the AVX2 and AVX-512 loops, and the baseline where the baseline CPU has
    FMA (aarch64); not x86-64's baseline, unless it was built for FMA (-mfma)."""
    return bool(lane_loops.fused_multiply_add)


choose_simd(os.environ.get("FASTGRAD_SIMD") or None)



def usable_cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                # not on Linux
        return os.cpu_count() or 1


def _batch(Value root, bint fuse, inputs, threads):
    """compile(root, inputs=..., threads=...) (replay.pyx): record root's graph, lay it out for lanes."""
    graph = BatchedGraph.__new__(BatchedGraph)
    (<BatchedGraph>graph).record(root, fuse)
    (<BatchedGraph>graph).lay_out_lanes(inputs, threads)
    # backward() adds to its shared leaves' grads. A compiled graph reads and writes at each pass the grads of
    # the leaves something else holds too, and is ahead of Python only with those of the leaves it alone holds
    # (replay.pyx): one reach-in now makes it look again, and find every shared leaf held by this graph too.
    # So backward() need neither have the compiled graphs write back first nor make them look again.
    count_reach_in()
    return graph


@cython.final
@cython.no_gc          # it references its root; a node references nothing but nodes and strs: no cycle
cdef class BatchedGraph(Recording):
    """One sample's graph, recorded by fastgrad.compile(root, inputs=[...]), run over many samples at once.

    forward(rows) returns each row's output; backward(weights=1.0) adds sum_i w_i * d out_i / d leaf to the grad
    of every shared leaf (every leaf not in inputs). No node's data or grad changes otherwise.
    """
    cdef fg_lane_instruction* lane_code
    cdef int32_t* lane_terms
    cdef Py_ssize_t lane_term_words
    cdef int32_t* lane_nodes             # per lane instruction: its node's slot in the recording (a LAYER: its
                                         # first neuron's)
    cdef fg_lane_program program
    cdef Py_ssize_t lane_slots, computed, root_lane
    cdef Py_ssize_t input_count          # lane slots [computed, computed + input_count): the inputs, in order
    cdef int32_t* input_recorded         # per input: its slot in the recording
    cdef Py_ssize_t shared_count         # then the shared leaves, whose grads backward() adds to
    cdef Py_ssize_t given_count          # then the numbers given: hand-made nodes' data, exponents
    cdef PyObject** given_nodes          # per shared or given slot: its node (borrowed), or NULL (an exponent)
    cdef double* given_values            # per shared or given slot: its number in this pass
    cdef Py_ssize_t threads
    cdef bint running                    # a pass is on (the GIL is released): another call must wait its turn
    # The last forward's rows, read again by backward() (no copy: `rows_owner` keeps them alive).
    cdef object rows_owner
    cdef const double* rows
    cdef Py_ssize_t row_count
    # One pass, as the workers see it (set under the GIL before the pass).
    cdef double** block_values           # per worker: lane_slots * FG_LANES numbers, as many grads, the folded
    cdef Py_ssize_t workers_allocated
    cdef double* outputs
    cdef const double* weights           # NULL: every row weighs `weight`
    cdef double weight
    cdef double* partials                # per chunk: its sum of each shared leaf's grad
    cdef Py_ssize_t partials_capacity
    cdef Py_ssize_t chunk_blocks, chunk_count
    # Shared by the pass's workers without the GIL (portability.h's atomics):
    cdef Py_ssize_t stop                 # a worker failed or Ctrl-C: the others stop at their next chunk
    cdef Py_ssize_t next_chunk           # the first chunk of the pass no worker has taken yet
    cdef Py_ssize_t workers_busy         # the helpers not done with the pass (taken or not)
    cdef bint sums_dirty                 # a backward pass stopped with its lanes' sums not taken
    cdef Py_ssize_t workers_filled       # the workers whose blocks hold this pass's shared and given numbers
    cdef fg_lane_failure* failures       # per worker: its failure, and in failed_blocks its block; status OK: a
    cdef Py_ssize_t* failed_blocks       # custom op raised, the exception in errors[worker]
    cdef object errors
    cdef int32_t* lane_calls             # per custom op's node (the recording's calls), its lane instruction
    cdef Py_ssize_t slope_words          # per worker, after its grads: the custom ops' derivatives for a block
    cdef unsigned char* lanes_added      # per shared leaf: whether an instruction adds to its grad's lanes

    def __dealloc__(self):
        cdef Py_ssize_t i
        PyMem_Free(self.lane_code)
        PyMem_Free(self.lane_terms)
        PyMem_Free(self.lane_nodes)
        PyMem_Free(self.given_nodes)
        PyMem_Free(self.given_values)
        PyMem_Free(self.input_recorded)
        PyMem_Free(self.partials)
        for i in range(self.workers_allocated):
            PyMem_Free(self.block_values[i])
        PyMem_Free(self.block_values)
        PyMem_Free(self.failures)
        PyMem_Free(self.failed_blocks)
        PyMem_Free(self.lane_calls)
        PyMem_Free(self.lanes_added)

    def __init__(self, *args, **kwargs):
        raise TypeError("a BatchedGraph is made by fastgrad.compile(root, inputs=[...])")

    def __repr__(self):
        return (f"<BatchedGraph of {self.size:,} nodes a sample: {self.program.instructions:,} instructions, "
                f"{self.input_count} inputs, {self.shared_count:,} shared leaves, {self.threads} threads>")

    def __sizeof__(self):
        return (sizeof(BatchedGraph) + self.program_bytes()
                + self.program.instructions * (sizeof(fg_lane_instruction) + sizeof(int32_t))
                + self.lane_term_words * sizeof(int32_t)
                + (self.shared_count + self.given_count) * (sizeof(PyObject*) + sizeof(double))
                + self.calls * sizeof(int32_t)
                + self.workers_allocated * self.block_doubles() * sizeof(double))

    cdef inline Py_ssize_t block_doubles(self) noexcept nogil:
        """A worker's numbers: a block's values and grads, then 8 folded grads a uniform slot (lanes.h), then
        the custom ops' derivatives for a block (slope_words)."""
        return 2 * self.lane_slots * FG_LANES + 8 * (self.shared_count + self.given_count) + self.slope_words

    cdef inline double* block_of(self, Py_ssize_t worker) noexcept nogil:
        """A worker's block, from a cache line's start: a lane loop's vectors then never straddle two lines
        (PyMem_Malloc aligns to 16 bytes only: most 64-byte loads and stores took two lines each)."""
        return <double*>((<uintptr_t>self.block_values[worker] + CACHE_LINE - 1) & ~<uintptr_t>(CACHE_LINE - 1))

    @property
    def inputs(self):
        """The input leaves, in the order of a row's numbers."""
        return [<Value>self.nodes[self.input_recorded[i]] for i in range(self.input_count)]

    # -- laying the recording out for lanes

    cdef int lay_out_lanes(self, inputs, threads) except -1:
        cdef Py_ssize_t i, j, n, k, q, m, slot, lane, term, call, out, neuron, params
        cdef uint32_t word
        cdef int op
        cdef int32_t* lane_of
        cdef Value node
        self.threads = usable_cores() if threads is None else check_threads(threads)
        inputs = list(inputs) if not isinstance(inputs, Value) else [inputs]
        if not inputs:
            raise ValueError("inputs is empty: list the leaves that differ from sample to sample")
        leaf_slot = {id(<object>self.nodes[slot]): slot for slot in range(self.inner, self.size)}
        seen = {}
        for i, x in enumerate(inputs):
            if not isinstance(x, Value):
                raise TypeError(f"inputs[{i}] must be a Value, not {type_name(x)!r}")
            if id(x) in seen:
                raise ValueError(f"inputs[{i}] is inputs[{seen[id(x)]}] again: list each input once")
            if x._prev:
                raise ValueError(f"inputs[{i}] is not a leaf (it is the result of {x._op!r}): inputs are the "
                                 "leaves that differ from sample to sample")
            if id(x) not in leaf_slot:
                raise ValueError(f"inputs[{i}] ({x!r}) is not in the graph of the root")
            seen[id(x)] = i
        input_slots = {leaf_slot[key] for key in seen}
        # Lane slots: the computed ones, the inputs, the shared leaves, the numbers given, the scratch slot.
        self.input_count = len(inputs)
        self.shared_count = self.size - self.inner - self.input_count
        given = 0
        computed = 0
        slot = 0
        ends = []                                     # per instruction: the slot after its nodes
        for i in range(self.instructions):
            word = self.code[i]
            if word & OP_MASK == DOT:
                slot += 2 * self.terms[self.second[i]]
                computed += 1
            else:
                given += word & OP_MASK == ops.CUSTOM
                computed += word & OP_MASK != ops.CUSTOM
                slot += 1
            ends.append(slot)
        layers, later_neurons = self.find_layers(input_slots)
        activations = self.find_activations(layers, ends)
        fused = {i for op, readers in activations.values() for i in readers}
        n = self.term_words + sum(2 + len(key) - len(key) * len(neurons) for key, neurons in layers.values())
        self.lane_term_words = max(n, self.term_words)
        self.computed = computed
        self.given_count = given + (self.slots - 1 - self.size)
        self.lane_slots = computed + self.input_count + self.shared_count + self.given_count + 1
        n = self.shared_count + self.given_count
        self.lane_code = <fg_lane_instruction*>PyMem_Malloc(computed * sizeof(fg_lane_instruction) + 1)
        self.lane_nodes = <int32_t*>PyMem_Malloc(computed * sizeof(int32_t) + 1)
        self.lane_terms = <int32_t*>PyMem_Malloc(self.lane_term_words * sizeof(int32_t) + 1)
        self.given_nodes = <PyObject**>PyMem_Malloc(n * sizeof(PyObject*) + 1)
        self.given_values = <double*>PyMem_Malloc(n * sizeof(double) + 1)
        self.input_recorded = <int32_t*>PyMem_Malloc(self.input_count * sizeof(int32_t) + 1)
        self.lane_calls = <int32_t*>PyMem_Malloc(self.calls * sizeof(int32_t) + 1)
        self.slope_words = self.lane_term_words * FG_LANES if self.calls else 0
        lane_of = <int32_t*>PyMem_Malloc(self.slots * sizeof(int32_t) + 1)
        try:
            if not (self.lane_code and self.lane_nodes and self.lane_terms and self.given_nodes
                    and self.given_values and self.input_recorded and self.lane_calls and lane_of):
                raise MemoryError()
            # Leaves: an input's slot by its place in inputs, a shared leaf's in recording order.
            lane = computed + self.input_count
            for slot in range(self.inner, self.size):
                i = seen.get(id(<object>self.nodes[slot]), -1)
                if i >= 0:
                    lane_of[slot] = <int32_t>(computed + i)
                    self.input_recorded[i] = <int32_t>slot
                else:
                    self.given_nodes[lane - computed - self.input_count] = self.nodes[slot]
                    lane_of[slot] = <int32_t>lane
                    lane += 1
            for slot in range(self.size + 1, self.slots):            # exponents: numbers fixed at recording
                self.given_nodes[lane - computed - self.input_count] = NULL
                self.given_values[lane - computed - self.input_count] = self.values[slot]
                lane_of[slot] = <int32_t>lane
                lane += 1
            lane_of[self.size] = <int32_t>(self.lane_slots - 1)       # the scratch slot
            # Instructions, children before parents: each maps its children, then gets its own slot. A layer
            # takes the place of its first neuron.
            j = 0
            out = 0
            term = 0
            call = 0
            for i in range(self.instructions):
                word = self.code[i]
                op = word & OP_MASK
                if i in later_neurons or i in fused:
                    continue
                if i in layers:
                    x_slots, neurons = layers[i]
                    k = len(neurons)
                    n = len(x_slots)
                    self.lane_terms[term] = <int32_t>k
                    self.lane_terms[term + 1] = <int32_t>n
                    for m in range(n):
                        self.lane_terms[term + 2 + m] = lane_of[x_slots[m]]
                    activation, readers = activations.get(i, (ops.LEAF, ()))
                    for q in range(k):
                        neuron = neurons[q]
                        params = term + 2 + n + q * (n + 1)                 # its start, then its weights
                        self.lane_terms[params] = lane_of[self.code[neuron] >> OP_BITS]
                        for m in range(n):
                            self.lane_terms[params + 1 + m] = lane_of[self.terms[self.second[neuron] + 1 + 2 * m]]
                        lane_of[ends[neuron] - 1] = <int32_t>(out + q)      # the sum's top
                        if readers:
                            lane_of[ends[readers[q]] - 1] = <int32_t>(out + k + q)
                    self.lane_code[j] = fg_lane_instruction(FG_LANE_LAYER, <int32_t>out, activation, <int32_t>term)
                    self.lane_nodes[j] = <int32_t>(ends[neurons[0]] - 1)
                    term += 2 + n + k * (n + 1)
                    out += 2 * k if readers else k
                    j += 1
                    continue
                if op == DOT:
                    n = self.terms[self.second[i]]
                    self.lane_terms[term] = <int32_t>n
                    for k in range(2 * n):
                        self.lane_terms[term + 1 + k] = lane_of[self.terms[self.second[i] + 1 + k]]
                    self.lane_code[j] = fg_lane_instruction(FG_LANE_DOT, <int32_t>out, lane_of[word >> OP_BITS],
                                                            <int32_t>term)
                    term += 2 * n + 1
                elif op == ops.PYTHON:                    # a custom op's: its inputs as lane slots
                    n = self.terms[self.second[i]]
                    self.lane_terms[term] = <int32_t>n
                    for k in range(1, n + 2):
                        self.lane_terms[term + k] = lane_of[self.terms[self.second[i] + k]]
                    self.lane_code[j] = fg_lane_instruction(op, <int32_t>out, lane_of[word >> OP_BITS],
                                                            <int32_t>term)
                    self.lane_calls[call] = <int32_t>j
                    call += 1
                    term += n + 2
                elif op == ops.CUSTOM:                    # made by hand: its data is given, read at each pass
                    self.given_nodes[lane - computed - self.input_count] = self.nodes[ends[i] - 1]
                    lane_of[ends[i] - 1] = <int32_t>lane
                    lane += 1
                    continue
                else:
                    self.lane_code[j] = fg_lane_instruction(op, <int32_t>out, lane_of[word >> OP_BITS],
                                                            lane_of[self.second[i]])
                lane_of[ends[i] - 1] = <int32_t>out       # a sum's top: the only one of its nodes read after
                self.lane_nodes[j] = <int32_t>(ends[i] - 1)
                out += 1
                j += 1
            self.root_lane = lane_of[self.root_slot()]
        finally:
            PyMem_Free(lane_of)
        self.program = fg_lane_program(self.lane_code, self.lane_terms, j, <int32_t>computed,
                                       <int32_t>(computed + self.input_count), <int32_t>(self.lane_slots - 1),
                                       self.given_values, self.lane_slots * FG_LANES)
        return self.find_lanes_added()

    cdef int find_lanes_added(self) except -1:
        """Which shared leaves an instruction adds grads to lane by lane: a plain op's children, a sum's or a
        layer's inputs, a custom op's; the others' grads are folded only (a sum's start and weights)."""
        cdef Py_ssize_t i, m, n
        cdef const int32_t* terms
        cdef fg_lane_instruction ins
        self.lanes_added = <unsigned char*>PyMem_Malloc(self.shared_count + 1)
        if self.lanes_added == NULL:
            raise MemoryError()
        memset(self.lanes_added, 0, self.shared_count)
        for i in range(self.program.instructions):
            ins = self.lane_code[i]
            terms = self.lane_terms + ins.b
            if ins.op == FG_LANE_DOT:
                added = [terms[2 + 2 * m] for m in range(terms[0])]
            elif ins.op == FG_LANE_LAYER:
                added = [terms[2 + m] for m in range(terms[1])]
            elif ins.op == ops.PYTHON:
                added = [terms[1 + m] for m in range(terms[0] + 1)]
            else:
                added = [ins.a, ins.b] if ops.op_facts(ins.op).arity == 2 else [ins.a]
            for slot in added:
                if 0 <= slot - self.program.uniform_begin < self.shared_count:
                    self.lanes_added[slot - self.program.uniform_begin] = 1
        return 0

    cdef tuple find_layers(self, input_slots):
        """The layers: the sums (DOT) over the same inputs whose starts and weights are all shared leaves or
        given numbers, two or more. Returns ({first neuron's instruction: (its inputs' slots, its neurons'
        instructions)}, the set of the other neurons' instructions). A layer is computed where its first neuron
        was: its other neurons read only the same inputs and numbers every sample shares."""
        cdef Py_ssize_t i, m, n, t
        cdef uint32_t word
        by_inputs = {}
        for i in range(self.instructions):
            word = self.code[i]
            if word & OP_MASK != DOT:
                continue
            t = self.second[i]
            n = self.terms[t]
            if all(self.shares(self.terms[t + 1 + 2 * m], input_slots) for m in range(n)) and \
                    self.shares(word >> OP_BITS, input_slots):
                by_inputs.setdefault(tuple([self.terms[t + 2 + 2 * m] for m in range(n)]), []).append(i)
        layers = {neurons[0]: (key, neurons) for key, neurons in by_inputs.items()
                  if len(neurons) > 1 and self.distinct_numbers(neurons, key)}
        later = {i for key, neurons in layers.values() for i in neurons[1:]}
        return layers, later

    cdef dict find_activations(self, layers, ends):
        """The layers whose every sum is read by one instruction only, the same op for all, one a layer computes
        (fg_layer_activation, lanes.h): {first neuron's instruction: (that op, each neuron's reader)}. The layer
        then computes those too, in its k slots after the sums: each reader reads nothing but its sum, and nothing
        else reads the sums, so computed there the numbers and the order of their grads' additions are the same."""
        cdef Py_ssize_t i, m, t
        cdef uint32_t word
        cdef int op
        tops = {ends[neuron] - 1 for key, neurons in layers.values() for neuron in neurons}
        readers = {}
        for i in range(self.instructions):
            word = self.code[i]
            op = word & OP_MASK
            t = self.second[i]
            if op == DOT:
                read = [word >> OP_BITS] + [self.terms[t + 1 + m] for m in range(2 * self.terms[t])]
            elif op == ops.PYTHON:
                read = [self.terms[t + 1 + m] for m in range(self.terms[t] + 1)]
            else:
                read = [word >> OP_BITS, t]
            for slot in read:
                if slot in tops:
                    readers.setdefault(slot, []).append(i)
        found = {}
        for first, (key, neurons) in layers.items():
            reader = [readers.get(ends[neuron] - 1, ()) for neuron in neurons]
            if any(len(r) != 1 for r in reader):
                continue
            op = self.code[reader[0][0]] & OP_MASK
            if fg_layer_activation(op) and all(self.code[r[0]] & OP_MASK == op for r in reader):
                found[first] = (op, [r[0] for r in reader])
        return found

    cdef bint distinct_numbers(self, neurons, inputs):
        """Whether no start, weight or input is listed twice in these neurons and their inputs. A width that takes
        the lanes in parts folds each weight's grad part by part (layer_backward.h), and the same number's two
        folds would interleave in another order than at another width; an input's grad is gathered in registers
        and stored once, so a second copy of it, side by side, would overwrite the first's, and a weight's grad
        added lane by lane into it meanwhile (a short block) would be lost."""
        cdef Py_ssize_t i, m, t
        slots = list(inputs)
        for i in neurons:
            t = self.second[i]
            slots.append(self.code[i] >> OP_BITS)
            slots.extend([self.terms[t + 1 + 2 * m] for m in range(self.terms[t])])
        return len(set(slots)) == len(slots)

    cdef bint shares(self, Py_ssize_t slot, input_slots):
        """Whether every sample has the same number in slot: a leaf not in inputs, or an exponent."""
        return (self.inner <= slot < self.size and slot not in input_slots) or slot > self.size

    # -- what Python sees

    def forward(self, rows):
        """Run the graph on each row (one sample: len(inputs) numbers, in the order of inputs) and return the
        outputs, one a row, as a buffer of float64 (array.array('d'); numpy.asarray views it without a copy).

        rows: a sequence of sequences of real numbers, or a C-contiguous buffer of float64 of shape
        (N, len(inputs)) (a NumPy array is read in place), or a flat one of N * len(inputs). The shared
        leaves' data is read now. An op outside its domain raises what the eager op raises, naming the row
        and the node; nothing is changed then."""
        return self.pass_over(rows, None)

    def forward_backward(self, rows, weights=1.0):
        """forward(rows), then backward(weights), in one pass over the rows: the outputs, and the same grads
        added, bit for bit, as the two calls give, but each block's forward runs once instead of twice (backward()
        runs it again, to keep memory independent of N). A row that fails changes nothing, as in forward()."""
        return self.pass_over(rows, weights)

    def backward(self, weights=1.0):
        """Add sum_i weights_i * d out_i / d leaf to every shared leaf's grad, over the rows of the last
        forward() (read again then) at the shared leaves' data of that forward(). weights: one real number
        for every row (1/N: the mean), or a sequence or float64 buffer of N of them."""
        self.check_recorded("BatchedGraph")
        if self.rows_owner is None:
            raise RuntimeError("backward() needs a forward(rows) before it: it runs over the rows of the last one")
        self.begin_pass()
        try:
            weights_owner = self.read_weights(weights, self.row_count)
            self.pass_rows = self.rows
            self.run(self.row_count, True)
            self.add_sums_to_shared_grads()
        finally:
            self.running = False

    cdef object pass_over(self, rows, weights):
        """forward(rows), and with weights (not None) backward(weights) in the same pass."""
        cdef double[::1] written
        self.check_recorded("BatchedGraph")
        self.begin_pass()                     # first: the rows and weights are the pass's, which a worker reads
        try:
            self.rows_owner = None
            self.rows, self.row_count = NULL, 0
            owner, count = self.read_rows(rows)
            weights_owner = None if weights is None else self.read_weights(weights, count)
            outputs = array.array("d", bytes(8 * count))
            written = outputs
            self.outputs = &written[0]
            self.read_shared()
            self.run(count, weights is not None)
            if weights is not None:
                self.add_sums_to_shared_grads()
            self.rows_owner = owner           # for backward(): the rows, as they are then
            self.rows = self.pass_rows
            self.row_count = count
        except BaseException:
            self.rows_owner = None            # a failed forward leaves no rows for backward()
            raise
        finally:
            self.outputs = NULL
            self.running = False
        return outputs

    cdef void add_sums_to_shared_grads(self) noexcept:
        """The chunks' sums of each shared leaf's grad, in chunk order, added to its node's grad."""
        cdef Py_ssize_t k, chunk
        cdef double total
        for k in range(self.shared_count):
            total = 0.0
            for chunk in range(self.chunk_count):
                total += self.partials[chunk * self.shared_count + k]
            (<Value>self.given_nodes[k]).gradient += total

    # -- rows and weights in

    cdef const double* pass_rows

    cdef tuple read_rows(self, rows):
        """(what keeps the rows' numbers alive, N); the numbers themselves in self.pass_rows."""
        cdef Py_ssize_t width = self.input_count, count
        cdef const double[::1] flat
        try:
            view = memoryview(rows)
        except TypeError:
            view = None
        if view is not None:
            if view.format not in ("d", "<d", "=d", "@d") or view.itemsize != 8:
                raise TypeError(f"rows must hold float64 numbers, not {view.format!r}: convert them first "
                                "(numpy: rows.astype('float64'))")
            if view.ndim == 2 and view.shape[1] != width or view.ndim not in (1, 2):
                raise ValueError(f"rows must have shape (N, {width}) (one number a input), not {view.shape}")
            if not view.c_contiguous:
                raise ValueError("rows must be C-contiguous (row after row) to be read in place; this buffer "
                                 "is not (a NumPy array in Fortran order, or a slice): numpy.ascontiguousarray(rows)")
            count = view.shape[0] if view.ndim == 2 else len(view) // width
            if view.ndim == 1 and len(view) % width:
                raise ValueError(f"a flat buffer of rows holds N * {width} numbers, not {len(view)}")
            owner = view.cast("B").cast("d") if view.nbytes else view
        else:
            owner = array.array("d")
            try:
                table = list(rows)
            except TypeError:
                raise TypeError(f"rows must be a sequence of rows or a float64 buffer, not {type_name(rows)!r}")
            for r, row in enumerate(table):
                try:
                    numbers_in_row = list(row)
                except TypeError:
                    raise TypeError(f"rows[{r}] must be a sequence of {width} numbers, not {type_name(row)!r}")
                if len(numbers_in_row) != width:
                    raise ValueError(f"rows[{r}] has {len(numbers_in_row)} numbers; each row has {width} "
                                     "(one a input)")
                for c, x in enumerate(numbers_in_row):
                    owner.append(real_number(x, r, c))
            count = len(table)
        if count == 0:
            raise ValueError("rows is empty: forward() needs at least one row")
        flat = owner
        self.pass_rows = &flat[0]
        return owner, count

    cdef object read_weights(self, weights, Py_ssize_t count):
        cdef const double[::1] flat
        if isinstance(weights, numbers.Real) and not isinstance(weights, Value):
            self.weight = float(weights)
            self.weights = NULL
            return None
        try:
            view = memoryview(weights)
        except TypeError:
            view = None
        if view is not None and view.format in ("d", "<d", "=d", "@d") and view.ndim == 1 and view.c_contiguous:
            owner = view
        elif isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
            raise TypeError(f"weights must be a real number or a sequence of them, not {type_name(weights)!r}")
        else:
            owner = array.array("d", [real_number(w, i, -1) for i, w in enumerate(weights)])
        if len(owner) != count:
            raise ValueError(f"weights has {len(owner)} numbers, for {count} rows")
        flat = owner
        self.weights = &flat[0]
        return owner

    cdef int begin_pass(self) except -1:
        if self.running:
            raise RuntimeError("this BatchedGraph is running in another thread: one pass at a time")
        self.running = True
        return 0

    cdef void read_shared(self) noexcept:
        """The shared leaves' and hand-made nodes' data, as Python sees it now. No compiled graph is ahead of
        them (one never computes a leaf's nor a hand-made node's data), so none need write back first."""
        cdef Py_ssize_t k
        self.workers_filled = 0
        for k in range(self.shared_count + self.given_count):
            if self.given_nodes[k] != NULL:
                self.given_values[k] = (<Value>self.given_nodes[k]).value

    # -- the pass

    cdef int run(self, Py_ssize_t count, bint with_backward) except -1:
        """Forward (and backward) over the pass's rows, in chunks, on up to `threads` threads; raise the
        failure of a row, if one failed."""
        cdef Py_ssize_t workers, worker, blocks = count // FG_LANES
        self.row_count_in_pass = count
        self.chunk_blocks = max(CHUNK_BLOCKS, (blocks + MAX_CHUNKS - 1) // MAX_CHUNKS)
        self.chunk_count = max(1, (blocks + self.chunk_blocks - 1) // self.chunk_blocks)
        workers = max(1, min(self.threads, self.chunk_count, count // WORKER_ROWS))
        self.allocate_pass(workers, with_backward)
        self.stop = 0
        self.next_chunk = 0
        self.workers_busy = workers - 1
        offered = workers > 1 and make_offer(self, workers, with_backward)
        if not offered:
            self.workers_busy = 0
        try:
            self.work_here(with_backward)
        finally:
            if offered:                      # after a Ctrl-C too: the helpers stop at their next chunk
                self.join()
        return self.raise_failure(workers)

    cdef int join(self) except -1:
        """Take back the workers no helper took, and wait for the others: spinning while their last chunks end,
        then, if one is late (the OS has not run its thread yet), sleeping. A Ctrl-C meanwhile stops them at
        their next chunk and is raised once they are done: they write into this graph's arrays."""
        cdef Py_ssize_t spins = 0
        interrupted = None
        with nogil:
            fg_atomic_add(&self.workers_busy, -withdraw_offer(self))
            while fg_atomic_load(&self.workers_busy) > 0 and spins < SPINS_AT_JOIN:
                fg_spin_pause()
                spins += 1
        while fg_atomic_load(&self.workers_busy) > 0:
            try:
                time.sleep(0.0001)
            except BaseException as error:
                fg_atomic_store(&self.stop, 1)
                interrupted = error
        if interrupted is not None:
            raise interrupted
        return 0

    cdef void work(self, Py_ssize_t worker, bint with_backward) noexcept nogil:
        """A helper's part of a pass: the next chunk nobody has taken, until none is left. Taken atomically, so
        each once; a thread that starts late takes fewer (each chunk's sums go to their own place, whoever
        computes them: the same bits)."""
        while self.take_chunk(worker, with_backward):
            pass

    cdef int work_here(self, bint with_backward) except -1:
        """The part of the pass's own thread (worker 0), as a helper's, the GIL released; between chunks the
        main thread looks for Ctrl-C."""
        cdef bint checks_signals = threading.current_thread() is threading.main_thread()
        try:
            with nogil:
                while self.take_chunk(0, with_backward):
                    if checks_signals:
                        with gil:
                            check_signals()
        except BaseException:
            fg_atomic_store(&self.stop, 1)
            raise

    cdef bint take_chunk(self, Py_ssize_t worker, bint with_backward) noexcept nogil:
        """Run the next chunk nobody has taken; False if none was left, or a row failed (the others stop then)."""
        cdef Py_ssize_t chunk
        if fg_atomic_load(&self.stop):
            return False
        chunk = fg_atomic_add(&self.next_chunk, 1)
        if chunk >= self.chunk_count:
            return False
        if not self.run_chunk(worker, chunk, with_backward):
            fg_atomic_store(&self.stop, 1)
            return False
        return True

    cdef bint run_chunk(self, Py_ssize_t worker, Py_ssize_t chunk, bint with_backward) noexcept nogil:
        """One chunk's blocks; with backward, its sums of the shared leaves' grads in partials. False if a row
        failed. The last chunk also takes the rows after the last whole block, as a short block first: its
        unused lanes' sums are cleared before the chunk's other blocks add to them."""
        cdef double* values = self.block_of(worker)
        cdef double* grads = values + self.lane_slots * FG_LANES
        cdef double* shared_grads = grads + (self.computed + self.input_count) * FG_LANES
        cdef Py_ssize_t whole = self.row_count_in_pass // FG_LANES
        cdef Py_ssize_t short = self.row_count_in_pass % FG_LANES
        cdef Py_ssize_t block, k, first = chunk * self.chunk_blocks
        if with_backward:                    # the inputs' grads, which nobody reads, from 0 (they grow)
            memset(grads + self.computed * FG_LANES, 0, self.input_count * FG_LANES * sizeof(double))
        if short and chunk == self.chunk_count - 1:
            if not self.run_block(worker, whole, short, with_backward):
                return False
            if with_backward:
                for k in range(self.shared_count):
                    memset(shared_grads + k * FG_LANES + short, 0, (FG_LANES - short) * sizeof(double))
        for block in range(first, min(first + self.chunk_blocks, whole)):
            if not self.run_block(worker, block, FG_LANES, with_backward):
                return False
        if with_backward:                    # and the sums start from 0 again
            lane_loops.take_lane_sums(shared_grads, values + 2 * self.lane_slots * FG_LANES, self.shared_count,
                                      NULL if short and chunk == self.chunk_count - 1 else self.lanes_added,
                                      self.partials + chunk * self.shared_count)
        return True

    cdef bint run_block(self, Py_ssize_t worker, Py_ssize_t block, Py_ssize_t lanes,
                        bint with_backward) noexcept nogil:
        cdef double* values = self.block_of(worker)
        cdef double* grads = values + self.lane_slots * FG_LANES
        cdef fg_lane_failure failure
        # A short block's unused lanes must not reach the shared grads: its loops add lane by lane (no slot is
        # taken for uniform, so nothing is folded across lanes), and run_chunk clears the unused lanes.
        cdef fg_lane_program program = self.program
        if lanes < FG_LANES:
            program.uniform_end = program.uniform_begin
        self.load_block(values, block, lanes)
        failure = lane_loops.forward(&program, values) if self.calls == 0 else (
            self.forward_calling(worker, &program, values, lanes))
        if failure.instruction < 0 and with_backward:
            self.set_root_grads(grads, block, lanes)
            if self.calls == 0:
                lane_loops.backward(&program, values, grads)
            else:
                failure = self.backward_calling(worker, &program, values, grads, lanes)
                if failure.instruction >= 0:     # the loops leave the grads at 0; a call failed before them
                    memset(grads, 0, self.computed * FG_LANES * sizeof(double))
        if failure.instruction >= 0:
            self.failures[worker] = failure
            self.failed_blocks[worker] = block
            self.sums_dirty = with_backward
            return False
        if self.outputs != NULL:
            memcpy(self.outputs + block * FG_LANES, values + self.root_lane * FG_LANES, lanes * sizeof(double))
        return True

    cdef Py_ssize_t row_count_in_pass

    # -- custom ops: the lane loops between the calls

    cdef fg_lane_failure forward_calling(self, Py_ssize_t worker, const fg_lane_program* program, double* values,
                                         Py_ssize_t lanes) noexcept nogil:
        cdef fg_lane_program part = program[0]
        cdef fg_lane_failure failure = fg_lane_failure(-1, 0, ops.OK)
        cdef Py_ssize_t call, end, begin = 0
        for call in range(self.calls + 1):
            end = self.lane_calls[call] if call < self.calls else program.instructions
            part.code = program.code + begin
            part.instructions = end - begin
            failure = lane_loops.forward(&part, values)
            if failure.instruction >= 0:
                failure.instruction += begin
                return failure
            if call < self.calls:
                with gil:
                    failure = self.call_lanes(worker, call, values, NULL, lanes)
                if failure.instruction >= 0:
                    return failure
            begin = end + 1
        return failure

    cdef fg_lane_failure backward_calling(self, Py_ssize_t worker, const fg_lane_program* program,
                                          const double* values, double* grads, Py_ssize_t lanes) noexcept nogil:
        """Every call's derivatives for the block first (nothing is added if one raises), then the loops between
        the calls, last first, each call's grad times its derivatives into its inputs' grads, in their order."""
        cdef fg_lane_program part = program[0]
        cdef fg_lane_failure failure = fg_lane_failure(-1, 0, ops.OK)
        cdef Py_ssize_t call, k, l, n, end = program.instructions
        cdef double* slopes = (<double*>values) + self.block_doubles() - self.slope_words
        cdef double* g
        cdef double* input_grad
        cdef const double* slope
        cdef const int32_t* inputs
        with gil:
            for call in range(self.calls):             # given slopes, call_lanes only reads values
                failure = self.call_lanes(worker, call, <double*>values, slopes, lanes)
                if failure.instruction >= 0:
                    return failure
        for call in range(self.calls - 1, -1, -1):
            part.code = program.code + self.lane_calls[call] + 1
            part.instructions = end - self.lane_calls[call] - 1
            lane_loops.backward(&part, values, grads)
            end = self.lane_calls[call]
            inputs = self.lane_terms + self.lane_code[end].b
            n = inputs[0]
            g = grads + <Py_ssize_t>self.lane_code[end].out * FG_LANES
            for k in range(n):
                input_grad = grads + <Py_ssize_t>inputs[2 + k] * FG_LANES
                slope = slopes + (<Py_ssize_t>self.lane_code[end].b + 2) * FG_LANES + k
                for l in range(FG_LANES):
                    input_grad[l] += g[l] * slope[l * n]
            memset(g, 0, FG_LANES * sizeof(double))     # read: cleared, as the loops clear theirs
        part.code = program.code
        part.instructions = end
        lane_loops.backward(&part, values, grads)
        return failure

    cdef fg_lane_failure call_lanes(self, Py_ssize_t worker, Py_ssize_t call, double* values, double* slopes,
                                    Py_ssize_t lanes) noexcept:
        """A call's function for each row of the block (with the GIL): its forward into its slot, or with
        slopes its derivatives (lane l's n of them at slopes[(terms + 2) * FG_LANES + l * n]). Lanes past the
        rows repeat the last row, as their inputs do. A failure's status is OK: the exception is in errors."""
        cdef fg_lane_failure failure = fg_lane_failure(-1, 0, ops.OK)
        cdef Py_ssize_t j = self.lane_calls[call], l = 0, k, n
        cdef const int32_t* inputs = self.lane_terms + self.lane_code[j].b
        cdef double* out = values + <Py_ssize_t>self.lane_code[j].out * FG_LANES
        cdef double* slope = NULL if slopes == NULL else slopes + (<Py_ssize_t>self.lane_code[j].b + 2) * FG_LANES
        node = <Value>self.nodes[self.call_slot[call]]
        n = inputs[0]
        try:
            for l in range(lanes):
                if slope == NULL:
                    out[l] = custom_forward(node, call_inputs(inputs, values, FG_LANES, l))
                else:
                    custom_derivative(node, call_inputs(inputs, values, FG_LANES, l), slope + l * n)
        except BaseException as error:
            self.errors[worker] = error
            failure.instruction, failure.lane = j, l
            return failure
        for l in range(lanes, FG_LANES):
            if slope == NULL:
                out[l] = out[lanes - 1]
            else:
                for k in range(n):
                    slope[l * n + k] = slope[(lanes - 1) * n + k]
        return failure

    cdef void load_block(self, double* values, Py_ssize_t block, Py_ssize_t lanes) noexcept nogil:
        """The block's rows into the input slots, lane by lane; a short block repeats its last row, so that
        the unused lanes compute what a real row does (no spurious domain error)."""
        cdef Py_ssize_t i, l, width = self.input_count
        cdef const double* rows = self.pass_rows + block * FG_LANES * width
        cdef double* lane
        for i in range(width):               # input by input: a lane loop of fixed stride (was 3% of a step)
            lane = values + (self.computed + i) * FG_LANES
            for l in range(lanes):
                lane[l] = rows[l * width + i]
            for l in range(lanes, FG_LANES):
                lane[l] = rows[(lanes - 1) * width + i]

    cdef void set_root_grads(self, double* grads, Py_ssize_t block, Py_ssize_t lanes) noexcept nogil:
        cdef Py_ssize_t l
        cdef double* root = grads + self.root_lane * FG_LANES
        if self.weights == NULL:             # the lanes past the rows get none: they are not summed
            for l in range(lanes):
                root[l] += self.weight
        else:
            for l in range(lanes):
                root[l] += self.weights[block * FG_LANES + l]

    cdef int allocate_pass(self, Py_ssize_t workers, bint with_backward) except -1:
        """Per worker, a block's numbers with the shared and given ones filled in; per chunk, its sums."""
        cdef Py_ssize_t worker, k, l, n = self.lane_slots * FG_LANES
        cdef double* values
        if self.workers_allocated < workers:
            blocks = <double**>PyMem_Malloc(workers * sizeof(double*))
            failures = <fg_lane_failure*>PyMem_Malloc(workers * sizeof(fg_lane_failure))
            failed_blocks = <Py_ssize_t*>PyMem_Malloc(workers * sizeof(Py_ssize_t))
            if not (blocks and failures and failed_blocks):
                PyMem_Free(blocks)
                PyMem_Free(failures)
                PyMem_Free(failed_blocks)
                raise MemoryError()
            for worker in range(workers):
                blocks[worker] = self.block_values[worker] if worker < self.workers_allocated else NULL
            PyMem_Free(self.block_values)
            PyMem_Free(self.failures)
            PyMem_Free(self.failed_blocks)
            self.block_values, self.failures, self.failed_blocks = blocks, failures, failed_blocks
            for worker in range(self.workers_allocated, workers):
                self.block_values[worker] = <double*>PyMem_Malloc(self.block_doubles() * sizeof(double) + CACHE_LINE)
                if self.block_values[worker] == NULL:
                    raise MemoryError()      # the ones allocated stay counted, for __dealloc__
                memset(self.block_of(worker), 0, self.block_doubles() * sizeof(double))
                self.workers_allocated = worker + 1
        if with_backward and self.partials_capacity < self.chunk_count * self.shared_count:
            PyMem_Free(self.partials)
            self.partials = <double*>PyMem_Malloc(self.chunk_count * self.shared_count * sizeof(double) + 1)
            self.partials_capacity = 0 if self.partials == NULL else self.chunk_count * self.shared_count
            if self.partials == NULL:
                raise MemoryError()
        for worker in range(workers):
            self.failures[worker].instruction = -1
            values = self.block_of(worker)
            if worker >= self.workers_filled:     # the numbers of the last forward(), which backward() uses
                for k in range(self.shared_count + self.given_count):
                    for l in range(FG_LANES):
                        values[(self.computed + self.input_count + k) * FG_LANES + l] = self.given_values[k]
            if self.sums_dirty:              # a pass stopped before it took its lanes' sums
                memset(values + n + (self.computed + self.input_count) * FG_LANES, 0,
                       self.shared_count * FG_LANES * sizeof(double))
                memset(values + 2 * n, 0, 8 * self.shared_count * sizeof(double))
        self.workers_filled = max(self.workers_filled, workers)
        self.sums_dirty = False
        self.errors = [None] * workers if self.calls else None
        return 0

    cdef int raise_failure(self, Py_ssize_t workers) except -1:
        """If a row failed: the eager op's exception, for the first failing block any worker met."""
        cdef Py_ssize_t worker, first = -1, row, slot, i
        for worker in range(workers):
            if self.failures[worker].instruction >= 0 and (first < 0 or
                    self.failed_blocks[worker] < self.failed_blocks[first]):
                first = worker
        errors, self.errors = self.errors, None      # held no longer than this
        if first < 0:
            return 0
        failure = self.failures[first]
        row = self.failed_blocks[first] * FG_LANES + failure.lane
        node = self.node_of(failure.instruction)
        where = (f"row {row:,}: {node._op!r} at node {failure.instruction + 1:,} of {self.program.instructions:,} "
                 "in the batched graph's order; nothing was changed")
        if failure.status == ops.OK:             # a custom op raised
            raise failure_at(errors[first], where)
        error = ops.op_error(failure.status)
        raise type(error)(f"{error} ({where})")

    cdef Value node_of(self, Py_ssize_t instruction):
        """The node a lane instruction computes (a DOT: its sum's top; a LAYER: its first neuron's)."""
        return <Value>self.nodes[self.lane_nodes[instruction]]


cdef Py_ssize_t check_threads(threads) except -1:
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be None (the cores this process may use) or a positive int, not {threads!r}")
    return threads


cdef double real_number(x, Py_ssize_t row, Py_ssize_t column) except? -1.0:
    if isinstance(x, (float, int)) or isinstance(x, numbers.Real) and not isinstance(x, Value):
        return float(x)
    where = f"rows[{row}][{column}]" if column >= 0 else f"weights[{row}]"
    raise TypeError(f"{where} must be a real number, not {type_name(x)!r}")


# -- the helpers: threads that run a pass's workers 1, 2, ... beside the thread that runs the pass (worker 0).
# A pass offers its workers, and each helper takes one, under help_lock; the pass takes back those nobody took
# when its own chunks are done, and waits for the others. Between passes a helper spins for the next offer for a
# while, then sleeps until a pass wakes it: a training loop's passes then wake no thread (waking one took about
# 45 us a pass on a 2-core VM, a tenth of the moons step at 10,000 rows). Started by the passes that ask for
# them: as many as a pass has asked for (its threads less one), at most.

cdef struct Offer:
    void* graph                  # the BatchedGraph of the pass offering (borrowed: its thread holds it until
                                 # every worker taken is done), or NULL
    Py_ssize_t next, workers     # the next worker to take; workers [next, workers) are still offered
    bint with_backward

cdef Offer offer = Offer(NULL, 0, 0, False)
cdef PyThread_type_lock help_lock = PyThread_allocate_lock()
cdef Py_ssize_t offers_made = 0          # (atomic) the offers so far: a spinning helper looks for a change
cdef Py_ssize_t helpers_hot = 0          # (atomic) the helpers spinning for an offer now
cdef Py_ssize_t helpers_started = 0
cdef object helpers_wake = threading.Semaphore(0)


cdef bint make_offer(BatchedGraph graph, Py_ssize_t workers, bint with_backward) except -1:
    """Offer a pass's workers 1 to workers - 1 to the helpers, waking as many as are asleep; False if another
    pass's offer stands (this one then runs on its own thread)."""
    global helpers_started
    cdef Py_ssize_t asleep
    with nogil:
        PyThread_acquire_lock(help_lock, WAIT_LOCK)
    if offer.graph != NULL:
        PyThread_release_lock(help_lock)
        return False
    offer.graph, offer.next, offer.workers, offer.with_backward = <void*>graph, 1, workers, with_backward
    PyThread_release_lock(help_lock)
    fg_atomic_add(&offers_made, 1)
    asleep = min(workers - 1, helpers_started) - fg_atomic_load(&helpers_hot)
    while helpers_started < workers - 1:         # a new helper spins first: it finds the offer
        threading.Thread(target=_help_passes, name="fastgrad-helper", daemon=True).start()
        helpers_started += 1
    for _ in range(asleep):
        helpers_wake.release()
    return True


cdef Py_ssize_t withdraw_offer(BatchedGraph graph) noexcept nogil:
    """Take a pass's offer back: the number of its workers no helper took."""
    cdef Py_ssize_t untaken = 0
    PyThread_acquire_lock(help_lock, WAIT_LOCK)
    if offer.graph == <void*>graph:
        untaken = offer.workers - offer.next
        offer.graph = NULL
    PyThread_release_lock(help_lock)
    return untaken


cdef bint take_offer(void** graph, Py_ssize_t* worker, bint* with_backward) noexcept nogil:
    cdef bint taken
    PyThread_acquire_lock(help_lock, WAIT_LOCK)
    taken = offer.graph != NULL and offer.next < offer.workers
    if taken:
        graph[0], worker[0], with_backward[0] = offer.graph, offer.next, offer.with_backward
        offer.next += 1
    PyThread_release_lock(help_lock)
    return taken


cdef void help_while_hot() noexcept nogil:
    """Run the workers passes offer, spinning between them; return after HOT_SPINS pauses without an offer."""
    cdef Py_ssize_t spins = 0, seen = fg_atomic_load(&offers_made) - 1     # an offer made before: looked at once
    cdef void* graph
    cdef Py_ssize_t worker
    cdef bint with_backward
    fg_atomic_add(&helpers_hot, 1)
    while spins < HOT_SPINS:
        if fg_atomic_load(&offers_made) == seen:
            fg_spin_pause()
            spins += 1
            continue
        seen = fg_atomic_load(&offers_made)
        while take_offer(&graph, &worker, &with_backward):
            (<BatchedGraph>graph).work(worker, with_backward)
            fg_atomic_add(&(<BatchedGraph>graph).workers_busy, -1)    # the last this thread reads of it
        spins = 0
    fg_atomic_add(&helpers_hot, -1)


def _help_passes():
    """A helper thread's life."""
    while True:
        with nogil:
            help_while_hot()
        helpers_wake.acquire()


def _forget_helpers():
    """In a child process after fork(): the parent's helpers are not there, and help_lock may be held."""
    global help_lock, helpers_started, helpers_hot, helpers_wake
    help_lock = PyThread_allocate_lock()
    offer.graph = NULL
    helpers_started = helpers_hot = 0
    helpers_wake = threading.Semaphore(0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)
