/*
 * slab.c - slab lists and free bitmaps.
 *
 * A slab's free objects are the set bits of its bitmap (bit i: slot i). A
 * bitmap instead of a free list threaded through the objects keeps every
 * allocator word out of object memory, makes a double free a one-bit test,
 * and costs one bit per object. Lists link slabs by 32-bit slab ids
 * (arena index << spa_shift | slab index), never by pointers.
 * All functions here run with the cache locked or on a NEW slab that no
 * other thread can see.
 */
#include <string.h>

#include "internal.h"

void kmc__list_push(kmc_cache_t *c, kmc_list_t *list, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    s->prev = KMC_NIL;
    s->next = list->head;
    if (list->head != KMC_NIL)
        kmc__slab(c, list->head)->prev = id;
    list->head = id;
    list->count++;
}

void kmc__list_remove(kmc_cache_t *c, kmc_list_t *list, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    if (s->prev != KMC_NIL)
        kmc__slab(c, s->prev)->next = s->next;
    else
        list->head = s->next;
    if (s->next != KMC_NIL)
        kmc__slab(c, s->next)->prev = s->prev;
    s->next = s->prev = KMC_NIL;
    list->count--;
}

uint32_t kmc__list_pop(kmc_cache_t *c, kmc_list_t *list)
{
    uint32_t id = list->head;
    if (id != KMC_NIL)
        kmc__list_remove(c, list, id);
    return id;
}

void kmc__slab_init_free(kmc_cache_t *c, uint32_t id)
{
    uint64_t *bits = kmc__slab_bitmap(c, id);
    uint32_t full = c->objperslab / 64, rest = c->objperslab % 64;
    memset(bits, 0xff, (size_t)full * sizeof(uint64_t));
    if (rest)
        bits[full] = (UINT64_C(1) << rest) - 1;
    kmc_slab_t *s = kmc__slab(c, id);
    s->inuse = 0;
    s->hint = 0;
}

uint32_t kmc__bitmap_popcount(const kmc_cache_t *c, uint32_t id)
{
    const uint64_t *bits = kmc__slab_bitmap(c, id);
    uint32_t n = 0;
    for (uint32_t w = 0; w < c->bitmap_words; w++)
        n += (uint32_t)__builtin_popcountll(bits[w]);
    return n;
}
