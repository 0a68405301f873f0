/*
 * internal.h - the engine's own structures, shared between its files.
 * Nothing outside csrc/engine includes this. Declarations are grouped by the
 * file that defines them; cross-file internal names start with kmc__.
 *
 * Who may touch what (the rules every file follows):
 *   - layout fields of a cache: written once at create, then read-only;
 *   - the depot (lists, depot counters, slabs owned by KMC_DEPOT, arenas):
 *     under the cache lock;
 *   - a heap and the slabs it owns: by its thread, either inside a fast
 *     path (heap->busy set) or holding the cache lock; by another thread
 *     only holding the cache lock after kmc__heaps_take_back's handshake;
 *   - a slab's remote bitmap: atomically, by anyone;
 *   - fields read by other threads without the lock (statistics, owners,
 *     states, bitmaps) are _Atomic and accessed relaxed unless noted;
 *   - a shared cache (c->region, shared*.c): its depot, slabs and records
 *     under the region's robust mutex (the cache lock), except that a
 *     record moves between CACHED and LIVE on a process's fast paths under
 *     that process's slot lock, and leaves LIVE only by compare-and-swap.
 * Lock order: kmalloc classes lock, caches_lock, cache locks (in list order;
 * a shared cache's is its region's mutex), process slot locks of a region
 * (in slot order), registry lock, large-allocation lock, thread registry
 * lock, purge lock, options lock, memory groups' lock. A process's fast
 * paths take only their own slot lock.
 */
#ifndef KMC_INTERNAL_H
#define KMC_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kmc.h"

#define likely(x)    __builtin_expect(!!(x), 1)
#define unlikely(x)  __builtin_expect(!!(x), 0)
#define KMC_NOINLINE __attribute__((noinline))
/* A static function that counts bits: built twice, with and without the
 * POPCNT instruction, and the loader picks the one the CPU runs (GCC's
 * target_clones), so that a build for baseline x86-64 does not fall back
 * to libgcc's table-driven __popcountdi2 on every CPU. Static only: the
 * choice is a symbol that -fvisibility=hidden does not hide. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_THREAD__) /* TSan would instrument the resolver, run before it starts */
#define KMC_BITCOUNT __attribute__((target_clones("popcnt", "default")))
#else
#define KMC_BITCOUNT
#endif

/* --- tunables ------------------------------------------------------------
 * An arena is the unit of address space and of owner lookup; the registry
 * resolves addresses at the smallest arena's granularity. */
#define KMC_ARENA_MIN_SHIFT 20                 /* 1 MiB: a cache's first arena */
#define KMC_ARENA_MAX_SHIFT 26                 /* 64 MiB: arenas stop doubling */
#define KMC_MAX_SLAB_SHIFT  24                 /* 16 MiB slabs at most */
#define KMC_WASTE_DIVISOR   32                 /* slab waste <= 1/32 */
#define KMC_MIN_SLAB        ((size_t)64 << 10) /* slabs are 64 KiB at least (as mimalloc's */
#define KMC_MAX_SLAB_OBJECTS \
    1024                                /* small pages), unless that is more
                                                   objects than a heap's bitmap holds */
#define KMC_MAX_ARENAS       4096       /* per cache: 256 GiB */
#define KMC_SLAB_ID_SHIFT    16         /* slab id = arena index << 16 | slab */
#define KMC_NIL              UINT32_MAX /* no slab */
#define KMC_RED_ZONE_MIN     8          /* bytes of red zone at least, each side */
#define KMC_HEAP_BITS        16         /* bitmap words a heap holds: 1024 slots */
#define KMC_HEAP_CHUNK_SHIFT 4          /* heaps are made 16 at a time */
#define KMC_HEAP_CHUNKS      64         /* so the first 1024 threads get heaps */
#define KMC_MAX_HEAPS        (KMC_HEAP_CHUNKS << KMC_HEAP_CHUNK_SHIFT)
#define KMC_HEAP_KEEP_BYTES  ((size_t)1 << 20) /* empty slabs a heap keeps */
#define KMC_MAG_SIZE         64                /* objects a heap's magazine holds */
#define KMC_DEPOT            0u                /* slab owner: the depot */
#define KMC_ARENA_DIR_CHUNK  64                /* arena pointers per directory chunk */

_Static_assert(((size_t)1 << KMC_MAX_SLAB_SHIFT) <= ((size_t)1 << KMC_ARENA_MAX_SHIFT),
               "a slab fits in the largest arena");
_Static_assert(KMC_MAX_SIZE <= ((size_t)1 << KMC_MAX_SLAB_SHIFT),
               "the largest object fits in the largest slab");
_Static_assert((KMC_ARENA_MAX_SHIFT - 12) <= KMC_SLAB_ID_SHIFT,
               "an arena's slabs (4 KiB pages at least) fit in a slab id");
_Static_assert(((uint64_t)KMC_MAX_ARENAS << KMC_SLAB_ID_SHIFT) < KMC_NIL,
               "every slab id is below KMC_NIL");

#define KMC_LOAD(p)     atomic_load_explicit((p), memory_order_relaxed)
#define KMC_STORE(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
/* An increment by the one thread that writes @p: a load and a store, no
 * read-modify-write instruction. */
#define KMC_BUMP(p, n) KMC_STORE((p), KMC_LOAD(p) + (n))
/* The same for a 64-bit counter on the fast paths. Compilers do not fold a
 * relaxed load and store into one add to memory; on x86-64 an add to an
 * aligned word is that load and store in one instruction, which readers see
 * whole (not a locked add: no other thread writes the counter). Sanitizers
 * see the portable form. */
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
#define KMC_COUNT(p) __asm__("addq $1, %0" : "+m"(*(p)))
#else
#define KMC_COUNT(p) KMC_BUMP((p), 1)
#endif

/* The private cache lock: a test-and-set lock. Taking it free is one
 * atomic exchange and giving it back one release store, half the atomic
 * work of a pthread mutex; critical sections are short, so a waiter spins
 * briefly, then yields the CPU. */
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

/* Slab states. A slab is on exactly the list its state names:
 *   UNUSED       never committed (beyond the arena's bump index)
 *   NEW          taken by one thread that commits and builds it, lock released
 *   PARTIAL      depot, live and free objects             -> cache->partial
 *                (the list's head may have no live object: see depot_put)
 *   FULL         depot, no free object                    (no list)
 *   EMPTY        depot, no live object, memory kept until -> cache->empty
 *                empty_since + the purge delay
 *   RELEASED     memory given back to the OS, slot reusable -> cache->released
 *   PINNED       a constructor left a reference into it: mapped, never used
 *                (no list), and its arena never unmapped
 *   CURRENT      a heap allocates from it: its free bitmap is in the heap,
 *                its own bitmap reads all used               (heap->cur)
 *   HEAP_PARTIAL owned by a heap, free slots in its bitmap   -> heap->partial
 *   HEAP_FULL    owned by a heap, no free slot: remote frees
 *                push it on the heap's remote stack         -> heap->full
 *   HEAP_EMPTY   owned by a heap, no live object            -> heap->empty */
enum kmc_slab_state {
    KMC_SLAB_UNUSED = 0,
    KMC_SLAB_NEW,
    KMC_SLAB_PARTIAL,
    KMC_SLAB_FULL,
    KMC_SLAB_EMPTY,
    KMC_SLAB_RELEASED,
    KMC_SLAB_PINNED,
    KMC_SLAB_CURRENT,
    KMC_SLAB_HEAP_PARTIAL,
    KMC_SLAB_HEAP_FULL,
    KMC_SLAB_HEAP_EMPTY,
};

typedef struct kmc_slab_s {
    uint32_t next;                /* slab id in the same list, or KMC_NIL */
    uint32_t prev;                /* slab id in the same list, or KMC_NIL */
    _Atomic uint32_t inuse;       /* slots not free in the slab's own bitmap:
                                  * live objects + remote frees not merged */
    _Atomic uint32_t owner;       /* KMC_DEPOT, or the owning heap's index + 1 */
    _Atomic uint32_t remote_next; /* next slab id + 1 on a heap's remote stack */
    _Atomic uint8_t state;        /* enum kmc_slab_state */
    _Atomic uint8_t pushed;       /* on a heap's remote stack */
    uint16_t hint;                /* depot: no free bit in bitmap words below */
    uint32_t empty_since;         /* kmc__now_ms() when it became EMPTY */
} kmc_slab_t;

/* An arena: its memory, and out of it, its slabs' metadata, mapped apart:
 *   slabs[nslabs] | local[nslabs * bitmap_words] | remote[same] | orig[...]
 * local: a set bit is a free slot (the owner's, or the depot's under the
 * lock); remote: free slots given back by other threads, not yet merged;
 * orig: with red zones, the size each object was asked for (kmalloc). */
typedef struct kmc_arena_s {
    uintptr_t base;      /* where its address space starts */
    size_t bytes;        /* how much, a power of two >= 1 MiB */
    kmc_cache_t *cache;  /* owner */
    uint32_t index;      /* position in cache->arenas */
    uint32_t nslabs;     /* bytes >> slab_shift */
    uint32_t bump;       /* slabs below this index have been used */
    uint32_t live_slabs; /* slabs not UNUSED or RELEASED */
    uint32_t pinned;     /* PINNED slabs: the arena stays mapped */
    kmc_slab_t *slabs;
    _Atomic uint64_t *local;
    _Atomic uint64_t *remote;
    uint32_t *orig;                   /* NULL unless the cache has red zones */
    size_t meta_bytes;                /* mapped for all of the above */
    _Atomic(_Atomic uint16_t *) tags; /* each slot's memory group id (group.c),
                                        * mapped at the first charge */
    size_t tags_bytes;
    struct kmc_arena_s *next_dead; /* on dead_arenas or spare_arenas */
} kmc_arena_t;

typedef _Atomic(kmc_arena_t *) kmc_arena_slot_t;

typedef struct kmc_list_s {
    uint32_t head; /* slab id or KMC_NIL */
    uint32_t tail; /* slab id or KMC_NIL: the oldest entry */
    uint32_t count;
} kmc_list_t;

/* One object in a heap's magazine: free (its bit is set in its slab's own
 * bitmap, so that a second free of it is seen, and its slab's count says
 * so), handed out again by clearing the bit and counting it back. */
typedef struct kmc_mag_entry_s {
    uint8_t *obj;
    _Atomic uint64_t *word; /* its slab's local bitmap word */
    uint64_t bit;           /* its bit there */
    kmc_slab_t *slab;       /* its slab: owned by the heap, never current */
} kmc_mag_entry_t;

/* A thread's cache of one cache's slabs (what SLUB's kmem_cache_cpu is to a
 * CPU) and its magazine. Line 0 and a word of lines 1-2 are all that an
 * alloc, or a free into the current slab, touches; a free into another
 * owned slab and the alloc after it touch line 0 and one magazine entry;
 * other threads write only line 4 (where the owner writes only in its slow
 * paths). */
/* A heap's memory group stock: charges for objects of its cache, taken from
 * one group's counters ahead and not used yet (memcg's per-CPU stock, per
 * heap; group.c tells how it is taken back). Its fast half is in the heap's
 * first line (stock_id, stock_n, stock_cap), where the owner's fast paths
 * use it inside the heap's busy window with plain stores (heap.c); this
 * slow half is beside the heap in its chunk. groups_lock for every field. */
typedef struct kmc_stock_s {
    struct kmc_heap_s *heap;         /* whose */
    uint64_t unit;                   /* bytes an object is charged: its cache's size */
    uint32_t taken;                  /* the id a taker cleared */
    bool listed;                     /* on the stocks' list */
    struct kmc_stock_s *prev, *next; /* the list */
} kmc_stock_t;

typedef struct kmc_heap_s {
    /* line 0: the fast paths */
    _Atomic uint8_t busy;    /* the owner is inside a fast path */
    _Atomic uint8_t request; /* KMC_HEAP_TAKE | KMC_HEAP_TAGGED, each set and
                              * cleared by an atomic OR and AND */
    uint8_t unused[2];
    uint32_t word;                /* where the next alloc looks first in bits[] */
    uint8_t *cur_mem;             /* the current slab's memory, or KMC_NO_SLAB */
    _Atomic uint64_t *cur_remote; /* its remote bitmap */
    _Atomic uint64_t allocs;      /* objects handed out by this heap, ever */
    _Atomic uint64_t frees;       /* objects freed into its own slabs, ever */
    _Atomic uint32_t mag_n;       /* objects in mag[] */
    _Atomic uint32_t stock_id;    /* the stock's group id (0: none): set under
                                   * groups_lock; a taker clears it first */
    _Atomic uint32_t stock_n;     /* objects' worth the stock holds: the owner's */
    uint32_t stock_cap;           /* frees keep at most this many (the last batch) */
    _Atomic uint16_t *cur_tags;   /* the current slab's memory group tags (group.c),
                                   * or NULL: none mapped when it became current */
    /* lines 1-2: the current slab's free bitmap */
    _Atomic uint64_t bits[KMC_HEAP_BITS] __attribute__((aligned(64)));
    /* line 3: the owner's slow paths */
    kmc_list_t partial __attribute__((aligned(64)));
    kmc_list_t full, empty;
    _Atomic uint32_t slabs;        /* slabs it owns, cur included */
    _Atomic uint32_t empties;      /* HEAP_EMPTY ones */
    _Atomic uint32_t fulls;        /* HEAP_FULL ones */
    _Atomic uint64_t cached_other; /* free slots in its slabs but cur (remote aside) */
    _Atomic uint64_t remote_frees; /* objects this thread freed into others' slabs */
    /* line 4: written by other threads, and read by them. The stack of HEAP_FULL slabs that
     * remote frees reached: generation << 32 | top slab id + 1 (0: empty).
     * A new generation each time the stack is closed or opened, so that a
     * push prepared against an older one fails. */
    _Atomic uint64_t remote_head __attribute__((aligned(64)));
    _Atomic uint64_t merged;      /* remote frees merged into this heap's slabs */
    _Atomic uint64_t late_double; /* double frees found when merging */
    uint64_t seen_ops;            /* the purge thread's last look at allocs+frees */
    uint8_t taking;               /* kmc__heaps_take_back's mark, cache locked */
    _Atomic uint32_t cur_gen;     /* odd while cur and bits change (a seqlock
                                  * for other threads' reads of them) */
    _Atomic uint32_t max_scan;    /* most bitmap words one alloc skipped */
    uint32_t cur_id;              /* cur's slab id */
    _Atomic(kmc_slab_t *) cur;    /* the current slab's descriptor, or NULL */
    kmc_stock_t *stock;           /* the stock's slow half, in the chunk */
    /* lines 5-28: the magazine, a stack of objects freed into owned slabs
     * other than the current one (Bonwick's magazines, Linux's sheaves) */
    kmc_mag_entry_t mag[KMC_MAG_SIZE] __attribute__((aligned(64)));
} kmc_heap_t;

_Static_assert(sizeof(kmc_heap_t) == 320 + KMC_MAG_SIZE * sizeof(kmc_mag_entry_t),
               "a heap is five cache lines and its magazine");
_Static_assert(KMC_MAX_SLAB_OBJECTS <= KMC_HEAP_BITS * 64, "a heap holds a slab's bitmap");

/* The bits of heap->request. One byte, so that the free fast path tests
 * both with the load it needs for the takers: memory groups cost a cache
 * that never had an object charged nothing. */
#define KMC_HEAP_TAKE   1u /* a taker waits: the owner takes the slow path */
#define KMC_HEAP_TAGGED 2u /* the cache had an object charged: frees take tags (heap.c) */

/* cur_mem without a current slab: any user-space address minus this is
 * above every slab size, so the free fast path needs no second test. */
#define KMC_NO_SLAB ((uint8_t *)(UINTPTR_MAX - ((uintptr_t)1 << (KMC_MAX_SLAB_SHIFT + 1))))
extern _Atomic uint64_t kmc__no_remote[KMC_HEAP_BITS]; /* heap.c: its cur_remote */

#define KMC_STACK_CLOSED UINT32_MAX /* low half of remote_head: no pushes */

typedef struct kmc_heap_chunk_s {
    kmc_heap_t heaps[1 << KMC_HEAP_CHUNK_SHIFT];
    kmc_stock_t stocks[1 << KMC_HEAP_CHUNK_SHIFT]; /* theirs, by index */
} kmc_heap_chunk_t;

/* The depot: what all threads of a cache share, under the cache lock. It is
 * pointer-free (slab ids and counts), so that a cache can keep it in memory
 * other processes map at other addresses. */
typedef struct kmc_depot_s {
    kmc_list_t partial, empty, released;
    uint64_t num_slabs;                 /* committed: not UNUSED, NEW, RELEASED, PINNED */
    uint64_t depot_allocs, depot_frees; /* by locked paths */
    uint64_t depot_merged;              /* remote frees merged into depot slabs */
    uint64_t depot_late_double;         /* double frees found merging them */
    uint64_t late_double_reported;      /* of all late double frees, those validate told */
    uint64_t slabs_created, slabs_released;
    uint32_t max_scan;                    /* most bitmap words skipped by one depot alloc */
    _Atomic uint64_t orphan_remote_frees; /* remote frees by threads without heaps */
} kmc_depot_t;

struct kmc_cache_s {
    /* layout: set at create, read-only after */
    char name[KMC_NAME_MAX];
    size_t size;         /* requested object size */
    size_t align;        /* guaranteed alignment, power of two */
    size_t slot_size;    /* left red zone + object + right red zone,
                                   * a multiple of align */
    size_t obj_offset;   /* the left red zone: object start in a slot */
    uint64_t slot_recip; /* 2^48 / slot_size + 1: offset -> slot index */
    size_t slab_size;    /* 1 << slab_shift */
    unsigned slab_shift;
    uint32_t objperslab;
    uint32_t bitmap_words; /* 64-bit words of free bitmap per slab */
    size_t slots_bytes;    /* objperslab * slot_size: the slab before its padding */
    size_t first_arena;    /* bytes of the first arena */
    uint32_t heap_keep;    /* empty slabs a heap keeps */
    uint32_t mag_size;     /* objects a heap's magazine keeps, <= KMC_MAG_SIZE */
    unsigned flags;
    bool heaps_on;          /* per-thread caches (never with debug flags) */
    uint8_t charged;        /* an object was charged to a memory group, ever:
                             * frees read tags from then on (__atomic) */
    _Atomic uint64_t limit; /* slab memory at most (0: none): kmc_cache_set_limit */
    uint64_t peak_slabs;    /* the most committed slabs; cache lock */
    uint32_t building;      /* slabs being built (committed unlocked); cache lock */
    kmc_ctor_fn ctor;
    void *ctor_arg;
    const struct kmc_backing *backing; /* where the slabs live: see below */
    kmc_depot_t *d;                    /* the depot: &own_depot, or the region's */
    struct kmc_region_s *region;       /* the shared backing's own state: this
                                        * process's view of the region (shared*.c) */

    /* the cache lock, and the depot it guards (a shared cache uses the
     * region's, a robust process-shared mutex) */
    kmc_lock_t lock __attribute__((aligned(64)));
    kmc_depot_t own_depot;

    /* arena index -> arena, in chunks that never move (heaps read it
     * without the lock); NULL holes */
    _Atomic(kmc_arena_slot_t *) arena_dir[KMC_MAX_ARENAS / KMC_ARENA_DIR_CHUNK];
    uint32_t nr_arenas; /* entries in use, holes included */
    uint32_t live_arenas;
    kmc_arena_t *fill_arena;   /* the one arena with never-used slab slots */
    kmc_arena_t *dead_arenas;  /* released arenas whose descriptors remain */
    kmc_arena_t *spare_arenas; /* descriptors of freed arenas, for new ones */
    size_t next_arena;         /* bytes of the next arena */

    /* the threads' heaps, made 16 at a time; never freed before the cache */
    _Atomic(kmc_heap_chunk_t *) chunks[KMC_HEAP_CHUNKS];

    struct kmc_cache_s *prev_cache, *next_cache; /* process list, caches_lock */
};

/* --- the backing: where a cache's slabs live, and the slow-path operations
 * that differ with it, as os.c is the one seam to the OS. A private cache's
 * slabs are in arenas of this process's memory, found through its bitmaps
 * and heaps (arena.c); a shared cache's are in one shared-memory region whose
 * object records, not the bitmaps, say what is live, and whose objects other
 * processes hold (shared_backing.c). cache.c reaches the difference only
 * through these and never asks which backing a cache has. */
typedef struct kmc_backing {
    const char *kind;             /* "private", "shared": for messages */
    bool serves_kmalloc;          /* may be a kmalloc size class's cache */
    bool chargeable;              /* its objects are charged to memory groups */
    void (*lock)(kmc_cache_t *c); /* the cache lock */
    void (*unlock)(kmc_cache_t *c);
    /* the locked paths: threads without a heap, debug caches */
    void *(*alloc)(kmc_cache_t *c, int zero);
    kmc_status (*free)(kmc_cache_t *c, void *p, bool *owned); /* *owned: a heap's, nothing done */
    bool (*is_live)(const kmc_cache_t *c, uint32_t id, uint32_t idx); /* cache locked */
    /* growing: before taking the lock, the slab slots to build in when
     * none is left (locked), the NEW slab's claim (locked), its memory
     * (unlocked: 0 or -1), and giving it back (locked: state RELEASED) */
    kmc_status (*may_grow)(kmc_cache_t *c);
    kmc_status (*new_arena)(kmc_cache_t *c, kmc_arena_t **out);
    void (*claim)(kmc_cache_t *c, uint32_t id);
    int (*commit)(kmc_cache_t *c, uint32_t id);
    void (*release)(kmc_cache_t *c, uint32_t id);
    /* shrink, validate and stats add their part; cache locked */
    void (*shrink_first)(kmc_cache_t *c);  /* before the heaps come back */
    size_t (*shrink_last)(kmc_cache_t *c); /* bytes of metadata given back */
    void (*validate_first)(kmc_cache_t *c, size_t *count, kmc_status *first,
                           kmc_report_t *first_report); /* before the slabs' checks */
    void (*validate_last)(kmc_cache_t *c, size_t *count, kmc_status *first,
                          kmc_report_t *first_report);
    void (*stats)(kmc_cache_t *c, kmc_stats_t *o);
    kmc_status (*destroy)(kmc_cache_t *c); /* kmc_cache_destroy */
    /* fork: every lock before (caches_lock held), released after, and the
     * child's repairs (@me: the forking thread's heap index) */
    void (*fork_lock)(kmc_cache_t *c);
    void (*fork_unlock)(kmc_cache_t *c);
    void (*fork_child)(kmc_cache_t *c, uint32_t me);
} kmc_backing_t;
extern const kmc_backing_t kmc__private_backing; /* arena.c */
extern const kmc_backing_t kmc__shared_backing;  /* shared_backing.c */

/* The cache lock, whatever the backing: the test-and-set lock of a private
 * cache, the region's robust mutex for a shared one (whose taker recovers
 * the depot when the last holder died). heap.c takes c->lock directly: only
 * private caches have heaps. */
static inline void kmc__cache_lock(kmc_cache_t *c) { c->backing->lock(c); }
static inline void kmc__cache_unlock(kmc_cache_t *c) { c->backing->unlock(c); }

/* --- arena.c: the private backing's arenas; a shared cache installs its
 * one arena (the region's slab area) with the same directory. */
kmc_status kmc__arena_install(kmc_cache_t *c, kmc_arena_t *a); /* as arena 0 */
void kmc__arena_uninstall(kmc_cache_t *c, kmc_arena_t *a);
void kmc__arenas_free_dead(kmc_cache_t *c); /* locked, every heap seen idle since */

/* --- os.c: the page source, the one seam to the OS.
 * Addresses and lengths are page multiples; functions return 0 or -1. */
void *kmc__os_reserve(size_t size, size_t align); /* no access, or NULL */
void kmc__os_unreserve(void *addr, size_t size);
int kmc__os_commit(void *addr, size_t size);    /* make read-write */
void kmc__os_decommit(void *addr, size_t size); /* back to the OS, no access */
void *kmc__os_map_meta(size_t size);            /* zeroed read-write, or NULL */
void kmc__os_unmap_meta(void *addr, size_t size);
void *kmc__os_map_pages(size_t size, size_t align); /* zeroed read-write, aligned
                                                      (power of two), charged; NULL */
void kmc__os_unmap_pages(void *addr, size_t size);
void kmc__os_zero_pages(void *addr, size_t size); /* read as zero from now on */
bool kmc__os_injected_failure(void);              /* tests: this request must fail */
int kmc__os_barrier(void);  /* a memory barrier on every thread of the process:
                             * 0, or -1 when the OS cannot (membarrier(2)) */
uint32_t kmc__now_ms(void); /* a monotonic clock, wrapping every 49 days */

/* --- shm.c: a shared region's contact with the OS. Offsets and lengths are
 * page multiples; functions return 0 or an errno value. */
typedef struct kmc_shm_owner_s {
    unsigned uid, mode; /* of the file: whose it is, st_mode */
} kmc_shm_owner_t;
/* Opens refuse a file that is not ours: EINVAL not a regular file (or a
 * symbolic link), EPERM another user's, EACCES group or other bits set;
 * *@who (may be NULL) gets its owner and mode. */
int kmc__shm_open(const char *path, bool create, int *fd, kmc_shm_owner_t *who); /* O_EXCL */
int kmc__shm_open_readonly(const char *path, int *fd, kmc_shm_owner_t *who);
int kmc__shm_owner(const char *path, kmc_shm_owner_t *who); /* lstat, no open */
void kmc__shm_close(int fd);
int kmc__shm_unlink(const char *path, kmc_shm_owner_t *who); /* EPERM: not ours */
int kmc__shm_size(int fd, uint64_t *size);
int kmc__shm_truncate(int fd, uint64_t size);                  /* sparse */
int kmc__shm_commit(int fd, uint64_t offset, uint64_t len);    /* back with memory */
void kmc__shm_decommit(int fd, uint64_t offset, uint64_t len); /* punch a hole */
int kmc__shm_map(int fd, uint64_t offset, size_t len, size_t align, bool writable,
                 void **out); /* MAP_SHARED at @align */
void kmc__shm_unmap(void *addr, size_t len);
uint64_t kmc__shm_nonce(void);                     /* random, never 0 */
int kmc__shm_proc_start(int pid, uint64_t *start); /* ESRCH: gone or a zombie */
int kmc__shm_self(int *pid, uint64_t *start, uint64_t *pidns);
int kmc__shm_getpid(void);
void kmc__shm_die(void); /* SIGKILL: crash tests */

/* --- registry.c: address -> arena, lock-free reads. */
int kmc__registry_insert(kmc_arena_t *arena); /* 0 or -1 (no memory) */
void kmc__registry_remove(kmc_arena_t *arena);

#define KMC_ADDRESS_BITS 48 /* user space on x86_64 and aarch64 (4-level tables) */
#define KMC_LEAF_BITS    14
#define KMC_ROOT_BITS    (KMC_ADDRESS_BITS - KMC_ARENA_MIN_SHIFT - KMC_LEAF_BITS)
typedef struct kmc_leaf_s {
    _Atomic(kmc_arena_t *) arena[(size_t)1 << KMC_LEAF_BITS];
} kmc_leaf_t;
extern _Atomic(kmc_leaf_t *) kmc__registry_root[(size_t)1 << KMC_ROOT_BITS];

/* The arena holding @address, or NULL: two loads. */
static inline kmc_arena_t *kmc__registry_lookup(uintptr_t address)
{
    if (unlikely(address >> KMC_ADDRESS_BITS))
        return NULL;
    kmc_leaf_t *leaf = atomic_load_explicit(
        &kmc__registry_root[address >> (KMC_ARENA_MIN_SHIFT + KMC_LEAF_BITS)],
        memory_order_acquire);
    if (unlikely(!leaf))
        return NULL;
    return atomic_load_explicit(
        &leaf->arena[(address >> KMC_ARENA_MIN_SHIFT) & (((size_t)1 << KMC_LEAF_BITS) - 1)],
        memory_order_acquire);
}

/* --- slab.c: slab ids, lists and free bitmaps. */
static inline kmc_arena_t *kmc__arena(const kmc_cache_t *c, uint32_t index)
{
    kmc_arena_slot_t *chunk = atomic_load_explicit(
        &((kmc_cache_t *)c)->arena_dir[index / KMC_ARENA_DIR_CHUNK], memory_order_acquire);
    return chunk ? atomic_load_explicit(&chunk[index % KMC_ARENA_DIR_CHUNK], memory_order_acquire)
                 : NULL;
}
static inline kmc_arena_t *kmc__slab_arena(const kmc_cache_t *c, uint32_t id)
{
    return kmc__arena(c, id >> KMC_SLAB_ID_SHIFT);
}
static inline uint32_t kmc__slab_index(uint32_t id) { return id & ((1u << KMC_SLAB_ID_SHIFT) - 1); }
static inline kmc_slab_t *kmc__slab(const kmc_cache_t *c, uint32_t id)
{
    return &kmc__slab_arena(c, id)->slabs[kmc__slab_index(id)];
}
static inline _Atomic uint64_t *kmc__slab_local(const kmc_cache_t *c, uint32_t id)
{
    return &kmc__slab_arena(c, id)->local[(size_t)kmc__slab_index(id) * c->bitmap_words];
}
static inline _Atomic uint64_t *kmc__slab_remote(const kmc_cache_t *c, uint32_t id)
{
    return &kmc__slab_arena(c, id)->remote[(size_t)kmc__slab_index(id) * c->bitmap_words];
}
static inline uint8_t *kmc__slab_mem(const kmc_cache_t *c, uint32_t id)
{
    return (uint8_t *)(kmc__slab_arena(c, id)->base +
                       ((size_t)kmc__slab_index(id) << c->slab_shift));
}
static inline uint8_t kmc__slab_state(const kmc_slab_t *s)
{
    return KMC_LOAD(&((kmc_slab_t *)s)->state);
}
static inline void kmc__slab_set_state(kmc_slab_t *s, uint8_t state)
{
    KMC_STORE(&s->state, state);
}
/* A slab in one of these states has memory and object slots in use. */
static inline bool kmc__slab_committed(uint8_t state)
{
    return state == KMC_SLAB_PARTIAL || state == KMC_SLAB_FULL || state == KMC_SLAB_EMPTY ||
           state >= KMC_SLAB_CURRENT;
}
void kmc__list_push(kmc_cache_t *c, kmc_list_t *list, uint32_t id);
void kmc__list_remove(kmc_cache_t *c, kmc_list_t *list, uint32_t id);
uint32_t kmc__list_pop(kmc_cache_t *c, kmc_list_t *list);
void kmc__slab_init_free(kmc_cache_t *c, uint32_t id); /* all free */
uint32_t kmc__bits_count(const _Atomic uint64_t *bits, uint32_t words);
uint32_t kmc__slab_merge_remote(kmc_cache_t *c, uint32_t id,          /* into the slab's */
                                uint64_t *late_double);               /* own bitmap */
bool kmc__slot_free(const kmc_cache_t *c, uint32_t id, uint32_t idx); /* either bitmap */

/* --- cache.c: caches and their depots. */
extern pthread_mutex_t kmc__caches_lock;
extern kmc_cache_t *kmc__caches_first; /* guarded by kmc__caches_lock */
bool kmc__valid_name(const char *name);
void kmc__cache_layout(kmc_cache_t *c, unsigned min_shift); /* slab size >= 2^min_shift */
kmc_status kmc__cache_setup(kmc_cache_t *c, const char *name, size_t size, size_t align,
                            unsigned flags, kmc_ctor_fn ctor, void *ctor_arg);
kmc_cache_t *kmc__cache_new(void);                              /* zeroed */
void kmc__cache_link(kmc_cache_t *c);                           /* onto the process list */
void kmc__cache_unlink(kmc_cache_t *c);                         /* kmc__caches_lock held */
uint8_t *kmc__depot_take_debug(kmc_cache_t *c, kmc_status *st); /* with debug checks */
/* The depot's part of an alloc or free, cache locked. */
uint8_t *kmc__depot_take(kmc_cache_t *c);
void kmc__depot_put(kmc_cache_t *c, uint32_t id, uint32_t idx);
void kmc__depot_place(kmc_cache_t *c, uint32_t id); /* a slab back from a heap */
kmc_status kmc__depot_grow(kmc_cache_t *c);         /* called unlocked */
void kmc__depot_release_expired(kmc_cache_t *c, uint32_t now, bool all);
bool kmc__depot_has_empty(const kmc_cache_t *c);
void *kmc__depot_alloc(kmc_cache_t *c, int zero); /* the private backing's locked paths */
kmc_status kmc__depot_free(kmc_cache_t *c, void *p, bool *owned);
bool kmc__depot_is_live(const kmc_cache_t *c, uint32_t id, uint32_t idx);
kmc_status kmc__depot_retire(kmc_cache_t *c, bool *busy); /* destroy's checks; locked */
kmc_status kmc__locate(kmc_cache_t *c, const void *p, kmc_arena_t **arena, uint32_t *id,
                       uint32_t *idx); /* checks p is a slot start of @c */
void *kmc__cache_alloc_sized(kmc_cache_t *c, int zero, size_t orig); /* kmalloc's */
int kmc__cache_resize(kmc_cache_t *c, void *p, size_t size);         /* kmalloc red zone */
size_t kmc__cache_ksize(kmc_cache_t *c, const void *p);
void kmc__depot_recount(kmc_cache_t *c);                /* counters from bitmaps; locked */
uint32_t kmc__depot_merge(kmc_cache_t *c, uint32_t id); /* a depot slab's remote bits */
uint32_t kmc__depot_pop(kmc_cache_t *c); /* a slab for a heap, off the depot's lists */

/* --- heap.c: the per-thread caches. */
extern __thread uint32_t kmc__self __attribute__((tls_model("initial-exec")));
/* the calling thread's heap index + 1; 0 before its
                             * first call, KMC_NIL when it has no heap */
extern __thread uint32_t kmc__alloc_self __attribute__((tls_model("initial-exec")));
/* what the alloc fast path reads for kmc__self: the same, but KMC_NIL while
 * the thread is in a memory group, so that its allocs go the charged way
 * at no cost to the others (set by kmc__alloc_self_set) */
void kmc__alloc_self_set(void);
static inline kmc_heap_t *kmc__heap_at(const kmc_cache_t *c, uint32_t index)
{
    kmc_heap_chunk_t *ch = atomic_load_explicit(
        &((kmc_cache_t *)c)->chunks[index >> KMC_HEAP_CHUNK_SHIFT], memory_order_acquire);
    return ch ? &ch->heaps[index & ((1u << KMC_HEAP_CHUNK_SHIFT) - 1)] : NULL;
}
void *kmc__heap_alloc_slow(kmc_cache_t *c, int zero);
kmc_status kmc__heap_free_slow(kmc_cache_t *c, void *p);
void kmc__heap_flush(kmc_cache_t *c, kmc_heap_t *h, bool close); /* cache locked;
                                  * the heap's thread is quiescent or the caller */
typedef enum kmc_take { KMC_TAKE_IDLE, KMC_TAKE_ALL, KMC_TAKE_FORCE } kmc_take;
bool kmc__heaps_take_back(kmc_cache_t *c, kmc_take mode); /* cache locked */
void kmc__heaps_hold(kmc_cache_t *c, bool on);            /* fork: requests, and back */
void kmc__heaps_wait_idle(kmc_cache_t *c);                /* fork: after the barrier */
void kmc__heaps_free(kmc_cache_t *c);
void kmc__heaps_mark_tagged(kmc_cache_t *c); /* every heap's frees take tags from now on */
void kmc__heaps_after_fork(kmc_cache_t *c, uint32_t me); /* the child's repairs */
void kmc__heaps_stats(const kmc_cache_t *c, kmc_stats_t *o, uint64_t *late_double);
/* adds the heaps' part; cache locked */
bool kmc__heap_bits_of(const kmc_cache_t *c, const kmc_slab_t *s, uint64_t *bits);
/* a CURRENT slab's bitmap, from its heap */
bool kmc__heaps_hold_slabs(const kmc_cache_t *c);

/* --- thread.c: thread indices, thread exit, fork. */
uint32_t kmc__thread_register(void); /* sets kmc__self; returns it */

/* --- purge.c: the background release of empty memory. */
void kmc__purge_arm(void); /* something will expire: wake up later */
uint32_t kmc__purge_delay_ms(void);
void kmc__purge_lock_all(void);         /* fork */
void kmc__purge_unlock_all(bool child); /* child: no thread */
void kmc__purge_defer(bool on);         /* a forked child's handler: start none */

/* --- group.c: memory groups. The alloc paths charge the calling thread's
 * group first (a thread in one takes them: kmc__alloc_self) and tag the
 * object; the free paths, once any object was charged, take the tag's
 * charge back. */
extern __thread kmc_group_t *kmc__group_cur __attribute__((tls_model("initial-exec")));

/* Built with -DKMC_NO_GROUPS (only benchmarks/bench_engine.py does, to time
 * the pair outside every group against a build without groups), the alloc
 * and free paths never look at groups. */
#ifdef KMC_NO_GROUPS
#define KMC_GROUPS_ON 0
#else
#define KMC_GROUPS_ON 1
#endif

extern __thread uint32_t kmc__group_id __attribute__((tls_model("initial-exec")));
/* kmc__group_cur's id, 0 for none: what the charged fast paths compare */

/* A group is named by its id (a tag's value); 0 is none. */
uint32_t kmc__group_charge(const kmc_cache_t *c, kmc_stock_t *s, uint64_t bytes, kmc_status *st);
/* Charge @bytes to the calling thread's group: its id, or 0 (none, a cache
 * not charged, or refused: *@st). @s: the thread's heap stock of @c, or
 * NULL; it is refilled (groups_lock), or the counters take the bytes. */
void kmc__group_uncharge(uint32_t id, uint64_t bytes, uint64_t objects); /* onto the counters */
void kmc__stock_retire(kmc_stock_t *s); /* its heap goes or is flushed: owner or none */
void kmc__group_tag(const kmc_cache_t *c, void *p, uint32_t id);       /* after the alloc */
void *kmc__group_settle(const kmc_cache_t *c, void *p, uint32_t id);   /* tag, or give back */
void kmc__group_free(const kmc_cache_t *c, const void *p);             /* before the free */
uint32_t kmc__group_untag(const kmc_cache_t *c, const void *p);        /* the tag taken, or 0 */
_Atomic uint16_t *kmc__slab_tags(const kmc_cache_t *c, uint32_t slab); /* or NULL: unmapped */
bool kmc__group_holds(uint32_t id, const kmc_group_t *g);              /* id is g or a child's */
void kmc__groups_lock(bool on);                                        /* fork */
void kmc__groups_after_fork(void);                                     /* the child, locked */
uint64_t kmc__kmalloc_large_charged(const kmc_group_t *g);             /* kmalloc.c */
uint32_t kmc__kmalloc_large_group(const void *p);                      /* its group's id, or 0 */

/* --- options.c */
long kmc__option(kmc_option option);
void kmc__options_lock(bool on); /* fork */

/* --- debug.c: red zones, poison, consistency checks. */
void kmc__debug_init_slab(kmc_cache_t *c, uint8_t *mem, uint32_t *orig);
void kmc__debug_on_alloc(kmc_cache_t *c, uint8_t *obj, int zero, size_t orig);
void kmc__debug_on_free(kmc_cache_t *c, uint8_t *obj);
kmc_status kmc__debug_check_alloc(kmc_cache_t *c, uint8_t *obj);
kmc_status kmc__debug_check_free(kmc_cache_t *c, uint8_t *obj, size_t orig);
kmc_status kmc__debug_check_slab(kmc_cache_t *c, uint32_t id, size_t *problems);
kmc_status kmc__debug_check_counts(kmc_cache_t *c, uint32_t id);
uint32_t *kmc__debug_orig(const kmc_cache_t *c, const kmc_arena_t *a, uint32_t sidx, uint32_t idx);

/* --- report.c: the calling thread's last error. */
kmc_status kmc__report(kmc_status status, const kmc_cache_t *c, const void *obj, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
kmc_status kmc__report_bytes(kmc_status status, const kmc_cache_t *c, const uint8_t *obj,
                             ptrdiff_t offset, size_t length, int expected, const char *what);
void kmc__report_clear(void);
kmc_report_t *kmc__report_slot(void);

/* --- kmalloc.c: the size classes. */
bool kmc__kmalloc_pinned(const kmc_cache_t *c); /* a class's cache: never destroyed */
void kmc__kmalloc_purge(uint32_t now, bool all, bool *pending); /* kept large runs */
void kmc__kmalloc_lock(bool large);                             /* fork: the classes' lock, or */
void kmc__kmalloc_unlock(bool large);                           /* the large allocations' */
void kmc__registry_lock_all(void);                              /* registry.c, fork */
void kmc__registry_unlock_all(void);

#endif /* KMC_INTERNAL_H */
