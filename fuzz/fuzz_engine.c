/*
 * fuzz_engine.c - libFuzzer harness for the engine, through kmc.h only.
 *
 * The input is a program: a cache's size, alignment and debug flags, then
 * operations on it and on the kmalloc family, checked against a model of
 * the live objects (what the engine must say to each free, which objects
 * must still hold what was written into them). Some operations write bytes
 * where an object's program should not (its red zones, free objects, the
 * slab's padding, just before the object): validate, free and the reports
 * must then say so, repair, and never read or write outside what the engine
 * owns. A crash, a sanitizer report or an abort() below is a finding.
 *
 *   make -C fuzz engine && fuzz/build/fuzz_engine fuzz/corpus_engine -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmc.h"

#define MAX_LIVE 256

typedef struct live_s {
    uint8_t *p;
    size_t len;   /* bytes the program may write: the size asked for */
    uint8_t fill; /* what it wrote there */
    int kmalloc;  /* from the kmalloc family: freed with kmc_kfree */
} live_t;

typedef struct input_s {
    const uint8_t *data;
    size_t size, at;
} input_t;

static unsigned next_byte(input_t *in) { return in->at < in->size ? in->data[in->at++] : 0; }

static unsigned next_u16(input_t *in) { return next_byte(in) | next_byte(in) << 8; }

#define FIND(cond)   \
    do {             \
        if (!(cond)) \
            abort(); \
    } while (0)

static void check_contents(const live_t *o)
{
    for (size_t i = 0; i < o->len; i++)
        FIND(o->p[i] == o->fill);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in = {data, size, 0};
    /* no slab goes back to the OS behind the model's back (a freed object's
     * slab would be released, and a double free of it an invalid one) */
    kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 60000);
    static const size_t sizes[] = {1, 8, 24, 64, 100, 1512, 4096, 5000, 70000};
    size_t obj_size = sizes[next_byte(&in) % 9];
    size_t align = (size_t)1 << (next_byte(&in) % 13); /* 1 .. 4096 */
    unsigned flags = 0;
    unsigned f = next_byte(&in);
    if (f & 1)
        flags |= KMC_RED_ZONE;
    if (f & 2)
        flags |= KMC_POISON;
    if (f & 4)
        flags |= KMC_CONSISTENCY_CHECKS;
    kmc_cache_t *c = NULL;
    FIND(kmc_cache_create("fuzz", obj_size, align, flags, NULL, NULL, &c) == KMC_OK);
    size_t real_align = align < KMC_MIN_ALIGN ? KMC_MIN_ALIGN : align;
    int debug = (flags & (KMC_RED_ZONE | KMC_POISON)) != 0;
    live_t live[MAX_LIVE];
    int nlive = 0;
    uint8_t *freed[16] = {0}; /* recently freed, for double frees */
    unsigned nfreed = 0;
    int damaged = 0; /* writes outside live objects not yet reported */

    while (in.at < in.size) {
        unsigned op = next_byte(&in) % 12;
        unsigned arg = next_u16(&in);
        switch (op) {
        case 0:
        case 1: { /* alloc, zeroed or not, and fill */
            if (nlive == MAX_LIVE)
                break;
            uint8_t *p = kmc_cache_alloc(c, op == 1);
            if (!p) {
                /* only damage found at alloc may refuse it */
                FIND(damaged && (kmc_last_report()->status == KMC_EREDZONE ||
                                 kmc_last_report()->status == KMC_EPOISON ||
                                 kmc_last_report()->status == KMC_ECORRUPT));
                damaged--;
                break;
            }
            FIND((uintptr_t)p % real_align == 0);
            if (op == 1)
                for (size_t i = 0; i < obj_size; i++)
                    FIND(p[i] == 0);
            for (int i = 0; i < nlive; i++) /* no overlap with a live object */
                FIND(p + obj_size <= live[i].p || live[i].p + live[i].len <= p);
            live[nlive] = (live_t){p, obj_size, (uint8_t)arg, 0};
            memset(p, (uint8_t)arg, obj_size);
            nlive++;
            break;
        }
        case 2:
        case 3: { /* free a live object */
            if (!nlive)
                break;
            int i = (int)(arg % (unsigned)nlive);
            check_contents(&live[i]);
            kmc_status st;
            while ((st = live[i].kmalloc ? kmc_kfree(live[i].p) : kmc_cache_free(c, live[i].p)) !=
                   KMC_OK) { /* damage around it, reported and repaired: again */
                FIND(damaged > 0 && debug && st == KMC_EREDZONE);
                damaged--;
            }
            if (!live[i].kmalloc)
                freed[nfreed++ % 16] = live[i].p;
            live[i] = live[--nlive];
            break;
        }
        case 4: { /* free again something freed before: always detected */
            uint8_t *p = freed[arg % 16];
            int still_free = p != NULL;
            for (int i = 0; i < nlive && still_free; i++)
                still_free = live[i].p != p; /* reused since: not a double free */
            if (still_free)
                FIND(kmc_cache_free(c, p) == KMC_EDOUBLE_FREE);
            break;
        }
        case 5: { /* free an address inside an object, or off its slot */
            if (!nlive)
                break;
            live_t *o = &live[arg % (unsigned)nlive];
            size_t off = 1 + (arg >> 8) % (o->len > 1 ? o->len - 1 : 1);
            if (off < o->len)
                FIND(kmc_cache_free(c, o->p + off) == KMC_EINVALID_FREE);
            int on_stack;
            FIND(kmc_cache_free(c, &on_stack) == KMC_EINVALID_FREE);
            break;
        }
        case 6: { /* write a byte just outside a live object (its red zones,
                   * padding, or the next slot): caught later, never fatal */
            if (!nlive || !debug)
                break;
            live_t *o = &live[arg % (unsigned)nlive];
            if (o->kmalloc)
                break;
            void *start = NULL;
            if (kmc_owner(o->p, &start) != c || start != o->p)
                abort();
            /* stay within this slot: the left red zone is at most the
             * alignment, the right one at least 8 bytes */
            ptrdiff_t delta = (arg >> 8) & 1 ? (ptrdiff_t)o->len : -1;
            if (!(flags & KMC_RED_ZONE) && (delta < 0 || o->len % real_align == 0))
                break; /* no bytes guarded there */
            o->p[delta] ^= 0x5a;
            damaged++;
            break;
        }
        case 7: { /* write into a free object (use after free) */
            uint8_t *p = freed[arg % 16];
            int still_free = p != NULL && (flags & KMC_POISON);
            for (int i = 0; i < nlive && still_free; i++)
                still_free = live[i].p != p;
            if (still_free) {
                p[(arg >> 8) % obj_size] ^= 0x21;
                damaged++;
            }
            break;
        }
        case 8: { /* validate: every live object keeps its contents */
            size_t problems = 0;
            kmc_status st = kmc_cache_validate(c, &problems);
            FIND(st == KMC_OK || damaged);
            FIND(kmc_cache_validate(c, &problems) == KMC_OK && problems == 0); /* repaired */
            damaged = 0;
            for (int i = 0; i < nlive; i++)
                check_contents(&live[i]);
            kmc_stats_t s;
            kmc_cache_stats(c, &s);
            int from_cache = 0;
            for (int i = 0; i < nlive; i++)
                from_cache += !live[i].kmalloc;
            FIND(s.active_objs == (uint64_t)from_cache);
            break;
        }
        case 9: /* shrink: freed objects' memory may go back to the OS */
            kmc_cache_shrink(c);
            memset(freed, 0, sizeof(freed));
            break;
        case 10: { /* the kmalloc family */
            if (nlive == MAX_LIVE)
                break;
            size_t n = (arg % 3 == 0) ? arg * 7 : arg % 300;
            size_t a = (arg >> 12) ? (size_t)1 << ((arg >> 12) % 13) : 0;
            uint8_t *p = (arg & 1) ? kmc_kzalloc(n, a) : kmc_kmalloc(n, a);
            FIND(p != NULL);
            if (n) {
                FIND(kmc_ksize(p) >= n);
                FIND(!a || (uintptr_t)p % a == 0);
                live[nlive] = (live_t){p, n, (uint8_t)(arg >> 3), 1};
                memset(p, (uint8_t)(arg >> 3), n);
                nlive++;
            } else {
                FIND(kmc_kfree(p) == KMC_OK);
            }
            break;
        }
        case 11: { /* krealloc a kmalloc object */
            int i = -1;
            for (int k = 0; k < nlive; k++)
                if (live[(k + (int)arg) % nlive].kmalloc)
                    i = (k + (int)arg) % nlive;
            if (i < 0)
                break;
            check_contents(&live[i]);
            size_t n = 1 + (arg >> 4) % 20000;
            uint8_t *q = kmc_krealloc(live[i].p, n, 0);
            FIND(q != NULL);
            size_t kept = n < live[i].len ? n : live[i].len;
            for (size_t b = 0; b < kept; b++)
                FIND(q[b] == live[i].fill);
            memset(q, live[i].fill, n);
            live[i].p = q;
            live[i].len = n;
            break;
        }
        }
    }
    for (int i = 0; i < nlive; i++) {
        check_contents(&live[i]);
        kmc_status st;
        while ((st = live[i].kmalloc ? kmc_kfree(live[i].p) : kmc_cache_free(c, live[i].p)) !=
               KMC_OK) {
            FIND(damaged > 0 && debug && st == KMC_EREDZONE);
            damaged--;
        }
    }
    kmc_status st = kmc_cache_destroy(c);
    FIND(st == KMC_OK || (damaged && debug && st != KMC_EBUSY));
    kmc_kmalloc_shrink();
    return 0;
}
