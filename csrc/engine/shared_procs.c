/*
 * shared_procs.c - the shared backing's processes: the process table (who is
 * attached, and whether a slot's process is alive), the region lock and
 * recovery when its holder died, registering this process, and reclaiming
 * what dead processes held. shared.h gives the design.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared.h"

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

/* Take slot @s's lock for @me, however long its holder keeps it; a holder
 * that died is broken. @region_locked: the caller holds the region lock
 * (else a dead holder is left to recovery, which the region lock runs). */
void kmc__shared_proc_lock(kmc_cache_t *c, uint32_t s, uint32_t me, bool region_locked)
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

/* The counters of the processes in a table of @n slots, with those of the
 * processes gone (@h): @o's allocs, frees, active_objs, cached_objs and
 * thread_caches. A table another process writes: only counts are read. */
void kmc__shared_count_procs(const kmc_proc_t *procs, uint32_t n, const kmc_shm_header_t *h,
                             kmc_stats_t *o)
{
    uint64_t allocs = h->gone_allocs, frees = h->gone_frees, cached = 0, caches = 0;
    for (uint32_t s = 0; s < n; s++) {
        kmc_proc_t *p = (kmc_proc_t *)&procs[s];
        if (KMC_LOAD(&p->state) != PROC_ALIVE)
            continue;
        allocs += KMC_LOAD(&p->allocs);
        frees += KMC_LOAD(&p->frees);
        uint32_t k = KMC_LOAD(&p->mag_count);
        cached += k;
        caches += k != 0;
    }
    o->allocs = allocs;
    o->frees = frees;
    o->active_objs = allocs - frees;
    o->cached_objs = cached;
    o->thread_caches = caches;
}

/* --- the region lock and recovery --------------------------------------------------- */

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
    kmc__shared_rebuild(c, NULL);
    kmc__shared_reclaim_dead(c, false, true);
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
        kmc__shared_rebuild(c, NULL);
}

void kmc__region_unlock(kmc_cache_t *c) { pthread_mutex_unlock(&c->region->hdr->lock); }

/* Rebuild bitmaps, counts, states and lists from the records; slabs whose
 * builder died are released; *@mismatches (if not NULL) gets the slots
 * whose bit disagreed. Concurrent fast paths move records between CACHED
 * and LIVE only, which leaves every bit as it is. Region locked. */
void kmc__shared_rebuild(kmc_cache_t *c, size_t *mismatches)
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
size_t kmc__shared_scan_release(kmc_cache_t *c, const uint64_t *dead, bool orphans, bool pickled)
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
                    kmc__shared_to_depot(c, i, idx, false);
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
                if (!kmc__shared_end_live(c, KMC_NIL, i, idx, w))
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
void kmc__shared_proc_retire(kmc_region_t *r, uint32_t s)
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
void kmc__shared_quiesce(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        me = KMC_SHARED_MAX_PROCS; /* a lock word that names no slot */
    memset(r->quiesced, 0, KMC_SHARED_MAX_PROCS / 8);
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if (KMC_LOAD(&r->procs[s].state) == PROC_ALIVE) {
            kmc__shared_proc_lock(c, s, me, true);
            r->quiesced[s / 64] |= UINT64_C(1) << (s % 64);
        }
}

void kmc__shared_unquiesce(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if ((r->quiesced[s / 64] >> (s % 64)) & 1)
            proc_unlock(&r->procs[s]);
    memset(r->quiesced, 0, KMC_SHARED_MAX_PROCS / 8);
}

/* Make the counters say what the records say: a process killed inside a
 * fast path may have changed a record and not its count. Returns how far
 * off they were. Region locked and quiesced. */
uint64_t kmc__shared_recount(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    kmc_stats_t s = {0};
    kmc__shared_stats(c, &s);
    uint64_t live = kmc__shared_count_records(c, REC_LIVE, KMC_NIL);
    r->hdr->gone_allocs += live - s.active_objs;
    return live > s.active_objs ? live - s.active_objs : s.active_objs - live;
}

/* Find the dead processes and give back what they held; with @orphans,
 * also what no process can free any more; then the counters are made
 * exact. Region locked, and not this process's slot lock. */
size_t kmc__shared_reclaim_dead(kmc_cache_t *c, bool pickled, bool orphans)
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
    size_t n = kmc__shared_scan_release(c, dead, orphans, pickled);
    for (uint32_t s = 0; s < r->lay.max_procs; s++)
        if ((dead[s / 64] >> (s % 64)) & 1)
            kmc__shared_proc_retire(r, s);
    if (any) {
        kmc__shared_quiesce(c);
        kmc__shared_recount(c);
        kmc__shared_unquiesce(c);
    }
    return n;
}

size_t kmc_shared_reclaim(kmc_cache_t *c, int pickled)
{
    kmc__report_clear();
    kmc__region_lock(c);
    size_t n = kmc__shared_reclaim_dead(c, pickled != 0, true);
    kmc__region_unlock(c);
    return n;
}

/* --- registering this process ---------------------------------------------------- */

/* Give this process a slot. Region not locked. KMC_NIL with a report when
 * every slot is taken by a living process. */
uint32_t kmc__shared_register_self(kmc_cache_t *c)
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
    kmc__shared_reclaim_dead(c, false, false);
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

void kmc__shared_after_fork(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    KMC_STORE(&r->self, KMC_NIL); /* the parent's slot is the parent's */
    pthread_mutex_init(&r->reg_lock, NULL);
}
