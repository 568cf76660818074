/* PUBLISH and its acknowledgements [MQTT-3.3 .. 3.7], and routing of an
 * accepted message to subscribers.
 *
 * Routing: every (session, filter) match is reported by the topic tree; a
 * session matched by overlapping filters gets the message once, at the
 * highest granted QoS (MQTT 3.1.1 section 3.3.5 allows either, we choose
 * once). Delivered QoS = min(published QoS, granted QoS). Offline sessions
 * get QoS 1/2 messages queued (only persistent sessions stay in the tree
 * while offline); QoS 0 is not kept for them. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "broker_internal.h"

static void collect_hit(void *subscriber, uint8_t qos, void *ctx)
{
    struct broker *b = ctx;
    struct session *s = subscriber;
    if (s->match_gen == b->match_gen) {
        if (qos > s->match_qos)
            s->match_qos = qos;
        return;
    }
    if (b->hit_count == b->hit_cap) {
        uint32_t cap = b->hit_cap ? b->hit_cap * 2 : 64;
        struct session **hits = realloc(b->hits, cap * sizeof *hits);
        if (!hits) {
            log_error("routing: out of memory, %s misses a message", s->client_id);
            return;
        }
        b->hits = hits;
        b->hit_cap = cap;
    }
    s->match_gen = b->match_gen;
    s->match_qos = qos;
    b->hits[b->hit_count++] = s;
}

/* b->hits: the sessions subscribed to topic, each once with its best
 * granted QoS in match_qos. */
static void route_match(struct broker *b, const char *topic)
{
    b->match_gen++;
    b->hit_count = 0;
    topic_tree_match(b->topics, topic, collect_hit, b);
}

/* Offer m to session s at qos: session_enqueue's result. keep_offline: an
 * offline persistent session keeps a QoS 1/2 message past its queue bound
 * (naming: managed, where offline messages are bounded per instance by
 * max_offline_messages and offline_message_ttl, and injected messages). */
/* The managed service keeps offline messages per instance (SEMANTICS.md):
 * max_queued bounds only an online client's queue there. naming: mqtt
 * keeps Mosquitto's max_queued_messages, which also bounds offline ones. */
static bool offline_unbounded(const struct broker *b)
{
    return b->cfg.naming_mode == NAMING_MANAGED;
}

static int offer(struct session *s, struct message *m, uint8_t qos, bool keep_offline)
{
    int rc = keep_offline && !s->online && qos > 0 ? session_enqueue_kept(s, m, qos)
                                                   : session_enqueue(s, m, qos, false);
    if (rc < 0)
        log_error("routing: out of memory, %s misses a message on %s", s->client_id, m->topic);
    return rc;
}

static void route_deliver(struct broker *b, struct message *m, bool keep_offline)
{
    for (uint32_t i = 0; i < b->hit_count; i++) {
        struct session *s = b->hits[i];
        uint8_t qos = m->qos < s->match_qos ? m->qos : s->match_qos;
        /* [MQTT-3.3.1-9] RETAIN is 0 on live delivery */
        if (offer(s, m, qos, keep_offline) == 1 && (s->online || qos > 0))
            b->stats.messages_dropped++;
    }
}

void broker_route(struct broker *b, struct message *m, const char *from_client_id)
{
    if (m->retain) {
        /* [MQTT-3.3.1-5] store, [MQTT-3.3.1-10] empty payload clears */
        if (topic_retain_set(b->topics, m) < 0)
            log_error("retain %s: out of memory", m->topic);
        else if (b->store)
            m->payload_len ? store_retain_put(b->store, m) : store_retain_del(b->store, m->topic);
    }
    route_match(b, m->topic);
    route_deliver(b, m, offline_unbounded(b));
    if (b->hooks.on_message)
        b->hooks.on_message(b->hooks.ctx, m, from_client_id);
}

/* The session of a P2P target, NULL when the client has none. */
static struct session *p2p_session(struct broker *b, const struct naming_topic *nt)
{
    char target[256];
    size_t len = nt->p2p_target_len < sizeof target ? nt->p2p_target_len : sizeof target - 1;
    memcpy(target, nt->p2p_target, len);
    target[len] = '\0';
    return hmap_get(&b->sessions, target);
}

/* P2P [SEMANTICS "P2P messages"]: to the target client only, no
 * subscription needed, at the published QoS; an offline target keeps it
 * only when its session is persistent (and QoS > 0). */
static void deliver_p2p(struct broker *b, struct message *m, const struct naming_topic *nt,
                        const char *from_client_id, bool keep_offline)
{
    struct session *s = p2p_session(b, nt);
    if (!s) {
        b->stats.p2p_no_target++;
        log_info("P2P %s from %s: no session for %.*s, dropped", m->topic,
                 from_client_id ? from_client_id : "-", (int)nt->p2p_target_len, nt->p2p_target);
    } else if (offer(s, m, m->qos, keep_offline) == 1) {
        b->stats.messages_dropped++;
    }
    if (b->hooks.on_message && from_client_id)
        b->hooks.on_message(b->hooks.ctx, m, from_client_id);
}

/* The managed naming rules for a topic name; -1 closes the connection:
 * MQTT 3.1.1 has no negative PUBACK. */
static int check_topic(struct conn *c, const struct mqtt_publish *p, struct naming_topic *nt)
{
    struct broker *b = c->b;
    char why[192];
    nt->p2p_target = NULL;
    if (b->cfg.naming_mode != NAMING_MANAGED)
        return 0;
    if (naming_check_topic(&b->cfg.naming, p->topic.p, p->topic.len, nt, why, sizeof why) == 0)
        return 0;
    b->stats.publish_bad_topic++;
    log_notice("%s %s: PUBLISH refused, closing the connection: %s", c->peer, c->session->client_id,
               why);
    return -1;
}

static void publish_ack(struct conn *c, const struct mqtt_publish *p)
{
    if (p->qos == 1)
        conn_send_ack(c, MQTT_PUBACK, p->packet_id);
    else if (p->qos == 2)
        conn_send_ack(c, MQTT_PUBREC, p->packet_id);
}

int handle_publish(struct conn *c, const struct mqtt_publish *p)
{
    struct broker *b = c->b;
    struct session *s = c->session;
    struct naming_topic nt;
    if (!topic_name_valid(p->topic.p, p->topic.len)) {
        log_info("%s: PUBLISH to invalid topic name", c->peer);
        return -1;
    }
    if (check_topic(c, p, &nt) < 0)
        return -1;
    b->stats.messages_received++;
    if (p->qos == 2) {
        int rc = session_qos2_in_add(s, p->packet_id);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            /* a resend of a message we already have: acknowledge only */
            conn_send_ack(c, MQTT_PUBREC, p->packet_id);
            return 0;
        }
        if (!s->clean_session && b->store)
            store_qos2_put(b->store, s->client_id, p->packet_id);
    }
    if (b->cfg.limits.max_message_size && p->payload_len > b->cfg.limits.max_message_size) {
        /* Discarded, but acknowledged so the client does not resend it
         * forever; the connection stays. */
        b->stats.discarded_oversize++;
        log_notice("%s: PUBLISH to %.*s discarded: %" PRIu32 " bytes (max_message_size %" PRIu32
                   ")",
                   s->client_id, (int)p->topic.len, p->topic.p, p->payload_len,
                   b->cfg.limits.max_message_size);
        publish_ack(c, p);
        return 0;
    }
    bool p2p = nt.p2p_target != NULL;
    struct message *m = message_new(p->topic.p, p->topic.len, p->payload, p->payload_len, p->qos,
                                    p->retain && !p2p);
    if (!m) {
        log_error("%s: out of memory for a message", c->peer);
        return -1;
    }
    m->id = broker_next_message_id(b);
    m->time_ms = broker_message_id_time(m->id);
    log_debug("%s: PUBLISH %s qos=%u id=%016" PRIx64 " (%" PRIu32 " bytes)", s->client_id, m->topic,
              p->qos, m->id, p->payload_len);
    if (p2p)
        deliver_p2p(b, m, &nt, s->client_id, offline_unbounded(b));
    else
        broker_route(b, m, s->client_id);
    message_unref(m);
    publish_ack(c, p);
    return 0;
}

/* P2P target of an injected message: "<parent>/p2p/<client id>". */
static int inject_p2p_topic(const char *topic, size_t topic_len, const char *target, char *out,
                            size_t outlen, char *why, size_t whylen)
{
    const char *slash = memchr(topic, '/', topic_len);
    size_t parent = slash ? (size_t)(slash - topic) : topic_len;
    int n = snprintf(out, outlen, "%.*s/p2p/%s", (int)parent, topic, target);
    if (n < 0 || (size_t)n >= outlen || n > 65535) {
        snprintf(why, whylen, "P2P topic too long");
        return -1;
    }
    return n;
}

/* Under INJECT_FLOW_CONTROL: an online receiver that would drop m at
 * delivered QoS 1/2, NULL when every receiver has room. For P2P, target is
 * the only receiver; else the hits of route_match. */
static struct session *inject_full(struct broker *b, uint8_t qos, bool p2p, struct session *target)
{
    if (p2p)
        return target && qos > 0 && target->online && !session_has_room(target) ? target : NULL;
    for (uint32_t i = 0; i < b->hit_count; i++) {
        struct session *s = b->hits[i];
        uint8_t dq = qos < s->match_qos ? qos : s->match_qos;
        if (dq > 0 && s->online && !session_has_room(s))
            return s;
    }
    return NULL;
}

int broker_inject(struct broker *b, const char *topic, size_t topic_len, const uint8_t *payload,
                  uint32_t payload_len, uint8_t qos, const char *p2p_client_id, unsigned flags,
                  char *why, size_t whylen)
{
    bool managed = b->cfg.naming_mode == NAMING_MANAGED;
    bool flow = flags & INJECT_FLOW_CONTROL;
    char p2p_topic[512];
    if (p2p_client_id) {
        int group;
        if (managed && naming_check_client_id(&b->cfg.naming, p2p_client_id, strlen(p2p_client_id),
                                              &group, why, whylen) < 0)
            return INJECT_BAD_TARGET;
        int n = inject_p2p_topic(topic, topic_len, p2p_client_id, p2p_topic, sizeof p2p_topic, why,
                                 whylen);
        if (n < 0)
            return INJECT_BAD_TARGET;
        topic = p2p_topic;
        topic_len = (size_t)n;
    }
    if (topic_len == 0 || topic_len > 65535 || !topic_name_valid(topic, topic_len)) {
        snprintf(why, whylen, "'%.*s' is not a valid MQTT topic name", (int)(topic_len & 0xff),
                 topic);
        return INJECT_BAD_TOPIC;
    }
    struct naming_topic nt = {.p2p_target = NULL};
    if (managed && naming_check_topic(&b->cfg.naming, topic, topic_len, &nt, why, whylen) < 0)
        return INJECT_BAD_TOPIC;
    if (p2p_client_id && !nt.p2p_target) {
        /* naming: mqtt has no P2P topics; deliver to the client all the same */
        nt.p2p_target = p2p_client_id;
        nt.p2p_target_len = strlen(p2p_client_id);
    }
    if (b->cfg.limits.max_message_size && payload_len > b->cfg.limits.max_message_size) {
        snprintf(why, whylen, "payload of %" PRIu32 " bytes is over max_message_size %" PRIu32,
                 payload_len, b->cfg.limits.max_message_size);
        return INJECT_TOO_LARGE;
    }
    struct message *m = message_new(topic, (uint16_t)topic_len, payload, payload_len, qos, false);
    if (!m) {
        snprintf(why, whylen, "out of memory");
        return INJECT_NO_MEMORY;
    }
    bool p2p = nt.p2p_target != NULL;
    if (flow) {
        /* all or nothing: look at every receiver before delivering to any */
        if (!p2p)
            route_match(b, m->topic);
        struct session *full = inject_full(b, qos, p2p, p2p ? p2p_session(b, &nt) : NULL);
        if (full) {
            b->stats.inject_busy++;
            snprintf(why, whylen,
                     "client %s has no room (inflight %" PRIu32 "/%u, queued %" PRIu32 "/%" PRIu32
                     ")",
                     full->client_id, full->inflight.count, (unsigned)full->max_inflight,
                     full->queue.count, full->max_queued);
            message_unref(m);
            return INJECT_BUSY;
        }
    }
    m->id = broker_next_message_id(b);
    m->time_ms = broker_message_id_time(m->id);
    b->stats.messages_received++;
    log_debug("inject: PUBLISH %s qos=%u id=%016" PRIx64 " (%" PRIu32 " bytes)", m->topic, qos,
              m->id, payload_len);
    /* Not handed to on_message (broker.h): an inbound and an outbound rule
     * on one parent topic must not make a loop. */
    if (p2p) {
        deliver_p2p(b, m, &nt, NULL, flow);
    } else {
        if (!flow)
            route_match(b, m->topic);
        route_deliver(b, m, flow);
    }
    message_unref(m);
    return 0;
}

uint64_t broker_room_gen(const struct broker *b)
{
    return b->room_gen;
}

int handle_puback(struct conn *c, uint8_t type, uint16_t packet_id)
{
    struct session *s = c->session;
    int rc;
    if (type == MQTT_PUBACK)
        rc = session_on_puback(s, packet_id);
    else if (type == MQTT_PUBREC)
        rc = session_on_pubrec(s, packet_id);
    else
        rc = session_on_pubcomp(s, packet_id);
    if (rc != 0)
        log_debug("%s: %s for unknown packet id %u ignored", s->client_id, mqtt_type_name(type),
                  packet_id);
    if (rc != 0 && type == MQTT_PUBREC)
        conn_send_ack(c, MQTT_PUBREL, packet_id); /* let the client finish its state */
    return 0;
}

int handle_pubrel(struct conn *c, uint16_t packet_id)
{
    struct session *s = c->session;
    if (session_qos2_in_release(s, packet_id) == 0 && !s->clean_session && c->b->store)
        store_qos2_del(c->b->store, s->client_id, packet_id);
    /* [MQTT-4.3.3-2] PUBCOMP even for an unknown id */
    conn_send_ack(c, MQTT_PUBCOMP, packet_id);
    return 0;
}
