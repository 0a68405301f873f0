/*
 * thread_helpers.h - what the tests of the per-thread layer share (test_heaps
 * and test_pool): a cache's counters, a plain cache, a function run in a
 * thread of its own. Include after kmc.h and test_helpers.h.
 */
#ifndef THREAD_HELPERS_H
#define THREAD_HELPERS_H

#include <pthread.h>

static kmc_stats_t stats_of(kmc_cache_t *c)
{
    kmc_stats_t s;
    kmc_cache_stats(c, &s);
    return s;
}

/* A cache with no flags and no constructor, or NULL. */
static kmc_cache_t *make(const char *name, size_t size, size_t align)
{
    kmc_cache_t *c = NULL;
    if (kmc_cache_create(name, size, align, 0, NULL, NULL, &c) != KMC_OK)
        return NULL;
    return c;
}

/* Run @fn(@arg) in a new thread and wait for it. */
static void in_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg) == 0)
        pthread_join(t, NULL);
}

#endif /* THREAD_HELPERS_H */
