/*
 * test_heaps.c - the per-thread caches, through kmc.h only.
 *
 * Remote frees and their counts, double frees whichever thread's cache took
 * the first free, shrink taking back the slabs of a thread that is alive
 * and idle, thread exit giving its slabs back, the purge delay, fork() while
 * threads churn, a mimalloc-style exchange of tagged objects between threads
 * that come and go, and address space in proportion to use (10,000 small
 * caches under a 16 GB limit; 30,000 created and destroyed leave nothing).
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kmc.h"
/* no test leaves failure injection on, or the purge delay changed */
#define TEST_AFTER_EACH() (kmc_os_fail_after(-1), kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 500))
#include "test_helpers.h"
#include "thread_helpers.h"

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* --- remote frees ---------------------------------------------------------- */

#define N_REMOTE 1000
static kmc_cache_t *remote_cache;
static void *remote_objs[N_REMOTE];

static void *free_all(void *arg)
{
    (void)arg;
    for (int i = 0; i < N_REMOTE; i++)
        TCHECK(kmc_cache_free(remote_cache, remote_objs[i]) == KMC_OK);
    return NULL;
}

static void test_remote_frees_are_counted_and_exact(void)
{
    remote_cache = make("remote", 64, 64);
    CHECK(remote_cache != NULL);
    atomic_store(&thread_failures, 0);
    CHECK_EQ(kmc_cache_alloc_bulk(remote_cache, N_REMOTE, remote_objs, 0), KMC_OK);
    kmc_stats_t s = stats_of(remote_cache);
    CHECK_EQ(s.active_objs, N_REMOTE);
    CHECK_EQ(s.thread_caches, 1);
    in_thread(free_all, NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    s = stats_of(remote_cache);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.frees, N_REMOTE);
    CHECK_EQ(s.remote_frees, N_REMOTE);
    /* all free, all in slabs the main thread's cache holds */
    CHECK_EQ(s.cached_objs, s.num_objs);
    /* a freed object is reused, remote bit merged, and not twice */
    void *again[N_REMOTE];
    CHECK_EQ(kmc_cache_alloc_bulk(remote_cache, N_REMOTE, again, 0), KMC_OK);
    CHECK_EQ(stats_of(remote_cache).num_slabs, s.num_slabs); /* no new slab */
    for (int i = 0; i < N_REMOTE; i++)
        for (int j = 0; j < i; j++)
            CHECK(again[i] != again[j]);
    for (int i = 0; i < N_REMOTE; i++)
        CHECK_EQ(kmc_cache_free(remote_cache, again[i]), KMC_OK);
    CHECK_EQ(kmc_cache_validate(remote_cache, NULL), KMC_OK);
    s = stats_of(remote_cache);
    CHECK_EQ(s.cached_objs, 0); /* validate took the caches back */
    CHECK_EQ(s.thread_caches, 0);
    CHECK_EQ(kmc_cache_destroy(remote_cache), KMC_OK);
}

/* --- double frees ------------------------------------------------------------ */

static kmc_cache_t *df_cache;
static void *df_obj;
static kmc_status df_status;

static void *free_df_obj(void *arg)
{
    (void)arg;
    df_status = kmc_cache_free(df_cache, df_obj);
    return NULL;
}

static void test_double_free_whichever_cache_took_the_first(void)
{
    df_cache = make("double", 100, 0);
    CHECK(df_cache != NULL);
    void *keep = kmc_cache_alloc(df_cache, 0);
    CHECK(keep != NULL);
    /* 1. freed into this thread's cache, then by another thread */
    df_obj = kmc_cache_alloc(df_cache, 0);
    CHECK_EQ(kmc_cache_free(df_cache, df_obj), KMC_OK);
    in_thread(free_df_obj, NULL);
    CHECK_EQ(df_status, KMC_EDOUBLE_FREE);
    /* 2. freed by another thread (a remote free), then here */
    df_obj = kmc_cache_alloc(df_cache, 0);
    in_thread(free_df_obj, NULL);
    CHECK_EQ(df_status, KMC_OK);
    CHECK_EQ(kmc_cache_free(df_cache, df_obj), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_last_report()->object, (uintptr_t)df_obj);
    /* 3. twice by another thread */
    df_obj = kmc_cache_alloc(df_cache, 0);
    in_thread(free_df_obj, NULL);
    CHECK_EQ(df_status, KMC_OK);
    in_thread(free_df_obj, NULL);
    CHECK_EQ(df_status, KMC_EDOUBLE_FREE);
    /* nothing was freed twice: counts and validate agree */
    kmc_stats_t s = stats_of(df_cache);
    CHECK_EQ(s.active_objs, 1);
    CHECK_EQ(s.frees, 3);
    size_t problems = 9;
    CHECK_EQ(kmc_cache_validate(df_cache, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    /* and no slot is handed out twice */
    void *a = kmc_cache_alloc(df_cache, 0), *b = kmc_cache_alloc(df_cache, 0);
    CHECK(a && b && a != b && a != keep && b != keep);
    CHECK_EQ(kmc_cache_free(df_cache, a), KMC_OK);
    CHECK_EQ(kmc_cache_free(df_cache, b), KMC_OK);
    CHECK_EQ(kmc_cache_free(df_cache, keep), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(df_cache), KMC_OK);
}

/* --- shrink and thread exit ------------------------------------------------------ */

static kmc_cache_t *idle_cache;
static pthread_barrier_t idle_gate;

/* Allocate and free (into this thread's cache), let the main thread look,
 * then allocate again after it took the slabs back. */
static void *churn_then_idle(void *arg)
{
    (void)arg;
    void *objs[200];
    TCHECK(kmc_cache_alloc_bulk(idle_cache, 200, objs, 0) == KMC_OK);
    for (int i = 0; i < 200; i++)
        TCHECK(kmc_cache_free(idle_cache, objs[i]) == KMC_OK);
    pthread_barrier_wait(&idle_gate); /* idle and alive: main shrinks */
    pthread_barrier_wait(&idle_gate);
    TCHECK(kmc_cache_alloc_bulk(idle_cache, 200, objs, 1) == KMC_OK);
    for (int i = 0; i < 200; i++)
        TCHECK(kmc_cache_free(idle_cache, objs[i]) == KMC_OK);
    return NULL;
}

static void test_shrink_takes_back_an_idle_threads_cache(void)
{
    idle_cache = make("idle", 512, 0);
    CHECK(idle_cache != NULL);
    atomic_store(&thread_failures, 0);
    CHECK(pthread_barrier_init(&idle_gate, NULL, 2) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, churn_then_idle, NULL) == 0);
    pthread_barrier_wait(&idle_gate);
    kmc_stats_t s = stats_of(idle_cache);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.thread_caches, 1);
    CHECK_EQ(s.cached_objs, s.num_objs);
    CHECK(s.committed_bytes > 0);
    size_t back = kmc_cache_shrink(idle_cache);
    s = stats_of(idle_cache);
    CHECK_EQ(s.thread_caches, 0);
    CHECK_EQ(s.cached_objs, 0);
    CHECK_EQ(s.committed_bytes, 0);
    CHECK_EQ(s.arenas, 0);
    CHECK(back > 0);
    pthread_barrier_wait(&idle_gate);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&idle_gate);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(stats_of(idle_cache).active_objs, 0);
    CHECK_EQ(kmc_cache_validate(idle_cache, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(idle_cache), KMC_OK);
}

static kmc_cache_t *exit_cache;
static void *left_live[10];

static void *leave_some_live(void *arg)
{
    (void)arg;
    void *objs[100];
    TCHECK(kmc_cache_alloc_bulk(exit_cache, 100, objs, 0) == KMC_OK);
    for (int i = 10; i < 100; i++)
        TCHECK(kmc_cache_free(exit_cache, objs[i]) == KMC_OK);
    memcpy(left_live, objs, sizeof(left_live));
    return NULL; /* exits with 10 objects live and 90 cached */
}

static void test_thread_exit_gives_its_cache_back(void)
{
    exit_cache = make("exit", 256, 0);
    CHECK(exit_cache != NULL);
    atomic_store(&thread_failures, 0);
    in_thread(leave_some_live, NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    kmc_stats_t s = stats_of(exit_cache);
    CHECK_EQ(s.thread_caches, 0);
    CHECK_EQ(s.cached_objs, 0);
    CHECK_EQ(s.active_objs, 10);
    for (int i = 0; i < 10; i++) /* the depot's now: freed here */
        CHECK_EQ(kmc_cache_free(exit_cache, left_live[i]), KMC_OK);
    CHECK_EQ(kmc_cache_free(exit_cache, left_live[0]), KMC_EDOUBLE_FREE);
    CHECK_EQ(stats_of(exit_cache).active_objs, 0);
    CHECK_EQ(kmc_cache_validate(exit_cache, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(exit_cache), KMC_OK);
}

/* destroy() while another thread's cache holds slabs of the cache (that
 * thread no longer uses it): everything goes; the thread lives on. */
static kmc_cache_t *gone_cache, *other_cache;
static pthread_barrier_t gone_gate;

static void *cache_then_wait(void *arg)
{
    (void)arg;
    void *objs[50];
    TCHECK(kmc_cache_alloc_bulk(gone_cache, 50, objs, 0) == KMC_OK);
    for (int i = 0; i < 50; i++)
        TCHECK(kmc_cache_free(gone_cache, objs[i]) == KMC_OK);
    pthread_barrier_wait(&gone_gate); /* main destroys gone_cache */
    pthread_barrier_wait(&gone_gate);
    void *p = kmc_cache_alloc(other_cache, 1); /* its other caches still work */
    TCHECK(p != NULL && kmc_cache_free(other_cache, p) == KMC_OK);
    return NULL;
}

static void test_destroy_while_another_threads_cache_holds_slabs(void)
{
    gone_cache = make("gone", 128, 0);
    other_cache = make("other", 128, 0);
    CHECK(gone_cache && other_cache);
    atomic_store(&thread_failures, 0);
    CHECK(pthread_barrier_init(&gone_gate, NULL, 2) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cache_then_wait, NULL) == 0);
    pthread_barrier_wait(&gone_gate);
    CHECK_EQ(stats_of(gone_cache).thread_caches, 1);
    size_t before = kmc_caches(NULL, 0);
    CHECK_EQ(kmc_cache_destroy(gone_cache), KMC_OK);
    CHECK_EQ(kmc_caches(NULL, 0), before - 1);
    pthread_barrier_wait(&gone_gate);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&gone_gate);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(kmc_cache_destroy(other_cache), KMC_OK);
}

/* Debug caches have no per-thread caches: every check runs at the call. */
static void test_debug_caches_bypass_thread_caches(void)
{
    kmc_cache_t *c = NULL;
    CHECK_EQ(kmc_cache_create("dbg", 64, 0, KMC_RED_ZONE, NULL, NULL, &c), KMC_OK);
    void *objs[100];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 100, objs, 0), KMC_OK);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.thread_caches, 0);
    CHECK_EQ(s.cached_objs, 0);
    CHECK_EQ(s.allocs, 100);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* A double free of an object long free, by another thread, while the owner
 * makes its slab current: the freer must find the free bit in the slab's
 * bitmap or in the heap's copy, whichever it reads, never neither. */
static kmc_cache_t *mc_cache;
static void *volatile mc_obj;
static atomic_int mc_go, mc_started, mc_stop, mc_stopped, mc_quit;
static atomic_long mc_accepted;

static void *free_again_and_again(void *arg)
{
    (void)arg;
    for (;;) {
        while (!atomic_load(&mc_go))
            if (atomic_load(&mc_quit))
                return NULL;
        atomic_store(&mc_go, 0);
        atomic_store(&mc_started, 1);
        while (!atomic_load(&mc_stop))
            if (kmc_cache_free(mc_cache, mc_obj) == KMC_OK) {
                atomic_fetch_add(&mc_accepted, 1);
                break;
            }
        atomic_store(&mc_stop, 0);
        atomic_store(&mc_stopped, 1);
    }
}

static void test_double_free_racing_a_slab_becoming_current(void)
{
    /* no magazine: the freed objects must stay in the first slab's bitmap
     * for the alloc below to make it current */
    CHECK_EQ(kmc_option_set(KMC_OPTION_MAGAZINE, 0), KMC_OK);
    mc_cache = make("current", 64, 0);
    CHECK_EQ(kmc_option_set(KMC_OPTION_MAGAZINE, 64), KMC_OK);
    CHECK(mc_cache != NULL);
    unsigned n = (unsigned)stats_of(mc_cache).objperslab;
    void **a = calloc(2 * (size_t)n, sizeof(void *));
    CHECK(a != NULL);
    atomic_store(&mc_accepted, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, free_again_and_again, NULL) == 0);
    for (int it = 0; it < 1500 && !atomic_load(&mc_accepted); it++) {
        for (unsigned i = 0; i <= n; i++) /* the first slab full, the next current */
            a[i] = kmc_cache_alloc(mc_cache, 0);
        mc_obj = a[1];
        kmc_cache_free(mc_cache, a[0]); /* the first slab: partial, two free */
        kmc_cache_free(mc_cache, a[1]);
        for (unsigned i = n + 1; i < 2 * n; i++) /* the current one full */
            a[i] = kmc_cache_alloc(mc_cache, 0);
        atomic_store(&mc_go, 1);
        while (!atomic_load(&mc_started))
            ;
        atomic_store(&mc_started, 0);
        for (volatile int k = 0; k < (it % 64) * 4; k++)
            ;
        a[0] = kmc_cache_alloc(mc_cache, 0); /* the first slab becomes current */
        atomic_store(&mc_stop, 1);
        while (!atomic_load(&mc_stopped))
            ;
        atomic_store(&mc_stopped, 0);
        a[1] = NULL;
        for (unsigned i = 0; i < 2 * n; i++)
            if (a[i])
                CHECK_EQ(kmc_cache_free(mc_cache, a[i]), KMC_OK);
        kmc_thread_flush();
    }
    atomic_store(&mc_quit, 1);
    pthread_join(t, NULL);
    CHECK_EQ(atomic_load(&mc_accepted), 0);
    CHECK_EQ(kmc_cache_validate(mc_cache, NULL), KMC_OK);
    free(a);
    CHECK_EQ(kmc_cache_destroy(mc_cache), KMC_OK);
}

/* fork() while a thread moves slabs in and out of its cache at every few
 * operations (16 KiB objects, four a slab): the child's caches are whole. */
static kmc_cache_t *torn_cache;
static atomic_int torn_stop;

static void *switch_slabs(void *arg)
{
    (void)arg;
    void *held[256] = {0};
    uint64_t r = 0x9e3779b97f4a7c15ull;
    while (!atomic_load(&torn_stop)) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        unsigned i = (unsigned)(r % 256);
        if (held[i]) {
            TCHECK(kmc_cache_free(torn_cache, held[i]) == KMC_OK);
            held[i] = NULL;
        } else {
            TCHECK((held[i] = kmc_cache_alloc(torn_cache, 0)) != NULL);
        }
    }
    for (int i = 0; i < 256; i++)
        if (held[i])
            TCHECK(kmc_cache_free(torn_cache, held[i]) == KMC_OK);
    return NULL;
}

static int torn_child(void)
{
    kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 0);
    void *p[600];
    for (int i = 0; i < 600; i++)
        if (!(p[i] = kmc_cache_alloc(torn_cache, 0)) || kmc_owner(p[i], NULL) != torn_cache)
            return 1;
    for (int i = 0; i < 600; i++)
        if (kmc_cache_free(torn_cache, p[i]) != KMC_OK)
            return 2;
    if (kmc_cache_validate(torn_cache, NULL) != KMC_OK)
        return 3;
    kmc_stats_t s = stats_of(torn_cache);
    return s.thread_caches == 0 ? 0 : 4;
}

static void test_fork_while_a_thread_switches_slabs(void)
{
    torn_cache = make("torn", 16384, 0);
    CHECK(torn_cache != NULL);
    atomic_store(&torn_stop, 0);
    atomic_store(&thread_failures, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, switch_slabs, NULL) == 0);
    int bad = 0;
    for (int n = 0; n < 40; n++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(torn_child());
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            fprintf(stderr, "  child %d: status 0x%x\n", n, status);
            bad++;
        }
    }
    atomic_store(&torn_stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(stats_of(torn_cache).active_objs, 0);
    CHECK_EQ(kmc_cache_validate(torn_cache, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(torn_cache), KMC_OK);
}

/* A double free racing a shrink that releases the object's arena: detected
 * (double or invalid), never a read of memory given back. */
static kmc_cache_t *sh_cache;
static atomic_int sh_stop;

static void *shrink_forever(void *arg)
{
    (void)arg;
    while (!atomic_load(&sh_stop)) {
        kmc_cache_shrink(sh_cache);
        sched_yield(); /* the cache lock is not fair: leave the freeing thread a turn */
    }
    return NULL;
}

/* Fewer rounds under a sanitizer, where each shrink's barrier costs the most. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SH_ROUNDS 4000
#else
#define SH_ROUNDS 20000
#endif

static void test_double_free_racing_shrink(void)
{
    sh_cache = make("shrinkrace", 64, 0);
    CHECK(sh_cache != NULL);
    atomic_store(&sh_stop, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, shrink_forever, NULL) == 0);
    long wrong = 0;
    for (int i = 0; i < SH_ROUNDS; i++) {
        void *p = kmc_cache_alloc(sh_cache, 0);
        if (!p || kmc_cache_free(sh_cache, p) != KMC_OK)
            wrong++;
        kmc_thread_flush(); /* its slab goes to the depot, empty: shrink may release it */
        for (int k = 0; k < 8; k++) {
            kmc_status st = (k & 1) ? kmc_free(p) : kmc_cache_free(sh_cache, p);
            wrong += st != KMC_EDOUBLE_FREE && st != KMC_EINVALID_FREE;
        }
    }
    atomic_store(&sh_stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ(wrong, 0);
    CHECK_EQ(kmc_cache_destroy(sh_cache), KMC_OK);
}

/* Any pointer, even near the end of the address space, is an invalid free. */
static void test_wild_pointers_are_invalid_frees(void)
{
    kmc_cache_t *c = make("wild", 64, 0);
    CHECK(c != NULL);
    void *p = kmc_cache_alloc(c, 0); /* a heap exists... */
    CHECK_EQ(kmc_cache_free(c, p), KMC_OK);
    kmc_thread_flush(); /* ...with no current slab */
    uintptr_t wild[] = {UINTPTR_MAX - ((uintptr_t)1 << 25), UINTPTR_MAX - 63, UINTPTR_MAX,
                        (uintptr_t)1 << 47, 64};
    for (size_t i = 0; i < sizeof(wild) / sizeof(wild[0]); i++)
        CHECK_EQ(kmc_cache_free(c, (void *)wild[i]), KMC_EINVALID_FREE);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* Statistics read while other threads allocate and free never count more
 * frees than allocations. */
static kmc_cache_t *st_cache;
static atomic_int st_stop;

static void *pairs_until_stopped(void *arg)
{
    (void)arg;
    while (!atomic_load(&st_stop)) {
        void *p = kmc_cache_alloc(st_cache, 0);
        TCHECK(p && kmc_cache_free(st_cache, p) == KMC_OK);
    }
    return NULL;
}

static void test_stats_read_during_churn_add_up(void)
{
    st_cache = make("statsrace", 64, 0);
    CHECK(st_cache != NULL);
    void *keep[2] = {kmc_cache_alloc(st_cache, 0), kmc_cache_alloc(st_cache, 0)};
    CHECK(keep[0] && keep[1]);
    atomic_store(&st_stop, 0);
    atomic_store(&thread_failures, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, pairs_until_stopped, NULL) == 0);
    long bad = 0; /* counts move meanwhile, but never below zero */
    for (int i = 0; i < 300000; i++) {
        kmc_stats_t s = stats_of(st_cache);
        bad += s.frees > s.allocs || s.active_objs > s.allocs;
    }
    atomic_store(&st_stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(kmc_cache_free(st_cache, keep[0]), KMC_OK);
    CHECK_EQ(kmc_cache_free(st_cache, keep[1]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(st_cache), KMC_OK);
}

/* --- the purge delay ---------------------------------------------------------------- */

static void test_empty_memory_goes_back_after_the_purge_delay(void)
{
    CHECK_EQ(kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 50), KMC_OK);
    CHECK_EQ(kmc_option_get(KMC_OPTION_PURGE_DELAY_MS), 50);
    CHECK_EQ(kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, -1), KMC_EINVAL);
    kmc_cache_t *c = make("purge", 1024, 0);
    CHECK(c != NULL);
    void *objs[400];
    CHECK_EQ(kmc_cache_alloc_bulk(c, 400, objs, 0), KMC_OK);
    kmc_stats_t full = stats_of(c);
    for (int i = 0; i < 400; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(stats_of(c).slabs_released, 0); /* not at once */
    void *big = kmc_kmalloc(1 << 20, 0);     /* and a large run */
    CHECK(big != NULL);
    CHECK_EQ(kmc_kfree(big), KMC_OK);
    kmc_kmalloc_large_stats_t ls;
    kmc_kmalloc_large_stats(&ls);
    CHECK(ls.kept >= 1);
    /* idle: the background thread takes this thread's cache back and the
     * slabs go after the delay (2 s is for a loaded machine) */
    for (int i = 0; i < 200 && stats_of(c).num_slabs; i++)
        sleep_ms(10);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.slabs_released, full.num_slabs);
    for (int i = 0; i < 200 && (kmc_kmalloc_large_stats(&ls), ls.kept); i++)
        sleep_ms(10);
    CHECK_EQ(ls.kept, 0);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- fork ----------------------------------------------------------------------------- */

static kmc_cache_t *fork_caches[2];
static atomic_int fork_stop;

static void *churn(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    void *held[64] = {0};
    uint64_t r = 0x9e3779b97f4a7c15ull * (id + 1);
    while (!atomic_load(&fork_stop)) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        unsigned i = (unsigned)(r % 64);
        kmc_cache_t *c = fork_caches[(r >> 8) & 1];
        if (held[i]) {
            TCHECK(kmc_free(held[i]) == KMC_OK);
            held[i] = NULL;
        } else {
            held[i] = kmc_cache_alloc(c, 1);
            TCHECK(held[i] != NULL);
        }
        if ((r & 0xfff) == 0) {
            void *p = kmc_kmalloc(300000, 0); /* the large lock too */
            TCHECK(p && kmc_kfree(p) == KMC_OK);
        }
    }
    for (int i = 0; i < 64; i++)
        if (held[i])
            TCHECK(kmc_free(held[i]) == KMC_OK);
    return NULL;
}

/* In the child: allocate and free on both caches at once, and validate. */
static int child_work(void)
{
    /* release at once: no background thread (ThreadSanitizer cannot follow
     * one started after a fork) */
    kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 0);
    for (int k = 0; k < 2; k++) {
        void *objs[300];
        if (kmc_cache_alloc_bulk(fork_caches[k], 300, objs, 1) != KMC_OK)
            return 1;
        for (int i = 0; i < 300; i++)
            if (kmc_cache_free(fork_caches[k], objs[i]) != KMC_OK)
                return 2;
        if (kmc_cache_validate(fork_caches[k], NULL) != KMC_OK)
            return 3;
        kmc_stats_t s = stats_of(fork_caches[k]);
        if (s.thread_caches != 0 || s.allocs < s.frees)
            return 4;
    }
    void *p = kmc_kmalloc(300000, 0);
    return p && kmc_kfree(p) == KMC_OK ? 0 : 5;
}

static void test_fork_while_threads_churn(void)
{
    fork_caches[0] = make("fork0", 64, 0);
    fork_caches[1] = make("fork1", 3000, 64);
    CHECK(fork_caches[0] && fork_caches[1]);
    atomic_store(&fork_stop, 0);
    atomic_store(&thread_failures, 0);
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0);
    int bad = 0;
    for (int n = 0; n < 40; n++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(child_work());
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            fprintf(stderr, "  child %d: status 0x%x\n", n, status);
            bad++;
        }
        sleep_ms(2);
    }
    atomic_store(&fork_stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    for (int k = 0; k < 2; k++) {
        kmc_stats_t s = stats_of(fork_caches[k]);
        CHECK_EQ(s.active_objs, 0); /* the parent lost nothing */
        CHECK_EQ(s.allocs, s.frees);
        CHECK_EQ(kmc_cache_validate(fork_caches[k], NULL), KMC_OK);
        CHECK_EQ(kmc_cache_destroy(fork_caches[k]), KMC_OK);
    }
}

/* --- threads exchanging objects, coming and going ------------------------------------- */

#define SLOTS      256
#define EXCHANGERS 4
#define WAVES      6
static kmc_cache_t *xcaches[3];
static const size_t xsize[3] = {16, 200, 5000};
static _Atomic(uint64_t *) slots[SLOTS];
static pthread_barrier_t xstart; /* the exchangers of a wave start together */
static pthread_barrier_t xend;   /* and exit together: until then each one's
                                  * slabs are a live thread's (a free by
                                  * another thread is remote), even where the
                                  * machine runs them one after another */

/* An object carries its size class and a tag in its first and last words. */
static uint64_t *tagged(uint64_t tag)
{
    int k = (int)(tag % 3);
    uint64_t *p = kmc_cache_alloc(xcaches[k], 0);
    if (p) {
        p[0] = tag;
        p[xsize[k] / 8 - 1] = ~tag;
    }
    return p;
}

static int tag_ok(const uint64_t *p)
{
    int k = (int)(p[0] % 3);
    return p[xsize[k] / 8 - 1] == ~p[0];
}

static void *exchanger(void *arg)
{
    uint64_t r = (uint64_t)(uintptr_t)arg * 0x2545f4914f6cdd1dull + 1;
    pthread_barrier_wait(&xstart);
    for (int i = 0; i < 20000; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        uint64_t *mine = tagged(r | 1);
        TCHECK(mine != NULL);
        uint64_t *theirs = atomic_exchange(&slots[r % SLOTS], mine);
        if (theirs) {
            TCHECK(tag_ok(theirs));
            kmc_status st = kmc_free(theirs); /* often another thread's slab */
            if (st != KMC_OK)
                fprintf(stderr, "  free %p: %s\n", (void *)theirs, kmc_last_report()->message);
            TCHECK(st == KMC_OK);
        }
        if ((r & 0x3ff) == 0)
            kmc_cache_shrink(xcaches[(r >> 10) % 3]); /* takes back live threads' caches */
    }
    pthread_barrier_wait(&xend);
    return NULL; /* exits with its objects still in the slots */
}

static void test_threads_exchange_tagged_objects_and_come_and_go(void)
{
    for (int k = 0; k < 3; k++)
        CHECK((xcaches[k] = make("exchange", xsize[k], 0)) != NULL);
    atomic_store(&thread_failures, 0);
    CHECK(pthread_barrier_init(&xstart, NULL, EXCHANGERS) == 0);
    CHECK(pthread_barrier_init(&xend, NULL, EXCHANGERS) == 0);
    for (int wave = 0; wave < WAVES; wave++) {
        pthread_t t[EXCHANGERS];
        for (uintptr_t i = 0; i < EXCHANGERS; i++)
            CHECK(pthread_create(&t[i], NULL, exchanger, (void *)(wave * EXCHANGERS + i + 1)) == 0);
        for (int i = 0; i < EXCHANGERS; i++)
            pthread_join(t[i], NULL);
    }
    pthread_barrier_destroy(&xstart);
    pthread_barrier_destroy(&xend);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    for (int i = 0; i < SLOTS; i++) {
        uint64_t *p = atomic_exchange(&slots[i], NULL);
        if (p) {
            CHECK(tag_ok(p));
            CHECK_EQ(kmc_free(p), KMC_OK);
        }
    }
    /* the threads did free each other's objects, in some cache at least */
    uint64_t remote = 0;
    for (int k = 0; k < 3; k++) {
        kmc_stats_t s = stats_of(xcaches[k]);
        CHECK_EQ(s.active_objs, 0);
        remote += s.remote_frees;
        CHECK_EQ(kmc_cache_validate(xcaches[k], NULL), KMC_OK);
        CHECK_EQ(kmc_cache_destroy(xcaches[k]), KMC_OK);
    }
    CHECK(remote > 0);
}

/* --- address space in proportion to use ----------------------------------------------- */

/* Sanitizers reserve terabytes of shadow address space and keep freed
 * memory in quarantine: these two tests measure the engine alone. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif
#define SKIP_UNDER_SANITIZER()                                                    \
    do {                                                                          \
        if (UNDER_SANITIZER) {                                                    \
            printf("  (skipped under a sanitizer: it measures address space)\n"); \
            return;                                                               \
        }                                                                         \
    } while (0)

static void test_ten_thousand_small_caches_under_a_16_gb_limit(void)
{
    SKIP_UNDER_SANITIZER();
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit lim = {16000000000ull, 16000000000ull};
        if (setrlimit(RLIMIT_AS, &lim) != 0)
            _exit(10);
        static kmc_cache_t *many[10000];
        static void *objs[10000];
        for (int i = 0; i < 10000; i++) {
            if (kmc_cache_create("small", 100, 0, 0, NULL, NULL, &many[i]) != KMC_OK)
                _exit(11);
            if (!(objs[i] = kmc_cache_alloc(many[i], 1)))
                _exit(12);
        }
        kmc_stats_t s;
        kmc_cache_stats(many[0], &s);
        if (s.reserved_bytes > ((size_t)1 << 20))
            _exit(13); /* a few objects: 1 MiB of address space */
        for (int i = 0; i < 10000; i++)
            if (kmc_cache_free(many[i], objs[i]) != KMC_OK || kmc_cache_destroy(many[i]) != KMC_OK)
                _exit(14);
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    long n = 0;
    for (int ch; f && (ch = fgetc(f)) != EOF;)
        n += ch == '\n';
    if (f)
        fclose(f);
    return n;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (long)(kmc_page_size() / 1024);
}

static void test_created_and_destroyed_caches_leave_nothing(void)
{
    SKIP_UNDER_SANITIZER();
    for (int i = 0; i < 1000; i++) { /* warm up malloc and the owner table */
        kmc_cache_t *c = make("churn", 64, 0);
        CHECK(c != NULL);
        void *p = kmc_cache_alloc(c, 0);
        CHECK(p && kmc_cache_free(c, p) == KMC_OK && kmc_cache_destroy(c) == KMC_OK);
    }
    long maps = count_lines("/proc/self/maps"), rss = rss_kib();
    for (int i = 0; i < 30000; i++) {
        kmc_cache_t *c = make("churn", 64 + (size_t)(i % 7) * 100, 0);
        CHECK(c != NULL);
        void *p = kmc_cache_alloc(c, 0);
        CHECK(p && kmc_cache_free(c, p) == KMC_OK && kmc_cache_destroy(c) == KMC_OK);
    }
    CHECK(count_lines("/proc/self/maps") <= maps + 16);
    CHECK(rss_kib() <= rss + 8 * 1024);
}

int main(void)
{
    RUN(test_remote_frees_are_counted_and_exact);
    RUN(test_double_free_whichever_cache_took_the_first);
    RUN(test_shrink_takes_back_an_idle_threads_cache);
    RUN(test_thread_exit_gives_its_cache_back);
    RUN(test_destroy_while_another_threads_cache_holds_slabs);
    RUN(test_double_free_racing_a_slab_becoming_current);
    RUN(test_fork_while_a_thread_switches_slabs);
    RUN(test_double_free_racing_shrink);
    RUN(test_wild_pointers_are_invalid_frees);
    RUN(test_stats_read_during_churn_add_up);
    RUN(test_debug_caches_bypass_thread_caches);
    RUN(test_empty_memory_goes_back_after_the_purge_delay);
    RUN(test_fork_while_threads_churn);
    RUN(test_threads_exchange_tagged_objects_and_come_and_go);
    RUN(test_ten_thousand_small_caches_under_a_16_gb_limit);
    RUN(test_created_and_destroyed_caches_leave_nothing);
    return TESTS_DONE();
}
