/*
 * allocinfo.c - bytes by call site (kmemcache.allocinfo), as Linux's
 * /proc/allocinfo counts bytes per source line: while it is on, every object
 * a Python door hands out (Cache.alloc, the kmalloc family, SharedCache,
 * NumPy's arrays under the handler) is recorded with the Python line that
 * asked for it, and forgotten when it is freed. The counts are exact, not
 * sampled.
 *
 *   records   address -> (site, bytes): open addressing, linear
 *             probing, deletion by backward shift, so that a free finds its
 *             record in O(1) whatever the number of live objects
 *   sites     (code object, line), with their live bytes and objects; site 0
 *             is "<no Python frame>" (an array NumPy allocated without the
 *             GIL, or a thread with no Python code running)
 *   keys      (code object, instruction offset) -> site, so that the line
 *             number is computed once per place, not per allocation
 *
 * The call site is the innermost Python frame outside the kmemcache package
 * (its frames are skipped: a helper's own lines are not the user's). Frames
 * are read only with the GIL; NumPy's handler may run without it
 * (PyGILState_Check tells), and then its arrays go to site 0.
 *
 * One mutex guards records and counters: NumPy's handler records and forgets
 * without the GIL. No Python code runs while it is held (a GC run there
 * could free an object, whose forget would wait on the mutex for good), so
 * everything that may run Python code (reading frames, making a site) is done
 * before it is taken, and an epoch, bumped by start and stop, tells a record
 * whose site was found before a stop in between to drop itself. The keys map
 * and the sites' Python objects are touched with the GIL only.
 *
 * Off, each door pays one test of kmcpy_allocinfo_on (binding.h).
 */
#include "binding.h"

#include <pthread.h>

int kmcpy_allocinfo_on;

typedef struct record_s {
    uintptr_t addr; /* 0: an empty slot */
    uint64_t bytes; /* as asked for: len() of the handle */
    uint32_t site;
} record_t;

typedef struct site_s {
    PyObject *code;                        /* strong reference; NULL for site 0 */
    PyObject *file;                        /* co_filename, strong; NULL for site 0 */
    PyObject *function;                    /* co_name, strong; NULL for site 0 */
    const char *file_utf8, *function_utf8; /* theirs, for reports without Python */
    int line;
    int internal;          /* a frame of the kmemcache package: skipped */
    uint64_t bytes, count; /* live, under the mutex */
} site_t;

typedef struct key_s {
    const void *code; /* NULL: an empty slot */
    int at;           /* instruction offset, or line (lines map) */
    uint32_t site;
} sitekey_t;

typedef struct keymap_s {
    sitekey_t *slots;
    size_t mask, used; /* capacity - 1 (0: none yet), slots taken */
} keymap_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static record_t *records; /* under the mutex */
static size_t records_mask, records_used;
static site_t *sites; /* under the mutex; grows with the GIL held too */
static size_t nsites, sites_cap;
static uint64_t epoch;           /* bumped by start and stop, under the mutex */
static keymap_t offsets, lines;  /* (code, offset) and (code, line) -> site: GIL */
static PyObject *package_prefix; /* str: the kmemcache package's folder + "/" */

/* --- the records: address -> record, with the mutex held -------------------------- */

static size_t addr_hash(uintptr_t a)
{
    return (size_t)(((uint64_t)a >> 4) * 0x9E3779B97F4A7C15ull >> 17);
}

static record_t *record_find(uintptr_t a)
{
    if (!records)
        return NULL;
    for (size_t i = addr_hash(a) & records_mask;; i = (i + 1) & records_mask) {
        if (records[i].addr == a)
            return &records[i];
        if (!records[i].addr)
            return NULL;
    }
}

/* Insert @r (its address not present); 0, or -1 when memory is short. */
static int record_insert(const record_t *r)
{
    if (!records || (records_used + 1) * 4 > (records_mask + 1) * 3) {
        size_t cap = records ? (records_mask + 1) * 2 : 1024;
        record_t *bigger = calloc(cap, sizeof(record_t));
        if (!bigger)
            return -1;
        for (size_t i = 0; records && i <= records_mask; i++) {
            if (!records[i].addr)
                continue;
            size_t j = addr_hash(records[i].addr) & (cap - 1);
            while (bigger[j].addr)
                j = (j + 1) & (cap - 1);
            bigger[j] = records[i];
        }
        free(records);
        records = bigger;
        records_mask = cap - 1;
    }
    size_t i = addr_hash(r->addr) & records_mask;
    while (records[i].addr)
        i = (i + 1) & records_mask;
    records[i] = *r;
    records_used++;
    return 0;
}

/* Remove @slot, shifting back the records after it that it displaced. */
static void record_delete(record_t *slot)
{
    size_t i = (size_t)(slot - records);
    for (size_t j = (i + 1) & records_mask; records[j].addr; j = (j + 1) & records_mask) {
        size_t home = addr_hash(records[j].addr) & records_mask;
        /* records[j] may move to i if i lies cyclically in [home, j) */
        if (((j - home) & records_mask) >= ((j - i) & records_mask)) {
            records[i] = records[j];
            i = j;
        }
    }
    records[i].addr = 0;
    records_used--;
}

/* --- the keys: (code, offset or line) -> site, with the GIL ------------------------ */

static size_t key_hash(const void *code, int at)
{
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) ^ ((uint64_t)(uint32_t)at << 32);
    return (size_t)(h * 0x9E3779B97F4A7C15ull >> 17);
}

static sitekey_t *key_find(keymap_t *m, const void *code, int at)
{
    if (!m->slots)
        return NULL;
    for (size_t i = key_hash(code, at) & m->mask;; i = (i + 1) & m->mask) {
        sitekey_t *k = &m->slots[i];
        if (!k->code || (k->code == code && k->at == at))
            return k;
    }
}

/* 0, or -1 when memory is short (nothing changed). */
static int key_add(keymap_t *m, const void *code, int at, uint32_t site)
{
    if (!m->slots || (m->used + 1) * 2 > m->mask + 1) {
        size_t cap = m->slots ? (m->mask + 1) * 2 : 256;
        sitekey_t *bigger = calloc(cap, sizeof(sitekey_t));
        if (!bigger)
            return -1;
        for (size_t i = 0; m->slots && i <= m->mask; i++) {
            sitekey_t *k = &m->slots[i];
            if (!k->code)
                continue;
            size_t j = key_hash(k->code, k->at) & (cap - 1);
            while (bigger[j].code)
                j = (j + 1) & (cap - 1);
            bigger[j] = *k;
        }
        free(m->slots);
        m->slots = bigger;
        m->mask = cap - 1;
    }
    sitekey_t *k = key_find(m, code, at);
    *k = (sitekey_t){code, at, site};
    m->used++;
    return 0;
}

static void keymap_clear(keymap_t *m)
{
    free(m->slots);
    *m = (keymap_t){NULL, 0, 0};
}

/* --- sites ------------------------------------------------------------------------ */

/* The site of line @line of @code, made if new (GIL held). Its index, or
 * 0 (no Python frame) when memory is short. No Python code runs. */
static uint32_t site_of_line(PyCodeObject *code, int line)
{
    if (!nsites)
        return 0; /* stopped while Python code ran (the GC): nothing to add to */
    sitekey_t *k = key_find(&lines, code, line);
    if (k && k->code)
        return k->site;
    PyObject *type, *value, *tb; /* the caller's exception, if any, stays */
    PyErr_Fetch(&type, &value, &tb);
    const char *file = PyUnicode_AsUTF8(code->co_filename);
    const char *function = PyUnicode_AsUTF8(code->co_name);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    if (!file || !function)
        return 0;
    if (nsites == sites_cap) {
        size_t cap = sites_cap ? sites_cap * 2 : 64;
        site_t *bigger = malloc(cap * sizeof(site_t));
        if (!bigger)
            return 0;
        pthread_mutex_lock(&lock); /* NumPy's handler updates counters without the GIL */
        memcpy(bigger, sites, nsites * sizeof(site_t));
        free(sites);
        sites = bigger;
        sites_cap = cap;
        pthread_mutex_unlock(&lock);
    }
    if (key_add(&lines, code, line, (uint32_t)nsites) < 0)
        return 0;
    int internal = PyUnicode_Tailmatch(code->co_filename, package_prefix, 0, PY_SSIZE_T_MAX, -1) ==
                   1;
    site_t *s = &sites[nsites];
    *s = (site_t){
        .code = Py_NewRef(code),
        .file = Py_NewRef(code->co_filename),
        .function = Py_NewRef(code->co_name),
        .file_utf8 = file,
        .function_utf8 = function,
        .line = line,
        .internal = internal,
    };
    pthread_mutex_lock(&lock);
    nsites++;
    pthread_mutex_unlock(&lock);
    return (uint32_t)(nsites - 1);
}

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* CPython 3.11: the interpreter's own frames, read in place as tracemalloc
 * and Cython read them. PyEval_GetFrame would make a frame object for every
 * Python call that allocates (a GC allocation and its free: a third of
 * what recording costs). The layout is fixed within 3.11; other versions
 * take the public API below. */
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE

static uint32_t site_of(PyCodeObject *code, int at)
{
    sitekey_t *k = key_find(&offsets, code, at);
    if (k && k->code)
        return k->site;
    uint32_t site = site_of_line(code, PyCode_Addr2Line(code, at));
    if (site)
        (void)key_add(&offsets, code, at, site); /* the site keeps code alive */
    return site;
}

static uint32_t current_site(void)
{
    uint32_t first = 0;
    _PyInterpreterFrame *f = PyThreadState_Get()->cframe->current_frame;
    for (; f; f = f->previous) {
        if (_PyFrame_IsIncomplete(f))
            continue;
        uint32_t site = site_of(f->f_code,
                                _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT));
        if (!site || !sites[site].internal)
            return site ? site : first;
        if (!first)
            first = site;
    }
    return first;
}
#else
#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h> /* 3.10: PyFrameObject's fields, PyFrame_GetBack */
#endif

static int frame_offset(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#else
    return f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
}

/* The site of the instruction @f runs (GIL held). No Python code runs. */
static uint32_t site_of_frame(PyFrameObject *f)
{
    PyCodeObject *code = PyFrame_GetCode(f);
    int at = frame_offset(f);
    sitekey_t *k = key_find(&offsets, code, at);
    uint32_t site;
    if (k && k->code) {
        site = k->site;
    } else {
        site = site_of_line(code, PyCode_Addr2Line(code, at));
        if (site)
            (void)key_add(&offsets, code, at, site); /* the site keeps code alive */
    }
    Py_DECREF(code);
    return site;
}

/* The calling Python code's site: its innermost frame outside the package,
 * else the innermost frame of the package, else 0. Frame objects are made on
 * demand (a GC run may happen, and Python code with it). */
static uint32_t current_site(void)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (!f)
        return 0;
    Py_INCREF(f);
    uint32_t first = 0;
    while (f) {
        uint32_t site = site_of_frame(f);
        if (!site || !sites[site].internal) {
            Py_DECREF(f);
            return site ? site : first;
        }
        if (!first)
            first = site;
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    return first;
}
#endif

/* --- the doors ---------------------------------------------------------------------- */

void kmcpy_allocinfo_record(const void *p, Py_ssize_t size, int how)
{
    uint32_t site = 0;
    uint64_t seen = 0; /* the epoch the site belongs to; 0: any (site 0) */
    if (!(how & KMCPY_ALLOCINFO_NO_GIL_MAYBE) || PyGILState_Check()) {
        seen = epoch;          /* written with the GIL held */
        site = current_site(); /* may run Python code: stop() and start() too */
    }
    pthread_mutex_lock(&lock);
    if (__atomic_load_n(&kmcpy_allocinfo_on, __ATOMIC_RELAXED) && (!seen || epoch == seen) &&
        site < nsites) {
        record_t *r = record_find((uintptr_t)p);
        if (r) { /* a second handle of a shared object, or an object resized */
            sites[r->site].bytes -= r->bytes;
            sites[r->site].count--;
            record_delete(r);
        }
        record_t fresh = {(uintptr_t)p, (uint64_t)size, site};
        if (record_insert(&fresh) == 0) {
            sites[site].bytes += (uint64_t)size;
            sites[site].count++;
        }
    }
    pthread_mutex_unlock(&lock);
}

void kmcpy_allocinfo_forget(const void *p)
{
    pthread_mutex_lock(&lock);
    record_t *r = record_find((uintptr_t)p);
    if (r) {
        sites[r->site].bytes -= r->bytes;
        sites[r->site].count--;
        record_delete(r);
    }
    pthread_mutex_unlock(&lock);
}

/* --- the report of a limit --------------------------------------------------------- */

#define REPORT_SITES 3

size_t kmcpy_allocinfo_report(const kmc_group_t *group, char *out, size_t at, size_t size)
{
    /* with the GIL only: then no free is between its engine call and its
     * forget, and every group a record names is alive */
    if (!group || !__atomic_load_n(&kmcpy_allocinfo_on, __ATOMIC_RELAXED) || !PyGILState_Check())
        return at;
    pthread_mutex_lock(&lock);
    uint64_t *bytes = calloc(nsites ? nsites : 1, sizeof(uint64_t) * 2);
    if (!bytes) {
        pthread_mutex_unlock(&lock);
        return at;
    }
    uint64_t *count = bytes + nsites;
    for (size_t i = 0; records && i <= records_mask; i++)
        /* the engine says which group an object is charged to (its tag) */
        if (records[i].addr && kmc_group_holds(group, (const void *)records[i].addr)) {
            bytes[records[i].site] += records[i].bytes;
            count[records[i].site]++;
        }
    for (int n = 0; n < REPORT_SITES; n++) {
        size_t best = SIZE_MAX;
        for (size_t s = 0; s < nsites; s++)
            if (count[s] && (best == SIZE_MAX || bytes[s] > bytes[best]))
                best = s;
        if (best == SIZE_MAX)
            break;
        if (n == 0 && at < size)
            at += (size_t)snprintf(out + at, size - at, "\n  largest call sites:");
        const site_t *s = &sites[best];
        if (at < size)
            at += (size_t)snprintf(out + at, size - at, "\n    %s:%d (%s): %llu bytes in %llu",
                                   best ? s->file_utf8 : "<no Python frame>", s->line,
                                   best ? s->function_utf8 : "", (unsigned long long)bytes[best],
                                   (unsigned long long)count[best]);
        if (at < size)
            at += (size_t)snprintf(out + at, size - at, count[best] == 1 ? " object" : " objects");
        count[best] = 0;
    }
    free(bytes);
    pthread_mutex_unlock(&lock);
    return at;
}

/* --- start, stop, the sites -------------------------------------------------------- */

static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_done(void) { pthread_mutex_unlock(&lock); }
static void fork_register(void) { (void)pthread_atfork(fork_prepare, fork_done, fork_done); }

/* Forget everything (GIL held): the tables go, then the sites' references. */
static void clear_all(void)
{
    pthread_mutex_lock(&lock);
    __atomic_store_n(&kmcpy_allocinfo_on, 0, __ATOMIC_RELAXED);
    epoch++;
    record_t *old_records = records;
    site_t *old_sites = sites;
    size_t old_n = nsites;
    records = NULL;
    records_mask = records_used = 0;
    sites = NULL;
    nsites = sites_cap = 0;
    pthread_mutex_unlock(&lock);
    keymap_clear(&offsets);
    keymap_clear(&lines);
    free(old_records);
    for (size_t i = 0; i < old_n; i++) { /* may run Python code: last */
        Py_XDECREF(old_sites[i].code);
        Py_XDECREF(old_sites[i].file);
        Py_XDECREF(old_sites[i].function);
    }
    free(old_sites);
}

static PyObject *allocinfo_start(PyObject *Py_UNUSED(module), PyObject *prefix)
{
    if (!PyUnicode_Check(prefix)) {
        PyErr_Format(PyExc_TypeError, "_allocinfo_start() takes a str, not %.100s",
                     Py_TYPE(prefix)->tp_name);
        return NULL;
    }
    if (kmcpy_allocinfo_on)
        Py_RETURN_NONE;
    if (pthread_once(&fork_once, fork_register) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "allocinfo: pthread_once failed");
        return NULL;
    }
    clear_all();
    site_t *first = calloc(64, sizeof(site_t));
    if (!first)
        return PyErr_NoMemory();
    Py_XSETREF(package_prefix, Py_NewRef(prefix));
    pthread_mutex_lock(&lock);
    sites = first; /* site 0: no Python frame */
    nsites = 1;
    sites_cap = 64;
    epoch++;
    __atomic_store_n(&kmcpy_allocinfo_on, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

static PyObject *allocinfo_stop(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    clear_all();
    Py_RETURN_NONE;
}

static PyObject *allocinfo_tracing(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(__atomic_load_n(&kmcpy_allocinfo_on, __ATOMIC_RELAXED));
}

typedef struct copied_s {
    PyObject *file, *function; /* strong, or NULL for site 0 */
    int line;
    uint64_t bytes, count;
} copied_t;

/* [(file, line, function, bytes, count), ...] of the sites with live
 * objects, in no order; the package merges and sorts them. */
static PyObject *allocinfo_sites(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    if (!kmcpy_allocinfo_on)
        return PyList_New(0);
    /* copied under the mutex, built after: building may run the GC */
    pthread_mutex_lock(&lock);
    size_t n = 0;
    copied_t *copy = malloc((nsites ? nsites : 1) * sizeof(copied_t));
    for (size_t i = 0; copy && i < nsites; i++) {
        if (!sites[i].count)
            continue;
        copy[n++] = (copied_t){(PyObject *)Py_XNewRef(sites[i].file),
                               (PyObject *)Py_XNewRef(sites[i].function), sites[i].line,
                               sites[i].bytes, sites[i].count};
    }
    pthread_mutex_unlock(&lock);
    if (!copy)
        return PyErr_NoMemory();
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        if (list) {
            PyObject *item = Py_BuildValue(
                "(OiOKK)", copy[i].file ? copy[i].file : Py_None, copy[i].line,
                copy[i].function ? copy[i].function : Py_None, (unsigned long long)copy[i].bytes,
                (unsigned long long)copy[i].count);
            if (item)
                PyList_SET_ITEM(list, (Py_ssize_t)i, item);
            else
                Py_CLEAR(list);
        }
        Py_XDECREF(copy[i].file);
        Py_XDECREF(copy[i].function);
    }
    free(copy);
    return list;
}

PyMethodDef kmcpy_allocinfo_methods[] = {
    {"_allocinfo_start", allocinfo_start, METH_O,
     "_allocinfo_start($module, package_prefix, /)\n--\n\nStart recording the call site of "
     "every object allocated, skipping frames whose file starts with package_prefix."},
    {"_allocinfo_stop", allocinfo_stop, METH_NOARGS,
     "_allocinfo_stop($module, /)\n--\n\nStop recording and forget every record."},
    {"_allocinfo_tracing", allocinfo_tracing, METH_NOARGS,
     "_allocinfo_tracing($module, /)\n--\n\nWhether call sites are being recorded."},
    {"_allocinfo_sites", allocinfo_sites, METH_NOARGS,
     "_allocinfo_sites($module, /)\n--\n\n[(file, line, function, bytes, count), ...] of the "
     "sites with live objects (file and function None: no Python frame)."},
    {NULL, NULL, 0, NULL},
};
