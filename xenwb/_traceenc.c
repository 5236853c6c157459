/*
 * The trace's JSON encoder (xenwb/trace_events.py): trace records -> JSON lines, and a
 * json.dumps equivalent, in C.
 *
 * Output is byte for byte what Python's json.dumps(obj, separators=(",", ":"), default=str)
 * gives (ensure_ascii, allow_nan, the C encoder's int/float/str rules, dict keys converted
 * as json converts them); tests/test_trace_schema.py checks it against json.dumps.
 *
 * Encoder(plans, packed_type, volatile_type, memo_max).encode(records) runs, for each record
 * (a tuple whose first item indexes plans), its event's program; add(record) encodes one into
 * the encoder's buffer at once (a trace writer's subscriber: nothing kept alive, no Python
 * frame), take() returns what was added since; past `limit` bytes, add() calls on_full().
 * The programs:
 *   (0, bytes)                           literal bytes
 *   (1, col)                             rec[col] as JSON
 *   (2, col, memo, fn)                   fn(rec[col]) as JSON, kept encoded in memo per value
 *   (3, dec, nr, args, memo, fn, widths, cap)
 *                                        rec[dec] as JSON, or if None fn(rec[nr], rec[args]),
 *                                        kept encoded in memo (at most cap entries) per
 *                                        (nr, rec[args][:widths.get(nr, all)])
 *   (4, col, fn)                         fn(rec[col]) as JSON
 * A value of packed_type (bytes holding JSON already) is spliced in as it is; a result of
 * volatile_type is never memoized.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static PyObject *packed_type = NULL;     /* configure(): values of this bytes subclass are JSON already */

static const char hexdigits[] = "0123456789abcdef";

static int put_escaped_unit(buf_t *b, Py_UCS4 c)
{
    char out[12];
    int n = 0;
    out[n++] = '\\';
    switch (c) {
    case '\\': out[n++] = '\\'; break;
    case '"': out[n++] = '"'; break;
    case '\b': out[n++] = 'b'; break;
    case '\f': out[n++] = 'f'; break;
    case '\n': out[n++] = 'n'; break;
    case '\r': out[n++] = 'r'; break;
    case '\t': out[n++] = 't'; break;
    default:
        if (c >= 0x10000) {
            Py_UCS4 v = c - 0x10000;
            Py_UCS4 hi = 0xd800 | ((v >> 10) & 0x3ff);
            out[n++] = 'u';
            out[n++] = hexdigits[(hi >> 12) & 0xf];
            out[n++] = hexdigits[(hi >> 8) & 0xf];
            out[n++] = hexdigits[(hi >> 4) & 0xf];
            out[n++] = hexdigits[hi & 0xf];
            c = 0xdc00 | (v & 0x3ff);
            out[n++] = '\\';
        }
        out[n++] = 'u';
        out[n++] = hexdigits[(c >> 12) & 0xf];
        out[n++] = hexdigits[(c >> 8) & 0xf];
        out[n++] = hexdigits[(c >> 4) & 0xf];
        out[n++] = hexdigits[c & 0xf];
    }
    return buf_put(b, out, n);
}

#define PLAIN(c) ((c) >= ' ' && (c) <= '~' && (c) != '\\' && (c) != '"')

static int put_str(buf_t *b, PyObject *s)
{
    if (PyUnicode_READY(s) < 0)
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (buf_reserve(b, n + 2) < 0)
        return -1;
    b->p[b->len++] = '"';
    if (kind == PyUnicode_1BYTE_KIND) {
        const unsigned char *d = data;
        Py_ssize_t i = 0;
        while (i < n) {
            Py_ssize_t j = i;
            while (j < n && PLAIN(d[j]))
                j++;
            if (j > i && buf_put(b, (const char *)d + i, j - i) < 0)
                return -1;
            if (j < n && put_escaped_unit(b, d[j]) < 0)
                return -1;
            i = j + 1;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (PLAIN(c)) {
                char ch = (char)c;
                if (buf_put(b, &ch, 1) < 0)
                    return -1;
            } else if (put_escaped_unit(b, c) < 0) {
                return -1;
            }
        }
    }
    return buf_put(b, "\"", 1);
}

static int put_ascii_obj(buf_t *b, PyObject *s)   /* a str known to be ASCII (a repr) */
{
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (!u)
        return -1;
    return buf_put(b, u, n);
}

static const char digits2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static int put_long(buf_t *b, PyObject *o)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {                     /* decimal digits by hand: snprintf costs more than the rest */
        char tmp[24];
        char *end = tmp + sizeof tmp, *p = end;
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        while (u >= 100) {
            unsigned d = (unsigned)(u % 100);
            u /= 100;
            *--p = digits2[2 * d + 1];
            *--p = digits2[2 * d];
        }
        if (u >= 10) {
            *--p = digits2[2 * u + 1];
            *--p = digits2[2 * u];
        } else {
            *--p = (char)('0' + u);
        }
        if (v < 0)
            *--p = '-';
        return buf_put(b, p, end - p);
    }
    PyObject *r = PyLong_Type.tp_repr(o);
    if (!r)
        return -1;
    int rc = put_ascii_obj(b, r);
    Py_DECREF(r);
    return rc;
}

static int put_float(buf_t *b, PyObject *o)
{
    double d = PyFloat_AS_DOUBLE(o);
    if (!isfinite(d)) {
        if (isnan(d))
            return buf_put(b, "NaN", 3);
        return d > 0 ? buf_put(b, "Infinity", 8) : buf_put(b, "-Infinity", 9);
    }
    PyObject *r = PyFloat_Type.tp_repr(o);
    if (!r)
        return -1;
    int rc = put_ascii_obj(b, r);
    Py_DECREF(r);
    return rc;
}

static int put_obj(buf_t *b, PyObject *o);

static int put_key(buf_t *b, PyObject *k)
{
    if (PyUnicode_Check(k))
        return put_str(b, k);
    if (PyFloat_Check(k)) {
        buf_t t = {0};
        if (put_float(&t, k) < 0) {
            PyMem_Free(t.p);
            return -1;
        }
        int rc = buf_put(b, "\"", 1) || buf_put(b, t.p, t.len) || buf_put(b, "\"", 1);
        PyMem_Free(t.p);
        return rc ? -1 : 0;
    }
    if (k == Py_True)
        return buf_put(b, "\"true\"", 6);
    if (k == Py_False)
        return buf_put(b, "\"false\"", 7);
    if (k == Py_None)
        return buf_put(b, "\"null\"", 6);
    if (PyLong_Check(k)) {
        if (buf_put(b, "\"", 1) < 0 || put_long(b, k) < 0)
            return -1;
        return buf_put(b, "\"", 1);
    }
    PyErr_Format(PyExc_TypeError, "keys must be str, int, float, bool or None, not %.100s",
                 Py_TYPE(k)->tp_name);
    return -1;
}

static int put_dict(buf_t *b, PyObject *o)
{
    if (PyDict_GET_SIZE(o) == 0)
        return buf_put(b, "{}", 2);
    if (buf_put(b, "{", 1) < 0)
        return -1;
    int first = 1, rc = 0;
    if (PyDict_CheckExact(o)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            Py_INCREF(k);
            Py_INCREF(v);
            rc = (!first && buf_put(b, ",", 1) < 0) || put_key(b, k) < 0 || buf_put(b, ":", 1) < 0
                 || put_obj(b, v) < 0;
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc)
                return -1;
            first = 0;
        }
    } else {
        PyObject *items = PyMapping_Items(o);
        if (!items)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
            PyObject *it = PyList_GET_ITEM(items, i);
            if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
                PyErr_SetString(PyExc_ValueError, "items must return 2-tuples");
                rc = 1;
                break;
            }
            if ((!first && buf_put(b, ",", 1) < 0) || put_key(b, PyTuple_GET_ITEM(it, 0)) < 0
                || buf_put(b, ":", 1) < 0 || put_obj(b, PyTuple_GET_ITEM(it, 1)) < 0) {
                rc = 1;
                break;
            }
            first = 0;
        }
        Py_DECREF(items);
        if (rc)
            return -1;
    }
    return buf_put(b, "}", 1);
}

static int put_seq(buf_t *b, PyObject *o)
{
    PyObject *s = PySequence_Fast(o, "expected a sequence");
    if (!s)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(s);
    int rc = 0;
    if (n == 0) {
        rc = buf_put(b, "[]", 2);
    } else {
        rc = buf_put(b, "[", 1);
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(s, i);
            Py_INCREF(item);
            rc = (i && buf_put(b, ",", 1) < 0) || put_obj(b, item) < 0 ? -1 : 0;
            Py_DECREF(item);
        }
        if (rc == 0)
            rc = buf_put(b, "]", 1);
    }
    Py_DECREF(s);
    return rc;
}

static int put_obj(buf_t *b, PyObject *o)
{
    if (o == Py_None)
        return buf_put(b, "null", 4);
    if (o == Py_True)
        return buf_put(b, "true", 4);
    if (o == Py_False)
        return buf_put(b, "false", 5);
    if (PyUnicode_Check(o))
        return put_str(b, o);
    if (PyLong_Check(o))
        return put_long(b, o);
    if (PyFloat_Check(o))
        return put_float(b, o);
    if (packed_type && PyBytes_Check(o) && PyObject_TypeCheck(o, (PyTypeObject *)packed_type))
        return buf_put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
    int rc;
    if (Py_EnterRecursiveCall(" while encoding a JSON object"))
        return -1;
    if (PyList_Check(o) || PyTuple_Check(o)) {
        rc = put_seq(b, o);
    } else if (PyDict_Check(o)) {
        rc = put_dict(b, o);
    } else {                               /* default=str */
        PyObject *s = PyObject_Str(o);
        rc = s ? put_obj(b, s) : -1;
        Py_XDECREF(s);
    }
    Py_LeaveRecursiveCall();
    return rc;
}

static PyObject *dumps(PyObject *self, PyObject *o)
{
    buf_t b = {0};
    if (put_obj(&b, o) < 0) {
        PyMem_Free(b.p);
        return NULL;
    }
    PyObject *r = PyUnicode_DecodeASCII(b.p ? b.p : "", b.len, NULL);
    PyMem_Free(b.p);
    return r;
}

/* pack(obj): obj encoded as dumps does, as a value of packed_type (obj itself if it is one):
   what a record keeps of a captured structure, made without a str and a second copy */
static PyObject *pack(PyObject *self, PyObject *o)
{
    if (!packed_type) {
        PyErr_SetString(PyExc_RuntimeError, "pack: configure(packed_type) first");
        return NULL;
    }
    if (Py_IS_TYPE(o, (PyTypeObject *)packed_type))
        return Py_NewRef(o);
    buf_t b = {0};
    if (put_obj(&b, o) < 0) {
        PyMem_Free(b.p);
        return NULL;
    }
    PyObject *raw = PyBytes_FromStringAndSize(b.p ? b.p : "", b.len);
    PyMem_Free(b.p);
    if (!raw)
        return NULL;
    PyObject *r = PyObject_CallOneArg(packed_type, raw);
    Py_DECREF(raw);
    return r;
}

/* ---------------------------------------------------------------- the record encoder */
enum { OP_LIT, OP_COL, OP_MEMO, OP_ARGS, OP_CALL };

typedef struct {
    int code;
    Py_ssize_t a, b, c;          /* columns */
    PyObject *lit;               /* bytes (OP_LIT) */
    PyObject *memo;              /* dict: value -> encoded bytes */
    PyObject *fn;
    PyObject *widths;            /* OP_ARGS: dict nr -> registers the key keeps */
    Py_ssize_t cap;              /* OP_MEMO, OP_ARGS: memo entries at most */
} op_t;

typedef struct {
    PyObject_HEAD
    Py_ssize_t nplans;
    op_t **plans;
    Py_ssize_t *nops;
    Py_ssize_t *width;           /* the columns a plan reads: records must have more items */
    PyObject *packed;
    PyObject *volatile_type;
    Py_ssize_t memo_max;
    buf_t out;                   /* kept between calls: no fresh pages for every batch */
    buf_t acc;                   /* what add() encoded, until take() */
    Py_ssize_t added;            /* records in acc */
    Py_ssize_t limit;            /* acc bytes past which add() calls on_full */
    PyObject *on_full;
} Encoder;

static void encoder_clear_plans(Encoder *e)
{
    for (Py_ssize_t i = 0; i < e->nplans; i++) {
        for (Py_ssize_t j = 0; e->plans && e->plans[i] && j < e->nops[i]; j++) {
            Py_XDECREF(e->plans[i][j].lit);
            Py_XDECREF(e->plans[i][j].memo);
            Py_XDECREF(e->plans[i][j].fn);
            Py_XDECREF(e->plans[i][j].widths);
        }
        if (e->plans)
            PyMem_Free(e->plans[i]);
    }
    PyMem_Free(e->plans);
    PyMem_Free(e->nops);
    PyMem_Free(e->width);
    e->plans = NULL;
    e->nops = NULL;
    e->width = NULL;
    e->nplans = 0;
}

static void encoder_dealloc(Encoder *e)
{
    encoder_clear_plans(e);
    Py_XDECREF(e->packed);
    Py_XDECREF(e->volatile_type);
    PyMem_Free(e->out.p);
    PyMem_Free(e->acc.p);
    Py_XDECREF(e->on_full);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int encoder_init(Encoder *e, PyObject *args, PyObject *kw)
{
    PyObject *plans, *packed, *volatile_type;
    Py_ssize_t memo_max = 65536;
    if (!PyArg_ParseTuple(args, "OOO|n", &plans, &packed, &volatile_type, &memo_max))
        return -1;
    if (!PyList_Check(plans) || !PyType_Check(packed) || !PyType_IsSubtype((PyTypeObject *)packed, &PyBytes_Type)
        || !PyType_Check(volatile_type)) {
        PyErr_SetString(PyExc_TypeError, "Encoder(plans: list, packed: bytes subclass, volatile: type, memo_max)");
        return -1;
    }
    encoder_clear_plans(e);
    Py_XSETREF(e->packed, Py_NewRef(packed));
    Py_XSETREF(e->volatile_type, Py_NewRef(volatile_type));
    e->memo_max = memo_max;
    Py_ssize_t n = PyList_GET_SIZE(plans);
    e->plans = PyMem_Calloc(n ? n : 1, sizeof(op_t *));
    e->nops = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    e->width = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    if (!e->plans || !e->nops || !e->width) {
        PyErr_NoMemory();
        return -1;
    }
    e->nplans = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *plan = PyList_GET_ITEM(plans, i);
        if (!PyTuple_Check(plan)) {
            PyErr_SetString(PyExc_TypeError, "a plan is a tuple of ops");
            return -1;
        }
        Py_ssize_t m = PyTuple_GET_SIZE(plan);
        e->plans[i] = PyMem_Calloc(m ? m : 1, sizeof(op_t));
        if (!e->plans[i]) {
            PyErr_NoMemory();
            return -1;
        }
        e->nops[i] = m;
        Py_ssize_t width = 1;
        for (Py_ssize_t j = 0; j < m; j++) {
            PyObject *t = PyTuple_GET_ITEM(plan, j);
            op_t *op = &e->plans[i][j];
            int code;
            if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2 || (code = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0))) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "an op is a tuple (code, ...)");
                return -1;
            }
            op->code = code;
            op->cap = memo_max;
            Py_ssize_t sz = PyTuple_GET_SIZE(t);
#define COL(k, dst) do { dst = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, k)); if (dst < 0) goto bad; if (dst + 1 > width) width = dst + 1; } while (0)
#define OBJ(k, dst) do { dst = PyTuple_GET_ITEM(t, k); Py_INCREF(dst); } while (0)
            switch (code) {
            case OP_LIT:
                if (!PyBytes_Check(PyTuple_GET_ITEM(t, 1)))
                    goto bad;
                OBJ(1, op->lit);
                break;
            case OP_COL:
                COL(1, op->a);
                break;
            case OP_MEMO:
                if (sz != 4 || !PyDict_Check(PyTuple_GET_ITEM(t, 2)))
                    goto bad;
                COL(1, op->a);
                OBJ(2, op->memo);
                OBJ(3, op->fn);
                break;
            case OP_ARGS:
                if (sz != 8 || !PyDict_Check(PyTuple_GET_ITEM(t, 4)) || !PyDict_Check(PyTuple_GET_ITEM(t, 6)))
                    goto bad;
                COL(1, op->a);
                COL(2, op->b);
                COL(3, op->c);
                OBJ(4, op->memo);
                OBJ(5, op->fn);
                OBJ(6, op->widths);
                op->cap = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 7));
                if (op->cap < 0)
                    goto bad;
                break;
            case OP_CALL:
                if (sz != 3)
                    goto bad;
                COL(1, op->a);
                OBJ(2, op->fn);
                break;
            default:
                goto bad;
            }
#undef COL
#undef OBJ
        }
        e->width[i] = width;
    }
    return 0;
bad:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "malformed encoder op");
    return -1;
}

/* the encoded form of call(key), through memo[key] */
static int put_memo(Encoder *e, buf_t *b, op_t *op, PyObject *key, PyObject *(*call)(op_t *, PyObject *, void *),
                    void *ctx)
{
    PyObject *hit = PyDict_GetItemWithError(op->memo, key);      /* borrowed */
    if (hit)
        return buf_put(b, PyBytes_AS_STRING(hit), PyBytes_GET_SIZE(hit));
    int hashable = 1;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear();           /* unhashable: not memoized */
        hashable = 0;
    }
    PyObject *v = call(op, key, ctx);
    if (!v)
        return -1;
    if ((PyObject *)Py_TYPE(v) == e->volatile_type)
        hashable = 0;
    buf_t t = {0};
    int rc = put_obj(&t, v);
    Py_DECREF(v);
    if (rc < 0) {
        PyMem_Free(t.p);
        return -1;
    }
    rc = buf_put(b, t.p ? t.p : "", t.len);
    if (rc == 0 && hashable && PyDict_GET_SIZE(op->memo) < op->cap) {
        PyObject *frag = PyBytes_FromStringAndSize(t.p ? t.p : "", t.len);
        if (!frag || PyDict_SetItem(op->memo, key, frag) < 0)
            rc = -1;
        Py_XDECREF(frag);
    }
    PyMem_Free(t.p);
    return rc;
}

static PyObject *call_one(op_t *op, PyObject *key, void *ctx)
{
    return PyObject_CallOneArg(op->fn, key);
}

static PyObject *call_args(op_t *op, PyObject *key, void *ctx)
{
    PyObject **cols = ctx;                        /* (nr, raw_args) of the record */
    return PyObject_CallFunctionObjArgs(op->fn, cols[0], cols[1], NULL);
}

static int encode_record(Encoder *e, buf_t *b, PyObject *rec)
{
    if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) < 1) {
        PyErr_SetString(PyExc_TypeError, "a record is a tuple (eid, ...)");
        return -1;
    }
    Py_ssize_t eid = PyLong_AsSsize_t(PyTuple_GET_ITEM(rec, 0));
    if (eid < 0 || eid >= e->nplans) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "no event %zd", eid);
        return -1;
    }
    if (PyTuple_GET_SIZE(rec) < e->width[eid]) {
        PyErr_Format(PyExc_ValueError, "event %zd: record of %zd items, its plan reads %zd", eid,
                     PyTuple_GET_SIZE(rec), e->width[eid]);
        return -1;
    }
    op_t *ops = e->plans[eid];
    for (Py_ssize_t j = 0; j < e->nops[eid]; j++) {
        op_t *op = &ops[j];
        int rc = 0;
        switch (op->code) {
        case OP_LIT:
            rc = buf_put(b, PyBytes_AS_STRING(op->lit), PyBytes_GET_SIZE(op->lit));
            break;
        case OP_COL:
            rc = put_obj(b, PyTuple_GET_ITEM(rec, op->a));
            break;
        case OP_MEMO:
            rc = put_memo(e, b, op, PyTuple_GET_ITEM(rec, op->a), call_one, NULL);
            break;
        case OP_ARGS: {
            PyObject *dec = PyTuple_GET_ITEM(rec, op->a);
            if (dec != Py_None) {
                rc = put_obj(b, dec);
            } else {
                PyObject *cols[2] = {PyTuple_GET_ITEM(rec, op->b), PyTuple_GET_ITEM(rec, op->c)};
                PyObject *raw = cols[1], *kept = NULL;
                PyObject *w = PyDict_GetItemWithError(op->widths, cols[0]);     /* borrowed */
                if (!w && PyErr_Occurred())
                    return -1;
                if (w && PyTuple_Check(raw)) {
                    Py_ssize_t n = PyLong_AsSsize_t(w);
                    if (n < 0 && PyErr_Occurred())
                        return -1;
                    if (n < PyTuple_GET_SIZE(raw)) {
                        kept = PyTuple_GetSlice(raw, 0, n);
                        if (!kept)
                            return -1;
                        raw = kept;
                    }
                }
                PyObject *key = PyTuple_Pack(2, cols[0], raw);
                Py_XDECREF(kept);
                if (!key)
                    return -1;
                rc = put_memo(e, b, op, key, call_args, cols);
                Py_DECREF(key);
            }
            break;
        }
        case OP_CALL: {
            PyObject *v = PyObject_CallOneArg(op->fn, PyTuple_GET_ITEM(rec, op->a));
            if (!v)
                return -1;
            rc = put_obj(b, v);
            Py_DECREF(v);
            break;
        }
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyObject *encoder_encode(Encoder *e, PyObject *records)
{
    PyObject *seq = PySequence_Fast(records, "records: a list of tuples");
    if (!seq)
        return NULL;
    buf_t *b = &e->out;
    b->len = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (encode_record(e, b, PySequence_Fast_GET_ITEM(seq, i)) < 0)
            goto fail;
    }
    Py_DECREF(seq);
    PyObject *r = PyBytes_FromStringAndSize(b->p ? b->p : "", b->len);
    if (b->cap > (16 << 20)) {           /* a huge batch: give the memory back */
        PyMem_Free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
    b->len = 0;
    return r;
fail:
    Py_DECREF(seq);
    b->len = 0;
    return NULL;
}

static PyObject *encoder_add(Encoder *e, PyObject *rec)
{
    Py_ssize_t mark = e->acc.len;
    if (encode_record(e, &e->acc, rec) < 0) {
        e->acc.len = mark;                /* nothing half-written */
        return NULL;
    }
    e->added++;
    if (e->limit > 0 && e->acc.len >= e->limit && e->on_full && e->on_full != Py_None)
        return PyObject_CallNoArgs(e->on_full);
    Py_RETURN_NONE;
}

static PyObject *encoder_take(Encoder *e, PyObject *unused)
{
    PyObject *r = PyBytes_FromStringAndSize(e->acc.p ? e->acc.p : "", e->acc.len);
    if (!r)
        return NULL;
    if (e->acc.cap > (16 << 20)) {
        PyMem_Free(e->acc.p);
        e->acc.p = NULL;
        e->acc.cap = 0;
    }
    e->acc.len = 0;
    e->added = 0;
    return r;
}

static PyObject *encoder_set_limit(Encoder *e, PyObject *args)
{
    Py_ssize_t limit;
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "nO", &limit, &fn))
        return NULL;
    e->limit = limit;
    Py_XSETREF(e->on_full, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *encoder_get_added(Encoder *e, void *closure)
{
    return PyLong_FromSsize_t(e->added);
}

static PyGetSetDef encoder_getset[] = {
    {"added", (getter)encoder_get_added, NULL, "records added since the last take()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef encoder_methods[] = {
    {"encode", (PyCFunction)encoder_encode, METH_O, "records -> JSON lines (bytes)"},
    {"add", (PyCFunction)encoder_add, METH_O, "encode one record into the buffer"},
    {"take", (PyCFunction)encoder_take, METH_NOARGS, "the buffer's bytes, emptied"},
    {"set_limit", (PyCFunction)encoder_set_limit, METH_VARARGS, "set_limit(nbytes, on_full)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xenwb._traceenc.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(plans, packed_type, memo_max): trace records to JSON lines",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)encoder_init,
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_methods = encoder_methods,
    .tp_getset = encoder_getset,
};

/* ------------------------------------------------------- the upcall-mask store watch
 * A native UC_HOOK_MEM_WRITE_PROT hook for hypervisor/upcall_mask.py: the engine sees one
 * page as read-only; every guest store to it arrives here, is completed here (the bytes
 * written into the shared RAM: unicorn drops its own write to a read-only page), and only
 * a store that changes bit 0 of the watched byte calls Python, on_change(old, new, size),
 * before the bytes are written. Other stores to the page (the rest of vcpu_info, Linux's
 * per-cpu variables around a registered vcpu_info) cost no Python at all. */
typedef struct {
    PyObject_HEAD
    uint64_t page;               /* machine address of the watched page */
    uint64_t size;               /* its size */
    uint8_t *host;               /* its bytes in the shared RAM */
    uint64_t watched;            /* machine address of the watched byte */
    PyObject *on_change;
    PyObject *host_owner;        /* keeps the RAM buffer alive */
    uint64_t stores;             /* stores completed */
} MaskWatch;

static int maskwatch_hook(void *uc, int type, uint64_t address, int size, int64_t value, void *user_data)
{
    MaskWatch *w = (MaskWatch *)user_data;
    uint8_t bytes[8];
    (void)uc;
    (void)type;
    if (size < 1 || size > 8 || address < w->page || address + (uint64_t)size > w->page + w->size)
        return 0;                /* not ours: let unicorn report it */
    for (int i = 0; i < size; i++)
        bytes[i] = (uint8_t)((uint64_t)value >> (8 * i));
    if (w->watched >= address && w->watched < address + (uint64_t)size) {
        int old = w->host[w->watched - w->page] & 1;
        int new = bytes[w->watched - address] & 1;
        if (old != new) {
            PyGILState_STATE g = PyGILState_Ensure();
            PyObject *r = PyObject_CallFunction(w->on_change, "iii", old, new, size);
            if (r == NULL)
                PyErr_WriteUnraisable(w->on_change);   /* on_change reports its own errors */
            Py_XDECREF(r);
            PyGILState_Release(g);
        }
    }
    memcpy(w->host + (address - w->page), bytes, (size_t)size);
    w->stores++;
    return 1;
}

static int maskwatch_init(MaskWatch *w, PyObject *args, PyObject *kw)
{
    unsigned long long page, size, watched;
    Py_buffer view;
    PyObject *on_change, *buf;
    if (!PyArg_ParseTuple(args, "KKOKO", &page, &size, &buf, &watched, &on_change))
        return -1;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0)
        return -1;
    if ((unsigned long long)view.len < size || watched < page || watched >= page + size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "MaskWatch(page, size, buffer of the page, watched, on_change)");
        return -1;
    }
    w->page = page;
    w->size = size;
    w->host = view.buf;
    w->watched = watched;
    PyBuffer_Release(&view);     /* the buffer's owner (the RAM mmap) outlives the watch: kept below */
    Py_XSETREF(w->host_owner, Py_NewRef(buf));
    Py_XSETREF(w->on_change, Py_NewRef(on_change));
    return 0;
}

static void maskwatch_dealloc(MaskWatch *w)
{
    Py_XDECREF(w->on_change);
    Py_XDECREF(w->host_owner);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *maskwatch_get_address(MaskWatch *w, void *c)
{
    return PyLong_FromVoidPtr(w);
}

static PyObject *maskwatch_get_stores(MaskWatch *w, void *c)
{
    return PyLong_FromUnsignedLongLong(w->stores);
}

static PyGetSetDef maskwatch_getset[] = {
    {"address", (getter)maskwatch_get_address, NULL, "the hook's user data (this object)", NULL},
    {"stores", (getter)maskwatch_get_stores, NULL, "stores completed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MaskWatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xenwb._traceenc.MaskWatch",
    .tp_basicsize = sizeof(MaskWatch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MaskWatch(page, size, page_buffer, watched, on_change): user data of maskwatch_hook",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)maskwatch_init,
    .tp_dealloc = (destructor)maskwatch_dealloc,
    .tp_getset = maskwatch_getset,
};

static PyObject *maskwatch_hook_address(PyObject *self, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)maskwatch_hook);
}

static PyObject *configure(PyObject *self, PyObject *t)
{
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyBytes_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure(packed_type): a bytes subclass");
        return NULL;
    }
    Py_XSETREF(packed_type, Py_NewRef(t));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"maskwatch_hook_address", (PyCFunction)maskwatch_hook_address, METH_NOARGS,
     "address of the native UC_HOOK_MEM_WRITE_PROT hook (user data: a MaskWatch)"},
    {"configure", (PyCFunction)configure, METH_O, "configure(packed_type): bytes holding JSON, spliced as is"},
    {"pack", (PyCFunction)pack, METH_O, "pack(obj): dumps(obj) as a packed_type value (obj if it is one)"},
    {"dumps", (PyCFunction)dumps, METH_O,
     "json.dumps(obj, separators=(',', ':'), default=str), in C"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_traceenc", "The trace's JSON encoder (xenwb/trace_events.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__traceenc(void)
{
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&MaskWatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MaskWatchType);
    if (PyModule_AddObject(m, "MaskWatch", (PyObject *)&MaskWatchType) < 0) {
        Py_DECREF(&MaskWatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
