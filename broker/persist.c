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
    if (om->qos == 0 && c->out.len + c->writing_bytes > MAX_PENDING_OUT) {
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

/* The instance-wide list of offline messages (entries of persistent
 * sessions), oldest first. */
static void offline_append(struct broker *b, struct out_msg *om)
{
    om->gnext = NULL;
    om->gprev = b->stored_tail;
    if (b->stored_tail)
        b->stored_tail->gnext = om;
    else
        b->stored_head = om;
    b->stored_tail = om;
    b->stored_count++;
    b->stats.offline_messages = b->stored_count;
}

static void offline_unlink(struct broker *b, struct out_msg *om)
{
    if (!om->gprev && b->stored_head != om)
        return; /* not in the list */
    if (om->gprev)
        om->gprev->gnext = om->gnext;
    else
        b->stored_head = om->gnext;
    if (om->gnext)
        om->gnext->gprev = om->gprev;
    else
        b->stored_tail = om->gprev;
    om->gprev = om->gnext = NULL;
    b->stored_count--;
    b->stats.offline_messages = b->stored_count;
}

static void ops_stored(void *ctx, struct session *s, const struct out_msg *om)
{
    struct broker *b = ctx;
    if (s->clean_session)
        return;
    /* The session owns the entry; only our two list links change. */
    offline_append(b, (struct out_msg *)om);
    b->stats.offline_stored++;
    if (b->store)
        store_out_put(b->store, s->client_id, om->seq, om->msg, om->qos, om->packet_id, om->state,
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
    struct broker *b = ctx;
    b->room_gen++; /* a slot or a queue place is free: injection may go on */
    if (s->clean_session)
        return;
    offline_unlink(b, (struct out_msg *)om);
    if (b->store)
        store_out_del(b->store, s->client_id, om->seq);
}

static void offline_unlink_list(struct broker *b, const struct out_list *l)
{
    for (struct out_msg *om = l->head; om; om = om->next)
        offline_unlink(b, om);
}

void broker_offline_housekeeping(struct broker *b)
{
    uint32_t max = b->cfg.limits.max_offline_messages;
    while (max && b->stored_count > max) {
        struct out_msg *om = b->stored_head;
        log_info("offline messages over %u: evicting the oldest, for %s (%s)", max,
                 om->session->client_id, om->msg->topic);
        b->stats.offline_evicted++;
        session_drop(om->session, om);
    }
    if (!b->cfg.limits.offline_message_ttl || !b->stored_head)
        return;
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    int64_t cutoff = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000 -
                     (int64_t)b->cfg.limits.offline_message_ttl * 1000;
    while (b->stored_head && b->stored_head->msg->time_ms < cutoff) {
        struct out_msg *om = b->stored_head;
        log_info("offline message for %s on %s expired", om->session->client_id, om->msg->topic);
        b->stats.offline_expired++;
        session_drop(om->session, om);
    }
}

static int by_time(const void *a, const void *b)
{
    const struct out_msg *x = *(const struct out_msg *const *)a;
    const struct out_msg *y = *(const struct out_msg *const *)b;
    if (x->msg->time_ms != y->msg->time_ms)
        return x->msg->time_ms < y->msg->time_ms ? -1 : 1;
    return x->msg->id < y->msg->id ? -1 : x->msg->id > y->msg->id;
}

void broker_offline_sort(struct broker *b)
{
    if (b->stored_count < 2)
        return;
    struct out_msg **v = malloc(b->stored_count * sizeof *v);
    if (!v)
        return; /* stays in load order: expiry is then only approximate */
    size_t n = 0;
    for (struct out_msg *om = b->stored_head; om; om = om->gnext)
        v[n++] = om;
    qsort(v, n, sizeof *v, by_time);
    b->stored_head = b->stored_tail = NULL;
    b->stored_count = 0;
    for (size_t i = 0; i < n; i++)
        offline_append(b, v[i]);
    free(v);
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
    for (uint32_t i = 0; i < s->sub_count; i++) {
        topic_tree_unsubscribe(b->topics, s->subs[i].filter, s);
        broker_wildcards_adjust(b, s->subs[i].filter, -1);
    }
    if (!s->clean_session) {
        offline_unlink_list(b, &s->inflight);
        offline_unlink_list(b, &s->queue);
    }
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
    int added = session_sub_set(s, filter, qos);
    if (added < 0 || topic_tree_subscribe(b->topics, filter, s, qos) < 0)
        return -1;
    if (added > 0)
        broker_wildcards_adjust(b, filter, +1);
    return 0;
}

static int load_out(void *ctx, const char *client_id, uint64_t seq, struct message *m, uint8_t qos,
                    uint16_t packet_id, uint8_t state, bool retain)
{
    struct broker *b = ctx;
    struct session *s = loaded_session(b, client_id);
    int rc = s ? session_restore_out(s, m, seq, qos, packet_id, state, retain) : 0;
    message_unref(m);
    if (rc == 0 && s) {
        /* the restored entry is the tail of one of the two lists */
        struct out_msg *om =
            s->queue.tail && s->queue.tail->seq == seq ? s->queue.tail : s->inflight.tail;
        if (om && om->seq == seq && om->qos > 0)
            offline_append(b, om);
    }
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
    broker_offline_sort(b);
    uint64_t queued = b->stored_count;
    log_notice("store: %zu persistent sessions, %zu subscriptions, %zu retained, %llu queued "
               "messages loaded",
               b->sessions.count, topic_tree_count(b->topics), topic_retain_count(b->topics),
               (unsigned long long)queued);
    return 0;
}
