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

typedef struct kmcpy_cache_ops_s kmcpy_cache_ops_t;
typedef struct HandleObject HandleObject;

typedef struct CacheObject {
    PyObject_HEAD
    kmc_cache_t *cache;           /* NULL once destroyed */
    const kmcpy_cache_ops_t *ops; /* its type's: private or shared */
    PyObject *ctor;               /* callable or NULL */
    PyObject *track;              /* callable(event, address) or NULL: STORE_USER */
    PyObject *ctor_error;         /* exception raised by ctor during the last grow */
    PyObject *dict;               /* instance attributes: see Cache_Type */
    PyObject *weakrefs;
    Py_ssize_t size; /* the object size, cached for handle creation */
    int in_ctor;     /* ctor calls running: a slab is being built */
    long ctor_pid;   /* the process they run in: a forked child's copy of
                      * in_ctor counts threads it does not have */
    int initialised; /* __init__ succeeded once (else "uninitialised") */
    int shared;      /* its engine cache is shared (made by SharedCache's
                      * __init__ or attach, not by Cache.__init__) */
} CacheObject;

/* What a private cache and a shared one do differently, under the methods
 * they share (cache_type.c). Each type's method table lists the same
 * functions with its own docstrings: CPython 3.11 calls a C method through
 * its fast path only on an instance of exactly the method's type, so
 * SharedCache lists them again rather than inheriting them. The ops are the
 * type's, chosen when the object is made. */
struct kmcpy_cache_ops_s {
    const char *what;          /* in __exit__'s warning: "the cache" */
    const char *object_what;   /* the same for one of its handles */
    PyTypeObject *handle_type; /* what free() takes */
    const char *not_handle;    /* free()'s words for anything else */
    int shared;                /* the engine cache its methods want */
    /* 0 if the methods may run, or -1 with an exception (kmcpy_alive) */
    int (*alive)(CacheObject *self);
    /* one object, or @n into @ptrs; their generations (shared caches) into
     * @gens. The first NULL on failure, the second KMC_OK or not. */
    void *(*alloc)(CacheObject *self, int zero, uint32_t *gen);
    kmc_status (*alloc_bulk)(CacheObject *self, size_t n, void **ptrs, uint32_t *gens, int zero);
    /* the handle of @p (@size bytes, generation @gen), just allocated, traced
     * by tracemalloc; NULL (@p still live) on failure */
    HandleObject *(*handle)(CacheObject *self, void *p, Py_ssize_t size, uint32_t gen);
    void (*give_back)(CacheObject *self, void *p, uint32_t gen); /* @p has no handle */
    /* free_bulk once the cache is alive and @items is a tuple */
    PyObject *(*free_bulk)(CacheObject *self, PyObject *items);
    /* destroy(), which close() and __exit__ call. Each type's table lists
     * its own: Cache.destroy() of a SharedCache that Cache.__init__
     * initialised destroys the private cache it holds. */
    PyObject *(*destroy)(CacheObject *self, PyObject *ignored);
    /* kmcpy_handle_free of one of its handles; NULL: the private cache's */
    int (*free_handle)(HandleObject *handle);
};

extern const kmcpy_cache_ops_t kmcpy_shared_ops; /* shared_type.c */

/* 0 if @self's methods may run: alive, holding the kind of engine cache its
 * type's methods want (Cache.__init__ can give a SharedCache a private one).
 * The common case is a test; only an error calls the type's check. */
static inline int kmcpy_alive(CacheObject *self)
{
    if (self->cache && self->shared == self->ops->shared)
        return 0;
    return self->ops->alive(self);
}

int kmcpy_ctor_running(const CacheObject *self); /* in this process */

/* A handle: one object of one cache. */
struct HandleObject {
    PyObject_HEAD
    char *ptr;          /* NULL once freed */
    Py_ssize_t size;    /* len(); at most the cache's size */
    Py_ssize_t exports; /* live buffer views */
    CacheObject *owner; /* strong reference; NULL for kmalloc's pages and
                              zero-size objects, which no cache holds */
};

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
    /* the process's attachments, which references resolve to (shared_type.c) */
    struct SharedCacheObject *next, *prev; /* the list, while linked */
    uint64_t used;                         /* when a reference last named it */
    int linked;                            /* in the list */
    int kept;                              /* the list holds a reference to it */
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

/* The engine's constructor hook for caches with a Python ctor (cache_type.c). */
int kmcpy_call_ctor(void *object, size_t size, void *arg);
/* A cache name argument as UTF-8, or NULL with an exception (cache_type.c). */
const char *kmcpy_cache_name_arg(PyObject *name);
int kmcpy_ssize_value(PyObject *arg, const char *what, Py_ssize_t *out);
int kmcpy_check_ctor(PyObject *ctor); /* callable or None; -1: TypeError */
int kmcpy_check_cache_args(Py_ssize_t size, Py_ssize_t align, Py_ssize_t flags,
                           PyObject *ctor); /* -1: refused */
int kmcpy_debug_flags(PyObject *name, Py_ssize_t *flags, PyObject *ctor);
int kmcpy_check_poison_ctor(unsigned long long flags, PyObject *ctor); /* -1: refused */
/* __init__'s "initialised twice" (TypeError): before its arguments are read,
 * and (@again) after the Python code that reading them ran. */
int kmcpy_check_uninitialised(const CacheObject *self, int again);
/* The arguments every cache's __init__ takes, ctor apart, as values; the
 * name's UTF-8 is owned by @name. Python code runs (__index__). */
typedef struct kmcpy_cache_args_s {
    const char *name;
    Py_ssize_t size, align, flags;
} kmcpy_cache_args_t;
int kmcpy_cache_arg_values(PyObject *name, PyObject *size, PyObject *align, PyObject *flags,
                           kmcpy_cache_args_t *out);
/* Fill in @self around engine cache @made, its ctor @ctor (no Python code
 * ran since it was made), then tell the package through the facade's
 * @hook. 0, or -1 with an exception and @made released. */
int kmcpy_cache_adopt(CacheObject *self, kmc_cache_t *made, PyObject *ctor, const char *hook);
/* Raise for @status from an engine call: ValueError for KMC_EINVAL, else
 * through the error factory; an exception is set even when the factory
 * chose to go on, since the caller cannot. Returns NULL. */
PyObject *kmcpy_raise_status(kmc_status status);
/* One item of free_bulk: a live, unviewed handle of @self? 0 if so, -1
 * with an exception set, 1 when the error factory chose to go on. */
int kmcpy_check_bulk_item(CacheObject *self, PyObject *item, Py_ssize_t i);
/* After the checks of free_bulk's @items ran Python code: each whose
 * pointer was kept in @ptrs (NULL: skipped) still has it and no view?
 * 0, or -1 with an exception. */
int kmcpy_bulk_unchanged(PyObject *items, void *const *ptrs);

/* The methods of Cache that SharedCache's table lists again (see
 * kmcpy_cache_ops_t), and those of Object that SharedObject's does. */
PyObject *kmcpy_cache_alloc(CacheObject *self, PyObject *ignored);
PyObject *kmcpy_cache_zalloc(CacheObject *self, PyObject *ignored);
PyObject *kmcpy_cache_alloc_bulk(CacheObject *self, PyObject *args, PyObject *kwds);
PyObject *kmcpy_cache_free(CacheObject *self, PyObject *obj);
PyObject *kmcpy_cache_free_bulk(CacheObject *self, PyObject *objs);
PyObject *kmcpy_cache_exit(CacheObject *self, PyObject *args);
PyObject *kmcpy_handle_free_method(HandleObject *self, PyObject *ignored);
PyObject *kmcpy_handle_enter(HandleObject *self, PyObject *ignored);
PyObject *kmcpy_handle_exit(HandleObject *self, PyObject *args);
int kmcpy_handle_check_live(const HandleObject *self); /* ValueError once freed */
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

/* Handles are made and dropped on every alloc/free: each handle type keeps
 * some of its own for reuse (a handle of a Python subclass goes to tp_free).
 * Not thread-safe without the GIL, which every caller holds. */
#define KMCPY_HANDLE_POOL_MAX 256
typedef struct kmcpy_handle_pool_s {
    PyTypeObject *type;
    int n;
    PyObject *free[KMCPY_HANDLE_POOL_MAX];
} kmcpy_handle_pool_t;

/* A new handle of @pool's type, its fields to be filled in, not yet tracked
 * by the GC; NULL with MemoryError. */
static inline PyObject *kmcpy_handle_take(kmcpy_handle_pool_t *pool)
{
    if (pool->n) {
        PyObject *self = pool->free[--pool->n];
        return PyObject_Init(self, pool->type);
    }
    return (PyObject *)PyObject_GC_New(PyObject, pool->type);
}

/* The end of a handle's dealloc, once it is untracked and cleared. */
static inline void kmcpy_handle_put(kmcpy_handle_pool_t *pool, PyObject *self)
{
    if (pool->n < KMCPY_HANDLE_POOL_MAX && Py_TYPE(self) == pool->type)
        pool->free[pool->n++] = self;
    else
        Py_TYPE(self)->tp_free(self);
}

HandleObject *kmcpy_handle_new(CacheObject *owner, void *ptr, Py_ssize_t size);
/* A handle of @size bytes for @p (generation @gen in a shared cache), just
 * allocated from @cache, reported to the cache's tracker; on failure @p goes
 * back and NULL is returned. */
PyObject *kmcpy_adopt(CacheObject *cache, void *p, Py_ssize_t size, uint32_t gen);
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

/* allocinfo.c: bytes by call site (kmemcache.allocinfo). While
 * kmcpy_allocinfo_on, each traced object is recorded with the Python line
 * that allocated it, and forgotten when it is freed. @how: 0, or
 * KMCPY_ALLOCINFO_NO_GIL_MAYBE from NumPy's handler (the GIL may not be
 * held). Which memory group an object is charged to, the engine says. */
#define KMCPY_ALLOCINFO_NO_GIL_MAYBE 4
extern int kmcpy_allocinfo_on; /* written with the GIL held, read anywhere */
void kmcpy_allocinfo_record(const void *p, Py_ssize_t size, int how);
void kmcpy_allocinfo_forget(const void *p);
/* Append the largest call sites of @group's objects (its children's
 * included) to the report text @out, written up to @at of @size bytes;
 * returns the new @at. Nothing without the GIL or when allocinfo is off. */
size_t kmcpy_allocinfo_report(const kmc_group_t *group, char *out, size_t at, size_t size);
extern PyMethodDef kmcpy_allocinfo_methods[]; /* _allocinfo_start, ... */

static inline int kmcpy_allocinfo_active(void)
{
    return __builtin_expect(__atomic_load_n(&kmcpy_allocinfo_on, __ATOMIC_RELAXED), 0);
}

/* tracemalloc: every object a handle stands for is traced while its handle
 * holds it, in kmemcache's own domain, with the size asked for (len());
 * zero-size objects, which all share one address, are not. When tracemalloc
 * is not tracing, each call tests one flag and returns (about ten
 * instructions, no GIL work: CPython 3.10 to 3.13). allocinfo is told of the
 * same objects: off, one more test. */
static inline void kmcpy_trace(const void *p, Py_ssize_t size)
{
    if (size > 0) {
        (void)PyTraceMalloc_Track(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p, (size_t)size);
        if (kmcpy_allocinfo_active())
            kmcpy_allocinfo_record(p, size, 0);
    }
}

static inline void kmcpy_untrace(const void *p)
{
    (void)PyTraceMalloc_Untrack(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p);
    if (kmcpy_allocinfo_active())
        kmcpy_allocinfo_forget(p);
}

/* An object resized in place to @size: traced again, its call site now the
 * caller's (its memory group's charge stays where it was: the engine's). */
static inline void kmcpy_retrace(const void *p, Py_ssize_t size)
{
    (void)PyTraceMalloc_Untrack(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p);
    if (size > 0) {
        (void)PyTraceMalloc_Track(KMEMCACHE_TRACE_DOMAIN, (uintptr_t)p, (size_t)size);
        if (kmcpy_allocinfo_active())
            kmcpy_allocinfo_record(p, size, 0);
    } else if (kmcpy_allocinfo_active()) {
        kmcpy_allocinfo_forget(p);
    }
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
