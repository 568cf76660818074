/* Connections: accept, read and frame packets, dispatch, buffered writes,
 * close. Output is encoded into conn->out and written once per loop
 * iteration by broker_flush(), after the store committed, so that no
 * acknowledgement leaves before the state it acknowledges is stored. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "broker_internal.h"

static void on_conn_closed(uv_handle_t *h);

static void conn_peer_name(struct conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct conn *c = h->data;
    /* One shared buffer: libuv calls read right after alloc, one at a time.
     * Idle connections therefore cost no read buffer. */
    out->base = (char *)c->b->rbuf;
    out->len = sizeof c->b->rbuf;
}

/* Decode and dispatch one complete packet. -1 closes the connection. */
static int conn_dispatch(struct conn *c, const uint8_t *data, size_t len)
{
    struct mqtt_packet p;
    int rc = mqtt_decode(data, len, &p);
    if (rc == PKT_ERR_PROTOCOL && c->state == CONN_NEW) {
        /* [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01, close */
        log_notice("%s: connection refused (CONNACK 0x01): unsupported protocol level %u", c->peer,
                   p.u.connect.protocol_level);
        c->b->stats.connect_bad_protocol++;
        mqtt_encode_connack(&c->out, false, MQTT_CONNACK_BAD_PROTOCOL);
        conn_want_flush(c);
        return -1;
    }
    if (rc != PKT_OK) {
        c->b->stats.malformed_packets++;
        log_info("%s: malformed %s packet", c->peer, mqtt_type_name(data[0] >> 4));
        return -1;
    }
    if (c->state == CONN_NEW && p.type != MQTT_CONNECT) {
        /* [MQTT-3.1.0-1] the first packet must be CONNECT */
        log_info("%s: %s before CONNECT", c->peer, mqtt_type_name(p.type));
        mqtt_packet_clear(&p);
        return -1;
    }
    switch (p.type) {
    case MQTT_CONNECT:
        rc = handle_connect(c, &p.u.connect);
        break;
    case MQTT_PUBLISH:
        rc = handle_publish(c, &p.u.publish);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
        rc = handle_puback(c, p.type, p.u.packet_id);
        break;
    case MQTT_PUBREL:
        rc = handle_pubrel(c, p.u.packet_id);
        break;
    case MQTT_SUBSCRIBE:
        rc = handle_subscribe(c, &p.u.subscribe);
        break;
    case MQTT_UNSUBSCRIBE:
        rc = handle_unsubscribe(c, &p.u.subscribe);
        break;
    case MQTT_PINGREQ:
        rc = mqtt_encode_pingresp(&c->out);
        conn_want_flush(c);
        break;
    case MQTT_DISCONNECT:
        /* [MQTT-3.14.4-3] the will is discarded */
        c->clean_disconnect = true;
        broker_client_event(c->b, c, CLIENT_DISCONNECT);
        conn_close(c, "client sent DISCONNECT", false);
        rc = 0;
        break;
    default:
        /* CONNACK, SUBACK, UNSUBACK, PINGRESP go server -> client only */
        log_info("%s: unexpected %s from a client", c->peer, mqtt_type_name(p.type));
        rc = -1;
    }
    mqtt_packet_clear(&p);
    return rc;
}

/* Frame packets in data[0..len); returns bytes consumed, or -1 to close. */
static ssize_t conn_parse(struct conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && c->state != CONN_CLOSING) {
        uint8_t first;
        uint32_t remaining;
        size_t hlen;
        int rc = mqtt_fixed_header(data + off, len - off, &first, &remaining, &hlen);
        if (rc == PKT_NEED_MORE)
            break;
        if (rc != PKT_OK) {
            c->b->stats.malformed_packets++;
            log_info("%s: malformed remaining length", c->peer);
            return -1;
        }
        uint64_t total = (uint64_t)hlen + remaining;
        if (total > c->b->cfg.limits.max_packet_size) {
            log_info("%s: %s of %" PRIu64 " bytes exceeds max_packet_size %" PRIu32, c->peer,
                     mqtt_type_name(first >> 4), total, c->b->cfg.limits.max_packet_size);
            return -1;
        }
        if (total > len - off)
            break;
        if (conn_dispatch(c, data + off, (size_t)total) < 0)
            return -1;
        off += (size_t)total;
    }
    return (ssize_t)off;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *rb)
{
    struct conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread),
                   true);
        return;
    }
    c->last_recv_ms = uv_now(c->b->loop);
    c->b->stats.bytes_received += (uint64_t)nread;
    const uint8_t *data = (const uint8_t *)rb->base;
    size_t len = (size_t)nread;
    if (c->in.len) {
        /* Continue a packet that started in an earlier read. */
        if (buf_append(&c->in, data, len) < 0) {
            conn_close(c, "out of memory", true);
            return;
        }
        data = c->in.data;
        len = c->in.len;
    }
    ssize_t used = conn_parse(c, data, len);
    if (used < 0) {
        conn_close(c, "protocol error", true);
        return;
    }
    if (c->state == CONN_CLOSING)
        return;
    if (c->in.len) {
        buf_consume(&c->in, (size_t)used);
        if (c->in.len == 0)
            buf_free(&c->in); /* idle connections keep no buffer */
    } else if ((size_t)used < len && buf_append(&c->in, data + used, len - (size_t)used) < 0) {
        conn_close(c, "out of memory", true);
    }
}

void conn_on_accept(uv_stream_t *server, int status)
{
    struct listener *ls = server->data;
    struct broker *b = ls->b;
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        log_error("accept: out of memory");
        return;
    }
    uv_tcp_init(b->loop, &c->tcp);
    c->tcp.data = c;
    c->b = b;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_peer_name(c);
    c->channel = ++b->next_channel;
    c->last_recv_ms = uv_now(b->loop);
    c->next = b->conns;
    if (b->conns)
        b->conns->prev = c;
    b->conns = c;
    b->stats.connections_current++;
    b->stats.connections_total++;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    log_debug("%s: connected", c->peer);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    buf_free(&c->in);
    buf_free(&c->out);
    message_unref(c->will);
    free(c);
}

/* Detach the session: clean sessions end with their connection
 * [MQTT-3.1.2-6]; persistent ones stay for the next connection. */
static void conn_detach_session(struct conn *c)
{
    struct session *s = c->session;
    struct broker *b = c->b;
    c->session = NULL;
    if (!s || s->owner != c)
        return;
    s->owner = NULL;
    session_set_offline(s);
    b->room_gen++; /* an offline session no longer holds injection back */
    if (s->clean_session) {
        broker_session_destroy(b, s);
    } else if (b->store) {
        uv_timeval64_t tv;
        uv_gettimeofday(&tv);
        store_session_put(b->store, s->client_id, tv.tv_sec * 1000 + tv.tv_usec / 1000);
    }
}

void conn_close(struct conn *c, const char *reason, bool publish_will)
{
    if (c->state == CONN_CLOSING)
        return;
    struct broker *b = c->b;
    bool was_active = c->state == CONN_ACTIVE;
    c->state = CONN_CLOSING;
    log_info("%s%s%s: closing: %s", c->peer, c->session ? " " : "",
             c->session ? c->session->client_id : "", reason);
    struct message *will = c->will;
    c->will = NULL;
    if (was_active)
        broker_client_event(b, c, CLIENT_TCPCLEAN);
    /* The will is published on behalf of its client (rules see its id). */
    char *owner = will && c->session ? strdup(c->session->client_id) : NULL;
    conn_detach_session(c);
    if (was_active && will && publish_will && !c->clean_disconnect) {
        will->id = broker_next_message_id(b);
        will->time_ms = broker_message_id_time(will->id);
        broker_route(b, will, owner ? owner : "");
    }
    free(owner);
    message_unref(will);
    if (c->prev)
        c->prev->next = c->next;
    else
        b->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    b->stats.connections_current--;
    /* Whatever is still unwritten (a CONNACK refusal, a last PUBACK) goes
     * out first; uv_close after a write would cut it. */
    if (c->out.len && !c->writing)
        uv_try_write((uv_stream_t *)&c->tcp,
                     &(uv_buf_t){.base = (char *)c->out.data, .len = c->out.len}, 1);
    /* If c is in the flush list it stays valid until broker_flush pops it:
     * every close happens before the iteration's last flush, and libuv frees
     * handles only after it (the closing phase). */
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

void conn_want_flush(struct conn *c)
{
    if (c->in_flush_list || c->state == CONN_CLOSING)
        return;
    c->in_flush_list = true;
    c->flush_next = c->b->flush_head;
    c->b->flush_head = c;
}

void conn_send_ack(struct conn *c, enum mqtt_type type, uint16_t packet_id)
{
    if (mqtt_encode_ack(&c->out, type, packet_id) < 0)
        log_error("%s: out of memory encoding %s", c->peer, mqtt_type_name(type));
    conn_want_flush(c);
}

static void conn_write(struct conn *c);

/* A write the kernel could not take at once: the request and its bytes,
 * allocated only then (most connections never need one). */
struct pending_write {
    uv_write_t req;
    struct conn *c;
    struct buf data;
};

static void on_write_done(uv_write_t *req, int status)
{
    struct pending_write *pw = (struct pending_write *)req;
    struct conn *c = pw->c;
    buf_free(&pw->data);
    free(pw);
    c->writing = false;
    c->writing_bytes = 0;
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, uv_strerror(status), true);
        return;
    }
    if (c->out.len)
        conn_write(c);
}

static void conn_write(struct conn *c)
{
    if (c->writing || c->out.len == 0 || c->state == CONN_CLOSING)
        return;
    uv_buf_t ub = {.base = (char *)c->out.data, .len = c->out.len};
    int n = uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0) {
        conn_close(c, uv_strerror(n), true);
        return;
    }
    c->b->stats.bytes_sent += (uint64_t)n;
    if ((size_t)n == c->out.len) {
        buf_reset(&c->out);
        /* Idle connections keep no buffer; busy ones keep theirs (up to a
         * size) to avoid regrowing it every iteration. */
        if (c->out.cap <= 1024 || c->out.cap > 65536)
            buf_free(&c->out);
        return;
    }
    /* The kernel is full: hand the rest to libuv (the buffer moves to the
     * request) and keep encoding new output into c->out meanwhile. */
    struct pending_write *pw = malloc(sizeof *pw);
    if (!pw) {
        conn_close(c, "out of memory", true);
        return;
    }
    buf_consume(&c->out, (size_t)n);
    pw->c = c;
    pw->data = c->out;
    c->out = (struct buf){0};
    c->b->stats.bytes_sent += pw->data.len;
    ub.base = (char *)pw->data.data;
    ub.len = pw->data.len;
    c->writing = true;
    c->writing_bytes = pw->data.len;
    int rc = uv_write(&pw->req, (uv_stream_t *)&c->tcp, &ub, 1, on_write_done);
    if (rc < 0) {
        buf_free(&pw->data);
        free(pw);
        c->writing = false;
        c->writing_bytes = 0;
        conn_close(c, uv_strerror(rc), true);
    }
}

void broker_flush(struct broker *b)
{
    broker_offline_housekeeping(b);
    if (b->store && store_pending(b->store) && store_commit(b->store) < 0)
        log_error("store commit failed; acknowledgements are sent anyway");
    if (b->hooks.on_flush)
        b->hooks.on_flush(b->hooks.ctx);
    while (b->flush_head) {
        struct conn *c = b->flush_head;
        b->flush_head = c->flush_next;
        c->in_flush_list = false;
        c->flush_next = NULL;
        conn_write(c);
    }
}
