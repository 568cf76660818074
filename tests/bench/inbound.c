/* mqbench's inbound modes (scripts/bench-inbound):
 *
 *   --count-only: N MQTT 3.1.1 clients (clean session) that only count the
 *     PUBLISHes they receive, whatever their payload, and acknowledge QoS 1
 *     ones; they subscribe to --sub-topic, or with --p2p not at all (P2P
 *     targets receive without a subscription). Prints one line per second
 *     "sample EPOCH RECEIVED" (the lag curve) and a summary; exit 0 once
 *     --expect messages arrived, 1 at the timeout.
 *   --produce-kafka BROKERS TOPIC N: writes N records of --size bytes with
 *     the headers of an inbound rule (mqttSecondTopic, qoslevel 1 and, with
 *     --p2p-targets K, clientId <id-prefix>t<i % K>) through librdkafka.
 *
 * One thread, one epoll loop; a client's socket is blocking while it
 * connects and subscribes, then non-blocking. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

struct inb_opts {
    const char *host;
    int port;
    int subscribers;
    const char *id_prefix;
    const char *sub_topic;
    bool p2p;
    long expect;
    int timeout_s;
    int size;
    int p2p_targets;
    const char *brokers; /* --produce-kafka */
    const char *topic;
    long produce_n;
};

struct inb_client {
    int fd;
    uint8_t in[65536];
    size_t in_len;
    uint8_t out[8192];
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

static int inb_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
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
    var[v++] = 0;
    var[v++] = 60; /* keep alive */
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

/* Counts the complete PUBLISHes in c->in, queues their PUBACKs and keeps
 * an incomplete packet for later; returns the count. */
static long inb_client_parse(struct inb_client *c)
{
    size_t pos = 0;
    long got = 0;
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
        if (type == 3) {
            got++;
            size_t tlen = ((size_t)c->in[i] << 8) | c->in[i + 1];
            if (qos > 0 && c->out_len + 4 <= sizeof c->out) {
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
    return got;
}

/* Reads what the socket holds and writes the queued acks; returns the
 * PUBLISHes counted or -1 when the connection is gone. */
static long inb_client_service(struct inb_client *c)
{
    long got = 0;
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
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                perror("mqbench: read");
                return -1;
            }
            break;
        }
        c->in_len += (size_t)r;
        got += inb_client_parse(c);
        if (c->out_len + 4 * 4096 > sizeof c->out || c->in_len == sizeof c->in) {
            if (inb_write_all(c->fd, c->out, c->out_len) < 0)
                return -1;
            c->out_len = 0;
        }
    }
    if (c->out_len && inb_write_all(c->fd, c->out, c->out_len) < 0) {
        perror("mqbench: write");
        return -1;
    }
    c->out_len = 0;
    return got;
}

static int inb_count(const struct inb_opts *o)
{
    struct inb_client *cs = calloc((size_t)o->subscribers, sizeof *cs);
    int ep = epoll_create1(0), status = 1;
    long received = 0;
    if (!cs || ep < 0)
        goto done;
    for (int i = 0; i < o->subscribers; i++) {
        char id[256];
        snprintf(id, sizeof id, "%s%s%d", o->id_prefix, o->p2p ? "t" : "s", i);
        cs[i].fd = inb_client_open(o, id);
        if (cs[i].fd < 0) {
            fprintf(stderr, "mqbench: client %s could not connect/subscribe\n", id);
            goto done;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    double start = inb_now(), next = start + 1, first = 0, last = 0;
    printf("ready %.6f %d\n", start, o->subscribers);
    fflush(stdout);
    while (received < o->expect) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 100);
        double t = inb_now();
        for (int i = 0; i < n; i++) {
            long got = inb_client_service(evs[i].data.ptr);
            if (got < 0) {
                fprintf(stderr, "mqbench: a client lost its connection\n");
                goto done;
            }
            if (got > 0 && first == 0)
                first = t;
            if (got > 0)
                last = t;
            received += got;
        }
        if (t >= next) {
            printf("sample %.3f %ld\n", t, received);
            fflush(stdout);
            next += 1;
        }
        if (t - start > o->timeout_s) {
            fprintf(stderr, "mqbench: timeout: %ld of %ld received\n", received, o->expect);
            goto done;
        }
    }
    status = 0;
    printf("done %.6f %.6f %ld %.0f\n", first, last, received,
           last > first ? (double)received / (last - first) : 0.0);
done:
    if (status)
        printf("failed %ld\n", received);
    for (int i = 0; cs && i < o->subscribers; i++)
        if (cs[i].fd > 0)
            close(cs[i].fd);
    free(cs);
    if (ep >= 0)
        close(ep);
    return status;
}

static void inb_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err)
        (*(long *)opaque)++;
}

static int inb_produce_kafka(const struct inb_opts *o)
{
    char err[512];
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
    rd_kafka_conf_set_opaque(conf, &failed);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "mqbench: %s\n", err);
        return 1;
    }
    char *payload = malloc((size_t)o->size);
    memset(payload, 'x', (size_t)o->size);
    double t0 = inb_now();
    for (long i = 0; i < o->produce_n; i++) {
        char cid[256];
        rd_kafka_headers_t *h = rd_kafka_headers_new(3);
        rd_kafka_header_add(h, "mqttSecondTopic", -1, "bench", -1);
        rd_kafka_header_add(h, "qoslevel", -1, "1", -1);
        if (o->p2p_targets > 0) {
            snprintf(cid, sizeof cid, "%st%ld", o->id_prefix, i % o->p2p_targets);
            rd_kafka_header_add(h, "clientId", -1, cid, -1);
        }
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(
                    rk, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_VALUE(payload, (size_t)o->size),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        if (e) {
            rd_kafka_headers_destroy(h);
            failed++;
        }
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 60000);
    double t1 = inb_now();
    printf("produced %ld in %.3f s (%.0f/s), %ld failed\n", o->produce_n, t1 - t0,
           (double)o->produce_n / (t1 - t0), failed);
    free(payload);
    rd_kafka_destroy(rk);
    return failed ? 1 : 0;
}

static const char inb_usage[] =
    "mqbench inbound modes:\n"
    "  --count-only --subscribers N --expect M [--sub-topic F | --p2p] [--id-prefix S]\n"
    "      [--host H] [--port P] [--timeout S]\n"
    "      N clients <S>s<i> (or <S>t<i> with --p2p) count PUBLISHes until M arrived;\n"
    "      prints 'sample EPOCH RECEIVED' each second and 'done FIRST LAST N RATE'\n"
    "  --produce-kafka BROKERS TOPIC N [--size B] [--p2p-targets K] [--id-prefix S]\n"
    "      N records with headers mqttSecondTopic=bench, qoslevel=1 (clientId <S>t<i%K>)\n";

bool inbound_wanted(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--count-only") || !strcmp(argv[i], "--produce-kafka"))
            return true;
    return false;
}

int inbound_main(int argc, char **argv)
{
    struct inb_opts o = {.host = "127.0.0.1",
                         .port = 1883,
                         .subscribers = 1,
                         .id_prefix = "GID_bench@@@",
                         .sub_topic = "Commands/#",
                         .timeout_s = 240,
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
                                       {"size", required_argument, NULL, 's'},
                                       {"p2p-targets", required_argument, NULL, 'K'},
                                       {NULL, 0, NULL, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'c':
            break;
        case 'k':
            o.brokers = optarg;
            break;
        case 'h':
            o.host = optarg;
            break;
        case 'p':
            o.port = atoi(optarg);
            break;
        case 'n':
            o.subscribers = atoi(optarg);
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
        case 'e':
            o.expect = atol(optarg);
            break;
        case 'T':
            o.timeout_s = atoi(optarg);
            break;
        case 's':
            o.size = atoi(optarg);
            break;
        case 'K':
            o.p2p_targets = atoi(optarg);
            break;
        default:
            fputs(inb_usage, stderr);
            return 2;
        }
    }
    if (o.brokers) {
        if (optind + 2 != argc || o.size < 0) {
            fputs(inb_usage, stderr);
            return 2;
        }
        o.topic = argv[optind];
        o.produce_n = atol(argv[optind + 1]);
        return inb_produce_kafka(&o);
    }
    if (optind != argc || o.subscribers < 1 || o.expect < 1 || o.port < 1) {
        fputs(inb_usage, stderr);
        return 2;
    }
    return inb_count(&o);
}
