/* dnsd.protocol._fastudp: batched UDP datagram I/O (Linux recvmmsg/sendmmsg) for dnsd.protocol.udp,
 * with the handler's exact packet-cache hits answered inside the receiving call.
 *
 * Plain C against the CPython API (no Cython): building it needs only a C compiler and the Python
 * headers. Optional: without it dnsd.protocol.udp uses the asyncio datagram transport.
 *
 * Channel(fd, batch, latency_bounds): one non-blocking UDP socket (the caller owns and closes it).
 *   receive(cache, counts, located, latency_counts)
 *       -> None when nothing was waiting, else (misses, hits, hit_seconds, received).
 *       One recvmmsg of up to `batch` datagrams. A datagram whose key (query[2:], client_ip, False)
 *       is in `cache` (a dict: key -> (reply[2:], labels, located or None)) is answered from it: the
 *       query's ID + reply[2:] is queued for send(), counts[labels] and located[located] go up by
 *       one, and its time is observed in latency_counts (bucket i: the first bound >= seconds, as
 *       bisect_left; the total comes back as hit_seconds). cache None: every datagram is a miss.
 *       misses: [(slot, query, client_ip, client_port)] for the caller to answer.
 *   send(replies) -> replies dropped: the queued hits and `replies` ([(slot, reply bytes)], each
 *       to the address of the datagram received in that slot) in one sendmmsg. A full send buffer
 *       (EAGAIN) drops the rest, as the kernel would; another error drops that one reply.
 *   close(): frees the buffers (the socket stays the caller's).
 */
#define _GNU_SOURCE 1  /* recvmmsg, sendmmsg */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SLOT_SIZE 65536  /* the largest UDP payload fits: a query is never cut */
#define MAX_BATCH 1024
#define MAX_BOUNDS 32
#define HEADER_SIZE 12   /* shorter datagrams never get into the cache (they do not parse) */

typedef struct {
    PyObject_HEAD
    int fd;
    int batch;
    char *buffers;                      /* batch x SLOT_SIZE, touched only as far as datagrams reach */
    struct sockaddr_storage *addresses; /* per slot: the sender */
    struct mmsghdr *incoming;
    struct iovec *incoming_iov;
    int received;                       /* datagrams in the slots now (0 after send) */
    struct mmsghdr *outgoing;
    struct iovec *outgoing_iov;         /* two per reply: the query's ID, then the reply after its ID */
    PyObject **held;                    /* per outgoing reply: the bytes it points into */
    int queued;
    char *answered;                     /* per slot: a reply is queued already */
    double bounds[MAX_BOUNDS];
    int bound_count;
    /* the client address string of the last datagram: a few resolvers send most queries */
    struct sockaddr_storage last_address;
    socklen_t last_length;
    PyObject *last_ip;
} Channel;

static void release_queued(Channel *self)
{
    for (int i = 0; i < self->queued; i++)
        Py_CLEAR(self->held[i]);
    self->queued = 0;
}

static void free_buffers(Channel *self)
{
    if (self->held != NULL)
        release_queued(self);
    PyMem_Free(self->buffers);
    PyMem_Free(self->addresses);
    PyMem_Free(self->incoming);
    PyMem_Free(self->incoming_iov);
    PyMem_Free(self->outgoing);
    PyMem_Free(self->outgoing_iov);
    PyMem_Free(self->held);
    PyMem_Free(self->answered);
    self->buffers = NULL;
    self->addresses = NULL;
    self->incoming = NULL;
    self->incoming_iov = NULL;
    self->outgoing = NULL;
    self->outgoing_iov = NULL;
    self->held = NULL;
    self->answered = NULL;
    self->received = 0;
    Py_CLEAR(self->last_ip);
}

static void Channel_dealloc(Channel *self)
{
    free_buffers(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Channel_init(Channel *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"fd", "batch", "latency_bounds", NULL};
    int fd, batch;
    PyObject *bounds;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO", names, &fd, &batch, &bounds))
        return -1;
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be 1..%d", MAX_BATCH);
        return -1;
    }
    PyObject *sequence = PySequence_Fast(bounds, "latency_bounds must be a sequence of seconds");
    if (sequence == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    if (count > MAX_BOUNDS) {
        Py_DECREF(sequence);
        PyErr_Format(PyExc_ValueError, "at most %d latency bounds", MAX_BOUNDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        self->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(sequence, i));
        if (self->bounds[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(sequence);
            return -1;
        }
    }
    Py_DECREF(sequence);
    free_buffers(self);
    self->bound_count = (int)count;
    self->fd = fd;
    self->batch = batch;
    self->buffers = PyMem_Malloc((size_t)batch * SLOT_SIZE);
    self->addresses = PyMem_Calloc(batch, sizeof(struct sockaddr_storage));
    self->incoming = PyMem_Calloc(batch, sizeof(struct mmsghdr));
    self->incoming_iov = PyMem_Calloc(batch, sizeof(struct iovec));
    self->outgoing = PyMem_Calloc(batch, sizeof(struct mmsghdr));
    self->outgoing_iov = PyMem_Calloc(2 * (size_t)batch, sizeof(struct iovec));
    self->held = PyMem_Calloc(batch, sizeof(PyObject *));
    self->answered = PyMem_Calloc(batch, 1);
    if (!self->buffers || !self->addresses || !self->incoming || !self->incoming_iov || !self->outgoing
            || !self->outgoing_iov || !self->held || !self->answered) {
        free_buffers(self);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int check_open(Channel *self)
{
    if (self->buffers == NULL) {
        PyErr_SetString(PyExc_ValueError, "channel closed");
        return -1;
    }
    return 0;
}

static double monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* The client's address as Python's socket module writes it (inet_ntop; no IPv6 scope), and its port. */
static PyObject *client_ip(Channel *self, int slot, int *port)
{
    struct sockaddr_storage *address = &self->addresses[slot];
    socklen_t length = self->incoming[slot].msg_hdr.msg_namelen;
    char text[INET6_ADDRSTRLEN];
    const void *raw;
    if (address->ss_family == AF_INET) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)address;
        *port = ntohs(v4->sin_port);
        raw = &v4->sin_addr;
    } else if (address->ss_family == AF_INET6) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)address;
        *port = ntohs(v6->sin6_port);
        raw = &v6->sin6_addr;
    } else {
        PyErr_SetString(PyExc_OSError, "datagram from an address family other than IPv4/IPv6");
        return NULL;
    }
    /* the port differs from query to query: compare the address alone */
    size_t offset = address->ss_family == AF_INET ? offsetof(struct sockaddr_in, sin_addr)
                                                  : offsetof(struct sockaddr_in6, sin6_addr);
    size_t size = address->ss_family == AF_INET ? sizeof(struct in_addr) : sizeof(struct in6_addr);
    if (self->last_ip != NULL && self->last_length == length
            && self->last_address.ss_family == address->ss_family
            && memcmp((char *)&self->last_address + offset, (char *)address + offset, size) == 0) {
        Py_INCREF(self->last_ip);
        return self->last_ip;
    }
    if (inet_ntop(address->ss_family, raw, text, sizeof(text)) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *ip = PyUnicode_FromString(text);
    if (ip == NULL)
        return NULL;
    Py_XSETREF(self->last_ip, Py_NewRef(ip));
    memcpy(&self->last_address, address, length);
    self->last_length = length;
    return ip;
}

static int increment(PyObject *counts, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(counts, key);
    long value = 0;
    if (old != NULL) {
        value = PyLong_AsLong(old);
        if (value == -1 && PyErr_Occurred())
            return -1;
    } else if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *updated = PyLong_FromLong(value + 1);
    if (updated == NULL)
        return -1;
    int status = PyDict_SetItem(counts, key, updated);
    Py_DECREF(updated);
    return status;
}

static void queue_reply(Channel *self, int slot, PyObject *tail, int with_id)
{
    int index = self->queued++;
    struct iovec *iov = &self->outgoing_iov[2 * index];
    int parts = 0;
    if (with_id) {
        iov[parts].iov_base = self->buffers + (size_t)slot * SLOT_SIZE;
        iov[parts].iov_len = 2;
        parts++;
    }
    iov[parts].iov_base = PyBytes_AS_STRING(tail);
    iov[parts].iov_len = (size_t)PyBytes_GET_SIZE(tail);
    parts++;
    struct msghdr *header = &self->outgoing[index].msg_hdr;
    header->msg_name = &self->addresses[slot];
    header->msg_namelen = self->incoming[slot].msg_hdr.msg_namelen;
    header->msg_iov = iov;
    header->msg_iovlen = parts;
    header->msg_control = NULL;
    header->msg_controllen = 0;
    header->msg_flags = 0;
    Py_INCREF(tail);
    self->held[index] = tail;
    self->answered[slot] = 1;
}

static PyObject *Channel_receive(Channel *self, PyObject *args)
{
    PyObject *cache, *counts, *located, *latency_counts;
    if (!PyArg_ParseTuple(args, "OOOO", &cache, &counts, &located, &latency_counts))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    int front = cache != Py_None;
    if (front && (!PyDict_Check(cache) || !PyDict_Check(counts) || !PyDict_Check(located)
                  || !PyList_Check(latency_counts)
                  || PyList_GET_SIZE(latency_counts) != self->bound_count + 1)) {
        PyErr_SetString(PyExc_TypeError,
                        "receive: cache, counts and located must be dicts, latency_counts a list of len(bounds)+1");
        return NULL;
    }
    release_queued(self);  /* a send() that never came (an exception in between): forget its replies */
    for (int slot = 0; slot < self->batch; slot++) {
        struct msghdr *header = &self->incoming[slot].msg_hdr;
        self->incoming_iov[slot].iov_base = self->buffers + (size_t)slot * SLOT_SIZE;
        self->incoming_iov[slot].iov_len = SLOT_SIZE;
        header->msg_name = &self->addresses[slot];
        header->msg_namelen = sizeof(struct sockaddr_storage);
        header->msg_iov = &self->incoming_iov[slot];
        header->msg_iovlen = 1;
        header->msg_control = NULL;
        header->msg_controllen = 0;
        header->msg_flags = 0;
        self->answered[slot] = 0;
    }
    int received;
    do {
        received = recvmmsg(self->fd, self->incoming, (unsigned int)self->batch, MSG_DONTWAIT, NULL);
    } while (received < 0 && errno == EINTR);
    if (received < 0) {
        self->received = 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->received = received;

    PyObject *misses = PyList_New(0);
    if (misses == NULL)
        return NULL;
    long hit_buckets[MAX_BOUNDS + 1] = {0};
    long hits = 0;
    double hit_seconds = 0.0;
    double before = front ? monotonic() : 0.0;
    for (int slot = 0; slot < received; slot++) {
        const char *data = self->buffers + (size_t)slot * SLOT_SIZE;
        Py_ssize_t length = (Py_ssize_t)self->incoming[slot].msg_len;
        int port = 0;
        PyObject *ip = client_ip(self, slot, &port);
        if (ip == NULL)
            goto fail;
        if (front && length >= HEADER_SIZE) {
            PyObject *tail = PyBytes_FromStringAndSize(data + 2, length - 2);
            if (tail == NULL) {
                Py_DECREF(ip);
                goto fail;
            }
            PyObject *key = PyTuple_Pack(3, tail, ip, Py_False);
            Py_DECREF(tail);
            if (key == NULL) {
                Py_DECREF(ip);
                goto fail;
            }
            PyObject *entry = PyDict_GetItemWithError(cache, key);  /* borrowed */
            Py_DECREF(key);
            if (entry == NULL && PyErr_Occurred()) {
                Py_DECREF(ip);
                goto fail;
            }
            if (entry != NULL && PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 3
                    && PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 0))) {
                PyObject *where = PyTuple_GET_ITEM(entry, 2);
                Py_INCREF(entry);  /* counting runs Python's hashing: keep the entry alive */
                int failed = increment(counts, PyTuple_GET_ITEM(entry, 1)) < 0
                             || (where != Py_None && increment(located, where) < 0);
                if (!failed)
                    queue_reply(self, slot, PyTuple_GET_ITEM(entry, 0), 1);
                Py_DECREF(entry);
                Py_DECREF(ip);
                if (failed)
                    goto fail;
                double now = monotonic();
                double seconds = now - before;
                before = now;
                int bucket = 0;
                while (bucket < self->bound_count && self->bounds[bucket] < seconds)
                    bucket++;
                hit_buckets[bucket]++;
                hit_seconds += seconds;
                hits++;
                continue;
            }
        }
        PyObject *miss = PyTuple_New(4);  /* (slot, query, client_ip, client_port) */
        if (miss == NULL) {
            Py_DECREF(ip);
            goto fail;
        }
        PyTuple_SET_ITEM(miss, 2, ip);
        PyObject *part = PyLong_FromLong(slot);
        if (part == NULL) {
            Py_DECREF(miss);
            goto fail;
        }
        PyTuple_SET_ITEM(miss, 0, part);
        part = PyBytes_FromStringAndSize(data, length);
        if (part == NULL) {
            Py_DECREF(miss);
            goto fail;
        }
        PyTuple_SET_ITEM(miss, 1, part);
        part = PyLong_FromLong(port);
        if (part == NULL) {
            Py_DECREF(miss);
            goto fail;
        }
        PyTuple_SET_ITEM(miss, 3, part);
        int status = PyList_Append(misses, miss);
        Py_DECREF(miss);
        if (status < 0)
            goto fail;
        if (front)
            before = monotonic();
    }
    if (hits) {
        for (int bucket = 0; bucket <= self->bound_count; bucket++) {
            if (!hit_buckets[bucket])
                continue;
            long value = PyLong_AsLong(PyList_GET_ITEM(latency_counts, bucket));
            if (value == -1 && PyErr_Occurred())
                goto fail;
            PyObject *updated = PyLong_FromLong(value + hit_buckets[bucket]);
            if (updated == NULL || PyList_SetItem(latency_counts, bucket, updated) < 0)
                goto fail;
        }
    }
    return Py_BuildValue("(Nldi)", misses, hits, hit_seconds, received);
fail:
    Py_DECREF(misses);
    release_queued(self);
    return NULL;
}

static PyObject *Channel_send(Channel *self, PyObject *replies)
{
    if (check_open(self) < 0)
        return NULL;
    PyObject *sequence = PySequence_Fast(replies, "send: replies must be a sequence of (slot, bytes)");
    if (sequence == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2
                || !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "send: each reply must be (slot, bytes)");
            goto fail;
        }
        long slot = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (slot == -1 && PyErr_Occurred())
            goto fail;
        if (slot < 0 || slot >= self->received || self->answered[slot]) {
            PyErr_Format(PyExc_ValueError, "send: slot %ld has no datagram waiting for a reply", slot);
            goto fail;
        }
        queue_reply(self, (int)slot, PyTuple_GET_ITEM(item, 1), 0);
    }
    Py_DECREF(sequence);
    int total = self->queued, sent = 0;
    long dropped = 0;
    while (sent < total) {
        int done = sendmmsg(self->fd, self->outgoing + sent, (unsigned int)(total - sent), MSG_DONTWAIT);
        if (done > 0) {
            sent += done;
        } else if (done < 0 && errno == EINTR) {
            continue;
        } else if (done < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            dropped += total - sent;  /* the send buffer is full: drop, as the kernel would */
            break;
        } else {
            sent++;  /* this one reply cannot go (e.g. no route back): the others still can */
        }
    }
    release_queued(self);
    self->received = 0;
    return PyLong_FromLong(dropped);
fail:
    Py_DECREF(sequence);
    release_queued(self);
    self->received = 0;
    return NULL;
}

static PyObject *Channel_close(Channel *self, PyObject *Py_UNUSED(ignored))
{
    free_buffers(self);
    Py_RETURN_NONE;
}

static PyMethodDef Channel_methods[] = {
    {"receive", (PyCFunction)Channel_receive, METH_VARARGS,
     "receive(cache, counts, located, latency_counts) -> None | (misses, hits, hit_seconds, received)"},
    {"send", (PyCFunction)Channel_send, METH_O, "send(replies) -> replies dropped (send buffer full)"},
    {"close", (PyCFunction)Channel_close, METH_NOARGS, "free the buffers; the socket stays open"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dnsd.protocol._fastudp.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batched datagram I/O on one UDP socket, packet-cache hits answered inside receive()",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
};
#endif /* __linux__ */

static struct PyModuleDef fastudp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dnsd.protocol._fastudp",
    .m_doc = "Batched UDP datagram I/O (recvmmsg/sendmmsg) with packet-cache hits answered in C; Linux only",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastudp(void)
{
#ifdef __linux__
    if (PyType_Ready(&ChannelType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fastudp_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Channel", (PyObject *)&ChannelType) < 0
            || PyModule_AddIntConstant(module, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
#else
    PyErr_SetString(PyExc_ImportError, "dnsd.protocol._fastudp needs Linux (recvmmsg/sendmmsg)");
    return NULL;
#endif
}
