/*
 * cache.c - caches: create, alloc, free, shrink, destroy.
 *
 * Each cache keeps three lists of slabs (see internal.h for the states):
 * partial slabs serve allocations, a few empty slabs are kept in reserve so
 * that alloc/free churn at a slab boundary costs no system call, and
 * released slab slots are reused before new address space is taken.
 *
 * The fast paths (take_object, put_object) are a bitmap word scan and a few
 * counter updates under the cache lock: no allocation, no system call, no
 * loop over objects or caches. Everything rare (growing, releasing, debug
 * checks) is in separate functions.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static kmc_cache_t *caches_first, *caches_last; /* guarded by caches_lock */

void kmc__lock_wait(kmc_lock_t *lock)
{
    for (unsigned spins = 0;; spins++) {
        if (!atomic_load_explicit(&lock->locked, memory_order_relaxed) &&
            !atomic_exchange_explicit(&lock->locked, 1, memory_order_acquire))
            return;
        if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__)
            __asm__ __volatile__("yield");
#endif
        } else {
            sched_yield();
        }
    }
}

static bool is_pow2(size_t x) { return x && !(x & (x - 1)); }
static size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }
static unsigned log2_of(size_t pow2) { return (unsigned)__builtin_ctzll(pow2); }

static bool debug_fill(const kmc_cache_t *c)
{
    return c->flags & (KMC_RED_ZONE | KMC_POISON);
}

/* --- layout ------------------------------------------------------------- */

/* Like SLUB's calculate_order: the smallest slab that wastes at most
 * 1/KMC_WASTE_DIVISOR of itself, else the one that wastes the least. SLUB
 * accepts 1/16; 1/32 keeps memory per object within 5% of the ideal at
 * every size (1512 bytes at 64: a 32 KiB slab of 21, not 8 KiB of 5). */
static void choose_layout(kmc_cache_t *c)
{
    size_t slot = c->size;
    if (c->flags & KMC_RED_ZONE)
        slot += KMC_RED_ZONE_MIN;
    slot = round_up(slot, c->align);

    unsigned best = 0;
    size_t best_waste = SIZE_MAX, best_slab = 1;
    for (unsigned shift = log2_of(kmc_page_size()); shift <= KMC_MAX_SLAB_SHIFT; shift++) {
        size_t slab = (size_t)1 << shift;
        if (slab < slot)
            continue;
        size_t waste = slab % slot;
        if (waste * KMC_WASTE_DIVISOR <= slab) {
            best = shift;
            break;
        }
        /* compare waste/slab fractions without dividing */
        if (best == 0 || waste * best_slab < best_waste * slab) {
            best = shift;
            best_waste = waste;
            best_slab = slab;
        }
    }
    c->slot_size = slot;
    /* exact for offsets below 2^24 (the largest slab) and slots below 2^24 */
    c->slot_recip = (UINT64_C(1) << 48) / slot + 1;
    c->slab_shift = best;
    c->slab_size = (size_t)1 << best;
    c->objperslab = (uint32_t)(c->slab_size / slot);
    c->bitmap_words = (c->objperslab + 63) / 64;
    c->spa_shift = KMC_ARENA_SHIFT - best;
    c->slabs_per_arena = (uint32_t)1 << c->spa_shift;
    size_t reserve = ((size_t)128 << 10) / c->slab_size;
    c->reserve = reserve < 1 ? 1 : reserve > 4 ? 4 : (uint32_t)reserve;
}

static size_t arena_meta_bytes(const kmc_cache_t *c)
{
    size_t bytes = (size_t)c->slabs_per_arena *
                   (sizeof(kmc_slab_t) + (size_t)c->bitmap_words * sizeof(uint64_t));
    return round_up(bytes, kmc_page_size());
}

/* --- create / destroy ----------------------------------------------------- */

static bool valid_name(const char *name)
{
    if (!name || !*name)
        return false;
    size_t n = strnlen(name, KMC_NAME_MAX);
    if (n >= KMC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= ' ' || (unsigned char)name[i] == 0x7f)
            return false; /* /proc/slabinfo columns are separated by spaces */
    return true;
}

kmc_status kmc_cache_create(const char *name, size_t size, size_t align, unsigned flags,
                            kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    if (!valid_name(name))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "name must be 1 to %d printable bytes without spaces",
                           KMC_NAME_MAX - 1);
    if (size < 1 || size > KMC_MAX_SIZE)
        return kmc__report(KMC_EINVAL, NULL, NULL, "size %zu is not in 1..%zu", size,
                           (size_t)KMC_MAX_SIZE);
    if (align != 0 && (!is_pow2(align) || align > KMC_MAX_ALIGN))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "align %zu is not 0 or a power of two up to %zu", align,
                           (size_t)KMC_MAX_ALIGN);
    if (flags & ~KMC_VALID_FLAGS)
        return kmc__report(KMC_EINVAL, NULL, NULL, "unknown flags 0x%x",
                           flags & ~KMC_VALID_FLAGS);

    kmc_cache_t *c = calloc(1, sizeof(*c));
    if (!c)
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the cache");
    memcpy(c->name, name, strlen(name) + 1);
    c->size = size;
    c->align = align < KMC_MIN_ALIGN ? KMC_MIN_ALIGN : align;
    if ((flags & KMC_HWCACHE_ALIGN) && c->align < KMC_CACHE_LINE)
        c->align = KMC_CACHE_LINE;
    /* A constructed object must keep what its ctor wrote: no poisoning
     * (SLUB makes the same choice). */
    c->flags = ctor ? (flags & ~KMC_POISON) : flags;
    c->ctor = ctor;
    c->ctor_arg = ctor_arg;
    c->partial.head = c->empty.head = c->released.head = KMC_NIL;
    choose_layout(c);

    pthread_mutex_lock(&caches_lock);
    c->prev_cache = caches_last;
    if (caches_last)
        caches_last->next_cache = c;
    else
        caches_first = c;
    caches_last = c;
    pthread_mutex_unlock(&caches_lock);
    *out = c;
    return KMC_OK;
}

static void arena_release(kmc_cache_t *c, kmc_arena_t *a)
{
    if (c->fill_arena == a)
        c->fill_arena = NULL;
    kmc__registry_remove(a);
    if (!a->pinned) {
        kmc__os_unreserve((void *)a->base, KMC_ARENA_SIZE);
    } else {
        /* leave the pinned slabs mapped (and the range reserved) for good */
        for (uint32_t s = 0; s < a->bump; s++)
            if (a->slabs[s].state != KMC_SLAB_PINNED)
                kmc__os_decommit((uint8_t *)a->base + ((size_t)s << c->slab_shift),
                                 c->slab_size);
    }
    kmc__os_unmap_meta(a->slabs, a->meta_bytes);
    c->arenas[a->index] = NULL;
    c->live_arenas--;
    kmc__arena_put(a);
}

/* The live object at the lowest address, for reports. Cache locked. */
static void *first_live(kmc_cache_t *c)
{
    for (uint32_t i = 0; i < c->nr_arenas; i++) {
        kmc_arena_t *a = c->arenas[i];
        for (uint32_t s = 0; a && s < a->bump; s++) {
            if (a->slabs[s].state != KMC_SLAB_PARTIAL && a->slabs[s].state != KMC_SLAB_FULL)
                continue;
            uint32_t id = (i << c->spa_shift) | s;
            const uint64_t *bits = kmc__slab_bitmap(c, id);
            for (uint32_t o = 0; o < c->objperslab; o++)
                if (!(bits[o / 64] & (UINT64_C(1) << (o % 64))))
                    return kmc__slab_mem(c, id) + (size_t)o * c->slot_size;
        }
    }
    return NULL;
}

kmc_status kmc_cache_destroy(kmc_cache_t *c)
{
    kmc__report_clear();
    if (kmc__kmalloc_pinned(c))
        return kmc__report(KMC_EBUSY, c, NULL, "%s serves kmalloc: it is never destroyed",
                           c->name);
    kmc__lock(&c->lock);
    if (c->active_objs) {
        kmc_status st = kmc__report(KMC_EBUSY, c, first_live(c),
                                    "Objects remaining in %s on __kmem_cache_shutdown(): "
                                    "%llu live",
                                    c->name, (unsigned long long)c->active_objs);
        kmc__unlock(&c->lock);
        return st;
    }
    kmc_status first = KMC_OK;
    if (debug_fill(c)) {
        kmc__unlock(&c->lock);
        first = kmc_cache_validate(c, NULL);
        kmc__lock(&c->lock);
    }
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (c->arenas[i])
            arena_release(c, c->arenas[i]);
    kmc__unlock(&c->lock);

    pthread_mutex_lock(&caches_lock);
    if (c->prev_cache)
        c->prev_cache->next_cache = c->next_cache;
    else
        caches_first = c->next_cache;
    if (c->next_cache)
        c->next_cache->prev_cache = c->prev_cache;
    else
        caches_last = c->prev_cache;
    pthread_mutex_unlock(&caches_lock);

    free(c->arenas);
    free(c);
    return first;
}

/* --- growing ---------------------------------------------------------------- */

static kmc_status arena_new(kmc_cache_t *c, kmc_arena_t **out)
{
    uint32_t index = c->nr_arenas;
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (!c->arenas[i]) {
            index = i;
            break;
        }
    if (index == c->nr_arenas) {
        if (index >= KMC_MAX_ARENAS)
            return kmc__report(KMC_ENOMEM, c, NULL, "cache %s has %u arenas, the most",
                               c->name, (unsigned)KMC_MAX_ARENAS);
        if (index == c->cap_arenas) {
            uint32_t cap = c->cap_arenas ? c->cap_arenas * 2 : 4;
            kmc_arena_t **grown = realloc(c->arenas, cap * sizeof(*grown));
            if (!grown)
                return kmc__report(KMC_ENOMEM, c, NULL, "no memory for the arena table");
            c->arenas = grown;
            c->cap_arenas = cap;
        }
    }
    kmc_arena_t *a = kmc__arena_get();
    void *base = a ? kmc__os_reserve(KMC_ARENA_SIZE, KMC_ARENA_SIZE) : NULL;
    size_t meta = arena_meta_bytes(c);
    void *slabs = base ? kmc__os_map_meta(meta) : NULL;
    if (!slabs) {
        if (base)
            kmc__os_unreserve(base, KMC_ARENA_SIZE);
        if (a)
            kmc__arena_put(a);
        return kmc__report(KMC_ENOMEM, c, NULL, "the OS refused %zu bytes for an arena",
                           KMC_ARENA_SIZE);
    }
    a->base = (uintptr_t)base;
    a->index = index;
    a->slabs = slabs;
    a->bitmaps = (uint64_t *)((kmc_slab_t *)slabs + c->slabs_per_arena);
    a->meta_bytes = meta;
    a->cache = c;
    if (kmc__registry_insert(a) != 0) {
        kmc__os_unmap_meta(slabs, meta);
        kmc__os_unreserve(base, KMC_ARENA_SIZE);
        kmc__arena_put(a);
        return kmc__report(KMC_ENOMEM, c, NULL, "no memory for the owner table");
    }
    c->arenas[index] = a;
    if (index == c->nr_arenas)
        c->nr_arenas++;
    c->live_arenas++;
    *out = a;
    return KMC_OK;
}

/* A slab slot to build a slab in: a released one, else the next unused one
 * of an arena, else a new arena's first. Cache locked. */
static kmc_status slab_slot(kmc_cache_t *c, uint32_t *out)
{
    uint32_t id = kmc__list_pop(c, &c->released);
    if (id == KMC_NIL) {
        kmc_arena_t *a = c->fill_arena;
        if (!a) {
            kmc_status st = arena_new(c, &a);
            if (st != KMC_OK)
                return st;
            c->fill_arena = a;
        }
        id = (a->index << c->spa_shift) | a->bump++;
        if (a->bump == c->slabs_per_arena)
            c->fill_arena = NULL;
    }
    kmc__slab_arena(c, id)->live_slabs++;
    kmc__slab(c, id)->state = KMC_SLAB_NEW;
    *out = id;
    return KMC_OK;
}

static void slab_release(kmc_cache_t *c, uint32_t id);

/* Move an empty slab to the reserve, releasing one beyond it. Cache locked. */
static void slab_retire(kmc_cache_t *c, uint32_t id)
{
    kmc__list_remove(c, &c->partial, id);
    kmc__slab(c, id)->state = KMC_SLAB_EMPTY;
    if (c->empty.count < c->reserve) {
        kmc__list_push(c, &c->empty, id);
        return;
    }
    c->num_slabs--;
    c->slabs_released++;
    slab_release(c, id);
}

/* Put a slab at the head of the partial list. An emptied slab that headed
 * it (see put_object) goes to the reserve first. Cache locked. */
static void partial_push(kmc_cache_t *c, uint32_t id)
{
    uint32_t head = c->partial.head;
    if (head != KMC_NIL && kmc__slab(c, head)->inuse == 0)
        slab_retire(c, head);
    kmc__slab(c, id)->state = KMC_SLAB_PARTIAL;
    kmc__list_push(c, &c->partial, id);
}

/* Give a slab's memory back and keep its slot for reuse. Cache locked. */
static void slab_release(kmc_cache_t *c, uint32_t id)
{
    kmc__os_decommit(kmc__slab_mem(c, id), c->slab_size);
    kmc__slab(c, id)->state = KMC_SLAB_RELEASED;
    kmc__slab_arena(c, id)->live_slabs--;
    kmc__list_push(c, &c->released, id);
}

/* Build one more slab and put it on the partial list. The memory is
 * committed and the constructor run without the lock, on a NEW slab that
 * no other thread can reach. Called unlocked; returns unlocked. */
static kmc_status grow(kmc_cache_t *c)
{
    kmc__lock(&c->lock);
    if (c->partial.head != KMC_NIL || c->empty.head != KMC_NIL) {
        kmc__unlock(&c->lock); /* another thread grew it */
        return KMC_OK;
    }
    uint32_t id;
    uint8_t *mem = NULL;
    kmc_status st = slab_slot(c, &id);
    if (st == KMC_OK) {
        /* once the lock is dropped another thread's grow may reallocate
         * c->arenas: look the slab up and set up its bitmap (metadata,
         * already mapped) now */
        mem = kmc__slab_mem(c, id);
        kmc__slab_init_free(c, id);
    }
    kmc__unlock(&c->lock);
    if (st != KMC_OK)
        return st;

    int ctor_rc = 0;
    if (kmc__os_commit(mem, c->slab_size) != 0) {
        st = kmc__report(KMC_ENOMEM, c, NULL, "the OS refused %zu bytes for a slab",
                         c->slab_size);
    } else {
        if (debug_fill(c))
            kmc__debug_init_slab(c, mem);
        for (uint32_t i = 0; c->ctor && i < c->objperslab; i++) {
            uint8_t *obj = mem + (size_t)i * c->slot_size;
            if ((ctor_rc = c->ctor(obj, c->size, c->ctor_arg)) != 0) {
                st = kmc__report(KMC_ECTOR, c, obj, "the constructor of %s failed", c->name);
                break;
            }
        }
    }

    kmc__lock(&c->lock);
    if (st == KMC_OK) {
        partial_push(c, id);
        c->num_slabs++;
        c->slabs_created++;
    } else if (ctor_rc > 0) {
        kmc__slab(c, id)->state = KMC_SLAB_PINNED; /* live_slabs keeps counting it */
        kmc__slab_arena(c, id)->pinned++;
    } else {
        slab_release(c, id);
    }
    kmc__unlock(&c->lock);
    return st;
}

/* --- the fast paths --------------------------------------------------------- */

/* One object from the first partial slab (refilled from the reserve), or
 * NULL when the cache must grow. About 20 instructions: a list head, a
 * bitmap word scan that starts at the slab's hint, two counters. */
static uint8_t *take_object(kmc_cache_t *c)
{
    uint32_t id = c->partial.head;
    if (id == KMC_NIL) {
        id = kmc__list_pop(c, &c->empty);
        if (id == KMC_NIL)
            return NULL;
        kmc__slab(c, id)->state = KMC_SLAB_PARTIAL;
        kmc__list_push(c, &c->partial, id);
    }
    kmc_arena_t *a = kmc__slab_arena(c, id);
    uint32_t sidx = id & (c->slabs_per_arena - 1);
    kmc_slab_t *s = &a->slabs[sidx];
    uint64_t *bits = &a->bitmaps[(size_t)sidx * c->bitmap_words];
    uint32_t w = s->hint;
    while (!bits[w])
        w++;
    if (w - s->hint > c->max_scan)
        c->max_scan = w - s->hint; /* bounded by bitmap_words: see stats */
    uint32_t b = (uint32_t)__builtin_ctzll(bits[w]);
    bits[w] &= bits[w] - 1;
    s->hint = (uint16_t)w;
    if (++s->inuse == c->objperslab) {
        kmc__list_remove(c, &c->partial, id);
        s->state = KMC_SLAB_FULL;
    }
    c->active_objs++;
    c->allocs++;
    return (uint8_t *)a->base + ((size_t)sidx << c->slab_shift) +
           (size_t)(w * 64 + b) * c->slot_size;
}

/* Find @p's slab and slot in @c, checking that it is a live object of @c.
 * Cache locked. On failure the report says why. */
static kmc_status locate(kmc_cache_t *c, const void *p, uint32_t *id_out, uint32_t *idx_out)
{
    uintptr_t addr = (uintptr_t)p;
    kmc_arena_t *a = kmc__registry_lookup(addr);
    if (!a || a->cache != c) {
        kmc_cache_t *owner = a ? a->cache : NULL;
        if (owner)
            return kmc__report(KMC_EINVALID_FREE, c, p,
                               "Invalid free of 0x%llx in %s: it belongs to cache %s",
                               (unsigned long long)addr, c->name, owner->name);
        return kmc__report(KMC_EINVALID_FREE, c, p,
                           "Invalid free of 0x%llx in %s: not an object of any cache",
                           (unsigned long long)addr, c->name);
    }
    size_t off = addr - a->base;
    uint32_t sidx = (uint32_t)(off >> c->slab_shift);
    kmc_slab_t *s = &a->slabs[sidx];
    size_t in_slab = off & (c->slab_size - 1);
    uint32_t idx = (uint32_t)(((unsigned __int128)in_slab * c->slot_recip) >> 48);
    size_t rem = in_slab - (size_t)idx * c->slot_size;
    bool committed = s->state == KMC_SLAB_PARTIAL || s->state == KMC_SLAB_FULL ||
                     s->state == KMC_SLAB_EMPTY;
    if (!committed || idx >= c->objperslab || rem != 0) {
        if (committed && idx < c->objperslab)
            return kmc__report(KMC_EINVALID_FREE, c, p,
                               "Invalid free of 0x%llx in %s: %zu bytes into an object",
                               (unsigned long long)addr, c->name, rem);
        return kmc__report(KMC_EINVALID_FREE, c, p,
                           "Invalid free of 0x%llx in %s: not an object",
                           (unsigned long long)addr, c->name);
    }
    uint32_t id = (a->index << c->spa_shift) | sidx;
    if (a->bitmaps[(size_t)sidx * c->bitmap_words + idx / 64] & (UINT64_C(1) << (idx % 64)))
        return kmc__report(KMC_EDOUBLE_FREE, c, p, "Object already free: 0x%llx in %s",
                           (unsigned long long)addr, c->name);
    *id_out = id;
    *idx_out = idx;
    return KMC_OK;
}

/* Mark a located object free, moving its slab between lists. Cache locked.
 * A slab that empties while it heads the partial list stays there: the next
 * allocation takes from it again, so alloc/free churn on one object moves
 * no slab between lists. */
static void put_object(kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    kmc_arena_t *a = kmc__slab_arena(c, id);
    uint32_t sidx = id & (c->slabs_per_arena - 1);
    kmc_slab_t *s = &a->slabs[sidx];
    uint32_t w = idx / 64;
    a->bitmaps[(size_t)sidx * c->bitmap_words + w] |= UINT64_C(1) << (idx % 64);
    if (w < s->hint)
        s->hint = (uint16_t)w;
    c->active_objs--;
    c->frees++;
    if (s->state == KMC_SLAB_FULL)
        partial_push(c, id);
    if (--s->inuse == 0 && c->partial.head != id)
        slab_retire(c, id);
}

/* --- public alloc and free ---------------------------------------------------- */

/* --- consistency checks ------------------------------------------------------ */

/* A slab whose counter and bitmap disagree cannot tell which of its slots are
 * free: mark every object used, as SLUB does, so that none is handed out
 * twice. Its free slots are lost; its live objects can still be freed.
 * Cache locked. */
static void isolate_slab(kmc_cache_t *c, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    if (s->state == KMC_SLAB_PARTIAL)
        kmc__list_remove(c, &c->partial, id);
    else if (s->state == KMC_SLAB_EMPTY)
        kmc__list_remove(c, &c->empty, id);
    uint64_t *bits = kmc__slab_bitmap(c, id);
    for (uint32_t o = 0; debug_fill(c) && o < c->objperslab; o++)
        if (bits[o / 64] & (UINT64_C(1) << (o % 64))) /* now used: live red zone */
            kmc__debug_on_alloc(c, kmc__slab_mem(c, id) + (size_t)o * c->slot_size, 1);
    memset(bits, 0, (size_t)c->bitmap_words * sizeof(uint64_t));
    c->active_objs = c->active_objs - s->inuse + c->objperslab;
    s->inuse = c->objperslab;
    s->hint = 0;
    s->state = KMC_SLAB_FULL;
}

/* CONSISTENCY_CHECKS: the slab's counter against its bitmap, isolating the
 * slab on a mismatch. Cache locked. */
static kmc_status check_counts(kmc_cache_t *c, uint32_t id)
{
    kmc_status st = kmc__debug_check_counts(c, id);
    if (st != KMC_OK)
        isolate_slab(c, id);
    return st;
}

static uint8_t *alloc_locked_debug(kmc_cache_t *c, kmc_status *st)
{
    if (c->flags & KMC_CONSISTENCY_CHECKS) {
        /* the slab take_object is about to use */
        uint32_t id = c->partial.head != KMC_NIL ? c->partial.head : c->empty.head;
        if (id != KMC_NIL && (*st = check_counts(c, id)) != KMC_OK)
            return NULL;
    }
    uint8_t *p = take_object(c);
    if (!p)
        return NULL;
    *st = kmc__debug_check_alloc(c, p);
    if (*st != KMC_OK) {
        /* damage found (and repaired): the object stays free */
        uint32_t id, idx;
        if (locate(c, p, &id, &idx) == KMC_OK)
            put_object(c, id, idx);
        c->allocs--;
        c->frees--;
        return NULL;
    }
    return p;
}

void *kmc_cache_alloc(kmc_cache_t *c, int zero)
{
    if (zero && c->ctor) {
        kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor", c->name);
        return NULL;
    }
    for (;;) {
        kmc__lock(&c->lock);
        uint8_t *p;
        if (c->flags & KMC_DEBUG_FLAGS) {
            kmc_status st = KMC_OK;
            p = alloc_locked_debug(c, &st);
            if (st != KMC_OK) {
                kmc__unlock(&c->lock);
                return NULL;
            }
            if (p)
                kmc__debug_on_alloc(c, p, zero);
        } else {
            p = take_object(c);
        }
        kmc__unlock(&c->lock);
        if (p) {
            if (zero)
                memset(p, 0, c->size);
            return p;
        }
        if (grow(c) != KMC_OK)
            return NULL;
    }
}

kmc_status kmc_cache_alloc_bulk(kmc_cache_t *c, size_t n, void **out, int zero)
{
    kmc__report_clear();
    if (zero && c->ctor)
        return kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor",
                           c->name);
    size_t got = 0;
    kmc_status st = KMC_OK;
    while (got < n) {
        kmc__lock(&c->lock);
        while (got < n) {
            uint8_t *p;
            if (c->flags & KMC_DEBUG_FLAGS) {
                p = alloc_locked_debug(c, &st);
                if (p)
                    kmc__debug_on_alloc(c, p, zero);
            } else {
                p = take_object(c);
            }
            if (!p)
                break;
            out[got++] = p;
        }
        kmc__unlock(&c->lock);
        if (st != KMC_OK)
            break;
        if (got < n && (st = grow(c)) != KMC_OK)
            break;
    }
    if (st != KMC_OK) {
        /* all or nothing: give back what was taken, keeping the report */
        kmc_report_t keep = *kmc__report_slot();
        for (size_t i = 0; i < got; i++)
            kmc_cache_free(c, out[i]);
        *kmc__report_slot() = keep;
        return st;
    }
    if (zero)
        for (size_t i = 0; i < n; i++)
            memset(out[i], 0, c->size);
    return KMC_OK;
}

kmc_status kmc_cache_free(kmc_cache_t *c, void *p)
{
    uint32_t id, idx;
    kmc__lock(&c->lock);
    kmc_status st = locate(c, p, &id, &idx);
    if (st == KMC_OK && (c->flags & KMC_CONSISTENCY_CHECKS))
        st = check_counts(c, id);
    if (st == KMC_OK && (c->flags & KMC_DEBUG_FLAGS))
        st = kmc__debug_check_free(c, p);
    if (st == KMC_OK) {
        if (c->flags & KMC_DEBUG_FLAGS)
            kmc__debug_on_free(c, p);
        put_object(c, id, idx);
    }
    kmc__unlock(&c->lock);
    return st;
}

kmc_status kmc_cache_check_free(kmc_cache_t *c, const void *p)
{
    uint32_t id, idx;
    kmc__lock(&c->lock);
    kmc_status st = locate(c, p, &id, &idx);
    kmc__unlock(&c->lock);
    return st;
}

kmc_cache_t *kmc_owner(const void *address, void **object_start)
{
    kmc_arena_t *a = kmc__registry_lookup((uintptr_t)address);
    kmc_cache_t *c = a ? a->cache : NULL;
    if (!c)
        return NULL;
    size_t off = (uintptr_t)address - a->base;
    size_t in_slab = off & (c->slab_size - 1);
    uint32_t idx = (uint32_t)(((unsigned __int128)in_slab * c->slot_recip) >> 48);
    if (idx >= c->objperslab)
        return NULL; /* slab padding */
    if (object_start)
        *object_start = (void *)(a->base + (off - in_slab) + (size_t)idx * c->slot_size);
    return c;
}

kmc_status kmc_free(void *p)
{
    kmc__report_clear();
    void *start;
    kmc_cache_t *c = kmc_owner(p, &start);
    if (!c)
        return kmc__report(KMC_EINVALID_FREE, NULL, p,
                           "Invalid free of 0x%llx: not an object of any cache",
                           (unsigned long long)(uintptr_t)p);
    return kmc_cache_free(c, p);
}

/* --- shrink, validate, stats ---------------------------------------------------- */

size_t kmc_cache_shrink(kmc_cache_t *c)
{
    size_t bytes = 0;
    kmc__lock(&c->lock);
    uint32_t id = c->partial.head;
    if (id != KMC_NIL && kmc__slab(c, id)->inuse == 0) {
        kmc__list_remove(c, &c->partial, id);
        kmc__slab(c, id)->state = KMC_SLAB_EMPTY;
        kmc__list_push(c, &c->empty, id);
    }
    while ((id = kmc__list_pop(c, &c->empty)) != KMC_NIL) {
        c->num_slabs--;
        c->slabs_released++;
        slab_release(c, id);
        bytes += c->slab_size;
    }
    for (uint32_t i = 0; i < c->nr_arenas; i++) {
        kmc_arena_t *a = c->arenas[i];
        if (!a || a->live_slabs)
            continue;
        /* drop this arena's released slots from the list, then the arena */
        for (uint32_t r = c->released.head; r != KMC_NIL;) {
            uint32_t next = kmc__slab(c, r)->next;
            if ((r >> c->spa_shift) == i)
                kmc__list_remove(c, &c->released, r);
            r = next;
        }
        bytes += a->meta_bytes;
        arena_release(c, a);
    }
    while (c->nr_arenas && !c->arenas[c->nr_arenas - 1])
        c->nr_arenas--;
    kmc__unlock(&c->lock);
    return bytes;
}

kmc_status kmc_cache_validate(kmc_cache_t *c, size_t *problems)
{
    kmc__report_clear();
    size_t count = 0;
    kmc_status first = KMC_OK;
    uint64_t live = 0, partial = 0, empty = 0, committed = 0;
    kmc_report_t first_report;
    kmc__lock(&c->lock);
    for (uint32_t i = 0; i < c->nr_arenas; i++) {
        kmc_arena_t *a = c->arenas[i];
        if (!a)
            continue;
        for (uint32_t s = 0; s < a->bump; s++) {
            uint32_t id = (i << c->spa_shift) | s;
            kmc_slab_t *slab = &a->slabs[s];
            if (slab->state != KMC_SLAB_PARTIAL && slab->state != KMC_SLAB_EMPTY &&
                slab->state != KMC_SLAB_FULL)
                continue;
            kmc_status st = check_counts(c, id);
            if (st != KMC_OK)
                count++;
            else
                st = kmc__debug_check_slab(c, id, &count);
            if (st != KMC_OK && first == KMC_OK) {
                first = st;
                first_report = *kmc__report_slot();
            }
            /* counted after the checks, which may isolate the slab */
            partial += slab->state == KMC_SLAB_PARTIAL;
            empty += slab->state == KMC_SLAB_EMPTY;
            committed++;
            live += slab->inuse;
        }
    }
    if (live != c->active_objs || partial != c->partial.count || empty != c->empty.count ||
        committed != c->num_slabs) {
        kmc_status st = kmc__report(
            KMC_ECORRUPT, c, NULL,
            "counters of %s do not add up: %llu/%llu live, %llu/%u partial, %llu/%u empty",
            c->name, (unsigned long long)live, (unsigned long long)c->active_objs,
            (unsigned long long)partial, c->partial.count, (unsigned long long)empty,
            c->empty.count);
        if (first == KMC_OK) {
            first = st;
            first_report = *kmc__report_slot();
        }
        count++;
    }
    kmc__unlock(&c->lock);
    if (first != KMC_OK) {
        first_report.problems = count;
        *kmc__report_slot() = first_report;
    }
    if (problems)
        *problems = count;
    return first;
}

void kmc_cache_stats(kmc_cache_t *c, kmc_stats_t *o)
{
    memset(o, 0, sizeof(*o));
    kmc__lock(&c->lock);
    o->active_objs = c->active_objs;
    o->num_objs = c->num_slabs * c->objperslab;
    o->objsize = c->slot_size;
    o->objperslab = c->objperslab;
    o->pagesperslab = c->slab_size / kmc_page_size();
    o->active_slabs = c->num_slabs - c->empty.count;
    if (c->partial.head != KMC_NIL && kmc__slab(c, c->partial.head)->inuse == 0)
        o->active_slabs--; /* an emptied slab kept at the head of the list */
    o->num_slabs = c->num_slabs;
    o->size = c->size;
    o->align = c->align;
    o->slab_size = c->slab_size;
    o->partial_slabs = c->partial.count;
    o->empty_slabs = c->empty.count;
    o->allocs = c->allocs;
    o->frees = c->frees;
    o->slabs_created = c->slabs_created;
    o->slabs_released = c->slabs_released;
    o->committed_bytes = c->num_slabs * c->slab_size;
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (c->arenas[i])
            o->metadata_bytes += c->arenas[i]->meta_bytes;
    o->arenas = c->live_arenas;
    o->bitmap_words = c->bitmap_words;
    o->max_scan = c->max_scan;
    o->flags = c->flags;
    kmc__unlock(&c->lock);
}

void kmc_cache_for_each_live(kmc_cache_t *c, void (*fn)(void *, void *), void *arg)
{
    kmc__lock(&c->lock);
    for (uint32_t i = 0; i < c->nr_arenas; i++) {
        kmc_arena_t *a = c->arenas[i];
        if (!a)
            continue;
        for (uint32_t s = 0; s < a->bump; s++) {
            if (a->slabs[s].state != KMC_SLAB_PARTIAL && a->slabs[s].state != KMC_SLAB_FULL)
                continue;
            uint32_t id = (i << c->spa_shift) | s;
            const uint64_t *bits = kmc__slab_bitmap(c, id);
            uint8_t *mem = kmc__slab_mem(c, id);
            for (uint32_t o = 0; o < c->objperslab; o++)
                if (!(bits[o / 64] & (UINT64_C(1) << (o % 64))))
                    fn(mem + (size_t)o * c->slot_size, arg);
        }
    }
    kmc__unlock(&c->lock);
}

const char *kmc_cache_name(const kmc_cache_t *c) { return c->name; }
size_t kmc_cache_size(const kmc_cache_t *c) { return c->size; }
size_t kmc_cache_align(const kmc_cache_t *c) { return c->align; }
unsigned kmc_cache_flags(const kmc_cache_t *c) { return c->flags; }

size_t kmc_caches(kmc_cache_t **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&caches_lock);
    for (kmc_cache_t *c = caches_first; c; c = c->next_cache, n++)
        if (n < max)
            out[n] = c;
    pthread_mutex_unlock(&caches_lock);
    return n;
}
