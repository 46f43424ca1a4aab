/* lstat of many paths in one call, without the GIL and on several threads.
 *
 * A walk without a watcher must lstat every known name (a file rewritten in place leaves its
 * directory's listing as it was). On the 2-vCPU VMs we measure on, one lstat costs ~2.5 us in
 * the kernel and os.lstat adds ~1 us of Python around it; the ~10k names of the Django tree
 * took 34-39 ms through os.lstat, 24-25 ms in one C loop and 13-14 ms on two threads. No
 * library gives exact nanosecond stat data for a batch of paths (see the README's design
 * section), so this is the one piece of C in snapd. It is optional: snapd/batchstat.py falls
 * back to os.lstat when it is not built.
 *
 * lstat_compare(dirfd, paths, nodes, threads) -> (status, keys, sizes, links)
 *   paths: a sequence of bytes, relative to dirfd (no NUL bytes; intermediate symlinks are
 *   followed, the last one is not: fstatat(AT_SYMLINK_NOFOLLOW)). Each path's stat data is
 *   compared here with nodes[i].key: None, or (st_size, st_mtime_ns, st_ctime_ns, st_ino,
 *   st_mode) as snapd.index.FileNode.key holds it. So the caller's Python runs only for what
 *   did not match (a walk of an unchanged tree is mostly matching files).
 *   status: bytes, one per path: 0 = the stat data equals the node's key, 1 = it differs or
 *   the node has no key (keys[i] is the path's key tuple), 2 = lstat failed (keys[i] is
 *   None). keys[i] is None where status is 0. sizes: bytes
 *   holding one native int64 per path, st_size where status is 0 and 0 elsewhere (read it
 *   through memoryview(sizes).cast("q")). links: the indices where status is 0 and
 *   st_nlink > 1.
 *
 * read_small(rootfd, paths, max_size, threads) -> list
 *   Reads files the way snapd/scanner.py does, without the GIL: openat2 beneath rootfd
 *   (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, O_NOFOLLOW | O_NONBLOCK),
 *   fstat, read to EOF, fstat, close. For each path: (data, key before, key after,
 *   st_nlink after), keys as above; or None for anything else (an error, not a regular file,
 *   larger than max_size, grew during the read, no openat2), which the caller then reads its
 *   own way. It decides nothing about changes: the caller compares the two keys.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 8
/* Below this many paths per thread a thread costs more than it saves. */
#define MIN_PER_THREAD 256

typedef struct {
    struct stat st;
    int err;
    /* lstat_compare: the node's key, if it has one (has_expect), and the outcome. */
    int has_expect; /* 0: no key, 1: e_* hold it, 2: a key C cannot hold */
    long long e_size, e_mtime, e_ctime;
    unsigned long long e_ino;
    unsigned long e_mode;
    unsigned char status;
} result;

/* One thread's share of a batch: paths[0..n) and their results (result or read_result). */
typedef struct {
    int dirfd;
    const char **paths;
    void *out;
    Py_ssize_t n;
    long long max_size; /* read_small only */
} job;

static void *run(void *arg) {
    job *j = (job *)arg;
    for (Py_ssize_t i = 0; i < j->n; i++) {
        result *r = &((result *)j->out)[i];
        if (fstatat(j->dirfd, j->paths[i], &r->st, AT_SYMLINK_NOFOLLOW) != 0) {
            r->err = errno;
            continue;
        }
        r->err = 0;
        if (r->has_expect == 1) {
            /* Times outside the fast range are not compared here: status 1, and the caller
             * sees the exact key (a key C could not hold is has_expect 2, compared later). */
            const struct stat *st = &r->st;
            long long ms = (long long)st->st_mtim.tv_sec, cs = (long long)st->st_ctim.tv_sec;
            int same = r->e_size == (long long)st->st_size &&
                       r->e_ino == (unsigned long long)st->st_ino &&
                       r->e_mode == (unsigned long)st->st_mode && ms < 9000000000LL &&
                       ms > -9000000000LL && cs < 9000000000LL && cs > -9000000000LL &&
                       r->e_mtime == ms * 1000000000LL + st->st_mtim.tv_nsec &&
                       r->e_ctime == cs * 1000000000LL + st->st_ctim.tv_nsec;
            r->status = same ? 0 : 1;
        } else {
            r->status = 1;
        }
    }
    return NULL;
}

/* seconds * 10**9 + nanoseconds, exactly as os.stat computes st_*time_ns. */
static PyObject *time_ns(long long s, long long ns) {
    /* |s| below 9e9 s (year ~2255) fits a long long in nanoseconds. */
    if (s < 9000000000LL && s > -9000000000LL) {
        return PyLong_FromLongLong(s * 1000000000LL + ns);
    }
    PyObject *sec = PyLong_FromLongLong(s), *billion = NULL, *prod = NULL, *frac = NULL,
             *total = NULL;
    if (sec == NULL) goto done;
    billion = PyLong_FromLong(1000000000L);
    if (billion == NULL) goto done;
    prod = PyNumber_Multiply(sec, billion);
    if (prod == NULL) goto done;
    frac = PyLong_FromLongLong(ns);
    if (frac == NULL) goto done;
    total = PyNumber_Add(prod, frac);
done:
    Py_XDECREF(sec);
    Py_XDECREF(billion);
    Py_XDECREF(prod);
    Py_XDECREF(frac);
    return total;
}

/* (st_size, st_mtime_ns, st_ctime_ns, st_ino, st_mode), as snapd.index.FileNode.key holds it. */
static PyObject *key_of(const struct stat *st) {
    PyObject *t = PyTuple_New(5);
    if (t == NULL) return NULL;
    PyObject *items[5] = {
        PyLong_FromLongLong((long long)st->st_size),
        time_ns((long long)st->st_mtim.tv_sec, (long long)st->st_mtim.tv_nsec),
        time_ns((long long)st->st_ctim.tv_sec, (long long)st->st_ctim.tv_nsec),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino),
        PyLong_FromUnsignedLong((unsigned long)st->st_mode),
    };
    int failed = 0;
    for (int k = 0; k < 5; k++) {
        if (items[k] == NULL) failed = 1;
    }
    if (failed) {
        for (int k = 0; k < 5; k++) Py_XDECREF(items[k]);
        Py_DECREF(t);
        return NULL;
    }
    for (int k = 0; k < 5; k++) PyTuple_SET_ITEM(t, k, items[k]);
    return t;
}

/* Run fn over a batch without the GIL, split over up to `threads` threads in contiguous
 * shares; this thread takes the first share, and a thread that cannot be started is run here. */
static void run_split(void *(*fn)(void *), int dirfd, const char **ptrs, void *out,
                      size_t out_size, Py_ssize_t n, int threads, long long max_size) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    Py_BEGIN_ALLOW_THREADS
    {
        pthread_t tids[MAX_THREADS];
        job jobs[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        Py_ssize_t per = (n + threads - 1) / threads;
        for (int k = 0; k < threads; k++) {
            Py_ssize_t start = k * per, end = start + per > n ? n : start + per;
            jobs[k].dirfd = dirfd;
            jobs[k].paths = ptrs + start;
            jobs[k].out = (char *)out + (size_t)start * out_size;
            jobs[k].n = end > start ? end - start : 0;
            jobs[k].max_size = max_size;
        }
        for (int k = 1; k < threads; k++) {
            started[k] = pthread_create(&tids[k], NULL, fn, &jobs[k]) == 0;
        }
        fn(&jobs[0]);
        for (int k = 1; k < threads; k++) {
            if (started[k]) {
                pthread_join(tids[k], NULL);
            } else {
                fn(&jobs[k]);
            }
        }
    }
    Py_END_ALLOW_THREADS
}

/* The lstat calls of a batch (fewer threads for a small batch: one costs more than it saves). */
static void stat_all(int dirfd, const char **ptrs, result *out, Py_ssize_t n, int threads) {
    if (threads > n / MIN_PER_THREAD) threads = (int)(n / MIN_PER_THREAD);
    run_split(run, dirfd, ptrs, out, sizeof(result), n, threads, 0);
}

/* The C strings of a tuple of bytes (NULL and an exception set on a non-bytes or a NUL). */
static const char **c_paths(PyObject *paths, Py_ssize_t n) {
    const char **ptrs = PyMem_Malloc(sizeof(char *) * (n ? n : 1));
    if (ptrs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(paths, i);
        if (!PyBytes_Check(p)) {
            PyErr_Format(PyExc_TypeError, "paths[%zd] is %.100s, not bytes", i,
                         Py_TYPE(p)->tp_name);
            PyMem_Free(ptrs);
            return NULL;
        }
        const char *s = PyBytes_AS_STRING(p);
        if ((Py_ssize_t)strlen(s) != PyBytes_GET_SIZE(p)) {
            PyErr_Format(PyExc_ValueError, "paths[%zd] contains a NUL byte", i);
            PyMem_Free(ptrs);
            return NULL;
        }
        ptrs[i] = s;
    }
    return ptrs;
}

/* A node's key as C values; 0 when it has none (None, or values out of range). */
static int parse_expect(PyObject *node, PyObject *key_name, result *r) {
    PyObject *key = PyObject_GetAttr(node, key_name);
    if (key == NULL) return -1;
    int ok = 0;
    if (PyTuple_Check(key) && PyTuple_GET_SIZE(key) == 5) {
        r->e_size = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 0));
        r->e_mtime = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 1));
        r->e_ctime = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 2));
        r->e_ino = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(key, 3));
        r->e_mode = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(key, 4));
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError) &&
                !PyErr_ExceptionMatches(PyExc_TypeError)) {
                Py_DECREF(key);
                return -1;
            }
            PyErr_Clear(); /* out of range or not ints: compared in Python afterwards */
            ok = 2;
        } else {
            ok = 1;
        }
    }
    Py_DECREF(key);
    r->has_expect = ok;
    return 0;
}

static PyObject *lstat_compare(PyObject *self, PyObject *args) {
    int dirfd, threads;
    PyObject *seq, *nodes_seq;
    if (!PyArg_ParseTuple(args, "iOOi:lstat_compare", &dirfd, &seq, &nodes_seq, &threads))
        return NULL;
    PyObject *paths = PySequence_Tuple(seq);
    if (paths == NULL) return NULL;
    PyObject *nodes = PySequence_Tuple(nodes_seq);
    if (nodes == NULL) {
        Py_DECREF(paths);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(paths);
    const char **ptrs = NULL;
    result *out = NULL;
    PyObject *key_name = NULL, *status = NULL, *keys = NULL, *sizes = NULL, *links = NULL,
             *ret = NULL;
    if (PyTuple_GET_SIZE(nodes) != n) {
        PyErr_SetString(PyExc_ValueError, "paths and nodes differ in length");
        goto done;
    }
    out = PyMem_Calloc(n ? n : 1, sizeof(result));
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ptrs = c_paths(paths, n);
    if (ptrs == NULL) goto done;
    key_name = PyUnicode_InternFromString("key");
    if (key_name == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_expect(PyTuple_GET_ITEM(nodes, i), key_name, &out[i]) < 0) goto done;
    }
    stat_all(dirfd, ptrs, out, n, threads);
    status = PyBytes_FromStringAndSize(NULL, n);
    sizes = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(long long));
    keys = PyList_New(n);
    links = PyList_New(0);
    if (status == NULL || sizes == NULL || keys == NULL || links == NULL) goto done;
    unsigned char *st = (unsigned char *)PyBytes_AS_STRING(status);
    long long *sz = (long long *)PyBytes_AS_STRING(sizes);
    for (Py_ssize_t i = 0; i < n; i++) {
        const result *r = &out[i];
        PyObject *key;
        st[i] = r->err ? 2 : r->status;
        key = NULL;
        if (st[i] == 1) {
            key = key_of(&r->st);
            if (key == NULL) goto done;
            if (r->has_expect == 2) {
                /* A key C could not hold (a time past year 2255, say): compare it here. */
                PyObject *want = PyObject_GetAttr(PyTuple_GET_ITEM(nodes, i), key_name);
                int same = want == NULL ? -1 : PyObject_RichCompareBool(key, want, Py_EQ);
                Py_XDECREF(want);
                if (same < 0) {
                    Py_DECREF(key);
                    goto done;
                }
                if (same) {
                    st[i] = 0;
                    Py_CLEAR(key);
                }
            }
        }
        sz[i] = st[i] == 0 ? (long long)r->st.st_size : 0;
        if (key == NULL) {
            Py_INCREF(Py_None);
            key = Py_None;
        }
        PyList_SET_ITEM(keys, i, key);
        if (st[i] == 0 && r->st.st_nlink > 1) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (idx == NULL || PyList_Append(links, idx) < 0) {
                Py_XDECREF(idx);
                goto done;
            }
            Py_DECREF(idx);
        }
    }
    ret = PyTuple_Pack(4, status, keys, sizes, links);
done:
    Py_XDECREF(key_name);
    Py_XDECREF(status);
    Py_XDECREF(keys);
    Py_XDECREF(sizes);
    Py_XDECREF(links);
    PyMem_Free(ptrs);
    PyMem_Free(out);
    Py_DECREF(paths);
    Py_DECREF(nodes);
    return ret;
}

/* --- read_small --------------------------------------------------------------------------- */

#ifndef SYS_openat2
#define SYS_openat2 437 /* the same number on every architecture that has it */
#endif
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_NO_SYMLINKS_ 0x04
#define RESOLVE_BENEATH_ 0x08

struct open_how_ {
    unsigned long long flags, mode, resolve;
};

typedef struct {
    char *data; /* NULL: not read here (the caller reads it its own way) */
    long long len;
    struct stat st1, st2;
} read_result;

static void read_one(const job *j, Py_ssize_t i) {
    read_result *r = &((read_result *)j->out)[i];
    struct open_how_ how = {O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0,
                            RESOLVE_BENEATH_ | RESOLVE_NO_SYMLINKS_ | RESOLVE_NO_MAGICLINKS_};
    long fd = syscall(SYS_openat2, j->dirfd, j->paths[i], &how, sizeof how);
    if (fd < 0) return;
    if (fstat((int)fd, &r->st1) != 0 || !S_ISREG(r->st1.st_mode) ||
        r->st1.st_size > j->max_size) {
        close((int)fd);
        return;
    }
    /* One byte more than fstat said reveals a file that grew, without another call. */
    long long cap = (long long)r->st1.st_size + 1, pos = 0;
    char *buf = malloc((size_t)cap);
    if (buf == NULL) {
        close((int)fd);
        return;
    }
    for (;;) {
        ssize_t got = pread((int)fd, buf + pos, (size_t)(cap - pos), (off_t)pos);
        if (got < 0) {
            if (errno == EINTR) continue;
            break;
        }
        pos += got;
        if (got == 0 || pos >= cap || pos >= r->st1.st_size) break;
    }
    if (pos >= cap || fstat((int)fd, &r->st2) != 0) {
        free(buf); /* it grew (or cannot be checked): read it the caller's way */
        close((int)fd);
        return;
    }
    close((int)fd);
    r->data = buf;
    r->len = pos;
}

static void *read_run(void *arg) {
    job *j = (job *)arg;
    for (Py_ssize_t i = 0; i < j->n; i++) read_one(j, i);
    return NULL;
}

static PyObject *read_small(PyObject *self, PyObject *args) {
    int rootfd, threads;
    long long max_size;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iOLi:read_small", &rootfd, &seq, &max_size, &threads))
        return NULL;
    PyObject *paths = PySequence_Tuple(seq);
    if (paths == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(paths);
    const char **ptrs = NULL;
    read_result *out = PyMem_Calloc(n ? n : 1, sizeof(read_result));
    PyObject *ret = NULL;
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ptrs = c_paths(paths, n);
    if (ptrs == NULL) goto done;
    if (threads > n) threads = (int)n;
    run_split(read_run, rootfd, ptrs, out, sizeof(read_result), n, threads, max_size);
    ret = PyList_New(n);
    if (ret == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        read_result *r = &out[i];
        PyObject *item;
        if (r->data == NULL) {
            Py_INCREF(Py_None);
            item = Py_None;
        } else {
            PyObject *data = PyBytes_FromStringAndSize(r->data, (Py_ssize_t)r->len);
            PyObject *k1 = key_of(&r->st1), *k2 = key_of(&r->st2);
            PyObject *nlink = PyLong_FromUnsignedLongLong((unsigned long long)r->st2.st_nlink);
            item = (data && k1 && k2 && nlink) ? PyTuple_Pack(4, data, k1, k2, nlink) : NULL;
            Py_XDECREF(data);
            Py_XDECREF(k1);
            Py_XDECREF(k2);
            Py_XDECREF(nlink);
            if (item == NULL) {
                Py_CLEAR(ret);
                goto done;
            }
        }
        PyList_SET_ITEM(ret, i, item);
    }
done:
    if (out != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) free(out[i].data);
    }
    PyMem_Free(ptrs);
    PyMem_Free(out);
    Py_DECREF(paths);
    return ret;
}

static PyMethodDef methods[] = {
    {"lstat_compare", lstat_compare, METH_VARARGS,
     "lstat_compare(dirfd, paths, nodes, threads) -> (status, keys, sizes, links): lstat each "
     "path without the GIL and compare it with nodes[i].key (see the module's source)."},
    {"read_small", read_small, METH_VARARGS,
     "read_small(rootfd, paths, max_size, threads) -> list: read regular files of at most "
     "max_size bytes beneath rootfd without the GIL (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "snapd._batchstat", "lstat of many paths in one call.", -1, methods,
};

PyMODINIT_FUNC PyInit__batchstat(void) { return PyModule_Create(&module); }
