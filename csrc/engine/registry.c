/*
 * registry.c - from an address to the arena that holds it, in O(1).
 *
 * A two-level table indexed by address >> KMC_ARENA_SHIFT: a fixed root of
 * leaf pointers, leaves mapped on first use and never freed. Readers take no
 * lock (acquire loads); writers serialise on one mutex. Arena descriptors
 * are recycled, never freed, so a reader racing with a removal reads a
 * descriptor that still exists (and then finds it belongs to nobody).
 */
#include <stdatomic.h>
#include <string.h>

#include "internal.h"

#define ADDRESS_BITS 48 /* user space on x86_64 and aarch64 (4-level tables) */
#define INDEX_BITS   (ADDRESS_BITS - KMC_ARENA_SHIFT)
#define LEAF_BITS    11
#define ROOT_BITS    (INDEX_BITS - LEAF_BITS)
#define LEAF_ENTRIES ((size_t)1 << LEAF_BITS)

typedef struct leaf_s {
    _Atomic(kmc_arena_t *) arena[LEAF_ENTRIES];
} leaf_t;

static _Atomic(leaf_t *) root[(size_t)1 << ROOT_BITS];
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static kmc_arena_t *recycled; /* guarded by registry_lock */

static bool split(uintptr_t address, size_t *r, size_t *l)
{
    uintptr_t index = address >> KMC_ARENA_SHIFT;
    if (index >> INDEX_BITS)
        return false;
    *r = index >> LEAF_BITS;
    *l = index & (LEAF_ENTRIES - 1);
    return true;
}

int kmc__registry_insert(kmc_arena_t *arena)
{
    size_t r, l;
    if (!split(arena->base, &r, &l))
        return -1;
    pthread_mutex_lock(&registry_lock);
    leaf_t *leaf = atomic_load_explicit(&root[r], memory_order_acquire);
    if (!leaf) {
        leaf = kmc__os_map_meta(sizeof(leaf_t));
        if (!leaf) {
            pthread_mutex_unlock(&registry_lock);
            return -1;
        }
        atomic_store_explicit(&root[r], leaf, memory_order_release);
    }
    atomic_store_explicit(&leaf->arena[l], arena, memory_order_release);
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void kmc__registry_remove(kmc_arena_t *arena)
{
    size_t r, l;
    if (!split(arena->base, &r, &l))
        return;
    pthread_mutex_lock(&registry_lock);
    leaf_t *leaf = atomic_load_explicit(&root[r], memory_order_acquire);
    if (leaf)
        atomic_store_explicit(&leaf->arena[l], NULL, memory_order_release);
    pthread_mutex_unlock(&registry_lock);
}

kmc_arena_t *kmc__registry_lookup(uintptr_t address)
{
    size_t r, l;
    if (!split(address, &r, &l))
        return NULL;
    leaf_t *leaf = atomic_load_explicit(&root[r], memory_order_acquire);
    if (!leaf)
        return NULL;
    return atomic_load_explicit(&leaf->arena[l], memory_order_acquire);
}

kmc_arena_t *kmc__arena_get(void)
{
    pthread_mutex_lock(&registry_lock);
    kmc_arena_t *a = recycled;
    if (a)
        recycled = a->next_recycled;
    pthread_mutex_unlock(&registry_lock);
    if (!a) {
        a = kmc__os_map_meta(sizeof(*a));
        if (!a)
            return NULL;
    }
    memset(a, 0, sizeof(*a));
    return a;
}

void kmc__arena_put(kmc_arena_t *arena)
{
    pthread_mutex_lock(&registry_lock);
    arena->cache = NULL;
    arena->next_recycled = recycled;
    recycled = arena;
    pthread_mutex_unlock(&registry_lock);
}
