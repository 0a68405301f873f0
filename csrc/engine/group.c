/*
 * group.c - memory groups: charging a thread's objects to the group it is
 * in, as the kernel charges slab objects to memory cgroups (kmc.h gives the
 * contract).
 *
 * Each object charged carries its group's id in a tag beside its slab's
 * metadata (a uint16_t per object slot, mapped for an arena the first time
 * one of its objects is charged), as the kernel keeps an objcg pointer per
 * slab object; a large kmalloc allocation carries it in its table entry.
 * The free path of a cache that ever had an object charged reads the tag
 * and gives the charge back, whichever thread frees. The heap keeps its
 * current slab's tags at hand (heap.c), so that an alloc from that slab
 * writes the tag, and a free into it takes it, at the index the fast path
 * already has; any other free finds the tag by the owner lookup. Every free
 * takes the tag with an exchange, before its bitmap decides whether the
 * free is valid: of two threads freeing one object at once, one gives the
 * charge back, even when the other's free is refused as a double free (a
 * plain load and store on the owner's side let both give it back, often,
 * under a test that races them). Counters never go below zero and group
 * memory is type-stable (reap) all the same: a charge given back twice by
 * some later bug leaves a count low, never a wrapped counter that refuses
 * every charge, nor a read of freed memory.
 *
 * Counting without an atomic per object: memcg's per-CPU stock, per heap
 * (one thread's cache of one cache's slabs). A group's counter (and each
 * parent's) is moved by compare-and-swap against the limit, up to 64 KiB
 * at a time: the heap keeps what its thread took beyond the object in its
 * stock, counted in objects, and the next objects the thread allocates
 * there in that group come out of the stock, and those it frees go back
 * into it, inside the heap's fast paths (heap.c: a compare, a decrement or
 * increment, under the heap's own busy mark). So a counter is the group's
 * usage plus the stocks taken from it, and never passes the limit: no
 * charge can. A read of usage subtracts the stocks (exact); a charge that
 * the counter refuses while stocks hold bytes first takes every stock of
 * the group back (exact decisions), as memcg drains its stocks before it
 * reclaims. Taking a stock back is the heaps' handshake on the stock's
 * group id: the taker clears the id (the owner's paths compare it inside
 * the busy mark), has every thread pass a memory barrier (membarrier),
 * waits until the heap is not busy, then owns the stock's objects. Without
 * the barrier no heap keeps a stock: every charge moves the counters. Other
 * charges (large kmalloc runs, caches without heaps) move the counters
 * too: each is a slow path already.
 *
 * A stock's batches start at one object and double at each refill up to
 * 64 KiB, so that a heap that allocates little keeps little; and none is
 * taken near a limit or the soft limit (a quarter of the room left at
 * most): there every charge and free moves the counters. The peak reads
 * the counter, stocks included, as Linux's memory.peak reads the page
 * counter: it can be above the usage's peak by what the stocks hold, each
 * at most its last batch, 64 KiB.
 *
 * Ids: a table of GROUPS_MAX slots; a group's id is stable while it lives
 * (a handle, a charge, a child, or a stock), which is as long as a tag or a
 * stock can name it. One lock (groups_lock) for the table, the stocks'
 * list, and every change to a stock but its owner's fast paths'.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GROUPS_MAX  65535u /* ids fit a tag; 0 is "no group" */
#define GROUP_DEPTH 8u
#define STOCK_BYTES ((uint64_t)64 << 10) /* memcg's stock: 64 pages */

struct kmc_group_s {
    char name[KMC_NAME_MAX];
    uint32_t id;
    uint32_t depth; /* 0 for a group without parent */
    struct kmc_group_s *parent;
    _Atomic uint64_t counter;           /* usage, plus stocks taken from it */
    _Atomic uint64_t peak;              /* of counter */
    _Atomic int64_t objects;            /* its own, but those counted in stocks */
    _Atomic uint64_t limit, soft_limit; /* 0: none */
    _Atomic uint64_t soft_hits, failures, purges;
    _Atomic uint32_t children;      /* live child groups */
    void *owner;                    /* kmc_group_set_owner */
    bool released;                  /* the handle is gone; groups_lock */
    struct kmc_group_s *next_spare; /* freed: the spares list; groups_lock */
};

__thread kmc_group_t *kmc__group_cur __attribute__((tls_model("initial-exec")));
__thread uint32_t kmc__group_id __attribute__((tls_model("initial-exec")));

static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static kmc_group_t **table; /* id -> group */
static uint32_t next_id = 1;
static kmc_stock_t *stocks;            /* every heap's that ever held one, but retired */
static kmc_group_t *spares;            /* freed groups (see reap) */
static _Atomic int stocks_usable = -1; /* the barrier works: 1, 0, or -1 before the first
                                        * look (written under groups_lock) */

/* --- stocks ----------------------------------------------------------------------- */

static bool in_subtree(const kmc_group_t *g, const kmc_group_t *top)
{
    for (; g; g = g->parent)
        if (g == top)
            return true;
    return false;
}

/* Released groups a stock flush may have left unheld: reaped at the end of
 * the locked section that flushed (reap_pending), not in the middle of a
 * walk that may still name them. groups_lock. */
static uint32_t pending[64];
static unsigned npending;
static bool sweep; /* pending overflowed: look at every group */

static void reap_later(uint32_t id)
{
    if (npending < sizeof(pending) / sizeof(pending[0]))
        pending[npending++] = id;
    else
        sweep = true;
}

static void reap_pending(void);

/* Take @bytes off a counter, never below zero (see the top). Returns what
 * is left. */
static uint64_t counter_sub(_Atomic uint64_t *counter, uint64_t bytes)
{
    uint64_t old = atomic_load_explicit(counter, memory_order_relaxed), now;
    do
        now = old > bytes ? old - bytes : 0;
    while (!atomic_compare_exchange_weak(counter, &old, now));
    return now;
}

static void counters_sub(kmc_group_t *g, kmc_group_t *stop, uint64_t bytes)
{
    for (; g != stop; g = g->parent)
        counter_sub(&g->counter, bytes);
}

/* Whether heaps may keep stocks: the barrier works. Its first call
 * registers the process, which can take milliseconds. groups_lock held. */
static bool stocks_ready(void)
{
    if (atomic_load(&stocks_usable) < 0)
        atomic_store(&stocks_usable, kmc__os_barrier() == 0);
    return atomic_load(&stocks_usable) == 1;
}

/* The group a stock's objects are charged to: its id, or the one a taker
 * cleared. groups_lock. */
static uint32_t stock_group(const kmc_stock_t *s)
{
    uint32_t id = atomic_load_explicit(&s->heap->stock_id, memory_order_relaxed);
    return id ? id : s->taken;
}

/* Give a stock's objects back to its group, and name none. groups_lock
 * held; its owner is the caller, outside its fast paths, or is not using
 * it (taken and seen idle, or gone). */
static void stock_flush(kmc_stock_t *s)
{
    uint32_t id = stock_group(s);
    uint32_t n = atomic_exchange(&s->heap->stock_n, 0);
    atomic_store(&s->heap->stock_id, 0);
    s->taken = 0;
    kmc_group_t *g = id ? table[id] : NULL;
    if (!g)
        return;
    if (n) {
        counters_sub(g, NULL, n * s->unit);
        atomic_fetch_sub(&g->objects, (int64_t)n);
    }
    for (kmc_group_t *l = g; l; l = l->parent)
        if (l->released)
            reap_later(l->id); /* it may be unheld now */
}

/* Every stock of @top's subtree back to its group, the caller's own
 * included (the caller is outside its fast paths). groups_lock held. */
static void stocks_take_back(const kmc_group_t *top)
{
    bool any = false;
    /* every one, empty or not: an empty one would still take its owner's
     * frees (and the group could never reach zero) */
    for (kmc_stock_t *s = stocks; s; s = s->next) {
        uint32_t id = atomic_load_explicit(&s->heap->stock_id, memory_order_relaxed);
        if (id && in_subtree(table[id], top)) {
            s->taken = id;
            atomic_store(&s->heap->stock_id, 0); /* the owner's next look fails */
            any = true;
        }
    }
    /* without the barrier (only if it failed since it first worked) the
     * stocks stay taken, their objects counted: each owner's next refill
     * flushes its own */
    if (!any || kmc__os_barrier() != 0)
        return;
    for (kmc_stock_t *s = stocks; s; s = s->next) {
        if (!s->taken)
            continue;
        for (unsigned spins = 0; atomic_load_explicit(&s->heap->busy, memory_order_acquire);
             spins++)
            if (spins > 64)
                sched_yield();
        stock_flush(s);
    }
}

void kmc__stock_retire(kmc_stock_t *s)
{
    pthread_mutex_lock(&groups_lock);
    if (s->listed) {
        stock_flush(s);
        if (s->prev)
            s->prev->next = s->next;
        else
            stocks = s->next;
        if (s->next)
            s->next->prev = s->prev;
        s->prev = s->next = NULL;
        s->listed = false;
        s->heap->stock_cap = 0;
        reap_pending();
    }
    pthread_mutex_unlock(&groups_lock);
}

/* @s made @g's for its refill: flushed if another group's (or taken), its
 * batches from one object again, and listed. groups_lock held. */
static void stock_move(kmc_stock_t *s, kmc_group_t *g, uint64_t unit)
{
    if (atomic_load(&s->heap->stock_id) == g->id)
        return;
    stock_flush(s);
    s->unit = unit;
    s->heap->stock_cap = 0;
    atomic_store(&s->heap->stock_id, g->id);
    if (!s->listed) {
        s->prev = NULL;
        s->next = stocks;
        if (stocks)
            stocks->prev = s;
        stocks = s;
        s->listed = true;
    }
}

/* --- life ----------------------------------------------------------------------- */

kmc_status kmc_group_create(const char *name, kmc_group_t *parent, uint64_t limit,
                            uint64_t soft_limit, kmc_group_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the group");
    *out = NULL;
    if (!kmc__valid_name(name))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "name must be 1 to %d printable bytes without spaces", KMC_NAME_MAX - 1);
    if (limit && soft_limit > limit)
        return kmc__report(KMC_EINVAL, NULL, NULL, "soft limit %llu is above the limit %llu",
                           (unsigned long long)soft_limit, (unsigned long long)limit);
    if (parent && parent->depth + 1 >= GROUP_DEPTH)
        return kmc__report(KMC_EINVAL, NULL, NULL, "groups nest %u deep at most", GROUP_DEPTH);
    pthread_mutex_lock(&groups_lock);
    if (!table && !(table = calloc(GROUPS_MAX + 1, sizeof(*table)))) {
        pthread_mutex_unlock(&groups_lock);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the group table");
    }
    stocks_ready(); /* at the first group, rather than at its first charge */
    uint32_t id = 0;
    for (uint32_t i = 0; i < GROUPS_MAX && !id; i++) {
        uint32_t c = (next_id + i - 1) % GROUPS_MAX + 1;
        if (!table[c])
            id = c;
    }
    if (!id) {
        pthread_mutex_unlock(&groups_lock);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "%u groups live, the most", GROUPS_MAX);
    }
    kmc_group_t *g = spares;
    if (g)
        spares = g->next_spare;
    else if (!(g = malloc(sizeof(*g)))) {
        pthread_mutex_unlock(&groups_lock);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the group");
    }
    memset(g, 0, sizeof(*g));
    snprintf(g->name, sizeof(g->name), "%s", name);
    g->parent = parent;
    g->depth = parent ? parent->depth + 1 : 0;
    atomic_store(&g->limit, limit);
    atomic_store(&g->soft_limit, soft_limit);
    next_id = id % GROUPS_MAX + 1;
    g->id = id;
    table[id] = g;
    if (parent)
        atomic_fetch_add(&parent->children, 1);
    pthread_mutex_unlock(&groups_lock);
    *out = g;
    return KMC_OK;
}

/* Free @g and then any parent it kept alive, if nothing holds them now: no
 * handle, charge (stocks were taken back), child, or stock naming it.
 * groups_lock held. A freed group's memory is kept for the next group
 * (type-stable, as Linux's SLAB_TYPESAFE_BY_RCU caches): were a charge ever
 * given back twice, a group could go while a tag still names it; that late
 * free finds no group, or a later one, never freed memory (see the top). */
static void reap(kmc_group_t *g)
{
    while (g && g->released && !atomic_load(&g->counter) && !atomic_load(&g->children)) {
        for (kmc_stock_t *s = stocks; s; s = s->next)
            if (stock_group(s) == g->id) { /* empty (its bytes are in the counter): forget it */
                atomic_store(&s->heap->stock_id, 0);
                s->taken = 0;
            }
        kmc_group_t *parent = g->parent;
        table[g->id] = NULL;
        g->next_spare = spares;
        spares = g;
        if (parent)
            atomic_fetch_sub(&parent->children, 1);
        g = parent;
    }
}

/* The groups reap_later named, by id (one may have gone with another). */
static void reap_pending(void)
{
    for (unsigned i = 0; i < npending; i++)
        if (table[pending[i]])
            reap(table[pending[i]]);
    npending = 0;
    for (uint32_t id = 1; sweep && id <= GROUPS_MAX; id++)
        if (table[id])
            reap(table[id]);
    sweep = false;
}

void kmc_group_release(kmc_group_t *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&groups_lock);
    g->released = true;
    stocks_take_back(g);
    reap_later(g->id);
    reap_pending();
    pthread_mutex_unlock(&groups_lock);
}

kmc_group_t *kmc_group_enter(kmc_group_t *g)
{
    kmc_group_t *prev = kmc__group_cur;
    kmc__group_cur = g;
    kmc__group_id = g ? g->id : 0;
    kmc__alloc_self_set(); /* the alloc fast path sends a thread in a group to the charge */
    return prev;
}

kmc_group_t *kmc_group_current(void) { return kmc__group_cur; }
kmc_group_t *kmc_group_parent(const kmc_group_t *g) { return g->parent; }
const char *kmc_group_name(const kmc_group_t *g) { return g->name; }
void kmc_group_set_owner(kmc_group_t *g, void *owner) { g->owner = owner; }
void *kmc_group_owner(const kmc_group_t *g) { return g->owner; }

/* The bytes the stocks of @g's subtree hold, and (@objects) less the
 * objects @g's own hold. groups_lock held. */
static uint64_t stocked(const kmc_group_t *g, int64_t *objects)
{
    uint64_t bytes = 0;
    for (kmc_stock_t *s = stocks; s; s = s->next) {
        uint32_t id = stock_group(s);
        uint64_t n = atomic_load_explicit(&s->heap->stock_n, memory_order_relaxed);
        if (!id || !n)
            continue;
        if (in_subtree(table[id], g))
            bytes += n * s->unit;
        if (id == g->id && objects)
            *objects -= (int64_t)n;
    }
    return bytes;
}

/* The counter without the stocks, never below zero (see the top).
 * groups_lock. */
static uint64_t usage_of(kmc_group_t *g, uint64_t in_stocks)
{
    uint64_t counter = atomic_load(&g->counter);
    return counter > in_stocks ? counter - in_stocks : 0;
}

void kmc_group_stats(const kmc_group_t *g, kmc_group_stats_t *o)
{
    kmc_group_t *m = (kmc_group_t *)g;
    pthread_mutex_lock(&groups_lock);
    int64_t objects = atomic_load(&m->objects);
    uint64_t in_stocks = stocked(g, &objects);
    o->usage = usage_of(m, in_stocks);
    o->objects = objects > 0 ? (uint64_t)objects : 0;
    pthread_mutex_unlock(&groups_lock);
    o->peak = atomic_load(&m->peak);
    o->limit = atomic_load(&m->limit);
    o->soft_limit = atomic_load(&m->soft_limit);
    o->soft_hits = atomic_load(&m->soft_hits);
    o->failures = atomic_load(&m->failures);
    o->purges = atomic_load(&m->purges);
}

kmc_status kmc_group_set_limits(kmc_group_t *g, uint64_t limit, uint64_t soft_limit)
{
    kmc__report_clear();
    if (limit && soft_limit > limit)
        return kmc__report(KMC_EINVAL, NULL, NULL, "soft limit %llu is above the limit %llu",
                           (unsigned long long)soft_limit, (unsigned long long)limit);
    pthread_mutex_lock(&groups_lock);
    atomic_store(&g->limit, limit);
    atomic_store(&g->soft_limit, soft_limit);
    stocks_take_back(g); /* what they hold was taken under the old limit */
    reap_pending();
    pthread_mutex_unlock(&groups_lock);
    return KMC_OK;
}

void kmc_group_reset_peak(kmc_group_t *g)
{
    pthread_mutex_lock(&groups_lock);
    atomic_store(&g->peak, usage_of(g, stocked(g, NULL)));
    pthread_mutex_unlock(&groups_lock);
}

/* --- charging ----------------------------------------------------------------------- */

/* Every cache and the kmalloc kept runs give their free memory back (the
 * process list's lock keeps each cache from being destroyed meanwhile). No
 * engine lock held. */
static void purge_all(void)
{
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache)
        kmc_cache_shrink(c);
    pthread_mutex_unlock(&kmc__caches_lock);
    kmc_kmalloc_shrink();
}

/* The failure's report: whose limit, the usage then, and the largest
 * consumers. Without groups_lock: the walk takes the caches' locks, which
 * come before it. @g is alive: the caller's group or one of its parents. */
static kmc_status refuse(const kmc_cache_t *c, kmc_group_t *g, uint64_t bytes, uint64_t usage)
{
    atomic_fetch_add(&g->failures, 1);
    uint64_t limit = atomic_load(&g->limit);
    char names[3][KMC_NAME_MAX];
    uint64_t held[3];
    size_t n = kmc_group_consumers(g, names, held, 3);
    char top[160] = "";
    size_t at = 0;
    for (size_t i = 0; i < n && at < sizeof(top); i++)
        at += (size_t)snprintf(top + at, sizeof(top) - at, "%s%s %llu", i ? ", " : "", names[i],
                               (unsigned long long)held[i]);
    kmc__report(KMC_ELIMIT, c, NULL,
                "memory group %s: %llu bytes more would pass its limit of %llu (usage %llu)%s%s",
                g->name, (unsigned long long)bytes, (unsigned long long)limit,
                (unsigned long long)usage, n ? "; largest: " : "", top);
    kmc_report_t *r = kmc__report_slot();
    snprintf(r->group, sizeof(r->group), "%s", g->name);
    r->requested = bytes;
    r->usage = usage;
    r->limit = limit;
    r->peak = atomic_load(&g->peak);
    r->limit_group = g;
    return KMC_ELIMIT;
}

/* Add @bytes to the counters of @g and its parents, each within its limit.
 * NULL, or the level that refused (nothing added). *@purge: a soft limit
 * was crossed. */
static kmc_group_t *counters_add(kmc_group_t *g, uint64_t bytes, bool *purge)
{
    uint64_t olds[GROUP_DEPTH], nows[GROUP_DEPTH];
    unsigned n = 0;
    for (kmc_group_t *l = g; l; l = l->parent, n++) {
        uint64_t old = atomic_load_explicit(&l->counter, memory_order_relaxed), now;
        do {
            uint64_t limit = atomic_load_explicit(&l->limit, memory_order_relaxed);
            now = old + bytes;
            if (limit && now > limit) {
                counters_sub(g, l, bytes);
                return l;
            }
        } while (!atomic_compare_exchange_weak(&l->counter, &old, now));
        olds[n] = old;
        nows[n] = now;
    }
    /* the whole chain took it: only now do peaks and crossings count */
    n = 0;
    for (kmc_group_t *l = g; l; l = l->parent, n++) {
        uint64_t peak = atomic_load_explicit(&l->peak, memory_order_relaxed);
        while (nows[n] > peak && !atomic_compare_exchange_weak(&l->peak, &peak, nows[n]))
            ;
        uint64_t soft = atomic_load_explicit(&l->soft_limit, memory_order_relaxed);
        if (soft && olds[n] <= soft && nows[n] > soft) { /* crossed it: once per crossing */
            atomic_fetch_add(&l->soft_hits, 1);
            if (!*purge)
                atomic_fetch_add(&l->purges, 1);
            *purge = true;
        }
    }
    return NULL;
}

/* What a thread may keep beyond @bytes: twice its last batch (one object's
 * worth the first time), so that a thread that allocates little keeps
 * little (the peak, which reads the counter, stays within the last batch
 * of the usage's) and one that allocates much refills rarely; 64 KiB at
 * most, and no more than a quarter of the room left under any limit above. */
static uint64_t batch_for(const kmc_group_t *g, uint64_t bytes, uint64_t last)
{
    uint64_t batch = last ? 2 * last : bytes;
    if (batch > STOCK_BYTES)
        batch = STOCK_BYTES;
    for (const kmc_group_t *l = g; l; l = l->parent) {
        kmc_group_t *m = (kmc_group_t *)l;
        uint64_t used = atomic_load_explicit(&m->counter, memory_order_relaxed) + bytes;
        uint64_t limits[2] = {atomic_load_explicit(&m->limit, memory_order_relaxed),
                              atomic_load_explicit(&m->soft_limit, memory_order_relaxed)};
        for (int i = 0; i < 2; i++) {
            uint64_t room = limits[i] ? (limits[i] > used ? (limits[i] - used) / 4 : 0) : batch;
            if (room < batch)
                batch = room;
        }
    }
    return batch;
}

/* The charge: straight onto the counters without a stock (or where no
 * heap may keep one), else @s moved to @g and topped up to a batch under
 * groups_lock; a charge the counters refuse takes the stocks back and
 * looks again. */
static kmc_group_t *charge(const kmc_cache_t *c, kmc_group_t *g, kmc_stock_t *s, uint64_t bytes,
                           kmc_status *st)
{
    bool purge = false;
    if (s && atomic_load_explicit(&stocks_usable, memory_order_relaxed) == 0)
        s = NULL; /* no heap keeps a stock here */
    if (!s) {
        if (!counters_add(g, bytes, &purge)) {
            atomic_fetch_add(&g->objects, 1);
            if (purge)
                purge_all();
            return g;
        }
        purge = false; /* (nothing was added) */
    }
    pthread_mutex_lock(&groups_lock);
    if (s && !stocks_ready())
        s = NULL;
    uint64_t batch = 0, extra = 0; /* in objects, beyond this one */
    if (s) {
        stock_move(s, g, bytes);
        /* the stock tops up to a batch: it never holds more than one */
        batch = batch_for(g, bytes, s->heap->stock_cap * s->unit) / s->unit;
        uint64_t have = atomic_load(&s->heap->stock_n);
        extra = batch > have ? batch - have : 0;
    }
    kmc_group_t *full = counters_add(g, bytes + extra * bytes, &purge);
    if (full && extra)
        full = counters_add(g, bytes, &purge), batch = extra = 0;
    if (full) { /* the stocks may hold the room: take them back, and look again */
        stocks_take_back(full);
        full = counters_add(g, bytes, &purge);
    }
    if (full) {
        uint64_t usage = usage_of(full, stocked(full, NULL));
        reap_pending();
        pthread_mutex_unlock(&groups_lock);
        *st = refuse(c, full, bytes, usage);
        return NULL;
    }
    atomic_fetch_add(&g->objects, (int64_t)(1 + extra));
    if (s) {
        /* (extra is 0 when the stocks were taken back, this one with them) */
        atomic_store(&s->heap->stock_n, atomic_load(&s->heap->stock_n) + (uint32_t)extra);
        /* without a batch (near or past a limit, or the soft one) frees go
         * straight to the counters too: a soft limit is crossed again only
         * when the usage has come back below it */
        s->heap->stock_cap = (uint32_t)batch;
    }
    reap_pending();
    pthread_mutex_unlock(&groups_lock);
    if (purge)
        purge_all();
    return g;
}

uint32_t kmc__group_charge(const kmc_cache_t *c, kmc_stock_t *s, uint64_t bytes, kmc_status *st)
{
    kmc_group_t *g = kmc__group_cur;
    *st = KMC_OK;
    if (!g || (c && !c->backing->chargeable))
        return 0;
    g = charge(c, g, s, bytes, st);
    return g ? g->id : 0;
}

/* Take @bytes off one level's counter. A counter reaches zero only under
 * groups_lock, where a released group is then reaped: so that a group is
 * freed once, by whoever finds it unheld, and never while another thread is
 * about to read it. */
static void counter_take(kmc_group_t *l, uint64_t bytes)
{
    uint64_t old = atomic_load_explicit(&l->counter, memory_order_relaxed);
    while (old > bytes)
        if (atomic_compare_exchange_weak(&l->counter, &old, old - bytes))
            return;
    pthread_mutex_lock(&groups_lock);
    if (!counter_sub(&l->counter, bytes))
        reap(l);
    pthread_mutex_unlock(&groups_lock);
}

/* The charge back onto the counters: no stock of the group at hand, or a
 * full one. */
void kmc__group_uncharge(uint32_t id, uint64_t bytes, uint64_t objects)
{
    kmc_group_t *g = table[id]; /* alive: the charge holds it (but see reap) */
    if (unlikely(!g))
        return;
    /* the chain first: once this thread's bytes are off a level, another
     * thread may take it to zero and free it; a level still holding them
     * cannot go (nor, through its children count, any level above it) */
    kmc_group_t *chain[GROUP_DEPTH];
    unsigned n = 0;
    /* (bounded: a late free's group may be in reuse meanwhile, see reap) */
    for (kmc_group_t *l = g; l && n < GROUP_DEPTH; l = l->parent)
        chain[n++] = l;
    atomic_fetch_sub_explicit(&g->objects, (int64_t)objects, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        counter_take(chain[i], bytes);
}

/* After the alloc a charge paid for: the object tagged, or (none) the
 * charge given back. Returns @p. */
void *kmc__group_settle(const kmc_cache_t *c, void *p, uint32_t id)
{
    if (id) {
        if (p)
            kmc__group_tag(c, p, id);
        else
            kmc__group_uncharge(id, c->size, 1);
    }
    return p;
}

/* A forked child has only the forking thread: every stock goes back to its
 * group (the forking thread's refill again). No thread was using one at
 * the fork (the heaps were held). */
void kmc__groups_after_fork(void)
{
    for (kmc_stock_t *s = stocks; s; s = s->next) {
        stock_flush(s);
        s->heap->stock_cap = 0;
    }
    reap_pending();
}

/* --- tags --------------------------------------------------------------------------- */

/* An arena's tags, mapped on first use (out of line: the lookup below is
 * on every charged alloc and free); NULL without memory. */
static KMC_NOINLINE _Atomic uint16_t *tags_map(kmc_arena_t *a, const kmc_cache_t *c)
{
    _Atomic uint16_t *tags = NULL;
    size_t page = kmc_page_size();
    size_t bytes = ((size_t)a->nslabs * c->objperslab * sizeof(uint16_t) + page - 1) & ~(page - 1);
    _Atomic uint16_t *fresh = kmc__os_map_meta(bytes);
    if (!fresh)
        return NULL;
    /* from now on its frees read tags: set, and every heap marked, before
     * any thread can see tags to write (heap.c's fast path writes them
     * without a look), for a slab that became a heap's current one before
     * its arena had tags may hold a tagged object too */
    __atomic_store_n(&((kmc_cache_t *)c)->charged, 1, __ATOMIC_SEQ_CST);
    kmc__heaps_mark_tagged((kmc_cache_t *)c);
    if (!atomic_compare_exchange_strong(&a->tags, &tags, fresh)) {
        kmc__os_unmap_meta((void *)fresh, bytes); /* another thread was first */
        return tags;
    }
    a->tags_bytes = bytes;
    return fresh;
}

/* The tag of the object at @p of @c; NULL when @p is none of its objects,
 * or (@make) no memory could be had for the tags (the object then goes
 * uncharged), or (!@make) its arena has no tags. */
static inline _Atomic uint16_t *tag_of(const kmc_cache_t *c, const void *p, bool make)
{
    uintptr_t addr = (uintptr_t)p;
    kmc_arena_t *a = kmc__registry_lookup(addr);
    if (unlikely(!a || a->cache != c))
        return NULL;
    size_t off = addr - a->base;
    size_t in = off & (c->slab_size - 1);
    size_t rel = in - c->obj_offset; /* wraps below the first object */
    uint32_t idx = (uint32_t)(((unsigned __int128)rel * c->slot_recip) >> 48);
    /* an object's start only: a pointer into one names no charge */
    if (unlikely(in < c->obj_offset || idx >= c->objperslab || (size_t)idx * c->slot_size != rel))
        return NULL;
    _Atomic uint16_t *tags = atomic_load_explicit(&a->tags, memory_order_acquire);
    if (unlikely(!tags) && (!make || !(tags = tags_map(a, c))))
        return NULL;
    return &tags[(off >> c->slab_shift) * c->objperslab + idx];
}

void kmc__group_tag(const kmc_cache_t *c, void *p, uint32_t id)
{
    _Atomic uint16_t *t = tag_of(c, p, true);
    if (t)
        atomic_store_explicit(t, (uint16_t)id, memory_order_relaxed);
    else
        kmc__group_uncharge(id, c->size, 1); /* no tag, no charge: nothing can take it back */
}

_Atomic uint16_t *kmc__slab_tags(const kmc_cache_t *c, uint32_t slab)
{
    _Atomic uint16_t *tags = atomic_load_explicit(&kmc__slab_arena(c, slab)->tags,
                                                  memory_order_acquire);
    return tags ? tags + (size_t)kmc__slab_index(slab) * c->objperslab : NULL;
}

uint32_t kmc__group_untag(const kmc_cache_t *c, const void *p)
{
    _Atomic uint16_t *t = tag_of(c, p, false);
    /* the exchange: of two threads freeing one object, one takes it back */
    if (t && atomic_load_explicit(t, memory_order_relaxed))
        return atomic_exchange_explicit(t, 0, memory_order_relaxed);
    return 0;
}

void kmc__group_free(const kmc_cache_t *c, const void *p)
{
    uint32_t id = kmc__group_untag(c, p);
    if (id)
        kmc__group_uncharge(id, c->size, 1);
}

/* --- consumers ---------------------------------------------------------------------- */

static bool in_group(uint32_t id, const kmc_group_t *g)
{
    for (const kmc_group_t *l = id ? table[id] : NULL; l; l = l->parent)
        if (l == g)
            return true;
    return false;
}

int kmc_group_holds(const kmc_group_t *g, const void *p)
{
    uint32_t id;
    kmc_cache_t *c = kmc_owner(p, NULL);
    if (c) {
        _Atomic uint16_t *t = tag_of(c, p, false);
        id = t ? atomic_load_explicit(t, memory_order_relaxed) : 0;
    } else {
        id = kmc__kmalloc_large_group(p);
    }
    if (!id)
        return 0;
    pthread_mutex_lock(&groups_lock); /* the ids' groups stay while it is held */
    int held = in_group(id, g);
    pthread_mutex_unlock(&groups_lock);
    return held;
}

static void rank(char (*names)[KMC_NAME_MAX], uint64_t *bytes, size_t max, size_t *n,
                 const char *name, uint64_t b)
{
    if (!b)
        return;
    size_t at;
    if (*n < max)
        at = (*n)++;
    else if (bytes[max - 1] >= b)
        return; /* smaller than every one kept */
    else
        at = max - 1;
    while (at > 0 && bytes[at - 1] < b) {
        bytes[at] = bytes[at - 1];
        memcpy(names[at], names[at - 1], KMC_NAME_MAX);
        at--;
    }
    bytes[at] = b;
    snprintf(names[at], KMC_NAME_MAX, "%s", name);
}

size_t kmc_group_consumers(const kmc_group_t *g, char (*names)[KMC_NAME_MAX], uint64_t *bytes,
                           size_t max)
{
    size_t n = 0;
    if (!max)
        return 0;
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache) {
        uint64_t b = 0;
        kmc__cache_lock(c);
        pthread_mutex_lock(&groups_lock); /* the ids' groups stay while it is held */
        for (uint32_t ai = 0; ai < c->nr_arenas; ai++) {
            kmc_arena_t *a = kmc__arena(c, ai);
            _Atomic uint16_t *tags = a ? atomic_load(&a->tags) : NULL;
            for (size_t i = 0; tags && i < (size_t)a->bump * c->objperslab; i++) {
                uint16_t id = atomic_load_explicit(&tags[i], memory_order_relaxed);
                if (id && in_group(id, g))
                    b += c->size;
            }
        }
        pthread_mutex_unlock(&groups_lock);
        kmc__cache_unlock(c);
        rank(names, bytes, max, &n, c->name, b);
    }
    pthread_mutex_unlock(&kmc__caches_lock);
    rank(names, bytes, max, &n, "kmalloc-large", kmc__kmalloc_large_charged(g));
    return n;
}

bool kmc__group_holds(uint32_t id, const kmc_group_t *g)
{
    pthread_mutex_lock(&groups_lock);
    bool held = in_group(id, g);
    pthread_mutex_unlock(&groups_lock);
    return held;
}

/* fork: the table's lock */
void kmc__groups_lock(bool on)
{
    if (on)
        pthread_mutex_lock(&groups_lock);
    else
        pthread_mutex_unlock(&groups_lock);
}
