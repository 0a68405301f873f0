/*
 * kmemcache.h - kmemcache's C API, for other extension modules.
 *
 * The engine's functions under their kmc.h names and signatures, reached
 * through a table of function pointers that the kmemcache extension exports
 * in a capsule (the engine's own symbols are not exported from its shared
 * object), as NumPy's import_array() does:
 *
 *     #include <kmemcache.h>        // include_dirs=[kmemcache.get_include()]
 *
 *     PyMODINIT_FUNC PyInit_mymod(void)
 *     {
 *         if (kmemcache_import() < 0)
 *             return NULL;          // ImportError or RuntimeError set
 *         ...
 *     }
 *
 *     kmc_cache_t *c;
 *     if (kmc_cache_create("ring", 1512, 64, 0, NULL, NULL, &c) != KMC_OK) ...
 *     void *p = kmc_cache_alloc(c, 1);  // any thread, with or without the GIL
 *     kmc_cache_free(c, p);
 *
 * Every translation unit that calls the API includes this header and calls
 * kmemcache_import() once first (or, in the other files of a module, defines
 * KMEMCACHE_NO_IMPORT before including it and shares the module's table:
 * see KMEMCACHE_API_NAME below). What each function does is written in
 * kmc.h, shipped beside this file; the same rules hold (every function is
 * safe without the GIL, errors go to kmc_last_report()).
 *
 * Versions. The table starts with its size and version; functions are only
 * ever appended, so an extension built against an older header reads the
 * prefix it knows and keeps working with a newer kmemcache, and
 * kmemcache_import() refuses a kmemcache older than the header (a table
 * shorter than the one the extension was built for). Structs the engine
 * fills in (kmc_stats_t, kmc_kmalloc_large_stats_t) only gain fields at
 * their end, and the API passes the caller's sizeof so that an older
 * caller's struct is filled up to its own size, never past it.
 *
 * Not in the API: the test hooks kmc_os_fail_after, kmc_os_barrier_hook
 * and kmc_debug_flip_free_bit.
 *
 * Objects allocated through this API are not traced by tracemalloc (the
 * Python face traces its objects in domain KMEMCACHE_TRACE_DOMAIN); a
 * caller that wants them traced calls PyTraceMalloc_Track itself.
 */
#ifndef KMEMCACHE_H
#define KMEMCACHE_H

#include <Python.h>

#include "kmc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The capsule's name: the attribute _C_API of kmemcache._kmemcache. */
#define KMEMCACHE_CAPSULE_NAME "kmemcache._kmemcache._C_API"

/* The tracemalloc domain of kmemcache's objects (tracemalloc.DomainFilter).
 * NumPy's arrays are traced by NumPy in its own domain, 389047. */
#define KMEMCACHE_TRACE_DOMAIN 0x6b6d63u /* "kmc": 7040355 */

#if defined(__GNUC__) || defined(__clang__)
#define KMEMCACHE_UNUSED __attribute__((unused))
#else
#define KMEMCACHE_UNUSED
#endif

/* This header's table version: 1 + the number of appends since the first. */
#define KMEMCACHE_CAPI_VERSION 1

typedef struct kmemcache_capi_s {
    size_t size;      /* sizeof the table the running kmemcache gives */
    unsigned version; /* its KMEMCACHE_CAPI_VERSION */

    /* --- version 1 ------------------------------------------------------ */
    kmc_status (*kmc_cache_create)(const char *name, size_t size, size_t align,
                                   unsigned flags, kmc_ctor_fn ctor, void *ctor_arg,
                                   kmc_cache_t **out);
    kmc_status (*kmc_cache_destroy)(kmc_cache_t *cache);
    void *(*kmc_cache_alloc)(kmc_cache_t *cache, int zero);
    kmc_status (*kmc_cache_alloc_bulk)(kmc_cache_t *cache, size_t n, void **out, int zero);
    kmc_status (*kmc_cache_free)(kmc_cache_t *cache, void *object);
    kmc_status (*kmc_cache_check_free)(kmc_cache_t *cache, const void *object);
    size_t (*kmc_cache_shrink)(kmc_cache_t *cache);
    kmc_status (*kmc_cache_validate)(kmc_cache_t *cache, size_t *problems);
    /* kmc_cache_stats(cache, out) fills sizeof(*out) bytes of it */
    void (*kmc_cache_stats_sized)(kmc_cache_t *cache, kmc_stats_t *out, size_t out_size);
    const char *(*kmc_cache_name)(const kmc_cache_t *cache);
    size_t (*kmc_cache_size)(const kmc_cache_t *cache);
    size_t (*kmc_cache_align)(const kmc_cache_t *cache);
    unsigned (*kmc_cache_flags)(const kmc_cache_t *cache);
    void (*kmc_cache_for_each_live)(kmc_cache_t *cache, void (*fn)(void *object, void *arg),
                                    void *arg);
    kmc_cache_t *(*kmc_owner)(const void *address, void **object_start);
    kmc_status (*kmc_free)(void *object);
    size_t (*kmc_caches)(kmc_cache_t **out, size_t max);
    void (*kmc_thread_flush)(void);
    const kmc_report_t *(*kmc_last_report)(void);
    const char *(*kmc_status_name)(kmc_status status);
    long (*kmc_option_get)(kmc_option option);
    kmc_status (*kmc_option_set)(kmc_option option, long value);
    const char *(*kmc_option_name)(kmc_option option);
    size_t (*kmc_page_size)(void);
    const kmc_kmalloc_class_t *kmc_kmalloc_classes; /* KMC_KMALLOC_CLASSES of them */
    int (*kmc_kmalloc_index)(size_t size, size_t align);
    kmc_cache_t *(*kmc_kmalloc_cache)(unsigned index);
    kmc_status (*kmc_kmalloc_install)(unsigned index, kmc_cache_t *cache);
    void *(*kmc_kmalloc)(size_t size, size_t align);
    void *(*kmc_kzalloc)(size_t size, size_t align);
    void *(*kmc_kcalloc)(size_t n, size_t size);
    void *(*kmc_krealloc)(void *object, size_t new_size, size_t align);
    int (*kmc_krealloc_in_place)(void *object, size_t new_size, size_t align);
    size_t (*kmc_ksize)(const void *object);
    kmc_status (*kmc_kfree)(void *object);
    /* kmc_kmalloc_large_stats(out) fills sizeof(*out) bytes of it */
    void (*kmc_kmalloc_large_stats_sized)(kmc_kmalloc_large_stats_t *out, size_t out_size);
    size_t (*kmc_kmalloc_shrink)(void);
    size_t (*kmc_kmalloc_align)(size_t size, size_t align);
    /* --- version 2 appends here ----------------------------------------- */
} kmemcache_capi_t;

#ifndef KMEMCACHE_BUILDING_CAPSULE /* everyone but kmemcache itself */

/* The table pointer, one per translation unit unless shared: a module whose
 * files all call the API defines KMEMCACHE_API_NAME to one name in every
 * file, and KMEMCACHE_NO_IMPORT in all but the one that calls
 * kmemcache_import(). */
#ifndef KMEMCACHE_API_NAME
#define KMEMCACHE_API_NAME kmemcache_capi
#define KMEMCACHE_API_STORAGE static
#else
#define KMEMCACHE_API_STORAGE
#endif

#ifdef KMEMCACHE_NO_IMPORT
extern const kmemcache_capi_t *KMEMCACHE_API_NAME;
#else
KMEMCACHE_API_STORAGE const kmemcache_capi_t *KMEMCACHE_API_NAME KMEMCACHE_UNUSED = NULL;

/* kmemcache_import - import kmemcache and take its function table.
 * Call with the GIL held, before any other function of this header (module
 * init is the place). It also makes the kmalloc size classes' caches as the
 * Python package makes them, so that KMEMCACHE_DEBUG applies to them.
 * Return: 0, or -1 with a Python exception set (ImportError when kmemcache
 * cannot be imported or is older than this header). */
KMEMCACHE_UNUSED static int kmemcache_import(void)
{
    PyObject *module = PyImport_ImportModule("kmemcache");
    if (!module)
        return -1;
    PyObject *capsule = PyObject_CallMethod(module, "_c_api", NULL);
    Py_DECREF(module);
    if (!capsule)
        return -1;
    const kmemcache_capi_t *api =
        (const kmemcache_capi_t *)PyCapsule_GetPointer(capsule, KMEMCACHE_CAPSULE_NAME);
    Py_DECREF(capsule);
    if (!api)
        return -1;
    if (api->size < sizeof(kmemcache_capi_t) || api->version < KMEMCACHE_CAPI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "this module was built against kmemcache C API version %d, but the "
                     "kmemcache installed gives version %u: upgrade kmemcache",
                     KMEMCACHE_CAPI_VERSION, api->version);
        return -1;
    }
    KMEMCACHE_API_NAME = api;
    return 0;
}
#endif /* KMEMCACHE_NO_IMPORT */

/* The engine's names, through the table. */
#define kmc_cache_create         (KMEMCACHE_API_NAME->kmc_cache_create)
#define kmc_cache_destroy        (KMEMCACHE_API_NAME->kmc_cache_destroy)
#define kmc_cache_alloc          (KMEMCACHE_API_NAME->kmc_cache_alloc)
#define kmc_cache_alloc_bulk     (KMEMCACHE_API_NAME->kmc_cache_alloc_bulk)
#define kmc_cache_free           (KMEMCACHE_API_NAME->kmc_cache_free)
#define kmc_cache_check_free     (KMEMCACHE_API_NAME->kmc_cache_check_free)
#define kmc_cache_shrink         (KMEMCACHE_API_NAME->kmc_cache_shrink)
#define kmc_cache_validate       (KMEMCACHE_API_NAME->kmc_cache_validate)
#define kmc_cache_stats(cache, out) \
    (KMEMCACHE_API_NAME->kmc_cache_stats_sized((cache), (out), sizeof(*(out))))
#define kmc_cache_name           (KMEMCACHE_API_NAME->kmc_cache_name)
#define kmc_cache_size           (KMEMCACHE_API_NAME->kmc_cache_size)
#define kmc_cache_align          (KMEMCACHE_API_NAME->kmc_cache_align)
#define kmc_cache_flags          (KMEMCACHE_API_NAME->kmc_cache_flags)
#define kmc_cache_for_each_live  (KMEMCACHE_API_NAME->kmc_cache_for_each_live)
#define kmc_owner                (KMEMCACHE_API_NAME->kmc_owner)
#define kmc_free                 (KMEMCACHE_API_NAME->kmc_free)
#define kmc_caches               (KMEMCACHE_API_NAME->kmc_caches)
#define kmc_thread_flush         (KMEMCACHE_API_NAME->kmc_thread_flush)
#define kmc_last_report          (KMEMCACHE_API_NAME->kmc_last_report)
#define kmc_status_name          (KMEMCACHE_API_NAME->kmc_status_name)
#define kmc_option_get           (KMEMCACHE_API_NAME->kmc_option_get)
#define kmc_option_set           (KMEMCACHE_API_NAME->kmc_option_set)
#define kmc_option_name          (KMEMCACHE_API_NAME->kmc_option_name)
#define kmc_page_size            (KMEMCACHE_API_NAME->kmc_page_size)
#define kmc_kmalloc_classes      (KMEMCACHE_API_NAME->kmc_kmalloc_classes)
#define kmc_kmalloc_index        (KMEMCACHE_API_NAME->kmc_kmalloc_index)
#define kmc_kmalloc_cache        (KMEMCACHE_API_NAME->kmc_kmalloc_cache)
#define kmc_kmalloc_install      (KMEMCACHE_API_NAME->kmc_kmalloc_install)
#define kmc_kmalloc              (KMEMCACHE_API_NAME->kmc_kmalloc)
#define kmc_kzalloc              (KMEMCACHE_API_NAME->kmc_kzalloc)
#define kmc_kcalloc              (KMEMCACHE_API_NAME->kmc_kcalloc)
#define kmc_krealloc             (KMEMCACHE_API_NAME->kmc_krealloc)
#define kmc_krealloc_in_place    (KMEMCACHE_API_NAME->kmc_krealloc_in_place)
#define kmc_ksize                (KMEMCACHE_API_NAME->kmc_ksize)
#define kmc_kfree                (KMEMCACHE_API_NAME->kmc_kfree)
#define kmc_kmalloc_large_stats(out) \
    (KMEMCACHE_API_NAME->kmc_kmalloc_large_stats_sized((out), sizeof(*(out))))
#define kmc_kmalloc_shrink       (KMEMCACHE_API_NAME->kmc_kmalloc_shrink)
#define kmc_kmalloc_align        (KMEMCACHE_API_NAME->kmc_kmalloc_align)

#endif /* KMEMCACHE_BUILDING_CAPSULE */

#ifdef __cplusplus
}
#endif
#endif /* KMEMCACHE_H */
