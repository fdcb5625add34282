/* Node memory's slow paths: mapping, filling and returning slabs (see node_memory.h). */
#include "node_memory.h"

#define FG_KEPT_EMPTY_SLABS 5              /* 10 MiB of empty slabs always stay mapped */
#define FG_STALE_SECONDS 1.0               /* an empty slab unused this long goes back at the next drop */
#define FG_TRACEMALLOC_DOMAIN 0x66677261   /* tracemalloc sees slabs that hold nodes in this domain ("fgra") */

FG_HIDDEN fg_node_memory fg_memory = {NULL, 0, 0, 0, 0, 0, Py_HUGE_VAL};

/* Slabs come from the allocator pymalloc takes its arenas from (mmap, VirtualAlloc), which gives memory back
   to the system when a slab is returned: malloc would keep it while a later block sits above it. */
static PyObjectArenaAllocator pages;
static int pages_known = 0;

static char *map_slab(void) {
    char *slots;
    if (!pages_known) {
        PyObject_GetArenaAllocator(&pages);
        pages_known = 1;
    }
    slots = (char *)pages.alloc(pages.ctx, FG_SLAB_BYTES);
    if (slots != NULL)
        fg_prefault(slots, FG_SLAB_BYTES);   /* a slab is filled before the next is touched */
    return slots;
}

static void unmap_slab(char *slots) {
    fg_unpoison(slots, FG_SLAB_BYTES);
    pages.free(pages.ctx, slots, FG_SLAB_BYTES);
}

/* Give a slab memory, every slot free. 0 (nothing changed) when out of memory. */
static int fill_slab(fg_slab *slab) {
    char *slots = map_slab();
    if (slots == NULL)
        return 0;
    fg_poison(slots, FG_SLAB_BYTES);
    slab->slots = slots;
    memset(slab->free_bits, 0xFF, sizeof(slab->free_bits));
    slab->live = 0;
    slab->first_free_word = 0;
    return 1;
}

static int add_slab(void) {
    if (fg_memory.count == fg_memory.capacity) {
        Py_ssize_t capacity = fg_memory.capacity ? fg_memory.capacity * 2 : 64;
        fg_slab *grown = (fg_slab *)PyMem_RawRealloc(fg_memory.slabs, (size_t)capacity * sizeof(fg_slab));
        if (grown == NULL)
            return 0;
        fg_memory.slabs = grown;
        fg_memory.capacity = capacity;
    }
    fg_memory.slabs[fg_memory.count].slots = NULL;
    fg_memory.count++;
    fg_memory.unmapped++;
    return 1;
}

/* The lowest mapped slab with a free slot. Memory is mapped only when every mapped slab is full: then for
   the lowest unmapped slab, or a new one. -1 when out of memory. */
FG_HIDDEN Py_ssize_t fg_open_slab(void) {
    Py_ssize_t index = 0;
    while (fg_memory.lowest_open < fg_memory.count
           && (fg_memory.slabs[fg_memory.lowest_open].slots == NULL
               || fg_memory.slabs[fg_memory.lowest_open].live == FG_SLAB_SLOTS))
        fg_memory.lowest_open++;
    if (fg_memory.lowest_open < fg_memory.count)
        return fg_memory.lowest_open;
    if (fg_memory.unmapped == 0 && !add_slab())
        return -1;
    while (fg_memory.slabs[index].slots != NULL)   /* ends: some slab is unmapped */
        index++;
    if (!fill_slab(&fg_memory.slabs[index]))
        return -1;
    fg_memory.unmapped--;
    fg_memory.empty++;
    fg_memory.lowest_open = index;                 /* every other mapped slab is full */
    return index;
}

/* An empty slab gets its first node. */
FG_HIDDEN void fg_slab_filled(fg_slab *slab) {
    fg_memory.empty--;
    PyTraceMalloc_Track(FG_TRACEMALLOC_DOMAIN, (uintptr_t)slab->slots, FG_SLAB_BYTES);
}

/* A slab lost its last node. */
FG_HIDDEN void fg_slab_emptied(fg_slab *slab) {
    fg_memory.empty++;
    PyTraceMalloc_Untrack(FG_TRACEMALLOC_DOMAIN, (uintptr_t)slab->slots);
    slab->emptied_at = fg_seconds();
    if (slab->emptied_at + FG_STALE_SECONDS < fg_memory.next_return)
        fg_memory.next_return = slab->emptied_at + FG_STALE_SECONDS;
}

/* Run when a graph has been dropped: return the slabs that have stayed empty for FG_STALE_SECONDS.

   A training loop's next step rebuilds its graph in the slabs the previous step emptied, which stay mapped
   for it (mapping and zeroing fresh memory costs as much as making the nodes); what no step reuses goes back
   to the system at a drop a second later, the highest slabs first. FG_KEPT_EMPTY_SLABS always stay. Checked
   at drops only, and then only when there is something to return: one clock read. */
FG_HIDDEN void fg_return_spare_slabs(void) {
    double now;
    Py_ssize_t index = fg_memory.count - 1;
    if (fg_memory.empty <= FG_KEPT_EMPTY_SLABS) {
        fg_memory.next_return = Py_HUGE_VAL;
        return;
    }
    now = fg_seconds();
    if (now < fg_memory.next_return)
        return;
    fg_memory.next_return = Py_HUGE_VAL;          /* the earliest that a slab kept below turns stale */
    for (; index >= 0; index--) {
        fg_slab *slab = &fg_memory.slabs[index];
        if (slab->slots == NULL || slab->live != 0)
            continue;
        if (fg_memory.empty > FG_KEPT_EMPTY_SLABS && now - slab->emptied_at >= FG_STALE_SECONDS) {
            unmap_slab(slab->slots);
            slab->slots = NULL;
            fg_memory.empty--;
            fg_memory.unmapped++;
        } else if (slab->emptied_at + FG_STALE_SECONDS < fg_memory.next_return) {
            fg_memory.next_return = slab->emptied_at + FG_STALE_SECONDS;
        }
    }
    while (fg_memory.count && fg_memory.slabs[fg_memory.count - 1].slots == NULL) {  /* forget unmapped at the end */
        fg_memory.count--;
        fg_memory.unmapped--;
    }
    if (fg_memory.lowest_open > fg_memory.count)
        fg_memory.lowest_open = fg_memory.count;
}
