/* Broker life cycle: listeners, the housekeeping tick, the per-iteration
 * commit-then-flush, stop and stats. Connections are in conn.c, packet
 * handlers in handle_*.c, persistence glue in persist.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/fs.h"
#include "../common/log.h"
#include "broker_internal.h"

static int strings_copy(char ***dst, unsigned *dst_count, char *const *src, unsigned count)
{
    if (!count)
        return 0;
    *dst = calloc(count, sizeof **dst);
    if (!*dst)
        return -1;
    for (unsigned i = 0; i < count; i++) {
        (*dst)[i] = strdup(src[i]);
        if (!(*dst)[i])
            return -1;
        (*dst_count)++;
    }
    return 0;
}

/* Deep copy; on failure dst is half built and broker_config_free cleans it. */
static int config_copy(struct broker_config *dst, const struct broker_config *src)
{
    *dst = *src;
    for (unsigned i = 0; i < BROKER_MAX_LISTENERS; i++)
        dst->listeners[i].host = NULL;
    dst->storage_dir = NULL;
    dst->naming.parent_topics = dst->naming.groups = NULL;
    dst->naming.parent_topic_count = dst->naming.group_count = 0;
    if (src->storage_dir && !(dst->storage_dir = strdup(src->storage_dir)))
        return -1;
    for (unsigned i = 0; i < src->listener_count; i++)
        if (!(dst->listeners[i].host = strdup(src->listeners[i].host)))
            return -1;
    if (strings_copy(&dst->naming.parent_topics, &dst->naming.parent_topic_count,
                     src->naming.parent_topics, src->naming.parent_topic_count) < 0 ||
        strings_copy(&dst->naming.groups, &dst->naming.group_count, src->naming.groups,
                     src->naming.group_count) < 0)
        return -1;
    return 0;
}

struct broker *broker_new(uv_loop_t *loop, const struct broker_config *cfg,
                          const struct broker_hooks *hooks, char *err, size_t errlen)
{
    struct broker *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->loop = loop;
    b->lock_fd = -1;
    if (uv_random(NULL, NULL, &b->channel_nonce, sizeof b->channel_nonce, 0, NULL) < 0)
        b->channel_nonce = (uint64_t)uv_hrtime() ^ (uint64_t)getpid() << 32;
    if (hooks)
        b->hooks = *hooks;
    if (cfg->listener_count == 0 || cfg->listener_count > BROKER_MAX_LISTENERS) {
        snprintf(err, errlen, "between 1 and %d listeners are needed", BROKER_MAX_LISTENERS);
        goto fail;
    }
    if (config_copy(&b->cfg, cfg) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    b->topics = topic_tree_new();
    b->wildcards_per_parent = calloc(b->cfg.naming.parent_topic_count + 1, sizeof(uint32_t));
    if (!b->topics || !b->wildcards_per_parent) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return b;
fail:
    broker_free(b);
    return NULL;
}

static int open_store(struct broker *b, char *err, size_t errlen)
{
    const char *dir = b->cfg.storage_dir;
    if (!dir)
        return 0;
    if (fs_mkdirs(dir, err, errlen) < 0)
        return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/mqbridge.lock", dir);
    /* Two brokers on one store would corrupt each other's sessions. */
    b->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (b->lock_fd < 0 || flock(b->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "storage %s is in use by another mqbridge (%s)", dir,
                 strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/mqbridge.db", dir);
    char serr[256];
    if (store_open(path, b->cfg.sync, &b->store, serr, sizeof serr) < 0) {
        snprintf(err, errlen, "cannot open store %s: %s", path, serr);
        return -1;
    }
    return broker_load_store(b, err, errlen);
}

static void on_tick(uv_timer_t *t);
static void on_prepare(uv_prepare_t *p)
{
    broker_flush(p->data);
}
static void on_check(uv_check_t *c)
{
    broker_flush(c->data);
}

static int listen_one(struct broker *b, unsigned i, char *err, size_t errlen)
{
    const struct broker_listener *l = &b->cfg.listeners[i];
    struct listener *ls = &b->listeners[i];
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } addr;
    const char *host = strcmp(l->host, "localhost") == 0 ? "127.0.0.1" : l->host;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, l->port, &addr.in6)
                               : uv_ip4_addr(host, l->port, &addr.in4);
    if (rc < 0) {
        snprintf(err, errlen, "listener %s:%u: bad address: %s", l->host, l->port, uv_strerror(rc));
        return -1;
    }
    uv_tcp_init(b->loop, &ls->tcp);
    ls->tcp.data = ls;
    ls->b = b;
    b->listener_count++;
    b->open_handles++;
    if ((rc = uv_tcp_bind(&ls->tcp, &addr.sa, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&ls->tcp, 1024, conn_on_accept)) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", l->host, l->port, uv_strerror(rc));
        return -1;
    }
    log_notice("listening on %s:%u", l->host, l->port);
    return 0;
}

int broker_start(struct broker *b, char *err, size_t errlen)
{
    if (open_store(b, err, errlen) < 0)
        return -1;
    uv_timer_init(b->loop, &b->tick);
    uv_prepare_init(b->loop, &b->prepare);
    uv_check_init(b->loop, &b->check);
    b->tick.data = b->prepare.data = b->check.data = b;
    b->open_handles += 3;
    b->timers_inited = true;
    uv_timer_start(&b->tick, on_tick, TICK_MS, TICK_MS);
    uv_prepare_start(&b->prepare, on_prepare);
    uv_check_start(&b->check, on_check);
    for (unsigned i = 0; i < b->cfg.listener_count; i++)
        if (listen_one(b, i, err, errlen) < 0)
            return -1;
    return 0;
}

/* Keep-alive: a client that sends nothing for 1.5 x its keep-alive is
 * disconnected [MQTT-3.1.2-24]; a socket that sends no CONNECT in time is
 * closed too. */
static void on_tick(uv_timer_t *t)
{
    struct broker *b = t->data;
    uint64_t now = uv_now(b->loop);
    struct conn *next;
    for (struct conn *c = b->conns; c; c = next) {
        next = c->next;
        if (c->state == CONN_NEW && now - c->last_recv_ms > CONNECT_TIMEOUT_MS)
            conn_close(c, "no CONNECT received in time", false);
        else if (c->state == CONN_ACTIVE && c->keepalive &&
                 now - c->last_recv_ms > (uint64_t)c->keepalive * 1500)
            conn_close(c, "keep-alive timeout", true);
    }
}

/* Message ids: 42 bits of epoch milliseconds, 10 bits of node id (0 until
 * clustering), 12 bits of sequence within the millisecond. Time-ordered,
 * unique across restarts as long as the clock does not go back (it is
 * never allowed to go back within one run). */
#define ID_NODE_BITS 10
#define ID_SEQ_BITS 12

uint64_t broker_next_message_id(struct broker *b)
{
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    if (ms > b->id_last_ms) {
        b->id_last_ms = ms;
        b->id_seq = 0;
    } else if (++b->id_seq >= (1u << ID_SEQ_BITS)) {
        /* 4096 ids in one millisecond: borrow the next one. */
        b->id_last_ms++;
        b->id_seq = 0;
    }
    return b->id_last_ms << (ID_NODE_BITS + ID_SEQ_BITS) | b->id_seq;
}

int64_t broker_message_id_time(uint64_t id)
{
    return (int64_t)(id >> (ID_NODE_BITS + ID_SEQ_BITS));
}

static void on_handle_closed(uv_handle_t *h)
{
    struct broker *b = h->data;
    if (h->type == UV_TCP)
        b = ((struct listener *)h->data)->b;
    if (--b->open_handles == 0 && b->stop_done)
        b->stop_done(b->stop_arg);
}

void broker_stop(struct broker *b, void (*done)(void *arg), void *arg)
{
    if (b->stopping)
        return;
    b->stopping = true;
    b->stop_done = done;
    b->stop_arg = arg;
    log_notice("stopping: %" PRIu64 " connections", b->stats.connections_current);
    for (unsigned i = 0; i < b->listener_count; i++)
        uv_close((uv_handle_t *)&b->listeners[i].tcp, on_handle_closed);
    struct conn *next;
    for (struct conn *c = b->conns; c; c = next) {
        next = c->next;
        conn_close(c, "broker shutting down", false);
    }
    broker_flush(b);
    if (b->store && store_commit(b->store) < 0)
        log_error("final commit of the store failed");
    if (b->timers_inited) {
        uv_close((uv_handle_t *)&b->tick, on_handle_closed);
        uv_close((uv_handle_t *)&b->prepare, on_handle_closed);
        uv_close((uv_handle_t *)&b->check, on_handle_closed);
    }
    if (b->open_handles == 0 && done)
        done(arg);
}

static void free_session(const char *key, void *value, void *ctx)
{
    session_free(value);
}

void broker_free(struct broker *b)
{
    if (!b)
        return;
    hmap_foreach(&b->sessions, free_session, NULL);
    hmap_free(&b->sessions);
    topic_tree_free(b->topics);
    store_close(b->store);
    if (b->lock_fd >= 0)
        close(b->lock_fd);
    free(b->hits);
    free(b->wildcards_per_parent);
    broker_config_free(&b->cfg);
    free(b);
}

const char *client_event_name(enum client_event_type t)
{
    static const char *const names[] = {"connect", "disconnect", "tcpclean"};
    return (unsigned)t < 3 ? names[t] : "unknown";
}

void broker_client_event(struct broker *b, const struct conn *c, enum client_event_type type)
{
    if (!b->hooks.on_client_event || !c->session)
        return;
    char channel[33];
    snprintf(channel, sizeof channel, "%016" PRIx64 "%016" PRIx64, b->channel_nonce, c->channel);
    uint64_t seq = broker_next_message_id(b);
    struct client_event ev = {
        .type = type,
        .client_id = c->session->client_id,
        .channel_id = channel,
        .client_ip = c->peer,
        .time_ms = broker_message_id_time(seq),
        .seq = seq,
    };
    b->hooks.on_client_event(b->hooks.ctx, &ev);
}

void broker_get_stats(const struct broker *b, struct broker_stats *out)
{
    *out = b->stats;
    out->sessions = b->sessions.count;
    out->subscriptions = topic_tree_count(b->topics);
    out->retained = topic_retain_count(b->topics);
}

void broker_log_stats(const struct broker *b)
{
    struct broker_stats s;
    broker_get_stats(b, &s);
    /* One line per group, "name=value" pairs: easy to grep and to parse. */
    log_notice("stats: connections=%" PRIu64 " connections_total=%" PRIu64 " sessions=%" PRIu64
               " subscriptions=%" PRIu64 " retained=%" PRIu64,
               s.connections_current, s.connections_total, s.sessions, s.subscriptions, s.retained);
    log_notice("stats: received=%" PRIu64 " sent=%" PRIu64 " dropped=%" PRIu64 " bytes_in=%" PRIu64
               " bytes_out=%" PRIu64 " malformed=%" PRIu64 " discarded_oversize=%" PRIu64
               " p2p_no_target=%" PRIu64 " publish_bad_topic=%" PRIu64,
               s.messages_received, s.messages_sent, s.messages_dropped, s.bytes_received,
               s.bytes_sent, s.malformed_packets, s.discarded_oversize, s.p2p_no_target,
               s.publish_bad_topic);
    log_notice("stats: offline_messages=%" PRIu64 " offline_stored=%" PRIu64
               " offline_expired=%" PRIu64 " offline_evicted=%" PRIu64 " inject_busy=%" PRIu64,
               s.offline_messages, s.offline_stored, s.offline_expired, s.offline_evicted,
               s.inject_busy);
    log_notice("stats: connect_refused bad_protocol=%" PRIu64 " bad_client_id=%" PRIu64
               " duplicate=%" PRIu64 " unavailable=%" PRIu64,
               s.connect_bad_protocol, s.connect_bad_client_id, s.connect_duplicate,
               s.connect_unavailable);
    log_notice("stats: subscribe_refused bad_filter=%" PRIu64 " too_many=%" PRIu64
               " wildcard_limit=%" PRIu64 " qos2_persistent=%" PRIu64,
               s.subscribe_bad_filter, s.subscribe_too_many, s.subscribe_wildcard_limit,
               s.subscribe_qos2_persistent);
}
