/*
 * numpy_handler.c - NumPy's arrays on the kmalloc family: a NEP 49
 * data-memory handler (PyDataMem_Handler) per alignment, and the calls that
 * install one, made through NumPy's C API table.
 *
 * NumPy is not needed to build this file: NEP 49's structs are a stable ABI
 * (version 1, declared below as NumPy's ndarraytypes.h declares them), and
 * PyDataMem_SetHandler / GetHandler are read from NumPy's API table at run
 * time, at the slots NumPy's __multiarray_api.h gives them since 1.22.
 *
 *   malloc(n)       kmc_kmalloc(n, align)            the hot path: the class's
 *   calloc(k, n)    kmc_kzalloc(k * n, align)        cache, or pages (fresh
 *                                                    pages are not memset)
 *   realloc(p, n)   in place if the object serves n at align, else a new
 *                   object, the contents copied (ksize: what p holds), p freed
 *   free(p, n)      kmc_kfree(p): the owner comes from the address; NumPy's
 *                   n is not used (it is sometimes wrong)
 *
 * Size 0 is served as 1 byte, so that every array has memory of its own.
 * The functions run without the GIL (NumPy calls them with it released)
 * and take it only to report damage a free found (red zones and poison of
 * KMEMCACHE_DEBUG): the report goes through the package's error policy and
 * is written as unraisable (a free cannot raise), then the memory is freed
 * all the same. NumPy traces the arrays itself (tracemalloc domain
 * 389047), so nothing here traces them again; allocinfo, when on, records
 * each array with its call site (allocinfo.c), forgetting it before the
 * free, since once freed another thread may be handed the same address.
 */
#include "binding.h"

/* NEP 49, version 1 (NumPy's PyDataMemAllocator and PyDataMem_Handler). */
typedef struct nep49_allocator_s {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} nep49_allocator_t;

typedef struct nep49_handler_s {
    char name[127];
    uint8_t version;
    nep49_allocator_t allocator;
} nep49_handler_t;

#define NEP49_CAPSULE_NAME "mem_handler"

/* NumPy's C API table: the slots used here (numpy/_core/include/numpy/
 * __multiarray_api.h), and the feature version that has them. */
#define NPY_SLOT_GET_FEATURE_VERSION 211 /* PyArray_GetNDArrayCFeatureVersion */
#define NPY_SLOT_SET_HANDLER         304 /* PyDataMem_SetHandler, NumPy >= 1.22 */
#define NPY_SLOT_GET_HANDLER         305 /* PyDataMem_GetHandler, NumPy >= 1.22 */
#define NPY_1_22_API_VERSION         0x0000000f

/* Alignments served: 16 B to KMC_MAX_ALIGN, one handler each. */
#define MIN_SHIFT 4
#define MAX_SHIFT 21
#define HANDLERS  (MAX_SHIFT - MIN_SHIFT + 1)
_Static_assert(((size_t)1 << MAX_SHIFT) == KMC_MAX_ALIGN, "the last handler is KMC_MAX_ALIGN");

#define ALIGN_OF(ctx) ((size_t)(uintptr_t)(ctx)) /* ctx is the alignment */

/* --- the handler's functions: the engine only, no GIL -------------------------- */

static void free_failed(void *p, kmc_status st);

/* A memory group's limit refused this thread's last array: its report, made
 * then (the frees NumPy does before it raises clear the engine's), for the
 * note kmemcache.numpy adds to NumPy's MemoryError (_numpy_limit_note). In
 * memory of the thread's own, freed when it exits: this module's
 * thread-locals are static TLS, which is small. */
static pthread_key_t note_key;
static pthread_once_t note_once = PTHREAD_ONCE_INIT;

static void note_key_make(void) { (void)pthread_key_create(&note_key, free); }

static void *refused(void)
{
    const kmc_report_t *r = kmc_last_report();
    if (pthread_once(&note_once, note_key_make) != 0)
        return NULL;
    char *note = pthread_getspecific(note_key);
    if (r->status != KMC_ELIMIT) { /* another failure: no note, nor an older one */
        if (note)
            note[0] = 0;
        return NULL;
    }
    if (!note && (note = malloc(KMCPY_LIMIT_REPORT)) && pthread_setspecific(note_key, note) != 0) {
        free(note);
        note = NULL;
    }
    if (note)
        kmcpy_limit_report(r, note, KMCPY_LIMIT_REPORT);
    return NULL;
}

/* allocinfo: the array's call site, when the GIL is held (else site 0) */
static __attribute__((noinline)) void *record(void *p, size_t size)
{
    kmcpy_allocinfo_record(p, (Py_ssize_t)size, KMCPY_ALLOCINFO_NO_GIL_MAYBE);
    return p;
}

static void *h_malloc(void *ctx, size_t size)
{
    void *p = kmc_kmalloc(size ? size : 1, ALIGN_OF(ctx));
    if (!p)
        return refused();
    return kmcpy_allocinfo_active() ? record(p, size) : p;
}

static void *h_calloc(void *ctx, size_t nelem, size_t elsize)
{
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size))
        return NULL;
    void *p = kmc_kzalloc(size ? size : 1, ALIGN_OF(ctx));
    if (!p)
        return refused();
    return kmcpy_allocinfo_active() ? record(p, size) : p;
}

static void h_free(void *ctx, void *p, size_t size)
{
    (void)ctx;
    (void)size; /* not trusted: the owner and its size come from the address */
    if (kmcpy_allocinfo_active())
        kmcpy_allocinfo_forget(p); /* first: once freed, another thread may get p */
    kmc_status st = kmc_kfree(p);
    if (__builtin_expect(st != KMC_OK, 0))
        free_failed(p, st);
}

/* What kmc_krealloc does, with the old object's free checked: damage found
 * there is reported, not dropped. */
static void *h_realloc(void *ctx, void *p, size_t size)
{
    size_t align = ALIGN_OF(ctx);
    if (!size)
        size = 1;
    if (!p)
        return h_malloc(ctx, size);
    if (kmc_krealloc_in_place(p, size, align))
        return kmcpy_allocinfo_active() ? record(p, size) : p;
    size_t old = kmc_ksize(p);
    void *q = kmc_kmalloc(size, align);
    if (!q)
        return refused(); /* p untouched, as realloc leaves it */
    memcpy(q, p, old < size ? old : size);
    h_free(ctx, p, old);
    return kmcpy_allocinfo_active() ? record(q, size) : q;
}

static int is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* A free that the engine refused: report it under the package's policy,
 * then free the memory (each check repairs what it reports, so a second
 * try succeeds). A double or invalid free has nothing to free. */
static __attribute__((noinline)) void free_failed(void *p, kmc_status st)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (int tries = 0; st != KMC_OK && tries < 4; tries++) {
        if (is_finalizing())
            fprintf(stderr, "kmemcache: freeing a NumPy array's data at exit: %s\n",
                    kmc_last_report()->message);
        else if (!kmcpy_raise(st))
            kmcpy_write_unraisable("while freeing the data of a NumPy array at %p", p);
        if (st == KMC_EDOUBLE_FREE || st == KMC_EINVALID_FREE)
            break;
        st = kmc_kfree(p);
    }
    PyErr_Restore(type, value, tb);
    PyGILState_Release(gil);
}

/* Filled once, under the GIL, before the first capsule is made; named
 * "kmemcache align=64" (what numpy.core.multiarray.get_handler_name says). */
static nep49_handler_t handlers[HANDLERS];
static PyObject *capsules[HANDLERS]; /* made on first use, kept */

static void handlers_init(void)
{
    for (int i = 0; i < HANDLERS; i++) {
        nep49_handler_t *h = &handlers[i];
        snprintf(h->name, sizeof(h->name), "kmemcache align=%zu", (size_t)1 << (i + MIN_SHIFT));
        h->version = 1;
        h->allocator = (nep49_allocator_t){(void *)((uintptr_t)1 << (i + MIN_SHIFT)), h_malloc,
                                           h_calloc, h_realloc, h_free};
    }
}

/* --- NumPy's API table ----------------------------------------------------------- */

static void **numpy_api; /* NumPy's PyArray_API, once found */

static void **numpy_table(void)
{
    if (numpy_api)
        return numpy_api;
    PyObject *m = PyImport_ImportModule("numpy._core._multiarray_umath");
    if (!m && PyErr_ExceptionMatches(PyExc_ModuleNotFoundError)) {
        PyErr_Clear(); /* NumPy 1.x */
        m = PyImport_ImportModule("numpy.core._multiarray_umath");
    }
    if (!m)
        return NULL;
    PyObject *capsule = PyObject_GetAttrString(m, "_ARRAY_API");
    Py_DECREF(m);
    if (!capsule)
        return NULL;
    void **api = PyCapsule_CheckExact(capsule) ? PyCapsule_GetPointer(capsule, NULL) : NULL;
    Py_DECREF(capsule);
    if (!api) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError, "NumPy's _ARRAY_API is not a capsule");
        return NULL;
    }
    unsigned (*feature_version)(void) = (unsigned (*)(void))api[NPY_SLOT_GET_FEATURE_VERSION];
    if (feature_version() < NPY_1_22_API_VERSION) {
        PyErr_SetString(PyExc_ImportError,
                        "kmemcache.numpy needs NumPy 1.22 or later (NEP 49's data-memory "
                        "handlers)");
        return NULL;
    }
    numpy_api = api;
    return api;
}

/* --- the module's functions ---------------------------------------------------- */

static PyObject *numpy_handler(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_ssize_t align = PyLong_AsSsize_t(arg);
    if (align == -1 && PyErr_Occurred())
        return NULL;
    if (align < ((Py_ssize_t)1 << MIN_SHIFT) || align > ((Py_ssize_t)1 << MAX_SHIFT) ||
        (align & (align - 1))) {
        PyErr_Format(PyExc_ValueError, "align must be a power of two from %d to %zu, not %zd",
                     1 << MIN_SHIFT, (size_t)KMC_MAX_ALIGN, align);
        return NULL;
    }
    int i = __builtin_ctzll((unsigned long long)align) - MIN_SHIFT;
    if (!capsules[i]) {
        /* the size classes are made through the package first, with its debug
         * options: the handler runs without the GIL and cannot make them */
        if (kmcpy_kmalloc_prepare() < 0)
            return NULL;
        if (!handlers[0].version)
            handlers_init();
        PyObject *c = PyCapsule_New(&handlers[i], NEP49_CAPSULE_NAME, NULL);
        if (!c)
            return NULL;
        if (capsules[i])
            Py_DECREF(c); /* made meanwhile, while Python code ran */
        else
            capsules[i] = c;
    }
    return Py_NewRef(capsules[i]);
}

static PyObject *numpy_set_handler(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (arg != Py_None && !PyCapsule_IsValid(arg, NEP49_CAPSULE_NAME)) {
        PyErr_Format(PyExc_TypeError,
                     "a NumPy data-memory handler is a capsule named 'mem_handler', or None "
                     "for NumPy's default; not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    void **api = numpy_table();
    if (!api)
        return NULL;
    PyObject *(*set)(PyObject *) = (PyObject * (*)(PyObject *)) api[NPY_SLOT_SET_HANDLER];
    return set(arg == Py_None ? NULL : arg);
}

static PyObject *numpy_get_handler(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    void **api = numpy_table();
    if (!api)
        return NULL;
    PyObject *(*get)(void) = (PyObject * (*)(void)) api[NPY_SLOT_GET_HANDLER];
    return get();
}

/* The alignment of a kmemcache handler, or 0 for any other capsule. */
static PyObject *numpy_handler_align(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (!PyCapsule_IsValid(arg, NEP49_CAPSULE_NAME))
        return PyLong_FromLong(0);
    void *h = PyCapsule_GetPointer(arg, NEP49_CAPSULE_NAME);
    for (int i = 0; i < HANDLERS; i++)
        if (h == &handlers[i] && handlers[i].version)
            return PyLong_FromSize_t((size_t)1 << (i + MIN_SHIFT));
    return PyLong_FromLong(0);
}

/* The report of the limit that refused this thread's last array, once. */
static PyObject *numpy_limit_note(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    if (pthread_once(&note_once, note_key_make) != 0)
        Py_RETURN_NONE;
    char *note = pthread_getspecific(note_key);
    if (!note || !note[0])
        Py_RETURN_NONE;
    PyObject *text = PyUnicode_FromFormat("kmemcache: %s", note);
    note[0] = 0;
    return text;
}

PyMethodDef kmcpy_numpy_methods[] = {
    {"_numpy_limit_note", numpy_limit_note, METH_NOARGS,
     "_numpy_limit_note($module, /)\n--\n\nThe report of the memory limit that refused the "
     "calling thread's last array, or None; cleared by the call."},
    {"_numpy_handler", numpy_handler, METH_O,
     "_numpy_handler($module, align, /)\n--\n\n"
     "The NEP 49 handler capsule for arrays aligned to align bytes (one per alignment)."},
    {"_numpy_set_handler", numpy_set_handler, METH_O,
     "_numpy_set_handler($module, handler, /)\n--\n\n"
     "PyDataMem_SetHandler: make handler (None: NumPy's default) current; return the previous."},
    {"_numpy_get_handler", numpy_get_handler, METH_NOARGS,
     "_numpy_get_handler($module, /)\n--\n\nPyDataMem_GetHandler: the current handler."},
    {"_numpy_handler_align", numpy_handler_align, METH_O,
     "_numpy_handler_align($module, handler, /)\n--\n\n"
     "The alignment of a kmemcache handler capsule, 0 for any other."},
    {NULL, NULL, 0, NULL},
};
