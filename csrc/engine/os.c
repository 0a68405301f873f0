/*
 * os.c - the page source: the engine's only contact with the OS.
 *
 * Contract: addresses and sizes are multiples of the page size; every
 * function either does all it says or nothing. Object memory is reserved
 * with no access (address space only), committed read-write slab by slab
 * (the committed part of an arena only grows, so an arena stays at most two
 * mappings), and decommitted with MADV_DONTNEED, which gives the memory back
 * and keeps the access. Metadata is mapped separately, read-write. The
 * process-wide memory barrier and the clock are the OS's too.
 */
#include <linux/membarrier.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

static _Atomic long fail_after = -1; /* < 0: never fail on purpose */

void kmc_os_fail_after(long n) { atomic_store(&fail_after, n < 0 ? -1 : n); }

/* True when this request must fail (failure injection for tests; shm.c's
 * requests count too). */
bool kmc__os_injected_failure(void)
{
    long n = atomic_load(&fail_after);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&fail_after, &n, n - 1))
            return false;
    }
    return n == 0;
}

size_t kmc_page_size(void)
{
    static _Atomic size_t page; /* threads may race to fill it: same value */
    size_t p = KMC_LOAD(&page);
    if (!p) {
        p = (size_t)sysconf(_SC_PAGESIZE);
        KMC_STORE(&page, p);
    }
    return p;
}

/* Address space only (no access), aligned: over-reserve, then trim both
 * ends to get the alignment. */
static void *reserve_aligned(size_t size, size_t align)
{
    size_t span = size + align;
    uint8_t *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    size_t head = start - (uintptr_t)p, tail = span - head - size;
    if (head)
        munmap(p, head);
    if (tail)
        munmap((uint8_t *)start + size, tail);
    return (void *)start;
}

void *kmc__os_reserve(size_t size, size_t align)
{
    if (kmc__os_injected_failure())
        return NULL;
    return reserve_aligned(size, align);
}

void kmc__os_unreserve(void *addr, size_t size) { munmap(addr, size); }

int kmc__os_commit(void *addr, size_t size)
{
    if (kmc__os_injected_failure())
        return -1;
    return mprotect(addr, size, PROT_READ | PROT_WRITE);
}

void kmc__os_decommit(void *addr, size_t size)
{
    /* MADV_DONTNEED frees the pages and leaves the range read-write, so a
     * later commit of the same slab is an mprotect that changes nothing.
     * Taking access away instead (mprotect, or mapping PROT_NONE over it)
     * would split the mapping at every released slab, and scattered
     * releases could reach the kernel's limit on mappings
     * (vm.max_map_count, 65530), after which every commit fails. */
    madvise(addr, size, MADV_DONTNEED);
}

void *kmc__os_map_pages(size_t size, size_t align)
{
    if (kmc__os_injected_failure())
        return NULL;
    /* Without MAP_NORESERVE: the kernel's overcommit policy may refuse a
     * request far beyond memory, as it does malloc's big blocks. */
    if (align <= kmc_page_size()) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    /* Reserve an aligned range with no access (free of charge), then map
     * read-write pages over it: only @size bytes are charged. */
    void *r = reserve_aligned(size, align);
    if (!r)
        return NULL;
    void *p = mmap(r, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        munmap(r, size);
        return NULL;
    }
    return p;
}

void kmc__os_unmap_pages(void *addr, size_t size) { munmap(addr, size); }

void *kmc__os_map_meta(size_t size)
{
    if (kmc__os_injected_failure())
        return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void kmc__os_unmap_meta(void *addr, size_t size) { munmap(addr, size); }

void kmc__os_zero_pages(void *addr, size_t size) { madvise(addr, size, MADV_DONTNEED); }

/* MEMBARRIER_CMD_PRIVATE_EXPEDITED runs a memory barrier on every CPU that
 * runs one of our threads (an IPI each), and returns when all have: what a
 * taker needs so that an owner's plain store of its busy flag is seen
 * (Linux 4.14; registration once per process). Registration is repeated in
 * a forked child, which the kernel requires. */
static _Atomic int barrier_state; /* 0: unknown, 1: registered, -1: unsupported */
static _Atomic pid_t barrier_pid;

static void (*_Atomic barrier_hook)(void *);
static void *_Atomic barrier_hook_arg;

void kmc_os_barrier_hook(void (*fn)(void *), void *arg)
{
    atomic_store(&barrier_hook_arg, arg);
    atomic_store(&barrier_hook, fn);
}

int kmc__os_barrier(void)
{
    if (atomic_load(&barrier_state) == 0 || atomic_load(&barrier_pid) != getpid()) {
        long ok = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
        atomic_store(&barrier_pid, getpid());
        atomic_store(&barrier_state, ok == 0 ? 1 : -1);
    }
    if (atomic_load(&barrier_state) < 0)
        return -1;
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
        return -1;
    void (*hook)(void *) = atomic_load(&barrier_hook);
    if (hook)
        hook(atomic_load(&barrier_hook_arg));
    return 0;
}

uint32_t kmc__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}
