/* The raw engine: a minimal MQTT 3.1.1 client on non-blocking sockets, built
 * so that the tool costs far less CPU per message than the broker.
 *
 * One loop turn of a worker: start connects (at most CONNECT_WINDOW waiting
 * for CONNACK/SUBACK), queue publishes, write every client's queued bytes
 * with one send() each, poll, read up to 64 KiB per readable socket and
 * handle every complete packet in it (acknowledgements are queued and go
 * out with the next turn's send()).
 *
 * Flow control: a QoS 0 publisher queues while fewer than OUT_HIGH_WATER
 * bytes wait to be written, so the broker's reading speed (TCP back
 * pressure) paces it; a QoS 1/2 publisher keeps opts->inflight messages
 * unacknowledged and waits while worker_backlog_full(). Packet identifiers
 * cycle through 1..65535; acks are only counted, which is exact as long as
 * the window is below 65535. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"

#define CONNECT_WINDOW 64 /* below the listen backlog of Mosquitto (100) */
#define READ_CHUNK 65536
#define OUT_HIGH_WATER 65536
#define PUBLISH_BATCH 256 /* messages per publisher per turn, for fairness */
#define POLL_MS 5
#define MISC_INTERVAL_NS 500000000LL

enum { WIRE_PINGREQ = 12, WIRE_DISCONNECT = 14 };

/* Turns the result of a wire_put_* into a client failure. */
static int raw_put(struct client *c, int rc)
{
    if (rc < 0)
        client_fail(c, "out of memory queueing a packet", 0);
    return rc;
}

static void raw_connect(struct worker *w, struct client *c)
{
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
    /* written once the connection is up: send() says EAGAIN until then */
    raw_put(c, wire_put_connect(&c->out, c->id, w->opts->keepalive));
}

static void raw_connect_more(struct worker *w)
{
    while (w->pending < CONNECT_WINDOW && w->next_connect < w->nclients)
        raw_connect(w, w->clients[w->next_connect++]);
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

static void raw_flush(struct worker *w, struct client *c)
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
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        client_fail(c, c->state == CL_CONNECTING ? "cannot connect to the broker" : "write failed",
                    errno);
        return;
    }
    raw_out_drained(w, c);
}

/* Queues up to PUBLISH_BATCH messages; true if c could take more now. */
static bool raw_publish_some(struct worker *w, struct client *c)
{
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
        if (raw_put(c, wire_put_publish(&c->out, c->topic, id, o->qos, c->payload,
                                        (size_t)o->size)) < 0)
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

/* Handles one packet from the broker; -1 once c has failed. */
static int raw_handle(struct worker *w, struct client *c, const struct wire_packet *pk, int64_t now)
{
    int qos = w->opts->qos;
    bool pub = c->role == ROLE_PUB, sub = c->role == ROLE_SUB;

    switch (pk->type) {
    case WIRE_CONNACK:
        if (c->state != CL_CONNECTING)
            return raw_unexpected(c);
        if (pk->code != 0) {
            client_fail(c, "connection refused by the broker (CONNACK)", 0);
            return -1;
        }
        if (!sub) {
            client_set_ready(c);
            return 0;
        }
        c->state = CL_SUBSCRIBING;
        return raw_put(c, wire_put_subscribe(&c->out, 1, c->topic, qos));
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
        return raw_put(c, wire_put_ack(&c->out, pk->qos == 1 ? WIRE_PUBACK : WIRE_PUBREC, pk->id));
    case WIRE_PUBREL:
        return sub ? raw_put(c, wire_put_ack(&c->out, WIRE_PUBCOMP, pk->id)) : raw_unexpected(c);
    case WIRE_PUBREC:
        if (!pub || qos != 2)
            return raw_unexpected(c);
        return raw_put(c, wire_put_ack(&c->out, WIRE_PUBREL, pk->id));
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

static void raw_read(struct worker *w, struct client *c)
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
        if (raw_handle(w, c, &pk, now) < 0)
            return;
    }
    if (c->in.off == c->in.len)
        c->in.off = c->in.len = 0;
}

static bool raw_live(const struct client *c)
{
    return c->fd >= 0 && c->state != CL_NEW && c->state != CL_DEAD;
}

/* Queues publishes and writes every client's pending bytes; true if some
 * publisher could queue more right away. */
static bool raw_turn_output(struct worker *w, bool running)
{
    bool more = false;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (!raw_live(c))
            continue;
        if (running && c->role == ROLE_PUB && raw_publish_some(w, c))
            more = true;
        if (c->state != CL_DEAD)
            raw_flush(w, c);
    }
    return more;
}

static int raw_poll_set(struct worker *w, struct pollfd *pfds, struct client **polled)
{
    int n = 0;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (!raw_live(c))
            continue;
        pfds[n].fd = c->fd;
        pfds[n].events = (short)(POLLIN | (bbuf_pending(&c->out) ? POLLOUT : 0));
        pfds[n].revents = 0;
        polled[n++] = c;
    }
    return n;
}

/* PINGREQ after keepalive/2 without sending anything [MQTT-3.1.2-23]. */
static void raw_keepalive(struct worker *w, int64_t now)
{
    int64_t quiet = (int64_t)w->opts->keepalive * 500000000LL;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (raw_live(c) && c->state == CL_READY && now - c->last_out_ns > quiet) {
            raw_put(c, wire_put_simple(&c->out, WIRE_PINGREQ));
            c->last_out_ns = now;
        }
    }
}

static void raw_disconnect_all(struct worker *w)
{
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->fd < 0)
            continue;
        if (c->state == CL_READY && wire_put_simple(&c->out, WIRE_DISCONNECT) == 0)
            send(c->fd, c->out.data + c->out.off, bbuf_pending(&c->out), MSG_NOSIGNAL);
        close(c->fd);
        c->fd = -1;
    }
}

void *engine_raw_run(void *arg)
{
    struct worker *w = arg;
    struct pollfd *pfds = calloc((size_t)w->nclients + 1, sizeof *pfds);
    struct client **polled = calloc((size_t)w->nclients + 1, sizeof *polled);
    int64_t next_misc = bench_now_ns() + MISC_INTERVAL_NS;

    if (!pfds || !polled) {
        w->error = "out of memory";
        atomic_fetch_add(&w->shared->failed, 1);
        goto out;
    }
    for (;;) {
        int phase = atomic_load(&w->shared->phase);
        if (phase == PHASE_STOP)
            break;
        raw_connect_more(w);
        bool more = raw_turn_output(w, phase == PHASE_RUN);
        int n = raw_poll_set(w, pfds, polled);
        if (poll(pfds, (nfds_t)n, more ? 0 : POLL_MS) < 0 && errno != EINTR) {
            w->error = "poll failed";
            atomic_fetch_add(&w->shared->failed, 1);
            break;
        }
        for (int i = 0; i < n; i++) {
            if (pfds[i].revents & (POLLIN | POLLERR | POLLHUP))
                raw_read(w, polled[i]);
        }
        int64_t now = bench_now_ns();
        if (now >= next_misc) {
            raw_keepalive(w, now);
            next_misc = now + MISC_INTERVAL_NS;
        }
        worker_flush(w);
    }
    raw_disconnect_all(w);
out:
    worker_flush(w);
    free(pfds);
    free(polled);
    return NULL;
}
