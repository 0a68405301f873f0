/*
 * binding.h - what the binding's files share: the Cache and Object types,
 * the exception family, and the error path.
 *
 * The binding only translates: arguments in, handles and exceptions out.
 * Policy (what to do on a detected error, how reports read) is Python's,
 * reached through one factory registered by the package at import.
 */
#ifndef KMC_BINDING_H
#define KMC_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kmc.h"

typedef struct CacheObject {
    PyObject_HEAD
    kmc_cache_t *cache;    /* NULL once destroyed */
    PyObject *ctor;        /* callable or NULL */
    PyObject *track;       /* callable(event, address) or NULL: STORE_USER */
    PyObject *ctor_error;  /* exception raised by ctor during the last grow */
    PyObject *dict;        /* instance attributes; made with the object, see
                            * KmcCache_Type */
    PyObject *weakrefs;
    Py_ssize_t size;       /* the object size, cached for handle creation */
    int in_ctor;           /* ctor calls running: a slab is being built */
} CacheObject;

/* A handle: one object of one cache. */
typedef struct ObjectObject {
    PyObject_HEAD
    char *ptr;             /* NULL once freed */
    Py_ssize_t size;       /* len(); at most the cache's size */
    Py_ssize_t exports;    /* live buffer views */
    CacheObject *owner;    /* strong reference; NULL for kmalloc's pages and
                              zero-size objects, which no cache holds */
} ObjectObject;

extern PyTypeObject KmcCache_Type;
extern PyTypeObject KmcObject_Type;

/* The Python package's hooks for caches (kmemcache.cache._Facade), or NULL:
 * cache_flags(name, flags) -> flags, attach(cache), make_stats(dict),
 * leaks(cache). */
extern PyObject *kmc_facade;

/* Exceptions, by kmc_status; created at module init. */
extern PyObject *KmcSlabError;
PyObject *kmc_exception_for(kmc_status status);

/* Raise the exception for @status with the calling thread's engine report,
 * through the registered factory. Returns 1 when the factory chose to go on
 * (no exception set; the caller retries or ignores), 0 when an exception is
 * set. */
int kmc_raise(kmc_status status);

/* Raise for a misuse found by the binding itself (freed handle, ...). */
int kmc_raise_message(kmc_status status, CacheObject *cache, const void *object,
                      const char *fmt, ...);

ObjectObject *kmc_object_new(CacheObject *owner, void *ptr, Py_ssize_t size);
/* A handle of @size bytes for @p, just allocated from @cache, reported to the
 * cache's tracker; on failure @p goes back and NULL is returned. */
PyObject *kmc_adopt(CacheObject *cache, void *p, Py_ssize_t size);
int kmc_object_free(ObjectObject *self);   /* 0 ok or retried-away, -1 error */
int kmc_cache_check_alive(CacheObject *self);
int kmc_track(CacheObject *cache, const char *event, const void *address);

#endif /* KMC_BINDING_H */
