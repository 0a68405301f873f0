/*
 * internal.h - the engine's own structures, shared between its files.
 * Nothing outside csrc/engine includes this. Declarations are grouped by the
 * file that defines them; cross-file internal names start with kmc__.
 */
#ifndef KMC_INTERNAL_H
#define KMC_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kmc.h"

/* Tunables. An arena is the unit of address space and of owner lookup. */
#define KMC_ARENA_SHIFT     26                     /* 64 MiB */
#define KMC_ARENA_SIZE      ((size_t)1 << KMC_ARENA_SHIFT)
#define KMC_MAX_SLAB_SHIFT  24                     /* 16 MiB slabs at most */
#define KMC_WASTE_DIVISOR   32                     /* slab waste <= 1/32 */
#define KMC_MAX_ARENAS      4096                   /* per cache: 256 GiB */
#define KMC_NIL             UINT32_MAX             /* no slab */
#define KMC_RED_ZONE_MIN    8                      /* bytes of red zone at least */

_Static_assert(((size_t)1 << KMC_MAX_SLAB_SHIFT) <= KMC_ARENA_SIZE,
               "a slab fits in an arena");
_Static_assert(KMC_MAX_SIZE <= ((size_t)1 << KMC_MAX_SLAB_SHIFT),
               "the largest object fits in the largest slab");

/* The cache lock: a test-and-set lock. Taking it free is one atomic
 * exchange and giving it back one release store, half the atomic work of a
 * pthread mutex; critical sections are a few dozen instructions, so a waiter
 * spins briefly, then yields the CPU. */
typedef struct kmc_lock_s {
    _Atomic int locked;
} kmc_lock_t;

void kmc__lock_wait(kmc_lock_t *lock); /* cache.c: the contended case */

static inline void kmc__lock(kmc_lock_t *lock)
{
    if (atomic_exchange_explicit(&lock->locked, 1, memory_order_acquire))
        kmc__lock_wait(lock);
}

static inline void kmc__unlock(kmc_lock_t *lock)
{
    atomic_store_explicit(&lock->locked, 0, memory_order_release);
}

/* Slab states. A slab is on exactly the list its state names (none for
 * FULL, NEW and UNUSED):
 *   UNUSED   never committed (beyond the arena's bump index)
 *   NEW      taken by one thread that commits and builds it, lock released
 *   PARTIAL  committed, live and free objects        -> cache->partial
 *            (the list's head may have no live object: see put_object)
 *   FULL     committed, no free object                (no list)
 *   EMPTY    committed, no live object, in reserve   -> cache->empty
 *   RELEASED memory given back to the OS, slot reusable -> cache->released
 *   PINNED   a constructor left a reference into it: mapped, never used (no
 *            list), and its arena never unmapped */
enum kmc_slab_state {
    KMC_SLAB_UNUSED = 0,
    KMC_SLAB_NEW,
    KMC_SLAB_PARTIAL,
    KMC_SLAB_FULL,
    KMC_SLAB_EMPTY,
    KMC_SLAB_RELEASED,
    KMC_SLAB_PINNED,
};

typedef struct kmc_slab_s {
    uint32_t next;   /* slab id in the same list, or KMC_NIL */
    uint32_t prev;   /* slab id in the same list, or KMC_NIL */
    uint32_t inuse;  /* live objects; inuse + free bits == objperslab */
    uint16_t hint;   /* no free bit in bitmap words below this one */
    uint8_t state;   /* enum kmc_slab_state */
    uint8_t unused;
} kmc_slab_t;

/* An arena: its memory, and out of it, its slabs' metadata. */
typedef struct kmc_arena_s {
    uintptr_t base;        /* where the region is mapped in this process */
    kmc_cache_t *cache;    /* owner; NULL while recycled */
    uint32_t index;        /* position in cache->arenas */
    uint32_t bump;         /* slabs below this index have been used */
    uint32_t live_slabs;   /* slabs not UNUSED or RELEASED */
    uint32_t pinned;       /* PINNED slabs: the arena stays mapped */
    kmc_slab_t *slabs;     /* slabs_per_arena descriptors */
    uint64_t *bitmaps;     /* per slab bitmap_words words, bit set = free */
    size_t meta_bytes;     /* mapped for slabs + bitmaps */
    struct kmc_arena_s *next_recycled;
} kmc_arena_t;

typedef struct kmc_list_s {
    uint32_t head;  /* slab id or KMC_NIL */
    uint32_t count;
} kmc_list_t;

struct kmc_cache_s {
    kmc_lock_t lock;              /* guards everything below that changes */
    char name[KMC_NAME_MAX];
    size_t size;                  /* requested object size */
    size_t align;                 /* guaranteed alignment, power of two */
    size_t slot_size;             /* object + red zone, multiple of align */
    uint64_t slot_recip;          /* 2^48 / slot_size + 1: offset -> slot index */
    size_t slab_size;             /* 1 << slab_shift */
    unsigned slab_shift;
    uint32_t objperslab;
    uint32_t bitmap_words;        /* 64-bit words of free bitmap per slab */
    uint32_t slabs_per_arena;     /* KMC_ARENA_SIZE >> slab_shift */
    unsigned spa_shift;           /* log2(slabs_per_arena) */
    uint32_t reserve;             /* empty slabs kept before releasing */
    unsigned flags;
    kmc_ctor_fn ctor;
    void *ctor_arg;

    kmc_list_t partial, empty, released;
    uint64_t active_objs;
    uint64_t num_slabs;           /* committed: PARTIAL + FULL + EMPTY */
    uint64_t allocs, frees, slabs_created, slabs_released;

    kmc_arena_t **arenas;         /* cap_arenas entries, NULL holes */
    uint32_t nr_arenas;           /* entries in use, holes included */
    uint32_t cap_arenas;
    uint32_t live_arenas;
    kmc_arena_t *fill_arena;      /* the one arena with never-used slab slots */
    uint32_t max_scan;            /* most bitmap words skipped by one alloc */

    struct kmc_cache_s *prev_cache, *next_cache; /* process list */
};

/* --- os.c: the page source, the one seam to the OS.
 * Addresses and lengths are page multiples; functions return 0 or -1. */
void *kmc__os_reserve(size_t size, size_t align);  /* no access, or NULL */
void kmc__os_unreserve(void *addr, size_t size);
int kmc__os_commit(void *addr, size_t size);       /* make read-write */
void kmc__os_decommit(void *addr, size_t size);    /* back to the OS, no access */
void *kmc__os_map_meta(size_t size);               /* zeroed read-write, or NULL */
void kmc__os_unmap_meta(void *addr, size_t size);
void *kmc__os_map_pages(size_t size, size_t align); /* zeroed read-write, aligned
                                                      (power of two), charged; NULL */
void kmc__os_unmap_pages(void *addr, size_t size);

/* --- registry.c: address -> arena, lock-free reads. */
int kmc__registry_insert(kmc_arena_t *arena);      /* 0 or -1 (no memory) */
void kmc__registry_remove(kmc_arena_t *arena);
kmc_arena_t *kmc__registry_lookup(uintptr_t address);
kmc_arena_t *kmc__arena_get(void);                 /* recycled descriptor */
void kmc__arena_put(kmc_arena_t *arena);

/* --- slab.c: slab layout, free bitmaps, fills. */
static inline kmc_arena_t *kmc__slab_arena(const kmc_cache_t *c, uint32_t id)
{
    return c->arenas[id >> c->spa_shift];
}
static inline kmc_slab_t *kmc__slab(const kmc_cache_t *c, uint32_t id)
{
    return &kmc__slab_arena(c, id)->slabs[id & (c->slabs_per_arena - 1)];
}
static inline uint64_t *kmc__slab_bitmap(const kmc_cache_t *c, uint32_t id)
{
    return &kmc__slab_arena(c, id)->bitmaps[(size_t)(id & (c->slabs_per_arena - 1)) *
                                           c->bitmap_words];
}
static inline uint8_t *kmc__slab_mem(const kmc_cache_t *c, uint32_t id)
{
    return (uint8_t *)(kmc__slab_arena(c, id)->base +
                       ((size_t)(id & (c->slabs_per_arena - 1)) << c->slab_shift));
}
void kmc__list_push(kmc_cache_t *c, kmc_list_t *list, uint32_t id);
void kmc__list_remove(kmc_cache_t *c, kmc_list_t *list, uint32_t id);
uint32_t kmc__list_pop(kmc_cache_t *c, kmc_list_t *list);
void kmc__slab_init_free(kmc_cache_t *c, uint32_t id);     /* all free */
uint32_t kmc__bitmap_popcount(const kmc_cache_t *c, uint32_t id);

/* --- debug.c: red zones, poison, consistency checks, reports. */
void kmc__debug_init_slab(kmc_cache_t *c, uint8_t *mem);
void kmc__debug_on_alloc(kmc_cache_t *c, uint8_t *obj, int zero);
void kmc__debug_on_free(kmc_cache_t *c, uint8_t *obj);
kmc_status kmc__debug_check_alloc(kmc_cache_t *c, uint8_t *obj);
kmc_status kmc__debug_check_free(kmc_cache_t *c, uint8_t *obj);
kmc_status kmc__debug_check_slab(kmc_cache_t *c, uint32_t id, size_t *problems);
kmc_status kmc__debug_check_counts(kmc_cache_t *c, uint32_t id);
kmc_status kmc__report(kmc_status status, const kmc_cache_t *c, const void *obj,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
kmc_status kmc__report_bytes(kmc_status status, const kmc_cache_t *c,
                             const uint8_t *obj, size_t offset, size_t length,
                             int expected, const char *what);
void kmc__report_clear(void);
kmc_report_t *kmc__report_slot(void);      /* the calling thread's report */

/* --- kmalloc.c: the size classes. */
bool kmc__kmalloc_pinned(const kmc_cache_t *c); /* a class's cache: never destroyed */

#endif /* KMC_INTERNAL_H */
