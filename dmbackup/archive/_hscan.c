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
 * absent. ``problems`` has P_NO_END when no empty line ends the block before ``limit`` and
 * P_OBSOLETE when the first occurrence of a wanted field has white space before its colon.
 * The bit values are passed in by the caller, so they have one definition
 * (dmbackup.archive.headerindex).
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
 *
 * And one for the header index's writer:
 *
 * pack(cols, key, size, headers, prev, max_text) -> (prev, nbytes): one record appended to
 *   the open chunk's nine columns (``cols``: the bytearrays keys, sizes, flags, dates and the
 *   five text columns), exactly as headerindex.IndexWriter._pack_py does it (see the format in
 *   headerindex's docstring): the key's length byte and bytes, the size and the length of each
 *   text as LEB128 varints, the flag byte, the date as a zigzag varint of its step from
 *   ``prev``, each text cut to max_text characters and encoded as UTF-8 with surrogates passed
 *   through. Everything is checked and encoded before the first byte is appended, so a bad
 *   field (ValueError, with _pack_py's message) leaves the columns as they were. Returns the
 *   new ``prev`` (the record's date, or ``prev`` when it has none) and the byte count
 *   _pack_py adds to the chunk's total.
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

/* The first occurrence of each wanted field in d[start:limit] (vstart[k] = -1: absent);
 * 1 when an empty line ended the block. */
static int scan(const unsigned char *d, Py_ssize_t start, Py_ssize_t limit,
                Py_ssize_t *vstart, Py_ssize_t *vend, int *vws) {
    for (int k = 0; k < NSLOTS; k++)
        vstart[k] = -1;
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
            return 0;
        Py_ssize_t q = (nl - d) + 1;
        if (q >= limit)
            return 0;
        if (d[q] == '\n' || (d[q] == '\r' && q + 1 < limit && d[q + 1] == '\n'))
            return 1;
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
    return 0;
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
    int ended = scan(d, start, limit, vstart, vend, vws);

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

/* headerparse._message_id of d[0:n], or NULL without an error set: declined. */
static PyObject *mid_of(const unsigned char *d, Py_ssize_t n, Py_ssize_t max_text) {
    if (!plain_ascii(d, n))
        return NULL;
    Py_ssize_t a = 0, b = n;
    const unsigned char *lt = memchr(d, '<', (size_t)n);
    if (lt != NULL) {
        a = lt - d + 1;
        const unsigned char *gt = memchr(d + a, '>', (size_t)(n - a));
        if (gt != NULL)
            b = gt - d;
    }
    char small[256] = {0};
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

/* headerparse._text of d[0:n] (address = 0) or headerparse._address (address = 1: quotes
 * dropped when every one closes and no backslash is there), or NULL without an error set:
 * declined. */
static PyObject *text_of(const unsigned char *d, Py_ssize_t n, Py_ssize_t max_text, int address) {
    if (!plain_ascii(d, n))
        return NULL;
    Py_ssize_t quotes = 0;
    int backslash = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (d[i] == '=' && i + 1 < n && d[i + 1] == '?')
            return NULL;
        quotes += d[i] == '"';
        backslash |= d[i] == '\\';
    }
    int drop_quotes = 0;
    if (address && quotes) {
        if (backslash || (quotes & 1))
            return NULL;
        drop_quotes = 1;
    }
    char small[512] = {0};
    char *out = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t k = 0;
    int gap = 0;
    for (Py_ssize_t i = 0; i < n && k < max_text; i++) {
        if (drop_quotes && d[i] == '"')
            continue;
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

static PyObject *declined_or_error(PyObject *none_or_false) {
    if (PyErr_Occurred())
        return NULL;
    Py_INCREF(none_or_false);
    return none_or_false;
}

static PyObject *message_id(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n, max_text;
    if (!PyArg_ParseTuple(args, "y#n:message_id", &d, &n, &max_text))
        return NULL;
    PyObject *r = mid_of(d, n, max_text);
    return r != NULL ? r : declined_or_error(Py_None);
}

static PyObject *text(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n, max_text;
    int address = 0;
    if (!PyArg_ParseTuple(args, "y#n|p:text", &d, &n, &max_text, &address))
        return NULL;
    PyObject *r = text_of(d, n, max_text, address);
    return r != NULL ? r : declined_or_error(Py_None);
}

static inline int is_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0d); }  /* bytes \s */
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(unsigned char c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }

static const int DAYS_IN[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
static const char MONTHS[12][4] = {"jan", "feb", "mar", "apr", "may", "jun",
                                   "jul", "aug", "sep", "oct", "nov", "dec"};

/* headerparse._date's fast path on d[0:n]: 1 and the epoch in *out, 0 when a field is out of
 * range (None), -1 when declined (not the usual form). */
static int date_of(const unsigned char *d, Py_ssize_t n, long long *out) {
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
        return -1;
    int day = d[i++] - '0';
    if (i < n && is_digit(d[i]))
        day = day * 10 + (d[i++] - '0');
    if (!(i < n && is_space(d[i])))
        return -1;
    while (i < n && is_space(d[i]))
        i++;
    /* Mon */
    if (!(i + 2 < n && is_alpha(d[i]) && is_alpha(d[i + 1]) && is_alpha(d[i + 2])))
        return -1;
    char mon[3] = {(char)(d[i] | 32), (char)(d[i + 1] | 32), (char)(d[i + 2] | 32)};
    i += 3;
    if (!(i < n && is_space(d[i])))
        return -1;
    while (i < n && is_space(d[i]))
        i++;
    /* YYYY */
    if (!(i + 3 < n && is_digit(d[i]) && is_digit(d[i + 1]) && is_digit(d[i + 2]) && is_digit(d[i + 3])))
        return -1;
    int year = (d[i] - '0') * 1000 + (d[i + 1] - '0') * 100 + (d[i + 2] - '0') * 10 + (d[i + 3] - '0');
    i += 4;
    if (!(i < n && is_space(d[i])))
        return -1;
    while (i < n && is_space(d[i]))
        i++;
    /* HH:MM[:SS] */
    if (!(i + 4 < n && is_digit(d[i]) && is_digit(d[i + 1]) && d[i + 2] == ':' && is_digit(d[i + 3])
          && is_digit(d[i + 4])))
        return -1;
    int hour = (d[i] - '0') * 10 + (d[i + 1] - '0');
    int minute = (d[i + 3] - '0') * 10 + (d[i + 4] - '0');
    int sec = 0;
    i += 5;
    if (i < n && d[i] == ':') {
        if (!(i + 2 < n && is_digit(d[i + 1]) && is_digit(d[i + 2])))
            return -1;      /* ':' without two digits: neither form matches */
        sec = (d[i + 1] - '0') * 10 + (d[i + 2] - '0');
        i += 3;
    }
    while (i < n && is_space(d[i]))
        i++;
    /* +ZZZZ */
    if (!(i + 4 < n && (d[i] == '+' || d[i] == '-') && is_digit(d[i + 1]) && is_digit(d[i + 2])
          && is_digit(d[i + 3]) && is_digit(d[i + 4])))
        return -1;
    int neg = d[i] == '-';
    long tz = ((d[i + 1] - '0') * 10 + (d[i + 2] - '0')) * 3600L + ((d[i + 3] - '0') * 10 + (d[i + 4] - '0')) * 60L;
    i += 5;
    if (!(i == n || is_space(d[i]) || d[i] == '('))
        return -1;
    int mo = 0;
    for (int k = 0; k < 12; k++)
        if (mon[0] == MONTHS[k][0] && mon[1] == MONTHS[k][1] && mon[2] == MONTHS[k][2])
            mo = k + 1;
    if (mo == 0)
        return -1;          /* not an English month: the general parser decides */
    /* from here on, the form matched: out of range is None, as in the Python fast path */
    if (day < 1 || day > DAYS_IN[mo] || year < 1 || tz >= 86400 || hour > 23 || minute > 59 || sec > 60)
        return 0;
    if (mo == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
        return 0;
    if (neg)
        tz = -tz;
    /* days from civil (H. Hinnant), 1970-01-01 = 0; every quantity here is >= 0 but days */
    long long yy = year - (mo <= 2);
    long long era = yy / 400;
    long long yoe = yy - era * 400;
    long long doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    long long days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    *out = days * 86400 + hour * 3600LL + minute * 60LL + (sec < 60 ? sec : 59) - tz;
    return 1;
}


static PyObject *date(PyObject *self, PyObject *args) {
    const unsigned char *d;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#:date", &d, &n))
        return NULL;
    long long t;
    int r = date_of(d, n, &t);
    if (r < 0)
        Py_RETURN_FALSE;
    if (r == 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(t);
}

/* ---- the header index's writer ----------------------------------------------------------- */

static PyObject *S_message_id, *S_date, *S_from, *S_to, *S_cc, *S_subject, *S_attachments;

#define MAX_KEY 255
#define DATE_LIMIT (1LL << 40)
#define F_ATTACH 1
#define F_DATE 2

/* LEB128 of n into out (at least 10 bytes); the count of bytes written. */
static int put_uv(unsigned char *out, unsigned long long n) {
    int k = 0;
    while (n >= 0x80) {
        out[k++] = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    out[k++] = (unsigned char)n;
    return k;
}

/* Append len bytes to a bytearray (already checked to be one). */
static int append(PyObject *ba, const void *data, Py_ssize_t len) {
    Py_ssize_t old = PyByteArray_GET_SIZE(ba);
    if (PyByteArray_Resize(ba, old + len) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(ba) + old, data, (size_t)len);
    return 0;
}

/* A text field cut to max_text characters and encoded (a new bytes object), or NULL. */
static PyObject *encode_text(PyObject *headers, PyObject *name, Py_ssize_t max_text) {
    PyObject *v = PyObject_GetAttr(headers, name);
    if (v == NULL)
        return NULL;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%U must be str", name);
        Py_DECREF(v);
        return NULL;
    }
    if (PyUnicode_GET_LENGTH(v) > max_text) {
        PyObject *cut = PyUnicode_Substring(v, 0, max_text);
        Py_DECREF(v);
        if (cut == NULL)
            return NULL;
        v = cut;
    }
    PyObject *b;
    if (PyUnicode_IS_ASCII(v))
        b = PyBytes_FromStringAndSize((const char *)PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v));
    else
        b = PyUnicode_AsEncodedString(v, "utf-8", "surrogatepass");
    Py_DECREF(v);
    return b;
}

static PyObject *pack(PyObject *self, PyObject *args) {
    PyObject *cols, *key, *size_o, *headers;
    long long prev;
    Py_ssize_t max_text;
    if (!PyArg_ParseTuple(args, "O!OOOLn:pack", &PyList_Type, &cols, &key, &size_o, &headers, &prev, &max_text))
        return NULL;
    if (PyList_GET_SIZE(cols) != 9) {
        PyErr_SetString(PyExc_ValueError, "cols must be the nine columns");
        return NULL;
    }
    for (int k = 0; k < 9; k++)
        if (!PyByteArray_Check(PyList_GET_ITEM(cols, k))) {
            PyErr_SetString(PyExc_TypeError, "each column must be a bytearray");
            return NULL;
        }
    Py_buffer kb;
    if (!(PyBytes_Check(key) || PyByteArray_Check(key)) || PyObject_GetBuffer(key, &kb, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "key must be at most %d bytes", MAX_KEY);
        return NULL;
    }
    PyObject *texts[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *when_o = NULL, *result = NULL;
    if (kb.len > MAX_KEY) {
        PyErr_Format(PyExc_ValueError, "key must be at most %d bytes", MAX_KEY);
        goto done;
    }
    int overflow = 0;
    if (!PyLong_Check(size_o)) {
        PyErr_SetString(PyExc_TypeError, "size must be an int");
        goto done;
    }
    long long size = PyLong_AsLongLongAndOverflow(size_o, &overflow);
    if (size == -1 && PyErr_Occurred())
        goto done;
    if (overflow || size < 0) {
        PyErr_SetString(PyExc_ValueError, "size out of range");
        goto done;
    }
    when_o = PyObject_GetAttr(headers, S_date);
    if (when_o == NULL)
        goto done;
    int has_date = when_o != Py_None;
    long long when = 0;
    if (has_date) {
        if (!PyLong_Check(when_o)) {
            PyErr_SetString(PyExc_TypeError, "date must be an int or None");
            goto done;
        }
        when = PyLong_AsLongLongAndOverflow(when_o, &overflow);
        if (when == -1 && PyErr_Occurred())
            goto done;
        if (overflow || !(-DATE_LIMIT < when && when < DATE_LIMIT)) {
            PyErr_SetString(PyExc_ValueError, "date out of range");
            goto done;
        }
    }
    PyObject *names[5] = {S_message_id, S_from, S_to, S_cc, S_subject};
    for (int k = 0; k < 5; k++)
        if ((texts[k] = encode_text(headers, names[k], max_text)) == NULL)
            goto done;
    PyObject *att = PyObject_GetAttr(headers, S_attachments);
    if (att == NULL)
        goto done;
    int attach = PyObject_IsTrue(att);
    Py_DECREF(att);
    if (attach < 0)
        goto done;
    if (has_date && (prev <= -DATE_LIMIT || prev >= DATE_LIMIT)) {
        PyErr_SetString(PyExc_ValueError, "prev out of range");
        goto done;
    }

    /* everything checked and encoded: append */
    unsigned char tmp[16];
    int n;
    unsigned char klen = (unsigned char)kb.len;
    if (append(PyList_GET_ITEM(cols, 0), &klen, 1) < 0 || append(PyList_GET_ITEM(cols, 0), kb.buf, kb.len) < 0)
        goto done;
    n = put_uv(tmp, (unsigned long long)size);
    if (append(PyList_GET_ITEM(cols, 1), tmp, n) < 0)
        goto done;
    unsigned char flag = (unsigned char)((has_date ? F_DATE : 0) | (attach ? F_ATTACH : 0));
    if (append(PyList_GET_ITEM(cols, 2), &flag, 1) < 0)
        goto done;
    if (has_date) {
        long long delta = when - prev;          /* |delta| < 2^41: no overflow */
        unsigned long long z = delta >= 0 ? ((unsigned long long)delta << 1)
                                          : (((unsigned long long)(-delta) << 1) - 1);
        n = put_uv(tmp, z);
        if (append(PyList_GET_ITEM(cols, 3), tmp, n) < 0)
            goto done;
        prev = when;
    }
    Py_ssize_t nbytes = kb.len + 24;
    for (int k = 0; k < 5; k++) {
        Py_ssize_t len = PyBytes_GET_SIZE(texts[k]);
        n = put_uv(tmp, (unsigned long long)len);
        if (append(PyList_GET_ITEM(cols, 4 + k), tmp, n) < 0 ||
            append(PyList_GET_ITEM(cols, 4 + k), PyBytes_AS_STRING(texts[k]), len) < 0)
            goto done;
        nbytes += len;
    }
    result = Py_BuildValue("(Ln)", prev, nbytes);
done:
    PyBuffer_Release(&kb);
    Py_XDECREF(when_o);
    for (int k = 0; k < 5; k++)
        Py_XDECREF(texts[k]);
    return result;
}


/* ---- the whole extraction, for the common message ----------------------------------------- */

static PyObject *Headers_cls = NULL;
static Py_ssize_t MAXTEXT = 0;
static long B_NO_END, B_OBSOLETE, B_NO_MID, B_NO_DATE, B_BAD_DATE;

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *cls;
    if (!PyArg_ParseTuple(args, "Onlllll:setup", &cls, &MAXTEXT, &B_NO_END, &B_OBSOLETE, &B_NO_MID,
                          &B_NO_DATE, &B_BAD_DATE))
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(Headers_cls, cls);
    Py_RETURN_NONE;
}

/* d[a:b] equals the lower-case ASCII word w (of n bytes) in any case */
static int lower_eq(const unsigned char *d, Py_ssize_t a, Py_ssize_t b, const char *w, Py_ssize_t n) {
    if (b - a != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(d[a + i]) != (unsigned char)w[i])
            return 0;
    return 1;
}

static int lower_starts(const unsigned char *d, Py_ssize_t a, Py_ssize_t b, const char *w, Py_ssize_t n) {
    return b - a >= n && lower_eq(d, a, a + n, w, n);
}

/* headerparse._attachment_scan: "Content-Disposition: attachment" (the name in any case, the
 * value after white space, both as that function reads them) in d[start:limit]; the value is
 * read up to 29 bytes past the colon, within len. */
static int attachment_scan(const unsigned char *d, Py_ssize_t len, Py_ssize_t start, Py_ssize_t limit) {
    Py_ssize_t i = start;
    while (limit - i >= 11) {
        const unsigned char *p = memchr(d + i, 'i', (size_t)(limit - i - 10));
        if (p == NULL)
            return 0;
        Py_ssize_t j = p - d;
        if (memcmp(d + j, "isposition:", 11) != 0) {
            i = j + 1;
            continue;
        }
        if (j - 9 >= start && lower_eq(d, j - 9, j, "content-d", 9)) {
            Py_ssize_t e = j + 40 < len ? j + 40 : len;
            Py_ssize_t k = j + 11;
            while (k < e && is_space(d[k]))
                k++;
            if (lower_starts(d, k, e, "attachment", 10))
                return 1;
        }
        i = j + 11;      /* "isposition:" cannot overlap itself */
    }
    return 0;
}

/* headerparse's attachment heuristic from the raw Content-Type (slot 6) and
 * Content-Disposition (slot 7) values. */
static int attachments(const unsigned char *d, Py_ssize_t len, Py_ssize_t start, Py_ssize_t limit,
                       const Py_ssize_t *vstart, const Py_ssize_t *vend) {
    if (vstart[6] >= 0) {
        Py_ssize_t a = vstart[6], b = vend[6];
        const unsigned char *semi = memchr(d + a, ';', (size_t)(b - a));
        if (semi != NULL)
            b = semi - d;
        while (a < b && is_space(d[a]))
            a++;
        while (b > a && is_space(d[b - 1]))
            b--;
        if (lower_starts(d, a, b, "multipart/", 10)) {
            if (lower_eq(d, a, b, "multipart/mixed", 15))
                return 1;
            if (lower_eq(d, a, b, "multipart/alternative", 21))
                return 0;
            return attachment_scan(d, len, start, limit);
        }
        if (b > a && memchr(d + a, '/', (size_t)(b - a)) != NULL && !lower_starts(d, a, b, "text/", 5)
            && !lower_starts(d, a, b, "message/", 8))
            return 1;
    }
    if (vstart[7] < 0)
        return 0;
    Py_ssize_t a = vstart[7];
    while (a < vend[7] && is_space(d[a]))
        a++;
    return lower_starts(d, a, vend[7], "attachment", 10);
}

/* _FIRST_LINE: a field name and its colon, or an mbox "From " line, at d[start]. */
static int header_block(const unsigned char *d, Py_ssize_t start, Py_ssize_t limit) {
    if (limit - start >= 5 && memcmp(d + start, "From ", 5) == 0)
        return 1;
    Py_ssize_t i = start;
    while (i < limit && d[i] >= 0x21 && d[i] <= 0x7e && d[i] != ':')
        i++;
    if (i == start)
        return 0;
    while (i < limit && (d[i] == ' ' || d[i] == '\t'))
        i++;
    return i < limit && d[i] == ':';
}

/* extract(data, start, end, cap) -> Headers | None: headerparse._extract for a message whose
 * wanted fields are all in the forms the fast paths above take (ASCII without ESC or encoded
 * words, the usual Date form; or absent); None (declined) otherwise, including bytes that
 * are not a header block: the Python code then decides. setup() must have been called. */
static PyObject *extract(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, end, cap;
    if (!PyArg_ParseTuple(args, "y*nnn:extract", &buf, &start, &end, &cap))
        return NULL;
    const unsigned char *d = (const unsigned char *)buf.buf;
    Py_ssize_t len = buf.len;
    PyObject *vals[6] = {NULL, NULL, NULL, NULL, NULL, NULL};   /* mid, date, from, to, cc, subject */
    PyObject *result = NULL;
    Py_ssize_t limit = end < len ? end : len;
    if (cap >= 0 && start <= PY_SSIZE_T_MAX - cap && start + cap < limit)
        limit = start + cap;
    if (Headers_cls == NULL || start < 0 || cap < 0 || limit <= start || !header_block(d, start, limit))
        goto declined;
    Py_ssize_t vstart[NSLOTS], vend[NSLOTS];
    int vws[NSLOTS];
    long prob = scan(d, start, limit, vstart, vend, vws) ? 0 : B_NO_END;
    for (int k = 0; k < NSLOTS; k++)
        if (vstart[k] >= 0 && vws[k])
            prob |= B_OBSOLETE;

    if (vstart[0] < 0) {
        vals[0] = PyUnicode_FromStringAndSize("", 0);
        prob |= B_NO_MID;
    } else {
        vals[0] = mid_of(d + vstart[0], vend[0] - vstart[0], MAXTEXT);
        if (vals[0] != NULL && PyUnicode_GET_LENGTH(vals[0]) == 0)
            prob |= B_NO_MID;
    }
    if (vals[0] == NULL)
        goto declined;
    if (vstart[1] < 0) {
        vals[1] = Py_None;
        Py_INCREF(Py_None);
        prob |= B_NO_DATE;
    } else {
        long long t;
        int r = date_of(d + vstart[1], vend[1] - vstart[1], &t);
        if (r < 0)
            goto declined;
        if (r == 0 || !(-DATE_LIMIT < t && t < DATE_LIMIT)) {
            vals[1] = Py_None;
            Py_INCREF(Py_None);
            prob |= B_BAD_DATE;
        } else if ((vals[1] = PyLong_FromLongLong(t)) == NULL) {
            goto declined;
        }
    }
    for (int k = 2; k <= 5; k++) {          /* From, To, Cc: addresses; Subject: text */
        if (vstart[k] < 0)
            vals[k] = PyUnicode_FromStringAndSize("", 0);
        else
            vals[k] = text_of(d + vstart[k], vend[k] - vstart[k], MAXTEXT, k < 5);
        if (vals[k] == NULL)
            goto declined;
    }
    int attach = attachments(d, len, start, limit, vstart, vend);
    result = PyObject_CallFunction(Headers_cls, "OOOOOOOl", vals[0], vals[1], vals[2], vals[3], vals[4], vals[5],
                                   attach ? Py_True : Py_False, prob);
    goto done;
declined:
    if (!PyErr_Occurred()) {
        result = Py_None;
        Py_INCREF(result);
    }
done:
    for (int k = 0; k < 6; k++)
        Py_XDECREF(vals[k]);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"fields", fields, METH_VARARGS,
     "fields(data, start, limit, p_no_end, p_obsolete) -> (values, problems)"},
    {"message_id", message_id, METH_VARARGS, "message_id(raw, max_text) -> str | None (declined)"},
    {"text", text, METH_VARARGS, "text(raw, max_text) -> str | None (declined)"},
    {"date", date, METH_VARARGS, "date(raw) -> epoch | None (out of range) | False (declined)"},
    {"setup", setup, METH_VARARGS, "setup(Headers, max_text, P_NO_END, P_OBSOLETE, P_NO_MESSAGE_ID, P_NO_DATE, P_BAD_DATE)"},
    {"extract", extract, METH_VARARGS, "extract(data, start, end, cap) -> Headers | None (declined)"},
    {"pack", pack, METH_VARARGS, "pack(cols, key, size, headers, prev, max_text) -> (prev, nbytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hscan",
    "The header block's wanted fields, cut in compiled code (see dmbackup.archive.headerparse).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hscan(void) {
    if (!(S_message_id = PyUnicode_InternFromString("message_id")) || !(S_date = PyUnicode_InternFromString("date"))
        || !(S_from = PyUnicode_InternFromString("from_")) || !(S_to = PyUnicode_InternFromString("to"))
        || !(S_cc = PyUnicode_InternFromString("cc")) || !(S_subject = PyUnicode_InternFromString("subject"))
        || !(S_attachments = PyUnicode_InternFromString("attachments")))
        return NULL;
    return PyModule_Create(&module);
}
