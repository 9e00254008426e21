/* Token ids -> uint32, and chained block keys (see kvsync/index/keys.py for the key definition). */
#include "native.h"

#define TOKEN_LIMIT 4294967296ULL /* token ids are in [0, 2^32) */

static Py_ssize_t tokens_error(const char *what, long long value) {
    PyErr_Format(PyExc_ValueError, "tokens: %s %lld", what, value);
    return -1;
}

static inline uint64_t big_endian(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

Py_ssize_t kv_msgpack_array_len(const uint8_t **p, const uint8_t *end) {
    if (*p >= end) return tokens_error("token_ids is empty: bytes", 0);
    uint8_t marker = *(*p)++;
    if (marker >= 0x90 && marker <= 0x9f) return marker & 0x0f;
    if (marker == 0xdc || marker == 0xdd) {
        int width = marker == 0xdc ? 2 : 4;
        if (end - *p < width) return tokens_error("truncated array header", marker);
        Py_ssize_t count = (Py_ssize_t)big_endian(*p, width);
        *p += width;
        return count;
    }
    return tokens_error("token_ids is not an array, msgpack marker", marker);
}

/* One token id with any int marker but the three common ones; -1 with an error set. */
static int64_t odd_token(const uint8_t **p, const uint8_t *end, Py_ssize_t i) {
    uint8_t m = *(*p)++;
    int width, is_signed = 0;
    if (m >= 0xe0) return tokens_error("negative token id at index", i);
    switch (m) {
        case 0xcc: width = 1; break;
        case 0xce: width = 4; break;
        case 0xcf: width = 8; break;
        case 0xd0: width = 1; is_signed = 1; break;
        case 0xd1: width = 2; is_signed = 1; break;
        case 0xd2: width = 4; is_signed = 1; break;
        case 0xd3: width = 8; is_signed = 1; break;
        default: return tokens_error("token id is not an int at index", i);
    }
    if (end - *p < width) return tokens_error("truncated token id at index", i);
    uint64_t value = big_endian(*p, width);
    *p += width;
    if (is_signed && (value >> (8 * width - 1)) & 1) {
        return tokens_error("negative token id at index", i);
    }
    if (value >= TOKEN_LIMIT) return tokens_error("token id >= 2^32 at index", i);
    return (int64_t)value;
}

Py_ssize_t kv_tokens_from_msgpack(const uint8_t *data, Py_ssize_t len, uint32_t *out,
                                  Py_ssize_t cap) {
    const uint8_t *p = data, *end = data + len;
    Py_ssize_t count = kv_msgpack_array_len(&p, end);
    if (count < 0) return -1;
    if (out != NULL && count > cap) return tokens_error("more token ids than expected", count);
    for (Py_ssize_t i = 0; i < count; i++) {
        /* uint16 and uint32, the encodings of nearly every token id, without a branch between
         * them: ids of a large vocabulary straddle 2^16, so which one comes next is a coin toss
         * the branch predictor loses (5.6 -> 2.8 ns a token on the index benchmark's ids,
         * BENCHMARKS.md "## Index"). Four bytes are read either way; a uint16 shifts two out. */
        uint32_t value;
        unsigned marker = p < end ? *p : 0;
        if (end - p >= 5 && marker - 0xcdu <= 1u) {
            uint32_t wide = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
            unsigned is_u32 = marker - 0xcdu; /* 0: uint16, 1: uint32 */
            value = wide >> (16 - 16 * is_u32);
            p += 3 + 2 * is_u32;
        } else if (p < end && marker < 0x80) {
            value = marker;
            p++;
        } else if (end - p >= 3 && marker == 0xcd) {
            value = (uint32_t)p[1] << 8 | p[2];
            p += 3;
        } else {
            if (p >= end) return tokens_error("truncated token_ids at index", i);
            int64_t odd = odd_token(&p, end, i);
            if (odd < 0) return -1;
            value = (uint32_t)odd;
        }
        if (out != NULL) out[i] = value;
    }
    if (p != end) return tokens_error("bytes after the token_ids array", end - p);
    return count;
}

int kv_tokens_from_items(PyObject **items, Py_ssize_t first, Py_ssize_t count, uint32_t *out) {
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = items[first + i];
        if (!PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "token id at %zd is not an int", first + i);
            return -1;
        }
        unsigned long value = PyLong_AsUnsignedLong(item);
        if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
        if (value >= TOKEN_LIMIT) {
            PyErr_Format(PyExc_OverflowError, "token id at %zd is >= 2^32", first + i);
            return -1;
        }
        out[i] = (uint32_t)value;
    }
    return 0;
}

int kv_chain(uint64_t parent, const uint32_t *tokens, Py_ssize_t block_size,
             Py_ssize_t n_blocks, PyObject *extras, uint64_t *keys) {
    char stack_scratch[1024];
    char *scratch = stack_scratch;
    char *heap = NULL;
    uint64_t key = parent;
    for (Py_ssize_t i = 0; i < n_blocks; i++) {
        const char *extra = NULL;
        Py_ssize_t extra_len = 0;
        if (extras != NULL) {
            PyObject *item = PyList_GET_ITEM(extras, i);
            if (item != Py_None) {
                if (!PyBytes_Check(item)) {
                    PyErr_SetString(PyExc_TypeError, "extras must hold bytes or None");
                    PyMem_Free(heap);
                    return -1;
                }
                extra = PyBytes_AS_STRING(item);
                extra_len = PyBytes_GET_SIZE(item);
                Py_ssize_t need = block_size * (Py_ssize_t)sizeof(uint32_t) + extra_len;
                if (need > (Py_ssize_t)sizeof(stack_scratch)) {
                    PyMem_Free(heap);
                    heap = scratch = PyMem_Malloc((size_t)need);
                    if (heap == NULL) {
                        PyErr_NoMemory();
                        return -1;
                    }
                }
            }
        }
        key = kv_block_key(key, tokens + i * block_size, block_size, extra, extra_len, scratch);
        keys[i] = key;
        if (heap != NULL) {
            PyMem_Free(heap);
            heap = NULL;
            scratch = stack_scratch;
        }
    }
    return 0;
}

PyObject *kv_token_count(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = kv_tokens_from_msgpack(view.buf, view.len, NULL, 0);
    PyBuffer_Release(&view);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

Py_ssize_t kv_tokens_of(PyObject *token_ids, uint32_t **out) {
    *out = NULL;
    Py_ssize_t n;
    /* msgpack: bytes or msgspec.Raw (a buffer, not a sequence); an array('I') is a sequence */
    if (PyBytes_Check(token_ids) || (!PySequence_Check(token_ids) && PyObject_CheckBuffer(token_ids))) {
        Py_buffer view;
        if (PyObject_GetBuffer(token_ids, &view, PyBUF_SIMPLE) < 0) return -1;
        const uint8_t *p = view.buf;
        n = kv_msgpack_array_len(&p, p + view.len); /* to size the array: one parse below */
        if (n >= 0) {
            *out = PyMem_Malloc((size_t)(n + 1) * sizeof(uint32_t));
            if (*out == NULL) n = -1, PyErr_NoMemory();
            else if (kv_tokens_from_msgpack(view.buf, view.len, *out, n) < 0) {
                n = -1;
                PyMem_Free(*out);
                *out = NULL;
            }
        }
        PyBuffer_Release(&view);
        return n;
    }
    PyObject *seq = PySequence_Fast(token_ids, "token ids must be a sequence of ints");
    if (seq == NULL) return -1;
    n = PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Malloc((size_t)(n + 1) * sizeof(uint32_t));
    if (*out == NULL) {
        n = -1;
        PyErr_NoMemory();
    } else if (kv_tokens_from_items(PySequence_Fast_ITEMS(seq), 0, n, *out) < 0) {
        n = -1;
        PyMem_Free(*out);
        *out = NULL;
    }
    Py_DECREF(seq);
    return n;
}

/* chain(parent, token_ids, block_size, extras) -> list[int]: the keys of every full block. */
PyObject *kv_chain_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "chain(parent, token_ids, block_size, extras)");
        return NULL;
    }
    uint64_t parent = PyLong_AsUnsignedLongLong(args[0]);
    if (parent == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t block_size = PyLong_AsSsize_t(args[2]);
    if (block_size == -1 && PyErr_Occurred()) return NULL;
    if (block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be > 0");
        return NULL;
    }
    PyObject *extras = args[3] == Py_None ? NULL : args[3];
    if (extras != NULL && !PyList_Check(extras)) {
        PyErr_SetString(PyExc_TypeError, "extras must be a list or None");
        return NULL;
    }
    uint32_t *tokens;
    Py_ssize_t n_tokens = kv_tokens_of(args[1], &tokens);
    if (n_tokens < 0) return NULL;
    Py_ssize_t n_blocks = n_tokens / block_size;
    if (extras != NULL && PyList_GET_SIZE(extras) < n_blocks) {
        PyMem_Free(tokens);
        PyErr_SetString(PyExc_ValueError, "extras must have one entry per block");
        return NULL;
    }
    uint64_t *keys = PyMem_Malloc((size_t)(n_blocks + 1) * sizeof(uint64_t));
    PyObject *result = NULL;
    if (keys == NULL) {
        PyErr_NoMemory();
    } else if (kv_chain(parent, tokens, block_size, n_blocks, extras, keys) == 0) {
        result = PyList_New(n_blocks);
        for (Py_ssize_t i = 0; result != NULL && i < n_blocks; i++) {
            PyObject *key = PyLong_FromUnsignedLongLong(keys[i]);
            if (key == NULL) Py_CLEAR(result);
            else PyList_SET_ITEM(result, i, key);
        }
    }
    PyMem_Free(keys);
    PyMem_Free(tokens);
    return result;
}

static inline int json_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The ids of a JSON array of ints in [0, 2^32) into ``out``; their count, or -1 for anything
 * else (a float, a negative number, a string, a nested value). The text is valid JSON
 * (msgspec checked it), so this only has to tell an array of such ints from the rest. No
 * Python API: it runs without the GIL. */
static Py_ssize_t json_tokens(const unsigned char *p, const unsigned char *end, uint32_t *out) {
    Py_ssize_t n = 0;
    while (p < end && json_space(*p)) p++;
    if (p == end || *p++ != '[') return -1;
    while (p < end && json_space(*p)) p++;
    if (p < end && *p == ']') {
        p++;
    } else {
        for (;;) {
            while (p < end && json_space(*p)) p++;
            uint64_t value = 0;
            int digits = 0;
            for (; p < end && *p >= '0' && *p <= '9'; p++) {
                if (++digits > 10) return -1; /* >= 10^10: above 2^32 */
                value = value * 10 + (uint64_t)(*p - '0');
            }
            if (digits == 0 || value >= TOKEN_LIMIT) return -1;
            out[n++] = (uint32_t)value;
            while (p < end && json_space(*p)) p++;
            if (p == end) return -1;
            if (*p == ']') {
                p++;
                break;
            }
            if (*p++ != ',') return -1; /* '.', 'e': a float */
        }
    }
    while (p < end && json_space(*p)) p++;
    return p == end ? n : -1;
}

/* json_token_ids(json_array) -> bytes: the ids as uint32 in native byte order. */
PyObject *kv_json_token_ids(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer text;
    if (PyObject_GetBuffer(arg, &text, PyBUF_SIMPLE) < 0) return NULL;
    /* Every id but the last takes two bytes at least ("7,"), and "[7]" is three. */
    Py_ssize_t room = text.len / 2 + 1;
    PyObject *ids = PyBytes_FromStringAndSize(NULL, room * (Py_ssize_t)sizeof(uint32_t));
    if (ids == NULL) {
        PyBuffer_Release(&text);
        return NULL;
    }
    Py_ssize_t n;
    const unsigned char *start = text.buf;
    uint32_t *out = (uint32_t *)PyBytes_AS_STRING(ids);
    Py_BEGIN_ALLOW_THREADS
    n = json_tokens(start, start + text.len, out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&text);
    if (n < 0) {
        Py_DECREF(ids);
        PyErr_SetString(PyExc_ValueError, "tokens: not a JSON array of ints in [0, 2^32)");
        return NULL;
    }
    if (_PyBytes_Resize(&ids, n * (Py_ssize_t)sizeof(uint32_t)) < 0) return NULL;
    return ids;
}
