/*
 * debug.c - red zones, poisoning, padding checks, and error reports.
 *
 * Layout of a slot in a debug cache (SLUB's, without the in-object free
 * pointer and tracking words, which live outside object memory here):
 *
 *   | object: size bytes               | red zone: slot_size - size bytes  |
 *     free + POISON: 0x6b ... 0x6b 0xa5    free: 0xbb       live: 0xcc
 *     alloc (not zeroed) + POISON: 0x5a
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
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local kmc_report_t last_report;

const kmc_report_t *kmc_last_report(void) { return &last_report; }

void kmc__report_clear(void) { last_report.status = KMC_OK; }

kmc_report_t *kmc__report_slot(void) { return &last_report; }

const char *kmc_status_name(kmc_status status)
{
    static const char *const names[] = {
        [KMC_OK] = "ok",
        [KMC_ENOMEM] = "out of memory",
        [KMC_EINVAL] = "invalid argument",
        [KMC_ECTOR] = "constructor failed",
        [KMC_EDOUBLE_FREE] = "double free",
        [KMC_EINVALID_FREE] = "invalid free",
        [KMC_EBUSY] = "cache busy",
        [KMC_EREDZONE] = "red zone overwritten",
        [KMC_EPOISON] = "poison overwritten",
        [KMC_ECORRUPT] = "metadata corrupted",
    };
    if ((unsigned)status < sizeof(names) / sizeof(names[0]) && names[status])
        return names[status];
    return "unknown status";
}

static void report_start(kmc_status status, const kmc_cache_t *c, const void *obj)
{
    memset(&last_report, 0, sizeof(last_report));
    last_report.status = status;
    last_report.found = last_report.expected = -1;
    if (c) {
        memcpy(last_report.cache, c->name, sizeof(last_report.cache));
        last_report.object_size = c->size;
    }
    last_report.object = (uintptr_t)obj;
}

kmc_status kmc__report(kmc_status status, const kmc_cache_t *c, const void *obj,
                       const char *fmt, ...)
{
    report_start(status, c, obj);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_report.message, sizeof(last_report.message), fmt, ap);
    va_end(ap);
    return status;
}

/* Report bytes [offset, offset+length) of the slot at @obj that should all
 * be @expected, with a dump of the surrounding bytes, clipped to the slab. */
kmc_status kmc__report_bytes(kmc_status status, const kmc_cache_t *c, const uint8_t *obj,
                             size_t offset, size_t length, int expected, const char *what)
{
    report_start(status, c, obj);
    last_report.offset = offset;
    last_report.length = length;
    last_report.found = obj[offset];
    last_report.expected = expected;
    uintptr_t slab = (uintptr_t)obj & ~(uintptr_t)(c->slab_size - 1);
    uintptr_t bad = (uintptr_t)obj + offset;
    uintptr_t start = (bad & ~(uintptr_t)15) - 16;
    if (start < slab || start > bad)
        start = slab;
    uintptr_t end = start + sizeof(last_report.dump);
    if (end > slab + c->slab_size)
        end = slab + c->slab_size;
    last_report.dump_start = start;
    last_report.dump_len = end - start;
    memcpy(last_report.dump, (const void *)start, last_report.dump_len);
    snprintf(last_report.message, sizeof(last_report.message),
             "%s in %s: object 0x%llx, bytes %zu-%zu. First byte 0x%02x instead of 0x%02x",
             what, c->name, (unsigned long long)(uintptr_t)obj, offset, offset + length - 1,
             last_report.found, expected);
    return status;
}

/* First byte in [from, to) of @obj that is not @value, or @to. Eight bytes
 * per compare while they match: poison checks read whole objects. */
static size_t first_not(const uint8_t *obj, size_t from, size_t to, uint8_t value)
{
    const uint64_t pattern = UINT64_C(0x0101010101010101) * value;
    size_t i = from;
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

static size_t run_not(const uint8_t *obj, size_t from, size_t to, uint8_t value)
{
    size_t end = from;
    for (size_t i = from; i < to; i++)
        if (obj[i] != value)
            end = i + 1;
    return end - from;
}

/* Check that [from, to) of @obj is all @value; report and repair if not. */
static kmc_status check_bytes(const kmc_cache_t *c, uint8_t *obj, size_t from, size_t to,
                              uint8_t value, kmc_status status, const char *what)
{
    size_t bad = first_not(obj, from, to, value);
    if (bad == to)
        return KMC_OK;
    kmc__report_bytes(status, c, obj, bad, run_not(obj, bad, to, value), value, what);
    memset(obj + bad, value, to - bad);
    return status;
}

static void poison_free(const kmc_cache_t *c, uint8_t *obj)
{
    memset(obj, KMC_POISON_FREE, c->size - 1);
    obj[c->size - 1] = KMC_POISON_END;
}

static kmc_status check_poison(const kmc_cache_t *c, uint8_t *obj)
{
    kmc_status st = check_bytes(c, obj, 0, c->size - 1, KMC_POISON_FREE, KMC_EPOISON,
                                "Poison overwritten");
    if (st == KMC_OK && obj[c->size - 1] != KMC_POISON_END) {
        st = kmc__report_bytes(KMC_EPOISON, c, obj, c->size - 1, 1, KMC_POISON_END,
                               "Poison overwritten");
        obj[c->size - 1] = KMC_POISON_END;
    } else if (st != KMC_OK) {
        obj[c->size - 1] = KMC_POISON_END;
    }
    return st;
}

void kmc__debug_init_slab(kmc_cache_t *c, uint8_t *mem)
{
    for (uint32_t i = 0; i < c->objperslab; i++) {
        uint8_t *obj = mem + (size_t)i * c->slot_size;
        kmc__debug_on_free(c, obj);
        if ((c->flags & (KMC_RED_ZONE | KMC_POISON)) == KMC_POISON)
            memset(obj + c->size, KMC_POISON_INUSE, c->slot_size - c->size);
    }
    size_t used = (size_t)c->objperslab * c->slot_size;
    memset(mem + used, KMC_POISON_INUSE, c->slab_size - used);
}

void kmc__debug_on_alloc(kmc_cache_t *c, uint8_t *obj, int zero)
{
    if (c->flags & KMC_RED_ZONE)
        memset(obj + c->size, KMC_RED_ACTIVE, c->slot_size - c->size);
    if ((c->flags & KMC_POISON) && !zero)
        memset(obj, KMC_POISON_INUSE, c->size);
}

void kmc__debug_on_free(kmc_cache_t *c, uint8_t *obj)
{
    if (c->flags & KMC_POISON)
        poison_free(c, obj);
    if (c->flags & KMC_RED_ZONE)
        memset(obj + c->size, KMC_RED_INACTIVE, c->slot_size - c->size);
}

/* The bytes after the object: its red zone (0xcc live, 0xbb free), or with
 * POISON alone the rounding to the alignment (0x5a). */
static kmc_status check_tail(const kmc_cache_t *c, uint8_t *obj, bool live)
{
    if (c->flags & KMC_RED_ZONE)
        return check_bytes(c, obj, c->size, c->slot_size,
                           live ? KMC_RED_ACTIVE : KMC_RED_INACTIVE, KMC_EREDZONE,
                           "Right Redzone overwritten");
    if (c->flags & KMC_POISON)
        return check_bytes(c, obj, c->size, c->slot_size, KMC_POISON_INUSE, KMC_EREDZONE,
                           "Object padding overwritten");
    return KMC_OK;
}

/* @obj was free and is about to be handed out. */
kmc_status kmc__debug_check_alloc(kmc_cache_t *c, uint8_t *obj)
{
    if (c->flags & KMC_POISON) {
        kmc_status st = check_poison(c, obj);
        if (st != KMC_OK)
            return st;
    }
    return check_tail(c, obj, false);
}

/* @obj is live and about to be freed. */
kmc_status kmc__debug_check_free(kmc_cache_t *c, uint8_t *obj)
{
    return check_tail(c, obj, true);
}

/* CONSISTENCY_CHECKS, on every alloc and free: the slab's live counter and
 * its free bitmap must account for every slot. About objperslab/64 popcounts.
 * Cache locked. */
kmc_status kmc__debug_check_counts(kmc_cache_t *c, uint32_t id)
{
    const kmc_slab_t *s = kmc__slab(c, id);
    uint32_t nfree = kmc__bitmap_popcount(c, id);
    if ((uint64_t)s->inuse + nfree == c->objperslab)
        return KMC_OK;
    return kmc__report(KMC_ECORRUPT, c, kmc__slab_mem(c, id),
                       "Wrong object count in slab 0x%llx of %s: counter is %u but counted "
                       "were %u of %u. Marking all objects used",
                       (unsigned long long)(uintptr_t)kmc__slab_mem(c, id), c->name, s->inuse,
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
    kmc__lock(&c->lock);
    size_t off = (uintptr_t)address - a->base;
    uint32_t sidx = (uint32_t)(off >> c->slab_shift);
    uint32_t idx = (uint32_t)((off & (c->slab_size - 1)) / c->slot_size);
    uint8_t state = a->slabs[sidx].state;
    kmc_status st = KMC_OK;
    if (idx >= c->objperslab ||
        (state != KMC_SLAB_PARTIAL && state != KMC_SLAB_FULL && state != KMC_SLAB_EMPTY))
        st = kmc__report(KMC_EINVALID_FREE, c, address, "0x%llx is not in a slot of %s",
                         (unsigned long long)(uintptr_t)address, c->name);
    else
        a->bitmaps[(size_t)sidx * c->bitmap_words + idx / 64] ^= UINT64_C(1) << (idx % 64);
    kmc__unlock(&c->lock);
    return st;
}

/* Tally a check's result, keeping the report of the first problem. */
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
        t->report = last_report;
    }
    t->problems++;
}

/* Every byte check on one committed slab (its counters are checked by
 * kmc__debug_check_counts). Cache locked. On return the report is that of
 * the slab's first problem. */
kmc_status kmc__debug_check_slab(kmc_cache_t *c, uint32_t id, size_t *problems)
{
    tally_t t = {.first = KMC_OK};
    if (c->flags & (KMC_RED_ZONE | KMC_POISON)) {
        const uint64_t *bits = kmc__slab_bitmap(c, id);
        uint8_t *mem = kmc__slab_mem(c, id);
        for (uint32_t i = 0; i < c->objperslab; i++) {
            uint8_t *obj = mem + (size_t)i * c->slot_size;
            bool live = !(bits[i / 64] & (UINT64_C(1) << (i % 64)));
            if (!live && (c->flags & KMC_POISON))
                tally(&t, check_poison(c, obj));
            tally(&t, check_tail(c, obj, live));
        }
        size_t used = (size_t)c->objperslab * c->slot_size;
        tally(&t, check_bytes(c, mem, used, c->slab_size, KMC_POISON_INUSE, KMC_EREDZONE,
                              "Padding overwritten"));
    }
    if (t.first != KMC_OK)
        last_report = t.report;
    *problems += t.problems;
    return t.first;
}
