/* kvsync._native: the hot paths of the pure core, in C.
 *
 * Why C: per stored block, pure Python paid ~700 ns to materialise token ints, ~400 ns to
 * convert and hash them, and ~1 µs of cache-missing dict work; per 8k-token lookup ~170 µs
 * (BENCHMARKS.md, "## Index"). Here a token never becomes a Python object and a block key is
 * one cell of a flat table.
 *
 * Pure like the Python core around it: no I/O, no threads, no clock. Every function is called
 * with the GIL held and under the index's lock; the table writes let go of the GIL inside (see
 * keytable_type.c), which that lock makes safe: keytable.c and u64map.c use no Python API.
 *
 * ``json_token_ids`` (tokens.c) is called without the index lock, from the HTTP thread, and
 * parses without the GIL: its parser reads only the request's bytes and writes only its own
 * new bytes object.
 *
 * Files: tokens.c (msgpack / JSON / list token ids -> uint32, block keys), u64map.c (engine hash ->
 * key maps), keytable.c (one index context: keys, holders, recency, eviction; no Python API),
 * keytable_type.c (the KeyTable Python type: its writes, the walk and the other reads),
 * module.c.
 */
#ifndef KVSYNC_NATIVE_H
#define KVSYNC_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

/* The key a chain starts from (kvsync.index.keys.ROOT): any fixed value, the same everywhere. */
#define KV_ROOT 0x6B7673796E630001ULL

/* ---- tokens.c --------------------------------------------------------------------------- */

/* Parse a msgpack array of token ids (each an int in [0, 2^32)) into ``out`` (``cap`` slots).
 * Returns the count, or -1 with a Python ValueError set whose message starts with "tokens:".
 * With out == NULL only validates and counts. */
Py_ssize_t kv_tokens_from_msgpack(const uint8_t *data, Py_ssize_t len, uint32_t *out,
                                  Py_ssize_t cap);

/* The element count of the msgpack array header at ``*p`` (advanced past it); -1 with a
 * ValueError set. */
Py_ssize_t kv_msgpack_array_len(const uint8_t **p, const uint8_t *end);

/* Token ids from a Python sequence of ints (PySequence_Fast items), ``count`` of them starting
 * at ``first``. Returns 0, or -1 with OverflowError / TypeError set. */
int kv_tokens_from_items(PyObject **items, Py_ssize_t first, Py_ssize_t count, uint32_t *out);

/* Token ids from a msgpack array (any buffer) or a sequence of ints, as a new uint32 array in
 * ``*out`` (PyMem_Free it). Returns the count, or -1 with an exception set. */
Py_ssize_t kv_tokens_of(PyObject *token_ids, uint32_t **out);

/* The key of one block: xxh3_64(token bytes [+ extra], seed = parent); never 0 (0 marks an
 * empty cell in the maps, so an xxh3 result of 0 - a 2^-64 event - is read as 1). */
static inline uint64_t kv_block_key(uint64_t parent, const uint32_t *tokens, Py_ssize_t n,
                                    const char *extra, Py_ssize_t extra_len, char *scratch) {
    uint64_t key;
    if (extra == NULL) {
        key = XXH3_64bits_withSeed(tokens, (size_t)n * sizeof(uint32_t), parent);
    } else {
        memcpy(scratch, tokens, (size_t)n * sizeof(uint32_t));
        memcpy(scratch + n * sizeof(uint32_t), extra, (size_t)extra_len);
        key = XXH3_64bits_withSeed(scratch, (size_t)n * sizeof(uint32_t) + (size_t)extra_len,
                                   parent);
    }
    return key ? key : 1;
}

/* Keys of ``n_blocks`` blocks chained from ``parent`` into ``keys``; ``extras`` is NULL or a
 * list with one bytes-or-None per block. Returns 0, or -1 with an exception set. */
int kv_chain(uint64_t parent, const uint32_t *tokens, Py_ssize_t block_size,
             Py_ssize_t n_blocks, PyObject *extras, uint64_t *keys);

PyObject *kv_token_count(PyObject *module, PyObject *arg);
PyObject *kv_chain_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *kv_json_token_ids(PyObject *module, PyObject *arg);

/* ---- u64map.c: uint64 engine hash -> uint64 key, open addressing, linear probing ---------- */

typedef struct {
    uint64_t hash;
    uint64_t key; /* 0 = empty cell */
} KvCell;

typedef struct {
    KvCell *cells;
    uint32_t bits; /* capacity = 1 << bits (0 cells when cells == NULL) */
    uint32_t len;
} KvMap;

#define KV_MAP_GOLDEN 0x9E3779B97F4A7C15ULL /* multiplicative hashing: engine hashes may be small */

static inline uint32_t kv_map_home(uint64_t hash, uint32_t bits) {
    return (uint32_t)((hash * KV_MAP_GOLDEN) >> (64 - bits));
}
static inline void kv_map_prefetch(const KvMap *map, uint64_t hash) {
    if (map->cells != NULL) __builtin_prefetch(&map->cells[kv_map_home(hash, map->bits)]);
}

uint64_t kv_map_get(const KvMap *map, uint64_t hash);
/* Returns the previous key (0 when new), or UINT64_MAX when out of memory. No Python API is used
 * by the map functions (raw allocators): they run without the GIL. */
uint64_t kv_map_put(KvMap *map, uint64_t hash, uint64_t key);
uint64_t kv_map_pop(KvMap *map, uint64_t hash);
void kv_map_free(KvMap *map);
size_t kv_map_bytes(const KvMap *map);

/* ---- keytable.c ------------------------------------------------------------------------- */

extern PyTypeObject KvKeyTableType;

#endif
