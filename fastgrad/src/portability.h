/* What differs between compilers and platforms, for the engine's C: one place for the #ifdefs. Each branch says
   which platforms take it. The wheels are built with gcc (manylinux, musllinux), clang (macOS) and MSVC
   (Windows); .ci/check_c.py compiles this folder with gcc, clang, gcc for arm64 Linux and mingw-w64 for Windows.

   FG_PORTABLE_ONLY (CFLAGS=-DFG_PORTABLE_ONLY) makes a Linux build take the branches that other platforms
   take where they can run on Linux too: no hidden visibility (Windows), no pre-faulting of slabs (macOS,
   Windows), the baseline lane loops alone (arm64, MSVC). .ci/run builds so and runs the engine's, the
   allocator's and the batched replay's tests against it. What cannot run here (MSVC's intrinsics, Windows's
   clock) is compiled by the Windows wheels' build only. */
#ifndef FASTGRAD_PORTABILITY_H
#define FASTGRAD_PORTABILITY_H

#include <stddef.h>

/* Functions shared between the engine's C files but not exported from the extension: calls to them
   then need no PLT indirection. gcc and clang on Linux and macOS; a Windows DLL exports only what it
   declares dllexport, so nothing is needed there (nor with another compiler). */
#if defined(__GNUC__) && !defined(_WIN32) && !defined(FG_PORTABLE_ONLY)
#define FG_HIDDEN __attribute__((visibility("hidden")))
#else
#define FG_HIDDEN
#endif

/* The op kernels (ops.h) and what the lane loops (lanes.h) call per lane: always inlined, also into the
   lane loops compiled for a wider SIMD target than the kernels' own, where a call would stay scalar. */
#if defined(_MSC_VER)
#define FG_KERNEL static __forceinline
#elif defined(__GNUC__)
#define FG_KERNEL static inline __attribute__((always_inline))
#else
#define FG_KERNEL static inline
#endif

/* The batched replay's lane loops are compiled for wider x86 SIMD too, chosen at run time (lanes.c): where
   the compiler has target attributes and __builtin_cpu_supports, GCC and Clang on x86. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(FG_PORTABLE_ONLY)
#define FG_X86_TARGETS 1
#else
#define FG_X86_TARGETS 0
#endif
/* The batched replay's AVX2 loops use FMA too (every AVX2 CPU has it; lanes.c asks the CPU for both). AVX-512's
   full width: GCC's generic tuning would otherwise keep to 256 bits. Clang takes no such option in the attribute
   and uses 512 bits there. */
#define FG_AVX2_TARGET "avx2,fma"
#if defined(__clang__)
#define FG_AVX512_TARGET "avx512f"
#else
#define FG_AVX512_TARGET "avx512f,prefer-vector-width=512"
#endif

/* A compile-time check that works in C89 and C++ alike (a negative array size fails the build). */
#define FG_STATIC_ASSERT(condition) ((void)sizeof(char[(condition) ? 1 : -1]))

/* Ask for the cache line at p ahead of its use (a hint: p may be anything, even NULL). gcc's and clang's builtin;
   other compilers go without. */
#if defined(__GNUC__) || defined(__clang__)
#define fg_prefetch(p) __builtin_prefetch(p)
#else
#define fg_prefetch(p) ((void)(p))
#endif

/* The index of the lowest set bit of a nonzero 64-bit word: MSVC's intrinsic (x64 and arm64 Windows; the wheels
   are 64-bit only), gcc's and clang's builtin everywhere else (one instruction: tzcnt/bsf, rbit+clz). */
#if defined(_MSC_VER)
#include <intrin.h>
static inline int fg_lowest_bit(unsigned long long word) {
    unsigned long index;
    _BitScanForward64(&index, word);
    return (int)index;
}
#else
#define fg_lowest_bit(word) __builtin_ctzll(word)
#endif

/* Under AddressSanitizer, memory the engine holds but has not handed out is poisoned, so that a use of a
   freed node is reported although its slot stays mapped. gcc says it instruments with __SANITIZE_ADDRESS__,
   clang with __has_feature; without the sanitizer (every wheel) both are no-ops. */
#if defined(__SANITIZE_ADDRESS__)
#define FG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FG_ASAN 1
#endif
#endif
#ifdef FG_ASAN
#include <sanitizer/asan_interface.h>
#define fg_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define fg_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define fg_poison(p, n) ((void)0)
#define fg_unpoison(p, n) ((void)0)
#endif

/* Map every page of a fresh region at once, on huge pages where the kernel offers them: faulting the
   pages of a slab in one at a time costs more than making its nodes (up to 2 us a fault). Linux only (glibc
   and musl alike); on macOS and Windows the pages fault in one at a time as a slab fills. */
#if defined(__linux__) && !defined(FG_PORTABLE_ONLY)
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23          /* Linux 5.14; older kernels refuse it, and nothing is lost */
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#define fg_prefault(p, n) ((void)madvise((p), (n), MADV_HUGEPAGE), (void)madvise((p), (n), MADV_POPULATE_WRITE))
#else
#define fg_prefault(p, n) ((void)0)
#endif

/* What a batched pass's threads share without the GIL: the next chunk to take, whether to stop, how many are
   still working. fg_atomic_add returns the value before. The last worker's add releases what it computed, and
   the load that sees it acquires it, so the caller may read the chunks' sums without a lock. fg_spin_pause
   tells the CPU a loop is waiting (and the other hyperthread may have the core). */
#if defined(_MSC_VER)
#include <intrin.h>
static inline ptrdiff_t fg_atomic_add(ptrdiff_t *p, ptrdiff_t n) {
    return (ptrdiff_t)_InterlockedExchangeAdd64((volatile long long *)p, n);
}
static inline ptrdiff_t fg_atomic_load(ptrdiff_t *p) { return (ptrdiff_t)_InterlockedOr64((volatile long long *)p, 0); }
static inline void fg_atomic_store(ptrdiff_t *p, ptrdiff_t v) { _InterlockedExchange64((volatile long long *)p, v); }
#define fg_spin_pause() YieldProcessor()
#else
static inline ptrdiff_t fg_atomic_add(ptrdiff_t *p, ptrdiff_t n) { return __atomic_fetch_add(p, n, __ATOMIC_ACQ_REL); }
static inline ptrdiff_t fg_atomic_load(ptrdiff_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fg_atomic_store(ptrdiff_t *p, ptrdiff_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
#if defined(__x86_64__) || defined(__i386__)
#define fg_spin_pause() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define fg_spin_pause() __asm__ __volatile__("yield")
#else
#define fg_spin_pause() ((void)0)
#endif
#endif

/* Seconds on a monotonic clock: GetTickCount64 on Windows (steps of 10 to 16 ms, which the one-second staleness
   of empty slabs does not mind), clock_gettime on Linux and macOS (10.12 and later: every macOS wheel). */
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN                 /* the clock without the rest of the Windows API's macros */
#endif
#include <windows.h>
static inline double fg_seconds(void) { return (double)GetTickCount64() / 1000.0; }
#else
#include <time.h>
static inline double fg_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#endif

#endif
