/*
 * slab.c - slab lists and free bitmaps.
 *
 * A slab's free objects are the set bits of its two bitmaps (bit i: slot i):
 * its own, written by whoever owns the slab, and the remote one, where other
 * threads set bits atomically. A slot is free in at most one of them; both
 * set means a double free that two threads raced to make. A bitmap instead
 * of a free list threaded through the objects keeps every allocator word out
 * of object memory, makes a double free a one-bit test, and costs two bits
 * per object. Lists link slabs by 32-bit slab ids (arena index << 16 | slab
 * index), never by pointers.
 * Functions here run with the cache locked, on a NEW slab no other thread
 * can see, or (merging) by the slab's owning heap.
 */
#include <string.h>

#include "internal.h"

/* A link read from a slab descriptor or a list: KMC_NIL, or a slab that
 * exists. A shared region's lists live in memory other processes write; a
 * link that names no slab ends the list there rather than send a write
 * outside the descriptors (recovery and validate rebuild the lists). */
static inline uint32_t link_of(const kmc_cache_t *c, uint32_t id)
{
    if (id == KMC_NIL)
        return id;
    uint32_t ai = id >> KMC_SLAB_ID_SHIFT;
    kmc_arena_t *a = ai < KMC_MAX_ARENAS ? kmc__arena(c, ai) : NULL;
    return likely(a && kmc__slab_index(id) < a->nslabs) ? id : KMC_NIL;
}

void kmc__list_push(kmc_cache_t *c, kmc_list_t *list, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    uint32_t head = link_of(c, list->head);
    s->prev = KMC_NIL;
    s->next = head;
    if (head != KMC_NIL)
        kmc__slab(c, head)->prev = id;
    else
        list->tail = id;
    list->head = id;
    list->count++;
}

void kmc__list_remove(kmc_cache_t *c, kmc_list_t *list, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    uint32_t prev = link_of(c, s->prev), next = link_of(c, s->next);
    if (prev != KMC_NIL)
        kmc__slab(c, prev)->next = next;
    else
        list->head = next;
    if (next != KMC_NIL)
        kmc__slab(c, next)->prev = prev;
    else
        list->tail = prev;
    s->next = s->prev = KMC_NIL;
    list->count--;
}

uint32_t kmc__list_pop(kmc_cache_t *c, kmc_list_t *list)
{
    uint32_t id = link_of(c, list->head);
    if (id != KMC_NIL)
        kmc__list_remove(c, list, id);
    return id;
}

void kmc__slab_init_free(kmc_cache_t *c, uint32_t id)
{
    _Atomic uint64_t *local = kmc__slab_local(c, id);
    _Atomic uint64_t *remote = kmc__slab_remote(c, id);
    uint32_t full = c->objperslab / 64, rest = c->objperslab % 64;
    for (uint32_t w = 0; w < c->bitmap_words; w++) {
        KMC_STORE(&local[w], w < full ? UINT64_MAX : (UINT64_C(1) << rest) - 1);
        KMC_STORE(&remote[w], 0);
    }
    kmc_slab_t *s = kmc__slab(c, id);
    KMC_STORE(&s->inuse, 0);
    KMC_STORE(&s->owner, KMC_DEPOT);
    s->hint = 0; /* pushed is left as it is: a drain resets it */
}

/* (static: the loader's choice between the two builds is a symbol that
 * -fvisibility=hidden does not hide, and only the module init is exported) */
KMC_BITCOUNT static uint32_t bits_count(const _Atomic uint64_t *bits, uint32_t words)
{
    uint32_t n = 0;
    for (uint32_t w = 0; w < words; w++)
        n += (uint32_t)__builtin_popcountll(KMC_LOAD(&((_Atomic uint64_t *)bits)[w]));
    return n;
}

uint32_t kmc__bits_count(const _Atomic uint64_t *bits, uint32_t words)
{
    return bits_count(bits, words);
}

/* Move the remote bits of slab @id into its own bitmap; return how many
 * slots became free. A bit set in both was freed twice: counted in
 * *@late_double, and free once. */
KMC_BITCOUNT static uint32_t merge_remote(kmc_cache_t *c, _Atomic uint64_t *local,
                                          _Atomic uint64_t *remote, uint64_t *late_double)
{
    uint32_t n = 0;
    for (uint32_t w = 0; w < c->bitmap_words; w++) {
        if (!KMC_LOAD(&remote[w]))
            continue;
        uint64_t x = atomic_exchange_explicit(&remote[w], 0, memory_order_acq_rel);
        uint64_t old = KMC_LOAD(&local[w]);
        *late_double += (uint64_t)__builtin_popcountll(x & old);
        n += (uint32_t)__builtin_popcountll(x & ~old);
        KMC_STORE(&local[w], old | x);
    }
    return n;
}

uint32_t kmc__slab_merge_remote(kmc_cache_t *c, uint32_t id, uint64_t *late_double)
{
    uint32_t n = merge_remote(c, kmc__slab_local(c, id), kmc__slab_remote(c, id), late_double);
    if (n) {
        kmc_slab_t *s = kmc__slab(c, id);
        KMC_STORE(&s->inuse, KMC_LOAD(&s->inuse) - n);
    }
    return n;
}

bool kmc__slot_free(const kmc_cache_t *c, uint32_t id, uint32_t idx)
{
    uint64_t bit = UINT64_C(1) << (idx % 64);
    uint64_t local = KMC_LOAD(&kmc__slab_local(c, id)[idx / 64]);
    uint64_t remote = KMC_LOAD(&kmc__slab_remote(c, id)[idx / 64]);
    return (local | remote) & bit;
}
