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
 *
 * Three fast paths for the commonest values, each the twin of a Python function in
 * headerparse that it answers for, or declines (the caller then runs the Python one):
 *
 * message_id(raw, max_text) -> str | None: headerparse._message_id for a value of ASCII
 *   bytes without ESC (the text between the first '<' and the next '>', or the whole value,
 *   without white space and control characters, cut to max_text); None (declined) otherwise.
 * text(raw, max_text) -> str | None: headerparse._text for a value of ASCII bytes without
 *   ESC and without "=?" (runs of white space and control characters become one space, none
 *   at either end, cut to max_text); None (declined) otherwise.
 * date(raw) -> int | None | False: headerparse._date's fast path, the form
 *   "[Day,] D Mon YYYY HH:MM[:SS] +ZZZZ" followed by white space, '(' or the end: the UTC
 *   epoch, or None when a field is out of range (no 30 February, hours under 24, offsets
 *   under 24 h, years 1-9999); False (declined: the general parser decides) when the value
 *   is not of that form or the month is not an English abbreviation.
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


/* ---- fast paths ----------------------------------------------------------------------- */

/* Python's str.split() separators among ASCII (0x09-0x0d, 0x1c-0x1f, space) and the
 * characters str.isprintable() refuses (the other controls, DEL): everything outside
 * 0x21-0x7e. */
static inline int is_word(unsigned char c) { return c >= 0x21 && c <= 0x7e; }

/* 1 when raw is all ASCII without ESC (the values the fast paths take). */
static int plain_ascii(const unsigned char *d, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (d[i] >= 0x80 || d[i] == 0x1b)
            return 0;
    return 1;
}

static PyObject *message_id(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n, max_text;
    if (!PyArg_ParseTuple(args, "y#n:message_id", &d, &n, &max_text))
        return NULL;
    if (!plain_ascii(d, n))
        Py_RETURN_NONE;
    Py_ssize_t a = 0, b = n;
    const unsigned char *lt = memchr(d, '<', (size_t)n);
    if (lt != NULL) {
        a = lt - d + 1;
        const unsigned char *gt = memchr(d + a, '>', (size_t)(n - a));
        if (gt != NULL)
            b = gt - d;
    }
    char small[256];
    char *out = (b - a) <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)(b - a));
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t k = 0;
    for (Py_ssize_t i = a; i < b && k < max_text; i++)
        if (is_word(d[i]))
            out[k++] = (char)d[i];
    PyObject *r = PyUnicode_DecodeASCII(out, k, NULL);
    if (out != small)
        PyMem_Free(out);
    return r;
}

static PyObject *text(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n, max_text;
    if (!PyArg_ParseTuple(args, "y#n:text", &d, &n, &max_text))
        return NULL;
    if (!plain_ascii(d, n))
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i + 1 < n; i++)
        if (d[i] == '=' && d[i + 1] == '?')
            Py_RETURN_NONE;
    char small[512];
    char *out = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t k = 0;
    int gap = 0;
    for (Py_ssize_t i = 0; i < n && k < max_text; i++) {
        if (is_word(d[i])) {
            if (gap && k > 0) {
                out[k++] = ' ';
                if (k >= max_text)
                    break;
            }
            out[k++] = (char)d[i];
            gap = 0;
        } else {
            gap = 1;
        }
    }
    PyObject *r = PyUnicode_DecodeASCII(out, k, NULL);
    if (out != small)
        PyMem_Free(out);
    return r;
}

static inline int is_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0d); }  /* bytes \s */
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(unsigned char c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }

static const int DAYS_IN[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
static const char MONTHS[12][4] = {"jan", "feb", "mar", "apr", "may", "jun",
                                   "jul", "aug", "sep", "oct", "nov", "dec"};

static PyObject *date(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#:date", &d, &n))
        return NULL;
    Py_ssize_t i = 0;
    while (i < n && is_space(d[i]))
        i++;
    if (i + 3 < n && is_alpha(d[i]) && is_alpha(d[i + 1]) && is_alpha(d[i + 2]) && d[i + 3] == ',') {
        i += 4;
        while (i < n && is_space(d[i]))
            i++;
    }
    /* D */
    if (!(i < n && is_digit(d[i])))
        Py_RETURN_FALSE;
    int day = d[i++] - '0';
    if (i < n && is_digit(d[i]))
        day = day * 10 + (d[i++] - '0');
    if (!(i < n && is_space(d[i])))
        Py_RETURN_FALSE;
    while (i < n && is_space(d[i]))
        i++;
    /* Mon */
    if (!(i + 2 < n && is_alpha(d[i]) && is_alpha(d[i + 1]) && is_alpha(d[i + 2])))
        Py_RETURN_FALSE;
    char mon[3] = {(char)(d[i] | 32), (char)(d[i + 1] | 32), (char)(d[i + 2] | 32)};
    i += 3;
    if (!(i < n && is_space(d[i])))
        Py_RETURN_FALSE;
    while (i < n && is_space(d[i]))
        i++;
    /* YYYY */
    if (!(i + 3 < n && is_digit(d[i]) && is_digit(d[i + 1]) && is_digit(d[i + 2]) && is_digit(d[i + 3])))
        Py_RETURN_FALSE;
    int year = (d[i] - '0') * 1000 + (d[i + 1] - '0') * 100 + (d[i + 2] - '0') * 10 + (d[i + 3] - '0');
    i += 4;
    if (!(i < n && is_space(d[i])))
        Py_RETURN_FALSE;
    while (i < n && is_space(d[i]))
        i++;
    /* HH:MM[:SS] */
    if (!(i + 4 < n && is_digit(d[i]) && is_digit(d[i + 1]) && d[i + 2] == ':' && is_digit(d[i + 3])
          && is_digit(d[i + 4])))
        Py_RETURN_FALSE;
    int hour = (d[i] - '0') * 10 + (d[i + 1] - '0');
    int minute = (d[i + 3] - '0') * 10 + (d[i + 4] - '0');
    int sec = 0;
    i += 5;
    if (i < n && d[i] == ':') {
        if (!(i + 2 < n && is_digit(d[i + 1]) && is_digit(d[i + 2])))
            Py_RETURN_FALSE;      /* ':' without two digits: neither form matches */
        sec = (d[i + 1] - '0') * 10 + (d[i + 2] - '0');
        i += 3;
    }
    while (i < n && is_space(d[i]))
        i++;
    /* +ZZZZ */
    if (!(i + 4 < n && (d[i] == '+' || d[i] == '-') && is_digit(d[i + 1]) && is_digit(d[i + 2])
          && is_digit(d[i + 3]) && is_digit(d[i + 4])))
        Py_RETURN_FALSE;
    int neg = d[i] == '-';
    long tz = ((d[i + 1] - '0') * 10 + (d[i + 2] - '0')) * 3600L + ((d[i + 3] - '0') * 10 + (d[i + 4] - '0')) * 60L;
    i += 5;
    if (!(i == n || is_space(d[i]) || d[i] == '('))
        Py_RETURN_FALSE;
    int mo = 0;
    for (int k = 0; k < 12; k++)
        if (mon[0] == MONTHS[k][0] && mon[1] == MONTHS[k][1] && mon[2] == MONTHS[k][2])
            mo = k + 1;
    if (mo == 0)
        Py_RETURN_FALSE;          /* not an English month: the general parser decides */
    /* from here on, the form matched: out of range is None, as in the Python fast path */
    if (day < 1 || day > DAYS_IN[mo] || year < 1 || tz >= 86400 || hour > 23 || minute > 59 || sec > 60)
        Py_RETURN_NONE;
    if (mo == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
        Py_RETURN_NONE;
    if (neg)
        tz = -tz;
    /* days from civil (H. Hinnant), 1970-01-01 = 0; every quantity here is >= 0 but days */
    long long yy = year - (mo <= 2);
    long long era = yy / 400;
    long long yoe = yy - era * 400;
    long long doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    long long days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    return PyLong_FromLongLong(days * 86400 + hour * 3600LL + minute * 60LL + (sec < 60 ? sec : 59) - tz);
}

static PyMethodDef methods[] = {
    {"fields", fields, METH_VARARGS,
     "fields(data, start, limit, p_no_end, p_obsolete) -> (values, problems)"},
    {"message_id", message_id, METH_VARARGS, "message_id(raw, max_text) -> str | None (declined)"},
    {"text", text, METH_VARARGS, "text(raw, max_text) -> str | None (declined)"},
    {"date", date, METH_VARARGS, "date(raw) -> epoch | None (out of range) | False (declined)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hscan",
    "The header block's wanted fields, cut in compiled code (see dmbackup.archive.headerparse).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__hscan(void) { return PyModule_Create(&module); }
