/*
 * glibc-2.17.h - force-included (-include) when 60-packages builds the wheel
 * against glibc 2.17 (manylinux2014) with zig cc. getrandom() arrived in
 * glibc 2.25; the system call itself (Linux 3.17) is made directly. Nothing
 * else in the build needs more than glibc 2.17. No header is included here:
 * Python.h must come before any system header in the binding's files.
 */
#ifndef KMEMCACHE_GLIBC_2_17_H
#define KMEMCACHE_GLIBC_2_17_H
#if !defined(__x86_64__)
#error "glibc-2.17.h knows getrandom's system call number on x86_64 only"
#endif
long syscall(long number, ...);
#define getrandom(buf, len, flags) syscall(318 /* SYS_getrandom, x86_64 */, (buf), (len), (flags))
#endif
