/* The raw socket MQTT client: it writes exactly the bytes a test asks for
 * (including malformed ones) and decodes what the server sends with its
 * own small decoder, independent of the broker's codec. See harness.h. */
#include "harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

int it_raw_open(struct it_raw *r, uint16_t port)
{
    memset(r, 0, sizeof *r);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (r->fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(r->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(r->fd);
        r->fd = -1;
        return -1;
    }
    return 0;
}

void it_raw_close(struct it_raw *r)
{
    if (!r)
        return;
    if (r->fd > 0)
        close(r->fd);
    r->fd = -1;
    buf_free(&r->rx);
}

void it_raw_shutdown(struct it_raw *r)
{
    shutdown(r->fd, SHUT_WR);
}

int it_raw_send(struct it_raw *r, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = send(r->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int it_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int it_raw_send_hex(struct it_raw *r, const char *hex)
{
    struct buf b = {0};
    int hi = -1, rc = -1;
    for (const char *s = hex; *s; s++) {
        if (*s == ' ')
            continue;
        int d = it_hex_digit(*s);
        if (d < 0)
            goto done;
        if (hi < 0) {
            hi = d;
            continue;
        }
        buf_append_u8(&b, (uint8_t)(hi << 4 | d));
        hi = -1;
    }
    if (hi < 0)
        rc = it_raw_send(r, b.data, b.len);
done:
    buf_free(&b);
    return rc;
}

/* ---- decoding what the server sends ---- */

static uint16_t it_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static int it_decode_publish(struct it_pkt *p)
{
    p->qos = (p->flags >> 1) & 3;
    p->dup = p->flags & 8;
    p->retain = p->flags & 1;
    if (p->qos == 3 || p->len < 2)
        return -1;
    uint16_t tl = it_be16(p->body);
    size_t off = 2u + tl + (p->qos ? 2u : 0u);
    if (off > p->len || tl >= sizeof p->topic)
        return -1;
    memcpy(p->topic, p->body + 2, tl);
    p->topic[tl] = '\0';
    if (p->qos)
        p->pid = it_be16(p->body + 2 + tl);
    p->payload = p->body + off;
    p->payload_len = p->len - (uint32_t)off;
    return 0;
}

/* Check the fixed-header flags the server must use [MQTT-2.2.2-1] and
 * fill the type-specific fields. 0 or -1. */
static int it_decode_body(struct it_pkt *p)
{
    switch (p->type) {
    case MQTT_CONNACK: /* [MQTT-3.2.2-1] flags bits 7-1 are reserved */
        if (p->flags || p->len != 2 || (p->body[0] & 0xfe))
            return -1;
        p->session_present = p->body[0] & 1;
        p->rc = p->body[1];
        return 0;
    case MQTT_PUBLISH:
        return it_decode_publish(p);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        if (p->flags || p->len != 2)
            return -1;
        p->pid = it_be16(p->body);
        return 0;
    case MQTT_PUBREL: /* [MQTT-3.6.1-1] */
        if (p->flags != 2 || p->len != 2)
            return -1;
        p->pid = it_be16(p->body);
        return 0;
    case MQTT_SUBACK:
        if (p->flags || p->len < 3)
            return -1;
        p->pid = it_be16(p->body);
        p->rcs = p->body + 2;
        p->rc_count = p->len - 2;
        for (uint32_t i = 0; i < p->rc_count; i++)
            if (p->rcs[i] > 2 && p->rcs[i] != 0x80) /* [MQTT-3.9.3-2] */
                return -1;
        return 0;
    case MQTT_PINGRESP:
        return p->flags || p->len ? -1 : 0;
    default: /* a client-to-server or reserved type */
        return -1;
    }
}

/* Take one complete packet off r->rx. 1 when taken, 0 when incomplete,
 * -1 when undecodable. */
static int it_raw_take(struct it_raw *r, struct it_pkt *p)
{
    const uint8_t *d = r->rx.data;
    uint32_t rl = 0;
    size_t i = 1;
    for (;; i++) {
        if (i >= r->rx.len)
            return 0;
        if (i > 4)
            return -1;
        rl |= (uint32_t)(d[i] & 0x7f) << (7 * (i - 1));
        if (!(d[i] & 0x80))
            break;
    }
    size_t total = i + 1 + rl;
    if (r->rx.len < total)
        return 0;
    memset(p, 0, sizeof *p);
    p->type = d[0] >> 4;
    p->flags = d[0] & 0x0f;
    p->len = rl;
    p->body = malloc(rl ? rl : 1);
    if (!p->body)
        return -1;
    memcpy(p->body, d + i + 1, rl);
    buf_consume(&r->rx, total);
    if (it_decode_body(p) != 0) {
        it_pkt_clear(p);
        return -1;
    }
    return 1;
}

void it_pkt_clear(struct it_pkt *p)
{
    if (!p)
        return;
    free(p->body);
    memset(p, 0, sizeof *p);
}

int it_raw_next(struct it_raw *r, struct it_pkt *out, int timeout_ms)
{
    struct it_pkt tmp;
    struct it_pkt *p = out ? out : &tmp;
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        int t = r->rx.len ? it_raw_take(r, p) : 0;
        if (t < 0)
            return IT_RAW_ERROR;
        if (t > 0) {
            int type = p->type;
            if (!out)
                it_pkt_clear(p);
            return type;
        }
        int64_t left = deadline - it_now_ms();
        struct pollfd pf = {.fd = r->fd, .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, (int)left) == 0)
            return IT_RAW_TIMEOUT;
        uint8_t chunk[8192];
        ssize_t n = recv(r->fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return IT_RAW_EOF;
        if (n < 0)
            return IT_RAW_ERROR;
        buf_append(&r->rx, chunk, (size_t)n);
    }
}

int it_raw_wait_eof(struct it_raw *r, int timeout_ms)
{
    int64_t deadline = it_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - it_now_ms();
        if (left <= 0)
            return IT_RAW_TIMEOUT;
        int t = it_raw_next(r, NULL, (int)left);
        if (t == IT_RAW_EOF || t == IT_RAW_TIMEOUT)
            return t;
        if (t == IT_RAW_ERROR)
            buf_reset(&r->rx); /* garbage before the close still counts as open */
    }
}

/* ---- encoding what the client sends ---- */

static void it_put_varint(struct buf *b, uint32_t v)
{
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        buf_append_u8(b, v ? byte | 0x80 : byte);
    } while (v);
}

static void it_put_str(struct buf *b, const char *s, size_t len)
{
    buf_append_u16(b, (uint16_t)len);
    buf_append(b, s, len);
}

/* Prefix body with the fixed header and send the whole packet. */
static int it_raw_send_packet(struct it_raw *r, uint8_t first, const struct buf *body)
{
    struct buf pkt = {0};
    buf_append_u8(&pkt, first);
    it_put_varint(&pkt, (uint32_t)body->len);
    buf_append(&pkt, body->data, body->len);
    int rc = it_raw_send(r, pkt.data, pkt.len);
    buf_free(&pkt);
    return rc;
}

int it_raw_send_connect(struct it_raw *r, const struct it_connect_opts *o)
{
    struct buf b = {0};
    uint8_t level = o->level ? o->level : 4;
    const char *name = level == 3 ? "MQIsdp" : "MQTT";
    uint8_t flags = o->clean ? 0x02 : 0x00;
    if (o->will_topic)
        flags |= 0x04 | (uint8_t)(o->will_qos << 3) | (o->will_retain ? 0x20 : 0);
    it_put_str(&b, name, strlen(name));
    buf_append_u8(&b, level);
    buf_append_u8(&b, flags);
    buf_append_u16(&b, o->keep_alive);
    const char *id = o->client_id ? o->client_id : "";
    it_put_str(&b, id, strlen(id));
    if (o->will_topic) {
        const char *wp = o->will_payload ? o->will_payload : "";
        it_put_str(&b, o->will_topic, strlen(o->will_topic));
        it_put_str(&b, wp, strlen(wp));
    }
    int rc = it_raw_send_packet(r, MQTT_CONNECT << 4, &b);
    buf_free(&b);
    return rc;
}

int it_raw_connect(struct it_raw *r, uint16_t port, const struct it_connect_opts *o, bool *sp)
{
    struct it_pkt p;
    if (it_raw_open(r, port) != 0 || it_raw_send_connect(r, o) != 0)
        return -1;
    if (it_raw_next(r, &p, IT_WAIT_MS) != MQTT_CONNACK)
        return -1;
    int rc = p.rc;
    if (sp)
        *sp = p.session_present;
    it_pkt_clear(&p);
    return rc;
}

int it_raw_publish(struct it_raw *r, const char *topic, const void *payload, size_t len,
                   uint8_t qos, bool retain, bool dup, uint16_t pid)
{
    struct buf b = {0};
    it_put_str(&b, topic, strlen(topic));
    if (qos)
        buf_append_u16(&b, pid);
    buf_append(&b, payload, len);
    uint8_t first = (uint8_t)(MQTT_PUBLISH << 4 | (dup ? 8 : 0) | qos << 1 | (retain ? 1 : 0));
    int rc = it_raw_send_packet(r, first, &b);
    buf_free(&b);
    return rc;
}

int it_raw_ack(struct it_raw *r, uint8_t type, uint16_t pid)
{
    uint8_t pkt[4] = {(uint8_t)(type << 4 | (type == MQTT_PUBREL ? 2 : 0)), 2, (uint8_t)(pid >> 8),
                      (uint8_t)pid};
    return it_raw_send(r, pkt, sizeof pkt);
}

int it_raw_subscribe(struct it_raw *r, uint16_t pid, const char *const *filters, const uint8_t *qos,
                     size_t n)
{
    struct buf b = {0};
    buf_append_u16(&b, pid);
    for (size_t i = 0; i < n; i++) {
        it_put_str(&b, filters[i], strlen(filters[i]));
        buf_append_u8(&b, qos[i]);
    }
    int rc = it_raw_send_packet(r, MQTT_SUBSCRIBE << 4 | 2, &b);
    buf_free(&b);
    return rc;
}

int it_raw_unsubscribe(struct it_raw *r, uint16_t pid, const char *const *filters, size_t n)
{
    struct buf b = {0};
    buf_append_u16(&b, pid);
    for (size_t i = 0; i < n; i++)
        it_put_str(&b, filters[i], strlen(filters[i]));
    int rc = it_raw_send_packet(r, MQTT_UNSUBSCRIBE << 4 | 2, &b);
    buf_free(&b);
    return rc;
}

int it_raw_pingreq(struct it_raw *r)
{
    return it_raw_send(r, "\xc0\x00", 2);
}

int it_raw_disconnect(struct it_raw *r)
{
    return it_raw_send(r, "\xe0\x00", 2);
}

int it_raw_sub1(struct it_raw *r, const char *filter, uint8_t qos)
{
    struct it_pkt p;
    if (it_raw_subscribe(r, 1, &filter, &qos, 1) != 0 ||
        it_raw_next(r, &p, IT_WAIT_MS) != MQTT_SUBACK)
        return -1;
    int granted = p.pid == 1 && p.rc_count == 1 ? p.rcs[0] : -1;
    it_pkt_clear(&p);
    return granted;
}

int it_raw_leave(struct it_raw *r)
{
    it_raw_disconnect(r);
    it_raw_shutdown(r);
    int rc = it_raw_wait_eof(r, IT_WAIT_MS) == IT_RAW_EOF ? 0 : -1;
    it_raw_close(r);
    return rc;
}
