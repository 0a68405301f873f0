/*
 * capi_user.c - an extension module that calls the engine through
 * kmemcache's C API only (kmemcache.h), as a user's extension would.
 *
 * churn(n) runs n rounds of cache and kmalloc allocations with the GIL
 * released; Python threads call it at once. Built by tests/test_capi.py.
 * With CAPI_USER_CACHES_ONLY, it calls nothing past the cache functions:
 * the part of the table an older header had.
 */
#define PY_SSIZE_T_CLEAN
#include <kmemcache.h>
#include <string.h>

static kmc_cache_t *cache; /* "capi-ring": 1512-byte objects at alignment 64 */

/* Objects alive at once per round, filled with a pattern and checked. */
#define BATCH 64

static long churn_rounds(long rounds)
{
    void *objs[BATCH];
    long errors = 0;
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < BATCH; i++) {
            objs[i] = kmc_cache_alloc(cache, 1);
            if (!objs[i] || ((uintptr_t)objs[i] & 63) || ((unsigned char *)objs[i])[1511])
                errors++;
            if (objs[i])
                memset(objs[i], i, 1512);
        }
        for (int i = 0; i < BATCH; i++) {
            if (objs[i] && ((unsigned char *)objs[i])[1511] != (unsigned char)i)
                errors++;
            if (objs[i] && kmc_cache_free(cache, objs[i]) != KMC_OK)
                errors++;
        }
#ifndef CAPI_USER_CACHES_ONLY
        for (int i = 0; i < BATCH; i++) {
            size_t size = (size_t)(i * 97 % 20000) + 1; /* slab classes and pages */
            void *p = kmc_kzalloc(size, 64);
            if (!p || ((uintptr_t)p & 63) || ((unsigned char *)p)[size - 1] ||
                kmc_ksize(p) < size)
                errors++;
            void *q = p ? kmc_krealloc(p, size * 2, 64) : NULL;
            if (!q || kmc_kfree(q) != KMC_OK)
                errors++;
        }
#endif
    }
    return errors;
}

static PyObject *churn(PyObject *self, PyObject *arg)
{
    long rounds = PyLong_AsLong(arg);
    if (rounds == -1 && PyErr_Occurred())
        return NULL;
    long errors;
    Py_BEGIN_ALLOW_THREADS
    errors = churn_rounds(rounds);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(errors);
}

/* (active_objs, allocs, frees) of the cache. */
static PyObject *stats(PyObject *self, PyObject *ignored)
{
    kmc_stats_t s;
    kmc_cache_stats(cache, &s);
    return Py_BuildValue("(KKK)", (unsigned long long)s.active_objs,
                         (unsigned long long)s.allocs, (unsigned long long)s.frees);
}

/* A double free is detected and reported through kmc_last_report(). */
static PyObject *double_free(PyObject *self, PyObject *ignored)
{
    void *p = kmc_cache_alloc(cache, 0);
    kmc_cache_free(cache, p);
    kmc_status st = kmc_cache_free(cache, p);
    return Py_BuildValue("(ss)", kmc_status_name(st), kmc_last_report()->message);
}

static PyObject *destroy(PyObject *self, PyObject *ignored)
{
    kmc_status st = kmc_cache_destroy(cache);
    if (st == KMC_OK)
        cache = NULL;
    return PyLong_FromLong(st);
}

#ifndef CAPI_USER_CACHES_ONLY
/* The class kmalloc(size) uses, by name, and the alignment of a kmalloc. */
static PyObject *kmalloc_class(PyObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    int i = kmc_kmalloc_index((size_t)size, 0);
    if (i < 0)
        Py_RETURN_NONE;
    return PyUnicode_FromString(kmc_kmalloc_classes[i].name);
}

/* Allocate with kmc_kmalloc and hand the address to Python (for the
 * debug tests: Python writes past it), or free an address. */
static PyObject *kmalloc_addr(PyObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromVoidPtr(kmc_kmalloc((size_t)size, 0));
}

static PyObject *kfree_addr(PyObject *self, PyObject *arg)
{
    void *p = PyLong_AsVoidPtr(arg);
    if (!p && PyErr_Occurred())
        return NULL;
    kmc_status st = kmc_kfree(p);
    return Py_BuildValue("(ss)", kmc_status_name(st), st ? kmc_last_report()->message : "");
}
#endif

static PyMethodDef methods[] = {
    {"churn", churn, METH_O, NULL},
    {"stats", stats, METH_NOARGS, NULL},
    {"double_free", double_free, METH_NOARGS, NULL},
    {"destroy", destroy, METH_NOARGS, NULL},
#ifndef CAPI_USER_CACHES_ONLY
    {"kmalloc_class", kmalloc_class, METH_O, NULL},
    {"kmalloc_addr", kmalloc_addr, METH_O, NULL},
    {"kfree_addr", kfree_addr, METH_O, NULL},
#endif
    {NULL, NULL, 0, NULL},
};

/* CAPI_USER_MODULE: the module's name, one per build of this file. */
#define NAME_OF(name) #name
#define NAME(name) NAME_OF(name)
#define INIT_NAME(name) PyInit_##name
#define INIT(name) INIT_NAME(name)

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = NAME(CAPI_USER_MODULE), .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC INIT(CAPI_USER_MODULE)(void)
{
    if (kmemcache_import() < 0)
        return NULL;
    if (kmc_cache_create("capi-ring", 1512, 64, 0, NULL, NULL, &cache) != KMC_OK) {
        PyErr_SetString(PyExc_MemoryError, kmc_last_report()->message);
        return NULL;
    }
    return PyModule_Create(&module_def);
}
