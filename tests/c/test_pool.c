/*
 * test_pool.c - the steady state: a pool of live objects with random
 * turnover, and the magazine that makes it cheap, through kmc.h only.
 *
 * A free can land in five kinds of slab: the thread's current slab, another
 * slab its heap owns (partial, or full), a slab of the depot, or a slab
 * another thread owns. Each test below frees into one or more of them and
 * checks what must hold whatever the layer: a second free is a double free,
 * an address inside an object is an invalid free, neither changes anything,
 * and counts are exact afterwards. The objects a magazine holds are free:
 * stats, shrink and validate see them, and a slab emptied while some of its
 * objects wait in a magazine never leaves the heap with them.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmc.h"
#define TEST_AFTER_EACH() (kmc_os_fail_after(-1), kmc_option_set(KMC_OPTION_MAGAZINE, 64))
#include "test_helpers.h"
#include "thread_helpers.h"

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return *state = x;
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

/* No two of @n objects overlap (each is @size bytes). */
static int disjoint(void **objs, size_t n, size_t size)
{
    void **sorted = malloc(n * sizeof(void *));
    if (!sorted)
        return 0;
    memcpy(sorted, objs, n * sizeof(void *));
    qsort(sorted, n, sizeof(void *), by_address);
    int ok = 1;
    for (size_t i = 1; i < n; i++)
        if ((uintptr_t)sorted[i - 1] + size > (uintptr_t)sorted[i])
            ok = 0;
    free(sorted);
    return ok;
}

/* --- one thread's steady pool ------------------------------------------------ */

/* A pool of @live objects, each tagged with its own address in its first
 * word; @rounds random replacements, checked against the model (the pool
 * array) every 1,000 rounds: tags intact, no overlap, stats exact. */
static void pool_rounds(size_t size, size_t live, long rounds)
{
    kmc_cache_t *c = make("pool", size, 64);
    CHECK(c != NULL);
    void **pool = calloc(live, sizeof(void *));
    CHECK(pool != NULL);
    for (size_t i = 0; i < live; i++) {
        CHECK((pool[i] = kmc_cache_alloc(c, 0)) != NULL);
        *(uintptr_t *)pool[i] = (uintptr_t)pool[i];
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull + live;
    for (long r = 1; r <= rounds; r++) {
        size_t j = (size_t)(next_random(&seed) % live);
        CHECK_EQ(*(uintptr_t *)pool[j], (uintptr_t)pool[j]);
        CHECK_EQ(kmc_cache_free(c, pool[j]), KMC_OK);
        CHECK((pool[j] = kmc_cache_alloc(c, 0)) != NULL);
        CHECK_EQ((uintptr_t)pool[j] % 64, 0);
        *(uintptr_t *)pool[j] = (uintptr_t)pool[j];
        if (r % 1000 == 0) {
            kmc_stats_t s = stats_of(c);
            CHECK_EQ(s.active_objs, live);
            CHECK_EQ(s.allocs - s.frees, live);
        }
    }
    CHECK(disjoint(pool, live, size));
    for (size_t i = 0; i < live; i++)
        CHECK_EQ(*(uintptr_t *)pool[i], (uintptr_t)pool[i]);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, live);
    for (size_t i = 0; i < live; i++)
        CHECK_EQ(kmc_cache_free(c, pool[i]), KMC_OK);
    s = stats_of(c);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.active_slabs, 0);
    /* every slab is empty: shrink gives all of them back */
    kmc_cache_shrink(c);
    s = stats_of(c);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.committed_bytes, 0);
    CHECK_EQ(s.cached_objs, 0);
    free(pool);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_a_steady_pool_matches_its_model(void)
{
    pool_rounds(64, 4096, 200000);
    pool_rounds(1512, 4096, 50000);
    pool_rounds(4096, 20000, 50000);
}

/* --- each kind of slab a free can land in -------------------------------------- */

static kmc_cache_t *kc;
static void *k_obj;
static kmc_status k_status;

static void *free_k_obj(void *arg)
{
    (void)arg;
    k_status = kmc_cache_free(kc, k_obj);
    return NULL;
}

/* A second free of @obj, here and from another thread, and a free of an
 * address inside it: each refused, nothing changed. */
static void check_refused(void *obj)
{
    kmc_stats_t before = stats_of(kc);
    CHECK_EQ(kmc_cache_free(kc, obj), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)obj);
    k_obj = obj;
    in_thread(free_k_obj, NULL);
    CHECK_EQ(k_status, KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_cache_free(kc, (char *)obj + 8), KMC_EINVALID_FREE);
    kmc_stats_t after = stats_of(kc);
    CHECK_EQ(after.active_objs, before.active_objs);
    CHECK_EQ(after.frees, before.frees);
    CHECK_EQ(after.cached_objs, before.cached_objs);
}

static void *alloc_and_keep(void *arg)
{
    *(void **)arg = kmc_cache_alloc(kc, 0);
    return NULL;
}

static void test_double_and_invalid_frees_in_every_kind_of_slab(void)
{
    CHECK((kc = make("kinds", 64, 64)) != NULL);
    size_t per = stats_of(kc).objperslab, n = 3 * per;
    void **a = calloc(n, sizeof(void *));
    CHECK(a != NULL);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, n, a, 0), KMC_OK);
    /* slabs 0 and 1 are owned and full, slab 2 is current (and full) */
    /* 1. the current slab */
    CHECK_EQ(kmc_cache_free(kc, a[n - 1]), KMC_OK);
    check_refused(a[n - 1]);
    /* 2. an owned full slab: the object waits in the magazine */
    kmc_stats_t s0 = stats_of(kc);
    CHECK_EQ(kmc_cache_free(kc, a[5]), KMC_OK);
    kmc_stats_t s1 = stats_of(kc);
    CHECK_EQ(s1.cached_objs, s0.cached_objs + 1);
    CHECK_EQ(s1.active_objs, s0.active_objs - 1);
    check_refused(a[5]);
    /* 2b. an owned slab, the first free made by another thread (its remote
     * bitmap), the second by the owner */
    k_obj = a[6];
    in_thread(free_k_obj, NULL);
    CHECK_EQ(k_status, KMC_OK);
    CHECK_EQ(kmc_cache_free(kc, a[6]), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)a[6]);
    /* 3. an owned partial slab, past the magazine: fill it first */
    for (size_t i = per; i < per + 64; i++)
        CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
    CHECK_EQ(kmc_cache_free(kc, a[per + 100]), KMC_OK); /* the magazine is full */
    check_refused(a[per + 100]);
    check_refused(a[per + 3]); /* and one in the magazine */
    /* 4. the depot: the thread's slabs go back to it */
    kmc_thread_flush();
    CHECK_EQ(stats_of(kc).thread_caches, 0);
    check_refused(a[5]);
    check_refused(a[per + 100]);
    check_refused(a[n - 1]);
    /* 5. another thread's slab */
    void *theirs = NULL;
    in_thread(alloc_and_keep, &theirs); /* the thread exits: its slab goes to the depot */
    CHECK(theirs != NULL);
    CHECK_EQ(kmc_cache_free(kc, theirs), KMC_OK);
    check_refused(theirs);
    /* everything else back; counts exact, nothing handed out twice */
    for (size_t i = 0; i < n; i++)
        if (i != 5 && i != 6 && !(i >= per && i < per + 64) && i != per + 100 && i != n - 1)
            CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
    kmc_stats_t s = stats_of(kc);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.allocs, s.frees);
    size_t problems = 7;
    CHECK_EQ(kmc_cache_validate(kc, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, n, a, 0), KMC_OK);
    CHECK(disjoint(a, n, 64));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
    free(a);
    CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
}

/* --- a slab emptied while its objects wait in the magazine -------------------------- */

#define EMPTIED_SLABS 40
static void **emptied_theirs;
static size_t emptied_n;

static void *take_from_the_depot(void *arg)
{
    (void)arg;
    TCHECK(kmc_cache_alloc_bulk(kc, emptied_n, emptied_theirs, 0) == KMC_OK);
    return NULL;
}

/* Every slab is emptied in order: its first objects go into the magazine,
 * the last one empties it, and beyond the empty slabs a heap keeps they go
 * to the depot. Another thread then takes them from the depot, while this
 * one allocates again: no object may be handed out to both. */
static void test_a_slab_emptied_with_objects_in_the_magazine_leaves_none_behind(void)
{
    CHECK((kc = make("emptied", 512, 0)) != NULL);
    size_t per = stats_of(kc).objperslab, n = EMPTIED_SLABS * per;
    void **mine = calloc(n, sizeof(void *));
    CHECK(mine != NULL);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, n, mine, 0), KMC_OK);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(kc, mine[i]), KMC_OK);
    kmc_stats_t s = stats_of(kc);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.active_slabs, 0);
    CHECK_EQ(s.empty_slabs, EMPTIED_SLABS);
    emptied_n = (EMPTIED_SLABS - 2) * per;
    emptied_theirs = calloc(emptied_n, sizeof(void *));
    CHECK(emptied_theirs != NULL);
    atomic_store(&thread_failures, 0);
    in_thread(take_from_the_depot, NULL); /* its heap goes back at exit */
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, n - emptied_n, mine, 0), KMC_OK);
    void **all = calloc(n, sizeof(void *));
    CHECK(all != NULL);
    memcpy(all, emptied_theirs, emptied_n * sizeof(void *));
    memcpy(all + emptied_n, mine, (n - emptied_n) * sizeof(void *));
    CHECK(disjoint(all, n, 512));
    CHECK_EQ(stats_of(kc).active_objs, n);
    CHECK_EQ(kmc_cache_validate(kc, NULL), KMC_OK);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(kc, all[i]), KMC_OK);
    free(all);
    free(mine);
    free(emptied_theirs);
    CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
}

/* A slab whose every object is freed while the magazine has room: the last
 * free leaves it empty, and the magazine lets go of its other objects. */
static void test_a_slab_emptied_through_the_magazine_counts_as_empty(void)
{
    CHECK((kc = make("emptied-small", 4096, 0)) != NULL);
    size_t per = stats_of(kc).objperslab, n = 2 * per;
    CHECK(per < 64);
    void **a = calloc(n, sizeof(void *));
    CHECK(a != NULL);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, n, a, 0), KMC_OK);
    for (size_t i = 0; i < per; i++) /* the first slab, owned, not current */
        CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
    kmc_stats_t s = stats_of(kc);
    CHECK_EQ(s.empty_slabs, 1);
    CHECK_EQ(s.active_slabs, 1);
    CHECK_EQ(s.cached_objs, per);
    CHECK_EQ(s.active_objs, per);
    /* the next alloc comes from the current slab or the empty one, and
     * never twice the same */
    for (size_t i = 0; i < per; i++)
        CHECK((a[i] = kmc_cache_alloc(kc, 0)) != NULL);
    CHECK(disjoint(a, n, 4096));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
    CHECK_EQ(kmc_cache_validate(kc, NULL), KMC_OK);
    free(a);
    CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
}

/* --- the magazine's bound, and the option ---------------------------------------------- */

static void test_the_magazine_holds_at_most_its_size(void)
{
    for (long size = 0; size <= 64; size += 32) {
        CHECK_EQ(kmc_option_set(KMC_OPTION_MAGAZINE, size), KMC_OK);
        CHECK((kc = make("bound", 64, 0)) != NULL);
        size_t per = stats_of(kc).objperslab, n = 2 * per;
        void **a = calloc(n, sizeof(void *));
        CHECK(a != NULL);
        CHECK_EQ(kmc_cache_alloc_bulk(kc, n, a, 0), KMC_OK);
        /* half of the first slab (owned, not current): at most @size wait
         * in the magazine, the rest make the slab partial */
        for (size_t i = 0; i < per / 2; i++)
            CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
        kmc_stats_t s = stats_of(kc);
        CHECK_EQ(s.cached_objs, per / 2);
        CHECK_EQ(s.partial_slabs, 2); /* the first, and the current one */
        /* the magazine hands back what it holds, last in first out */
        if (size) {
            void *p = kmc_cache_alloc(kc, 0);
            CHECK(p == a[size - 1]);
            a[size - 1] = p;
        } else {
            a[0] = kmc_cache_alloc(kc, 0);
        }
        for (size_t i = 0; i < n; i++)
            if (i >= per / 2 || i == (size ? (size_t)size - 1 : 0))
                CHECK_EQ(kmc_cache_free(kc, a[i]), KMC_OK);
        CHECK_EQ(stats_of(kc).active_objs, 0);
        CHECK_EQ(kmc_cache_validate(kc, NULL), KMC_OK);
        free(a);
        CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
    }
    CHECK_EQ(kmc_option_set(KMC_OPTION_MAGAZINE, 65), KMC_EINVAL);
    CHECK_EQ(kmc_option_get(KMC_OPTION_MAGAZINE), 64);
}

/* --- remote frees, many slabs' worth ---------------------------------------------------- */

#define REMOTE_SLABS 12
static void **remote_objs;
static size_t remote_n;

static void *free_every_other_remotely(void *arg)
{
    size_t first = (size_t)(uintptr_t)arg;
    for (size_t i = first; i < remote_n; i += 2)
        TCHECK(kmc_cache_free(kc, remote_objs[i]) == KMC_OK);
    return NULL;
}

/* Another thread frees half of twelve slabs' objects (every non-current
 * slab gets remote frees, which the owner merges whatever list the slab is
 * on), then the other half: the owner's counts and reuse stay exact. */
static void test_remote_frees_of_many_slabs_are_merged_and_counted(void)
{
    CHECK((kc = make("remote", 64, 64)) != NULL);
    size_t per = stats_of(kc).objperslab;
    remote_n = REMOTE_SLABS * per;
    remote_objs = calloc(remote_n, sizeof(void *));
    CHECK(remote_objs != NULL);
    atomic_store(&thread_failures, 0);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, remote_n, remote_objs, 0), KMC_OK);
    in_thread(free_every_other_remotely, (void *)0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    kmc_stats_t s = stats_of(kc);
    CHECK_EQ(s.remote_frees, remote_n / 2);
    CHECK_EQ(s.active_objs, remote_n / 2);
    /* the owner takes the remotely freed slots back: exactly that many,
     * before any new slab */
    void **again = calloc(remote_n / 2, sizeof(void *));
    CHECK(again != NULL);
    CHECK_EQ(kmc_cache_alloc_bulk(kc, remote_n / 2, again, 0), KMC_OK);
    s = stats_of(kc);
    CHECK_EQ(s.num_slabs, REMOTE_SLABS);
    CHECK_EQ(s.active_objs, remote_n);
    for (size_t i = 0; i < remote_n / 2; i++)
        remote_objs[2 * i] = again[i];
    CHECK(disjoint(remote_objs, remote_n, 64));
    in_thread(free_every_other_remotely, (void *)1);
    in_thread(free_every_other_remotely, (void *)0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    s = stats_of(kc);
    CHECK_EQ(s.remote_frees, 2 * remote_n - remote_n / 2);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(kmc_cache_validate(kc, NULL), KMC_OK);
    kmc_cache_shrink(kc);
    CHECK_EQ(stats_of(kc).num_slabs, 0);
    free(again);
    free(remote_objs);
    CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
}

/* --- two threads' pools, exchanging ------------------------------------------------------ */

#define POOL_LIVE   2048
#define POOL_ROUNDS 60000
static _Atomic(void *) pool_shared[POOL_LIVE];
static pthread_barrier_t pool_start;
static atomic_int pool_done; /* threads past POOL_ROUNDS */

/* Each thread replaces random objects of the shared pool: the object it
 * takes out was often allocated by the other thread (a remote free), the
 * one it puts in is its own. Objects carry their address as a tag. */
static void *pool_worker(void *arg)
{
    uint64_t seed = 0x2545f4914f6cdd1dull * ((uintptr_t)arg + 1);
    pthread_barrier_wait(&pool_start);
    /* on until both are done, so that the two run at the same time */
    for (long r = 0; r < POOL_ROUNDS || atomic_load(&pool_done) < 2; r++) {
        if (r == POOL_ROUNDS)
            atomic_fetch_add(&pool_done, 1);
        void *mine = kmc_cache_alloc(kc, 0);
        TCHECK(mine != NULL);
        if (!mine)
            return NULL;
        *(uintptr_t *)mine = (uintptr_t)mine;
        void *old = atomic_exchange(&pool_shared[next_random(&seed) % POOL_LIVE], mine);
        if (old) {
            TCHECK(*(uintptr_t *)old == (uintptr_t)old);
            TCHECK(kmc_cache_free(kc, old) == KMC_OK);
        }
        if (r % 20000 == 19999)
            kmc_cache_shrink(kc); /* takes the other thread's heap back */
    }
    return NULL;
}

static void test_two_threads_steady_pool_stress(void)
{
    CHECK((kc = make("pool2", 200, 64)) != NULL);
    atomic_store(&thread_failures, 0);
    atomic_store(&pool_done, 0);
    CHECK(pthread_barrier_init(&pool_start, NULL, 2) == 0);
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, pool_worker, (void *)i) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&pool_start);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    size_t live = 0;
    void **left = calloc(POOL_LIVE, sizeof(void *));
    CHECK(left != NULL);
    for (size_t i = 0; i < POOL_LIVE; i++)
        if ((left[live] = atomic_exchange(&pool_shared[i], NULL)))
            live++;
    kmc_stats_t s = stats_of(kc);
    CHECK_EQ(s.active_objs, live);
    CHECK(s.remote_frees > 0);
    CHECK(disjoint(left, live, 200));
    CHECK_EQ(kmc_cache_validate(kc, NULL), KMC_OK);
    for (size_t i = 0; i < live; i++)
        CHECK_EQ(kmc_cache_free(kc, left[i]), KMC_OK);
    CHECK_EQ(stats_of(kc).active_objs, 0);
    free(left);
    CHECK_EQ(kmc_cache_destroy(kc), KMC_OK);
}

int main(void)
{
    RUN(test_a_steady_pool_matches_its_model);
    RUN(test_double_and_invalid_frees_in_every_kind_of_slab);
    RUN(test_a_slab_emptied_with_objects_in_the_magazine_leaves_none_behind);
    RUN(test_a_slab_emptied_through_the_magazine_counts_as_empty);
    RUN(test_the_magazine_holds_at_most_its_size);
    RUN(test_remote_frees_of_many_slabs_are_merged_and_counted);
    RUN(test_two_threads_steady_pool_stress);
    return TESTS_DONE();
}
