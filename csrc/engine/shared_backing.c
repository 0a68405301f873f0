/*
 * shared_backing.c - what cache.c asks of a shared cache: the backing's
 * operations (internal.h), validate's check of the records against the
 * bitmaps and magazines, stats, and the test hooks that kill a process at
 * a chosen step. shared.h gives the design.
 */
#include <stdlib.h>
#include <string.h>

#include "shared.h"

/* --- test hook: die at a crash point ------------------------------------------ */

_Atomic long kmc__shared_crash_countdown;

void kmc_shared_crash_after(long n) { atomic_store(&kmc__shared_crash_countdown, n < 0 ? 0 : n); }

KMC_NOINLINE void kmc__shared_crash_slow(void)
{
    if (atomic_fetch_sub(&kmc__shared_crash_countdown, 1) == 1)
        kmc__shm_die();
}

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

/* --- slabs: the records are the truth ------------------------------------------------ */

static bool is_live(const kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    return rec_state(KMC_LOAD(rec_at(c->region, c, kmc__slab_index(id), idx))) == REC_LIVE;
}

static kmc_status may_grow(kmc_cache_t *c)
{
    if (c->region->lay.has_ctor && !c->ctor)
        return kmc__report(KMC_ECTOR, c, NULL,
                           "shared cache %s has a constructor, which this process did not "
                           "give when it attached: it cannot build slabs",
                           c->name);
    return KMC_OK;
}

/* The region's slab area is its one arena, all of it laid out at create. */
static kmc_status new_arena(kmc_cache_t *c, kmc_arena_t **out)
{
    (void)out;
    return kmc__report(KMC_ENOMEM, c, NULL,
                       "shared cache %s is full: all %u slabs of its region are in use", c->name,
                       (unsigned)c->region->arena.nslabs);
}

/* Whoever recovers knows whose slab this is: the builder's slot + 1. */
static void claim(kmc_cache_t *c, uint32_t id)
{
    uint32_t me = KMC_LOAD(&c->region->self);
    KMC_STORE(&kmc__slab(c, id)->owner, me == KMC_NIL ? KMC_DEPOT : me + 1);
}

/* A slab's records and memory. */
static int commit(kmc_cache_t *c, uint32_t id)
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

/* The state first: a crash between the two leaves a released slab still
 * backed (recovery punches it), never a used one without memory. */
static void release(kmc_cache_t *c, uint32_t id)
{
    kmc_region_t *r = c->region;
    kmc__slab_set_state(kmc__slab(c, id), KMC_SLAB_RELEASED);
    CRASH_POINT();
    kmc__shm_decommit(r->fd, r->lay.meta_bytes + ((uint64_t)kmc__slab_index(id) << c->slab_shift),
                      c->slab_size);
}

/* --- flush, stats, validate -------------------------------------------------------------- */

void kmc__shared_flush_mine(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL || !owns(r, me))
        return;
    kmc__shared_proc_lock(c, me, me, true);
    kmc__shared_flush(c, me, 0);
    proc_unlock(&r->procs[me]);
}

void kmc__shared_stats(kmc_cache_t *c, kmc_stats_t *o)
{
    kmc_region_t *r = c->region;
    kmc__shared_count_procs(r->procs, (uint32_t)r->lay.max_procs, r->hdr, o);
    o->remote_frees = 0;
    o->metadata_bytes = r->lay.meta_bytes;
    o->reserved_bytes = r->slabs_len;
    o->arenas = 1;
}

/* The live objects, counted from the records (every slot quiesced). */
uint64_t kmc__shared_count_records(kmc_cache_t *c, uint32_t state, uint32_t slot)
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

/* The records are the truth: bitmaps and lists follow them. */
static void validate_first(kmc_cache_t *c, size_t *count, kmc_status *first,
                           kmc_report_t *first_report)
{
    kmc_region_t *r = c->region;
    /* a process killed inside a fast path left a record and its magazine
     * disagreeing: that is what reclaim is for, not corruption */
    kmc__shared_reclaim_dead(c, false, false);
    kmc__shared_quiesce(c); /* a still picture: every living process's fast paths wait */
    size_t bad = 0;
    kmc__shared_rebuild(c, &bad);
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
        uint64_t cached = kmc__shared_count_records(c, REC_CACHED, s);
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
                        kmc__shared_to_depot(c, i, idx, false);
                    }
                }
            }
            KMC_STORE(&p->mag_count, k);
        }
    }
    /* live objects nobody can free any more */
    uint64_t none[KMC_SHARED_MAX_PROCS / 64] = {0};
    size_t orphans = kmc__shared_scan_release(c, none, true, false);
    r->hdr->reclaimed -= orphans;
    if (orphans)
        tally(count, first, first_report,
              kmc__report(KMC_ECORRUPT, c, NULL,
                          "%zu live object(s) of %s had no holder left; freed", orphans, c->name),
              orphans);
}

static void validate_last(kmc_cache_t *c, size_t *count, kmc_status *first,
                          kmc_report_t *first_report)
{
    kmc_stats_t s = {0};
    kmc__shared_stats(c, &s);
    uint64_t live = kmc__shared_count_records(c, REC_LIVE, KMC_NIL);
    if (live != s.active_objs)
        tally(count, first, first_report,
              kmc__report(KMC_ECORRUPT, c, NULL,
                          "counters of %s do not add up: %llu live objects, the counters say "
                          "%llu",
                          c->name, (unsigned long long)live, (unsigned long long)s.active_objs),
              kmc__shared_recount(c));
    kmc__shared_unquiesce(c);
}

/* --- the backing ---------------------------------------------------------------------- */

static void *alloc(kmc_cache_t *c, int zero) { return kmc_shared_alloc(c, zero, NULL); }

static kmc_status free_any(kmc_cache_t *c, void *p, bool *owned)
{
    *owned = false; /* no heaps */
    return kmc_shared_free(c, p, KMC_SHARED_ANY_GEN);
}

/* Other processes' cached objects stay theirs. */
static void shrink_first(kmc_cache_t *c) { kmc__shared_flush_mine(c); }
static size_t shrink_last(kmc_cache_t *c) { return (void)c, 0; }

/* The lock lives in the region, shared rather than copied: fork leaves it
 * alone, and the child is another process, which gets a slot of its own
 * when it first uses the cache. */
static void fork_nothing(kmc_cache_t *c) { (void)c; }
static void fork_child(kmc_cache_t *c, uint32_t me)
{
    (void)me;
    kmc__shared_after_fork(c);
}

const kmc_backing_t kmc__shared_backing = {
    .kind = "shared",
    .serves_kmalloc = false,
    .chargeable = false, /* other processes free its objects */
    .lock = kmc__region_lock,
    .unlock = kmc__region_unlock,
    .alloc = alloc,
    .free = free_any,
    .is_live = is_live,
    .may_grow = may_grow,
    .new_arena = new_arena,
    .claim = claim,
    .commit = commit,
    .release = release,
    .shrink_first = shrink_first,
    .shrink_last = shrink_last,
    .validate_first = validate_first,
    .validate_last = validate_last,
    .stats = kmc__shared_stats,
    .destroy = kmc_shared_detach,
    .fork_lock = fork_nothing,
    .fork_unlock = fork_nothing,
    .fork_child = fork_child,
};
