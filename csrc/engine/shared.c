/*
 * shared.c - caches in a shared-memory region: the region's layout, attach
 * and detach, object records and holders, per-process magazines, recovery
 * when a process dies holding the lock, and reclaiming what dead processes
 * held. kmc.h's head comment gives the design; this file the details.
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
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* --- test hook: die at a crash point ------------------------------------------ */

static _Atomic long crash_countdown;

void kmc_shared_crash_after(long n) { atomic_store(&crash_countdown, n < 0 ? 0 : n); }

static KMC_NOINLINE void crash_point_slow(void)
{
    if (atomic_fetch_sub(&crash_countdown, 1) == 1)
        kmc__shm_die();
}

#define CRASH_POINT()                             \
    do {                                          \
        if (unlikely(KMC_LOAD(&crash_countdown))) \
            crash_point_slow();                   \
    } while (0)

kmc_status kmc_shared_forge_slot(kmc_cache_t *c, int pid, uint64_t start)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        return kmc__report(KMC_EINVAL, c, NULL, "this process has no slot in %s", c->name);
    kmc__region_lock(c);
    r->procs[me].pid = pid;
    r->procs[me].start = start;
    kmc__region_unlock(c);
    return KMC_OK;
}

void kmc_shared_locks(const kmc_cache_t *c, kmc_shared_locks_t *out)
{
    const kmc_region_t *r = c->region;
    out->mutex_at = offsetof(kmc_shm_header_t, lock);
    out->mutex_len = sizeof(pthread_mutex_t);
    out->procs_at = r->lay.procs_at;
    out->proc_size = sizeof(kmc_proc_t);
    out->max_procs = r->lay.max_procs;
}

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

static uint32_t holder_words(const kmc_region_t *r) { return r->rec_words - 1; }

static bool holders_empty(const kmc_region_t *r, _Atomic uint64_t *rec)
{
    for (uint32_t w = 0; w < holder_words(r); w++)
        if (KMC_LOAD(&rec[1 + w]))
            return false;
    return true;
}

static bool holder_has(_Atomic uint64_t *rec, uint32_t slot)
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

/* --- process identity and the process table ----------------------------------------- */

/* Is the process in slot @s alive? A process of another pid namespace, or
 * one we cannot read about, is taken as alive: it is never judged. */
static bool proc_alive(const kmc_region_t *r, uint32_t s)
{
    kmc_proc_t *p = &r->procs[s];
    if (KMC_LOAD(&p->state) != PROC_ALIVE)
        return false;
    if (p->pidns != r->pidns || p->pid <= 0)
        return p->pid > 0; /* not ours to judge */
    if (p->pid == r->pid && p->start == r->start)
        return true;
    uint64_t start;
    int rc = kmc__shm_proc_start(p->pid, &start);
    if (rc == ESRCH)
        return false;
    return rc != 0 || start == p->start; /* another start time: the pid was reused */
}

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

/* Take slot @s's lock for @me, however long its holder keeps it; a holder
 * that died is broken. @region_locked: the caller holds the region lock
 * (else a dead holder is left to recovery, which the region lock runs). */
static void proc_lock(kmc_cache_t *c, uint32_t s, uint32_t me, bool region_locked)
{
    kmc_region_t *r = c->region;
    kmc_proc_t *p = &r->procs[s];
    for (unsigned spins = 0; !proc_trylock(p, me); spins++) {
        if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            continue;
        }
        sched_yield();
        if (spins % 256)
            continue;
        uint32_t holder = KMC_LOAD(&p->lock);
        if (!holder || holder - 1 >= r->lay.max_procs || proc_alive(r, holder - 1))
            continue;
        if (region_locked) {
            uint32_t expected = holder;
            atomic_compare_exchange_strong(&p->lock, &expected, 0u);
        } else {
            /* its holder died holding the region lock too: taking it
             * recovers, and recovery breaks this lock */
            kmc__region_lock(c);
            kmc__region_unlock(c);
        }
    }
}

/* --- the region lock and recovery --------------------------------------------------- */

static void rebuild(kmc_cache_t *c, size_t *mismatches);
static size_t reclaim_dead(kmc_cache_t *c, bool pickled, bool orphans);

/* After the lock's holder died: the depot from the records, slot locks of
 * the dead broken, what the dead held given back. Region locked. */
static void recover(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    r->hdr->recoveries++;
    for (uint32_t s = 0; s < r->lay.max_procs; s++) {
        uint32_t holder = KMC_LOAD(&r->procs[s].lock);
        if (holder && (holder - 1 >= r->lay.max_procs || !proc_alive(r, holder - 1)))
            atomic_compare_exchange_strong(&r->procs[s].lock, &holder, 0u);
    }
    rebuild(c, NULL);
    reclaim_dead(c, false, true);
}

/* Do the depot's lists start and end at slabs of the region? The depot
 * code reads their heads as slab ids; slab.c checks every link after. */
static bool depot_bounded(const kmc_cache_t *c)
{
    const kmc_depot_t *d = c->d;
    uint32_t n = c->region->arena.nslabs;
    const kmc_list_t *lists[] = {&d->partial, &d->empty, &d->released};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        const kmc_list_t *l = lists[i];
        if ((l->head != KMC_NIL && l->head >= n) || (l->tail != KMC_NIL && l->tail >= n) ||
            l->count > n)
            return false;
    }
    return true;
}

void kmc__region_lock(kmc_cache_t *c)
{
    pthread_mutex_t *m = &c->region->hdr->lock;
    int rc = pthread_mutex_lock(m);
    if (unlikely(rc == EOWNERDEAD)) {
        recover(c);
        pthread_mutex_consistent(m);
    } else if (unlikely(rc != 0)) {
        abort(); /* ENOTRECOVERABLE: only an unlock without consistent() makes it */
    }
    if (unlikely(!depot_bounded(c))) /* written by someone else: redone from the records */
        rebuild(c, NULL);
}

void kmc__region_unlock(kmc_cache_t *c) { pthread_mutex_unlock(&c->region->hdr->lock); }

/* --- slabs, records and the depot ------------------------------------------------ */

static uint8_t *obj_at(const kmc_cache_t *c, uint64_t off) { return c->region->slabs + off; }

bool kmc__shared_is_live(const kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    return rec_state(KMC_LOAD(rec_at(c->region, c, kmc__slab_index(id), idx))) == REC_LIVE;
}

uint32_t kmc__shared_builder(kmc_cache_t *c)
{
    uint32_t me = KMC_LOAD(&c->region->self);
    return me == KMC_NIL ? KMC_DEPOT : me + 1;
}

bool kmc__shared_lacks_ctor(const kmc_cache_t *c) { return c->region->lay.has_ctor && !c->ctor; }

int kmc__shared_commit(kmc_cache_t *c, uint32_t id)
{
    kmc_region_t *r = c->region;
    uint32_t sidx = kmc__slab_index(id);
    size_t page = kmc_page_size();
    uint64_t rec_bytes = (uint64_t)c->objperslab * r->rec_words * 8;
    uint64_t from = r->lay.records_at + sidx * rec_bytes;
    uint64_t to = (from + rec_bytes + page - 1) & ~(uint64_t)(page - 1);
    from &= ~(uint64_t)(page - 1);
    int rc = kmc__shm_commit(r->fd, from, to - from);
    if (rc == 0)
        rc = kmc__shm_commit(r->fd, r->lay.meta_bytes + ((uint64_t)sidx << c->slab_shift),
                             c->slab_size);
    CRASH_POINT();
    return rc == 0 ? 0 : -1;
}

void kmc__shared_decommit(kmc_cache_t *c, uint32_t id)
{
    kmc_region_t *r = c->region;
    CRASH_POINT();
    kmc__shm_decommit(r->fd, r->lay.meta_bytes + ((uint64_t)kmc__slab_index(id) << c->slab_shift),
                      c->slab_size);
}

/* Back to the depot: slot (@sidx, @idx), whose record was just made FREE.
 * Region locked. */
static void to_depot(kmc_cache_t *c, uint32_t sidx, uint32_t idx, bool was_live)
{
    if (was_live && (c->flags & KMC_DEBUG_FLAGS)) {
        kmc__debug_on_free(c, obj_at(c, off_of(c, sidx, idx)));
        uint32_t *orig = kmc__debug_orig(c, &c->region->arena, sidx, idx);
        if (orig)
            *orig = (uint32_t)c->size;
    }
    kmc__depot_put(c, sidx, idx); /* arena 0: the slab id is its index */
}

/* End live object (@sidx, @idx) whose word 0 read @w: into @me's magazine
 * when there is room (slot locked by the caller), else the depot. False
 * when @w is no longer current (someone else changed it). Region locked. */
static bool end_live(kmc_cache_t *c, uint32_t me, uint32_t sidx, uint32_t idx, uint64_t w)
{
    kmc_region_t *r = c->region;
    _Atomic uint64_t *rec = rec_at(r, c, sidx, idx);
    kmc_proc_t *p = me == KMC_NIL ? NULL : &r->procs[me];
    uint32_t n = p ? KMC_LOAD(&p->mag_count) : 0; /* read once: a bound */
    bool cache_it = p && r->mag_cap && n < r->mag_cap;
    uint64_t to = rec_word(cache_it ? REC_CACHED : REC_FREE, cache_it ? me : 0, 0, rec_gen(w));
    if (!atomic_compare_exchange_strong_explicit(rec, &w, to, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return false;
    r->hdr->tickets -= rec_tickets(w);
    CRASH_POINT();
    if (cache_it) {
        KMC_STORE(&p->mag[n], off_of(c, sidx, idx));
        KMC_STORE(&p->mag_count, n + 1);
    } else {
        to_depot(c, sidx, idx, true);
    }
    if (p)
        KMC_BUMP(&p->frees, 1);
    else
        r->hdr->gone_frees++;
    return true;
}

/* Give the oldest objects of slot @s's magazine back until @keep are left.
 * Region and slot locked. */
static void flush(kmc_cache_t *c, uint32_t s, uint32_t keep)
{
    kmc_region_t *r = c->region;
    kmc_proc_t *p = &r->procs[s];
    uint32_t n = mag_count(p);
    if (n <= keep)
        return;
    uint32_t give = n - keep;
    for (uint32_t i = 0; i < give; i++) {
        uint64_t off = KMC_LOAD(&p->mag[i]);
        uint32_t sidx, idx;
        if (!slot_of(c, off, &sidx, &idx))
            continue;
        _Atomic uint64_t *rec = rec_at(r, c, sidx, idx);
        uint64_t w = KMC_LOAD(rec);
        if (rec_state(w) != REC_CACHED || rec_slot(w) != s)
            continue; /* not what the magazine says: validate tells */
        atomic_store_explicit(rec, rec_word(REC_FREE, 0, 0, rec_gen(w)), memory_order_release);
        CRASH_POINT();
        to_depot(c, sidx, idx, false);
    }
    for (uint32_t i = 0; i < keep; i++)
        KMC_STORE(&p->mag[i], KMC_LOAD(&p->mag[give + i]));
    KMC_STORE(&p->mag_count, keep);
}

/* Fill half of @me's magazine from the depot. Region and slot locked. */
static void refill(kmc_cache_t *c, uint32_t me)
{
    kmc_region_t *r = c->region;
    kmc_proc_t *p = &r->procs[me];
    uint32_t want = r->mag_cap / 2 ? r->mag_cap / 2 : 1;
    uint32_t first = mag_count(p), last = first;
    for (uint32_t n = first; n < want; n++) {
        uint8_t *q = kmc__depot_take(c);
        if (!q)
            break;
        CRASH_POINT();
        uint64_t off = (uint64_t)(q - r->slabs);
        _Atomic uint64_t *rec = rec_of_off(c, off);
        atomic_store_explicit(rec, rec_word(REC_CACHED, me, 0, rec_gen(KMC_LOAD(rec))),
                              memory_order_release);
        KMC_STORE(&p->mag[n], off);
        KMC_STORE(&p->mag_count, n + 1);
        last = n + 1;
    }
    /* the lowest address first out: memory handed out stays compact */
    for (uint32_t i = first, j = last; i + 1 < j; i++, j--) {
        uint64_t t = KMC_LOAD(&p->mag[i]);
        KMC_STORE(&p->mag[i], KMC_LOAD(&p->mag[j - 1]));
        KMC_STORE(&p->mag[j - 1], t);
    }
}

/* Rebuild bitmaps, counts, states and lists from the records; slabs whose
 * builder died are released; *@mismatches (if not NULL) gets the slots
 * whose bit disagreed. Concurrent fast paths move records between CACHED
 * and LIVE only, which leaves every bit as it is. Region locked. */
static void rebuild(kmc_cache_t *c, size_t *mismatches)
{
    kmc_region_t *r = c->region;
    kmc_depot_t *d = c->d;
    kmc_arena_t *a = &r->arena;
    uint32_t now = kmc__now_ms();
    size_t bad = 0;
    uint64_t slabs = 0, out = 0, tickets = 0;
    bool armed = false;
    d->partial = d->empty = d->released = (kmc_list_t){KMC_NIL, KMC_NIL, 0};
    uint32_t hole_end = KMC_NIL; /* released slabs are punched in runs */
    for (uint32_t i = a->nslabs; i-- > 0;) {
        kmc_slab_t *s = &a->slabs[i];
        uint8_t state = kmc__slab_state(s);
        if (state == KMC_SLAB_NEW) {
            uint32_t b = KMC_LOAD(&s->owner);
            if (b && b - 1 < r->lay.max_procs && proc_alive(r, b - 1))
                goto next; /* still being built */
            state = KMC_SLAB_RELEASED;
        }
        if (state == KMC_SLAB_PINNED)
            goto next;
        if (!kmc__slab_committed(state)) {
            kmc__slab_set_state(s, KMC_SLAB_RELEASED);
            KMC_STORE(&s->owner, KMC_DEPOT);
            kmc__list_push(c, &d->released, i);
            if (hole_end == KMC_NIL)
                hole_end = i + 1;
            continue;
        }
        {
            _Atomic uint64_t *local = &a->local[(size_t)i * c->bitmap_words];
            _Atomic uint64_t *remote = &a->remote[(size_t)i * c->bitmap_words];
            uint32_t nfree = 0;
            for (uint32_t w = 0; w < c->bitmap_words; w++) {
                uint64_t bits = 0;
                for (uint32_t b = 0; b < 64 && w * 64 + b < c->objperslab; b++) {
                    uint64_t word = KMC_LOAD(rec_at(r, c, i, w * 64 + b));
                    if (rec_state(word) == REC_FREE)
                        bits |= UINT64_C(1) << b;
                    else if (rec_state(word) == REC_LIVE)
                        tickets += rec_tickets(word);
                }
                bad += (size_t)__builtin_popcountll(bits ^ KMC_LOAD(&local[w]));
                KMC_STORE(&local[w], bits);
                KMC_STORE(&remote[w], 0);
                nfree += (uint32_t)__builtin_popcountll(bits);
            }
            uint32_t inuse = c->objperslab - nfree;
            KMC_STORE(&s->inuse, inuse);
            KMC_STORE(&s->owner, KMC_DEPOT);
            KMC_STORE(&s->pushed, 0);
            s->hint = 0;
            s->next = s->prev = KMC_NIL;
            out += inuse;
            slabs++;
            if (inuse == 0) {
                kmc__slab_set_state(s, KMC_SLAB_EMPTY);
                s->empty_since = now;
                kmc__list_push(c, &d->empty, i);
                armed = true;
            } else if (inuse == c->objperslab) {
                kmc__slab_set_state(s, KMC_SLAB_FULL);
            } else {
                kmc__slab_set_state(s, KMC_SLAB_PARTIAL);
                kmc__list_push(c, &d->partial, i);
            }
        }
    next:
        if (hole_end != KMC_NIL) {
            uint32_t first = i + 1;
            if (first < hole_end)
                kmc__shm_decommit(r->fd, r->lay.meta_bytes + ((uint64_t)first << c->slab_shift),
                                  (uint64_t)(hole_end - first) << c->slab_shift);
            hole_end = KMC_NIL;
        }
    }
    if (hole_end != KMC_NIL)
        kmc__shm_decommit(r->fd, r->lay.meta_bytes, (uint64_t)hole_end << c->slab_shift);
    d->num_slabs = slabs;
    d->depot_allocs = d->depot_frees + out; /* slots out of the depot */
    r->hdr->tickets = tickets;
    if (d->slabs_created < slabs + d->slabs_released)
        d->slabs_created = slabs + d->slabs_released;
    if (armed)
        kmc__purge_arm();
    if (mismatches)
        *mismatches = bad;
}

/* --- reclaiming ------------------------------------------------------------------- */

/* What the processes in @dead (a bitmap of slots) held goes back: their
 * cached objects, the objects only they held, their holder bits; with
 * @orphans also live objects no process can free any more (their holder's
 * slot is free, or no holder and no ticket is left); with @pickled, also
 * objects held by tickets alone. Returns the objects freed. Region locked. */
static size_t scan_release(kmc_cache_t *c, const uint64_t *dead, bool orphans, bool pickled)
{
    kmc_region_t *r = c->region;
    kmc_arena_t *a = &r->arena;
    uint32_t procs = (uint32_t)r->lay.max_procs;
    size_t freed = 0;
#define IS_DEAD(s) ((dead[(s) / 64] >> ((s) % 64)) & 1)
#define GONE(s)    ((s) >= procs || IS_DEAD(s) || KMC_LOAD(&r->procs[(s)].state) != PROC_ALIVE)
    for (uint32_t i = 0; i < a->nslabs; i++) {
        kmc_slab_t *s = &a->slabs[i];
        uint8_t state = kmc__slab_state(s);
        if (state == KMC_SLAB_NEW) {
            uint32_t b = KMC_LOAD(&s->owner);
            if (b == KMC_DEPOT || (b - 1 < procs && IS_DEAD(b - 1))) {
                /* its builder died: no memory, no list */
                kmc__slab_set_state(s, KMC_SLAB_RELEASED);
                KMC_STORE(&s->owner, KMC_DEPOT);
                kmc__shm_decommit(r->fd, r->lay.meta_bytes + ((uint64_t)i << c->slab_shift),
                                  c->slab_size);
                kmc__list_push(c, &c->d->released, i);
                a->live_slabs--;
            }
            continue;
        }
        if (!kmc__slab_committed(state) || KMC_LOAD(&s->inuse) == 0)
            continue;
        for (uint32_t idx = 0; idx < c->objperslab; idx++) {
            _Atomic uint64_t *rec = rec_at(r, c, i, idx);
            for (;;) {
                uint64_t w = KMC_LOAD(rec);
                uint32_t st = rec_state(w);
                if (st == REC_FREE)
                    break;
                if (st == REC_CACHED) {
                    if (!GONE(rec_slot(w)))
                        break;
                    if (!atomic_compare_exchange_strong(rec, &w,
                                                        rec_word(REC_FREE, 0, 0, rec_gen(w))))
                        continue;
                    to_depot(c, i, idx, false);
                    break;
                }
                bool end;
                if (!rec_shared(w)) {
                    uint32_t q = rec_slot(w);
                    end = GONE(q) && (orphans || (q < procs && IS_DEAD(q)));
                } else {
                    for (uint32_t hw = 0; hw < holder_words(r); hw++) {
                        uint64_t bits = KMC_LOAD(&rec[1 + hw]), drop = 0;
                        for (uint64_t m = bits; m; m &= m - 1) {
                            uint32_t slot = hw * 64 + (uint32_t)__builtin_ctzll(m);
                            if (slot >= procs || IS_DEAD(slot) ||
                                (orphans && KMC_LOAD(&r->procs[slot].state) != PROC_ALIVE))
                                drop |= m & -m;
                        }
                        if (drop)
                            atomic_fetch_and(&rec[1 + hw], ~drop);
                    }
                    end = holders_empty(r, rec) && (rec_tickets(w) == 0 || pickled);
                }
                if (!end)
                    break;
                if (!end_live(c, KMC_NIL, i, idx, w))
                    continue;
                freed++;
                break;
            }
        }
    }
#undef GONE
#undef IS_DEAD
    r->hdr->reclaimed += freed;
    return freed;
}

/* Retire slot @s: its counters into the region's, the slot free. */
static void proc_retire(kmc_region_t *r, uint32_t s)
{
    kmc_proc_t *p = &r->procs[s];
    r->hdr->gone_allocs += KMC_LOAD(&p->allocs);
    r->hdr->gone_frees += KMC_LOAD(&p->frees);
    KMC_STORE(&p->allocs, 0);
    KMC_STORE(&p->frees, 0);
    KMC_STORE(&p->mag_count, 0);
    CRASH_POINT();
    atomic_store_explicit(&p->state, PROC_FREE, memory_order_release);
    KMC_STORE(&p->lock, 0);
    if (r->hdr->attached)
        r->hdr->attached--;
}

/* Take every living process's slot lock (and any dead one's): their fast
 * paths wait, and the records hold still but for frees by the region lock's
 * holder. Region locked; kmc__shared_unquiesce undoes it. */
static void quiesce(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        me = KMC_SHARED_MAX_PROCS; /* a lock word that names no slot */
    memset(r->quiesced, 0, KMC_SHARED_MAX_PROCS / 8);
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if (KMC_LOAD(&r->procs[s].state) == PROC_ALIVE) {
            proc_lock(c, s, me, true);
            r->quiesced[s / 64] |= UINT64_C(1) << (s % 64);
        }
}

static void unquiesce(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if ((r->quiesced[s / 64] >> (s % 64)) & 1)
            proc_unlock(&r->procs[s]);
    memset(r->quiesced, 0, KMC_SHARED_MAX_PROCS / 8);
}

static uint64_t count_records(kmc_cache_t *c, uint32_t state, uint32_t slot);

/* Make the counters say what the records say: a process killed inside a
 * fast path may have changed a record and not its count. Returns how far
 * off they were. Region locked and quiesced. */
static uint64_t recount(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    kmc_stats_t s = {0};
    kmc__shared_stats(c, &s);
    uint64_t live = count_records(c, REC_LIVE, KMC_NIL);
    r->hdr->gone_allocs += live - s.active_objs;
    return live > s.active_objs ? live - s.active_objs : s.active_objs - live;
}

/* Find the dead processes and give back what they held; with @orphans,
 * also what no process can free any more; then the counters are made
 * exact. Region locked, and not this process's slot lock. */
static size_t reclaim_dead(kmc_cache_t *c, bool pickled, bool orphans)
{
    kmc_region_t *r = c->region;
    uint64_t dead[KMC_SHARED_MAX_PROCS / 64] = {0};
    bool any = false;
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if (KMC_LOAD(&r->procs[s].state) == PROC_ALIVE && !proc_alive(r, s)) {
            dead[s / 64] |= UINT64_C(1) << (s % 64);
            any = true;
        }
    if (!any && !pickled && !orphans)
        return 0;
    size_t n = scan_release(c, dead, orphans, pickled);
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if ((dead[s / 64] >> (s % 64)) & 1)
            proc_retire(r, s);
    if (any) {
        quiesce(c);
        recount(c);
        unquiesce(c);
    }
    return n;
}

size_t kmc_shared_reclaim(kmc_cache_t *c, int pickled)
{
    kmc__report_clear();
    kmc__region_lock(c);
    size_t n = reclaim_dead(c, pickled != 0, true);
    kmc__region_unlock(c);
    return n;
}

/* --- registering this process ---------------------------------------------------- */

/* Give this process a slot. Region not locked. KMC_NIL with a report when
 * every slot is taken by a living process. */
static uint32_t register_self(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    int pid;
    uint64_t start, pidns;
    int rc = kmc__shm_self(&pid, &start, &pidns);
    if (rc != 0) { /* EMFILE, say: the real cause, not a generic EIO */
        kmc__report(KMC_EOS, c, NULL, "cannot read this process's start time from /proc: %s",
                    strerror(rc == ESRCH ? EIO : rc));
        kmc__report_slot()->os_error = rc == ESRCH ? EIO : rc;
        return KMC_NIL;
    }
    r->pid = pid;
    r->start = start;
    r->pidns = pidns;
    kmc__region_lock(c);
    reclaim_dead(c, false, false);
    uint32_t me = KMC_NIL;
    for (uint32_t s = 0; s < r->lay.max_procs && me == KMC_NIL; s++)
        if (KMC_LOAD(&r->procs[s].state) == PROC_FREE)
            me = s;
    if (me != KMC_NIL) {
        kmc_proc_t *p = &r->procs[me];
        KMC_STORE(&p->lock, 0);
        p->pid = pid;
        p->start = start;
        p->pidns = pidns;
        KMC_STORE(&p->allocs, 0);
        KMC_STORE(&p->frees, 0);
        KMC_STORE(&p->mag_count, 0);
        CRASH_POINT();
        atomic_store_explicit(&p->state, PROC_ALIVE, memory_order_release);
        r->hdr->attached++;
        atomic_store_explicit(&r->self, me, memory_order_release);
    } else {
        kmc__report(KMC_EBUSY, c, NULL,
                    "all %u process slots of shared cache %s are taken by living processes",
                    (unsigned)r->lay.max_procs, c->name);
    }
    kmc__region_unlock(c);
    return me;
}

/* Is slot @me still this process's? Not when it was judged dead (a test
 * hook forged it, or it was reclaimed as another namespace's process
 * would never be). Region locked. */
static bool owns(const kmc_region_t *r, uint32_t me)
{
    const kmc_proc_t *p = &r->procs[me];
    return KMC_LOAD(&((kmc_proc_t *)p)->state) == PROC_ALIVE && p->pid == r->pid &&
           p->start == r->start;
}

/* This process's slot, registering it first (after a fork, say). */
static uint32_t ensure_self(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = atomic_load_explicit(&r->self, memory_order_acquire);
    if (likely(me != KMC_NIL))
        return me;
    pthread_mutex_lock(&r->reg_lock);
    me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        me = register_self(c);
    pthread_mutex_unlock(&r->reg_lock);
    return me;
}

void kmc__shared_after_fork(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    KMC_STORE(&r->self, KMC_NIL); /* the parent's slot is the parent's */
    pthread_mutex_init(&r->reg_lock, NULL);
}

/* --- alloc and free ------------------------------------------------------------------ */

/* A live object for @me straight from the depot (debug caches, or no
 * magazine). Region and slot locked. */
static uint8_t *take_live(kmc_cache_t *c, uint32_t me, uint32_t *gen, kmc_status *st)
{
    kmc_region_t *r = c->region;
    uint8_t *q = (c->flags & KMC_DEBUG_FLAGS) ? kmc__depot_take_debug(c, st) : kmc__depot_take(c);
    if (!q)
        return NULL;
    CRASH_POINT();
    uint64_t off = (uint64_t)(q - r->slabs);
    uint32_t sidx = 0, idx = 0;
    (void)slot_of(c, off, &sidx, &idx);
    if (c->flags & KMC_DEBUG_FLAGS) {
        kmc__debug_on_alloc(c, q, 0, c->size);
        uint32_t *orig = kmc__debug_orig(c, &r->arena, sidx, idx);
        if (orig)
            *orig = (uint32_t)c->size;
    }
    _Atomic uint64_t *rec = rec_at(r, c, sidx, idx);
    *gen = next_gen(rec_gen(KMC_LOAD(rec)));
    atomic_store_explicit(rec, rec_word(REC_LIVE, me, 0, *gen), memory_order_release);
    KMC_BUMP(&r->procs[me].allocs, 1);
    return q;
}

static KMC_NOINLINE void *alloc_slow(kmc_cache_t *c, int zero, uint32_t *gen_out)
{
    kmc__report_clear();
    if (zero && c->ctor) {
        kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor", c->name);
        return NULL;
    }
    kmc_region_t *r = c->region;
    uint32_t me = ensure_self(c);
    if (me == KMC_NIL)
        return NULL;
    bool reclaimed = false;
    for (;;) {
        kmc__region_lock(c);
        if (!owns(r, me)) { /* its slot was taken back: a new one */
            KMC_STORE(&r->self, KMC_NIL);
            kmc__region_unlock(c);
            if ((me = ensure_self(c)) == KMC_NIL)
                return NULL;
            continue;
        }
        proc_lock(c, me, me, true);
        kmc_proc_t *p = &r->procs[me];
        uint8_t *obj = NULL;
        uint32_t gen = 0;
        kmc_status st = KMC_OK;
        if (r->mag_cap) {
            /* the fast path may have refused the top entry: checked
             * before a refill buries it */
            uint32_t n = mag_count(p);
            uint64_t off, w;
            _Atomic uint64_t *rec;
            if (!n || mag_entry_ok(c, me, KMC_LOAD(&p->mag[n - 1]), &rec, &w)) {
                refill(c, me);
                n = mag_count(p);
            }
            if (n) {
                off = KMC_LOAD(&p->mag[n - 1]);
                KMC_STORE(&p->mag_count, n - 1);
                if (mag_entry_ok(c, me, off, &rec, &w)) {
                    gen = next_gen(rec_gen(w));
                    atomic_store_explicit(rec, rec_word(REC_LIVE, me, 0, gen),
                                          memory_order_release);
                    KMC_BUMP(&p->allocs, 1);
                    obj = obj_at(c, off);
                } else { /* dropped: validate finds what became of its slot */
                    st = kmc__report(KMC_ECORRUPT, c, NULL,
                                     "the magazine of process %d (slot %u) of %s names offset "
                                     "%llu, which is not an object it has cached; entry dropped",
                                     r->pid, me, c->name, (unsigned long long)off);
                }
            }
        } else {
            obj = take_live(c, me, &gen, &st);
        }
        proc_unlock(p);
        kmc__region_unlock(c);
        if (st != KMC_OK)
            return NULL;
        if (obj) {
            if (zero)
                memset(obj, 0, c->size);
            if (gen_out)
                *gen_out = gen;
            return obj;
        }
        st = kmc__depot_grow(c);
        if (st == KMC_ENOMEM && !reclaimed) {
            /* full: what dead processes held first */
            reclaimed = true;
            kmc__region_lock(c);
            reclaim_dead(c, false, false);
            kmc__region_unlock(c);
            continue;
        }
        if (st != KMC_OK)
            return NULL;
    }
}

/* The fast path: about a dozen loads and stores and two atomic operations
 * (the slot lock's compare-and-swap and its release) when the magazine has
 * an object. */
void *kmc_shared_alloc(kmc_cache_t *c, int zero, uint32_t *gen_out)
{
    kmc_region_t *r = region_of(c);
    uint32_t me = KMC_LOAD(&r->self);
    if (likely(r->mag_cap && me != KMC_NIL) && likely(!zero || !c->ctor)) {
        kmc_proc_t *p = &r->procs[me];
        if (likely(proc_trylock(p, me))) {
            uint32_t n = KMC_LOAD(&p->mag_count);
            uint64_t off, w;
            _Atomic uint64_t *rec;
            /* an entry is checked before it is trusted: the slow path
             * reports one that is not ours */
            if (likely(n && n <= r->mag_cap) &&
                likely(mag_entry_ok(c, me, off = KMC_LOAD(&p->mag[n - 1]), &rec, &w))) {
                KMC_STORE(&p->mag_count, n - 1);
                uint32_t gen = next_gen(rec_gen(w));
                CRASH_POINT();
                atomic_store_explicit(rec, rec_word(REC_LIVE, me, 0, gen), memory_order_release);
                KMC_BUMP(&p->allocs, 1);
                proc_unlock(p);
                uint8_t *obj = r->slabs + off;
                if (zero)
                    memset(obj, 0, c->size);
                if (gen_out)
                    *gen_out = gen;
                return obj;
            }
            proc_unlock(p);
        }
    }
    return alloc_slow(c, zero, gen_out);
}

kmc_status kmc_shared_alloc_bulk(kmc_cache_t *c, size_t n, void **out, uint32_t *gens, int zero)
{
    kmc__report_clear();
    if (zero && c->ctor)
        return kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor",
                           c->name);
    for (size_t got = 0; got < n; got++) {
        uint32_t gen;
        if ((out[got] = kmc_shared_alloc(c, zero, &gen))) {
            if (gens)
                gens[got] = gen;
            continue;
        }
        kmc_status st = kmc_last_report()->status;
        kmc_report_t keep = *kmc__report_slot();
        for (size_t i = 0; i < got; i++)
            kmc_shared_free(c, out[i], gens ? gens[i] : KMC_SHARED_ANY_GEN);
        *kmc__report_slot() = keep;
        return st == KMC_OK ? KMC_ENOMEM : st;
    }
    return KMC_OK;
}

/* The size object (@sidx, @idx) was asked for, as the region records it:
 * a red zone check reads from there to the slot's end, so a size larger
 * than the object's is not believed. */
static size_t asked_size(const kmc_cache_t *c, const kmc_arena_t *a, uint32_t sidx, uint32_t idx)
{
    uint32_t *orig = kmc__debug_orig(c, a, sidx, idx);
    uint32_t n = orig ? KMC_LOAD((_Atomic uint32_t *)orig) : (uint32_t)c->size;
    return n <= c->size ? n : c->size;
}

/* Is @obj of generation @gen a live object of @c that may be freed (red
 * zones intact)? Its slot into *@sidx, *@idx and word 0 into *@w.
 * Region locked. */
static kmc_status check_live(kmc_cache_t *c, const void *obj, uint32_t gen, uint32_t *sidx,
                             uint32_t *idx, uint64_t *w)
{
    kmc_region_t *r = c->region;
    uint32_t id;
    kmc_arena_t *a;
    kmc_status st = kmc__locate(c, obj, &a, &id, idx);
    if (st != KMC_OK)
        return st;
    *sidx = kmc__slab_index(id);
    *w = KMC_LOAD(rec_at(r, c, *sidx, *idx));
    if (gen != KMC_SHARED_ANY_GEN && rec_gen(*w) != gen)
        return kmc__report(KMC_EDOUBLE_FREE, c, obj,
                           "Object already free: 0x%llx in %s (freed, and allocated again "
                           "since this reference was made)",
                           (unsigned long long)(uintptr_t)obj, c->name);
    if (c->flags & (KMC_RED_ZONE | KMC_POISON))
        st = kmc__debug_check_free(c, (uint8_t *)obj, asked_size(c, a, *sidx, *idx));
    return st;
}

/* Free under the lock: a checked, live object. Region locked, and @me's
 * slot when it has one. */
static kmc_status free_locked(kmc_cache_t *c, uint32_t me, const void *obj, uint32_t gen)
{
    kmc_region_t *r = c->region;
    for (;;) {
        uint32_t sidx, idx;
        uint64_t w;
        kmc_status st = check_live(c, obj, gen, &sidx, &idx, &w);
        if (st != KMC_OK)
            return st;
        if (me != KMC_NIL && r->mag_cap && KMC_LOAD(&r->procs[me].mag_count) >= r->mag_cap)
            flush(c, me, r->mag_cap / 2);
        if (end_live(c, me, sidx, idx, w))
            return KMC_OK;
    }
}

static KMC_NOINLINE kmc_status free_slow(kmc_cache_t *c, void *obj, uint32_t gen)
{
    kmc__report_clear();
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    kmc__region_lock(c);
    if (me != KMC_NIL && !owns(r, me))
        KMC_STORE(&r->self, me = KMC_NIL); /* its slot was taken back */
    if (me != KMC_NIL)
        proc_lock(c, me, me, true);
    kmc_status st = free_locked(c, me, obj, gen);
    if (me != KMC_NIL)
        proc_unlock(&r->procs[me]);
    kmc__region_unlock(c);
    return st;
}

/* The fast path: the slot lock, one compare-and-swap on the record, a push. */
kmc_status kmc_shared_free(kmc_cache_t *c, void *obj, uint32_t gen)
{
    kmc_region_t *r = region_of(c);
    uint32_t me = KMC_LOAD(&r->self);
    uint64_t off = (uint64_t)((uintptr_t)obj - (uintptr_t)r->slabs);
    uint32_t sidx, idx;
    if (likely(r->mag_cap && me != KMC_NIL) && likely(slot_of(c, off, &sidx, &idx))) {
        kmc_proc_t *p = &r->procs[me];
        if (likely(proc_trylock(p, me))) {
            uint32_t n = KMC_LOAD(&p->mag_count);
            _Atomic uint64_t *rec = rec_at(r, c, sidx, idx);
            uint64_t w = KMC_LOAD(rec);
            if (likely(n < r->mag_cap && rec_state(w) == REC_LIVE && rec_tickets(w) == 0 &&
                       (gen == KMC_SHARED_ANY_GEN || rec_gen(w) == gen)) &&
                likely(atomic_compare_exchange_strong_explicit(
                    rec, &w, rec_word(REC_CACHED, me, 0, rec_gen(w)), memory_order_acq_rel,
                    memory_order_relaxed))) {
                CRASH_POINT();
                KMC_STORE(&p->mag[n], off);
                KMC_STORE(&p->mag_count, n + 1);
                KMC_BUMP(&p->frees, 1);
                proc_unlock(p);
                return KMC_OK;
            }
            proc_unlock(p);
        }
    }
    return free_slow(c, obj, gen);
}

kmc_status kmc_shared_free_bulk(kmc_cache_t *c, size_t n, void *const *objs, const uint32_t *gens)
{
    kmc__report_clear();
    kmc_region_t *r = c->region;
    uint32_t me = ensure_self(c);
    uintptr_t *sorted = malloc((n ? n : 1) * sizeof(*sorted));
    if (!sorted)
        return kmc__report(KMC_ENOMEM, c, NULL, "no memory to check %zu objects", n);
    kmc__region_lock(c);
    if (me != KMC_NIL && !owns(r, me))
        KMC_STORE(&r->self, me = KMC_NIL);
    if (me != KMC_NIL)
        proc_lock(c, me, me, true);
    kmc_status st = KMC_OK;
    for (size_t i = 0; i < n && st == KMC_OK; i++) {
        uint32_t sidx, idx;
        uint64_t w;
        st = check_live(c, objs[i], gens ? gens[i] : KMC_SHARED_ANY_GEN, &sidx, &idx, &w);
        sorted[i] = (uintptr_t)objs[i];
    }
    if (st == KMC_OK) {
        /* listed twice: the second free would be a double free */
        for (size_t i = 1; i < n; i++) { /* insertion sort: n is small in practice */
            uintptr_t v = sorted[i];
            size_t j = i;
            for (; j && sorted[j - 1] > v; j--)
                sorted[j] = sorted[j - 1];
            sorted[j] = v;
        }
        for (size_t i = 1; i < n && st == KMC_OK; i++)
            if (sorted[i] == sorted[i - 1])
                st = kmc__report(KMC_EDOUBLE_FREE, c, (void *)sorted[i],
                                 "Object already free: 0x%llx in %s is listed twice",
                                 (unsigned long long)sorted[i], c->name);
    }
    for (size_t i = 0; i < n && st == KMC_OK; i++)
        st = free_locked(c, me, objs[i], gens ? gens[i] : KMC_SHARED_ANY_GEN);
    if (me != KMC_NIL)
        proc_unlock(&r->procs[me]);
    kmc__region_unlock(c);
    free(sorted);
    return st;
}

/* --- holders ------------------------------------------------------------------------ */

/* Slot and word 0 of the object at @obj for the holder calls: no red zone
 * checks, no report for a stale one. Region locked. */
static _Atomic uint64_t *holder_rec(kmc_cache_t *c, const void *obj, uint32_t *sidx, uint32_t *idx)
{
    kmc_region_t *r = c->region;
    uint64_t off = (uint64_t)((uintptr_t)obj - (uintptr_t)r->slabs);
    if (!slot_of(c, off, sidx, idx) ||
        !kmc__slab_committed(kmc__slab_state(&r->arena.slabs[*sidx])))
        return NULL;
    return rec_at(r, c, *sidx, *idx);
}

kmc_status kmc_shared_drop(kmc_cache_t *c, void *obj, uint32_t gen, int *freed)
{
    kmc_region_t *r = region_of(c);
    uint32_t me = KMC_LOAD(&r->self);
    if (freed)
        *freed = 0;
    if (me == KMC_NIL)
        return KMC_OK; /* holds nothing */
    uint64_t off = (uint64_t)((uintptr_t)obj - (uintptr_t)r->slabs);
    uint32_t sidx, idx;
    if (unlikely(!slot_of(c, off, &sidx, &idx)))
        return kmc__report(KMC_EINVALID_FREE, c, obj, "0x%llx is not an object of %s",
                           (unsigned long long)(uintptr_t)obj, c->name);
    _Atomic uint64_t *rec = rec_at(r, c, sidx, idx);
    uint64_t w = KMC_LOAD(rec);
    if (rec_state(w) != REC_LIVE || (gen != KMC_SHARED_ANY_GEN && rec_gen(w) != gen))
        return KMC_OK; /* stale: nothing of ours */
    if (!rec_shared(w) && rec_slot(w) != me)
        return KMC_OK; /* not a holder (a fork inherited the handle) */
    /* the sole holder, no pickle out: as a free, on the fast path */
    kmc_proc_t *p = &r->procs[me];
    if (!rec_shared(w) && r->mag_cap && proc_trylock(p, me)) {
        uint32_t n = KMC_LOAD(&p->mag_count);
        uint64_t expect = rec_word(REC_LIVE, me, 0, rec_gen(w));
        if (n < r->mag_cap && atomic_compare_exchange_strong_explicit(
                                  rec, &expect, rec_word(REC_CACHED, me, 0, rec_gen(w)),
                                  memory_order_acq_rel, memory_order_relaxed)) {
            KMC_STORE(&p->mag[n], off);
            KMC_STORE(&p->mag_count, n + 1);
            KMC_BUMP(&p->frees, 1);
            proc_unlock(p);
            if (freed)
                *freed = 1;
            return KMC_OK;
        }
        proc_unlock(p);
    }
    kmc__report_clear();
    kmc__region_lock(c);
    if (!owns(r, me)) { /* its slot was taken back: it holds nothing */
        KMC_STORE(&r->self, KMC_NIL);
        kmc__region_unlock(c);
        return KMC_OK;
    }
    proc_lock(c, me, me, true);
    kmc_status st = KMC_OK;
    for (;;) {
        w = KMC_LOAD(rec);
        if (rec_state(w) != REC_LIVE || (gen != KMC_SHARED_ANY_GEN && rec_gen(w) != gen))
            break;
        bool end;
        if (!rec_shared(w)) {
            end = rec_slot(w) == me;
        } else {
            if (!holder_has(rec, me))
                break;
            atomic_fetch_and(&rec[1 + me / 64], ~(UINT64_C(1) << (me % 64)));
            CRASH_POINT();
            end = holders_empty(r, rec) && rec_tickets(w) == 0;
        }
        if (!end)
            break;
        if (c->flags & (KMC_RED_ZONE | KMC_POISON)) {
            st = kmc__debug_check_free(c, obj, asked_size(c, &r->arena, sidx, idx));
            if (st != KMC_OK)
                break;
        }
        if (r->mag_cap && KMC_LOAD(&r->procs[me].mag_count) >= r->mag_cap)
            flush(c, me, r->mag_cap / 2);
        if (end_live(c, me, sidx, idx, w)) {
            if (freed)
                *freed = 1;
            break;
        }
    }
    proc_unlock(&r->procs[me]);
    kmc__region_unlock(c);
    return st;
}

kmc_status kmc_shared_ticket(kmc_cache_t *c, void *obj, uint32_t gen)
{
    kmc__report_clear();
    kmc_region_t *r = c->region;
    kmc__region_lock(c);
    uint32_t sidx, idx;
    _Atomic uint64_t *rec = holder_rec(c, obj, &sidx, &idx);
    kmc_status st = KMC_OK;
    for (;;) {
        uint64_t w = rec ? KMC_LOAD(rec) : 0;
        if (!rec || rec_state(w) != REC_LIVE || (gen != KMC_SHARED_ANY_GEN && rec_gen(w) != gen)) {
            st = kmc__report(KMC_ESTALE, c, obj, "object 0x%llx of %s was freed",
                             (unsigned long long)(uintptr_t)obj, c->name);
            break;
        }
        if (rec_tickets(w) == REC_TICKETS_MAX) {
            st = kmc__report(KMC_EINVAL, c, obj,
                             "object 0x%llx of %s has %u references out already, the most",
                             (unsigned long long)(uintptr_t)obj, c->name, REC_TICKETS_MAX);
            break;
        }
        uint64_t to = w + ((uint64_t)1 << REC_TICKET_SHIFT);
        if (!rec_shared(w)) {
            /* its holder set, written before the bit that makes it count */
            for (uint32_t hw = 0; hw < holder_words(r); hw++)
                KMC_STORE(&rec[1 + hw],
                          hw == rec_slot(w) / 64 ? UINT64_C(1) << (rec_slot(w) % 64) : 0);
            to |= REC_SHARED;
        }
        if (atomic_compare_exchange_strong(rec, &w, to)) {
            r->hdr->tickets++;
            break;
        }
    }
    kmc__region_unlock(c);
    return st;
}

kmc_status kmc_shared_hold(kmc_cache_t *c, uint64_t off, uint32_t gen, int ticket, void **obj,
                           uint32_t *gen_out, int *already)
{
    kmc__report_clear();
    kmc_region_t *r = c->region;
    uint32_t sidx, idx;
    if (!slot_of(c, off, &sidx, &idx))
        return kmc__report(KMC_EINVAL, c, NULL,
                           "offset %llu names no object slot of %s (its slab area is %zu bytes)",
                           (unsigned long long)off, c->name, r->slabs_len);
    uint32_t me;
    for (;;) {
        if ((me = ensure_self(c)) == KMC_NIL)
            return kmc_last_report()->status;
        kmc__region_lock(c);
        if (owns(r, me))
            break;
        KMC_STORE(&r->self, KMC_NIL); /* its slot was taken back: a new one */
        kmc__region_unlock(c);
    }
    void *at = obj_at(c, off);
    _Atomic uint64_t *rec = holder_rec(c, at, &sidx, &idx);
    kmc_status st = KMC_OK;
    for (;;) {
        uint64_t w = rec ? KMC_LOAD(rec) : 0;
        if (!rec || rec_state(w) != REC_LIVE || (gen != KMC_SHARED_ANY_GEN && rec_gen(w) != gen)) {
            st = gen == KMC_SHARED_ANY_GEN
                     ? kmc__report(KMC_ESTALE, c, at, "no live object at offset %llu of %s",
                                   (unsigned long long)off, c->name)
                     : kmc__report(KMC_ESTALE, c, at,
                                   "the object at offset %llu of %s was freed (generation "
                                   "%u is gone)",
                                   (unsigned long long)off, c->name, gen);
            break;
        }
        uint64_t to = w;
        bool had;
        if (!rec_shared(w)) {
            had = rec_slot(w) == me;
            if (!had) {
                for (uint32_t hw = 0; hw < holder_words(r); hw++) {
                    uint64_t bits = 0;
                    if (hw == rec_slot(w) / 64)
                        bits |= UINT64_C(1) << (rec_slot(w) % 64);
                    if (hw == me / 64)
                        bits |= UINT64_C(1) << (me % 64);
                    KMC_STORE(&rec[1 + hw], bits);
                }
                to |= REC_SHARED;
            }
        } else {
            had = holder_has(rec, me);
            if (!had)
                atomic_fetch_or(&rec[1 + me / 64], UINT64_C(1) << (me % 64));
        }
        CRASH_POINT();
        bool claim = ticket && rec_tickets(w) > 0;
        if (claim)
            to -= (uint64_t)1 << REC_TICKET_SHIFT;
        if (to != w && !atomic_compare_exchange_strong(rec, &w, to))
            continue;
        if (claim)
            r->hdr->tickets--;
        *obj = at;
        if (gen_out)
            *gen_out = rec_gen(w);
        if (already)
            *already = had;
        break;
    }
    kmc__region_unlock(c);
    return st;
}

uint64_t kmc_shared_offset(const kmc_cache_t *c, const void *obj)
{
    return (uint64_t)((uintptr_t)obj - (uintptr_t)c->region->slabs);
}

int kmc_cache_is_shared(const kmc_cache_t *c) { return c->region != NULL; }

/* --- what cache.c asks ---------------------------------------------------------------- */

void kmc__shared_flush_mine(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL || !owns(r, me))
        return;
    proc_lock(c, me, me, true);
    flush(c, me, 0);
    proc_unlock(&r->procs[me]);
}

void kmc__shared_stats(kmc_cache_t *c, kmc_stats_t *o)
{
    kmc_region_t *r = c->region;
    kmc_shm_header_t *h = r->hdr;
    uint64_t allocs = h->gone_allocs, frees = h->gone_frees, cached = 0, caches = 0;
    for (uint32_t s = 0; s < r->lay.max_procs; s++) {
        kmc_proc_t *p = &r->procs[s];
        if (KMC_LOAD(&p->state) != PROC_ALIVE)
            continue;
        allocs += KMC_LOAD(&p->allocs);
        frees += KMC_LOAD(&p->frees);
        uint32_t n = KMC_LOAD(&p->mag_count);
        cached += n;
        caches += n != 0;
    }
    o->allocs = allocs;
    o->frees = frees;
    o->active_objs = allocs - frees;
    o->cached_objs = cached;
    o->thread_caches = caches;
    o->remote_frees = 0;
    o->metadata_bytes = r->lay.meta_bytes;
    o->reserved_bytes = r->slabs_len;
    o->arenas = 1;
}

/* The live objects, counted from the records (every slot quiesced). */
static uint64_t count_records(kmc_cache_t *c, uint32_t state, uint32_t slot)
{
    kmc_region_t *r = c->region;
    uint64_t n = 0;
    for (uint32_t i = 0; i < r->arena.nslabs; i++) {
        if (!kmc__slab_committed(kmc__slab_state(&r->arena.slabs[i])))
            continue;
        for (uint32_t idx = 0; idx < c->objperslab; idx++) {
            uint64_t w = KMC_LOAD(rec_at(r, c, i, idx));
            n += rec_state(w) == state && (slot == KMC_NIL || rec_slot(w) == slot);
        }
    }
    return n;
}

static void tally(size_t *count, kmc_status *first, kmc_report_t *first_report, kmc_status st,
                  size_t n)
{
    if (*first == KMC_OK) {
        *first = st;
        *first_report = *kmc__report_slot();
    }
    *count += n;
}

void kmc__shared_validate_begin(kmc_cache_t *c, size_t *count, kmc_status *first,
                                kmc_report_t *first_report)
{
    kmc_region_t *r = c->region;
    /* a process killed inside a fast path left a record and its magazine
     * disagreeing: that is what reclaim is for, not corruption */
    reclaim_dead(c, false, false);
    quiesce(c); /* a still picture: every living process's fast paths wait */
    size_t bad = 0;
    rebuild(c, &bad);
    if (bad)
        tally(count, first, first_report,
              kmc__report(KMC_ECORRUPT, c, NULL,
                          "free bitmaps of %s disagree with its object records in %zu "
                          "slot(s); rebuilt from the records",
                          c->name, bad),
              bad);
    /* every magazine holds exactly its process's cached objects */
    for (uint32_t s = 0; s < r->lay.max_procs; s++) {
        kmc_proc_t *p = &r->procs[s];
        if (KMC_LOAD(&p->state) != PROC_ALIVE)
            continue;
        uint32_t n = KMC_LOAD(&p->mag_count), ok = 0;
        for (uint32_t i = 0; i < n && i < MAG_MAX; i++) {
            uint32_t sidx, idx;
            uint64_t off = KMC_LOAD(&p->mag[i]);
            if (slot_of(c, off, &sidx, &idx)) {
                uint64_t w = KMC_LOAD(rec_at(r, c, sidx, idx));
                ok += rec_state(w) == REC_CACHED && rec_slot(w) == s;
            }
        }
        uint64_t cached = count_records(c, REC_CACHED, s);
        if (ok != n || cached != n) {
            tally(count, first, first_report,
                  kmc__report(KMC_ECORRUPT, c, NULL,
                              "the magazine of process %d (slot %u) of %s lists %u object(s), "
                              "%u of them cached, where the records cache %llu; refilled "
                              "from the records",
                              p->pid, s, c->name, n, ok, (unsigned long long)cached),
                  1);
            uint32_t k = 0;
            for (uint32_t i = 0; i < r->arena.nslabs; i++) {
                if (!kmc__slab_committed(kmc__slab_state(&r->arena.slabs[i])))
                    continue;
                for (uint32_t idx = 0; idx < c->objperslab; idx++) {
                    _Atomic uint64_t *rec = rec_at(r, c, i, idx);
                    uint64_t w = KMC_LOAD(rec);
                    if (rec_state(w) != REC_CACHED || rec_slot(w) != s)
                        continue;
                    if (k < MAG_MAX && k < r->lay.mag_cap) {
                        KMC_STORE(&p->mag[k++], off_of(c, i, idx));
                    } else { /* no room: back to the depot */
                        KMC_STORE(rec, rec_word(REC_FREE, 0, 0, rec_gen(w)));
                        to_depot(c, i, idx, false);
                    }
                }
            }
            KMC_STORE(&p->mag_count, k);
        }
    }
    /* live objects nobody can free any more */
    uint64_t none[KMC_SHARED_MAX_PROCS / 64] = {0};
    size_t orphans = scan_release(c, none, true, false);
    r->hdr->reclaimed -= orphans;
    if (orphans)
        tally(count, first, first_report,
              kmc__report(KMC_ECORRUPT, c, NULL,
                          "%zu live object(s) of %s had no holder left; freed", orphans, c->name),
              orphans);
}

void kmc__shared_validate_end(kmc_cache_t *c, size_t *count, kmc_status *first,
                              kmc_report_t *first_report)
{
    kmc_stats_t s = {0};
    kmc__shared_stats(c, &s);
    uint64_t live = count_records(c, REC_LIVE, KMC_NIL);
    if (live != s.active_objs)
        tally(count, first, first_report,
              kmc__report(KMC_ECORRUPT, c, NULL,
                          "counters of %s do not add up: %llu live objects, the counters say "
                          "%llu",
                          c->name, (unsigned long long)live, (unsigned long long)s.active_objs),
              recount(c));
    unquiesce(c);
}

/* --- create, attach, detach ---------------------------------------------------------- */

kmc_status kmc_shared_region_name(const char *name, char *out, size_t size)
{
    if (!kmc__valid_name(name) || strchr(name, '/'))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "shared cache name must be 1 to %d printable bytes without spaces "
                           "or '/'",
                           KMC_NAME_MAX - 1);
    int n = snprintf(out, size, KMC_SHARED_PREFIX "%u.%s", (unsigned)getuid(), name);
    if (n < 0 || (size_t)n >= size)
        return kmc__report(KMC_EINVAL, NULL, NULL, "shared cache name too long");
    return KMC_OK;
}

static size_t round_to(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

typedef struct plan_s {
    uint64_t procs_at, slabs_at, local_at, remote_at, orig_at, records_at, meta_bytes;
    uint64_t nslabs, rec_words;
} plan_t;

static void plan_offsets(const kmc_cache_t *c, uint64_t nslabs, uint32_t procs, plan_t *p)
{
    size_t page = kmc_page_size();
    p->nslabs = nslabs;
    p->rec_words = 1 + (procs + 63) / 64;
    p->procs_at = round_to(sizeof(kmc_shm_header_t), 64);
    p->slabs_at = round_to(p->procs_at + (uint64_t)procs * sizeof(kmc_proc_t), 64);
    p->local_at = round_to(p->slabs_at + nslabs * sizeof(kmc_slab_t), 64);
    p->remote_at = round_to(p->local_at + nslabs * c->bitmap_words * 8, 64);
    p->orig_at = round_to(p->remote_at + nslabs * c->bitmap_words * 8, 64);
    uint64_t orig = (c->flags & KMC_RED_ZONE) ? nslabs * c->objperslab * 4 : 0;
    p->records_at = round_to(p->orig_at + orig, page);
    p->meta_bytes = round_to(p->records_at + nslabs * c->objperslab * p->rec_words * 8, page);
}

/* The most slabs a region of @capacity bytes holds, in units that keep the
 * slab area a multiple of 1 MiB (the owner table's grain); the layout's
 * slab size grows until their ids fit. 0 with a report when none fit. */
static kmc_status plan_region(kmc_cache_t *c, size_t capacity, uint32_t procs, plan_t *p)
{
    for (unsigned min_shift = 0;;) {
        kmc__cache_layout(c, min_shift);
        uint64_t unit = c->slab_size >= ((size_t)1 << KMC_ARENA_MIN_SHIFT)
                            ? 1
                            : ((size_t)1 << KMC_ARENA_MIN_SHIFT) / c->slab_size;
        plan_offsets(c, 0, procs, p);
        uint64_t fixed = p->meta_bytes + 8 * kmc_page_size();
        uint64_t per_slab = c->slab_size + sizeof(kmc_slab_t) + 16 * c->bitmap_words +
                            (uint64_t)c->objperslab * (p->rec_words * 8 + 4);
        uint64_t n = capacity > fixed ? (capacity - fixed) / per_slab : 0;
        n -= n % unit;
        for (;;) {
            plan_offsets(c, n, procs, p);
            if (n == 0 || p->meta_bytes + (n << c->slab_shift) <= capacity)
                break;
            n -= unit;
        }
        if (n == 0) {
            plan_offsets(c, unit, procs, p);
            return kmc__report(
                KMC_EINVAL, NULL, NULL,
                "capacity %zu is too small for shared cache %s: %llu bytes at "
                "least (%llu of metadata, %llu of slabs)",
                capacity, c->name, (unsigned long long)(p->meta_bytes + (unit << c->slab_shift)),
                (unsigned long long)p->meta_bytes, (unsigned long long)(unit << c->slab_shift));
        }
        if (n < (1u << KMC_SLAB_ID_SHIFT))
            return KMC_OK;
        if (c->slab_shift >= KMC_MAX_SLAB_SHIFT)
            return kmc__report(KMC_EINVAL, NULL, NULL,
                               "capacity %zu is too large for shared cache %s", capacity, c->name);
        min_shift = c->slab_shift + 1;
    }
}

static uint32_t magazine_cap(const kmc_cache_t *c, uint64_t objects, uint32_t procs)
{
    if ((c->flags & KMC_DEBUG_FLAGS))
        return 0;
    uint64_t cap = MAG_MAX;
    if (cap > MAG_BYTES / c->slot_size)
        cap = MAG_BYTES / c->slot_size;
    if (cap > objects / (4 * (uint64_t)procs))
        cap = objects / (4 * (uint64_t)procs);
    return cap < 2 ? 0 : (uint32_t)cap;
}

/* Map the slab area of @r->fd as r->lay (checked) says and fill in @c's
 * arena. */
static kmc_status map_region(kmc_cache_t *c, kmc_region_t *r)
{
    const kmc_shm_layout_t *l = &r->lay;
    size_t align = c->slab_size > ((size_t)1 << KMC_ARENA_MIN_SHIFT)
                       ? c->slab_size
                       : (size_t)1 << KMC_ARENA_MIN_SHIFT;
    r->slabs_len = (size_t)l->nslabs << c->slab_shift;
    void *slabs;
    int rc = kmc__shm_map(r->fd, l->meta_bytes, r->slabs_len, align, true, &slabs);
    if (rc != 0) {
        kmc__report(rc == ENOMEM ? KMC_ENOMEM : KMC_EOS, c, NULL,
                    "cannot map the %zu-byte slab area of shared cache %s", r->slabs_len, c->name);
        kmc__report_slot()->os_error = rc;
        return kmc_last_report()->status;
    }
    r->slabs = slabs;
    uint8_t *m = (uint8_t *)r->hdr;
    r->procs = (kmc_proc_t *)(m + l->procs_at);
    r->records = (_Atomic uint64_t *)(m + l->records_at);
    r->rec_words = (uint32_t)l->rec_words;
    kmc_arena_t *a = &r->arena;
    a->base = (uintptr_t)slabs;
    a->bytes = r->slabs_len;
    a->nslabs = (uint32_t)l->nslabs;
    a->bump = a->nslabs; /* every slot is on the released list or in use */
    a->slabs = (kmc_slab_t *)(m + l->slabs_at);
    a->local = (_Atomic uint64_t *)(m + l->local_at);
    a->remote = (_Atomic uint64_t *)(m + l->remote_at);
    a->orig = (c->flags & KMC_RED_ZONE) ? (uint32_t *)(m + l->orig_at) : NULL;
    a->meta_bytes = 0; /* counted as the region's */
    r->mag_cap = kmc__option(KMC_OPTION_THREAD_CACHES) ? (uint32_t)l->mag_cap : 0;
    c->d = &r->hdr->depot;
    c->heaps_on = false;
    return kmc__arena_install(c, a);
}

static void region_free(kmc_region_t *r)
{
    if (!r)
        return;
    if (r->slabs)
        kmc__shm_unmap(r->slabs, r->slabs_len);
    if (r->hdr)
        kmc__shm_unmap(r->hdr, r->meta_len);
    if (r->fd >= 0)
        kmc__shm_close(r->fd);
    pthread_mutex_destroy(&r->reg_lock);
    free(r->quiesced);
    free(r);
}

static kmc_region_t *region_new(void)
{
    kmc_region_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
    r->self = KMC_NIL;
    r->quiesced = calloc(KMC_SHARED_MAX_PROCS / 64, sizeof(uint64_t));
    pthread_mutex_init(&r->reg_lock, NULL);
    if (!r->quiesced) {
        region_free(r);
        return NULL;
    }
    return r;
}

static kmc_status os_report(int rc, const kmc_cache_t *c, const char *what, const char *path)
{
    kmc_status st = rc == ENOMEM || rc == ENOSPC ? KMC_ENOMEM : KMC_EOS;
    kmc__report(st, c, NULL, "%s %s: %s", what, path, strerror(rc));
    kmc__report_slot()->os_error = rc;
    return st;
}

/* Why the file at @path is not trusted (kmc__shm_open's refusals), or the
 * OS's own error. */
static kmc_status open_report(int rc, const kmc_shm_owner_t *who, const char *what,
                              const char *path)
{
    kmc_status st;
    if (rc == EPERM) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s belongs to uid %u, not to this user (uid %u): another user made a "
                         "file under this name, and it is not trusted (have that user or root "
                         "remove it, or pick another name)",
                         path, who->uid, (unsigned)geteuid());
    } else if (rc == EACCES && (who->mode & 077)) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s has mode %04o: other users may read or write it, so it is not "
                         "trusted (a region is made 0600)",
                         path, who->mode & 07777);
    } else if (rc == EINVAL && who->mode) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s is not a regular file (file type %06o): not a shared cache region",
                         path, who->mode & 0170000);
    } else {
        kmc_status s = rc == ENOMEM || rc == ENOSPC ? KMC_ENOMEM : KMC_EOS;
        st = kmc__report(s, NULL, NULL, "%s %s: %s", what, path, strerror(rc));
    }
    kmc__report_slot()->os_error = rc;
    return st;
}

static void cache_free(kmc_cache_t *c)
{
    if (!c)
        return;
    if (c->region && c->nr_arenas)
        kmc__arena_uninstall(c, &c->region->arena);
    region_free(c->region);
    free(c);
}

kmc_status kmc_shared_create(const char *name, size_t size, size_t align, unsigned flags,
                             size_t capacity, unsigned max_procs, kmc_ctor_fn ctor, void *ctor_arg,
                             kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    if (max_procs == 0)
        max_procs = KMC_SHARED_DEFAULT_PROCS;
    if (max_procs > KMC_SHARED_MAX_PROCS)
        return kmc__report(KMC_EINVAL, NULL, NULL, "max_procs %u is not in 1..%u", max_procs,
                           KMC_SHARED_MAX_PROCS);
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    kmc_cache_t *c = kmc__cache_new();
    kmc_region_t *r = c ? region_new() : NULL;
    if (!r) {
        free(c);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the cache");
    }
    c->region = r;
    st = kmc__cache_setup(c, name, size, align, flags, ctor, ctor_arg);
    plan_t p;
    if (st == KMC_OK)
        st = plan_region(c, capacity, max_procs, &p);
    c->region = r; /* setup does not touch it; the layout is final now */
    if (st != KMC_OK) {
        c->region = NULL;
        cache_free(c);
        region_free(r);
        return st;
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_open(path, true, &r->fd, &who);
    if (rc == EEXIST && kmc__shm_owner(path, &who) == 0 && who.uid != (unsigned)geteuid()) {
        st = kmc__report(KMC_EEXIST, NULL, NULL,
                         "cannot create shared cache %s: %s exists already and belongs to uid "
                         "%u, not to this user (uid %u); another user took the name (have them "
                         "or root remove it, or pick another name)",
                         name, path, who.uid, (unsigned)geteuid());
        kmc__report_slot()->os_error = EEXIST;
        c->region = NULL;
        free(c);
        region_free(r);
        return st;
    }
    if (rc != 0) {
        st = rc == EEXIST ? kmc__report(KMC_EEXIST, NULL, NULL,
                                        "shared cache %s exists already (%s): attach it, or "
                                        "unlink it first",
                                        name, path)
                          : open_report(rc, &who, "cannot create", path);
        if (rc == EEXIST)
            kmc__report_slot()->os_error = EEXIST;
        c->region = NULL;
        free(c);
        region_free(r);
        return st;
    }
    uint64_t total = p.meta_bytes + (p.nslabs << c->slab_shift);
    r->meta_len = p.meta_bytes;
    void *meta = NULL;
    if ((rc = kmc__shm_truncate(r->fd, total)) != 0 ||
        (rc = kmc__shm_commit(r->fd, 0, p.records_at)) != 0 ||
        (rc = kmc__shm_map(r->fd, 0, p.meta_bytes, 0, true, &meta)) != 0) {
        st = os_report(rc, c, "cannot set up the region", path);
        goto fail;
    }
    r->hdr = meta;
    kmc_shm_header_t *h = r->hdr;
    kmc_shm_layout_t *l = &r->lay;
    l->version = SHM_VERSION;
    l->header_bytes = sizeof(*h);
    l->abi = SHM_ABI;
    l->nonce = kmc__shm_nonce();
    memcpy(l->name, c->name, sizeof(l->name));
    l->size = c->size;
    l->align = c->align;
    l->flags = c->flags;
    l->slab_shift = c->slab_shift;
    l->slot_size = c->slot_size;
    l->obj_offset = c->obj_offset;
    l->objperslab = c->objperslab;
    l->bitmap_words = c->bitmap_words;
    l->nslabs = p.nslabs;
    l->max_procs = max_procs;
    l->mag_cap = magazine_cap(c, p.nslabs * c->objperslab, max_procs);
    l->has_ctor = ctor != NULL;
    l->capacity = capacity;
    l->rec_words = p.rec_words;
    l->procs_at = p.procs_at;
    l->slabs_at = p.slabs_at;
    l->local_at = p.local_at;
    l->remote_at = p.remote_at;
    l->orig_at = p.orig_at;
    l->records_at = p.records_at;
    l->meta_bytes = p.meta_bytes;
    l->region_bytes = total;
    {
        int pid;
        uint64_t start, ns;
        (void)kmc__shm_self(&pid, &start, &ns);
        l->creator_pid = pid;
        l->creator_start = start;
    }
    h->l = *l;
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    rc = pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    if (rc != 0) {
        st = os_report(rc, c, "cannot make the lock of", path);
        goto fail;
    }
    h->depot.partial = h->depot.empty = h->depot.released = (kmc_list_t){KMC_NIL, KMC_NIL, 0};
    if ((st = map_region(c, r)) != KMC_OK)
        goto fail;
    for (uint32_t i = (uint32_t)p.nslabs; i-- > 0;) { /* slab 0 first out */
        kmc__slab_set_state(&r->arena.slabs[i], KMC_SLAB_RELEASED);
        kmc__list_push(c, &h->depot.released, i);
    }
    atomic_store_explicit(&h->magic, SHM_MAGIC, memory_order_release);
    if (register_self(c) == KMC_NIL) {
        st = kmc_last_report()->status;
        goto fail;
    }
    kmc__cache_link(c);
    *out = c;
    return KMC_OK;
fail:
    kmc__shm_unlink(path, &who);
    cache_free(c);
    return st;
}

/* Check a region's layout @h (a private copy) against what this engine
 * would do: every offset and size in it is the one this engine computes
 * from the few numbers it starts from, each checked for range first, and
 * the file is as large as the layout says. */
static kmc_status check_header(kmc_cache_t *c, const kmc_shm_layout_t *h, uint64_t file_size,
                               const char *path)
{
    if (h->version != SHM_VERSION || h->header_bytes != sizeof(kmc_shm_header_t) ||
        h->abi != SHM_ABI)
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "%s was made by another version of kmemcache (region version %u, "
                           "this one reads %u)",
                           path, h->version, SHM_VERSION);
    char name[KMC_NAME_MAX];
    memcpy(name, h->name, sizeof(name));
    name[KMC_NAME_MAX - 1] = 0;
    kmc_status st = h->size <= SIZE_MAX && h->align <= SIZE_MAX && h->flags <= UINT32_MAX
                        ? kmc__cache_setup(c, name, (size_t)h->size, (size_t)h->align,
                                           (unsigned)h->flags, c->ctor, c->ctor_arg)
                        : KMC_EINVAL;
    if (st == KMC_OK && h->slab_shift <= KMC_MAX_SLAB_SHIFT)
        kmc__cache_layout(c, (unsigned)h->slab_shift);
    plan_t p;
    if (st == KMC_OK && h->max_procs >= 1 && h->max_procs <= KMC_SHARED_MAX_PROCS &&
        h->nslabs >= 1 && h->nslabs < (1u << KMC_SLAB_ID_SHIFT))
        plan_offsets(c, h->nslabs, (uint32_t)h->max_procs, &p);
    else
        st = KMC_EINVAL;
    if (st != KMC_OK || c->slab_shift != h->slab_shift || c->slot_size != h->slot_size ||
        c->obj_offset != h->obj_offset || c->objperslab != h->objperslab ||
        c->bitmap_words != h->bitmap_words || p.procs_at != h->procs_at ||
        p.slabs_at != h->slabs_at || p.local_at != h->local_at || p.remote_at != h->remote_at ||
        p.orig_at != h->orig_at || p.records_at != h->records_at || p.meta_bytes != h->meta_bytes ||
        p.rec_words != h->rec_words || h->mag_cap > MAG_MAX || h->has_ctor > 1 ||
        h->region_bytes != h->meta_bytes + (h->nslabs << h->slab_shift) ||
        file_size < h->region_bytes)
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "%s is not a shared cache region this kmemcache can use: its "
                           "layout does not check out",
                           path);
    return KMC_OK;
}

kmc_status kmc_shared_attach(const char *name, kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    kmc_cache_t *c = kmc__cache_new();
    kmc_region_t *r = c ? region_new() : NULL;
    if (!r) {
        free(c);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the cache");
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    c->ctor = ctor;
    c->ctor_arg = ctor_arg;
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_open(path, false, &r->fd, &who);
    if (rc != 0) {
        st = rc == ENOENT
                 ? kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path)
                 : open_report(rc, &who, "cannot open", path);
        if (rc == ENOENT)
            kmc__report_slot()->os_error = ENOENT;
        goto fail;
    }
    /* the header first, to learn the rest; wait for a creator still at work */
    size_t head = round_to(sizeof(kmc_shm_header_t), kmc_page_size());
    uint64_t file_size = 0;
    void *hp = NULL;
    for (uint32_t waited = 0;; waited++) {
        if ((rc = kmc__shm_size(r->fd, &file_size)) != 0) {
            st = os_report(rc, NULL, "cannot read", path);
            goto fail;
        }
        if (file_size >= head) {
            if ((rc = kmc__shm_map(r->fd, 0, head, 0, false, &hp)) != 0) {
                st = os_report(rc, NULL, "cannot map", path);
                goto fail;
            }
            kmc_shm_header_t *h = hp;
            if (atomic_load_explicit(&h->magic, memory_order_acquire) == SHM_MAGIC)
                break;
            int creator = h->l.creator_pid;
            uint64_t cstart = h->l.creator_start, now_start;
            kmc__shm_unmap(hp, head);
            hp = NULL;
            if (creator > 0 && kmc__shm_proc_start(creator, &now_start) == ESRCH) {
                st = kmc__report(KMC_EINVAL, NULL, NULL,
                                 "%s was never finished: its creator (pid %d) died while "
                                 "making it; unlink it",
                                 path, creator);
                (void)cstart;
                goto fail;
            }
        }
        if (waited >= ATTACH_WAIT_MS) {
            st = kmc__report(KMC_EINVAL, NULL, NULL,
                             "%s is not a shared cache region (or its creator has not "
                             "finished it in %u ms)",
                             path, ATTACH_WAIT_MS);
            goto fail;
        }
        usleep(1000);
    }
    memcpy(&r->lay, &((kmc_shm_header_t *)hp)->l, sizeof(r->lay)); /* once: the copy is used */
    kmc__shm_unmap(hp, head);
    st = check_header(c, &r->lay, file_size, path);
    if (st == KMC_OK && ctor && !r->lay.has_ctor)
        st = kmc__report(KMC_EINVAL, NULL, NULL,
                         "shared cache %s was made without a constructor: attach it "
                         "without one",
                         name);
    if (st != KMC_OK)
        goto fail;
    void *meta;
    if ((rc = kmc__shm_map(r->fd, 0, r->lay.meta_bytes, 0, true, &meta)) != 0) {
        st = os_report(rc, c, "cannot map", path);
        goto fail;
    }
    r->hdr = meta;
    r->meta_len = r->lay.meta_bytes;
    c->region = r;
    if ((st = map_region(c, r)) != KMC_OK)
        goto fail;
    if (register_self(c) == KMC_NIL) {
        st = kmc_last_report()->status;
        goto fail;
    }
    kmc__cache_link(c);
    *out = c;
    return KMC_OK;
fail:
    c->region = r;
    cache_free(c);
    return st;
}

void kmc_shared_leave(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        return;
    kmc__region_lock(c);
    if (!owns(r, me)) {
        KMC_STORE(&r->self, KMC_NIL);
        kmc__region_unlock(c);
        return;
    }
    proc_lock(c, me, me, true);
    flush(c, me, 0);
    uint64_t mine[KMC_SHARED_MAX_PROCS / 64] = {0};
    mine[me / 64] |= UINT64_C(1) << (me % 64);
    size_t n = scan_release(c, mine, false, false);
    r->hdr->reclaimed -= n; /* let go of, not reclaimed */
    proc_retire(r, me);
    KMC_STORE(&r->self, KMC_NIL);
    kmc__region_unlock(c);
}

/* Only the free objects go: nothing names them. The objects this process
 * holds stay held until it is found dead, because until then its threads
 * and exit handlers may still write through pointers they have, and a slot
 * given back now could already be another process's object. */
void kmc_shared_exiting(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        return;
    kmc__region_lock(c);
    kmc__shared_flush_mine(c);
    kmc__region_unlock(c);
}

kmc_status kmc_shared_detach(kmc_cache_t *c)
{
    kmc__report_clear();
    kmc_shared_leave(c);
    pthread_mutex_lock(&kmc__caches_lock);
    kmc__cache_unlink(c);
    pthread_mutex_unlock(&kmc__caches_lock);
    cache_free(c);
    return KMC_OK;
}

static kmc_status unlink_path(const char *name, const char *path)
{
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_unlink(path, &who);
    if (rc == ENOENT) {
        kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path);
        kmc__report_slot()->os_error = ENOENT;
        return KMC_ENOENT;
    }
    if (rc == EPERM) {
        kmc__report(KMC_EOS, NULL, NULL,
                    "refusing to unlink %s: it belongs to uid %u, not to this user (uid %u)", path,
                    who.uid, (unsigned)geteuid());
        kmc__report_slot()->os_error = EPERM;
        return KMC_EOS;
    }
    return rc ? os_report(rc, NULL, "cannot unlink", path) : KMC_OK;
}

kmc_status kmc_shared_unlink(const char *name)
{
    kmc__report_clear();
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    return unlink_path(name, path);
}

kmc_status kmc_shared_unlink_cache(kmc_cache_t *c)
{
    kmc__report_clear();
    return unlink_path(c->name, c->region->path);
}

/* @l: the checked copy of the region's layout; @h and @procs: the live
 * mapping, for counters only. */
static void fill_info(const kmc_shm_layout_t *l, const kmc_shm_header_t *h, const kmc_proc_t *procs,
                      const char *path, kmc_shared_info_t *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->region, sizeof(o->region), "%s", path);
    o->nonce = l->nonce;
    o->capacity = l->capacity;
    o->region_bytes = l->region_bytes;
    o->meta_bytes = l->meta_bytes;
    o->slab_bytes = l->region_bytes - l->meta_bytes;
    o->nslabs = l->nslabs;
    o->max_procs = l->max_procs;
    o->magazine = l->mag_cap;
    o->recoveries = h->recoveries;
    o->reclaimed = h->reclaimed;
    o->pickled = h->tickets;
    o->creator_pid = l->creator_pid;
    o->self = -1;
    for (uint32_t s = 0; s < l->max_procs; s++)
        o->procs += KMC_LOAD(&((kmc_proc_t *)procs)[s].state) == PROC_ALIVE;
}

void kmc_shared_info(kmc_cache_t *c, kmc_shared_info_t *out)
{
    kmc_region_t *r = c->region;
    kmc__region_lock(c);
    fill_info(&r->lay, r->hdr, r->procs, r->path, out);
    uint32_t me = KMC_LOAD(&r->self);
    out->self = me == KMC_NIL ? -1 : (int)me;
    kmc__region_unlock(c);
}

/* Counters of region @l (checked) mapped read-only at @meta. Nothing but
 * counts is read from the mapping, and only inside the bounds @l gives. */
static void peek_stats(const kmc_shm_layout_t *l, const void *meta, kmc_stats_t *o)
{
    const kmc_shm_header_t *m = meta;
    const kmc_proc_t *procs = (const kmc_proc_t *)((const uint8_t *)meta + l->procs_at);
    memset(o, 0, sizeof(*o));
    uint64_t allocs = m->gone_allocs, frees = m->gone_frees, cached = 0, caches = 0;
    for (uint32_t s = 0; s < l->max_procs; s++) {
        kmc_proc_t *p = (kmc_proc_t *)&procs[s];
        if (KMC_LOAD(&p->state) != PROC_ALIVE)
            continue;
        allocs += KMC_LOAD(&p->allocs);
        frees += KMC_LOAD(&p->frees);
        uint32_t n = KMC_LOAD(&p->mag_count);
        cached += n;
        caches += n != 0;
    }
    const kmc_depot_t *d = &m->depot;
    uint64_t nslabs = d->num_slabs, empty = d->empty.count;
    o->allocs = allocs;
    o->frees = frees;
    o->active_objs = allocs - frees;
    o->num_objs = nslabs * l->objperslab;
    o->objsize = l->slot_size;
    o->objperslab = l->objperslab;
    o->slab_size = (uint64_t)1 << l->slab_shift;
    o->pagesperslab = o->slab_size / kmc_page_size();
    o->empty_slabs = empty;
    o->partial_slabs = d->partial.count;
    o->num_slabs = nslabs;
    o->active_slabs = nslabs - empty;
    o->size = l->size;
    o->align = l->align;
    o->cached_objs = cached;
    o->thread_caches = caches;
    o->slabs_created = d->slabs_created;
    o->slabs_released = d->slabs_released;
    o->committed_bytes = nslabs << l->slab_shift;
    o->metadata_bytes = l->meta_bytes;
    o->reserved_bytes = l->region_bytes - l->meta_bytes;
    o->arenas = 1;
    o->bitmap_words = l->bitmap_words;
    o->flags = l->flags;
}

kmc_status kmc_shared_peek(const char *name, kmc_stats_t *o, kmc_shared_info_t *info)
{
    kmc__report_clear();
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    kmc_shm_owner_t who = {0, 0};
    int fd, rc = kmc__shm_open_readonly(path, &fd, &who);
    if (rc != 0) {
        if (rc == ENOENT)
            return kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path);
        return open_report(rc, &who, "cannot open", path);
    }
    uint64_t file_size = 0;
    size_t head = round_to(sizeof(kmc_shm_header_t), kmc_page_size());
    void *hp = NULL;
    st = KMC_EINVAL;
    if (kmc__shm_size(fd, &file_size) == 0 && file_size >= head &&
        kmc__shm_map(fd, 0, head, 0, false, &hp) == 0) {
        /* the header copied once, the copy checked, and only the copy read */
        kmc_shm_header_t *h = hp;
        bool made = atomic_load_explicit(&h->magic, memory_order_acquire) == SHM_MAGIC;
        kmc_shm_layout_t lay;
        memcpy(&lay, &h->l, sizeof(lay));
        kmc__shm_unmap(hp, head);
        kmc_cache_t *probe = kmc__cache_new();
        void *meta;
        if (probe && made && check_header(probe, &lay, file_size, path) == KMC_OK &&
            kmc__shm_map(fd, 0, lay.meta_bytes, 0, false, &meta) == 0) {
            peek_stats(&lay, meta, o);
            if (info)
                fill_info(&lay, meta, (const kmc_proc_t *)((const uint8_t *)meta + lay.procs_at),
                          path, info);
            st = KMC_OK;
            kmc__shm_unmap(meta, lay.meta_bytes);
        }
        free(probe);
    }
    kmc__shm_close(fd);
    if (st != KMC_OK && kmc_last_report()->status == KMC_OK)
        kmc__report(KMC_EINVAL, NULL, NULL, "%s is not a shared cache region", path);
    return st != KMC_OK ? kmc_last_report()->status : KMC_OK;
}
