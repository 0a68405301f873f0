/*
 * heap.c - per-thread caches: the fast alloc and free, remote frees, and how
 * slabs move between a thread's heap and the depot.
 *
 * A heap is one thread's cache of one cache's slabs. It allocates from its
 * CURRENT slab, whose free bitmap lives in the heap itself (so that two
 * threads' current slabs never share a cache line), and frees into any slab
 * it owns. The fast paths touch the heap's first cache line and, for a free
 * into a slab other than the current one, that slab's descriptor and bitmap
 * word: loads and stores only.
 *
 *   alloc: a bitmap word of the current slab, its lowest set bit, the slot
 *          address, two counters; else the magazine's top object (its bit
 *          cleared, its slab's count); slow: next word, merge the remote
 *          bits, next owned slab, a slab from the depot (lock)
 *   free:  into the current slab: the slot index (a multiply), the bit;
 *          into another owned slab: the owner lookup (two loads), the bit,
 *          the slab's count, a push on the magazine; slow: list moves in
 *          the heap (magazine full), a remote free, the depot (lock)
 *
 * Measured with callgrind (python benchmarks/bench_engine.py --callgrind;
 * gcc 12 -O2, x86-64, 64-byte objects, loop included): 104 instructions per
 * alloc+free pair, 108 when a thousand objects are allocated then freed,
 * and 224 per free+alloc in a steady pool of 4,096 live objects, a random
 * one replaced each time (2,679 before the magazine, when nearly every
 * alloc switched slabs). Memory groups cost these nothing: a thread in a
 * group fails the alloc's first test (kmc__alloc_self) into charged_alloc,
 * and the heaps of a cache that ever had an object charged fail the free's
 * request test into tagged_free, both out of line, where the heap's stock
 * pays and takes back the charge; a pair inside a group costs 157 (the
 * same build without groups, -DKMC_NO_GROUPS, runs these counts but the
 * pool's, 5 fewer there). mimalloc, which keeps its free
 * list inside free objects, needs fewer; a bitmap outside object memory is
 * what lets every double free be found.
 *
 * Remote frees. A thread freeing into a slab another heap owns sets the
 * slot's bit in the slab's remote bitmap with one atomic OR, after checking
 * the owner's bitmap (the slab's, or the heap's copy for a current slab: a
 * set bit there is a double free). A second remote free of the slot finds
 * the bit set in the OR's result. The owner merges
 * the remote bits when the slab becomes current or the current one runs out;
 * a slot in both bitmaps (a free by the owner racing one by another thread)
 * is counted and told by validate. A HEAP_FULL slab is not visited by its
 * owner, so the remote free pushes it on the owner heap's stack; the owner
 * drains the stack when it needs memory. Against the owner retiring its
 * current slab as full while a remote free lands, both sides use sequential
 * consistency: the owner stores HEAP_FULL then swaps the remote words out,
 * the freer ORs its bit in then reads the state, so one of them sees the
 * other.
 *
 * Taking a heap back (shrink, validate, the purge of idle heaps): the owner
 * sets heap->busy with a plain store around each fast path, then reads
 * heap->request; the taker sets its bit there (KMC_HEAP_TAKE, beside the
 * owner's KMC_HEAP_TAGGED), runs kmc__os_barrier (membarrier),
 * then waits for busy to clear. Either the taker sees busy, or the owner
 * sees request and takes the slow path, which waits for the cache lock the
 * taker holds. The owner changes its heap only inside a fast path or with
 * the cache lock held; takers only with the lock held, after the handshake.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

__thread uint32_t kmc__self __attribute__((tls_model("initial-exec")));
__thread uint32_t kmc__alloc_self __attribute__((tls_model("initial-exec")));

void kmc__alloc_self_set(void)
{
    kmc__alloc_self = KMC_GROUPS_ON && kmc__group_cur ? KMC_NIL : kmc__self;
}

/* cur_remote without a current slab: every bit set, so that the free fast
 * path's test fails into free_other for any pointer. */
_Atomic uint64_t kmc__no_remote[KMC_HEAP_BITS] = {
    UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX,
    UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};

static inline void heap_enter(kmc_heap_t *h)
{
    KMC_STORE(&h->busy, 1);
    atomic_signal_fence(memory_order_seq_cst); /* the store stays before the load */
}

static inline bool heap_wanted(kmc_heap_t *h)
{
    return atomic_load_explicit(&h->request, memory_order_acquire) & KMC_HEAP_TAKE;
}

static inline void heap_leave(kmc_heap_t *h)
{
    atomic_store_explicit(&h->busy, 0, memory_order_release);
}

/* A taker's request on, or off: the owner's KMC_HEAP_TAGGED kept. */
static void heap_request(kmc_heap_t *h, bool on)
{
    if (on)
        atomic_fetch_or_explicit(&h->request, KMC_HEAP_TAKE, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&h->request, (uint8_t)~KMC_HEAP_TAKE, memory_order_release);
}

/* --- the fast paths ------------------------------------------------------------ */

static void *alloc_rescan(kmc_cache_t *c, kmc_heap_t *h, int zero);

/* zalloc's memset, out of line: a call inside kmc_cache_alloc would cost
 * every alloc a stack frame. */
static KMC_NOINLINE uint8_t *zeroed(const kmc_cache_t *c, uint8_t *p)
{
    memset(p, 0, c->size);
    return p;
}

/* The magazine's top object, handed out again: its bit cleared in its slab's
 * bitmap. Owner, busy, mag_n != 0. */
static inline uint8_t *mag_pop(kmc_heap_t *h, uint32_t n)
{
    kmc_mag_entry_t *e = &h->mag[n - 1];
    KMC_STORE(e->word, KMC_LOAD(e->word) & ~e->bit);
    KMC_STORE(&e->slab->inuse, KMC_LOAD(&e->slab->inuse) + 1);
    KMC_STORE(&h->mag_n, n - 1);
    KMC_COUNT(&h->allocs);
    return e->obj;
}

static KMC_NOINLINE void *charged_alloc(kmc_cache_t *c, int zero);

/* @charged: the charged path's copy (below), which reads kmc__self and
 * tags the object with @tag (0 for none) when it comes from the current
 * slab, as *@tagged tells (the others' callers tag by the owner lookup);
 * else kmc__alloc_self, which sends a thread in a memory group there. */
static inline __attribute__((always_inline)) void *
cache_alloc(kmc_cache_t *c, int zero, bool charged, uint32_t tag, bool *tagged)
{
    uint32_t self = charged || !KMC_GROUPS_ON ? kmc__self : kmc__alloc_self;
    uint32_t t = self - 1; /* 0 (unregistered) wraps to no heap */
    kmc_heap_t *h;
    if (unlikely(t >= KMC_MAX_HEAPS))
        return charged || !KMC_GROUPS_ON ? kmc__heap_alloc_slow(c, zero) : charged_alloc(c, zero);
    /* caches without heaps (debug flags) never make a chunk of them */
    if (likely(!zero || !c->ctor) && likely((h = kmc__heap_at(c, t)) != NULL)) {
        heap_enter(h);
        if (likely(!heap_wanted(h))) {
            uint32_t w = h->word, n;
            uint64_t x = KMC_LOAD(&h->bits[w]);
            uint8_t *p;
            if (likely(x)) { /* the current slab */
                KMC_STORE(&h->bits[w], x & (x - 1));
                KMC_COUNT(&h->allocs);
                size_t slot = (size_t)w * 64 + (unsigned)__builtin_ctzll(x);
                if (charged && tag && likely(h->cur_tags)) {
                    atomic_store_explicit(&h->cur_tags[slot], (uint16_t)tag, memory_order_relaxed);
                    *tagged = true;
                }
                p = h->cur_mem + slot * c->slot_size;
            } else if ((n = KMC_LOAD(&h->mag_n))) { /* else the last object freed elsewhere */
                p = mag_pop(h, n);
            } else {
                return alloc_rescan(c, h, zero); /* a tail call: no register saved here */
            }
            heap_leave(h);
            return unlikely(zero) ? zeroed(c, p) : p;
        }
        heap_leave(h);
    }
    return kmc__heap_alloc_slow(c, zero);
}

/* After an object was tagged by the owner lookup, which maps an arena's
 * tags at its first charge: the current slab's tags, if it had none, for
 * the fast paths. */
static KMC_NOINLINE void heap_tags_refresh(kmc_cache_t *c)
{
    uint32_t t = kmc__self - 1;
    kmc_heap_t *h;
    if (t >= KMC_MAX_HEAPS || !(h = kmc__heap_at(c, t)))
        return;
    heap_enter(h); /* a taker may unload the current slab: look inside the handshake */
    if (!heap_wanted(h) && KMC_LOAD(&h->cur) && !h->cur_tags)
        h->cur_tags = kmc__slab_tags(c, h->cur_id);
    heap_leave(h);
}

/* The heap's stock (group.c) pays for one object of group @id, or takes
 * one back: owner, busy. A taker clears the stock's id before its
 * handshake, so that these fail once it may be looking. */
static inline bool stock_take(kmc_heap_t *h, uint32_t id)
{
    if (KMC_LOAD(&h->stock_id) != id)
        return false;
    uint32_t n = KMC_LOAD(&h->stock_n);
    if (!n)
        return false;
    KMC_STORE(&h->stock_n, n - 1);
    return true;
}

static inline bool stock_put(kmc_heap_t *h, uint32_t id)
{
    if (KMC_LOAD(&h->stock_id) != id)
        return false;
    uint32_t n = KMC_LOAD(&h->stock_n);
    if (n >= h->stock_cap)
        return false;
    KMC_STORE(&h->stock_n, n + 1);
    return true;
}

/* An alloc that charged_alloc's fast path did not finish: charged first,
 * from the heap's stock or by a refill (group.c), so that a refusal
 * changes nothing, then tagged: by the fast path from the current slab,
 * else by the owner lookup. */
static KMC_NOINLINE void *charged_alloc_slow(kmc_cache_t *c, int zero)
{
    if (zero && c->ctor)
        return kmc__heap_alloc_slow(c, zero); /* which reports it */
    uint32_t t = kmc__self - 1, group = 0;
    kmc_heap_t *h = t < KMC_MAX_HEAPS ? kmc__heap_at(c, t) : NULL;
    if (h && kmc__group_id) {
        heap_enter(h);
        if (!heap_wanted(h) && stock_take(h, kmc__group_id)) /* (a fork holds the heaps) */
            group = kmc__group_id;
        heap_leave(h);
    }
    if (!group) {
        kmc_status st;
        group = kmc__group_charge(c, h ? h->stock : NULL, c->size, &st);
        if (st != KMC_OK)
            return NULL;
    }
    bool tagged = false;
    void *p = cache_alloc(c, zero, true, group, &tagged);
    if (!tagged && group) {
        kmc__group_settle(c, p, group);
        if (p)
            heap_tags_refresh(c);
    }
    return p;
}

/* An alloc by a thread in a memory group (or one not registered yet): the
 * fast path from the current slab, charged to the heap's stock (a compare
 * and a decrement) and tagged. */
static KMC_NOINLINE void *charged_alloc(kmc_cache_t *c, int zero)
{
    uint32_t id = kmc__group_id, t = kmc__self - 1;
    kmc_heap_t *h;
    if (likely(id && t < KMC_MAX_HEAPS) && likely(!zero || !c->ctor) &&
        likely((h = kmc__heap_at(c, t)) != NULL)) {
        /* one register for the heap: else gcc keeps its chunk and offset
         * apart and saves three registers (7 instructions a pair) */
        __asm__("" : "+r"(h));
        heap_enter(h);
        if (likely(!heap_wanted(h))) {
            uint32_t w = h->word;
            uint64_t x = KMC_LOAD(&h->bits[w]);
            _Atomic uint16_t *tags = h->cur_tags;
            if (likely(x && tags) && likely(stock_take(h, id))) {
                KMC_STORE(&h->bits[w], x & (x - 1));
                KMC_COUNT(&h->allocs);
                size_t slot = (size_t)w * 64 + (unsigned)__builtin_ctzll(x);
                atomic_store_explicit(&tags[slot], (uint16_t)id, memory_order_relaxed);
                uint8_t *p = h->cur_mem + slot * c->slot_size;
                heap_leave(h);
                return unlikely(zero) ? zeroed(c, p) : p;
            }
        }
        heap_leave(h);
    }
    return charged_alloc_slow(c, zero);
}

/* No test for memory groups here: a thread in one fails the first test. */
void *kmc_cache_alloc(kmc_cache_t *c, int zero) { return cache_alloc(c, zero, false, 0, NULL); }

static kmc_status free_other(kmc_cache_t *c, void *p, kmc_heap_t *h);

static KMC_NOINLINE kmc_status tagged_free(kmc_cache_t *c, void *p, kmc_heap_t *h);

/* @p's slot in the heap's current slab, when @p is a live object there (a
 * slot start, not free here, nor freed by another thread): its index, its
 * bitmap word's value (*@x) and its bit. Owner, busy, no taker waiting. */
static inline __attribute__((always_inline)) bool cur_live_slot(const kmc_cache_t *c, kmc_heap_t *h,
                                                                const void *p, uint32_t *idx,
                                                                uint64_t *x, uint64_t *bit)
{
    size_t in = (uintptr_t)p - (uintptr_t)h->cur_mem;
    if (unlikely(in >= c->slots_bytes))
        return false;
    *idx = (uint32_t)(((unsigned __int128)in * c->slot_recip) >> 48);
    *bit = UINT64_C(1) << (*idx & 63);
    *x = KMC_LOAD(&h->bits[*idx >> 6]);
    return likely((size_t)*idx * c->slot_size == in &&
                  !((*x | KMC_LOAD(&h->cur_remote[*idx >> 6])) & *bit));
}

/* A free into the calling thread's current slab needs no owner lookup: the
 * heap knows where that slab is. One load tests both the takers' request
 * and whether the cache ever had an object charged to a memory group, whose
 * frees take tags (tagged_free). */
kmc_status kmc_cache_free(kmc_cache_t *c, void *p)
{
    uint32_t t = kmc__self - 1;
    kmc_heap_t *h;
    if (unlikely(t >= KMC_MAX_HEAPS) || unlikely(!(h = kmc__heap_at(c, t)))) {
        if (KMC_GROUPS_ON && unlikely(__atomic_load_n(&c->charged, __ATOMIC_RELAXED)))
            kmc__group_free(c, p);
        return kmc__heap_free_slow(c, p);
    }
    heap_enter(h);
    /* the slot is looked up after the request: a taker may have changed cur_mem */
    uint8_t gate = atomic_load_explicit(&h->request, memory_order_acquire);
    uint32_t idx;
    uint64_t x, bit;
    if (likely(!gate) && cur_live_slot(c, h, p, &idx, &x, &bit)) {
        /* (h->word is not moved back to this word: keeping it costs this
         * path two registers saved, more than the rescan it spares) */
        KMC_STORE(&h->bits[idx >> 6], x | bit);
        KMC_COUNT(&h->frees);
        heap_leave(h);
        return KMC_OK;
    }
    if (KMC_GROUPS_ON && gate == KMC_HEAP_TAGGED)
        return tagged_free(c, p, h); /* still busy */
    return free_other(c, p, h);      /* still busy */
}

/* tagged_free without the current slab's tags: its arena may have had
 * them mapped since the slab became current (another thread tagged an
 * object it took from the depot before this heap took the slab). @freed:
 * the slot's bitmap word with its bit set. */
static KMC_NOINLINE kmc_status tagged_free_reload(kmc_cache_t *c, void *p, kmc_heap_t *h,
                                                  uint32_t idx, uint64_t freed)
{
    if ((h->cur_tags = kmc__slab_tags(c, h->cur_id)))
        return tagged_free(c, p, h);
    KMC_STORE(&h->bits[idx >> 6], freed); /* no tag to take */
    KMC_COUNT(&h->frees);
    heap_leave(h);
    return KMC_OK;
}

/* tagged_free's charge back when the heap's stock is full or another
 * group's: the object is free, and only this thread's. */
static KMC_NOINLINE kmc_status tagged_free_uncharge(const kmc_cache_t *c, kmc_heap_t *h,
                                                    uint32_t group)
{
    heap_leave(h); /* (never on groups_lock while busy: its takers wait for busy) */
    kmc__group_uncharge(group, c->size, 1);
    return KMC_OK;
}

/* The free fast path of a cache that had objects charged: the object's tag
 * taken by an exchange, as every free takes it (of two threads freeing the
 * object at once, one gives the charge back, even when the other's free is
 * then refused), and its charge given back to the heap's stock. Entered
 * busy, no taker waiting; anything but a live object of the current slab
 * goes to free_other. */
static KMC_NOINLINE kmc_status tagged_free(kmc_cache_t *c, void *p, kmc_heap_t *h)
{
    uint32_t idx;
    uint64_t x, bit;
    if (!cur_live_slot(c, h, p, &idx, &x, &bit))
        return free_other(c, p, h);
    _Atomic uint16_t *tags = h->cur_tags;
    if (unlikely(!tags))
        return tagged_free_reload(c, p, h, idx, x | bit);
    uint16_t group = 0;
    if (atomic_load_explicit(&tags[idx], memory_order_relaxed))
        group = atomic_exchange_explicit(&tags[idx], 0, memory_order_relaxed);
    KMC_STORE(&h->bits[idx >> 6], x | bit);
    KMC_COUNT(&h->frees);
    if (group && unlikely(!stock_put(h, group)))
        return tagged_free_uncharge(c, h, group);
    heap_leave(h);
    return KMC_OK;
}

static void owned_transition(kmc_cache_t *c, kmc_heap_t *h, uint32_t id);
static kmc_status remote_free(kmc_cache_t *c, kmc_heap_t *me, kmc_arena_t *a, uint32_t sidx,
                              uint32_t idx, const void *p);
static void heap_trim_locked(kmc_cache_t *c, kmc_heap_t *h);

/* A free into another slab the thread owns, entered busy: the owner lookup
 * (two loads), then the bit and the slab's count, and a move between the
 * heap's lists when the slab stops being full or becomes empty. Out of
 * line: the registers it needs would cost the fast path above their
 * saving. */
static KMC_NOINLINE kmc_status free_other(kmc_cache_t *c, void *p, kmc_heap_t *h)
{
    if (KMC_GROUPS_ON && unlikely(__atomic_load_n(&c->charged, __ATOMIC_RELAXED))) {
        /* the charge back first, before another thread can have the
         * object: the tag found by the owner lookup (the exchange takes
         * it once), looked up busy and with no taker waiting (shrink
         * unmaps released arenas' metadata only after every heap was seen
         * idle) */
        if (heap_wanted(h)) {
            heap_leave(h);
            kmc__group_free(c, p);
            return kmc__heap_free_slow(c, p);
        }
        uint32_t id = kmc__group_untag(c, p);
        if (id && !stock_put(h, id)) {
            heap_leave(h); /* (never on groups_lock while busy: its takers wait for busy) */
            kmc__group_uncharge(id, c->size, 1);
            heap_enter(h);
        }
    }
    uint32_t self = kmc__self;
    uintptr_t addr = (uintptr_t)p;
    kmc_arena_t *a = kmc__registry_lookup(addr);
    size_t off = addr - (a ? a->base : 0);
    size_t in = off & (c->slab_size - 1);
    uint32_t idx = (uint32_t)(((unsigned __int128)in * c->slot_recip) >> 48);
    uint32_t sidx = (uint32_t)(off >> c->slab_shift);
    kmc_slab_t *s;
    uint8_t state;
    uint32_t owner;
    if (unlikely(!a || a->cache != c || (size_t)idx * c->slot_size != in || idx >= c->objperslab ||
                 heap_wanted(h)) ||
        (owner = KMC_LOAD(&(s = &a->slabs[sidx])->owner)) == KMC_DEPOT) {
        heap_leave(h); /* a taker, the depot, or an error */
        return kmc__heap_free_slow(c, p);
    }
    if (owner != self) { /* another thread's slab */
        kmc__report_clear();
        kmc_status st = remote_free(c, h, a, sidx, idx, p);
        heap_leave(h);
        return st;
    }
    if ((state = kmc__slab_state(s)) == KMC_SLAB_CURRENT) {
        heap_leave(h); /* a double free into the current slab */
        return kmc__heap_free_slow(c, p);
    }
    size_t word = (size_t)sidx * c->bitmap_words + (idx >> 6);
    uint64_t bit = UINT64_C(1) << (idx & 63);
    uint64_t x = KMC_LOAD(&a->local[word]);
    if (unlikely((x | KMC_LOAD(&a->remote[word])) & bit)) {
        heap_leave(h);
        return kmc__heap_free_slow(c, p); /* reports the double free */
    }
    KMC_STORE(&a->local[word], x | bit);
    uint32_t n = KMC_LOAD(&s->inuse) - 1;
    KMC_STORE(&s->inuse, n);
    KMC_COUNT(&h->frees);
    uint32_t m = KMC_LOAD(&h->mag_n);
    /* the next alloc takes it back; a slab left empty goes the way below,
     * so that no magazine entry names an empty slab */
    if (likely(m < c->mag_size) && likely(n != 0)) {
        h->mag[m] = (kmc_mag_entry_t){(uint8_t *)p, &a->local[word], bit, s};
        KMC_STORE(&h->mag_n, m + 1);
        heap_leave(h);
        return KMC_OK;
    }
    KMC_COUNT(&h->cached_other);
    bool trim = false;
    if (unlikely(state != KMC_SLAB_HEAP_PARTIAL || n == 0)) {
        owned_transition(c, h, (a->index << KMC_SLAB_ID_SHIFT) | sidx);
        trim = h->empty.count > c->heap_keep;
    }
    heap_leave(h);
    if (unlikely(trim))
        heap_trim_locked(c, h);
    return KMC_OK;
}

/* --- heap bookkeeping ---------------------------------------------------------- */

static uint32_t stack_low(uint64_t head) { return (uint32_t)head; }
static uint64_t stack_gen(uint64_t head) { return head >> 32; }

/* Every heap of @ch: its frees take tags from now on. */
static void chunk_mark_tagged(kmc_heap_chunk_t *ch)
{
    for (unsigned i = 0; i < (1u << KMC_HEAP_CHUNK_SHIFT); i++)
        atomic_fetch_or(&ch->heaps[i].request, KMC_HEAP_TAGGED);
}

/* The heap of thread index @t in @c, making its chunk if need be; NULL
 * without memory. */
static kmc_heap_t *heap_get(kmc_cache_t *c, uint32_t t)
{
    kmc_heap_t *h = kmc__heap_at(c, t);
    if (h)
        return h;
    kmc__lock(&c->lock);
    _Atomic(kmc_heap_chunk_t *) *slot = &c->chunks[t >> KMC_HEAP_CHUNK_SHIFT];
    kmc_heap_chunk_t *ch = atomic_load_explicit(slot, memory_order_acquire);
    if (!ch) {
        ch = aligned_alloc(64, sizeof(*ch));
        if (ch) {
            memset(ch, 0, sizeof(*ch));
            for (unsigned i = 0; i < (1u << KMC_HEAP_CHUNK_SHIFT); i++) {
                kmc_heap_t *fresh = &ch->heaps[i];
                fresh->partial = fresh->full = fresh->empty = (kmc_list_t){KMC_NIL, KMC_NIL, 0};
                fresh->cur_mem = KMC_NO_SLAB;
                fresh->cur_remote = kmc__no_remote;
                fresh->stock = &ch->stocks[i];
                ch->stocks[i].heap = fresh;
            }
            /* then the cache's mark, which kmc__heaps_mark_tagged may
             * have set before it saw this chunk (both sequentially
             * consistent: one sees the other) */
            atomic_store_explicit(slot, ch, memory_order_seq_cst);
            if (KMC_GROUPS_ON && __atomic_load_n(&c->charged, __ATOMIC_SEQ_CST))
                chunk_mark_tagged(ch);
        }
    }
    kmc__unlock(&c->lock);
    return kmc__heap_at(c, t);
}

void kmc__heaps_mark_tagged(kmc_cache_t *c)
{
    for (unsigned i = 0; i < KMC_HEAP_CHUNKS; i++) {
        kmc_heap_chunk_t *ch = atomic_load_explicit(&c->chunks[i], memory_order_seq_cst);
        if (ch)
            chunk_mark_tagged(ch);
    }
}

void kmc__heaps_free(kmc_cache_t *c)
{
    for (unsigned i = 0; i < KMC_HEAP_CHUNKS; i++) {
        kmc_heap_chunk_t *ch = atomic_load(&c->chunks[i]);
        for (unsigned j = 0; ch && j < (1u << KMC_HEAP_CHUNK_SHIFT); j++)
            kmc__stock_retire(&ch->stocks[j]); /* off the stocks' list */
        free(ch);
    }
}

/* Move the remote bits of the current slab into the heap's copy of its
 * bitmap; true when some slot became free. Owner, busy or locked. */
KMC_BITCOUNT static bool cur_merge(kmc_cache_t *c, kmc_heap_t *h, memory_order order)
{
    _Atomic uint64_t *remote = kmc__slab_remote(c, h->cur_id);
    uint64_t merged = 0, late = 0, fresh = 0;
    for (uint32_t w = 0; w < c->bitmap_words; w++) {
        if (order != memory_order_seq_cst && !KMC_LOAD(&remote[w]))
            continue;
        uint64_t x = atomic_exchange_explicit(&remote[w], 0, order);
        if (!x)
            continue;
        uint64_t old = KMC_LOAD(&h->bits[w]);
        merged += (uint64_t)__builtin_popcountll(x);
        late += (uint64_t)__builtin_popcountll(x & old);
        fresh += (uint64_t)__builtin_popcountll(x & ~old);
        KMC_STORE(&h->bits[w], old | x);
        if (w < h->word)
            h->word = w;
    }
    if (merged) {
        KMC_BUMP(&h->merged, merged);
        KMC_BUMP(&h->late_double, late);
    }
    return fresh != 0;
}

/* Merge a non-current owned slab's remote bits into its own bitmap. */
static uint32_t owned_merge(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    uint64_t late = 0;
    uint32_t before = kmc__bits_count(kmc__slab_remote(c, id), c->bitmap_words);
    uint32_t fresh = kmc__slab_merge_remote(c, id, &late);
    if (before || late) {
        KMC_BUMP(&h->merged, fresh + late);
        KMC_BUMP(&h->late_double, late);
        KMC_BUMP(&h->cached_other, fresh);
    }
    return fresh;
}

/* Take slab @s's objects out of the magazine (they stay free in its
 * bitmap): it is about to be empty, and may then leave the heap. */
static KMC_NOINLINE void mag_forget(kmc_heap_t *h, const kmc_slab_t *s)
{
    uint32_t n = KMC_LOAD(&h->mag_n), kept = 0;
    for (uint32_t i = 0; i < n; i++)
        if (h->mag[i].slab != s)
            h->mag[kept++] = h->mag[i];
    KMC_BUMP(&h->cached_other, n - kept);
    KMC_STORE(&h->mag_n, kept);
}

static kmc_list_t *list_of(kmc_heap_t *h, uint8_t state)
{
    return state == KMC_SLAB_HEAP_PARTIAL ? &h->partial
           : state == KMC_SLAB_HEAP_FULL  ? &h->full
                                          : &h->empty;
}

/* Put owned slab @id (on no list) on the heap list its count says. */
static void owned_place(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    uint32_t inuse = KMC_LOAD(&s->inuse);
    uint8_t state = inuse == 0               ? KMC_SLAB_HEAP_EMPTY
                    : inuse == c->objperslab ? KMC_SLAB_HEAP_FULL
                                             : KMC_SLAB_HEAP_PARTIAL;
    if (state == KMC_SLAB_HEAP_EMPTY && KMC_LOAD(&h->mag_n))
        mag_forget(h, s); /* an empty slab may leave the heap */
    kmc__slab_set_state(s, state);
    kmc__list_push(c, list_of(h, state), id);
    if (state == KMC_SLAB_HEAP_EMPTY)
        KMC_BUMP(&h->empties, 1);
    else if (state == KMC_SLAB_HEAP_FULL)
        KMC_BUMP(&h->fulls, 1);
}

static void owned_unlist(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    uint8_t state = kmc__slab_state(kmc__slab(c, id));
    kmc__list_remove(c, list_of(h, state), id);
    if (state == KMC_SLAB_HEAP_EMPTY)
        KMC_BUMP(&h->empties, (uint32_t)-1);
    else if (state == KMC_SLAB_HEAP_FULL)
        KMC_BUMP(&h->fulls, (uint32_t)-1);
}

/* cur and bits change between these two (cur_gen odd); other threads
 * read them with cur_read, which retries over a change. */
static void cur_change(kmc_heap_t *h)
{
    atomic_store_explicit(&h->cur_gen, KMC_LOAD(&h->cur_gen) + 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_release); /* the odd count before the changes */
}

static void cur_changed(kmc_heap_t *h)
{
    atomic_store_explicit(&h->cur_gen, KMC_LOAD(&h->cur_gen) + 1, memory_order_seq_cst);
}

/* Another thread's consistent read of heap @o: true when @s is its current
 * slab, with the heap's copy of the bitmap in @bits (words @from to @to).
 * Without the retry a slab switch between the reads of cur and bits would
 * show another slab's free bits as @s's. */
static bool cur_read(kmc_heap_t *o, const kmc_slab_t *s, uint64_t *bits, uint32_t from, uint32_t to)
{
    for (unsigned spins = 0;; spins++) {
        uint32_t gen = atomic_load_explicit(&o->cur_gen, memory_order_seq_cst);
        if (!(gen & 1)) {
            bool current = atomic_load_explicit(&o->cur, memory_order_acquire) == s;
            for (uint32_t w = from; current && w < to; w++)
                bits[w] = atomic_load_explicit(&o->bits[w], memory_order_seq_cst);
            atomic_thread_fence(memory_order_acquire); /* the reads before the recheck */
            if (atomic_load_explicit(&o->cur_gen, memory_order_seq_cst) == gen)
                return current;
        }
        if (spins > 64)
            sched_yield();
    }
}

/* Make owned slab @id (on a heap list) the current one: its bitmap (with the
 * remote bits) moves into the heap, and its own reads all used. The copy
 * is published (heap bits, cur, then the state, sequentially consistent)
 * before the slab's own bitmap is cleared, so that a remote freer, which
 * reads the state, the slab's bitmap and the state again, finds a free
 * slot in one copy or the other (see remote_free). */
static void make_current(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    owned_unlist(c, h, id);
    owned_merge(c, h, id);
    _Atomic uint64_t *local = kmc__slab_local(c, id);
    KMC_BUMP(&h->cached_other, -(uint64_t)kmc__bits_count(local, c->bitmap_words));
    uint32_t first = KMC_HEAP_BITS;
    cur_change(h);
    for (uint32_t w = 0; w < KMC_HEAP_BITS; w++) {
        uint64_t x = w < c->bitmap_words ? KMC_LOAD(&local[w]) : 0;
        KMC_STORE(&h->bits[w], x);
        if (x && first == KMC_HEAP_BITS)
            first = w;
    }
    h->cur_id = id;
    h->cur_mem = kmc__slab_mem(c, id);
    h->cur_remote = kmc__slab_remote(c, id);
    h->cur_tags = kmc__slab_tags(c, id);
    h->word = first == KMC_HEAP_BITS ? 0 : first;
    KMC_STORE(&h->cur, s);
    atomic_store_explicit(&s->state, KMC_SLAB_CURRENT, memory_order_seq_cst);
    cur_changed(h);
    for (uint32_t w = 0; w < c->bitmap_words; w++)
        atomic_store_explicit(&local[w], 0, memory_order_seq_cst);
}

/* The current slab leaves the heap's bitmap: back into its own, with its
 * count, then the state (@state), then the heap's copy is cleared: the
 * reverse order of make_current. Owner (busy or locked) or taker. */
KMC_BITCOUNT static void cur_unload(kmc_cache_t *c, kmc_heap_t *h, uint8_t state)
{
    kmc_slab_t *s = KMC_LOAD(&h->cur);
    _Atomic uint64_t *local = kmc__slab_local(c, h->cur_id);
    uint32_t nfree = 0;
    for (uint32_t w = 0; w < c->bitmap_words; w++) {
        uint64_t x = KMC_LOAD(&h->bits[w]);
        atomic_store_explicit(&local[w], x, memory_order_seq_cst);
        nfree += (uint32_t)__builtin_popcountll(x);
    }
    KMC_STORE(&s->inuse, c->objperslab - nfree);
    atomic_store_explicit(&s->state, state, memory_order_seq_cst);
    cur_change(h);
    for (uint32_t w = 0; w < KMC_HEAP_BITS; w++)
        atomic_store_explicit(&h->bits[w], 0, memory_order_seq_cst);
    KMC_BUMP(&h->cached_other, nfree);
    KMC_STORE(&h->cur, NULL);
    h->cur_mem = KMC_NO_SLAB;
    h->cur_remote = kmc__no_remote;
    h->cur_tags = NULL;
    h->word = 0;
    cur_changed(h);
}

/* The current slab has no free slot left: unless a last merge finds some,
 * it goes on the full list, where remote frees will push it on the stack. */
static bool cur_retire_full(kmc_cache_t *c, kmc_heap_t *h)
{
    kmc_slab_t *s = KMC_LOAD(&h->cur);
    atomic_store_explicit(&s->state, KMC_SLAB_HEAP_FULL, memory_order_seq_cst);
    if (cur_merge(c, h, memory_order_seq_cst)) {
        kmc__slab_set_state(s, KMC_SLAB_CURRENT);
        return false;
    }
    uint32_t id = h->cur_id;
    cur_unload(c, h, KMC_SLAB_HEAP_FULL);
    kmc__list_push(c, &h->full, id);
    KMC_BUMP(&h->fulls, 1);
    return true;
}

/* Take the stack of slabs that remote frees pushed, and merge each still
 * ours; @close leaves the stack closed (the heap is being emptied). */
static void drain_remote(kmc_cache_t *c, kmc_heap_t *h, uint32_t self, bool close)
{
    uint64_t head = atomic_load_explicit(&h->remote_head, memory_order_acquire);
    if (!close && stack_low(head) == 0)
        return;
    uint64_t next_head = close ? (stack_gen(head) + 1) << 32 | KMC_STACK_CLOSED
                               : stack_gen(head) << 32;
    head = atomic_exchange_explicit(&h->remote_head, next_head, memory_order_acq_rel);
    uint32_t top = stack_low(head) == KMC_STACK_CLOSED ? 0 : stack_low(head);
    while (top) {
        uint32_t id = top - 1;
        kmc_slab_t *s = kmc__slab(c, id);
        top = KMC_LOAD(&s->remote_next);
        atomic_store_explicit(&s->pushed, 0, memory_order_seq_cst);
        /* the merge's first look at the remote words must not pass the
         * store (weakly ordered CPUs): a free after it pushes again */
        atomic_thread_fence(memory_order_seq_cst);
        if (close || KMC_LOAD(&s->owner) != self)
            continue; /* the flush, or its new owner, merges it */
        if (s == KMC_LOAD(&h->cur)) {
            cur_merge(c, h, memory_order_acq_rel);
        } else if (owned_merge(c, h, id)) {
            owned_unlist(c, h, id);
            owned_place(c, h, id);
        }
    }
}

/* Open a heap's stack for pushes again (after a flush). Cache locked. */
static void heap_open(kmc_heap_t *h)
{
    uint64_t head = atomic_load(&h->remote_head);
    if (stack_low(head) == KMC_STACK_CLOSED)
        atomic_store(&h->remote_head, (stack_gen(head) + 1) << 32);
}

/* One object from the current slab, if there is one, from the word the last
 * alloc used, then from the start (a free does not move the word back), or
 * NULL. Owner, busy. A free into the current slab leaves its bit in a word
 * the fast path does not look at: the fast path comes here before the slow
 * one (a steady pool of a few slabs frees into the current one often). */
static KMC_NOINLINE uint8_t *cur_take(const kmc_cache_t *c, kmc_heap_t *h)
{
    if (!KMC_LOAD(&h->cur))
        return NULL;
    uint32_t words = c->bitmap_words;
    for (uint32_t k = 0, w = h->word; k < words; k++, w = w + 1 < words ? w + 1 : 0) {
        uint64_t x = KMC_LOAD(&h->bits[w]);
        if (!x)
            continue;
        if (k > KMC_LOAD(&h->max_scan))
            KMC_STORE(&h->max_scan, k);
        h->word = w;
        KMC_STORE(&h->bits[w], x & (x - 1));
        KMC_BUMP(&h->allocs, 1);
        return h->cur_mem + ((size_t)w * 64 + (unsigned)__builtin_ctzll(x)) * c->slot_size;
    }
    return NULL;
}

/* kmc_cache_alloc's fast path when the current word and the magazine are
 * empty: the rest of the current slab, else the slow path. Entered busy. */
static KMC_NOINLINE void *alloc_rescan(kmc_cache_t *c, kmc_heap_t *h, int zero)
{
    uint8_t *p = cur_take(c, h);
    heap_leave(h);
    if (!p)
        return kmc__heap_alloc_slow(c, zero);
    return unlikely(zero) ? zeroed(c, p) : p;
}

/* One object from the heap's own slabs, or NULL when it needs the depot.
 * Owner, busy. */
static uint8_t *heap_take(kmc_cache_t *c, kmc_heap_t *h, uint32_t self)
{
    /* The fast path pops the magazine; it comes here with objects in it
     * only when a taker's request sent it (then the take-back emptied the
     * magazine, unless the OS has no membarrier). make_current below must
     * not run while the magazine holds objects of the slab it loads. */
    uint32_t n = KMC_LOAD(&h->mag_n);
    if (n)
        return mag_pop(h, n);
    for (;;) {
        if (KMC_LOAD(&h->cur)) {
            uint8_t *p = cur_take(c, h);
            if (p)
                return p;
            h->word = 0;
            if (cur_merge(c, h, memory_order_acq_rel) || !cur_retire_full(c, h))
                continue;
        }
        drain_remote(c, h, self, false);
        uint32_t id = h->partial.head != KMC_NIL ? h->partial.head : h->empty.head;
        if (id == KMC_NIL)
            return NULL;
        make_current(c, h, id);
    }
}

/* Give owned slab @id (on no list, not current) to the depot. Cache locked. */
static void give_back(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    kmc_slab_t *s = kmc__slab(c, id);
    KMC_BUMP(&h->cached_other, -(uint64_t)kmc__bits_count(kmc__slab_local(c, id), c->bitmap_words));
    KMC_BUMP(&h->slabs, (uint32_t)-1);
    atomic_store_explicit(&s->owner, KMC_DEPOT, memory_order_seq_cst);
    /* a push prepared against this heap's stack for this slab now fails */
    atomic_fetch_add_explicit(&h->remote_head, UINT64_C(1) << 32, memory_order_seq_cst);
    kmc__depot_merge(c, id);
    kmc__depot_place(c, id);
}

/* Keep at most heap_keep empty slabs in the heap. Cache locked. */
static void heap_trim(kmc_cache_t *c, kmc_heap_t *h)
{
    /* a slab still on the heap's stack (pushed while it was full, since
     * freed empty) must not go to the depot: another heap's remote frees
     * would find it pushed, and a shrink could release it under the stack */
    drain_remote(c, h, kmc__self, false);
    while (h->empty.count > c->heap_keep) {
        uint32_t id = h->empty.tail;
        owned_unlist(c, h, id);
        give_back(c, h, id);
    }
}

/* An owned slab's count changed: put it on the heap list that says so. */
static KMC_NOINLINE void owned_transition(kmc_cache_t *c, kmc_heap_t *h, uint32_t id)
{
    owned_unlist(c, h, id);
    owned_place(c, h, id);
}

static KMC_NOINLINE void heap_trim_locked(kmc_cache_t *c, kmc_heap_t *h)
{
    kmc__lock(&c->lock);
    heap_trim(c, h);
    kmc__unlock(&c->lock);
}

/* A slab from the depot for heap @h of thread @self, on its partial list.
 * False when the depot has none (the cache must grow). Cache locked. */
static bool heap_refill(kmc_cache_t *c, kmc_heap_t *h, uint32_t self)
{
    heap_open(h);
    if (KMC_LOAD(&h->cur) || h->partial.head != KMC_NIL || h->empty.head != KMC_NIL)
        return true; /* something to try again with */
    uint32_t id = kmc__depot_pop(c);
    if (id == KMC_NIL)
        return false;
    kmc_slab_t *s = kmc__slab(c, id);
    kmc__depot_merge(c, id);
    if (KMC_LOAD(&s->inuse) == c->objperslab) { /* remote frees did not make it partial */
        kmc__slab_set_state(s, KMC_SLAB_FULL);
        return true;
    }
    atomic_store_explicit(&s->owner, self, memory_order_release);
    KMC_BUMP(&h->slabs, 1);
    KMC_BUMP(&h->cached_other, kmc__bits_count(kmc__slab_local(c, id), c->bitmap_words));
    owned_place(c, h, id);
    kmc__purge_arm(); /* the purge thread watches heaps that go idle */
    return true;
}

/* --- the slow paths -------------------------------------------------------------- */

/* The calling thread's heap of @c and its index + 1, or NULL (no heaps for
 * this cache or this thread, or no memory). */
static kmc_heap_t *my_heap(kmc_cache_t *c, uint32_t *self)
{
    if (!c->heaps_on)
        return NULL;
    uint32_t me = kmc__self;
    if (me == 0)
        me = kmc__thread_register();
    *self = me;
    if (me - 1 >= KMC_MAX_HEAPS)
        return NULL;
    return heap_get(c, me - 1);
}

void *kmc__heap_alloc_slow(kmc_cache_t *c, int zero)
{
    if (zero && c->ctor) {
        kmc__report(KMC_EINVAL, c, NULL, "zalloc on %s, a cache with a constructor", c->name);
        return NULL;
    }
    uint32_t self;
    kmc_heap_t *h = my_heap(c, &self);
    if (!h)
        return c->backing->alloc(c, zero);
    for (;;) {
        heap_enter(h);
        if (!heap_wanted(h)) {
            uint8_t *p = heap_take(c, h, self);
            if (p) {
                heap_leave(h);
                if (zero)
                    memset(p, 0, c->size);
                return p;
            }
        }
        heap_leave(h);
        kmc__lock(&c->lock);
        bool got = heap_refill(c, h, self);
        kmc__unlock(&c->lock);
        if (!got && kmc__depot_grow(c) != KMC_OK)
            return NULL;
    }
}

/* Report a double free found without the lock. */
static kmc_status double_free(kmc_cache_t *c, const void *p)
{
    return kmc__report(KMC_EDOUBLE_FREE, c, p, "Object already free: 0x%llx in %s",
                       (unsigned long long)(uintptr_t)p, c->name);
}

/* A free into a slab heap @h owns, that the fast path did not finish.
 * Owner, busy. *@trim: the heap holds more empty slabs than it keeps. */
static kmc_status owned_free(kmc_cache_t *c, kmc_heap_t *h, kmc_slab_t *s, uint32_t id,
                             uint32_t idx, const void *p, bool *trim)
{
    uint32_t w = idx / 64;
    uint64_t bit = UINT64_C(1) << (idx % 64);
    if (KMC_LOAD(&kmc__slab_remote(c, id)[w]) & bit)
        return double_free(c, p); /* freed by another thread, not merged yet */
    if (s == KMC_LOAD(&h->cur)) {
        uint64_t x = KMC_LOAD(&h->bits[w]);
        if (x & bit)
            return double_free(c, p);
        KMC_STORE(&h->bits[w], x | bit);
        if (w < h->word)
            h->word = w;
    } else {
        _Atomic uint64_t *lw = &kmc__slab_local(c, id)[w];
        uint64_t x = KMC_LOAD(lw);
        if (x & bit)
            return double_free(c, p);
        KMC_STORE(lw, x | bit);
        KMC_STORE(&s->inuse, KMC_LOAD(&s->inuse) - 1);
        KMC_BUMP(&h->cached_other, 1);
        owned_unlist(c, h, id);
        owned_place(c, h, id);
        *trim = h->empty.count > c->heap_keep;
    }
    KMC_BUMP(&h->frees, 1);
    return KMC_OK;
}

/* Push slab @id, which a remote free reached while HEAP_FULL, on its owner's
 * stack; retried while the owner's stack is closed (it is being emptied and
 * the slab will change owner). */
static void push_remote(kmc_cache_t *c, kmc_slab_t *s, uint32_t id)
{
    for (;;) {
        uint32_t owner = atomic_load_explicit(&s->owner, memory_order_acquire);
        kmc_heap_t *o = owner == KMC_DEPOT ? NULL : kmc__heap_at(c, owner - 1);
        if (!o) {
            atomic_store_explicit(&s->pushed, 0, memory_order_seq_cst);
            return; /* the depot merges on its next touch */
        }
        uint64_t head = atomic_load_explicit(&o->remote_head, memory_order_seq_cst);
        if (stack_low(head) == KMC_STACK_CLOSED) {
            sched_yield();
            continue;
        }
        /* still the owner after the head was read? A slab that leaves a
         * heap bumps its stack's generation, so the CAS below then fails */
        if (atomic_load_explicit(&s->owner, memory_order_seq_cst) != owner)
            continue;
        KMC_STORE(&s->remote_next, stack_low(head));
        if (atomic_compare_exchange_weak_explicit(&o->remote_head, &head,
                                                  stack_gen(head) << 32 | (id + 1),
                                                  memory_order_release, memory_order_relaxed))
            return;
    }
}

/* Is slot @idx free in the heap copy of current slab @s's bitmap? */
static bool heap_has_free(const kmc_cache_t *c, kmc_slab_t *s, uint32_t idx)
{
    uint32_t owner = KMC_LOAD(&s->owner);
    kmc_heap_t *o = owner == KMC_DEPOT ? NULL : kmc__heap_at(c, owner - 1);
    uint64_t bits[KMC_HEAP_BITS];
    return o && cur_read(o, s, bits, idx / 64, idx / 64 + 1) &&
           (bits[idx / 64] & (UINT64_C(1) << (idx % 64)));
}

/* A free into a slab another heap owns. Busy on the freeing thread's own
 * heap @me (so that shrink's handshake waits for it). */
static kmc_status remote_free(kmc_cache_t *c, kmc_heap_t *me, kmc_arena_t *a, uint32_t sidx,
                              uint32_t idx, const void *p)
{
    kmc_slab_t *s = &a->slabs[sidx];
    size_t word = (size_t)sidx * c->bitmap_words + idx / 64;
    uint64_t bit = UINT64_C(1) << (idx % 64);
    /* The slot's free bit is in the slab's bitmap, or in its owner's heap
     * while the slab is current. Read the state, the slab's bitmap, and the
     * state again (all sequentially consistent): make_current and
     * cur_unload publish the new copy before clearing the old, so a free
     * slot shows in one of the reads. */
    uint8_t state = atomic_load_explicit(&s->state, memory_order_seq_cst);
    if (state == KMC_SLAB_CURRENT && heap_has_free(c, s, idx))
        return double_free(c, p);
    if (atomic_load_explicit(&a->local[word], memory_order_seq_cst) & bit)
        return double_free(c, p);
    /* again whatever the first read said: the slab may have left the heap
     * and come back as current between the reads */
    if (atomic_load_explicit(&s->state, memory_order_seq_cst) == KMC_SLAB_CURRENT &&
        heap_has_free(c, s, idx))
        return double_free(c, p);
    if (atomic_fetch_or_explicit(&a->remote[word], bit, memory_order_seq_cst) & bit)
        return double_free(c, p);
    KMC_COUNT(&me->remote_frees);
    if (atomic_load_explicit(&s->state, memory_order_seq_cst) == KMC_SLAB_HEAP_FULL &&
        !atomic_exchange_explicit(&s->pushed, 1, memory_order_seq_cst))
        push_remote(c, s, (a->index << KMC_SLAB_ID_SHIFT) | sidx);
    return KMC_OK;
}

kmc_status kmc__heap_free_slow(kmc_cache_t *c, void *p)
{
    kmc__report_clear();
    uint32_t self = 0;
    kmc_heap_t *h = my_heap(c, &self);
    uintptr_t addr = (uintptr_t)p;
    for (;;) {
        bool owned = false;
        if (h) {
            /* busy before the owner lookup: shrink unmaps released arenas'
             * metadata only after every heap was seen idle */
            heap_enter(h);
            if (heap_wanted(h)) {
                heap_leave(h);
                kmc__lock(&c->lock); /* the taker holds it: wait */
                kmc__unlock(&c->lock);
                continue;
            }
            kmc_arena_t *a = kmc__registry_lookup(addr);
            if (a && a->cache == c) {
                size_t off = addr - a->base;
                size_t in = off & (c->slab_size - 1);
                uint32_t idx = (uint32_t)(((unsigned __int128)in * c->slot_recip) >> 48);
                uint32_t sidx = (uint32_t)(off >> c->slab_shift);
                kmc_slab_t *s = &a->slabs[sidx];
                uint32_t id = (a->index << KMC_SLAB_ID_SHIFT) | sidx;
                uint32_t owner;
                if ((size_t)idx * c->slot_size == in && idx < c->objperslab && sidx < a->nslabs &&
                    (owner = KMC_LOAD(&s->owner)) != KMC_DEPOT) {
                    kmc_status st = KMC_OK;
                    bool trim = false;
                    if (owner == self)
                        st = owned_free(c, h, s, id, idx, p, &trim);
                    else
                        st = remote_free(c, h, a, sidx, idx, p);
                    heap_leave(h);
                    if (trim) {
                        kmc__lock(&c->lock);
                        heap_trim(c, h);
                        kmc__unlock(&c->lock);
                    }
                    return st;
                }
            }
            heap_leave(h);
        }
        kmc_status st = c->backing->free(c, p, &owned);
        if (!owned)
            return st;
        if (h)
            continue; /* a heap's slab after all: the path above */
        /* a thread without a heap frees into a heap's slab: under the lock,
         * so that shrink cannot unmap the slab meanwhile (the arena is
         * looked up again: it may have been released since) */
        kmc__lock(&c->lock);
        kmc_arena_t *a = kmc__registry_lookup(addr);
        if (!a || a->cache != c) {
            kmc__unlock(&c->lock);
            continue; /* the depot path reports it */
        }
        size_t off = addr - a->base;
        uint32_t sidx = (uint32_t)(off >> c->slab_shift);
        uint32_t idx =
            (uint32_t)((((unsigned __int128)(off & (c->slab_size - 1))) * c->slot_recip) >> 48);
        kmc_slab_t *s = &a->slabs[sidx];
        uint32_t id = (a->index << KMC_SLAB_ID_SHIFT) | sidx;
        kmc_status rst = KMC_OK;
        if (KMC_LOAD(&s->owner) == KMC_DEPOT) {
            kmc__unlock(&c->lock);
            continue;
        }
        uint32_t w = idx / 64;
        uint64_t bit = UINT64_C(1) << (idx % 64);
        if ((KMC_LOAD(&kmc__slab_local(c, id)[w]) & bit) ||
            (atomic_fetch_or(&kmc__slab_remote(c, id)[w], bit) & bit))
            rst = double_free(c, p);
        else
            atomic_fetch_add(&c->d->orphan_remote_frees, 1);
        if (rst == KMC_OK && atomic_load(&s->state) == KMC_SLAB_HEAP_FULL &&
            !atomic_exchange(&s->pushed, 1))
            push_remote(c, s, id);
        kmc__unlock(&c->lock);
        return rst;
    }
}

/* --- taking heaps back ----------------------------------------------------------- */

/* Forget the magazine: its objects stay free in their slabs' bitmaps, where
 * the flush below finds them. */
static void mag_drop(kmc_heap_t *h)
{
    KMC_BUMP(&h->cached_other, KMC_LOAD(&h->mag_n));
    KMC_STORE(&h->mag_n, 0);
}

/* Give everything heap @h holds to the depot and close its stack. Cache
 * locked; @h's thread is the caller, gone, or held off by the handshake. */
void kmc__heap_flush(kmc_cache_t *c, kmc_heap_t *h, bool close)
{
    mag_drop(h);
    drain_remote(c, h, 0, true);
    if (KMC_LOAD(&h->cur)) {
        uint32_t id = h->cur_id;
        cur_unload(c, h, KMC_SLAB_HEAP_PARTIAL); /* on no list: give_back places it */
        give_back(c, h, id);
    }
    kmc_list_t *lists[] = {&h->partial, &h->full, &h->empty};
    for (unsigned l = 0; l < 3; l++)
        while (lists[l]->head != KMC_NIL) {
            uint32_t id = lists[l]->head;
            owned_unlist(c, h, id);
            give_back(c, h, id);
        }
    if (!close)
        heap_open(h);
}

static bool holds_slabs(kmc_heap_t *h) { return KMC_LOAD(&h->slabs) != 0; }

static bool cur_empty(const kmc_cache_t *c, kmc_heap_t *h)
{
    return KMC_LOAD(&h->cur) && kmc__bits_count(h->bits, KMC_HEAP_BITS) == c->objperslab;
}

/* (The magazine never names an empty slab: it holds no empty memory.) */
static bool holds_empty(const kmc_cache_t *c, kmc_heap_t *h)
{
    return KMC_LOAD(&h->empties) || cur_empty(c, h);
}

static uint64_t ops_of(kmc_heap_t *h)
{
    return KMC_LOAD(&h->allocs) + KMC_LOAD(&h->frees) + KMC_LOAD(&h->remote_frees);
}

/* Set or clear the request of every heap of @c but the caller's. */
static void request_all(kmc_cache_t *c, bool on)
{
    uint32_t me = kmc__self - 1;
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load_explicit(&c->chunks[i >> KMC_HEAP_CHUNK_SHIFT], memory_order_acquire))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++)
            if (j != me)
                heap_request(kmc__heap_at(c, j), on);
    }
}

/* Wait until no heap of @c but the caller's is inside a fast path. */
static void wait_idle(kmc_cache_t *c)
{
    uint32_t me = kmc__self - 1;
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load_explicit(&c->chunks[i >> KMC_HEAP_CHUNK_SHIFT], memory_order_acquire))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++) {
            kmc_heap_t *h = kmc__heap_at(c, j);
            for (unsigned spins = 0;
                 j != me && atomic_load_explicit(&h->busy, memory_order_acquire); spins++)
                if (spins > 64)
                    sched_yield();
        }
    }
}

void kmc__heaps_hold(kmc_cache_t *c, bool on) { request_all(c, on); }

void kmc__heaps_wait_idle(kmc_cache_t *c) { wait_idle(c); }

/* In a forked child, where only thread @me survives: every other heap goes
 * back to the depot. Without the barrier a thread may have been caught in
 * the middle of an operation; then the counters are made to agree with the
 * bitmaps again. */
void kmc__heaps_after_fork(kmc_cache_t *c, uint32_t me)
{
    bool torn = false;
    kmc__cache_lock(c);
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i++) {
        kmc_heap_t *h = i == me ? NULL : kmc__heap_at(c, i);
        if (!h) {
            if (!atomic_load(&c->chunks[i >> KMC_HEAP_CHUNK_SHIFT]))
                i |= (1u << KMC_HEAP_CHUNK_SHIFT) - 1;
            continue;
        }
        torn |= KMC_LOAD(&h->busy) != 0;
        /* a thread caught between cur_change and cur_changed (possible
         * only without the barrier) would leave other threads' reads of
         * this heap spinning forever */
        uint32_t gen = KMC_LOAD(&h->cur_gen);
        torn |= (gen & 1) != 0;
        KMC_STORE(&h->cur_gen, gen & ~1u);
        KMC_STORE(&h->busy, 0);
        heap_request(h, false);
        kmc__heap_flush(c, h, true);
    }
    if (torn)
        kmc__depot_recount(c);
    kmc__cache_unlock(c);
}

/* Take heaps back to the depot. KMC_TAKE_ALL: every heap, after the
 * handshake, which also waits for every remote free in flight (busy on its
 * own heap), so that the caller may then unmap slabs; without a process-wide
 * barrier only the caller's heap, and false is returned (other heaps' slabs
 * stay theirs: walkers skip them). KMC_TAKE_FORCE: every heap, with no
 * handshake: no other thread may be using the cache (destroy, a forked
 * child). KMC_TAKE_IDLE: the heaps that hold an empty slab and did nothing
 * since the last such call; true when some heap was busy since then (come
 * back later). Cache locked. */
bool kmc__heaps_take_back(kmc_cache_t *c, kmc_take mode)
{
    uint32_t me = kmc__self - 1;
    bool active = false, idle_only = mode == KMC_TAKE_IDLE;
    bool any_other = false;
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load_explicit(&c->chunks[i >> KMC_HEAP_CHUNK_SHIFT], memory_order_acquire))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++) {
            kmc_heap_t *h = kmc__heap_at(c, j);
            h->taking = 0;
            if (idle_only) {
                uint64_t ops = ops_of(h);
                bool idle = ops == h->seen_ops;
                h->seen_ops = ops;
                if (!holds_slabs(h))
                    continue;
                if (!idle) {
                    active = true;
                    continue;
                }
                if (!holds_empty(c, h))
                    continue;
            }
            if (j == me || mode == KMC_TAKE_FORCE) {
                kmc__heap_flush(c, h, j != me);
                continue;
            }
            /* otherwise every heap, holding slabs or not: a thread inside
             * a remote free is busy on its own heap, and the caller may be
             * about to unmap the slab it touches */
            heap_request(h, true);
            h->taking = 1;
            any_other = true;
        }
    }
    if (!any_other)
        return idle_only ? active : true;
    bool barrier = kmc__os_barrier() == 0;
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load_explicit(&c->chunks[i >> KMC_HEAP_CHUNK_SHIFT], memory_order_acquire))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++) {
            kmc_heap_t *h = kmc__heap_at(c, j);
            if (!h->taking)
                continue;
            if (barrier) {
                for (unsigned spins = 0; atomic_load_explicit(&h->busy, memory_order_acquire);
                     spins++)
                    if (spins > 64)
                        sched_yield();
                if (holds_slabs(h))
                    kmc__heap_flush(c, h, true);
            }
            /* without the barrier other threads' heaps stay theirs (only
             * their memory is not given back early) */
            heap_request(h, false);
            h->taking = 0;
        }
    }
    return idle_only ? active : barrier;
}

/* --- what the depot asks of heaps -------------------------------------------------- */

bool kmc__heap_bits_of(const kmc_cache_t *c, const kmc_slab_t *s, uint64_t *bits)
{
    if (kmc__slab_state(s) != KMC_SLAB_CURRENT)
        return false;
    uint32_t owner = KMC_LOAD(&((kmc_slab_t *)s)->owner);
    kmc_heap_t *h = owner == KMC_DEPOT ? NULL : kmc__heap_at(c, owner - 1);
    return h && cur_read(h, s, bits, 0, KMC_HEAP_BITS);
}

bool kmc__heaps_hold_slabs(const kmc_cache_t *c)
{
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load(&((kmc_cache_t *)c)->chunks[i >> KMC_HEAP_CHUNK_SHIFT]))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++)
            if (holds_slabs(kmc__heap_at(c, j)))
                return true;
    }
    return false;
}

/* The heaps' part of the statistics. While threads work, every "freed"
 * counter is read before every "allocated" one, so that an object freed is
 * never counted without its allocation (live counts never go below 0). */
void kmc__heaps_stats(const kmc_cache_t *c, kmc_stats_t *o, uint64_t *late_double)
{
    uint64_t remote = atomic_load(&c->d->orphan_remote_frees), merged = 0;
    uint64_t late = 0, cached = 0, frees = 0;
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load(&((kmc_cache_t *)c)->chunks[i >> KMC_HEAP_CHUNK_SHIFT]))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++) {
            kmc_heap_t *h = kmc__heap_at(c, j);
            frees += atomic_load_explicit(&h->frees, memory_order_acquire);
            remote += atomic_load_explicit(&h->remote_frees, memory_order_acquire);
        }
    }
    atomic_thread_fence(memory_order_seq_cst);
    for (uint32_t i = 0; i < KMC_MAX_HEAPS; i += 1u << KMC_HEAP_CHUNK_SHIFT) {
        if (!atomic_load(&((kmc_cache_t *)c)->chunks[i >> KMC_HEAP_CHUNK_SHIFT]))
            continue;
        for (uint32_t j = i; j < i + (1u << KMC_HEAP_CHUNK_SHIFT); j++) {
            kmc_heap_t *h = kmc__heap_at(c, j);
            o->allocs += KMC_LOAD(&h->allocs);
            merged += KMC_LOAD(&h->merged);
            late += KMC_LOAD(&h->late_double);
            cached += KMC_LOAD(&h->cached_other) + KMC_LOAD(&h->mag_n);
            if (KMC_LOAD(&h->cur))
                cached += kmc__bits_count(h->bits, KMC_HEAP_BITS);
            if (KMC_LOAD(&h->max_scan) > o->max_scan)
                o->max_scan = KMC_LOAD(&h->max_scan);
            uint32_t slabs = KMC_LOAD(&h->slabs);
            if (!slabs)
                continue;
            uint32_t empty = KMC_LOAD(&h->empties) + cur_empty(c, h);
            o->thread_caches++;
            o->empty_slabs += empty;
            o->partial_slabs += slabs - empty - KMC_LOAD(&h->fulls);
        }
    }
    o->frees += frees + remote - late;
    o->remote_frees += remote;
    uint64_t settled = merged + c->d->depot_merged;
    o->cached_objs += cached + (remote > settled ? remote - settled : 0);
    if (late_double)
        *late_double += late;
}
