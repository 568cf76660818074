/* SUBSCRIBE and UNSUBSCRIBE [MQTT-3.8, 3.10].
 * Each filter is granted or refused on its own: a refused filter gets the
 * SUBACK return code 0x80 and the others of the same packet still apply
 * [MQTT-3.9.3-1]. Retained messages matching a granted filter are sent
 * after the SUBACK, with RETAIN=1 [MQTT-3.3.1-6] [MQTT-3.3.1-8], also when
 * the subscription only replaced an existing one [MQTT-3.8.4-3]. */
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

static uint8_t subscribe_one(struct conn *c, const char *filter, uint8_t qos)
{
    struct broker *b = c->b;
    struct session *s = c->session;
    if (!topic_filter_valid(filter, strlen(filter))) {
        log_info("%s: SUBSCRIBE '%s' refused: invalid filter [MQTT-4.7.1]", s->client_id, filter);
        return MQTT_SUBACK_FAILURE;
    }
    if (session_sub_set(s, filter, qos) < 0 ||
        topic_tree_subscribe(b->topics, filter, s, qos) < 0) {
        session_sub_del(s, filter);
        log_error("%s: SUBSCRIBE '%s' refused: out of memory", s->client_id, filter);
        return MQTT_SUBACK_FAILURE;
    }
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
        if (!s->clean_session && b->store)
            store_sub_del(b->store, s->client_id, filter);
        log_debug("%s: unsubscribed '%s'", s->client_id, filter);
    }
    if (filter != small)
        free(filter);
    conn_send_ack(c, MQTT_UNSUBACK, p->packet_id);
    return 0;
}
