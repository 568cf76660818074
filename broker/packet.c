/* MQTT 3.1.1 / 3.1 packet codec.
 *
 * Every packet is a fixed header (type nibble, flags nibble, Remaining
 * Length as a 1..4 byte base-128 varint [MQTT-2.2.3]) followed by exactly
 * Remaining Length bytes. The decoder checks every rule the spec places on
 * a receiver and answers PKT_ERR_MALFORMED at the first violation. It never
 * reads past len, and the only allocations (topic lists, SUBACK codes) are
 * sized by a first counting pass, so they are bounded by the packet itself.
 *
 * Examples (hex):
 *   c0 00                           PINGREQ
 *   30 07 00 03 61 2f 62 68 69      PUBLISH QoS 0 topic "a/b" payload "hi"
 *   82 06 12 34 00 01 61 01         SUBSCRIBE id 0x1234 filter "a" QoS 1
 *   82 06 12 34 00 01 61 03         malformed: requested QoS 3 [MQTT-3.8.3-4]
 *   60 02 00 07                     malformed: PUBREL flags must be 0x2
 *
 * The encoders write the same format. They refuse (-1, out untouched) to
 * build a packet the decoder would reject on structure: QoS 3, an empty
 * topic or filter, a missing packet id, an empty topic list, a Remaining
 * Length over MQTT_MAX_REMAINING_LENGTH. They do not re-check string
 * contents (UTF-8, wildcards): callers pass strings they already decoded. */
#include "packet.h"

#include <stdlib.h>
#include <string.h>

/* ---- reading ---------------------------------------------------------- */

/* A bounded cursor over the Remaining Length bytes of one packet. */
struct reader {
    const uint8_t *p;
    size_t len;
    size_t pos;
};

static size_t rd_left(const struct reader *r)
{
    return r->len - r->pos;
}

static bool rd_u8(struct reader *r, uint8_t *v)
{
    if (rd_left(r) < 1)
        return false;
    *v = r->p[r->pos++];
    return true;
}

/* Two-byte big-endian integer [MQTT-1.5.2]. */
static bool rd_u16(struct reader *r, uint16_t *v)
{
    if (rd_left(r) < 2)
        return false;
    *v = (uint16_t)((unsigned)r->p[r->pos] << 8 | r->p[r->pos + 1]);
    r->pos += 2;
    return true;
}

/* Two-byte length followed by that many bytes (strings and binary data). */
static bool rd_bin(struct reader *r, const uint8_t **p, uint16_t *len)
{
    uint16_t n;
    if (!rd_u16(r, &n) || rd_left(r) < n)
        return false;
    *p = r->p + r->pos;
    *len = n;
    r->pos += n;
    return true;
}

/* A UTF-8 encoded string [MQTT-1.5.3-1] [MQTT-1.5.3-2]. */
static bool rd_str(struct reader *r, struct mqtt_str *s)
{
    const uint8_t *p;
    if (!rd_bin(r, &p, &s->len))
        return false;
    s->p = (const char *)p;
    return mqtt_utf8_valid(s->p, s->len);
}

/* A Topic Name (PUBLISH, Will Topic): a string at least one character long
 * [MQTT-4.7.3-1] without wildcards [MQTT-3.3.2-2] [MQTT-4.7.1-1]. */
static bool rd_topic_name(struct reader *r, struct mqtt_str *s)
{
    if (!rd_str(r, s) || s->len == 0)
        return false;
    return !memchr(s->p, '+', s->len) && !memchr(s->p, '#', s->len);
}

/* ---- UTF-8 ------------------------------------------------------------ */

/* Length of the well-formed sequence starting at p (at most `left` bytes),
 * or 0 when it is not one. Rejects overlong forms, surrogates
 * U+D800..U+DFFF and code points above U+10FFFF [MQTT-1.5.3-1]. */
static size_t utf8_seq_len(const uint8_t *p, size_t left)
{
    uint8_t b = p[0], lo = 0x80, hi = 0xbf;
    size_t n;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf) {
        n = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
        n = 3;
        lo = b == 0xe0 ? 0xa0 : lo; /* overlong below U+0800 */
        hi = b == 0xed ? 0x9f : hi; /* surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        n = 4;
        lo = b == 0xf0 ? 0x90 : lo; /* overlong below U+10000 */
        hi = b == 0xf4 ? 0x8f : hi; /* above U+10FFFF */
    } else {
        return 0; /* continuation byte, C0/C1 overlong lead, F5..FF */
    }
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    return n;
}

bool mqtt_utf8_valid(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        if (p[i] == 0)
            return false; /* [MQTT-1.5.3-2] */
        size_t n = utf8_seq_len(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* ---- fixed header ----------------------------------------------------- */

int mqtt_fixed_header(const uint8_t *buf, size_t len, uint8_t *first_byte, uint32_t *remaining,
                      size_t *header_len)
{
    uint32_t value = 0;
    for (size_t i = 0; i < 4; i++) {
        if (len < i + 2)
            return PKT_NEED_MORE;
        uint8_t b = buf[1 + i];
        value |= (uint32_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *first_byte = buf[0];
            *remaining = value;
            *header_len = i + 2;
            return PKT_OK;
        }
    }
    return PKT_ERR_MALFORMED; /* [MQTT-2.2.3] at most four length bytes */
}

/* The flags nibble each type must carry [MQTT-2.2.2-1] [MQTT-2.2.2-2];
 * PUBREL [MQTT-3.6.1-1], SUBSCRIBE [MQTT-3.8.1-1], UNSUBSCRIBE
 * [MQTT-3.10.1-1] use 0x2. FLAGS_ANY: PUBLISH, checked by its decoder;
 * FLAGS_NONE: types 0 and 15 are reserved. */
#define FLAGS_ANY 0x10
#define FLAGS_NONE 0x20
static const uint8_t required_flags[16] = {
    [0] = FLAGS_NONE,           [MQTT_CONNECT] = 0,       [MQTT_CONNACK] = 0,
    [MQTT_PUBLISH] = FLAGS_ANY, [MQTT_PUBACK] = 0,        [MQTT_PUBREC] = 0,
    [MQTT_PUBREL] = 0x2,        [MQTT_PUBCOMP] = 0,       [MQTT_SUBSCRIBE] = 0x2,
    [MQTT_SUBACK] = 0,          [MQTT_UNSUBSCRIBE] = 0x2, [MQTT_UNSUBACK] = 0,
    [MQTT_PINGREQ] = 0,         [MQTT_PINGRESP] = 0,      [MQTT_DISCONNECT] = 0,
    [15] = FLAGS_NONE,
};

static bool flags_valid(uint8_t type, uint8_t flags)
{
    uint8_t want = required_flags[type & 0x0f];
    return want == FLAGS_ANY || want == flags;
}

/* ---- CONNECT ---------------------------------------------------------- */

/* "MQTT" level 4 or "MQIsdp" level 3. Another name may be dropped without
 * CONNACK [MQTT-3.1.2-1]; a known name with another level is answered with
 * CONNACK 0x01 [MQTT-3.1.2-2]. */
static int connect_check_protocol(const uint8_t *name, uint16_t len, uint8_t level)
{
    if (len == 4 && memcmp(name, "MQTT", 4) == 0)
        return level == 4 ? PKT_OK : PKT_ERR_PROTOCOL;
    if (len == 6 && memcmp(name, "MQIsdp", 6) == 0)
        return level == 3 ? PKT_OK : PKT_ERR_PROTOCOL;
    return PKT_ERR_MALFORMED;
}

static int connect_read_flags(struct mqtt_connect *c, uint8_t f)
{
    if (f & 0x01)
        return PKT_ERR_MALFORMED; /* [MQTT-3.1.2-3] reserved bit */
    c->clean_session = (f & 0x02) != 0;
    c->will_flag = (f & 0x04) != 0;
    c->will_qos = (uint8_t)((f >> 3) & 0x03);
    c->will_retain = (f & 0x20) != 0;
    c->has_password = (f & 0x40) != 0;
    c->has_username = (f & 0x80) != 0;
    if (c->will_qos == 3)
        return PKT_ERR_MALFORMED; /* [MQTT-3.1.2-14] */
    if (!c->will_flag && (c->will_qos != 0 || c->will_retain))
        return PKT_ERR_MALFORMED; /* [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] */
    if (c->has_password && !c->has_username)
        return PKT_ERR_MALFORMED; /* [MQTT-3.1.2-22] */
    return PKT_OK;
}

/* Fields in this order, each present exactly when its flag says
 * [MQTT-3.1.3-1]. Bytes left over are caught by mqtt_decode(). */
static int connect_read_payload(struct reader *r, struct mqtt_connect *c)
{
    if (!rd_str(r, &c->client_id)) /* [MQTT-3.1.3-3] [MQTT-3.1.3-4] */
        return PKT_ERR_MALFORMED;
    if (c->will_flag) { /* [MQTT-3.1.2-9] [MQTT-3.1.3-10] */
        if (!rd_topic_name(r, &c->will_topic) || !rd_bin(r, &c->will_payload, &c->will_payload_len))
            return PKT_ERR_MALFORMED;
    }
    if (c->has_username && !rd_str(r, &c->username)) /* [MQTT-3.1.2-19] [MQTT-3.1.3-11] */
        return PKT_ERR_MALFORMED;
    if (c->has_password && !rd_bin(r, &c->password, &c->password_len)) /* [MQTT-3.1.2-21] */
        return PKT_ERR_MALFORMED;
    return PKT_OK;
}

static int decode_connect(struct reader *r, struct mqtt_connect *c)
{
    const uint8_t *name;
    uint16_t name_len;
    uint8_t flags;
    if (!rd_bin(r, &name, &name_len) || !rd_u8(r, &c->protocol_level))
        return PKT_ERR_MALFORMED;
    /* Stop at an unknown level: the rest may follow another version's
     * layout (MQTT 5 adds properties) and must not turn into MALFORMED. */
    int rc = connect_check_protocol(name, name_len, c->protocol_level);
    if (rc != PKT_OK)
        return rc;
    if (!rd_u8(r, &flags) || !rd_u16(r, &c->keep_alive))
        return PKT_ERR_MALFORMED;
    rc = connect_read_flags(c, flags);
    if (rc != PKT_OK)
        return rc;
    return connect_read_payload(r, c);
}

/* ---- other packet types ----------------------------------------------- */

/* Byte 1 bits 7-1 are reserved and 0 [MQTT 3.2.2.1]; a refusal never
 * claims a session [MQTT-3.2.2-4]. */
static int decode_connack(struct reader *r, struct mqtt_connack *c)
{
    uint8_t ack;
    if (!rd_u8(r, &ack) || !rd_u8(r, &c->rc) || (ack & 0xfe) != 0)
        return PKT_ERR_MALFORMED;
    c->session_present = (ack & 0x01) != 0;
    if (c->session_present && c->rc != MQTT_CONNACK_ACCEPTED)
        return PKT_ERR_MALFORMED;
    return PKT_OK;
}

static int decode_publish(struct reader *r, uint8_t flags, struct mqtt_publish *p)
{
    p->retain = (flags & 0x01) != 0;
    p->qos = (uint8_t)((flags >> 1) & 0x03);
    p->dup = (flags & 0x08) != 0;
    if (p->qos == 3)
        return PKT_ERR_MALFORMED; /* [MQTT-3.3.1-4] */
    if (p->qos == 0 && p->dup)
        return PKT_ERR_MALFORMED;     /* [MQTT-3.3.1-2] */
    if (!rd_topic_name(r, &p->topic)) /* [MQTT-3.3.2-1] [MQTT-3.3.2-2] [MQTT-4.7.3-1] */
        return PKT_ERR_MALFORMED;
    if (p->qos > 0 && (!rd_u16(r, &p->packet_id) || p->packet_id == 0))
        return PKT_ERR_MALFORMED; /* [MQTT-2.3.1-1] */
    /* The payload is the rest and may be empty [MQTT 3.3.3]. */
    p->payload = r->p + r->pos;
    p->payload_len = (uint32_t)rd_left(r);
    r->pos = r->len;
    return PKT_OK;
}

/* One SUBSCRIBE (with_qos) or UNSUBSCRIBE entry: a non-empty string
 * [MQTT-3.8.3-1] [MQTT-3.10.3-1] [MQTT-4.7.3-1]. Wildcard syntax is the
 * broker's call (SUBACK 0x80 per filter), not a framing error. */
static bool rd_topic_req(struct reader *r, bool with_qos, struct mqtt_topic_req *t)
{
    t->qos = 0;
    if (!rd_str(r, &t->filter) || t->filter.len == 0)
        return false;
    if (!with_qos)
        return true;
    /* [MQTT-3.8.3-4] upper six bits reserved, QoS 3 malformed */
    return rd_u8(r, &t->qos) && t->qos <= 2;
}

static int decode_topic_list(struct reader *r, bool with_qos, struct mqtt_subscribe *s)
{
    struct mqtt_topic_req t;
    if (!rd_u16(r, &s->packet_id) || s->packet_id == 0)
        return PKT_ERR_MALFORMED; /* [MQTT-2.3.1-1] */
    /* Validate and count first: the array is sized by what is there. */
    struct reader scan = *r;
    uint32_t count = 0;
    while (rd_left(&scan) > 0) {
        if (!rd_topic_req(&scan, with_qos, &t))
            return PKT_ERR_MALFORMED;
        count++;
    }
    if (count == 0)
        return PKT_ERR_MALFORMED; /* [MQTT-3.8.3-3] [MQTT-3.10.3-2] */
    s->topics = calloc(count, sizeof *s->topics);
    if (!s->topics)
        return PKT_ERR_MALFORMED; /* out of memory: drop the connection */
    for (uint32_t i = 0; i < count; i++)
        rd_topic_req(r, with_qos, &s->topics[i]); /* cannot fail: scanned */
    s->count = count;
    return PKT_OK;
}

/* One return code per requested filter, at least one [MQTT-3.8.4-5], each
 * 0x00, 0x01, 0x02 or 0x80 [MQTT-3.9.3-2]. */
static int decode_suback(struct reader *r, struct mqtt_suback *s)
{
    if (!rd_u16(r, &s->packet_id) || rd_left(r) == 0)
        return PKT_ERR_MALFORMED;
    size_t n = rd_left(r);
    const uint8_t *rcs = r->p + r->pos;
    for (size_t i = 0; i < n; i++)
        if (rcs[i] > 2 && rcs[i] != MQTT_SUBACK_FAILURE)
            return PKT_ERR_MALFORMED;
    s->rcs = malloc(n);
    if (!s->rcs)
        return PKT_ERR_MALFORMED; /* out of memory: drop the connection */
    memcpy(s->rcs, rcs, n);
    s->count = (uint32_t)n;
    r->pos = r->len;
    return PKT_OK;
}

/* Reads the body; a short body fails here, a long one in mqtt_decode(),
 * which makes the fixed-size packets exact: PUBACK, PUBREC, PUBREL,
 * PUBCOMP, UNSUBACK 2 bytes; PINGREQ, PINGRESP, DISCONNECT 0 bytes. */
static int decode_body(struct reader *r, struct mqtt_packet *out)
{
    switch (out->type) {
    case MQTT_CONNECT:
        return decode_connect(r, &out->u.connect);
    case MQTT_CONNACK:
        return decode_connack(r, &out->u.connack);
    case MQTT_PUBLISH:
        return decode_publish(r, out->flags, &out->u.publish);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return rd_u16(r, &out->u.packet_id) ? PKT_OK : PKT_ERR_MALFORMED;
    case MQTT_SUBSCRIBE:
        return decode_topic_list(r, true, &out->u.subscribe);
    case MQTT_UNSUBSCRIBE:
        return decode_topic_list(r, false, &out->u.subscribe);
    case MQTT_SUBACK:
        return decode_suback(r, &out->u.suback);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
    case MQTT_DISCONNECT:
        return PKT_OK;
    default:
        return PKT_ERR_MALFORMED; /* reserved types 0 and 15 */
    }
}

int mqtt_decode(const uint8_t *buf, size_t len, struct mqtt_packet *out)
{
    uint8_t first;
    uint32_t remaining;
    size_t header_len;
    memset(out, 0, sizeof *out);
    if (mqtt_fixed_header(buf, len, &first, &remaining, &header_len) != PKT_OK ||
        len - header_len != remaining)
        return PKT_ERR_MALFORMED;
    out->type = (uint8_t)(first >> 4);
    out->flags = (uint8_t)(first & 0x0f);
    if (!flags_valid(out->type, out->flags))
        return PKT_ERR_MALFORMED;
    struct reader r = {.p = buf + header_len, .len = remaining, .pos = 0};
    int rc = decode_body(&r, out);
    if (rc == PKT_OK && rd_left(&r) != 0) {
        mqtt_packet_clear(out);
        return PKT_ERR_MALFORMED; /* bytes after the last field */
    }
    return rc;
}

void mqtt_packet_clear(struct mqtt_packet *p)
{
    if (!p)
        return;
    if (p->type == MQTT_SUBSCRIBE || p->type == MQTT_UNSUBSCRIBE)
        free(p->u.subscribe.topics);
    else if (p->type == MQTT_SUBACK)
        free(p->u.suback.rcs);
    memset(p, 0, sizeof *p);
}

/* ---- encoding --------------------------------------------------------- */

static size_t varint_len(uint32_t v)
{
    return v < 128u ? 1 : v < 16384u ? 2 : v < 2097152u ? 3 : 4;
}

/* Reserve the whole packet so the appends below cannot fail half way;
 * the callers still check them and roll back to be safe. */
static int put_header(struct buf *out, uint8_t first, uint32_t remaining)
{
    uint8_t h[5];
    size_t n = 0;
    if (buf_reserve(out, 1 + varint_len(remaining) + (size_t)remaining) < 0)
        return -1;
    h[n++] = first;
    do {
        uint8_t b = remaining & 0x7f;
        remaining >>= 7;
        h[n++] = remaining ? (uint8_t)(b | 0x80) : b;
    } while (remaining);
    return buf_append(out, h, n);
}

static int put_bin(struct buf *out, const void *p, uint16_t len)
{
    if (buf_append_u16(out, len) < 0 || buf_append(out, p, len) < 0)
        return -1;
    return 0;
}

int mqtt_encode_connack(struct buf *out, bool session_present, uint8_t rc)
{
    size_t start = out->len;
    if (session_present && rc != MQTT_CONNACK_ACCEPTED)
        return -1; /* [MQTT-3.2.2-4] */
    if (put_header(out, MQTT_CONNACK << 4, 2) < 0 || buf_append_u8(out, session_present) < 0 ||
        buf_append_u8(out, rc) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    return -1;
}

int mqtt_encode_publish(struct buf *out, const char *topic, uint16_t topic_len,
                        const uint8_t *payload, uint32_t payload_len, uint8_t qos, bool retain,
                        bool dup, uint16_t packet_id)
{
    size_t start = out->len;
    uint64_t remaining = 2u + (uint64_t)topic_len + (qos > 0 ? 2u : 0u) + payload_len;
    if (topic_len == 0 || qos > 2 || remaining > MQTT_MAX_REMAINING_LENGTH)
        return -1; /* [MQTT-4.7.3-1] [MQTT-3.3.1-4] */
    if ((qos == 0 && dup) || (qos > 0 && packet_id == 0))
        return -1; /* [MQTT-3.3.1-2] [MQTT-2.3.1-1] */
    uint8_t first = (uint8_t)(MQTT_PUBLISH << 4 | (dup ? 0x08 : 0) | qos << 1 | (retain ? 1 : 0));
    if (put_header(out, first, (uint32_t)remaining) < 0 || put_bin(out, topic, topic_len) < 0)
        goto fail;
    if (qos > 0 && buf_append_u16(out, packet_id) < 0)
        goto fail;
    if (buf_append(out, payload, payload_len) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    return -1;
}

int mqtt_encode_ack(struct buf *out, enum mqtt_type type, uint16_t packet_id)
{
    size_t start = out->len;
    uint8_t first;
    switch (type) {
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        first = (uint8_t)(type << 4);
        break;
    case MQTT_PUBREL:
        first = MQTT_PUBREL << 4 | 0x2; /* [MQTT-3.6.1-1] */
        break;
    default:
        return -1;
    }
    if (put_header(out, first, 2) < 0 || buf_append_u16(out, packet_id) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    return -1;
}

int mqtt_encode_suback(struct buf *out, uint16_t packet_id, const uint8_t *rcs, uint32_t count)
{
    size_t start = out->len;
    if (count == 0 || count > MQTT_MAX_REMAINING_LENGTH - 2)
        return -1; /* [MQTT-3.8.4-5] one code per filter, at least one */
    for (uint32_t i = 0; i < count; i++)
        if (rcs[i] > 2 && rcs[i] != MQTT_SUBACK_FAILURE)
            return -1; /* [MQTT-3.9.3-2] */
    if (put_header(out, MQTT_SUBACK << 4, 2 + count) < 0 || buf_append_u16(out, packet_id) < 0 ||
        buf_append(out, rcs, count) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    return -1;
}

/* PINGREQ, PINGRESP, DISCONNECT: a type and a zero Remaining Length. */
static int encode_empty(struct buf *out, enum mqtt_type type)
{
    uint8_t p[2] = {(uint8_t)(type << 4), 0};
    return buf_append(out, p, sizeof p);
}

int mqtt_encode_pingresp(struct buf *out)
{
    return encode_empty(out, MQTT_PINGRESP);
}
int mqtt_encode_pingreq(struct buf *out)
{
    return encode_empty(out, MQTT_PINGREQ);
}
int mqtt_encode_disconnect(struct buf *out)
{
    return encode_empty(out, MQTT_DISCONNECT);
}

/* Connect Flags byte [MQTT 3.1.2.3]; will QoS and retain only with a will. */
static uint8_t connect_flags(const struct mqtt_connect *c)
{
    uint8_t f = 0;
    if (c->clean_session)
        f |= 0x02;
    if (c->will_flag)
        f |= (uint8_t)(0x04 | c->will_qos << 3 | (c->will_retain ? 0x20 : 0));
    if (c->has_password)
        f |= 0x40;
    if (c->has_username)
        f |= 0x80;
    return f;
}

/* Cannot exceed the limit: at most 12 + 5 * (2 + 65535) bytes. */
static uint32_t connect_remaining(const struct mqtt_connect *c, uint16_t name_len)
{
    uint32_t n = 2u + name_len + 1 + 1 + 2 + 2u + c->client_id.len;
    if (c->will_flag)
        n += 2u + c->will_topic.len + 2u + c->will_payload_len;
    if (c->has_username)
        n += 2u + c->username.len;
    if (c->has_password)
        n += 2u + c->password_len;
    return n;
}

static int connect_put_payload(struct buf *out, const struct mqtt_connect *c)
{
    if (put_bin(out, c->client_id.p, c->client_id.len) < 0)
        return -1;
    if (c->will_flag && (put_bin(out, c->will_topic.p, c->will_topic.len) < 0 ||
                         put_bin(out, c->will_payload, c->will_payload_len) < 0))
        return -1;
    if (c->has_username && put_bin(out, c->username.p, c->username.len) < 0)
        return -1;
    if (c->has_password && put_bin(out, c->password, c->password_len) < 0)
        return -1;
    return 0;
}

int mqtt_encode_connect(struct buf *out, const struct mqtt_connect *c)
{
    size_t start = out->len;
    bool v31 = c->protocol_level == 3;
    uint16_t name_len = v31 ? 6 : 4;
    if (c->will_flag && (c->will_qos > 2 || c->will_topic.len == 0))
        return -1; /* [MQTT-3.1.2-14] [MQTT-4.7.3-1] */
    if (c->has_password && !c->has_username)
        return -1; /* [MQTT-3.1.2-22] */
    if (put_header(out, MQTT_CONNECT << 4, connect_remaining(c, name_len)) < 0 ||
        put_bin(out, v31 ? "MQIsdp" : "MQTT", name_len) < 0 ||
        buf_append_u8(out, v31 ? 3 : 4) < 0 || buf_append_u8(out, connect_flags(c)) < 0 ||
        buf_append_u16(out, c->keep_alive) < 0 || connect_put_payload(out, c) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    return -1;
}

/* SUBSCRIBE (with_qos) and UNSUBSCRIBE: flags 0x2, a non-zero packet id,
 * at least one non-empty filter. */
static int encode_topic_list(struct buf *out, uint8_t first, uint16_t packet_id,
                             const struct mqtt_topic_req *topics, uint32_t count, bool with_qos)
{
    size_t start = out->len;
    uint64_t remaining = 2;
    if (packet_id == 0 || count == 0)
        return -1; /* [MQTT-2.3.1-1] [MQTT-3.8.3-3] [MQTT-3.10.3-2] */
    for (uint32_t i = 0; i < count && remaining <= MQTT_MAX_REMAINING_LENGTH; i++) {
        if (topics[i].filter.len == 0 || (with_qos && topics[i].qos > 2))
            return -1; /* [MQTT-4.7.3-1] [MQTT-3.8.3-4] */
        remaining += 2u + topics[i].filter.len + (with_qos ? 1u : 0u);
    }
    if (remaining > MQTT_MAX_REMAINING_LENGTH)
        return -1;
    if (put_header(out, first, (uint32_t)remaining) < 0 || buf_append_u16(out, packet_id) < 0)
        goto fail;
    for (uint32_t i = 0; i < count; i++) {
        if (put_bin(out, topics[i].filter.p, topics[i].filter.len) < 0)
            goto fail;
        if (with_qos && buf_append_u8(out, topics[i].qos) < 0)
            goto fail;
    }
    return 0;
fail:
    out->len = start;
    return -1;
}

int mqtt_encode_subscribe(struct buf *out, uint16_t packet_id, const struct mqtt_topic_req *topics,
                          uint32_t count)
{
    return encode_topic_list(out, MQTT_SUBSCRIBE << 4 | 0x2, packet_id, topics, count, true);
}

int mqtt_encode_unsubscribe(struct buf *out, uint16_t packet_id,
                            const struct mqtt_topic_req *topics, uint32_t count)
{
    return encode_topic_list(out, MQTT_UNSUBSCRIBE << 4 | 0x2, packet_id, topics, count, false);
}

const char *mqtt_type_name(unsigned type)
{
    static const char *const names[] = {
        [MQTT_CONNECT] = "CONNECT",   [MQTT_CONNACK] = "CONNACK",
        [MQTT_PUBLISH] = "PUBLISH",   [MQTT_PUBACK] = "PUBACK",
        [MQTT_PUBREC] = "PUBREC",     [MQTT_PUBREL] = "PUBREL",
        [MQTT_PUBCOMP] = "PUBCOMP",   [MQTT_SUBSCRIBE] = "SUBSCRIBE",
        [MQTT_SUBACK] = "SUBACK",     [MQTT_UNSUBSCRIBE] = "UNSUBSCRIBE",
        [MQTT_UNSUBACK] = "UNSUBACK", [MQTT_PINGREQ] = "PINGREQ",
        [MQTT_PINGRESP] = "PINGRESP", [MQTT_DISCONNECT] = "DISCONNECT",
    };
    if (type >= sizeof names / sizeof names[0] || !names[type])
        return "RESERVED";
    return names[type];
}
