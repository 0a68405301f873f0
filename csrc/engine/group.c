/*
 * group.c - memory groups: charging a thread's objects to the group it is
 * in, as the kernel charges slab objects to memory cgroups (kmc.h gives the
 * contract).
 *
 * Each object charged carries its group's id in a tag beside its slab's
 * metadata (a uint16_t per object slot, mapped for an arena the first time
 * one of its objects is charged), as the kernel keeps an objcg pointer per
 * slab object; a large kmalloc allocation carries it in its table entry.
 * The free path reads the tag (after the first charge in the process; before
 * that it pays one test) and takes the charge back from the group and its
 * parents, whichever thread frees.
 *
 * A group's usage is one atomic counter per level, moved by a compare-and-
 * swap that checks the limit: a charge never takes usage past a limit, and
 * usage is exact at every read. The counters are written by every thread
 * that charges the group, one atomic per level per alloc and per free.
 *
 * Ids: a table of KMC_GROUPS_MAX slots under groups_lock; a group's id is
 * stable while it lives (a handle, charged bytes or children), which is as
 * long as a tag can name it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GROUPS_MAX  65535u /* ids fit a tag; 0 is "no group" */
#define GROUP_DEPTH 8u

struct kmc_group_s {
    char name[KMC_NAME_MAX];
    uint32_t id;
    uint32_t depth; /* 0 for a group without parent */
    struct kmc_group_s *parent;
    _Atomic uint64_t usage, peak, objects;
    _Atomic uint64_t limit, soft_limit; /* 0: none */
    _Atomic uint64_t soft_hits, failures, purges;
    _Atomic uint32_t children; /* live child groups */
    void *owner;               /* kmc_group_set_owner */
    bool released;             /* the handle is gone; groups_lock */
};

__thread kmc_group_t *kmc__group_cur __attribute__((tls_model("initial-exec")));
uint8_t kmc__groups_used; /* some object was charged, ever: frees read tags (__atomic) */

static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static kmc_group_t **table; /* id -> group; groups_lock (readers: while charged) */
static uint32_t next_id = 1;

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
    kmc_group_t *g = calloc(1, sizeof(*g));
    if (!g)
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the group");
    snprintf(g->name, sizeof(g->name), "%s", name);
    g->parent = parent;
    g->depth = parent ? parent->depth + 1 : 0;
    atomic_store(&g->limit, limit);
    atomic_store(&g->soft_limit, soft_limit);
    pthread_mutex_lock(&groups_lock);
    if (!table && !(table = calloc(GROUPS_MAX + 1, sizeof(*table)))) {
        pthread_mutex_unlock(&groups_lock);
        free(g);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the group table");
    }
    uint32_t id = 0;
    for (uint32_t i = 0; i < GROUPS_MAX && !id; i++) {
        uint32_t c = (next_id + i - 1) % GROUPS_MAX + 1;
        if (!table[c])
            id = c;
    }
    if (!id) {
        pthread_mutex_unlock(&groups_lock);
        free(g);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "%u groups live, the most", GROUPS_MAX);
    }
    next_id = id % GROUPS_MAX + 1;
    g->id = id;
    table[id] = g;
    if (parent)
        atomic_fetch_add(&parent->children, 1);
    pthread_mutex_unlock(&groups_lock);
    *out = g;
    return KMC_OK;
}

/* Free @g and then any parent it kept alive, if nothing holds them now.
 * groups_lock held. */
static void reap(kmc_group_t *g)
{
    while (g && g->released && !atomic_load(&g->usage) && !atomic_load(&g->children)) {
        kmc_group_t *parent = g->parent;
        table[g->id] = NULL;
        free(g);
        if (parent)
            atomic_fetch_sub(&parent->children, 1);
        g = parent;
    }
}

void kmc_group_release(kmc_group_t *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&groups_lock);
    g->released = true;
    reap(g);
    pthread_mutex_unlock(&groups_lock);
}

kmc_group_t *kmc_group_enter(kmc_group_t *g)
{
    kmc_group_t *prev = kmc__group_cur;
    kmc__group_cur = g;
    return prev;
}

kmc_group_t *kmc_group_current(void) { return kmc__group_cur; }
kmc_group_t *kmc_group_parent(const kmc_group_t *g) { return g->parent; }
const char *kmc_group_name(const kmc_group_t *g) { return g->name; }
void kmc_group_set_owner(kmc_group_t *g, void *owner) { g->owner = owner; }
void *kmc_group_owner(const kmc_group_t *g) { return g->owner; }

void kmc_group_stats(const kmc_group_t *g, kmc_group_stats_t *o)
{
    kmc_group_t *m = (kmc_group_t *)g;
    o->usage = atomic_load(&m->usage);
    o->peak = atomic_load(&m->peak);
    o->limit = atomic_load(&m->limit);
    o->soft_limit = atomic_load(&m->soft_limit);
    o->soft_hits = atomic_load(&m->soft_hits);
    o->failures = atomic_load(&m->failures);
    o->purges = atomic_load(&m->purges);
    o->objects = atomic_load(&m->objects);
}

kmc_status kmc_group_set_limits(kmc_group_t *g, uint64_t limit, uint64_t soft_limit)
{
    kmc__report_clear();
    if (limit && soft_limit > limit)
        return kmc__report(KMC_EINVAL, NULL, NULL, "soft limit %llu is above the limit %llu",
                           (unsigned long long)soft_limit, (unsigned long long)limit);
    atomic_store(&g->limit, limit);
    atomic_store(&g->soft_limit, soft_limit);
    return KMC_OK;
}

void kmc_group_reset_peak(kmc_group_t *g) { atomic_store(&g->peak, atomic_load(&g->usage)); }

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

static void uncharge_levels(kmc_group_t *g, kmc_group_t *stop, uint64_t bytes)
{
    for (; g != stop; g = g->parent)
        atomic_fetch_sub(&g->usage, bytes);
}

/* The failure's report: whose limit, and the largest consumers. */
static kmc_status refuse(const kmc_cache_t *c, kmc_group_t *g, uint64_t bytes)
{
    atomic_fetch_add(&g->failures, 1);
    char names[3][KMC_NAME_MAX];
    uint64_t held[3];
    size_t n = kmc_group_consumers(g, names, held, 3);
    char top[160] = "";
    size_t at = 0;
    for (size_t i = 0; i < n && at < sizeof(top); i++)
        at += (size_t)snprintf(top + at, sizeof(top) - at, "%s%s %llu", i ? ", " : "", names[i],
                               (unsigned long long)held[i]);
    uint64_t usage = atomic_load(&g->usage), limit = atomic_load(&g->limit);
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

/* Charge @bytes to the calling thread's group and its parents, each level
 * within its limit; NULL (and KMC_ELIMIT in *@st) when one would pass it,
 * nothing charged. *@st KMC_OK and NULL: no group. */
kmc_group_t *kmc__group_charge(const kmc_cache_t *c, uint64_t bytes, kmc_status *st)
{
    kmc_group_t *g = kmc__group_cur;
    *st = KMC_OK;
    if (!g || (c && !c->backing->chargeable))
        return NULL;
    if (!__atomic_load_n(&kmc__groups_used, __ATOMIC_RELAXED))
        __atomic_store_n(&kmc__groups_used, 1, __ATOMIC_SEQ_CST);
    bool purged = false;
    for (kmc_group_t *l = g; l; l = l->parent) {
        uint64_t old = atomic_load_explicit(&l->usage, memory_order_relaxed), now;
        for (;;) {
            uint64_t limit = atomic_load_explicit(&l->limit, memory_order_relaxed);
            now = old + bytes;
            if (limit && now > limit) {
                uncharge_levels(g, l, bytes);
                *st = refuse(c, l, bytes);
                return NULL;
            }
            if (atomic_compare_exchange_weak(&l->usage, &old, now))
                break;
        }
        uint64_t peak = atomic_load_explicit(&l->peak, memory_order_relaxed);
        while (now > peak && !atomic_compare_exchange_weak(&l->peak, &peak, now))
            ;
        uint64_t soft = atomic_load_explicit(&l->soft_limit, memory_order_relaxed);
        if (soft && old <= soft && now > soft) { /* crossed it: once per crossing */
            atomic_fetch_add(&l->soft_hits, 1);
            if (!purged) {
                atomic_fetch_add(&l->purges, 1);
                purged = true;
            }
        }
    }
    atomic_fetch_add_explicit(&g->objects, 1, memory_order_relaxed);
    if (purged)
        purge_all();
    return g;
}

/* Take back @bytes charged to @g (an object freed, or an alloc that failed
 * after its charge). */
void kmc__group_uncharge(kmc_group_t *g, uint64_t bytes, uint64_t objects)
{
    atomic_fetch_sub_explicit(&g->objects, objects, memory_order_relaxed);
    bool last = false;
    for (kmc_group_t *l = g; l; l = l->parent)
        last |= atomic_fetch_sub(&l->usage, bytes) == bytes;
    if (last) { /* a released group may be free now */
        pthread_mutex_lock(&groups_lock);
        for (kmc_group_t *l = g; l; l = l->parent)
            if (l->released && !atomic_load(&l->usage) && !atomic_load(&l->children)) {
                reap(l);
                break;
            }
        pthread_mutex_unlock(&groups_lock);
    }
}

kmc_group_t *kmc__group_of_id(uint32_t id) { return id ? table[id] : NULL; }
uint32_t kmc__group_id(const kmc_group_t *g) { return g->id; }

/* --- tags --------------------------------------------------------------------------- */

/* The tag of slot @idx of slab @sidx of @a, its array mapped on first use;
 * NULL when no memory could be had (the object then goes uncharged). */
static _Atomic uint16_t *tag_slot(kmc_arena_t *a, const kmc_cache_t *c, uint32_t sidx, uint32_t idx,
                                  bool make)
{
    _Atomic uint16_t *tags = atomic_load_explicit(&a->tags, memory_order_acquire);
    if (!tags) {
        if (!make)
            return NULL;
        size_t page = kmc_page_size();
        size_t bytes = ((size_t)a->nslabs * c->objperslab * sizeof(uint16_t) + page - 1) &
                       ~(page - 1);
        _Atomic uint16_t *fresh = kmc__os_map_meta(bytes);
        if (!fresh)
            return NULL;
        if (!atomic_compare_exchange_strong(&a->tags, &tags, fresh)) {
            kmc__os_unmap_meta((void *)fresh, bytes); /* another thread was first */
        } else {
            a->tags_bytes = bytes;
            tags = fresh;
        }
    }
    return &tags[(size_t)sidx * c->objperslab + idx];
}

static _Atomic uint16_t *tag_of(const kmc_cache_t *c, const void *p, bool make)
{
    uintptr_t addr = (uintptr_t)p;
    kmc_arena_t *a = kmc__registry_lookup(addr);
    if (!a || a->cache != c)
        return NULL;
    size_t off = addr - a->base;
    size_t in = off & (c->slab_size - 1);
    if (in < c->obj_offset)
        return NULL;
    uint32_t idx = (uint32_t)(((unsigned __int128)(in - c->obj_offset) * c->slot_recip) >> 48);
    if (idx >= c->objperslab)
        return NULL;
    return tag_slot(a, c, (uint32_t)(off >> c->slab_shift), idx, make);
}

void kmc__group_tag(const kmc_cache_t *c, void *p, kmc_group_t *g)
{
    _Atomic uint16_t *t = tag_of(c, p, true);
    if (t)
        atomic_store_explicit(t, (uint16_t)g->id, memory_order_relaxed);
    else
        kmc__group_uncharge(g, c->size, 1); /* no tag, no charge: nothing can take it back */
}

void kmc__group_free(const kmc_cache_t *c, const void *p)
{
    _Atomic uint16_t *t = tag_of(c, p, false);
    uint16_t id;
    /* the exchange: of two threads freeing one object, one takes it back */
    if (t && atomic_load_explicit(t, memory_order_relaxed) &&
        (id = atomic_exchange_explicit(t, 0, memory_order_relaxed)) != 0)
        kmc__group_uncharge(table[id], c->size, 1);
}

/* --- consumers ---------------------------------------------------------------------- */

static bool in_group(uint32_t id, const kmc_group_t *g)
{
    for (const kmc_group_t *l = id ? table[id] : NULL; l; l = l->parent)
        if (l == g)
            return true;
    return false;
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
        for (uint32_t ai = 0; ai < c->nr_arenas; ai++) {
            kmc_arena_t *a = kmc__arena(c, ai);
            _Atomic uint16_t *tags = a ? atomic_load(&a->tags) : NULL;
            for (size_t i = 0; tags && i < (size_t)a->bump * c->objperslab; i++) {
                uint16_t id = atomic_load_explicit(&tags[i], memory_order_relaxed);
                if (id && in_group(id, g))
                    b += c->size;
            }
        }
        kmc__cache_unlock(c);
        rank(names, bytes, max, &n, c->name, b);
    }
    pthread_mutex_unlock(&kmc__caches_lock);
    rank(names, bytes, max, &n, "kmalloc-large", kmc__kmalloc_large_charged(g));
    return n;
}

bool kmc__group_holds(uint32_t id, const kmc_group_t *g) { return in_group(id, g); }

/* fork: the table's lock */
void kmc__groups_lock(bool on)
{
    if (on)
        pthread_mutex_lock(&groups_lock);
    else
        pthread_mutex_unlock(&groups_lock);
}
