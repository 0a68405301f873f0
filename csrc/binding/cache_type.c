/*
 * cache_type.c - the Cache type: argument checks around the engine's cache
 * calls, and the objects' handles.
 *
 * The hot methods (alloc, zalloc, free) are METH_NOARGS / METH_O so that a
 * call costs what a builtin method call costs, plus the engine's fast path.
 */
#include "binding.h"

int kmc_cache_check_alive(CacheObject *self)
{
    if (self->cache)
        return 0;
    PyErr_SetString(PyExc_ValueError, "operation on a destroyed kmemcache cache");
    return -1;
}

int kmc_track(CacheObject *cache, const char *event, const void *address)
{
    PyObject *addr = PyLong_FromVoidPtr((void *)address);
    if (!addr)
        return -1;
    PyObject *r = PyObject_CallFunction(cache->track, "sO", event, addr);
    Py_DECREF(addr);
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
static int call_ctor(void *object, size_t size, void *arg)
{
    CacheObject *self = arg;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    ObjectObject *handle = kmc_object_new(self, object, (Py_ssize_t)size);
    PyObject *view = handle ? PyMemoryView_FromObject((PyObject *)handle) : NULL;
    if (view) {
        self->in_ctor++;
        PyObject *r = PyObject_CallOneArg(self->ctor, view);
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
static int raise_alloc_failure(CacheObject *self)
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
    return kmc_raise(st);
}

static PyObject *cache_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
                           PyObject *Py_UNUSED(kwds))
{
    CacheObject *self = (CacheObject *)type->tp_alloc(type, 0);
    if (self && !(self->dict = PyDict_New()))
        Py_CLEAR(self);
    return (PyObject *)self;
}

/* "O&" converter: an int argument as a Py_ssize_t. An int too large for one
 * is out of range like any other bad value: ValueError, not OverflowError. */
static int ssize_arg(PyObject *arg, void *out)
{
    if (PyBool_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a bool is not a size, an alignment or flags");
        return 0;
    }
    PyObject *index = PyNumber_Index(arg);
    if (!index)
        return 0;
    Py_ssize_t v = PyLong_AsSsize_t(index);
    Py_DECREF(index);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%R is out of range", arg);
        }
        return 0;
    }
    *(Py_ssize_t *)out = v;
    return 1;
}

static int cache_init(CacheObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "size", "align", "flags", "ctor", NULL};
    PyObject *name, *ctor = Py_None;
    Py_ssize_t size, align = 0, flags = 0;
    if (self->cache) {
        PyErr_SetString(PyExc_TypeError, "a kmemcache cache cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO&|O&O&O:Cache", kwlist, &name, ssize_arg,
                                     &size, ssize_arg, &align, ssize_arg, &flags, &ctor))
        return -1;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "cache name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    Py_ssize_t name_len;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &name_len);
    if (!cname)
        return -1;
    if (strlen(cname) != (size_t)name_len) {
        PyErr_SetString(PyExc_ValueError, "cache name must not contain NUL characters");
        return -1;
    }
    if (ctor != Py_None && !PyCallable_Check(ctor)) {
        PyErr_Format(PyExc_TypeError, "ctor must be callable or None, not %.100s",
                     Py_TYPE(ctor)->tp_name);
        return -1;
    }
    if (size < 1 || (size_t)size > KMC_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "size must be 1 to %zu bytes, not %zd",
                     (size_t)KMC_MAX_SIZE, size);
        return -1;
    }
    if (align < 0 || (align & (align - 1)) || (size_t)align > KMC_MAX_ALIGN) {
        PyErr_Format(PyExc_ValueError,
                     "align must be 0 or a power of two up to %zu, not %zd",
                     (size_t)KMC_MAX_ALIGN, align);
        return -1;
    }
    if (flags < 0 || (flags & ~(Py_ssize_t)KMC_VALID_FLAGS)) {
        PyErr_Format(PyExc_ValueError, "unknown flags 0x%llx",
                     (unsigned long long)flags & ~(unsigned long long)KMC_VALID_FLAGS);
        return -1;
    }
    if (kmc_facade) {
        /* KMEMCACHE_DEBUG's options for this name join the flags given */
        PyObject *f = PyObject_CallMethod(kmc_facade, "cache_flags", "On", name, flags);
        if (!f)
            return -1;
        flags = PyLong_AsSsize_t(f);
        Py_DECREF(f);
        if (flags == -1 && PyErr_Occurred())
            return -1;
    }
    /* also on a cache initialised again after destroy(): no stale ctor */
    Py_XSETREF(self->ctor, ctor != Py_None ? Py_NewRef(ctor) : NULL);
    Py_CLEAR(self->ctor_error);
    kmc_status st = kmc_cache_create(cname, (size_t)size, (size_t)align, (unsigned)flags,
                                     ctor != Py_None ? call_ctor : NULL, self, &self->cache);
    if (st != KMC_OK) {
        if (st == KMC_EINVAL)
            PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
        else
            kmc_raise(st);
        return -1;
    }
    self->size = size;
    if (kmc_facade) {
        PyObject *r = PyObject_CallMethod(kmc_facade, "attach", "O", (PyObject *)self);
        if (!r) {
            (void)kmc_cache_destroy(self->cache);
            self->cache = NULL;
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
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

static void cache_dealloc(CacheObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->cache) {
        /* no handle is alive (each holds its cache), so nothing is live
         * unless C code allocated from it; then keep the memory. */
        kmc_stats_t s;
        kmc_cache_stats(self->cache, &s);
        if (s.active_objs == 0)
            (void)kmc_cache_destroy(self->cache);
        self->cache = NULL;
    }
    cache_clear(self);
    /* no Py_DECREF(type) for a heap subclass: subtype_dealloc does it,
     * since this base type is static */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *kmc_adopt(CacheObject *cache, void *p, Py_ssize_t size)
{
    ObjectObject *obj = kmc_object_new(cache, p, size);
    if (!obj) {
        kmc_cache_free(cache->cache, p);
        return NULL;
    }
    if (cache->track && kmc_track(cache, "alloc", p) < 0) {
        Py_DECREF(obj); /* its dealloc gives the object back */
        return NULL;
    }
    return (PyObject *)obj;
}

static PyObject *alloc_one(CacheObject *self, int zero)
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    void *p;
    while (!(p = kmc_cache_alloc(self->cache, zero))) {
        if (zero && self->ctor) {
            PyErr_SetString(PyExc_ValueError,
                            "zalloc() on a cache with a ctor: the ctor's work would be lost");
            return NULL;
        }
        if (!raise_alloc_failure(self))
            return NULL;
    }
    return kmc_adopt(self, p, self->size);
}

static PyObject *cache_alloc(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    return alloc_one(self, 0);
}

static PyObject *cache_zalloc(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    return alloc_one(self, 1);
}

static PyObject *cache_alloc_bulk(CacheObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "zero", NULL};
    Py_ssize_t n;
    int zero = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|p:alloc_bulk", kwlist, ssize_arg, &n,
                                     &zero))
        return NULL;
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, not %zd", n);
        return NULL;
    }
    if (zero && self->ctor) {
        PyErr_SetString(PyExc_ValueError,
                        "zero=True on a cache with a ctor: the ctor's work would be lost");
        return NULL;
    }
    PyObject *list = PyList_New(n);
    void **ptrs = n ? PyMem_Malloc((size_t)n * sizeof(void *)) : NULL;
    if (!list || (n && !ptrs)) {
        Py_XDECREF(list);
        PyMem_Free(ptrs);
        return PyErr_NoMemory();
    }
    kmc_status st;
    while ((st = kmc_cache_alloc_bulk(self->cache, (size_t)n, ptrs, zero)) != KMC_OK) {
        if (!raise_alloc_failure(self)) {
            Py_DECREF(list);
            PyMem_Free(ptrs);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ObjectObject *obj = kmc_object_new(self, ptrs[i], self->size);
        if (!obj) {
            /* give back the objects with no handle yet; the list frees the rest */
            for (Py_ssize_t j = i; j < n; j++)
                kmc_cache_free(self->cache, ptrs[j]);
            Py_DECREF(list);
            PyMem_Free(ptrs);
            return NULL;
        }
        PyList_SET_ITEM(list, i, (PyObject *)obj);
    }
    PyMem_Free(ptrs);
    if (self->track)
        for (Py_ssize_t i = 0; i < n; i++)
            if (kmc_track(self, "alloc", ((ObjectObject *)PyList_GET_ITEM(list, i))->ptr) < 0) {
                Py_DECREF(list);
                return NULL;
            }
    return list;
}

/* Check that @arg is a live handle of this cache that may be freed now:
 * 0 if so, -1 with an exception set, 1 when the error factory chose to go on
 * (the caller skips the object). */
static int check_freeable(CacheObject *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &KmcObject_Type))
        return kmc_raise_message(KMC_EINVALID_FREE, self, NULL,
                                 "Invalid free in %s: %.100s is not a kmemcache object",
                                 kmc_cache_name(self->cache), Py_TYPE(arg)->tp_name)
                   ? 1
                   : -1;
    ObjectObject *obj = (ObjectObject *)arg;
    if (obj->owner != self && obj->ptr) {
        const char *other = !obj->owner        ? "none (kmalloc pages)"
                            : obj->owner->cache ? kmc_cache_name(obj->owner->cache)
                                                : "?";
        return kmc_raise_message(KMC_EINVALID_FREE, self, obj->ptr,
                                 "Invalid free of %p in %s: it belongs to cache %s",
                                 (void *)obj->ptr, kmc_cache_name(self->cache), other)
                   ? 1
                   : -1;
    }
    return 0;
}

static PyObject *cache_free(CacheObject *self, PyObject *arg)
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    int r = check_freeable(self, arg);
    if (r < 0)
        return NULL;
    if (r == 0 && kmc_object_free((ObjectObject *)arg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *cache_free_bulk(CacheObject *self, PyObject *arg)
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "free_bulk() takes a sequence of objects");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *seen = PySet_New(NULL);
    /* items the error factory chose to go on past: not freed */
    char *skip = n ? PyMem_Calloc((size_t)n, 1) : NULL;
    if (!seen || (n && !skip)) {
        if (seen)
            PyErr_NoMemory();
        goto fail;
    }
    /* all or nothing: every check before the first free */
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = check_freeable(self, items[i]);
        if (r < 0)
            goto fail;
        if (r > 0) {
            skip[i] = 1;
            continue;
        }
        ObjectObject *obj = (ObjectObject *)items[i];
        if (!obj->ptr) {
            if (!kmc_raise_message(KMC_EDOUBLE_FREE, self, NULL,
                                   "Object already free: item %zd was freed before", i))
                goto fail;
            skip[i] = 1;
            continue;
        }
        if (obj->exports) {
            PyErr_Format(PyExc_BufferError,
                         "cannot free item %zd: %zd buffer view(s) of it exist", i,
                         obj->exports);
            goto fail;
        }
        int dup = PySet_Contains(seen, items[i]);
        if (dup < 0 || (!dup && PySet_Add(seen, items[i]) < 0))
            goto fail;
        if (dup) {
            if (!kmc_raise_message(KMC_EDOUBLE_FREE, self, obj->ptr,
                                   "Object already free: item %zd appears twice", i))
                goto fail;
            skip[i] = 1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!skip[i] && kmc_object_free((ObjectObject *)items[i]) < 0)
            goto fail;
    PyMem_Free(skip);
    Py_DECREF(seen);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    PyMem_Free(skip);
    Py_XDECREF(seen);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *cache_shrink(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    return PyLong_FromSize_t(kmc_cache_shrink(self->cache));
}

static PyObject *cache_destroy(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    if (self->in_ctor) {
        /* the engine is building a slab of this cache and would go on
         * using it after the destroy */
        if (!kmc_raise_message(KMC_EBUSY, self, NULL,
                               "Cannot destroy %s while its ctor runs: a slab is being built",
                               kmc_cache_name(self->cache)))
            return NULL;
        Py_RETURN_NONE;
    }
    kmc_status st = kmc_cache_destroy(self->cache);
    if (st == KMC_EBUSY) {
        if (!kmc_raise(st))
            return NULL;
        Py_RETURN_NONE; /* told to go on: the cache stays, as SLUB leaves it */
    }
    self->cache = NULL;
    if (st != KMC_OK && !kmc_raise(st))
        return NULL; /* destroyed, but damage was found on the way */
    Py_RETURN_NONE;
}

static PyObject *cache_validate(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    size_t problems = 0;
    kmc_status st = kmc_cache_validate(self->cache, &problems);
    if (st != KMC_OK && !kmc_raise(st))
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

/* kmc_stats_t's fields in struct order: the keys of kmc_stats_dict() and what
 * the module's _stats_layout() describes, so that no Python code declares the
 * struct again (the benchmarks read it through ctypes). */
#define STAT_FIELD(f) #f, offsetof(kmc_stats_t, f), sizeof(((kmc_stats_t *)0)->f)
static const struct stat_field {
    const char *name;
    size_t offset, size; /* bytes; size is 4 or 8 */
} stat_fields[] = {
    {STAT_FIELD(active_objs)},     {STAT_FIELD(num_objs)},
    {STAT_FIELD(objsize)},         {STAT_FIELD(objperslab)},
    {STAT_FIELD(pagesperslab)},    {STAT_FIELD(active_slabs)},
    {STAT_FIELD(num_slabs)},       {STAT_FIELD(size)},
    {STAT_FIELD(align)},           {STAT_FIELD(slab_size)},
    {STAT_FIELD(partial_slabs)},   {STAT_FIELD(empty_slabs)},
    {STAT_FIELD(allocs)},          {STAT_FIELD(frees)},
    {STAT_FIELD(slabs_created)},   {STAT_FIELD(slabs_released)},
    {STAT_FIELD(committed_bytes)}, {STAT_FIELD(metadata_bytes)},
    {STAT_FIELD(arenas)},          {STAT_FIELD(bitmap_words)},
    {STAT_FIELD(max_scan)},        {STAT_FIELD(flags)},
};
#undef STAT_FIELD
#define N_STAT_FIELDS (sizeof(stat_fields) / sizeof(stat_fields[0]))

static unsigned long long stat_value(const kmc_stats_t *s, const struct stat_field *f)
{
    const char *p = (const char *)s + f->offset;
    if (f->size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* The engine's counters of @c as a dict (also used for every cache by
 * the module's _caches()). */
PyObject *kmc_stats_dict(kmc_cache_t *c)
{
    kmc_stats_t s;
    kmc_cache_stats(c, &s);
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PyObject *name = PyUnicode_FromString(kmc_cache_name(c));
    if (!name || PyDict_SetItemString(d, "name", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(name);
    for (size_t i = 0; i < N_STAT_FIELDS; i++)
        if (put_stat(d, stat_fields[i].name, stat_value(&s, &stat_fields[i])) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    return d;
}

/* ((name, offset, size), ...) of kmc_stats_t's fields in struct order, and
 * sizeof(kmc_stats_t). */
PyObject *kmc_stats_layout(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *fields = PyTuple_New((Py_ssize_t)N_STAT_FIELDS);
    for (size_t i = 0; fields && i < N_STAT_FIELDS; i++) {
        const struct stat_field *f = &stat_fields[i];
        PyObject *t = Py_BuildValue("(snn)", f->name, (Py_ssize_t)f->offset, (Py_ssize_t)f->size);
        if (!t)
            Py_CLEAR(fields);
        else
            PyTuple_SET_ITEM(fields, (Py_ssize_t)i, t);
    }
    return fields ? Py_BuildValue("(Nn)", fields, (Py_ssize_t)sizeof(kmc_stats_t)) : NULL;
}

static PyObject *cache_stats_raw(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    return kmc_stats_dict(self->cache);
}

static void collect_address(void *object, void *arg)
{
    PyObject *addr = PyLong_FromVoidPtr(object);
    if (!addr || PyList_Append((PyObject *)arg, addr) < 0)
        PyErr_Clear(); /* a missed address only shortens a report */
    Py_XDECREF(addr);
}

static PyObject *cache_live_addresses(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    if (list)
        kmc_cache_for_each_live(self->cache, collect_address, list);
    return list;
}

static PyObject *cache_set_track(CacheObject *self, PyObject *arg)
{
    if (arg != Py_None && !PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "track must be callable or None");
        return NULL;
    }
    Py_XSETREF(self->track, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

#define GETTER(field, expr)                                                                   \
    static PyObject *cache_get_##field(CacheObject *self, void *Py_UNUSED(closure))         \
    {                                                                                         \
        if (kmc_cache_check_alive(self) < 0)                                                  \
            return NULL;                                                                      \
        return expr;                                                                          \
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
    if (!raw || !kmc_facade)
        return raw;
    return PyObject_CallMethod(kmc_facade, "make_stats", "N", raw);
}

static PyObject *cache_leaks(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    if (!kmc_facade)
        return cache_live_addresses(self, NULL);
    return PyObject_CallMethod(kmc_facade, "leaks", "O", (PyObject *)self);
}

static PyObject *cache_enter(CacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmc_cache_check_alive(self) < 0)
        return NULL;
    return Py_NewRef((PyObject *)self);
}

static PyObject *cache_exit(CacheObject *self, PyObject *Py_UNUSED(args))
{
    if (self->cache) {
        PyObject *r = cache_destroy(self, NULL);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_FALSE;
}

static PyObject *cache_repr(CacheObject *self)
{
    if (!self->cache)
        return PyUnicode_FromString("<kmemcache.Cache (destroyed)>");
    kmc_stats_t s;
    kmc_cache_stats(self->cache, &s);
    return PyUnicode_FromFormat("<kmemcache.Cache '%s' size=%zu align=%zu active=%llu/%llu "
                                "slabs=%llu>",
                                kmc_cache_name(self->cache), (size_t)s.size, (size_t)s.align,
                                (unsigned long long)s.active_objs,
                                (unsigned long long)s.num_objs,
                                (unsigned long long)s.num_slabs);
}

static PyObject *cache_get_ctor(CacheObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->ctor ? self->ctor : Py_None);
}

static PyMethodDef cache_methods[] = {
    {"alloc", (PyCFunction)cache_alloc, METH_NOARGS,
     "alloc()\n--\n\nOne object (contents undefined, or as the ctor left them)."},
    {"zalloc", (PyCFunction)cache_zalloc, METH_NOARGS,
     "zalloc()\n--\n\nOne zeroed object. ValueError on a cache with a ctor."},
    {"alloc_bulk", (PyCFunction)(void (*)(void))cache_alloc_bulk, METH_VARARGS | METH_KEYWORDS,
     "alloc_bulk(n, zero=False)\n--\n\nA list of n objects, all or nothing."},
    {"free", (PyCFunction)cache_free, METH_O,
     "free(obj)\n--\n\nGive obj back. DoubleFreeError, InvalidFreeError, BufferError."},
    {"free_bulk", (PyCFunction)cache_free_bulk, METH_O,
     "free_bulk(objs)\n--\n\nFree every object of a sequence; checks all first."},
    {"shrink", (PyCFunction)cache_shrink, METH_NOARGS,
     "shrink()\n--\n\nRelease every empty slab to the OS; return the bytes given back."},
    {"destroy", (PyCFunction)cache_destroy, METH_NOARGS,
     "destroy()\n--\n\nRelease the cache. CacheBusyError while objects are live."},
    {"validate", (PyCFunction)cache_validate, METH_NOARGS,
     "validate()\n--\n\nCheck every slab; raise on the first problem (see the on-error "
     "policy), return how many were found."},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS,
     "stats()\n--\n\nThe cache's counters now, a SlabStats (/proc/slabinfo's fields "
     "first)."},
    {"leaks", (PyCFunction)cache_leaks, METH_NOARGS,
     "leaks()\n--\n\nThe live objects, lowest address first, each with where it was "
     "allocated when the cache has Flags.STORE_USER."},
    {"__enter__", (PyCFunction)cache_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)cache_exit, METH_VARARGS,
     "Destroy the cache (CacheBusyError while objects are live)."},
    {"_stats", (PyCFunction)cache_stats_raw, METH_NOARGS, NULL},
    {"_live_addresses", (PyCFunction)cache_live_addresses, METH_NOARGS, NULL},
    {"_set_track", (PyCFunction)cache_set_track, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef cache_getset[] = {
    {"name", (getter)cache_get_name, NULL, "The cache's name.", NULL},
    {"size", (getter)cache_get_size, NULL, "Bytes per object, as asked for.", NULL},
    {"align", (getter)cache_get_align, NULL, "The guaranteed alignment in bytes.", NULL},
    {"flags", (getter)cache_get_flags, NULL, "The cache's flags, as an int.", NULL},
    {"destroyed", (getter)cache_get_destroyed, NULL, "True once destroyed.", NULL},
    {"ctor", (getter)cache_get_ctor, NULL, "The constructor, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* This type is kmemcache.Cache itself, not the base of a Python class:
 * CPython 3.11 calls a C method through its fast path only on an instance of
 * exactly the method's type (about 180 instructions fewer per alloc+free
 * pair than through a subclass). Its instance dict is made with the object,
 * since a dict pointer left NULL stops the method lookup from specialising. */
PyTypeObject KmcCache_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmemcache.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc =
        "Cache(name, size, align=0, flags=0, ctor=None)\n--\n\n"
        "A cache of objects of `size` bytes, each aligned to `align` bytes.\n\n"
        "name: a non-empty str without spaces (it is a /proc/slabinfo column).\n"
        "size: bytes per object, 1 to 4 MiB.\n"
        "align: 0 (the default minimum, 8 bytes) or a power of two up to 2 MiB.\n"
        "flags: kmemcache.Flags; Flags.HWCACHE_ALIGN aligns on the cache line.\n"
        "ctor: called with a memoryview of each object once, when its slab is\n"
        "    created (not on every alloc). The view is released after the call.\n\n"
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
