/*
 * kmc.h - the slab engine's whole interface.
 *
 * The engine hands out fixed-size objects from caches, each cache created once
 * with a size and an alignment, as Linux's kmem_cache does. It knows nothing of
 * Python: the CPython binding, C tests and fuzzers all call this header.
 *
 * Memory model
 *   arena   address space owned by one cache: 1 MiB for its first arena,
 *           doubling with each new one up to 64 MiB, aligned to its size,
 *           reserved with no access and committed slab by slab. A cache thus
 *           reserves address space in proportion to its use.
 *   slab    2^k pages inside an arena, aligned to its own size, cut into slots.
 *   slot    slot_size bytes: in debug caches with red zones a left red zone,
 *           the object (size bytes), a right red zone; otherwise the object
 *           rounded up to the alignment. slot_size and the left red zone are
 *           multiples of the alignment and slabs start on one, so every
 *           object is aligned.
 *
 *   slab:  | slot 0          | slot 1          | ... | slot n-1        | pad |
 *   slot:  | left red zone | object (size) | right red zone / rounding |
 *
 * The allocator's metadata (slab descriptors, free bitmaps) lives outside the
 * arenas, so a stray write through an object cannot corrupt the allocator
 * (SLUB keeps its free pointer inside the object; we do not). Metadata refers
 * to memory by slab index and slot index, not by raw pointers.
 *
 * Finding an object's owner is O(1): a two-level table indexed by
 * address >> 20 gives the arena, the arena gives the cache, the offset gives
 * the slab and the slot.
 *
 * Per-thread caches (what SLUB's per-CPU slabs and mimalloc's thread-local
 * pages do). A slab is owned either by the cache's depot (its lists, under the
 * cache lock) or by one thread's heap. A thread allocates from its current
 * slab, whose free bitmap it keeps in its own heap, and frees into the slabs
 * its heap owns by flipping a bit: no lock, no atomic read-modify-write.
 * A free into a slab another thread owns (a remote free) sets the slot's bit
 * in the slab's second bitmap with one atomic OR; the owner merges those bits
 * when it next needs memory. A slot's state is always in exactly one of the
 * two bitmaps, so a double free is detected however the first free went.
 *
 * The magazine (Bonwick's magazines, Linux's sheaves). A pool at steady
 * state (objects live, a random one freed and replaced) frees mostly into
 * owned slabs that are not current, each full but for the hole just made;
 * had the next alloc to find that hole, every alloc would switch slabs.
 * Instead each heap keeps a stack of up to 64 objects freed into its other
 * slabs (KMEMCACHE_MAGAZINE; 64 * the slot size in bytes at most), and an
 * alloc that finds the current slab's word empty takes the last of them:
 * a store into the stack, a bit and a count, whatever the pattern of holes.
 * A magazine object is free in its slab's bitmap, so a second free of it is
 * a double free from any thread; it is free in the statistics (cached_objs)
 * and to shrink and validate, which empty the magazine first. The magazine
 * never names an empty slab (the free that empties a slab takes the slab's
 * objects out of it), so it keeps no memory that could go back to the OS,
 * and the current slab is never loaded while the magazine holds objects.
 * Two threads without the GIL racing to free one object at the same instant
 * are mostly caught when the bits meet (counted, and reported by validate);
 * in the instant the owner retires that slab as full, a second remote free
 * can go unseen. From Python, where calls hold the GIL, none race. The
 * depot exchanges slabs, one at a time, with the heaps: a heap takes a slab
 * when it has none with free slots, and gives back slabs beyond a few that
 * are empty. Caches with debug flags have no heaps: every check runs at the
 * moment of the call, under the cache lock, as SLUB does when debugging.
 *
 * Objects in a heap's slabs count as free in the statistics, and also as
 * cached_objs. shrink() and validate() first take every heap's slabs back to
 * the depot, whichever thread owns them: the owner announces each fast path
 * with a flag that the taker reads after a process-wide memory barrier
 * (membarrier(2)), so the owner's fast path needs no atomic instruction. A
 * thread's heaps go back when it exits (or calls kmc_thread_flush).
 *
 * Memory goes back to the OS lazily: an empty slab waits in the depot for
 * KMEMCACHE_PURGE_DELAY_MS (500 ms by default; 0 releases at once) before a
 * background thread releases it with MADV_DONTNEED, so churn at a slab
 * boundary costs no system call. The background thread ("kmemcache-purge")
 * runs only while there is something to release, and ends when nothing is
 * left; it also takes back the empty slabs of heaps that stayed idle for a
 * whole delay. kmc_cache_shrink releases everything
 * at once.
 *
 * fork(): the engine's locks are taken around fork (pthread_atfork), so a
 * child can allocate and free at once; in the child, the heaps of the
 * threads that did not survive the fork go back to the depot.
 *
 * Threads: every function is safe to call from any thread without the Python
 * GIL. Each cache has its own lock; the owner table is read without a lock.
 * Using a cache while another thread destroys it is the caller's error, as in
 * the kernel.
 *
 * Errors: functions return a kmc_status (0 is success) or NULL, and leave the
 * details of the last error of the calling thread in kmc_last_report().
 *
 * Shared caches (kmc_shared_*; shared*.c, and shm.c for their OS calls). A
 * shared cache is an ordinary cache in each process whose one arena is the
 * slab area of a POSIX shared-memory region ("/kmemcache.<uid>.<name>",
 * mode 0600), and whose depot and lock live in the region too: a robust,
 * process-shared mutex. The region holds, by offset and index only, a
 * header with the layout its creator chose (attachers take it, and refuse
 * a region whose layout their engine would not make), a process table,
 * slab descriptors, bitmaps, one record per object slot, then the slab
 * area, which every process maps at an address aligned to the slab size
 * and to 1 MiB, so objects are aligned and kmc_owner works in every
 * mapping. Its size is fixed at creation (capacity); tmpfs memory is
 * committed (fallocate) as slabs are built and punched out as they are
 * released, but for the header, process table, slab descriptors and
 * bitmaps, committed at creation (about 1/256 of the slab area for 64-byte
 * objects, less for larger ones). Each object slot costs 8 bytes of record
 * plus 8 per 64 process slots, committed with its slab.
 *
 * An object slot's record says FREE, CACHED (free, kept by one process's
 * magazine) or LIVE with a generation (new at every allocation) and who
 * holds it: the allocating process, then any process that claims it
 * (kmc_shared_hold, what unpickling does), plus references handed out and
 * not yet claimed (kmc_shared_ticket, what pickling does). kmc_shared_free
 * ends the object for everyone, from any process, and a stale generation is
 * a double free even after the slot was reused; kmc_shared_drop lets this
 * process go, and the object is freed when no holder and no reference is
 * left. The records are the truth; bitmaps, counts and lists follow from
 * them. Per-thread heaps are bypassed; each process has instead a magazine
 * of up to 64 free objects in its process slot, behind a lock of its own,
 * so that two processes allocating and freeing do not share a cache line
 * on the fast path.
 *
 * Crashes: a process may die at any instruction. Each locked path writes in
 * an order whose every prefix can be undone or finished from the records;
 * whoever next takes the lock of a dead holder (EOWNERDEAD) rebuilds the
 * depot from the records, breaks the slot locks the dead held, then makes
 * it consistent (pthread_mutex_consistent). What a dead process held (its
 * magazine, objects nobody else holds and no reference names, the slab it
 * was building) goes back at the next attach, when the region is full, or
 * on kmc_shared_reclaim: only once the process is dead, judged by pid and
 * start time (/proc/<pid>/stat, so a reused pid is another process) in the
 * same pid namespace. A reference handed out keeps its object live whoever
 * dies, until claimed or reclaimed with kmc_shared_reclaim(c, 1). Validate
 * and reclaim hold every living process's slot lock for a moment: they wait
 * for a process stopped (SIGSTOP) in the middle of a fast path.
 */
#ifndef KMC_H
#define KMC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of a cache (the Python API documents the same). */
#define KMC_MAX_SIZE   ((size_t)4 << 20) /* largest object: 4 MiB */
#define KMC_MAX_ALIGN  ((size_t)2 << 20) /* largest alignment: 2 MiB */
#define KMC_MIN_ALIGN  ((size_t)8)       /* what align=0 means */
#define KMC_CACHE_LINE ((size_t)64)      /* what KMC_HWCACHE_ALIGN rounds to */
#define KMC_NAME_MAX   64                /* bytes of a name, with its NUL */

/* Cache flags: the values of Linux's SLAB_* flags, so that numbers read in
 * kernel documentation mean the same here. */
enum kmc_flags {
    KMC_CONSISTENCY_CHECKS = 0x00000100u, /* F: check the slab of every op */
    KMC_RED_ZONE = 0x00000400u,           /* Z: guard bytes around each object */
    KMC_POISON = 0x00000800u,             /* P: fill free objects, check on reuse */
    KMC_HWCACHE_ALIGN = 0x00002000u,      /* align objects on the cache line */
    KMC_STORE_USER = 0x00010000u,         /* U: the binding records owners */
};
#define KMC_DEBUG_FLAGS (KMC_CONSISTENCY_CHECKS | KMC_RED_ZONE | KMC_POISON | KMC_STORE_USER)
#define KMC_VALID_FLAGS (KMC_DEBUG_FLAGS | KMC_HWCACHE_ALIGN)

/* Fill bytes, as SLUB names them (include/linux/poison.h). */
#define KMC_POISON_INUSE 0x5a /* uninitialised object; slab padding */
#define KMC_POISON_FREE  0x6b /* freed object */
#define KMC_POISON_END   0xa5 /* last byte of a freed object */
#define KMC_RED_INACTIVE 0xbb /* red zone of a free object */
#define KMC_RED_ACTIVE   0xcc /* red zone of a live object */

typedef enum kmc_status {
    KMC_OK = 0,
    KMC_ENOMEM,        /* the OS refused memory; nothing changed */
    KMC_EINVAL,        /* bad argument; nothing changed */
    KMC_ECTOR,         /* the constructor failed; nothing changed */
    KMC_EDOUBLE_FREE,  /* the object is already free */
    KMC_EINVALID_FREE, /* not an object of this cache (or of any cache) */
    KMC_EBUSY,         /* destroy with live objects */
    KMC_EREDZONE,      /* a red zone or the slab padding was overwritten */
    KMC_EPOISON,       /* a free object was written to */
    KMC_ECORRUPT,      /* metadata does not add up */
    KMC_EEXIST,        /* a shared cache of that name exists already */
    KMC_ENOENT,        /* no shared cache of that name */
    KMC_ESTALE,        /* a shared object's reference names a freed object */
    KMC_EOS,           /* the OS refused, for the reason in report.os_error */
    KMC_ELIMIT,        /* a memory group's or a cache's limit; nothing changed */
} kmc_status;

typedef struct kmc_cache_s kmc_cache_t;
typedef struct kmc_group_s kmc_group_t; /* a memory group: see kmc_group_create */

/* A constructor runs once per object when its slab is created, never on a
 * plain alloc (Bonwick's object caching). It runs without any engine lock
 * held, so it may call the engine. Non-zero return: the allocation fails with
 * KMC_ECTOR; a negative one gives the slab back, a positive one says that
 * something still points into the object (a view its caller could not take
 * back), so the slab's memory stays mapped and unused for good. */
typedef int (*kmc_ctor_fn)(void *object, size_t size, void *arg);

/* What went wrong, for the calling thread's last failed call. */
typedef struct kmc_report_s {
    kmc_status status;
    char cache[KMC_NAME_MAX]; /* cache name, "" if none */
    uintptr_t object;         /* object address, 0 if none */
    size_t object_size;       /* its size (the cache's size) */
    ptrdiff_t offset;         /* first bad byte, from the object's start
                               * (negative: in the left red zone) */
    size_t length;            /* how many bytes are bad from there */
    size_t problems;          /* kmc_cache_validate: all problems found */
    int found;                /* first bad byte found, -1 if n/a */
    int expected;             /* what it should have been, -1 if n/a */
    uintptr_t dump_start;     /* address of dump[0] */
    size_t dump_len;          /* bytes valid in dump */
    uint8_t dump[64];         /* bytes around the damage */
    char message[256];        /* one line, in SLUB's words where they fit */
    int os_error;             /* KMC_EOS (and others from an OS call): errno */
    /* KMC_ELIMIT: whose limit (a group's name, or "" for the cache's own),
     * the bytes asked for, and the group's or cache's usage, limit and peak
     * then; message names its largest consumers */
    char group[KMC_NAME_MAX];
    uint64_t requested, usage, limit, peak;
    kmc_group_t *limit_group; /* that group: valid until it is released, so
                               * while the thread that failed stays in it */
} kmc_report_t;

/* Per-cache counters, one X-macro list so that every consumer (the struct,
 * the binding's dict, tests) is made from it: X(name, comment). The first
 * seven are /proc/slabinfo's. */
#define KMC_STATS_FIELDS(X)                                                          \
    X(active_objs, "objects handed out and not freed")                               \
    X(num_objs, "object slots in committed slabs")                                   \
    X(objsize, "bytes between objects (slot size)")                                  \
    X(objperslab, "objects per slab")                                                \
    X(pagesperslab, "pages per slab")                                                \
    X(active_slabs, "committed slabs with at least one live object")                 \
    X(num_slabs, "committed slabs")                                                  \
    X(size, "requested object size")                                                 \
    X(align, "guaranteed alignment")                                                 \
    X(slab_size, "bytes per slab")                                                   \
    X(partial_slabs, "slabs with live and free objects")                             \
    X(empty_slabs, "committed slabs without live objects, waiting to be released")   \
    X(cached_objs, "free objects in slabs that threads' caches hold")                \
    X(thread_caches, "threads' caches holding slabs of this cache")                  \
    X(allocs, "objects handed out, ever")                                            \
    X(frees, "objects given back, ever")                                             \
    X(remote_frees, "objects freed by a thread other than their slab's owner, ever") \
    X(slabs_created, "slabs committed, ever")                                        \
    X(slabs_released, "slabs given back to the OS, ever")                            \
    X(committed_bytes, "object memory the OS backs now, at most")                    \
    X(metadata_bytes, "descriptor and bitmap memory mapped")                         \
    X(reserved_bytes, "address space reserved for the arenas")                       \
    X(arenas, "arenas reserved")                                                     \
    X(bitmap_words, "64-bit free-bitmap words per slab")                             \
    X(max_scan, "most bitmap words one alloc skipped, ever")                         \
    X(flags, "the cache's flags")

typedef struct kmc_stats_s {
#define KMC_STATS_FIELD(name, comment) uint64_t name;
    KMC_STATS_FIELDS(KMC_STATS_FIELD)
#undef KMC_STATS_FIELD
} kmc_stats_t;

/* --- caches ------------------------------------------------------------- */

/* kmc_cache_create - make a cache of objects of @size bytes.
 * @name: printable, 1..KMC_NAME_MAX-1 bytes; names need not be unique.
 * @size: 1..KMC_MAX_SIZE.  @align: 0 or a power of two <= KMC_MAX_ALIGN.
 * @flags: kmc_flags.  @ctor: NULL or a constructor with @ctor_arg.
 * A cache with a constructor is not poisoned (its objects must keep what
 * the constructor wrote): KMC_POISON is dropped, as SLUB drops it, and
 * kmc_cache_flags() says so.
 * Return: KMC_OK and *out, or KMC_EINVAL / KMC_ENOMEM. */
kmc_status kmc_cache_create(const char *name, size_t size, size_t align, unsigned flags,
                            kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out);

/* kmc_cache_destroy - give everything back. KMC_EBUSY (and nothing changes)
 * while objects are live; the report's object is the first live one. With
 * red zones or poison, the free objects are checked first and damage is
 * reported (KMC_EREDZONE / KMC_EPOISON) but the cache is destroyed all the
 * same. No other thread may use the cache meanwhile; their caches of it
 * need not be empty. */
kmc_status kmc_cache_destroy(kmc_cache_t *cache);

/* kmc_cache_alloc - one object; zeroed when @zero. NULL on failure. */
void *kmc_cache_alloc(kmc_cache_t *cache, int zero);

/* kmc_cache_alloc_bulk - @n objects into @out, all or nothing. */
kmc_status kmc_cache_alloc_bulk(kmc_cache_t *cache, size_t n, void **out, int zero);

/* kmc_cache_free - give @object back to @cache. Double and foreign frees are
 * always detected and change nothing. */
kmc_status kmc_cache_free(kmc_cache_t *cache, void *object);

/* kmc_cache_check_free - would kmc_cache_free(@cache, @object) succeed with
 * no report? KMC_OK, or the status and report the free would give: a double
 * or invalid free, and in debug caches a damaged red zone. Frees nothing
 * (used to make bulk frees all or nothing); damage it reports is repaired,
 * as every check does, so that it is reported once. */
kmc_status kmc_cache_check_free(kmc_cache_t *cache, const void *object);

/* kmc_cache_shrink - take back the free objects that threads' caches hold,
 * then release every empty slab (and every arena left empty) to the OS.
 * Return: the bytes given back. */
size_t kmc_cache_shrink(kmc_cache_t *cache);

/* kmc_cache_validate - walk every slab: counters against bitmaps, red zones,
 * poison, padding. Return the first problem found (details in the report,
 * whose problems field counts all of them, as *@problems does when not
 * NULL). Damaged bytes are restored; a slab whose counter disagrees with its
 * bitmap has all its objects marked used, so none can be handed out twice
 * (SLUB's "Marking all objects used"). Double frees that two threads raced
 * to make are reported here (KMC_EDOUBLE_FREE), once each. Threads' caches
 * of this cache are taken back first; for a shared cache, what dead
 * processes held is reclaimed first (a process killed mid-call leaves work
 * for reclaim, not corruption). */
kmc_status kmc_cache_validate(kmc_cache_t *cache, size_t *problems);

void kmc_cache_stats(kmc_cache_t *cache, kmc_stats_t *out);
const char *kmc_cache_name(const kmc_cache_t *cache);
size_t kmc_cache_size(const kmc_cache_t *cache);
size_t kmc_cache_align(const kmc_cache_t *cache);
unsigned kmc_cache_flags(const kmc_cache_t *cache);

/* kmc_cache_for_each_live - call @fn for every live object, in address
 * order, with the cache locked (@fn must not call the engine). Objects that
 * other threads allocate or free meanwhile may or may not be seen. */
void kmc_cache_for_each_live(kmc_cache_t *cache, void (*fn)(void *object, void *arg), void *arg);

/* --- any object --------------------------------------------------------- */

/* kmc_owner - the cache that owns @address, or NULL; when @object_start is
 * not NULL it receives the start of the object whose slot holds @address
 * (its red zones included). O(1). */
kmc_cache_t *kmc_owner(const void *address, void **object_start);

/* kmc_free - free an object of any cache (what kfree does). */
kmc_status kmc_free(void *object);

/* --- the process -------------------------------------------------------- */

/* kmc_caches - up to @max live caches into @out, oldest first; returns how
 * many exist. Caches are not pinned: use them only while none is destroyed. */
size_t kmc_caches(kmc_cache_t **out, size_t max);

/* kmc_thread_flush - give the calling thread's cached slabs of every cache
 * back to the depots (what thread exit does). */
void kmc_thread_flush(void);

/* The calling thread's last error. */
const kmc_report_t *kmc_last_report(void);
const char *kmc_status_name(kmc_status status);

/* Options, read once from the environment variable KMEMCACHE_<NAME> (a bad
 * value is reported on stderr and the default kept), or set here. */
typedef enum kmc_option {
    KMC_OPTION_PURGE_DELAY_MS, /* empty memory waits this long; 0: at once */
    KMC_OPTION_THREAD_CACHES,  /* 1: per-thread caches; 0: every op locks */
    KMC_OPTION_MAGAZINE,       /* objects a thread's magazine keeps, 0..64 */
    KMC_OPTIONS
} kmc_option;
long kmc_option_get(kmc_option option);
kmc_status kmc_option_set(kmc_option option, long value);
const char *kmc_option_name(kmc_option option);

/* Test hook: make the OS page source fail after @n more successful requests
 * (n < 0 turns failure injection off). */
void kmc_os_fail_after(long n);

/* Test hook: call @fn(@arg) in the calling thread just after each memory
 * barrier the engine runs on every thread and that succeeds (the handshake
 * by which a thread takes back another's heap or stock; also at the first
 * group's creation and before a fork). @fn runs with the caller's engine
 * locks held: it must not call the engine. NULL turns it off. Set it only
 * while no other thread can run a barrier. */
void kmc_os_barrier_hook(void (*fn)(void *), void *arg);

/* Test hook: flip the free bit of the slot holding @address in its slab's
 * bitmap, touching nothing else: the metadata corruption that a stray write
 * into SLUB's in-object free pointer causes. KMC_OK, or KMC_EINVALID_FREE
 * when @address is in no slot of a committed slab. The slab is taken back
 * from any thread's cache first. */
kmc_status kmc_debug_flip_free_bit(const void *address);
size_t kmc_page_size(void);

/* --- shared caches ---------------------------------------------------------
 *
 * A shared cache is a cache whose slabs, slab metadata, depot and lock live
 * in one POSIX shared-memory region, so that every process of the same
 * user that attaches it allocates and frees the same objects. In each
 * process it is an ordinary kmc_cache_t: kmc_owner, kmc_free, kmc_kfree,
 * stats, validate, shrink and the debug flags work on it; kmc_cache_destroy
 * detaches this process (see kmc_shared_detach). See the head of this file
 * for the design; the functions below add what sharing needs: generations
 * and holders. A generation names one life of an object slot (it changes at
 * every allocation), so that a stale reference is told from a live one even
 * after the slot was reused. Generations are never 0; where a function
 * takes one, KMC_SHARED_ANY_GEN means "whatever lives there now". */

#define KMC_SHARED_ANY_GEN       0u
#define KMC_SHARED_MAX_PROCS     4096u /* processes attached at once, at most */
#define KMC_SHARED_DEFAULT_PROCS 64u
#define KMC_SHARED_PREFIX        "/kmemcache." /* + uid + "." + name: the region */

typedef struct kmc_shared_info_s {
    char region[96];       /* the region's POSIX shm name, "/kmemcache.<uid>.<name>" */
    uint64_t nonce;        /* random, set at create: tells a re-created region apart */
    uint64_t capacity;     /* bytes asked for: the region never grows beyond */
    uint64_t region_bytes; /* metadata + slab area, the file's size */
    uint64_t meta_bytes;   /* header, process table, descriptors, bitmaps, records */
    uint64_t slab_bytes;   /* the slab area */
    uint64_t nslabs;       /* slabs the slab area holds */
    uint64_t max_procs;    /* process slots */
    uint64_t procs;        /* processes attached now */
    uint64_t magazine;     /* objects a process keeps for its fast paths, at most */
    uint64_t recoveries;   /* times the lock's holder was found dead, ever */
    uint64_t reclaimed;    /* objects given back from dead or detached processes, ever */
    uint64_t pickled;      /* references handed out (kmc_shared_ticket) and not claimed */
    int self;              /* this process's slot, -1 when it has none yet */
    int creator_pid;
} kmc_shared_info_t;

/* kmc_shared_create - make the region of shared cache @name and attach it.
 * @name: as kmc_cache_create's, without '/'. @size, @align, @flags, @ctor:
 * as kmc_cache_create's (@ctor runs in whichever process builds a slab).
 * @capacity: bytes of the region at most, metadata included; memory is
 * committed as slabs are built. @max_procs: 1..KMC_SHARED_MAX_PROCS, or 0
 * for KMC_SHARED_DEFAULT_PROCS.
 * Return: KMC_OK and *out; KMC_EEXIST, KMC_EINVAL (the report says what, a
 * too small @capacity with the least that works), KMC_ENOMEM or KMC_EOS. */
kmc_status kmc_shared_create(const char *name, size_t size, size_t align, unsigned flags,
                             size_t capacity, unsigned max_procs, kmc_ctor_fn ctor, void *ctor_arg,
                             kmc_cache_t **out);

/* kmc_shared_attach - attach the region of shared cache @name, made by any
 * process of this user. @ctor: the constructor this process runs when it
 * builds a slab; a process that attached a cache made with one, without
 * giving one, cannot build slabs (KMC_ECTOR). Waits up to about 2 s for a
 * region still being made. Dead processes' objects are reclaimed first.
 * Return: KMC_OK and *out, KMC_ENOENT, KMC_EINVAL (not a region of this
 * version of the engine, or never finished by its creator), KMC_EBUSY
 * (every process slot is taken), KMC_ENOMEM or KMC_EOS (os_error EPERM:
 * another user's file; EACCES: group or other bits set; EINVAL: not a
 * regular file). The file is checked before a byte of it is read. */
kmc_status kmc_shared_attach(const char *name, kmc_ctor_fn ctor, void *ctor_arg, kmc_cache_t **out);

/* kmc_shared_detach - what kmc_cache_destroy does to a shared cache: this
 * process lets go of every object it holds (those nobody else holds, and no
 * pickle names, are freed), gives its cached objects back, frees its
 * process slot and unmaps the region, which lives on for the others (and on
 * /dev/shm until unlinked). Always succeeds. */
kmc_status kmc_shared_detach(kmc_cache_t *cache);

/* kmc_shared_leave - what kmc_shared_detach does to the region, the mapping
 * kept (a process about to exit wants kmc_shared_exiting instead: its
 * objects' memory may still be written until it is gone). The cache stays usable: its next call takes a
 * process slot again. */
void kmc_shared_leave(kmc_cache_t *cache);

/* kmc_shared_exiting - for a process about to exit: its cached free objects
 * go back; what it holds stays held, and comes back once the process is
 * found dead (reclaim), so that no write it makes while exiting (a thread,
 * a late exit handler) can reach another process's object. */
void kmc_shared_exiting(kmc_cache_t *cache);

/* kmc_shared_unlink - remove the name of shared cache @name: processes
 * attached keep working; new attaches fail; the memory goes when the last
 * one detaches. KMC_OK, KMC_ENOENT or KMC_EOS (os_error EPERM: the file is
 * another user's, and is left alone). */
kmc_status kmc_shared_unlink(const char *name);

/* kmc_shared_unlink_cache - kmc_shared_unlink for the region @cache is
 * attached to, by the name it was attached under (not one made again from
 * the current uid, which may have changed since). */
kmc_status kmc_shared_unlink_cache(kmc_cache_t *cache);

int kmc_cache_is_shared(const kmc_cache_t *cache);

/* kmc_shared_alloc - an object, held by this process; *@gen gets its
 * generation (may be NULL). NULL with a report on failure; KMC_ENOMEM when
 * the region is full after dead processes' objects were reclaimed. */
void *kmc_shared_alloc(kmc_cache_t *cache, int zero, uint32_t *gen);

/* kmc_shared_alloc_bulk - @n objects into @out and their generations into
 * @gens (may be NULL), all or nothing. */
kmc_status kmc_shared_alloc_bulk(kmc_cache_t *cache, size_t n, void **out, uint32_t *gens,
                                 int zero);

/* kmc_shared_free - free live object @object of generation @gen, whoever
 * holds it: the object ends for every process. Any process may free any
 * object. A stale @gen (freed, maybe reused since) is KMC_EDOUBLE_FREE and
 * changes nothing, also when the slot lives again. */
kmc_status kmc_shared_free(kmc_cache_t *cache, void *object, uint32_t gen);

/* kmc_shared_free_bulk - free @n objects, each checked (live, generation,
 * listed once, red zones) before the first is freed. */
kmc_status kmc_shared_free_bulk(kmc_cache_t *cache, size_t n, void *const *objects,
                                const uint32_t *gens);

/* kmc_shared_drop - this process lets go of @object (generation @gen): the
 * object is freed when no process holds it and no pickle names it. A
 * process that does not hold it, or a stale @gen: nothing happens (KMC_OK;
 * *@freed, when not NULL, says whether the object was freed). */
kmc_status kmc_shared_drop(kmc_cache_t *cache, void *object, uint32_t gen, int *freed);

/* kmc_shared_ticket - a reference to @object is about to leave this process
 * (pickling): until one process claims it (kmc_shared_hold with @ticket),
 * the object is not freed by drops, whoever dies. KMC_ESTALE if @gen is
 * not the live object's. */
kmc_status kmc_shared_ticket(kmc_cache_t *cache, void *object, uint32_t gen);

/* kmc_shared_hold - make this process a holder of the object at @offset
 * (from kmc_shared_offset) of generation @gen (KMC_SHARED_ANY_GEN: the one
 * live there now); with @ticket, claim one reference handed out by
 * kmc_shared_ticket. *@object and *@gen_out get the object and its
 * generation, *@already whether this process held it already.
 * KMC_EINVAL when @offset names no object slot, KMC_ESTALE when no object
 * of that generation lives there. */
kmc_status kmc_shared_hold(kmc_cache_t *cache, uint64_t offset, uint32_t gen, int ticket,
                           void **object, uint32_t *gen_out, int *already);

/* kmc_shared_offset - @object's offset in the region's slab area: the same
 * in every process. */
uint64_t kmc_shared_offset(const kmc_cache_t *cache, const void *object);

/* kmc_shared_reclaim - give back what processes that died held: objects
 * they alone held (and no pickle names), their cached objects, the slabs
 * they were building. A process counts as dead when its pid is gone, is a
 * zombie, or names a process started at another time (pid reuse); a
 * process of another pid namespace is never judged. With @pickled, also
 * free the objects that no process holds and only pickles name (call it
 * only when no pickle can still be loaded). Returns the objects freed. */
size_t kmc_shared_reclaim(kmc_cache_t *cache, int pickled);

void kmc_shared_info(kmc_cache_t *cache, kmc_shared_info_t *out);

/* kmc_shared_peek - the counters of shared cache @name read from its region
 * without attaching (no process slot, no lock, no recovery): what other
 * processes see of it, approximately. KMC_OK, KMC_ENOENT, KMC_EINVAL or
 * KMC_EOS. */
kmc_status kmc_shared_peek(const char *name, kmc_stats_t *stats, kmc_shared_info_t *info);

/* kmc_shared_region_name - the region's shm name for cache @name into @out
 * (@size bytes). KMC_EINVAL if @name is not a valid shared cache name. */
kmc_status kmc_shared_region_name(const char *name, char *out, size_t size);

/* Test hook: the calling process kills itself with SIGKILL the @n-th time
 * (1-based) it passes a crash point of a shared cache's locked paths (any
 * of them; 0 turns it off). For crash tests. */
void kmc_shared_crash_after(long n);

/* Test hook: this process's slot of @cache claims to be process @pid
 * started at @start (clock ticks since boot), as a slot left by a dead
 * process whose pid was reused looks. KMC_EINVAL if it has no slot. */
kmc_status kmc_shared_forge_slot(kmc_cache_t *cache, int pid, uint64_t start);

/* Test hook for the region fuzzer: where the locks lie in a region's file
 * (byte offsets), so that a harness can leave them as they were. A lock
 * that another process of the user holds for good blocks the others, as
 * with any lock in shared memory: liveness against that is not a property
 * the engine can have, so the fuzzer checks everything else. */
typedef struct kmc_shared_locks_s {
    size_t mutex_at, mutex_len; /* the region's robust mutex */
    size_t procs_at, proc_size; /* the process table: each slot's lock word */
    size_t max_procs;           /* is its first 4 bytes */
} kmc_shared_locks_t;
void kmc_shared_locks(const kmc_cache_t *cache, kmc_shared_locks_t *out);

/* --- kmalloc family -------------------------------------------------------
 *
 * General-purpose allocation on top of the caches, as Linux's kmalloc.
 * Requests of 1..KMC_KMALLOC_MAX_CACHE_SIZE bytes are served by size
 * classes, each an ordinary cache named as Linux names them ("kmalloc-64",
 * "kmalloc-1k"), made on first use. Alignment, the guarantee Linux gives
 * since 5.4 (power-of-two sizes) and 6.11 (the others):
 *
 *   every object of 16 bytes or more is at least 16-byte aligned, smaller
 *   ones at least 8; a class whose size is a power of two is aligned to its
 *   size; kmalloc-96 to 32 and kmalloc-192 to 64 (their largest power-of-
 *   two divisor).
 *
 * @align asks for more: the request goes to the first class whose size and
 * alignment are both large enough (kmalloc(100, 64) is a kmalloc-128
 * object). That costs nothing a dedicated cache per alignment would save:
 * when @align is at least the size, the class is exactly @align bytes, and
 * an object aligned to @align occupies that much in any slab; below the
 * size, the class kmalloc(size) picks already has the alignment, except
 * kmalloc-96 and kmalloc-192, which give way to the next class, again
 * round_up(size, align) bytes. When no class is aligned enough (@align
 * above 8 KiB) the request is served like a large one: pages straight from
 * the OS at that alignment, round_up(size, page) bytes where a slab would
 * spend @align bytes per object.
 *
 * Large requests (above KMC_KMALLOC_MAX_CACHE_SIZE) are whole pages from
 * the OS, aligned to the page, to @align, and to their size when that is a
 * power of two. They are found from their address in O(1) by an
 * open-addressing hash table kept outside object memory; their usable size
 * is the size rounded up to pages. As a cache keeps empty slabs for a
 * while, freed runs of up to 32 MiB (64 MiB and 64 runs in all) are kept for
 * the purge delay to serve the next request of the same size and alignment
 * without a system call; kmc_kmalloc_shrink gives them back at once.
 *
 * The kmalloc red zone (SLUB's, Linux 6.1): in a size class whose cache
 * has red zones, an object remembers the size it was asked for, and the
 * bytes from there to the class size are red zone too (0xcc), checked at
 * free and by validate: kzalloc(100, 64) then a 104-byte write is caught.
 *
 * Size 0 gives KMC's ZERO_SIZE_PTR (kmc_kmalloc(0, 0) == kmc_kmalloc(0, 64)):
 * one page of address space with no access, aligned to KMC_MAX_ALIGN and
 * owned by nothing else. It is not NULL, so it does not read as a failure;
 * kmc_kfree accepts it (and does nothing) and kmc_ksize says 0.
 *
 * The size-class caches can be made by the caller (the Python package makes
 * them through its Cache class so that they take its debug flags) and
 * installed with kmc_kmalloc_install; a class with no cache installed when
 * first used gets one made here with no flags. An installed cache is never
 * destroyed (kmc_cache_destroy says KMC_EBUSY).
 *
 * All functions are thread-safe without the Python GIL. */

#define KMC_KMALLOC_CLASSES        13
#define KMC_KMALLOC_MAX_CACHE_SIZE ((size_t)8192) /* largest size class */
/* the largest request, 64 TiB: rounding it up never overflows */
#define KMC_KMALLOC_MAX_SIZE ((size_t)1 << 46)

typedef struct kmc_kmalloc_class_s {
    const char *name; /* the cache's name, Linux's: "kmalloc-96", "kmalloc-2k" */
    size_t size;      /* object size */
    size_t align;     /* guaranteed alignment */
} kmc_kmalloc_class_t;

/* The size classes, smallest first. */
extern const kmc_kmalloc_class_t kmc_kmalloc_classes[KMC_KMALLOC_CLASSES];

/* kmc_kmalloc_index - the size class serving @size bytes at @align (0 or a
 * power of two): its index in kmc_kmalloc_classes, or -1 when none does
 * (@size is 0 or above KMC_KMALLOC_MAX_CACHE_SIZE, or @align is above every
 * class's alignment). O(1). */
int kmc_kmalloc_index(size_t size, size_t align);

/* kmc_kmalloc_align - the alignment every kmc_kmalloc(@size, @align) object
 * has at least, as above: its class's, or for pages the page, @align, and
 * @size when that is a larger power of two. 0 for size 0 or a bad @align. */
size_t kmc_kmalloc_align(size_t size, size_t align);

/* kmc_kmalloc_cache - the cache of size class @index, made with no flags
 * if none is installed yet. NULL (and a report) if it cannot be made. */
kmc_cache_t *kmc_kmalloc_cache(unsigned index);

/* kmc_kmalloc_install - serve size class @index from @cache from now on.
 * @cache must have the class's size, at least its alignment, and no
 * constructor (KMC_EINVAL otherwise). A cache it replaces keeps working
 * for the objects it holds. @cache can no longer be destroyed. */
kmc_status kmc_kmalloc_install(unsigned index, kmc_cache_t *cache);

/* kmc_kmalloc - @size bytes (contents undefined) aligned as above and to
 * @align (0 or a power of two up to KMC_MAX_ALIGN).
 * Return: the object, ZERO_SIZE_PTR for size 0, or NULL with a report
 * (KMC_EINVAL: bad @align; KMC_ENOMEM: no memory, or @size above
 * KMC_KMALLOC_MAX_SIZE). */
void *kmc_kmalloc(size_t size, size_t align);

/* kmc_kzalloc - kmc_kmalloc, zeroed. */
void *kmc_kzalloc(size_t size, size_t align);

/* kmc_kcalloc - @n zeroed elements of @size bytes; KMC_ENOMEM (NULL) when
 * @n * @size overflows. */
void *kmc_kcalloc(size_t n, size_t size);

/* kmc_krealloc - resize @object (NULL: a new one) to @new_size bytes at
 * @align, keeping its contents up to the smaller size.
 * The same object comes back when it already holds @new_size bytes at the
 * alignment a fresh kmc_kmalloc(@new_size, @align) would have (a large one
 * gives its tail pages back); otherwise a new object gets the contents and
 * @object is freed. @new_size 0 frees @object and returns ZERO_SIZE_PTR.
 * Return: the object, or NULL with a report and @object untouched. */
void *kmc_krealloc(void *object, size_t new_size, size_t align);

/* kmc_krealloc_in_place - the first half of kmc_krealloc: 1 when @object
 * now serves @new_size bytes at @align where it is (a large object may have
 * given its tail pages back; a red-zoned one moved its kmalloc red zone),
 * 0 when a new object is needed (nothing changed). For callers that move
 * the contents themselves. */
int kmc_krealloc_in_place(void *object, size_t new_size, size_t align);

/* kmc_ksize - the usable size of a live object of any cache (the cache's
 * object size; with the kmalloc red zone, the size asked for) or large
 * allocation (its pages); 0 for NULL and ZERO_SIZE_PTR. 0 with a report
 * for anything else. */
size_t kmc_ksize(const void *object);

/* kmc_kfree - free what kmc_kmalloc (or any cache) returned, finding the
 * owner from the address in O(1). NULL and ZERO_SIZE_PTR: nothing to do.
 * A slab object freed twice is KMC_EDOUBLE_FREE. A large allocation's pages
 * leave the table at once, so a second kmc_kfree of it is
 * KMC_EINVALID_FREE, as is any address that is not an object's start. */
kmc_status kmc_kfree(void *object);

/* Large allocations now. */
typedef struct kmc_kmalloc_large_stats_s {
    uint64_t objects;     /* live large allocations */
    uint64_t bytes;       /* their pages */
    uint64_t table_bytes; /* the table that finds them from their address */
    uint64_t kept;        /* freed runs kept for reuse */
    uint64_t kept_bytes;  /* their pages */
} kmc_kmalloc_large_stats_t;

void kmc_kmalloc_large_stats(kmc_kmalloc_large_stats_t *out);

/* kmc_kmalloc_shrink - give the kept runs back to the OS (the size-class
 * caches shrink with kmc_cache_shrink). Return: the bytes given back. */
size_t kmc_kmalloc_shrink(void);

/*
 * Memory groups (group.c), as the kernel charges slab objects to memory
 * cgroups. While a group is a thread's current one, every object that thread
 * gets from a private cache or the kmalloc family is charged to the group,
 * and to each of its parents, until it is freed, by whichever thread: the
 * object's size in its cache (a kmalloc object: its size class; a large
 * one: its pages). Objects of shared caches are not charged. A charge that
 * would take a group past its limit fails with KMC_ELIMIT and changes
 * nothing; one that takes it past its soft limit first has every cache give
 * its empty and cached memory back (a purge), once per crossing.
 *
 * A group lives while it has a handle or charged bytes or child groups:
 * kmc_group_release lets go of the handle. No group entered, nothing is
 * charged, and alloc and free pay one test each.
 */
typedef struct kmc_group_stats_s {
    uint64_t usage;      /* bytes charged now: its objects' and its children's */
    uint64_t peak;       /* the most usage since creation or the last reset */
    uint64_t limit;      /* 0: none */
    uint64_t soft_limit; /* 0: none */
    uint64_t soft_hits;  /* charges that crossed the soft limit */
    uint64_t failures;   /* charges refused at the limit */
    uint64_t purges;     /* purges those crossings ran */
    uint64_t objects;    /* objects charged now (large allocations included) */
} kmc_group_stats_t;

/* kmc_group_create - a group named @name (printable, no spaces), a child of
 * @parent (NULL: none); limits in bytes, 0 for none. KMC_EINVAL for a bad
 * name, a soft limit above the limit, or parents nested deeper than 8. */
kmc_status kmc_group_create(const char *name, kmc_group_t *parent, uint64_t limit,
                            uint64_t soft_limit, kmc_group_t **out);
void kmc_group_release(kmc_group_t *group);
/* kmc_group_enter - make @group (NULL: none) the calling thread's current
 * group; returns the one it replaces, for kmc_group_enter to put back. */
kmc_group_t *kmc_group_enter(kmc_group_t *group);
kmc_group_t *kmc_group_current(void);
kmc_group_t *kmc_group_parent(const kmc_group_t *group);
const char *kmc_group_name(const kmc_group_t *group);
/* A pointer kept for the group's creator (the binding: its MemoryGroup). */
void kmc_group_set_owner(kmc_group_t *group, void *owner);
void *kmc_group_owner(const kmc_group_t *group);
void kmc_group_stats(const kmc_group_t *group, kmc_group_stats_t *out);
kmc_status kmc_group_set_limits(kmc_group_t *group, uint64_t limit, uint64_t soft_limit);
void kmc_group_reset_peak(kmc_group_t *group);
/* kmc_group_consumers - the caches holding the most of @group's charged
 * bytes (its children's included), largest first: up to @max names and
 * byte counts ("kmalloc-large" for large allocations); returns how many. */
size_t kmc_group_consumers(const kmc_group_t *group, char (*names)[KMC_NAME_MAX], uint64_t *bytes,
                           size_t max);

/* kmc_group_holds - 1 when the object at @object (a cache object's or a
 * large kmalloc allocation's start) is charged to @group or to one of its
 * children, else 0. */
int kmc_group_holds(const kmc_group_t *group, const void *object);

/* kmc_cache_set_limit - cap @cache's slab memory at @bytes (0: no cap).
 * Growing past it first gives the cache's empty slabs back, then fails
 * with KMC_ELIMIT. KMC_EINVAL for a shared cache or a kmalloc class. */
kmc_status kmc_cache_set_limit(kmc_cache_t *cache, uint64_t bytes);
uint64_t kmc_cache_limit(const kmc_cache_t *cache);

#ifdef __cplusplus
}
#endif
#endif /* KMC_H */
