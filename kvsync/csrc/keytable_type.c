/* kvsync._native.KeyTable, the Python type around keytable.c's tables (typed in
 * kvsync/_native.pyi): argument parsing, errors, the writes (which let go of the GIL around
 * keytable.c's calls, see native.h), the longest-prefix walk of one query over one context
 * (kvsync/index/memory/lookup.py) and the other reads (holders, resolve, counts, sizes). */
#include "keytable.h"

/* ---- reading Python arguments ----------------------------------------------------- */

static inline int kt_read_slot(PyObject *arg, uint32_t *slot) {
    unsigned long value = PyLong_AsUnsignedLong(arg);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (value >= MAX_SLOT) {
        PyErr_SetString(PyExc_OverflowError, "slot out of range");
        return -1;
    }
    *slot = (uint32_t)value;
    return 0;
}

static inline int kt_read_u64(PyObject *arg, uint64_t *out) {
    *out = PyLong_AsUnsignedLongLong(arg);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* Calls with a fixed argument count: a TypeError otherwise. */
#define ARGS(n, usage)                                   \
    if (nargs != (n)) {                                  \
        PyErr_SetString(PyExc_TypeError, usage);         \
        return NULL;                                     \
    }

/* ---- the type and its writes -------------------------------------------------------- */

#define STACK_TOKENS 4096 /* token ids parsed on the stack (16 KiB) before allocating */

/* A list of uint64 as a new C array (PyMem_Free it); NULL with an exception set. */
static uint64_t *read_u64s(PyObject *list, Py_ssize_t *n) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "expected a list of ints");
        return NULL;
    }
    *n = PyList_GET_SIZE(list);
    uint64_t *values = PyMem_Malloc((size_t)(*n + 1) * sizeof(uint64_t));
    if (values == NULL) return (uint64_t *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < *n; i++) {
        if (kt_read_u64(PyList_GET_ITEM(list, i), &values[i]) < 0) {
            PyMem_Free(values);
            return NULL;
        }
    }
    return values;
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"block_size", NULL};
    Py_ssize_t block_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", names, &block_size)) return NULL;
    if (block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be > 0");
        return NULL;
    }
    KvTable *t = (KvTable *)type->tp_alloc(type, 0); /* zeroed */
    if (t == NULL) return NULL;
    t->block_size = block_size;
    t->words = 1;
    t->stride = 1 + 1 + sizeof(KvLinks) / sizeof(uint64_t);
    t->free_head = t->oldest = t->newest = NIL;
    return (PyObject *)t;
}

static void table_dealloc(KvTable *t) {
    kt_free(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t table_len(KvTable *t) { return t->n_keys; }

static int table_contains(KvTable *t, PyObject *arg) {
    uint64_t key;
    if (kt_read_u64(arg, &key) < 0) return -1;
    return kt_find(t, key) != NIL;
}


static PyObject *store_common(KvTable *t, PyObject *slot_arg, PyObject *parent_arg,
                              PyObject *hashes_arg, uint64_t *keys, Py_ssize_t n_keys) {
    uint32_t slot;
    uint64_t parent;
    Py_ssize_t n;
    if (kt_read_slot(slot_arg, &slot) < 0 || kt_read_u64(parent_arg, &parent) < 0) return NULL;
    uint64_t *hashes = read_u64s(hashes_arg, &n);
    if (hashes == NULL) return NULL;
    Py_ssize_t fresh = -1;
    if (n != n_keys) {
        PyErr_SetString(PyExc_ValueError, "one key per engine hash");
    } else {
        /* The table work without the GIL: the HTTP thread's Python runs meanwhile. Safe because
         * every caller holds the index lock and nothing here touches a Python object. */
        Py_BEGIN_ALLOW_THREADS
        fresh = kt_store(t, slot, parent, hashes, keys, n);
        Py_END_ALLOW_THREADS
        if (fresh < 0) PyErr_NoMemory();
    }
    PyMem_Free(hashes);
    return fresh < 0 ? NULL : PyLong_FromSsize_t(fresh);
}

static PyObject *table_store(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(5, "store(slot, parent, hashes, token_ids, extras)");
    PyObject *extras = args[4] == Py_None ? NULL : args[4];
    if (!PyList_Check(args[2]) || (extras != NULL && !PyList_Check(extras))) {
        PyErr_SetString(PyExc_TypeError, "hashes and extras must be lists");
        return NULL;
    }
    Py_ssize_t n_blocks = PyList_GET_SIZE(args[2]);
    if (extras != NULL && PyList_GET_SIZE(extras) != n_blocks) {
        PyErr_SetString(PyExc_ValueError, "extras must have one entry per block");
        return NULL;
    }
    uint64_t parent;
    if (kt_read_u64(args[1], &parent) < 0) return NULL;
    Py_ssize_t n_tokens = n_blocks * t->block_size;
    /* The usual event (a few dozen blocks) parses into the stack: no allocation per event. */
    uint32_t stack_tokens[STACK_TOKENS];
    uint64_t stack_keys[STACK_TOKENS / 16];
    uint32_t *tokens = stack_tokens, *heap_tokens = NULL;
    uint64_t *keys = stack_keys, *heap_keys = NULL;
    Py_ssize_t got;
    PyObject *result = NULL;
    if (PyBytes_Check(args[3]) || !PySequence_Check(args[3])) { /* a msgpack array */
        Py_buffer view;
        if (PyObject_GetBuffer(args[3], &view, PyBUF_SIMPLE) < 0) return NULL;
        if (n_tokens > STACK_TOKENS) {
            tokens = heap_tokens = PyMem_Malloc((size_t)n_tokens * sizeof(uint32_t));
        }
        got = tokens == NULL ? (PyErr_NoMemory(), -1)
                             : kv_tokens_from_msgpack(view.buf, view.len, tokens, n_tokens);
        PyBuffer_Release(&view);
    } else {
        got = kv_tokens_of(args[3], &heap_tokens);
        tokens = heap_tokens;
    }
    if (n_blocks > STACK_TOKENS / 16) {
        keys = heap_keys = PyMem_Malloc((size_t)n_blocks * sizeof(uint64_t));
    }
    if (got < 0) {
        /* the error is set */
    } else if (keys == NULL) {
        PyErr_NoMemory();
    } else if (got != n_tokens) {
        PyErr_Format(PyExc_ValueError, "tokens: %zd token ids for %zd blocks", got, n_blocks);
    } else if (kv_chain(parent, tokens, t->block_size, n_blocks, extras, keys) == 0) {
        result = store_common(t, args[0], args[1], args[2], keys, n_blocks);
    }
    PyMem_Free(heap_tokens);
    PyMem_Free(heap_keys);
    return result;
}

static PyObject *table_store_keys(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(4, "store_keys(slot, parent, hashes, keys)");
    Py_ssize_t n;
    uint64_t *keys = read_u64s(args[3], &n);
    if (keys == NULL) return NULL;
    PyObject *result = store_common(t, args[0], args[1], args[2], keys, n);
    PyMem_Free(keys);
    return result;
}

static PyObject *table_remove_plain(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    /* remove_plain(slot, hashes[, removed_keys]): with a list, the keys of the blocks released
       are appended to it (the index remembers them for explain). */
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "remove_plain(slot, hashes[, removed_keys])");
        return NULL;
    }
    PyObject *out_keys = nargs == 3 ? args[2] : NULL;
    if (out_keys != NULL && !PyList_Check(out_keys)) {
        PyErr_SetString(PyExc_TypeError, "removed_keys must be a list");
        return NULL;
    }
    uint32_t slot;
    Py_ssize_t n;
    if (kt_read_slot(args[0], &slot) < 0) return NULL;
    uint64_t *hashes = read_u64s(args[1], &n);
    if (hashes == NULL) return NULL;
    uint64_t *released = NULL;
    if (out_keys != NULL && n > 0) {
        released = PyMem_Malloc((size_t)n * sizeof(uint64_t));
        if (released == NULL) {
            PyMem_Free(hashes);
            return PyErr_NoMemory();
        }
    }
    Py_ssize_t removed = 0, n_missing = 0;
    /* Without the GIL, as store_common; ``hashes`` is compacted to the unmapped ones. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key = slot < t->n_slots ? kv_map_pop(&t->maps[slot], hashes[i]) : 0;
        if (key == 0) {
            hashes[n_missing++] = hashes[i];
            continue;
        }
        uint32_t idx = kt_find(t, key); /* absent: a dangling entry, the mapping goes anyway */
        if (idx != NIL && kt_has(t, idx, slot)) {
            kt_release(t, idx, slot);
            if (released != NULL) released[removed] = key;
            removed++;
        }
    }
    Py_END_ALLOW_THREADS
    int failed = 0;
    for (Py_ssize_t i = 0; released != NULL && i < removed && !failed; i++) {
        PyObject *k = PyLong_FromUnsignedLongLong(released[i]);
        failed = k == NULL || PyList_Append(out_keys, k) < 0;
        Py_XDECREF(k);
    }
    PyMem_Free(released);
    PyObject *missing = failed ? NULL : PyList_New(n_missing);
    for (Py_ssize_t i = 0; missing != NULL && i < n_missing; i++) {
        PyObject *h = PyLong_FromUnsignedLongLong(hashes[i]);
        if (h == NULL) Py_CLEAR(missing);
        else PyList_SET_ITEM(missing, i, h);
    }
    PyMem_Free(hashes);
    if (missing == NULL) return NULL;
    return Py_BuildValue("(nN)", removed, missing);
}

static PyObject *table_unmap(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "unmap(slot, hash)");
    uint32_t slot;
    uint64_t hash;
    if (kt_read_slot(args[0], &slot) < 0 || kt_read_u64(args[1], &hash) < 0) return NULL;
    if (slot < t->n_slots) kv_map_pop(&t->maps[slot], hash);
    Py_RETURN_NONE;
}

static PyObject *table_release(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "release(slot, key)");
    uint32_t slot;
    uint64_t key;
    if (kt_read_slot(args[0], &slot) < 0 || kt_read_u64(args[1], &key) < 0) return NULL;
    uint32_t idx = kt_find(t, key);
    if (idx == NIL || slot >= t->n_slots || !kt_has(t, idx, slot)) Py_RETURN_FALSE;
    kt_release(t, idx, slot);
    Py_RETURN_TRUE;
}

static PyObject *table_clear_slot(KvTable *t, PyObject *arg) {
    uint32_t slot;
    if (kt_read_slot(arg, &slot) < 0) return NULL;
    return PyLong_FromLongLong(kt_clear_slot(t, slot));
}

static PyObject *table_evict(KvTable *t, PyObject *arg) {
    unsigned long target = PyLong_AsUnsignedLong(arg);
    if (target == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t evicted = kt_evict(t, target > UINT32_MAX ? UINT32_MAX : (uint32_t)target, NULL);
    return evicted < 0 ? PyErr_NoMemory() : PyLong_FromSsize_t(evicted);
}

/* ``evict`` returning the evicted keys: a context with per-copy breakdowns (Python) cleans
 * exactly those, instead of scanning every breakdown. */
static PyObject *table_evict_keys(KvTable *t, PyObject *arg) {
    unsigned long target = PyLong_AsUnsignedLong(arg);
    if (target == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    uint32_t bound = target > UINT32_MAX ? UINT32_MAX : (uint32_t)target;
    size_t room = t->n_keys > bound ? t->n_keys - bound : 0;
    uint64_t *keys = PyMem_RawMalloc((room ? room : 1) * sizeof(uint64_t));
    if (keys == NULL) return PyErr_NoMemory();
    Py_ssize_t evicted = kt_evict(t, bound, keys);
    PyObject *out = evicted < 0 ? PyErr_NoMemory() : PyList_New(evicted);
    for (Py_ssize_t i = 0; out != NULL && i < evicted; i++) {
        PyObject *key = PyLong_FromUnsignedLongLong(keys[i]);
        if (key == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, key);
    }
    PyMem_RawFree(keys);
    return out;
}


/* ---- the reads ---------------------------------------------------------------------- */

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
static PyObject *kt_walk(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
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
    /* Token ids as a list of ints, or already as uint32 (a buffer of format "I", such as
     * ``json_token_ids``' answer cast by a memoryview): then no per-token conversion at all. */
    Py_buffer ids = {0};
    PyObject *seq = NULL;
    Py_ssize_t n_tokens;
    if (PyObject_CheckBuffer(args[0])) {
        if (PyObject_GetBuffer(args[0], &ids, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
        if (ids.itemsize != sizeof(uint32_t) || ids.format == NULL || strcmp(ids.format, "I")) {
            PyBuffer_Release(&ids);
            PyErr_SetString(PyExc_TypeError, "a token_ids buffer must be of uint32 (format I)");
            return NULL;
        }
        n_tokens = ids.len / (Py_ssize_t)sizeof(uint32_t);
    } else {
        seq = PySequence_Fast(args[0], "token_ids must be a sequence of ints");
        if (seq == NULL) return NULL;
        n_tokens = PySequence_Fast_GET_SIZE(seq);
    }
    PyObject *runs = PyDict_New();
    PyObject *keys = PyObject_IsTrue(args[3]) ? PyList_New(0) : Py_NewRef(Py_None);
    Py_ssize_t bs = t->block_size;
    Py_ssize_t n_blocks = n_tokens / bs;
    Py_ssize_t salt_len = salt == Py_None ? 0 : PyBytes_GET_SIZE(salt);
    /* Sized by the query, not by the block size alone: a context's block size comes from events,
     * and a query shorter than one block (n_blocks 0) allocates nothing to speak of. */
    Py_ssize_t chunk_blocks = n_blocks < WALK_CHUNK ? n_blocks : WALK_CHUNK;
    size_t block_bytes = n_blocks ? (size_t)bs * sizeof(uint32_t) : 0;
    uint32_t *converted = seq == NULL ? NULL : PyMem_Malloc((size_t)chunk_blocks * block_bytes + 1);
    uint32_t *tokens = converted;
    char *scratch = PyMem_Malloc(block_bytes + (size_t)salt_len + 1);
    Py_ssize_t position = 0;
    uint64_t key = KV_ROOT;
    int failed = runs == NULL || keys == NULL;
    if (!failed && ((seq != NULL && converted == NULL) || scratch == NULL)) {
        PyErr_NoMemory();
        failed = 1;
    }
    while (!failed && any && position < n_blocks) {
        Py_ssize_t chunk = n_blocks - position < WALK_CHUNK ? n_blocks - position : WALK_CHUNK;
        if (seq == NULL) {
            tokens = (uint32_t *)ids.buf + position * bs;
        } else if (kv_tokens_from_items(PySequence_Fast_ITEMS(seq), position * bs, chunk * bs,
                                        tokens)) {
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
    PyMem_Free(converted);
    PyMem_Free(scratch);
    if (seq == NULL) PyBuffer_Release(&ids);
    else Py_DECREF(seq);
    if (failed) {
        Py_XDECREF(runs);
        Py_XDECREF(keys);
        return NULL;
    }
    return Py_BuildValue("(NN)", runs, keys);
}

static PyObject *kt_py_holders(KvTable *t, PyObject *arg) {
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

static PyObject *kt_py_resolve(KvTable *t, PyObject *const *args, Py_ssize_t nargs) {
    ARGS(2, "resolve(slot, hash)");
    uint32_t slot;
    uint64_t hash;
    if (kt_read_slot(args[0], &slot) < 0 || kt_read_u64(args[1], &hash) < 0) return NULL;
    uint64_t key = slot < t->n_slots ? kv_map_get(&t->maps[slot], hash) : 0;
    if (key == 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(key);
}

static PyObject *kt_py_count(KvTable *t, PyObject *arg) {
    uint32_t slot;
    if (kt_read_slot(arg, &slot) < 0) return NULL;
    return PyLong_FromLongLong(slot < t->n_slots ? t->counts[slot] : 0);
}

static PyObject *kt_py_sizes(KvTable *t, PyObject *unused) {
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

/* ---- the type object ---------------------------------------------------------------- */

static PyMethodDef table_methods[] = {
    {"store", (PyCFunction)(void (*)(void))table_store, METH_FASTCALL, NULL},
    {"store_keys", (PyCFunction)(void (*)(void))table_store_keys, METH_FASTCALL, NULL},
    {"remove_plain", (PyCFunction)(void (*)(void))table_remove_plain, METH_FASTCALL, NULL},
    {"holders", (PyCFunction)kt_py_holders, METH_O, NULL},
    {"resolve", (PyCFunction)(void (*)(void))kt_py_resolve, METH_FASTCALL, NULL},
    {"unmap", (PyCFunction)(void (*)(void))table_unmap, METH_FASTCALL, NULL},
    {"release", (PyCFunction)(void (*)(void))table_release, METH_FASTCALL, NULL},
    {"clear_slot", (PyCFunction)table_clear_slot, METH_O, NULL},
    {"evict", (PyCFunction)table_evict, METH_O, NULL},
    {"evict_keys", (PyCFunction)table_evict_keys, METH_O, NULL},
    {"count", (PyCFunction)kt_py_count, METH_O, NULL},
    {"sizes", (PyCFunction)kt_py_sizes, METH_NOARGS, NULL},
    {"walk", (PyCFunction)(void (*)(void))kt_walk, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods table_as_sequence = {
    .sq_length = (lenfunc)table_len,
    .sq_contains = (objobjproc)table_contains,
};

PyTypeObject KvKeyTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvsync._native.KeyTable",
    .tp_basicsize = sizeof(KvTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One prefix-index context's keys, holders, recency and engine-hash maps.",
    .tp_new = table_new,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
    .tp_as_sequence = &table_as_sequence,
};
