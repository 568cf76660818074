/* The glue between sessions and the outside: session_ops writes packets to
 * the session's connection and mirrors the state of persistent sessions
 * (cleanSession=0) into the store; start-up loading rebuilds sessions,
 * subscriptions, queued messages and retained messages from it. */
#include <stdio.h>
#include <stdlib.h>

#include "../common/log.h"
#include "broker_internal.h"

static struct conn *live_conn(struct session *s)
{
    struct conn *c = s->owner;
    return c && c->state == CONN_ACTIVE ? c : NULL;
}

static void ops_send_publish(void *ctx, struct session *s, const struct out_msg *om, bool dup)
{
    struct broker *b = ctx;
    struct conn *c = live_conn(s);
    if (!c)
        return;
    if (om->qos == 0 && c->out.len + c->wbuf.len > MAX_PENDING_OUT) {
        /* a subscriber that does not read: shed QoS 0 rather than memory */
        b->stats.messages_dropped++;
        return;
    }
    const struct message *m = om->msg;
    if (mqtt_encode_publish(&c->out, m->topic, m->topic_len, m->payload, m->payload_len, om->qos,
                            om->retain, dup, om->packet_id) < 0) {
        log_error("%s: cannot encode PUBLISH %s", s->client_id, m->topic);
        return;
    }
    b->stats.messages_sent++;
    conn_want_flush(c);
}

static void ops_send_pubrel(void *ctx, struct session *s, uint16_t packet_id)
{
    struct conn *c = live_conn(s);
    if (c)
        conn_send_ack(c, MQTT_PUBREL, packet_id);
}

static struct store *session_store(struct broker *b, const struct session *s)
{
    return s->clean_session ? NULL : b->store;
}

static void ops_stored(void *ctx, struct session *s, const struct out_msg *om)
{
    struct store *st = session_store(ctx, s);
    if (st)
        store_out_put(st, s->client_id, om->seq, om->msg, om->qos, om->packet_id, om->state,
                      om->retain);
}

static void ops_updated(void *ctx, struct session *s, const struct out_msg *om)
{
    struct store *st = session_store(ctx, s);
    if (st)
        store_out_update(st, s->client_id, om->seq, om->packet_id, om->state);
}

static void ops_removed(void *ctx, struct session *s, const struct out_msg *om)
{
    struct store *st = session_store(ctx, s);
    if (st)
        store_out_del(st, s->client_id, om->seq);
}

const struct session_ops broker_session_ops = {
    .send_publish = ops_send_publish,
    .send_pubrel = ops_send_pubrel,
    .stored = ops_stored,
    .updated = ops_updated,
    .removed = ops_removed,
};

static struct session *session_insert(struct broker *b, const char *client_id, bool clean)
{
    struct session *s = session_new(client_id, clean, b->cfg.limits.max_inflight,
                                    b->cfg.limits.max_queued, &broker_session_ops, b);
    if (!s)
        return NULL;
    if (hmap_put(&b->sessions, s->client_id, s) < 0) {
        session_free(s);
        return NULL;
    }
    return s;
}

struct session *broker_session_create(struct broker *b, const char *client_id, bool clean)
{
    struct session *s = session_insert(b, client_id, clean);
    if (s && !clean && b->store)
        store_session_put(b->store, client_id, 0);
    return s;
}

void broker_session_destroy(struct broker *b, struct session *s)
{
    for (uint32_t i = 0; i < s->sub_count; i++)
        topic_tree_unsubscribe(b->topics, s->subs[i].filter, s);
    hmap_del(&b->sessions, s->client_id);
    if (!s->clean_session && b->store)
        store_session_del(b->store, s->client_id);
    session_free(s);
}

/* Start-up loading. */

static int load_session(void *ctx, const char *client_id, int64_t last_seen_ms)
{
    return session_insert(ctx, client_id, false) ? 0 : -1;
}

static struct session *loaded_session(struct broker *b, const char *client_id)
{
    struct session *s = hmap_get(&b->sessions, client_id);
    if (!s)
        log_warn("store: row for unknown session %s ignored", client_id);
    return s;
}

static int load_sub(void *ctx, const char *client_id, const char *filter, uint8_t qos)
{
    struct broker *b = ctx;
    struct session *s = loaded_session(b, client_id);
    if (!s)
        return 0;
    if (session_sub_set(s, filter, qos) < 0 || topic_tree_subscribe(b->topics, filter, s, qos) < 0)
        return -1;
    return 0;
}

static int load_out(void *ctx, const char *client_id, uint64_t seq, struct message *m, uint8_t qos,
                    uint16_t packet_id, uint8_t state, bool retain)
{
    struct session *s = loaded_session(ctx, client_id);
    int rc = s ? session_restore_out(s, m, seq, qos, packet_id, state, retain) : 0;
    message_unref(m);
    return rc;
}

static int load_qos2(void *ctx, const char *client_id, uint16_t packet_id)
{
    struct session *s = loaded_session(ctx, client_id);
    return s && session_qos2_in_add(s, packet_id) < 0 ? -1 : 0;
}

static int load_retain(void *ctx, struct message *m)
{
    struct broker *b = ctx;
    int rc = topic_retain_set(b->topics, m);
    message_unref(m);
    return rc;
}

int broker_load_store(struct broker *b, char *err, size_t errlen)
{
    static const struct store_loader loader = {
        .session = load_session,
        .sub = load_sub,
        .out = load_out,
        .qos2 = load_qos2,
        .retain = load_retain,
    };
    if (store_load(b->store, &loader, b) < 0) {
        snprintf(err, errlen, "cannot load the store (see the log above)");
        return -1;
    }
    uint64_t queued = 0;
    for (size_t i = 0; i < b->sessions.nbuckets; i++)
        for (struct hmap_entry *e = b->sessions.buckets[i]; e; e = e->next) {
            struct session *s = e->value;
            queued += s->queue.count + s->inflight.count;
        }
    log_notice("store: %zu persistent sessions, %zu subscriptions, %zu retained, %llu queued "
               "messages loaded",
               b->sessions.count, topic_tree_count(b->topics), topic_retain_count(b->topics),
               (unsigned long long)queued);
    return 0;
}
