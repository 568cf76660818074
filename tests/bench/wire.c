/* The MQTT 3.1.1 packets mqbench's raw engine needs, and a growable buffer.
 *
 * Every control packet is a fixed header (type << 4 | flags, then the
 * remaining length as 1-4 bytes of 7 bits, least significant first), a
 * variable header and a payload:
 *
 *   CONNECT    10 len 00 04 'MQTT' 04 flags(02 = clean) keepalive(2) id(2+n)
 *   CONNACK    20 02 flags(01 = session present) code
 *   PUBLISH    3(dup qos retain) len topic(2+n) [id(2) if qos > 0] message
 *   PUBACK     40 02 id      PUBREC 50 02 id   PUBREL 62 02 id   PUBCOMP 70 02 id
 *   SUBSCRIBE  82 len id(2) filter(2+n) qos
 *   PINGREQ    c0 00         DISCONNECT e0 00
 *
 * The parser accepts only what a 3.1.1 broker may send to a client and
 * rejects the rest as malformed. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define WIRE_MAX_REMAINING 268435455u /* [MQTT-2.2.3] four length bytes */

int bbuf_reserve(struct bbuf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    bbuf_compact(b);
    if (b->cap - b->len >= n)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n)
        cap *= 2;
    unsigned char *d = realloc(b->data, cap);
    if (!d)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

void bbuf_compact(struct bbuf *b)
{
    if (b->off == 0)
        return;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}

void bbuf_free(struct bbuf *b)
{
    free(b->data);
    *b = (struct bbuf){0};
}

static unsigned char *wire_begin(struct bbuf *b, unsigned first, size_t remaining)
{
    if (remaining > WIRE_MAX_REMAINING || bbuf_reserve(b, remaining + 5) < 0)
        return NULL;
    unsigned char *p = b->data + b->len;
    *p++ = (unsigned char)first;
    do {
        unsigned char byte = remaining % 128;
        remaining /= 128;
        *p++ = (unsigned char)(byte | (remaining ? 0x80 : 0));
    } while (remaining);
    return p;
}

static unsigned char *put_u16(unsigned char *p, unsigned v)
{
    *p++ = (unsigned char)(v >> 8);
    *p++ = (unsigned char)v;
    return p;
}

static unsigned char *put_str(unsigned char *p, const char *s, size_t n)
{
    p = put_u16(p, (unsigned)n);
    memcpy(p, s, n);
    return p + n;
}

static void wire_end(struct bbuf *b, const unsigned char *end)
{
    b->len = (size_t)(end - b->data);
}

int wire_put_connect(struct bbuf *b, const char *client_id, int keepalive, bool clean)
{
    size_t idlen = strlen(client_id);
    unsigned char *p = idlen > 65535 ? NULL : wire_begin(b, 0x10, 10 + 2 + idlen);
    if (!p)
        return -1;
    p = put_str(p, "MQTT", 4);
    *p++ = 4;                   /* protocol level 3.1.1 [MQTT-3.1.2-2] */
    *p++ = clean ? 0x02 : 0x00; /* [MQTT-3.1.2-4] cleanSession flag */
    p = put_u16(p, (unsigned)keepalive);
    p = put_str(p, client_id, idlen);
    wire_end(b, p);
    return 0;
}

int wire_put_subscribe(struct bbuf *b, uint16_t id, const char *filter, int qos)
{
    size_t n = strlen(filter);
    /* [MQTT-3.8.1-1] SUBSCRIBE fixed header flags are 0010 */
    unsigned char *p = n > 65535 ? NULL : wire_begin(b, 0x82, 2 + 2 + n + 1);
    if (!p)
        return -1;
    p = put_u16(p, id);
    p = put_str(p, filter, n);
    *p++ = (unsigned char)qos;
    wire_end(b, p);
    return 0;
}

int wire_put_publish(struct bbuf *b, const char *topic, uint16_t id, int qos, const void *payload,
                     size_t payload_len)
{
    size_t n = strlen(topic);
    size_t remaining = 2 + n + (qos ? 2 : 0) + payload_len;
    unsigned char *p = n > 65535 ? NULL : wire_begin(b, 0x30u | (unsigned)qos << 1, remaining);
    if (!p)
        return -1;
    p = put_str(p, topic, n);
    if (qos)
        p = put_u16(p, id);
    memcpy(p, payload, payload_len);
    wire_end(b, p + payload_len);
    return 0;
}

int wire_put_ack(struct bbuf *b, int type, uint16_t id)
{
    /* [MQTT-3.6.1-1] PUBREL fixed header flags are 0010 */
    unsigned first = (unsigned)type << 4 | (type == WIRE_PUBREL ? 0x02 : 0);
    unsigned char *p = wire_begin(b, first, 2);
    if (!p)
        return -1;
    wire_end(b, put_u16(p, id));
    return 0;
}

int wire_put_simple(struct bbuf *b, int type)
{
    unsigned char *p = wire_begin(b, (unsigned)type << 4, 0);
    if (!p)
        return -1;
    wire_end(b, p);
    return 0;
}

static unsigned get_u16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* Decodes the variable header and payload of a PUBLISH. */
static int wire_parse_publish(const unsigned char *p, size_t n, unsigned flags,
                              struct wire_packet *out)
{
    out->qos = (int)(flags >> 1) & 3;
    if (out->qos == 3 || n < 2) /* [MQTT-3.3.1-4] */
        return -1;
    size_t at = 2 + get_u16(p);
    if (out->qos) {
        if (at + 2 > n)
            return -1;
        out->id = (uint16_t)get_u16(p + at);
        at += 2;
    }
    if (at > n)
        return -1;
    out->payload = p + at;
    out->payload_len = n - at;
    return 0;
}

long wire_parse(const unsigned char *p, size_t len, struct wire_packet *out)
{
    size_t remaining = 0, hdr = 1;
    unsigned shift = 0;

    if (len < 2)
        return 0;
    for (;;) {
        if (hdr >= len)
            return 0;
        unsigned char byte = p[hdr++];
        remaining |= (size_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            break;
        shift += 7;
        if (hdr > 4) /* [MQTT-2.2.3] at most four length bytes */
            return -1;
    }
    if (len - hdr < remaining)
        return 0;
    *out = (struct wire_packet){.type = p[0] >> 4};
    const unsigned char *v = p + hdr;
    unsigned flags = p[0] & 0x0f;
    switch (out->type) {
    case WIRE_PUBLISH:
        if (wire_parse_publish(v, remaining, flags, out) < 0)
            return -1;
        break;
    case WIRE_CONNACK:
        /* bits 7-1 of the acknowledge flags are reserved, 0 (section 3.2.2.1) */
        if (remaining != 2 || flags || (v[0] & 0xfe))
            return -1;
        out->present = v[0] & 1; /* [MQTT-3.2.2-2] */
        out->code = v[1];
        break;
    case WIRE_SUBACK:
        if (remaining < 3 || flags)
            return -1;
        out->id = (uint16_t)get_u16(v);
        out->code = v[2];
        break;
    case WIRE_PUBACK:
    case WIRE_PUBREC:
    case WIRE_PUBREL:
    case WIRE_PUBCOMP:
        if (remaining != 2 || flags != (out->type == WIRE_PUBREL ? 2u : 0u))
            return -1;
        out->id = (uint16_t)get_u16(v);
        break;
    case WIRE_PINGRESP:
        if (remaining != 0)
            return -1;
        break;
    default:
        return -1; /* not a packet a server sends to a client */
    }
    return (long)(hdr + remaining);
}
