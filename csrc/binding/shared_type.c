/*
 * shared_type.c - kmemcache.SharedCache and kmemcache.SharedObject: a Cache
 * whose objects live in a shared-memory region, and the handle of one such
 * object, which carries the object's generation and pickles as a
 * reference (region, offset, generation).
 *
 * What a handle means for the object (the engine's holders, kmc.h):
 *   - alloc(): this process holds the object; the handle is its hold;
 *   - free(): the object ends for every process (a later free anywhere,
 *     with this generation, is a double free);
 *   - dropping the handle: this process lets go; the object is freed when
 *     no process holds it and no pickle of it is in flight;
 *   - pickling: a reference in flight, which keeps the object alive until
 *     a process unpickles it (and becomes a holder), whoever dies;
 *   - a second handle of one object in one process (object_at, unpickling
 *     in the sender, copy.copy) shares the process's one hold: the engine's
 *     hold is let go when the last of them is dropped.
 * Python code runs in here (the error factory, the tracker, the GC): as in
 * the Cache type, nothing read before it is trusted after it.
 *
 * A reference is (kmemcache._shared_ref, (bytes,)): one bytes object packs
 * the fields (ref_t), so that pickling and unpickling one costs a few pickle
 * opcodes, one global and one call of _shared_ref(), which mod_shared_ref
 * does: it finds the attachment a reference names in the list of this
 * process's attachments below, with no Python code; only a miss attaches
 * through the package.
 */
#include <stdbool.h>

#include "binding.h"

static kmcpy_handle_pool_t pool = {.type = &SharedHandle_Type};

/* A pickled reference: fixed-width fields in this machine's byte order (a
 * reference names shared memory: it never leaves the machine), then the
 * region's name, 1 to KMC_NAME_MAX - 1 bytes, no terminator. Every field is
 * read at its full width, so no number can wrap onto another object. */
typedef struct ref_s {
    uint64_t nonce;  /* the region's */
    uint64_t offset; /* kmc_shared_offset() */
    uint32_t gen;    /* the object's generation, never KMC_SHARED_ANY_GEN */
} ref_t;
#define REF_HEAD (sizeof(uint64_t) * 2 + sizeof(uint32_t)) /* bytes before the name */

static PyObject *shared_ref_fn; /* kmemcache._shared_ref, from the facade once */

static kmc_cache_t *engine(SharedCacheObject *self) { return self->base.cache; }

static SharedHandleObject *handle_new(SharedCacheObject *owner, void *ptr, uint32_t gen)
{
    SharedHandleObject *self = (SharedHandleObject *)kmcpy_handle_take(&pool);
    if (!self)
        return NULL;
    self->base.ptr = ptr;
    self->base.size = owner->base.size;
    self->base.exports = 0;
    self->base.owner = (CacheObject *)Py_NewRef((PyObject *)owner);
    self->gen = gen;
    owner->handles++;
    kmcpy_trace(ptr, self->base.size); /* as any kmemcache object */
    PyObject_GC_Track(self);
    return self;
}

/* The handle no longer names an object: its ptr cleared, the count of
 * this process's handles of live objects down by one, and (@untrace) the
 * object no longer traced by tracemalloc in this process. */
static void handle_clear(SharedHandleObject *self, bool untrace)
{
    if (self->base.ptr && self->base.owner)
        ((SharedCacheObject *)self->base.owner)->handles--;
    if (self->base.ptr && untrace)
        kmcpy_untrace(self->base.ptr);
    self->base.ptr = NULL;
}

/* --- second handles of one object ------------------------------------------------ */

static PyObject *dup_key(SharedCacheObject *self, void *p, uint32_t gen)
{
    return Py_BuildValue("(KI)", (unsigned long long)kmc_shared_offset(engine(self), p),
                         (unsigned int)gen);
}

/* One more handle of (@p, @gen) in this process. 0, or -1 with an exception. */
static int dup_add(SharedCacheObject *self, void *p, uint32_t gen)
{
    if (!self->dups && !(self->dups = PyDict_New()))
        return -1;
    PyObject *key = dup_key(self, p, gen);
    if (!key)
        return -1;
    PyObject *n = PyDict_GetItemWithError(self->dups, key);
    long count = n ? PyLong_AsLong(n) : 0;
    PyObject *v = PyErr_Occurred() ? NULL : PyLong_FromLong(count + 1);
    int rc = v ? PyDict_SetItem(self->dups, key, v) : -1;
    Py_XDECREF(v);
    Py_DECREF(key);
    return rc;
}

/* A handle of (@p, @gen) is going: 1 when another handle of it remains in
 * this process (the hold stays), 0 when this was the last. No exception. */
static int dup_take(SharedCacheObject *self, void *p, uint32_t gen)
{
    if (!self->dups || !PyDict_GET_SIZE(self->dups))
        return 0;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int more = 0;
    PyObject *key = dup_key(self, p, gen);
    PyObject *n = key ? PyDict_GetItemWithError(self->dups, key) : NULL;
    if (n) {
        long count = PyLong_AsLong(n);
        more = 1;
        if (count <= 1) {
            PyDict_DelItem(self->dups, key);
        } else {
            PyObject *v = PyLong_FromLong(count - 1);
            if (v)
                PyDict_SetItem(self->dups, key, v);
            Py_XDECREF(v);
        }
    }
    Py_XDECREF(key);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return more;
}

/* The object is freed: its other handles here are stale, not holds. */
static void dup_forget(SharedCacheObject *self, void *p, uint32_t gen)
{
    if (!self->dups || !PyDict_GET_SIZE(self->dups))
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *key = dup_key(self, p, gen);
    if (key && PyDict_DelItem(self->dups, key) < 0)
        PyErr_Clear();
    Py_XDECREF(key);
    PyErr_Restore(type, value, tb);
}

/* --- the handle ---------------------------------------------------------------------- */

#define FREE_TRIES 4

/* kmcpy_handle_free of a shared object: free it for every process. */
static int shared_free_handle(HandleObject *h)
{
    SharedHandleObject *self = (SharedHandleObject *)h;
    SharedCacheObject *owner = (SharedCacheObject *)h->owner;
    void *p = NULL;
    for (int tries = 0;; tries++) {
        if (!h->ptr) {
            if (p)
                return 0; /* Python code run by a report freed it meanwhile */
            return kmcpy_raise_message(KMC_EDOUBLE_FREE, &owner->base, NULL,
                                       "Object already free: this handle was freed before "
                                       "(cache %s)",
                                       owner->base.cache ? kmc_cache_name(owner->base.cache)
                                                         : "(detached)")
                       ? 0
                       : -1;
        }
        if (h->exports) {
            PyErr_Format(PyExc_BufferError,
                         "cannot free a kmemcache object while %zd buffer view%s of it exist%s",
                         h->exports, h->exports == 1 ? "" : "s", h->exports == 1 ? "s" : "");
            return -1;
        }
        if (!owner->base.cache) {
            handle_clear(self, true);
            return kmcpy_cache_check_alive(&owner->base);
        }
        if (tries == FREE_TRIES) {
            PyErr_Format(kmcpy_slab_error, "cannot free %p of %s: the allocator refused %d times",
                         h->ptr, kmc_cache_name(engine(owner)), FREE_TRIES);
            return -1;
        }
        p = h->ptr;
        kmc_status st = kmc_shared_free(engine(owner), p, self->gen);
        if (st == KMC_OK)
            break;
        if (st == KMC_EDOUBLE_FREE) {
            /* freed elsewhere (another process, or C code): this handle
             * names nothing any more, whatever the report makes of it */
            handle_clear(self, true);
            dup_forget(owner, p, self->gen);
            return kmcpy_raise(st) ? 0 : -1;
        }
        if (!kmcpy_raise(st))
            return -1;
        if (st == KMC_EDOUBLE_FREE || st == KMC_EINVALID_FREE) {
            handle_clear(self, true); /* told to go on: nothing to free */
            return 0;
        }
    }
    handle_clear(self, true);
    dup_forget(owner, p, self->gen);
    if (owner->base.track && kmcpy_track(&owner->base, "free", p) < 0)
        return -1;
    return 0;
}

static void handle_dealloc(SharedHandleObject *self)
{
    PyObject_GC_UnTrack(self);
    HandleObject *h = &self->base;
    SharedCacheObject *owner = (SharedCacheObject *)h->owner;
    bool last = true; /* the last handle of its object here */
    if (h->ptr && owner && owner->base.cache)
        last = !dup_take(owner, h->ptr, self->gen);
    if (h->ptr && owner && owner->base.cache && last) {
        /* the last handle here: this process lets go. A report is written
         * as unraisable, naming the cache, never the dying handle. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        int freed = 0;
        void *p = h->ptr;
        kmc_status st = kmc_shared_drop(engine(owner), p, self->gen, &freed);
        if (st != KMC_OK && !kmcpy_raise(st))
            kmcpy_write_unraisable("while dropping a kmemcache shared object of %s",
                                   owner->base.cache ? kmc_cache_name(owner->base.cache) : "?");
        else if (freed && owner->base.track && kmcpy_track(&owner->base, "free", p) < 0)
            kmcpy_write_unraisable("by the tracker of kmemcache cache %s",
                                   owner->base.cache ? kmc_cache_name(owner->base.cache) : "?");
        PyErr_Restore(type, value, tb);
    }
    handle_clear(self, last);
    Py_CLEAR(h->owner);
    kmcpy_handle_put(&pool, (PyObject *)self);
}

static PyObject *handle_get_offset(SharedHandleObject *self, void *Py_UNUSED(closure))
{
    if (kmcpy_handle_check_live(&self->base) < 0)
        return NULL;
    SharedCacheObject *owner = (SharedCacheObject *)self->base.owner;
    return PyLong_FromUnsignedLongLong(kmc_shared_offset(engine(owner), self->base.ptr));
}

static PyObject *handle_get_generation(SharedHandleObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->gen);
}

/* Pickled as a reference (ref_t), which keeps the object alive for the
 * receiver: one reference in flight, taken last, once nothing can fail. */
static PyObject *handle_reduce(SharedHandleObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_handle_check_live(&self->base) < 0)
        return NULL;
    SharedCacheObject *owner = (SharedCacheObject *)self->base.owner;
    if (kmcpy_cache_check_alive(&owner->base) < 0)
        return NULL;
    if (!shared_ref_fn && !(shared_ref_fn = kmcpy_facade_attr("shared_ref")))
        return NULL;
    kmc_cache_t *c = engine(owner);
    const char *name = kmc_cache_name(c);
    size_t name_len = strlen(name);
    char packed[REF_HEAD + KMC_NAME_MAX];
    uint64_t offset = kmc_shared_offset(c, self->base.ptr);
    memcpy(packed, &owner->nonce, sizeof(uint64_t));
    memcpy(packed + sizeof(uint64_t), &offset, sizeof(uint64_t));
    memcpy(packed + 2 * sizeof(uint64_t), &self->gen, sizeof(uint32_t));
    memcpy(packed + REF_HEAD, name, name_len);
    PyObject *data = PyBytes_FromStringAndSize(packed, (Py_ssize_t)(REF_HEAD + name_len));
    PyObject *args = data ? PyTuple_New(1) : NULL;
    PyObject *result = args ? PyTuple_New(2) : NULL;
    if (!result) {
        Py_XDECREF(args);
        Py_XDECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(args, 0, data);
    PyTuple_SET_ITEM(result, 0, Py_NewRef(shared_ref_fn));
    PyTuple_SET_ITEM(result, 1, args);
    kmc_status st = kmc_shared_ticket(c, self->base.ptr, self->gen);
    if (st != KMC_OK) {
        Py_DECREF(result);
        return kmcpy_raise_status(st);
    }
    return result;
}

/* _shared_reduce(obj), which copyreg's dispatch table lists (kmemcache.shared):
 * a pickler finds it there before it looks for obj.__reduce_ex__. */
static PyObject *handle_reduce_o(PyObject *Py_UNUSED(module), PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &SharedHandle_Type)) {
        PyErr_Format(PyExc_TypeError, "_shared_reduce takes a SharedObject, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return handle_reduce((SharedHandleObject *)obj, NULL);
}

/* Not the base Object's by-value reduce: a reference under every protocol. */
static PyObject *handle_reduce_ex(SharedHandleObject *self, PyObject *Py_UNUSED(protocol))
{
    return handle_reduce(self, NULL);
}

static PyObject *handle_repr(SharedHandleObject *self)
{
    SharedCacheObject *owner = (SharedCacheObject *)self->base.owner;
    const char *name = owner->base.cache ? kmc_cache_name(owner->base.cache) : "(detached)";
    if (!self->base.ptr || !owner->base.cache)
        return PyUnicode_FromFormat("<kmemcache.SharedObject of %s, freed>", name);
    return PyUnicode_FromFormat(
        "<kmemcache.SharedObject of %s, %zd bytes at offset %llu, "
        "generation %u>",
        name, self->base.size, (unsigned long long)kmc_shared_offset(engine(owner), self->base.ptr),
        (unsigned)self->gen);
}

static PyMethodDef handle_methods[] = {
    /* listed again, not inherited: see kmcpy_cache_ops_t */
    {"free", (PyCFunction)kmcpy_handle_free_method, METH_NOARGS,
     "free($self, /)\n--\n\nEnd the object for every process. BufferError while views exist; "
     "DoubleFreeError if it was freed already, here or in another process."},
    {"__enter__", (PyCFunction)kmcpy_handle_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThe object."},
    {"__exit__", (PyCFunction)kmcpy_handle_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\nFree the object unless it was freed."},
    {"__reduce__", (PyCFunction)handle_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nA reference (region, offset, generation): unpickled in "
     "any process of this user, it names this object, which stays alive until then."},
    {"__reduce_ex__", (PyCFunction)handle_reduce_ex, METH_O,
     "__reduce_ex__($self, protocol, /)\n--\n\nThe reference, whatever the protocol."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
    {"offset", (getter)handle_get_offset, NULL,
     "The object's offset in its region's slab area: the same in every process.", NULL},
    {"generation", (getter)handle_get_generation, NULL,
     "Which life of its slot the object is (it changes at every allocation).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* PyVarObject_HEAD_INIT ends without a comma: left as written */
/* clang-format off */
PyTypeObject SharedHandle_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmemcache.SharedObject",
    .tp_basicsize = sizeof(SharedHandleObject),
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_repr = (reprfunc)handle_repr,
    /* garbage collection and traverse inherited from kmemcache.Object */
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One object of a kmemcache.SharedCache: memory in a shared-memory region,\n"
              "exported through the buffer protocol (format 'B'). Pickles as a\n"
              "reference, which names the same memory in the process that unpickles it.",
    .tp_methods = handle_methods,
    .tp_getset = handle_getset,
};
/* clang-format on */

/* --- the cache -------------------------------------------------------------------------- */

/* 0 if @self is a live shared cache. Cache.__init__ run on an uninitialised
 * SharedCache gives it a private engine cache: refused here. */
static int shared_alive(CacheObject *self)
{
    if (kmcpy_cache_check_alive(self) < 0)
        return -1;
    if (!self->shared) {
        PyErr_SetString(PyExc_TypeError,
                        "this SharedCache was initialised by Cache.__init__: it is not shared");
        return -1;
    }
    return 0;
}

/* --- the process's attachments ------------------------------------------------------ */

/* Every SharedCache object of this process that was made or attached, in a
 * list threaded through them (linked when made, unlinked when deallocated),
 * so that unpickling finds the attachment a reference names by walking a
 * few pointers, with no Python code. Those attached by unpickling are also
 * kept (the list holds a reference), the KEPT_MAX most recently used, so
 * that a worker receiving objects one by one does not attach and detach for
 * each, and one that sees many short-lived regions keeps a bounded number of
 * descriptors and mappings. The GIL guards the list. */
#define KEPT_MAX 8
static SharedCacheObject *attachments;
static uint64_t attach_clock; /* one tick per use */
static int nr_kept;

static void link_attachment(SharedCacheObject *self)
{
    if (self->linked)
        return; /* initialised again after it was detached */
    self->linked = 1;
    self->prev = NULL;
    self->next = attachments;
    if (attachments)
        attachments->prev = self;
    attachments = self;
}

static void unlink_attachment(SharedCacheObject *self)
{
    if (!self->linked)
        return;
    if (self->prev)
        self->prev->next = self->next;
    else
        attachments = self->next;
    if (self->next)
        self->next->prev = self->prev;
    self->linked = 0;
}

/* The live attachment of region @name (@len bytes) made with @nonce, or
 * NULL (borrowed). No Python code, no exception. */
static SharedCacheObject *find_attachment(uint64_t nonce, const char *name, size_t len)
{
    for (SharedCacheObject *c = attachments; c; c = c->next) {
        if (c->nonce != nonce || !c->base.cache || !c->base.shared)
            continue;
        const char *n = kmc_cache_name(c->base.cache);
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            c->used = ++attach_clock;
            return c;
        }
    }
    return NULL;
}

/* Keep @self (attached by unpickling), and no more than KEPT_MAX: the least
 * recently used others are let go of (each detaches now, or when its last
 * handle goes). */
static void keep_attachment(SharedCacheObject *self)
{
    if (!self->kept) {
        self->kept = 1;
        Py_INCREF(self);
        nr_kept++;
    }
    self->used = ++attach_clock;
    while (nr_kept > KEPT_MAX) {
        SharedCacheObject *oldest = NULL;
        for (SharedCacheObject *c = attachments; c; c = c->next)
            if (c->kept && c != self && (!oldest || c->used < oldest->used))
                oldest = c;
        oldest->kept = 0;
        nr_kept--;
        Py_DECREF(oldest); /* may unlink it: the walk is over */
    }
}

/* Fill in a new SharedCache around engine cache @made (its ctor @ctor),
 * then tell the package (debug options, exit hooks). */
static int adopt_cache(SharedCacheObject *self, kmc_cache_t *made, PyObject *ctor)
{
    kmc_shared_info_t info;
    kmc_shared_info(made, &info);
    self->base.shared = 1;
    self->nonce = info.nonce;
    link_attachment(self);
    return kmcpy_cache_adopt(&self->base, made, ctor, "attach_shared");
}

static int shared_init(SharedCacheObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name",     "size",          "align", "flags",
                             "capacity", "max_processes", "ctor",  NULL};
    PyObject *name, *size_o, *align_o = NULL, *flags_o = NULL, *cap_o = NULL, *procs_o = NULL,
                             *ctor = Py_None;
    Py_ssize_t capacity = 0, procs = KMC_SHARED_DEFAULT_PROCS;
    kmcpy_cache_args_t a;
    if (kmcpy_check_uninitialised(&self->base, 0) < 0 ||
        !PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO$OOO:SharedCache", kwlist, &name, &size_o,
                                     &align_o, &flags_o, &cap_o, &procs_o, &ctor))
        return -1;
    if (!cap_o) {
        PyErr_SetString(PyExc_TypeError,
                        "SharedCache() needs capacity=, the region's size in bytes at most");
        return -1;
    }
    if (kmcpy_cache_arg_values(name, size_o, align_o, flags_o, &a) < 0 ||
        kmcpy_ssize_value(cap_o, "capacity", &capacity) < 0 ||
        (procs_o && kmcpy_ssize_value(procs_o, "max_processes", &procs) < 0))
        return -1;
    if (strchr(a.name, '/')) {
        PyErr_Format(PyExc_ValueError, "a shared cache name must not contain '/': %R", name);
        return -1;
    }
    if (kmcpy_check_cache_args(a.size, a.align, a.flags, ctor) < 0)
        return -1;
    if (capacity < 1) {
        PyErr_Format(PyExc_ValueError, "capacity must be a positive number of bytes, not %zd",
                     capacity);
        return -1;
    }
    if (procs < 1 || procs > (Py_ssize_t)KMC_SHARED_MAX_PROCS) {
        PyErr_Format(PyExc_ValueError, "max_processes must be 1 to %u, not %zd",
                     KMC_SHARED_MAX_PROCS, procs);
        return -1;
    }
    if (kmcpy_check_poison_ctor((unsigned long long)a.flags, ctor) < 0 ||
        kmcpy_debug_flags(name, &a.flags, ctor) < 0 ||
        kmcpy_check_uninitialised(&self->base, 1) < 0)
        return -1;
    kmc_cache_t *made;
    kmc_status st = kmc_shared_create(a.name, (size_t)a.size, (size_t)a.align, (unsigned)a.flags,
                                      (size_t)capacity, (unsigned)procs,
                                      ctor != Py_None ? kmcpy_call_ctor : NULL, self, &made);
    if (st != KMC_OK) {
        kmcpy_raise_status(st);
        return -1;
    }
    return adopt_cache(self, made, ctor);
}

static PyObject *shared_attach(PyTypeObject *cls, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "ctor", NULL};
    PyObject *name, *ctor = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$O:attach", kwlist, &name, &ctor))
        return NULL;
    const char *cname = kmcpy_cache_name_arg(name);
    if (!cname || kmcpy_check_ctor(ctor) < 0)
        return NULL;
    if (!PyType_IsSubtype(cls, &SharedCache_Type)) {
        PyErr_SetString(PyExc_TypeError, "attach() makes a SharedCache");
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    SharedCacheObject *self = empty ? (SharedCacheObject *)cls->tp_new(cls, empty, NULL) : NULL;
    Py_XDECREF(empty);
    if (!self)
        return NULL;
    kmc_cache_t *made;
    kmc_status st = kmc_shared_attach(cname, ctor != Py_None ? kmcpy_call_ctor : NULL, self, &made);
    if (st != KMC_OK) {
        kmcpy_raise_status(st);
        Py_DECREF(self);
        return NULL;
    }
    if (adopt_cache(self, made, ctor) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* The ops of kmcpy_cache_ops_t: the engine's shared calls. */

static void *shared_alloc(CacheObject *self, int zero, uint32_t *gen)
{
    return kmc_shared_alloc(self->cache, zero, gen);
}

static kmc_status shared_alloc_bulk(CacheObject *self, size_t n, void **ptrs, uint32_t *gens,
                                    int zero)
{
    return kmc_shared_alloc_bulk(self->cache, n, ptrs, gens, zero);
}

static HandleObject *shared_handle(CacheObject *self, void *p, Py_ssize_t Py_UNUSED(size),
                                   uint32_t gen)
{
    return (HandleObject *)handle_new((SharedCacheObject *)self, p, gen);
}

static void shared_give_back(CacheObject *self, void *p, uint32_t gen)
{
    kmc_shared_free(self->cache, p, gen);
}

/* All or nothing: every handle is checked here (live, unviewed), then the
 * engine checks every object (listed once too) and frees them under one
 * hold of the region's lock. No Python code runs between the checks and
 * the frees. */
static PyObject *shared_free_bulk(CacheObject *base, PyObject *seq)
{
    SharedCacheObject *self = (SharedCacheObject *)base;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    void **ptrs = PyMem_Malloc((n ? (size_t)n : 1) * sizeof(void *));
    uint32_t *gens = PyMem_Malloc((n ? (size_t)n : 1) * sizeof(uint32_t));
    PyObject *result = NULL;
    if (!ptrs || !gens) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = kmcpy_check_bulk_item(base, PyTuple_GET_ITEM(seq, i), i);
        if (r != 0) {
            if (r > 0)
                result = Py_NewRef(Py_None); /* told to go on: nothing freed */
            goto out;
        }
        SharedHandleObject *h = (SharedHandleObject *)PyTuple_GET_ITEM(seq, i);
        ptrs[i] = h->base.ptr;
        gens[i] = h->gen;
    }
    /* Python code (the error factory) may have run: read the items again */
    if (shared_alive(base) < 0 || kmcpy_bulk_unchanged(seq, ptrs) < 0)
        goto out;
    kmc_status st = kmc_shared_free_bulk(engine(self), (size_t)n, ptrs, gens);
    if (st != KMC_OK) {
        if (kmcpy_raise(st))
            result = Py_NewRef(Py_None); /* told to go on: nothing freed */
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        SharedHandleObject *h = (SharedHandleObject *)PyTuple_GET_ITEM(seq, i);
        handle_clear(h, true);
        dup_forget(self, ptrs[i], gens[i]);
    }
    int tracked = 0;
    for (Py_ssize_t i = 0; i < n && base->track && tracked == 0; i++)
        tracked = kmcpy_track(base, "free", ptrs[i]);
    if (tracked == 0)
        result = Py_NewRef(Py_None);
out:
    PyMem_Free(ptrs);
    PyMem_Free(gens);
    return result;
}

/* Detach this process, unless handles of its objects are alive here. */
static PyObject *shared_destroy(CacheObject *base, PyObject *Py_UNUSED(ignored))
{
    SharedCacheObject *self = (SharedCacheObject *)base;
    if (shared_alive(base) < 0)
        return NULL;
    if (self->handles || kmcpy_ctor_running(base)) {
        if (!kmcpy_raise_message(KMC_EBUSY, base, NULL,
                                 kmcpy_ctor_running(base)
                                     ? "Cannot detach %s while its ctor runs: a slab is being "
                                       "built"
                                     : "Cannot detach %s: this process still has %zd handle(s) "
                                       "of its objects (free or drop them first)",
                                 kmc_cache_name(engine(self)), self->handles))
            return NULL;
        Py_RETURN_NONE;
    }
    kmc_cache_t *c = engine(self);
    base->cache = NULL;
    kmc_cache_destroy(c); /* detaches: always succeeds */
    Py_RETURN_NONE;
}

const kmcpy_cache_ops_t kmcpy_shared_ops = {
    .what = "the shared cache",
    .object_what = "the shared object",
    .handle_type = &SharedHandle_Type,
    .not_handle = "an object of a shared cache",
    .shared = 1,
    .alive = shared_alive,
    .alloc = shared_alloc,
    .alloc_bulk = shared_alloc_bulk,
    .handle = shared_handle,
    .give_back = shared_give_back,
    .free_bulk = shared_free_bulk,
    .destroy = shared_destroy,
    .free_handle = shared_free_handle,
};

static PyObject *shared_leave(SharedCacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->base.cache)
        kmc_shared_leave(engine(self));
    Py_RETURN_NONE;
}

static PyObject *shared_exiting(SharedCacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->base.cache)
        kmc_shared_exiting(engine(self));
    Py_RETURN_NONE;
}

static PyObject *shared_reclaim(SharedCacheObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pickled", NULL};
    int pickled = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p:reclaim", kwlist, &pickled))
        return NULL;
    if (shared_alive(&self->base) < 0)
        return NULL;
    return PyLong_FromSize_t(kmc_shared_reclaim(engine(self), pickled));
}

/* A handle of the object at @offset (generation @gen, 0: any), this process
 * becoming one of its holders; @ticket claims a pickled reference. */
static PyObject *hold(SharedCacheObject *self, unsigned long long offset, uint32_t gen, int ticket)
{
    if (shared_alive(&self->base) < 0)
        return NULL;
    void *p;
    uint32_t got;
    int already = 0;
    kmc_status st = kmc_shared_hold(engine(self), offset, gen, ticket, &p, &got, &already);
    if (st != KMC_OK)
        return kmcpy_raise_status(st);
    if (already && dup_add(self, p, got) < 0)
        return NULL;
    SharedHandleObject *h = handle_new(self, p, got);
    if (!h) {
        if (!already || !dup_take(self, p, got))
            kmc_shared_drop(engine(self), p, got, NULL);
        return NULL;
    }
    return (PyObject *)h;
}

static PyObject *shared_object_at(SharedCacheObject *self, PyObject *arg)
{
    if (PyBool_Check(arg) || !PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "offset must be an int, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    unsigned long long off = PyLong_AsUnsignedLongLong(arg);
    if (off == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "offset %R names no object slot", arg);
        return NULL;
    }
    return hold(self, off, KMC_SHARED_ANY_GEN, 0);
}

static PyObject *shared_unlink(SharedCacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (shared_alive(&self->base) < 0)
        return NULL;
    kmc_status st = kmc_shared_unlink_cache(engine(self));
    if (st != KMC_OK)
        return kmcpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *info_dict(const kmc_shared_info_t *i)
{
    return Py_BuildValue(
        "{s:s, s:K, s:K, s:K, s:K, s:K, s:K, s:K, s:K, s:K, s:K, s:K, s:K, "
        "s:i, s:i}",
        "region", i->region, "nonce", (unsigned long long)i->nonce, "capacity",
        (unsigned long long)i->capacity, "region_bytes", (unsigned long long)i->region_bytes,
        "meta_bytes", (unsigned long long)i->meta_bytes, "slab_bytes",
        (unsigned long long)i->slab_bytes, "nslabs", (unsigned long long)i->nslabs, "max_processes",
        (unsigned long long)i->max_procs, "processes", (unsigned long long)i->procs, "magazine",
        (unsigned long long)i->magazine, "recoveries", (unsigned long long)i->recoveries,
        "reclaimed", (unsigned long long)i->reclaimed, "pickled", (unsigned long long)i->pickled,
        "slot", i->self, "creator_pid", i->creator_pid);
}

static PyObject *shared_info(SharedCacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (shared_alive(&self->base) < 0)
        return NULL;
    kmc_shared_info_t i;
    kmc_shared_info(engine(self), &i);
    return info_dict(&i);
}

static PyObject *shared_reduce(SharedCacheObject *self, PyObject *Py_UNUSED(ignored))
{
    if (shared_alive(&self->base) < 0)
        return NULL;
    PyObject *fn = kmcpy_facade_attr("shared_attach_pickled");
    if (!fn)
        return NULL;
    return Py_BuildValue("(N(sKO))", fn, kmc_cache_name(engine(self)),
                         (unsigned long long)self->nonce,
                         self->base.ctor ? self->base.ctor : Py_None);
}

static PyObject *shared_get_nonce(SharedCacheObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->nonce);
}

static PyObject *shared_repr(SharedCacheObject *self)
{
    if (!self->base.cache)
        return PyUnicode_FromString(self->base.initialised ? "<kmemcache.SharedCache (detached)>"
                                                           : "<kmemcache.SharedCache "
                                                             "(uninitialised)>");
    kmc_stats_t s;
    kmc_shared_info_t i;
    kmc_cache_stats(engine(self), &s);
    kmc_shared_info(engine(self), &i);
    return PyUnicode_FromFormat("<kmemcache.SharedCache '%s' size=%zu align=%zu active=%llu/%llu "
                                "slabs=%llu processes=%llu>",
                                kmc_cache_name(engine(self)), (size_t)s.size, (size_t)s.align,
                                (unsigned long long)s.active_objs, (unsigned long long)s.num_objs,
                                (unsigned long long)s.num_slabs, (unsigned long long)i.procs);
}

static int shared_traverse(SharedCacheObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dups);
    return Cache_Type.tp_traverse((PyObject *)self, visit, arg);
}

static int shared_clear(SharedCacheObject *self)
{
    Py_CLEAR(self->dups);
    return Cache_Type.tp_clear((PyObject *)self);
}

/* No handle is alive (each holds the cache): detach. */
static void shared_dealloc(SharedCacheObject *self)
{
    PyObject_GC_UnTrack(self);
    /* first: weakref callbacks run Python code, which must not find it */
    unlink_attachment(self);
    if (self->base.weakrefs)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->base.cache) {
        kmc_cache_t *c = engine(self);
        self->base.cache = NULL;
        kmc_cache_destroy(c);
    }
    Py_CLEAR(self->dups);
    Cache_Type.tp_clear((PyObject *)self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef shared_methods[] = {
    {"attach", (PyCFunction)(void (*)(void))shared_attach,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "attach(name, *, ctor=None)\n--\n\nAttach the shared cache that a process of this user "
     "made. ctor: what this process runs on the objects of a slab it builds (a cache made "
     "with a ctor needs one to build slabs)."},
    /* Cache's methods listed again, not inherited: see kmcpy_cache_ops_t */
    {"alloc", (PyCFunction)kmcpy_cache_alloc, METH_NOARGS,
     "alloc($self, /)\n--\n\nOne object, held by this process."},
    {"zalloc", (PyCFunction)kmcpy_cache_zalloc, METH_NOARGS,
     "zalloc($self, /)\n--\n\nOne zeroed object. ValueError on a cache with a ctor."},
    {"alloc_bulk", (PyCFunction)(void (*)(void))kmcpy_cache_alloc_bulk,
     METH_VARARGS | METH_KEYWORDS,
     "alloc_bulk($self, /, n, zero=False)\n--\n\nA list of n objects, all or nothing."},
    {"free", (PyCFunction)kmcpy_cache_free, METH_O,
     "free($self, obj, /)\n--\n\nEnd obj for every process. DoubleFreeError (also when another "
     "process freed it), InvalidFreeError, BufferError."},
    {"free_bulk", (PyCFunction)kmcpy_cache_free_bulk, METH_O,
     "free_bulk($self, objs, /)\n--\n\nFree every object of a sequence; checks all first."},
    {"destroy", (PyCFunction)shared_destroy, METH_NOARGS,
     "destroy($self, /)\n--\n\nDetach this process (the region lives on for the others): it "
     "lets go of what it holds. CacheBusyError while its objects are referenced here."},
    {"close", (PyCFunction)shared_destroy, METH_NOARGS, "close($self, /)\n--\n\ndestroy()."},
    {"__exit__", (PyCFunction)kmcpy_cache_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\nDetach (CacheBusyError while this "
     "process's objects are referenced; when the block raised, a warning and a note on its "
     "exception instead)."},
    {"reclaim", (PyCFunction)(void (*)(void))shared_reclaim, METH_VARARGS | METH_KEYWORDS,
     "reclaim($self, /, *, pickled=False)\n--\n\nGive back what dead processes held; return "
     "how many objects were freed. pickled=True also frees objects that only pickles name "
     "(only when none can still be loaded)."},
    {"object_at", (PyCFunction)shared_object_at, METH_O,
     "object_at($self, offset, /)\n--\n\nThe live object at offset (obj.offset in any "
     "process), this process becoming one of its holders. ValueError if offset names no "
     "object slot, StaleObjectError if none lives there."},
    {"unlink", (PyCFunction)shared_unlink, METH_NOARGS,
     "unlink($self, /)\n--\n\nRemove the region's name: processes attached keep working, new "
     "attaches fail, the memory goes when the last one detaches."},
    {"info", (PyCFunction)shared_info, METH_NOARGS,
     "info($self, /)\n--\n\nThe region: its name, capacity, sizes, processes attached, "
     "recoveries, objects reclaimed, pickles in flight, this process's slot."},
    {"__reduce__", (PyCFunction)shared_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickled by name: unpickled, it attaches the same region."},
    {"_leave", (PyCFunction)shared_leave, METH_NOARGS, "_leave($self, /)\n--\n\n"},
    {"_exiting", (PyCFunction)shared_exiting, METH_NOARGS, "_exiting($self, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef shared_getset[] = {
    {"nonce", (getter)shared_get_nonce, NULL,
     "A random number of the region, set when it was made: tells it from a later one of the "
     "same name.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* PyVarObject_HEAD_INIT ends without a comma: left as written */
/* clang-format off */
PyTypeObject SharedCache_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmemcache.SharedCache",
    .tp_basicsize = sizeof(SharedCacheObject),
    .tp_dealloc = (destructor)shared_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc =
        "SharedCache(name, size, align=0, flags=0, *, capacity, max_processes=64, ctor=None)\n"
        "--\n\n"
        "A cache whose slabs live in a shared-memory region of at most `capacity` bytes,\n"
        "which any process of this user attaches with SharedCache.attach(name). Its\n"
        "objects pickle as references: multiprocessing passes them without a copy.\n\n"
        "name, size, align, flags: as Cache's (the name must not contain '/').\n"
        "capacity: bytes of the region at most, metadata included; memory is used as\n"
        "    slabs are built.\n"
        "max_processes: processes attached at once, at most (1 to 4096).\n"
        "ctor: as Cache's, run in whichever process builds a slab.",
    .tp_traverse = (traverseproc)shared_traverse,
    .tp_clear = (inquiry)shared_clear,
    .tp_methods = shared_methods,
    .tp_getset = shared_getset,
    .tp_repr = (reprfunc)shared_repr,
    .tp_init = (initproc)shared_init,
};
/* clang-format on */

/* --- module functions ------------------------------------------------------------------- */

static PyObject *mod_shared_unlink(PyObject *Py_UNUSED(module), PyObject *name)
{
    const char *cname = kmcpy_cache_name_arg(name);
    if (!cname)
        return NULL;
    kmc_status st = kmc_shared_unlink(cname);
    if (st != KMC_OK)
        return kmcpy_raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *mod_shared_peek(PyObject *Py_UNUSED(module), PyObject *name)
{
    const char *cname = kmcpy_cache_name_arg(name);
    if (!cname)
        return NULL;
    kmcpy_cache_snapshot_t snap;
    kmc_shared_info_t info;
    snprintf(snap.name, sizeof(snap.name), "%s", cname);
    kmc_status st = kmc_shared_peek(cname, &snap.stats, &info);
    if (st != KMC_OK)
        return kmcpy_raise_status(st);
    return Py_BuildValue("(NN)", kmcpy_stats_dict(&snap), info_dict(&info));
}

static PyObject *mod_shared_region_name(PyObject *Py_UNUSED(module), PyObject *name)
{
    const char *cname = kmcpy_cache_name_arg(name);
    if (!cname)
        return NULL;
    char out[96];
    kmc_status st = kmc_shared_region_name(cname, out, sizeof(out));
    if (st != KMC_OK)
        return kmcpy_raise_status(st);
    return PyUnicode_FromString(out);
}

/* _shared_ref(reference): a SharedObject's pickle unpickled, this
 * process becoming one of its holders. The reference is untrusted: its
 * length is checked, then each field is read once at its full width; the
 * engine checks the offset and generation against the region. */
static PyObject *mod_shared_ref(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "a shared object reference is bytes, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    if (len < (Py_ssize_t)REF_HEAD + 1 || len > (Py_ssize_t)REF_HEAD + KMC_NAME_MAX - 1) {
        PyErr_Format(PyExc_ValueError,
                     "a shared object reference of %zd bytes, not %zu to %zu: not a reference "
                     "kmemcache made",
                     len, REF_HEAD + 1, REF_HEAD + KMC_NAME_MAX - 1);
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(arg);
    ref_t ref;
    memcpy(&ref.nonce, data, sizeof(uint64_t));
    memcpy(&ref.offset, data + sizeof(uint64_t), sizeof(uint64_t));
    memcpy(&ref.gen, data + 2 * sizeof(uint64_t), sizeof(uint32_t));
    if (ref.gen == KMC_SHARED_ANY_GEN) {
        PyErr_SetString(PyExc_ValueError, "generation 0 names no object");
        return NULL;
    }
    const char *name = data + REF_HEAD;
    size_t name_len = (size_t)len - REF_HEAD;
    PyObject *cache = (PyObject *)find_attachment(ref.nonce, name, name_len);
    if (cache) {
        Py_INCREF(cache); /* hold() may run Python code */
    } else {
        /* a miss: attach through the package (the nonce checked there) */
        PyObject *str = PyUnicode_DecodeUTF8(name, (Py_ssize_t)name_len, "strict");
        PyObject *lookup = str ? kmcpy_facade_attr("shared_lookup") : NULL;
        cache = lookup ? PyObject_CallFunction(lookup, "OK", str, (unsigned long long)ref.nonce)
                       : NULL;
        Py_XDECREF(lookup);
        Py_XDECREF(str);
        if (!cache)
            return NULL;
        if (!PyObject_TypeCheck(cache, &SharedCache_Type)) {
            PyErr_Format(PyExc_TypeError, "shared_lookup gave %.100s, not a SharedCache",
                         Py_TYPE(cache)->tp_name);
            Py_DECREF(cache);
            return NULL;
        }
    }
    PyObject *obj = hold((SharedCacheObject *)cache, ref.offset, ref.gen, 1);
    Py_DECREF(cache);
    return obj;
}

/* _shared_find(name, nonce): this process's live attachment, or None. */
static PyObject *mod_shared_find(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    unsigned long long nonce;
    if (!PyArg_ParseTuple(args, "UK:_shared_find", &name, &nonce))
        return NULL;
    Py_ssize_t len;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &len);
    if (!cname)
        return NULL;
    SharedCacheObject *c = find_attachment(nonce, cname, (size_t)len);
    return Py_NewRef(c ? (PyObject *)c : Py_None);
}

/* _shared_keep(cache): keep an attachment made by unpickling. */
static PyObject *mod_shared_keep(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &SharedCache_Type) || !((SharedCacheObject *)arg)->linked) {
        PyErr_SetString(PyExc_TypeError, "_shared_keep takes an attached SharedCache");
        return NULL;
    }
    keep_attachment((SharedCacheObject *)arg);
    Py_RETURN_NONE;
}

/* _shared_attachments(): this process's live attachments, a list. Each is
 * held before the list is made: making it can run the GC, which may unlink
 * an attachment from under the walk. */
static PyObject *mod_shared_attachments(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = 0, i = 0;
    for (SharedCacheObject *c = attachments; c; c = c->next)
        n += c->base.cache != NULL;
    PyObject **found = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PyObject *));
    if (!found)
        return PyErr_NoMemory();
    for (SharedCacheObject *c = attachments; c && i < n; c = c->next)
        if (c->base.cache)
            found[i++] = Py_NewRef((PyObject *)c);
    PyObject *list = PyList_New(i);
    for (Py_ssize_t j = 0; j < i; j++) {
        if (list)
            PyList_SET_ITEM(list, j, found[j]);
        else
            Py_DECREF(found[j]);
    }
    PyMem_Free(found);
    return list;
}

static PyObject *mod_shared_crash_after(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    kmc_shared_crash_after(n);
    Py_RETURN_NONE;
}

PyMethodDef kmcpy_shared_methods[] = {
    {"_shared_unlink", mod_shared_unlink, METH_O,
     "_shared_unlink($module, name, /)\n--\n\nRemove the name of shared cache name."},
    {"_shared_peek", mod_shared_peek, METH_O,
     "_shared_peek($module, name, /)\n--\n\n(stats dict, info dict) of shared cache name, "
     "read without attaching."},
    {"_shared_region_name", mod_shared_region_name, METH_O,
     "_shared_region_name($module, name, /)\n--\n\nThe POSIX shm name of shared cache name."},
    {"_shared_reduce", (PyCFunction)handle_reduce_o, METH_O,
     "_shared_reduce($module, obj, /)\n--\n\nobj.__reduce__(), for copyreg's dispatch table: "
     "pickle calls it without looking up obj's __reduce_ex__."},
    {"_shared_ref", mod_shared_ref, METH_O,
     "_shared_ref($module, reference, /)\n--\n\nA SharedObject's pickle unpickled: the "
     "object it names, this process becoming one of its holders."},
    {"_shared_find", mod_shared_find, METH_VARARGS,
     "_shared_find($module, name, nonce, /)\n--\n\nThis process's live attachment of shared "
     "cache name made with nonce, or None."},
    {"_shared_keep", mod_shared_keep, METH_O,
     "_shared_keep($module, cache, /)\n--\n\nKeep an attachment made by unpickling (the "
     "most recently used " Py_STRINGIFY(KEPT_MAX) " are kept)."},
    {"_shared_attachments", mod_shared_attachments, METH_NOARGS,
     "_shared_attachments($module, /)\n--\n\nThis process's live attachments."},
    {"_shared_crash_after", mod_shared_crash_after, METH_O,
     "_shared_crash_after($module, n, /)\n--\n\nTest hook: this process dies by SIGKILL at "
     "the n-th crash point of a shared cache's paths (0: off)."},
    {NULL, NULL, 0, NULL},
};
