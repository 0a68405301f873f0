/*
 * bench_engine.c - the engine from C, side by side with glibc, mimalloc and
 * jemalloc in one process. Built and run by bench_engine.py, which reads the
 * JSON lines this prints.
 *
 * Each allocator is asked for 64-byte aligned objects of one size:
 *   kmemcache   kmc_cache_alloc / kmc_cache_free on a cache of that size
 *   glibc       aligned_alloc(64, n) / free
 *   mimalloc    mi_aligned_alloc(64, n) / mi_free      (dlopen'ed)
 *   jemalloc    aligned_alloc(64, n) / free            (dlopen'ed)
 * mimalloc and jemalloc are loaded with RTLD_LOCAL | RTLD_DEEPBIND, so that
 * neither replaces the process's malloc (glibc's, which the engine uses for
 * its few descriptors); jemalloc needs more static TLS than glibc leaves
 * for dlopen, which bench_engine.py gives it (glibc.rtld.optional_static_tls).
 *
 * Patterns, each timed by the wall clock over enough operations to last
 * about 20 ms, allocators taking turns, repeated; the driver takes medians:
 *   pair       alloc then free, again and again
 *   batch K    K allocs then K frees in order (K = 1, 10, 100, 1000)
 *   shuffled K the same, frees in a random order
 *   pool N     N objects live; then again and again a random one of them
 *              is freed and a new one takes its place (the steady state of
 *              a pool of tasks: N = 4,096 and 100,000)
 *   remote     a producer thread allocates, a consumer thread frees (a
 *              single-producer single-consumer ring between them)
 *   threads T  T threads each doing pairs on the one allocator (one cache
 *              shared by all for kmemcache); total pairs per second
 *   pair in a group   kmemcache only: pairs on a cache of its own inside a
 *              memory group with a limit (the other patterns' cache never
 *              has an object charged)
 *
 * Usage: bench_engine SIZE REPEATS QUICK(0|1)
 *        bench_engine SIZE pairs REPEATS QUICK   (kmemcache's pair only: for
 *        the driver's alternating runs of builds with and without groups)
 *        bench_engine SIZE count pair|batch|pool|group N   (kmemcache only,
 *        no output: for instruction counts under callgrind; pool keeps 4,096
 *        objects live; group is pair in a group)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kmc.h"

#define ALIGN     64
#define MAX_BATCH 1000
#define MAX_POOL  100000

static size_t size;
static kmc_cache_t *cache, *group_cache;
static kmc_group_t *group;
static void *(*mi_alloc)(size_t, size_t);
static void (*mi_release)(void *);
static void *(*je_alloc)(size_t, size_t);
static void (*je_release)(void *);

/* One allocator's calls, inlined into each pattern's loop below so that no
 * allocator pays for an indirect call the others do not. */
#define ALLOC_kmemcache() kmc_cache_alloc(cache, 0)
#define FREE_kmemcache(p) kmc_cache_free(cache, (p))
#define ALLOC_glibc()     aligned_alloc(ALIGN, size)
#define FREE_glibc(p)     free(p)
#define ALLOC_mimalloc()  mi_alloc(ALIGN, size)
#define FREE_mimalloc(p)  mi_release(p)
#define ALLOC_jemalloc()  je_alloc(ALIGN, size)
#define FREE_jemalloc(p)  je_release(p)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned perm[MAX_BATCH]; /* a shuffled order of 0..K-1, per K */

static void shuffle(unsigned k, uint64_t seed)
{
    for (unsigned i = 0; i < k; i++)
        perm[i] = i;
    for (unsigned i = k; i > 1; i--) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        unsigned j = (unsigned)(seed % i), t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

static void *volatile sink;
static void *pool[MAX_POOL];

/* The next pseudo-random number (xorshift64): cheap beside any allocator. */
static inline uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return *state = x;
}

/* --- the patterns, once per allocator ---------------------------------------------- */

#define PATTERNS(A)                                                         \
    static double pair_##A(long n)                                          \
    {                                                                       \
        double t0 = now_s();                                                \
        for (long i = 0; i < n; i++) {                                      \
            void *p = ALLOC_##A();                                          \
            sink = p;                                                       \
            FREE_##A(p);                                                    \
        }                                                                   \
        return now_s() - t0;                                                \
    }                                                                       \
    static double batch_##A(long rounds, unsigned k, int shuffled)          \
    {                                                                       \
        static void *objs[MAX_BATCH];                                       \
        double t0 = now_s();                                                \
        for (long r = 0; r < rounds; r++) {                                 \
            for (unsigned i = 0; i < k; i++)                                \
                objs[i] = ALLOC_##A();                                      \
            if (shuffled)                                                   \
                for (unsigned i = 0; i < k; i++)                            \
                    FREE_##A(objs[perm[i]]);                                \
            else                                                            \
                for (unsigned i = 0; i < k; i++)                            \
                    FREE_##A(objs[i]);                                      \
        }                                                                   \
        return now_s() - t0;                                                \
    }                                                                       \
    /* the N objects are made and freed outside the timed loop */           \
    static double pool_##A(long n, unsigned live)                           \
    {                                                                       \
        uint64_t seed = 0x2545f4914f6cdd1dull;                              \
        for (unsigned i = 0; i < live; i++)                                 \
            pool[i] = ALLOC_##A();                                          \
        double t0 = now_s();                                                \
        for (long i = 0; i < n; i++) {                                      \
            unsigned j = (unsigned)(next_random(&seed) % live);             \
            FREE_##A(pool[j]);                                              \
            pool[j] = ALLOC_##A();                                          \
        }                                                                   \
        double t = now_s() - t0;                                            \
        for (unsigned i = 0; i < live; i++)                                 \
            FREE_##A(pool[i]);                                              \
        return t;                                                           \
    }                                                                       \
    static void *pairs_thread_##A(void *arg)                                \
    {                                                                       \
        long n = *(long *)arg;                                              \
        void *volatile own_sink; /* not the shared one: no false sharing */ \
        for (long i = 0; i < n; i++) {                                      \
            void *p = ALLOC_##A();                                          \
            own_sink = p;                                                   \
            FREE_##A(p);                                                    \
        }                                                                   \
        (void)own_sink;                                                     \
        return NULL;                                                        \
    }                                                                       \
    static void *consume_##A(void *arg);                                    \
    static double remote_##A(long n);

PATTERNS(kmemcache)
PATTERNS(glibc)
PATTERNS(mimalloc)
PATTERNS(jemalloc)

/* --- producer and consumer ----------------------------------------------------------- */

#define RING 1024
static _Atomic(void *) ring[RING];
static long ring_n;

#define REMOTE(A)                                                                     \
    static void *consume_##A(void *arg)                                               \
    {                                                                                 \
        (void)arg;                                                                    \
        for (long i = 0; i < ring_n; i++) {                                           \
            _Atomic(void *) *slot = &ring[i % RING];                                  \
            void *p;                                                                  \
            while (!(p = atomic_exchange_explicit(slot, NULL, memory_order_acquire))) \
                ;                                                                     \
            FREE_##A(p);                                                              \
        }                                                                             \
        return NULL;                                                                  \
    }                                                                                 \
    static double remote_##A(long n)                                                  \
    {                                                                                 \
        pthread_t consumer;                                                           \
        ring_n = n;                                                                   \
        double t0 = now_s();                                                          \
        pthread_create(&consumer, NULL, consume_##A, NULL);                           \
        for (long i = 0; i < n; i++) {                                                \
            _Atomic(void *) *slot = &ring[i % RING];                                  \
            while (atomic_load_explicit(slot, memory_order_relaxed))                  \
                ;                                                                     \
            atomic_store_explicit(slot, ALLOC_##A(), memory_order_release);           \
        }                                                                             \
        pthread_join(consumer, NULL);                                                 \
        return now_s() - t0;                                                          \
    }

REMOTE(kmemcache)
REMOTE(glibc)
REMOTE(mimalloc)
REMOTE(jemalloc)

/* --- the table of allocators --------------------------------------------------------- */

typedef struct allocator_s {
    const char *name;
    int available;
    double (*pair)(long);
    double (*batch)(long, unsigned, int);
    double (*pool)(long, unsigned);
    double (*remote)(long);
    void *(*pairs_thread)(void *);
} allocator_t;

#define ENTRY(A)                                                           \
    {                                                                      \
#A, 1, pair_##A, batch_##A, pool_##A, remote_##A, pairs_thread_##A \
    }
static allocator_t allocators[] = {ENTRY(kmemcache), ENTRY(glibc), ENTRY(mimalloc),
                                   ENTRY(jemalloc)};
#define N_ALLOCATORS (sizeof(allocators) / sizeof(allocators[0]))

static void load_peers(void)
{
    void *m = dlopen("libmimalloc.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (m) {
        mi_alloc = (void *(*)(size_t, size_t))dlsym(m, "mi_aligned_alloc");
        mi_release = (void (*)(void *))dlsym(m, "mi_free");
    }
    allocators[2].available = mi_alloc && mi_release;
    if (!allocators[2].available)
        printf("{\"note\": \"mimalloc: %s\"}\n", m ? "symbols missing" : dlerror());
    void *j = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (j) {
        je_alloc = (void *(*)(size_t, size_t))dlsym(j, "aligned_alloc");
        je_release = (void (*)(void *))dlsym(j, "free");
    }
    allocators[3].available = je_alloc && je_release;
    if (!allocators[3].available)
        printf("{\"note\": \"jemalloc: %s\"}\n", j ? "symbols missing" : dlerror());
}

/* Pairs inside a memory group with a limit, on a cache of their own. */
static double pair_in_group(long n)
{
    kmc_group_enter(group);
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        void *p = kmc_cache_alloc(group_cache, 0);
        sink = p;
        kmc_cache_free(group_cache, p);
    }
    double t = now_s() - t0;
    kmc_group_enter(NULL);
    return t;
}

/* Threads doing pairs at once; returns pairs per second, all together. */
static double threads_rate(allocator_t *a, int nthreads, long per_thread)
{
    pthread_t t[8];
    double t0 = now_s();
    for (int i = 0; i < nthreads; i++)
        pthread_create(&t[i], NULL, a->pairs_thread, &per_thread);
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    return (double)per_thread * nthreads / (now_s() - t0);
}

static void emit(const char *pattern, const allocator_t *a, int repeat, double ns)
{
    printf("{\"pattern\": \"%s\", \"allocator\": \"%s\", \"size\": %zu, \"repeat\": %d, "
           "\"value\": %.4f}\n",
           pattern, a->name, size, repeat, ns);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 4 && !(argc == 5 && (!strcmp(argv[2], "count") || !strcmp(argv[2], "pairs")))) {
        fprintf(stderr,
                "usage: %s SIZE REPEATS QUICK | %s SIZE count pair|batch|pool|group N | "
                "%s SIZE pairs REPEATS QUICK\n",
                argv[0], argv[0], argv[0]);
        return 2;
    }
    size = (size_t)strtoul(argv[1], NULL, 10);
    if (kmc_cache_create("bench", size, ALIGN, 0, NULL, NULL, &cache) != KMC_OK ||
        kmc_cache_create("bench-group", size, ALIGN, 0, NULL, NULL, &group_cache) != KMC_OK ||
        kmc_group_create("bench", NULL, (uint64_t)1 << 30, 0, &group) != KMC_OK) {
        fprintf(stderr, "bench_engine: %s\n", kmc_last_report()->message);
        return 1;
    }
    if (argc == 5 && !strcmp(argv[2], "pairs")) {
        long pairs = atoi(argv[4]) ? 100000 : 2000000;
        for (int rep = -1, repeats = atoi(argv[3]); rep < repeats; rep++) {
            double s = pair_kmemcache(pairs);
            if (rep >= 0) /* repeat -1 warms up, unreported */
                emit("pair", &allocators[0], rep, s * 1e9 / (double)pairs);
        }
        return 0;
    }
    if (argc == 5) {
        long n = atol(argv[4]);
        if (!strcmp(argv[3], "pair"))
            pair_kmemcache(n);
        else if (!strcmp(argv[3], "pool"))
            pool_kmemcache(n, 4096);
        else if (!strcmp(argv[3], "group"))
            pair_in_group(n);
        else
            batch_kmemcache(n / MAX_BATCH, MAX_BATCH, 0);
        return 0;
    }
    int repeats = atoi(argv[2]), quick = atoi(argv[3]);
    load_peers();
    long scale = quick ? 20 : 1;
    long pairs = 2000000 / scale, objects = 1000000 / scale, per_thread = 2000000 / scale;
    static const unsigned ks[] = {1, 10, 100, 1000};
    char name[32];
    for (int rep = -1; rep < repeats; rep++) { /* repeat -1 warms up, unreported */
        for (size_t ai = 0; ai < N_ALLOCATORS; ai++) {
            /* allocators take turns, starting one further each repeat */
            allocator_t *a = &allocators[(ai + (size_t)(rep + 1)) % N_ALLOCATORS];
            if (!a->available)
                continue;
            double s = a->pair(pairs);
            if (rep >= 0)
                emit("pair", a, rep, s * 1e9 / (double)pairs);
            if (a->pair == pair_kmemcache) {
                s = pair_in_group(pairs);
                if (rep >= 0)
                    emit("pair in a group", a, rep, s * 1e9 / (double)pairs);
            }
            for (unsigned k = 0; k < 4; k++)
                for (int shuffled = 0; shuffled < 2; shuffled++) {
                    long rounds = pairs / ks[k];
                    shuffle(ks[k], 0x9e3779b97f4a7c15ull + (uint64_t)rep);
                    s = a->batch(rounds, ks[k], shuffled);
                    snprintf(name, sizeof(name), "%s %u", shuffled ? "shuffled" : "batch", ks[k]);
                    if (rep >= 0)
                        emit(name, a, rep, s * 1e9 / (double)(rounds * ks[k]));
                }
            static const unsigned lives[] = {4096, MAX_POOL};
            for (unsigned l = 0; l < 2; l++) {
                s = a->pool(pairs, lives[l]);
                snprintf(name, sizeof(name), "pool %u", lives[l]);
                if (rep >= 0)
                    emit(name, a, rep, s * 1e9 / (double)pairs);
            }
            s = a->remote(objects);
            if (rep >= 0)
                emit("remote", a, rep, s * 1e9 / (double)objects);
            for (int n = 1; n <= 2; n++) {
                double rate = threads_rate(a, n, per_thread);
                snprintf(name, sizeof(name), "threads %d", n);
                if (rep >= 0)
                    emit(name, a, rep, rate / 1e6);
            }
        }
    }
    kmc_cache_shrink(cache);
    return 0;
}
