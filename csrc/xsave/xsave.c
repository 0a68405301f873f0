/*
 * xsave.c - kmemcache.demo._xsave: run XSAVE/XRSTOR on a caller's buffer.
 *
 * perf keeps each task's Arch LBR state in an XSAVE area inside the task's
 * PMU context data, and XSAVE raises #GP (SIGSEGV in user space) unless that
 * area starts on a 64-byte boundary. This module lets Python show both sides:
 * an aligned buffer survives a save/restore round trip, a misaligned one
 * kills the process. It deliberately does NOT check alignment; the Python
 * face (kmemcache.demo.xsave) refuses misaligned buffers before calling in, and
 * proves the fault in a child process.
 *
 * Only user state components are used (x87, SSE, AVX: XCR0 bits 0..2) and
 * only the standard (non-compacted) format, so the area is
 *
 *     offset 0    legacy region (x87 + SSE), 512 bytes
 *     offset 512  XSAVE header, 64 bytes (XSTATE_BV, XCOMP_BV, reserved)
 *     offset 576  AVX upper halves, 256 bytes (only when XCR0 enables AVX)
 *
 * The module has no state; every call asks the CPU again. These are probes,
 * not hot paths, and nothing cached can go stale.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#define XS_ALIGNMENT       64   /* XSAVE and XRSTOR #GP unless the area is aligned to this */
#define XS_LEGACY_SIZE     512  /* x87 + SSE region, bytes */
#define XS_HEADER_OFFSET   512  /* XSAVE header follows the legacy region */
#define XS_HEADER_SIZE     64   /* bytes; SDM: must be zero before the first XSAVE */
#define XS_USER_COMPONENTS 0x7u /* x87 | SSE | AVX (XCR0 bits 0..2) */

#if defined(__x86_64__)

/* CPUID.1:ECX bit 26 = XSAVE exists, bit 27 = the OS enabled it (CR4.OSXSAVE).
 * Without OSXSAVE, XGETBV and XSAVE are #UD, so both are required. */
static int xs_supported(void)
{
    unsigned int eax, ebx, ecx, edx;

    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ecx & bit_XSAVE) && (ecx & bit_OSXSAVE);
}

/* XCR0 says which components the OS manages; saving one it does not is #GP. */
static uint64_t xs_xcr0(void)
{
    uint32_t lo, hi;

    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint64_t xs_user_mask(void) { return xs_xcr0() & XS_USER_COMPONENTS; }

/* Bytes the standard format needs for `mask`: the legacy region and the
 * header always, then each extended component i >= 2 at the offset
 * CPUID.(EAX=0DH, ECX=i) gives (EBX = offset, EAX = size). */
static size_t xs_area_size(uint64_t mask)
{
    size_t size = XS_LEGACY_SIZE + XS_HEADER_SIZE;
    unsigned int i;

    for (i = 2; i < 64; i++) {
        unsigned int eax, ebx, ecx, edx;

        if (!(mask & ((uint64_t)1 << i)))
            continue;
        __cpuid_count(0xd, i, eax, ebx, ecx, edx);
        (void)ecx;
        (void)edx;
        if ((size_t)ebx + eax > size)
            size = (size_t)ebx + eax;
    }
    return size;
}

/* Save the current state into `area` and load it straight back. Both
 * instructions sit in one asm statement so the compiler cannot touch
 * x87/SSE/AVX registers in between; the restored state is the saved one.
 * XRSTOR faults on a non-zero XCOMP_BV or reserved header bytes, and XSAVE
 * writes only XSTATE_BV, so the header is cleared first. */
static void xs_roundtrip(void *area, uint64_t mask)
{
    uint32_t lo = (uint32_t)mask;
    uint32_t hi = (uint32_t)(mask >> 32);

    memset((unsigned char *)area + XS_HEADER_OFFSET, 0, XS_HEADER_SIZE);
    __asm__ __volatile__("xsave64 (%0)\n\t"
                         "xrstor64 (%0)"
                         :
                         : "r"(area), "a"(lo), "d"(hi)
                         : "memory");
}

#else /* !__x86_64__ */

static int xs_supported(void) { return 0; }

#endif

static PyObject *xs_unsupported_error(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "XSAVE is not available (needs x86-64 with XSAVE and OSXSAVE)");
    return NULL;
}

PyDoc_STRVAR(supported_doc, "supported() -> bool\n\n"
                            "True when CPUID reports XSAVE and OSXSAVE (the OS enabled it).");

static PyObject *xsave_supported(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    return PyBool_FromLong(xs_supported());
}

PyDoc_STRVAR(user_mask_doc, "user_mask() -> int\n\n"
                            "The state components roundtrip() saves: XCR0 & (x87|SSE|AVX).\n"
                            "RuntimeError when XSAVE is not available.");

static PyObject *xsave_user_mask(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    if (!xs_supported())
        return xs_unsupported_error();
#if defined(__x86_64__)
    return PyLong_FromUnsignedLongLong(xs_user_mask());
#else
    return NULL; /* not reached */
#endif
}

PyDoc_STRVAR(area_size_doc, "area_size() -> int\n\n"
                            "Bytes XSAVE writes for user_mask() in the standard format\n"
                            "(576 for x87+SSE, 832 with AVX). RuntimeError when XSAVE is not\n"
                            "available.");

static PyObject *xsave_area_size(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    if (!xs_supported())
        return xs_unsupported_error();
#if defined(__x86_64__)
    return PyLong_FromSize_t(xs_area_size(xs_user_mask()));
#else
    return NULL; /* not reached */
#endif
}

PyDoc_STRVAR(roundtrip_doc,
             "roundtrip(buffer, /) -> None\n\n"
             "XSAVE the user state into the buffer's own memory, then XRSTOR it.\n"
             "The buffer must be writable, C-contiguous and at least area_size()\n"
             "bytes (ValueError otherwise). Alignment is NOT checked: on an address\n"
             "that is not a multiple of 64 the CPU raises #GP and the process dies\n"
             "with SIGSEGV. RuntimeError when XSAVE is not available.");

static PyObject *xsave_roundtrip(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    PyObject *result = NULL;

    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;

    if (!xs_supported()) {
        xs_unsupported_error();
        goto out;
    }
#if defined(__x86_64__)
    {
        uint64_t mask = xs_user_mask();
        size_t need = xs_area_size(mask);

        if ((size_t)view.len < need) {
            PyErr_Format(PyExc_ValueError, "buffer holds %zd bytes, XSAVE needs %zu", view.len,
                         need);
            goto out;
        }
        xs_roundtrip(view.buf, mask);
        result = Py_NewRef(Py_None);
    }
#endif
out:
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(address_doc,
             "address(buffer, /) -> int\n\n"
             "The address of the buffer's first byte. The buffer may be read-only; it\n"
             "must be C-contiguous (BufferError otherwise).");

static PyObject *xsave_address(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    PyObject *result;

    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    result = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef xsave_methods[] = {
    {"supported", xsave_supported, METH_NOARGS, supported_doc},
    {"user_mask", xsave_user_mask, METH_NOARGS, user_mask_doc},
    {"area_size", xsave_area_size, METH_NOARGS, area_size_doc},
    {"roundtrip", xsave_roundtrip, METH_O, roundtrip_doc},
    {"address", xsave_address, METH_O, address_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
             "Run XSAVE/XRSTOR on a caller's buffer, to show why XSAVE areas need\n"
             "64-byte alignment. Use kmemcache.demo.xsave, which checks alignment first.");

/* The area's layout, for Python: one definition of each size. */
static int xsave_exec(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "ALIGNMENT", XS_ALIGNMENT) < 0 ||
        PyModule_AddIntConstant(module, "LEGACY_SIZE", XS_LEGACY_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "HEADER_SIZE", XS_HEADER_SIZE) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot xsave_slots[] = {
    {Py_mod_exec, xsave_exec},
    {0, NULL},
};

/* One member a line: clang-format would lay them out in columns. */
/* clang-format off */
static struct PyModuleDef xsave_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kmemcache.demo._xsave",
    .m_doc = module_doc,
    .m_size = 0,
    .m_methods = xsave_methods,
    .m_slots = xsave_slots,
};
/* clang-format on */

PyMODINIT_FUNC PyInit__xsave(void) { return PyModuleDef_Init(&xsave_module); }
