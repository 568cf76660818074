/* libFuzzer target for the packet codec.
 *
 * The input is read as a connection reads its stream: mqtt_fixed_header()
 * frames a packet, mqtt_decode() decodes it, and the first error (or an
 * incomplete packet) ends the stream, as closing the connection would.
 * Each packet is copied into its own exact-size heap block so ASan reports
 * any read past len. For every PKT_OK packet the target checks that each
 * decoded view lies inside the packet, re-encodes it with the public
 * encoders, decodes that again and requires equal fields and, when the
 * input used the shortest length encoding, identical bytes. Any mismatch
 * aborts. */
#include "../../broker/packet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An empty view may point anywhere (or nowhere); a non-empty one must lie
 * inside buf[0..len). */
static bool view_inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)buf;
    return n == 0 || (a >= lo && a - lo <= len && n <= len - (a - lo));
}

static bool str_same(struct mqtt_str a, struct mqtt_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool bin_same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static void check_views(const struct mqtt_packet *p, const uint8_t *buf, size_t len)
{
    const struct mqtt_connect *c = &p->u.connect;
    switch (p->type) {
    case MQTT_CONNECT:
        FUZZ_CHECK(view_inside(c->client_id.p, c->client_id.len, buf, len));
        FUZZ_CHECK(view_inside(c->will_topic.p, c->will_topic.len, buf, len));
        FUZZ_CHECK(view_inside(c->will_payload, c->will_payload_len, buf, len));
        FUZZ_CHECK(view_inside(c->username.p, c->username.len, buf, len));
        FUZZ_CHECK(view_inside(c->password, c->password_len, buf, len));
        break;
    case MQTT_PUBLISH:
        FUZZ_CHECK(view_inside(p->u.publish.topic.p, p->u.publish.topic.len, buf, len));
        FUZZ_CHECK(view_inside(p->u.publish.payload, p->u.publish.payload_len, buf, len));
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        FUZZ_CHECK(p->u.subscribe.count > 0);
        for (uint32_t i = 0; i < p->u.subscribe.count; i++) {
            const struct mqtt_str *f = &p->u.subscribe.topics[i].filter;
            FUZZ_CHECK(view_inside(f->p, f->len, buf, len));
        }
        break;
    default:
        break;
    }
}

static bool connect_same(const struct mqtt_connect *a, const struct mqtt_connect *b)
{
    return a->protocol_level == b->protocol_level && a->clean_session == b->clean_session &&
           a->keep_alive == b->keep_alive && str_same(a->client_id, b->client_id) &&
           a->will_flag == b->will_flag && a->will_qos == b->will_qos &&
           a->will_retain == b->will_retain && str_same(a->will_topic, b->will_topic) &&
           bin_same(a->will_payload, a->will_payload_len, b->will_payload, b->will_payload_len) &&
           a->has_username == b->has_username && str_same(a->username, b->username) &&
           a->has_password == b->has_password &&
           bin_same(a->password, a->password_len, b->password, b->password_len);
}

static bool publish_same(const struct mqtt_publish *a, const struct mqtt_publish *b)
{
    return str_same(a->topic, b->topic) && a->packet_id == b->packet_id && a->qos == b->qos &&
           a->dup == b->dup && a->retain == b->retain &&
           bin_same(a->payload, a->payload_len, b->payload, b->payload_len);
}

static bool list_same(const struct mqtt_subscribe *a, const struct mqtt_subscribe *b)
{
    if (a->packet_id != b->packet_id || a->count != b->count)
        return false;
    for (uint32_t i = 0; i < a->count; i++)
        if (!str_same(a->topics[i].filter, b->topics[i].filter) ||
            a->topics[i].qos != b->topics[i].qos)
            return false;
    return true;
}

static bool packets_same(const struct mqtt_packet *a, const struct mqtt_packet *b)
{
    if (a->type != b->type || a->flags != b->flags)
        return false;
    switch (a->type) {
    case MQTT_CONNECT:
        return connect_same(&a->u.connect, &b->u.connect);
    case MQTT_CONNACK:
        return a->u.connack.session_present == b->u.connack.session_present &&
               a->u.connack.rc == b->u.connack.rc;
    case MQTT_PUBLISH:
        return publish_same(&a->u.publish, &b->u.publish);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return list_same(&a->u.subscribe, &b->u.subscribe);
    case MQTT_SUBACK:
        return a->u.suback.packet_id == b->u.suback.packet_id &&
               bin_same(a->u.suback.rcs, a->u.suback.count, b->u.suback.rcs, b->u.suback.count);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
    case MQTT_DISCONNECT:
        return true;
    default: /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK */
        return a->u.packet_id == b->u.packet_id;
    }
}

static int encode_packet(struct buf *b, const struct mqtt_packet *p)
{
    const struct mqtt_publish *m = &p->u.publish;
    const struct mqtt_subscribe *s = &p->u.subscribe;
    switch (p->type) {
    case MQTT_CONNECT:
        return mqtt_encode_connect(b, &p->u.connect);
    case MQTT_CONNACK:
        return mqtt_encode_connack(b, p->u.connack.session_present, p->u.connack.rc);
    case MQTT_PUBLISH:
        return mqtt_encode_publish(b, m->topic.p, m->topic.len, m->payload, m->payload_len, m->qos,
                                   m->retain, m->dup, m->packet_id);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return mqtt_encode_ack(b, (enum mqtt_type)p->type, p->u.packet_id);
    case MQTT_SUBSCRIBE:
        return mqtt_encode_subscribe(b, s->packet_id, s->topics, s->count);
    case MQTT_UNSUBSCRIBE:
        return mqtt_encode_unsubscribe(b, s->packet_id, s->topics, s->count);
    case MQTT_SUBACK:
        return mqtt_encode_suback(b, p->u.suback.packet_id, p->u.suback.rcs, p->u.suback.count);
    case MQTT_PINGREQ:
        return mqtt_encode_pingreq(b);
    case MQTT_PINGRESP:
        return mqtt_encode_pingresp(b);
    case MQTT_DISCONNECT:
        return mqtt_encode_disconnect(b);
    }
    return -1;
}

static size_t varint_size(uint32_t v)
{
    return v < 128u ? 1 : v < 16384u ? 2 : v < 2097152u ? 3 : 4;
}

static void check_round_trip(const uint8_t *pkt, size_t len, size_t header_len, uint32_t remaining,
                             const struct mqtt_packet *p)
{
    struct buf out = {0};
    struct mqtt_packet again;
    FUZZ_CHECK(encode_packet(&out, p) == 0);
    FUZZ_CHECK(mqtt_decode(out.data, out.len, &again) == PKT_OK);
    FUZZ_CHECK(packets_same(p, &again));
    if (header_len == 1 + varint_size(remaining))
        FUZZ_CHECK(out.len == len && memcmp(out.data, pkt, len) == 0);
    mqtt_packet_clear(&again);
    buf_free(&out);
}

/* Decode one framed packet; false when the connection would close. */
static bool fuzz_one_packet(const uint8_t *data, size_t header_len, uint32_t remaining)
{
    size_t len = header_len + remaining;
    uint8_t *pkt = malloc(len);
    struct mqtt_packet p;
    FUZZ_CHECK(pkt != NULL);
    memcpy(pkt, data, len);
    int rc = mqtt_decode(pkt, len, &p);
    FUZZ_CHECK(rc == PKT_OK || rc == PKT_ERR_MALFORMED || rc == PKT_ERR_PROTOCOL);
    if (rc == PKT_ERR_PROTOCOL) {
        /* The level byte follows the two-byte protocol name length and name. */
        size_t name_len = (size_t)pkt[header_len] << 8 | pkt[header_len + 1];
        FUZZ_CHECK(p.type == MQTT_CONNECT && header_len + 2 + name_len < len);
        FUZZ_CHECK(p.u.connect.protocol_level == pkt[header_len + 2 + name_len]);
    }
    if (rc == PKT_OK) {
        check_views(&p, pkt, len);
        check_round_trip(pkt, len, header_len, remaining, &p);
        mqtt_packet_clear(&p);
    }
    free(pkt);
    return rc == PKT_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        uint8_t first;
        uint32_t remaining;
        size_t header_len;
        int rc = mqtt_fixed_header(data + off, size - off, &first, &remaining, &header_len);
        FUZZ_CHECK(rc == PKT_OK || rc == PKT_NEED_MORE || rc == PKT_ERR_MALFORMED);
        if (rc != PKT_OK)
            break;
        FUZZ_CHECK(first == data[off] && header_len >= 2 && header_len <= 5);
        FUZZ_CHECK(remaining <= MQTT_MAX_REMAINING_LENGTH);
        if (remaining > size - off - header_len)
            break; /* the connection would wait for more bytes */
        if (!fuzz_one_packet(data + off, header_len, remaining))
            break;
        off += header_len + remaining;
    }
    return 0;
}
