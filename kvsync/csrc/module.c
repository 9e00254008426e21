/* kvsync._native: the hot paths of the pure core in C (see native.h). */
#include "keytable.h"

static PyMethodDef native_methods[] = {
    {"token_count", (PyCFunction)kv_token_count, METH_O,
     "token_count(msgpack_array) -> int: validate a msgpack array of token ids in [0, 2^32)."},
    {"json_token_ids", (PyCFunction)kv_json_token_ids, METH_O,
     "json_token_ids(json_array) -> bytes: a JSON array of token ids as native uint32."},
    {"chain", (PyCFunction)(void (*)(void))kv_chain_py, METH_FASTCALL,
     "chain(parent, token_ids, block_size, extras) -> list[int]: chained block keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kvsync._native",
    .m_doc = "kvsync's native hot paths (see native.h).",
    .m_size = -1,
    .m_methods = native_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&KvKeyTableType) < 0) return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "KeyTable", (PyObject *)&KvKeyTableType) < 0 ||
        PyModule_AddObject(module, "ROOT", PyLong_FromUnsignedLongLong(KV_ROOT)) < 0) {
        /* (AddObject steals the reference only on success; a NULL value fails it) */
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
