/*
 * thread.c - thread indices, what happens when a thread exits, and fork().
 *
 * Each thread that calls the engine gets a small index (its heap in every
 * cache), recycled when it exits; the first KMC_MAX_HEAPS threads have
 * heaps, later ones use the depot. A thread's exit gives its heaps' slabs
 * back (a pthread key's destructor), as kmc_thread_flush does on demand.
 *
 * fork(): every engine lock is taken before the fork and released after it
 * in both processes (pthread_atfork, registered when the engine is loaded,
 * before any lock can be held), so the child never inherits a lock
 * that a thread it does not have was holding. Each cache's backing says
 * which of its locks are copied (a shared cache's lives in its region,
 * shared rather than copied, and is left alone) and repairs the child.
 * Threads inside a fast path hold no lock: in the child their heaps are
 * given back to the depot (heap.c).
 */
#include <stdlib.h>

#include "internal.h"

static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t used[KMC_MAX_HEAPS / 64]; /* indices taken; threads_lock */
static pthread_key_t exit_key;

/* Give thread index @index's slabs in every cache back to the depots. */
static void flush_index(uint32_t index, bool close)
{
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache) {
        kmc_heap_t *h = kmc__heap_at(c, index);
        if (!h)
            continue;
        kmc__cache_lock(c);
        kmc__heap_flush(c, h, close);
        kmc__stock_retire(h->stock); /* its memory group charges too */
        kmc__cache_unlock(c);
    }
    pthread_mutex_unlock(&kmc__caches_lock);
}

static void release_index(uint32_t index)
{
    pthread_mutex_lock(&threads_lock);
    used[index / 64] &= ~(UINT64_C(1) << (index % 64));
    pthread_mutex_unlock(&threads_lock);
}

static void thread_exit(void *arg)
{
    (void)arg;
    uint32_t self = kmc__self;
    /* a later call (another key's destructor) uses the depot: registering
     * again could come after the last round of destructors */
    kmc__self = KMC_NIL;
    kmc__alloc_self_set();
    if (self - 1 < KMC_MAX_HEAPS) {
        flush_index(self - 1, true);
        release_index(self - 1);
    }
}

void kmc_thread_flush(void)
{
    uint32_t self = kmc__self;
    if (self - 1 < KMC_MAX_HEAPS)
        flush_index(self - 1, false);
}

uint32_t kmc__thread_register(void)
{
    uint32_t self = KMC_NIL; /* no heap: the depot serves this thread */
    pthread_mutex_lock(&threads_lock);
    for (uint32_t w = 0; w < KMC_MAX_HEAPS / 64; w++)
        if (~used[w]) {
            uint32_t b = (uint32_t)__builtin_ctzll(~used[w]);
            used[w] |= UINT64_C(1) << b;
            self = w * 64 + b + 1;
            break;
        }
    pthread_mutex_unlock(&threads_lock);
    if (self != KMC_NIL && pthread_setspecific(exit_key, (void *)1) != 0) {
        release_index(self - 1); /* no exit hook: better no heap */
        self = KMC_NIL;
    }
    kmc__self = self;
    kmc__alloc_self_set();
    return self;
}

/* --- fork ------------------------------------------------------------------------ */

/* Before fork: every lock, then every other thread out of its fast paths
 * (the take-back handshake, without taking anything): the child then finds
 * every heap at a point where its lists are whole. */
static void fork_prepare(void)
{
    kmc__kmalloc_lock(false);
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache)
        c->backing->fork_lock(c);
    /* (no cache, no heap: a process that never made one pays no barrier) */
    if (kmc__caches_first && kmc__os_barrier() == 0)
        for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache)
            kmc__heaps_wait_idle(c);
    kmc__registry_lock_all();
    kmc__kmalloc_lock(true);
    pthread_mutex_lock(&threads_lock);
    kmc__purge_lock_all();
    kmc__options_lock(true);
    kmc__groups_lock(true);
}

static void unlock_all(bool child)
{
    kmc__groups_lock(false);
    kmc__options_lock(false);
    kmc__purge_unlock_all(child);
    pthread_mutex_unlock(&threads_lock);
    kmc__kmalloc_unlock(true);
    kmc__registry_unlock_all();
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache)
        c->backing->fork_unlock(c);
    pthread_mutex_unlock(&kmc__caches_lock);
    kmc__kmalloc_unlock(false);
}

static void fork_parent(void) { unlock_all(false); }

static void fork_child(void)
{
    kmc__groups_after_fork(); /* before its lock is let go */
    unlock_all(true);
    /* only the forking thread survives: every other index is free again */
    uint32_t me = kmc__self - 1;
    for (uint32_t w = 0; w < KMC_MAX_HEAPS / 64; w++)
        used[w] = 0;
    if (me < KMC_MAX_HEAPS)
        used[me / 64] |= UINT64_C(1) << (me % 64);
    kmc__purge_defer(true);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache)
        c->backing->fork_child(c, me);
    kmc__purge_defer(false);
}

/* When the engine is loaded, before any of its locks can be taken: a fork
 * handler registered later would miss a lock another thread took first (a
 * program whose first use was a large kmalloc forked while another thread
 * held the table's lock, and its child waited on it for ever). */
__attribute__((constructor)) static void engine_loaded(void)
{
    if (pthread_key_create(&exit_key, thread_exit) != 0)
        abort(); /* at load: nothing to recover */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}
