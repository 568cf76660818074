/* CONNECT [MQTT-3.1]: identify the client, take over or create its session,
 * answer CONNACK, resume delivery. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "broker_internal.h"

static int connack_refuse(struct conn *c, uint8_t rc, const char *why)
{
    log_notice("%s: connection refused (CONNACK 0x%02x): %s", c->peer, rc, why);
    mqtt_encode_connack(&c->out, false, rc);
    conn_want_flush(c);
    return -1; /* [MQTT-3.2.2-5] close after a non-zero CONNACK */
}

static struct message *will_new(struct conn *c, const struct mqtt_connect *p)
{
    if (!topic_name_valid(p->will_topic.p, p->will_topic.len)) {
        log_info("%s: will topic is not a valid topic name", c->peer);
        return NULL;
    }
    return message_new(p->will_topic.p, p->will_topic.len, p->will_payload, p->will_payload_len,
                       p->will_qos, p->will_retain);
}

/* Managed naming and the duplicate policy for client id `id` (as sent, or
 * assigned); refuses with CONNACK 0x02. */
static int check_client_id(struct conn *c, const struct mqtt_connect *p, const char *id)
{
    struct broker *b = c->b;
    char why[192];
    int group;
    if (b->cfg.naming_mode == NAMING_MANAGED &&
        naming_check_client_id(&b->cfg.naming, p->client_id.p, p->client_id.len, &group, why,
                               sizeof why) < 0) {
        b->stats.connect_bad_client_id++;
        return connack_refuse(c, MQTT_CONNACK_ID_REJECTED, why);
    }
    if (b->cfg.on_duplicate_client_id == DUPLICATE_REJECT) {
        struct session *s = hmap_get(&b->sessions, id);
        if (s && s->owner) {
            b->stats.connect_duplicate++;
            snprintf(why, sizeof why,
                     "client id %.80s is connected already "
                     "(on_duplicate_client_id: reject)",
                     id);
            return connack_refuse(c, MQTT_CONNACK_ID_REJECTED, why);
        }
    }
    return 0;
}

/* The client id to use: the one sent, or one assigned for an empty id with
 * cleanSession=1 [MQTT-3.1.3-6]. Returns a malloc'd string or NULL. */
static char *client_id_for(struct conn *c, const struct mqtt_connect *p)
{
    if (p->client_id.len) {
        char *id = malloc((size_t)p->client_id.len + 1);
        if (id) {
            memcpy(id, p->client_id.p, p->client_id.len);
            id[p->client_id.len] = '\0';
        }
        return id;
    }
    char *id = malloc(40);
    if (id)
        snprintf(id, 40, "auto-%016" PRIx64 "-%" PRIu64, broker_next_message_id(c->b), c->channel);
    return id;
}

/* Find or create the session; takes over an existing connection
 * [MQTT-3.1.4-2]. *present tells whether state was resumed. */
static struct session *session_attach(struct conn *c, const char *id, bool clean, bool *present)
{
    struct broker *b = c->b;
    struct session *s = hmap_get(&b->sessions, id);
    *present = false;
    if (s && s->owner) {
        struct conn *old = s->owner;
        log_info("%s: client id %s taken over from %s", c->peer, id, old->peer);
        conn_close(old, "session taken over by a new connection", true);
        /* closing a clean session's connection destroyed the session */
        s = hmap_get(&b->sessions, id);
    }
    if (s && clean) {
        /* [MQTT-3.1.2-6] cleanSession=1 discards any previous session */
        broker_session_destroy(b, s);
        s = NULL;
    }
    if (s) {
        *present = true; /* [MQTT-3.2.2-2] */
        return s;
    }
    return broker_session_create(b, id, clean);
}

int handle_connect(struct conn *c, const struct mqtt_connect *p)
{
    struct broker *b = c->b;
    if (c->state != CONN_NEW) {
        log_info("%s: second CONNECT [MQTT-3.1.0-2]", c->peer);
        return -1;
    }
    if (p->client_id.len == 0 && !p->clean_session) {
        b->stats.connect_bad_client_id++;
        return connack_refuse(c, MQTT_CONNACK_ID_REJECTED,
                              "empty client id with cleanSession=0 [MQTT-3.1.3-8]");
    }
    if (b->stopping || (b->cfg.limits.max_connections &&
                        b->stats.connections_current > b->cfg.limits.max_connections)) {
        b->stats.connect_unavailable++;
        return connack_refuse(c, MQTT_CONNACK_UNAVAILABLE,
                              b->stopping ? "broker is shutting down" : "max_connections reached");
    }
    if (p->will_flag) {
        c->will = will_new(c, p);
        if (!c->will)
            return -1;
    }
    char *id = client_id_for(c, p);
    if (!id)
        return connack_refuse(c, MQTT_CONNACK_UNAVAILABLE, "out of memory");
    if (check_client_id(c, p, id) < 0) {
        free(id);
        return -1;
    }
    bool present;
    struct session *s = session_attach(c, id, p->clean_session, &present);
    free(id);
    if (!s)
        return connack_refuse(c, MQTT_CONNACK_UNAVAILABLE, "out of memory");
    c->session = s;
    s->owner = c;
    c->state = CONN_ACTIVE;
    c->protocol_level = p->protocol_level;
    c->keepalive = p->keep_alive;
    if (b->cfg.limits.max_keepalive &&
        (c->keepalive == 0 || c->keepalive > b->cfg.limits.max_keepalive))
        c->keepalive = b->cfg.limits.max_keepalive;
    if (!s->clean_session && b->store) {
        uv_timeval64_t tv;
        uv_gettimeofday(&tv);
        store_session_put(b->store, s->client_id, tv.tv_sec * 1000 + tv.tv_usec / 1000);
    }
    log_info("%s: client %s connected (v%u, clean=%d, keepalive=%u, present=%d)", c->peer,
             s->client_id, p->protocol_level, p->clean_session, p->keep_alive, present);
    /* MQTT 3.1 has no session-present flag: its byte must stay 0 */
    mqtt_encode_connack(&c->out, present && p->protocol_level >= 4, MQTT_CONNACK_ACCEPTED);
    conn_want_flush(c);
    broker_client_event(b, c, CLIENT_CONNECT);
    session_resume(s); /* [MQTT-4.4.0-1] resend what was unacknowledged */
    return 0;
}
