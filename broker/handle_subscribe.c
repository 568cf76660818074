/* SUBSCRIBE and UNSUBSCRIBE [MQTT-3.8, 3.10].
 * Each filter is granted or refused on its own: a refused filter gets the
 * SUBACK return code 0x80 and the others of the same packet still apply
 * [MQTT-3.9.3-1]. Retained messages matching a granted filter are sent
 * after the SUBACK, with RETAIN=1 [MQTT-3.3.1-6] [MQTT-3.3.1-8], also when
 * the subscription only replaced an existing one [MQTT-3.8.4-3]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "broker_internal.h"

struct retain_ctx {
    struct session *s;
    uint8_t granted;
};

static void send_retained(struct message *m, void *ctx)
{
    struct retain_ctx *rc = ctx;
    uint8_t qos = m->qos < rc->granted ? m->qos : rc->granted;
    session_enqueue(rc->s, m, qos, true);
}

/* A buffer for the longest filter of the packet, NUL included. */
static char *filter_buffer(const struct mqtt_subscribe *p, char *small, size_t small_len)
{
    size_t max = 0;
    for (uint32_t i = 0; i < p->count; i++)
        if (p->topics[i].filter.len > max)
            max = p->topics[i].filter.len;
    return max < small_len ? small : malloc(max + 1);
}

/* Copy a filter view to a NUL-terminated string. */
static void filter_copy(char *out, const struct mqtt_str *f)
{
    memcpy(out, f->p, f->len);
    out[f->len] = '\0';
}

static uint8_t refuse(struct session *s, const char *filter, uint64_t *counter, const char *why)
{
    (*counter)++;
    log_notice("%s: SUBSCRIBE '%s' refused (SUBACK 0x80): %s", s->client_id, filter, why);
    return MQTT_SUBACK_FAILURE;
}

void broker_wildcards_adjust(struct broker *b, const char *filter, int delta)
{
    size_t len = strlen(filter);
    if (b->cfg.naming_mode != NAMING_MANAGED || !topic_filter_has_wildcard(filter, len))
        return;
    int parent = naming_find_parent(&b->cfg.naming, filter, len);
    if (parent >= 0)
        b->wildcards_per_parent[parent] += (uint32_t)delta;
}

/* The limits on one filter; MQTT_SUBACK_FAILURE or the granted QoS. */
static uint8_t subscribe_check(struct conn *c, const char *filter, uint8_t qos)
{
    struct broker *b = c->b;
    struct session *s = c->session;
    struct broker_stats *st = &b->stats;
    const struct broker_limits *lim = &b->cfg.limits;
    size_t len = strlen(filter);
    char why[192];
    if (!topic_filter_valid(filter, len))
        return refuse(s, filter, &st->subscribe_bad_filter, "invalid filter [MQTT-4.7.1]");
    bool managed = b->cfg.naming_mode == NAMING_MANAGED;
    int parent = -1;
    bool wildcard = false;
    if (managed &&
        naming_check_filter(&b->cfg.naming, filter, len, &parent, &wildcard, why, sizeof why) < 0)
        return refuse(s, filter, &st->subscribe_bad_filter, why);
    if (managed && qos == 2 && !s->clean_session)
        return refuse(s, filter, &st->subscribe_qos2_persistent,
                      "QoS 2 is not supported with cleanSession=0");
    if (session_sub_find(s, filter))
        return qos; /* replacing an existing subscription adds nothing */
    if (lim->max_subscriptions_per_client && s->sub_count >= lim->max_subscriptions_per_client) {
        snprintf(why, sizeof why, "client holds %u subscriptions (max_subscriptions_per_client)",
                 s->sub_count);
        return refuse(s, filter, &st->subscribe_too_many, why);
    }
    if (wildcard && lim->max_wildcard_subscriptions_per_parent &&
        b->wildcards_per_parent[parent] >= lim->max_wildcard_subscriptions_per_parent) {
        snprintf(why, sizeof why,
                 "parent topic %s has %u wildcard subscriptions "
                 "(max_wildcard_subscriptions_per_parent)",
                 b->cfg.naming.parent_topics[parent], b->wildcards_per_parent[parent]);
        return refuse(s, filter, &st->subscribe_wildcard_limit, why);
    }
    return qos;
}

static uint8_t subscribe_one(struct conn *c, const char *filter, uint8_t qos)
{
    struct broker *b = c->b;
    struct session *s = c->session;
    if (subscribe_check(c, filter, qos) == MQTT_SUBACK_FAILURE)
        return MQTT_SUBACK_FAILURE;
    int added = session_sub_set(s, filter, qos);
    if (added < 0 || topic_tree_subscribe(b->topics, filter, s, qos) < 0) {
        if (added > 0)
            session_sub_del(s, filter);
        log_error("%s: SUBSCRIBE '%s' refused: out of memory", s->client_id, filter);
        return MQTT_SUBACK_FAILURE;
    }
    if (added > 0)
        broker_wildcards_adjust(b, filter, +1);
    if (!s->clean_session && b->store)
        store_sub_put(b->store, s->client_id, filter, qos);
    log_debug("%s: subscribed '%s' qos=%u", s->client_id, filter, qos);
    return qos;
}

int handle_subscribe(struct conn *c, const struct mqtt_subscribe *p)
{
    char small[256];
    uint8_t *rcs = calloc(p->count, 1);
    char *filter = filter_buffer(p, small, sizeof small);
    int rc = -1;
    if (!rcs || !filter)
        goto done;
    for (uint32_t i = 0; i < p->count; i++) {
        filter_copy(filter, &p->topics[i].filter);
        rcs[i] = subscribe_one(c, filter, p->topics[i].qos);
    }
    /* [MQTT-3.8.4-4] one SUBACK with a code per filter, in order */
    if (mqtt_encode_suback(&c->out, p->packet_id, rcs, p->count) < 0)
        goto done;
    conn_want_flush(c);
    for (uint32_t i = 0; i < p->count; i++) {
        if (rcs[i] == MQTT_SUBACK_FAILURE)
            continue;
        filter_copy(filter, &p->topics[i].filter);
        struct retain_ctx ctx = {c->session, rcs[i]};
        topic_retain_match(c->b->topics, filter, send_retained, &ctx);
    }
    rc = 0;
done:
    free(rcs);
    if (filter != small)
        free(filter);
    return rc;
}

int handle_unsubscribe(struct conn *c, const struct mqtt_subscribe *p)
{
    struct broker *b = c->b;
    struct session *s = c->session;
    char small[256];
    char *filter = filter_buffer(p, small, sizeof small);
    if (!filter)
        return -1;
    for (uint32_t i = 0; i < p->count; i++) {
        filter_copy(filter, &p->topics[i].filter);
        if (session_sub_del(s, filter) != 0)
            continue; /* [MQTT-3.10.4-5] UNSUBACK even when nothing matched */
        topic_tree_unsubscribe(b->topics, filter, s);
        broker_wildcards_adjust(b, filter, -1);
        b->room_gen++; /* one receiver less: injection may go on */
        if (!s->clean_session && b->store)
            store_sub_del(b->store, s->client_id, filter);
        log_debug("%s: unsubscribed '%s'", s->client_id, filter);
    }
    if (filter != small)
        free(filter);
    conn_send_ack(c, MQTT_UNSUBACK, p->packet_id);
    return 0;
}
