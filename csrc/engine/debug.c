/*
 * debug.c - red zones, poisoning, padding and consistency checks.
 *
 * Layout of a slot in a debug cache (SLUB's, without the in-object free
 * pointer and tracking words, which live outside object memory here):
 *
 *   RED_ZONE:
 *   | left red zone: L  | object: size bytes               | right red zone |
 *                       | asked for (orig) | kmalloc rz    |                |
 *     live: 0xcc          (data)             0xcc            0xcc
 *     free: 0xbb          POISON: 0x6b ... 0x6b 0xa5         0xbb
 *     alloc (not zeroed) + POISON: the first orig bytes 0x5a
 *
 *   L is KMC_RED_ZONE_MIN rounded up to the alignment (SLUB's red_left_pad),
 *   so the object stays aligned and a write just before the first object of
 *   a slab lands in its own red zone, never outside the slab. The kmalloc
 *   red zone (SLUB's, Linux 6.1) is the part of a kmalloc object beyond the
 *   size it was asked for (orig, kept apart from object memory).
 *
 *   POISON without RED_ZONE: the slot's tail (rounding to the alignment) is
 *   0x5a, free or live ("Object padding overwritten" if not).
 *   slab tail after the last slot: 0x5a ("Padding overwritten" if not).
 *
 * Every byte of a slab is thus either inside a live object or has a known
 * value, so any stray write outside live objects is found by a check.
 * Each check repairs what it reports (as SLUB's restore_bytes does), so the
 * same damage is reported once.
 */
#include <string.h>

#include "internal.h"

/* First byte in [from, to) of @obj that is not @value, or @to. Eight bytes
 * per compare while they match: poison checks read whole objects. */
static ptrdiff_t first_not(const uint8_t *obj, ptrdiff_t from, ptrdiff_t to, uint8_t value)
{
    const uint64_t pattern = UINT64_C(0x0101010101010101) * value;
    ptrdiff_t i = from;
    for (uint64_t word; i + 8 <= to; i += 8) {
        memcpy(&word, obj + i, sizeof(word));
        if (word != pattern)
            break;
    }
    for (; i < to; i++)
        if (obj[i] != value)
            return i;
    return to;
}

static size_t run_not(const uint8_t *obj, ptrdiff_t from, ptrdiff_t to, uint8_t value)
{
    ptrdiff_t end = from;
    for (ptrdiff_t i = from; i < to; i++)
        if (obj[i] != value)
            end = i + 1;
    return (size_t)(end - from);
}

/* Check that [from, to) of @obj is all @value; report and repair if not. */
static kmc_status check_bytes(const kmc_cache_t *c, uint8_t *obj, ptrdiff_t from, ptrdiff_t to,
                              uint8_t value, kmc_status status, const char *what)
{
    ptrdiff_t bad = first_not(obj, from, to, value);
    if (bad == to)
        return KMC_OK;
    kmc__report_bytes(status, c, obj, bad, run_not(obj, bad, to, value), value, what);
    memset(obj + bad, value, (size_t)(to - bad));
    return status;
}

static ptrdiff_t left(const kmc_cache_t *c) { return (ptrdiff_t)c->obj_offset; }
static ptrdiff_t right_end(const kmc_cache_t *c)
{
    return (ptrdiff_t)(c->slot_size - c->obj_offset);
}

uint32_t *kmc__debug_orig(const kmc_cache_t *c, const kmc_arena_t *a, uint32_t sidx, uint32_t idx)
{
    return a->orig ? &a->orig[(size_t)sidx * c->objperslab + idx] : NULL;
}

static void poison_free(const kmc_cache_t *c, uint8_t *obj)
{
    memset(obj, KMC_POISON_FREE, c->size - 1);
    obj[c->size - 1] = KMC_POISON_END;
}

static kmc_status check_poison(const kmc_cache_t *c, uint8_t *obj)
{
    kmc_status st = check_bytes(c, obj, 0, (ptrdiff_t)c->size - 1, KMC_POISON_FREE, KMC_EPOISON,
                                "Poison overwritten");
    if (st == KMC_OK && obj[c->size - 1] != KMC_POISON_END)
        st = kmc__report_bytes(KMC_EPOISON, c, obj, (ptrdiff_t)c->size - 1, 1, KMC_POISON_END,
                               "Poison overwritten");
    obj[c->size - 1] = KMC_POISON_END;
    return st;
}

void kmc__debug_init_slab(kmc_cache_t *c, uint8_t *mem, uint32_t *orig)
{
    for (uint32_t i = 0; i < c->objperslab; i++) {
        uint8_t *obj = mem + (size_t)i * c->slot_size + c->obj_offset;
        kmc__debug_on_free(c, obj);
        if ((c->flags & (KMC_RED_ZONE | KMC_POISON)) == KMC_POISON)
            memset(obj + c->size, KMC_POISON_INUSE, c->slot_size - c->size);
        if (orig)
            orig[i] = (uint32_t)c->size;
    }
    size_t used = (size_t)c->objperslab * c->slot_size;
    memset(mem + used, KMC_POISON_INUSE, c->slab_size - used);
}

void kmc__debug_on_alloc(kmc_cache_t *c, uint8_t *obj, int zero, size_t orig)
{
    if (c->flags & KMC_RED_ZONE) {
        memset(obj - left(c), KMC_RED_ACTIVE, c->obj_offset);
        memset(obj + orig, KMC_RED_ACTIVE, (size_t)right_end(c) - orig);
    }
    if ((c->flags & KMC_POISON) && !zero)
        memset(obj, KMC_POISON_INUSE, orig);
}

void kmc__debug_on_free(kmc_cache_t *c, uint8_t *obj)
{
    if (c->flags & KMC_POISON)
        poison_free(c, obj);
    if (c->flags & KMC_RED_ZONE) {
        memset(obj - left(c), KMC_RED_INACTIVE, c->obj_offset);
        memset(obj + c->size, KMC_RED_INACTIVE, (size_t)right_end(c) - c->size);
    }
}

/* Keep the first of several checks' results and its report; count them. */
typedef struct tally_s {
    kmc_status first;
    size_t problems;
    kmc_report_t report;
} tally_t;

static void tally(tally_t *t, kmc_status st)
{
    if (st == KMC_OK)
        return;
    if (t->first == KMC_OK) {
        t->first = st;
        t->report = *kmc__report_slot();
    }
    t->problems++;
}

static kmc_status tally_end(const tally_t *t)
{
    if (t->first != KMC_OK)
        *kmc__report_slot() = t->report;
    return t->first;
}

/* The bytes around the object: its red zones (0xcc live, 0xbb free; a live
 * kmalloc object's from @orig on), or with POISON alone the rounding to the
 * alignment (0x5a). Every region is checked and repaired, as SLUB's
 * check_object does; the report is the first one's. */
static void check_around(const kmc_cache_t *c, uint8_t *obj, bool live, size_t orig, tally_t *t)
{
    if (c->flags & KMC_RED_ZONE) {
        uint8_t red = live ? KMC_RED_ACTIVE : KMC_RED_INACTIVE;
        tally(t, check_bytes(c, obj, -left(c), 0, red, KMC_EREDZONE, "Left Redzone overwritten"));
        if (live && orig < c->size)
            tally(t, check_bytes(c, obj, (ptrdiff_t)orig, (ptrdiff_t)c->size, red, KMC_EREDZONE,
                                 "kmalloc Redzone overwritten"));
        tally(t, check_bytes(c, obj, (ptrdiff_t)c->size, right_end(c), red, KMC_EREDZONE,
                             "Right Redzone overwritten"));
    } else if (c->flags & KMC_POISON) {
        tally(t, check_bytes(c, obj, (ptrdiff_t)c->size, right_end(c), KMC_POISON_INUSE,
                             KMC_EREDZONE, "Object padding overwritten"));
    }
}

/* @obj was free and is about to be handed out. */
kmc_status kmc__debug_check_alloc(kmc_cache_t *c, uint8_t *obj)
{
    tally_t t = {.first = KMC_OK};
    if (c->flags & KMC_POISON)
        tally(&t, check_poison(c, obj));
    check_around(c, obj, false, c->size, &t);
    return tally_end(&t);
}

/* @obj (asked for @orig bytes) is live and about to be freed. */
kmc_status kmc__debug_check_free(kmc_cache_t *c, uint8_t *obj, size_t orig)
{
    tally_t t = {.first = KMC_OK};
    check_around(c, obj, true, orig, &t);
    return tally_end(&t);
}

/* CONSISTENCY_CHECKS, on every alloc and free: the slab's live counter and
 * its own free bitmap must account for every slot (remote bits are counted
 * in neither until merged). About objperslab/64 popcounts. Cache locked, on
 * a slab of the depot. */
kmc_status kmc__debug_check_counts(kmc_cache_t *c, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    uint32_t nfree = kmc__bits_count(kmc__slab_local(c, id), c->bitmap_words);
    uint32_t inuse = KMC_LOAD(&s->inuse);
    if ((uint64_t)inuse + nfree == c->objperslab)
        return KMC_OK;
    return kmc__report(KMC_ECORRUPT, c, kmc__slab_mem(c, id),
                       "Wrong object count in slab 0x%llx of %s: counter is %u but counted "
                       "were %u of %u. Marking all objects used",
                       (unsigned long long)(uintptr_t)kmc__slab_mem(c, id), c->name, inuse,
                       c->objperslab - nfree, c->objperslab);
}

kmc_status kmc_debug_flip_free_bit(const void *address)
{
    kmc__report_clear();
    kmc_arena_t *a = kmc__registry_lookup((uintptr_t)address);
    kmc_cache_t *c = a ? a->cache : NULL;
    if (!c)
        return kmc__report(KMC_EINVALID_FREE, NULL, address, "0x%llx is in no cache",
                           (unsigned long long)(uintptr_t)address);
    kmc__cache_lock(c);
    kmc__heaps_take_back(c, KMC_TAKE_ALL);
    /* looked up again under the lock: a shrink may have released it since */
    a = kmc__registry_lookup((uintptr_t)address);
    size_t off = a ? (uintptr_t)address - a->base : 0;
    uint32_t sidx = (uint32_t)(off >> c->slab_shift);
    uint32_t idx = (uint32_t)((off & (c->slab_size - 1)) / c->slot_size);
    uint8_t state = a && a->cache == c && sidx < a->bump ? kmc__slab_state(&a->slabs[sidx])
                                                         : KMC_SLAB_UNUSED;
    kmc_status st = KMC_OK;
    if (idx >= c->objperslab ||
        (state != KMC_SLAB_PARTIAL && state != KMC_SLAB_FULL && state != KMC_SLAB_EMPTY))
        st = kmc__report(KMC_EINVALID_FREE, c, address, "0x%llx is not in a slot of %s",
                         (unsigned long long)(uintptr_t)address, c->name);
    else
        atomic_fetch_xor(&a->local[(size_t)sidx * c->bitmap_words + idx / 64], UINT64_C(1)
                                                                                   << (idx % 64));
    kmc__cache_unlock(c);
    return st;
}

/* Every byte check on one committed slab of the depot (its counters are
 * checked by kmc__debug_check_counts). Cache locked. On return the report is
 * that of the slab's first problem. */
kmc_status kmc__debug_check_slab(kmc_cache_t *c, uint32_t id, size_t *problems)
{
    tally_t t = {.first = KMC_OK};
    if (c->flags & (KMC_RED_ZONE | KMC_POISON)) {
        kmc_arena_t *a = kmc__slab_arena(c, id);
        uint32_t sidx = kmc__slab_index(id);
        uint8_t *mem = kmc__slab_mem(c, id);
        for (uint32_t i = 0; i < c->objperslab; i++) {
            uint8_t *obj = mem + (size_t)i * c->slot_size + c->obj_offset;
            bool live = !kmc__slot_free(c, id, i);
            if (!live && (c->flags & KMC_POISON))
                tally(&t, check_poison(c, obj));
            uint32_t *orig = kmc__debug_orig(c, a, sidx, i);
            check_around(c, obj, live, orig ? *orig : c->size, &t);
        }
        size_t used = (size_t)c->objperslab * c->slot_size;
        tally(&t, check_bytes(c, mem, (ptrdiff_t)used, (ptrdiff_t)c->slab_size, KMC_POISON_INUSE,
                              KMC_EREDZONE, "Padding overwritten"));
    }
    *problems += t.problems;
    return tally_end(&t);
}
