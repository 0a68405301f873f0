/*
 * test_groups.c - memory groups and cache limits through kmc.h: what a
 * thread allocates inside a group is charged to it and its parents until
 * freed by any thread, limits refuse exactly at the limit and change
 * nothing, and usage matches a model after two threads' random work.
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kmc.h"
#include "test_helpers.h"
#include "thread_helpers.h"

static kmc_group_stats_t gstats(kmc_group_t *g)
{
    kmc_group_stats_t s;
    kmc_group_stats(g, &s);
    return s;
}

static kmc_cache_t *free_cache;
static void *free_elsewhere(void *p)
{
    if (kmc_cache_free(free_cache, p) != KMC_OK)
        atomic_fetch_add(&thread_failures, 1);
    return NULL;
}

static void test_objects_are_charged_until_freed(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("job", NULL, 0, 0, &g), KMC_OK);
    kmc_cache_t *c = make("grp-a", 100, 64);
    CHECK(c);
    void *outside = kmc_cache_alloc(c, 0);
    CHECK(kmc_group_enter(g) == NULL);
    void *a = kmc_cache_alloc(c, 0), *b = kmc_cache_alloc(c, 1);
    void *k = kmc_kmalloc(100, 0);      /* the 128-byte class */
    void *big = kmc_kmalloc(100000, 0); /* large: 25 pages */
    CHECK(kmc_group_enter(NULL) == g);
    CHECK(a && b && k && big && outside);
    size_t pages = (100000 + kmc_page_size() - 1) / kmc_page_size() * kmc_page_size();
    CHECK_EQ(gstats(g).usage, 100 + 100 + 128 + pages);
    CHECK_EQ(gstats(g).objects, 4);
    /* the peak reads the counter, which holds this thread's last batch too */
    CHECK(gstats(g).peak >= 100 + 100 + 128 + pages);
    CHECK(gstats(g).peak <= 100 + 100 + 128 + pages + (64 << 10));
    CHECK_EQ(kmc_cache_free(c, outside), KMC_OK); /* not charged: nothing taken back */
    CHECK_EQ(gstats(g).usage, 100 + 100 + 128 + pages);
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    CHECK_EQ(kmc_kfree(k), KMC_OK);
    CHECK_EQ(kmc_kfree(big), KMC_OK);
    CHECK_EQ(gstats(g).usage, 100);
    CHECK_EQ(kmc_cache_free(c, a), KMC_EDOUBLE_FREE); /* a double free takes nothing back */
    CHECK_EQ(gstats(g).usage, 100);
    free_cache = c; /* by another thread, outside any group */
    atomic_store(&thread_failures, 0);
    in_thread(free_elsewhere, b);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(gstats(g).usage, 0);
    CHECK_EQ(gstats(g).objects, 0);
    CHECK(gstats(g).peak >= 100 + 100 + 128 + pages);
    kmc_group_reset_peak(g);
    CHECK_EQ(gstats(g).peak, 0);
    kmc_group_release(g);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* The alloc fast path has no group test: a thread in a group fails its
 * first test (kmc__alloc_self). That must hold for a thread that enters a
 * group before its first call, which registers it inside, and for one that
 * allocated before it entered. */
static kmc_group_t *fresh_group;
static void *fresh_objs[6];
static void *alloc_three_in_group(void *arg)
{
    kmc_cache_t *c = arg;
    void *before = kmc_cache_alloc(c, 0); /* registers this thread: outside */
    kmc_group_enter(fresh_group);
    for (int i = 0; i < 3; i++)
        fresh_objs[i] = kmc_cache_alloc(c, 0);
    kmc_group_enter(NULL);
    void *after = kmc_cache_alloc(c, 0);
    if (!before || !after || !fresh_objs[0] || !fresh_objs[1] || !fresh_objs[2])
        atomic_fetch_add(&thread_failures, 1);
    kmc_cache_free(c, before);
    kmc_cache_free(c, after);
    return NULL; /* the three stay live: the test counts them */
}
static void *enter_first_then_alloc(void *arg)
{
    kmc_cache_t *c = arg;
    kmc_group_enter(fresh_group); /* before this thread's first call */
    for (int i = 3; i < 6; i++)
        if (!(fresh_objs[i] = kmc_cache_alloc(c, 0)))
            atomic_fetch_add(&thread_failures, 1);
    kmc_group_enter(NULL);
    return NULL;
}

static void test_every_thread_in_a_group_is_charged(void)
{
    kmc_cache_t *c = make("grp-self", 96, 32);
    CHECK(c);
    CHECK_EQ(kmc_group_create("fresh", NULL, 0, 0, &fresh_group), KMC_OK);
    atomic_store(&thread_failures, 0);
    in_thread(alloc_three_in_group, c);
    CHECK_EQ(gstats(fresh_group).usage, 3 * 96);
    CHECK_EQ(gstats(fresh_group).objects, 3);
    in_thread(enter_first_then_alloc, c);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(gstats(fresh_group).usage, 6 * 96);
    CHECK_EQ(gstats(fresh_group).objects, 6);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(kmc_cache_free(c, fresh_objs[i]), KMC_OK);
    CHECK_EQ(gstats(fresh_group).usage, 0);
    kmc_group_release(fresh_group);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* A heap's stock holds charges of one group at a time: a free of another
 * group's object gives the charge back to that group, never into the stock. */
static void test_frees_give_back_to_their_own_group(void)
{
    kmc_group_t *a, *b;
    CHECK_EQ(kmc_group_create("own-a", NULL, 0, 0, &a), KMC_OK);
    CHECK_EQ(kmc_group_create("own-b", NULL, 0, 0, &b), KMC_OK);
    kmc_cache_t *c = make("grp-own", 72, 8);
    CHECK(c);
    void *in_a[40], *in_b[40];
    kmc_group_enter(a);
    for (int i = 0; i < 40; i++)
        CHECK((in_a[i] = kmc_cache_alloc(c, 0)) != NULL);
    kmc_group_enter(b); /* the heap's stock moves to b */
    for (int i = 0; i < 40; i++)
        CHECK((in_b[i] = kmc_cache_alloc(c, 0)) != NULL);
    kmc_group_enter(NULL);
    for (int i = 0; i < 40; i++)
        CHECK_EQ(kmc_cache_free(c, in_a[i]), KMC_OK);
    CHECK_EQ(gstats(a).usage, 0);
    CHECK_EQ(gstats(a).objects, 0);
    CHECK_EQ(gstats(b).usage, 40 * 72);
    kmc_group_enter(a); /* and back: b's objects freed inside a */
    for (int i = 0; i < 40; i++)
        CHECK_EQ(kmc_cache_free(c, in_b[i]), KMC_OK);
    kmc_group_enter(NULL);
    CHECK_EQ(gstats(b).usage, 0);
    CHECK_EQ(gstats(b).objects, 0);
    kmc_group_release(a);
    kmc_group_release(b);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* What a thread's heaps hold in stock goes back when the thread exits: the
 * counter, which the peak reads, holds it no longer. */
static kmc_group_t *exit_group;
static kmc_cache_t *exit_cache;
static void *fill_stock_and_exit(void *arg)
{
    (void)arg;
    void *objs[2000];
    kmc_group_enter(exit_group);
    for (int i = 0; i < 2000; i++) /* batches double: the stock holds a lot */
        if (!(objs[i] = kmc_cache_alloc(exit_cache, 0)))
            atomic_fetch_add(&thread_failures, 1);
    for (int i = 0; i < 2000; i++)
        if (objs[i])
            kmc_cache_free(exit_cache, objs[i]);
    kmc_group_enter(NULL);
    return NULL;
}

static void test_a_threads_stocks_go_when_it_exits(void)
{
    CHECK_EQ(kmc_group_create("exits", NULL, 0, 0, &exit_group), KMC_OK);
    exit_cache = make("grp-exit", 64, 0);
    CHECK(exit_cache);
    atomic_store(&thread_failures, 0);
    in_thread(fill_stock_and_exit, NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(gstats(exit_group).usage, 0);
    kmc_group_reset_peak(exit_group);
    kmc_group_enter(exit_group);
    void *p = kmc_cache_alloc(exit_cache, 0);
    kmc_group_enter(NULL);
    CHECK(p);
    /* this one and this heap's first batch: one object */
    CHECK(gstats(exit_group).peak <= 2 * 64);
    CHECK_EQ(kmc_cache_free(exit_cache, p), KMC_OK);
    kmc_group_release(exit_group);
    CHECK_EQ(kmc_cache_destroy(exit_cache), KMC_OK);
}

#ifndef __SANITIZE_THREAD__ /* (TSan's start calls mmap before it can run this) */
/* The engine's mmap calls resolve to this one, which makes them itself,
 * but, once armed on a thread, waits before the next mapping of readable
 * memory without reserve: the tags' (kmc__os_map_meta), so that another
 * thread acts meanwhile. */
static __thread int mmap_armed;
static atomic_int mmap_paused, mmap_resume;
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (mmap_armed && (flags & MAP_NORESERVE) && prot != PROT_NONE) {
        mmap_armed = 0;
        atomic_store(&mmap_paused, 1);
        while (!atomic_load(&mmap_resume))
            sched_yield();
    }
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* An object tagged after its slab became another heap's current slab (the
 * arena's first charge maps the tags meanwhile): that heap's free still
 * takes the charge back. */
static kmc_cache_t *moved_cache;
static kmc_group_t *moved_group;
static void *moved_obj, *moved_warm;
static void *charge_first(void *arg)
{
    (void)arg;
    moved_warm = kmc_cache_alloc(moved_cache, 0); /* outside: its slab current, no tags */
    kmc_group_enter(moved_group);
    mmap_armed = 1;
    moved_obj = kmc_cache_alloc(moved_cache, 0); /* the first charge: tags mapped (waits) */
    kmc_group_enter(NULL);
    return NULL;
}

static void test_a_slab_that_moves_before_its_first_tag_loses_no_charge(void)
{
    CHECK_EQ(kmc_group_create("moved", NULL, 0, 0, &moved_group), KMC_OK);
    moved_cache = make("grp-move-tag", 64, 0);
    CHECK(moved_cache);
    atomic_store(&mmap_paused, 0);
    atomic_store(&mmap_resume, 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, charge_first, NULL), 0);
    while (!atomic_load(&mmap_paused))
        sched_yield();
    kmc_cache_shrink(moved_cache);             /* that thread's heap back to the depot */
    void *x = kmc_cache_alloc(moved_cache, 0); /* this heap: that slab, still no tags */
    atomic_store(&mmap_resume, 1);
    pthread_join(t, NULL);
    CHECK(x && moved_obj && moved_warm);
    CHECK_EQ(gstats(moved_group).usage, 64);
    CHECK(kmc_group_holds(moved_group, moved_obj));
    CHECK_EQ(kmc_cache_free(moved_cache, moved_obj), KMC_OK); /* into this current slab */
    CHECK_EQ(gstats(moved_group).usage, 0);
    CHECK_EQ(kmc_cache_free(moved_cache, moved_warm), KMC_OK);
    CHECK_EQ(kmc_cache_free(moved_cache, x), KMC_OK);
    kmc_group_release(moved_group);
    CHECK_EQ(kmc_cache_destroy(moved_cache), KMC_OK);
}
#endif

static void test_a_limit_refuses_exactly_and_changes_nothing(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("bounded", NULL, 1000, 0, &g), KMC_OK);
    kmc_cache_t *c = make("grp-b", 96, 0);
    CHECK(c);
    void *objs[16];
    kmc_group_enter(g);
    int n = 0;
    while (n < 16 && (objs[n] = kmc_cache_alloc(c, 0)))
        n++;
    const kmc_report_t *r = kmc_last_report();
    kmc_group_enter(NULL);
    CHECK_EQ(n, 1000 / 96); /* 10 fit, the 11th would pass 1000 */
    CHECK_EQ(r->status, KMC_ELIMIT);
    CHECK(strcmp(r->group, "bounded") == 0);
    CHECK_EQ(r->requested, 96);
    CHECK_EQ(r->usage, 960);
    CHECK_EQ(r->limit, 1000);
    CHECK(strstr(r->message, "grp-b") != NULL); /* the largest consumer is named */
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, (uint64_t)n); /* the refused alloc took no object */
    CHECK_EQ(gstats(g).usage, 960);
    CHECK_EQ(gstats(g).failures, 1);
    /* a raised limit lets the next one through */
    CHECK_EQ(kmc_group_set_limits(g, 2000, 0), KMC_OK);
    kmc_group_enter(g);
    objs[n] = kmc_cache_alloc(c, 0);
    kmc_group_enter(NULL);
    CHECK(objs[n]);
    n++;
    CHECK_EQ(kmc_group_set_limits(g, 100, 200), KMC_EINVAL); /* soft above hard */
    for (int i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(gstats(g).usage, 0);
    kmc_group_release(g);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_a_child_counts_in_its_parent_and_obeys_its_limit(void)
{
    kmc_group_t *parent, *child;
    CHECK_EQ(kmc_group_create("parent", NULL, 300, 0, &parent), KMC_OK);
    CHECK_EQ(kmc_group_create("child", parent, 0, 0, &child), KMC_OK);
    CHECK(kmc_group_parent(child) == parent);
    kmc_cache_t *c = make("grp-c", 100, 0);
    CHECK(c);
    kmc_group_enter(child);
    void *a = kmc_cache_alloc(c, 0), *b = kmc_cache_alloc(c, 0), *d = kmc_cache_alloc(c, 0);
    void *e = kmc_cache_alloc(c, 0);
    kmc_group_enter(NULL);
    CHECK(a && b && d && !e);
    CHECK(strcmp(kmc_last_report()->group, "parent") == 0);
    CHECK_EQ(gstats(child).usage, 300);
    CHECK_EQ(gstats(parent).usage, 300);
    CHECK_EQ(gstats(child).failures, 0);
    CHECK_EQ(gstats(parent).failures, 1);
    kmc_group_release(parent); /* lives on: a child and charges */
    kmc_group_release(child);  /* lives on: charges */
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, d), KMC_OK); /* the last charge: both go */
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_groups_nest_eight_deep_at_most(void)
{
    kmc_group_t *g[9] = {0};
    for (int i = 0; i < 8; i++)
        CHECK_EQ(kmc_group_create("level", i ? g[i - 1] : NULL, 0, 0, &g[i]), KMC_OK);
    CHECK_EQ(kmc_group_create("level", g[7], 0, 0, &g[8]), KMC_EINVAL);
    CHECK_EQ(kmc_group_create("bad name", NULL, 0, 0, &g[8]), KMC_EINVAL);
    CHECK_EQ(kmc_group_create("soft", NULL, 10, 20, &g[8]), KMC_EINVAL);
    for (int i = 7; i >= 0; i--)
        kmc_group_release(g[i]);
}

static void test_crossing_the_soft_limit_purges_once(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("soft", NULL, 0, 250, &g), KMC_OK);
    kmc_cache_t *c = make("grp-d", 100, 0);
    CHECK(c);
    void *o[4];
    kmc_group_enter(g);
    for (int i = 0; i < 4; i++)
        o[i] = kmc_cache_alloc(c, 0);
    kmc_group_enter(NULL);
    CHECK(o[3]);
    CHECK_EQ(gstats(g).soft_hits, 1); /* 300 crossed 250; 400 did not cross again */
    CHECK_EQ(gstats(g).purges, 1);
    for (int i = 0; i < 4; i++)
        kmc_cache_free(c, o[i]);
    kmc_group_enter(g);
    for (int i = 0; i < 3; i++)
        o[i] = kmc_cache_alloc(c, 0);
    kmc_group_enter(NULL);
    CHECK_EQ(gstats(g).soft_hits, 2); /* down below it, and across again */
    for (int i = 0; i < 3; i++)
        kmc_cache_free(c, o[i]);
    kmc_group_release(g);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_a_cache_limit_caps_its_slabs(void)
{
    kmc_cache_t *c = make("grp-e", 64, 0);
    CHECK(c);
    kmc_stats_t s = stats_of(c);
    size_t slab = s.slab_size;
    CHECK_EQ(kmc_cache_set_limit(c, 2 * slab), KMC_OK);
    CHECK_EQ(kmc_cache_limit(c), 2 * slab);
    size_t cap = 4 * (slab / 64);
    void **objs = calloc(cap, sizeof(void *));
    CHECK(objs);
    size_t n = 0;
    while (n < cap && (objs[n] = kmc_cache_alloc(c, 0)))
        n++;
    CHECK(n < cap);
    CHECK_EQ(kmc_last_report()->status, KMC_ELIMIT);
    CHECK_EQ(kmc_last_report()->limit, 2 * slab);
    s = stats_of(c);
    CHECK(s.num_slabs <= 2);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    free(objs);
    CHECK_EQ(kmc_cache_set_limit(c, 0), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
    /* the kmalloc classes take no limit */
    void *k = kmc_kmalloc(64, 0);
    CHECK_EQ(kmc_cache_set_limit(kmc_owner(k, NULL), 4096), KMC_EINVAL);
    kmc_kfree(k);
}

/* Two threads allocate inside one group and free each other's objects at
 * random; usage always equals what the model says is live. */
#define SLOTS 512
static kmc_cache_t *shared_cache;
static kmc_group_t *shared_group;
static _Atomic(void *) slots[SLOTS];

static void *churn(void *arg)
{
    uint64_t x = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15u + 1;
    kmc_group_enter(shared_group);
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        _Atomic(void *) *s = &slots[x % SLOTS];
        void *old = atomic_exchange(s, NULL);
        if (old) {
            if (kmc_cache_free(shared_cache, old) != KMC_OK)
                atomic_fetch_add(&thread_failures, 1);
        } else {
            void *p = x & 1 ? kmc_cache_alloc(shared_cache, 0) : kmc_kmalloc(200, 0);
            if (!p)
                atomic_fetch_add(&thread_failures, 1);
            else if (!(x & 1))
                kmc_kfree(p);
            else if (!atomic_compare_exchange_strong(s, &old, p)) /* the other thread filled it */
                kmc_cache_free(shared_cache, p);
        }
    }
    kmc_group_enter(NULL);
    return NULL;
}

static void test_two_threads_usage_matches_the_model(void)
{
    CHECK_EQ(kmc_group_create("churn", NULL, 0, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-f", 80, 0);
    CHECK(shared_cache);
    atomic_store(&thread_failures, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1)), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    uint64_t live = 0;
    for (int i = 0; i < SLOTS; i++)
        live += atomic_load(&slots[i]) != NULL;
    CHECK_EQ(gstats(shared_group).usage, live * 80);
    CHECK_EQ(gstats(shared_group).objects, live);
    for (int i = 0; i < SLOTS; i++) {
        void *p = atomic_exchange(&slots[i], NULL);
        if (p)
            CHECK_EQ(kmc_cache_free(shared_cache, p), KMC_OK);
    }
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

/* Two threads charge and uncharge one group at once, as fast as they can:
 * no update is lost. */
static void *hammer(void *arg)
{
    void **mine = arg;
    kmc_group_enter(shared_group);
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 4096; i++)
            if (!(mine[i] = kmc_cache_alloc(shared_cache, 0)))
                atomic_fetch_add(&thread_failures, 1);
        for (int i = 0; i < 4096; i++)
            kmc_cache_free(shared_cache, mine[i]);
    }
    for (int i = 0; i < 4096; i++)
        if (!(mine[i] = kmc_cache_alloc(shared_cache, 0)))
            atomic_fetch_add(&thread_failures, 1);
    kmc_group_enter(NULL);
    return NULL;
}

static void test_two_threads_lose_no_charge(void)
{
    CHECK_EQ(kmc_group_create("hammer", NULL, 0, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-h", 48, 0);
    CHECK(shared_cache);
    static void *got[2][4096];
    atomic_store(&thread_failures, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, hammer, got[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(gstats(shared_group).usage, 2 * 4096 * 48);
    CHECK_EQ(gstats(shared_group).objects, 2 * 4096);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4096; j++)
            kmc_cache_free(shared_cache, got[i][j]);
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

/* Two threads charge one limited group at once: the limit is never passed. */
static void *fill(void *arg)
{
    void **mine = arg;
    kmc_group_enter(shared_group);
    for (int i = 0; i < 4096; i++)
        mine[i] = kmc_cache_alloc(shared_cache, 0);
    kmc_group_enter(NULL);
    return NULL;
}

static void test_two_threads_never_pass_a_limit(void)
{
    CHECK_EQ(kmc_group_create("race", NULL, 100 * 64, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-g", 64, 0);
    CHECK(shared_cache);
    static void *got[2][4096];
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, fill, got[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int n = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4096; j++)
            if (got[i][j]) {
                n++;
                kmc_cache_free(shared_cache, got[i][j]);
            }
    CHECK_EQ(n, 100);
    CHECK_EQ(gstats(shared_group).peak, 100 * 64);
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

/* A thread's stock holds bytes it took ahead: another thread's charge that
 * the counter would refuse takes them back first, so that the limit, not
 * the stocks, decides. */
static void *fill_then_free(void *arg)
{
    (void)arg;
    void *objs[64]; /* a quarter of the limit: far enough from it to take batches */
    kmc_group_enter(shared_group);
    for (int i = 0; i < 64; i++)
        objs[i] = kmc_cache_alloc(shared_cache, 0);
    for (int i = 0; i < 64; i++)
        kmc_cache_free(shared_cache, objs[i]); /* back into its stock */
    kmc_group_enter(NULL);
    return NULL; /* the thread's stock goes when it exits: it waits on the barrier */
}

static pthread_barrier_t hold_barrier;

static void *fill_free_and_wait(void *arg)
{
    fill_then_free(arg);
    pthread_barrier_wait(&hold_barrier); /* filled: the main thread measures */
    pthread_barrier_wait(&hold_barrier); /* measured: exit */
    return NULL;
}

static void test_other_threads_stocks_do_not_hold_the_room(void)
{
    CHECK_EQ(kmc_group_create("hoard", NULL, 256 * 64, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-hoard", 64, 0);
    CHECK(shared_cache);
    CHECK_EQ(pthread_barrier_init(&hold_barrier, NULL, 2), 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, fill_free_and_wait, NULL), 0);
    pthread_barrier_wait(&hold_barrier);
    CHECK_EQ(gstats(shared_group).usage, 0); /* what its stock holds is not usage */
    void *objs[257];
    int n = 0;
    kmc_group_enter(shared_group);
    while (n < 257 && (objs[n] = kmc_cache_alloc(shared_cache, 0)))
        n++;
    kmc_group_enter(NULL);
    pthread_barrier_wait(&hold_barrier);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&hold_barrier);
    CHECK_EQ(n, 256); /* all of the limit, not what the other stock left */
    CHECK_EQ(gstats(shared_group).usage, 256 * 64);
    for (int i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(shared_cache, objs[i]), KMC_OK);
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

/* Lowering a limit takes back what the stocks took under the old one: the
 * new limit holds at once. */
static void test_a_lowered_limit_holds_at_once(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("lowered", NULL, (uint64_t)1 << 30, 0, &g), KMC_OK);
    kmc_cache_t *c = make("grp-low", 64, 0);
    CHECK(c);
    void *objs[2000];
    kmc_group_enter(g);
    for (int i = 0; i < 1000; i++) /* batches double: the stock holds some now */
        CHECK(objs[i] = kmc_cache_alloc(c, 0));
    kmc_group_enter(NULL);
    CHECK_EQ(kmc_group_set_limits(g, 1010 * 64, 0), KMC_OK);
    int n = 1000;
    kmc_group_enter(g);
    while (n < 2000 && (objs[n] = kmc_cache_alloc(c, 0)))
        n++;
    kmc_group_enter(NULL);
    CHECK_EQ(n, 1010);
    CHECK_EQ(gstats(g).usage, 1010 * 64);
    for (int i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    kmc_group_release(g);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* One thread allocates and frees through its stock without a pause while
 * another takes every stock back again and again (each limit change does):
 * nothing the owner does on a stock taken from it counts twice or not at
 * all. */
static atomic_int churning;

static void *churn_stock(void *arg)
{
    (void)arg;
    void *ring[32] = {0};
    kmc_group_enter(shared_group);
    for (int i = 0; i < 300000; i++) {
        void **slot = &ring[i % 32];
        if (*slot)
            kmc_cache_free(shared_cache, *slot);
        if (!(*slot = kmc_cache_alloc(shared_cache, 0)))
            atomic_fetch_add(&thread_failures, 1);
    }
    kmc_group_enter(NULL);
    static void *left[32];
    memcpy(left, ring, sizeof(ring));
    atomic_store(&churning, 0);
    return left;
}

static void test_stocks_taken_back_while_in_use(void)
{
    CHECK_EQ(kmc_group_create("revoked", NULL, (uint64_t)1 << 30, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-rev", 64, 0);
    CHECK(shared_cache);
    atomic_store(&thread_failures, 0);
    atomic_store(&churning, 1);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, churn_stock, NULL), 0);
    for (uint64_t k = 0; atomic_load(&churning); k++)
        kmc_group_set_limits(shared_group, ((uint64_t)1 << 30) - (k & 1), 0);
    void **left;
    pthread_join(t, (void **)&left);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(gstats(shared_group).usage, 32 * 64);
    CHECK_EQ(gstats(shared_group).objects, 32);
    for (int i = 0; i < 32; i++)
        CHECK_EQ(kmc_cache_free(shared_cache, left[i]), KMC_OK);
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

/* Takers and an owner in a group, in one order: the taker marks what it
 * takes (a stock's group cleared, a heap's request set), runs the barrier,
 * and only then uses it; the owner's fast paths look at the marks, so that
 * from then on an alloc waits for the lock the taker holds (groups_lock for
 * a stock, the cache's for a heap), and so does a free into a heap being
 * taken (a free that finds its stock taken gives the charge back to the
 * counters without a lock, so it is not asked for there). The barrier hook
 * asks an owner that holds a stock and a current slab for one alloc, or the
 * free of an object of that slab, and gives it 200 ms: it must not finish
 * inside the take-back. (A slow machine can only make a broken order pass,
 * never a right one fail.) */
static atomic_int owner_step; /* 0 stock filled, 1 asked, 2 done */
static atomic_int owner_ready, owner_frees, finished_inside;
static void *owner_kept, *owner_new;
static pthread_t taker;

static void *act_when_asked(void *arg)
{
    (void)arg;
    void *objs[8];
    kmc_group_enter(shared_group);
    for (int i = 0; i < 8; i++)
        if (!(objs[i] = kmc_cache_alloc(shared_cache, 0)))
            atomic_fetch_add(&thread_failures, 1);
    for (int i = 0; i < 7; i++) /* back into the heap's stock */
        if (objs[i] && kmc_cache_free(shared_cache, objs[i]) != KMC_OK)
            atomic_fetch_add(&thread_failures, 1);
    owner_kept = objs[7];
    atomic_store(&owner_ready, 1);
    while (atomic_load(&owner_step) != 1)
        sched_yield();
    if (!atomic_load(&owner_frees))
        owner_new = kmc_cache_alloc(shared_cache, 0);
    else if (kmc_cache_free(shared_cache, owner_kept) == KMC_OK)
        owner_kept = NULL;
    atomic_store(&owner_step, 2);
    kmc_group_enter(NULL);
    return NULL;
}

static void ask_the_owner(void *arg)
{
    (void)arg;
    int idle = 0;
    if (!pthread_equal(pthread_self(), taker) ||
        !atomic_compare_exchange_strong(&owner_step, &idle, 1))
        return; /* another thread's barrier, or asked already */
    for (int ms = 0; ms < 200 && atomic_load(&owner_step) != 2; ms++)
        usleep(1000);
    atomic_store(&finished_inside, atomic_load(&owner_step) == 2);
}

/* @take_back run while the owner allocates (or @frees): finished_inside
 * tells whether that finished inside. */
static void take_back_while_the_owner_acts(void (*take_back)(void), int frees)
{
    CHECK_EQ(kmc_group_create("taken", NULL, (uint64_t)1 << 30, 0, &shared_group), KMC_OK);
    shared_cache = make("grp-taken", 64, 0);
    CHECK(shared_cache);
    atomic_store(&thread_failures, 0);
    atomic_store(&owner_step, 0);
    atomic_store(&owner_ready, 0);
    atomic_store(&owner_frees, frees);
    atomic_store(&finished_inside, 0);
    owner_kept = owner_new = NULL;
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, act_when_asked, NULL), 0);
    while (!atomic_load(&owner_ready))
        sched_yield();
    taker = pthread_self();
    kmc_os_barrier_hook(ask_the_owner, NULL);
    take_back();
    kmc_os_barrier_hook(NULL, NULL);
    /* no hook ran without a working membarrier (the takers then leave the
     * owner's heap and stock alone): the owner is let go, nothing to check */
    int idle = 0;
    int no_barrier = atomic_compare_exchange_strong(&owner_step, &idle, 1);
    pthread_join(t, NULL);
    if (no_barrier)
        printf("     (no process-wide barrier here: the order is not tested)\n");
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(atomic_load(&owner_step), 2); /* asked, inside the take-back */
    CHECK(frees ? !owner_kept && !owner_new : owner_kept && owner_new);
    CHECK_EQ(gstats(shared_group).usage, frees ? 0 : 2 * 64);
    for (void **p = (void *[]){owner_kept, owner_new}, **end = p + 2; p < end; p++)
        if (*p)
            CHECK_EQ(kmc_cache_free(shared_cache, *p), KMC_OK);
    CHECK_EQ(gstats(shared_group).usage, 0);
    kmc_group_release(shared_group);
    CHECK_EQ(kmc_cache_destroy(shared_cache), KMC_OK);
}

static void take_the_stocks(void)
{
    CHECK_EQ(kmc_group_set_limits(shared_group, ((uint64_t)1 << 30) - 1, 0), KMC_OK);
}

static void take_the_heaps(void) { kmc_cache_shrink(shared_cache); }

static void test_a_stock_taken_back_serves_no_alloc(void)
{
    take_back_while_the_owner_acts(take_the_stocks, 0);
    CHECK_EQ(atomic_load(&finished_inside), 0);
}

static void test_a_heap_taken_back_serves_no_charged_alloc_or_free(void)
{
    take_back_while_the_owner_acts(take_the_heaps, 0);
    CHECK_EQ(atomic_load(&finished_inside), 0);
    take_back_while_the_owner_acts(take_the_heaps, 1);
    CHECK_EQ(atomic_load(&finished_inside), 0);
}

/* A group released while its objects live goes when the last is freed (a
 * group per job must not run out of ids): many more than the ids there are. */
static void test_released_groups_go_with_their_last_object(void)
{
    kmc_cache_t *c = make("grp-life", 100, 0);
    CHECK(c);
    for (int i = 0; i < 70000; i++) {
        kmc_group_t *g;
        CHECK_EQ(kmc_group_create("job", NULL, 0, 0, &g), KMC_OK);
        kmc_group_enter(g);
        void *p = kmc_cache_alloc(c, 0);
        kmc_group_enter(NULL);
        CHECK(p);
        kmc_group_release(g);
        CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    }
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* Two threads free the last objects of a released child of a released
 * parent at once: each group is freed once, by whoever finds it unheld, and
 * never read after (ASan sees the rest). */
static kmc_cache_t *last_cache;
static void *last_objs[2];
static atomic_int last_go[2], last_done[2];

static void *free_last(void *arg)
{
    int me = (int)(intptr_t)arg, round = 0;
    for (;;) {
        while (atomic_load(&last_go[me]) == round)
            sched_yield();
        if ((round = atomic_load(&last_go[me])) < 0)
            return NULL;
        if (kmc_cache_free(last_cache, last_objs[me]) != KMC_OK)
            atomic_fetch_add(&thread_failures, 1);
        atomic_store(&last_done[me], round);
    }
}

static void test_the_last_frees_of_released_groups_race_safely(void)
{
    last_cache = make("grp-last", 64, 0);
    CHECK(last_cache);
    atomic_store(&thread_failures, 0);
    pthread_t t[2];
    for (intptr_t i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, free_last, (void *)i), 0);
    for (int r = 1; r <= 20000; r++) {
        kmc_group_t *parent, *child;
        CHECK_EQ(kmc_group_create("parent", NULL, 0, 0, &parent), KMC_OK);
        CHECK_EQ(kmc_group_create("child", parent, 0, 0, &child), KMC_OK);
        kmc_group_enter(child);
        last_objs[0] = kmc_cache_alloc(last_cache, 0);
        last_objs[1] = kmc_cache_alloc(last_cache, 0);
        kmc_group_enter(NULL);
        kmc_group_release(child);
        kmc_group_release(parent);
        atomic_store(&last_go[0], r);
        atomic_store(&last_go[1], r);
        while (atomic_load(&last_done[0]) != r || atomic_load(&last_done[1]) != r)
            sched_yield();
    }
    atomic_store(&last_go[0], -1);
    atomic_store(&last_go[1], -1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(kmc_cache_destroy(last_cache), KMC_OK);
}

/* Two threads grow a cache limited to one slab at once (a slow constructor
 * keeps the first building): one slab, and both get an object from it. */
static kmc_cache_t *slow_cache;
static int slow_ctor(void *obj, size_t size, void *arg)
{
    (void)obj, (void)size, (void)arg;
    usleep(200);
    return 0;
}
static void *one_object(void *arg)
{
    (void)arg;
    return kmc_cache_alloc(slow_cache, 0);
}

static void test_a_cache_limit_holds_while_two_threads_grow_it(void)
{
    CHECK_EQ(kmc_cache_create("grp-slow", 64, 0, 0, slow_ctor, NULL, &slow_cache), KMC_OK);
    CHECK_EQ(kmc_cache_set_limit(slow_cache, stats_of(slow_cache).slab_size), KMC_OK);
    pthread_t t[2];
    void *got[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, one_object, NULL), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], &got[i]);
    CHECK(got[0] && got[1]);
    CHECK_EQ(stats_of(slow_cache).num_slabs, 1);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(kmc_cache_free(slow_cache, got[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(slow_cache), KMC_OK);
}

/* Two threads free one object at the same instant, over and over, while
 * 100 objects of the group stay live: one free wins, the other finds the
 * double free, and the charge comes back exactly once, even when the
 * loser took the tag first (with a plain load and store on the owner's
 * side, the usage sank below the 100 live objects, to 0 at times). */
static kmc_cache_t *race_cache;
static void *_Atomic race_obj;
static atomic_int race_round, race_done;

static void *free_at_once(void *arg)
{
    (void)arg;
    for (int round = 1;; round++) {
        int r;
        while ((r = atomic_load(&race_round)) >= 0 && r < round)
            ;
        if (r < 0)
            return NULL;
        (void)kmc_cache_free(race_cache, atomic_load(&race_obj)); /* one of the two fails */
        atomic_store(&race_done, round);
    }
}

static void test_a_racing_double_free_gives_the_charge_back_once(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("race", NULL, 0, 0, &g), KMC_OK);
    race_cache = make("grp-race", 64, 64);
    CHECK(race_cache);
    atomic_store(&race_round, 0);
    atomic_store(&race_done, 0);
    void *live[100];
    kmc_group_enter(g);
    for (int i = 0; i < 100; i++)
        live[i] = kmc_cache_alloc(race_cache, 0);
    kmc_group_enter(NULL);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, free_at_once, NULL), 0);
    int rounds = 20000;
    for (int round = 1; round <= rounds; round++) {
        kmc_group_enter(g);
        void *p = kmc_cache_alloc(race_cache, 0);
        kmc_group_enter(NULL);
        CHECK(p);
        atomic_store(&race_obj, p);
        atomic_store(&race_round, round); /* both free p now */
        (void)kmc_cache_free(race_cache, p);
        while (atomic_load(&race_done) < round)
            ;
    }
    atomic_store(&race_round, -1);
    pthread_join(t, NULL);
    CHECK_EQ(kmc_group_set_limits(g, 0, 0), KMC_OK); /* the stocks back into the counters */
    kmc_group_stats_t st = gstats(g);
    CHECK_EQ(st.usage, 100 * 64);
    CHECK_EQ(st.objects, 100);
    /* and a charge still works: nothing wrapped */
    CHECK_EQ(kmc_group_set_limits(g, 1 << 20, 0), KMC_OK);
    kmc_group_enter(g);
    void *p = kmc_cache_alloc(race_cache, 0);
    kmc_group_enter(NULL);
    CHECK(p);
    CHECK_EQ(gstats(g).usage, st.usage + 64);
    kmc_group_release(g);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(kmc_cache_free(race_cache, live[i]), KMC_OK);
    (void)kmc_cache_free(race_cache, p);
    (void)kmc_cache_destroy(race_cache); /* may report the double frees' leftovers */
}

/* Allocations in a group that take the slow path (after each shrink) look up
 * their heap's tags afterwards, while another thread shrinks and so unloads
 * that heap's current slab: the look must stay inside the heaps' handshake
 * (TSan tells otherwise), and every charge comes back. */
static kmc_cache_t *refresh_cache;
static atomic_int refresh_stop;

static void *shrink_until_stopped(void *arg)
{
    (void)arg;
    while (!atomic_load(&refresh_stop))
        kmc_cache_shrink(refresh_cache);
    return NULL;
}

static void test_tags_looked_up_while_another_thread_shrinks(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("refresh", NULL, 0, 0, &g), KMC_OK);
    refresh_cache = make("grp-refresh", 64, 0);
    CHECK(refresh_cache);
    atomic_store(&refresh_stop, 0);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, shrink_until_stopped, NULL), 0);
    for (int i = 0; i < 20000; i++) {
        kmc_group_enter(g);
        void *p = kmc_cache_alloc(refresh_cache, 0);
        kmc_group_enter(NULL);
        CHECK(p);
        CHECK_EQ(kmc_cache_free(refresh_cache, p), KMC_OK);
    }
    atomic_store(&refresh_stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ(gstats(g).usage, 0);
    kmc_group_release(g);
    CHECK_EQ(kmc_cache_destroy(refresh_cache), KMC_OK);
}

/* Two threads allocate inside three groups and outside any, from caches
 * whose slabs were current before their tags were mapped, free some where
 * they are and hand the others to each other, while a third thread
 * shrinks: every group ends at zero. */
#define MIX_GROUPS 3
#define MIX_SLOTS  512
static kmc_cache_t *mix_caches[3];
static kmc_group_t *mix_groups[MIX_GROUPS];
static void *_Atomic mix_slots[MIX_SLOTS];
static atomic_int mix_stop;

static void mix_free(int k, void *p)
{
    if (kmc_cache_free(mix_caches[k], p) != KMC_OK)
        atomic_fetch_add(&thread_failures, 1);
}

static void *mix_worker(void *arg)
{
    uint64_t r = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < 100000; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        unsigned slot = (unsigned)(r % MIX_SLOTS);
        int k = (int)((r >> 20) % 3), gi = (int)((r >> 30) % (MIX_GROUPS + 1));
        void *old = atomic_exchange(&mix_slots[slot], NULL);
        if (old) { /* the low bits name its cache */
            mix_free((int)((uintptr_t)old & 3), (void *)((uintptr_t)old & ~(uintptr_t)3));
            continue;
        }
        kmc_group_enter(gi < MIX_GROUPS ? mix_groups[gi] : NULL);
        void *p = kmc_cache_alloc(mix_caches[k], (int)((r >> 40) & 1));
        kmc_group_enter(NULL);
        void *none = NULL;
        if (!p)
            atomic_fetch_add(&thread_failures, 1);
        else if (((r >> 41) & 1) ||
                 !atomic_compare_exchange_strong(&mix_slots[slot], &none,
                                                 (void *)((uintptr_t)p | (uintptr_t)k)))
            mix_free(k, p);
    }
    return NULL;
}

static void *mix_shrinker(void *arg)
{
    (void)arg;
    while (!atomic_load(&mix_stop)) {
        for (int k = 0; k < 3; k++)
            kmc_cache_shrink(mix_caches[k]);
        sched_yield();
    }
    return NULL;
}

static void test_groups_back_to_zero_after_mixed_work(void)
{
    static const size_t sizes[3] = {64, 200, 24};
    void *warm[3][100];
    for (int k = 0; k < 3; k++) {
        CHECK((mix_caches[k] = make("grp-mix", sizes[k], 0)) != NULL);
        for (int j = 0; j < 100; j++) /* current slabs before any tag is mapped */
            CHECK((warm[k][j] = kmc_cache_alloc(mix_caches[k], 0)) != NULL);
    }
    for (int i = 0; i < MIX_GROUPS; i++)
        CHECK_EQ(kmc_group_create("mix", NULL, 0, 0, &mix_groups[i]), KMC_OK);
    atomic_store(&thread_failures, 0);
    atomic_store(&mix_stop, 0);
    pthread_t w[2], sh;
    CHECK_EQ(pthread_create(&sh, NULL, mix_shrinker, NULL), 0);
    for (uintptr_t i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&w[i], NULL, mix_worker, (void *)(i + 1)), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(w[i], NULL);
    atomic_store(&mix_stop, 1);
    pthread_join(sh, NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    for (unsigned s = 0; s < MIX_SLOTS; s++) {
        void *p = atomic_exchange(&mix_slots[s], NULL);
        if (p)
            CHECK_EQ(kmc_cache_free(mix_caches[(uintptr_t)p & 3],
                                    (void *)((uintptr_t)p & ~(uintptr_t)3)),
                     KMC_OK);
    }
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 100; j++)
            CHECK_EQ(kmc_cache_free(mix_caches[k], warm[k][j]), KMC_OK);
    for (int i = 0; i < MIX_GROUPS; i++) {
        CHECK_EQ(kmc_group_set_limits(mix_groups[i], 0, 0), KMC_OK); /* the stocks back */
        CHECK_EQ(gstats(mix_groups[i]).usage, 0);
        CHECK_EQ(gstats(mix_groups[i]).objects, 0);
        kmc_group_release(mix_groups[i]);
    }
    for (int k = 0; k < 3; k++)
        CHECK_EQ(kmc_cache_destroy(mix_caches[k]), KMC_OK);
}

/* What is refused changes nothing: a free of a pointer into an object gives
 * no charge back; a charge a parent refuses counts no soft-limit crossing
 * below it. */
static void test_refusals_change_no_count(void)
{
    kmc_group_t *parent, *child;
    CHECK_EQ(kmc_group_create("parent", NULL, 520, 0, &parent), KMC_OK);
    CHECK_EQ(kmc_group_create("child", parent, 0, 500, &child), KMC_OK);
    kmc_cache_t *c = make("grp-refuse", 96, 0);
    CHECK(c);
    void *objs[8];
    int n = 0;
    kmc_group_enter(child);
    while (n < 8 && (objs[n] = kmc_cache_alloc(c, 0)))
        n++;
    kmc_group_enter(NULL);
    CHECK_EQ(n, 5); /* 480: a sixth would pass the parent's 520 */
    CHECK_EQ(gstats(child).soft_hits, 0);
    CHECK_EQ(gstats(child).purges, 0);
    CHECK_EQ(kmc_cache_free(c, (uint8_t *)objs[0] + 8), KMC_EINVALID_FREE);
    CHECK_EQ(gstats(child).usage, 480);
    CHECK_EQ(gstats(child).objects, 5);
    for (int i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(gstats(parent).usage, 0);
    kmc_group_release(child);
    kmc_group_release(parent);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* A large allocation shrunk in place gives back the pages it let go. */
static void test_a_large_object_shrunk_in_place_gives_back_its_tail(void)
{
    kmc_group_t *g;
    CHECK_EQ(kmc_group_create("large", NULL, 0, 0, &g), KMC_OK);
    size_t page = kmc_page_size();
    kmc_group_enter(g);
    void *p = kmc_kmalloc(64 * page, 0);
    kmc_group_enter(NULL);
    CHECK(p);
    CHECK_EQ(gstats(g).usage, 64 * page);
    CHECK(kmc_krealloc_in_place(p, 16 * page, 0));
    CHECK_EQ(gstats(g).usage, 16 * page);
    CHECK_EQ(kmc_kfree(p), KMC_OK);
    CHECK_EQ(gstats(g).usage, 0);
    kmc_group_release(g);
}

int main(void)
{
    RUN(test_objects_are_charged_until_freed);
    RUN(test_every_thread_in_a_group_is_charged);
    RUN(test_frees_give_back_to_their_own_group);
    RUN(test_a_threads_stocks_go_when_it_exits);
#ifndef __SANITIZE_THREAD__
    RUN(test_a_slab_that_moves_before_its_first_tag_loses_no_charge);
#endif
    RUN(test_a_limit_refuses_exactly_and_changes_nothing);
    RUN(test_a_child_counts_in_its_parent_and_obeys_its_limit);
    RUN(test_groups_nest_eight_deep_at_most);
    RUN(test_crossing_the_soft_limit_purges_once);
    RUN(test_a_cache_limit_caps_its_slabs);
    RUN(test_two_threads_usage_matches_the_model);
    RUN(test_two_threads_lose_no_charge);
    RUN(test_two_threads_never_pass_a_limit);
    RUN(test_other_threads_stocks_do_not_hold_the_room);
    RUN(test_a_lowered_limit_holds_at_once);
    RUN(test_stocks_taken_back_while_in_use);
    RUN(test_a_stock_taken_back_serves_no_alloc);
    RUN(test_a_heap_taken_back_serves_no_charged_alloc_or_free);
    RUN(test_released_groups_go_with_their_last_object);
    RUN(test_the_last_frees_of_released_groups_race_safely);
    RUN(test_a_cache_limit_holds_while_two_threads_grow_it);
    RUN(test_a_racing_double_free_gives_the_charge_back_once);
    RUN(test_tags_looked_up_while_another_thread_shrinks);
    RUN(test_groups_back_to_zero_after_mixed_work);
    RUN(test_refusals_change_no_count);
    RUN(test_a_large_object_shrunk_in_place_gives_back_its_tail);
    return TESTS_DONE();
}
