/* The KeyTable methods that only read: the longest-prefix walk of one query over one context
 * (kvsync/lookup.py), holders, resolve, counts and sizes. */
#include "keytable.h"

#define WALK_CHUNK 64 /* blocks converted at a time: an early stop wastes at most these */
#define MAX_WORDS (MAX_SLOT / 64)

/* Record position ``at`` as the run of every slot set in ``gone``. */
static int end_runs(PyObject *runs, const uint64_t *gone, uint32_t words, Py_ssize_t at) {
    if (at == 0) return 0; /* a slot that holds no leading block is no answer */
    for (uint32_t w = 0; w < words; w++) {
        for (uint64_t bits = gone[w]; bits; bits &= bits - 1) {
            PyObject *slot = PyLong_FromUnsignedLong(w * 64 + (uint32_t)__builtin_ctzll(bits));
            PyObject *run = PyLong_FromSsize_t(at);
            int failed = slot == NULL || run == NULL || PyDict_SetItem(runs, slot, run) < 0;
            Py_XDECREF(slot);
            Py_XDECREF(run);
            if (failed) return -1;
        }
    }
    return 0;
}

/* walk(token_ids, salt, allowed, want_keys) -> (runs, keys): per slot in ``allowed`` (a mask)
 * holding at least the first block, how many leading query blocks it holds; with ``want_keys`` also the keys of the blocks at
 * least one allowed slot matched (for the caller's odd-copy breakdown), else None. */
PyObject *kt_walk(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "walk(token_ids, salt, allowed, want_keys)");
        return NULL;
    }
    PyObject *salt = args[1];
    if (salt != Py_None && !PyBytes_Check(salt)) {
        PyErr_SetString(PyExc_TypeError, "salt must be bytes or None");
        return NULL;
    }
    uint32_t words = t->words;
    uint64_t alive[MAX_WORDS], gone[MAX_WORDS], chunk_keys[WALK_CHUNK];
    uint32_t chunk_found[WALK_CHUNK];
    uint64_t any = 0;
    PyObject *rest = Py_NewRef(args[2]);
    for (uint32_t w = 0; w < words; w++) { /* the low ``words`` words of ``allowed`` */
        alive[w] = PyLong_AsUnsignedLongLongMask(rest);
        PyObject *sixty_four = PyLong_FromLong(64);
        PyObject *next = sixty_four == NULL ? NULL : PyNumber_Rshift(rest, sixty_four);
        Py_XDECREF(sixty_four);
        Py_DECREF(rest);
        rest = next;
        if (rest == NULL || PyErr_Occurred()) {
            Py_XDECREF(rest);
            return NULL;
        }
        any |= alive[w];
    }
    Py_DECREF(rest);
    PyObject *seq = PySequence_Fast(args[0], "token_ids must be a sequence of ints");
    if (seq == NULL) return NULL;
    PyObject *runs = PyDict_New();
    PyObject *keys = PyObject_IsTrue(args[3]) ? PyList_New(0) : Py_NewRef(Py_None);
    Py_ssize_t bs = t->block_size;
    Py_ssize_t n_blocks = PySequence_Fast_GET_SIZE(seq) / bs;
    Py_ssize_t salt_len = salt == Py_None ? 0 : PyBytes_GET_SIZE(salt);
    /* Sized by the query, not by the block size alone: a context's block size comes from events,
     * and a query shorter than one block (n_blocks 0) allocates nothing to speak of. */
    Py_ssize_t chunk_blocks = n_blocks < WALK_CHUNK ? n_blocks : WALK_CHUNK;
    size_t block_bytes = n_blocks ? (size_t)bs * sizeof(uint32_t) : 0;
    uint32_t *tokens = PyMem_Malloc((size_t)chunk_blocks * block_bytes + 1);
    char *scratch = PyMem_Malloc(block_bytes + (size_t)salt_len + 1);
    Py_ssize_t position = 0;
    uint64_t key = KV_ROOT;
    int failed = runs == NULL || keys == NULL;
    if (!failed && (tokens == NULL || scratch == NULL)) {
        PyErr_NoMemory();
        failed = 1;
    }
    while (!failed && any && position < n_blocks) {
        Py_ssize_t chunk = n_blocks - position < WALK_CHUNK ? n_blocks - position : WALK_CHUNK;
        if (kv_tokens_from_items(PySequence_Fast_ITEMS(seq), position * bs, chunk * bs, tokens)) {
            failed = 1;
            break;
        }
        /* Hash the chunk, then look its keys up: the lookups' cache misses overlap (prefetch)
         * instead of following one another. */
        for (Py_ssize_t i = 0; i < chunk; i++) {
            const char *extra = position + i == 0 && salt_len ? PyBytes_AS_STRING(salt) : NULL;
            key = kv_block_key(key, tokens + i * bs, bs, extra, extra ? salt_len : 0, scratch);
            chunk_keys[i] = key;
            kt_prefetch(t, key);
        }
        for (Py_ssize_t i = 0; i < chunk; i++) {
            chunk_found[i] = kt_find(t, chunk_keys[i]);
            if (chunk_found[i] != NIL) __builtin_prefetch(kt_record(t, chunk_found[i]));
        }
        for (Py_ssize_t i = 0; i < chunk && any; i++, position++) {
            uint32_t idx = chunk_found[i];
            const uint64_t *mask = idx == NIL ? NULL : kt_mask(t, idx);
            uint64_t lost = 0;
            any = 0;
            for (uint32_t w = 0; w < words; w++) {
                uint64_t now = mask == NULL ? 0 : alive[w] & mask[w];
                gone[w] = alive[w] & ~now;
                lost |= gone[w];
                alive[w] = now;
                any |= now;
            }
            if (lost && end_runs(runs, gone, words, position) < 0) {
                failed = 1;
                break;
            }
            if (any && keys != Py_None) {
                PyObject *k = PyLong_FromUnsignedLongLong(chunk_keys[i]);
                failed = k == NULL || PyList_Append(keys, k) < 0;
                Py_XDECREF(k);
                if (failed) break;
            }
        }
    }
    if (!failed && any && end_runs(runs, alive, words, position) < 0) failed = 1;
    PyMem_Free(tokens);
    PyMem_Free(scratch);
    Py_DECREF(seq);
    if (failed) {
        Py_XDECREF(runs);
        Py_XDECREF(keys);
        return NULL;
    }
    return Py_BuildValue("(NN)", runs, keys);
}

PyObject *kt_py_holders(KvTable *t, PyObject *arg) {
    uint64_t key;
    if (kt_read_u64(arg, &key) < 0) return NULL;
    uint32_t idx = kt_find(t, key);
    if (idx == NIL) return PyLong_FromLong(0);
    PyObject *mask = PyLong_FromLong(0);
    for (uint32_t w = t->words; mask != NULL && w-- > 0;) { /* most significant word first */
        PyObject *shift = PyLong_FromLong(64);
        PyObject *shifted = shift == NULL ? NULL : PyNumber_Lshift(mask, shift);
        PyObject *word = PyLong_FromUnsignedLongLong(kt_mask(t, idx)[w]);
        Py_XDECREF(shift);
        Py_DECREF(mask);
        mask = shifted == NULL || word == NULL ? NULL : PyNumber_Or(shifted, word);
        Py_XDECREF(shifted);
        Py_XDECREF(word);
    }
    return mask;
}

PyObject *kt_py_resolve(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "resolve(slot, hash)");
    uint32_t slot;
    uint64_t hash;
    if (kt_read_slot(args[0], &slot) < 0 || kt_read_u64(args[1], &hash) < 0) return NULL;
    uint64_t key = slot < t->n_slots ? kv_map_get(&t->maps[slot], hash) : 0;
    if (key == 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(key);
}

PyObject *kt_py_count(KvTable *t, PyObject *arg) {
    uint32_t slot;
    if (kt_read_slot(arg, &slot) < 0) return NULL;
    return PyLong_FromLongLong(slot < t->n_slots ? t->counts[slot] : 0);
}

PyObject *kt_py_sizes(KvTable *t, PyObject *unused) {
    (void)unused;
    long long entries = 0, mapped = 0;
    PyObject *slots = PyList_New(0);
    for (uint32_t slot = 0; slots != NULL && slot < t->n_slots; slot++) {
        entries += t->counts[slot];
        mapped += t->maps[slot].len;
        if (t->counts[slot] || t->maps[slot].len) {
            PyObject *n = PyLong_FromUnsignedLong(slot);
            if (n == NULL || PyList_Append(slots, n) < 0) Py_CLEAR(slots);
            Py_XDECREF(n);
        }
    }
    if (slots == NULL) return NULL;
    return Py_BuildValue("(LLnN)", entries, mapped, (Py_ssize_t)kt_bytes(t), slots);
}
