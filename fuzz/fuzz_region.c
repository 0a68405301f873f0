/*
 * fuzz_region.c - libFuzzer harness for a shared cache's region as
 * untrusted input, through kmc.h only.
 *
 * A region is made once (a few live objects, a magazine with free objects
 * in it, a pickled reference in flight) and its file copied as a template.
 * Each input is a list of patches (a 4-byte offset into the region's
 * metadata and a 4-byte value); the harness writes the template with the
 * patches into the region's file, then peeks at it, attaches it, allocates
 * and frees (the fast paths, with this process's magazine), applies the
 * patches marked late to the live region (as another process of the user
 * would write while this one runs), allocates and frees again, validates,
 * reclaims, and detaches. Whatever the patches
 * say, each call must end with a status: a crash, a sanitizer report or an
 * abort() is a finding, and so is a hang.
 *
 * The locks are left as the template has them (the region's robust mutex,
 * each process slot's lock word), and so is the magic: a lock that another
 * process of the user holds for good blocks the others, as with any lock
 * in shared memory, and an unfinished region makes attach wait for its
 * creator. Nothing else is spared.
 *
 *   make -C fuzz region && fuzz/build/fuzz_region fuzz/corpus_region -max_total_time=60
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kmc.h"

#define OBJ_SIZE 64

typedef struct template_s {
    char name[48];
    char file[160];
    uint8_t *bytes; /* the region's file as it was made */
    size_t len;     /* its length */
    size_t meta;    /* the metadata's length: what patches land in */
    kmc_shared_locks_t locks;
} template_t;

static template_t templates[2]; /* plain; red zones and poison (no magazines) */

static void remove_regions(void)
{
    for (int i = 0; i < 2; i++)
        if (templates[i].name[0])
            (void)kmc_shared_unlink(templates[i].name);
}

static void make_template(template_t *t, int i, unsigned flags)
{
    snprintf(t->name, sizeof(t->name), "fuzzregion-%d-%d", (int)getpid(), i);
    kmc_cache_t *c;
    if (kmc_shared_create(t->name, OBJ_SIZE, 64, flags, 2u << 20, 4, NULL, NULL, &c) != KMC_OK)
        abort();
    void *objs[12];
    uint32_t gens[12];
    for (int k = 0; k < 12; k++)
        if (!(objs[k] = kmc_shared_alloc(c, 1, &gens[k])))
            abort();
    for (int k = 0; k < 4; k++) /* into the magazine (or the depot) */
        if (kmc_shared_free(c, objs[k], gens[k]) != KMC_OK)
            abort();
    if (kmc_shared_ticket(c, objs[4], gens[4]) != KMC_OK) /* a pickle in flight */
        abort();
    kmc_shared_info_t info;
    kmc_shared_info(c, &info);
    kmc_shared_locks(c, &t->locks);
    snprintf(t->file, sizeof(t->file), "/dev/shm%s", info.region);
    t->len = info.region_bytes;
    t->meta = info.meta_bytes;
    t->bytes = malloc(t->len);
    int fd = open(t->file, O_RDONLY | O_CLOEXEC);
    if (!t->bytes || fd < 0 || pread(fd, t->bytes, t->len, 0) != (ssize_t)t->len)
        abort();
    close(fd);
    /* the live objects stay in the template as this process's; the cache
     * here goes (what the file says after that does not matter) */
    kmc_shared_leave(c);
    kmc_shared_detach(c);
}

/* Regions that earlier runs left when a finding ended them (no exit
 * handler runs then): those whose process is gone. */
static void remove_stale(void)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "kmemcache.%u.fuzzregion-", (unsigned)getuid());
    for (struct dirent *e; (e = readdir(d));) {
        int pid, i;
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 ||
            sscanf(e->d_name + strlen(prefix), "%d-%d", &pid, &i) != 2 || pid <= 0 ||
            (kill(pid, 0) != 0 && errno == ESRCH) == 0)
            continue;
        char name[64];
        snprintf(name, sizeof(name), "fuzzregion-%d-%d", pid, i);
        (void)kmc_shared_unlink(name);
    }
    closedir(d);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    remove_stale();
    make_template(&templates[0], 0, 0);
    make_template(&templates[1], 1, KMC_RED_ZONE | KMC_POISON);
    atexit(remove_regions);
    return 0;
}

static bool in_lock(const template_t *t, size_t off)
{
    if (off < 8 || (off >= t->locks.mutex_at && off < t->locks.mutex_at + t->locks.mutex_len))
        return true; /* the magic, the mutex */
    if (off < t->locks.procs_at)
        return false;
    size_t slot = (off - t->locks.procs_at) / t->locks.proc_size;
    return slot < t->locks.max_procs && (off - t->locks.procs_at) % t->locks.proc_size < 4;
}

typedef struct patch_s {
    size_t off;
    uint32_t value;
    bool late; /* written into the live region after attach, not before */
} patch_t;

/* Patch @i of the input: most land in the first 16 KiB (the header, the
 * process table, the slab descriptors and bitmaps), the rest anywhere in
 * the metadata. */
static bool patch_at(const template_t *t, const uint8_t *data, size_t size, size_t i, patch_t *p)
{
    size_t at = 1 + 8 * i;
    if (at + 8 > size)
        return false;
    uint32_t off;
    memcpy(&off, data + at, 4);
    memcpy(&p->value, data + at + 4, 4);
    size_t span = (off & 0x80000000u) || t->meta < 16384 ? t->meta : 16384;
    p->late = (off & 0x40000000u) != 0;
    p->off = ((off & 0x3fffffffu) % span) & ~(size_t)3;
    return true;
}

static void exercise(kmc_cache_t *c, int rounds)
{
    void *objs[8];
    uint32_t gens[8];
    for (int r = 0; r < rounds; r++) {
        int n = 0;
        for (; n < 8; n++) {
            if (!(objs[n] = kmc_shared_alloc(c, 0, &gens[n])))
                break;
            memset(objs[n], 0x5c, OBJ_SIZE); /* inside the object, nowhere else */
        }
        for (int k = 0; k < n; k++)
            (void)kmc_shared_free(c, objs[k], gens[k]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const template_t *t = &templates[data[0] & 1];
    static uint8_t *img;
    static size_t img_len;
    if (img_len < t->meta) {
        free(img);
        if (!(img = malloc(t->meta)))
            abort();
        img_len = t->meta;
    }
    memcpy(img, t->bytes, t->meta);
    patch_t p;
    for (size_t i = 0; patch_at(t, data, size, i, &p); i++)
        if (!p.late && !in_lock(t, p.off))
            memcpy(img + p.off, &p.value, 4);
    int fd = open(t->file, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || pwrite(fd, img, t->meta, 0) != (ssize_t)t->meta ||
        pwrite(fd, t->bytes + t->meta, t->len - t->meta, (off_t)t->meta) !=
            (ssize_t)(t->len - t->meta))
        abort();

    kmc_stats_t stats;
    kmc_shared_info_t info;
    (void)kmc_shared_peek(t->name, &stats, &info);
    kmc_cache_t *c;
    if (kmc_shared_attach(t->name, NULL, NULL, &c) == KMC_OK) {
        exercise(c, 1); /* a slot and a magazine of this process's */
        /* what another process of the user writes while this one runs */
        for (size_t i = 0; patch_at(t, data, size, i, &p); i++)
            if (p.late && !in_lock(t, p.off) && pwrite(fd, &p.value, 4, (off_t)p.off) != 4)
                abort();
        exercise(c, 2);
        size_t problems;
        (void)kmc_cache_validate(c, &problems);
        (void)kmc_shared_reclaim(c, 1);
        exercise(c, 1);
        (void)kmc_cache_validate(c, &problems);
        kmc_shared_detach(c);
    }
    close(fd);
    return 0;
}
