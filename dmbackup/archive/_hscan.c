/* dmbackup.archive._hscan: the header block's wanted fields, cut in compiled code.
 *
 * fields(data, start, limit) -> (values, problems)
 *
 * The same answer as dmbackup.archive.headerparse._fields_py (one findall of a regular
 * expression) for every input; tests/test_hscan.py checks the two against each other on
 * hostile and random header blocks. ``values`` is a tuple of 8 items, in the order of
 * headerparse.SLOTS (message-id, date, from, to, cc, subject, content-type,
 * content-disposition): the raw value of the first occurrence of that field (the bytes after
 * the colon, continuation lines and their line breaks included), or None when the field is
 * absent. ``problems`` has P_NO_END (1 << 5) when no empty line ends the block before
 * ``limit`` and P_OBSOLETE (1 << 6) when the first occurrence of a wanted field has white
 * space before its colon. The two bit values are passed in by the caller, so they have one
 * definition (dmbackup.archive.headerindex).
 *
 * The rules, as the regular expression has them:
 *  - a field starts at ``start`` or right after a '\n'; its name is one of the eight,
 *    in any ASCII case, then any run of ' ' and '\t', then ':';
 *  - its value runs to the next '\n' that is not followed by ' ' or '\t' (or to ``limit``);
 *  - the block ends at the first '\n' (after ``start``) followed by '\n' or by "\r\n";
 *    nothing after it is read;
 *  - nothing at or beyond ``limit`` (at most len(data)) is read.
 * It reads a buffer it does not keep and never writes to it; every index is checked against
 * ``limit`` before it is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define NSLOTS 8

static const struct { const char *name; Py_ssize_t len; int slot; } NAMES[] = {
    {"message-id", 10, 0},
    {"date", 4, 1},
    {"from", 4, 2},
    {"to", 2, 3},
    {"cc", 2, 4},
    {"subject", 7, 5},
    {"content-type", 12, 6},
    {"content-disposition", 19, 7},
};
#define NNAMES ((int)(sizeof(NAMES) / sizeof(NAMES[0])))

static inline unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* A wanted field starting at p: its slot, and (through *colon) the index just after its
 * colon and (through *ws) whether white space came before the colon; -1 when none. */
static int field_at(const unsigned char *d, Py_ssize_t p, Py_ssize_t limit,
                    Py_ssize_t *colon, int *ws) {
    if (p >= limit)
        return -1;
    unsigned char c0 = lower(d[p]);
    if (c0 != 'm' && c0 != 'd' && c0 != 'f' && c0 != 't' && c0 != 'c' && c0 != 's')
        return -1;
    for (int k = 0; k < NNAMES; k++) {
        Py_ssize_t n = NAMES[k].len;
        if (NAMES[k].name[0] != (char)c0 || limit - p < n)
            continue;
        Py_ssize_t i = 1;
        while (i < n && lower(d[p + i]) == (unsigned char)NAMES[k].name[i])
            i++;
        if (i < n)
            continue;
        Py_ssize_t q = p + n;
        while (q < limit && (d[q] == ' ' || d[q] == '\t'))
            q++;
        if (q < limit && d[q] == ':') {
            *colon = q + 1;
            *ws = q > p + n;
            return NAMES[k].slot;
        }
        /* the name was there but no colon after it: no other name is spelled by these
           bytes (none is a prefix of another), so none matches either */
        return -1;
    }
    return -1;
}

/* The end of a value that starts at p: the first '\n' not followed by ' ' or '\t', or limit. */
static Py_ssize_t value_end(const unsigned char *d, Py_ssize_t p, Py_ssize_t limit) {
    for (;;) {
        const unsigned char *nl = memchr(d + p, '\n', (size_t)(limit - p));
        if (nl == NULL)
            return limit;
        Py_ssize_t e = nl - d;
        if (e + 1 < limit && (d[e + 1] == ' ' || d[e + 1] == '\t')) {
            p = e + 1;
            continue;
        }
        return e;
    }
}

static PyObject *fields(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, limit;
    long p_no_end, p_obsolete;
    if (!PyArg_ParseTuple(args, "y*nnll:fields", &buf, &start, &limit, &p_no_end, &p_obsolete))
        return NULL;
    if (limit > buf.len)
        limit = buf.len;
    if (start < 0)
        start = 0;
    const unsigned char *d = (const unsigned char *)buf.buf;
    Py_ssize_t vstart[NSLOTS], vend[NSLOTS];
    int vws[NSLOTS];
    for (int k = 0; k < NSLOTS; k++)
        vstart[k] = -1;
    int ended = 0;

    Py_ssize_t colon;
    int ws;
    int slot = field_at(d, start, limit, &colon, &ws);
    Py_ssize_t pos = start;
    if (slot >= 0) {
        vstart[slot] = colon;
        vend[slot] = value_end(d, colon, limit);
        vws[slot] = ws;
        pos = vend[slot];
    }
    while (pos < limit) {
        const unsigned char *nl = memchr(d + pos, '\n', (size_t)(limit - pos));
        if (nl == NULL)
            break;
        Py_ssize_t q = (nl - d) + 1;
        if (q >= limit)
            break;
        if (d[q] == '\n' || (d[q] == '\r' && q + 1 < limit && d[q + 1] == '\n')) {
            ended = 1;
            break;
        }
        slot = field_at(d, q, limit, &colon, &ws);
        if (slot < 0) {
            pos = q;
            continue;
        }
        Py_ssize_t e = value_end(d, colon, limit);
        if (vstart[slot] < 0) {
            vstart[slot] = colon;
            vend[slot] = e;
            vws[slot] = ws;
        }
        pos = e;
    }

    long prob = ended ? 0 : p_no_end;
    PyObject *values = PyTuple_New(NSLOTS);
    if (values == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    for (int k = 0; k < NSLOTS; k++) {
        PyObject *v;
        if (vstart[k] < 0) {
            v = Py_None;
            Py_INCREF(v);
        } else {
            v = PyBytes_FromStringAndSize((const char *)d + vstart[k], vend[k] - vstart[k]);
            if (v == NULL) {
                Py_DECREF(values);
                PyBuffer_Release(&buf);
                return NULL;
            }
            if (vws[k])
                prob |= p_obsolete;
        }
        PyTuple_SET_ITEM(values, k, v);
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Nl)", values, prob);
}

static PyMethodDef methods[] = {
    {"fields", fields, METH_VARARGS,
     "fields(data, start, limit, p_no_end, p_obsolete) -> (values, problems)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hscan",
    "The header block's wanted fields, cut in compiled code (see dmbackup.archive.headerparse).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__hscan(void) { return PyModule_Create(&module); }
