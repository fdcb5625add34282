"""The loops of fastgrad.optim in C: zero_grad, the SGD update and the Adam update over a C array of nodes.

A step crosses from Python into this module once and runs one C loop over the parameters, reading and
writing each node's `data` and `grad` fields directly (engine.pxd), with no Python object made and no
Python call per parameter. Everything that runs once per step or once per optimizer (argument checks,
hyper-parameters, state dicts) is Python, in fastgrad/optim.py.
"""
cimport cython
from cpython.array cimport array
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.math cimport pow, sqrt

from fastgrad.engine cimport Value, type_name


@cython.final
cdef class ParameterArray:
    """An optimizer's parameters: distinct leaf Values, held in a tuple (which keeps them alive) and
    reached by the loops through a C array of pointers into it."""

    cdef readonly tuple values
    cdef PyObject** nodes        # borrowed from values, which never changes
    cdef Py_ssize_t count

    def __cinit__(self, params):
        # Everything is checked before anything is kept, with torch.optim's wording where it has one.
        if type(params) is Value:
            raise TypeError("params must be an iterable of Values, such as model.parameters(), not a single Value")
        try:
            iterator = iter(params)
        except TypeError:
            raise TypeError("params must be an iterable of Values, such as model.parameters(), "
                            f"not {type_name(params)!r}") from None
        values = tuple(iterator)
        if not values:
            raise ValueError("optimizer got an empty parameter list")
        first_index = {}
        for i, p in enumerate(values):
            if type(p) is not Value:
                hint = " (parameter groups are not supported: one optimizer per group)" if isinstance(p, dict) else ""
                raise TypeError(f"optimizer can only optimize Values, but params[{i}] is {type_name(p)!r}{hint}")
            if (<Value>p).child_a != NULL:
                # A node made by an op is recomputed from its children: an update to it would not last.
                raise ValueError(f"can't optimize a non-leaf Value: params[{i}] was made by '{p._op}' "
                                 "(parameters are Values made by the user, such as a model's weights)")
            if id(p) in first_index:
                raise ValueError(f"params[{i}] is the same Value as params[{first_index[id(p)]}]: "
                                 "each parameter may be given once")
            first_index[id(p)] = i
        self.nodes = <PyObject**>PyMem_Malloc(len(values) * sizeof(PyObject*))
        if self.nodes == NULL:
            raise MemoryError()
        for i, p in enumerate(values):
            self.nodes[i] = <PyObject*>p
        self.count = len(values)
        self.values = values

    def __dealloc__(self):
        PyMem_Free(self.nodes)

    def __len__(self):
        return self.count

    def __reduce__(self):
        # Pickled as its Values: in one pickle with the model they stay the model's parameters.
        return ParameterArray, (self.values,)

    cdef double* buffer(self, array numbers, str name) except NULL:
        """The doubles of an optimizer's per-parameter buffer, checked to hold one for each parameter."""
        if numbers is None or numbers.ob_descr.typecode != b'd' or len(numbers) != self.count:
            raise ValueError(f"{name} must be an array('d') of {self.count} numbers")
        return numbers.data.as_doubles

    def zero_grad(self):
        """Set every parameter's grad to 0.0."""
        cdef Py_ssize_t i
        for i in range(self.count):
            (<Value>self.nodes[i]).gradient = 0.0

    @cython.cdivision(True)
    def sgd_step(self, double lr, double momentum, double dampening, double weight_decay, bint nesterov,
                 array momentum_buffer, bint buffer_started):
        """One SGD update, torch.optim.SGD's: weight decay into the gradient, then the momentum buffer
        (the first step copies the gradient into it), then data -= lr * direction.

        momentum_buffer is ignored when momentum is 0."""
        cdef double* buf = NULL
        cdef double g
        cdef Value p
        cdef Py_ssize_t i
        if momentum != 0.0:
            buf = self.buffer(momentum_buffer, "momentum_buffer")
        for i in range(self.count):
            p = <Value>self.nodes[i]
            g = p.gradient
            if weight_decay != 0.0:
                g = g + weight_decay * p.value
            if buf != NULL:
                buf[i] = momentum * buf[i] + (1.0 - dampening) * g if buffer_started else g
                g = g + momentum * buf[i] if nesterov else buf[i]
            p.value = p.value - lr * g

    @cython.cdivision(True)      # IEEE division: with eps = 0 a zero moment gives nan, as in torch, not an exception
    def adam_step(self, double lr, double beta1, double beta2, double eps, double weight_decay,
                  bint decoupled_weight_decay, long long step, array exp_avg, array exp_avg_sq):
        """Adam's update number `step` (1 for the first), as torch.optim.Adam computes it; with
        decoupled_weight_decay, AdamW's (data shrinks by lr * weight_decay before the update, the
        gradient is left alone)."""
        cdef double* m = self.buffer(exp_avg, "exp_avg")
        cdef double* v = self.buffer(exp_avg_sq, "exp_avg_sq")
        cdef double step_size = lr / (1.0 - pow(beta1, <double>step))
        cdef double bias_correction2_sqrt = sqrt(1.0 - pow(beta2, <double>step))
        cdef double g
        cdef Value p
        cdef Py_ssize_t i
        for i in range(self.count):
            p = <Value>self.nodes[i]
            g = p.gradient
            if weight_decay != 0.0:
                if decoupled_weight_decay:
                    p.value = p.value * (1.0 - lr * weight_decay)
                else:
                    g = g + weight_decay * p.value
            m[i] = beta1 * m[i] + (1.0 - beta1) * g
            v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
            p.value = p.value - step_size * (m[i] / (sqrt(v[i]) / bias_correction2_sqrt + eps))
