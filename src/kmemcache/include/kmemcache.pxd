# kmemcache.pxd - kmemcache's C API for Cython (kmemcache.h, beside this file).
#
#     # cython: language_level=3
#     cimport kmemcache as kmc          # include_path=[kmemcache.get_include()]
#     kmc.kmemcache_import()            # once, at module level: raises on failure
#
#     cdef kmc.kmc_cache_t *cache
#     if kmc.kmc_cache_create(b"ring", 1512, 64, 0, NULL, NULL, &cache) != kmc.KMC_OK: ...
#     with nogil:
#         p = kmc.kmc_cache_alloc(cache, 1)
#         kmc.kmc_cache_free(cache, p)
#
# The functions are safe without the GIL (nogil); what each does is in kmc.h.

from libc.stdint cimport uint8_t, uint64_t, uintptr_t

cdef extern from "kmemcache.h":
    int KMEMCACHE_CAPI_VERSION
    unsigned int KMEMCACHE_TRACE_DOMAIN
    int kmemcache_import() except -1

    ctypedef struct kmc_cache_t:
        pass

    ctypedef enum kmc_status:
        KMC_OK
        KMC_ENOMEM
        KMC_EINVAL
        KMC_ECTOR
        KMC_EDOUBLE_FREE
        KMC_EINVALID_FREE
        KMC_EBUSY
        KMC_EREDZONE
        KMC_EPOISON
        KMC_ECORRUPT
        KMC_EEXIST
        KMC_ENOENT
        KMC_ESTALE
        KMC_EOS
        KMC_ELIMIT

    enum:
        KMC_CONSISTENCY_CHECKS
        KMC_RED_ZONE
        KMC_POISON
        KMC_HWCACHE_ALIGN
        KMC_STORE_USER
        KMC_KMALLOC_CLASSES

    ctypedef int (*kmc_ctor_fn)(void *object, size_t size, void *arg) noexcept nogil

    ctypedef struct kmc_report_t:
        kmc_status status
        char cache[64]
        uintptr_t object
        size_t object_size
        ptrdiff_t offset
        size_t length
        size_t problems
        int found
        int expected
        char message[256]

    # The fields of kmc_stats_t used most; Cython reads them by name.
    ctypedef struct kmc_stats_t:
        uint64_t active_objs
        uint64_t num_objs
        uint64_t objsize
        uint64_t objperslab
        uint64_t pagesperslab
        uint64_t active_slabs
        uint64_t num_slabs
        uint64_t size
        uint64_t align
        uint64_t slab_size
        uint64_t allocs
        uint64_t frees
        uint64_t committed_bytes

    ctypedef struct kmc_kmalloc_class_t:
        const char *name
        size_t size
        size_t align

    ctypedef struct kmc_kmalloc_large_stats_t:
        uint64_t objects
        uint64_t bytes
        uint64_t table_bytes
        uint64_t kept
        uint64_t kept_bytes

    ctypedef enum kmc_option:
        KMC_OPTION_PURGE_DELAY_MS
        KMC_OPTION_THREAD_CACHES
        KMC_OPTION_MAGAZINE
        KMC_OPTIONS

    kmc_status kmc_cache_create(const char *name, size_t size, size_t align, unsigned flags,
                                kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out) nogil
    kmc_status kmc_cache_destroy(kmc_cache_t *cache) nogil
    void *kmc_cache_alloc(kmc_cache_t *cache, int zero) nogil
    kmc_status kmc_cache_alloc_bulk(kmc_cache_t *cache, size_t n, void **out, int zero) nogil
    kmc_status kmc_cache_free(kmc_cache_t *cache, void *object) nogil
    kmc_status kmc_cache_check_free(kmc_cache_t *cache, const void *object) nogil
    size_t kmc_cache_shrink(kmc_cache_t *cache) nogil
    kmc_status kmc_cache_validate(kmc_cache_t *cache, size_t *problems) nogil
    void kmc_cache_stats(kmc_cache_t *cache, kmc_stats_t *out) nogil
    const char *kmc_cache_name(const kmc_cache_t *cache) nogil
    size_t kmc_cache_size(const kmc_cache_t *cache) nogil
    size_t kmc_cache_align(const kmc_cache_t *cache) nogil
    unsigned kmc_cache_flags(const kmc_cache_t *cache) nogil
    void kmc_cache_for_each_live(kmc_cache_t *cache, void (*fn)(void *, void *) noexcept nogil,
                                 void *arg) nogil
    kmc_cache_t *kmc_owner(const void *address, void **object_start) nogil
    kmc_status kmc_free(void *object) nogil
    size_t kmc_caches(kmc_cache_t **out, size_t max) nogil
    void kmc_thread_flush() nogil
    const kmc_report_t *kmc_last_report() nogil
    const char *kmc_status_name(kmc_status status) nogil
    long kmc_option_get(kmc_option option) nogil
    kmc_status kmc_option_set(kmc_option option, long value) nogil
    const char *kmc_option_name(kmc_option option) nogil
    size_t kmc_page_size() nogil
    const kmc_kmalloc_class_t *kmc_kmalloc_classes
    int kmc_kmalloc_index(size_t size, size_t align) nogil
    kmc_cache_t *kmc_kmalloc_cache(unsigned index) nogil
    kmc_status kmc_kmalloc_install(unsigned index, kmc_cache_t *cache) nogil
    void *kmc_kmalloc(size_t size, size_t align) nogil
    void *kmc_kzalloc(size_t size, size_t align) nogil
    void *kmc_kcalloc(size_t n, size_t size) nogil
    void *kmc_krealloc(void *object, size_t new_size, size_t align) nogil
    int kmc_krealloc_in_place(void *object, size_t new_size, size_t align) nogil
    size_t kmc_ksize(const void *object) nogil
    kmc_status kmc_kfree(void *object) nogil
    void kmc_kmalloc_large_stats(kmc_kmalloc_large_stats_t *out) nogil
    size_t kmc_kmalloc_shrink() nogil
    size_t kmc_kmalloc_align(size_t size, size_t align) nogil
