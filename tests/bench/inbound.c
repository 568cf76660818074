/* mqbench's inbound modes (scripts/bench-inbound):
 *
 *   --count-only: N MQTT 3.1.1 clients (clean session) that receive the
 *     records of an inbound rule and acknowledge QoS 1/2 PUBLISHes. They
 *     subscribe to --sub-topic at QoS 1 (every client gets every record), or
 *     with --p2p not at all (P2P targets receive without a subscription:
 *     client <prefix>t<i> gets the records whose sequence number s has
 *     s % N == i). Idle clients send PINGREQ (keep-alive --keepalive).
 *
 *     Each payload starts with the record's sequence number in decimal
 *     (0 .. --expect - 1, written by the producers: --produce-kafka,
 *     scripts/bench-inbound's Redis and PostgreSQL writers). A client
 *     checks, per lane (s % --lanes: a Kafka partition when the producer
 *     writes record s to partition s % P), that the numbers only grow, and
 *     a bitmap per client (one shared for --p2p, where every record has one
 *     receiver) tells the duplicates and, at the end, the missing ones.
 *
 *     Prints "ready EPOCH N" once connected, "sample EPOCH RECEIVED
 *     DISTINCT" once a second, "done FIRST LAST DISTINCT RATE" when every
 *     expected record arrived, then (after --linger seconds more, counting
 *     late duplicates) "check received=.. distinct=.. duplicates=..
 *     missing=.. out_of_order=.. misrouted=.. malformed=..". Exit 0 when all
 *     arrived with none out of order, misrouted or malformed (duplicates are
 *     allowed: at least once); 1 otherwise (a timeout, a lost connection).
 *   --produce-kafka BROKERS TOPIC N: writes N records of --size bytes, the
 *     payload starting with the sequence number, with the headers of an
 *     inbound rule (mqttSecondTopic bench, qoslevel 1 and, with
 *     --p2p-targets K, clientId <id-prefix>t<s % K>) through librdkafka;
 *     with --partitions P record s goes to partition s % P.
 *
 * One thread, one epoll loop; a client's socket is blocking while it
 * connects and subscribes, then non-blocking (a write that finds the
 * socket full waits for it with poll()). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "inbound.h"

/* The sequence number's width in the payload: "%011ld " (12 bytes). */
#define INB_SEQ_WIDTH 11
#define INB_MIN_SIZE (INB_SEQ_WIDTH + 1)
#define INB_IN_SIZE 32768

struct inb_opts {
    const char *host;
    int port;
    int subscribers;
    const char *id_prefix;
    const char *sub_topic;
    bool p2p;
    long expect;
    int timeout_s;
    int linger_s;
    int keepalive;
    int lanes;
    int size;
    int p2p_targets;
    int partitions;
    const char *brokers; /* --produce-kafka */
    const char *topic;
    long produce_n;
};

/* What the clients saw (one for all of them). */
struct inb_tally {
    long received, distinct, duplicates, out_of_order, misrouted, malformed;
};

struct inb_client {
    int fd;
    int index;      /* i of <prefix>s<i> / <prefix>t<i> */
    double last_tx; /* when this client last sent a packet (keep-alive) */
    uint8_t *seen;  /* bitmap of sequence numbers; shared with --p2p */
    long *last_seq; /* per lane, -1 before the first */
    uint8_t in[INB_IN_SIZE];
    size_t in_len;
    /* the PUBACKs of one read: at most one per 7 bytes of input (the
     * smallest PUBLISH with a packet id) */
    uint8_t out[4 * (INB_IN_SIZE / 7 + 1)];
    size_t out_len;
};

static double inb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Appends an MQTT remaining length to p; returns the bytes written. */
static size_t inb_put_len(uint8_t *p, size_t len)
{
    size_t n = 0;
    do {
        uint8_t b = (uint8_t)(len % 128);
        len /= 128;
        p[n++] = (uint8_t)(len ? b | 128 : b);
    } while (len);
    return n;
}

static size_t inb_put_str(uint8_t *p, const char *s)
{
    size_t len = strlen(s);
    p[0] = (uint8_t)(len >> 8);
    p[1] = (uint8_t)len;
    memcpy(p + 2, s, len);
    return len + 2;
}

/* Writes all of p; a non-blocking socket that is full is waited for (up to
 * 10 s: a broker that reads nothing for that long is gone). */
static int inb_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            if (poll(&pf, 1, 10000) <= 0)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads exactly len bytes (blocking socket). */
static int inb_read_all(int fd, uint8_t *p, size_t len)
{
    while (len) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Connects client id with clean session 1 and, unless p2p, subscribes to
 * filter at QoS 1; returns the socket, non-blocking, or -1. */
static int inb_client_open(const struct inb_opts *o, const char *id)
{
    uint8_t pkt[600], var[560], ack[5];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    int one = 1;
    if (inet_pton(AF_INET, o->host, &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        goto fail;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t v = inb_put_str(var, "MQTT");
    var[v++] = 4;    /* protocol level 3.1.1 */
    var[v++] = 0x02; /* clean session */
    var[v++] = (uint8_t)(o->keepalive >> 8);
    var[v++] = (uint8_t)o->keepalive;
    v += inb_put_str(var + v, id);
    size_t n = 0;
    pkt[n++] = 0x10;
    n += inb_put_len(pkt + n, v);
    memcpy(pkt + n, var, v);
    if (inb_write_all(fd, pkt, n + v) < 0 || inb_read_all(fd, ack, 4) < 0 || ack[0] != 0x20 ||
        ack[3] != 0)
        goto fail;
    if (!o->p2p) {
        v = 0;
        var[v++] = 0;
        var[v++] = 1; /* packet id */
        v += inb_put_str(var + v, o->sub_topic);
        var[v++] = 1; /* QoS 1 */
        n = 0;
        pkt[n++] = 0x82;
        n += inb_put_len(pkt + n, v);
        memcpy(pkt + n, var, v);
        if (inb_write_all(fd, pkt, n + v) < 0 || inb_read_all(fd, ack, 5) < 0 || ack[0] != 0x90 ||
            ack[4] > 2)
            goto fail;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
fail:
    close(fd);
    return -1;
}

/* The sequence number at the start of a payload, or -1. */
static long inb_seq(const uint8_t *p, size_t len)
{
    long s = 0;
    size_t i = 0;
    while (i < len && i < 18 && p[i] >= '0' && p[i] <= '9')
        s = s * 10 + (p[i++] - '0');
    return i ? s : -1;
}

/* One record arrived at client c: the checks. */
static void inb_check(const struct inb_opts *o, struct inb_client *c, struct inb_tally *t,
                      const uint8_t *payload, size_t len)
{
    long s = inb_seq(payload, len);
    t->received++;
    if (s < 0 || s >= o->expect) {
        t->malformed++;
        return;
    }
    if (o->p2p && s % o->subscribers != c->index)
        t->misrouted++;
    uint8_t bit = (uint8_t)(1u << (s & 7));
    if (c->seen[s >> 3] & bit) {
        t->duplicates++;
        return;
    }
    c->seen[s >> 3] |= bit;
    t->distinct++;
    long *last = &c->last_seq[s % o->lanes];
    if (s < *last)
        t->out_of_order++;
    else
        *last = s;
}

/* Checks the complete PUBLISHes in c->in, queues their PUBACKs (PUBRECs)
 * and keeps an incomplete packet for later. PINGRESP and the rest are
 * skipped. */
static void inb_client_parse(const struct inb_opts *o, struct inb_client *c, struct inb_tally *t)
{
    size_t pos = 0;
    while (pos + 2 <= c->in_len) {
        size_t len = 0, mult = 1, i = pos + 1;
        bool done = false;
        while (i < c->in_len && i < pos + 5) {
            len += (c->in[i] & 127u) * mult;
            mult *= 128;
            if (!(c->in[i++] & 128u)) {
                done = true;
                break;
            }
        }
        if (!done || i + len > c->in_len)
            break;
        uint8_t type = c->in[pos] >> 4, qos = (c->in[pos] >> 1) & 3u;
        if (type == 3 && len >= 2) {
            size_t tlen = ((size_t)c->in[i] << 8) | c->in[i + 1];
            size_t head = 2 + tlen + (qos ? 2 : 0);
            if (head > len) {
                t->received++;
                t->malformed++;
            } else {
                inb_check(o, c, t, c->in + i + head, len - head);
            }
            if (qos > 0 && head <= len) {
                const uint8_t *pid = c->in + i + 2 + tlen;
                uint8_t ack[4] = {qos == 1 ? 0x40 : 0x50, 2, pid[0], pid[1]};
                memcpy(c->out + c->out_len, ack, 4);
                c->out_len += 4;
            }
        }
        pos = i + len;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

/* Reads what the socket holds and writes the acks; -1 when the connection
 * is gone. */
static int inb_client_service(const struct inb_opts *o, struct inb_client *c, struct inb_tally *t,
                              double now)
{
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
        if (r == 0) {
            fprintf(stderr, "mqbench: connection closed by the broker (%zu bytes buffered)\n",
                    c->in_len);
            return -1;
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            perror("mqbench: read");
            return -1;
        }
        c->in_len += (size_t)r;
        inb_client_parse(o, c, t);
        if (c->in_len == sizeof c->in) {
            fprintf(stderr, "mqbench: a packet larger than %zu bytes\n", sizeof c->in);
            return -1;
        }
        if (c->out_len) {
            if (inb_write_all(c->fd, c->out, c->out_len) < 0) {
                perror("mqbench: write");
                return -1;
            }
            c->out_len = 0;
            c->last_tx = now;
        }
    }
}

/* PINGREQ from the clients that sent nothing for half the keep-alive. */
static int inb_keepalive(const struct inb_opts *o, struct inb_client *cs, double now)
{
    static const uint8_t ping[2] = {0xc0, 0};
    for (int i = 0; i < o->subscribers; i++) {
        if (now - cs[i].last_tx < o->keepalive / 2.0)
            continue;
        if (inb_write_all(cs[i].fd, ping, sizeof ping) < 0) {
            perror("mqbench: PINGREQ");
            return -1;
        }
        cs[i].last_tx = now;
    }
    return 0;
}

/* Serves every client for up to ms; -1 when a connection is gone. */
static int inb_poll(const struct inb_opts *o, int ep, struct inb_client *cs, struct inb_tally *t,
                    int ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, ms);
    double now = inb_now();
    for (int i = 0; i < n; i++)
        if (inb_client_service(o, evs[i].data.ptr, t, now) < 0)
            return -1;
    return 0;
}

static int inb_count(const struct inb_opts *o)
{
    struct inb_client *cs = calloc((size_t)o->subscribers, sizeof *cs);
    size_t bits = ((size_t)o->expect + 7) / 8;
    int nmaps = o->p2p ? 1 : o->subscribers;
    uint8_t *seen = calloc((size_t)nmaps, bits);
    long *lasts = malloc((size_t)o->subscribers * (size_t)o->lanes * sizeof *lasts);
    int ep = epoll_create1(0), status = 1;
    long want = o->p2p ? o->expect : o->expect * o->subscribers;
    struct inb_tally t = {0};
    if (!cs || !seen || !lasts || ep < 0) {
        fprintf(stderr, "mqbench: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < (size_t)o->subscribers * (size_t)o->lanes; i++)
        lasts[i] = -1;
    double start = inb_now();
    for (int i = 0; i < o->subscribers; i++) {
        char id[256];
        snprintf(id, sizeof id, "%s%s%d", o->id_prefix, o->p2p ? "t" : "s", i);
        cs[i].index = i;
        cs[i].seen = seen + (o->p2p ? 0 : (size_t)i * bits);
        cs[i].last_seq = lasts + (size_t)i * (size_t)o->lanes;
        cs[i].last_tx = inb_now();
        cs[i].fd = inb_client_open(o, id);
        if (cs[i].fd < 0) {
            fprintf(stderr, "mqbench: client %s could not connect/subscribe\n", id);
            goto done;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    start = inb_now();
    double next = start + 1, first = 0, last = 0, lingering = 0;
    printf("ready %.6f %d\n", start, o->subscribers);
    fflush(stdout);
    for (;;) {
        long before = t.received;
        if (inb_poll(o, ep, cs, &t, 100) < 0) {
            fprintf(stderr, "mqbench: a client lost its connection\n");
            goto done;
        }
        double now = inb_now();
        if (t.received > before) {
            if (first == 0)
                first = now;
            if (!lingering)
                last = now;
        }
        if (!lingering && t.distinct >= want) {
            printf("done %.6f %.6f %ld %.0f\n", first, last, t.distinct,
                   last > first ? (double)t.distinct / (last - first) : 0.0);
            fflush(stdout);
            lingering = now;
        }
        if (lingering && now - lingering >= o->linger_s)
            break;
        if (now >= next) {
            if (inb_keepalive(o, cs, now) < 0)
                goto done;
            printf("sample %.3f %ld %ld\n", now, t.received, t.distinct);
            fflush(stdout);
            next += 1;
        }
        if (!lingering && now - start > o->timeout_s) {
            fprintf(stderr, "mqbench: timeout: %ld of %ld records received\n", t.distinct, want);
            goto done;
        }
    }
    status = t.out_of_order || t.misrouted || t.malformed ? 1 : 0;
done:
    if (cs) {
        printf("check received=%ld distinct=%ld duplicates=%ld missing=%ld out_of_order=%ld "
               "misrouted=%ld malformed=%ld\n",
               t.received, t.distinct, t.duplicates, want - t.distinct, t.out_of_order, t.misrouted,
               t.malformed);
        if (status)
            printf("failed %ld\n", t.distinct);
        for (int i = 0; i < o->subscribers; i++)
            if (cs[i].fd > 0)
                close(cs[i].fd);
    }
    free(cs);
    free(seen);
    free(lasts);
    if (ep >= 0)
        close(ep);
    return status;
}

/* Delivery reports: what Kafka acknowledged, what failed. */
struct inb_dr_count {
    long acked, failed;
};

static void inb_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct inb_dr_count *c = opaque;
    if (m->err)
        c->failed++;
    else
        c->acked++;
}

/* "progress EPOCH ACKED" at most every 0.25 s (the benchmark's "written"). */
static void inb_progress(const struct inb_dr_count *c, double *next)
{
    double now = inb_now();
    if (now < *next)
        return;
    printf("progress %.3f %ld\n", now, c->acked);
    fflush(stdout);
    *next = now + 0.25;
}

/* The receivers' sequence number at the start of a payload: s in
 * INB_SEQ_WIDTH decimal digits and a space. */
static void inb_put_seq(char *p, long s)
{
    for (int i = INB_SEQ_WIDTH - 1; i >= 0; i--, s /= 10)
        p[i] = (char)('0' + s % 10);
    p[INB_SEQ_WIDTH] = ' ';
}

static int inb_produce_kafka(const struct inb_opts *o)
{
    char err[512];
    struct inb_dr_count dr = {0};
    long failed = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", o->brokers},
                           {"linger.ms", "5"},
                           {"batch.num.messages", "10000"},
                           {"queue.buffering.max.messages", "1000000"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof err) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "mqbench: %s\n", err);
            rd_kafka_conf_destroy(conf);
            return 1;
        }
    rd_kafka_conf_set_dr_msg_cb(conf, inb_dr);
    rd_kafka_conf_set_opaque(conf, &dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "mqbench: %s\n", err);
        return 1;
    }
    char *payload = malloc((size_t)o->size + 1);
    if (!payload) {
        rd_kafka_destroy(rk);
        return 1;
    }
    memset(payload, 'x', (size_t)o->size);
    double t0 = inb_now(), next = t0;
    for (long i = 0; i < o->produce_n; i++) {
        char cid[256];
        inb_put_seq(payload, i);
        rd_kafka_headers_t *h = rd_kafka_headers_new(3);
        rd_kafka_header_add(h, "mqttSecondTopic", -1, "bench", -1);
        rd_kafka_header_add(h, "qoslevel", -1, "1", -1);
        if (o->p2p_targets > 0) {
            snprintf(cid, sizeof cid, "%st%ld", o->id_prefix, i % o->p2p_targets);
            rd_kafka_header_add(h, "clientId", -1, cid, -1);
        }
        int32_t part = o->partitions > 0 ? (int32_t)(i % o->partitions) : RD_KAFKA_PARTITION_UA;
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_PARTITION(part),
                                      RD_KAFKA_V_VALUE(payload, (size_t)o->size),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        if (e) {
            rd_kafka_headers_destroy(h);
            failed++;
        }
        rd_kafka_poll(rk, 0);
        if ((i & 1023) == 0)
            inb_progress(&dr, &next);
    }
    for (int i = 0; i < 600 && rd_kafka_outq_len(rk) > 0; i++) {
        rd_kafka_flush(rk, 100);
        inb_progress(&dr, &next);
    }
    double t1 = inb_now();
    failed += dr.failed + rd_kafka_outq_len(rk);
    printf("progress %.3f %ld\n", t1, dr.acked);
    printf("produced %ld in %.3f s (%.0f/s), %ld failed\n", o->produce_n, t1 - t0,
           (double)o->produce_n / (t1 - t0), failed);
    free(payload);
    rd_kafka_destroy(rk);
    return failed ? 1 : 0;
}

static const char inb_usage[] =
    "mqbench inbound modes:\n"
    "  --count-only --subscribers N --expect M [--sub-topic F | --p2p] [--id-prefix S]\n"
    "      [--lanes P] [--keepalive SEC] [--linger SEC] [--host H] [--port P] [--timeout S]\n"
    "      N clients <S>s<i> (or P2P targets <S>t<i>) receive records 0..M-1 (the number\n"
    "      leads the payload): order per lane (s % P), duplicates, missing; prints\n"
    "      'sample EPOCH RECEIVED DISTINCT' each second, 'done FIRST LAST N RATE' and\n"
    "      'check ...'\n"
    "  --produce-kafka BROKERS TOPIC N [--size B] [--p2p-targets K] [--partitions P]\n"
    "      [--id-prefix S]\n"
    "      N records, payload '<s, 11 digits> xxx...', headers mqttSecondTopic=bench,\n"
    "      qoslevel=1 (clientId <S>t<s%K>), record s to partition s % P\n";

bool inbound_wanted(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--count-only") || !strcmp(argv[i], "--produce-kafka"))
            return true;
    return false;
}

/* A whole number in min..max, or exit with the usage. */
static bool inb_int(const char *name, const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, "mqbench: --%s: '%s' is not a number in %ld..%ld\n", name, text, min, max);
        return false;
    }
    *out = v;
    return true;
}

int inbound_main(int argc, char **argv)
{
    struct inb_opts o = {.host = "127.0.0.1",
                         .port = 1883,
                         .subscribers = 1,
                         .id_prefix = "GID_bench@@@",
                         .sub_topic = "Commands/#",
                         .timeout_s = 240,
                         .keepalive = 60,
                         .lanes = 1,
                         .size = 64};
    static const struct option lo[] = {{"count-only", no_argument, NULL, 'c'},
                                       {"produce-kafka", required_argument, NULL, 'k'},
                                       {"host", required_argument, NULL, 'h'},
                                       {"port", required_argument, NULL, 'p'},
                                       {"subscribers", required_argument, NULL, 'n'},
                                       {"id-prefix", required_argument, NULL, 'i'},
                                       {"sub-topic", required_argument, NULL, 't'},
                                       {"p2p", no_argument, NULL, '2'},
                                       {"expect", required_argument, NULL, 'e'},
                                       {"timeout", required_argument, NULL, 'T'},
                                       {"linger", required_argument, NULL, 'L'},
                                       {"keepalive", required_argument, NULL, 'A'},
                                       {"lanes", required_argument, NULL, 'l'},
                                       {"size", required_argument, NULL, 's'},
                                       {"p2p-targets", required_argument, NULL, 'K'},
                                       {"partitions", required_argument, NULL, 'P'},
                                       {NULL, 0, NULL, 0}};
    int ch;
    long v = 0;
    bool ok = true;
    optind = 1;
    while (ok && (ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'c':
            break;
        case 'k':
            o.brokers = optarg;
            break;
        case 'h':
            o.host = optarg;
            break;
        case 'i':
            o.id_prefix = optarg;
            break;
        case 't':
            o.sub_topic = optarg;
            break;
        case '2':
            o.p2p = true;
            break;
        case 'p':
            ok = inb_int("port", optarg, 1, 65535, &v);
            o.port = (int)v;
            break;
        case 'n':
            ok = inb_int("subscribers", optarg, 1, 100000, &v);
            o.subscribers = (int)v;
            break;
        case 'e':
            ok = inb_int("expect", optarg, 1, 1000000000L, &v);
            o.expect = v;
            break;
        case 'T':
            ok = inb_int("timeout", optarg, 1, 86400, &v);
            o.timeout_s = (int)v;
            break;
        case 'L':
            ok = inb_int("linger", optarg, 0, 3600, &v);
            o.linger_s = (int)v;
            break;
        case 'A':
            ok = inb_int("keepalive", optarg, 2, 65535, &v);
            o.keepalive = (int)v;
            break;
        case 'l':
            ok = inb_int("lanes", optarg, 1, 10000, &v);
            o.lanes = (int)v;
            break;
        case 's':
            ok = inb_int("size", optarg, INB_MIN_SIZE, 65536, &v);
            o.size = (int)v;
            break;
        case 'K':
            ok = inb_int("p2p-targets", optarg, 0, 100000, &v);
            o.p2p_targets = (int)v;
            break;
        case 'P':
            ok = inb_int("partitions", optarg, 0, 100000, &v);
            o.partitions = (int)v;
            break;
        default:
            ok = false;
        }
    }
    if (!ok) {
        fputs(inb_usage, stderr);
        return 2;
    }
    if (o.brokers) {
        if (optind + 2 != argc ||
            !inb_int("produce-kafka N", argv[optind + 1], 1, 1000000000L, &o.produce_n)) {
            fputs(inb_usage, stderr);
            return 2;
        }
        o.topic = argv[optind];
        return inb_produce_kafka(&o);
    }
    if (optind != argc || o.expect < 1) {
        fputs(inb_usage, stderr);
        return 2;
    }
    return inb_count(&o);
}
