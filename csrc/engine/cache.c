/*
 * cache.c - caches and their depots: create, destroy, the locked alloc and
 * free, growing, releasing, shrink, validate, stats.
 *
 * The depot is the part of a cache shared by all threads, under the cache
 * lock: three lists of slabs (see internal.h for the states). Partial slabs
 * serve locked allocations and refill threads' heaps, empty slabs wait there
 * for the purge delay before their memory goes back to the OS (so that churn
 * at a slab boundary costs no system call), and released slab slots are
 * reused before new address space is taken. Caches with debug flags and
 * threads without a heap allocate and free here; everyone else goes through
 * heap.c and comes here once per slab.
 *
 * Where the slabs' memory comes from, and what the locked paths, validate
 * and stats do differently for a cache in a shared region, is the cache's
 * backing's (internal.h): arena.c for private memory, shared_backing.c for
 * a region. This file never asks which one a cache has.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

pthread_mutex_t kmc__caches_lock = PTHREAD_MUTEX_INITIALIZER;
kmc_cache_t *kmc__caches_first;  /* guarded by kmc__caches_lock */
static kmc_cache_t *caches_last; /* likewise */

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

static bool debug_fill(const kmc_cache_t *c) { return c->flags & (KMC_RED_ZONE | KMC_POISON); }

/* --- layout ------------------------------------------------------------- */

/* Like SLUB's calculate_order: the smallest slab of at least KMC_MIN_SLAB
 * bytes (but no more than KMC_MAX_SLAB_OBJECTS objects) that wastes at most
 * 1/KMC_WASTE_DIVISOR of itself, else the one that wastes the least. SLUB
 * accepts 1/16; 1/32 keeps memory per object within 5% of the ideal at
 * every size (1512 bytes at 64: a 64 KiB slab of 42). 64 KiB slabs, as
 * mimalloc's small pages, let a thread allocate and free a thousand small
 * objects in its current slab; their pages cost memory only once touched.
 * @min_shift: slabs of at least 2^min_shift bytes (a shared region asks for
 * bigger ones when its slab ids would not fit). */
void kmc__cache_layout(kmc_cache_t *c, unsigned min_shift)
{
    size_t left = 0, slot = c->size;
    if (c->flags & KMC_RED_ZONE) {
        left = round_up(KMC_RED_ZONE_MIN, c->align); /* SLUB's red_left_pad */
        slot = left + round_up(c->size + KMC_RED_ZONE_MIN, c->align);
    }
    slot = round_up(slot, c->align);

    size_t want = KMC_MIN_SLAB;
    if (want / slot > KMC_MAX_SLAB_OBJECTS) /* the largest power of two that fits */
        want = (size_t)1 << (63 - __builtin_clzll(slot * KMC_MAX_SLAB_OBJECTS));
    unsigned best = 0;
    size_t best_waste = SIZE_MAX, best_slab = 1;
    unsigned first = log2_of(kmc_page_size());
    for (unsigned shift = first > min_shift ? first : min_shift; shift <= KMC_MAX_SLAB_SHIFT;
         shift++) {
        size_t slab = (size_t)1 << shift;
        if (slab < slot || slab < want)
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
    c->obj_offset = left;
    /* exact for offsets below 2^24 (the largest slab) and slots below 2^24 */
    c->slot_recip = (UINT64_C(1) << 48) / slot + 1;
    c->slab_shift = best;
    c->slab_size = (size_t)1 << best;
    c->objperslab = (uint32_t)(c->slab_size / slot);
    c->bitmap_words = (c->objperslab + 63) / 64;
    c->slots_bytes = (size_t)c->objperslab * slot;
    c->first_arena = (size_t)1 << KMC_ARENA_MIN_SHIFT;
    if (c->first_arena < c->slab_size)
        c->first_arena = c->slab_size;
    c->next_arena = c->first_arena;
    size_t keep = KMC_HEAP_KEEP_BYTES / c->slab_size;
    c->heap_keep = keep < 1 ? 1 : (uint32_t)keep;
    c->mag_size = (uint32_t)kmc__option(KMC_OPTION_MAGAZINE);
    c->heaps_on = !(c->flags & KMC_DEBUG_FLAGS) && c->bitmap_words <= KMC_HEAP_BITS &&
                  kmc__option(KMC_OPTION_THREAD_CACHES) != 0;
}

/* --- create / destroy ----------------------------------------------------- */

bool kmc__valid_name(const char *name)
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

/* Check the arguments and fill in @c (zeroed) as a cache of its own: name,
 * layout, depot. Nothing is linked or mapped. */
kmc_status kmc__cache_setup(kmc_cache_t *c, const char *name, size_t size, size_t align,
                            unsigned flags, kmc_ctor_fn ctor, void *ctor_arg)
{
    if (!kmc__valid_name(name))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "name must be 1 to %d printable bytes without spaces", KMC_NAME_MAX - 1);
    if (size < 1 || size > KMC_MAX_SIZE)
        return kmc__report(KMC_EINVAL, NULL, NULL, "size %zu is not in 1..%zu", size,
                           (size_t)KMC_MAX_SIZE);
    if (align != 0 && (!is_pow2(align) || align > KMC_MAX_ALIGN))
        return kmc__report(KMC_EINVAL, NULL, NULL, "align %zu is not 0 or a power of two up to %zu",
                           align, (size_t)KMC_MAX_ALIGN);
    if (flags & ~KMC_VALID_FLAGS)
        return kmc__report(KMC_EINVAL, NULL, NULL, "unknown flags 0x%x", flags & ~KMC_VALID_FLAGS);
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
    c->backing = &kmc__private_backing; /* a shared cache's maker replaces it */
    c->d = &c->own_depot;
    c->d->partial = c->d->empty = c->d->released = (kmc_list_t){KMC_NIL, KMC_NIL, 0};
    kmc__cache_layout(c, 0);
    return KMC_OK;
}

kmc_cache_t *kmc__cache_new(void)
{
    kmc_cache_t *c = aligned_alloc(64, round_up(sizeof(*c), 64));
    if (c)
        memset(c, 0, sizeof(*c));
    return c;
}

void kmc__cache_link(kmc_cache_t *c)
{
    pthread_mutex_lock(&kmc__caches_lock);
    c->prev_cache = caches_last;
    if (caches_last)
        caches_last->next_cache = c;
    else
        kmc__caches_first = c;
    caches_last = c;
    pthread_mutex_unlock(&kmc__caches_lock);
}

/* Take @c off the process list. kmc__caches_lock held. */
void kmc__cache_unlink(kmc_cache_t *c)
{
    if (c->prev_cache)
        c->prev_cache->next_cache = c->next_cache;
    else
        kmc__caches_first = c->next_cache;
    if (c->next_cache)
        c->next_cache->prev_cache = c->prev_cache;
    else
        caches_last = c->prev_cache;
}

kmc_status kmc_cache_create(const char *name, size_t size, size_t align, unsigned flags,
                            kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    kmc_cache_t *c = kmc__cache_new();
    if (!c)
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the cache");
    kmc_status st = kmc__cache_setup(c, name, size, align, flags, ctor, ctor_arg);
    if (st != KMC_OK) {
        free(c);
        return st;
    }
    kmc__cache_link(c);
    *out = c;
    return KMC_OK;
}

/* Run @body on every committed slab of the depot, in address order. Cache
 * locked. */
#define FOR_EACH_COMMITTED(c, id, s, body)                                       \
    for (uint32_t ai_ = 0; ai_ < (c)->nr_arenas; ai_++) {                        \
        kmc_arena_t *a_ = kmc__arena((c), ai_);                                  \
        for (uint32_t si_ = 0; a_ && si_ < a_->bump; si_++) {                    \
            kmc_slab_t *s = &a_->slabs[si_];                                     \
            uint32_t id = (ai_ << KMC_SLAB_ID_SHIFT) | si_;                      \
            if (!kmc__slab_committed(kmc__slab_state(s)) ||                      \
                KMC_LOAD(&s->owner) != KMC_DEPOT) /* a heap's still: not ours */ \
                continue;                                                        \
            body                                                                 \
        }                                                                        \
    }

static void slab_retire(kmc_cache_t *c, uint32_t id);

/* Merge a depot slab's remote bits. Cache locked. */
uint32_t kmc__depot_merge(kmc_cache_t *c, uint32_t id)
{
    uint64_t late = 0;
    uint32_t n = kmc__slab_merge_remote(c, id, &late);
    c->d->depot_merged += n + late;
    c->d->depot_late_double += late;
    if (n)
        kmc__slab(c, id)->hint = 0; /* a merged bit may be below it */
    return n;
}

/* Merge every depot slab's remote bits and put each on the list its count
 * says (a FULL slab may have become partial or empty). After
 * kmc__heaps_take_back every slab is the depot's. Cache locked. */
static void depot_settle(kmc_cache_t *c)
{
    FOR_EACH_COMMITTED(c, id, s, {
        uint8_t state = kmc__slab_state(s);
        if (state >= KMC_SLAB_CURRENT)
            continue;
        if (!kmc__depot_merge(c, id))
            continue;
        uint32_t inuse = KMC_LOAD(&s->inuse);
        if (state == KMC_SLAB_FULL && inuse) {
            kmc__slab_set_state(s, KMC_SLAB_PARTIAL);
            kmc__list_push(c, &c->d->partial, id);
        } else if (inuse == 0 && state != KMC_SLAB_EMPTY) {
            if (state == KMC_SLAB_PARTIAL)
                kmc__list_remove(c, &c->d->partial, id);
            slab_retire(c, id);
        }
    })
}

/* The live object at the lowest address, for reports. Cache locked, every
 * slab the depot's. */
static void *first_live(kmc_cache_t *c)
{
    FOR_EACH_COMMITTED(c, id, s, {
        (void)s;
        for (uint32_t o = 0; o < c->objperslab; o++)
            if (!kmc__slot_free(c, id, o))
                return kmc__slab_mem(c, id) + (size_t)o * c->slot_size + c->obj_offset;
    })
    return NULL;
}

/* allocs - frees, from the counters; exact when no thread is inside an
 * operation on @c. Cache locked. */
static uint64_t live_objects(const kmc_cache_t *c)
{
    kmc_stats_t s = {0};
    kmc__heaps_stats(c, &s, NULL);
    return c->d->depot_allocs + s.allocs - (c->d->depot_frees + s.frees - c->d->depot_late_double);
}

static kmc_status validate_locked(kmc_cache_t *c, size_t *problems);

kmc_status kmc_cache_destroy(kmc_cache_t *c)
{
    kmc__report_clear();
    return c->backing->destroy(c);
}

/* The part of destroying a private cache that is the depot's: every heap
 * back, then *@busy (and a report) if objects are still live, else what the
 * checks of a debug cache found. Both locks held. */
kmc_status kmc__depot_retire(kmc_cache_t *c, bool *busy)
{
    kmc__heaps_take_back(c, KMC_TAKE_FORCE); /* no other thread uses it now */
    depot_settle(c);
    uint64_t live = live_objects(c);
    *busy = live != 0;
    if (live)
        return kmc__report(KMC_EBUSY, c, first_live(c),
                           "Objects remaining in %s on __kmem_cache_shutdown(): %llu live", c->name,
                           (unsigned long long)live);
    return debug_fill(c) ? validate_locked(c, NULL) : KMC_OK;
}

/* --- growing ---------------------------------------------------------------- */

/* A slab slot to build a slab in: a released one, else the next unused one
 * of an arena, else a new arena's first. Cache locked. */
static kmc_status slab_slot(kmc_cache_t *c, uint32_t *out)
{
    uint32_t id = kmc__list_pop(c, &c->d->released);
    if (id == KMC_NIL) {
        kmc_arena_t *a = c->fill_arena;
        if (!a) {
            kmc_status st = c->backing->new_arena(c, &a);
            if (st != KMC_OK)
                return st;
            c->fill_arena = a;
        }
        id = (a->index << KMC_SLAB_ID_SHIFT) | a->bump++;
        if (a->bump == a->nslabs)
            c->fill_arena = NULL;
    }
    kmc__slab_arena(c, id)->live_slabs++;
    kmc__slab_set_state(kmc__slab(c, id), KMC_SLAB_NEW);
    *out = id;
    return KMC_OK;
}

/* Give a slab's memory back and keep its slot for reuse. Cache locked. */
static void slab_release(kmc_cache_t *c, uint32_t id)
{
    c->backing->release(c, id);
    kmc__slab_arena(c, id)->live_slabs--;
    kmc__list_push(c, &c->d->released, id);
    c->d->num_slabs--;
    c->d->slabs_released++;
}

/* An empty slab of the depot (on no list) waits on the empty list for the
 * purge delay. Cache locked. */
static void slab_retire(kmc_cache_t *c, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    kmc__slab_set_state(s, KMC_SLAB_EMPTY);
    s->hint = 0;
    uint32_t delay = kmc__purge_delay_ms();
    if (delay == 0) {
        slab_release(c, id);
        return;
    }
    s->empty_since = kmc__now_ms();
    kmc__list_push(c, &c->d->empty, id);
    kmc__purge_arm();
}

void kmc__depot_release_expired(kmc_cache_t *c, uint32_t now, bool all)
{
    uint32_t delay = kmc__purge_delay_ms();
    for (uint32_t id; (id = c->d->empty.tail) != KMC_NIL;) {
        if (!all && (uint32_t)(now - kmc__slab(c, id)->empty_since) < delay)
            break; /* the rest are younger */
        kmc__list_remove(c, &c->d->empty, id);
        slab_release(c, id);
    }
}

bool kmc__depot_has_empty(const kmc_cache_t *c) { return c->d->empty.count != 0; }

/* May @c commit one more slab? Past its limit, its empty slabs go back to
 * the OS first (the depot's; those a heap keeps come back at the next
 * purge); KMC_EBUSY (look in the depot again) when another thread is
 * building one, or when the threads' slabs, taken back, have free objects.
 * Cache locked. */
static kmc_status within_limit(kmc_cache_t *c)
{
    uint64_t limit = atomic_load_explicit(&c->limit, memory_order_relaxed);
    /* the slabs other threads are building count: they commit unlocked */
    if (!limit || (c->d->num_slabs + c->building + 1) * c->slab_size <= limit)
        return KMC_OK;
    kmc__depot_release_expired(c, 0, true);
    if ((c->d->num_slabs + c->building + 1) * c->slab_size <= limit)
        return KMC_OK;
    if (c->building) /* a slab on its way may serve this alloc: look again then */
        return KMC_EBUSY;
    /* the threads' slabs back to the depot: their free objects may serve it */
    kmc__heaps_take_back(c, KMC_TAKE_ALL);
    depot_settle(c);
    if (c->d->partial.head != KMC_NIL || c->d->empty.head != KMC_NIL)
        return KMC_EBUSY;
    uint64_t usage = (c->d->num_slabs + c->building) * c->slab_size;
    kmc__report(KMC_ELIMIT, c, NULL,
                "cache %s: a %zu-byte slab more would pass its limit of %llu bytes of slabs "
                "(%llu in use)",
                c->name, c->slab_size, (unsigned long long)limit, (unsigned long long)usage);
    kmc_report_t *r = kmc__report_slot();
    r->requested = c->slab_size;
    r->usage = usage;
    r->limit = limit;
    r->peak = c->peak_slabs * c->slab_size;
    return KMC_ELIMIT;
}

kmc_status kmc_cache_set_limit(kmc_cache_t *c, uint64_t bytes)
{
    kmc__report_clear();
    if (kmc__kmalloc_pinned(c))
        return kmc__report(KMC_EINVAL, c, NULL, "%s serves kmalloc: it takes no limit", c->name);
    if (!c->backing->chargeable)
        return kmc__report(KMC_EINVAL, c, NULL, "%s is a %s cache: it takes no limit", c->name,
                           c->backing->kind);
    atomic_store(&c->limit, bytes);
    return KMC_OK;
}

uint64_t kmc_cache_limit(const kmc_cache_t *c) { return atomic_load(&((kmc_cache_t *)c)->limit); }

/* Build one more slab and put it at the head of the depot's partial list.
 * The memory is committed and the constructor run without the lock, on a
 * NEW slab that no other thread can reach. Called unlocked; returns
 * unlocked. */
kmc_status kmc__depot_grow(kmc_cache_t *c)
{
    kmc_status st = c->backing->may_grow(c);
    if (st != KMC_OK)
        return st;
    kmc__cache_lock(c);
    if (c->d->partial.head != KMC_NIL || c->d->empty.head != KMC_NIL) {
        kmc__cache_unlock(c); /* another thread grew it, or a heap gave back */
        return KMC_OK;
    }
    if ((st = within_limit(c)) != KMC_OK) {
        kmc__cache_unlock(c);
        if (st != KMC_EBUSY)
            return st;
        sched_yield(); /* the caller looks in the depot again */
        return KMC_OK;
    }
    uint32_t id = KMC_NIL;
    uint8_t *mem = NULL;
    uint32_t *orig = NULL;
    st = slab_slot(c, &id);
    if (st == KMC_OK) {
        /* metadata is mapped already: set up the bitmaps now */
        mem = kmc__slab_mem(c, id);
        orig = kmc__debug_orig(c, kmc__slab_arena(c, id), kmc__slab_index(id), 0);
        kmc__slab_init_free(c, id);
        c->backing->claim(c, id);
        c->building++;
    }
    kmc__cache_unlock(c);
    if (st != KMC_OK)
        return st;

    int ctor_rc = 0;
    if (c->backing->commit(c, id) != 0) {
        st = kmc__report(KMC_ENOMEM, c, NULL, "the OS refused %zu bytes for a slab", c->slab_size);
    } else {
        if (debug_fill(c))
            kmc__debug_init_slab(c, mem, orig);
        for (uint32_t i = 0; c->ctor && i < c->objperslab; i++) {
            uint8_t *obj = mem + (size_t)i * c->slot_size + c->obj_offset;
            if ((ctor_rc = c->ctor(obj, c->size, c->ctor_arg)) != 0) {
                st = kmc__report(KMC_ECTOR, c, obj, "the constructor of %s failed", c->name);
                break;
            }
        }
    }

    kmc__cache_lock(c);
    c->building--;
    kmc_slab_t *s = kmc__slab(c, id);
    KMC_STORE(&s->owner, KMC_DEPOT);
    if (st == KMC_OK) {
        kmc__slab_set_state(s, KMC_SLAB_PARTIAL);
        kmc__list_push(c, &c->d->partial, id);
        c->d->num_slabs++;
        c->d->slabs_created++;
        if (c->d->num_slabs > c->peak_slabs)
            c->peak_slabs = c->d->num_slabs;
    } else if (ctor_rc > 0) {
        kmc__slab_set_state(s, KMC_SLAB_PINNED); /* live_slabs keeps counting it */
        kmc__slab_arena(c, id)->pinned++;
    } else {
        c->d->num_slabs++; /* slab_release counts it out */
        c->d->slabs_released--;
        slab_release(c, id);
    }
    kmc__cache_unlock(c);
    return st;
}

/* --- the depot's alloc and free ---------------------------------------------- */

/* One object from the depot's first partial slab (refilled from the empty
 * list), or NULL when the cache must grow. Cache locked. */
uint8_t *kmc__depot_take(kmc_cache_t *c)
{
    for (;;) {
        uint32_t id = c->d->partial.head;
        if (id == KMC_NIL) {
            id = kmc__list_pop(c, &c->d->empty); /* the newest: its memory is warm */
            if (id == KMC_NIL)
                return NULL;
            kmc__slab_set_state(kmc__slab(c, id), KMC_SLAB_PARTIAL);
            kmc__list_push(c, &c->d->partial, id);
        }
        kmc_slab_t *s = kmc__slab(c, id);
        kmc__depot_merge(c, id);
        _Atomic uint64_t *bits = kmc__slab_local(c, id);
        uint32_t hint = s->hint < c->bitmap_words ? s->hint : 0; /* a shared one: any value */
        uint32_t w = hint;
        while (w < c->bitmap_words && !KMC_LOAD(&bits[w]))
            w++;
        if (w == c->bitmap_words) { /* no free slot after all */
            kmc__list_remove(c, &c->d->partial, id);
            kmc__slab_set_state(s, KMC_SLAB_FULL);
            continue;
        }
        if (w - hint > c->d->max_scan)
            c->d->max_scan = w - hint;
        uint64_t x = KMC_LOAD(&bits[w]);
        uint32_t b = (uint32_t)__builtin_ctzll(x);
        KMC_STORE(&bits[w], x & (x - 1));
        s->hint = (uint16_t)w;
        uint32_t inuse = KMC_LOAD(&s->inuse) + 1;
        KMC_STORE(&s->inuse, inuse);
        if (inuse == c->objperslab) {
            kmc__list_remove(c, &c->d->partial, id);
            kmc__slab_set_state(s, KMC_SLAB_FULL);
        }
        c->d->depot_allocs++;
        return kmc__slab_mem(c, id) + (size_t)(w * 64 + b) * c->slot_size + c->obj_offset;
    }
}

/* Is slot @idx of slab @id live? Not free in the slab's bitmaps, nor in its
 * heap's copy for a CURRENT slab. Cache locked (a heap's copy is read as the
 * owner left it). */
bool kmc__depot_is_live(const kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    uint64_t bits[KMC_HEAP_BITS];
    if (kmc__heap_bits_of(c, kmc__slab(c, id), bits) &&
        (bits[idx / 64] & (UINT64_C(1) << (idx % 64))))
        return false;
    return !kmc__slot_free(c, id, idx);
}

kmc_status kmc__locate(kmc_cache_t *c, const void *p, kmc_arena_t **arena_out, uint32_t *id_out,
                       uint32_t *idx_out)
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
    size_t rel = in_slab - c->obj_offset; /* wraps below the first object */
    uint32_t idx = (uint32_t)(((unsigned __int128)rel * c->slot_recip) >> 48);
    size_t rem = rel - (size_t)idx * c->slot_size;
    bool live_slab = sidx < a->bump && kmc__slab_committed(kmc__slab_state(s));
    if (!live_slab || in_slab < c->obj_offset || idx >= c->objperslab || rem != 0) {
        if (live_slab && in_slab >= c->obj_offset && idx < c->objperslab)
            return kmc__report(KMC_EINVALID_FREE, c, p,
                               "Invalid free of 0x%llx in %s: %zu bytes into an object",
                               (unsigned long long)addr, c->name, rem);
        return kmc__report(KMC_EINVALID_FREE, c, p, "Invalid free of 0x%llx in %s: not an object",
                           (unsigned long long)addr, c->name);
    }
    uint32_t id = (a->index << KMC_SLAB_ID_SHIFT) | sidx;
    if (!c->backing->is_live(c, id, idx))
        return kmc__report(KMC_EDOUBLE_FREE, c, p, "Object already free: 0x%llx in %s",
                           (unsigned long long)addr, c->name);
    if (arena_out)
        *arena_out = a;
    *id_out = id;
    *idx_out = idx;
    return KMC_OK;
}

/* Mark a located object of a depot slab free, moving the slab between
 * lists. Cache locked. */
void kmc__depot_put(kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    kmc_slab_t *s = kmc__slab(c, id);
    _Atomic uint64_t *bits = kmc__slab_local(c, id);
    uint32_t w = idx / 64;
    KMC_STORE(&bits[w], KMC_LOAD(&bits[w]) | UINT64_C(1) << (idx % 64));
    if (w < s->hint)
        s->hint = (uint16_t)w;
    c->d->depot_frees++;
    uint32_t inuse = KMC_LOAD(&s->inuse) - 1;
    KMC_STORE(&s->inuse, inuse);
    uint8_t state = kmc__slab_state(s);
    if (inuse == 0) {
        if (state == KMC_SLAB_PARTIAL)
            kmc__list_remove(c, &c->d->partial, id);
        slab_retire(c, id);
    } else if (state == KMC_SLAB_FULL) {
        kmc__slab_set_state(s, KMC_SLAB_PARTIAL);
        kmc__list_push(c, &c->d->partial, id);
    }
}

/* A slab for a heap: the first partial one, else the newest empty one (its
 * memory is warm), taken off its list; KMC_NIL when there is none. Cache
 * locked. */
uint32_t kmc__depot_pop(kmc_cache_t *c)
{
    uint32_t id = c->d->partial.head;
    kmc_list_t *from = &c->d->partial;
    if (id == KMC_NIL) {
        id = c->d->empty.head;
        from = &c->d->empty;
    }
    if (id != KMC_NIL)
        kmc__list_remove(c, from, id);
    return id;
}

/* A slab a heap gives back: on the list its count says. Its owner is already
 * KMC_DEPOT and its remote bits merged. Cache locked. */
void kmc__depot_place(kmc_cache_t *c, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    s->hint = 0;
    s->next = s->prev = KMC_NIL;
    uint32_t inuse = KMC_LOAD(&s->inuse);
    if (inuse == 0) {
        slab_retire(c, id);
    } else if (inuse == c->objperslab) {
        kmc__slab_set_state(s, KMC_SLAB_FULL);
    } else {
        kmc__slab_set_state(s, KMC_SLAB_PARTIAL);
        kmc__list_push(c, &c->d->partial, id);
    }
}

/* --- consistency checks ------------------------------------------------------ */

/* A slab whose counter and bitmap disagree cannot tell which of its slots are
 * free: mark every object used, as SLUB does, so that none is handed out
 * twice. Its free slots are lost; its live objects can still be freed.
 * Cache locked, a depot slab. */
static void isolate_slab(kmc_cache_t *c, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    uint8_t state = kmc__slab_state(s);
    if (state == KMC_SLAB_PARTIAL)
        kmc__list_remove(c, &c->d->partial, id);
    else if (state == KMC_SLAB_EMPTY)
        kmc__list_remove(c, &c->d->empty, id);
    _Atomic uint64_t *bits = kmc__slab_local(c, id);
    for (uint32_t o = 0; debug_fill(c) && o < c->objperslab; o++)
        if (KMC_LOAD(&bits[o / 64]) & (UINT64_C(1) << (o % 64))) /* now used: live red zone */
            kmc__debug_on_alloc(c, kmc__slab_mem(c, id) + (size_t)o * c->slot_size + c->obj_offset,
                                1, c->size);
    for (uint32_t w = 0; w < c->bitmap_words; w++)
        KMC_STORE(&bits[w], 0);
    /* the slots it claimed free are now counted as handed out */
    c->d->depot_allocs += c->objperslab - KMC_LOAD(&s->inuse);
    KMC_STORE(&s->inuse, c->objperslab);
    s->hint = 0;
    kmc__slab_set_state(s, KMC_SLAB_FULL);
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

/* The slab that kmc__depot_take is about to use. Cache locked. */
static uint32_t next_depot_slab(const kmc_cache_t *c)
{
    return c->d->partial.head != KMC_NIL ? c->d->partial.head : c->d->empty.head;
}

uint8_t *kmc__depot_take_debug(kmc_cache_t *c, kmc_status *st)
{
    if (c->flags & KMC_CONSISTENCY_CHECKS) {
        uint32_t id = next_depot_slab(c);
        if (id != KMC_NIL && (*st = check_counts(c, id)) != KMC_OK)
            return NULL;
    }
    uint8_t *p = kmc__depot_take(c);
    if (!p)
        return NULL;
    *st = kmc__debug_check_alloc(c, p);
    if (*st != KMC_OK) {
        /* damage found (and repaired): the object stays free */
        kmc_report_t keep = *kmc__report_slot();
        uint32_t id, idx;
        if (kmc__locate(c, p, NULL, &id, &idx) == KMC_OK)
            kmc__depot_put(c, id, idx);
        c->d->depot_allocs--;
        c->d->depot_frees--;
        *kmc__report_slot() = keep;
        return NULL;
    }
    return p;
}

/* One object through the depot, for debug caches and threads without a
 * heap; @orig is the size asked for (kmalloc), the cache's size otherwise. */
static void *depot_alloc(kmc_cache_t *c, int zero, size_t orig, kmc_status *status)
{
    for (;;) {
        kmc__cache_lock(c);
        uint8_t *p;
        kmc_status st = KMC_OK;
        if (c->flags & KMC_DEBUG_FLAGS) {
            p = kmc__depot_take_debug(c, &st);
            if (p) {
                kmc__debug_on_alloc(c, p, zero, orig);
                uint32_t id, idx;
                kmc_arena_t *a;
                if (c->flags & KMC_RED_ZONE) {
                    (void)kmc__locate(c, p, &a, &id, &idx);
                    *kmc__debug_orig(c, a, kmc__slab_index(id), idx) = (uint32_t)orig;
                }
            }
        } else {
            p = kmc__depot_take(c);
        }
        kmc__cache_unlock(c);
        if (st != KMC_OK) {
            *status = st;
            return NULL;
        }
        if (p) {
            if (zero)
                memset(p, 0, orig);
            return p;
        }
        if ((st = kmc__depot_grow(c)) != KMC_OK) {
            *status = st;
            return NULL;
        }
    }
}

void *kmc__cache_alloc_sized(kmc_cache_t *c, int zero, size_t orig)
{
    if (!(c->flags & KMC_RED_ZONE) || orig >= c->size)
        return kmc_cache_alloc(c, zero);
    kmc__report_clear();
    kmc_status st = KMC_OK;
    uint32_t group = kmc__group_charge(c, NULL, c->size, &st);
    if (st != KMC_OK)
        return NULL;
    return kmc__group_settle(c, depot_alloc(c, zero, orig, &st), group);
}

/* A private cache's locked alloc: kmc_cache_alloc's slow path when the
 * cache has no heaps (debug flags, or a thread without one). */
void *kmc__depot_alloc(kmc_cache_t *c, int zero)
{
    kmc_status st;
    return depot_alloc(c, zero, c->size, &st);
}

kmc_status kmc_cache_alloc_bulk(kmc_cache_t *c, size_t n, void **out, int zero)
{
    kmc__report_clear();
    if (zero && c->ctor)
        return kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor",
                           c->name);
    for (size_t got = 0; got < n; got++) {
        if ((out[got] = kmc_cache_alloc(c, 0)))
            continue;
        /* all or nothing: give back what was taken, keeping the report */
        kmc_status st = kmc_last_report()->status;
        kmc_report_t keep = *kmc__report_slot();
        for (size_t i = 0; i < got; i++)
            kmc_cache_free(c, out[i]);
        *kmc__report_slot() = keep;
        return st == KMC_OK ? KMC_ENOMEM : st;
    }
    if (zero)
        for (size_t i = 0; i < n; i++)
            memset(out[i], 0, c->size);
    return KMC_OK;
}

/* A private cache's locked free, kmc_cache_free's locked path: debug
 * caches, slabs of the depot, threads without a heap. Returns KMC_OK or an error (with a report); *@owned when
 * the slab turned out to be owned by a heap (nothing done: the caller frees
 * it there). */
kmc_status kmc__depot_free(kmc_cache_t *c, void *p, bool *owned)
{
    uint32_t id, idx;
    kmc_arena_t *a;
    *owned = false;
    kmc__cache_lock(c);
    kmc_status st = kmc__locate(c, p, &a, &id, &idx);
    if (st == KMC_OK && KMC_LOAD(&kmc__slab(c, id)->owner) != KMC_DEPOT) {
        kmc__cache_unlock(c);
        *owned = true;
        return KMC_OK;
    }
    if (st == KMC_OK && (c->flags & KMC_CONSISTENCY_CHECKS))
        st = check_counts(c, id);
    uint32_t *orig = st == KMC_OK ? kmc__debug_orig(c, a, kmc__slab_index(id), idx) : NULL;
    if (st == KMC_OK && (c->flags & KMC_DEBUG_FLAGS))
        st = kmc__debug_check_free(c, p, orig ? *orig : c->size);
    if (st == KMC_OK) {
        if (c->flags & KMC_DEBUG_FLAGS)
            kmc__debug_on_free(c, p);
        if (orig)
            *orig = (uint32_t)c->size;
        kmc__depot_put(c, id, idx);
    }
    kmc__cache_unlock(c);
    return st;
}

kmc_status kmc_cache_check_free(kmc_cache_t *c, const void *p)
{
    uint32_t id, idx;
    kmc_arena_t *a;
    kmc__cache_lock(c);
    kmc_status st = kmc__locate(c, p, &a, &id, &idx);
    if (st == KMC_OK && (c->flags & (KMC_RED_ZONE | KMC_POISON))) {
        uint32_t *orig = kmc__debug_orig(c, a, kmc__slab_index(id), idx);
        st = kmc__debug_check_free(c, (uint8_t *)p, orig ? *orig : c->size);
    }
    kmc__cache_unlock(c);
    return st;
}

/* Can live object @p of @c hold @size bytes where it is? With red zones its
 * kmalloc red zone moves to @size. */
int kmc__cache_resize(kmc_cache_t *c, void *p, size_t size)
{
    if (size > c->size)
        return 0;
    uint32_t id, idx;
    kmc_arena_t *a;
    kmc__cache_lock(c);
    int ok = kmc__locate(c, p, &a, &id, &idx) == KMC_OK;
    uint32_t *orig = ok ? kmc__debug_orig(c, a, kmc__slab_index(id), idx) : NULL;
    if (orig) {
        if (size < *orig)
            memset((uint8_t *)p + size, KMC_RED_ACTIVE, *orig - size);
        *orig = (uint32_t)size;
    }
    kmc__cache_unlock(c);
    return ok;
}

/* ksize of live object @p of @c, 0 with a report if it is none. As SLUB
 * does, asking makes all of it usable: its kmalloc red zone is dropped. */
size_t kmc__cache_ksize(kmc_cache_t *c, const void *p)
{
    uint32_t id, idx;
    kmc_arena_t *a;
    kmc__cache_lock(c);
    size_t n = kmc__locate(c, p, &a, &id, &idx) == KMC_OK ? c->size : 0;
    uint32_t *orig = n ? kmc__debug_orig(c, a, kmc__slab_index(id), idx) : NULL;
    if (orig)
        *orig = (uint32_t)c->size;
    kmc__cache_unlock(c);
    return n;
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
        *object_start = (void *)(a->base + (off - in_slab) + (size_t)idx * c->slot_size +
                                 c->obj_offset);
    return c;
}

kmc_status kmc_free(void *p)
{
    kmc__report_clear();
    kmc_cache_t *c = kmc_owner(p, NULL);
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
    kmc__cache_lock(c);
    uint64_t before = c->d->slabs_released;
    c->backing->shrink_first(c);
    if (kmc__heaps_take_back(c, KMC_TAKE_ALL))
        kmc__arenas_free_dead(c); /* no thread is inside a free that began before */
    depot_settle(c);
    kmc__depot_release_expired(c, 0, true);
    bytes += (c->d->slabs_released - before) * c->slab_size;
    bytes += c->backing->shrink_last(c);
    kmc__cache_unlock(c);
    return bytes;
}

void kmc__depot_recount(kmc_cache_t *c)
{
    depot_settle(c);
    uint64_t live = 0;
    FOR_EACH_COMMITTED(c, id, s, {
        (void)id;
        live += KMC_LOAD(&s->inuse);
    })
    c->d->depot_allocs += live - live_objects(c);
}

static kmc_status validate_locked(kmc_cache_t *c, size_t *problems)
{
    size_t count = 0;
    kmc_status first = KMC_OK;
    uint64_t live = 0, partial = 0, empty = 0, committed_slabs = 0;
    kmc_report_t first_report;
    /* without a process-wide barrier, other threads' slabs stay theirs: they
     * are not walked, and the counters cannot be compared */
    bool all = kmc__heaps_take_back(c, KMC_TAKE_ALL);
    depot_settle(c);
    c->backing->validate_first(c, &count, &first, &first_report);
    FOR_EACH_COMMITTED(c, id, slab, {
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
        partial += kmc__slab_state(slab) == KMC_SLAB_PARTIAL;
        empty += kmc__slab_state(slab) == KMC_SLAB_EMPTY;
        committed_slabs++;
        live += KMC_LOAD(&slab->inuse);
    })
    uint64_t counted = live_objects(c);
    if ((all && (live != counted || committed_slabs != c->d->num_slabs)) ||
        partial != c->d->partial.count || empty != c->d->empty.count) {
        kmc_status st = kmc__report(
            KMC_ECORRUPT, c, NULL,
            "counters of %s do not add up: %llu/%llu live, %llu/%u partial, %llu/%u empty", c->name,
            (unsigned long long)live, (unsigned long long)counted, (unsigned long long)partial,
            c->d->partial.count, (unsigned long long)empty, c->d->empty.count);
        if (first == KMC_OK) {
            first = st;
            first_report = *kmc__report_slot();
        }
        count++;
    }
    /* double frees found when bits met, not yet told */
    uint64_t late = c->d->depot_late_double;
    kmc_stats_t unused = {0};
    kmc__heaps_stats(c, &unused, &late);
    if (late > c->d->late_double_reported) {
        uint64_t n = late - c->d->late_double_reported;
        c->d->late_double_reported = late;
        kmc_status st = kmc__report(KMC_EDOUBLE_FREE, c, NULL,
                                    "%llu object(s) of %s were freed twice by threads racing "
                                    "to free them; each was freed once",
                                    (unsigned long long)n, c->name);
        if (first == KMC_OK) {
            first = st;
            first_report = *kmc__report_slot();
        }
        count += n;
    }
    c->backing->validate_last(c, &count, &first, &first_report);
    if (first != KMC_OK) {
        first_report.problems = count;
        *kmc__report_slot() = first_report;
    }
    if (problems)
        *problems = count;
    return first;
}

kmc_status kmc_cache_validate(kmc_cache_t *c, size_t *problems)
{
    kmc__report_clear();
    kmc__cache_lock(c);
    kmc_status st = validate_locked(c, problems);
    kmc__cache_unlock(c);
    return st;
}

void kmc_cache_stats(kmc_cache_t *c, kmc_stats_t *o)
{
    memset(o, 0, sizeof(*o));
    kmc__cache_lock(c);
    kmc__heaps_stats(c, o, NULL); /* allocs, frees, remote_frees, cached_objs, heaps' slabs */
    o->allocs += c->d->depot_allocs;
    o->frees += c->d->depot_frees;
    o->frees -= c->d->depot_late_double;
    if (o->frees > o->allocs) /* reads racing other threads' counts */
        o->frees = o->allocs;
    o->active_objs = o->allocs - o->frees;
    o->num_objs = c->d->num_slabs * c->objperslab;
    o->objsize = c->slot_size;
    o->objperslab = c->objperslab;
    o->pagesperslab = c->slab_size / kmc_page_size();
    o->empty_slabs += c->d->empty.count;
    o->partial_slabs += c->d->partial.count;
    o->active_slabs = c->d->num_slabs - o->empty_slabs;
    o->num_slabs = c->d->num_slabs;
    o->size = c->size;
    o->align = c->align;
    o->slab_size = c->slab_size;
    o->slabs_created = c->d->slabs_created;
    o->slabs_released = c->d->slabs_released;
    o->committed_bytes = c->d->num_slabs * c->slab_size;
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (kmc__arena(c, i)) {
            o->metadata_bytes += kmc__arena(c, i)->meta_bytes;
            o->reserved_bytes += kmc__arena(c, i)->bytes;
        }
    o->arenas = c->live_arenas;
    o->bitmap_words = c->bitmap_words;
    if (c->d->max_scan > o->max_scan)
        o->max_scan = c->d->max_scan;
    o->flags = c->flags;
    c->backing->stats(c, o);
    kmc__cache_unlock(c);
}

void kmc_cache_for_each_live(kmc_cache_t *c, void (*fn)(void *, void *), void *arg)
{
    kmc__cache_lock(c);
    kmc__heaps_take_back(c, KMC_TAKE_ALL);
    depot_settle(c);
    FOR_EACH_COMMITTED(c, id, s, {
        (void)s;
        uint8_t *mem = kmc__slab_mem(c, id);
        for (uint32_t o = 0; o < c->objperslab; o++)
            if (c->backing->is_live(c, id, o))
                fn(mem + (size_t)o * c->slot_size + c->obj_offset, arg);
    })
    kmc__cache_unlock(c);
}

const char *kmc_cache_name(const kmc_cache_t *c) { return c->name; }
size_t kmc_cache_size(const kmc_cache_t *c) { return c->size; }
size_t kmc_cache_align(const kmc_cache_t *c) { return c->align; }
unsigned kmc_cache_flags(const kmc_cache_t *c) { return c->flags; }

size_t kmc_caches(kmc_cache_t **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache, n++)
        if (n < max)
            out[n] = c;
    pthread_mutex_unlock(&kmc__caches_lock);
    return n;
}
