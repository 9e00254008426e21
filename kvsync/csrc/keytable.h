/* One index context's tables (keytable.c: no Python API, so its writes run without the GIL);
 * the Python type around them, the KeyTable (its writes, the walk and the other reads), is
 * keytable_type.c, the only file here that parses Python arguments or raises.
 *
 * Per block key one record in a dense array: the key, a holder bit mask of ``words`` uint64
 * (the endpoint slots holding any copy of the block), then its parent key, its present-children
 * count and its recency links. Key and mask come first, so a lookup touches one cache line
 * (8 + 8 bytes of a 40-byte record with one mask word). A bucket array (record index and a
 * fingerprint of the key; linear probing, at most half full) finds a key. Records are kept in recency order (least recently
 * stored first) on a doubly linked list, for leaf-first capacity eviction. Per slot: an engine
 * hash -> key map (u64map.c) and the count of keys held. */
#ifndef KVSYNC_KEYTABLE_H
#define KVSYNC_KEYTABLE_H

#include "native.h"

#define NIL UINT32_MAX

typedef struct {
    uint64_t parent;
    uint32_t children; /* present keys whose parent is this key (see kvsync/index/memory/context.py) */
    uint32_t older;    /* recency neighbours; ``older`` also links the free list */
    uint32_t newer;
    uint32_t unused;
} KvLinks;

typedef struct {
    PyObject_HEAD
    Py_ssize_t block_size;
    uint64_t *records; /* ``stride`` uint64 per record: key, mask[words], KvLinks */
    uint32_t words;
    uint32_t stride;
    uint32_t capacity; /* records allocated */
    uint32_t used;     /* records ever handed out (high-water mark) */
    uint32_t n_keys;
    uint32_t free_head;
    uint64_t *buckets; /* fingerprint << 32 | (record index + 1); 0 = empty */
    uint32_t bucket_bits;
    uint32_t oldest, newest;
    KvMap *maps;     /* per slot */
    int64_t *counts; /* per slot: keys held */
    uint32_t n_slots;
    int64_t dangling; /* engine entries whose key capacity eviction removed */
} KvTable;


static inline uint64_t *kt_record(const KvTable *t, uint32_t idx) {
    return t->records + (size_t)idx * t->stride;
}
static inline uint64_t *kt_mask(const KvTable *t, uint32_t idx) { return kt_record(t, idx) + 1; }
static inline KvLinks *kt_links(const KvTable *t, uint32_t idx) {
    return (KvLinks *)(kt_record(t, idx) + 1 + t->words);
}
/* A bucket keeps the key's high 32 bits next to the record index: probing compares those and
 * touches a record only on a likely match, and the home bucket is computed from them alone, so
 * moving buckets (deletion) never reads a record either. */
static inline uint32_t kt_fingerprint(uint64_t key) { return (uint32_t)(key >> 32); }
static inline uint32_t kt_home(uint64_t key, uint32_t bits) {
    return (uint32_t)(kt_fingerprint(key) * 0x9E3779B9u) >> (32 - bits);
}
static inline uint32_t kt_bucket_home(uint64_t bucket, uint32_t bits) {
    return (uint32_t)((uint32_t)(bucket >> 32) * 0x9E3779B9u) >> (32 - bits);
}
/* Start loading the bucket of ``key``: lookups of a chain's keys overlap their cache misses. */
static inline void kt_prefetch(const KvTable *t, uint64_t key) {
    if (t->buckets != NULL) __builtin_prefetch(&t->buckets[kt_home(key, t->bucket_bits)]);
}

#define MAX_SLOT (1u << 16) /* endpoints per index: far above any fleet (keytable_type.c) */

uint32_t kt_find(const KvTable *t, uint64_t key);
int kt_ensure_slot(KvTable *t, uint32_t slot);
static inline int kt_has(const KvTable *t, uint32_t idx, uint32_t slot) {
    return (int)(kt_mask(t, idx)[slot / 64] >> (slot % 64) & 1);
}
/* The table functions use no Python API (they run without the GIL, see keytable_type.c): -1
 * means out of memory, and the caller raises MemoryError. */
/* Keys a slot newly holds; -1 when out of memory. */
Py_ssize_t kt_store(KvTable *t, uint32_t slot, uint64_t parent, const uint64_t *hashes,
                    const uint64_t *keys, Py_ssize_t n);
/* The slot stops holding ``idx`` in every copy; the key goes when no slot holds it. */
void kt_release(KvTable *t, uint32_t idx, uint32_t slot);
int64_t kt_clear_slot(KvTable *t, uint32_t slot);
/* Evicts down to ``target`` keys; writes each evicted key to ``evicted_keys`` unless NULL (room
 * for n_keys - target of them). */
Py_ssize_t kt_evict(KvTable *t, uint32_t target, uint64_t *evicted_keys);
void kt_free(KvTable *t);
size_t kt_bytes(const KvTable *t);

#endif
