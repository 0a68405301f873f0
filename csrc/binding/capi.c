/*
 * capi.c - the C API capsule: the engine's functions in a versioned table
 * (src/kmemcache/include/kmemcache.h), so that other extensions reach the
 * engine without its symbols, which the shared object does not export.
 *
 * The table is filled at compile time and never changes. Two entries are
 * wrappers rather than the engine's own functions: the ones that fill a
 * struct the caller owns take the caller's sizeof, so that an extension
 * built when the struct was shorter gets its prefix and nothing past it.
 */
#include "binding.h" /* and kmemcache.h, for the table */

static void cache_stats_sized(kmc_cache_t *cache, kmc_stats_t *out, size_t out_size)
{
    kmc_stats_t s;
    kmc_cache_stats(cache, &s);
    memcpy(out, &s, out_size < sizeof(s) ? out_size : sizeof(s));
}

static void kmalloc_large_stats_sized(kmc_kmalloc_large_stats_t *out, size_t out_size)
{
    kmc_kmalloc_large_stats_t s;
    kmc_kmalloc_large_stats(&s);
    memcpy(out, &s, out_size < sizeof(s) ? out_size : sizeof(s));
}

static const kmemcache_capi_t capi = {
    .size = sizeof(kmemcache_capi_t),
    .version = KMEMCACHE_CAPI_VERSION,
    .kmc_cache_create = kmc_cache_create,
    .kmc_cache_destroy = kmc_cache_destroy,
    .kmc_cache_alloc = kmc_cache_alloc,
    .kmc_cache_alloc_bulk = kmc_cache_alloc_bulk,
    .kmc_cache_free = kmc_cache_free,
    .kmc_cache_check_free = kmc_cache_check_free,
    .kmc_cache_shrink = kmc_cache_shrink,
    .kmc_cache_validate = kmc_cache_validate,
    .kmc_cache_stats_sized = cache_stats_sized,
    .kmc_cache_name = kmc_cache_name,
    .kmc_cache_size = kmc_cache_size,
    .kmc_cache_align = kmc_cache_align,
    .kmc_cache_flags = kmc_cache_flags,
    .kmc_cache_for_each_live = kmc_cache_for_each_live,
    .kmc_owner = kmc_owner,
    .kmc_free = kmc_free,
    .kmc_caches = kmc_caches,
    .kmc_thread_flush = kmc_thread_flush,
    .kmc_last_report = kmc_last_report,
    .kmc_status_name = kmc_status_name,
    .kmc_option_get = kmc_option_get,
    .kmc_option_set = kmc_option_set,
    .kmc_option_name = kmc_option_name,
    .kmc_page_size = kmc_page_size,
    .kmc_kmalloc_classes = kmc_kmalloc_classes,
    .kmc_kmalloc_index = kmc_kmalloc_index,
    .kmc_kmalloc_cache = kmc_kmalloc_cache,
    .kmc_kmalloc_install = kmc_kmalloc_install,
    .kmc_kmalloc = kmc_kmalloc,
    .kmc_kzalloc = kmc_kzalloc,
    .kmc_kcalloc = kmc_kcalloc,
    .kmc_krealloc = kmc_krealloc,
    .kmc_krealloc_in_place = kmc_krealloc_in_place,
    .kmc_ksize = kmc_ksize,
    .kmc_kfree = kmc_kfree,
    .kmc_kmalloc_large_stats_sized = kmalloc_large_stats_sized,
    .kmc_kmalloc_shrink = kmc_kmalloc_shrink,
    .kmc_kmalloc_align = kmc_kmalloc_align,
};

/* The members of the table, by name and offset, for callers that read it
 * without a compiler (the benchmarks, through ctypes). */
#define MEMBER(name)                            \
    {                                           \
#name, offsetof(kmemcache_capi_t, name) \
    }
static const struct {
    const char *name;
    size_t offset;
} members[] = {
    MEMBER(kmc_cache_create),
    MEMBER(kmc_cache_destroy),
    MEMBER(kmc_cache_alloc),
    MEMBER(kmc_cache_alloc_bulk),
    MEMBER(kmc_cache_free),
    MEMBER(kmc_cache_check_free),
    MEMBER(kmc_cache_shrink),
    MEMBER(kmc_cache_validate),
    MEMBER(kmc_cache_stats_sized),
    MEMBER(kmc_cache_name),
    MEMBER(kmc_cache_size),
    MEMBER(kmc_cache_align),
    MEMBER(kmc_cache_flags),
    MEMBER(kmc_cache_for_each_live),
    MEMBER(kmc_owner),
    MEMBER(kmc_free),
    MEMBER(kmc_caches),
    MEMBER(kmc_thread_flush),
    MEMBER(kmc_last_report),
    MEMBER(kmc_status_name),
    MEMBER(kmc_option_get),
    MEMBER(kmc_option_set),
    MEMBER(kmc_option_name),
    MEMBER(kmc_page_size),
    MEMBER(kmc_kmalloc_classes),
    MEMBER(kmc_kmalloc_index),
    MEMBER(kmc_kmalloc_cache),
    MEMBER(kmc_kmalloc_install),
    MEMBER(kmc_kmalloc),
    MEMBER(kmc_kzalloc),
    MEMBER(kmc_kcalloc),
    MEMBER(kmc_krealloc),
    MEMBER(kmc_krealloc_in_place),
    MEMBER(kmc_ksize),
    MEMBER(kmc_kfree),
    MEMBER(kmc_kmalloc_large_stats_sized),
    MEMBER(kmc_kmalloc_shrink),
    MEMBER(kmc_kmalloc_align),
};
#undef MEMBER

int kmcpy_capi_add(PyObject *module)
{
    PyObject *capsule = PyCapsule_New((void *)&capi, KMEMCACHE_CAPSULE_NAME, NULL);
    if (!capsule)
        return -1;
    int rc = PyModule_AddObjectRef(module, "_C_API", capsule);
    Py_DECREF(capsule);
    if (rc < 0 || PyModule_AddIntConstant(module, "CAPI_VERSION", KMEMCACHE_CAPI_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "TRACE_DOMAIN", (long)KMEMCACHE_TRACE_DOMAIN) < 0)
        return -1;
    return 0;
}

PyObject *kmcpy_capi_layout(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = (Py_ssize_t)(sizeof(members) / sizeof(members[0]));
    PyObject *fields = PyTuple_New(n);
    for (Py_ssize_t i = 0; fields && i < n; i++) {
        PyObject *t = Py_BuildValue("(sn)", members[i].name, (Py_ssize_t)members[i].offset);
        if (!t)
            Py_CLEAR(fields);
        else
            PyTuple_SET_ITEM(fields, i, t);
    }
    return fields ? Py_BuildValue("(Nnn)", fields, (Py_ssize_t)sizeof(kmemcache_capi_t),
                                  (Py_ssize_t)KMEMCACHE_CAPI_VERSION)
                  : NULL;
}
