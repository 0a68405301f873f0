/*
 * arena.c - the private backing: a cache's slabs in arenas of this process's
 * own memory. An arena is one reservation of address space, aligned to its
 * size so that an address finds its arena through the owner table
 * (registry.c), with its slab descriptors and bitmaps in a mapping of their
 * own; each is twice the last, up to 2^KMC_ARENA_MAX_SHIFT bytes, so that
 * address space grows in proportion to use. A slab's memory is committed
 * when it is built and decommitted when it is released; an arena whose
 * slabs are all released goes back at the next shrink.
 *
 * The backing's operations (internal.h) are the depot's and the heaps' own:
 * what is live is what the bitmaps and heaps say, and the cache lock is a
 * test-and-set lock in the cache.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

/* Metadata of an arena of @nslabs slabs: descriptors, the two bitmaps, and
 * with red zones the size each object was asked for. */
static size_t meta_layout(const kmc_cache_t *c, uint32_t nslabs, size_t *local_at,
                          size_t *remote_at, size_t *orig_at)
{
    size_t words = (size_t)nslabs * c->bitmap_words * sizeof(uint64_t);
    *local_at = round_up((size_t)nslabs * sizeof(kmc_slab_t), 64);
    *remote_at = round_up(*local_at + words, 64);
    *orig_at = *remote_at + words;
    size_t end = *orig_at;
    if (c->flags & KMC_RED_ZONE)
        end += (size_t)nslabs * c->objperslab * sizeof(uint32_t);
    return round_up(end, kmc_page_size());
}

/* Set arena directory entry @index (making its chunk: -1 without memory).
 * Cache locked. */
static int arena_set(kmc_cache_t *c, uint32_t index, kmc_arena_t *a)
{
    _Atomic(kmc_arena_slot_t *) *dir = &c->arena_dir[index / KMC_ARENA_DIR_CHUNK];
    kmc_arena_slot_t *chunk = atomic_load_explicit(dir, memory_order_acquire);
    if (!chunk) {
        if (!a)
            return 0;
        chunk = calloc(KMC_ARENA_DIR_CHUNK, sizeof(*chunk));
        if (!chunk)
            return -1;
        atomic_store_explicit(dir, chunk, memory_order_release);
    }
    atomic_store_explicit(&chunk[index % KMC_ARENA_DIR_CHUNK], a, memory_order_release);
    return 0;
}

/* Make @a (filled in by the caller, memory mapped) arena 0 of @c, findable
 * from its addresses: a shared cache's one arena. KMC_OK or KMC_ENOMEM. */
kmc_status kmc__arena_install(kmc_cache_t *c, kmc_arena_t *a)
{
    a->cache = c;
    a->index = 0;
    if (arena_set(c, 0, a) != 0 || kmc__registry_insert(a) != 0) {
        (void)arena_set(c, 0, NULL);
        return kmc__report(KMC_ENOMEM, c, NULL, "no memory for the owner table");
    }
    c->nr_arenas = c->live_arenas = 1;
    return KMC_OK;
}

/* Undo kmc__arena_install; the caller unmaps the memory. */
void kmc__arena_uninstall(kmc_cache_t *c, kmc_arena_t *a)
{
    kmc__registry_remove(a);
    (void)arena_set(c, a->index, NULL);
    c->nr_arenas = c->live_arenas = 0;
    for (uint32_t i = 0; i < KMC_MAX_ARENAS / KMC_ARENA_DIR_CHUNK; i++)
        free(atomic_load(&c->arena_dir[i]));
}

/* Give an arena's address space back. Its descriptor and metadata mapping
 * outlive it, with the metadata's pages dropped (they read as zero: no slab
 * committed), until the next shrink that has taken every thread's heap back,
 * or the cache's destroy: a free of a stale pointer that read the owner
 * table just before the arena left it still reads memory that exists.
 * Cache locked. */
static void arena_release(kmc_cache_t *c, kmc_arena_t *a)
{
    if (c->fill_arena == a)
        c->fill_arena = NULL;
    kmc__registry_remove(a);
    if (!a->pinned) {
        kmc__os_unreserve((void *)a->base, a->bytes);
    } else {
        /* leave the pinned slabs mapped (and the range reserved) for good */
        for (uint32_t s = 0; s < a->bump; s++)
            if (kmc__slab_state(&a->slabs[s]) != KMC_SLAB_PINNED)
                kmc__os_decommit((uint8_t *)a->base + ((size_t)s << c->slab_shift), c->slab_size);
    }
    kmc__os_zero_pages(a->slabs, a->meta_bytes);
    (void)arena_set(c, a->index, NULL);
    c->live_arenas--;
    a->next_dead = c->dead_arenas;
    c->dead_arenas = a;
}

static void spare_arena(kmc_cache_t *c, kmc_arena_t *a)
{
    if (a) {
        a->next_dead = c->spare_arenas;
        c->spare_arenas = a;
    }
}

/* Unmap the metadata of arenas released before; their descriptors become
 * spares. Cache locked, and every heap seen idle since they were released:
 * no free path still reads their metadata (see arena_release). */
void kmc__arenas_free_dead(kmc_cache_t *c)
{
    for (kmc_arena_t *a = c->dead_arenas, *next; a; a = next) {
        next = a->next_dead;
        kmc__os_unmap_meta(a->slabs, a->meta_bytes);
        _Atomic uint16_t *tags = atomic_load(&a->tags);
        if (tags)
            kmc__os_unmap_meta((void *)tags, a->tags_bytes);
        atomic_store(&a->tags, NULL);
        spare_arena(c, a);
    }
    c->dead_arenas = NULL;
}

/* The descriptors themselves are type-stable while the cache lives: kept
 * for its next arenas, freed at destroy. kmc_owner reads a descriptor
 * without any lock, and one that read the owner table before the arena
 * left it still finds this cache in it (every other field is checked
 * again by the free paths, which look the address up anew). */
static void free_spare_arenas(kmc_cache_t *c)
{
    for (kmc_arena_t *a = c->spare_arenas, *next; a; a = next) {
        next = a->next_dead;
        free(a);
    }
    c->spare_arenas = NULL;
}

/* A new arena, the next size up, for slabs never used yet. Cache locked. */
static kmc_status arena_new(kmc_cache_t *c, kmc_arena_t **out)
{
    uint32_t index = c->nr_arenas;
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (!kmc__arena(c, i)) {
            index = i;
            break;
        }
    if (index >= KMC_MAX_ARENAS)
        return kmc__report(KMC_ENOMEM, c, NULL, "cache %s has %u arenas, the most", c->name,
                           (unsigned)KMC_MAX_ARENAS);
    size_t bytes = c->next_arena;
    uint32_t nslabs = (uint32_t)(bytes >> c->slab_shift);
    size_t local_at, remote_at, orig_at;
    size_t meta = meta_layout(c, nslabs, &local_at, &remote_at, &orig_at);
    kmc_arena_t *a = c->spare_arenas;
    if (a)
        c->spare_arenas = a->next_dead;
    else
        a = calloc(1, sizeof(*a));
    void *base = a ? kmc__os_reserve(bytes, bytes) : NULL;
    uint8_t *m = base ? kmc__os_map_meta(meta) : NULL;
    if (!m) {
        if (base)
            kmc__os_unreserve(base, bytes);
        spare_arena(c, a);
        return kmc__report(KMC_ENOMEM, c, NULL, "the OS refused %zu bytes for an arena", bytes);
    }
    a->bump = a->live_slabs = a->pinned = 0;
    atomic_store(&a->tags, NULL); /* mapped at its first charge */
    a->next_dead = NULL;
    a->base = (uintptr_t)base;
    a->bytes = bytes;
    a->index = index;
    a->nslabs = nslabs;
    a->slabs = (kmc_slab_t *)m;
    a->local = (_Atomic uint64_t *)(m + local_at);
    a->remote = (_Atomic uint64_t *)(m + remote_at);
    a->orig = (c->flags & KMC_RED_ZONE) ? (uint32_t *)(m + orig_at) : NULL;
    a->meta_bytes = meta;
    a->cache = c;
    if (arena_set(c, index, a) != 0 || kmc__registry_insert(a) != 0) {
        (void)arena_set(c, index, NULL);
        kmc__os_unmap_meta(m, meta);
        kmc__os_unreserve(base, bytes);
        spare_arena(c, a);
        return kmc__report(KMC_ENOMEM, c, NULL, "no memory for the owner table");
    }
    if (index == c->nr_arenas)
        c->nr_arenas++;
    c->live_arenas++;
    if (c->next_arena < ((size_t)1 << KMC_ARENA_MAX_SHIFT))
        c->next_arena *= 2; /* address space in proportion to use */
    *out = a;
    return KMC_OK;
}

/* --- the backing's operations ------------------------------------------------------ */

static kmc_status may_grow(kmc_cache_t *c) { return (void)c, KMC_OK; }
static void claim(kmc_cache_t *c, uint32_t id) { (void)c, (void)id; }

static int commit(kmc_cache_t *c, uint32_t id)
{
    return kmc__os_commit(kmc__slab_mem(c, id), c->slab_size);
}

static void release(kmc_cache_t *c, uint32_t id)
{
    kmc__os_decommit(kmc__slab_mem(c, id), c->slab_size);
    kmc__slab_set_state(kmc__slab(c, id), KMC_SLAB_RELEASED);
}

static void own_lock(kmc_cache_t *c) { kmc__lock(&c->lock); }
static void own_unlock(kmc_cache_t *c) { kmc__unlock(&c->lock); }
static void nothing(kmc_cache_t *c) { (void)c; }

/* The arenas whose slabs are all released go, with their metadata. */
static size_t release_arenas(kmc_cache_t *c)
{
    size_t bytes = 0;
    for (uint32_t i = 0; i < c->nr_arenas; i++) {
        kmc_arena_t *a = kmc__arena(c, i);
        if (!a || a->live_slabs)
            continue;
        /* drop this arena's released slots from the list, then the arena */
        for (uint32_t r = c->d->released.head; r != KMC_NIL;) {
            uint32_t next = kmc__slab(c, r)->next;
            if ((r >> KMC_SLAB_ID_SHIFT) == i)
                kmc__list_remove(c, &c->d->released, r);
            r = next;
        }
        bytes += a->meta_bytes;
        arena_release(c, a);
    }
    while (c->nr_arenas && !kmc__arena(c, c->nr_arenas - 1))
        c->nr_arenas--;
    if (!c->live_arenas)
        c->next_arena = c->first_arena;
    return bytes;
}

static void validate_nothing(kmc_cache_t *c, size_t *count, kmc_status *first,
                             kmc_report_t *first_report)
{
    (void)c, (void)count, (void)first, (void)first_report;
}

static void stats(kmc_cache_t *c, kmc_stats_t *o) { (void)c, (void)o; }

static kmc_status destroy(kmc_cache_t *c)
{
    if (kmc__kmalloc_pinned(c))
        return kmc__report(KMC_EBUSY, c, NULL, "%s serves kmalloc: it is never destroyed", c->name);
    pthread_mutex_lock(&kmc__caches_lock);
    kmc__cache_lock(c);
    bool busy;
    kmc_status st = kmc__depot_retire(c, &busy);
    if (busy) {
        kmc__cache_unlock(c);
        pthread_mutex_unlock(&kmc__caches_lock);
        return st;
    }
    for (uint32_t i = 0; i < c->nr_arenas; i++)
        if (kmc__arena(c, i))
            arena_release(c, kmc__arena(c, i));
    kmc__arenas_free_dead(c);
    free_spare_arenas(c);
    kmc__cache_unlink(c);
    kmc__cache_unlock(c);
    pthread_mutex_unlock(&kmc__caches_lock);

    kmc__heaps_free(c);
    for (uint32_t i = 0; i < KMC_MAX_ARENAS / KMC_ARENA_DIR_CHUNK; i++)
        free(atomic_load(&c->arena_dir[i]));
    free(c);
    return st;
}

/* The lock is copied into the child: taken before fork, with every heap's
 * thread held out of its fast paths (thread.c waits for them). */
static void fork_lock(kmc_cache_t *c)
{
    kmc__lock(&c->lock);
    kmc__heaps_hold(c, true);
}

static void fork_unlock(kmc_cache_t *c)
{
    kmc__heaps_hold(c, false);
    kmc__unlock(&c->lock);
}

const kmc_backing_t kmc__private_backing = {
    .kind = "private",
    .serves_kmalloc = true,
    .chargeable = true,
    .lock = own_lock,
    .unlock = own_unlock,
    .alloc = kmc__depot_alloc,
    .free = kmc__depot_free,
    .is_live = kmc__depot_is_live,
    .may_grow = may_grow,
    .new_arena = arena_new,
    .claim = claim,
    .commit = commit,
    .release = release,
    .shrink_first = nothing,
    .shrink_last = release_arenas,
    .validate_first = validate_nothing,
    .validate_last = validate_nothing,
    .stats = stats,
    .destroy = destroy,
    .fork_lock = fork_lock,
    .fork_unlock = fork_unlock,
    .fork_child = kmc__heaps_after_fork,
};
