/*
 * handle_type.c - the handle type (kmemcache.Object): one object's memory, exported through
 * the buffer protocol.
 *
 * A handle holds its cache alive. It refuses to free while views exist
 * (BufferError, as bytearray refuses to resize) and refuses everything once
 * freed (ValueError, as a released memoryview does). A handle dropped
 * without free() gives its object back. Handles take part in garbage
 * collection (each refers to its cache), so that a cycle through a cache,
 * such as an object kept in one of its attributes, is collected and its
 * objects given back.
 */
#include "binding.h"

static kmcpy_handle_pool_t pool = {.type = &Handle_Type};

HandleObject *kmcpy_handle_new(CacheObject *owner, void *ptr, Py_ssize_t size)
{
    HandleObject *self = (HandleObject *)kmcpy_handle_take(&pool);
    if (!self)
        return NULL;
    self->ptr = ptr;
    self->size = size;
    self->exports = 0;
    Py_XINCREF(owner);
    self->owner = owner;
    PyObject_GC_Track(self);
    return self;
}

/* What a handle without a cache holds: kmalloc's pages or size 0. */
static const char *no_cache_name(const HandleObject *self)
{
    return self->size ? "kmalloc pages" : "kmalloc(0)";
}

int kmcpy_handle_check_live(const HandleObject *self)
{
    if (self->ptr)
        return 0;
    PyErr_SetString(PyExc_ValueError, "operation on a freed kmemcache object");
    return -1;
}

/* The name a report gives the handle's cache. */
const char *kmcpy_handle_owner_name(const HandleObject *self)
{
    CacheObject *owner = self->owner;
    return !owner         ? no_cache_name(self)
           : owner->cache ? kmc_cache_name(owner->cache)
                          : "(destroyed)";
}

/* How often one free goes on after the error factory chose to go on past a
 * report: each check repairs what it reports, so the second try succeeds. */
#define FREE_TRIES 4

/* Give the object back to its cache. The handle keeps its cache reference
 * (for repr and .cache) until it dies.
 *
 * Python code runs here (the error factory and what it calls, the owner
 * tracker, and through them the GC and signal handlers) and may free this
 * handle, view it, or free it and destroy its cache: after each such point
 * the handle is read again (invariant 9). The handle reads as freed before
 * the tracker runs, so no Python code sees a handle of freed memory. */
int kmcpy_handle_free(HandleObject *self)
{
    CacheObject *owner = self->owner; /* the handle's reference keeps it */
    if (owner && owner->ops->free_handle)
        return owner->ops->free_handle(self);
    void *p = NULL;
    for (int tries = 0;; tries++) {
        if (!self->ptr) {
            if (p)
                return 0; /* Python code run by a report freed it meanwhile */
            return kmcpy_raise_message(
                       KMC_EDOUBLE_FREE, owner, NULL,
                       "Object already free: this handle was freed before (cache %s)",
                       kmcpy_handle_owner_name(self))
                       ? 0 /* told to go on: there is nothing to free */
                       : -1;
        }
        if (self->exports) {
            PyErr_Format(PyExc_BufferError,
                         "cannot free a kmemcache object while %zd buffer view%s of it exist%s",
                         self->exports, self->exports == 1 ? "" : "s",
                         self->exports == 1 ? "s" : "");
            return -1;
        }
        if (owner && !owner->cache) {
            /* C code freed the object behind the handle and destroyed its
             * cache: the memory is gone */
            kmcpy_untrace(self->ptr);
            self->ptr = NULL;
            return kmcpy_cache_check_alive(owner);
        }
        if (tries == FREE_TRIES) {
            PyErr_Format(kmcpy_slab_error, "cannot free %p of %s: the allocator refused %d times",
                         self->ptr, kmcpy_handle_owner_name(self), FREE_TRIES);
            return -1;
        }
        p = self->ptr;
        kmc_status st = owner ? kmc_cache_free(owner->cache, p) : kmc_kfree(p);
        if (st == KMC_OK)
            break;
        if (!kmcpy_raise(st))
            return -1;
        if (st == KMC_EDOUBLE_FREE || st == KMC_EINVALID_FREE) {
            kmcpy_untrace(p);
            self->ptr = NULL; /* told to go on: nothing to free */
            return 0;
        }
        /* damage reported and repaired: free it now, if it still may be */
    }
    self->ptr = NULL;
    kmcpy_untrace(p);
    if (owner && owner->track && kmcpy_track(owner, "free", p) < 0)
        return -1;
    return 0;
}

PyObject *kmcpy_handle_free_method(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_handle_free(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int handle_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    return 0;
}

static void handle_dealloc(HandleObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->ptr) {
        /* dropped without free(): give the object back. Views keep the
         * handle alive, so none exist here. A report is written as
         * unraisable, naming the cache, never the handle: passing an object
         * with no reference left would bring it back to life. The damage
         * reported is repaired, so a second try gives the object back. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        for (int i = 0; self->ptr && i < 2; i++)
            if (kmcpy_handle_free(self) < 0)
                kmcpy_write_unraisable("while freeing a dropped kmemcache object of %s",
                                       kmcpy_handle_owner_name(self));
        PyErr_Restore(type, value, tb);
    }
    Py_CLEAR(self->owner);
    kmcpy_handle_put(&pool, (PyObject *)self);
}

static int handle_getbuffer(HandleObject *self, Py_buffer *view, int flags)
{
    if (kmcpy_handle_check_live(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->size, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void handle_releasebuffer(HandleObject *self, Py_buffer *Py_UNUSED(view))
{
    self->exports--;
}

static PyBufferProcs handle_as_buffer = {
    .bf_getbuffer = (getbufferproc)handle_getbuffer,
    .bf_releasebuffer = (releasebufferproc)handle_releasebuffer,
};

static Py_ssize_t handle_length(HandleObject *self)
{
    if (kmcpy_handle_check_live(self) < 0)
        return -1;
    return self->size;
}

static PySequenceMethods handle_as_sequence = {
    .sq_length = (lenfunc)handle_length,
};

static PyObject *handle_get_address(HandleObject *self, void *Py_UNUSED(closure))
{
    if (kmcpy_handle_check_live(self) < 0)
        return NULL;
    return PyLong_FromVoidPtr(self->ptr);
}

static PyObject *handle_get_cache(HandleObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->owner ? (PyObject *)self->owner : Py_None);
}

static PyObject *handle_get_freed(HandleObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ptr == NULL);
}

static PyObject *handle_get_exports(HandleObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->exports);
}

PyObject *kmcpy_handle_enter(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kmcpy_handle_check_live(self) < 0)
        return NULL;
    return Py_NewRef((PyObject *)self);
}

static int handle_close(PyObject *self)
{
    return ((HandleObject *)self)->ptr ? kmcpy_handle_free((HandleObject *)self) : 0;
}

PyObject *kmcpy_handle_exit(HandleObject *self, PyObject *args)
{
    return kmcpy_context_exit((PyObject *)self, args, handle_close,
                              self->owner ? self->owner->ops->object_what : "the object");
}

static PyObject *handle_repr(HandleObject *self)
{
    const char *name = kmcpy_handle_owner_name(self);
    if (!self->ptr)
        return PyUnicode_FromFormat("<kmemcache.Object of %s, freed>", name);
    return PyUnicode_FromFormat("<kmemcache.Object of %s, %zd bytes at %p>", name, self->size,
                                (void *)self->ptr);
}

/* Pickled by value: (the package's unpickle_object, (data, len, align,
 * the cache's name or None)).
 * Under protocol 5 the data is a PickleBuffer of the object itself, so that
 * a buffer_callback sends it out of band with no copy; under older
 * protocols, bytes. Unpickled, it is an object of the same length,
 * alignment and contents, of a cache registered under that name or else
 * of kmalloc (kmemcache.pickling). A SharedObject has its own reduce: a
 * reference. */
static PyObject *handle_reduce_ex(HandleObject *self, PyObject *protocol_arg)
{
    long protocol = PyLong_AsLong(protocol_arg);
    if (protocol == -1 && PyErr_Occurred())
        return NULL;
    if (kmcpy_handle_check_live(self) < 0 ||
        (self->owner && kmcpy_cache_check_alive(self->owner) < 0))
        return NULL;
    /* kmalloc(0) is one object whatever the alignment; pages are aligned to
     * the page at least */
    size_t align = !self->size   ? 0
                   : self->owner ? kmc_cache_align(self->owner->cache)
                                 : kmc_page_size();
    PyObject *rebuild = kmcpy_facade_attr("unpickle_object");
    if (!rebuild)
        return NULL;
    PyObject *data = protocol >= 5 ? PyPickleBuffer_FromObject((PyObject *)self)
                                   : PyBytes_FromStringAndSize(self->ptr, self->size);
    if (!data) {
        Py_DECREF(rebuild);
        return NULL;
    }
    const char *cache = self->owner ? kmc_cache_name(self->owner->cache) : NULL;
    return Py_BuildValue("(N(Nnnz))", rebuild, data, self->size, (Py_ssize_t)align, cache);
}

static PyMethodDef handle_methods[] = {
    {"__reduce_ex__", (PyCFunction)handle_reduce_ex, METH_O,
     "__reduce_ex__($self, protocol, /)\n--\n\nPickled by value: its bytes (out of band "
     "under protocol 5), its length and alignment; unpickled, a kmalloc object."},
    {"free", (PyCFunction)kmcpy_handle_free_method, METH_NOARGS,
     "free($self, /)\n--\n\nGive the object back to its cache. BufferError while views "
     "exist; DoubleFreeError if already freed."},
    {"__enter__", (PyCFunction)kmcpy_handle_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThe object."},
    {"__exit__", (PyCFunction)kmcpy_handle_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\nFree the object unless it was freed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
    {"address", (getter)handle_get_address, NULL, "The object's address, an int.", NULL},
    {"cache", (getter)handle_get_cache, NULL,
     "The cache the object belongs to (None for kmalloc's pages and size 0).", NULL},
    {"freed", (getter)handle_get_freed, NULL, "True once freed.", NULL},
    {"exports", (getter)handle_get_exports, NULL, "Buffer views alive now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* PyVarObject_HEAD_INIT ends without a comma: left as written */
/* clang-format off */
PyTypeObject Handle_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmemcache.Object",
    .tp_basicsize = sizeof(HandleObject),
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_repr = (reprfunc)handle_repr,
    .tp_as_sequence = &handle_as_sequence,
    .tp_as_buffer = &handle_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)handle_traverse,
    .tp_doc = "One object of a kmemcache cache: writable memory with a guaranteed "
              "alignment,\nexported through the buffer protocol (format 'B').",
    .tp_methods = handle_methods,
    .tp_getset = handle_getset,
};
/* clang-format on */
