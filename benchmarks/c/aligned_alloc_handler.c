/*
 * aligned_alloc_handler.c - the best NEP 49 handler a NumPy user can write
 * without kmemcache: C functions over glibc's aligned_alloc, in a capsule
 * named "mem_handler", installed once with PyDataMem_SetHandler (through
 * kmemcache.numpy.set_handler), so no Python runs per allocation.
 *
 * handler(align) returns the capsule for an alignment (a power of two from
 * 16 to 4096). Built by benchmarks/_c_handler.py; no NumPy header is
 * needed: NEP 49's structs are declared as NumPy declares them (version 1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} allocator_t;

typedef struct {
    char name[127];
    uint8_t version;
    allocator_t allocator;
} handler_t;

#define ALIGN(ctx) ((size_t)(uintptr_t)(ctx))

/* aligned_alloc wants a size that is a multiple of the alignment */
static void *a_malloc(void *ctx, size_t size)
{
    size_t a = ALIGN(ctx);
    return aligned_alloc(a, ((size ? size : 1) + a - 1) & ~(a - 1));
}

static void *a_calloc(void *ctx, size_t nelem, size_t elsize)
{
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size))
        return NULL;
    void *p = a_malloc(ctx, size);
    if (p)
        memset(p, 0, size);
    return p;
}

static void *a_realloc(void *ctx, void *ptr, size_t size)
{
    void *q = a_malloc(ctx, size);
    if (q && ptr) {
        size_t old = malloc_usable_size(ptr);
        memcpy(q, ptr, old < size ? old : size);
        free(ptr);
    }
    return q;
}

static void a_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    free(ptr);
}

#define COUNT 9 /* 16 .. 4096 */
static handler_t handlers[COUNT];
static PyObject *capsules[COUNT];

static PyObject *handler(PyObject *self, PyObject *arg)
{
    (void)self;
    long align = PyLong_AsLong(arg);
    if (align == -1 && PyErr_Occurred())
        return NULL;
    if (align < 16 || align > 4096 || (align & (align - 1))) {
        PyErr_SetString(PyExc_ValueError, "align must be a power of two from 16 to 4096");
        return NULL;
    }
    int i = __builtin_ctzl((unsigned long)align) - 4;
    if (!capsules[i]) {
        handler_t *h = &handlers[i];
        snprintf(h->name, sizeof(h->name), "aligned_alloc align=%ld", align);
        h->version = 1;
        h->allocator = (allocator_t){(void *)(uintptr_t)align, a_malloc, a_calloc, a_realloc,
                                     a_free};
        if (!(capsules[i] = PyCapsule_New(h, "mem_handler", NULL)))
            return NULL;
    }
    Py_INCREF(capsules[i]);
    return capsules[i];
}

static PyMethodDef methods[] = {
    {"handler", handler, METH_O, "The NEP 49 handler capsule for an alignment."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "aligned_alloc_handler", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit_aligned_alloc_handler(void) { return PyModule_Create(&module_def); }
