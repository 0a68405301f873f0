/*
 * test_shared.c - shared caches through kmc.h: the region, attach and
 * detach, generations and holders, alignment in every process, and crashes.
 *
 * Crash tests fork children that use a cache and die: killed with SIGKILL
 * at random moments, or killing themselves at the n-th crash point of the
 * engine's locked paths (kmc_shared_crash_after), which puts a death at
 * every step of every locked operation. After each death the parent checks
 * that validate() finds nothing to repair once the dead child's objects are
 * reclaimed, and that the counts are exactly what the living hold.
 * Region names carry this process's pid and are unlinked at the end.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kmc.h"
#define TEST_AFTER_EACH() (kmc_os_fail_after(-1), kmc_shared_crash_after(0), unlink_all())
#include "test_helpers.h"

#define MiB ((size_t)1 << 20)

static char names[64][48];
static int nnames;

/* A region name unique to this run and test; unlinked after each test. */
static const char *fresh_name(void)
{
    snprintf(names[nnames], sizeof(names[0]), "kmctest-%d-%d", (int)getpid(), nnames);
    return names[nnames++];
}

static void unlink_all(void)
{
    for (int i = 0; i < nnames; i++)
        (void)kmc_shared_unlink(names[i]);
    nnames = 0;
}

static int region_exists(const char *name)
{
    char path[128], region[96];
    if (kmc_shared_region_name(name, region, sizeof(region)) != KMC_OK)
        return 0;
    snprintf(path, sizeof(path), "/dev/shm%s", region);
    struct stat st;
    return stat(path, &st) == 0;
}

static kmc_stats_t stats_of(kmc_cache_t *c)
{
    kmc_stats_t s;
    kmc_cache_stats(c, &s);
    return s;
}

static kmc_cache_t *make_shared(const char *name, size_t size, size_t align, unsigned flags,
                                size_t capacity)
{
    kmc_cache_t *c = NULL;
    if (kmc_shared_create(name, size, align, flags, capacity, 0, NULL, NULL, &c) != KMC_OK) {
        fprintf(stderr, "  create %s: %s\n", name, kmc_last_report()->message);
        return NULL;
    }
    return c;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* --- the region ---------------------------------------------------------- */

static void test_create_rejects_bad_arguments(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = (kmc_cache_t *)&c;
    CHECK_EQ(kmc_shared_create("a/b", 64, 0, 0, 8 * MiB, 0, NULL, NULL, &c), KMC_EINVAL);
    CHECK(c == NULL);
    CHECK_EQ(kmc_shared_create(name, 0, 0, 0, 8 * MiB, 0, NULL, NULL, &c), KMC_EINVAL);
    CHECK_EQ(kmc_shared_create(name, 64, 3, 0, 8 * MiB, 0, NULL, NULL, &c), KMC_EINVAL);
    CHECK_EQ(kmc_shared_create(name, 64, 0, 0, 8 * MiB, KMC_SHARED_MAX_PROCS + 1, NULL, NULL, &c),
             KMC_EINVAL);
    CHECK_EQ(kmc_shared_create(name, 64, 0, 0, 4096, 0, NULL, NULL, &c), KMC_EINVAL);
    CHECK_STR_HAS(kmc_last_report()->message, "too small");
    CHECK_STR_HAS(kmc_last_report()->message, "at least");
    CHECK(!region_exists(name)); /* nothing left behind by a refusal */
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &c), KMC_ENOENT);
    CHECK_EQ(kmc_shared_unlink(name), KMC_ENOENT);
}

static void test_create_attach_unlink(void)
{
    const char *name = fresh_name();
    kmc_cache_t *a = make_shared(name, 100, 64, 0, 16 * MiB);
    CHECK(a != NULL);
    CHECK(kmc_cache_is_shared(a));
    CHECK(region_exists(name));
    kmc_cache_t *dup = NULL;
    CHECK_EQ(kmc_shared_create(name, 100, 64, 0, 16 * MiB, 0, NULL, NULL, &dup), KMC_EEXIST);
    kmc_cache_t *b = NULL;
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &b), KMC_OK);
    CHECK_EQ(kmc_cache_size(b), 100);
    CHECK_EQ(kmc_cache_align(b), 64);
    CHECK(strcmp(kmc_cache_name(b), name) == 0);
    kmc_shared_info_t ia, ib;
    kmc_shared_info(a, &ia);
    kmc_shared_info(b, &ib);
    CHECK_EQ(ia.nonce, ib.nonce);
    CHECK_EQ(ia.procs, 2);
    CHECK(ia.self != ib.self);
    CHECK(ia.region_bytes <= 16 * MiB);
    /* unlinked: the attached keep working, a new attach fails */
    CHECK_EQ(kmc_shared_unlink(name), KMC_OK);
    CHECK(!region_exists(name));
    kmc_cache_t *late = NULL;
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &late), KMC_ENOENT);
    uint32_t gen;
    void *p = kmc_shared_alloc(a, 1, &gen);
    CHECK(p != NULL);
    CHECK_EQ(kmc_shared_free(b, &gen, gen), KMC_EINVALID_FREE);
    CHECK_EQ(kmc_cache_destroy(b), KMC_OK);
    CHECK_EQ(kmc_shared_free(a, p, gen), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(a), KMC_OK);
}

/* Both views of one region see one object at one offset, aligned in each. */
static void test_two_mappings_one_object(void)
{
    const char *name = fresh_name();
    kmc_cache_t *a = make_shared(name, 4000, 4096, 0, 32 * MiB);
    kmc_cache_t *b = NULL;
    CHECK(a != NULL);
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &b), KMC_OK);
    uint32_t gen, gen_b;
    uint8_t *p = kmc_shared_alloc(a, 1, &gen);
    CHECK(p != NULL && gen != 0);
    CHECK_EQ((uintptr_t)p % 4096, 0);
    uint64_t off = kmc_shared_offset(a, p);
    void *q = NULL;
    int already = -1;
    CHECK_EQ(kmc_shared_hold(b, off, gen, 0, &q, &gen_b, &already), KMC_OK);
    CHECK(q != p); /* another mapping */
    CHECK_EQ(gen_b, gen);
    CHECK_EQ(already, 0);
    CHECK_EQ((uintptr_t)q % 4096, 0);
    memcpy(p, "hello", 6);
    CHECK(memcmp(q, "hello", 6) == 0);
    CHECK(kmc_owner(q, NULL) == b);
    CHECK(kmc_owner(p, NULL) == a);
    CHECK_EQ(stats_of(a).active_objs, 1);
    CHECK_EQ(stats_of(b).active_objs, 1);
    /* any process frees; the other's free is then a double free, also once
     * the slot lives again */
    CHECK_EQ(kmc_shared_free(b, q, gen), KMC_OK);
    CHECK_EQ(kmc_shared_free(a, p, gen), KMC_EDOUBLE_FREE);
    uint32_t gen2;
    uint8_t *again = kmc_shared_alloc(b, 0, &gen2); /* b's magazine has it */
    CHECK(again == q);
    CHECK(gen2 != gen);
    CHECK_EQ(kmc_shared_free(a, p, gen), KMC_EDOUBLE_FREE);
    CHECK_STR_HAS(kmc_last_report()->message, "allocated again");
    CHECK_EQ(stats_of(a).active_objs, 1);
    CHECK_EQ(kmc_free(again), KMC_OK); /* kfree works on shared objects */
    CHECK_EQ(kmc_free(again), KMC_EDOUBLE_FREE);
    CHECK_EQ(stats_of(b).active_objs, 0);
    CHECK_EQ(kmc_cache_validate(a, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(b), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(a), KMC_OK);
}

static void test_alloc_free_and_stats(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 64, 64, 0, 16 * MiB);
    CHECK(c != NULL);
    enum { N = 5000 };
    static void *objs[N];
    static uint32_t gens[N];
    for (int i = 0; i < N; i++) {
        objs[i] = kmc_shared_alloc(c, 1, &gens[i]);
        CHECK(objs[i] != NULL);
        CHECK_EQ((uintptr_t)objs[i] % 64, 0);
        memset(objs[i], i & 0xff, 64);
    }
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, N);
    CHECK(s.num_objs >= N);
    CHECK_EQ(s.objsize, 64);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    for (int i = 0; i < N; i++)
        CHECK(((uint8_t *)objs[i])[63] == (i & 0xff));
    for (int i = 0; i < N; i += 2)
        CHECK_EQ(kmc_shared_free(c, objs[i], gens[i]), KMC_OK);
    CHECK_EQ(stats_of(c).active_objs, N / 2);
    CHECK_EQ(kmc_shared_free(c, objs[0], gens[0]), KMC_EDOUBLE_FREE);
    CHECK_EQ(kmc_shared_free(c, (uint8_t *)objs[1] + 8, gens[1]), KMC_EINVALID_FREE);
    for (int i = 1; i < N; i += 2)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    s = stats_of(c);
    CHECK_EQ(s.active_objs, 0);
    CHECK_EQ(s.allocs, N);
    CHECK_EQ(s.frees, N);
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK(kmc_cache_shrink(c) > 0);
    s = stats_of(c);
    CHECK_EQ(s.num_slabs, 0);
    CHECK_EQ(s.cached_objs, 0);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_bulk(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 200, 0, 0, 8 * MiB);
    CHECK(c != NULL);
    void *objs[300];
    uint32_t gens[300];
    CHECK_EQ(kmc_shared_alloc_bulk(c, 300, objs, gens, 1), KMC_OK);
    CHECK_EQ(stats_of(c).active_objs, 300);
    void *twice[2] = {objs[0], objs[0]};
    uint32_t tgens[2] = {gens[0], gens[0]};
    CHECK_EQ(kmc_shared_free_bulk(c, 2, twice, tgens), KMC_EDOUBLE_FREE);
    CHECK_EQ(stats_of(c).active_objs, 300); /* all or nothing */
    CHECK_EQ(kmc_shared_free_bulk(c, 300, objs, gens), KMC_OK);
    CHECK_EQ(stats_of(c).active_objs, 0);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

static void test_full_region(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 65536, 0, 0, 4 * MiB);
    CHECK(c != NULL);
    kmc_shared_info_t info;
    kmc_shared_info(c, &info);
    size_t fit = info.slab_bytes / 65536, n = 0;
    static void *objs[1024];
    while (n < 1024 && (objs[n] = kmc_shared_alloc(c, 0, NULL)))
        n++;
    CHECK_EQ(n, fit);
    CHECK_EQ(kmc_last_report()->status, KMC_ENOMEM);
    CHECK_STR_HAS(kmc_last_report()->message, "full");
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kmc_cache_free(c, objs[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* A bit of a free bitmap flipped behind the engine's back: validate finds
 * it (the records say otherwise) and rebuilds; a second validate finds
 * nothing. */
static void test_validate_repairs_bitmaps(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 64, 0, 0, 8 * MiB);
    CHECK(c != NULL);
    void *a = kmc_shared_alloc(c, 0, NULL), *b = kmc_shared_alloc(c, 0, NULL);
    CHECK_EQ(kmc_debug_flip_free_bit(a), KMC_OK);
    size_t problems = 0;
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_ECORRUPT);
    CHECK_EQ(problems, 1);
    CHECK_STR_HAS(kmc_last_report()->message, "rebuilt from the records");
    CHECK_EQ(kmc_cache_validate(c, &problems), KMC_OK);
    CHECK_EQ(problems, 0);
    CHECK_EQ(stats_of(c).active_objs, 2);
    CHECK_EQ(kmc_cache_free(c, a), KMC_OK);
    CHECK_EQ(kmc_cache_free(c, b), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- holders --------------------------------------------------------------- */

static void test_holders(void)
{
    const char *name = fresh_name();
    kmc_cache_t *a = make_shared(name, 128, 0, 0, 8 * MiB);
    kmc_cache_t *b = NULL;
    CHECK(a != NULL);
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &b), KMC_OK);
    uint32_t gen;
    void *p = kmc_shared_alloc(a, 0, &gen), *q;
    uint64_t off = kmc_shared_offset(a, p);
    int freed = -1, already;
    /* the sole holder drops it: freed */
    CHECK_EQ(kmc_shared_drop(a, p, gen, &freed), KMC_OK);
    CHECK_EQ(freed, 1);
    CHECK_EQ(kmc_shared_hold(b, off, gen, 1, &q, NULL, NULL), KMC_ESTALE);
    CHECK_EQ(stats_of(a).active_objs, 0);
    /* a pickle out: the sender's drop does not free it; the receiver claims it */
    p = kmc_shared_alloc(a, 0, &gen);
    off = kmc_shared_offset(a, p);
    CHECK_EQ(kmc_shared_ticket(a, p, gen), KMC_OK);
    CHECK_EQ(kmc_shared_drop(a, p, gen, &freed), KMC_OK);
    CHECK_EQ(freed, 0);
    kmc_shared_info_t info;
    kmc_shared_info(a, &info);
    CHECK_EQ(info.pickled, 1);
    CHECK_EQ(kmc_shared_hold(b, off, gen, 1, &q, NULL, &already), KMC_OK);
    CHECK_EQ(already, 0);
    kmc_shared_info(a, &info);
    CHECK_EQ(info.pickled, 0);
    CHECK_EQ(stats_of(a).active_objs, 1);
    /* a process that is not a holder drops: nothing */
    CHECK_EQ(kmc_shared_drop(a, p, gen, &freed), KMC_OK);
    CHECK_EQ(freed, 0);
    CHECK_EQ(stats_of(a).active_objs, 1);
    /* two holders: freed when the last lets go */
    void *p2;
    CHECK_EQ(kmc_shared_hold(a, off, KMC_SHARED_ANY_GEN, 0, &p2, NULL, &already), KMC_OK);
    CHECK(p2 == p);
    CHECK_EQ(already, 0);
    CHECK_EQ(kmc_shared_hold(a, off, gen, 0, &p2, NULL, &already), KMC_OK);
    CHECK_EQ(already, 1);
    CHECK_EQ(kmc_shared_drop(b, q, gen, &freed), KMC_OK);
    CHECK_EQ(freed, 0);
    CHECK_EQ(kmc_shared_drop(a, p, gen, &freed), KMC_OK);
    CHECK_EQ(freed, 1);
    CHECK_EQ(stats_of(a).active_objs, 0);
    /* a stale generation names nothing, even when the slot lives again */
    void *p3 = kmc_shared_alloc(a, 0, NULL);
    CHECK(p3 == p);
    CHECK_EQ(kmc_shared_ticket(a, p3, gen), KMC_ESTALE);
    CHECK_EQ(kmc_shared_hold(b, off, gen, 0, &q, NULL, NULL), KMC_ESTALE);
    CHECK_EQ(kmc_shared_hold(b, off + 1, KMC_SHARED_ANY_GEN, 0, &q, NULL, NULL), KMC_EINVAL);
    CHECK_EQ(kmc_cache_free(a, p3), KMC_OK);
    /* detach lets go of what the process held alone */
    void *held = kmc_shared_alloc(b, 0, NULL);
    CHECK(held != NULL);
    CHECK_EQ(stats_of(a).active_objs, 1);
    CHECK_EQ(kmc_cache_destroy(b), KMC_OK);
    CHECK_EQ(stats_of(a).active_objs, 0);
    kmc_shared_info(a, &info);
    CHECK_EQ(info.procs, 1);
    CHECK_EQ(kmc_cache_validate(a, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(a), KMC_OK);
}

/* --- other processes ------------------------------------------------------------ */

/* Run @fn in a child process; its exit status. */
static int in_child(int (*fn)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn(arg));
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

typedef struct child_args_s {
    const char *name;
    uint64_t off;
    uint32_t gen;
    int n;
} child_args_t;

static int child_checks_alignment(void *arg)
{
    child_args_t *a = arg;
    kmc_cache_t *c = NULL;
    if (kmc_shared_attach(a->name, NULL, NULL, &c) != KMC_OK)
        return 2;
    void *q;
    if (kmc_shared_hold(c, a->off, a->gen, 0, &q, NULL, NULL) != KMC_OK)
        return 3;
    if ((uintptr_t)q % kmc_cache_align(c) || memcmp(q, "parent", 7) != 0)
        return 4;
    memcpy(q, "child", 6);
    for (int i = 0; i < a->n; i++) {
        void *p = kmc_shared_alloc(c, 0, NULL);
        if (!p || (uintptr_t)p % kmc_cache_align(c))
            return 5;
    }
    return kmc_cache_destroy(c) == KMC_OK ? 0 : 6; /* lets go of its own objects */
}

static void test_other_process(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 1000, 1024, 0, 16 * MiB);
    CHECK(c != NULL);
    uint32_t gen;
    uint8_t *p = kmc_shared_alloc(c, 0, &gen);
    memcpy(p, "parent", 7);
    child_args_t args = {name, kmc_shared_offset(c, p), gen, 50};
    CHECK_EQ(in_child(child_checks_alignment, &args), 0);
    CHECK(memcmp(p, "child", 6) == 0);
    kmc_stats_t s = stats_of(c);
    CHECK_EQ(s.active_objs, 1); /* the child's 50 went with it; ours stays */
    CHECK_EQ(kmc_cache_validate(c, NULL), KMC_OK);
    CHECK_EQ(kmc_shared_free(c, p, gen), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* A forked child uses the parent's attachment: it gets a slot of its own. */
static kmc_cache_t *forked_cache;

static int child_uses_inherited(void *arg)
{
    (void)arg;
    kmc_shared_info_t info;
    kmc_shared_info(forked_cache, &info);
    if (info.self != -1)
        return 2;
    for (int i = 0; i < 10; i++)
        if (!kmc_shared_alloc(forked_cache, 0, NULL))
            return 3;
    kmc_shared_info(forked_cache, &info);
    if (info.self == -1 || info.procs != 2)
        return 4;
    _exit(0); /* no detach: what it held is reclaimed */
}

static void test_fork_inherits(void)
{
    const char *name = fresh_name();
    forked_cache = make_shared(name, 64, 0, 0, 8 * MiB);
    CHECK(forked_cache != NULL);
    void *p = kmc_shared_alloc(forked_cache, 0, NULL);
    CHECK_EQ(in_child(child_uses_inherited, NULL), 0);
    CHECK_EQ(stats_of(forked_cache).active_objs, 11);
    CHECK_EQ(kmc_shared_reclaim(forked_cache, 0), 10);
    CHECK_EQ(stats_of(forked_cache).active_objs, 1);
    CHECK_EQ(kmc_shared_reclaim(forked_cache, 0), 0);
    CHECK_EQ(kmc_cache_validate(forked_cache, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_free(forked_cache, p), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(forked_cache), KMC_OK);
}

/* A slot naming a living pid started at another time is a dead process
 * whose pid was reused: reclaimed. One naming this very process is not. */
static void test_pid_reuse(void)
{
    const char *name = fresh_name();
    kmc_cache_t *a = make_shared(name, 64, 0, 0, 8 * MiB);
    kmc_cache_t *b = NULL;
    CHECK(a != NULL);
    CHECK_EQ(kmc_shared_attach(name, NULL, NULL, &b), KMC_OK);
    for (int i = 0; i < 5; i++)
        CHECK(kmc_shared_alloc(b, 0, NULL) != NULL);
    CHECK_EQ(kmc_shared_reclaim(a, 0), 0); /* b is this process: alive */
    CHECK_EQ(stats_of(a).active_objs, 5);
    /* b's slot now names a process that started long before any now */
    CHECK_EQ(kmc_shared_forge_slot(b, (int)getpid(), 1), KMC_OK);
    CHECK_EQ(kmc_shared_reclaim(a, 0), 5);
    CHECK_EQ(stats_of(a).active_objs, 0);
    kmc_shared_info_t info;
    kmc_shared_info(a, &info);
    CHECK_EQ(info.procs, 1);
    CHECK_EQ(kmc_cache_validate(a, NULL), KMC_OK);
    /* b lost its slot; it gets a new one at its next use */
    kmc_shared_info(b, &info);
    void *p = kmc_shared_alloc(b, 0, NULL);
    CHECK(p != NULL);
    CHECK_EQ(stats_of(a).active_objs, 1);
    CHECK_EQ(kmc_cache_destroy(b), KMC_OK);
    CHECK_EQ(stats_of(a).active_objs, 0);
    CHECK_EQ(kmc_cache_destroy(a), KMC_OK);
}

/* --- crashes ----------------------------------------------------------------------- */

/* A child's day: allocations, frees, pickles claimed and not, holds, drops,
 * a slab built now and then; forever, or until it dies. */
static int child_churns(void *arg)
{
    child_args_t *a = arg;
    kmc_cache_t *c = NULL;
    if (kmc_shared_attach(a->name, NULL, NULL, &c) != KMC_OK)
        return 2;
    enum { HELD = 64 };
    void *held[HELD] = {0};
    uint32_t gens[HELD] = {0};
    uint64_t seed = (uint64_t)getpid() * 2654435761u + 1;
    for (long step = 0; a->n < 0 || step < a->n; step++) {
        unsigned i = (unsigned)(xorshift(&seed) % HELD);
        unsigned what = (unsigned)(xorshift(&seed) % 8);
        if (!held[i]) {
            held[i] = kmc_shared_alloc(c, what & 1, &gens[i]);
            if (held[i])
                memset(held[i], 0x33, 16);
        } else if (what < 3) {
            (void)kmc_shared_free(c, held[i], gens[i]);
            held[i] = NULL;
        } else if (what == 3) {
            (void)kmc_shared_ticket(c, held[i], gens[i]);
            void *q;
            (void)kmc_shared_hold(c, kmc_shared_offset(c, held[i]), gens[i], 1, &q, NULL, NULL);
        } else if (what == 4) {
            (void)kmc_shared_drop(c, held[i], gens[i], NULL);
            held[i] = NULL;
        } else if (what == 5) {
            (void)kmc_shared_ticket(c, held[i], gens[i]); /* a pickle never loaded */
        } else if (what == 6 && (step % 97) == 0) {
            kmc_cache_shrink(c);
        }
    }
    return 0;
}

/* After children died: reclaim, then nothing to repair and the counts are
 * what the parent holds. */
static int check_after_deaths(kmc_cache_t *c, uint64_t parent_live, uint64_t pickled_before)
{
    (void)pickled_before;
    kmc_shared_reclaim(c, 0);
    size_t problems = 99;
    kmc_status st = kmc_cache_validate(c, &problems);
    if (st != KMC_OK) {
        fprintf(stderr, "  validate: %s (%zu problems)\n", kmc_last_report()->message, problems);
        return 0;
    }
    /* pickles never loaded keep their objects until reclaimed with pickled */
    kmc_shared_reclaim(c, 1);
    kmc_stats_t s = stats_of(c);
    if (s.active_objs != parent_live) {
        fprintf(stderr, "  %llu live, the parent holds %llu\n", (unsigned long long)s.active_objs,
                (unsigned long long)parent_live);
        return 0;
    }
    if (kmc_cache_validate(c, &problems) != KMC_OK || problems) {
        fprintf(stderr, "  validate after: %s\n", kmc_last_report()->message);
        return 0;
    }
    kmc_shared_info_t info;
    kmc_shared_info(c, &info);
    if (info.procs != 1 || info.pickled != 0) {
        fprintf(stderr, "  %llu processes, %llu pickles left\n", (unsigned long long)info.procs,
                (unsigned long long)info.pickled);
        return 0;
    }
    return 1;
}

static int child_crashes_at(void *arg)
{
    child_args_t *a = arg;
    alarm(20); /* a crash point never reached would hang the test */
    kmc_shared_crash_after(a->gen);
    return child_churns(arg);
}

/* A death at each of the first crash points of a child's run, in turn:
 * every step of the locked paths (taking and giving back slots, refills,
 * magazines, holds, tickets, slab builds and releases, registering). */
static void test_crash_at_every_point(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 256, 64, 0, 8 * MiB);
    CHECK(c != NULL);
    void *mine = kmc_shared_alloc(c, 0, NULL);
    uint64_t recoveries = 0, seed = 99;
    int killed = 0;
    for (uint32_t round = 1; round <= 400; round++) {
        /* every one of the first 200 points, then 200 anywhere in the run */
        uint32_t n = round <= 200 ? round : 200 + (uint32_t)(xorshift(&seed) % 20000);
        child_args_t args = {name, 0, n, -1}; /* it runs until it dies */
        int rc = in_child(child_crashes_at, &args);
        killed += rc == 128 + SIGKILL;
        CHECK_EQ(rc, 128 + SIGKILL);
        if (!check_after_deaths(c, 1, 0)) {
            fprintf(stderr, "  after a death at crash point %u\n", n);
            CHECK(0);
        }
        kmc_shared_info_t info;
        kmc_shared_info(c, &info);
        recoveries = info.recoveries;
    }
    CHECK_EQ(killed, 400);
    CHECK(recoveries > 0); /* some died holding the lock */
    CHECK_EQ(kmc_cache_free(c, mine), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* Children killed at random moments, several at once. */
static void test_random_kills(void)
{
    const char *name = fresh_name();
    kmc_cache_t *c = make_shared(name, 512, 0, 0, 16 * MiB);
    CHECK(c != NULL);
    void *mine[10];
    for (int i = 0; i < 10; i++)
        mine[i] = kmc_shared_alloc(c, 0, NULL);
    uint64_t seed = 12345;
    for (int round = 0; round < 100; round++) {
        pid_t kids[3];
        child_args_t args = {name, 0, 0, -1};
        fflush(NULL);
        for (int k = 0; k < 3; k++)
            if ((kids[k] = fork()) == 0)
                _exit(child_churns(&args));
        struct timespec ts = {0, (long)(xorshift(&seed) % 3000000)};
        nanosleep(&ts, NULL);
        for (int k = 0; k < 3; k++) {
            kill(kids[k], SIGKILL);
            waitpid(kids[k], NULL, 0);
        }
        if (!check_after_deaths(c, 10, 0)) {
            fprintf(stderr, "  after round %d\n", round);
            CHECK(0);
        }
    }
    for (int i = 0; i < 10; i++)
        CHECK_EQ(kmc_cache_free(c, mine[i]), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(c), KMC_OK);
}

/* --- threads ----------------------------------------------------------------------- */

static kmc_cache_t *threaded;

static void *thread_churn(void *arg)
{
    uint64_t seed = (uintptr_t)arg * 7919 + 1;
    void *held[32] = {0};
    uint32_t gens[32];
    for (int step = 0; step < 20000; step++) {
        unsigned i = (unsigned)(xorshift(&seed) % 32);
        if (held[i]) {
            TCHECK(*(uint64_t *)held[i] == (uintptr_t)arg);
            TCHECK(kmc_shared_free(threaded, held[i], gens[i]) == KMC_OK);
            held[i] = NULL;
        } else if ((held[i] = kmc_shared_alloc(threaded, 0, &gens[i]))) {
            *(uint64_t *)held[i] = (uintptr_t)arg;
        }
    }
    for (int i = 0; i < 32; i++)
        if (held[i])
            TCHECK(kmc_shared_free(threaded, held[i], gens[i]) == KMC_OK);
    return NULL;
}

static void test_threads(void)
{
    const char *name = fresh_name();
    threaded = make_shared(name, 64, 0, 0, 8 * MiB);
    CHECK(threaded != NULL);
    atomic_store(&thread_failures, 0);
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, thread_churn, (void *)(i + 1)) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK_EQ(stats_of(threaded).active_objs, 0);
    CHECK_EQ(kmc_cache_validate(threaded, NULL), KMC_OK);
    CHECK_EQ(kmc_cache_destroy(threaded), KMC_OK);
}

int main(void)
{
    kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 0);
    RUN(test_create_rejects_bad_arguments);
    RUN(test_create_attach_unlink);
    RUN(test_two_mappings_one_object);
    RUN(test_alloc_free_and_stats);
    RUN(test_bulk);
    RUN(test_full_region);
    RUN(test_validate_repairs_bitmaps);
    RUN(test_holders);
    RUN(test_other_process);
    RUN(test_fork_inherits);
    RUN(test_pid_reuse);
    RUN(test_threads);
    RUN(test_crash_at_every_point);
    RUN(test_random_kills);
    return TESTS_DONE();
}
