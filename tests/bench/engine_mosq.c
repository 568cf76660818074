/* The libmosquitto engine: each worker drives its clients with one poll()
 * set and mosquitto_loop_read/write/misc, the library's callbacks feeding
 * the engine-independent logic of client.c.
 *
 * Publishers publish as fast as the connection takes it: at QoS 0 until the
 * socket stops accepting (libmosquitto then holds a partly written packet
 * and mosquitto_want_write() is true), at QoS 1/2 until opts->inflight
 * messages wait for PUBACK/PUBCOMP. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#include "bench.h"

#define CONNECT_WINDOW 64 /* connects per worker waiting for CONNACK/SUBACK */
#define PUBLISH_BATCH 64  /* messages per publisher per loop turn, for fairness */
#define READ_ROUNDS 256   /* mosquitto_loop_read() calls per readable socket */
#define POLL_MS 5
#define MISC_INTERVAL_NS 500000000LL

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    struct client *c = obj;
    const struct bench_opts *o = c->w->opts;
    if (rc != 0) {
        client_fail(c, "connection refused by the broker (CONNACK)", 0);
        return;
    }
    if (c->role != ROLE_SUB) {
        client_set_ready(c);
        return;
    }
    c->state = CL_SUBSCRIBING;
    if (mosquitto_subscribe(m, NULL, c->topic, o->qos) != MOSQ_ERR_SUCCESS)
        client_fail(c, "SUBSCRIBE could not be sent", 0);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted)
{
    struct client *c = obj;
    /* 0x80 is the SUBACK failure return code [MQTT-3.9.3-2] */
    if (count < 1 || granted[0] == 0x80)
        client_fail(c, "subscription refused (SUBACK 0x80)", 0);
    else
        client_set_ready(c);
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc)
{
    struct client *c = obj;
    if (atomic_load(&c->w->shared->phase) != PHASE_STOP)
        client_fail(c, "connection lost", 0);
}

/* QoS 0: the packet has been written to the socket. QoS 1/2: PUBACK or
 * PUBCOMP arrived. */
static void on_publish(struct mosquitto *m, void *obj, int mid)
{
    struct client *c = obj;
    c->completed++;
    c->w->st.completed++;
    client_check_done(c);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    client_record_delivery(obj, msg->payload, (size_t)msg->payloadlen, bench_now_ns());
}
int engine_mosq_client_init(struct client *c, const struct bench_opts *o)
{
    c->mosq = mosquitto_new(c->id, true, c);
    if (!c->mosq)
        return -1;
    mosquitto_connect_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_callback_set(c->mosq, on_disconnect);
    if (c->role == ROLE_SUB) {
        mosquitto_subscribe_callback_set(c->mosq, on_subscribe);
        mosquitto_message_callback_set(c->mosq, on_message);
    } else if (c->role == ROLE_PUB) {
        mosquitto_publish_callback_set(c->mosq, on_publish);
        if (o->qos > 0)
            mosquitto_max_inflight_messages_set(c->mosq, (unsigned)o->inflight);
    }
    return 0;
}

void engine_mosq_client_free(struct client *c)
{
    if (c->mosq)
        mosquitto_destroy(c->mosq);
    c->mosq = NULL;
}

/* Starts TCP connections (blocking connect to the broker, CONNECT sent
 * without waiting for CONNACK), keeping at most CONNECT_WINDOW unanswered so
 * the broker's listen backlog does not overflow during the 10k idle test. */
static void mosq_connect_more(struct worker *w)
{
    const struct bench_opts *o = w->opts;
    while (w->pending < CONNECT_WINDOW && w->next_connect < w->nclients) {
        struct client *c = w->clients[w->next_connect++];
        int rc = mosquitto_connect(c->mosq, o->host, o->port, o->keepalive);
        if (rc != MOSQ_ERR_SUCCESS) {
            client_fail(c, "cannot connect to the broker", rc == MOSQ_ERR_ERRNO ? errno : 0);
            continue;
        }
        c->state = CL_CONNECTING;
        w->pending++;
    }
}

static int mosq_publish_one(struct worker *w, struct client *c)
{
    const struct bench_opts *o = w->opts;
    client_stamp_next(c);
    int rc = mosquitto_publish(c->mosq, NULL, c->topic, o->size, c->payload, o->qos, false);
    if (rc != MOSQ_ERR_SUCCESS) {
        client_fail(c, "publish failed", 0);
        return -1;
    }
    return 0;
}

/* Publishes up to PUBLISH_BATCH messages; true if c could take more now. */
static bool mosq_publish_some(struct worker *w, struct client *c)
{
    const struct bench_opts *o = w->opts;
    for (int n = 0; n < PUBLISH_BATCH; n++) {
        if (c->state != CL_READY || c->next_seq >= (uint64_t)o->count)
            return false;
        if (o->qos == 0 ? mosquitto_want_write(c->mosq)
                        : c->next_seq - c->completed >= (uint64_t)o->inflight)
            return false;
        if (worker_backlog_full(w))
            return false;
        if (mosq_publish_one(w, c) < 0)
            return false;
    }
    return true;
}

static bool mosq_pump(struct worker *w)
{
    bool more = false;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->role == ROLE_PUB && mosq_publish_some(w, c))
            more = true;
        if (c->role == ROLE_PUB)
            client_check_done(c);
    }
    return more;
}

static int mosq_poll_set(struct worker *w, struct pollfd *pfds, struct client **polled)
{
    int n = 0;
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        int fd = mosquitto_socket(c->mosq);
        if (c->state == CL_NEW || c->state == CL_DEAD || fd < 0)
            continue;
        pfds[n].fd = fd;
        pfds[n].events = (short)(POLLIN | (mosquitto_want_write(c->mosq) ? POLLOUT : 0));
        pfds[n].revents = 0;
        polled[n++] = c;
    }
    return n;
}

/* mosquitto_loop_read() handles a single packet when no QoS 1/2 message is
 * in flight; call it until the socket would block, bounded for fairness. */
static void mosq_read(struct client *c)
{
    for (int k = 0; k < READ_ROUNDS; k++) {
        errno = 0;
        int rc = mosquitto_loop_read(c->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            client_fail(c, "read failed", 0);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || mosquitto_socket(c->mosq) < 0)
            return;
    }
}

static void mosq_service(struct client *c, short revents)
{
    if (revents & (POLLIN | POLLERR | POLLHUP))
        mosq_read(c);
    if ((revents & POLLOUT) && c->state != CL_DEAD && mosquitto_socket(c->mosq) >= 0) {
        if (mosquitto_loop_write(c->mosq, 1) != MOSQ_ERR_SUCCESS)
            client_fail(c, "write failed", 0);
    }
}

static void mosq_misc(struct worker *w)
{
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->state != CL_NEW && c->state != CL_DEAD && mosquitto_socket(c->mosq) >= 0)
            mosquitto_loop_misc(c->mosq);
    }
}

static void mosq_disconnect_all(struct worker *w)
{
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = w->clients[i];
        if (c->state != CL_NEW && mosquitto_socket(c->mosq) >= 0)
            mosquitto_disconnect(c->mosq);
    }
}

void *engine_mosq_run(void *arg)
{
    struct worker *w = arg;
    struct pollfd *pfds = calloc((size_t)w->nclients + 1, sizeof *pfds);
    struct client **polled = calloc((size_t)w->nclients + 1, sizeof *polled);
    int64_t next_misc = 0;

    if (!pfds || !polled) {
        w->error = "out of memory";
        atomic_fetch_add(&w->shared->failed, 1);
        goto out;
    }
    for (;;) {
        int phase = atomic_load(&w->shared->phase);
        if (phase == PHASE_STOP)
            break;
        mosq_connect_more(w);
        bool more = phase == PHASE_RUN && mosq_pump(w);
        int n = mosq_poll_set(w, pfds, polled);
        if (poll(pfds, (nfds_t)n, more ? 0 : POLL_MS) < 0 && errno != EINTR) {
            w->error = "poll failed";
            atomic_fetch_add(&w->shared->failed, 1);
            break;
        }
        for (int i = 0; i < n; i++) {
            if (pfds[i].revents)
                mosq_service(polled[i], pfds[i].revents);
        }
        int64_t now = bench_now_ns();
        if (now >= next_misc) {
            mosq_misc(w);
            next_misc = now + MISC_INTERVAL_NS;
        }
        worker_flush(w);
    }
    mosq_disconnect_all(w);
out:
    worker_flush(w);
    free(pfds);
    free(polled);
    return NULL;
}
