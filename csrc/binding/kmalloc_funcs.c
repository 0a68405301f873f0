/*
 * kmalloc_funcs.c - the module-level kmalloc family: kmalloc, kzalloc,
 * kcalloc, krealloc, ksize, kfree.
 *
 * A size class is served by a kmemcache.Cache made on first use by a
 * factory the package registers (so that the cache takes the package's
 * debug options, as any Cache does), kept here for the life of the process
 * and installed in the engine. Large and zero-size objects come from the
 * engine directly; their handles have no cache (owner NULL), and kfree
 * finds their pages from the address.
 *
 * The hot path, kmalloc(n) or kfree(obj) of a small object, is vectorcall
 * argument parsing, a class table load, the cache's fast path and a
 * recycled handle: no Python code and no allocation.
 */
#include "binding.h"

static CacheObject *class_caches[KMC_KMALLOC_CLASSES]; /* strong references */
static PyObject *class_factory; /* callable(name, size, align) -> Cache, or NULL */

/* --- arguments ----------------------------------------------------------------- */

/* @arg as a byte count: TypeError unless an int (bool is not one),
 * ValueError when negative, MemoryError when no object can be that large. */
static int size_arg(PyObject *arg, const char *what, size_t *out)
{
    if (PyLong_CheckExact(arg)) {
        Py_ssize_t v = PyLong_AsSsize_t(arg);
        if (v >= 0) {
            *out = (size_t)v;
            return 0;
        }
        PyErr_Clear(); /* negative or too large: said below */
    }
    if (PyBool_Check(arg) || !PyIndex_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(arg)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (!overflow && v < 0)) {
        PyErr_Format(PyExc_ValueError, "%s must not be negative, not %S", what, arg);
        return -1;
    }
    if (overflow > 0 || (unsigned long long)v > (unsigned long long)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_MemoryError, "%s of %S bytes: no object can be that large", what, arg);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int align_arg(PyObject *arg, size_t *out)
{
    if (!arg) {
        *out = 0;
        return 0;
    }
    if (PyBool_Check(arg) || !PyIndex_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "align must be an int, not %.100s", Py_TYPE(arg)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || (v & (v - 1)) || (unsigned long long)v > KMC_MAX_ALIGN) {
        PyErr_Format(PyExc_ValueError, "align must be 0 or a power of two up to %zu, not %S",
                     (size_t)KMC_MAX_ALIGN, arg);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* Vectorcall arguments by position or keyword into @out (NULL if absent):
 * @names lists them, the first @required must be given. */
static int unpack(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int count, int required, PyObject **out)
{
    if (nargs > count) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, count,
                     nargs);
        return -1;
    }
    for (int i = 0; i < count; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < count && PyUnicode_CompareWithASCIIString(key, names[i]) != 0)
            i++;
        if (i == count) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < required; i++)
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    return 0;
}

/* --- the size classes' caches --------------------------------------------------- */

/* Make size class @i's cache through the factory and install it. Python
 * code runs here, so another thread may have made it meanwhile: the first
 * one stays. */
static CacheObject *class_cache_make(int i)
{
    const kmc_kmalloc_class_t *k = &kmc_kmalloc_classes[i];
    PyObject *factory = Py_NewRef(class_factory ? class_factory : (PyObject *)&Cache_Type);
    PyObject *made = PyObject_CallFunction(factory, "snn", k->name, (Py_ssize_t)k->size,
                                           (Py_ssize_t)k->align);
    Py_DECREF(factory);
    if (!made)
        return NULL;
    if (!PyObject_TypeCheck(made, &Cache_Type) || !((CacheObject *)made)->cache) {
        PyErr_Format(PyExc_TypeError, "the kmalloc cache factory gave %.100s, not a live Cache",
                     Py_TYPE(made)->tp_name);
        Py_DECREF(made);
        return NULL;
    }
    if (class_caches[i]) {
        Py_DECREF(made); /* empty: its dealloc destroys it */
        return class_caches[i];
    }
    CacheObject *c = (CacheObject *)made;
    kmc_status st = kmc_kmalloc_install((unsigned)i, c->cache);
    if (st != KMC_OK) {
        PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
        Py_DECREF(made);
        return NULL;
    }
    class_caches[i] = c; /* keeps the reference: never destroyed */
    return c;
}

int kmcpy_kmalloc_prepare(void)
{
    for (int i = 0; i < KMC_KMALLOC_CLASSES; i++)
        if (!class_caches[i] && !class_cache_make(i))
            return -1;
    return 0;
}

/* Raise for the failed allocation the engine reported: 1 when the error
 * factory chose to go on (retry), 0 with an exception set. */
static int raise_alloc_failure(void)
{
    kmc_status st = kmc_last_report()->status;
    return kmcpy_raise(st == KMC_OK ? KMC_ENOMEM : st);
}

/* kmc_kmalloc does the work, so that the engine knows the size asked for
 * (the kmalloc red zone checks the bytes past it); a size class's cache is
 * made first, through the factory, so that it has the package's debug
 * options, and it owns the handle. */
static PyObject *new_object(size_t size, size_t align, int zero)
{
    int i = kmc_kmalloc_index(size, align);
    CacheObject *c = NULL;
    if (i >= 0 && !(c = class_caches[i]) && !(c = class_cache_make(i)))
        return NULL;
    /* size 0, or pages: a kept run, else a few system calls (kept under the
     * GIL, as malloc's are: releasing it would cost more than most of them) */
    void *p;
    while (!(p = zero ? kmc_kzalloc(size, align) : kmc_kmalloc(size, align)))
        if (!raise_alloc_failure())
            return NULL;
    if (c)
        return kmcpy_adopt(c, p, (Py_ssize_t)size, 0);
    HandleObject *obj = kmcpy_handle_new(NULL, p, (Py_ssize_t)size);
    if (!obj)
        kmc_kfree(p);
    else
        kmcpy_trace(p, (Py_ssize_t)size);
    return (PyObject *)obj;
}

/* --- the functions ---------------------------------------------------------------- */

static const char *const size_align_names[] = {"size", "align"};

static PyObject *alloc_call(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames, int zero)
{
    size_t size, align = 0;
    if (!kwnames && (nargs == 1 || nargs == 2)) { /* the common calls: no keywords */
        if (size_arg(args[0], "size", &size) < 0 || (nargs == 2 && align_arg(args[1], &align) < 0))
            return NULL;
        return new_object(size, align, zero);
    }
    PyObject *a[2];
    if (unpack(fname, args, nargs, kwnames, size_align_names, 2, 1, a) < 0 ||
        size_arg(a[0], "size", &size) < 0 || align_arg(a[1], &align) < 0)
        return NULL;
    return new_object(size, align, zero);
}

static PyObject *py_kmalloc(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    return alloc_call("kmalloc", args, nargs, kwnames, 0);
}

static PyObject *py_kzalloc(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    return alloc_call("kzalloc", args, nargs, kwnames, 1);
}

static PyObject *py_kcalloc(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"n", "size"};
    PyObject *a[2];
    size_t n, size, total;
    if (unpack("kcalloc", args, nargs, kwnames, names, 2, 2, a) < 0 ||
        size_arg(a[0], "n", &n) < 0 || size_arg(a[1], "size", &size) < 0)
        return NULL;
    if (__builtin_mul_overflow(n, size, &total) || total > (size_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_MemoryError, "kcalloc(%zu, %zu): %zu * %zu bytes overflows", n, size, n,
                     size);
        return NULL;
    }
    return new_object(total, 0, 1);
}

static PyObject *py_kfree(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (arg == Py_None)
        Py_RETURN_NONE; /* kfree(NULL) */
    if (!PyObject_TypeCheck(arg, &Handle_Type)) {
        if (!kmcpy_raise_message(KMC_EINVALID_FREE, NULL, NULL,
                                 "Invalid free: %.100s is not a kmemcache object",
                                 Py_TYPE(arg)->tp_name))
            return NULL;
        Py_RETURN_NONE; /* told to go on: nothing to free */
    }
    if (kmcpy_handle_free((HandleObject *)arg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_ksize(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (arg == Py_None)
        return PyLong_FromLong(0); /* ksize(NULL) */
    if (!PyObject_TypeCheck(arg, &Handle_Type)) {
        PyErr_Format(PyExc_TypeError, "ksize() takes a kmemcache object, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    HandleObject *obj = (HandleObject *)arg;
    if (!obj->ptr) {
        PyErr_SetString(PyExc_ValueError, "operation on a freed kmemcache object");
        return NULL;
    }
    size_t n = kmc_ksize(obj->ptr);
    if (!n && obj->size && !kmcpy_raise(kmc_last_report()->status))
        return NULL;
    return PyLong_FromSize_t(n);
}

static PyObject *py_krealloc(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"obj", "new_size", "align"};
    PyObject *a[3];
    size_t size, align;
    if (unpack("krealloc", args, nargs, kwnames, names, 3, 2, a) < 0 ||
        size_arg(a[1], "new_size", &size) < 0 || align_arg(a[2], &align) < 0)
        return NULL;
    if (a[0] == Py_None)
        return new_object(size, align, 0); /* krealloc(NULL, n) is kmalloc(n) */
    if (!PyObject_TypeCheck(a[0], &Handle_Type)) {
        if (!kmcpy_raise_message(KMC_EINVALID_FREE, NULL, NULL,
                                 "krealloc of %.100s: not a kmemcache object",
                                 Py_TYPE(a[0])->tp_name))
            return NULL;
        Py_RETURN_NONE; /* told to go on: nothing was made */
    }
    if (PyObject_TypeCheck(a[0], &SharedHandle_Type)) {
        /* its memory is every holder's: a private copy would end it for all */
        PyErr_SetString(PyExc_TypeError,
                        "krealloc of a SharedObject: a shared object cannot move or grow (its "
                        "other holders keep its offset); allocate from a shared cache of the "
                        "size you need and copy");
        return NULL;
    }
    HandleObject *old = (HandleObject *)a[0];
    if (!old->ptr) {
        PyErr_SetString(PyExc_ValueError, "krealloc of a freed kmemcache object");
        return NULL;
    }
    if (old->exports) {
        PyErr_Format(PyExc_BufferError,
                     "cannot krealloc a kmemcache object while %zd buffer view%s of it exist%s",
                     old->exports, old->exports == 1 ? "" : "s", old->exports == 1 ? "s" : "");
        return NULL;
    }
    if (kmc_krealloc_in_place(old->ptr, size, align)) {
        old->size = (Py_ssize_t)size;
        kmcpy_retrace(old->ptr, old->size); /* with its new size, or not at 0 */
        return Py_NewRef(a[0]);
    }
    Py_INCREF(old);
    HandleObject *obj = (HandleObject *)new_object(size, align, 0);
    if (!obj) {
        Py_DECREF(old);
        return NULL; /* the old object is untouched */
    }
    /* Python code ran (the class factory, the tracker, the GC and what their
     * finalizers do, other threads): the old object is read again */
    if (!old->ptr || old->exports || !obj->ptr) {
        PyErr_Format(old->exports ? PyExc_BufferError : PyExc_ValueError,
                     "krealloc: the object was %s while its new copy was being made",
                     !old->ptr      ? "freed"
                     : old->exports ? "viewed"
                                    : "lost");
        Py_DECREF(obj);
        Py_DECREF(old);
        return NULL;
    }
    size_t keep = (size_t)old->size < size ? (size_t)old->size : size;
    if (keep)
        memcpy(obj->ptr, old->ptr, keep);
    int freed = kmcpy_handle_free(old);
    Py_DECREF(old);
    if (freed < 0) {
        /* the old object stays (damage was found freeing it): drop the copy */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        Py_DECREF(obj);
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    return (PyObject *)obj;
}

/* --- private helpers for the package ------------------------------------------- */

static PyObject *set_kmalloc_factory(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (arg != Py_None && !PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the kmalloc cache factory must be callable or None");
        return NULL;
    }
    Py_XSETREF(class_factory, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyObject *kmalloc_classes(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyTuple_New(KMC_KMALLOC_CLASSES);
    for (Py_ssize_t i = 0; out && i < KMC_KMALLOC_CLASSES; i++) {
        const kmc_kmalloc_class_t *k = &kmc_kmalloc_classes[i];
        PyObject *t = Py_BuildValue("(snn)", k->name, (Py_ssize_t)k->size, (Py_ssize_t)k->align);
        if (!t)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *kmalloc_index(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_ssize_t size;
    PyObject *align_obj;
    size_t align;
    if (!PyArg_ParseTuple(args, "nO:_kmalloc_index", &size, &align_obj) ||
        align_arg(align_obj, &align) < 0)
        return NULL;
    return PyLong_FromLong(size < 0 ? -1 : kmc_kmalloc_index((size_t)size, align));
}

static PyObject *kmalloc_align(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_ssize_t size;
    PyObject *align_obj;
    size_t align;
    if (!PyArg_ParseTuple(args, "nO:_kmalloc_align", &size, &align_obj) ||
        align_arg(align_obj, &align) < 0)
        return NULL;
    return PyLong_FromSize_t(size < 0 ? 0 : kmc_kmalloc_align((size_t)size, align));
}

static PyObject *kmalloc_caches(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyTuple_New(KMC_KMALLOC_CLASSES);
    for (Py_ssize_t i = 0; out && i < KMC_KMALLOC_CLASSES; i++)
        PyTuple_SET_ITEM(out, i,
                         Py_NewRef(class_caches[i] ? (PyObject *)class_caches[i] : Py_None));
    return out;
}

static PyObject *kmalloc_prepare(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_kmalloc_prepare() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *kmalloc_large_stats(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    kmc_kmalloc_large_stats_t s;
    kmc_kmalloc_large_stats(&s);
    return Py_BuildValue("{s:K, s:K, s:K, s:K, s:K}", "objects", (unsigned long long)s.objects,
                         "bytes", (unsigned long long)s.bytes, "table_bytes",
                         (unsigned long long)s.table_bytes, "kept", (unsigned long long)s.kept,
                         "kept_bytes", (unsigned long long)s.kept_bytes);
}

static PyObject *kmalloc_shrink(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    size_t bytes;
    Py_BEGIN_ALLOW_THREADS
    bytes = kmc_kmalloc_shrink();
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(bytes);
}

#define FASTCALL_KW (METH_FASTCALL | METH_KEYWORDS)
#define FN(f)       ((PyCFunction)(void (*)(void))(f))

/* One line each: the contract (sizes, classes, alignment, krealloc's rules)
 * is written once, in kmc.h, and for Python in kmemcache.kmalloc's doc. */
#define SEE_DOC "\n\nSizes, classes, alignment: the doc of the module kmemcache.kmalloc."

PyMethodDef kmcpy_kmalloc_methods[] = {
    {"kmalloc", FN(py_kmalloc), FASTCALL_KW,
     "kmalloc($module, /, size, align=0)\n--\n\n"
     "An object of size bytes, contents undefined, aligned to at least align." SEE_DOC},
    {"kzalloc", FN(py_kzalloc), FASTCALL_KW,
     "kzalloc($module, /, size, align=0)\n--\n\nkmalloc, zeroed." SEE_DOC},
    {"kcalloc", FN(py_kcalloc), FASTCALL_KW,
     "kcalloc($module, /, n, size)\n--\n\nn zeroed elements of size bytes." SEE_DOC},
    {"krealloc", FN(py_krealloc), FASTCALL_KW,
     "krealloc($module, /, obj, new_size, align=0)\n--\n\n"
     "obj resized to new_size bytes, contents kept; obj intact on failure." SEE_DOC},
    {"ksize", (PyCFunction)py_ksize, METH_O,
     "ksize($module, obj, /)\n--\n\nThe usable size of obj." SEE_DOC},
    {"kfree", (PyCFunction)py_kfree, METH_O,
     "kfree($module, obj, /)\n--\n\nFree obj, of kmalloc or of any Cache." SEE_DOC},
    {"_set_kmalloc_factory", set_kmalloc_factory, METH_O,
     "_set_kmalloc_factory($module, factory, /)\n--\n\n"},
    {"_kmalloc_classes", kmalloc_classes, METH_NOARGS,
     "_kmalloc_classes($module, /)\n--\n\nThe size classes: (name, size, align) tuples, smallest "
     "first."},
    {"_kmalloc_index", kmalloc_index, METH_VARARGS,
     "_kmalloc_index($module, size, align, /)\n--\n\n"
     "The index in _kmalloc_classes() of the class kmalloc(size, align) is served by, or -1."},
    {"_kmalloc_align", kmalloc_align, METH_VARARGS,
     "_kmalloc_align($module, size, align, /)\n--\n\n"
     "The alignment every kmalloc(size, align) object has at least (0 for size 0)."},
    {"_kmalloc_caches", kmalloc_caches, METH_NOARGS,
     "_kmalloc_caches($module, /)\n--\n\nEach size class's Cache, or None before its first use."},
    {"_kmalloc_prepare", kmalloc_prepare, METH_NOARGS,
     "_kmalloc_prepare($module, /)\n--\n\nMake every size class's cache now, through the factory."},
    {"_kmalloc_large_stats", kmalloc_large_stats, METH_NOARGS,
     "_kmalloc_large_stats($module, /)\n--\n\nThe large allocations' counters: objects, bytes, "
     "table_bytes, kept, kept_bytes."},
    {"_kmalloc_shrink", kmalloc_shrink, METH_NOARGS,
     "_kmalloc_shrink($module, /)\n--\n\nGive the freed large runs kept for reuse back to the OS; "
     "return their bytes."},
    {NULL, NULL, 0, NULL},
};
