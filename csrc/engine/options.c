/*
 * options.c - the engine's options, one table, read lazily from the
 * environment (KMEMCACHE_<NAME>, as mimalloc reads MIMALLOC_<NAME>). A bad
 * value is reported once on stderr and the default kept.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

typedef struct option_s {
    const char *name;   /* lower case; the variable is KMEMCACHE_ + upper case */
    _Atomic long value; /* the default until read */
    long min, max;
    _Atomic int read; /* 0: not yet, 1: read or set */
} option_t;

static option_t options[KMC_OPTIONS] = {
    [KMC_OPTION_PURGE_DELAY_MS] = {"purge_delay_ms", 500, 0, 60000, 0},
    [KMC_OPTION_THREAD_CACHES] = {"thread_caches", 1, 0, 1, 0},
    [KMC_OPTION_MAGAZINE] = {"magazine", 64, 0, 64, 0},
};
/* (numbers, not names, in the table: the docs' table of variables reads them) */
_Static_assert(KMC_MAG_SIZE == 64, "the magazine option's default and most are KMC_MAG_SIZE");

static void read_env(option_t *o)
{
    char var[64] = "KMEMCACHE_";
    size_t n = 10;
    for (const char *p = o->name; *p && n + 1 < sizeof(var); p++)
        var[n++] = (char)toupper((unsigned char)*p);
    var[n] = 0;
    const char *text = getenv(var);
    if (!text || !*text)
        return;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < o->min || v > o->max) {
        fprintf(stderr, "kmemcache: %s=%s is not a whole number from %ld to %ld; using %ld\n", var,
                text, o->min, o->max, KMC_LOAD(&o->value));
        return;
    }
    KMC_STORE(&o->value, v);
}

static pthread_mutex_t options_lock = PTHREAD_MUTEX_INITIALIZER; /* the first reads */

long kmc__option(kmc_option option)
{
    option_t *o = &options[option];
    if (!atomic_load_explicit(&o->read, memory_order_acquire)) {
        pthread_mutex_lock(&options_lock);
        if (!atomic_load(&o->read)) {
            read_env(o);
            atomic_store_explicit(&o->read, 1, memory_order_release);
        }
        pthread_mutex_unlock(&options_lock);
    }
    return KMC_LOAD(&o->value);
}

void kmc__options_lock(bool on)
{
    if (on)
        pthread_mutex_lock(&options_lock);
    else
        pthread_mutex_unlock(&options_lock);
}

long kmc_option_get(kmc_option option)
{
    if ((unsigned)option >= KMC_OPTIONS)
        return -1;
    return kmc__option(option);
}

kmc_status kmc_option_set(kmc_option option, long value)
{
    kmc__report_clear();
    if ((unsigned)option >= KMC_OPTIONS)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no option %d", (int)option);
    option_t *o = &options[option];
    if (value < o->min || value > o->max)
        return kmc__report(KMC_EINVAL, NULL, NULL, "%s must be from %ld to %ld, not %ld", o->name,
                           o->min, o->max, value);
    (void)kmc__option(option); /* the environment is read once, and no later */
    KMC_STORE(&o->value, value);
    return KMC_OK;
}

const char *kmc_option_name(kmc_option option)
{
    return (unsigned)option < KMC_OPTIONS ? options[option].name : NULL;
}
