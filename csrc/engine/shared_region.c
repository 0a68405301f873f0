/*
 * shared_region.c - a shared cache's region: its layout planned at create,
 * checked at attach (an attacher trusts nothing in it: the layout is copied
 * once and checked, then only the copy is used), mapped, left, unlinked,
 * and read by slabinfo without attaching. shared.h gives the design.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared.h"

/* --- create, attach, detach ---------------------------------------------------------- */

kmc_status kmc_shared_region_name(const char *name, char *out, size_t size)
{
    if (!kmc__valid_name(name) || strchr(name, '/'))
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "shared cache name must be 1 to %d printable bytes without spaces "
                           "or '/'",
                           KMC_NAME_MAX - 1);
    int n = snprintf(out, size, KMC_SHARED_PREFIX "%u.%s", (unsigned)getuid(), name);
    if (n < 0 || (size_t)n >= size)
        return kmc__report(KMC_EINVAL, NULL, NULL, "shared cache name too long");
    return KMC_OK;
}

static size_t round_to(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

typedef struct plan_s {
    uint64_t procs_at, slabs_at, local_at, remote_at, orig_at, records_at, meta_bytes;
    uint64_t nslabs, rec_words;
} plan_t;

static void plan_offsets(const kmc_cache_t *c, uint64_t nslabs, uint32_t procs, plan_t *p)
{
    size_t page = kmc_page_size();
    p->nslabs = nslabs;
    p->rec_words = 1 + (procs + 63) / 64;
    p->procs_at = round_to(sizeof(kmc_shm_header_t), 64);
    p->slabs_at = round_to(p->procs_at + (uint64_t)procs * sizeof(kmc_proc_t), 64);
    p->local_at = round_to(p->slabs_at + nslabs * sizeof(kmc_slab_t), 64);
    p->remote_at = round_to(p->local_at + nslabs * c->bitmap_words * 8, 64);
    p->orig_at = round_to(p->remote_at + nslabs * c->bitmap_words * 8, 64);
    uint64_t orig = (c->flags & KMC_RED_ZONE) ? nslabs * c->objperslab * 4 : 0;
    p->records_at = round_to(p->orig_at + orig, page);
    p->meta_bytes = round_to(p->records_at + nslabs * c->objperslab * p->rec_words * 8, page);
}

/* The most slabs a region of @capacity bytes holds, in units that keep the
 * slab area a multiple of 1 MiB (the owner table's grain); the layout's
 * slab size grows until their ids fit. 0 with a report when none fit. */
static kmc_status plan_region(kmc_cache_t *c, size_t capacity, uint32_t procs, plan_t *p)
{
    for (unsigned min_shift = 0;;) {
        kmc__cache_layout(c, min_shift);
        uint64_t unit = c->slab_size >= ((size_t)1 << KMC_ARENA_MIN_SHIFT)
                            ? 1
                            : ((size_t)1 << KMC_ARENA_MIN_SHIFT) / c->slab_size;
        plan_offsets(c, 0, procs, p);
        uint64_t fixed = p->meta_bytes + 8 * kmc_page_size();
        uint64_t per_slab = c->slab_size + sizeof(kmc_slab_t) + 16 * c->bitmap_words +
                            (uint64_t)c->objperslab * (p->rec_words * 8 + 4);
        uint64_t n = capacity > fixed ? (capacity - fixed) / per_slab : 0;
        n -= n % unit;
        for (;;) {
            plan_offsets(c, n, procs, p);
            if (n == 0 || p->meta_bytes + (n << c->slab_shift) <= capacity)
                break;
            n -= unit;
        }
        if (n == 0) {
            plan_offsets(c, unit, procs, p);
            return kmc__report(
                KMC_EINVAL, NULL, NULL,
                "capacity %zu is too small for shared cache %s: %llu bytes at "
                "least (%llu of metadata, %llu of slabs)",
                capacity, c->name, (unsigned long long)(p->meta_bytes + (unit << c->slab_shift)),
                (unsigned long long)p->meta_bytes, (unsigned long long)(unit << c->slab_shift));
        }
        if (n < (1u << KMC_SLAB_ID_SHIFT))
            return KMC_OK;
        if (c->slab_shift >= KMC_MAX_SLAB_SHIFT)
            return kmc__report(KMC_EINVAL, NULL, NULL,
                               "capacity %zu is too large for shared cache %s", capacity, c->name);
        min_shift = c->slab_shift + 1;
    }
}

static uint32_t magazine_cap(const kmc_cache_t *c, uint64_t objects, uint32_t procs)
{
    if ((c->flags & KMC_DEBUG_FLAGS))
        return 0;
    uint64_t cap = MAG_MAX;
    if (cap > MAG_BYTES / c->slot_size)
        cap = MAG_BYTES / c->slot_size;
    if (cap > objects / (4 * (uint64_t)procs))
        cap = objects / (4 * (uint64_t)procs);
    return cap < 2 ? 0 : (uint32_t)cap;
}

/* Map the slab area of @r->fd as r->lay (checked) says and fill in @c's
 * arena. */
static kmc_status map_region(kmc_cache_t *c, kmc_region_t *r)
{
    const kmc_shm_layout_t *l = &r->lay;
    size_t align = c->slab_size > ((size_t)1 << KMC_ARENA_MIN_SHIFT)
                       ? c->slab_size
                       : (size_t)1 << KMC_ARENA_MIN_SHIFT;
    r->slabs_len = (size_t)l->nslabs << c->slab_shift;
    void *slabs;
    int rc = kmc__shm_map(r->fd, l->meta_bytes, r->slabs_len, align, true, &slabs);
    if (rc != 0) {
        kmc__report(rc == ENOMEM ? KMC_ENOMEM : KMC_EOS, c, NULL,
                    "cannot map the %zu-byte slab area of shared cache %s", r->slabs_len, c->name);
        kmc__report_slot()->os_error = rc;
        return kmc_last_report()->status;
    }
    r->slabs = slabs;
    uint8_t *m = (uint8_t *)r->hdr;
    r->procs = (kmc_proc_t *)(m + l->procs_at);
    r->records = (_Atomic uint64_t *)(m + l->records_at);
    r->rec_words = (uint32_t)l->rec_words;
    kmc_arena_t *a = &r->arena;
    a->base = (uintptr_t)slabs;
    a->bytes = r->slabs_len;
    a->nslabs = (uint32_t)l->nslabs;
    a->bump = a->nslabs; /* every slot is on the released list or in use */
    a->slabs = (kmc_slab_t *)(m + l->slabs_at);
    a->local = (_Atomic uint64_t *)(m + l->local_at);
    a->remote = (_Atomic uint64_t *)(m + l->remote_at);
    a->orig = (c->flags & KMC_RED_ZONE) ? (uint32_t *)(m + l->orig_at) : NULL;
    a->meta_bytes = 0; /* counted as the region's */
    r->mag_cap = kmc__option(KMC_OPTION_THREAD_CACHES) ? (uint32_t)l->mag_cap : 0;
    c->backing = &kmc__shared_backing;
    c->d = &r->hdr->depot;
    c->heaps_on = false;
    return kmc__arena_install(c, a);
}

static void region_free(kmc_region_t *r)
{
    if (!r)
        return;
    if (r->slabs)
        kmc__shm_unmap(r->slabs, r->slabs_len);
    if (r->hdr)
        kmc__shm_unmap(r->hdr, r->meta_len);
    if (r->fd >= 0)
        kmc__shm_close(r->fd);
    pthread_mutex_destroy(&r->reg_lock);
    free(r->quiesced);
    free(r);
}

static kmc_region_t *region_new(void)
{
    kmc_region_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
    r->self = KMC_NIL;
    r->quiesced = calloc(KMC_SHARED_MAX_PROCS / 64, sizeof(uint64_t));
    pthread_mutex_init(&r->reg_lock, NULL);
    if (!r->quiesced) {
        region_free(r);
        return NULL;
    }
    return r;
}

static kmc_status os_report(int rc, const kmc_cache_t *c, const char *what, const char *path)
{
    kmc_status st = rc == ENOMEM || rc == ENOSPC ? KMC_ENOMEM : KMC_EOS;
    kmc__report(st, c, NULL, "%s %s: %s", what, path, strerror(rc));
    kmc__report_slot()->os_error = rc;
    return st;
}

/* Why the file at @path is not trusted (kmc__shm_open's refusals), or the
 * OS's own error. */
static kmc_status open_report(int rc, const kmc_shm_owner_t *who, const char *what,
                              const char *path)
{
    kmc_status st;
    if (rc == EPERM) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s belongs to uid %u, not to this user (uid %u): another user made a "
                         "file under this name, and it is not trusted (have that user or root "
                         "remove it, or pick another name)",
                         path, who->uid, (unsigned)geteuid());
    } else if (rc == EACCES && (who->mode & 077)) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s has mode %04o: other users may read or write it, so it is not "
                         "trusted (a region is made 0600)",
                         path, who->mode & 07777);
    } else if (rc == EINVAL && who->mode) {
        st = kmc__report(KMC_EOS, NULL, NULL,
                         "%s is not a regular file (file type %06o): not a shared cache region",
                         path, who->mode & 0170000);
    } else {
        kmc_status s = rc == ENOMEM || rc == ENOSPC ? KMC_ENOMEM : KMC_EOS;
        st = kmc__report(s, NULL, NULL, "%s %s: %s", what, path, strerror(rc));
    }
    kmc__report_slot()->os_error = rc;
    return st;
}

static void cache_free(kmc_cache_t *c)
{
    if (!c)
        return;
    if (c->region && c->nr_arenas)
        kmc__arena_uninstall(c, &c->region->arena);
    region_free(c->region);
    free(c);
}

/* A cache and its view of the region of shared cache @name, both zeroed, and
 * the region's path; a report when the name is bad or memory short. */
static kmc_status new_view(const char *name, char path[96], kmc_cache_t **c, kmc_region_t **r)
{
    kmc_status st = kmc_shared_region_name(name, path, 96);
    if (st != KMC_OK)
        return st;
    *c = kmc__cache_new();
    *r = *c ? region_new() : NULL;
    if (!*r) {
        free(*c);
        return kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the cache");
    }
    return KMC_OK;
}

kmc_status kmc_shared_create(const char *name, size_t size, size_t align, unsigned flags,
                             size_t capacity, unsigned max_procs, kmc_ctor_fn ctor, void *ctor_arg,
                             kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    if (max_procs == 0)
        max_procs = KMC_SHARED_DEFAULT_PROCS;
    if (max_procs > KMC_SHARED_MAX_PROCS)
        return kmc__report(KMC_EINVAL, NULL, NULL, "max_procs %u is not in 1..%u", max_procs,
                           KMC_SHARED_MAX_PROCS);
    char path[96];
    kmc_cache_t *c;
    kmc_region_t *r;
    kmc_status st = new_view(name, path, &c, &r);
    if (st != KMC_OK)
        return st;
    c->region = r;
    st = kmc__cache_setup(c, name, size, align, flags, ctor, ctor_arg);
    plan_t p;
    if (st == KMC_OK)
        st = plan_region(c, capacity, max_procs, &p);
    c->region = r; /* setup does not touch it; the layout is final now */
    if (st != KMC_OK) {
        c->region = NULL;
        cache_free(c);
        region_free(r);
        return st;
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_open(path, true, &r->fd, &who);
    if (rc == EEXIST && kmc__shm_owner(path, &who) == 0 && who.uid != (unsigned)geteuid()) {
        st = kmc__report(KMC_EEXIST, NULL, NULL,
                         "cannot create shared cache %s: %s exists already and belongs to uid "
                         "%u, not to this user (uid %u); another user took the name (have them "
                         "or root remove it, or pick another name)",
                         name, path, who.uid, (unsigned)geteuid());
        kmc__report_slot()->os_error = EEXIST;
        c->region = NULL;
        free(c);
        region_free(r);
        return st;
    }
    if (rc != 0) {
        st = rc == EEXIST ? kmc__report(KMC_EEXIST, NULL, NULL,
                                        "shared cache %s exists already (%s): attach it, or "
                                        "unlink it first",
                                        name, path)
                          : open_report(rc, &who, "cannot create", path);
        if (rc == EEXIST)
            kmc__report_slot()->os_error = EEXIST;
        c->region = NULL;
        free(c);
        region_free(r);
        return st;
    }
    uint64_t total = p.meta_bytes + (p.nslabs << c->slab_shift);
    r->meta_len = p.meta_bytes;
    void *meta = NULL;
    if ((rc = kmc__shm_truncate(r->fd, total)) != 0 ||
        (rc = kmc__shm_commit(r->fd, 0, p.records_at)) != 0 ||
        (rc = kmc__shm_map(r->fd, 0, p.meta_bytes, 0, true, &meta)) != 0) {
        st = os_report(rc, c, "cannot set up the region", path);
        goto fail;
    }
    r->hdr = meta;
    kmc_shm_header_t *h = r->hdr;
    kmc_shm_layout_t *l = &r->lay;
    l->version = SHM_VERSION;
    l->header_bytes = sizeof(*h);
    l->abi = SHM_ABI;
    l->nonce = kmc__shm_nonce();
    memcpy(l->name, c->name, sizeof(l->name));
    l->size = c->size;
    l->align = c->align;
    l->flags = c->flags;
    l->slab_shift = c->slab_shift;
    l->slot_size = c->slot_size;
    l->obj_offset = c->obj_offset;
    l->objperslab = c->objperslab;
    l->bitmap_words = c->bitmap_words;
    l->nslabs = p.nslabs;
    l->max_procs = max_procs;
    l->mag_cap = magazine_cap(c, p.nslabs * c->objperslab, max_procs);
    l->has_ctor = ctor != NULL;
    l->capacity = capacity;
    l->rec_words = p.rec_words;
    l->procs_at = p.procs_at;
    l->slabs_at = p.slabs_at;
    l->local_at = p.local_at;
    l->remote_at = p.remote_at;
    l->orig_at = p.orig_at;
    l->records_at = p.records_at;
    l->meta_bytes = p.meta_bytes;
    l->region_bytes = total;
    {
        int pid;
        uint64_t start, ns;
        (void)kmc__shm_self(&pid, &start, &ns);
        l->creator_pid = pid;
        l->creator_start = start;
    }
    h->l = *l;
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    rc = pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    if (rc != 0) {
        st = os_report(rc, c, "cannot make the lock of", path);
        goto fail;
    }
    h->depot.partial = h->depot.empty = h->depot.released = (kmc_list_t){KMC_NIL, KMC_NIL, 0};
    if ((st = map_region(c, r)) != KMC_OK)
        goto fail;
    for (uint32_t i = (uint32_t)p.nslabs; i-- > 0;) { /* slab 0 first out */
        kmc__slab_set_state(&r->arena.slabs[i], KMC_SLAB_RELEASED);
        kmc__list_push(c, &h->depot.released, i);
    }
    atomic_store_explicit(&h->magic, SHM_MAGIC, memory_order_release);
    if (kmc__shared_register_self(c) == KMC_NIL) {
        st = kmc_last_report()->status;
        goto fail;
    }
    kmc__cache_link(c);
    *out = c;
    return KMC_OK;
fail:
    kmc__shm_unlink(path, &who);
    cache_free(c);
    return st;
}

/* Check a region's layout @h (a private copy) against what this engine
 * would do: every offset and size in it is the one this engine computes
 * from the few numbers it starts from, each checked for range first, and
 * the file is as large as the layout says. */
static kmc_status check_header(kmc_cache_t *c, const kmc_shm_layout_t *h, uint64_t file_size,
                               const char *path)
{
    if (h->version != SHM_VERSION || h->header_bytes != sizeof(kmc_shm_header_t) ||
        h->abi != SHM_ABI)
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "%s was made by another version of kmemcache (region version %u, "
                           "this one reads %u)",
                           path, h->version, SHM_VERSION);
    char name[KMC_NAME_MAX];
    memcpy(name, h->name, sizeof(name));
    name[KMC_NAME_MAX - 1] = 0;
    kmc_status st = h->size <= SIZE_MAX && h->align <= SIZE_MAX && h->flags <= UINT32_MAX
                        ? kmc__cache_setup(c, name, (size_t)h->size, (size_t)h->align,
                                           (unsigned)h->flags, c->ctor, c->ctor_arg)
                        : KMC_EINVAL;
    if (st == KMC_OK && h->slab_shift <= KMC_MAX_SLAB_SHIFT)
        kmc__cache_layout(c, (unsigned)h->slab_shift);
    plan_t p;
    if (st == KMC_OK && h->max_procs >= 1 && h->max_procs <= KMC_SHARED_MAX_PROCS &&
        h->nslabs >= 1 && h->nslabs < (1u << KMC_SLAB_ID_SHIFT))
        plan_offsets(c, h->nslabs, (uint32_t)h->max_procs, &p);
    else
        st = KMC_EINVAL;
    if (st != KMC_OK || c->slab_shift != h->slab_shift || c->slot_size != h->slot_size ||
        c->obj_offset != h->obj_offset || c->objperslab != h->objperslab ||
        c->bitmap_words != h->bitmap_words || p.procs_at != h->procs_at ||
        p.slabs_at != h->slabs_at || p.local_at != h->local_at || p.remote_at != h->remote_at ||
        p.orig_at != h->orig_at || p.records_at != h->records_at || p.meta_bytes != h->meta_bytes ||
        p.rec_words != h->rec_words || h->mag_cap > MAG_MAX || h->has_ctor > 1 ||
        h->region_bytes != h->meta_bytes + (h->nslabs << h->slab_shift) ||
        file_size < h->region_bytes)
        return kmc__report(KMC_EINVAL, NULL, NULL,
                           "%s is not a shared cache region this kmemcache can use: its "
                           "layout does not check out",
                           path);
    return KMC_OK;
}

kmc_status kmc_shared_attach(const char *name, kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out)
{
    kmc__report_clear();
    if (!out)
        return kmc__report(KMC_EINVAL, NULL, NULL, "no place to put the cache");
    *out = NULL;
    char path[96];
    kmc_cache_t *c;
    kmc_region_t *r;
    kmc_status st = new_view(name, path, &c, &r);
    if (st != KMC_OK)
        return st;
    snprintf(r->path, sizeof(r->path), "%s", path);
    c->ctor = ctor;
    c->ctor_arg = ctor_arg;
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_open(path, false, &r->fd, &who);
    if (rc != 0) {
        st = rc == ENOENT
                 ? kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path)
                 : open_report(rc, &who, "cannot open", path);
        if (rc == ENOENT)
            kmc__report_slot()->os_error = ENOENT;
        goto fail;
    }
    /* the header first, to learn the rest; wait for a creator still at work */
    size_t head = round_to(sizeof(kmc_shm_header_t), kmc_page_size());
    uint64_t file_size = 0;
    void *hp = NULL;
    for (uint32_t waited = 0;; waited++) {
        if ((rc = kmc__shm_size(r->fd, &file_size)) != 0) {
            st = os_report(rc, NULL, "cannot read", path);
            goto fail;
        }
        if (file_size >= head) {
            if ((rc = kmc__shm_map(r->fd, 0, head, 0, false, &hp)) != 0) {
                st = os_report(rc, NULL, "cannot map", path);
                goto fail;
            }
            kmc_shm_header_t *h = hp;
            if (atomic_load_explicit(&h->magic, memory_order_acquire) == SHM_MAGIC)
                break;
            int creator = h->l.creator_pid;
            uint64_t cstart = h->l.creator_start, now_start;
            kmc__shm_unmap(hp, head);
            hp = NULL;
            if (creator > 0 && kmc__shm_proc_start(creator, &now_start) == ESRCH) {
                st = kmc__report(KMC_EINVAL, NULL, NULL,
                                 "%s was never finished: its creator (pid %d) died while "
                                 "making it; unlink it",
                                 path, creator);
                (void)cstart;
                goto fail;
            }
        }
        if (waited >= ATTACH_WAIT_MS) {
            st = kmc__report(KMC_EINVAL, NULL, NULL,
                             "%s is not a shared cache region (or its creator has not "
                             "finished it in %u ms)",
                             path, ATTACH_WAIT_MS);
            goto fail;
        }
        usleep(1000);
    }
    memcpy(&r->lay, &((kmc_shm_header_t *)hp)->l, sizeof(r->lay)); /* once: the copy is used */
    kmc__shm_unmap(hp, head);
    st = check_header(c, &r->lay, file_size, path);
    if (st == KMC_OK && ctor && !r->lay.has_ctor)
        st = kmc__report(KMC_EINVAL, NULL, NULL,
                         "shared cache %s was made without a constructor: attach it "
                         "without one",
                         name);
    if (st != KMC_OK)
        goto fail;
    void *meta;
    if ((rc = kmc__shm_map(r->fd, 0, r->lay.meta_bytes, 0, true, &meta)) != 0) {
        st = os_report(rc, c, "cannot map", path);
        goto fail;
    }
    r->hdr = meta;
    r->meta_len = r->lay.meta_bytes;
    c->region = r;
    if ((st = map_region(c, r)) != KMC_OK)
        goto fail;
    if (kmc__shared_register_self(c) == KMC_NIL) {
        st = kmc_last_report()->status;
        goto fail;
    }
    kmc__cache_link(c);
    *out = c;
    return KMC_OK;
fail:
    c->region = r;
    cache_free(c);
    return st;
}

void kmc_shared_leave(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        return;
    kmc__region_lock(c);
    if (!owns(r, me)) {
        KMC_STORE(&r->self, KMC_NIL);
        kmc__region_unlock(c);
        return;
    }
    kmc__shared_proc_lock(c, me, me, true);
    kmc__shared_flush(c, me, 0);
    uint64_t mine[KMC_SHARED_MAX_PROCS / 64] = {0};
    mine[me / 64] |= UINT64_C(1) << (me % 64);
    size_t n = kmc__shared_scan_release(c, mine, false, false);
    r->hdr->reclaimed -= n; /* let go of, not reclaimed */
    kmc__shared_proc_retire(r, me);
    KMC_STORE(&r->self, KMC_NIL);
    kmc__region_unlock(c);
}

/* Only the free objects go: nothing names them. The objects this process
 * holds stay held until it is found dead, because until then its threads
 * and exit handlers may still write through pointers they have, and a slot
 * given back now could already be another process's object. */
void kmc_shared_exiting(kmc_cache_t *c)
{
    kmc_region_t *r = c->region;
    uint32_t me = KMC_LOAD(&r->self);
    if (me == KMC_NIL)
        return;
    kmc__region_lock(c);
    kmc__shared_flush_mine(c);
    kmc__region_unlock(c);
}

kmc_status kmc_shared_detach(kmc_cache_t *c)
{
    kmc__report_clear();
    kmc_shared_leave(c);
    pthread_mutex_lock(&kmc__caches_lock);
    kmc__cache_unlink(c);
    pthread_mutex_unlock(&kmc__caches_lock);
    cache_free(c);
    return KMC_OK;
}

static kmc_status unlink_path(const char *name, const char *path)
{
    kmc_shm_owner_t who = {0, 0};
    int rc = kmc__shm_unlink(path, &who);
    if (rc == ENOENT) {
        kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path);
        kmc__report_slot()->os_error = ENOENT;
        return KMC_ENOENT;
    }
    if (rc == EPERM) {
        kmc__report(KMC_EOS, NULL, NULL,
                    "refusing to unlink %s: it belongs to uid %u, not to this user (uid %u)", path,
                    who.uid, (unsigned)geteuid());
        kmc__report_slot()->os_error = EPERM;
        return KMC_EOS;
    }
    return rc ? os_report(rc, NULL, "cannot unlink", path) : KMC_OK;
}

kmc_status kmc_shared_unlink(const char *name)
{
    kmc__report_clear();
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    return unlink_path(name, path);
}

kmc_status kmc_shared_unlink_cache(kmc_cache_t *c)
{
    kmc__report_clear();
    return unlink_path(c->name, c->region->path);
}

/* @l: the checked copy of the region's layout; @h and @procs: the live
 * mapping, for counters only. */
static void fill_info(const kmc_shm_layout_t *l, const kmc_shm_header_t *h, const kmc_proc_t *procs,
                      const char *path, kmc_shared_info_t *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->region, sizeof(o->region), "%s", path);
    o->nonce = l->nonce;
    o->capacity = l->capacity;
    o->region_bytes = l->region_bytes;
    o->meta_bytes = l->meta_bytes;
    o->slab_bytes = l->region_bytes - l->meta_bytes;
    o->nslabs = l->nslabs;
    o->max_procs = l->max_procs;
    o->magazine = l->mag_cap;
    o->recoveries = h->recoveries;
    o->reclaimed = h->reclaimed;
    o->pickled = h->tickets;
    o->creator_pid = l->creator_pid;
    o->self = -1;
    for (uint32_t s = 0; s < l->max_procs; s++)
        o->procs += KMC_LOAD(&((kmc_proc_t *)procs)[s].state) == PROC_ALIVE;
}

void kmc_shared_info(kmc_cache_t *c, kmc_shared_info_t *out)
{
    kmc_region_t *r = c->region;
    kmc__region_lock(c);
    fill_info(&r->lay, r->hdr, r->procs, r->path, out);
    uint32_t me = KMC_LOAD(&r->self);
    out->self = me == KMC_NIL ? -1 : (int)me;
    kmc__region_unlock(c);
}

/* Counters of region @l (checked) mapped read-only at @meta. Nothing but
 * counts is read from the mapping, and only inside the bounds @l gives. */
static void peek_stats(const kmc_shm_layout_t *l, const void *meta, kmc_stats_t *o)
{
    const kmc_shm_header_t *m = meta;
    const kmc_proc_t *procs = (const kmc_proc_t *)((const uint8_t *)meta + l->procs_at);
    memset(o, 0, sizeof(*o));
    kmc__shared_count_procs(procs, (uint32_t)l->max_procs, m, o);
    const kmc_depot_t *d = &m->depot;
    uint64_t nslabs = d->num_slabs, empty = d->empty.count;
    o->num_objs = nslabs * l->objperslab;
    o->objsize = l->slot_size;
    o->objperslab = l->objperslab;
    o->slab_size = (uint64_t)1 << l->slab_shift;
    o->pagesperslab = o->slab_size / kmc_page_size();
    o->empty_slabs = empty;
    o->partial_slabs = d->partial.count;
    o->num_slabs = nslabs;
    o->active_slabs = nslabs - empty;
    o->size = l->size;
    o->align = l->align;
    o->slabs_created = d->slabs_created;
    o->slabs_released = d->slabs_released;
    o->committed_bytes = nslabs << l->slab_shift;
    o->metadata_bytes = l->meta_bytes;
    o->reserved_bytes = l->region_bytes - l->meta_bytes;
    o->arenas = 1;
    o->bitmap_words = l->bitmap_words;
    o->flags = l->flags;
}

kmc_status kmc_shared_peek(const char *name, kmc_stats_t *o, kmc_shared_info_t *info)
{
    kmc__report_clear();
    char path[96];
    kmc_status st = kmc_shared_region_name(name, path, sizeof(path));
    if (st != KMC_OK)
        return st;
    kmc_shm_owner_t who = {0, 0};
    int fd, rc = kmc__shm_open_readonly(path, &fd, &who);
    if (rc != 0) {
        if (rc == ENOENT)
            return kmc__report(KMC_ENOENT, NULL, NULL, "no shared cache %s (%s)", name, path);
        return open_report(rc, &who, "cannot open", path);
    }
    uint64_t file_size = 0;
    size_t head = round_to(sizeof(kmc_shm_header_t), kmc_page_size());
    void *hp = NULL;
    st = KMC_EINVAL;
    if (kmc__shm_size(fd, &file_size) == 0 && file_size >= head &&
        kmc__shm_map(fd, 0, head, 0, false, &hp) == 0) {
        /* the header copied once, the copy checked, and only the copy read */
        kmc_shm_header_t *h = hp;
        bool made = atomic_load_explicit(&h->magic, memory_order_acquire) == SHM_MAGIC;
        kmc_shm_layout_t lay;
        memcpy(&lay, &h->l, sizeof(lay));
        kmc__shm_unmap(hp, head);
        kmc_cache_t *probe = kmc__cache_new();
        void *meta;
        if (probe && made && check_header(probe, &lay, file_size, path) == KMC_OK &&
            kmc__shm_map(fd, 0, lay.meta_bytes, 0, false, &meta) == 0) {
            peek_stats(&lay, meta, o);
            if (info)
                fill_info(&lay, meta, (const kmc_proc_t *)((const uint8_t *)meta + lay.procs_at),
                          path, info);
            st = KMC_OK;
            kmc__shm_unmap(meta, lay.meta_bytes);
        }
        free(probe);
    }
    kmc__shm_close(fd);
    if (st != KMC_OK && kmc_last_report()->status == KMC_OK)
        kmc__report(KMC_EINVAL, NULL, NULL, "%s is not a shared cache region", path);
    return st != KMC_OK ? kmc_last_report()->status : KMC_OK;
}
