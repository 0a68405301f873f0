/*
 * registry.c - from an address to the arena that holds it, in O(1).
 *
 * A two-level table indexed by address >> KMC_ARENA_MIN_SHIFT (1 MiB, the
 * smallest arena): a fixed root of leaf pointers, leaves mapped on first use
 * and never freed. An arena of 2^k MiB fills 2^k entries. Readers take no
 * lock (two acquire loads, inline in internal.h); writers serialise on one
 * mutex. An arena's descriptor is freed only after its entries are cleared,
 * and only when its cache is destroyed or shrunk, when no object of it can
 * be legitimately looked up.
 */
#include <string.h>

#include "internal.h"

#define LEAF_ENTRIES ((size_t)1 << KMC_LEAF_BITS)

_Atomic(kmc_leaf_t *) kmc__registry_root[(size_t)1 << KMC_ROOT_BITS];
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

static int set_range(kmc_arena_t *arena, kmc_arena_t *value)
{
    uintptr_t first = arena->base >> KMC_ARENA_MIN_SHIFT;
    uintptr_t n = arena->bytes >> KMC_ARENA_MIN_SHIFT;
    if ((arena->base + arena->bytes - 1) >> KMC_ADDRESS_BITS)
        return -1;
    pthread_mutex_lock(&registry_lock);
    for (uintptr_t i = first; i < first + n; i++) {
        size_t r = i >> KMC_LEAF_BITS, l = i & (LEAF_ENTRIES - 1);
        kmc_leaf_t *leaf = atomic_load_explicit(&kmc__registry_root[r], memory_order_acquire);
        if (!leaf) {
            if (!value)
                continue;
            leaf = kmc__os_map_meta(sizeof(kmc_leaf_t));
            if (!leaf) {
                pthread_mutex_unlock(&registry_lock);
                for (uintptr_t j = first; j < i; j++) { /* undo */
                    kmc_leaf_t *done = atomic_load(&kmc__registry_root[j >> KMC_LEAF_BITS]);
                    atomic_store(&done->arena[j & (LEAF_ENTRIES - 1)], NULL);
                }
                return -1;
            }
            atomic_store_explicit(&kmc__registry_root[r], leaf, memory_order_release);
        }
        atomic_store_explicit(&leaf->arena[l], value, memory_order_release);
    }
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

int kmc__registry_insert(kmc_arena_t *arena) { return set_range(arena, arena); }

void kmc__registry_remove(kmc_arena_t *arena) { (void)set_range(arena, NULL); }

void kmc__registry_lock_all(void) { pthread_mutex_lock(&registry_lock); }

void kmc__registry_unlock_all(void) { pthread_mutex_unlock(&registry_lock); }
