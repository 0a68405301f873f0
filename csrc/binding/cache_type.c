/*
 * cache_type.c - the Cache type: argument checks around the engine's cache
 * calls, and the objects' handles.
 *
 * The hot methods (alloc, zalloc, free) are METH_NOARGS / METH_O so that a
 * call costs what a builtin method call costs, plus the engine's fast path.
 */
#include "binding.h"

int kmcpy_cache_check_alive(CacheObject *self)
{
    if (self->cache)
        return 0;
    PyErr_SetString(PyExc_ValueError, self->initialised
                                          ? "operation on a destroyed kmemcache cache"
                                          : "operation on an uninitialised kmemcache cache "
                                            "(Cache.__init__ was not called)");
    return -1;
}

/* Tell the STORE_USER tracker about an event. The tracker is held while it
 * runs: it may replace itself (cache._set_track). */
int kmcpy_track(CacheObject *cache, const char *event, const void *address)
{
    PyObject *track = cache->track ? Py_NewRef(cache->track) : NULL;
    if (!track)
        return 0; /* cleared meanwhile */
    PyObject *addr = PyLong_FromVoidPtr((void *)address);
    PyObject *r = addr ? PyObject_CallFunction(track, "sO", event, addr) : NULL;
    Py_XDECREF(addr);
    Py_DECREF(track);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The engine's constructor hook: run the Python ctor on a memoryview of the
 * object. The view is taken through a handle, so that every view made from
 * it (a slice, memoryview(view), numpy.frombuffer(view)) counts in the
 * handle's exports: when the ctor returns, none may be left, or it would
 * point into memory that the engine hands out and gives back to the OS.
 * Returns 0, -1 (the ctor raised), or 1 (a view was kept: the engine must
 * never reuse or unmap this slab's memory). */
int kmcpy_call_ctor(void *object, size_t size, void *arg)
{
    CacheObject *self = arg;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    PyObject *ctor = self->ctor ? Py_NewRef(self->ctor) : NULL; /* held while it runs */
    if (!ctor)
        PyErr_SetString(PyExc_ValueError, "the cache's ctor was cleared");
    HandleObject *handle = ctor ? kmcpy_handle_new(self, object, (Py_ssize_t)size) : NULL;
    PyObject *view = handle ? PyMemoryView_FromObject((PyObject *)handle) : NULL;
    if (view) {
        self->in_ctor++;
        self->ctor_pid = (long)getpid();
        PyObject *r = PyObject_CallOneArg(ctor, view);
        self->in_ctor--;
        Py_XDECREF(r);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb); /* release() must not run with it set */
        PyObject *released = PyObject_CallMethod(view, "release", NULL);
        Py_XDECREF(released);
        PyErr_Clear(); /* a view made from ours fails release(): seen below */
        PyErr_Restore(type, value, tb);
        Py_DECREF(view);
        rc = r ? 0 : -1;
        if (handle->exports) {
            if (r)
                PyErr_SetString(PyExc_ValueError,
                                "the ctor kept a view of the object's memory; it must not");
            rc = 1;
        }
    }
    if (handle) {
        handle->ptr = NULL; /* not an object: nothing to free when it dies */
        Py_DECREF(handle);
    }
    Py_XDECREF(ctor);
    if (rc != 0) {
        /* keep the ctor's exception to raise it from the allocation */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb)
            PyException_SetTraceback(value, tb);
        Py_XSETREF(self->ctor_error, value);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    }
    PyGILState_Release(gil);
    return rc;
}

/* Raise for a failed allocation: the ctor's own exception if it failed. */
int kmcpy_raise_alloc_failure(CacheObject *self)
{
    kmc_status st = kmc_last_report()->status;
    if (st == KMC_ECTOR && self->ctor_error) {
        PyObject *exc = self->ctor_error;
        self->ctor_error = NULL;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return 0;
    }
    if (st == KMC_OK)
        st = KMC_ENOMEM;
    return kmcpy_raise(st);
}

static const kmcpy_cache_ops_t private_ops;

/* SharedCache's tp_new too: the ops are the type's, whichever __new__ ran. */
static PyObject *cache_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    CacheObject *self = (CacheObject *)type->tp_alloc(type, 0);
    if (self && !(self->dict = PyDict_New()))
        Py_CLEAR(self);
    if (self)
        self->ops = PyType_IsSubtype(type, &SharedCache_Type) ? &kmcpy_shared_ops : &private_ops;
    return (PyObject *)self;
}

/* An int argument as a Py_ssize_t, named @what in errors. An int too large
 * for one is out of range like any other bad value: ValueError, not
 * OverflowError. Its __index__ may run Python code: call before any check
 * of the cache's state. */
int kmcpy_ssize_value(PyObject *arg, const char *what, Py_ssize_t *out)
{
    if (PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not bool", what);
        return -1;
    }
    PyObject *index = PyNumber_Index(arg);
    if (!index)
        return -1;
    Py_ssize_t v = PyLong_AsSsize_t(index);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s is out of range: %R", what, index);
        }
        Py_DECREF(index);
        return -1;
    }
    Py_DECREF(index);
    *out = v;
    return 0;
}

/* A cache name: a str of 1 to KMC_NAME_MAX - 1 bytes of UTF-8 with no
 * whitespace or control character of any kind (it is a /proc/slabinfo
 * column). Returns its UTF-8, owned by @name, or NULL with ValueError. */
const char *kmcpy_cache_name_arg(PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "cache name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(name);
    int kind = PyUnicode_KIND(name);
    const void *data = PyUnicode_DATA(name);
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (Py_UNICODE_ISSPACE(ch) || !Py_UNICODE_ISPRINTABLE(ch)) {
            char code[16];
            snprintf(code, sizeof(code), "U+%04X", (unsigned)ch);
            PyErr_Format(PyExc_ValueError,
                         "cache name must not contain whitespace or control characters "
                         "(it is a slabinfo column): %R has %s at index %zd",
                         name, code, i);
            return NULL;
        }
    }
    Py_ssize_t bytes;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &bytes);
    if (!cname)
        return NULL;
    if (bytes < 1 || bytes > KMC_NAME_MAX - 1) {
        PyErr_Format(PyExc_ValueError, "cache name must be 1 to %d bytes of UTF-8, not %zd",
                     KMC_NAME_MAX - 1, bytes);
        return NULL;
    }
    return cname;
}

int kmcpy_check_ctor(PyObject *ctor)
{
    if (ctor == Py_None || PyCallable_Check(ctor))
        return 0;
    PyErr_Format(PyExc_TypeError, "ctor must be callable or None, not %.100s",
                 Py_TYPE(ctor)->tp_name);
    return -1;
}

/* The arguments every cache's __init__ takes, checked: a callable ctor or
 * None, the size, the alignment, the flags. */
int kmcpy_check_cache_args(Py_ssize_t size, Py_ssize_t align, Py_ssize_t flags, PyObject *ctor)
{
    if (kmcpy_check_ctor(ctor) < 0)
        return -1;
    if (size < 1 || (size_t)size > KMC_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "size must be 1 to %zu bytes, not %zd", (size_t)KMC_MAX_SIZE,
                     size);
        return -1;
    }
    if (align < 0 || (align & (align - 1)) || (size_t)align > KMC_MAX_ALIGN) {
        PyErr_Format(PyExc_ValueError, "align must be 0 or a power of two up to %zu, not %zd",
                     (size_t)KMC_MAX_ALIGN, align);
        return -1;
    }
    if (flags < 0 || (flags & ~(Py_ssize_t)KMC_VALID_FLAGS)) {
        /* PyErr_Format knows no %llx before Python 3.12 */
        char text[64];
        PyOS_snprintf(text, sizeof(text), "flags has unknown bits 0x%llx",
                      (unsigned long long)flags & ~(unsigned long long)KMC_VALID_FLAGS);
        PyErr_SetString(PyExc_ValueError, text);
        return -1;
    }
    return 0;
}

/* KMEMCACHE_DEBUG's options for cache @name join *@flags (Python code runs). */
int kmcpy_debug_flags(PyObject *name, Py_ssize_t *flags, PyObject *ctor)
{
    if (!kmcpy_facade)
        return 0;
    PyObject *f = PyObject_CallMethod(kmcpy_facade, "cache_flags", "OnO", name, *flags,
                                      ctor != Py_None ? Py_True : Py_False);
    if (!f)
        return -1;
    Py_ssize_t got = PyLong_Check(f) ? PyLong_AsSsize_t(f) : -1;
    Py_DECREF(f);
    if (got == -1 && PyErr_Occurred())
        return -1;
    if (got < 0 || (got & ~(Py_ssize_t)KMC_VALID_FLAGS)) {
        PyErr_SetString(PyExc_ValueError, "the debug options gave unknown flags");
        return -1;
    }
    *flags = got;
    return 0;
}

/* SLUB does not poison a cache with a ctor either, but silently. */
int kmcpy_check_poison_ctor(unsigned long long flags, PyObject *ctor)
{
    if (ctor != Py_None && (flags & KMC_POISON)) {
        PyErr_SetString(PyExc_ValueError,
                        "flags: POISON on a cache with a ctor cannot be had: poisoning "
                        "freed objects would undo the ctor's work");
        return -1;
    }
    return 0;
}

/* alloc_bulk's arguments, checked: the count of objects and zero. */
int kmcpy_bulk_args(PyObject *args, PyObject *kwds, Py_ssize_t *n, int *zero)
{
    static char *kwlist[] = {"n", "zero", NULL};
    PyObject *n_o;
    *zero = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:alloc_bulk", kwlist, &n_o, zero) ||
        kmcpy_ssize_value(n_o, "n", n) < 0)
        return -1;
    if (*n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, not %zd", *n);
        return -1;
    }
    if ((size_t)*n > PY_SSIZE_T_MAX / sizeof(void *) / 2) {
        PyErr_Format(PyExc_MemoryError, "n of %zd objects: no list can be that long", *n);
        return -1;
    }
    return 0;
}

int kmcpy_check_uninitialised(const CacheObject *self, int again)
{
    if (!self->cache)
        return 0;
    PyErr_SetString(PyExc_TypeError, again ? "a kmemcache cache cannot be initialised twice (it "
                                             "was, while this __init__ ran)"
                                           : "a kmemcache cache cannot be initialised twice");
    return -1;
}

int kmcpy_cache_arg_values(PyObject *name, PyObject *size, PyObject *align, PyObject *flags,
                           kmcpy_cache_args_t *out)
{
    out->align = out->flags = 0;
    if (!(out->name = kmcpy_cache_name_arg(name)) ||
        kmcpy_ssize_value(size, "size", &out->size) < 0 ||
        (align && kmcpy_ssize_value(align, "align", &out->align) < 0) ||
        (flags && kmcpy_ssize_value(flags, "flags", &out->flags) < 0))
        return -1;
    return 0;
}

PyObject *kmcpy_raise_status(kmc_status st)
{
    if (st == KMC_EINVAL)
        PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
    else if (kmcpy_raise(st) && !PyErr_Occurred())
        PyErr_SetString(kmcpy_exception_for(st), kmc_last_report()->message);
    return NULL;
}

int kmcpy_cache_adopt(CacheObject *self, kmc_cache_t *made, PyObject *ctor, const char *hook)
{
    /* also on a cache initialised again after destroy(): no stale ctor */
    PyObject *old_ctor = self->ctor, *old_error = self->ctor_error;
    self->ctor = ctor != Py_None ? Py_NewRef(ctor) : NULL;
    self->ctor_error = NULL;
    self->cache = made;
    self->size = (Py_ssize_t)kmc_cache_size(made);
    self->initialised = 1;
    Py_XDECREF(old_ctor);
    Py_XDECREF(old_error);
    if (kmcpy_facade) {
        PyObject *r = PyObject_CallMethod(kmcpy_facade, hook, "O", (PyObject *)self);
        if (!r) {
            /* only the cache made here, if Python code left it so */
            if (self->cache == made && kmc_cache_destroy(made) != KMC_EBUSY)
                self->cache = NULL;
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

/* Python code runs in here (__index__ of the arguments, the facade's
 * cache_flags and attach, finalizers of a replaced ctor), and it may call
 * __init__ on the same cache: the "initialised twice" check is made again
 * after it, and the engine cache made is the one this call made. */
static int cache_init(CacheObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "size", "align", "flags", "ctor", "limit", NULL};
    PyObject *name, *size_o, *align_o = NULL, *flags_o = NULL, *ctor = Py_None, *limit_o = NULL;
    kmcpy_cache_args_t a;
    uint64_t limit;
    if (kmcpy_check_uninitialised(self, 0) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOO$O:Cache", kwlist, &name, &size_o, &align_o,
                                     &flags_o, &ctor, &limit_o) ||
        kmcpy_limit_arg(limit_o, "limit", &limit) < 0 ||
        kmcpy_cache_arg_values(name, size_o, align_o, flags_o, &a) < 0 ||
        kmcpy_check_cache_args(a.size, a.align, a.flags, ctor) < 0 ||
        kmcpy_check_poison_ctor((unsigned long long)a.flags, ctor) < 0 ||
        kmcpy_debug_flags(name, &a.flags, ctor) < 0 || kmcpy_check_uninitialised(self, 1) < 0)
        return -1;
    /* no Python code from here to kmcpy_cache_adopt's assignments */
    kmc_cache_t *made;
    kmc_status st = kmc_cache_create(a.name, (size_t)a.size, (size_t)a.align, (unsigned)a.flags,
                                     ctor != Py_None ? kmcpy_call_ctor : NULL, self, &made);
    if (st != KMC_OK) {
        kmcpy_raise_status(st);
        return -1;
    }
    if (limit)
        (void)kmc_cache_set_limit(made, limit); /* a private cache of its own: always takes it */
    return kmcpy_cache_adopt(self, made, ctor, "attach");
}

static int cache_traverse(CacheObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ctor);
    Py_VISIT(self->track);
    Py_VISIT(self->ctor_error);
    Py_VISIT(self->dict);
    /* not Py_TYPE(self): the type is static, and a Python subclass's
     * subtype_traverse visits its heap type itself */
    return 0;
}

static int cache_clear(CacheObject *self)
{
    Py_CLEAR(self->ctor);
    Py_CLEAR(self->track);
    Py_CLEAR(self->ctor_error);
    Py_CLEAR(self->dict);
    return 0;
}

static int is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* A cache dropped with damage in its free objects: the report must not be
 * lost. It goes through the error factory (a warning under "warn", the
 * report on stderr and abort under "abort"); an exception it makes is
 * written as unraisable, naming the cache, not the dying object. */
static void report_dropped(kmc_status st, const char *name)
{
    if (is_finalizing()) {
        /* no Python code can run now: the engine's own line */
        fprintf(stderr, "kmemcache: cache %s dropped at exit: %s\n", name,
                kmc_last_report()->message);
        return;
    }
    if (!kmcpy_raise(st))
        kmcpy_write_unraisable("while destroying kmemcache cache %s, dropped with no "
                               "reference left",
                               name);
}

static void cache_dealloc(CacheObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->cache) {
        /* no handle is alive (each holds its cache), so nothing is live
         * unless C code allocated from it; then keep the memory. */
        kmc_cache_t *c = self->cache;
        self->cache = NULL;
        kmc_stats_t s;
        kmc_cache_stats(c, &s);
        if (s.active_objs == 0) {
            char name[KMC_NAME_MAX];
            snprintf(name, sizeof(name), "%s", kmc_cache_name(c));
            kmc_status st = kmc_cache_destroy(c);
            if (st != KMC_OK && st != KMC_EBUSY) {
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                report_dropped(st, name);
                PyErr_Restore(type, value, tb);
            }
        }
    }
    cache_clear(self);
    /* no Py_DECREF(type) for a heap subclass: subtype_dealloc does it,
     * since this base type is static */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *kmcpy_adopt(CacheObject *cache, void *p, Py_ssize_t size, uint32_t gen)
{
    HandleObject *obj = cache->ops->handle(cache, p, size, gen);
    if (!obj) {
        cache->ops->give_back(cache, p, gen); /* alive: p is live in it */
        return NULL;
    }
    if (cache->track && kmcpy_track(cache, "alloc", p) < 0) {
        Py_DECREF(obj); /* its dealloc gives the object back */
        return NULL;
    }
    return (PyObject *)obj;
}

/* The hot path: a live cache, the engine's fast path, a recycled handle.
 * The error factory runs Python code, which may destroy the cache before the
 * retry: checked again. */
static PyObject *alloc_one(CacheObject *self, int zero)
{
    const kmcpy_cache_ops_t *ops = self->ops;
    if (kmcpy_alive(self) < 0)
        return NULL;
    void *p;
    uint32_t gen = 0;
    while (!(p = ops->alloc(self, zero, &gen))) {
        if (zero && self->ctor) {
            PyErr_SetString(PyExc_ValueError,
                            "zalloc() on a cache with a ctor: the ctor's work would be lost");
            return NULL;
        }
        if (!kmcpy_raise_alloc_failure(self) || kmcpy_alive(self) < 0)
            return NULL;
    }
    return kmcpy_adopt(self, p, self->size, gen);
}

PyObject *kmcpy_cache_alloc(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    return alloc_one(self, 0);
}

PyObject *kmcpy_cache_zalloc(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    return alloc_one(self, 1);
}

/* The handles are kept in an array of our own until the list is made: the
 * tracker and the GC run Python code that could reach a list made earlier. */
PyObject *kmcpy_cache_alloc_bulk(CacheObject *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t n;
    int zero;
    if (kmcpy_bulk_args(args, kwds, &n, &zero) < 0 || kmcpy_alive(self) < 0)
        return NULL;
    size_t slots = n ? (size_t)n : 1;
    void **ptrs = PyMem_Malloc(slots * sizeof(void *));
    uint32_t *gens = PyMem_Calloc(slots, sizeof(uint32_t));
    HandleObject **handles = PyMem_Calloc(slots, sizeof(HandleObject *));
    PyObject *list = NULL;
    Py_ssize_t made = 0;
    if (!ptrs || !gens || !handles) {
        PyErr_NoMemory();
        goto out;
    }
    for (;;) {
        if (kmcpy_alive(self) < 0)
            goto out;
        if (zero && self->ctor) {
            PyErr_SetString(PyExc_ValueError,
                            "zero=True on a cache with a ctor: the ctor's work would be lost");
            goto out;
        }
        if (self->ops->alloc_bulk(self, (size_t)n, ptrs, gens, zero) == KMC_OK)
            break;
        if (!kmcpy_raise_alloc_failure(self))
            goto out;
    }
    /* n objects are live now: the cache cannot be destroyed under us */
    for (; made < n; made++) {
        if (!(handles[made] = self->ops->handle(self, ptrs[made], self->size, gens[made]))) {
            for (Py_ssize_t j = made; j < n; j++) /* no handle yet: give them back */
                self->ops->give_back(self, ptrs[j], gens[j]);
            goto out;
        }
    }
    if (self->track)
        for (Py_ssize_t i = 0; i < n; i++)
            if (kmcpy_track(self, "alloc", ptrs[i]) < 0)
                goto out;
    if (!(list = PyList_New(n)))
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(list, i, (PyObject *)handles[i]);
        handles[i] = NULL;
    }
out:
    /* on failure the handles made give their objects back as they die */
    for (Py_ssize_t i = 0; handles && i < made; i++)
        Py_XDECREF(handles[i]);
    PyMem_Free(handles);
    PyMem_Free(gens);
    PyMem_Free(ptrs);
    return list;
}

/* Check that @arg is a live handle of this cache that may be freed now:
 * 0 if so, -1 with an exception set, 1 when the error factory chose to go on
 * (the caller skips the object; Python code ran). The cache is alive. */
static int check_freeable(CacheObject *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, self->ops->handle_type))
        return kmcpy_raise_message(
                   KMC_EINVALID_FREE, self, NULL, "Invalid free in %s: %.100s is not %s",
                   kmc_cache_name(self->cache), Py_TYPE(arg)->tp_name, self->ops->not_handle)
                   ? 1
                   : -1;
    HandleObject *obj = (HandleObject *)arg;
    if (obj->owner != self && obj->ptr) {
        return kmcpy_raise_message(KMC_EINVALID_FREE, self, obj->ptr,
                                   "Invalid free of %p in %s: it belongs to %s%s", (void *)obj->ptr,
                                   kmc_cache_name(self->cache), obj->owner ? "cache " : "",
                                   kmcpy_handle_owner_name(obj))
                   ? 1
                   : -1;
    }
    return 0;
}

PyObject *kmcpy_cache_free(CacheObject *self, PyObject *arg)
{
    if (kmcpy_alive(self) < 0)
        return NULL;
    int r = check_freeable(self, arg);
    if (r < 0)
        return NULL;
    if (r == 0 && kmcpy_handle_free((HandleObject *)arg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

int kmcpy_check_bulk_item(CacheObject *self, PyObject *item, Py_ssize_t i)
{
    int r = check_freeable(self, item);
    if (r != 0)
        return r;
    HandleObject *obj = (HandleObject *)item;
    if (!obj->ptr)
        return kmcpy_raise_message(KMC_EDOUBLE_FREE, self, NULL,
                                   "Object already free: item %zd was freed before", i)
                   ? 1
                   : -1;
    if (obj->exports) {
        PyErr_Format(PyExc_BufferError, "cannot free item %zd: %zd buffer view(s) of it exist", i,
                     obj->exports);
        return -1;
    }
    return 0;
}

int kmcpy_bulk_unchanged(PyObject *items, void *const *ptrs)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(items); i++) {
        HandleObject *obj = (HandleObject *)PyTuple_GET_ITEM(items, i);
        if (ptrs[i] && (obj->ptr != ptrs[i] || obj->exports)) {
            PyErr_Format(obj->exports ? PyExc_BufferError : PyExc_ValueError,
                         "cannot free item %zd: it was %s while free_bulk() checked the others", i,
                         obj->exports ? "viewed" : "freed");
            return -1;
        }
    }
    return 0;
}

/* The checks of one item of free_bulk (kmcpy_check_bulk_item's, and not
 * listed twice), then the engine's: would it accept the free? 0 to free it,
 * 1 to skip it (the error factory chose to go on), 2 to free it although
 * the engine reported damage (the factory chose to go on, as SLUB frees the
 * object after its "FIX" line), -1 on error. */
static int check_bulk_item(CacheObject *self, PyObject *item, Py_ssize_t i, PyObject *seen)
{
    int r = kmcpy_check_bulk_item(self, item, i);
    if (r != 0)
        return r;
    HandleObject *obj = (HandleObject *)item;
    int dup = PySet_Contains(seen, item);
    if (dup < 0 || (!dup && PySet_Add(seen, item) < 0))
        return -1;
    if (dup)
        return kmcpy_raise_message(KMC_EDOUBLE_FREE, self, obj->ptr,
                                   "Object already free: item %zd appears twice", i)
                   ? 1
                   : -1;
    /* would the engine take it? (red zones too, where it checks them here) */
    kmc_status st = kmc_cache_check_free(self->cache, obj->ptr);
    if (st == KMC_OK)
        return 0;
    if (!kmcpy_raise(st))
        return -1;
    return st == KMC_EDOUBLE_FREE || st == KMC_EINVALID_FREE ? 1 : 2;
}

/* Free one checked item, with no Python code unless the engine finds damage
 * that its check did not report: then the report goes through the error
 * factory here. 0 freed, 1 not freed (skipped after a report), -1 error. */
static int free_bulk_item(CacheObject *self, HandleObject *obj, void *p, int reported)
{
    if (kmcpy_cache_check_alive(self) < 0)
        return -1;
    if (obj->ptr != p || obj->exports) {
        /* only after Python code ran for an earlier item */
        PyErr_Format(obj->exports ? PyExc_BufferError : PyExc_ValueError,
                     "free_bulk(): an object was %s while the others were freed",
                     obj->exports ? "viewed" : "freed");
        return -1;
    }
    kmc_status st = kmc_cache_free(self->cache, p);
    if (st != KMC_OK && reported)
        st = kmc_cache_free(self->cache, p); /* reported by the check; repaired now */
    if (st != KMC_OK) {
        if (!kmcpy_raise(st))
            return -1;
        if (kmcpy_cache_check_alive(self) < 0)
            return -1;
        if (obj->ptr != p || obj->exports || kmc_cache_free(self->cache, p) != KMC_OK)
            return 1;
    }
    obj->ptr = NULL;
    kmcpy_untrace(p);
    return 0;
}

/* All or nothing: every item is checked, by the handle and by the engine,
 * before the first is freed. Python code can run during the checks (the
 * error factory) and change any item: so before the first free every item is
 * read again, and from there to the last free no Python code runs (unless
 * the engine finds damage its check could not see). The tracker is told of
 * the frees afterwards. */
static PyObject *private_free_bulk(CacheObject *self, PyObject *seq)
{
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *seen = PySet_New(NULL);
    void **ptrs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(void *)); /* NULL: skipped */
    char *reported = PyMem_Calloc(n ? (size_t)n : 1, 1);
    PyObject *result = NULL;
    if (!seen || !ptrs || !reported) {
        if (seen)
            PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kmcpy_cache_check_alive(self) < 0) /* Python code may have run */
            goto out;
        int r = check_bulk_item(self, PyTuple_GET_ITEM(seq, i), i, seen);
        if (r < 0)
            goto out;
        if (r != 1)
            ptrs[i] = ((HandleObject *)PyTuple_GET_ITEM(seq, i))->ptr;
        reported[i] = r == 2;
    }
    /* what Python code changed while the checks ran is seen here, before
     * anything is freed */
    if (kmcpy_cache_check_alive(self) < 0 || kmcpy_bulk_unchanged(seq, ptrs) < 0)
        goto out;
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        if (!ptrs[i])
            continue;
        int r = free_bulk_item(self, (HandleObject *)PyTuple_GET_ITEM(seq, i), ptrs[i],
                               reported[i]);
        if (r != 0) {
            failed = r < 0;
            if (failed)
                for (Py_ssize_t j = i; j < n; j++)
                    ptrs[j] = NULL; /* not freed */
            else
                ptrs[i] = NULL;
        }
    }
    /* the tracker hears of what was freed, also when a later item failed */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int tracked = 0;
    for (Py_ssize_t i = 0; i < n && self->track && tracked == 0; i++)
        if (ptrs[i])
            tracked = kmcpy_track(self, "free", ptrs[i]);
    if (failed) {
        if (tracked < 0)
            kmcpy_write_unraisable("by the tracker of kmemcache cache %s",
                                   self->cache ? kmc_cache_name(self->cache) : "(destroyed)");
        PyErr_Restore(type, value, tb);
    } else if (tracked == 0) {
        result = Py_NewRef(Py_None);
    }
out:
    PyMem_Free(reported);
    PyMem_Free(ptrs);
    Py_XDECREF(seen);
    return result;
}

/* The items are copied into a tuple first, so that a list changed by Python
 * code meanwhile cannot pull them away. */
PyObject *kmcpy_cache_free_bulk(CacheObject *self, PyObject *arg)
{
    if (kmcpy_alive(self) < 0)
        return NULL;
    PyObject *seq = PyTuple_CheckExact(arg) ? Py_NewRef(arg) : PySequence_Tuple(arg);
    if (!seq) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) && !Py_TYPE(arg)->tp_iter &&
            !PySequence_Check(arg)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "free_bulk() takes a sequence of objects, not %.100s",
                         Py_TYPE(arg)->tp_name);
        }
        return NULL;
    }
    PyObject *result = self->ops->free_bulk(self, seq);
    Py_DECREF(seq);
    return result;
}

static PyObject *cache_shrink(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    return PyLong_FromSize_t(kmc_cache_shrink(self->cache));
}

/* Is a ctor of this cache running in this process? (After fork() the child
 * has only the forking thread: a ctor another thread ran is not running.) */
int kmcpy_ctor_running(const CacheObject *self)
{
    return self->in_ctor && self->ctor_pid == (long)getpid();
}

static PyObject *cache_destroy(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    if (kmcpy_ctor_running(self)) {
        /* the engine is building a slab of this cache and would go on
         * using it after the destroy */
        if (!kmcpy_raise_message(KMC_EBUSY, self, NULL,
                                 "Cannot destroy %s while its ctor runs: a slab is being built",
                                 kmc_cache_name(self->cache)))
            return NULL;
        Py_RETURN_NONE;
    }
    kmc_status st = kmc_cache_destroy(self->cache);
    if (st == KMC_EBUSY) {
        if (!kmcpy_raise(st))
            return NULL;
        Py_RETURN_NONE; /* told to go on: the cache stays, as SLUB leaves it */
    }
    self->cache = NULL;
    if (st != KMC_OK && !kmcpy_raise(st))
        return NULL; /* destroyed, but damage was found on the way */
    Py_RETURN_NONE;
}

static PyObject *cache_validate(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    size_t problems = 0;
    kmc_status st = kmc_cache_validate(self->cache, &problems);
    if (st != KMC_OK && !kmcpy_raise(st))
        return NULL;
    return PyLong_FromSize_t(problems);
}

static int put_stat(PyObject *d, const char *key, unsigned long long v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o)
        return -1;
    int rc = PyDict_SetItemString(d, key, o);
    Py_DECREF(o);
    return rc;
}

/* kmc_stats_t's fields, from kmc.h's one list: the keys of
 * kmcpy_stats_dict() and what the module's _stats_layout() describes, so that
 * no Python code declares the struct again (the benchmarks read it through
 * ctypes). Every field is a uint64_t. */
#define STAT_FIELD(field, comment) {#field, offsetof(kmc_stats_t, field), comment},
static const struct stat_field {
    const char *name;
    size_t offset;       /* bytes */
    const char *comment; /* what it counts: kmemcache.SlabStats's doc */
} stat_fields[] = {KMC_STATS_FIELDS(STAT_FIELD)};
#undef STAT_FIELD
#define N_STAT_FIELDS (sizeof(stat_fields) / sizeof(stat_fields[0]))

static unsigned long long stat_value(const kmc_stats_t *s, const struct stat_field *f)
{
    uint64_t v;
    memcpy(&v, (const char *)s + f->offset, sizeof(v));
    return v;
}

void kmcpy_cache_snapshot(kmc_cache_t *cache, kmcpy_cache_snapshot_t *out)
{
    snprintf(out->name, sizeof(out->name), "%s", kmc_cache_name(cache));
    kmc_cache_stats(cache, &out->stats);
}

/* A cache's counters as a dict (also used for every cache by the module's
 * _caches()), from a copy: making the dict can run the GC. */
PyObject *kmcpy_stats_dict(const kmcpy_cache_snapshot_t *snap)
{
    const kmc_stats_t *s = &snap->stats;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PyObject *name = PyUnicode_FromString(snap->name);
    if (!name || PyDict_SetItemString(d, "name", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(name);
    for (size_t i = 0; i < N_STAT_FIELDS; i++)
        if (put_stat(d, stat_fields[i].name, stat_value(s, &stat_fields[i])) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    return d;
}

/* ((name, offset, size), ...) of kmc_stats_t's fields in struct order, and
 * sizeof(kmc_stats_t). */
PyObject *kmcpy_stats_layout(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *fields = PyTuple_New((Py_ssize_t)N_STAT_FIELDS);
    for (size_t i = 0; fields && i < N_STAT_FIELDS; i++) {
        const struct stat_field *f = &stat_fields[i];
        PyObject *t = Py_BuildValue("(snn)", f->name, (Py_ssize_t)f->offset,
                                    (Py_ssize_t)sizeof(uint64_t));
        if (!t)
            Py_CLEAR(fields);
        else
            PyTuple_SET_ITEM(fields, (Py_ssize_t)i, t);
    }
    return fields ? Py_BuildValue("(Nn)", fields, (Py_ssize_t)sizeof(kmc_stats_t)) : NULL;
}

/* An attribute of the package's facade (kmemcache.cache._Facade): a
 * function the C types call back, set once at import. */
PyObject *kmcpy_facade_attr(const char *name)
{
    if (!kmcpy_facade) {
        PyErr_SetString(PyExc_RuntimeError, "kmemcache is not initialised");
        return NULL;
    }
    return PyObject_GetAttrString(kmcpy_facade, name);
}

/* ((name, comment), ...) of kmc_stats_t's fields in struct order: kmc.h's
 * words for each, which SlabStats's docs show. */
PyObject *kmcpy_stats_docs(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *fields = PyTuple_New((Py_ssize_t)N_STAT_FIELDS);
    for (size_t i = 0; fields && i < N_STAT_FIELDS; i++) {
        PyObject *t = Py_BuildValue("(ss)", stat_fields[i].name, stat_fields[i].comment);
        if (!t)
            Py_CLEAR(fields);
        else
            PyTuple_SET_ITEM(fields, (Py_ssize_t)i, t);
    }
    return fields;
}

static PyObject *cache_stats_raw(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    kmcpy_cache_snapshot_t snap;
    kmcpy_cache_snapshot(self->cache, &snap);
    return kmcpy_stats_dict(&snap);
}

typedef struct addresses_s {
    void **at;
    size_t n, cap;
} addresses_t;

/* Called with the cache locked: no Python, no allocation. */
static void collect_address(void *object, void *arg)
{
    addresses_t *a = arg;
    if (a->n < a->cap)
        a->at[a->n] = object;
    a->n++;
}

/* The live objects' addresses, copied out under the engine's lock, then
 * made into ints (which may run the GC) once it is released. */
static PyObject *cache_live_addresses(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    addresses_t a = {NULL, 0, 0};
    for (;;) {
        if (kmcpy_cache_check_alive(self) < 0)
            return NULL;
        kmc_stats_t s;
        kmc_cache_stats(self->cache, &s);
        a.cap = (size_t)s.active_objs + 16; /* C threads may allocate meanwhile */
        a.n = 0;
        PyMem_Free(a.at);
        if (!(a.at = PyMem_Malloc(a.cap * sizeof(void *))))
            return PyErr_NoMemory();
        kmc_cache_for_each_live(self->cache, collect_address, &a);
        if (a.n <= a.cap)
            break;
    }
    PyObject *list = PyList_New((Py_ssize_t)a.n);
    for (size_t i = 0; list && i < a.n; i++) {
        PyObject *addr = PyLong_FromVoidPtr(a.at[i]);
        if (!addr)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, addr);
    }
    PyMem_Free(a.at);
    return list;
}

static PyObject *cache_set_track(CacheObject *self, PyObject *arg)
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    if (arg != Py_None && !PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "track must be callable or None");
        return NULL;
    }
    Py_XSETREF(self->track, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

#define GETTER(field, expr)                                                         \
    static PyObject *cache_get_##field(CacheObject *self, void *Py_UNUSED(closure)) \
    {                                                                               \
        if (kmcpy_cache_check_alive(self) < 0)                                      \
            return NULL;                                                            \
        return expr;                                                                \
    }
GETTER(name, PyUnicode_FromString(kmc_cache_name(self->cache)))
GETTER(size, PyLong_FromSize_t(kmc_cache_size(self->cache)))
GETTER(align, PyLong_FromSize_t(kmc_cache_align(self->cache)))
GETTER(flags, PyLong_FromUnsignedLong(kmc_cache_flags(self->cache)))
#undef GETTER

static PyObject *cache_get_destroyed(CacheObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->cache == NULL);
}

static PyObject *cache_stats(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *raw = cache_stats_raw(self, NULL);
    if (!raw || !kmcpy_facade)
        return raw;
    return PyObject_CallMethod(kmcpy_facade, "make_stats", "N", raw);
}

static PyObject *cache_leaks(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    if (!kmcpy_facade)
        return cache_live_addresses(self, NULL);
    return PyObject_CallMethod(kmcpy_facade, "leaks", "O", (PyObject *)self);
}

static PyObject *cache_enter(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    return Py_NewRef((PyObject *)self);
}

static int cache_close(PyObject *self)
{
    CacheObject *cache = (CacheObject *)self;
    if (!cache->cache)
        return 0;
    PyObject *r = cache->ops->destroy(cache, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

PyObject *kmcpy_cache_exit(CacheObject *self, PyObject *args)
{
    return kmcpy_context_exit((PyObject *)self, args, cache_close, self->ops->what);
}

static PyObject *cache_repr(CacheObject *self)
{
    if (!self->cache)
        return PyUnicode_FromString(self->initialised ? "<kmemcache.Cache (destroyed)>"
                                                      : "<kmemcache.Cache (uninitialised)>");
    kmc_stats_t s;
    kmc_cache_stats(self->cache, &s);
    return PyUnicode_FromFormat("<kmemcache.Cache '%s' size=%zu align=%zu active=%llu/%llu "
                                "slabs=%llu>",
                                kmc_cache_name(self->cache), (size_t)s.size, (size_t)s.align,
                                (unsigned long long)s.active_objs, (unsigned long long)s.num_objs,
                                (unsigned long long)s.num_slabs);
}

static PyObject *cache_get_ctor(CacheObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->ctor ? self->ctor : Py_None);
}

static PyMethodDef cache_methods[] = {
    {"alloc", (PyCFunction)kmcpy_cache_alloc, METH_NOARGS,
     "alloc($self, /)\n--\n\nOne object (contents undefined, or as the ctor left them)."},
    {"zalloc", (PyCFunction)kmcpy_cache_zalloc, METH_NOARGS,
     "zalloc($self, /)\n--\n\nOne zeroed object. ValueError on a cache with a ctor."},
    {"alloc_bulk", (PyCFunction)(void (*)(void))kmcpy_cache_alloc_bulk,
     METH_VARARGS | METH_KEYWORDS,
     "alloc_bulk($self, /, n, zero=False)\n--\n\nA list of n objects, all or nothing."},
    {"free", (PyCFunction)kmcpy_cache_free, METH_O,
     "free($self, obj, /)\n--\n\nGive obj back. DoubleFreeError, InvalidFreeError, BufferError."},
    {"free_bulk", (PyCFunction)kmcpy_cache_free_bulk, METH_O,
     "free_bulk($self, objs, /)\n--\n\nFree every object of a sequence; checks all first."},
    {"shrink", (PyCFunction)cache_shrink, METH_NOARGS,
     "shrink($self, /)\n--\n\nRelease every empty slab to the OS; return the bytes given back."},
    {"destroy", (PyCFunction)cache_destroy, METH_NOARGS,
     "destroy($self, /)\n--\n\nRelease the cache. CacheBusyError while objects are live."},
    {"validate", (PyCFunction)cache_validate, METH_NOARGS,
     "validate($self, /)\n--\n\nCheck every slab; raise on the first problem (see the on-error "
     "policy), return how many were found."},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nThe cache's counters now, a SlabStats (/proc/slabinfo's fields "
     "first)."},
    {"leaks", (PyCFunction)cache_leaks, METH_NOARGS,
     "leaks($self, /)\n--\n\nThe live objects, lowest address first, each with where it was "
     "allocated when the cache has Flags.STORE_USER."},
    {"__enter__", (PyCFunction)cache_enter, METH_NOARGS, "__enter__($self, /)\n--\n\nThe cache."},
    {"__exit__", (PyCFunction)kmcpy_cache_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Destroy the cache (CacheBusyError while objects are live; when the block raised, a "
     "warning and a note on its exception instead)."},
    {"_stats", (PyCFunction)cache_stats_raw, METH_NOARGS, "_stats($self, /)\n--\n\n"},
    {"_live_addresses", (PyCFunction)cache_live_addresses, METH_NOARGS,
     "_live_addresses($self, /)\n--\n\n"},
    {"_set_track", (PyCFunction)cache_set_track, METH_O, "_set_track($self, track, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

static PyObject *cache_get_limit(CacheObject *self, void *Py_UNUSED(closure))
{
    if (kmcpy_cache_check_alive(self) < 0)
        return NULL;
    uint64_t v = kmc_cache_limit(self->cache);
    return v ? PyLong_FromUnsignedLongLong(v) : Py_NewRef(Py_None);
}

static int cache_set_limit(CacheObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    uint64_t v;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "the limit cannot be deleted: set it to None");
        return -1;
    }
    if (kmcpy_cache_check_alive(self) < 0 || kmcpy_limit_arg(value, "limit", &v) < 0)
        return -1;
    if (kmc_cache_set_limit(self->cache, v) != KMC_OK) {
        PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
        return -1;
    }
    return 0;
}

static PyGetSetDef cache_getset[] = {
    {"name", (getter)cache_get_name, NULL, "The cache's name.", NULL},
    {"size", (getter)cache_get_size, NULL, "Bytes per object, as asked for.", NULL},
    {"align", (getter)cache_get_align, NULL, "The guaranteed alignment in bytes.", NULL},
    {"flags", (getter)cache_get_flags, NULL, "The cache's flags, as an int.", NULL},
    {"destroyed", (getter)cache_get_destroyed, NULL, "True once destroyed.", NULL},
    {"ctor", (getter)cache_get_ctor, NULL, "The constructor, or None.", NULL},
    {"limit", (getter)cache_get_limit, (setter)cache_set_limit,
     "Bytes of slabs the cache may hold at most (None: no limit). Writable; an allocation that "
     "would need a slab past it raises MemoryLimitError, after the cache's empty slabs went "
     "back.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static void *private_alloc(CacheObject *self, int zero, uint32_t *Py_UNUSED(gen))
{
    return kmc_cache_alloc(self->cache, zero);
}

static kmc_status private_alloc_bulk(CacheObject *self, size_t n, void **ptrs,
                                     uint32_t *Py_UNUSED(gens), int zero)
{
    return kmc_cache_alloc_bulk(self->cache, n, ptrs, zero);
}

static HandleObject *private_handle(CacheObject *self, void *p, Py_ssize_t size,
                                    uint32_t Py_UNUSED(gen))
{
    HandleObject *h = kmcpy_handle_new(self, p, size);
    if (h)
        kmcpy_trace(p, size);
    return h;
}

static void private_give_back(CacheObject *self, void *p, uint32_t Py_UNUSED(gen))
{
    kmc_cache_free(self->cache, p);
}

static const kmcpy_cache_ops_t private_ops = {
    .what = "the cache",
    .object_what = "the object",
    .handle_type = &Handle_Type,
    .not_handle = "a kmemcache object",
    .shared = 0,
    .alive = kmcpy_cache_check_alive,
    .alloc = private_alloc,
    .alloc_bulk = private_alloc_bulk,
    .handle = private_handle,
    .give_back = private_give_back,
    .free_bulk = private_free_bulk,
    .destroy = cache_destroy,
    .free_handle = NULL, /* kmcpy_handle_free's own path */
};

/* This type is kmemcache.Cache itself, not the base of a Python class:
 * CPython 3.11 calls a C method through its fast path only on an instance of
 * exactly the method's type (about 180 instructions fewer per alloc+free
 * pair than through a subclass). Its instance dict is made with the object,
 * since a dict pointer left NULL stops the method lookup from specialising. */
/* PyVarObject_HEAD_INIT ends without a comma: left as written */
/* clang-format off */
PyTypeObject Cache_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmemcache.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc =
        "Cache(name, size, align=0, flags=0, ctor=None, *, limit=None)\n--\n\n"
        "A cache of objects of `size` bytes, each aligned to `align` bytes.\n\n"
        "name: 1 to 63 bytes of UTF-8, no whitespace or control character (it is\n"
        "    a /proc/slabinfo column).\n"
        "size: bytes per object, 1 to 4 MiB.\n"
        "align: 0 (the default minimum, 8 bytes) or a power of two up to 2 MiB.\n"
        "flags: kmemcache.Flags; Flags.HWCACHE_ALIGN aligns on the cache line.\n"
        "ctor: called with a memoryview of each object once, when its slab is\n"
        "    created (not on every alloc). The view is released after the call.\n"
        "limit: bytes of slabs the cache may hold at most (None: no limit); past\n"
        "    it an alloc raises kmemcache.MemoryLimitError.\n\n"
        "Use `with Cache(...) as cache:` to destroy the cache at the end.",
    .tp_traverse = (traverseproc)cache_traverse,
    .tp_clear = (inquiry)cache_clear,
    .tp_weaklistoffset = offsetof(CacheObject, weakrefs),
    .tp_methods = cache_methods,
    .tp_getset = cache_getset,
    .tp_dictoffset = offsetof(CacheObject, dict),
    .tp_repr = (reprfunc)cache_repr,
    .tp_init = (initproc)cache_init,
    .tp_new = cache_new,
};
/* clang-format on */
