/*
 * test_fork.c - fork() in a process whose first use of the engine is the
 * kmalloc family's large allocations, through kmc.h only.
 *
 * Its own program: the engine registers its fork handlers once per process,
 * so the test must start before any other engine call has done it. Threads
 * allocate, free and shrink large runs (each takes the large-allocation
 * lock) while the main thread forks again and again; each child makes a
 * large allocation at once and must finish within seconds.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kmc.h"
#include "test_helpers.h"

#define CHURNERS 2
#define SECONDS  10

static atomic_int churn_stop;

static void *churn_large(void *arg)
{
    size_t step = (size_t)(uintptr_t)arg * 4096 * 37;
    for (unsigned long i = 0; !atomic_load(&churn_stop); i++) {
        void *p = kmc_kmalloc(((size_t)1 << 20) + (i % 5) * step, 0);
        TCHECK(p != NULL);
        if (p)
            TCHECK(kmc_kfree(p) == KMC_OK);
        if (i % 3 == 0)
            kmc_kmalloc_shrink();
    }
    return NULL;
}

static void test_fork_while_threads_churn_large_allocations_only(void)
{
    pthread_t t[CHURNERS];
    for (uintptr_t i = 0; i < CHURNERS; i++)
        CHECK(pthread_create(&t[i], NULL, churn_large, (void *)(i + 1)) == 0);
    int forks = 0, hung = 0;
    for (time_t end = time(NULL) + SECONDS; time(NULL) < end; forks++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(5); /* blocked on a lock no thread of the child will release */
            /* freed runs go back at once: no purge thread in the child, which
             * ThreadSanitizer cannot follow after a fork with threads */
            kmc_option_set(KMC_OPTION_PURGE_DELAY_MS, 0);
            void *p = kmc_kmalloc((size_t)3 << 20, 0);
            _exit(p && kmc_kfree(p) == KMC_OK ? 0 : 1);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            if (hung++ < 3)
                fprintf(stderr, "  child %d: status 0x%x\n", forks, status);
        }
    }
    atomic_store(&churn_stop, 1);
    for (int i = 0; i < CHURNERS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(hung, 0);
    CHECK_EQ(atomic_load(&thread_failures), 0);
    CHECK(forks > 10);
    kmc_kmalloc_large_stats_t s;
    kmc_kmalloc_large_stats(&s);
    CHECK_EQ(s.objects, 0);
}

int main(void)
{
    RUN(test_fork_while_threads_churn_large_allocations_only);
    return TESTS_DONE();
}
