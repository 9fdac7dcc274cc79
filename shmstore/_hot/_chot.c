/* The hot functions, compiled: the twin of fallback.py, with the same signatures and
 * results (see that module's docstring for the arguments, and shmstore/_layout.py for
 * the layout and the consistency argument). tests/test_hot.py checks the constants
 * below against _layout.py and holds the two implementations side by side.
 *
 * lookup() reads memory the manager is changing: every offset and length it takes from
 * shared memory is checked against the mapping it points into before it is used, and
 * a probe is bounded by the index's capacity, so a torn or hostile index can only
 * make it answer TORN. Words are read with __atomic loads (a plain aligned mov on
 * x86-64) so the compiler keeps the order the layout's argument needs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <poll.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__) && defined(__GLIBC__)
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_LIVENESS 1
#endif

/* The layout: must equal shmstore/_layout.py (tests/test_hot.py checks). */
#define HEADER_WORDS 512
#define STRIPES 16384
#define SLOT_WORDS 5
#define S_HASH_KLEN 0
#define S_REF 1
#define S_VLEN 2
#define S_ORDER 3
#define S_EXPIRES 4
#define W_INDEX_GEN 2
#define READER_WORDS 2
#define W_LIVENESS_TID 23
#define W_LIVENESS_MUTEX 24
#define LIVENESS_MUTEX_WORDS 8
#define R_HITS 0
#define R_MISSES 1
#define REF_EMPTY 0
#define REF_DELETED 1
#define OFFSET_BITS 40
#define OFFSET_MASK ((UINT64_C(1) << OFFSET_BITS) - 1)

#define TORN (-1)
#define STALE (-2)

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* A Python int as a uint64_t: PyLong_AsUnsignedLong, where unsigned long is 64 bits,
 * reads an int's digits directly, while CPython 3.11's PyLong_AsUnsignedLongLong
 * goes through _PyLong_AsByteArray for any int of more than one 30-bit digit, as
 * every arena reference is (6% of a batched write's instructions, callgrind). */
static inline uint64_t as_u64(PyObject *o) {
#if ULONG_MAX == UINT64_MAX
    return (uint64_t)PyLong_AsUnsignedLong(o);
#else
    return (uint64_t)PyLong_AsUnsignedLongLong(o);
#endif
}

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32), slicing by 8: eight table look-ups
 * per 8 bytes instead of one per byte (Intel's "slicing-by-8", Kounavis and Berry,
 * 2005); about four times the byte-at-a-time loop on 45-byte keys. */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

static uint32_t crc32_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        /* Assembled byte by byte, so any byte order gets zlib's value (one load each
         * on a little-endian CPU, where the compiler sees through it). */
        uint32_t lo = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* -- buffers ------------------------------------------------------------------- */

typedef struct {
    uint64_t *words;
    Py_ssize_t n; /* words */
    Py_buffer view;
} Words;

/* A store's visited bytes (SIEVE), one per index slot; bytes NULL where there are none. */
typedef struct {
    unsigned char *bytes;
    Py_ssize_t n;
    Py_buffer view;
} Marks;

static int marks_get(PyObject *obj, Marks *m) {
    m->bytes = NULL;
    m->n = 0;
    if (obj == NULL || obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, &m->view, PyBUF_WRITABLE) < 0) return -1;
    m->bytes = (unsigned char *)m->view.buf;
    m->n = m->view.len;
    return 0;
}

static void marks_release(Marks *m) {
    if (m->bytes) PyBuffer_Release(&m->view);
    m->bytes = NULL;
}

static int words_get(PyObject *obj, Words *w, int writable) {
    if (PyObject_GetBuffer(obj, &w->view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    if (((uintptr_t)w->view.buf) % 8) {
        PyBuffer_Release(&w->view);
        PyErr_SetString(PyExc_ValueError, "a word segment must be 8-byte aligned");
        return -1;
    }
    w->words = (uint64_t *)w->view.buf;
    w->n = w->view.len / 8;
    return 0;
}

/* The arena segments of one call, their buffers taken on first use. */
#define LOCAL_ARENAS 16
typedef struct {
    PyObject *list;
    Py_ssize_t n;
    Py_buffer *views;
    char *held;
    int writable;
    Py_buffer local_views[LOCAL_ARENAS];
    char local_held[LOCAL_ARENAS];
} Arenas;

static int arenas_init(Arenas *a, PyObject *list, int writable) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "arenas must be a list");
        return -1;
    }
    a->list = list;
    a->n = PyList_GET_SIZE(list);
    a->writable = writable;
    if (a->n <= LOCAL_ARENAS) {
        a->views = a->local_views;
        a->held = a->local_held;
    } else {
        a->views = PyMem_Malloc(sizeof(Py_buffer) * a->n);
        a->held = PyMem_Malloc(a->n);
        if (!a->views || !a->held) {
            PyMem_Free(a->views);
            PyMem_Free(a->held);
            PyErr_NoMemory();
            return -1;
        }
    }
    memset(a->held, 0, a->n);
    return 0;
}

static void arenas_release(Arenas *a) {
    for (Py_ssize_t i = 0; i < a->n; i++)
        if (a->held[i]) PyBuffer_Release(&a->views[i]);
    if (a->views != a->local_views) {
        PyMem_Free(a->views);
        PyMem_Free(a->held);
    }
}

/* Arena segment ``id``'s bytes and size; 0 and *size 0 if it is not mapped (None or
 * past the list). -1 with an exception set if its buffer cannot be had. */
static int arena_at(Arenas *a, uint64_t id, unsigned char **base, Py_ssize_t *size) {
    *base = NULL;
    *size = 0;
    if (id >= (uint64_t)a->n) return 0;
    if (!a->held[id]) {
        PyObject *obj = PyList_GET_ITEM(a->list, (Py_ssize_t)id);
        if (obj == Py_None) return 0;
        if (PyObject_GetBuffer(obj, &a->views[id], a->writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
            return -1;
        a->held[id] = 1;
    }
    *base = (unsigned char *)a->views[id].buf;
    *size = a->views[id].len;
    return 0;
}

static int bytes_of(PyObject *kb, const unsigned char **p, Py_ssize_t *n) {
    if (!PyBytes_Check(kb)) {
        PyErr_SetString(PyExc_TypeError, "keys must be bytes");
        return -1;
    }
    *p = (const unsigned char *)PyBytes_AS_STRING(kb);
    *n = PyBytes_GET_SIZE(kb);
    return 0;
}

/* A key given as str (read as its UTF-8, surrogates passed through, as
 * str.encode("utf-8", "surrogatepass")) or as bytes. A str's UTF-8 is cached in the
 * object, so a key asked for again costs no encoding; a str with lone surrogates has
 * none, and is encoded into a new bytes object put in *keep (released by the caller). */
static int key_of(PyObject *key, const unsigned char **p, Py_ssize_t *n, PyObject **keep) {
    if (PyUnicode_Check(key)) {
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, n);
        if (utf8) {
            *p = (const unsigned char *)utf8;
            return 0;
        }
        PyErr_Clear();
        PyObject *encoded = PyUnicode_AsEncodedString(key, "utf-8", "surrogatepass");
        if (!encoded) return -1;
        Py_XSETREF(*keep, encoded);
        key = encoded;
    }
    return bytes_of(key, p, n);
}

static int check_list(PyObject *obj, const char *what) {
    if (!PyList_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", what);
        return -1;
    }
    return 0;
}

static int capacity_mask(Words *slots, uint64_t *mask) {
    uint64_t cap = (uint64_t)slots->n / SLOT_WORDS;
    if (cap == 0 || (cap & (cap - 1))) return -1;
    *mask = cap - 1;
    return 0;
}

/* -- the reader ------------------------------------------------------------------ */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
/* Values of at least this many bytes get the pages of their new bytes object mapped in
 * one call before the copy (value_bytes): */
#define POPULATE_MIN_BYTES (64 << 10)
#define PAGE_BYTES 4096

/* A new bytes object holding the n bytes at src (in an arena mapping). A large value's
 * memory is most often fresh: the C library maps it anew, or grows the heap into pages
 * it gave back when the last such value was freed, and copying into it then takes a
 * page fault every page or two. MADV_POPULATE_WRITE maps them all in one system call
 * instead (a hint: a failure leaves the faults). Copying 1 MiB into fresh memory in C:
 * 4.6 GB/s with it, 2.6 without; a 1 MiB mget, 4.8-5.8 GB/s against 4.2-4.4. Whether
 * the memory is fresh is asked of its first whole page (mincore): populating pages
 * already mapped would cost 10-20% of the copy. Populating the source's pages too
 * (MADV_POPULATE_READ) gained nothing measurable. Measured on the virtual machines
 * this project is benchmarked on. */
static PyObject *value_bytes(const unsigned char *src, Py_ssize_t n) {
    if (n < POPULATE_MIN_BYTES) return PyBytes_FromStringAndSize((const char *)src, n);
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, n);
    if (!bytes) return NULL;
    uintptr_t page_mask = ~(uintptr_t)(PAGE_BYTES - 1);
    char *dest = PyBytes_AS_STRING(bytes);
    uintptr_t first = ((uintptr_t)dest + PAGE_BYTES - 1) & page_mask;
    uintptr_t end = ((uintptr_t)dest + (uintptr_t)n) & page_mask;
    unsigned char resident = 1;
    if (end > first && mincore((void *)first, PAGE_BYTES, &resident) == 0 && !(resident & 1))
        (void)madvise((void *)first, end - first, MADV_POPULATE_WRITE);
    memcpy(dest, src, (size_t)n);
    return bytes;
}

/* One key's search in an index being changed: sets *value to a new reference (the
 * value's bytes, or None for a miss) and returns 0; or returns TORN, or the positive
 * id of an arena segment not mapped here, or -3 with an exception set. */
static long read_one(Words *slots, uint64_t mask, Arenas *arenas, const unsigned char *kp,
                     Py_ssize_t klen, uint32_t h, Marks *visited, uint64_t now, PyObject **value) {
    uint64_t want = (uint64_t)h | ((uint64_t)klen << 32);
    uint64_t i = h & mask;
    for (uint64_t step = 0; step <= mask; step++, i = (i + 1) & mask) {
        uint64_t *slot = slots->words + i * SLOT_WORDS;
        uint64_t ref = LOAD(&slot[S_REF]); /* REF first: see _layout */
        if (ref == REF_EMPTY) {
            Py_INCREF(Py_None);
            *value = Py_None;
            return 0;
        }
        if (ref == REF_DELETED || LOAD(&slot[S_HASH_KLEN]) != want) continue;
        uint64_t vlen = LOAD(&slot[S_VLEN]);
        uint64_t id = ref >> OFFSET_BITS, off = ref & OFFSET_MASK;
        unsigned char *base;
        Py_ssize_t size;
        if (arena_at(arenas, id, &base, &size) < 0) return -3;
        if (base == NULL) return id ? (long)(id > LONG_MAX ? TORN : (long)id) : TORN;
        if (off > (uint64_t)size || (uint64_t)klen > (uint64_t)size - off ||
            vlen > (uint64_t)size - off - (uint64_t)klen)
            return TORN;
        if (memcmp(base + off, kp, klen) != 0) continue;
        uint64_t expires = LOAD(&slot[S_EXPIRES]);
        if (expires && now >= expires) { /* expired: a miss for every reader */
            Py_INCREF(Py_None);
            *value = Py_None;
            return 0;
        }
        /* A hit: mark the slot visited for SIEVE, once (a byte already set is only
         * read, so its cache line stays shared). */
        if (visited->bytes && i < (uint64_t)visited->n && !visited->bytes[i]) visited->bytes[i] = 1;
        *value = value_bytes(base + off + klen, (Py_ssize_t)vlen);
        return *value ? 0 : -3;
    }
    return TORN; /* no empty slot: not an index the manager would leave */
}

/* Each key's hash into hashes[k], with the memory its search will read first asked
 * for ahead: its first probe slot in one pass, then, in a second, the arena bytes of
 * the entry that slot points at if its hash matches. A batch's keys are spread over
 * the index and the arena, so each search would otherwise wait for its cache misses
 * in turn; asked for together, they overlap. Only hints: what the second pass reads
 * may be changing (in a reader), and it is bounds-checked like every read here. Used
 * by the reader's lookup and the manager's index_set. 0, or -1 with an exception (a
 * key that is neither str nor bytes). */
static int prefetch_entries(Words *slots, uint64_t mask, Arenas *arenas, PyObject *keys,
                            uint32_t *hashes, PyObject **keep) {
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        if (key_of(PyList_GET_ITEM(keys, k), &kp, &klen, keep) < 0) return -1;
        hashes[k] = crc32_of(kp, klen);
        __builtin_prefetch(slots->words + (hashes[k] & mask) * SLOT_WORDS);
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t *slot = slots->words + (hashes[k] & mask) * SLOT_WORDS;
        uint64_t ref = LOAD(&slot[S_REF]);
        if (ref <= REF_DELETED || (uint32_t)LOAD(&slot[S_HASH_KLEN]) != hashes[k]) continue;
        unsigned char *base;
        Py_ssize_t size;
        if (arena_at(arenas, ref >> OFFSET_BITS, &base, &size) < 0) return -1;
        if (base && (ref & OFFSET_MASK) < (uint64_t)size) __builtin_prefetch(base + (ref & OFFSET_MASK));
    }
    return 0;
}

static PyObject *lookup(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 5 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError,
                        "lookup(ctl, slots, generation, arenas, keys, visited=None, now=0)");
        return NULL;
    }
    PyObject *keys = args[4];
    uint64_t generation = as_u64(args[2]);
    if (generation == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    uint64_t now = 0;
    if (nargs > 6) {
        now = as_u64(args[6]);
        if (now == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    if (check_list(keys, "keys") < 0) return NULL;
    Words ctl, slots;
    Arenas arenas;
    Marks visited;
    if (marks_get(nargs > 5 ? args[5] : NULL, &visited) < 0) return NULL;
    if (words_get(args[0], &ctl, 0) < 0) {
        marks_release(&visited);
        return NULL;
    }
    if (ctl.n < HEADER_WORDS + STRIPES) {
        PyBuffer_Release(&ctl.view);
        marks_release(&visited);
        PyErr_SetString(PyExc_ValueError, "ctl is too short");
        return NULL;
    }
    if (words_get(args[1], &slots, 0) < 0) {
        PyBuffer_Release(&ctl.view);
        marks_release(&visited);
        return NULL;
    }
    if (arenas_init(&arenas, args[3], 0) < 0) {
        PyBuffer_Release(&ctl.view);
        PyBuffer_Release(&slots.view);
        marks_release(&visited);
        return NULL;
    }
    PyObject *result = NULL, *out = NULL, *keep = NULL;
    long code = 0;
    uint64_t mask;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    uint64_t local_versions[64];
    uint32_t local_stripes[64], local_hashes[64];
    uint64_t *versions = local_versions;
    uint32_t *stripes = local_stripes, *hashes = local_hashes;
    uint64_t *stripe_words = ctl.words + HEADER_WORDS;

    if (capacity_mask(&slots, &mask) < 0) {
        code = TORN;
        goto done;
    }
    if (n > 64) {
        versions = PyMem_Malloc(sizeof(uint64_t) * n);
        stripes = PyMem_Malloc(sizeof(uint32_t) * n);
        hashes = PyMem_Malloc(sizeof(uint32_t) * n);
        if (!versions || !stripes || !hashes) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (LOAD(&ctl.words[W_INDEX_GEN]) != generation) {
        code = STALE;
        goto done;
    }
    out = PyList_New(n);
    if (!out) goto done;
    /* One key has no misses to overlap. */
    if (n > 1 && prefetch_entries(&slots, mask, &arenas, keys, hashes, &keep) < 0) goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        if (key_of(PyList_GET_ITEM(keys, k), &kp, &klen, &keep) < 0) goto done;
        uint32_t h = n > 1 ? hashes[k] : crc32_of(kp, klen);
        uint32_t s = h & (STRIPES - 1);
        uint64_t v = LOAD(&stripe_words[s]);
        if (v & 1) {
            code = TORN;
            goto done;
        }
        stripes[k] = s;
        versions[k] = v;
        PyObject *value = NULL;
        code = read_one(&slots, mask, &arenas, kp, klen, h, &visited, now, &value);
        if (code == -3) goto done;
        if (code) goto done;
        PyList_SET_ITEM(out, k, value);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (LOAD(&ctl.words[W_INDEX_GEN]) != generation) {
        code = TORN;
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        if (LOAD(&stripe_words[stripes[k]]) != versions[k]) {
            code = TORN;
            goto done;
        }
    result = out;
    out = NULL;
done:
    if (!result && !PyErr_Occurred()) result = PyLong_FromLong(code);
    Py_XDECREF(out);
    Py_XDECREF(keep);
    if (versions != local_versions) PyMem_Free(versions);
    if (stripes != local_stripes) PyMem_Free(stripes);
    if (hashes != local_hashes) PyMem_Free(hashes);
    arenas_release(&arenas);
    PyBuffer_Release(&slots.view);
    PyBuffer_Release(&ctl.view);
    marks_release(&visited);
    return result;
}

/* -- the manager's liveness -----------------------------------------------------------
   The manager's main thread holds a robust, process-shared mutex in the header (words
   W_LIVENESS_MUTEX on) and publishes its thread id in W_LIVENESS_TID. When a robust
   mutex's holder dies, by any signal included, the kernel marks the mutex's futex word
   owner-died as the thread exits (exit_robust_list), before the process is reported
   exited to pidfds or waitpid. So a reader that finds the word still holding that thread
   id knows the manager runs, by one load instead of a poll of its pidfd; any other word
   sends it to the poll. The manager clears W_LIVENESS_TID before it unmaps the header at
   its orderly exit, so a mutex the kernel can no longer mark is never trusted. */

static int header_words(PyObject *ctl, Py_buffer *view, int writable) {
    if (PyObject_GetBuffer(ctl, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) return -1;
    if (view->len < (Py_ssize_t)((W_LIVENESS_MUTEX + LIVENESS_MUTEX_WORDS) * 8) ||
        ((uintptr_t)view->buf & 7)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "ctl is not a store's header");
        return -1;
    }
    return 0;
}

static PyObject *hold_liveness(PyObject *self, PyObject *arg) {
#ifdef HAVE_LIVENESS
    _Static_assert(sizeof(pthread_mutex_t) <= LIVENESS_MUTEX_WORDS * 8, "mutex too large");
    Py_buffer v;
    if (header_words(arg, &v, 1) < 0) return NULL;
    uint64_t *words = (uint64_t *)v.buf;
    pthread_mutex_t *m = (pthread_mutex_t *)(words + W_LIVENESS_MUTEX);
    pthread_mutexattr_t a;
    int err = pthread_mutexattr_init(&a);
    if (!err) err = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!err) err = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!err) err = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    if (!err) err = pthread_mutex_lock(m);
    if (err) {
        PyBuffer_Release(&v);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    STORE(&words[W_LIVENESS_TID], (uint64_t)syscall(SYS_gettid));
    PyBuffer_Release(&v);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *release_liveness(PyObject *self, PyObject *arg) {
    Py_buffer v;
    if (header_words(arg, &v, 1) < 0) return NULL;
    uint64_t *words = (uint64_t *)v.buf;
    uint64_t tid = LOAD(&words[W_LIVENESS_TID]);
    STORE(&words[W_LIVENESS_TID], (uint64_t)0);
#ifdef HAVE_LIVENESS
    if (tid) pthread_mutex_unlock((pthread_mutex_t *)(words + W_LIVENESS_MUTEX));
#endif
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *manager_alive(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "manager_alive(pidfd, ctl=None)");
        return NULL;
    }
    int fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
#ifdef HAVE_LIVENESS
    if (nargs == 2 && args[1] != Py_None) {
        Py_buffer v;
        if (header_words(args[1], &v, 0) < 0) return NULL;
        const uint64_t *words = (const uint64_t *)v.buf;
        uint64_t tid = LOAD(&words[W_LIVENESS_TID]);
        uint32_t lock = __atomic_load_n((const uint32_t *)(words + W_LIVENESS_MUTEX), __ATOMIC_ACQUIRE);
        PyBuffer_Release(&v);
        if (tid && (lock & FUTEX_TID_MASK) == tid && !(lock & FUTEX_OWNER_DIED)) Py_RETURN_TRUE;
    }
#endif
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, 0);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(r == 0);
}

/* count_found(words, found): add a batch's hits and misses to a reader's slot. The GIL
   orders this process's threads; the adds are atomic so a reader of the statistics in
   another process never sees half of one. */
static PyObject *count_found(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "count_found(words, found)");
        return NULL;
    }
    if (!PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "found must be a list");
        return NULL;
    }
    Py_buffer w;
    if (PyObject_GetBuffer(args[0], &w, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (w.len < (Py_ssize_t)(READER_WORDS * sizeof(uint64_t)) || ((uintptr_t)w.buf & 7)) {
        PyBuffer_Release(&w);
        PyErr_SetString(PyExc_ValueError, "words must be one aligned reader slot");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args[1]), misses = 0;
    for (Py_ssize_t k = 0; k < n; k++) misses += PyList_GET_ITEM(args[1], k) == Py_None;
    uint64_t *words = (uint64_t *)w.buf;
    __atomic_fetch_add(&words[R_HITS], (uint64_t)(n - misses), __ATOMIC_RELAXED);
    __atomic_fetch_add(&words[R_MISSES], (uint64_t)misses, __ATOMIC_RELAXED);
    PyBuffer_Release(&w);
    Py_RETURN_NONE;
}

static PyObject *key_hash(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t h = crc32_of(b.buf, b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(h);
}

/* -- the writer (the manager only; it trusts the index it keeps) ------------------- */

/* The slot holding the key, or -(slot to insert at) - 1. */
static int64_t find_slot(Words *slots, uint64_t mask, Arenas *arenas, const unsigned char *kp,
                         Py_ssize_t klen, uint32_t h, int *error) {
    uint64_t want = (uint64_t)h | ((uint64_t)klen << 32);
    uint64_t i = h & mask;
    int64_t tomb = -1;
    for (uint64_t step = 0; step <= mask; step++, i = (i + 1) & mask) {
        uint64_t *slot = slots->words + i * SLOT_WORDS;
        uint64_t ref = slot[S_REF];
        if (ref == REF_EMPTY) return -(tomb < 0 ? (int64_t)i : tomb) - 1;
        if (ref == REF_DELETED) {
            if (tomb < 0) tomb = (int64_t)i;
            continue;
        }
        if (slot[S_HASH_KLEN] != want) continue;
        unsigned char *base;
        Py_ssize_t size;
        if (arena_at(arenas, ref >> OFFSET_BITS, &base, &size) < 0) {
            *error = 1;
            return 0;
        }
        uint64_t off = ref & OFFSET_MASK;
        if (base && off + (uint64_t)klen <= (uint64_t)size && memcmp(base + off, kp, klen) == 0)
            return (int64_t)i;
    }
    if (tomb >= 0) return -tomb - 1;
    PyErr_SetString(PyExc_RuntimeError, "the index is full");
    *error = 1;
    return 0;
}

typedef struct {
    Words slots;
    Arenas arenas;
    uint64_t mask;
    int have_slots, have_arenas;
} Writer;

static int writer_open(Writer *w, PyObject *slots, PyObject *arenas, int writable) {
    w->have_slots = w->have_arenas = 0;
    if (words_get(slots, &w->slots, writable) < 0) return -1;
    w->have_slots = 1;
    if (capacity_mask(&w->slots, &w->mask) < 0) {
        PyErr_SetString(PyExc_ValueError, "the index's capacity is not a power of two");
        return -1;
    }
    if (arenas_init(&w->arenas, arenas, 0) < 0) return -1;
    w->have_arenas = 1;
    return 0;
}

static void writer_close(Writer *w) {
    if (w->have_arenas) arenas_release(&w->arenas);
    if (w->have_slots) PyBuffer_Release(&w->slots.view);
}

static PyObject *find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "find(slots, arenas, keys)");
        return NULL;
    }
    if (check_list(args[2], "keys") < 0) return NULL;
    Writer w;
    PyObject *out = NULL;
    if (writer_open(&w, args[0], args[1], 0) < 0) goto done;
    Py_ssize_t n = PyList_GET_SIZE(args[2]);
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        int error = 0;
        if (bytes_of(PyList_GET_ITEM(args[2], k), &kp, &klen) < 0) goto fail;
        int64_t i = find_slot(&w.slots, w.mask, &w.arenas, kp, klen, crc32_of(kp, klen), &error);
        if (error) goto fail;
        PyObject *item = PyLong_FromLongLong(i >= 0 ? i : -1);
        if (!item) goto fail;
        PyList_SET_ITEM(out, k, item);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    writer_close(&w);
    return out;
}

static PyObject *stripes_bump(PyObject *const *args, Py_ssize_t nargs, uint64_t parity) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (ctl, keys)");
        return NULL;
    }
    if (check_list(args[1], "keys") < 0) return NULL;
    Words ctl;
    if (words_get(args[0], &ctl, 1) < 0) return NULL;
    if (ctl.n < HEADER_WORDS + STRIPES) {
        PyBuffer_Release(&ctl.view);
        PyErr_SetString(PyExc_ValueError, "ctl is too short");
        return NULL;
    }
    uint64_t *stripe_words = ctl.words + HEADER_WORDS;
    Py_ssize_t n = PyList_GET_SIZE(args[1]);
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        if (bytes_of(PyList_GET_ITEM(args[1], k), &kp, &klen) < 0) {
            PyBuffer_Release(&ctl.view);
            return NULL;
        }
        uint64_t *s = &stripe_words[crc32_of(kp, klen) & (STRIPES - 1)];
        if ((*s & 1) == parity) STORE(s, *s + 1);
    }
    /* The stripes are visible before anything the batch stores next (x86-64 keeps
     * stores in order; this keeps the compiler from moving them). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    PyBuffer_Release(&ctl.view);
    Py_RETURN_NONE;
}

static PyObject *stripes_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return stripes_bump(args, nargs, 0);
}

static PyObject *stripes_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return stripes_bump(args, nargs, 1);
}

static int append_pair(PyObject *refs, PyObject *sizes, uint64_t ref, uint64_t size) {
    PyObject *r = PyLong_FromUnsignedLongLong(ref), *s = PyLong_FromUnsignedLongLong(size);
    int bad = !r || !s || PyList_Append(refs, r) < 0 || PyList_Append(sizes, s) < 0;
    Py_XDECREF(r);
    Py_XDECREF(s);
    return bad ? -1 : 0;
}

/* Keys whose hashes index_set keeps on the stack (more: on the heap). */
#define PREFETCH_KEYS 256

static PyObject *index_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 6 || nargs > 8) {
        PyErr_SetString(PyExc_TypeError,
                        "index_set(slots, arenas, keys, refs, vlens, first_order, expires=0, visited=None)");
        return NULL;
    }
    PyObject *keys = args[2], *refs = args[3], *vlens = args[4];
    if (check_list(keys, "keys") < 0 || check_list(refs, "refs") < 0 || check_list(vlens, "vlens") < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(refs) != n || PyList_GET_SIZE(vlens) != n) {
        PyErr_SetString(PyExc_ValueError, "keys, refs and vlens differ in length");
        return NULL;
    }
    uint64_t order = as_u64(args[5]);
    if (order == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    uint64_t expires = 0;
    if (nargs > 6) {
        expires = as_u64(args[6]);
        if (expires == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    Marks visited;
    if (marks_get(nargs > 7 ? args[7] : NULL, &visited) < 0) return NULL;
    Writer w;
    w.have_slots = w.have_arenas = 0;
    PyObject *freed_refs = PyList_New(0), *freed_sizes = PyList_New(0), *result = NULL;
    long inserted = 0, reused = 0;
    uint32_t hashes_here[PREFETCH_KEYS], *hashes = hashes_here;
    PyObject *keep = NULL; /* never set: the keys are bytes */
    if (!freed_refs || !freed_sizes || writer_open(&w, args[0], args[1], 1) < 0) goto done;
    if (n > PREFETCH_KEYS && !(hashes = PyMem_Malloc((size_t)n * sizeof *hashes))) {
        PyErr_NoMemory();
        goto done;
    }
    if (prefetch_entries(&w.slots, w.mask, &w.arenas, keys, hashes, &keep) < 0) goto done;
    for (Py_ssize_t k = 0; k < n; k++, order++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        int error = 0;
        if (bytes_of(PyList_GET_ITEM(keys, k), &kp, &klen) < 0) goto done;
        uint64_t ref = as_u64(PyList_GET_ITEM(refs, k));
        uint64_t vlen = as_u64(PyList_GET_ITEM(vlens, k));
        if (PyErr_Occurred()) goto done;
        uint32_t h = hashes[k];
        int64_t i = find_slot(&w.slots, w.mask, &w.arenas, kp, klen, h, &error);
        if (error) goto done;
        if (i < 0) {
            uint64_t *slot = w.slots.words + (uint64_t)(-i - 1) * SLOT_WORDS;
            if (slot[S_REF] == REF_DELETED) reused++;
            STORE(&slot[S_HASH_KLEN], (uint64_t)h | ((uint64_t)klen << 32));
            STORE(&slot[S_VLEN], vlen);
            STORE(&slot[S_ORDER], order);
            STORE(&slot[S_EXPIRES], expires);
            uint64_t at = (uint64_t)(-i - 1);
            if (visited.bytes && at < (uint64_t)visited.n) visited.bytes[at] = 0; /* a new key starts unvisited */
            STORE(&slot[S_REF], ref); /* REF last: see _layout */
            inserted++;
            continue;
        }
        uint64_t *slot = w.slots.words + (uint64_t)i * SLOT_WORDS;
        if (append_pair(freed_refs, freed_sizes, slot[S_REF], (uint64_t)klen + slot[S_VLEN]) < 0)
            goto done;
        STORE(&slot[S_VLEN], vlen);
        STORE(&slot[S_EXPIRES], expires);
        STORE(&slot[S_REF], ref);
    }
    result = Py_BuildValue("llOO", inserted, reused, freed_refs, freed_sizes);
done:
    if (hashes != hashes_here) PyMem_Free(hashes);
    Py_XDECREF(keep);
    writer_close(&w);
    marks_release(&visited);
    Py_XDECREF(freed_refs);
    Py_XDECREF(freed_sizes);
    return result;
}

static PyObject *index_delete(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "index_delete(slots, arenas, keys)");
        return NULL;
    }
    if (check_list(args[2], "keys") < 0) return NULL;
    Writer w;
    PyObject *freed_refs = PyList_New(0), *freed_sizes = PyList_New(0), *result = NULL;
    if (!freed_refs || !freed_sizes || writer_open(&w, args[0], args[1], 1) < 0) goto done;
    Py_ssize_t n = PyList_GET_SIZE(args[2]);
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *kp;
        Py_ssize_t klen;
        int error = 0;
        if (bytes_of(PyList_GET_ITEM(args[2], k), &kp, &klen) < 0) goto done;
        int64_t i = find_slot(&w.slots, w.mask, &w.arenas, kp, klen, crc32_of(kp, klen), &error);
        if (error) goto done;
        if (i < 0) continue;
        uint64_t *slot = w.slots.words + (uint64_t)i * SLOT_WORDS;
        if (append_pair(freed_refs, freed_sizes, slot[S_REF], (uint64_t)klen + slot[S_VLEN]) < 0)
            goto done;
        STORE(&slot[S_REF], (uint64_t)REF_DELETED);
    }
    result = Py_BuildValue("OO", freed_refs, freed_sizes);
done:
    writer_close(&w);
    Py_XDECREF(freed_refs);
    Py_XDECREF(freed_sizes);
    return result;
}

/* Write one entry, its key (bytes) then its value (vlen bytes at v), at its ref, which
 * must lie with the whole entry inside its arena segment. 0, or -1 with an exception. */
static int write_entry(Arenas *arenas, PyObject *key, PyObject *ref_obj, const void *v,
                       uint64_t vlen) {
    const unsigned char *kp;
    Py_ssize_t klen;
    if (bytes_of(key, &kp, &klen) < 0) return -1;
    uint64_t ref = as_u64(ref_obj);
    if (PyErr_Occurred()) return -1;
    unsigned char *base;
    Py_ssize_t size;
    uint64_t off = ref & OFFSET_MASK;
    if (arena_at(arenas, ref >> OFFSET_BITS, &base, &size) < 0) return -1;
    if (!base || off > (uint64_t)size || (uint64_t)klen + vlen > (uint64_t)size - off) {
        PyErr_Format(PyExc_ValueError, "entry at %llx overruns its arena segment",
                     (unsigned long long)ref);
        return -1;
    }
    memcpy(base + off, kp, klen);
    memcpy(base + off + klen, v, vlen);
    return 0;
}

static PyObject *place(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "place(arenas, refs, keys, values)");
        return NULL;
    }
    PyObject *refs = args[1], *keys = args[2], *values = args[3];
    if (check_list(refs, "refs") < 0 || check_list(keys, "keys") < 0 ||
        (!PyList_Check(values) && !PyTuple_Check(values))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "values must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(refs);
    if (PyList_GET_SIZE(keys) != n || PySequence_Fast_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "refs, keys and values differ in length");
        return NULL;
    }
    Arenas arenas;
    if (arenas_init(&arenas, args[0], 1) < 0) return NULL;
    PyObject *result = NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_buffer v;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(values, k), &v, PyBUF_SIMPLE) < 0) goto done;
        int written = write_entry(&arenas, PyList_GET_ITEM(keys, k), PyList_GET_ITEM(refs, k),
                                  v.buf, (uint64_t)v.len);
        PyBuffer_Release(&v);
        if (written < 0) goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    arenas_release(&arenas);
    return result;
}

/* place() for values laid end to end in one buffer (a staging segment): value k is
 * source[sum(lengths[:k]) : sum(lengths[:k + 1])], every one checked to lie inside it. */
static PyObject *place_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "place_run(arenas, refs, keys, source, lengths)");
        return NULL;
    }
    PyObject *refs = args[1], *keys = args[2], *lengths = args[4];
    if (check_list(refs, "refs") < 0 || check_list(keys, "keys") < 0 ||
        check_list(lengths, "lengths") < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(refs);
    if (PyList_GET_SIZE(keys) != n || PyList_GET_SIZE(lengths) != n) {
        PyErr_SetString(PyExc_ValueError, "refs, keys and lengths differ in length");
        return NULL;
    }
    Py_buffer source;
    if (PyObject_GetBuffer(args[3], &source, PyBUF_SIMPLE) < 0) return NULL;
    Arenas arenas;
    if (arenas_init(&arenas, args[0], 1) < 0) {
        PyBuffer_Release(&source);
        return NULL;
    }
    PyObject *result = NULL;
    uint64_t at = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t vlen = as_u64(PyList_GET_ITEM(lengths, k));
        if (PyErr_Occurred()) goto done;
        if (vlen > (uint64_t)source.len - at) {
            PyErr_SetString(PyExc_ValueError, "the values overrun their source");
            goto done;
        }
        if (write_entry(&arenas, PyList_GET_ITEM(keys, k), PyList_GET_ITEM(refs, k),
                        (const unsigned char *)source.buf + at, vlen) < 0)
            goto done;
        at += vlen;
    }
    result = Py_NewRef(Py_None);
done:
    arenas_release(&arenas);
    PyBuffer_Release(&source);
    return result;
}

/* A proxy's mset batch of (str, bytes) pairs taken apart in one pass:
 * fallback.split_bytes_pairs. None for anything else, which the caller's general path
 * takes apart (and names, if it is wrong). */
static PyObject *split_bytes_pairs(PyObject *self, PyObject *pairs) {
    if (!PyList_CheckExact(pairs)) {
        PyErr_SetString(PyExc_TypeError, "pairs must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    PyObject *keys = PyList_New(n), *values = keys ? PyList_New(n) : NULL;
    PyObject *sizes = values ? PyList_New(n) : NULL;
    if (!sizes) goto fail;
    /* The lists' allocation may have run a collection, and a finaliser can change any
     * list: nothing below runs Python code or allocates a tracked object. */
    if (PyList_GET_SIZE(pairs) != n) goto other;
    unsigned long long value_bytes = 0, key_chars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) goto other;
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_CheckExact(key) || !PyBytes_CheckExact(value)) goto other;
        Py_ssize_t size = PyBytes_GET_SIZE(value);
        PyObject *length = PyLong_FromSsize_t(size);
        if (!length) goto fail;
        PyList_SET_ITEM(sizes, i, length);
        Py_INCREF(key);
        PyList_SET_ITEM(keys, i, key);
        Py_INCREF(value);
        PyList_SET_ITEM(values, i, value);
        value_bytes += (unsigned long long)size;
        key_chars += (unsigned long long)PyUnicode_GET_LENGTH(key);
    }
    return Py_BuildValue("(NNNKK)", keys, values, sizes, value_bytes, key_chars);
other:
    Py_DECREF(keys);
    Py_DECREF(values);
    Py_DECREF(sizes);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(sizes);
    return NULL;
}

/* The values (bytes) end to end into target (a proxy's staging segment), all of them
 * or, if they would overrun it, none: fallback.stage_values. */
static PyObject *stage_values(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stage_values(target, values)");
        return NULL;
    }
    PyObject *values = args[1];
    if (check_list(values, "values") < 0) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    uint64_t total = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *value = PyList_GET_ITEM(values, k);
        if (!PyBytes_Check(value)) {
            PyErr_Format(PyExc_TypeError, "value at position %zd is not bytes", k);
            return NULL;
        }
        total += (uint64_t)PyBytes_GET_SIZE(value);
    }
    Py_buffer target;
    if (PyObject_GetBuffer(args[0], &target, PyBUF_WRITABLE) < 0) return NULL;
    if (total > (uint64_t)target.len) {
        PyBuffer_Release(&target);
        PyErr_SetString(PyExc_ValueError, "the values overrun their target");
        return NULL;
    }
    char *at = target.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *value = PyList_GET_ITEM(values, k);
        memcpy(at, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
        at += PyBytes_GET_SIZE(value);
    }
    PyBuffer_Release(&target);
    return PyLong_FromUnsignedLongLong(total);
}

static PyObject *rebuild(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "rebuild(old, new, old_visited=None, new_visited=None)");
        return NULL;
    }
    Words old, new_;
    Marks old_marks = {NULL, 0, {0}}, new_marks = {NULL, 0, {0}};
    uint64_t mask;
    if (words_get(args[0], &old, 0) < 0) return NULL;
    if (words_get(args[1], &new_, 1) < 0) {
        PyBuffer_Release(&old.view);
        return NULL;
    }
    long live = 0;
    if (nargs == 4 && (marks_get(args[2], &old_marks) < 0 || marks_get(args[3], &new_marks) < 0)) {
        live = -1;
    } else if (capacity_mask(&new_, &mask) < 0) {
        PyErr_SetString(PyExc_ValueError, "the index's capacity is not a power of two");
        live = -1;
    } else {
        Py_ssize_t slots = old.n / SLOT_WORDS;
        /* The new index is empty and nobody reads it yet: no ordering needed. A slot's
         * visited byte moves with it. */
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t s = 0; s < slots; s++) {
            uint64_t *from = old.words + s * SLOT_WORDS;
            if (from[S_REF] <= REF_DELETED) continue;
            uint64_t i = from[S_HASH_KLEN] & 0xFFFFFFFFu & mask;
            while (new_.words[i * SLOT_WORDS + S_REF] != REF_EMPTY) i = (i + 1) & mask;
            memcpy(new_.words + i * SLOT_WORDS, from, SLOT_WORDS * 8);
            if (new_marks.bytes && (Py_ssize_t)i < new_marks.n)
                new_marks.bytes[i] = old_marks.bytes && s < old_marks.n ? old_marks.bytes[s] : 0;
            live++;
        }
        Py_END_ALLOW_THREADS
    }
    marks_release(&old_marks);
    marks_release(&new_marks);
    PyBuffer_Release(&old.view);
    PyBuffer_Release(&new_.view);
    return live < 0 ? NULL : PyLong_FromLong(live);
}

/* -- the mset request, decoded -------------------------------------------------- */

/* The protocol's constants: must equal shmstore/_protocol.py (tests/test_hot.py checks). */
#define OP_MSET 2
#define OP_MSET_SHM 5
#define MAX_TTL_NS ((UINT64_C(1) << 62) - 1)

typedef struct {
    const unsigned char *p, *end;
} Cursor;

/* An unsigned big-endian integer of `bytes` bytes, as msgpack writes lengths. */
static int read_be(Cursor *c, int bytes, uint64_t *out) {
    if (c->end - c->p < bytes) return -1;
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | c->p[i];
    c->p += bytes;
    *out = v;
    return 0;
}

/* The length of the msgpack item at the cursor if its type byte is one of a kind's
 * (fix: mask and value of its fixed forms, if any; then the type bytes of its 1-, 2-
 * and 4-byte length forms, 0 for none), the cursor moved past the header; -1 if not. */
static int header_of(Cursor *c, unsigned char fix_mask, unsigned char fix, unsigned char b8,
                     unsigned char b16, unsigned char b32, uint64_t *n) {
    if (c->p >= c->end) return -1;
    unsigned char b = *c->p++;
    if (fix_mask && (b & fix_mask) == fix) {
        *n = b & (unsigned char)~fix_mask;
        return 0;
    }
    if (b8 && b == b8) return read_be(c, 1, n);
    if (b == b16) return read_be(c, 2, n);
    if (b == b32) return read_be(c, 4, n);
    return -1;
}

#define ARRAY_HEADER(c, n) header_of((c), 0xF0, 0x90, 0, 0xDC, 0xDD, (n))
#define STR_HEADER(c, n) header_of((c), 0xE0, 0xA0, 0xD9, 0xDA, 0xDB, (n))
#define BIN_HEADER(c, n) header_of((c), 0, 0, 0xC4, 0xC5, 0xC6, (n))

/* Whether p[0:n] is a key msgpack-python would decode (UTF-8, lone surrogates passed
 * through): ASCII at once, anything else by CPython's own decoder. */
static int key_decodes(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n && p[i] < 0x80) i++;
    if (i == n) return 1;
    PyObject *str = PyUnicode_DecodeUTF8((const char *)p, n, "surrogatepass");
    if (!str) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(str);
    return 1;
}

/* An array of keys as msgpack str, into a new list of their UTF-8 bytes (*out), the
 * cursor moved past it. 0: done; 1: not in a form taken here (nothing kept); -1: a
 * Python error. */
static int parse_keys(Cursor *c, PyObject **out) {
    uint64_t count, n;
    *out = NULL;
    /* Every key takes at least a byte: a count beyond the bytes left is a lie. */
    if (ARRAY_HEADER(c, &count) < 0 || count > (uint64_t)(c->end - c->p)) return 1;
    PyObject *keys = PyList_New((Py_ssize_t)count);
    if (!keys) return -1;
    for (uint64_t k = 0; k < count; k++) {
        if (STR_HEADER(c, &n) < 0 || n > (uint64_t)(c->end - c->p) ||
            !key_decodes(c->p, (Py_ssize_t)n)) {
            Py_DECREF(keys);
            return 1;
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)c->p, (Py_ssize_t)n);
        if (!key) {
            Py_DECREF(keys);
            return -1;
        }
        PyList_SET_ITEM(keys, (Py_ssize_t)k, key);
        c->p += n;
    }
    *out = keys;
    return 0;
}

/* A non-negative integer in the forms the packer writes for one (a positive fixint,
 * then uint 8 to 64). 0, or -1 if the item is not one. */
static int parse_uint(Cursor *c, uint64_t *v) {
    if (c->p >= c->end) return -1;
    unsigned char b = *c->p++;
    if (b <= 0x7F) {
        *v = b;
        return 0;
    }
    if (b == 0xCC) return read_be(c, 1, v);
    if (b == 0xCD) return read_be(c, 2, v);
    if (b == 0xCE) return read_be(c, 4, v);
    if (b == 0xCF) return read_be(c, 8, v);
    return -1;
}

/* ttl: nil, or a non-negative integer up to MAX_TTL_NS, into a new reference (*out).
 * 0: done; 1: not taken here; -1: a Python error. */
static int parse_ttl(Cursor *c, PyObject **out) {
    uint64_t v;
    *out = NULL;
    if (c->p < c->end && *c->p == 0xC0) {
        c->p++;
        *out = Py_NewRef(Py_None);
        return 0;
    }
    if (parse_uint(c, &v) < 0 || v > MAX_TTL_NS) return 1;
    *out = PyLong_FromUnsignedLongLong(v);
    return *out ? 0 : -1;
}

static PyObject *parse_mset(PyObject *self, PyObject *frame) {
    if (!PyBytes_Check(frame)) Py_RETURN_NONE;
    Cursor c = {(const unsigned char *)PyBytes_AS_STRING(frame), NULL};
    c.end = c.p + PyBytes_GET_SIZE(frame);
    PyObject *keys = NULL, *values = NULL, *ttl = NULL, *result = NULL;
    uint64_t n, values_count;
    int got;
    /* [MSET, keys, values, ttl]: the opcode a positive fixint, as the packer writes it. */
    if (ARRAY_HEADER(&c, &n) < 0 || n != 4 || c.p >= c.end || *c.p++ != OP_MSET) goto decline;
    if ((got = parse_keys(&c, &keys)) != 0) goto end_or_decline;
    Py_ssize_t count = PyList_GET_SIZE(keys);
    if (ARRAY_HEADER(&c, &values_count) < 0 || values_count != (uint64_t)count) goto decline;
    if (!(values = PyList_New(count))) goto fail;
    for (Py_ssize_t k = 0; k < count; k++) {
        if (BIN_HEADER(&c, &n) < 0 || n > (uint64_t)(c.end - c.p)) goto decline;
        PyObject *value = PyBytes_FromStringAndSize((const char *)c.p, (Py_ssize_t)n);
        if (!value) goto fail;
        PyList_SET_ITEM(values, k, value);
        c.p += n;
    }
    if ((got = parse_ttl(&c, &ttl)) != 0) goto end_or_decline;
    if (c.p != c.end) goto decline; /* trailing bytes: not one msgpack document */
    result = PyTuple_Pack(3, keys, values, ttl);
    goto fail; /* releases our references either way */
end_or_decline:
    if (got < 0) goto fail;
decline:
    result = Py_NewRef(Py_None);
fail:
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(ttl);
    return result;
}

/* Whether p[0:n] names a staging segment as the protocol requires: s<digits>.<digits>. */
static int staging_name(const unsigned char *p, uint64_t n) {
    uint64_t i = 1, digits;
    if (n < 4 || p[0] != 's') return 0;
    for (digits = 0; i < n && p[i] >= '0' && p[i] <= '9'; i++) digits++;
    if (!digits || i >= n || p[i++] != '.') return 0;
    for (digits = 0; i < n && p[i] >= '0' && p[i] <= '9'; i++) digits++;
    return digits && i == n;
}

static PyObject *parse_mset_shm(PyObject *self, PyObject *frame) {
    if (!PyBytes_Check(frame)) Py_RETURN_NONE;
    Cursor c = {(const unsigned char *)PyBytes_AS_STRING(frame), NULL};
    c.end = c.p + PyBytes_GET_SIZE(frame);
    PyObject *keys = NULL, *name = NULL, *lengths = NULL, *ttl = NULL, *result = NULL;
    uint64_t n, lengths_count, v;
    int got;
    /* [MSET_SHM, keys, segment, lengths, ttl] */
    if (ARRAY_HEADER(&c, &n) < 0 || n != 5 || c.p >= c.end || *c.p++ != OP_MSET_SHM)
        goto decline;
    if ((got = parse_keys(&c, &keys)) != 0) goto end_or_decline;
    if (STR_HEADER(&c, &n) < 0 || n > (uint64_t)(c.end - c.p) || !staging_name(c.p, n))
        goto decline;
    if (!(name = PyUnicode_DecodeASCII((const char *)c.p, (Py_ssize_t)n, NULL))) goto fail;
    c.p += n;
    Py_ssize_t count = PyList_GET_SIZE(keys);
    if (ARRAY_HEADER(&c, &lengths_count) < 0 || lengths_count != (uint64_t)count) goto decline;
    if (!(lengths = PyList_New(count))) goto fail;
    for (Py_ssize_t k = 0; k < count; k++) {
        if (parse_uint(&c, &v) < 0) goto decline;
        PyObject *length = PyLong_FromUnsignedLongLong(v);
        if (!length) goto fail;
        PyList_SET_ITEM(lengths, k, length);
    }
    if ((got = parse_ttl(&c, &ttl)) != 0) goto end_or_decline;
    if (c.p != c.end) goto decline;
    result = PyTuple_Pack(4, keys, name, lengths, ttl);
    goto fail;
end_or_decline:
    if (got < 0) goto fail;
decline:
    result = Py_NewRef(Py_None);
fail:
    Py_XDECREF(keys);
    Py_XDECREF(name);
    Py_XDECREF(lengths);
    Py_XDECREF(ttl);
    return result;
}

static PyMethodDef methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))lookup, METH_FASTCALL,
     "lookup(ctl, slots, generation, arenas, keys, visited=None, now=0): see fallback.lookup"},
    {"manager_alive", (PyCFunction)(void (*)(void))manager_alive, METH_FASTCALL,
     "manager_alive(pidfd, ctl=None): see fallback"},
    {"hold_liveness", hold_liveness, METH_O, "hold_liveness(ctl): see fallback"},
    {"release_liveness", release_liveness, METH_O, "release_liveness(ctl): see fallback"},
    {"key_hash", key_hash, METH_O, "key_hash(key_bytes): CRC-32, as zlib.crc32"},
    {"count_found", (PyCFunction)(void (*)(void))count_found, METH_FASTCALL,
     "count_found(words, found): see fallback.count_found"},
    {"find", (PyCFunction)(void (*)(void))find, METH_FASTCALL, "see fallback.find"},
    {"stripes_enter", (PyCFunction)(void (*)(void))stripes_enter, METH_FASTCALL,
     "see fallback.stripes_enter"},
    {"stripes_exit", (PyCFunction)(void (*)(void))stripes_exit, METH_FASTCALL,
     "see fallback.stripes_exit"},
    {"index_set", (PyCFunction)(void (*)(void))index_set, METH_FASTCALL, "see fallback.index_set"},
    {"index_delete", (PyCFunction)(void (*)(void))index_delete, METH_FASTCALL,
     "see fallback.index_delete"},
    {"place", (PyCFunction)(void (*)(void))place, METH_FASTCALL, "see fallback.place"},
    {"place_run", (PyCFunction)(void (*)(void))place_run, METH_FASTCALL,
     "see fallback.place_run"},
    {"rebuild", (PyCFunction)(void (*)(void))rebuild, METH_FASTCALL, "see fallback.rebuild"},
    {"split_bytes_pairs", split_bytes_pairs, METH_O,
     "split_bytes_pairs(pairs): see fallback.split_bytes_pairs"},
    {"stage_values", (PyCFunction)(void (*)(void))stage_values, METH_FASTCALL,
     "see fallback.stage_values"},
    {"parse_mset", parse_mset, METH_O, "parse_mset(frame): see fallback.parse_mset"},
    {"parse_mset_shm", parse_mset_shm, METH_O,
     "parse_mset_shm(frame): see fallback.parse_mset_shm"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmstore._hot._chot",
    .m_doc = "The hot functions of shmstore, compiled; the twin of shmstore._hot.fallback.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__chot(void) {
    crc_init();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "TORN", TORN) < 0 || PyModule_AddIntConstant(m, "STALE", STALE) < 0)
        goto fail;
    PyObject *layout = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "HEADER_WORDS", HEADER_WORDS, "STRIPES",
        STRIPES, "SLOT_WORDS", SLOT_WORDS, "S_HASH_KLEN", S_HASH_KLEN, "S_REF", S_REF, "S_VLEN",
        S_VLEN, "S_ORDER", S_ORDER, "S_EXPIRES", S_EXPIRES, "W_INDEX_GEN", W_INDEX_GEN, "EMPTY", REF_EMPTY, "DELETED",
        REF_DELETED, "OFFSET_BITS", OFFSET_BITS, "READER_WORDS", READER_WORDS, "R_HITS", R_HITS,
        "R_MISSES", R_MISSES, "W_LIVENESS_TID", W_LIVENESS_TID, "W_LIVENESS_MUTEX", W_LIVENESS_MUTEX,
        "LIVENESS_MUTEX_WORDS", LIVENESS_MUTEX_WORDS);
    if (!layout || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        goto fail;
    }
    PyObject *protocol = Py_BuildValue("{s:i,s:i,s:K}", "MSET", OP_MSET, "MSET_SHM",
                                       OP_MSET_SHM, "MAX_TTL_NS",
                                       (unsigned long long)MAX_TTL_NS);
    if (!protocol || PyModule_AddObject(m, "PROTOCOL", protocol) < 0) {
        Py_XDECREF(protocol);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
