/*
 * test_helpers.h - a minimal test runner for the engine's C tests.
 *
 * A test is a `static void test_x(void)`; RUN(test_x) calls it and counts it
 * as failed if any CHECK in it failed. A failed CHECK prints where and what,
 * then returns from the test (cleanup after it is skipped: the process is a
 * test run). In threads, use TCHECK, which only records the failure; the test
 * then checks thread_failures after joining. A test that runs longer than
 * TEST_TIMEOUT_S seconds ends the program with its name and a non-zero
 * status. The runner's last line is "N passed, N failed", which CI reads.
 */
#ifndef TEST_HELPERS_H
#define TEST_HELPERS_H

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int tests_passed, tests_failed, test_checks_failed;
static atomic_int thread_failures;

/* A test that hangs fails instead: each test has this long (sanitizers
 * included), then the program says which one and exits non-zero. */
#ifndef TEST_TIMEOUT_S
#define TEST_TIMEOUT_S 300
#endif
static const char *test_running;

static void test_timed_out(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL (timed out) ";
    if (write(2, msg, sizeof(msg) - 1) < 0 || write(2, test_running, strlen(test_running)) < 0 ||
        write(2, "\n", 1) < 0)
        _exit(3);
    _exit(3);
}

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            test_checks_failed++;                                                      \
            return;                                                                    \
        }                                                                              \
    } while (0)

#define CHECK_EQ(a, b)                                                                    \
    do {                                                                                  \
        long long a_ = (long long)(a), b_ = (long long)(b);                               \
        if (a_ != b_) {                                                                   \
            fprintf(stderr, "  %s:%d: CHECK_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, \
                    __LINE__, #a, #b, a_, b_);                                            \
            test_checks_failed++;                                                         \
            return;                                                                       \
        }                                                                                 \
    } while (0)

/* What every test file may run after each test, even a failed one (a CHECK
 * returns early): define TEST_AFTER_EACH() before including this header. */
#ifndef TEST_AFTER_EACH
#define TEST_AFTER_EACH() ((void)0)
#endif

#define CHECK_STR_HAS(haystack, needle) CHECK(strstr((haystack), (needle)) != NULL)

/* In a thread: record the failure (the first few are printed) and go on. */
#define TCHECK(cond)                                                                    \
    do {                                                                                \
        if (!(cond) && atomic_fetch_add(&thread_failures, 1) < 5)                       \
            fprintf(stderr, "  %s:%d: TCHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    } while (0)

#define RUN(test)                                            \
    do {                                                     \
        int before_ = test_checks_failed;                    \
        test_running = #test + 5;                            \
        signal(SIGALRM, test_timed_out);                     \
        alarm(TEST_TIMEOUT_S);                               \
        test();                                              \
        alarm(0);                                            \
        TEST_AFTER_EACH();                                   \
        int ok_ = test_checks_failed == before_;             \
        printf("%s %s\n", ok_ ? "ok  " : "FAIL", #test + 5); \
        fflush(stdout);                                      \
        if (ok_)                                             \
            tests_passed++;                                  \
        else                                                 \
            tests_failed++;                                  \
    } while (0)

#define TESTS_DONE() \
    (printf("%d passed, %d failed\n", tests_passed, tests_failed), tests_failed ? 1 : 0)

#endif /* TEST_HELPERS_H */
