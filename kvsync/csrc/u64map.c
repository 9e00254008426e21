/* uint64 -> uint64 hash map: an endpoint's engine hash -> the block's key.
 *
 * Open addressing with linear probing and backward-shift deletion: no tombstones, so a map
 * under constant churn (vLLM evicts and re-stores all day) never needs rebuilding, unlike
 * preshed's map that kvsync used before. 16 bytes a cell, at most 70 % full. A key of 0 marks
 * an empty cell (block keys are never 0, see kv_block_key). */
#include "native.h"

#define MIN_BITS 3
#define home kv_map_home

uint64_t kv_map_get(const KvMap *map, uint64_t hash) {
    if (map->cells == NULL) return 0;
    uint32_t mask = (1u << map->bits) - 1;
    for (uint32_t i = home(hash, map->bits);; i = (i + 1) & mask) {
        const KvCell *cell = &map->cells[i];
        if (cell->key == 0) return 0;
        if (cell->hash == hash) return cell->key;
    }
}

static int resize(KvMap *map, uint32_t bits) {
    if (bits > 31) return -1; /* (1u << 32) is undefined: two billion hashes per endpoint at most */
    KvCell *cells = PyMem_RawCalloc((size_t)1 << bits, sizeof(KvCell));
    if (cells == NULL) return -1;
    uint32_t mask = (1u << bits) - 1;
    if (map->cells != NULL) {
        for (size_t j = 0; j < ((size_t)1 << map->bits); j++) {
            KvCell cell = map->cells[j];
            if (cell.key == 0) continue;
            uint32_t i = home(cell.hash, bits);
            while (cells[i].key != 0) i = (i + 1) & mask;
            cells[i] = cell;
        }
        PyMem_RawFree(map->cells);
    }
    map->cells = cells;
    map->bits = bits;
    return 0;
}

uint64_t kv_map_put(KvMap *map, uint64_t hash, uint64_t key) {
    if (map->cells == NULL || (uint64_t)(map->len + 1) * 10 > ((uint64_t)7 << map->bits)) {
        if (resize(map, map->cells == NULL ? MIN_BITS : map->bits + 1) < 0) return UINT64_MAX;
    }
    uint32_t mask = (1u << map->bits) - 1;
    for (uint32_t i = home(hash, map->bits);; i = (i + 1) & mask) {
        KvCell *cell = &map->cells[i];
        if (cell->key == 0) {
            cell->hash = hash;
            cell->key = key;
            map->len++;
            return 0;
        }
        if (cell->hash == hash) {
            uint64_t previous = cell->key;
            cell->key = key;
            return previous;
        }
    }
}

uint64_t kv_map_pop(KvMap *map, uint64_t hash) {
    if (map->cells == NULL) return 0;
    uint32_t mask = (1u << map->bits) - 1;
    uint32_t i = home(hash, map->bits);
    while (map->cells[i].hash != hash || map->cells[i].key == 0) {
        if (map->cells[i].key == 0) return 0;
        i = (i + 1) & mask;
    }
    uint64_t key = map->cells[i].key;
    /* Backward shift: pull later cells of the probe run into the hole when their home allows. */
    for (uint32_t j = (i + 1) & mask; map->cells[j].key != 0; j = (j + 1) & mask) {
        uint32_t h = home(map->cells[j].hash, map->bits);
        /* the cell at j may move to i when its home is not in (i, j] (cyclically) */
        if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) {
            map->cells[i] = map->cells[j];
            i = j;
        }
    }
    map->cells[i].key = 0;
    map->len--;
    if (map->len == 0) {
        kv_map_free(map); /* a cleared endpoint gives its memory back */
    } else if (map->bits > MIN_BITS + 2 && (uint64_t)map->len * 16 < ((uint64_t)1 << map->bits)) {
        /* shrink to a quarter once 1/16 full; on no memory keep the big one */
        (void)resize(map, map->bits - 2);
    }
    return key;
}

void kv_map_free(KvMap *map) {
    PyMem_RawFree(map->cells);
    map->cells = NULL;
    map->bits = 0;
    map->len = 0;
}

size_t kv_map_bytes(const KvMap *map) {
    return map->cells == NULL ? 0 : sizeof(KvCell) << map->bits;
}
