/*
 * test_engine.c - the slab engine on its own, through kmc.h only.
 *
 * Covers creation and its argument checks, alloc/free and the errors free
 * detects, bulk operations (all or nothing, with OS failure injection),
 * shrink, destroy while busy, alignment for every power of two, owner lookup,
 * constructors, red zone and poison detection with exact problem counts, and
 * a deterministic multithreaded stress test: four threads on shared caches,
 * every object tagged by its thread and checked before it is freed. Nothing
 * here holds the Python GIL: this is the engine's own thread safety.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmc.h"
/* no test leaves failure injection on for the next */
#define TEST_AFTER_EACH() kmc_os_fail_after(-1)
#include "test_helpers.h"

#define MiB ((size_t)1 << 20)

static size_t stat_active(kmc_cache_t *c)
{
    kmc_stats_t s;
    kmc_cache_stats(c, &s);
    return (size_t)s.active_objs;
}

static kmc_stats_t stats_of(kmc_cache_t *c)
{
    kmc_stats_t s;
    kmc_cache_stats(c, &s);
    return s;
}

static kmc_cache_t *make(const char *name, size_t size, size_t align, unsigned flags)
{
    kmc_cache_t *c = NULL;
    if (kmc_cache_create(name, size, align, flags, NULL, NULL, &c) != KMC_OK)
        return NULL;
    return c;
}

static int all_bytes(const void *p, size_t n, uint8_t value)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != value)
            return 0;
    return 1;
}

/* --- creation ----------------------------------------------------------- */

static void test_create_rejects_bad_arguments(void)
{
    size_t before = kmc_caches(NULL, 0);
    kmc_cache_t *c = (kmc_cache_t *)&c; /* must be set to NULL on failure */
    char long_name[KMC_NAME_MAX + 1];
    memset(long_name, 'x', KMC_NAME_MAX);
    long_name[KMC_NAME_MAX] = 0;
    struct {
        const char *name;
        size_t size, align;
        unsigned flags;
    } bad[] = {
        {NULL, 64, 0, 0},
        {"", 64, 0, 0},
        {"two words", 64, 0, 0},
        {"tab\tname", 64, 0, 0},
        {long_name, 64, 0, 0},
        {"ok", 0, 0, 0},
        {"ok", KMC_MAX_SIZE + 1, 0, 0},
        {"ok", 64, 3, 0},
        {"ok", 64, 24, 0},
        {"ok", 64, KMC_MAX_ALIGN * 2, 0},
        {"ok", 64, 0, 0x1},
        {"ok", 64, 0, 0x80000000u},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = (kmc_cache_t *)&c;
        CHECK_EQ(
            kmc_cache_create(bad[i].name, bad[i].size, bad[i].align, bad[i].flags, NULL, NULL, &c),
            KMC_EINVAL);
        CHECK(c == NULL);
        CHECK_EQ(kmc_last_report()->status, KMC_EINVAL);
        CHECK(kmc_last_report()->message[0] != 0);
    }
    CHECK_EQ(kmc_cache_create("ok", 64, 0, 0, NULL, NULL, NULL), KMC_EINVAL);
    CHECK_EQ(kmc_caches(NULL, 0), before);
}

static void test_create_and_properties(void)
{
    char name63[KMC_NAME_MAX];
    memset(name63, 'n', KMC_NAME_MAX - 1);
    name63[KMC_NAME_MAX - 1] = 0;
    kmc_cache_t *c = make(name63, 100, 0, 0);
    CHECK(c != NULL);
    CHECK(strcmp(kmc_cache_name(c), name63) == 0);
    CHECK_EQ(kmc_cache_size(c), 100);
    CHECK_EQ(kmc_cache_align(c), KMC_MIN_ALIGN);
    CHECK_EQ(kmc_cache_flags(c), 0);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.objsize, 104);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.arenas, 0);
    kmc_cache_t *all[256];
    size_t n = kmc_caches(all, 256);
    CHECK(n >= 1 && n <= 256);
    CHECK(all[n - 1] == c); /* newest last */
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    CHECK_EQ(kmc_caches(NULL, 0), n - 1);
}

static void test_status_names(void)
{
    for (int s = KMC_OK; s <= KMC_ECORRUPT; s++) {
        CHECK(kmc_status_name((kmc_status)s) != NULL);
        for (int t = KMC_OK; t < s; t++)
            CHECK(strcmp(kmc_status_name((kmc_status)s), kmc_status_name((kmc_status)t)));
    }
}

/* --- alloc and free ------------------------------------------------------- */

static void test_alloc_free(void)
{
    kmc_cache_t *c = make("alloc_free", 40, 0, 0);
    CHECK(c != NULL);
    uint8_t *a = kmc_cache_alloc(c, 0), *b = kmc_cache_alloc(c, 1);
    CHECK(a && b && a != b);
    CHECK((uintptr_t)a % 8 == 0 && (uintptr_t)b % 8 == 0);
    CHECK(a + 40 <= b || b + 40 <= a);
    CHECK(all_bytes(b, 40, 0));
    memset(a, 0xaa, 40);
    memset(b, 0xbb, 40);
    CHECK(all_bytes(a, 40, 0xaa));
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, 2);
    CHECK_EQ(s.allocs, 2);
    CHECK_EQ(s.num_slabs, 1);
    CHECK_EQ(s.num_objs, s.objperslab);
    CHECK_EQ(kmc_cache_check_free(c, a), KMC_OK);
    CHECK_EQ(stat_active(c), 2); /* check_free changes nothing */
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    CHECK_EQ(kmc_free(b), KMC_OK); /* kfree: the owner is found from the address */
    s = stats_of(c);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.frees, 2);
    size_t problems = 99;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_zero_alloc_zeroes_recycled_objects(void)
{
    kmc_cache_t *c = make("zero", 333, 0, 0);
    CHECK(c != NULL);
    uint8_t *a = kmc_cache_alloc(c, 0);
    CHECK(a != NULL);
    memset(a, 0xff, 333);
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    uint8_t *b = kmc_cache_alloc(c, 1);
    CHECK(b == a); /* the recycled object */
    CHECK(all_bytes(b, 333, 0));
    memset(b, 0xee, 333);
    CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
    void *bulk[4];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 4, bulk, 1), KMC_OK);
    for (int i = 0; i < 4; i++)
        CHECK(all_bytes(bulk[i], 333, 0));
    for (int i = 0; i < 4; i++)
        CHECK_EQ(kmc_cache_free(c, bulk[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_double_free(void)
{
    kmc_cache_t *c = make("double", 64, 0, 0);
    CHECK(c != NULL);
    void *keep = kmc_cache_alloc(c, 0), *p = kmc_cache_alloc(c, 0);
    CHECK(keep && p);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    kmc_stats_t before = stats_of(c);
    CHECK_EQ(kmc_cache_free(c, p), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_free(p), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_cache_check_free(c, p), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_last_report()->status, KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)p);
    CHECK_STR_HAS(kmc_last_report()->message, "double");
    kmc_stats_t after = stats_of(c);
    CHECK_EQ(after.active_objs, before.active_objs);
    CHECK_EQ(after.frees, before.frees);
    /* the slot was not freed twice: two allocations, two objects */
    void *x = kmc_cache_alloc(c, 0), *y = kmc_cache_alloc(c, 0);
    CHECK(x && y && x != y);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, x), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, y), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, keep), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_invalid_free(void)
{
    kmc_cache_t *c = make("mine", 1000, 0, 0), *d = make("theirs", 64, 0, 0);
    CHECK(c && d);
    uint8_t *p = kmc_cache_alloc(c, 0), *q = kmc_cache_alloc(d, 0);
    CHECK(p && q);
    char *heap = malloc(64);
    int on_stack;
    void *bad[] = {heap, &on_stack, NULL, p + 1, p + 999, q, (void *)(uintptr_t)8};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ(kmc_cache_free(c, bad[i]), KMC_EINVALID_FREE);
        CHECK_EQ(kmc_last_report()->status, KMC_EINVALID_FREE);
    }
    CHECK_EQ(kmc_cache_free(c, q), KMC_EINVALID_FREE);
    CHECK_STR_HAS(kmc_last_report()->message, "theirs");
    CHECK_EQ(kmc_free(heap), KMC_EINVALID_FREE);
    CHECK_EQ(kmc_free(p + 8), KMC_EINVALID_FREE);
    CHECK_EQ(stat_active(c), 1);
    CHECK_EQ(stat_active(d), 1);
    /* a free slot of a slab: the pointer is a slot start, but not live */
    kmc_stats_t s = stats_of(c);
    CHECK(s.objperslab >= 2);
    CHECK_EQ(kmc_cache_free(c, p + s.objsize), KMC_EDOUBLE_FREE);
    free(heap);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    CHECK_EQ(kmc_cache_free(d, q), KMC_OK);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(d), KMC_OK);
}

static void test_metadata_is_outside_objects(void)
{
    /* scribble over every free object of a slab that stays committed: an
     * allocator with in-object free pointers would hand out garbage next */
    kmc_cache_t *c = make("nometa", 64, 0, 0);
    CHECK(c != NULL);
    void *objs[64];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 64, objs, 0), KMC_OK);
    CHECK_EQ(stats_of(c).num_slabs, 1);
    for (int i = 1; i < 64; i += 2)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    for (int i = 1; i < 64; i += 2)
        memset(objs[i], 0xff, 64); /* use after free, on purpose */
    for (int i = 0; i < 64; i += 2)
        memset(objs[i], 0x77, 64);
    for (int i = 1; i < 64; i += 2) {
        void *p = kmc_cache_alloc(c, 0);
        CHECK(p != NULL);
        CHECK(kmc_owner(p, NULL) == c);
        memset(p, 0x33, 64);
        objs[i] = p;
    }
    for (int i = 0; i < 64; i += 2)
        CHECK(all_bytes(objs[i], 64, 0x77));
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < i; j++)
            CHECK(objs[i] != objs[j]);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    for (int i = 0; i < 64; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- bulk --------------------------------------------------------------- */

static void test_bulk(void)
{
    kmc_cache_t *c = make("bulk", 1024, 0, 0);
    CHECK(c != NULL);
    void *objs[200];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 0, objs, 0), KMC_OK);
    CHECK_EQ(stat_active(c), 0);
    CHECK_EQ(kmc_cache_alloc_bulk(c, 200, objs, 0), KMC_OK);
    CHECK_EQ(stat_active(c), 200);
    for (int i = 0; i < 200; i++) {
        CHECK(kmc_owner(objs[i], NULL) == c);
        for (int j = 0; j < i; j++)
            CHECK(objs[i] != objs[j]);
    }
    for (int i = 0; i < 200; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_bulk_all_or_nothing_under_failure_injection(void)
{
    kmc_cache_t *c = make("bulkfail", 1024, 0, 0);
    CHECK(c != NULL);
    void *keep = kmc_cache_alloc(c, 0); /* the arena exists: a slab is one commit */
    CHECK(keep != NULL);
    kmc_stats_t before = stats_of(c);
    size_t want = before.objperslab * 6;
    void **objs = calloc(want, sizeof(void *));
    CHECK(objs != NULL);
    kmc_os_fail_after(2);
    kmc_status st = kmc_cache_alloc_bulk(c, want, objs, 1);
    kmc_os_fail_after(-1);
    CHECK_EQ(st, KMC_ENOMEM);
    CHECK_EQ(kmc_last_report()->status, KMC_ENOMEM);
    kmc_stats_t after = stats_of(c);
    CHECK_EQ(after.active_objs, 1);
    CHECK_EQ(after.slabs_created, before.slabs_created + 2);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_alloc_bulk(c, want, objs, 1), KMC_OK);
    CHECK_EQ(stat_active(c), want + 1);
    for (size_t i = 0; i < want; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, keep), KMC_OK);
    free(objs);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_failure_injection_then_recovery(void)
{
    kmc_cache_t *c = make("nomem", 4096, 4096, 0);
    CHECK(c != NULL);
    kmc_os_fail_after(0); /* the arena reservation fails */
    CHECK(kmc_cache_alloc(c, 0) == NULL);
    CHECK_EQ(kmc_last_report()->status, KMC_ENOMEM);
    CHECK(kmc_cache_alloc(c, 1) == NULL);
    kmc_os_fail_after(-1);
    CHECK_EQ(stats_of(c).arenas, 0);
    void *a[64];
    size_t per = stats_of(c).objperslab;
    CHECK(per <= 64);
    for (size_t i = 0; i < per; i++) { /* fill the first slab */
        CHECK((a[i] = kmc_cache_alloc(c, 0)) != NULL);
        memset(a[i], 1, 4096);
    }
    kmc_os_fail_after(0); /* now the next slab's commit fails */
    CHECK(kmc_cache_alloc(c, 0) == NULL);
    CHECK_EQ(kmc_last_report()->status, KMC_ENOMEM);
    kmc_os_fail_after(-1);
    CHECK_EQ(stat_active(c), per);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    void *b = kmc_cache_alloc(c, 1);
    CHECK(b != NULL && all_bytes(b, 4096, 0) && all_bytes(a[0], 4096, 1));
    for (size_t i = 0; i < per; i++)
        CHECK_EQ(kmc_cache_free(c, a[i]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- shrink and destroy ---------------------------------------------------- */

static void test_shrink_gives_back_empty_slabs(void)
{
    kmc_cache_t *c = make("shrink", 512, 0, 0);
    CHECK(c != NULL);
    size_t n = stats_of(c).objperslab * 50;
    void **objs = calloc(n, sizeof(void *));
    CHECK(objs != NULL);
    CHECK_EQ(kmc_cache_alloc_bulk(c, n, objs, 0), KMC_OK);
    kmc_stats_t full = stats_of(c);
    CHECK_EQ(full.num_slabs, 50);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.active_slabs, 0);
    /* released after the purge delay, not at once: refilling costs no
     * system call */
    CHECK_EQ(s.num_slabs, 50);
    CHECK_EQ(s.slabs_released, 0);
    CHECK_EQ(s.empty_slabs, 50);
    size_t back = kmc_cache_shrink(c);
    CHECK(back >= s.num_slabs * s.slab_size);
    s = stats_of(c);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.committed_bytes, 0);
    CHECK_EQ(s.arenas, 0);
    CHECK_EQ(kmc_cache_shrink(c), 0);
    void *p = kmc_cache_alloc(c, 1); /* grows again */
    CHECK(p && all_bytes(p, 512, 0));
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    free(objs);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_shrink_keeps_live_slabs(void)
{
    kmc_cache_t *c = make("shrinklive", 1000, 0, 0);
    CHECK(c != NULL);
    void *objs[40];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 40, objs, 0), KMC_OK);
    size_t per = stats_of(c).objperslab;
    for (size_t i = 0; i < 40; i++)
        memset(objs[i], (int)i, 1000);
    for (size_t i = 0; i < 40; i++)
        if (i % per)
            CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    kmc_cache_shrink(c);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.num_slabs, s.active_slabs);
    for (size_t i = 0; i < 40; i += per)
        CHECK(all_bytes(objs[i], 1000, (uint8_t)i));
    for (size_t i = 0; i < 40; i += per)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_destroy_busy(void)
{
    kmc_cache_t *c = make("busy", 64, 0, 0);
    CHECK(c != NULL);
    void *objs[3];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 3, objs, 0), KMC_OK);
    memset(objs[1], 0x42, 64);
    CHECK_EQ(kmc_cache_destroy(c), KMC_EBUSY);
    CHECK_EQ(kmc_last_report()->status, KMC_EBUSY);
    CHECK_STR_HAS(kmc_last_report()->message, "3 live");
    CHECK_STR_HAS(kmc_last_report()->message, "busy");
    /* nothing changed */
    CHECK_EQ(stat_active(c), 3);
    CHECK(all_bytes(objs[1], 64, 0x42));
    CHECK_EQ(kmc_cache_free(c, objs[0]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_EBUSY);
    CHECK_STR_HAS(kmc_last_report()->message, "2 live");
    CHECK_EQ(kmc_cache_free(c, objs[1]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[2]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- alignment and owners ------------------------------------------------ */

static void test_alignment_every_power_of_two(void)
{
    for (size_t align = 8; align <= KMC_MAX_ALIGN; align *= 2) {
        size_t sizes[] = {1, align / 2 + 1, align + 1};
        for (size_t k = 0; k < 3; k++) {
            kmc_cache_t *c = make("aligned", sizes[k], align, 0);
            CHECK(c != NULL);
            CHECK_EQ(kmc_cache_align(c), align);
            void *objs[3];
            CHECK_EQ(kmc_cache_alloc_bulk(c, 3, objs, 0), KMC_OK);
            for (int i = 0; i < 3; i++) {
                CHECK_EQ((uintptr_t)objs[i] % align, 0);
                ((uint8_t *)objs[i])[sizes[k] - 1] = 0xab; /* the last byte is ours */
                void *start = NULL;
                CHECK(kmc_owner((uint8_t *)objs[i] + sizes[k] - 1, &start) == c);
                CHECK(start == objs[i]);
            }
            for (int i = 0; i < 3; i++)
                CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
            CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
        }
    }
}

static void test_hwcache_align(void)
{
    kmc_cache_t *c = make("hw", 24, 0, KMC_HWCACHE_ALIGN);
    CHECK(c != NULL);
    CHECK_EQ(kmc_cache_align(c), KMC_CACHE_LINE);
    void *objs[10];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 10, objs, 0), KMC_OK);
    for (int i = 0; i < 10; i++)
        CHECK_EQ((uintptr_t)objs[i] % KMC_CACHE_LINE, 0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    c = make("hw256", 24, 256, KMC_HWCACHE_ALIGN);
    CHECK(c != NULL);
    CHECK_EQ(kmc_cache_align(c), 256);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_sizes(void)
{
    size_t sizes[] = {1,    3,    7,     9,           63,          65,
                      4095, 4097, 65537, 2 * MiB + 1, 3 * MiB + 5, KMC_MAX_SIZE};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t size = sizes[k];
        kmc_cache_t *c = make("sizes", size, 0, 0);
        CHECK(c != NULL);
        uint8_t *a = kmc_cache_alloc(c, 0), *b = kmc_cache_alloc(c, 0);
        CHECK(a && b);
        CHECK(a + size <= b || b + size <= a);
        memset(a, 0xa1, size);
        memset(b, 0xb2, size);
        CHECK(all_bytes(a, size, 0xa1) && all_bytes(b, size, 0xb2));
        kmc_stats_t s = stats_of(c);
        CHECK(s.objsize >= size);
        CHECK_EQ(s.objperslab, s.slab_size / s.objsize);
        if (s.objsize <= MiB) /* always possible with 16 MiB slabs */
            CHECK((s.slab_size - s.objperslab * s.objsize) * 16 <= s.slab_size);
        CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
        CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
        CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    }
}

static void test_owner(void)
{
    kmc_cache_t *c = make("owner", 1000, 0, 0);
    CHECK(c != NULL);
    uint8_t *p = kmc_cache_alloc(c, 0);
    CHECK(p != NULL);
    void *start = NULL;
    CHECK(kmc_owner(p, &start) == c && start == p);
    CHECK(kmc_owner(p + 500, &start) == c && start == p);
    CHECK(kmc_owner(p + 999, NULL) == c);
    char *heap = malloc(16);
    int local;
    CHECK(kmc_owner(heap, NULL) == NULL);
    CHECK(kmc_owner(&local, NULL) == NULL);
    CHECK(kmc_owner(NULL, NULL) == NULL);
    CHECK(kmc_owner((void *)UINTPTR_MAX, NULL) == NULL);
    free(heap);
    /* 1000-byte slots leave padding at the end of a slab: no object there */
    kmc_stats_t s = stats_of(c);
    size_t used = s.objperslab * s.objsize;
    CHECK(used < s.slab_size);
    uint8_t *slab = (uint8_t *)((uintptr_t)p & ~(uintptr_t)(s.slab_size - 1));
    CHECK(kmc_owner(slab + used, NULL) == NULL);
    CHECK(kmc_owner(slab + s.slab_size - 1, NULL) == NULL);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    CHECK(kmc_owner(p, NULL) == NULL); /* the arena is gone */
}

static void count_live(void *object, void *arg)
{
    (void)object;
    (*(size_t *)arg)++;
}

static void test_for_each_live(void)
{
    kmc_cache_t *c = make("walk", 200, 0, 0);
    CHECK(c != NULL);
    void *objs[100];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 100, objs, 0), KMC_OK);
    for (int i = 0; i < 100; i += 3)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    size_t n = 0;
    kmc_cache_for_each_live(c, count_live, &n);
    CHECK_EQ(n, stat_active(c));
    CHECK_EQ(n, 66);
    for (int i = 0; i < 100; i++)
        if (i % 3)
            CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- constructors ------------------------------------------------------- */

static int ctor_calls, ctor_fail_at, ctor_keep_at;

static int test_ctor_fn(void *object, size_t size, void *arg)
{
    (void)arg;
    ctor_calls++;
    if (ctor_calls == ctor_fail_at)
        return -1;
    memset(object, 0xc7, size);
    if (ctor_calls == ctor_keep_at)
        return 1; /* "a reference into the object is still out there" */
    return 0;
}

static void test_ctor(void)
{
    kmc_cache_t *c = NULL;
    ctor_calls = 0;
    ctor_fail_at = ctor_keep_at = -1;
    CHECK_EQ(kmc_cache_create("ctor", 100, 0, 0, test_ctor_fn, NULL, &c), KMC_OK);
    uint8_t *a = kmc_cache_alloc(c, 0);
    CHECK(a != NULL);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(ctor_calls, s.objperslab); /* once per object of the slab */
    CHECK(all_bytes(a, 100, 0xc7));
    memset(a, 1, 100);
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    uint8_t *b = kmc_cache_alloc(c, 0);
    CHECK(b == a && all_bytes(b, 100, 1)); /* not constructed again */
    CHECK_EQ(ctor_calls, s.objperslab);
    CHECK(kmc_cache_alloc(c, 1) == NULL); /* no zalloc with a ctor */
    CHECK_EQ(kmc_last_report()->status, KMC_EINVAL);
    void *two[2];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 2, two, 1), KMC_EINVAL);
    CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_ctor_failure(void)
{
    kmc_cache_t *c = NULL;
    ctor_calls = 0;
    ctor_fail_at = 3;
    ctor_keep_at = -1;
    CHECK_EQ(kmc_cache_create("ctorfail", 100, 0, 0, test_ctor_fn, NULL, &c), KMC_OK);
    CHECK(kmc_cache_alloc(c, 0) == NULL);
    CHECK_EQ(kmc_last_report()->status, KMC_ECTOR);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.slabs_created, 0);
    void *p = kmc_cache_alloc(c, 0); /* the cache keeps working */
    CHECK(p != NULL && all_bytes(p, 100, 0xc7));
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_ctor_keeping_a_reference_pins_the_slab(void)
{
    kmc_cache_t *c = NULL;
    ctor_calls = 0;
    ctor_fail_at = -1;
    ctor_keep_at = 2;
    CHECK_EQ(kmc_cache_create("ctorpin", 100, 0, 0, test_ctor_fn, NULL, &c), KMC_OK);
    CHECK(kmc_cache_alloc(c, 0) == NULL);
    CHECK_EQ(kmc_last_report()->status, KMC_ECTOR);
    uint8_t *kept = kmc_last_report()->object ? (uint8_t *)kmc_last_report()->object : NULL;
    CHECK(kept != NULL);
    CHECK(all_bytes(kept, 100, 0xc7));
    CHECK_EQ(kmc_cache_free(c, kept), KMC_EINVALID_FREE); /* not an object */
    void *p = kmc_cache_alloc(c, 0);
    CHECK(p != NULL);
    CHECK((uint8_t *)p + 100 <= kept || kept + 100 <= (uint8_t *)p); /* never handed out */
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    kmc_cache_shrink(c);
    CHECK(all_bytes(kept, 100, 0xc7)); /* still mapped after shrink */
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    CHECK(all_bytes(kept, 100, 0xc7)); /* and after destroy */
    kept[0] = 1;
}

/* --- red zones and poison: exact problem counts -------------------------- */

/* size 40 between two 8-byte red zones: 56-byte slots, 585 per 32 KiB slab
 * (a 64 KiB one would hold more than 1024), 8 bytes of padding after the
 * last slot */
static kmc_cache_t *debug_cache(void) { return make("debug", 40, 0, KMC_RED_ZONE | KMC_POISON); }

static void test_debug_fills(void)
{
    kmc_cache_t *c = debug_cache();
    CHECK(c != NULL);
    uint8_t *a = kmc_cache_alloc(c, 0);
    CHECK(a != NULL);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.objsize, 56);
    CHECK_EQ(s.objperslab, 585);
    /* the first object's left red zone is inside its slab, at its start */
    CHECK_EQ((uintptr_t)(a - 8) % s.slab_size, 0);
    CHECK(all_bytes(a - 8, 8, KMC_RED_ACTIVE));
    CHECK(all_bytes(a, 40, KMC_POISON_INUSE));
    CHECK(all_bytes(a + 40, 8, KMC_RED_ACTIVE));
    uint8_t *next = a + 56; /* a free neighbour */
    CHECK(all_bytes(next - 8, 8, KMC_RED_INACTIVE));
    CHECK(all_bytes(next, 39, KMC_POISON_FREE) && next[39] == KMC_POISON_END);
    CHECK(all_bytes(next + 40, 8, KMC_RED_INACTIVE));
    uint8_t *z = kmc_cache_alloc(c, 1);
    CHECK(z == next && all_bytes(z, 40, 0) && all_bytes(z - 8, 8, KMC_RED_ACTIVE));
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    CHECK(all_bytes(a - 8, 8, KMC_RED_INACTIVE));
    CHECK(all_bytes(a, 39, KMC_POISON_FREE) && a[39] == KMC_POISON_END);
    CHECK(all_bytes(a + 40, 8, KMC_RED_INACTIVE));
    size_t problems = 99;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    CHECK_EQ(kmc_cache_free(c, z), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_red_zone_detection(void)
{
    kmc_cache_t *c = debug_cache();
    CHECK(c != NULL);
    uint8_t *objs[3];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 3, (void **)objs, 0), KMC_OK);
    objs[0][40] = 0; /* one byte past the end */
    size_t problems = 0;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EREDZONE);
    CHECK_EQ(problems, 1);
    const kmc_report_t *r = kmc_last_report();
    CHECK_EQ(r->object, (uintptr_t)objs[0]);
    CHECK_EQ(r->offset, 40);
    CHECK_EQ(r->found, 0);
    CHECK_EQ(r->expected, KMC_RED_ACTIVE);
    CHECK_STR_HAS(r->message, "debug");
    /* the check repairs what it reports: a second walk is clean */
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    /* two objects' red zones, several bytes each: one problem per object */
    memset(objs[1] + 40, 0x11, 3);
    memset(objs[2] + 44, 0x22, 4);
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EREDZONE);
    CHECK_EQ(problems, 2);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)objs[1]);
    CHECK_EQ(kmc_last_report()->length, 3);
    /* free finds a damaged red zone: the object stays live */
    objs[0][47] = 0x99;
    CHECK_EQ(kmc_cache_free(c, objs[0]), KMC_EREDZONE);
    CHECK_EQ(kmc_last_report()->offset, 47);
    CHECK_EQ(stat_active(c), 3);
    CHECK_EQ(kmc_cache_free(c, objs[0]), KMC_OK); /* repaired */
    CHECK_EQ(kmc_cache_free(c, objs[1]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[2]), KMC_OK);
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_poison_detection(void)
{
    kmc_cache_t *c = debug_cache();
    CHECK(c != NULL);
    uint8_t *objs[4];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 4, (void **)objs, 0), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[1]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[2]), KMC_OK);
    objs[1][5] = 0; /* use after free */
    size_t problems = 0;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EPOISON);
    CHECK_EQ(problems, 1);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)objs[1]);
    CHECK_EQ(kmc_last_report()->offset, 5);
    CHECK_EQ(kmc_last_report()->expected, KMC_POISON_FREE);
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    /* the last byte's own poison value */
    objs[2][39] = KMC_POISON_FREE;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EPOISON);
    CHECK_EQ(problems, 1);
    CHECK_EQ(kmc_last_report()->expected, KMC_POISON_END);
    /* poison and red zone of one free object, two live red zones, the
     * slab padding: five problems */
    objs[1][0] = 0;
    objs[1][41] = 0;
    objs[0][40] = 0;
    objs[3][46] = 0;
    kmc_stats_t s = stats_of(c);
    uint8_t *slab = (uint8_t *)((uintptr_t)objs[0] & ~(uintptr_t)(s.slab_size - 1));
    slab[s.objperslab * s.objsize] = 0;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EREDZONE); /* objs[0] comes first */
    CHECK_EQ(problems, 5);
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    /* alloc finds a written free object: it fails, and the object (repaired)
     * is handed out by the next alloc */
    objs[1][20] = 0x33;
    uint8_t *p = kmc_cache_alloc(c, 0);
    CHECK(p == NULL);
    CHECK_EQ(kmc_last_report()->status, KMC_EPOISON);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)objs[1]);
    CHECK_EQ(stat_active(c), 2);
    p = kmc_cache_alloc(c, 0);
    CHECK(p == objs[1]);
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[0]), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, objs[3]), KMC_OK);
    /* destroy reports damage found on the way, and destroys all the same */
    objs[3][0] = 0;
    size_t before = kmc_caches(NULL, 0);
    CHECK_EQ(kmc_cache_destroy(c), KMC_EPOISON);
    CHECK_EQ(kmc_caches(NULL, 0), before - 1);
}

/* A write just before an object lands in its own left red zone, even for
 * the first object of an arena, and is blamed on it; alignment holds. */
static void test_left_red_zone(void)
{
    for (size_t align = 8; align <= 4096; align *= 8) {
        kmc_cache_t *c = make("left", 64, align, KMC_RED_ZONE);
        CHECK(c != NULL);
        uint8_t *first = kmc_cache_alloc(c, 0), *second = kmc_cache_alloc(c, 0);
        CHECK(first && second);
        CHECK_EQ((uintptr_t)first % align, 0);
        CHECK_EQ((uintptr_t)second % align, 0);
        kmc_stats_t s = stats_of(c);
        CHECK_EQ(((uintptr_t)first - align) % s.slab_size, 0); /* the arena's start */
        first[-1] = 0x41;
        second[-3] = 0x41;
        CHECK_EQ(kmc_cache_free(c, first), KMC_EREDZONE);
        const kmc_report_t *r = kmc_last_report();
        CHECK_EQ(r->object, (uintptr_t)first);
        CHECK_EQ(r->offset, -1);
        CHECK_STR_HAS(r->message, "Left Redzone overwritten");
        size_t problems = 0;
        CHECK_EQ(kmc_cache_validate(c, &problems), KMC_EREDZONE); /* second's */
        CHECK_EQ(problems, 1);
        CHECK_EQ(kmc_last_report()->object, (uintptr_t)second);
        CHECK_EQ(kmc_last_report()->offset, -3);
        CHECK_EQ(kmc_cache_free(c, first), KMC_OK); /* repaired */
        CHECK_EQ(kmc_cache_free(c, second), KMC_OK);
        CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
        CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    }
}

/* kmc_cache_check_free reports a damaged red zone (and repairs it) but
 * frees nothing: what makes a bulk free all or nothing. */
static void test_check_free_sees_red_zones(void)
{
    kmc_cache_t *c = make("checkfree", 64, 0, KMC_RED_ZONE);
    CHECK(c != NULL);
    uint8_t *p = kmc_cache_alloc(c, 0);
    CHECK(p != NULL);
    p[64] = 0;
    CHECK_EQ(kmc_cache_check_free(c, p), KMC_EREDZONE);
    CHECK_EQ(kmc_last_report()->offset, 64);
    CHECK_EQ(stat_active(c), 1);
    CHECK_EQ(kmc_cache_check_free(c, p), KMC_OK); /* reported once */
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    CHECK_EQ(kmc_cache_check_free(c, p), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- threads ------------------------------------------------------------ */

#define THREADS  4
#define OPS      40000
#define HELD_MAX 256

static kmc_cache_t *shared[4];
static const size_t shared_size[4] = {24, 200, 4000, MiB};
static const size_t shared_align[4] = {0, 64, 0, 4096};

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The tag's bytes fill the whole object, or its first and last 64 bytes
 * for large ones (their pages are touched only there). */
static size_t tag_span(size_t size) { return size > 8192 ? 64 : size; }

static void tag_write(uint8_t *p, size_t size, uint64_t tag)
{
    size_t span = tag_span(size);
    for (size_t i = 0; i < span; i++)
        p[i] = (uint8_t)(tag >> (8 * (i % 8)));
    for (size_t i = size - span; i < size; i++)
        p[i] = (uint8_t)(tag >> (8 * (i % 8)));
}

static int tag_ok(const uint8_t *p, size_t size, uint64_t tag)
{
    size_t span = tag_span(size);
    for (size_t i = 0; i < span; i++)
        if (p[i] != (uint8_t)(tag >> (8 * (i % 8))))
            return 0;
    for (size_t i = size - span; i < size; i++)
        if (p[i] != (uint8_t)(tag >> (8 * (i % 8))))
            return 0;
    return 1;
}

typedef struct held_s {
    uint8_t *p;
    int cache;
    uint64_t tag;
} held_t;

static void release_one(held_t *h)
{
    size_t size = shared_size[h->cache];
    TCHECK(tag_ok(h->p, size, h->tag));
    TCHECK(kmc_cache_free(shared[h->cache], h->p) == KMC_OK);
}

static void *stress_thread(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (id + 1);
    held_t held[HELD_MAX];
    int n = 0;
    uint64_t counter = 0;
    for (int op = 0; op < OPS; op++) {
        uint64_t r = xorshift(&rng);
        int which = (int)(r % 100);
        if ((which < 45 && n < HELD_MAX) || n == 0) {
            int k = (int)((r >> 8) % 16);
            int ci = k < 6 ? 0 : k < 11 ? 1 : k < 15 ? 2 : 3;
            uint8_t *p = kmc_cache_alloc(shared[ci], (int)((r >> 16) & 1));
            TCHECK(p != NULL);
            if (!p)
                continue;
            size_t align = shared_align[ci] ? shared_align[ci] : 8;
            TCHECK((uintptr_t)p % align == 0);
            void *start = NULL;
            TCHECK(kmc_owner(p, &start) == shared[ci] && start == p);
            uint64_t tag = (id << 56) | ++counter;
            tag_write(p, shared_size[ci], tag);
            held[n++] = (held_t){p, ci, tag};
        } else if (which < 90) {
            int i = (int)((r >> 8) % (uint64_t)n);
            release_one(&held[i]);
            held[i] = held[--n];
        } else if (which < 95) {
            /* a bulk round trip on the small cache */
            void *bulk[16];
            uint64_t tag = (id << 56) | ++counter;
            TCHECK(kmc_cache_alloc_bulk(shared[0], 16, bulk, 0) == KMC_OK);
            for (int i = 0; i < 16; i++)
                tag_write(bulk[i], shared_size[0], tag + (uint64_t)i);
            for (int i = 0; i < 16; i++) {
                TCHECK(tag_ok(bulk[i], shared_size[0], tag + (uint64_t)i));
                TCHECK(kmc_cache_free(shared[0], bulk[i]) == KMC_OK);
            }
            counter += 16;
        } else if (which < 97) {
            kmc_cache_shrink(shared[(r >> 8) % 4]);
        } else {
            /* every object held is still intact */
            for (int i = 0; i < n; i++)
                TCHECK(tag_ok(held[i].p, shared_size[held[i].cache], held[i].tag));
        }
    }
    while (n > 0)
        release_one(&held[--n]);
    return NULL;
}

static void test_threads_stress(void)
{
    for (int i = 0; i < 4; i++) {
        shared[i] = make("shared", shared_size[i], shared_align[i], 0);
        CHECK(shared[i] != NULL);
    }
    atomic_store(&thread_failures, 0);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, stress_thread, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    for (int i = 0; i < 4; i++) {
        kmc_stats_t s = stats_of(shared[i]);
        CHECK_EQ(s.active_objs, 0);
        CHECK_EQ(s.allocs, s.frees);
        CHECK(s.allocs > 0);
        CHECK_EQ(kmc_cache_validate(shared[i], NULL), KMC_OK);
        CHECK_EQ(kmc_cache_destroy(shared[i]), KMC_OK);
    }
}

/* Threads that each make, fill and destroy their own caches while others
 * allocate: the process-wide structures (cache list, owner table, arena
 * descriptors) under contention. */
static void *churn_thread(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    for (int round = 0; round < 200; round++) {
        kmc_cache_t *c = NULL;
        TCHECK(kmc_cache_create("churn", 64 + 64 * id, 64, 0, NULL, NULL, &c) == KMC_OK);
        if (!c)
            return NULL;
        void *objs[100];
        TCHECK(kmc_cache_alloc_bulk(c, 100, objs, 0) == KMC_OK);
        for (int i = 0; i < 100; i++) {
            tag_write(objs[i], 64, (id << 56) | (uint64_t)i);
            TCHECK(kmc_owner(objs[i], NULL) == c);
        }
        for (int i = 0; i < 100; i++) {
            TCHECK(tag_ok(objs[i], 64, (id << 56) | (uint64_t)i));
            TCHECK(kmc_free(objs[i]) == KMC_OK);
        }
        TCHECK(kmc_cache_destroy(c) == KMC_OK);
    }
    return NULL;
}

static void test_threads_cache_churn(void)
{
    size_t before = kmc_caches(NULL, 0);
    atomic_store(&thread_failures, 0);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, churn_thread, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(kmc_caches(NULL, 0), before);
}

/* Threads that all grow one cache of one-object slabs at once: every alloc
 * builds a slab (its memory committed outside the lock) while other threads
 * add arenas to the cache, 33 of them (16 slabs each) by the end. */
#define GROW_OBJS 132
static kmc_cache_t *grown;
static pthread_barrier_t grown_all_live;

static void *grow_thread(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    uint8_t *objs[GROW_OBJS];
    for (int i = 0; i < GROW_OBJS; i++) {
        objs[i] = kmc_cache_alloc(grown, 0);
        TCHECK(objs[i] != NULL);
        if (objs[i])
            tag_write(objs[i], KMC_MAX_SIZE, (id << 56) | (uint64_t)i);
    }
    pthread_barrier_wait(&grown_all_live);
    for (int i = 0; i < GROW_OBJS; i++) {
        if (!objs[i])
            continue;
        TCHECK(tag_ok(objs[i], KMC_MAX_SIZE, (id << 56) | (uint64_t)i));
        TCHECK(kmc_cache_free(grown, objs[i]) == KMC_OK);
    }
    return NULL;
}

static void test_threads_grow_arenas(void)
{
    grown = make("grown", KMC_MAX_SIZE, 0, 0);
    CHECK(grown != NULL);
    CHECK_EQ(stats_of(grown).objperslab, 1);
    atomic_store(&thread_failures, 0);
    CHECK(pthread_barrier_init(&grown_all_live, NULL, THREADS) == 0);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, grow_thread, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&grown_all_live);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    kmc_stats_t s = stats_of(grown);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.allocs, THREADS * GROW_OBJS);
    CHECK_EQ(s.slabs_created, THREADS * GROW_OBJS); /* all were live at once */
    CHECK(s.arenas >= 33);
    CHECK_EQ(kmc_cache_validate(grown, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(grown), KMC_OK);
}

int main(void)
{
    RUN(test_create_rejects_bad_arguments);
    RUN(test_create_and_properties);
    RUN(test_status_names);
    RUN(test_alloc_free);
    RUN(test_zero_alloc_zeroes_recycled_objects);
    RUN(test_double_free);
    RUN(test_invalid_free);
    RUN(test_metadata_is_outside_objects);
    RUN(test_bulk);
    RUN(test_bulk_all_or_nothing_under_failure_injection);
    RUN(test_failure_injection_then_recovery);
    RUN(test_shrink_gives_back_empty_slabs);
    RUN(test_shrink_keeps_live_slabs);
    RUN(test_destroy_busy);
    RUN(test_alignment_every_power_of_two);
    RUN(test_hwcache_align);
    RUN(test_sizes);
    RUN(test_owner);
    RUN(test_for_each_live);
    RUN(test_ctor);
    RUN(test_ctor_failure);
    RUN(test_ctor_keeping_a_reference_pins_the_slab);
    RUN(test_debug_fills);
    RUN(test_red_zone_detection);
    RUN(test_poison_detection);
    RUN(test_left_red_zone);
    RUN(test_check_free_sees_red_zones);
    RUN(test_threads_stress);
    RUN(test_threads_cache_churn);
    RUN(test_threads_grow_arenas);
    return TESTS_DONE();
}
