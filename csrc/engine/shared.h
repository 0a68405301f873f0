/*
 * shared.h - the shared backing: caches in a shared-memory region. What its
 * files share: the region's layout, the object records, the process table,
 * and the few functions one file of it calls in another. kmc.h's head
 * comment gives the design; this header the details, and each file its own:
 *
 *   shared_backing.c  what cache.c asks of a shared cache (the backing's
 *                     operations), validate, and the crash test hooks
 *   shared_objects.c  alloc, free and holders: the fast paths, magazines
 *   shared_procs.c    the process table, the region lock, recovery from a
 *                     dead holder, and reclaiming what dead processes held
 *   shared_region.c   create, attach, detach, unlink, info and peek
 *
 * The region (one POSIX shm file; every reference in it is an offset or an
 * index, never a pointer):
 *
 *   | header | process table | slab descriptors | local bitmaps | remote
 *   | bitmaps | kmalloc sizes (red zones) | object records | slab area |
 *
 * The header holds the layout the creator chose (attachers take it and
 * check it against their own engine's), the robust mutex and the depot.
 * Everything up to the records is committed at creation; a slab's records
 * and memory when the slab is first built (fallocate), and the memory is
 * punched out when the slab is released.
 *
 * Object records, one per object slot: word 0, then holder_words words of
 * holder bits (one per process slot).
 *
 *   word 0:  | gen:32 | tickets:16 | slot:12 | unused:1 | shared:1 | state:2 |
 *
 *   FREE    in the depot: its bit is set in the slab's free bitmap
 *   CACHED  free, in process <slot>'s magazine (bit clear)
 *   LIVE    handed out. Not shared: held by process <slot> alone. Shared:
 *           held by the processes whose holder bits are set, and by
 *           <tickets> references handed out (pickled) and not claimed.
 *
 * The records are the truth about every slot of a committed slab; the
 * bitmaps, counts and lists are derived from them (a bit is set if and only
 * if its record is FREE), so that recovery can rebuild them. Moves between
 * FREE and the rest happen under the lock, in an order that leaves any
 * prefix recoverable: taking a slot clears its bit, then writes the record;
 * giving one back writes the record FREE, then sets the bit. A crash
 * between the two leaves a clear bit over a FREE record, which recovery
 * turns back into a free slot: the operation did not happen. Moves between
 * CACHED and LIVE happen on the fast paths without the lock; LIVE is only
 * ever left by a compare-and-swap on word 0, which is how two processes
 * freeing one object find out (one of them sees the state or the
 * generation change: a double free).
 *
 * The fast paths (per process, no region lock). Each process has a slot in
 * the process table with a magazine: up to mag_cap free objects reserved
 * for it (CACHED records), and a small test-and-set lock that its own
 * threads take around a fast path. Its lock word names the holder's slot,
 * so that a process that takes another's lock (validate, to see a still
 * picture; whoever recovers) can tell a dead holder and break the lock.
 *
 *   alloc: own lock; pop an offset; record CACHED -> LIVE (a store: only
 *          the owner leaves CACHED); count; unlock.    slow: refill half a
 *          magazine from the depot (region lock), or build a slab
 *   free:  own lock; CAS record LIVE(gen) -> CACHED(me); push; unlock.
 *          slow: the magazine is full (give half back), the object has
 *          pickles out, or a debug cache (every check at the call)
 *
 * Measured with callgrind on x86_64 (gcc -O2, 64-byte objects, an alloc and
 * its free in a loop): about 89 instructions for an alloc and 94 for a free
 * on the fast paths; with the magazines off (KMEMCACHE_THREAD_CACHES=0: the
 * region's lock at every call) 772 and 750. The private heaps' are 43 and
 * 54 (heap.c).
 *
 * Lock order: the region lock, then process slot locks in slot order. A
 * fast path takes only its own slot lock and never waits for the region
 * lock while holding it.
 *
 * Dying. A process killed anywhere holds at most the region lock and its
 * own slot lock. The next taker of the region lock gets EOWNERDEAD and
 * rebuilds the depot from the records (recover()), breaks the slot locks
 * that dead processes hold, and reclaims what the dead held; a process
 * killed outside the region lock leaves a consistent region, and its
 * objects wait for a reclaim (at the next attach, when the region is full,
 * or on kmc_shared_reclaim).
 */
#ifndef KMC_SHARED_H
#define KMC_SHARED_H

#include <errno.h>
#include <pthread.h>
#include <stddef.h>

#include "internal.h"

#define SHM_MAGIC      UINT64_C(0x3165726168736d6b) /* "kmshare1" */
#define SHM_VERSION    1u
#define MAG_MAX        64u               /* objects in a magazine, at most */
#define MAG_BYTES      ((size_t)1 << 20) /* ... and their slots' bytes */
#define ATTACH_WAIT_MS 2000u             /* for a region still being made */

enum { REC_FREE = 0, REC_CACHED = 1, REC_LIVE = 2 };
#define REC_SHARED       ((uint64_t)1 << 2)
#define REC_SLOT_SHIFT   4
#define REC_TICKET_SHIFT 16
#define REC_GEN_SHIFT    32
#define REC_TICKETS_MAX  0xffffu

static inline uint32_t rec_state(uint64_t w) { return (uint32_t)w & 3u; }
static inline uint32_t rec_slot(uint64_t w) { return ((uint32_t)w >> REC_SLOT_SHIFT) & 0xfffu; }
static inline uint32_t rec_tickets(uint64_t w)
{
    return ((uint32_t)w >> REC_TICKET_SHIFT) & 0xffffu;
}
static inline uint32_t rec_gen(uint64_t w) { return (uint32_t)(w >> REC_GEN_SHIFT); }
static inline bool rec_shared(uint64_t w) { return (w & REC_SHARED) != 0; }
static inline uint64_t rec_word(uint32_t state, uint32_t slot, uint32_t tickets, uint32_t gen)
{
    return (uint64_t)gen << REC_GEN_SHIFT | (uint64_t)tickets << REC_TICKET_SHIFT |
           (uint64_t)slot << REC_SLOT_SHIFT | state;
}
static inline uint32_t next_gen(uint32_t gen) { return gen + 1 ? gen + 1 : 1; } /* never 0 */

enum { PROC_FREE = 0, PROC_ALIVE = 1 };

/* One process's slot: its identity, counters and magazine. Only the
 * process writes it, under its lock, except that others holding the
 * region lock may take the lock to look (validate) or, once it is dead,
 * to take everything back. */
typedef struct kmc_proc_s {
    _Atomic uint32_t lock;  /* 0, or the slot + 1 of the holder */
    _Atomic uint32_t state; /* PROC_FREE or PROC_ALIVE */
    int32_t pid;
    uint32_t unused;
    uint64_t start;             /* start time, clock ticks since boot */
    uint64_t pidns;             /* its pid namespace (inode number) */
    _Atomic uint64_t allocs;    /* objects it handed out, ever */
    _Atomic uint64_t frees;     /* objects it gave back, ever */
    _Atomic uint32_t mag_count; /* objects in its magazine */
    uint32_t unused2;
    _Atomic uint64_t mag[MAG_MAX]; /* their offsets in the slab area */
} __attribute__((aligned(64))) kmc_proc_t;

/* What the creator sets before it publishes the magic, read-only after.
 * Every process reads it once into private memory (kmc_region_t.lay),
 * checks the copy and uses only the copy: a process that rewrites the
 * header later cannot move a bound under our feet. */
typedef struct kmc_shm_layout_s {
    uint32_t version;      /* SHM_VERSION */
    uint32_t header_bytes; /* sizeof(kmc_shm_header_t) */
    uint32_t abi;          /* what the structures' sizes were */
    int32_t creator_pid;
    uint64_t creator_start;
    uint64_t nonce; /* random: this region, not a later one */
    char name[KMC_NAME_MAX];
    uint64_t size, align, flags, slab_shift, slot_size, obj_offset, objperslab, bitmap_words;
    uint64_t nslabs, max_procs, mag_cap, has_ctor, capacity, rec_words;
    uint64_t procs_at, slabs_at, local_at, remote_at, orig_at, records_at; /* bytes */
    uint64_t meta_bytes;   /* where the slab area starts in the file */
    uint64_t region_bytes; /* the file's size */
} kmc_shm_layout_t;

typedef struct kmc_shm_header_s {
    _Atomic uint64_t magic; /* SHM_MAGIC once the creator is done */
    kmc_shm_layout_t l;     /* the layout: never read but through a checked copy */
    /* under the lock */
    pthread_mutex_t lock __attribute__((aligned(64)));
    kmc_depot_t depot __attribute__((aligned(64)));
    uint64_t gone_allocs; /* allocs of processes gone, and adjustments */
    uint64_t gone_frees;  /* their frees, and what reclaim freed */
    uint64_t recoveries;  /* lock holders found dead, ever */
    uint64_t reclaimed;   /* objects given back from processes gone */
    uint64_t tickets;     /* references handed out, not claimed */
    uint32_t attached;    /* processes with a slot */
} kmc_shm_header_t;

#define SHM_ABI                                                              \
    ((uint32_t)sizeof(pthread_mutex_t) | (uint32_t)sizeof(kmc_proc_t) << 8 | \
     (uint32_t)sizeof(kmc_slab_t) << 20 | (uint32_t)sizeof(void *) << 26)

/* This process's view of a region (process memory). */
typedef struct kmc_region_s kmc_region_t;
struct kmc_region_s {
    kmc_shm_header_t *hdr; /* the metadata mapping starts with it */
    kmc_shm_layout_t lay;  /* its layout, copied once and checked */
    size_t meta_len;
    uint8_t *slabs; /* the slab area, aligned */
    size_t slabs_len;
    int fd;
    char path[96];
    kmc_proc_t *procs;
    _Atomic uint64_t *records;
    uint32_t rec_words;    /* 1 + holder words */
    uint32_t mag_cap;      /* this process's: 0 without magazines */
    _Atomic uint32_t self; /* its slot, KMC_NIL before it has one */
    int pid;
    uint64_t start, pidns;
    pthread_mutex_t reg_lock; /* registering this process */
    uint64_t *quiesced;       /* slots whose locks validate holds */
    kmc_arena_t arena;        /* the slab area as the cache's one arena */
};

/* --- test hook: die at a crash point (shared_backing.c) ------------------------ */

extern _Atomic long kmc__shared_crash_countdown;
void kmc__shared_crash_slow(void);
#define CRASH_POINT()                                         \
    do {                                                      \
        if (unlikely(KMC_LOAD(&kmc__shared_crash_countdown))) \
            kmc__shared_crash_slow();                         \
    } while (0)

/* --- addressing ----------------------------------------------------------------- */

static inline kmc_region_t *region_of(const kmc_cache_t *c) { return c->region; }

/* The slot (slab index, slot index) at offset @off of the slab area, if
 * @off is an object's start. */
static inline bool slot_of(const kmc_cache_t *c, uint64_t off, uint32_t *sidx, uint32_t *idx)
{
    if (off >= c->region->slabs_len)
        return false;
    size_t in = off & (c->slab_size - 1);
    size_t rel = in - c->obj_offset; /* wraps below the first object */
    uint32_t i = (uint32_t)(((unsigned __int128)rel * c->slot_recip) >> 48);
    if (in < c->obj_offset || i >= c->objperslab || (size_t)i * c->slot_size != rel)
        return false;
    *sidx = (uint32_t)(off >> c->slab_shift);
    *idx = i;
    return true;
}

static inline uint64_t off_of(const kmc_cache_t *c, uint32_t sidx, uint32_t idx)
{
    return ((uint64_t)sidx << c->slab_shift) + (uint64_t)idx * c->slot_size + c->obj_offset;
}

static inline _Atomic uint64_t *rec_at(const kmc_region_t *r, const kmc_cache_t *c, uint32_t sidx,
                                       uint32_t idx)
{
    return &r->records[((size_t)sidx * c->objperslab + idx) * r->rec_words];
}

static inline _Atomic uint64_t *rec_of_off(const kmc_cache_t *c, uint64_t off)
{
    size_t in = off & (c->slab_size - 1);
    uint32_t i = (uint32_t)(((unsigned __int128)(in - c->obj_offset) * c->slot_recip) >> 48);
    return rec_at(c->region, c, (uint32_t)(off >> c->slab_shift), i);
}

static inline uint32_t holder_words(const kmc_region_t *r) { return r->rec_words - 1; }

static inline bool holders_empty(const kmc_region_t *r, _Atomic uint64_t *rec)
{
    for (uint32_t w = 0; w < holder_words(r); w++)
        if (KMC_LOAD(&rec[1 + w]))
            return false;
    return true;
}

static inline bool holder_has(_Atomic uint64_t *rec, uint32_t slot)
{
    return KMC_LOAD(&rec[1 + slot / 64]) & (UINT64_C(1) << (slot % 64));
}

/* A magazine's count, read once and brought within the array: whatever a
 * process of ours wrote there, no index taken from it leaves the slot. */
static inline uint32_t mag_count(kmc_proc_t *p)
{
    uint32_t n = KMC_LOAD(&p->mag_count);
    return n <= MAG_MAX ? n : MAG_MAX;
}

/* Magazine entry @off popped by slot @me: an object slot whose record says
 * it is cached by @me, else not to be handed out. *@rec gets its record. */
static inline bool mag_entry_ok(const kmc_cache_t *c, uint32_t me, uint64_t off,
                                _Atomic uint64_t **rec, uint64_t *w)
{
    uint32_t sidx, idx;
    if (unlikely(!slot_of(c, off, &sidx, &idx)))
        return false;
    *rec = rec_at(c->region, c, sidx, idx);
    *w = KMC_LOAD(*rec);
    return likely(rec_state(*w) == REC_CACHED && rec_slot(*w) == me);
}

static inline uint8_t *obj_at(const kmc_cache_t *c, uint64_t off) { return c->region->slabs + off; }

/* --- what one file of the shared backing calls in another ---------------------------- */

/* shared_procs.c: the region lock (the cache lock; its taker recovers the
 * depot when the last holder died), process slot locks, recovery, reclaim */
void kmc__region_lock(kmc_cache_t *c);
void kmc__region_unlock(kmc_cache_t *c);
void kmc__shared_proc_lock(kmc_cache_t *c, uint32_t s, uint32_t me, bool region_locked);
void kmc__shared_proc_retire(kmc_region_t *r, uint32_t s);
void kmc__shared_quiesce(kmc_cache_t *c);
void kmc__shared_unquiesce(kmc_cache_t *c);
void kmc__shared_rebuild(kmc_cache_t *c, size_t *mismatches);
size_t kmc__shared_reclaim_dead(kmc_cache_t *c, bool pickled, bool orphans);
uint64_t kmc__shared_recount(kmc_cache_t *c);
uint32_t kmc__shared_register_self(kmc_cache_t *c);
void kmc__shared_after_fork(kmc_cache_t *c); /* in the child */
void kmc__shared_count_procs(const kmc_proc_t *procs, uint32_t n, const kmc_shm_header_t *h,
                             kmc_stats_t *o); /* allocs, frees, active, cached, caches */
size_t kmc__shared_scan_release(kmc_cache_t *c, const uint64_t *dead, bool orphans, bool pickled);
/* shared_objects.c: records and magazines */
bool kmc__shared_end_live(kmc_cache_t *c, uint32_t me, uint32_t sidx, uint32_t idx, uint64_t w);
void kmc__shared_flush(kmc_cache_t *c, uint32_t s, uint32_t keep);
void kmc__shared_to_depot(kmc_cache_t *c, uint32_t sidx, uint32_t idx, bool was_live);
/* shared_backing.c */
uint64_t kmc__shared_count_records(kmc_cache_t *c, uint32_t state, uint32_t slot);
void kmc__shared_flush_mine(kmc_cache_t *c);            /* region locked: this process's cached */
void kmc__shared_stats(kmc_cache_t *c, kmc_stats_t *o); /* region locked */

/* --- the process table (shared_procs.c) ---------------------------------------------- */

static inline bool proc_trylock(kmc_proc_t *p, uint32_t me)
{
    uint32_t free_ = 0;
    return atomic_compare_exchange_strong_explicit(&p->lock, &free_, me + 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

static inline void proc_unlock(kmc_proc_t *p)
{
    atomic_store_explicit(&p->lock, 0, memory_order_release);
}

/* Is slot @me still this process's? Not when it was judged dead (a test
 * hook forged it, or it was reclaimed as another namespace's process
 * would never be). Region locked. */
static inline bool owns(const kmc_region_t *r, uint32_t me)
{
    const kmc_proc_t *p = &r->procs[me];
    return KMC_LOAD(&((kmc_proc_t *)p)->state) == PROC_ALIVE && p->pid == r->pid &&
           p->start == r->start;
}

/* This process's slot, registering it first (after a fork, say). */
static inline uint32_t ensure_self(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = atomic_load_explicit(&r->self, memory_order_acquire);
    if (likely(me != KMC_NIL))
        return me;
    pthread_mutex_lock(&r->reg_lock);
    me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        me = kmc__shared_register_self(c);
    pthread_mutex_unlock(&r->reg_lock);
    return me;
}

#endif /* KMC_SHARED_H */
