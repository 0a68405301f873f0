/*
 * report.c - the calling thread's last error: what kmc_last_report() shows.
 *
 * Every failing engine call leaves one report, in SLUB's words where they
 * fit; calls that succeed leave the previous one alone unless they clear it.
 * The report is thread-local, so threads never see each other's errors.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local kmc_report_t last_report;
/* Set when a call cleared the report: one byte in the static TLS block
 * (initial-exec), so that clearing, which every kmalloc and kfree does, is
 * one store; the report itself, 400 bytes, stays in dynamic TLS, reached
 * through __tls_get_addr in a shared library, and only when it is read or
 * written. */
static __thread uint8_t cleared __attribute__((tls_model("initial-exec")));

static kmc_report_t *current(void)
{
    if (cleared) {
        last_report.status = KMC_OK;
        cleared = 0;
    }
    return &last_report;
}

const kmc_report_t *kmc_last_report(void) { return current(); }

void kmc__report_clear(void) { cleared = 1; }

kmc_report_t *kmc__report_slot(void) { return current(); }

const char *kmc_status_name(kmc_status status)
{
    static const char *const names[] = {
        [KMC_OK] = "ok",
        [KMC_ENOMEM] = "out of memory",
        [KMC_EINVAL] = "invalid argument",
        [KMC_ECTOR] = "constructor failed",
        [KMC_EDOUBLE_FREE] = "double free",
        [KMC_EINVALID_FREE] = "invalid free",
        [KMC_EBUSY] = "cache busy",
        [KMC_EREDZONE] = "red zone overwritten",
        [KMC_EPOISON] = "poison overwritten",
        [KMC_ECORRUPT] = "metadata corrupted",
        [KMC_EEXIST] = "shared cache exists",
        [KMC_ENOENT] = "no such shared cache",
        [KMC_ESTALE] = "stale object reference",
        [KMC_EOS] = "OS error",
        [KMC_ELIMIT] = "memory limit",
    };
    if ((unsigned)status < sizeof(names) / sizeof(names[0]) && names[status])
        return names[status];
    return "unknown status";
}

static void report_start(kmc_status status, const kmc_cache_t *c, const void *obj)
{
    cleared = 0;
    memset(&last_report, 0, sizeof(last_report));
    last_report.status = status;
    last_report.found = last_report.expected = -1;
    if (c) {
        memcpy(last_report.cache, c->name, sizeof(last_report.cache));
        last_report.object_size = c->size;
    }
    last_report.object = (uintptr_t)obj;
}

kmc_status kmc__report(kmc_status status, const kmc_cache_t *c, const void *obj, const char *fmt,
                       ...)
{
    report_start(status, c, obj);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_report.message, sizeof(last_report.message), fmt, ap);
    va_end(ap);
    return status;
}

/* Report bytes [offset, offset+length) of the object at @obj (offset may be
 * negative: its left red zone) that should all be @expected, with a dump of
 * the surrounding bytes, clipped to the slab. */
kmc_status kmc__report_bytes(kmc_status status, const kmc_cache_t *c, const uint8_t *obj,
                             ptrdiff_t offset, size_t length, int expected, const char *what)
{
    report_start(status, c, obj);
    last_report.offset = offset;
    last_report.length = length;
    last_report.found = obj[offset];
    last_report.expected = expected;
    uintptr_t slab = (uintptr_t)obj & ~(uintptr_t)(c->slab_size - 1);
    uintptr_t bad = (uintptr_t)obj + (uintptr_t)offset;
    uintptr_t start = (bad & ~(uintptr_t)15) - 16;
    if (start < slab || start > bad)
        start = slab;
    uintptr_t end = start + sizeof(last_report.dump);
    if (end > slab + c->slab_size)
        end = slab + c->slab_size;
    last_report.dump_start = start;
    last_report.dump_len = end - start;
    memcpy(last_report.dump, (const void *)start, last_report.dump_len);
    snprintf(last_report.message, sizeof(last_report.message),
             "%s in %s: object 0x%llx, bytes %td-%td. First byte 0x%02x instead of 0x%02x", what,
             c->name, (unsigned long long)(uintptr_t)obj, offset, offset + (ptrdiff_t)length - 1,
             last_report.found, expected);
    return status;
}
