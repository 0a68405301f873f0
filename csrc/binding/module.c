/*
 * module.c - the extension module kmemcache._kmemcache: its types, its
 * exception family, its constants, and the one error path.
 *
 * Errors: every engine failure becomes an exception made by a factory that
 * the Python package registers (it formats the report and applies the
 * on-error policy: raise, warn and go on, or abort). Without a factory the
 * exception is made here from the engine's one-line message.
 */
#include "binding.h"

PyObject *kmcpy_slab_error;
static PyObject *double_free_error, *invalid_free_error, *cache_busy_error, *redzone_error,
    *poison_error, *corruption_error, *stale_object_error, *memory_limit_error;
static PyObject *error_factory; /* callable(kind, report_dict) -> exception or None */
PyObject *kmcpy_facade;

extern PyMethodDef kmcpy_kmalloc_methods[]; /* kmalloc_funcs.c: kmalloc, kfree, ... */
extern PyMethodDef kmcpy_numpy_methods[];   /* numpy_handler.c: the NEP 49 handlers */
PyObject *kmcpy_stats_layout(PyObject *module, PyObject *ignored); /* cache_type.c */
PyObject *kmcpy_stats_docs(PyObject *module, PyObject *ignored);   /* cache_type.c */

PyObject *kmcpy_exception_for(kmc_status status)
{
    switch (status) {
    case KMC_ENOMEM:
        return PyExc_MemoryError;
    case KMC_EINVAL:
    case KMC_ECTOR:
        return PyExc_ValueError;
    case KMC_EDOUBLE_FREE:
        return double_free_error;
    case KMC_EINVALID_FREE:
        return invalid_free_error;
    case KMC_EBUSY:
        return cache_busy_error;
    case KMC_EREDZONE:
        return redzone_error;
    case KMC_EPOISON:
        return poison_error;
    case KMC_ECORRUPT:
        return corruption_error;
    case KMC_ESTALE:
        return stale_object_error;
    case KMC_EEXIST:
        return PyExc_FileExistsError;
    case KMC_ENOENT:
        return PyExc_FileNotFoundError;
    case KMC_EOS:
        return PyExc_OSError;
    case KMC_ELIMIT:
        return memory_limit_error;
    case KMC_OK:
        break;
    }
    return kmcpy_slab_error;
}

static PyObject *report_dict(const kmc_report_t *r)
{
    PyObject *dump = PyBytes_FromStringAndSize((const char *)r->dump, (Py_ssize_t)r->dump_len);
    if (!dump)
        return NULL;
    PyObject *d = Py_BuildValue("{s:s, s:s, s:s, s:K, s:n, s:n, s:n, s:n, s:i, s:i, s:K, s:N}",
                                "kind", kmc_status_name(r->status), "message", r->message, "cache",
                                r->cache, "address", (unsigned long long)r->object, "object_size",
                                (Py_ssize_t)r->object_size, "offset", (Py_ssize_t)r->offset,
                                "length", (Py_ssize_t)r->length, "problems",
                                (Py_ssize_t)r->problems, "found", r->found, "expected", r->expected,
                                "dump_start", (unsigned long long)r->dump_start, "dump", dump);
    return d;
}

/* The factory is Python code: it may replace itself or run anything, so it
 * is held while it runs, and what it returns is checked. */
static int raise_report(const kmc_report_t *r)
{
    PyObject *cls = kmcpy_exception_for(r->status);
    if (r->status == KMC_ELIMIT) {
        PyObject *exc = kmcpy_limit_error(cls, r);
        if (exc) {
            PyErr_SetObject(cls, exc);
            Py_DECREF(exc);
        }
        return 0;
    }
    if (r->status == KMC_EEXIST || r->status == KMC_ENOENT || r->status == KMC_EOS) {
        /* an OSError of the errno the OS gave */
        int err = r->os_error               ? r->os_error
                  : r->status == KMC_EEXIST ? EEXIST
                  : r->status == KMC_ENOENT ? ENOENT
                                            : EIO;
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, r->message);
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return 0;
    }
    if (!error_factory || cls == PyExc_MemoryError || cls == PyExc_ValueError) {
        PyErr_SetString(cls, r->message[0] ? r->message : kmc_status_name(r->status));
        return 0;
    }
    PyObject *d = report_dict(r);
    if (!d)
        return 0;
    PyObject *factory = Py_NewRef(error_factory);
    PyObject *exc = PyObject_CallFunctionObjArgs(factory, cls, d, NULL);
    Py_DECREF(factory);
    Py_DECREF(d);
    if (!exc)
        return 0; /* the factory raised (its own error, or a warning as error) */
    if (exc == Py_None) {
        Py_DECREF(exc);
        return 1;
    }
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_Format(PyExc_TypeError,
                     "the kmemcache error factory returned %.100s, not an exception or None",
                     Py_TYPE(exc)->tp_name);
        Py_DECREF(exc);
        return 0;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return 0;
}

void kmcpy_write_unraisable(const char *fmt, ...)
{
    char where[160];
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(where, sizeof(where), fmt, ap);
    va_end(ap);
#if PY_VERSION_HEX >= 0x030D0000
    PyErr_FormatUnraisable("Exception ignored %s", where);
#else
    _PyErr_WriteUnraisableMsg(where, NULL);
#endif
}

PyObject *kmcpy_context_exit(PyObject *self, PyObject *args, int (*close)(PyObject *self),
                             const char *what)
{
    PyObject *exc_type, *exc, *tb;
    if (!PyArg_UnpackTuple(args, "__exit__", 3, 3, &exc_type, &exc, &tb))
        return NULL;
    Py_INCREF(exc); /* the cleanup runs Python code (finalizers, trackers) */
    int rc = close(self);
    if (rc == 0 || exc == Py_None) {
        Py_DECREF(exc);
        return rc == 0 ? Py_NewRef(Py_None) : NULL;
    }
    /* the block's exception goes on; the cleanup's is told, not raised */
    PyObject *type, *value, *trace;
    PyErr_Fetch(&type, &value, &trace);
    PyErr_NormalizeException(&type, &value, &trace);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    PyObject *note = text ? PyUnicode_FromFormat("while leaving the with block, %s could not be "
                                                 "closed: %s: %U",
                                                 what, ((PyTypeObject *)type)->tp_name, text)
                          : NULL;
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(trace);
    if (!note) {
        PyErr_Clear();
        Py_DECREF(exc);
        Py_RETURN_NONE;
    }
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "%U", note) < 0)
        kmcpy_write_unraisable("in the __exit__ of %s", what); /* a warning made an error */
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *r = PyObject_CallMethod(exc, "add_note", "O", note);
    if (r)
        Py_DECREF(r);
    else
        PyErr_Clear(); /* not an exception that takes notes */
#endif
    Py_DECREF(note);
    Py_DECREF(exc);
    Py_RETURN_NONE;
}

int kmcpy_raise(kmc_status status)
{
    kmc_report_t r = *kmc_last_report();
    if (r.status != status) {
        memset(&r, 0, sizeof(r));
        r.status = status;
        r.found = r.expected = -1;
        snprintf(r.message, sizeof(r.message), "%s", kmc_status_name(status));
    }
    return raise_report(&r);
}

int kmcpy_raise_message(kmc_status status, CacheObject *cache, const void *object, const char *fmt,
                        ...)
{
    kmc_report_t r;
    memset(&r, 0, sizeof(r));
    r.status = status;
    r.found = r.expected = -1;
    r.object = (uintptr_t)object;
    if (cache && cache->cache) {
        snprintf(r.cache, sizeof(r.cache), "%s", kmc_cache_name(cache->cache));
        r.object_size = kmc_cache_size(cache->cache);
    }
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(r.message, sizeof(r.message), fmt, ap);
    va_end(ap);
    return raise_report(&r);
}

static PyObject *set_error_factory(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (arg != Py_None && !PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the error factory must be callable or None");
        return NULL;
    }
    Py_XSETREF(error_factory, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyObject *set_facade(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_XSETREF(kmcpy_facade, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

/* Every live cache's counters. The engine's list holds caches that are not
 * pinned, and making Python objects can run the GC, whose finalizers may
 * destroy a cache: so the counters are all copied out first, with no Python
 * object made, and the dicts built from the copies. */
static PyObject *caches(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    size_t n = kmc_caches(NULL, 0);
    kmc_cache_t **all = PyMem_Malloc((n ? n : 1) * sizeof(*all));
    kmcpy_cache_snapshot_t *snaps = PyMem_Malloc((n ? n : 1) * sizeof(*snaps));
    if (!all || !snaps) {
        PyMem_Free(all);
        PyMem_Free(snaps);
        return PyErr_NoMemory();
    }
    size_t now = kmc_caches(all, n); /* C code may have made or destroyed some */
    if (now < n)
        n = now;
    for (size_t i = 0; i < n; i++)
        kmcpy_cache_snapshot(all[i], &snaps[i]);
    PyMem_Free(all);
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = kmcpy_stats_dict(&snaps[i]);
        if (!d || PyList_Append(list, d) < 0)
            Py_CLEAR(list);
        Py_XDECREF(d);
    }
    PyMem_Free(snaps);
    return list;
}

static PyObject *os_fail_after(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    kmc_os_fail_after(n);
    Py_RETURN_NONE;
}

static PyObject *owner_of(PyObject *Py_UNUSED(module), PyObject *arg)
{
    void *p = PyLong_AsVoidPtr(arg);
    if (!p && PyErr_Occurred())
        return NULL;
    void *start = NULL;
    kmc_cache_t *c = kmc_owner(p, &start);
    if (!c)
        Py_RETURN_NONE;
    return Py_BuildValue("(sN)", kmc_cache_name(c), PyLong_FromVoidPtr(start));
}

static PyObject *flip_free_bit(PyObject *Py_UNUSED(module), PyObject *arg)
{
    void *p = PyLong_AsVoidPtr(arg);
    if (!p && PyErr_Occurred())
        return NULL;
    kmc_status st = kmc_debug_flip_free_bit(p);
    if (st != KMC_OK) {
        PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* An engine option by name: its value before, and the new one set (for
 * benchmarks that compare with and without per-thread caches). */
static PyObject *set_option(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *name;
    long value;
    if (!PyArg_ParseTuple(args, "sl:_set_option", &name, &value))
        return NULL;
    for (int i = 0; i < KMC_OPTIONS; i++)
        if (strcmp(kmc_option_name((kmc_option)i), name) == 0) {
            long before = kmc_option_get((kmc_option)i);
            if (kmc_option_set((kmc_option)i, value) != KMC_OK) {
                PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
                return NULL;
            }
            return PyLong_FromLong(before);
        }
    PyErr_Format(PyExc_ValueError, "no engine option %s", name);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"_set_error_factory", set_error_factory, METH_O,
     "_set_error_factory($module, factory, /)\n--\n\n"},
    {"_set_facade", set_facade, METH_O,
     "_set_facade($module, facade, /)\n--\n\nHooks of the Python package for caches: cache_flags, "
     "attach, make_stats, leaks."},
    {"_caches", caches, METH_NOARGS,
     "_caches($module, /)\n--\n\nEvery live cache's counters, oldest first."},
    {"_stats_layout", kmcpy_stats_layout, METH_NOARGS,
     "_stats_layout($module, /)\n--\n\n"
     "((name, offset, size), ...) of kmc_stats_t's fields in struct order, and its sizeof."},
    {"_stats_docs", kmcpy_stats_docs, METH_NOARGS,
     "_stats_docs($module, /)\n--\n\n"
     "((name, comment), ...) of kmc_stats_t's fields in struct order, in kmc.h's words."},
    {"_capi_layout", kmcpy_capi_layout, METH_NOARGS,
     "_capi_layout($module, /)\n--\n\n"
     "((name, offset), ...) of the C API table's functions, its sizeof, and its version."},
    {"_os_fail_after", os_fail_after, METH_O,
     "_os_fail_after($module, n, /)\n--\n\nTest hook: the OS page source fails after n more "
     "requests (n < 0: never)."},
    {"_owner_of", owner_of, METH_O,
     "_owner_of($module, address, /)\n--\n\n(cache name, object start) of the engine object "
     "holding an address, or None."},
    {"_set_option", set_option, METH_VARARGS,
     "_set_option($module, name, value, /)\n--\n\nSet engine option name (KMEMCACHE_<NAME>); "
     "return its value before."},
    {"_flip_free_bit", flip_free_bit, METH_O,
     "_flip_free_bit($module, address, /)\n--\n\nTest hook: corrupt the free bitmap bit of the "
     "slot holding an address."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kmemcache._kmemcache",
    .m_doc = "The C core of kmemcache: slab caches with guaranteed alignment.",
    .m_size = -1,
    .m_methods = module_methods,
};

static PyObject *new_error(PyObject *m, const char *name, PyObject *base, const char *doc)
{
    char qualified[96];
    snprintf(qualified, sizeof(qualified), "kmemcache.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(qualified, doc, base, NULL);
    if (e && PyModule_AddObjectRef(m, name, e) < 0)
        Py_CLEAR(e);
    return e;
}

PyMODINIT_FUNC PyInit__kmemcache(void)
{
    if (PyType_Ready(&Cache_Type) < 0 || PyType_Ready(&Handle_Type) < 0)
        return NULL;
    SharedCache_Type.tp_base = &Cache_Type;
    SharedHandle_Type.tp_base = &Handle_Type;
    if (PyType_Ready(&SharedCache_Type) < 0 || PyType_Ready(&SharedHandle_Type) < 0 ||
        PyType_Ready(&MemoryGroup_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Cache", (PyObject *)&Cache_Type) < 0 ||
        PyModule_AddObjectRef(m, "Object", (PyObject *)&Handle_Type) < 0 ||
        PyModule_AddObjectRef(m, "SharedCache", (PyObject *)&SharedCache_Type) < 0 ||
        PyModule_AddObjectRef(m, "SharedObject", (PyObject *)&SharedHandle_Type) < 0 ||
        PyModule_AddObjectRef(m, "MemoryGroup", (PyObject *)&MemoryGroup_Type) < 0 ||
        PyModule_AddFunctions(m, kmcpy_kmalloc_methods) < 0 ||
        PyModule_AddFunctions(m, kmcpy_shared_methods) < 0 ||
        PyModule_AddFunctions(m, kmcpy_numpy_methods) < 0 ||
        PyModule_AddFunctions(m, kmcpy_allocinfo_methods) < 0 || kmcpy_capi_add(m) < 0)
        goto fail;
    if (!(kmcpy_slab_error = new_error(m, "SlabError", NULL,
                                       "Base of the errors the allocator detects.")) ||
        !(double_free_error = new_error(m, "DoubleFreeError", kmcpy_slab_error,
                                        "An object was freed twice.")) ||
        !(invalid_free_error = new_error(m, "InvalidFreeError", kmcpy_slab_error,
                                         "Not an object of this cache, or of any.")) ||
        !(cache_busy_error = new_error(m, "CacheBusyError", kmcpy_slab_error,
                                       "Destroy while objects are live.")) ||
        !(redzone_error = new_error(m, "RedzoneError", kmcpy_slab_error,
                                    "A red zone or slab padding was overwritten.")) ||
        !(poison_error = new_error(m, "PoisonError", kmcpy_slab_error,
                                   "A freed object was written to.")) ||
        !(corruption_error = new_error(m, "CorruptionError", kmcpy_slab_error,
                                       "The allocator's metadata does not add up.")) ||
        !(stale_object_error = new_error(m, "StaleObjectError", kmcpy_slab_error,
                                         "A shared object reference names an object that "
                                         "was freed.")) ||
        !(memory_limit_error = new_error(m, "MemoryLimitError", PyExc_MemoryError,
                                         "An allocation would pass a memory group's limit, or "
                                         "a cache's: nothing was allocated or charged.")))
        goto fail;
    struct {
        const char *name;
        long long value;
    } constants[] = {
        {"MAX_SIZE", (long long)KMC_MAX_SIZE},
        {"MAX_ALIGN", (long long)KMC_MAX_ALIGN},
        {"MIN_ALIGN", (long long)KMC_MIN_ALIGN},
        {"CACHE_LINE", (long long)KMC_CACHE_LINE},
        {"PAGE_SIZE", (long long)kmc_page_size()},
        {"FLAG_CONSISTENCY_CHECKS", KMC_CONSISTENCY_CHECKS},
        {"FLAG_RED_ZONE", KMC_RED_ZONE},
        {"FLAG_POISON", KMC_POISON},
        {"FLAG_HWCACHE_ALIGN", KMC_HWCACHE_ALIGN},
        {"FLAG_STORE_USER", KMC_STORE_USER},
        {"POISON_INUSE", KMC_POISON_INUSE},
        {"POISON_FREE", KMC_POISON_FREE},
        {"POISON_END", KMC_POISON_END},
        {"RED_INACTIVE", KMC_RED_INACTIVE},
        {"RED_ACTIVE", KMC_RED_ACTIVE},
        {"SHARED_MAX_PROCS", KMC_SHARED_MAX_PROCS},
        {"SHARED_DEFAULT_PROCS", KMC_SHARED_DEFAULT_PROCS},
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(m, constants[i].name, (long)constants[i].value) < 0)
            goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
