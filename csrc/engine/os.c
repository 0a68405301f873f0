/*
 * os.c - the page source: the engine's only contact with the OS.
 *
 * Contract: addresses and sizes are multiples of the page size; every
 * function either does all it says or nothing. Object memory is reserved
 * with no access (address space only), committed read-write slab by slab
 * (the committed part of an arena only grows, so an arena stays at most two
 * mappings), and decommitted with MADV_DONTNEED, which gives the memory back
 * and keeps the access. Metadata is mapped separately, read-write.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

static _Atomic long fail_after = -1; /* < 0: never fail on purpose */

void kmc_os_fail_after(long n) { atomic_store(&fail_after, n < 0 ? -1 : n); }

/* True when this request must fail (failure injection for tests). */
static bool injected_failure(void)
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
    static size_t page;
    if (!page)
        page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

/* Address space only (no access), aligned: over-reserve, then trim both
 * ends to get the alignment. */
static void *reserve_aligned(size_t size, size_t align)
{
    size_t span = size + align;
    uint8_t *p = mmap(NULL, span, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
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
    if (injected_failure())
        return NULL;
    return reserve_aligned(size, align);
}

void kmc__os_unreserve(void *addr, size_t size) { munmap(addr, size); }

int kmc__os_commit(void *addr, size_t size)
{
    if (injected_failure())
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
    if (injected_failure())
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
    void *p = mmap(r, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                   -1, 0);
    if (p == MAP_FAILED) {
        munmap(r, size);
        return NULL;
    }
    return p;
}

void kmc__os_unmap_pages(void *addr, size_t size) { munmap(addr, size); }

void *kmc__os_map_meta(size_t size)
{
    if (injected_failure())
        return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void kmc__os_unmap_meta(void *addr, size_t size) { munmap(addr, size); }
