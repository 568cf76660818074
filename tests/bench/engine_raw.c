/* The raw engine: a minimal MQTT 3.1.1 client on non-blocking sockets, built
 * so that the tool costs far less CPU per message than the broker.
 *
 * One loop turn of a worker: start connects (at most CONNECT_WINDOW waiting
 * for CONNACK/SUBACK), queue publishes, write the queued bytes of every
 * client that has some with one send() each, wait for events (epoll), read
 * up to 64 KiB per readable socket and handle every complete packet in it
 * (acknowledgements are queued and go out with the next turn's send()).
 * A turn costs in proportion to the clients with something to do, not to
 * all clients: with 10,000 connections a poll() over every socket cost
 * mqbench more than the broker spent on the messages.
 *
 * Flow control: a QoS 0 publisher queues while fewer than OUT_HIGH_WATER
 * bytes wait to be written, so the broker's reading speed (TCP back
 * pressure) paces it; a QoS 1/2 publisher keeps opts->inflight messages
 * unacknowledged and waits while worker_backlog_full(). Packet identifiers
 * cycle through 1..65535; acks are only counted, which is exact as long as
 * the window is below 65535. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "bench.h"

#define CONNECT_WINDOW 64 /* below the listen backlog of Mosquitto (100) */
#define READ_CHUNK 65536
#define OUT_HIGH_WATER 65536
#define PUBLISH_BATCH 256 /* messages per publisher per turn, for fairness */
#define POLL_MS 5
#define MAX_EVENTS 1024
#define MISC_INTERVAL_NS 500000000LL
#define LINGER_NS 10000000000LL /* graceful stop: wait this long for the broker */

enum { WIRE_PINGREQ = 12, WIRE_DISCONNECT = 14 };

/* One worker's event loop state. */
struct raw_loop {
    struct worker *w;
    int epfd;
    struct client **dirty; /* clients with output to write this turn (c->dirty) */
    int ndirty;
    struct client **pubs; /* the worker's publishers */
    int npubs;
};

static void raw_fail_worker(struct worker *w, const char *why)
{
    if (!w->error)
        w->error = why;
    atomic_fetch_add(&w->shared->failed, 1);
}

/* Turns the result of a wire_put_* into a client failure, or marks c to be
 * written this turn. */
static int raw_put(struct raw_loop *l, struct client *c, int rc)
{
    if (rc < 0) {
        client_fail(c, "out of memory queueing a packet", 0);
        return rc;
    }
    if (!c->dirty && c->fd >= 0) {
        c->dirty = true;
        l->dirty[l->ndirty++] = c;
    }
    return rc;
}

/* Read events always; write events only while the kernel buffer is full. */
static void raw_want_out(struct raw_loop *l, struct client *c, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0u), .data.ptr = c};
    if (c->want_out == on || c->fd < 0)
        return;
    c->want_out = on;
    epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A failed client's socket stays open until the stop but is not watched:
 * a socket at EOF would wake every turn. */
static void raw_forget_dead(struct raw_loop *l, struct client *c)
{
    if (c->state == CL_DEAD && c->polled) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->polled = false;
    }
}

static void raw_connect(struct raw_loop *l, struct client *c)
{
    struct worker *w = l->w;
    int one = 1;
    int fd = socket(w->addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    c->state = CL_CONNECTING;
    w->pending++;
    c->last_out_ns = bench_now_ns();
    if (fd < 0) {
        client_fail(c, "socket() failed", errno);
        return;
    }
    c->fd = fd;
    /* packets of a turn are already written together: Nagle would only
     * add delayed-ACK stalls to the latency */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, w->addr, w->addrlen) < 0 && errno != EINPROGRESS) {
        client_fail(c, "cannot connect to the broker", errno);
        return;
    }
    /* writable once connected: the CONNECT goes out then */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        client_fail(c, "epoll_ctl failed", errno);
        return;
    }
    c->polled = true;
    c->want_out = true;
    /* written once the connection is up: send() says EAGAIN until then */
    raw_put(l, c, wire_put_connect(&c->out, c->id, w->opts->keepalive, c->clean));
}

static void raw_connect_more(struct raw_loop *l)
{
    struct worker *w = l->w;
    while (w->pending < CONNECT_WINDOW && w->next_connect < w->nclients)
        raw_connect(l, w->clients[w->next_connect++]);
}

/* QoS 0 messages count as completed once written to the socket. */
static void raw_out_drained(struct worker *w, struct client *c)
{
    c->out.off = c->out.len = 0;
    if (c->role == ROLE_PUB && w->opts->qos == 0 && c->completed < c->next_seq) {
        w->st.completed += c->next_seq - c->completed;
        c->completed = c->next_seq;
        client_check_done(c);
    }
}

/* Writes what c has queued; waits for a write event if the kernel is
 * full. */
static void raw_flush(struct raw_loop *l, struct client *c)
{
    while (bbuf_pending(&c->out)) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, bbuf_pending(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
            c->last_out_ns = bench_now_ns();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            raw_want_out(l, c, true);
            return;
        }
        client_fail(c, c->state == CL_CONNECTING ? "cannot connect to the broker" : "write failed",
                    errno);
        raw_forget_dead(l, c);
        return;
    }
    raw_out_drained(l->w, c);
    raw_want_out(l, c, false);
}

static void raw_flush_dirty(struct raw_loop *l)
{
    for (int i = 0; i < l->ndirty; i++) {
        struct client *c = l->dirty[i];
        c->dirty = false;
        if (c->fd >= 0 && c->state != CL_DEAD && !c->want_out)
            raw_flush(l, c);
    }
    l->ndirty = 0;
}

/* Queues up to PUBLISH_BATCH messages; true if c could take more now. */
static bool raw_publish_some(struct raw_loop *l, struct client *c)
{
    struct worker *w = l->w;
    const struct bench_opts *o = w->opts;
    for (int n = 0; n < PUBLISH_BATCH; n++) {
        if (c->state != CL_READY || c->next_seq >= (uint64_t)o->count)
            return false;
        if (o->qos == 0 ? bbuf_pending(&c->out) >= OUT_HIGH_WATER
                        : c->next_seq - c->completed >= (uint64_t)o->inflight)
            return false;
        if (worker_backlog_full(w))
            return false;
        uint16_t id = 0;
        if (o->qos > 0) {
            id = c->next_id++;
            if (c->next_id == 0) /* [MQTT-2.3.1-1] identifiers are non-zero */
                c->next_id = 1;
        }
        client_stamp_next(c);
        if (raw_put(l, c,
                    wire_put_publish(&c->out, c->topic, id, o->qos, c->payload, (size_t)o->size)) <
            0)
            return false;
    }
    return true;
}

static int raw_acked(struct worker *w, struct client *c)
{
    c->completed++;
    w->st.completed++;
    client_check_done(c);
    return 0;
}

static int raw_unexpected(struct client *c)
{
    client_fail(c, "unexpected packet from the broker", 0);
    return -1;
}

static int raw_connack(struct raw_loop *l, struct client *c, const struct wire_packet *pk)
{
    bool sub = c->role == ROLE_SUB;
    if (c->state != CL_CONNECTING)
        return raw_unexpected(c);
    if (pk->code != 0) {
        client_fail(c, "connection refused by the broker (CONNACK)", 0);
        return -1;
    }
    if (sub && !c->subscribe && !c->clean && !pk->present) {
        /* resuming: the broker must still have the session [MQTT-3.2.2-2] */
        client_fail(c, "session not resumed (CONNACK session present 0)", 0);
        return -1;
    }
    if (!sub || !c->subscribe) {
        client_set_ready(c);
        return 0;
    }
    c->state = CL_SUBSCRIBING;
    return raw_put(l, c, wire_put_subscribe(&c->out, 1, c->topic, l->w->opts->qos));
}

/* Handles one packet from the broker; -1 once c has failed. */
static int raw_handle(struct raw_loop *l, struct client *c, const struct wire_packet *pk,
                      int64_t now)
{
    struct worker *w = l->w;
    int qos = w->opts->qos;
    bool pub = c->role == ROLE_PUB, sub = c->role == ROLE_SUB;

    switch (pk->type) {
    case WIRE_CONNACK:
        return raw_connack(l, c, pk);
    case WIRE_SUBACK:
        if (c->state != CL_SUBSCRIBING)
            return raw_unexpected(c);
        if (pk->code == 0x80) { /* [MQTT-3.9.3-2] failure return code */
            client_fail(c, "subscription refused (SUBACK 0x80)", 0);
            return -1;
        }
        client_set_ready(c);
        return 0;
    case WIRE_PUBLISH:
        if (!sub || c->state != CL_READY)
            return raw_unexpected(c);
        client_record_delivery(c, pk->payload, pk->payload_len, now);
        if (pk->qos == 0)
            return 0;
        return raw_put(l, c,
                       wire_put_ack(&c->out, pk->qos == 1 ? WIRE_PUBACK : WIRE_PUBREC, pk->id));
    case WIRE_PUBREL:
        return sub ? raw_put(l, c, wire_put_ack(&c->out, WIRE_PUBCOMP, pk->id)) : raw_unexpected(c);
    case WIRE_PUBREC:
        if (!pub || qos != 2)
            return raw_unexpected(c);
        return raw_put(l, c, wire_put_ack(&c->out, WIRE_PUBREL, pk->id));
    case WIRE_PUBACK:
    case WIRE_PUBCOMP:
        if (!pub || qos != (pk->type == WIRE_PUBACK ? 1 : 2))
            return raw_unexpected(c);
        return raw_acked(w, c);
    case WIRE_PINGRESP:
        return 0;
    default:
        return raw_unexpected(c);
    }
}

static void raw_read(struct raw_loop *l, struct client *c)
{
    if (bbuf_reserve(&c->in, READ_CHUNK) < 0) {
        client_fail(c, "out of memory reading", 0);
        return;
    }
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        client_fail(c, n == 0 ? "connection closed by the broker" : "read failed", n ? errno : 0);
        return;
    }
    if (n < 0)
        return;
    c->in.len += (size_t)n;
    int64_t now = bench_now_ns();
    for (;;) {
        struct wire_packet pk;
        long used = wire_parse(c->in.data + c->in.off, bbuf_pending(&c->in), &pk);
        if (used == 0)
            break;
        if (used < 0) {
            client_fail(c, "malformed packet from the broker", 0);
            return;
        }
        c->in.off += (size_t)used;
        if (raw_handle(l, c, &pk, now) < 0)
            return;
    }
    if (c->in.off == c->in.len)
        c->in.off = c->in.len = 0;
}

static void raw_event(struct raw_loop *l, struct client *c, uint32_t events)
{
    if (c->fd < 0)
        return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP) && c->state != CL_DEAD)
        raw_read(l, c);
    if ((events & EPOLLOUT) && c->state != CL_DEAD)
        raw_flush(l, c);
    raw_forget_dead(l, c);
}

/* PINGREQ after keepalive/2 without sending anything [MQTT-3.1.2-23]. */
static void raw_keepalive(struct raw_loop *l, int64_t now)
{
    struct worker *w = l->w;
    int64_t quiet = (int64_t)w->opts->keepalive * 500000000LL;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->fd >= 0 && c->state == CL_READY && now - c->last_out_ns > quiet) {
            raw_put(l, c, wire_put_simple(&c->out, WIRE_PINGREQ));
            c->last_out_ns = now;
        }
    }
}

/* Graceful stop: after DISCONNECT (and our half close) the broker closes
 * each connection once it has processed everything before it; wait for
 * those EOFs, discarding anything else read, so that the broker has seen
 * the last acknowledgements and the DISCONNECT when the crew is stopped. */
static void raw_linger(struct raw_loop *l, int lingering)
{
    struct worker *w = l->w;
    struct epoll_event evs[MAX_EVENTS];
    int64_t deadline = bench_now_ns() + LINGER_NS;
    unsigned char scratch[4096];

    while (lingering > 0 && bench_now_ns() < deadline) {
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            struct client *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            ssize_t got = recv(c->fd, scratch, sizeof scratch, 0);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                close(c->fd); /* also leaves the epoll set */
                c->fd = -1;
                lingering--;
            }
        }
    }
    w->linger_timeouts += lingering;
}

/* Sends DISCONNECT (after whatever is still queued, acknowledgements
 * included) on every ready connection and closes them; graceful workers
 * first wait for the broker to close. */
static void raw_disconnect_all(struct raw_loop *l)
{
    struct worker *w = l->w;
    int lingering = 0;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->fd < 0)
            continue;
        if (c->state == CL_READY && wire_put_simple(&c->out, WIRE_DISCONNECT) == 0) {
            /* graceful: blocking (5 s at most), the queued acknowledgements
             * must all go out */
            int flags = fcntl(c->fd, F_GETFL);
            if (w->graceful && flags >= 0) {
                struct timeval tv = {5, 0};
                setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK);
            }
            send(c->fd, c->out.data + c->out.off, bbuf_pending(&c->out), MSG_NOSIGNAL);
            c->out.off = c->out.len = 0;
            if (w->graceful && c->polled) {
                fcntl(c->fd, F_SETFL, flags);
                raw_want_out(l, c, false);
                shutdown(c->fd, SHUT_WR); /* [MQTT-3.14.4-1] the client closes */
                lingering++;
                continue;
            }
        }
        close(c->fd);
        c->fd = -1;
    }
    if (lingering)
        raw_linger(l, lingering);
}

static int raw_loop_init(struct raw_loop *l, struct worker *w)
{
    *l = (struct raw_loop){.w = w, .epfd = epoll_create1(EPOLL_CLOEXEC)};
    l->dirty = calloc((size_t)w->nclients + 1, sizeof *l->dirty);
    l->pubs = calloc((size_t)w->nclients + 1, sizeof *l->pubs);
    if (l->epfd < 0 || !l->dirty || !l->pubs)
        return -1;
    for (int i = 0; i < w->nclients; i++) {
        w->clients[i]->dirty = w->clients[i]->want_out = w->clients[i]->polled = false;
        if (w->clients[i]->role == ROLE_PUB)
            l->pubs[l->npubs++] = w->clients[i];
    }
    return 0;
}

static void raw_loop_free(struct raw_loop *l)
{
    if (l->epfd >= 0)
        close(l->epfd);
    free(l->dirty);
    free(l->pubs);
}

/* One turn: connect, publish, write, wait, read. -1 on a fatal error. */
static int raw_turn(struct raw_loop *l, bool running, struct epoll_event *evs)
{
    bool more = false;
    raw_connect_more(l);
    for (int i = 0; running && i < l->npubs; i++) {
        if (raw_publish_some(l, l->pubs[i]))
            more = true;
    }
    raw_flush_dirty(l);
    int n = epoll_wait(l->epfd, evs, MAX_EVENTS, more ? 0 : POLL_MS);
    if (n < 0 && errno != EINTR)
        return -1;
    for (int i = 0; i < n; i++)
        raw_event(l, evs[i].data.ptr, evs[i].events);
    return 0;
}

void *engine_raw_run(void *arg)
{
    struct worker *w = arg;
    struct raw_loop l;
    struct epoll_event *evs = calloc(MAX_EVENTS, sizeof *evs);
    int64_t next_misc = bench_now_ns() + MISC_INTERVAL_NS;

    if (raw_loop_init(&l, w) < 0 || !evs) {
        raw_fail_worker(w, "out of memory or no epoll");
        goto out;
    }
    for (;;) {
        int phase = atomic_load(&w->shared->phase);
        if (phase == PHASE_STOP)
            break;
        if (raw_turn(&l, phase == PHASE_RUN, evs) < 0) {
            raw_fail_worker(w, "epoll_wait failed");
            break;
        }
        int64_t now = bench_now_ns();
        if (now >= next_misc) {
            raw_keepalive(&l, now);
            next_misc = now + MISC_INTERVAL_NS;
        }
        worker_flush(w);
    }
    raw_disconnect_all(&l);
out:
    worker_flush(w);
    raw_loop_free(&l);
    free(evs);
    return NULL;
}
