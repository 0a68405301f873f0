/*
 * shm.c - the shared-memory region's contact with the OS, as os.c is the
 * private caches'.
 *
 * Contract: offsets and lengths are page multiples; functions return 0 or
 * an errno value (never -1 with errno set), so that callers can report why.
 * A region is one POSIX shared-memory file (tmpfs under /dev/shm, mode
 * 0600: the same user only), trusted only once fstat says it is a regular
 * file of this user with no group or other bits. Its size is set once, sparse: tmpfs gives a
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

/* The file behind @fd may be trusted: a regular file of this effective
 * user that no one else may write or read. /dev/shm is world-writable, so
 * another user can make a file under our name, a FIFO (whose open would
 * block: hence O_NONBLOCK) or a symbolic link (hence O_NOFOLLOW) included;
 * nothing read from it is used before this check. */
static int shm_trust(int fd, kmc_shm_owner_t *who)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return errno;
    if (who) {
        who->uid = (unsigned)st.st_uid;
        who->mode = (unsigned)st.st_mode;
    }
    if (!S_ISREG(st.st_mode))
        return EINVAL;
    if (st.st_uid != geteuid())
        return EPERM;
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        return EACCES;
    return 0;
}

static int shm_open_trusted(const char *path, int flags, int *fd, kmc_shm_owner_t *who)
{
    int f = shm_open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (f < 0) {
        int e = errno;
        if (e == ELOOP && who) /* a symbolic link */
            who->mode = S_IFLNK;
        return e == ELOOP ? EINVAL : e;
    }
    int rc = shm_trust(f, who);
    if (rc != 0) {
        close(f);
        return rc;
    }
    *fd = f;
    return 0;
}

int kmc__shm_open(const char *path, bool create, int *fd, kmc_shm_owner_t *who)
{
    if (kmc__os_injected_failure())
        return ENOMEM;
    return shm_open_trusted(path, O_RDWR | (create ? O_CREAT | O_EXCL : 0), fd, who);
}

int kmc__shm_open_readonly(const char *path, int *fd, kmc_shm_owner_t *who)
{
    return shm_open_trusted(path, O_RDONLY, fd, who);
}

/* POSIX shm names are files of /dev/shm on Linux (glibc's shm_open). */
static void shm_file(const char *path, char *out, size_t size)
{
    snprintf(out, size, "/dev/shm/%s", path[0] == '/' ? path + 1 : path);
}

int kmc__shm_owner(const char *path, kmc_shm_owner_t *who)
{
    char file[160];
    shm_file(path, file, sizeof(file));
    struct stat st;
    if (lstat(file, &st) != 0)
        return errno;
    who->uid = (unsigned)st.st_uid;
    who->mode = (unsigned)st.st_mode;
    return 0;
}

void kmc__shm_close(int fd) { close(fd); }

/* Only a file of ours: EPERM, with its owner in *@who, for another user's.
 * /dev/shm is sticky, so no other user can swap the file for theirs between
 * the look and the unlink. */
int kmc__shm_unlink(const char *path, kmc_shm_owner_t *who)
{
    int rc = kmc__shm_owner(path, who);
    if (rc != 0)
        return rc;
    if (who->uid != (unsigned)geteuid())
        return EPERM;
    return shm_unlink(path) == 0 ? 0 : errno;
}

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
