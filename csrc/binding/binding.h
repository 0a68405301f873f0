/*
 * binding.h - what the binding's files share: the Cache and handle types,
 * the exception family, and the error path.
 *
 * Names: functions shared between the binding's files start with kmcpy_
 * (the engine's own prefix, kmc_, is the engine's); the types are plain
 * (CacheObject and Cache_Type; HandleObject and Handle_Type, the handle of
 * one object, which Python calls kmemcache.Object).
 *
 * The binding only translates: arguments in, handles and exceptions out.
 * Policy (what to do on a detected error, how reports read) is Python's,
 * reached through one factory registered by the package at import.
 */
#ifndef KMCPY_BINDING_H
#define KMCPY_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kmc.h"

#define KMEMCACHE_BUILDING_CAPSULE /* the C API's table and constants, no macros */
#include "kmemcache.h"

typedef struct CacheObject {
    PyObject_HEAD
    kmc_cache_t *cache;   /* NULL once destroyed */
    PyObject *ctor;       /* callable or NULL */
    PyObject *track;      /* callable(event, address) or NULL: STORE_USER */
    PyObject *ctor_error; /* exception raised by ctor during the last grow */
    PyObject *dict;       /* instance attributes; made with the object, see
                            * Cache_Type */
    PyObject *weakrefs;
    Py_ssize_t size; /* the object size, cached for handle creation */
    int in_ctor;     /* ctor calls running: a slab is being built */
    long ctor_pid;   /* the process they run in: a forked child's copy of
                      * in_ctor counts threads it does not have */
    int initialised; /* __init__ succeeded once (else "uninitialised") */
    int shared;      /* a SharedCacheObject (shared_type.c) */
} CacheObject;

int kmcpy_ctor_running(const CacheObject *self); /* in this process */

/* A handle: one object of one cache. */
typedef struct HandleObject {
    PyObject_HEAD
    char *ptr;          /* NULL once freed */
    Py_ssize_t size;    /* len(); at most the cache's size */
    Py_ssize_t exports; /* live buffer views */
    CacheObject *owner; /* strong reference; NULL for kmalloc's pages and
                              zero-size objects, which no cache holds */
} HandleObject;

extern PyTypeObject Cache_Type;
extern PyTypeObject Handle_Type;

/* A shared cache (kmemcache.SharedCache, shared_type.c): a Cache whose
 * engine cache lives in a shared-memory region. */
typedef struct SharedCacheObject {
    CacheObject base;
    uint64_t nonce;     /* the region's, for references to it */
    PyObject *dups;     /* {(offset, gen): n}: handles of an object beyond
                            * the first in this process; NULL until needed */
    Py_ssize_t handles; /* live handles of this cache in this process */
} SharedCacheObject;

/* A handle of a shared object (kmemcache.SharedObject): a handle with the
 * generation of the object it names. */
typedef struct SharedHandleObject {
    HandleObject base;
    uint32_t gen;
} SharedHandleObject;

extern PyTypeObject MemoryGroup_Type; /* group_type.c */
PyObject *kmcpy_limit_error(PyObject *cls, const kmc_report_t *report);
#define KMCPY_LIMIT_REPORT 1024 /* bytes of kmcpy_limit_report's text, at most */
void kmcpy_limit_report(const kmc_report_t *report, char *out, size_t size);
int kmcpy_limit_arg(PyObject *arg, const char *what, uint64_t *out); /* None: 0 */

extern PyTypeObject SharedCache_Type;
extern PyTypeObject SharedHandle_Type;
extern PyMethodDef kmcpy_shared_methods[]; /* module functions: _shared_unlink, ... */

/* The name a report gives @handle's cache: its name, "kmalloc pages",
 * "kmalloc(0)" or "(destroyed)". */
const char *kmcpy_handle_owner_name(const HandleObject *handle);

/* kmcpy_handle_free for a shared object: free it for every process. */
int kmcpy_shared_handle_free(HandleObject *self);

/* The engine's constructor hook for caches with a Python ctor (cache_type.c). */
int kmcpy_call_ctor(void *object, size_t size, void *arg);
/* A cache name argument as UTF-8, or NULL with an exception (cache_type.c). */
const char *kmcpy_cache_name_arg(PyObject *name);
int kmcpy_ssize_value(PyObject *arg, const char *what, Py_ssize_t *out);
int kmcpy_check_cache_args(Py_ssize_t size, Py_ssize_t align, Py_ssize_t flags,
                           PyObject *ctor); /* -1: refused */
int kmcpy_debug_flags(PyObject *name, Py_ssize_t *flags, PyObject *ctor);
int kmcpy_check_poison_ctor(unsigned long long flags, PyObject *ctor);         /* -1: refused */
int kmcpy_bulk_args(PyObject *args, PyObject *kwds, Py_ssize_t *n, int *zero); /* alloc_bulk's */
/* Raise for a failed allocation, the ctor's own exception if it failed:
 * 0 with an exception set, 1 to retry (the error factory chose to go on). */
int kmcpy_raise_alloc_failure(CacheObject *self);

/* The Python package's hooks for caches (kmemcache.cache._Facade), or NULL:
 * cache_flags(name, flags, has_ctor) -> flags, attach(cache), make_stats(dict),
 * leaks(cache). */
extern PyObject *kmcpy_facade;
PyObject *kmcpy_facade_attr(const char *name); /* new reference, or NULL */

/* Exceptions, by kmc_status; created at module init. */
extern PyObject *kmcpy_slab_error;
PyObject *kmcpy_exception_for(kmc_status status);

/* Raise the exception for @status with the calling thread's engine report,
 * through the registered factory. Returns 1 when the factory chose to go on
 * (no exception set; the caller retries or ignores), 0 when an exception is
 * set. */
int kmcpy_raise(kmc_status status);

/* Raise for a misuse found by the binding itself (freed handle, ...). */
int kmcpy_raise_message(kmc_status status, CacheObject *cache, const void *object, const char *fmt,
                        ...);

HandleObject *kmcpy_handle_new(CacheObject *owner, void *ptr, Py_ssize_t size);
/* A handle of @size bytes for @p, just allocated from @cache, reported to the
 * cache's tracker; on failure @p goes back and NULL is returned. */
PyObject *kmcpy_adopt(CacheObject *cache, void *p, Py_ssize_t size);
int kmcpy_handle_free(HandleObject *self); /* 0 ok or retried-away, -1 error */
int kmcpy_cache_check_alive(CacheObject *self);
int kmcpy_track(CacheObject *cache, const char *event, const void *address);

/* __exit__ of a context manager whose cleanup is @close(@self) (0, or -1
 * with an exception set). With no exception propagating (@args' second item
 * None), a cleanup error is raised; with one, the cleanup error never
 * replaces it: it becomes a RuntimeWarning (reported as unraisable if the
 * warning is an error) and a note on the propagating exception. Returns
 * None: a with block never swallows its exception. */
PyObject *kmcpy_context_exit(PyObject *self, PyObject *args, int (*close)(PyObject *self),
                             const char *what);

/* Report the exception set as unraisable (sys.unraisablehook), "Exception
 * ignored " followed by @fmt. Never pass an object being deallocated: that
 * would bring it back to life. */
void kmcpy_write_unraisable(const char *fmt, ...);

/* A cache's name and counters, copied out so that they can be read after
 * Python code has run (and destroyed the cache, maybe). */
typedef struct kmcpy_cache_snapshot_s {
    char name[KMC_NAME_MAX];
    kmc_stats_t stats;
} kmcpy_cache_snapshot_t;

void kmcpy_cache_snapshot(kmc_cache_t *cache, kmcpy_cache_snapshot_t *out);
PyObject *kmcpy_stats_dict(const kmcpy_cache_snapshot_t *snap);

/* tracemalloc: every object a handle stands for is traced while its handle
 * holds it, in kmemcache's own domain, with the size asked for (len());
 * zero-size objects, which all share one address, are not. When tracemalloc
 * is not tracing, each call tests one flag and returns (about ten
 * instructions, no GIL work: CPython 3.10 to 3.13). */
static inline void kmcpy_trace(const void *p, Py_ssize_t size)
{
    if (size > 0)
        (void)PyTraceMalloc_Track(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p, (size_t)size);
}

static inline void kmcpy_untrace(const void *p)
{
    (void)PyTraceMalloc_Untrack(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p);
}

/* capi.c: the C API capsule (kmemcache._kmemcache._C_API) and the module's
 * CAPI_VERSION and TRACE_DOMAIN constants; _capi_layout(). */
int kmcpy_capi_add(PyObject *module);
PyObject *kmcpy_capi_layout(PyObject *module, PyObject *ignored);

/* kmalloc_funcs.c: make every size class's cache through the package's
 * factory (so that KMEMCACHE_DEBUG applies to them) before C code, which
 * may run without the GIL, allocates from them. 0, or -1 with an exception. */
int kmcpy_kmalloc_prepare(void);

#endif /* KMCPY_BINDING_H */
