/*
 * kmalloc.c - the kmalloc family: size classes over ordinary caches, large
 * allocations straight from the OS, and one kfree for every object.
 *
 *   kmc_kmalloc(size, align)
 *     size 0                  -> ZERO_SIZE_PTR (one no-access page)
 *     a class fits            -> kmc_cache_alloc(class cache)    the hot path
 *     size > 8 KiB, or align
 *     above every class's     -> pages from the OS + large table
 *
 *   kmc_kfree(p) / kmc_ksize(p)
 *     NULL, ZERO_SIZE_PTR     -> nothing / 0
 *     in an arena             -> its cache (kmc_owner: two table loads)
 *     in the large table      -> its pages (one hash probe sequence)
 *     else                    -> KMC_EINVALID_FREE
 *
 * The hot path is kmc_kmalloc_index (a table load for up to 192 bytes, a
 * count-leading-zeros above) and an atomic load of the class's cache, then
 * the cache's own fast path. Making a class's cache, the large table and
 * the zero page are the slow paths, each behind its own lock or atomic.
 *
 * Large allocations are kept in an open-addressing hash table (linear
 * probing, backward-shift deletion, load at most 1/2) mapped apart from
 * object memory, so kfree of a large object is O(1) and no allocator word
 * sits next to the object. Freed runs are kept for the purge delay to serve
 * the next request of their size, as a cache keeps its empty slabs.
 */
#include <string.h>

#include "internal.h"

/* The size classes, as Linux's kmalloc_info[] (no DMA or cgroup copies).
 * The alignment of a power-of-two class is its size; kmalloc-96 and
 * kmalloc-192 take their largest power-of-two divisor (32 and 64), so that
 * every object of 16 bytes or more is at least 16-byte aligned.
 *
 *   class         size  align  serves sizes
 *   kmalloc-8        8      8      1 ..    8
 *   kmalloc-16      16     16      9 ..   16
 *   kmalloc-32      32     32     17 ..   32
 *   kmalloc-64      64     64     33 ..   64
 *   kmalloc-96      96     32     65 ..   96
 *   kmalloc-128    128    128     97 ..  128
 *   kmalloc-192    192     64    129 ..  192
 *   kmalloc-256    256    256    193 ..  256
 *   kmalloc-512    512    512    257 ..  512
 *   kmalloc-1k    1024   1024    513 .. 1024
 *   kmalloc-2k    2048   2048   1025 .. 2048
 *   kmalloc-4k    4096   4096   2049 .. 4096
 *   kmalloc-8k    8192   8192   4097 .. 8192
 */
const kmc_kmalloc_class_t kmc_kmalloc_classes[KMC_KMALLOC_CLASSES] = {
    {"kmalloc-8", 8, 8},        {"kmalloc-16", 16, 16},     {"kmalloc-32", 32, 32},
    {"kmalloc-64", 64, 64},     {"kmalloc-96", 96, 32},     {"kmalloc-128", 128, 128},
    {"kmalloc-192", 192, 64},   {"kmalloc-256", 256, 256},  {"kmalloc-512", 512, 512},
    {"kmalloc-1k", 1024, 1024}, {"kmalloc-2k", 2048, 2048}, {"kmalloc-4k", 4096, 4096},
    {"kmalloc-8k", 8192, 8192},
};

/* Class of sizes 1..192 by (size - 1) / 8, as Linux's size_index[]. Above
 * 192 bytes every class is a power of two: the class is log2 of the size
 * rounded up, less one. */
#define SMALL_MAX 192
static const uint8_t small_index[SMALL_MAX / 8] = {
    0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6,
};

_Static_assert(KMC_KMALLOC_MAX_CACHE_SIZE == 8192, "the table above ends at kmalloc-8k");
_Static_assert(KMC_KMALLOC_MAX_SIZE <= SIZE_MAX / 4, "size + alignment + a page never overflows");
_Static_assert(KMC_MAX_ALIGN <= KMC_KMALLOC_MAX_SIZE, "an alignment is a possible size");

static bool is_pow2(size_t x) { return x && !(x & (x - 1)); }
static bool valid_align(size_t align) { return !(align & (align - 1)) && align <= KMC_MAX_ALIGN; }

int kmc_kmalloc_index(size_t size, size_t align)
{
    if (size - 1 >= KMC_KMALLOC_MAX_CACHE_SIZE) /* size 0 wraps around */
        return -1;
    unsigned i = size <= SMALL_MAX ? small_index[(size - 1) / 8]
                                   : (unsigned)(63 - __builtin_clzll((unsigned long long)size - 1));
    while (kmc_kmalloc_classes[i].align < align)
        if (++i == KMC_KMALLOC_CLASSES)
            return -1;
    return (int)i;
}

/* --- the classes' caches ---------------------------------------------------- */

static _Atomic(kmc_cache_t *) class_caches[KMC_KMALLOC_CLASSES];
static pthread_mutex_t classes_lock = PTHREAD_MUTEX_INITIALIZER; /* makes, installs */

static kmc_cache_t *make_class_cache(unsigned index)
{
    pthread_mutex_lock(&classes_lock);
    kmc_cache_t *c = atomic_load_explicit(&class_caches[index], memory_order_acquire);
    if (!c) {
        const kmc_kmalloc_class_t *k = &kmc_kmalloc_classes[index];
        if (kmc_cache_create(k->name, k->size, k->align, 0, NULL, NULL, &c) == KMC_OK)
            atomic_store_explicit(&class_caches[index], c, memory_order_release);
    }
    pthread_mutex_unlock(&classes_lock);
    return c;
}

kmc_cache_t *kmc_kmalloc_cache(unsigned index)
{
    if (index >= KMC_KMALLOC_CLASSES) {
        kmc__report(KMC_EINVAL, NULL, NULL, "no size class %u", index);
        return NULL;
    }
    kmc_cache_t *c = atomic_load_explicit(&class_caches[index], memory_order_acquire);
    return c ? c : make_class_cache(index);
}

kmc_status kmc_kmalloc_install(unsigned index, kmc_cache_t *c)
{
    kmc__report_clear();
    if (index >= KMC_KMALLOC_CLASSES || !c)
        return kmc__report(KMC_EINVAL, c, NULL, "no size class %u, or no cache", index);
    const kmc_kmalloc_class_t *k = &kmc_kmalloc_classes[index];
    if (!c->backing->serves_kmalloc)
        return kmc__report(KMC_EINVAL, c, NULL, "%s is a %s cache: it cannot serve kmalloc",
                           c->name, c->backing->kind);
    if (c->size != k->size || c->align < k->align || c->ctor)
        return kmc__report(KMC_EINVAL, c, NULL,
                           "cache %s (size %zu, align %zu%s) cannot serve %s (size %zu, "
                           "align %zu)",
                           c->name, c->size, c->align, c->ctor ? ", with a ctor" : "", k->name,
                           k->size, k->align);
    pthread_mutex_lock(&classes_lock);
    atomic_store_explicit(&class_caches[index], c, memory_order_release);
    pthread_mutex_unlock(&classes_lock);
    return KMC_OK;
}

bool kmc__kmalloc_pinned(const kmc_cache_t *c)
{
    for (unsigned i = 0; i < KMC_KMALLOC_CLASSES; i++)
        if (atomic_load_explicit(&class_caches[i], memory_order_acquire) == c)
            return true;
    return false;
}

/* --- ZERO_SIZE_PTR ------------------------------------------------------------ */

/* One page of address space with no access, aligned to every alignment a
 * request may ask: what size 0 gets. Reserved on first use. */
static _Atomic uintptr_t zero_page;

static bool is_zero_ptr(const void *p)
{
    return (uintptr_t)p == atomic_load_explicit(&zero_page, memory_order_acquire);
}

static void *zero_size_ptr(void)
{
    uintptr_t z = atomic_load_explicit(&zero_page, memory_order_acquire);
    if (z)
        return (void *)z;
    void *p = kmc__os_reserve(kmc_page_size(), KMC_MAX_ALIGN);
    if (!p) {
        kmc__report(KMC_ENOMEM, NULL, NULL, "the OS refused a page for ZERO_SIZE_PTR");
        return NULL;
    }
    if (!atomic_compare_exchange_strong(&zero_page, &z, (uintptr_t)p)) {
        kmc__os_unreserve(p, kmc_page_size()); /* another thread was first */
        return (void *)z;
    }
    return p;
}

/* --- large allocations ------------------------------------------------------ */

typedef struct large_s {
    uintptr_t addr; /* start of the pages; 0: empty slot */
    size_t bytes;   /* mapped bytes, a page multiple */
    uint32_t since; /* kept runs: kmc__now_ms() when freed */
    uint32_t group; /* live ones: the memory group charged (0: none) */
} large_t;

/* Freed runs kept for the purge delay, as a cache keeps its empty slabs:
 * churn on one large size then costs no system call. A run of at most
 * LARGE_KEEP_MAX bytes is kept, the oldest kept runs going back to the OS
 * early when the reserve would pass LARGE_KEEP runs or LARGE_KEEP_BYTES;
 * kmc_kmalloc_shrink gives them all back. */
#define LARGE_KEEP       64
#define LARGE_KEEP_MAX   ((size_t)32 << 20)
#define LARGE_KEEP_BYTES ((size_t)64 << 20)
/* A kept run asked for zeroed is zeroed by the OS (its pages dropped, to
 * fault in as zero pages) from this size, by memset below it. */
#define LARGE_ZERO_BY_OS ((size_t)256 << 10)

static struct {
    pthread_mutex_t lock;
    large_t *slots;           /* cap entries, mapped apart from object memory */
    size_t cap;               /* a power of two, 0 before first use */
    size_t count;             /* live large allocations; count * 2 <= cap */
    uint64_t bytes;           /* their mapped bytes */
    large_t kept[LARGE_KEEP]; /* freed runs, oldest first */
    unsigned nkept;
    size_t kept_bytes;
} large = {.lock = PTHREAD_MUTEX_INITIALIZER};

void kmc__kmalloc_lock(bool large_lock)
{
    pthread_mutex_lock(large_lock ? &large.lock : &classes_lock);
}

void kmc__kmalloc_unlock(bool large_lock)
{
    pthread_mutex_unlock(large_lock ? &large.lock : &classes_lock);
}

/* The smallest table: a page's worth, a power of two (probing masks). */
static size_t large_min_slots(void)
{
    size_t n = kmc_page_size() / sizeof(large_t);
    return (size_t)1 << (63 - __builtin_clzll(n));
}

/* Fibonacci hashing of the page number: the top bits of a product. */
static size_t large_home(uintptr_t addr, size_t cap)
{
    uint64_t h = ((uint64_t)addr >> 12) * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> (64 - __builtin_ctzll(cap)));
}

/* Slot of @addr, or cap when absent. Table locked. */
static size_t large_find(uintptr_t addr)
{
    if (!large.cap)
        return large.cap;
    size_t mask = large.cap - 1;
    for (size_t i = large_home(addr, large.cap);; i = (i + 1) & mask) {
        if (large.slots[i].addr == addr)
            return i;
        if (!large.slots[i].addr)
            return large.cap;
    }
}

static void large_put(large_t *slots, size_t cap, large_t e)
{
    size_t i = large_home(e.addr, cap);
    while (slots[i].addr)
        i = (i + 1) & (cap - 1);
    slots[i] = e;
}

/* Rebuild the table with @cap slots. Table locked. False: no memory, and
 * the table is unchanged. */
static bool large_resize(size_t cap)
{
    large_t *slots = kmc__os_map_meta(cap * sizeof(large_t));
    if (!slots)
        return false;
    for (size_t i = 0; i < large.cap; i++)
        if (large.slots[i].addr)
            large_put(slots, cap, large.slots[i]);
    if (large.slots)
        kmc__os_unmap_meta(large.slots, large.cap * sizeof(large_t));
    large.slots = slots;
    large.cap = cap;
    return true;
}

/* Empty slot @i, moving later entries of its probe run back so that no
 * lookup stops early (no tombstones). Table locked. */
static void large_remove_at(size_t i)
{
    size_t mask = large.cap - 1;
    for (size_t j = (i + 1) & mask; large.slots[j].addr; j = (j + 1) & mask) {
        size_t home = large_home(large.slots[j].addr, large.cap);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            large.slots[i] = large.slots[j];
            i = j;
        }
    }
    large.slots[i] = (large_t){.addr = 0};
    if (large.cap > large_min_slots() && large.count * 8 < large.cap)
        (void)large_resize(large.cap / 2); /* without memory, stay larger */
}

/* The newest kept run of exactly @bytes aligned to @align, taken out; 0 if
 * none. Table locked. */
static uintptr_t large_take_kept(size_t bytes, size_t align)
{
    for (unsigned k = large.nkept; k-- > 0;)
        if (large.kept[k].bytes == bytes && !(large.kept[k].addr & (align - 1))) {
            uintptr_t addr = large.kept[k].addr;
            memmove(&large.kept[k], &large.kept[k + 1], (large.nkept - k - 1) * sizeof(large_t));
            large.nkept--;
            large.kept_bytes -= bytes;
            return addr;
        }
    return 0;
}

/* Keep the freed run @run, moving the oldest runs that no longer fit to
 * @evicted (returns how many). Table locked. */
static unsigned large_keep(large_t run, large_t evicted[LARGE_KEEP])
{
    unsigned n = 0;
    while (large.nkept &&
           (large.nkept == LARGE_KEEP || large.kept_bytes + run.bytes > LARGE_KEEP_BYTES)) {
        evicted[n] = large.kept[0];
        large.kept_bytes -= evicted[n++].bytes;
        memmove(&large.kept[0], &large.kept[1], --large.nkept * sizeof(large_t));
    }
    run.since = kmc__now_ms();
    large.kept[large.nkept++] = run;
    large.kept_bytes += run.bytes;
    kmc__purge_arm();
    return n;
}

static void *large_alloc(size_t size, size_t align, int zero)
{
    size_t page = kmc_page_size();
    size_t bytes = (size + page - 1) & ~(page - 1);
    size_t a = align > page ? align : page;
    if (is_pow2(size) && size > a)
        a = size; /* natural alignment, as the kernel's page allocator gives */
    kmc_status st = KMC_OK;
    uint32_t group = kmc__group_charge(NULL, NULL, bytes, &st);
    if (st != KMC_OK)
        return NULL;
    pthread_mutex_lock(&large.lock);
    uint8_t *p = (uint8_t *)large_take_kept(bytes, a);
    pthread_mutex_unlock(&large.lock);
    if (p && zero) { /* fresh pages read as zero; kept ones do not */
        if (bytes >= LARGE_ZERO_BY_OS)
            kmc__os_zero_pages(p, bytes);
        else
            memset(p, 0, bytes); /* all of ksize: krealloc may grow into it */
    }
    if (!p && !(p = kmc__os_map_pages(bytes, a))) {
        if (group)
            kmc__group_uncharge(group, bytes, 1);
        kmc__report(KMC_ENOMEM, NULL, NULL, "the OS refused %zu bytes for a large kmalloc", bytes);
        return NULL;
    }
    pthread_mutex_lock(&large.lock);
    bool room = (large.count + 1) * 2 <= large.cap ||
                large_resize(large.cap ? large.cap * 2 : large_min_slots());
    if (room) {
        large_put(large.slots, large.cap,
                  (large_t){.addr = (uintptr_t)p, .bytes = bytes, .group = group});
        large.count++;
        large.bytes += bytes;
    }
    pthread_mutex_unlock(&large.lock);
    if (!room) {
        if (group)
            kmc__group_uncharge(group, bytes, 1);
        kmc__os_unmap_pages(p, bytes);
        kmc__report(KMC_ENOMEM, NULL, NULL, "no memory for the large allocation table");
        return NULL;
    }
    return p;
}

/* Free the large allocation at @p; false if there is none. */
static bool large_free(void *p)
{
    pthread_mutex_lock(&large.lock);
    size_t i = large_find((uintptr_t)p);
    if (i == large.cap) {
        pthread_mutex_unlock(&large.lock);
        return false;
    }
    size_t bytes = large.slots[i].bytes;
    uint32_t group = large.slots[i].group;
    large.count--;
    large.bytes -= bytes;
    large_remove_at(i);
    large_t evicted[LARGE_KEEP];
    unsigned n = 0;
    bool keep = bytes <= LARGE_KEEP_MAX && kmc__purge_delay_ms() != 0;
    if (keep)
        n = large_keep((large_t){.addr = (uintptr_t)p, .bytes = bytes}, evicted);
    pthread_mutex_unlock(&large.lock);
    /* out of the table first: no one can find them */
    if (!keep)
        kmc__os_unmap_pages(p, bytes);
    for (unsigned k = 0; k < n; k++)
        kmc__os_unmap_pages((void *)evicted[k].addr, evicted[k].bytes);
    if (group)
        kmc__group_uncharge(group, bytes, 1);
    return true;
}

uint32_t kmc__kmalloc_large_group(const void *p)
{
    pthread_mutex_lock(&large.lock);
    size_t i = large_find((uintptr_t)p);
    uint32_t id = i == large.cap ? 0 : large.slots[i].group;
    pthread_mutex_unlock(&large.lock);
    return id;
}

uint64_t kmc__kmalloc_large_charged(const kmc_group_t *g)
{
    uint64_t bytes = 0;
    pthread_mutex_lock(&large.lock);
    for (size_t i = 0; i < large.cap; i++)
        if (large.slots[i].addr && kmc__group_holds(large.slots[i].group, g))
            bytes += large.slots[i].bytes;
    pthread_mutex_unlock(&large.lock);
    return bytes;
}

static size_t large_size(const void *p)
{
    pthread_mutex_lock(&large.lock);
    size_t i = large_find((uintptr_t)p);
    size_t bytes = i == large.cap ? 0 : large.slots[i].bytes;
    pthread_mutex_unlock(&large.lock);
    return bytes;
}

/* Keep the large allocation at @p for @size bytes, giving back the pages
 * beyond them. False if @p is no large allocation or is too small. */
static bool large_shrink(void *p, size_t size)
{
    size_t page = kmc_page_size();
    size_t want = (size + page - 1) & ~(page - 1);
    pthread_mutex_lock(&large.lock);
    size_t i = large_find((uintptr_t)p);
    if (i == large.cap || want > large.slots[i].bytes) {
        pthread_mutex_unlock(&large.lock);
        return false;
    }
    size_t tail = large.slots[i].bytes - want;
    large.slots[i].bytes = want;
    large.bytes -= tail;
    uint32_t group = large.slots[i].group;
    pthread_mutex_unlock(&large.lock);
    if (group && tail)
        kmc__group_uncharge(group, tail, 0);
    if (tail)
        kmc__os_unmap_pages((uint8_t *)p + want, tail);
    return true;
}

void kmc_kmalloc_large_stats(kmc_kmalloc_large_stats_t *out)
{
    pthread_mutex_lock(&large.lock);
    out->objects = large.count;
    out->bytes = large.bytes;
    out->table_bytes = large.cap * sizeof(large_t);
    out->kept = large.nkept;
    out->kept_bytes = large.kept_bytes;
    pthread_mutex_unlock(&large.lock);
}

void kmc__kmalloc_purge(uint32_t now, bool all, bool *pending)
{
    large_t runs[LARGE_KEEP];
    unsigned n = 0;
    uint32_t delay = kmc__purge_delay_ms();
    pthread_mutex_lock(&large.lock);
    while (large.nkept && (all || (uint32_t)(now - large.kept[0].since) >= delay)) {
        runs[n] = large.kept[0];
        large.kept_bytes -= runs[n++].bytes;
        memmove(&large.kept[0], &large.kept[1], --large.nkept * sizeof(large_t));
    }
    if (large.nkept)
        *pending = true;
    pthread_mutex_unlock(&large.lock);
    for (unsigned k = 0; k < n; k++)
        kmc__os_unmap_pages((void *)runs[k].addr, runs[k].bytes);
}

size_t kmc_kmalloc_shrink(void)
{
    large_t runs[LARGE_KEEP];
    pthread_mutex_lock(&large.lock);
    unsigned n = large.nkept;
    size_t bytes = large.kept_bytes;
    memcpy(runs, large.kept, n * sizeof(large_t));
    large.nkept = 0;
    large.kept_bytes = 0;
    pthread_mutex_unlock(&large.lock);
    for (unsigned k = 0; k < n; k++)
        kmc__os_unmap_pages((void *)runs[k].addr, runs[k].bytes);
    return bytes;
}

/* --- the family --------------------------------------------------------------- */

static void *do_kmalloc(size_t size, size_t align, int zero)
{
    kmc__report_clear();
    if (!valid_align(align)) {
        kmc__report(KMC_EINVAL, NULL, NULL, "align %zu is not 0 or a power of two up to %zu", align,
                    (size_t)KMC_MAX_ALIGN);
        return NULL;
    }
    int i = kmc_kmalloc_index(size, align);
    if (i >= 0) {
        kmc_cache_t *c = atomic_load_explicit(&class_caches[i], memory_order_acquire);
        if (!c && !(c = make_class_cache((unsigned)i)))
            return NULL;
        return kmc__cache_alloc_sized(c, zero, size);
    }
    if (size == 0)
        return zero_size_ptr();
    if (size > KMC_KMALLOC_MAX_SIZE) {
        kmc__report(KMC_ENOMEM, NULL, NULL, "kmalloc of %zu bytes: the most is %zu", size,
                    (size_t)KMC_KMALLOC_MAX_SIZE);
        return NULL;
    }
    return large_alloc(size, align, zero);
}

void *kmc_kmalloc(size_t size, size_t align) { return do_kmalloc(size, align, 0); }

void *kmc_kzalloc(size_t size, size_t align) { return do_kmalloc(size, align, 1); }

void *kmc_kcalloc(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        kmc__report_clear();
        kmc__report(KMC_ENOMEM, NULL, NULL, "kcalloc of %zu elements of %zu bytes overflows", n,
                    size);
        return NULL;
    }
    return do_kmalloc(bytes, 0, 1);
}

size_t kmc_ksize(const void *p)
{
    kmc__report_clear();
    if (!p || is_zero_ptr(p))
        return 0;
    kmc_cache_t *c = kmc_owner(p, NULL);
    if (c)
        return kmc__cache_ksize(c, p);
    size_t bytes = large_size(p);
    if (!bytes)
        kmc__report(KMC_EINVALID_FREE, NULL, p,
                    "ksize of 0x%llx: not an object of any cache or a large kmalloc",
                    (unsigned long long)(uintptr_t)p);
    return bytes;
}

kmc_status kmc_kfree(void *p)
{
    kmc__report_clear();
    if (!p || is_zero_ptr(p))
        return KMC_OK;
    kmc_cache_t *c = kmc_owner(p, NULL);
    if (c)
        return kmc_cache_free(c, p);
    if (large_free(p))
        return KMC_OK;
    return kmc__report(KMC_EINVALID_FREE, NULL, p,
                       "Invalid free of 0x%llx: not an object of any cache or a large kmalloc",
                       (unsigned long long)(uintptr_t)p);
}

size_t kmc_kmalloc_align(size_t size, size_t align)
{
    if (size == 0 || !valid_align(align))
        return 0;
    int i = kmc_kmalloc_index(size, align);
    if (i >= 0)
        return kmc_kmalloc_classes[i].align;
    size_t a = align > kmc_page_size() ? align : kmc_page_size();
    return is_pow2(size) && size > a ? size : a;
}

int kmc_krealloc_in_place(void *p, size_t size, size_t align)
{
    if (!p || !valid_align(align) || size > KMC_KMALLOC_MAX_SIZE)
        return 0;
    if (is_zero_ptr(p))
        return size == 0;
    if (size == 0 || ((uintptr_t)p & (kmc_kmalloc_align(size, align) - 1)))
        return 0;
    kmc_cache_t *c = kmc_owner(p, NULL);
    if (c)
        return kmc__cache_resize(c, p, size);
    return large_shrink(p, size);
}

void *kmc_krealloc(void *p, size_t size, size_t align)
{
    if (!p)
        return kmc_kmalloc(size, align);
    if (kmc_krealloc_in_place(p, size, align)) {
        kmc__report_clear();
        return p;
    }
    size_t old = kmc_ksize(p);
    if (!old && !is_zero_ptr(p))
        return NULL; /* not ours: the report says so */
    void *q = kmc_kmalloc(size, align);
    if (!q)
        return NULL; /* @p untouched */
    if (old && size)
        memcpy(q, p, old < size ? old : size);
    kmc_kfree(p);
    return q;
}
