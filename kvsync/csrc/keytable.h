/* One index context's tables (keytable.c); the Python type around them is keytable_py.c.
 *
 * Per block key, one 32-byte entry (key, parent key, present-children count, recency links) and
 * a holder bit mask of ``words`` uint64 (the endpoint slots holding any copy of the block),
 * in dense arrays; a bucket array of entry indices finds a key. Entries are kept in recency
 * order (least recently stored first) on a doubly linked list, for leaf-first capacity
 * eviction. Per slot: an engine hash -> key map (u64map.c) and the count of keys held. */
#ifndef KVSYNC_KEYTABLE_H
#define KVSYNC_KEYTABLE_H

#include "native.h"

#define NIL UINT32_MAX

typedef struct {
    uint64_t key;
    uint64_t parent;
    uint32_t children; /* present keys whose parent is this key (see kvsync/contexts.py) */
    uint32_t older;    /* recency neighbours; ``older`` also links the free list */
    uint32_t newer;
} KvEntry;

typedef struct {
    PyObject_HEAD
    Py_ssize_t block_size;
    KvEntry *entries;
    uint64_t *masks; /* ``words`` per entry */
    uint32_t words;
    uint32_t capacity; /* entries allocated */
    uint32_t used;     /* entries ever handed out (high-water mark) */
    uint32_t n_keys;
    uint32_t free_head;
    uint32_t *buckets; /* entry index + 1; 0 = empty */
    uint32_t bucket_bits;
    uint32_t oldest, newest;
    KvMap *maps;     /* per slot */
    int64_t *counts; /* per slot: keys held */
    uint32_t n_slots;
    int64_t dangling; /* engine entries whose key capacity eviction removed */
} KvTable;

uint32_t kt_find(const KvTable *t, uint64_t key);
int kt_ensure_slot(KvTable *t, uint32_t slot);
static inline int kt_has(const KvTable *t, uint32_t idx, uint32_t slot) {
    return (int)(t->masks[(size_t)idx * t->words + slot / 64] >> (slot % 64) & 1);
}
/* Keys a slot newly holds; -1 with an exception set. */
Py_ssize_t kt_store(KvTable *t, uint32_t slot, uint64_t parent, const uint64_t *hashes,
                    const uint64_t *keys, Py_ssize_t n);
/* The slot stops holding ``idx`` in every copy; the key goes when no slot holds it. */
void kt_release(KvTable *t, uint32_t idx, uint32_t slot);
int64_t kt_clear_slot(KvTable *t, uint32_t slot);
Py_ssize_t kt_evict(KvTable *t, uint32_t target);
void kt_free(KvTable *t);
size_t kt_bytes(const KvTable *t);

#endif
