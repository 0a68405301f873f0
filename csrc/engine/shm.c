/*
 * shm.c - the shared-memory region's contact with the OS, as os.c is the
 * private caches'.
 *
 * Contract: offsets and lengths are page multiples; functions return 0 or
 * an errno value (never -1 with errno set), so that callers can report why.
 * A region is one POSIX shared-memory file (tmpfs under /dev/shm, mode
 * 0600: the same user only). Its size is set once, sparse: tmpfs gives a
 * page when it is first touched, so memory is committed with fallocate(2)
 * before use (ENOSPC then, rather than SIGBUS on a touch when /dev/shm is
 * full) and given back with FALLOC_FL_PUNCH_HOLE, which frees the pages for
 * every process that maps them. The slab area is mapped MAP_SHARED over a
 * range reserved at the alignment its owner lookup and slabs need, so
 * alignment holds in every process whatever address the mapping gets.
 * Process identity (pid, start time, pid namespace) is read from /proc.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

int kmc__shm_open(const char *path, bool create, int *fd)
{
    if (kmc__os_injected_failure())
        return ENOMEM;
    int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
    int f = shm_open(path, flags, 0600);
    if (f < 0)
        return errno;
    *fd = f;
    return 0;
}

int kmc__shm_open_readonly(const char *path, int *fd)
{
    int f = shm_open(path, O_RDONLY | O_CLOEXEC, 0);
    if (f < 0)
        return errno;
    *fd = f;
    return 0;
}

void kmc__shm_close(int fd) { close(fd); }

int kmc__shm_unlink(const char *path) { return shm_unlink(path) == 0 ? 0 : errno; }

int kmc__shm_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

int kmc__shm_truncate(int fd, uint64_t size) { return ftruncate(fd, (off_t)size) == 0 ? 0 : errno; }

int kmc__shm_commit(int fd, uint64_t offset, uint64_t len)
{
    if (kmc__os_injected_failure())
        return ENOMEM;
    int rc = posix_fallocate(fd, (off_t)offset, (off_t)len);
    /* a filesystem without fallocate commits on touch, as tmpfs once did */
    return rc == EOPNOTSUPP || rc == EINVAL ? 0 : rc;
}

void kmc__shm_decommit(int fd, uint64_t offset, uint64_t len)
{
    (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len);
}

int kmc__shm_map(int fd, uint64_t offset, size_t len, size_t align, bool writable, void **out)
{
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *at = NULL;
    if (align > kmc_page_size()) {
        at = kmc__os_reserve(len, align); /* aligned address space, no access */
        if (!at)
            return ENOMEM;
    } else if (kmc__os_injected_failure()) {
        return ENOMEM;
    }
    void *p = mmap(at, len, prot, MAP_SHARED | (at ? MAP_FIXED : 0), fd, (off_t)offset);
    if (p == MAP_FAILED) {
        int e = errno;
        if (at)
            kmc__os_unreserve(at, len);
        return e;
    }
    *out = p;
    return 0;
}

void kmc__shm_unmap(void *addr, size_t len) { munmap(addr, len); }

uint64_t kmc__shm_nonce(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v) || v == 0)
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)kmc__now_ms() ^ (uint64_t)(uintptr_t)&v;
    return v | 1; /* never 0: 0 reads as "no region" */
}

/* Field 22 of /proc/<pid>/stat, the start time in clock ticks since boot,
 * and field 3, the state. The command name (field 2) may hold spaces and
 * parentheses: fields are counted from its last ')'. */
int kmc__shm_proc_start(int pid, uint64_t *start)
{
    char path[48], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? ESRCH : errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return ESRCH;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return EIO;
    p += 2;
    char state = *p;
    if (state == 'Z' || state == 'X' || state == 'x')
        return ESRCH; /* a zombie runs no more code */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return EIO;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

int kmc__shm_self(int *pid, uint64_t *start, uint64_t *pidns)
{
    *pid = getpid();
    struct stat st;
    *pidns = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
    return kmc__shm_proc_start(*pid, start);
}

int kmc__shm_getpid(void) { return getpid(); }

void kmc__shm_die(void) { kill(getpid(), SIGKILL); }
