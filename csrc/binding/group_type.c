/*
 * group_type.c - kmemcache.MemoryGroup's C part: a memory group of the engine
 * (group.c), entered and left by `with`, its counters and limits.
 *
 * `with group:` makes the group the calling thread's current one and puts
 * back the one before at the end. What was before is kept on a per-thread
 * stack, with a reference to each group entered, so that a group stays alive
 * while any thread is inside it (the engine's current group must not be
 * released).
 */
#include "binding.h"

typedef struct GroupObject {
    PyObject_HEAD
    kmc_group_t *group; /* NULL before __init__ */
    PyObject *parent;   /* MemoryGroup or NULL: keeps the engine's parent alive */
    PyObject *weakrefs;
} GroupObject;

#define ENTERED_MAX 64 /* nested `with group:` blocks per thread */
#define ENTERED_KEY "kmemcache.groups.entered"

/* The calling thread's stack of entered groups, a list of (group, before)
 * in its thread-state dict: before is the engine group it replaced, as an
 * address. (This module's thread-locals are static TLS, too small for it.)
 * A borrowed reference, or NULL with an exception. */
static PyObject *entered_stack(void)
{
    PyObject *d = PyThreadState_GetDict();
    if (!d) {
        PyErr_SetString(PyExc_RuntimeError, "this thread has no state to keep its groups in");
        return NULL;
    }
    PyObject *stack = PyDict_GetItemString(d, ENTERED_KEY);
    if (stack && PyList_CheckExact(stack))
        return stack;
    stack = PyList_New(0);
    if (!stack || PyDict_SetItemString(d, ENTERED_KEY, stack) < 0) {
        Py_XDECREF(stack);
        return NULL;
    }
    Py_DECREF(stack); /* the dict holds it */
    return stack;
}

static int group_ready(GroupObject *self)
{
    if (self->group)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "MemoryGroup.__init__ was not called");
    return -1;
}

/* A limit argument: None (no limit) or a positive number of bytes. */
int kmcpy_limit_arg(PyObject *arg, const char *what, uint64_t *out)
{
    *out = 0;
    if (!arg || arg == Py_None)
        return 0;
    if (!PyLong_Check(arg) || PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int or None, not %.100s", what,
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a positive number of bytes below 2**64", what);
        return -1;
    }
    if (v == 0) {
        PyErr_Format(PyExc_ValueError, "%s must be positive (None for no limit)", what);
        return -1;
    }
    *out = v;
    return 0;
}

static int group_init(GroupObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "limit", "soft_limit", "parent", NULL};
    PyObject *name, *limit = Py_None, *soft = Py_None, *parent = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO$O:MemoryGroup", kwlist, &name, &limit, &soft,
                                     &parent))
        return -1;
    if (self->group) {
        PyErr_SetString(PyExc_RuntimeError, "MemoryGroup.__init__ called twice");
        return -1;
    }
    const char *cname = kmcpy_cache_name_arg(name);
    uint64_t hard, soft_bytes;
    if (!cname || kmcpy_limit_arg(limit, "limit", &hard) < 0 ||
        kmcpy_limit_arg(soft, "soft_limit", &soft_bytes) < 0)
        return -1;
    kmc_group_t *engine_parent = NULL;
    if (parent != Py_None) {
        if (!PyObject_TypeCheck(parent, &MemoryGroup_Type) ||
            group_ready((GroupObject *)parent) < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "parent must be a MemoryGroup or None, not %.100s",
                             Py_TYPE(parent)->tp_name);
            return -1;
        }
        engine_parent = ((GroupObject *)parent)->group;
    }
    kmc_group_t *g;
    if (kmc_group_create(cname, engine_parent, hard, soft_bytes, &g) != KMC_OK) {
        kmcpy_raise(kmc_last_report()->status);
        return -1;
    }
    kmc_group_set_owner(g, self);
    self->group = g;
    self->parent = parent == Py_None ? NULL : Py_NewRef(parent);
    return 0;
}

static void group_dealloc(GroupObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->group) {
        kmc_group_set_owner(self->group, NULL); /* its objects may outlive us */
        kmc_group_release(self->group);
    }
    Py_CLEAR(self->parent);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int group_traverse(GroupObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->parent);
    return 0;
}

static int group_clear(GroupObject *self)
{
    /* the engine's parent lives on while it has children: only the Python
     * reference goes */
    Py_CLEAR(self->parent);
    return 0;
}

static PyObject *group_enter(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    if (group_ready(self) < 0)
        return NULL;
    PyObject *stack = entered_stack();
    if (!stack)
        return NULL;
    if (PyList_GET_SIZE(stack) >= ENTERED_MAX) {
        PyErr_Format(PyExc_RuntimeError, "more than %d memory groups entered in one thread",
                     ENTERED_MAX);
        return NULL;
    }
    PyObject *item = Py_BuildValue("(ON)", self, PyLong_FromVoidPtr(kmc_group_current()));
    if (!item || PyList_Append(stack, item) < 0) {
        Py_XDECREF(item);
        return NULL;
    }
    Py_DECREF(item);
    kmc_group_enter(self->group); /* last: nothing above can fail after it */
    return Py_NewRef(self);
}

static PyObject *group_exit(GroupObject *self, PyObject *args)
{
    (void)args;
    PyObject *stack = entered_stack();
    if (!stack)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(stack);
    PyObject *top = n ? PyList_GET_ITEM(stack, n - 1) : NULL;
    if (!top || !PyTuple_Check(top) || PyTuple_GET_SIZE(top) != 2 ||
        PyTuple_GET_ITEM(top, 0) != (PyObject *)self) {
        PyErr_Format(PyExc_RuntimeError,
                     "memory group %s is not the one this thread entered last: with blocks "
                     "must nest",
                     self->group ? kmc_group_name(self->group) : "?");
        return NULL;
    }
    void *before = PyLong_AsVoidPtr(PyTuple_GET_ITEM(top, 1));
    if (!before && PyErr_Occurred())
        return NULL;
    kmc_group_enter(before); /* first: the pop below may run finalizers */
    if (PyList_SetSlice(stack, n - 1, n, NULL) < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *group_reset_peak(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    if (group_ready(self) < 0)
        return NULL;
    kmc_group_reset_peak(self->group);
    Py_RETURN_NONE;
}

static PyObject *group_consumers(GroupObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", NULL};
    Py_ssize_t n = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n:consumers", kwlist, &n) ||
        group_ready(self) < 0)
        return NULL;
    if (n < 1 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "n must be in 1..64");
        return NULL;
    }
    char names[64][KMC_NAME_MAX];
    uint64_t bytes[64];
    size_t got;
    Py_BEGIN_ALLOW_THREADS
    got = kmc_group_consumers(self->group, names, bytes, (size_t)n);
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New((Py_ssize_t)got);
    for (size_t i = 0; list && i < got; i++) {
        PyObject *t = Py_BuildValue("(sK)", names[i], (unsigned long long)bytes[i]);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

static PyObject *group_current(PyObject *Py_UNUSED(cls), PyObject *Py_UNUSED(ignored))
{
    kmc_group_t *g = kmc_group_current();
    PyObject *owner = g ? kmc_group_owner(g) : NULL;
    return Py_NewRef(owner ? owner : Py_None);
}

static kmc_group_stats_t stats_of(GroupObject *self)
{
    kmc_group_stats_t s;
    kmc_group_stats(self->group, &s);
    return s;
}

static PyObject *get_name(GroupObject *self, void *Py_UNUSED(c))
{
    return group_ready(self) < 0 ? NULL : PyUnicode_FromString(kmc_group_name(self->group));
}

static PyObject *get_parent(GroupObject *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->parent ? self->parent : Py_None);
}

#define STAT_GETTER(field)                                              \
    static PyObject *get_##field(GroupObject *self, void *Py_UNUSED(c)) \
    {                                                                   \
        if (group_ready(self) < 0)                                      \
            return NULL;                                                \
        return PyLong_FromUnsignedLongLong(stats_of(self).field);       \
    }
STAT_GETTER(usage)
STAT_GETTER(peak)
STAT_GETTER(objects)
STAT_GETTER(soft_hits)
STAT_GETTER(failures)
STAT_GETTER(purges)

static PyObject *limit_value(uint64_t v)
{
    return v ? PyLong_FromUnsignedLongLong(v) : Py_NewRef(Py_None);
}

static PyObject *get_limit(GroupObject *self, void *Py_UNUSED(c))
{
    return group_ready(self) < 0 ? NULL : limit_value(stats_of(self).limit);
}

static PyObject *get_soft_limit(GroupObject *self, void *Py_UNUSED(c))
{
    return group_ready(self) < 0 ? NULL : limit_value(stats_of(self).soft_limit);
}

/* Set one limit, the other kept; checked together (soft <= hard). */
static int set_limits(GroupObject *self, PyObject *value, int soft)
{
    if (group_ready(self) < 0)
        return -1;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "a limit cannot be deleted: set it to None");
        return -1;
    }
    uint64_t v;
    if (kmcpy_limit_arg(value, soft ? "soft_limit" : "limit", &v) < 0)
        return -1;
    kmc_group_stats_t s = stats_of(self);
    if (kmc_group_set_limits(self->group, soft ? s.limit : v, soft ? v : s.soft_limit) != KMC_OK) {
        PyErr_SetString(PyExc_ValueError, kmc_last_report()->message);
        return -1;
    }
    return 0;
}

static int set_limit(GroupObject *self, PyObject *value, void *Py_UNUSED(c))
{
    return set_limits(self, value, 0);
}

static int set_soft_limit(GroupObject *self, PyObject *value, void *Py_UNUSED(c))
{
    return set_limits(self, value, 1);
}

static PyGetSetDef group_getset[] = {
    {"name", (getter)get_name, NULL, "The group's name.", NULL},
    {"parent", (getter)get_parent, NULL, "The group this one counts in, or None.", NULL},
    {"usage", (getter)get_usage, NULL,
     "Bytes charged now: the objects allocated inside the group (and its children) and not "
     "freed yet.",
     NULL},
    {"peak", (getter)get_peak, NULL, "The most usage since creation or reset_peak().", NULL},
    {"objects", (getter)get_objects, NULL, "Objects charged to this group itself now.", NULL},
    {"_soft_limit_hits", (getter)get_soft_hits, NULL, "Charges that crossed the soft limit.", NULL},
    {"_limit_failures", (getter)get_failures, NULL, "Charges refused at the limit.", NULL},
    {"_purges", (getter)get_purges, NULL, "Purges the soft limit ran.", NULL},
    {"limit", (getter)get_limit, (setter)set_limit,
     "Bytes the group may hold at most (None: no limit). Writable at any time; lowering it below "
     "the usage refuses new charges only.",
     NULL},
    {"soft_limit", (getter)get_soft_limit, (setter)set_soft_limit,
     "Bytes past which every cache gives its free memory back, once per crossing (None: no "
     "soft limit). At most the limit.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef group_methods[] = {
    {"__enter__", (PyCFunction)group_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nMake this group the calling thread's current one."},
    {"__exit__", (PyCFunction)group_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\nPut back the group that was current before."},
    {"reset_peak", (PyCFunction)group_reset_peak, METH_NOARGS,
     "reset_peak($self, /)\n--\n\nStart the peak again from the usage now."},
    {"consumers", (PyCFunction)(void (*)(void))group_consumers, METH_VARARGS | METH_KEYWORDS,
     "consumers($self, /, n=5)\n--\n\nThe caches holding the most of this group's bytes, "
     "largest first: up to n (cache name, bytes) pairs; \"kmalloc-large\" for large kmalloc "
     "allocations. Walks every object: for reports, not for a hot loop."},
    {"current", (PyCFunction)group_current, METH_NOARGS | METH_CLASS,
     "current($cls, /)\n--\n\nThe calling thread's current group, or None."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject MemoryGroup_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kmemcache._kmemcache.MemoryGroup",
    .tp_basicsize = sizeof(GroupObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "MemoryGroup(name, limit=None, soft_limit=None, *, parent=None)\n--\n\n"
              "A memory group: what a thread allocates inside `with group:` is charged to it.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)group_init,
    .tp_dealloc = (destructor)group_dealloc,
    .tp_traverse = (traverseproc)group_traverse,
    .tp_clear = (inquiry)group_clear,
    .tp_weaklistoffset = offsetof(GroupObject, weakrefs),
    .tp_methods = group_methods,
    .tp_getset = group_getset,
};

/* The report of a KMC_ELIMIT failure, in the manner of the kernel's OOM
 * report: whose limit, the figures, then the group's largest consumers and,
 * while allocinfo is on and the GIL is held, its largest call sites. The
 * engine's one-line message says it shorter. No GIL needed. */
void kmcpy_limit_report(const kmc_report_t *r, char *out, size_t size)
{
    size_t at = (size_t)snprintf(
        out, size, "%s %s: %llu bytes asked for, limit %llu\n  usage %llu, peak %llu",
        r->group[0] ? "memory group" : "cache", r->group[0] ? r->group : r->cache,
        (unsigned long long)r->requested, (unsigned long long)r->limit,
        (unsigned long long)r->usage, (unsigned long long)r->peak);
    char names[5][KMC_NAME_MAX];
    uint64_t bytes[5];
    size_t n = r->limit_group ? kmc_group_consumers(r->limit_group, names, bytes, 5) : 0;
    if (n && at < size)
        at += (size_t)snprintf(out + at, size - at, "\n  largest consumers:");
    for (size_t i = 0; i < n && at < size; i++)
        at += (size_t)snprintf(out + at, size - at, "\n    %s: %llu bytes", names[i],
                               (unsigned long long)bytes[i]);
    (void)kmcpy_allocinfo_report(r->limit_group, out, at, size); /* when allocinfo is on */
}

/* The MemoryLimitError for the calling thread's last report (KMC_ELIMIT):
 * the group (its MemoryGroup, when one still owns it) or the cache, the
 * figures, and the report. */
PyObject *kmcpy_limit_error(PyObject *cls, const kmc_report_t *report_now)
{
    /* a copy, and the group held, before any Python code runs (a finalizer
     * may fail an allocation of its own, or drop the last MemoryGroup) */
    kmc_report_t copy = *report_now;
    const kmc_report_t *r = &copy;
    PyObject *group = r->limit_group ? kmc_group_owner(r->limit_group) : NULL;
    Py_XINCREF(group);
    char text[KMCPY_LIMIT_REPORT];
    kmcpy_limit_report(r, text, sizeof(text));
    PyObject *exc = PyObject_CallFunction(cls, "s", r->message);
    if (!exc) {
        Py_XDECREF(group);
        return NULL;
    }
    PyObject *report = PyUnicode_DecodeUTF8(text, (Py_ssize_t)strlen(text), "replace");
    struct {
        const char *name;
        PyObject *value;
    } attrs[] = {
        {"group", group ? group : Py_NewRef(Py_None)}, /* the reference taken above */
        {"cache",
         r->group[0] || !r->cache[0] ? Py_NewRef(Py_None) : PyUnicode_FromString(r->cache)},
        {"requested", PyLong_FromUnsignedLongLong(r->requested)},
        {"usage", PyLong_FromUnsignedLongLong(r->usage)},
        {"limit", PyLong_FromUnsignedLongLong(r->limit)},
        {"peak", PyLong_FromUnsignedLongLong(r->peak)},
        {"report", report},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++) {
        if (rc == 0 &&
            (!attrs[i].value || PyObject_SetAttrString(exc, attrs[i].name, attrs[i].value) < 0))
            rc = -1;
        Py_XDECREF(attrs[i].value);
    }
    if (rc < 0)
        Py_CLEAR(exc);
    return exc;
}
