/*
 * purge.c - memory back to the OS a while after it was last used.
 *
 * Empty slabs wait in their depot, and freed large runs in kmalloc's kept
 * list, for the purge delay (KMEMCACHE_PURGE_DELAY_MS): churn that empties
 * and refills a slab costs no system call. One background thread, started
 * the first time there is something to release, wakes once per delay while
 * there is, releases what has waited long enough, and takes back from the
 * threads' heaps the empty slabs of heaps that did nothing for a whole
 * delay. When nothing is left it ends, and the next arm starts another:
 * an idle program has no thread of ours (a fork then warns of no other
 * thread, and a process whose own threads have all ended is not kept
 * alive by it). Memory is thus back within about two delays of its last
 * use. The thread is named "kmemcache-purge" (ps, top -H, py-spy) and runs
 * with every signal blocked, so signal handlers stay on the program's own
 * threads.
 */
#include <signal.h>
#include <time.h>

#include "internal.h"

static pthread_mutex_t purge_lock = PTHREAD_MUTEX_INITIALIZER;
static bool started;      /* purge_lock */
static _Atomic int armed; /* there is something to look at */

uint32_t kmc__purge_delay_ms(void) { return (uint32_t)kmc__option(KMC_OPTION_PURGE_DELAY_MS); }

/* One look at every cache; true when something is still waiting. */
static bool purge_pass(void)
{
    uint32_t now = kmc__now_ms();
    bool again = false;
    pthread_mutex_lock(&kmc__caches_lock);
    for (kmc_cache_t *c = kmc__caches_first; c; c = c->next_cache) {
        kmc__cache_lock(c);
        if (c->heaps_on && kmc__heaps_take_back(c, KMC_TAKE_IDLE))
            again = true;
        kmc__depot_release_expired(c, now, false);
        if (kmc__depot_has_empty(c))
            again = true;
        kmc__cache_unlock(c);
    }
    pthread_mutex_unlock(&kmc__caches_lock);
    kmc__kmalloc_purge(now, false, &again);
    return again;
}

static void *purge_thread(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "kmemcache-purge");
    for (;;) {
        pthread_mutex_lock(&purge_lock);
        if (!atomic_load(&armed)) {
            /* nothing left: end; an arm from now on (it sets armed, then
             * looks at started under the lock) starts another thread */
            started = false;
            pthread_mutex_unlock(&purge_lock);
            return NULL;
        }
        pthread_mutex_unlock(&purge_lock);
        uint32_t delay = kmc__purge_delay_ms();
        struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (long)(delay % 1000) * 1000000};
        while (nanosleep(&ts, &ts) != 0)
            ;
        atomic_store(&armed, 0); /* an arm from now on is seen next round */
        if (purge_pass())
            atomic_store(&armed, 1);
    }
    return NULL;
}

/* Set while a forked child's handler gives the other threads' heaps back:
 * no thread is started there (ThreadSanitizer cannot follow one, and POSIX
 * allows little in a child before it returns from fork). The empty slabs
 * wait for the child's next arming, or its shrink(). */
static _Atomic bool arm_deferred;

void kmc__purge_defer(bool on) { atomic_store_explicit(&arm_deferred, on, memory_order_relaxed); }

void kmc__purge_arm(void)
{
    if (atomic_load_explicit(&armed, memory_order_relaxed) ||
        atomic_load_explicit(&arm_deferred, memory_order_relaxed) || kmc__purge_delay_ms() == 0 ||
        atomic_exchange(&armed, 1))
        return;
    pthread_mutex_lock(&purge_lock);
    if (!started) {
        pthread_attr_t attr;
        sigset_t all, old;
        pthread_t t;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, (size_t)64 << 10);
        started = pthread_create(&t, &attr, purge_thread, NULL) == 0;
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        /* without a thread, memory still goes back at shrink(); a later
         * arm tries again */
        if (!started)
            atomic_store(&armed, 0);
    }
    pthread_mutex_unlock(&purge_lock);
}

void kmc__purge_lock_all(void) { pthread_mutex_lock(&purge_lock); }

void kmc__purge_unlock_all(bool child)
{
    if (child) {
        started = false; /* the thread did not come along */
        atomic_store(&armed, 0);
    }
    pthread_mutex_unlock(&purge_lock);
}
