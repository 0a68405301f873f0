/* ring.c: 1512-byte objects at alignment 64, from C threads without the GIL. */
#define PY_SSIZE_T_CLEAN
#include <kmemcache.h>

static kmc_cache_t *cache;

static PyObject *churn(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg), misaligned = 0;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (long i = 0; i < n; i++) {
        void *ctx = kmc_cache_alloc(cache, 1); /* zeroed, address % 64 == 0 */
        void *buf = kmc_kmalloc(3000, 64);     /* a kmalloc-4k object */
        misaligned += ((uintptr_t)ctx | (uintptr_t)buf) % 64 != 0;
        kmc_kfree(buf);
        kmc_cache_free(cache, ctx);
    }
    Py_END_ALLOW_THREADS
    kmc_stats_t s;
    kmc_cache_stats(cache, &s);
    return Py_BuildValue("(lK)", misaligned, (unsigned long long)s.allocs);
}

static PyMethodDef methods[] = {{"churn", churn, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef ring = {PyModuleDef_HEAD_INIT, "ring", NULL, -1, methods};

PyMODINIT_FUNC PyInit_ring(void)
{
    if (kmemcache_import() < 0) /* ImportError when kmemcache is missing or too old */
        return NULL;
    if (kmc_cache_create("ring", 1512, 64, 0, NULL, NULL, &cache) != KMC_OK)
        return PyErr_Format(PyExc_MemoryError, "%s", kmc_last_report()->message);
    return PyModule_Create(&ring);
}
