/* Node memory: fastgrad's nodes live in 2 MiB slabs, and a new node takes the lowest free slot of the lowest
   slab that has one; a slab is mapped only when all are full. So a graph's nodes lie in memory in the order
   they were made, however the previous graph was freed, and backward's sort and sweep walk memory in order.
   A LIFO free list (Cython's @freelist, pymalloc's pools) hands back the last freed slot first instead: a
   graph is freed in another order than it is built, so each training step scrambles the next one's layout
   further (measured on the 64x512 layer: backward went from 11 to 46 ns a node over 25 steps).

   An emptied slab stays mapped for the next graph of its size; fg_return_spare_slabs() gives back what no
   graph reused for a second. Under AddressSanitizer free slots are poisoned, so a use after free of a node is
   still caught. The fast paths are inline here; the rest is node_memory.c. */
#ifndef FASTGRAD_NODE_MEMORY_H
#define FASTGRAD_NODE_MEMORY_H

#include <Python.h>
#include <string.h>
#include "portability.h"

#define FG_SLAB_BYTES (2 << 20)           /* one huge page: a slab maps in one fault where huge pages exist */
#ifdef Py_TRACE_REFS
#define FG_SLOT_BYTES 96                  /* two more pointers in every object's header */
#else
#define FG_SLOT_BYTES 80                  /* a node; the engine checks at compile time that its node fits */
#endif
#define FG_SLAB_WORDS (FG_SLAB_BYTES / FG_SLOT_BYTES / 64)   /* bitmap words a slab */
#define FG_SLAB_SLOTS (FG_SLAB_WORDS * 64)                   /* 26,176 nodes of 80 bytes */

/* The engine calls this where the node's size is known, so a node that outgrows its slot fails the build. */
#define fg_check_node_size(node_bytes) FG_STATIC_ASSERT((node_bytes) <= FG_SLOT_BYTES)

typedef struct {
    char *slots;                           /* FG_SLAB_SLOTS slots; NULL: memory returned, refilled on demand */
    unsigned long long free_bits[FG_SLAB_WORDS];   /* bit i of word w set: slot 64 * w + i is free */
    int live;                              /* slots in use */
    int first_free_word;                   /* the words below it have no free slot */
    double emptied_at;                     /* when it last became empty (fg_seconds) */
} fg_slab;

typedef struct {
    fg_slab *slabs;
    Py_ssize_t count, capacity;
    Py_ssize_t lowest_open;                /* the mapped slabs below it have no free slot */
    Py_ssize_t empty;                      /* mapped slabs with no node in them */
    Py_ssize_t unmapped;                   /* slabs whose memory was returned (slots NULL) */
    double next_return;                    /* when the earliest spare empty slab turns stale */
} fg_node_memory;

FG_HIDDEN extern fg_node_memory fg_memory;

FG_HIDDEN Py_ssize_t fg_open_slab(void);
FG_HIDDEN void fg_slab_filled(fg_slab *slab);
FG_HIDDEN void fg_slab_emptied(fg_slab *slab);
FG_HIDDEN void fg_return_spare_slabs(void);

/* The lowest free slot of a slab that has one, zeroed; its slab's index in *slab_index. */
static inline void *fg_take_slot(fg_slab *slab, Py_ssize_t index, unsigned int *slab_index) {
    int word = slab->first_free_word, bit;
    char *node;
    while (slab->free_bits[word] == 0)    /* ends: live < FG_SLAB_SLOTS, so some bit is set */
        word++;
    slab->first_free_word = word;
    bit = fg_lowest_bit(slab->free_bits[word]);
    slab->free_bits[word] &= slab->free_bits[word] - 1;
    slab->live++;
    node = slab->slots + (size_t)(64 * word + bit) * FG_SLOT_BYTES;
    fg_unpoison(node, FG_SLOT_BYTES);
    memset(node, 0, FG_SLOT_BYTES);
    *slab_index = (unsigned int)index;
    return node;
}

/* The common case of fg_node_alloc, which calls nothing: a slot of the lowest open slab while it holds nodes and
   has room; NULL otherwise, for fg_node_alloc's whole path. `memory` is the engine's: grad's sweep, in another
   module, makes its nodes inline through the pointer the engine gives it (engine.pxd, take_binary_node). */
static inline void *fg_node_take(fg_node_memory *memory, unsigned int *slab_index) {
    Py_ssize_t index = memory->lowest_open;
    fg_slab *slab;
    if (index == memory->count)
        return NULL;
    slab = &memory->slabs[index];
    if (slab->slots == NULL || slab->live == 0 || slab->live == FG_SLAB_SLOTS)
        return NULL;
    return fg_take_slot(slab, index, slab_index);
}

/* A zeroed slot in the lowest free place, its slab's index in *slab_index; NULL when out of memory (nothing
   is set then: the caller raises MemoryError). */
static inline void *fg_node_alloc(unsigned int *slab_index) {
    Py_ssize_t index;
    void *node = fg_node_take(&fg_memory, slab_index);
    if (node != NULL)
        return node;
    index = fg_memory.lowest_open;
    if (index == fg_memory.count || fg_memory.slabs[index].slots == NULL
            || fg_memory.slabs[index].live == FG_SLAB_SLOTS) {
        index = fg_open_slab();
        if (index < 0)
            return NULL;
    }
    if (fg_memory.slabs[index].live == 0)
        fg_slab_filled(&fg_memory.slabs[index]);
    return fg_take_slot(&fg_memory.slabs[index], index, slab_index);
}

/* A new node's header: its type and its one reference. PyObject_Init's work is written out where CPython's
   build allows: the slot comes zeroed, and tracemalloc's new-reference hook finds nothing to update in memory it
   traces in a domain of its own, so PyObject_Init's two calls out of the extension would do no more (they were
   7% of what a node grad(create_graph=True) makes costs). Builds that count references or list every object,
   the free-threaded build, whose header has more fields, and Python 3.13 on, whose reference tracers
   (PyRefTracer_SetTracer) are told of each new object there, keep the call. */
static inline PyObject *fg_node_header(void *slot, PyTypeObject *type) {
    PyObject *node = (PyObject *)slot;
#if defined(Py_REF_DEBUG) || defined(Py_TRACE_REFS) || defined(Py_GIL_DISABLED) || PY_VERSION_HEX >= 0x030D0000
    return PyObject_Init(node, type);
#else
    Py_SET_TYPE(node, type);
    if (type->tp_flags & Py_TPFLAGS_HEAPTYPE)
        Py_INCREF(type);
    Py_SET_REFCNT(node, 1);
    return node;
#endif
}

/* A node in the slabs, its type set and its one reference counted (a new reference), or NULL with MemoryError
   set: what tp_alloc does for a node without a GC header. */
static inline PyObject *fg_slab_node(PyTypeObject *type, unsigned int *slab_index) {
    void *slot = fg_node_alloc(slab_index);
    return slot == NULL ? PyErr_NoMemory() : fg_node_header(slot, type);
}

/* Mark a node's slot free. An emptied slab stays mapped until fg_return_spare_slabs. */
static inline void fg_node_free(void *node, unsigned int slab_index) {
    fg_slab *slab = &fg_memory.slabs[slab_index];
    size_t slot = (size_t)((char *)node - slab->slots) / FG_SLOT_BYTES;
    slab->free_bits[slot >> 6] |= 1ULL << (slot & 63);
    if ((int)(slot >> 6) < slab->first_free_word)
        slab->first_free_word = (int)(slot >> 6);
    slab->live--;
    fg_poison(node, FG_SLOT_BYTES);
    if ((Py_ssize_t)slab_index < fg_memory.lowest_open)
        fg_memory.lowest_open = slab_index;
    if (slab->live == 0)
        fg_slab_emptied(slab);
}

#endif
