/* One index context's tables: see keytable.h; the semantics are those of
 * kvsync/index/memory/context.py. No Python API in here (raw allocators, no exceptions):
 * keytable_type.c runs the writes without the GIL. */
#include "keytable.h"

#define MIN_BUCKET_BITS 4
#define MAX_RECORDS (1u << 30) /* a billion keys per context: a MemoryError beyond */

uint32_t kt_find(const KvTable *t, uint64_t key) {
    if (t->buckets == NULL) return NIL;
    uint32_t mask = (1u << t->bucket_bits) - 1;
    uint32_t fingerprint = kt_fingerprint(key);
    for (uint32_t i = kt_home(key, t->bucket_bits);; i = (i + 1) & mask) {
        uint64_t b = t->buckets[i];
        if (b == 0) return NIL;
        uint32_t idx = (uint32_t)b - 1;
        if ((uint32_t)(b >> 32) == fingerprint && *kt_record(t, idx) == key) return idx;
    }
}

static void place(uint64_t *buckets, uint32_t bits, uint64_t key, uint32_t idx) {
    uint32_t mask = (1u << bits) - 1;
    uint32_t i = kt_home(key, bits);
    while (buckets[i] != 0) i = (i + 1) & mask;
    buckets[i] = (uint64_t)kt_fingerprint(key) << 32 | (idx + 1);
}

static int rebucket(KvTable *t, uint32_t bits) {
    if (bits > 31) return -1; /* (1u << 32) is undefined; MAX_RECORDS keeps us below */
    uint64_t *buckets = PyMem_RawCalloc((size_t)1 << bits, sizeof(uint64_t));
    if (buckets == NULL) return -1;
    for (uint32_t idx = t->oldest; idx != NIL; idx = kt_links(t, idx)->newer) {
        place(buckets, bits, *kt_record(t, idx), idx);
    }
    PyMem_RawFree(t->buckets);
    t->buckets = buckets;
    t->bucket_bits = bits;
    return 0;
}

static void unbucket(KvTable *t, uint64_t key) {
    uint32_t mask = (1u << t->bucket_bits) - 1;
    uint32_t i = kt_home(key, t->bucket_bits);
    uint32_t fingerprint = kt_fingerprint(key);
    while ((uint32_t)(t->buckets[i] >> 32) != fingerprint ||
           *kt_record(t, (uint32_t)t->buckets[i] - 1) != key) {
        i = (i + 1) & mask;
    }
    for (uint32_t j = (i + 1) & mask; t->buckets[j] != 0; j = (j + 1) & mask) {
        uint32_t h = kt_bucket_home(t->buckets[j], t->bucket_bits);
        if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
            t->buckets[i] = t->buckets[j];
            i = j;
        }
    }
    t->buckets[i] = 0;
}

static void unlink_entry(KvTable *t, uint32_t idx) {
    KvLinks *e = kt_links(t, idx);
    if (e->older != NIL) kt_links(t, e->older)->newer = e->newer;
    else t->oldest = e->newer;
    if (e->newer != NIL) kt_links(t, e->newer)->older = e->older;
    else t->newest = e->older;
}

static void append_entry(KvTable *t, uint32_t idx) {
    KvLinks *e = kt_links(t, idx);
    e->older = t->newest;
    e->newer = NIL;
    if (t->newest != NIL) kt_links(t, t->newest)->newer = idx;
    else t->oldest = idx;
    t->newest = idx;
}

static inline void touch(KvTable *t, uint32_t idx) { /* to the recent end */
    if (t->newest != idx) unlink_entry(t, idx), append_entry(t, idx);
}

static int grow_entries(KvTable *t) {
    if (t->capacity >= MAX_RECORDS) return -1; /* indices are uint32, NIL reserved */
    uint32_t capacity = t->capacity ? t->capacity * 2 : 64;
    uint64_t *records = PyMem_RawRealloc(t->records, (size_t)capacity * t->stride * sizeof(uint64_t));
    if (records == NULL) return -1;
    t->records = records;
    t->capacity = capacity;
    return 0;
}

static uint32_t new_entry(KvTable *t, uint64_t key, uint64_t parent, uint32_t children,
                          uint32_t slot) {
    if ((uint64_t)(t->n_keys + 1) * 2 > ((uint64_t)1 << t->bucket_bits) || t->buckets == NULL) {
        uint32_t bits = t->buckets == NULL ? MIN_BUCKET_BITS : t->bucket_bits + 1;
        if (rebucket(t, bits) < 0) return NIL;
    }
    uint32_t idx;
    if (t->free_head != NIL) {
        idx = t->free_head;
        t->free_head = kt_links(t, idx)->older;
    } else {
        if (t->used == t->capacity && grow_entries(t) < 0) return NIL;
        idx = t->used++;
    }
    *kt_record(t, idx) = key;
    KvLinks *links = kt_links(t, idx);
    links->parent = parent;
    links->children = children;
    uint64_t *mask = kt_mask(t, idx);
    memset(mask, 0, t->words * sizeof(uint64_t));
    mask[slot / 64] = 1ULL << (slot % 64);
    append_entry(t, idx);
    place(t->buckets, t->bucket_bits, key, idx);
    t->n_keys++;
    return idx;
}

static void delete_entry(KvTable *t, uint32_t idx) {
    uint64_t key = *kt_record(t, idx), parent = kt_links(t, idx)->parent;
    unbucket(t, key);
    unlink_entry(t, idx);
    kt_links(t, idx)->older = t->free_head;
    t->free_head = idx;
    t->n_keys--;
    uint32_t up = kt_find(t, parent);
    if (up != NIL && kt_links(t, up)->children) kt_links(t, up)->children--;
}

static inline int mask_empty(const KvTable *t, uint32_t idx) {
    const uint64_t *mask = kt_mask(t, idx);
    for (uint32_t w = 0; w < t->words; w++) if (mask[w]) return 0;
    return 1;
}

/* Room for ``words`` mask words per record: every record is copied to the wider layout. */
static int widen(KvTable *t, uint32_t words) {
    uint32_t stride = 1 + words + sizeof(KvLinks) / sizeof(uint64_t);
    uint64_t *records = PyMem_RawCalloc((size_t)(t->capacity ? t->capacity : 1) * stride,
                                     sizeof(uint64_t));
    if (records == NULL) return -1;
    for (uint32_t idx = 0; idx < t->used; idx++) {
        uint64_t *from = kt_record(t, idx), *to = records + (size_t)idx * stride;
        to[0] = from[0];
        memcpy(to + 1, from + 1, t->words * sizeof(uint64_t));
        memcpy(to + 1 + words, from + 1 + t->words, sizeof(KvLinks));
    }
    PyMem_RawFree(t->records);
    t->records = records;
    t->words = words;
    t->stride = stride;
    return 0;
}

int kt_ensure_slot(KvTable *t, uint32_t slot) {
    if (slot / 64 >= t->words && widen(t, slot / 64 + 1) < 0) return -1;
    if (slot < t->n_slots) return 0;
    uint32_t n = slot + 1 > t->n_slots * 2 ? slot + 1 : t->n_slots * 2;
    KvMap *maps = PyMem_RawRealloc(t->maps, n * sizeof(KvMap));
    if (maps == NULL) return -1;
    t->maps = maps;
    int64_t *counts = PyMem_RawRealloc(t->counts, n * sizeof(int64_t));
    if (counts == NULL) return -1;
    t->counts = counts;
    memset(&t->maps[t->n_slots], 0, (n - t->n_slots) * sizeof(KvMap));
    memset(&t->counts[t->n_slots], 0, (n - t->n_slots) * sizeof(int64_t));
    t->n_slots = n;
    return 0;
}

void kt_release(KvTable *t, uint32_t idx, uint32_t slot) {
    if (!kt_has(t, idx, slot)) return;
    kt_mask(t, idx)[slot / 64] &= ~(1ULL << (slot % 64));
    t->counts[slot]--;
    if (mask_empty(t, idx)) delete_entry(t, idx);
}

Py_ssize_t kt_store(KvTable *t, uint32_t slot, uint64_t parent, const uint64_t *hashes,
                    const uint64_t *keys, Py_ssize_t n) {
    if (kt_ensure_slot(t, slot) < 0) return -1;
    KvMap *map = &t->maps[slot];
    for (Py_ssize_t i = 0; i < n; i++) { /* overlap the cache misses of the whole chain */
        kt_prefetch(t, keys[i]);
        kv_map_prefetch(map, hashes[i]);
    }
    Py_ssize_t fresh_keys = 0;
    int child_new = 0; /* whether the block after this one is a new key */
    for (Py_ssize_t i = n - 1; i >= 0; i--) { /* deepest first: see kvsync/index/memory/context.py */
        uint64_t key = keys[i];
        uint64_t previous = kv_map_put(map, hashes[i], key);
        if (previous == UINT64_MAX) return -1;
        if (previous != 0 && previous != key) { /* the engine reused a hash for other tokens */
            uint32_t old = kt_find(t, previous);
            if (old != NIL) kt_release(t, old, slot);
        }
        uint32_t idx = kt_find(t, key);
        int fresh = idx == NIL;
        if (fresh) {
            idx = new_entry(t, key, i ? keys[i - 1] : parent, i < n - 1, slot);
            if (idx == NIL) return -1;
            fresh_keys++;
        } else {
            touch(t, idx);
            uint64_t *word = &kt_mask(t, idx)[slot / 64];
            uint64_t bit = 1ULL << (slot % 64);
            if (!(*word & bit)) {
                *word |= bit;
                fresh_keys++;
            }
            kt_links(t, idx)->children += child_new;
        }
        child_new = fresh;
    }
    if (child_new) {
        uint32_t up = kt_find(t, parent);
        if (up != NIL) kt_links(t, up)->children++;
    }
    t->counts[slot] += fresh_keys;
    return fresh_keys;
}

int64_t kt_clear_slot(KvTable *t, uint32_t slot) {
    if (slot >= t->n_slots) return 0;
    KvMap *map = &t->maps[slot];
    int64_t held = t->counts[slot];
    for (size_t j = 0; map->cells != NULL && j < ((size_t)1 << map->bits); j++) {
        if (map->cells[j].key == 0) continue;
        uint32_t idx = kt_find(t, map->cells[j].key);
        if (idx != NIL) kt_release(t, idx, slot);
    }
    t->dangling = t->dangling > map->len ? t->dangling - map->len : 0;
    kv_map_free(map);
    t->counts[slot] = 0; /* kt_release counted down the held keys; dangling ones never counted */
    return held;
}

/* Drop engine entries whose key was evicted (amortised: runs when they outnumber keys). */
static int sweep(KvTable *t) {
    for (uint32_t slot = 0; slot < t->n_slots; slot++) {
        KvMap *map = &t->maps[slot], kept = {NULL, 0, 0};
        for (size_t j = 0; map->cells != NULL && j < ((size_t)1 << map->bits); j++) {
            KvCell cell = map->cells[j];
            if (cell.key == 0) continue;
            uint32_t idx = kt_find(t, cell.key);
            if (idx != NIL && kt_has(t, idx, slot) &&
                kv_map_put(&kept, cell.hash, cell.key) == UINT64_MAX) {
                kv_map_free(&kept);
                return -1;
            }
        }
        kv_map_free(map);
        *map = kept;
    }
    t->dangling = 0;
    return 0;
}

Py_ssize_t kt_evict(KvTable *t, uint32_t target, uint64_t *evicted_keys) {
    Py_ssize_t evicted = 0;
    uint32_t spared = 0;
    while (t->n_keys > target) {
        uint32_t idx = t->oldest;
        /* An inner key moves to the recent end: its subtree was used at least as recently.
         * spared > n_keys means every key was an ancestor, which only a 64-bit key collision
         * (a cycle) can cause: evict anyway rather than spin. */
        if (kt_links(t, idx)->children && spared <= t->n_keys) {
            touch(t, idx);
            spared++;
            continue;
        }
        const uint64_t *mask = kt_mask(t, idx);
        for (uint32_t w = 0; w < t->words; w++) {
            for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
                t->counts[w * 64 + (uint32_t)__builtin_ctzll(bits)]--;
                t->dangling++;
            }
        }
        if (evicted_keys != NULL) evicted_keys[evicted] = kt_record(t, idx)[0];
        delete_entry(t, idx);
        evicted++;
        spared = 0;
    }
    if (t->dangling > (int64_t)t->n_keys && sweep(t) < 0) return -1;
    return evicted;
}

void kt_free(KvTable *t) {
    for (uint32_t slot = 0; slot < t->n_slots; slot++) kv_map_free(&t->maps[slot]);
    PyMem_RawFree(t->maps);
    PyMem_RawFree(t->counts);
    PyMem_RawFree(t->records);
    PyMem_RawFree(t->buckets);
}

size_t kt_bytes(const KvTable *t) {
    size_t total = (size_t)t->capacity * t->stride * sizeof(uint64_t);
    total += t->buckets == NULL ? 0 : sizeof(uint64_t) << t->bucket_bits;
    total += (size_t)t->n_slots * (sizeof(KvMap) + sizeof(int64_t));
    for (uint32_t slot = 0; slot < t->n_slots; slot++) total += kv_map_bytes(&t->maps[slot]);
    return total;
}
