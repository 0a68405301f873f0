/*
 * shared_objects.c - a shared cache's objects: the alloc and free paths (a
 * process's magazine without the region lock, the depot with it), the
 * records' moves between FREE, CACHED and LIVE, and holders and tickets
 * (the references that pickles carry). shared.h gives the design.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shared.h"

/* --- records and magazines ------------------------------------------------------------ */

/* Back to the depot: slot (@sidx, @idx), whose record was just made FREE.
 * Region locked. */
void kmc__shared_to_depot(kmc_cache_t *c, uint32_t sidx, uint32_t idx, bool was_live)
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
bool kmc__shared_end_live(kmc_cache_t *c, uint32_t me, uint32_t sidx, uint32_t idx, uint64_t w)
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
        kmc__shared_to_depot(c, sidx, idx, true);
    }
    if (p)
        KMC_BUMP(&p->frees, 1);
    else
        r->hdr->gone_frees++;
    return true;
}

/* Give the oldest objects of slot @s's magazine back until @keep are left.
 * Region and slot locked. */
void kmc__shared_flush(kmc_cache_t *c, uint32_t s, uint32_t keep)
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
        kmc__shared_to_depot(c, sidx, idx, false);
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
        kmc__shared_proc_lock(c, me, me, true);
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
            kmc__shared_reclaim_dead(c, false, false);
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
            kmc__shared_flush(c, me, r->mag_cap / 2);
        if (kmc__shared_end_live(c, me, sidx, idx, w))
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
        kmc__shared_proc_lock(c, me, me, true);
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
        kmc__shared_proc_lock(c, me, me, true);
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
    kmc__shared_proc_lock(c, me, me, true);
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
            kmc__shared_flush(c, me, r->mag_cap / 2);
        if (kmc__shared_end_live(c, me, sidx, idx, w)) {
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
