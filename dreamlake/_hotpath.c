/*
 * dreamlake._hotpath: the append() hot path in C (optional; the pure-Python
 * path in _tracks.py does the same, slower, and is used when this module is
 * missing or DREAMLAKE_PURE_PYTHON=1).
 *
 * Why C: at the 1-2 us floor a Python-level append spends most of its time in
 * the interpreter (argument parsing, the kwargs dict, per-value type checks,
 * a GC-tracked copy of list values). Here one vectorcall stamps _ts, checks
 * every value and copies the row as a compact binary record into the
 * session's journal ring (a MAP_SHARED mapping: the bytes are in the page
 * cache when append() returns, so a kill -9 cannot take them back). Nothing
 * is allocated on the Python heap, so nothing the cyclic GC tracks is queued.
 * The writer thread turns records back into row dicts (Ring.read).
 *
 * Types:
 *   Clock      one session's _ts state: last auto stamp (strictly increasing),
 *              the last stamp of each thread (for _ts=-1), kept in the thread
 *              state's dict so it dies with the thread.
 *   Ring       one session's journal ring over a writable buffer (the mmap
 *              made by _journal.py). Layout: see _journal.py.
 *   TrackBase  base class of Track: its C `append` takes the common rows and
 *              calls the Python `_append_py` for anything else (a positional
 *              dict, nested dicts, non-ASCII strings, torch, a full ring ...).
 *
 * Record (8-byte aligned, never wraps; a PAD record or a short gap ends a lap):
 *   u64 off (logical offset, written last: the commit word) | u32 len | u32 sid
 *   f64 ts | u32 kind | u32 check                                   (32 bytes)
 *   payload: BIN  u32 nfields, per field: u16 keylen, key, u8 tag, value
 *            PACK msgpack of one row dict (holding "_ts"), from Python
 *            BATCH msgpack [ts list, rows], from Python
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <sys/prctl.h>

#define HDR 32
#define MARKS_AT 4096
#define MAX_STREAMS 65536
#define DATA_AT (MARKS_AT + 8 * MAX_STREAMS)
#define TAIL_AT 16
#define KEY_SHIFT 16

enum { K_BIN = 1, K_PACK = 2, K_BATCH = 3, K_PAD = 4 };
enum { T_F64 = 1, T_I64, T_U64, T_TRUE, T_FALSE, T_NONE, T_STR, T_FLIST, T_LIST, T_DICT };

/* values the C path takes; bigger ones go to Python (which checks the real limits) */
#define C_MAX_LIST 4096
#define C_MAX_STR 65536

typedef struct {
    uint64_t off;
    uint32_t len;
    uint32_t sid;
    double ts;
    uint32_t kind;
    uint32_t check;
} RecHdr;

static uint32_t
rec_check(uint64_t off, uint32_t len, uint32_t sid, uint32_t kind)
{
    uint64_t h = off * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)len << 32 | sid) * 0xC2B2AE3D27D4EB4FULL ^ kind;
    return (uint32_t)(h ^ (h >> 29) ^ (h >> 47)) | 1u;
}

/* ---------------------------------------------------------------- Clock */

/* A thread's last stamp for one Clock. It lives in the thread state's dict, so
   it dies with its thread: a new thread that the OS gives a dead thread's ident
   starts with no stamp (keying by PyThread_get_thread_ident borrowed the dead
   thread's). */
typedef struct {
    PyObject_HEAD
    double last;
} StampCell;

static PyTypeObject StampCellType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dreamlake._hotpath._StampCell",
    .tp_basicsize = sizeof(StampCell),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
};

typedef struct {
    PyObject_HEAD
    double last_auto;
    uint64_t tstate;     /* PyThreadState_GetID of the thread cached in tlast (never reused) */
    double tlast;
    StampCell *cell;     /* that thread's cell (tlast is written back on a switch) */
    PyObject *key;       /* this clock's key in every thread state's dict */
} Clock;

static unsigned long long clock_serial;

static double
now_seconds(void)
{
    struct timespec spec;
    clock_gettime(CLOCK_REALTIME, &spec);
    return (double)((int64_t)spec.tv_sec * 1000000000LL + spec.tv_nsec) / 1e9;
}

/* make the calling thread the cached one; -1 on error */
static int
clock_switch(Clock *c)
{
    PyThreadState *ts = PyThreadState_Get();
    uint64_t cur = PyThreadState_GetID(ts);
    if (cur == c->tstate && c->cell)
        return 0;
    if (c->cell)
        c->cell->last = c->tlast;
    PyObject *dict = PyThreadState_GetDict();
    if (!dict) {
        PyErr_SetString(PyExc_RuntimeError, "no thread state dict");
        return -1;
    }
    PyObject *got = PyDict_GetItemWithError(dict, c->key);
    if (!got && PyErr_Occurred())
        return -1;
    if (got && Py_TYPE(got) != &StampCellType)
        got = NULL;
    if (got)
        Py_INCREF(got);
    else {
        got = PyType_GenericNew(&StampCellType, NULL, NULL);
        if (!got)
            return -1;
        ((StampCell *)got)->last = 0.0;
        if (PyDict_SetItem(dict, c->key, got) < 0) {
            Py_DECREF(got);
            return -1;
        }
    }
    Py_XSETREF(c->cell, (StampCell *)got);
    c->tstate = cur;
    c->tlast = c->cell->last;
    return 0;
}

static inline double
clock_auto(Clock *c)
{
    double t = now_seconds();
    if (t <= c->last_auto)
        t = c->last_auto + 1e-6;
    c->last_auto = t;
    return t;
}

/* An explicit _ts that is an exact float or an int within 64 bits, as a double:
   1 and *out set, 0 any other value (Python's check_ts decides). */
static int
ts_number(PyObject *v, double *out)
{
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    if (!PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (i == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = (double)i;
    return 1;
}

/* Stamp by the rules of Track.append; returns 1 and sets *out, 0 when the value
   is not one C decides (Python's check_ts then raises or converts), -1 on error. */
static int
clock_stamp(Clock *c, PyObject *ts, double *out)
{
    double t;
    if (ts == NULL || ts == Py_None) {
        if (clock_switch(c) < 0)
            return -1;
        t = clock_auto(c);
        c->tlast = t;
        *out = t;
        return 1;
    }
    if (!ts_number(ts, &t))
        return 0;
    if (clock_switch(c) < 0)
        return -1;
    if (t == -1.0) {
        if (c->tlast == 0.0)
            c->tlast = clock_auto(c);
        *out = c->tlast;
        return 1;
    }
    if (!isfinite(t))
        return 0;
    c->tlast = t;
    *out = t;
    return 1;
}

static int
Clock_init(Clock *self, PyObject *args, PyObject *kw)
{
    Py_XSETREF(self->key, PyUnicode_FromFormat("dreamlake._hotpath.Clock#%llu", ++clock_serial));
    if (!self->key)
        return -1;
    Py_CLEAR(self->cell);
    self->last_auto = 0.0;
    self->tstate = 0;
    self->tlast = 0.0;
    return 0;
}

static void
Clock_dealloc(Clock *self)
{
    Py_XDECREF(self->cell);
    Py_XDECREF(self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Clock_auto(Clock *self, PyObject *unused)
{
    if (clock_switch(self) < 0)
        return NULL;
    double t = clock_auto(self);
    self->tlast = t;
    return PyFloat_FromDouble(t);
}

static PyObject *
Clock_reserve(Clock *self, PyObject *arg)
{
    /* n consecutive auto stamps 1 us apart after every earlier one; returns the first */
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "reserve() needs n >= 1");
        return NULL;
    }
    if (clock_switch(self) < 0)
        return NULL;
    double base = clock_auto(self);
    self->last_auto = base + (double)(n - 1) * 1e-6;
    self->tlast = self->last_auto;
    return PyFloat_FromDouble(base);
}

static PyObject *
Clock_get_last_auto(Clock *self, void *closure)
{
    return PyFloat_FromDouble(self->last_auto);
}

static int
Clock_set_last_auto(Clock *self, PyObject *value, void *closure)
{
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    self->last_auto = v;
    return 0;
}

static PyObject *
Clock_get_last(Clock *self, void *closure)
{
    if (clock_switch(self) < 0)
        return NULL;
    return PyFloat_FromDouble(self->tlast);
}

static int
Clock_set_last(Clock *self, PyObject *value, void *closure)
{
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (clock_switch(self) < 0)
        return -1;
    self->tlast = v;
    return 0;
}

static PyMethodDef Clock_methods[] = {
    {"auto", (PyCFunction)Clock_auto, METH_NOARGS, "Now, strictly after every earlier auto stamp (also this thread's last)."},
    {"reserve", (PyCFunction)Clock_reserve, METH_O, "The first of n consecutive auto stamps."},
    {NULL}};

static PyGetSetDef Clock_getset[] = {
    {"last_auto", (getter)Clock_get_last_auto, (setter)Clock_set_last_auto, "the last auto stamp", NULL},
    {"last", (getter)Clock_get_last, (setter)Clock_set_last, "the calling thread's last stamp (0.0: none)", NULL},
    {NULL}};

static PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dreamlake._hotpath.Clock",
    .tp_basicsize = sizeof(Clock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One session's _ts clock.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Clock_init,
    .tp_dealloc = (destructor)Clock_dealloc,
    .tp_methods = Clock_methods,
    .tp_getset = Clock_getset,
};

/* ---------------------------------------------------------------- buffers */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + more)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

#define PUT(b, src, n) (memcpy((b)->p + (b)->len, (src), (n)), (b)->len += (n))

static inline void
put_u8(Buf *b, uint8_t v) { b->p[b->len++] = (char)v; }

/* ---------------------------------------------------------------- Ring */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    char *base;          /* start of the mapping */
    char *data;          /* base + DATA_AT */
    uint64_t cap;        /* ring bytes */
    uint64_t head;       /* logical offset of the next record */
    uint64_t tail;       /* records before it are written to the store */
    uint64_t rd;         /* the writer's read position */
    uint64_t last_start; /* where the last record put starts */
    uint64_t rows_in, rows_out;  /* rows put / rows read */
    int closed;
    int busy;            /* inside read(): a release waits for its end */
    int release_pending;
    int recovering;      /* a dead ring being read: stop at the first invalid record */
    Buf scratch;
} Ring;

static void
ring_release(Ring *r)
{
    r->closed = 1;
    if (r->busy) {  /* read() calls back into Python (msgpack decode): release at its end */
        r->release_pending = 1;
        return;
    }
    if (r->has_view) {
        PyBuffer_Release(&r->view);
        r->has_view = 0;
    }
    r->base = r->data = NULL;
}

static int
Ring_init(Ring *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buffer", "capacity", "recover", NULL};
    PyObject *obj;
    unsigned long long cap;
    int recover = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OK|p", kwlist, &obj, &cap, &recover))
        return -1;
    ring_release(self);
    if (cap < 4096 || cap % 8) {
        PyErr_SetString(PyExc_ValueError, "capacity must be a multiple of 8, at least 4096");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ring in use");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->has_view = 1;
    if ((uint64_t)self->view.len < DATA_AT + cap) {
        ring_release(self);
        PyErr_SetString(PyExc_ValueError, "buffer smaller than the ring");
        return -1;
    }
    self->base = self->view.buf;
    self->data = self->base + DATA_AT;
    self->cap = cap;
    self->recovering = recover;
    uint64_t tail;
    memcpy(&tail, self->base + TAIL_AT, 8);
    self->tail = self->rd = self->head = recover ? tail : 0;
    if (recover)
        self->head = UINT64_MAX;
    self->rows_in = self->rows_out = 0;
    self->closed = 0;
    self->busy = self->release_pending = 0;
    return 0;
}

static void
Ring_dealloc(Ring *self)
{
    ring_release(self);
    PyMem_Free(self->scratch.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Room for a record of `size` bytes at head: returns the gap to skip first
   (to the lap's end) or -1 when the ring is full. */
static int64_t
ring_room(Ring *r, uint64_t size)
{
    uint64_t pos = r->head % r->cap;
    uint64_t gap = pos + size > r->cap ? r->cap - pos : 0;
    if (r->head + gap + size - r->tail > r->cap)
        return -1;
    return (int64_t)gap;
}

/* Records committed by any ring of the process: producer_running() reads it
   to tell whether a producer has committed lately. */
static uint64_t commits_total;

static void
ring_commit(Ring *r, uint64_t gap, uint32_t sid, double ts, uint32_t kind, const char *payload, size_t plen)
{
    if (gap) {
        if (gap >= HDR) {  /* a PAD record tells the reader the lap ends here */
            RecHdr pad = {0, (uint32_t)gap, 0, 0.0, K_PAD, 0};
            pad.check = rec_check(r->head, pad.len, 0, K_PAD);
            char *at = r->data + r->head % r->cap;
            memcpy(at + 8, (char *)&pad + 8, HDR - 8);
            memcpy(at, &r->head, 8);
        }
        r->head += gap;
    }
    uint32_t len = (uint32_t)((HDR + plen + 7) & ~(size_t)7);
    r->last_start = r->head;
    RecHdr h = {r->head, len, sid, ts, kind, 0};
    h.check = rec_check(r->head, len, sid, kind);
    char *at = r->data + r->head % r->cap;
    memcpy(at + HDR, payload, plen);
    memcpy(at + 8, (char *)&h + 8, HDR - 8);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);  /* the commit word last */
    memcpy(at, &h.off, 8);
    r->head += len;
    commits_total++;
}

static PyObject *
Ring_put(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* put(sid, ts, kind, payload, rows) -> bool (False: full) */
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put(sid, ts, kind, payload, rows)");
        return NULL;
    }
    long sid = PyLong_AsLong(args[0]);
    double ts = PyFloat_AsDouble(args[1]);
    long kind = PyLong_AsLong(args[2]);
    long rows = PyLong_AsLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= MAX_STREAMS || (kind != K_PACK && kind != K_BATCH)) {
        PyErr_SetString(PyExc_ValueError, "bad sid or kind");
        return NULL;
    }
    if (!self->data || self->closed || self->release_pending) {
        PyErr_SetString(PyExc_RuntimeError, "the journal ring is closed");
        return NULL;
    }
    Py_buffer pb;
    if (PyObject_GetBuffer(args[3], &pb, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t size = (HDR + 4 + (uint64_t)pb.len + 7) & ~(uint64_t)7;
    if (size > self->cap / 2 || pb.len > UINT32_MAX) {
        PyBuffer_Release(&pb);
        PyErr_SetString(PyExc_OverflowError, "record larger than half the ring");
        return NULL;
    }
    int64_t gap = ring_room(self, size);
    if (gap < 0) {
        PyBuffer_Release(&pb);
        Py_RETURN_FALSE;
    }
    Buf *b = &self->scratch;  /* payload: its exact length (u32), then the bytes */
    b->len = 0;
    if (buf_reserve(b, 4 + (size_t)pb.len) < 0) {
        PyBuffer_Release(&pb);
        return PyErr_NoMemory();
    }
    uint32_t plen = (uint32_t)pb.len;
    PUT(b, &plen, 4);
    PUT(b, pb.buf, (size_t)pb.len);
    ring_commit(self, (uint64_t)gap, (uint32_t)sid, ts, (uint32_t)kind, b->p, b->len);
    self->rows_in += (uint64_t)rows;
    PyBuffer_Release(&pb);
    Py_RETURN_TRUE;
}

/* the record at logical offset `off`, or NULL if none is committed there */
static const RecHdr *
ring_record_at(Ring *r, uint64_t off)
{
    uint64_t pos = off % r->cap;
    if (r->cap - pos < HDR)
        return NULL;
    const RecHdr *h = (const RecHdr *)(r->data + pos);
    if (h->off != off || h->len < HDR || h->len % 8 || h->len > r->cap - pos ||
        h->check != rec_check(h->off, h->len, h->sid, h->kind))
        return NULL;
    return h;
}

static PyObject *
Ring_relocate(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* relocate(sid, ts, payload, rows) -> offset or None: the writer journals rows
       it already holds (a BATCH record) again at the head, so the room behind them
       can be reused; only while everything put has been read (the copy must not
       overtake unread rows of its stream). Counted as put and read. */
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "relocate(sid, ts, payload, rows)");
        return NULL;
    }
    if (!self->data || self->closed || self->release_pending || self->rd != self->head)
        Py_RETURN_NONE;
    PyObject *kind = PyLong_FromLong(K_BATCH);
    if (!kind)
        return NULL;
    PyObject *put_args[5] = {args[0], args[1], kind, args[2], args[3]};
    PyObject *ok = Ring_put(self, put_args, 5);
    Py_DECREF(kind);
    if (!ok)
        return NULL;
    int done = ok == Py_True;
    Py_DECREF(ok);
    if (!done)
        Py_RETURN_NONE;
    long rows = PyLong_AsLong(args[3]);
    self->rows_out += (uint64_t)rows;
    self->rd = self->head;
    return PyLong_FromUnsignedLongLong(self->last_start);
}

/* -- decoding (the writer side) -- */

#define KEY_CACHE 256
static PyObject *key_cache[KEY_CACHE];
static PyObject *str_ts;  /* "_ts" */

static PyObject *
cached_key(const char *s, uint16_t n)
{
    uint32_t h = 2166136261u ^ n;
    for (uint16_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    PyObject **slot = &key_cache[h & (KEY_CACHE - 1)];
    PyObject *k = *slot;
    if (k && PyUnicode_GET_LENGTH(k) == n && memcmp(PyUnicode_DATA(k), s, n) == 0) {
        Py_INCREF(k);
        return k;
    }
    k = PyUnicode_FromStringAndSize(s, n);
    if (!k)
        return NULL;
    PyUnicode_InternInPlace(&k);
    Py_XSETREF(*slot, k);
    Py_INCREF(k);
    return k;
}

/* Rows the writer decodes hold only numbers, str, None and flat lists: no cycle
   is possible, and nothing mutates them but the merge (dict.update, which tracks
   a dict again if it must). Untracked, they never make the cyclic GC walk the
   writer's pending rows: a full collection over them, triggered by the writer's
   own allocations, held the GIL for 10-36 ms (W2 with list and array rows). */
static void
untrack_tree(PyObject *obj, int depth)
{
    if (depth > 64)
        return;
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &pos, &key, &value))
            untrack_tree(value, depth + 1);
    }
    else if (PyList_CheckExact(obj)) {
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(obj); k++)
            untrack_tree(PyList_GET_ITEM(obj, k), depth + 1);
    }
    else
        return;
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
}

static PyObject *
dec_scalar(uint8_t tag, const char **p)
{
    double d;
    int64_t i;
    uint64_t u;
    switch (tag) {
    case T_F64: memcpy(&d, *p, 8); *p += 8; return PyFloat_FromDouble(d);
    case T_I64: memcpy(&i, *p, 8); *p += 8; return PyLong_FromLongLong(i);
    case T_U64: memcpy(&u, *p, 8); *p += 8; return PyLong_FromUnsignedLongLong(u);
    case T_TRUE: Py_RETURN_TRUE;
    case T_FALSE: Py_RETURN_FALSE;
    case T_NONE: Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "bad value tag %d in the journal", tag);
    return NULL;
}

static PyObject *cached_key(const char *s, uint16_t n);

static PyObject *
dec_value(const char **p)
{
    uint8_t tag = (uint8_t)**p;
    *p += 1;
    uint32_t n;
    if (tag == T_DICT) {  /* str keys, values of the kinds below: no cycle, untracked */
        memcpy(&n, *p, 4);
        *p += 4;
        PyObject *d = PyDict_New();
        if (!d)
            return NULL;
        for (uint32_t k = 0; k < n; k++) {
            uint16_t kl;
            memcpy(&kl, *p, 2);
            *p += 2;
            PyObject *key = cached_key(*p, kl);
            *p += kl;
            PyObject *val = key ? dec_value(p) : NULL;
            if (!val || PyDict_SetItem(d, key, val) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(val);
                Py_DECREF(d);
                return NULL;
            }
            Py_DECREF(key);
            Py_DECREF(val);
        }
        if (PyObject_GC_IsTracked(d))
            PyObject_GC_UnTrack(d);
        return d;
    }
    if (tag == T_STR) {
        memcpy(&n, *p, 4);
        *p += 4;
        PyObject *s = PyUnicode_DecodeASCII(*p, n, NULL);
        *p += n;
        return s;
    }
    if (tag == T_FLIST || tag == T_LIST) {
        memcpy(&n, *p, 4);
        *p += 4;
        PyObject *list = PyList_New(n);
        if (!list)
            return NULL;
        for (uint32_t k = 0; k < n; k++) {
            PyObject *item;
            if (tag == T_FLIST) {
                double d;
                memcpy(&d, *p, 8);
                *p += 8;
                item = PyFloat_FromDouble(d);
            }
            else {
                uint8_t t = (uint8_t)**p;
                *p += 1;
                item = dec_scalar(t, p);
            }
            if (!item) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, k, item);
        }
        PyObject_GC_UnTrack(list);  /* numbers only: see untrack_tree */
        return list;
    }
    return dec_scalar(tag, p);
}

static PyObject *
dec_bin(const char *p, const char *end, PyObject *ts)
{
    uint32_t n;
    memcpy(&n, p, 4);
    p += 4;
    PyObject *row = PyDict_New();
    if (!row)
        return NULL;
    for (uint32_t k = 0; k < n; k++) {
        uint16_t kl;
        memcpy(&kl, p, 2);
        p += 2;
        if (p + kl > end)
            goto bad;
        PyObject *key = cached_key(p, kl);
        p += kl;
        if (!key)
            goto fail;
        PyObject *val = dec_value(&p);
        if (!val || PyDict_SetItem(row, key, val) < 0) {
            Py_DECREF(key);
            Py_XDECREF(val);
            goto fail;
        }
        Py_DECREF(key);
        Py_DECREF(val);
        if (p > end)
            goto bad;
    }
    if (PyDict_SetItem(row, str_ts, ts) < 0)  /* _ts last, as the Python path stores it */
        goto fail;
    if (PyObject_GC_IsTracked(row))
        PyObject_GC_UnTrack(row);
    return row;
bad:
    PyErr_SetString(PyExc_ValueError, "a journal record ends inside its payload");
fail:
    Py_DECREF(row);
    return NULL;
}

/* Rows read in one call, grouped by stream in order of first appearance: the
   writer then extends each stream's pending lists once per call, not once per
   row (interleaved streams made that per-row Python step the writer's largest
   cost, all of it holding the GIL). */
typedef struct {
    long sid;
    PyObject *ts, *rows, *keys;
} Group;

typedef struct {
    Group *g;
    Py_ssize_t n, cap;
} Groups;

static void
groups_free(Groups *gs)
{
    for (Py_ssize_t i = 0; i < gs->n; i++) {
        Py_XDECREF(gs->g[i].ts);
        Py_XDECREF(gs->g[i].rows);
        Py_XDECREF(gs->g[i].keys);
    }
    PyMem_Free(gs->g);
}

static Group *
group_of(Groups *gs, long sid)
{
    for (Py_ssize_t i = gs->n - 1; i >= 0; i--)  /* few streams per call: a linear search */
        if (gs->g[i].sid == sid)
            return &gs->g[i];
    if (gs->n == gs->cap) {
        Py_ssize_t cap = gs->cap ? gs->cap * 2 : 8;
        Group *g = PyMem_Realloc(gs->g, (size_t)cap * sizeof(Group));
        if (!g) {
            PyErr_NoMemory();
            return NULL;
        }
        gs->g = g;
        gs->cap = cap;
    }
    Group *g = &gs->g[gs->n];
    g->sid = sid;
    g->ts = PyList_New(0);
    g->rows = PyList_New(0);
    g->keys = PyList_New(0);
    gs->n++;
    if (!g->ts || !g->rows || !g->keys)
        return NULL;
    return g;
}

static int
append_row(Groups *gs, long sid, PyObject *ts, PyObject *row, uint64_t key)
{
    Group *g = group_of(gs, sid);
    if (!g)
        return -1;
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    int rc = (!k || PyList_Append(g->ts, ts) < 0 || PyList_Append(g->rows, row) < 0 ||
              PyList_Append(g->keys, k) < 0) ? -1 : 0;
    Py_XDECREF(k);
    return rc;
}

static PyObject *
groups_result(Groups *gs)
{
    PyObject *out = PyList_New(gs->n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < gs->n; i++) {
        PyObject *t = Py_BuildValue("(lOOO)", gs->g[i].sid, gs->g[i].ts, gs->g[i].rows, gs->g[i].keys);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *
Ring_read(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* read(max_rows, upto, decode) -> (rows read, [(sid, ts, rows, keys), ...]):
       rows of the records from the read position up to logical offset `upto`
       (None: the head), grouped by stream, each stream's in append order. */
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read(max_rows, upto, decode)");
        return NULL;
    }
    Py_ssize_t max_rows = PyLong_AsSsize_t(args[0]);
    if (max_rows == -1 && PyErr_Occurred())
        return NULL;
    uint64_t upto = self->head;
    if (args[1] != Py_None) {
        upto = PyLong_AsUnsignedLongLong(args[1]);
        if (PyErr_Occurred())
            return NULL;
        if (upto > self->head)
            upto = self->head;
    }
    PyObject *decode = args[2];
    Groups gs = {NULL, 0, 0};
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    self->busy = 1;
    while (self->data && !self->release_pending && self->rd < upto && got < max_rows) {
        uint64_t pos = self->rd % self->cap;
        if (self->cap - pos < HDR) {  /* a gap too short for a PAD: the lap ends */
            self->rd += self->cap - pos;
            continue;
        }
        const RecHdr *h = ring_record_at(self, self->rd);
        if (!h) {
            if (self->recovering)
                break;  /* torn or stale: where the dead process stopped */
            PyErr_Format(PyExc_RuntimeError, "journal ring corrupt at offset %llu", (unsigned long long)self->rd);
            goto done;
        }
        uint64_t off = self->rd;
        const char *payload = (const char *)h + HDR;
        const char *end = (const char *)h + h->len;
        if (h->kind == K_PAD) {
            self->rd += h->len;
            continue;
        }
        if (h->kind == K_BIN) {
            PyObject *ts = PyFloat_FromDouble(h->ts);  /* one float: the row's _ts and the ts list's */
            PyObject *row = ts ? dec_bin(payload, end, ts) : NULL;
            int rc = row ? append_row(&gs, h->sid, ts, row, off << KEY_SHIFT) : -1;
            Py_XDECREF(row);
            Py_XDECREF(ts);
            if (rc < 0)
                goto done;
            got++;
        }
        else if (h->kind == K_PACK || h->kind == K_BATCH) {
            uint32_t plen;  /* records are padded: the payload starts with its length */
            memcpy(&plen, payload, 4);
            PyObject *raw = PyBytes_FromStringAndSize(payload + 4, plen);
            PyObject *value = raw ? PyObject_CallOneArg(decode, raw) : NULL;
            Py_XDECREF(raw);
            if (!value)
                goto done;
            int rc = 0;
            untrack_tree(value, 0);
            if (h->kind == K_PACK) {
                PyObject *ts = PyFloat_FromDouble(h->ts);
                rc = ts ? append_row(&gs, h->sid, ts, value, off << KEY_SHIFT) : -1;
                Py_XDECREF(ts);
                got++;
            }
            else if (PyList_Check(value) && PyList_GET_SIZE(value) == 2 && PyList_Check(PyList_GET_ITEM(value, 0)) &&
                     PyList_Check(PyList_GET_ITEM(value, 1)) &&
                     PyList_GET_SIZE(PyList_GET_ITEM(value, 0)) == PyList_GET_SIZE(PyList_GET_ITEM(value, 1))) {
                PyObject *tsl = PyList_GET_ITEM(value, 0), *rows = PyList_GET_ITEM(value, 1);
                for (Py_ssize_t k = 0; k < PyList_GET_SIZE(rows) && rc == 0; k++)
                    rc = append_row(&gs, h->sid, PyList_GET_ITEM(tsl, k), PyList_GET_ITEM(rows, k),
                                    (off << KEY_SHIFT) | (uint64_t)k);
                got += PyList_GET_SIZE(rows);
            }
            else {
                PyErr_SetString(PyExc_ValueError, "bad batch record in the journal");
                rc = -1;
            }
            Py_DECREF(value);
            if (rc < 0)
                goto done;
        }
        else {
            PyErr_Format(PyExc_RuntimeError, "unknown journal record kind %u", h->kind);
            goto done;
        }
        self->rd += h->len;
    }
    self->rows_out += (uint64_t)got;
    PyObject *groups = groups_result(&gs);
    if (groups) {
        result = Py_BuildValue("(nN)", got, groups);
    }
done:
    self->busy = 0;
    if (self->release_pending) {
        self->release_pending = 0;
        ring_release(self);
    }
    groups_free(&gs);
    return result;
}

static PyObject *
Ring_set_mark(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_mark(sid, key)");
        return NULL;
    }
    long sid = PyLong_AsLong(args[0]);
    unsigned long long key = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= MAX_STREAMS) {
        PyErr_SetString(PyExc_ValueError, "bad sid");
        return NULL;
    }
    if (!self->base || self->release_pending)
        Py_RETURN_NONE;  /* released (the session closed): nothing to mark */
    uint64_t k = key;
    memcpy(self->base + MARKS_AT + 8 * sid, &k, 8);
    Py_RETURN_NONE;
}

static PyObject *
Ring_get_mark(Ring *self, PyObject *arg)
{
    long sid = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= MAX_STREAMS || !self->base) {
        PyErr_SetString(PyExc_ValueError, "bad sid, or the ring is released");
        return NULL;
    }
    uint64_t k;
    memcpy(&k, self->base + MARKS_AT + 8 * sid, 8);
    return PyLong_FromUnsignedLongLong(k);
}

static PyObject *
Ring_set_tail(Ring *self, PyObject *arg)
{
    unsigned long long off = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (!self->base || self->release_pending)
        Py_RETURN_NONE;
    if (off > self->rd)
        off = self->rd;
    if (off > self->tail) {
        uint64_t t = off;
        memcpy(self->base + TAIL_AT, &t, 8);
        self->tail = t;
    }
    Py_RETURN_NONE;
}

static PyObject *
Ring_release(Ring *self, PyObject *unused)
{
    ring_release(self);
    Py_RETURN_NONE;
}

static PyObject *
Ring_close(Ring *self, PyObject *unused)
{
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *
Ring_get_u64(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(*(uint64_t *)((char *)self + (size_t)closure));
}

static PyObject *
Ring_get_closed(Ring *self, void *closure)
{
    return PyBool_FromLong(self->closed || !self->data);
}

static PyObject *Ring_put_rows(Ring *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef Ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Ring_put, METH_FASTCALL, "put(sid, ts, kind, payload, rows) -> False when full"},
    {"read", (PyCFunction)(void (*)(void))Ring_read, METH_FASTCALL, "read(max_rows, upto, decode) -> (rows read, [(sid, ts, rows, keys), ...])"},
    {"put_rows", (PyCFunction)(void (*)(void))Ring_put_rows, METH_FASTCALL, "put_rows(sid, stamps, rows) -> rows put"},
    {"relocate", (PyCFunction)(void (*)(void))Ring_relocate, METH_FASTCALL, "relocate(sid, ts, payload, rows) -> offset or None"},
    {"set_mark", (PyCFunction)(void (*)(void))Ring_set_mark, METH_FASTCALL, "rows of stream sid with key < key are stored"},
    {"get_mark", (PyCFunction)Ring_get_mark, METH_O, "a stream's mark"},
    {"set_tail", (PyCFunction)Ring_set_tail, METH_O, "records before this offset are stored: their room is free"},
    {"release", (PyCFunction)Ring_release, METH_NOARGS, "drop the buffer (appends then take the Python path)"},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "refuse further puts (appends then take the Python path)"},
    {NULL}};

#define U64_FIELD(name, field, doc) {name, (getter)Ring_get_u64, NULL, doc, (void *)offsetof(Ring, field)}
static PyGetSetDef Ring_getset[] = {
    U64_FIELD("head", head, "logical offset of the next record"),
    U64_FIELD("tail", tail, "records before it are stored"),
    U64_FIELD("read_pos", rd, "the writer's read position"),
    U64_FIELD("capacity", cap, "ring bytes"),
    U64_FIELD("rows_in", rows_in, "rows put"),
    U64_FIELD("rows_out", rows_out, "rows read"),
    {"closed", (getter)Ring_get_closed, NULL, "puts refused", NULL},
    {NULL}};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dreamlake._hotpath.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session's journal ring over a writable buffer.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

/* ---------------------------------------------------------------- encoding */

/* 1: encoded; 0: not a value C takes (Python decides) ; -1: memory error */
static int
enc_number(Buf *b, PyObject *v)
{
    if (PyFloat_CheckExact(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        put_u8(b, T_F64);
        PUT(b, &d, 8);
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            if (i == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            put_u8(b, T_I64);
            PUT(b, &i, 8);
            return 1;
        }
        if (overflow < 0)
            return 0;
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;  /* beyond 64 bits: Python raises the ValueError */
        }
        put_u8(b, T_U64);
        PUT(b, &u, 8);
        return 1;
    }
    if (v == Py_True) { put_u8(b, T_TRUE); return 1; }
    if (v == Py_False) { put_u8(b, T_FALSE); return 1; }
    if (v == Py_None) { put_u8(b, T_NONE); return 1; }
    return 0;
}

/* numpy scalars and 1-D arrays of float/int/bool (native byte order), by the
   buffer protocol: numpy is never imported. Other dtypes go to Python. */
static int
enc_numpy(Buf *b, PyObject *v)
{
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_FORMAT | PyBUF_STRIDES) < 0) {
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    const char *f = view.format ? view.format : "B";
    if (*f == '@' || *f == '=' || *f == '<')
        f++;
    char code = f[0];
    Py_ssize_t n = view.ndim == 0 ? 1 : view.shape[0];
    Py_ssize_t stride = view.ndim == 0 ? view.itemsize : view.strides[0];
    int kind = 0;  /* 1 float, 2 signed, 3 unsigned, 4 bool */
    if (f[1] != '\0' || view.ndim > 1 || n > C_MAX_LIST)
        goto out;
    if ((code == 'd' && view.itemsize == 8) || (code == 'f' && view.itemsize == 4))
        kind = 1;
    else if (strchr("bhilq", code) && view.itemsize <= 8)
        kind = 2;
    else if (strchr("BHILQ", code) && view.itemsize <= 8)
        kind = 3;
    else if (code == '?' && view.itemsize == 1)
        kind = 4;
    else
        goto out;
    if (buf_reserve(b, 5 + (size_t)n * 9) < 0) {
        rc = -1;
        goto out;
    }
    if (view.ndim == 1) {
        uint32_t count = (uint32_t)n;
        put_u8(b, kind == 1 ? T_FLIST : T_LIST);
        PUT(b, &count, 4);
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *at = (const char *)view.buf + k * stride;
        if (kind == 1) {
            double d;
            if (view.itemsize == 8)
                memcpy(&d, at, 8);
            else {
                float x;
                memcpy(&x, at, 4);
                d = (double)x;
            }
            if (view.ndim == 0)
                put_u8(b, T_F64);
            PUT(b, &d, 8);
        }
        else if (kind == 4)
            put_u8(b, *at ? T_TRUE : T_FALSE);
        else if (kind == 2) {
            int64_t i = 0;
            switch (view.itemsize) {
            case 1: { int8_t x; memcpy(&x, at, 1); i = x; break; }
            case 2: { int16_t x; memcpy(&x, at, 2); i = x; break; }
            case 4: { int32_t x; memcpy(&x, at, 4); i = x; break; }
            case 8: memcpy(&i, at, 8); break;
            default: goto out;
            }
            put_u8(b, T_I64);
            PUT(b, &i, 8);
        }
        else {
            uint64_t u = 0;
            switch (view.itemsize) {
            case 1: { uint8_t x; memcpy(&x, at, 1); u = x; break; }
            case 2: { uint16_t x; memcpy(&x, at, 2); u = x; break; }
            case 4: { uint32_t x; memcpy(&x, at, 4); u = x; break; }
            case 8: memcpy(&u, at, 8); break;
            default: goto out;
            }
            if (u <= (uint64_t)INT64_MAX) {
                int64_t i = (int64_t)u;
                put_u8(b, T_I64);
                PUT(b, &i, 8);
            }
            else {
                put_u8(b, T_U64);
                PUT(b, &u, 8);
            }
        }
    }
    rc = 1;
out:
    PyBuffer_Release(&view);
    return rc;
}

static int
enc_value(Buf *b, PyObject *v)
{
    if (buf_reserve(b, 16) < 0)
        return -1;
    int rc = enc_number(b, v);
    if (rc)
        return rc;
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) {
        if (!PyUnicode_IS_ASCII(v) || PyUnicode_GET_LENGTH(v) > C_MAX_STR)
            return 0;  /* Python checks non-ASCII text (lone surrogates) */
        uint32_t n = (uint32_t)PyUnicode_GET_LENGTH(v);
        if (buf_reserve(b, 5 + n) < 0)
            return -1;
        put_u8(b, T_STR);
        PUT(b, &n, 4);
        PUT(b, PyUnicode_DATA(v), n);
        return 1;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        PyObject **items = PySequence_Fast_ITEMS(v);
        if (n > C_MAX_LIST)
            return 0;
        if (buf_reserve(b, 5 + (size_t)n * 9) < 0)
            return -1;
        uint32_t count = (uint32_t)n;
        Py_ssize_t k = 0;
        while (k < n && PyFloat_CheckExact(items[k]))
            k++;
        if (k == n) {  /* the robot's list of floats */
            put_u8(b, T_FLIST);
            PUT(b, &count, 4);
            for (k = 0; k < n; k++) {
                double d = PyFloat_AS_DOUBLE(items[k]);
                PUT(b, &d, 8);
            }
            return 1;
        }
        put_u8(b, T_LIST);
        PUT(b, &count, 4);
        for (k = 0; k < n; k++) {
            rc = enc_number(b, items[k]);
            if (rc <= 0)
                return rc;  /* nested containers, str items ...: Python */
        }
        return 1;
    }
    if (PyFloat_Check(v)) {  /* float subclasses (numpy.float64): stored as their value */
        double d = PyFloat_AS_DOUBLE(v);
        put_u8(b, T_F64);
        PUT(b, &d, 8);
        return 1;
    }
    if (strncmp(t->tp_name, "numpy.", 6) == 0)
        return enc_numpy(b, v);
    return 0;
}

/* A field name (ASCII, at most 1024 characters: checked by the caller): u16 length, bytes. */
static int
put_key(Buf *b, PyObject *key, Py_ssize_t kl)
{
    if (buf_reserve(b, 2 + (size_t)kl) < 0)
        return -1;
    uint16_t k16 = (uint16_t)kl;
    PUT(b, &k16, 2);
    PUT(b, PyUnicode_DATA(key), (size_t)kl);
    return 0;
}

/* A field's value: enc_value's, or a dict of str keys whose values enc_value
   takes (a camera's {"width": 640, "height": 480, "frame_id": 7}); a dict in
   such a dict goes to Python. 1 done, 0 Python decides, -1 memory error. */
static int
enc_field_value(Buf *b, PyObject *v)
{
    if (!PyDict_CheckExact(v))
        return enc_value(b, v);
    Py_ssize_t n = PyDict_GET_SIZE(v);
    if (n > C_MAX_LIST || buf_reserve(b, 5) < 0)
        return n > C_MAX_LIST ? 0 : -1;
    uint32_t count = (uint32_t)n;
    put_u8(b, T_DICT);
    PUT(b, &count, 4);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(v, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key) || PyUnicode_GET_LENGTH(key) > 1024 ||
            PyDict_Check(value))
            return 0;
        Py_ssize_t kl = PyUnicode_GET_LENGTH(key);
        if (put_key(b, key, kl) < 0)
            return -1;
        int rc = enc_value(b, value);
        if (rc <= 0)
            return rc;
    }
    return PyDict_GET_SIZE(v) == n ? 1 : 0;  /* changed under us (a __hash__ of a key): Python */
}

/* A row dict of str keys (``"_ts"`` skipped: the record carries it) into a BIN
   payload in b; 1 done, 0 a key or value C does not take, -1 memory error. */
static int
enc_row_dict(Buf *b, PyObject *row)
{
    b->len = 0;
    if (buf_reserve(b, 4) < 0)
        return -1;
    b->len = 4;
    uint32_t nfields = 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(row, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key) || PyUnicode_GET_LENGTH(key) > 1024)
            return 0;
        Py_ssize_t kl = PyUnicode_GET_LENGTH(key);
        if (key == str_ts || (kl == 3 && memcmp(PyUnicode_DATA(key), "_ts", 3) == 0))
            continue;
        if (put_key(b, key, kl) < 0)
            return -1;
        int rc = enc_field_value(b, value);
        if (rc <= 0)
            return rc;
        nfields++;
    }
    memcpy(b->p, &nfields, 4);
    return nfields ? 1 : 0;
}

static PyObject *
Ring_put_rows(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* put_rows(sid, stamps, rows) -> how many of the rows (dicts) went in, in order:
       fewer when the ring is full or a row holds something C does not take. */
    if (nargs != 3 || !PyList_Check(args[1]) || !PyList_Check(args[2]) ||
        PyList_GET_SIZE(args[1]) != PyList_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "put_rows(sid, stamps list, rows list)");
        return NULL;
    }
    long sid = PyLong_AsLong(args[0]);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= MAX_STREAMS) {
        PyErr_SetString(PyExc_ValueError, "bad sid");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[2]), k = 0;
    if (!self->data || self->closed || self->release_pending)
        return PyLong_FromSsize_t(0);
    for (; k < n; k++) {
        PyObject *row = PyList_GET_ITEM(args[2], k);
        double ts = PyFloat_AsDouble(PyList_GET_ITEM(args[1], k));
        if (ts == -1.0 && PyErr_Occurred())
            return NULL;
        if (!PyDict_CheckExact(row))
            break;
        int rc = enc_row_dict(&self->scratch, row);
        if (rc < 0)
            return PyErr_NoMemory();
        if (rc == 0)
            break;
        uint64_t size = (HDR + self->scratch.len + 7) & ~(uint64_t)7;
        int64_t gap = size <= self->cap / 2 ? ring_room(self, size) : -1;
        if (gap < 0)
            break;
        ring_commit(self, (uint64_t)gap, (uint32_t)sid, ts, K_BIN, self->scratch.p, self->scratch.len);
        self->rows_in++;
    }
    return PyLong_FromSsize_t(k);
}

/* ---------------------------------------------------------------- TrackBase */

typedef struct {
    PyObject_HEAD
    Ring *ring;       /* NULL: every append takes the Python path */
    Clock *clock;
    uint32_t sid;
} TrackBase;

static PyObject *str_append_py;

static PyObject *
track_fallback(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[16];
    PyObject **stack = total + 1 <= 16 ? small : PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
    if (!stack)
        return PyErr_NoMemory();
    stack[0] = self;
    if (total)
        memcpy(stack + 1, args, (size_t)total * sizeof(PyObject *));
    PyObject *res = PyObject_VectorcallMethod(str_append_py, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return res;
}

static PyObject *
TrackBase_append(TrackBase *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Ring *r = self->ring;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs || !kwnames || !r || !r->data || r->closed || r->release_pending)
        return track_fallback((PyObject *)self, args, nargsf, kwnames);
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    Buf *b = &r->scratch;
    b->len = 0;
    if (buf_reserve(b, 4) < 0)
        return PyErr_NoMemory();
    b->len = 4;
    uint32_t nfields = 0;
    PyObject *ts_obj = NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        Py_ssize_t kl = PyUnicode_GET_LENGTH(key);
        if (key == str_ts || (kl == 3 && PyUnicode_IS_ASCII(key) && memcmp(PyUnicode_DATA(key), "_ts", 3) == 0)) {
            ts_obj = args[i];
            continue;
        }
        if (!PyUnicode_IS_ASCII(key) || kl > 1024)
            return track_fallback((PyObject *)self, args, nargsf, kwnames);
        if (put_key(b, key, kl) < 0)
            return PyErr_NoMemory();
        int rc = enc_field_value(b, args[i]);
        if (rc < 0)
            return PyErr_NoMemory();
        if (rc == 0)
            return track_fallback((PyObject *)self, args, nargsf, kwnames);
        nfields++;
    }
    if (!nfields)
        return track_fallback((PyObject *)self, args, nargsf, kwnames);
    memcpy(b->p, &nfields, 4);
    uint64_t size = (HDR + b->len + 7) & ~(uint64_t)7;
    int64_t gap = size <= r->cap / 2 ? ring_room(r, size) : -1;
    if (gap < 0)  /* full (or huge): Python waits for room or applies the policy */
        return track_fallback((PyObject *)self, args, nargsf, kwnames);
    double t;
    int st = clock_stamp(self->clock, ts_obj, &t);
    if (st < 0)
        return NULL;
    if (st == 0)
        return track_fallback((PyObject *)self, args, nargsf, kwnames);
    ring_commit(r, (uint64_t)gap, self->sid, t, K_BIN, b->p, b->len);
    r->rows_in++;
    Py_INCREF(self);
    return (PyObject *)self;
}

/* "_ts" of a batch row: 1 absent, 2 a finite number other than -1 (in *out), 0 anything
   else (None, -1, bool, non-finite, huge ints: the Python path decides) */
static int
batch_row_ts(PyObject *row, double *out)
{
    PyObject *v = PyDict_GetItemWithError(row, str_ts);
    if (!v)
        return PyErr_Occurred() ? -1 : 1;
    double t;
    if (!ts_number(v, &t) || !isfinite(t) || t == -1.0)
        return 0;
    *out = t;
    return 2;
}

static PyObject *
TrackBase_put_batch(TrackBase *self, PyObject *rows)
{
    /* _put_batch(rows list) -> the common append_batch in two C passes over the
       caller's dicts (no copies): the first checks every row as the journal
       encoder takes it (nothing is stamped or journaled unless all pass), the
       second stamps, encodes and journals each. Returns len(rows) when all went
       in; 0 when the batch is not one C takes (the Python path decides); on a
       full ring (k, stamps of rows[k:]): rows[k:] are stamped, not journaled. */
    Ring *r = self->ring;
    if (!PyList_CheckExact(rows) || !r || !r->data || r->closed || r->release_pending)
        return PyLong_FromLong(0);
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (n == 0)
        return PyLong_FromLong(0);
    Buf *b = &r->scratch;
    int kind = 0;  /* 1 no row holds _ts, 2 every row holds a number */
    double last_given = 0.0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *row = PyList_GET_ITEM(rows, k);
        if (!PyDict_CheckExact(row))
            return PyLong_FromLong(0);
        int tk = batch_row_ts(row, &last_given);
        if (tk < 0)
            return NULL;
        if (tk == 0 || (kind && tk != kind))
            return PyLong_FromLong(0);
        kind = tk;
        int rc = enc_row_dict(b, row);
        if (rc < 0)
            return PyErr_NoMemory();
        if (rc == 0 || ((HDR + b->len + 7) & ~(size_t)7) > r->cap / 2)
            return PyLong_FromLong(0);
    }
    Clock *c = self->clock;
    if (clock_switch(c) < 0)
        return NULL;
    double base = 0.0;
    if (kind == 1) {  /* the batch's auto stamps: consecutive, 1 us apart (Clock.reserve) */
        base = clock_auto(c);
        c->last_auto = base + (double)(n - 1) * 1e-6;
        c->tlast = c->last_auto;
    }
    else
        c->tlast = last_given;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *row = PyList_GET_ITEM(rows, k);
        double t = base + (double)k * 1e-6;
        if (kind == 2)
            batch_row_ts(row, &t);
        if (enc_row_dict(b, row) != 1)  /* checked above; only memory can fail */
            return PyErr_Occurred() ? NULL : PyErr_NoMemory();
        uint64_t size = (HDR + b->len + 7) & ~(uint64_t)7;
        int64_t gap = r->data && !r->closed && !r->release_pending ? ring_room(r, size) : -1;
        if (gap < 0) {  /* full: the caller journals the rest when there is room */
            PyObject *stamps = PyList_New(n - k);
            if (!stamps)
                return NULL;
            for (Py_ssize_t j = k; j < n; j++) {
                double tj = base + (double)j * 1e-6;
                if (kind == 2)
                    batch_row_ts(PyList_GET_ITEM(rows, j), &tj);
                PyObject *f = PyFloat_FromDouble(tj);
                if (!f) {
                    Py_DECREF(stamps);
                    return NULL;
                }
                PyList_SET_ITEM(stamps, j - k, f);
            }
            return Py_BuildValue("(nN)", k, stamps);
        }
        ring_commit(r, (uint64_t)gap, self->sid, t, K_BIN, b->p, b->len);
        r->rows_in++;
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
TrackBase_hot_bind(TrackBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* _hot_bind(ring or None, clock, sid) */
    if (nargs != 3 || (args[0] != Py_None && !PyObject_TypeCheck(args[0], &RingType)) ||
        !PyObject_TypeCheck(args[1], &ClockType)) {
        PyErr_SetString(PyExc_TypeError, "_hot_bind(ring or None, clock, sid)");
        return NULL;
    }
    long sid = PyLong_AsLong(args[2]);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= MAX_STREAMS) {
        PyErr_SetString(PyExc_ValueError, "a session may hold at most 65536 streams");
        return NULL;
    }
    Py_XSETREF(self->ring, args[0] == Py_None ? NULL : (Ring *)Py_NewRef(args[0]));
    Py_XSETREF(self->clock, (Clock *)Py_NewRef(args[1]));
    self->sid = (uint32_t)sid;
    Py_RETURN_NONE;
}

static int
TrackBase_traverse(TrackBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ring);
    Py_VISIT(self->clock);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
TrackBase_clear(TrackBase *self)
{
    Py_CLEAR(self->ring);
    Py_CLEAR(self->clock);
    return 0;
}

static void
TrackBase_dealloc(TrackBase *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    TrackBase_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef TrackBase_methods[] = {
    {"append", (PyCFunction)(void (*)(void))TrackBase_append, METH_FASTCALL | METH_KEYWORDS,
     "append(row=None, /, _ts=None, **fields): see Track._append_py for the rules."},
    {"_hot_bind", (PyCFunction)(void (*)(void))TrackBase_hot_bind, METH_FASTCALL, "_hot_bind(ring or None, clock, sid)"},
    {"_put_batch", (PyCFunction)TrackBase_put_batch, METH_O, "_put_batch(rows): append_batch's common case (see the C)"},
    {NULL}};

static PyType_Slot TrackBase_slots[] = {
    {Py_tp_methods, TrackBase_methods},
    {Py_tp_traverse, TrackBase_traverse},
    {Py_tp_clear, TrackBase_clear},
    {Py_tp_dealloc, TrackBase_dealloc},
    {Py_tp_doc, "C base of Track: the append() hot path."},
    {0, NULL}};

static PyType_Spec TrackBase_spec = {
    .name = "dreamlake._hotpath.TrackBase",
    .basicsize = sizeof(TrackBase),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = TrackBase_slots,
};

/* ---------------------------------------------------------------- module */

/* Does JSON text hold "null" or "$ ? memchr (vectorised) for 'n' and '$', which
   rows of numbers rarely hold, is several times faster than memmem here. */
static int
may_need_tags(const char *raw, Py_ssize_t n)
{
    const char *end = raw + n;
    for (const char *q = raw; (q = memchr(q, 'n', (size_t)(end - q))) != NULL; q++)
        if (end - q >= 4 && memcmp(q, "null", 4) == 0)
            return 1;
    for (const char *q = raw; (q = memchr(q, '$', (size_t)(end - q))) != NULL; q++)
        if (q > raw && q[-1] == '"')
            return 1;
    return 0;
}

/* frame_track_lines(raw, first_index, data_size, checked=False) -> (lines, starts, end) or None:
   `raw` is rows encoded as JSON lines (msgspec's encode_lines: one object and
   a newline each; a JSON text holds no raw newline); each line becomes
   {"index":<i>,"data":<row>} -- the bytes msgspec writes for a track line -- and
   `starts` holds each line's offset in the data file (u64, native order) when
   the file is `data_size` bytes long now; `end` is its size after them.
   None when `raw` holds "null" or "$ (a non-finite float, which msgspec
   writes as null, or a key that needs the tag escape) unless the caller has
   `checked` that it needs no tagging. It replaces the writer's per-row
   Python work (a struct per row, split, the offsets), a third of its time.
   It keeps the GIL: it is short, and giving the GIL up mid-write costs the
   writer a whole switch interval. */
static PyObject *
hotpath_frame_track_lines(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 3 && nargs != 4) || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "frame_track_lines(raw bytes, first_index, data_size, checked=False)");
        return NULL;
    }
    int checked = nargs == 4 && PyObject_IsTrue(args[3]);
    long long first = PyLong_AsLongLong(args[1]);
    unsigned long long size = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (first < 0) {
        PyErr_SetString(PyExc_ValueError, "first_index must be >= 0");
        return NULL;
    }
    const char *raw = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (!checked && may_need_tags(raw, n))
        Py_RETURN_NONE;  /* maybe a non-finite float or a tag key: the caller looks closer */
    Py_ssize_t lines = 0;
    for (const char *q = raw; (q = memchr(q, '\n', (size_t)(raw + n - q))) != NULL; q++)
        lines++;
    if (n && raw[n - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "raw must end with a newline");
        return NULL;
    }
    /* {"index":<at most 20 digits>,"data":  and  }  per line */
    Py_ssize_t bound = n + lines * (10 + 20 + 8 + 1);
    PyObject *out = PyBytes_FromStringAndSize(NULL, bound);
    PyObject *starts = PyBytes_FromStringAndSize(NULL, lines * 8);
    if (!out || !starts) {
        Py_XDECREF(out);
        Py_XDECREF(starts);
        return NULL;
    }
    char *o = PyBytes_AS_STRING(out);
    uint64_t *st = (uint64_t *)PyBytes_AS_STRING(starts);
    char *w = o;
    const char *line = raw;
    unsigned long long index = (unsigned long long)first;
    for (Py_ssize_t k = 0; k < lines; k++, index++) {
        const char *nl = memchr(line, '\n', (size_t)(raw + n - line));
        st[k] = size + (uint64_t)(w - o);
        memcpy(w, "{\"index\":", 9);
        w += 9;
        char digits[24];
        int d = 0;
        unsigned long long v = index;
        do {
            digits[d++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (d)
            *w++ = digits[--d];
        memcpy(w, ",\"data\":", 8);
        w += 8;
        memcpy(w, line, (size_t)(nl - line));
        w += nl - line;
        *w++ = '}';
        *w++ = '\n';
        line = nl + 1;
    }
    Py_ssize_t used = w - o;
    if (_PyBytes_Resize(&out, used) < 0) {
        Py_DECREF(starts);
        return NULL;
    }
    return Py_BuildValue("(NNK)", out, starts, size + (unsigned long long)used);
}

/* A producer counts as running for PRODUCER_WINDOW_NS after its last commit
   the writer saw. A producer that waits for the GIL commits nothing, so "has
   it committed since the last handoff" would stop handing over exactly when it
   matters; and a writer that keeps working (each syscall releasing and
   retaking the GIL) restarts the waiting thread's switch-interval timer every
   time, so a producer stalled for up to 30 ms. */
#define PRODUCER_WINDOW_NS 20000000LL
static uint64_t commits_seen;
static long long producer_seen_ns;

static long long
monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int
producer_running(void)
{
    long long now = monotonic_ns();
    if (commits_total != commits_seen) {
        commits_seen = commits_total;
        producer_seen_ns = now;
        return 1;
    }
    return now - producer_seen_ns < PRODUCER_WINDOW_NS;
}

/* handoff(pause_ns) -> bool: give the GIL to a producer, for real.
   Releasing and at once retaking the GIL (os.sched_yield) hands it over only if
   the waiting thread wakes first, which it rarely does. So while a producer
   runs (see producer_running) the writer sleeps `pause_ns` without the GIL:
   the producer takes it, and the writer gets it back at the producer's next
   switch interval or blocking call. With no producer running (one waiting in
   flush(), or none at all) it returns at once: the writer keeps full speed. */
static PyObject *
hotpath_handoff(PyObject *mod, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    if (ns <= 0 || !producer_running())
        Py_RETURN_FALSE;
    static __thread int slack_set;
    if (!slack_set) {  /* the default 50 us timer slack would triple a short pause */
        prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
        slack_set = 1;
    }
    struct timespec pause = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    Py_BEGIN_ALLOW_THREADS
    nanosleep(&pause, NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

static PyObject *
hotpath_producers_running(PyObject *mod, PyObject *unused)
{
    return PyBool_FromLong(producer_running());
}

static PyMethodDef hotpath_functions[] = {
    {"producers_running", (PyCFunction)hotpath_producers_running, METH_NOARGS,
     "producers_running() -> True if a record was committed in the last 20 ms the writer looked"},
    {"handoff", (PyCFunction)hotpath_handoff, METH_O, "handoff(pause_ns) -> True if it gave the GIL to a running producer"},
    {"frame_track_lines", (PyCFunction)(void (*)(void))hotpath_frame_track_lines, METH_FASTCALL,
     "frame_track_lines(raw, first_index, data_size, checked=False) -> (track lines, u64 line starts, data size after) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "dreamlake._hotpath", "The append() hot path in C (see _hotpath.c).", -1, hotpath_functions,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if (PyType_Ready(&StampCellType) < 0 || PyType_Ready(&ClockType) < 0 || PyType_Ready(&RingType) < 0)
        return NULL;
    str_ts = PyUnicode_InternFromString("_ts");
    str_append_py = PyUnicode_InternFromString("_append_py");
    if (!str_ts || !str_append_py)
        return NULL;
    PyObject *m = PyModule_Create(&hotpath_module);
    if (!m)
        return NULL;
    PyObject *track_base = PyType_FromSpec(&TrackBase_spec);
    if (!track_base || PyModule_AddObject(m, "TrackBase", track_base) < 0 ||
        PyModule_AddObject(m, "Clock", Py_NewRef(&ClockType)) < 0 ||
        PyModule_AddObject(m, "Ring", Py_NewRef(&RingType)) < 0 ||
        PyModule_AddIntConstant(m, "DATA_AT", DATA_AT) < 0 || PyModule_AddIntConstant(m, "MARKS_AT", MARKS_AT) < 0 ||
        PyModule_AddIntConstant(m, "TAIL_AT", TAIL_AT) < 0 || PyModule_AddIntConstant(m, "MAX_STREAMS", MAX_STREAMS) < 0 ||
        PyModule_AddIntConstant(m, "KEY_SHIFT", KEY_SHIFT) < 0 || PyModule_AddIntConstant(m, "PACK", K_PACK) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", K_BATCH) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
