/* mqbench --self-test: the wire codec and the histogram against known
 * values, so that a wrong measurement cannot come from the tool itself.
 * scripts/bench runs it before measuring. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* "20 02 00 05" -> bytes; returns the count. */
static size_t hex_decode(const char *hex, unsigned char *out, size_t cap)
{
    size_t n = 0;
    while (*hex && n < cap) {
        if (*hex == ' ') {
            hex++;
            continue;
        }
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1)
            break;
        out[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

struct parse_case {
    const char *name;
    const char *hex;
    long want;     /* wire_parse() result */
    int type, qos; /* when want > 0 */
    unsigned id, code;
    size_t payload_len;
    bool present; /* CONNACK */
};

static const struct parse_case parse_cases[] = {
    {"CONNACK accepted", "20 02 00 00", 4, WIRE_CONNACK, 0, 0, 0, 0, false},
    {"CONNACK refused 5", "20 02 00 05", 4, WIRE_CONNACK, 0, 0, 5, 0, false},
    {"CONNACK session present [MQTT-3.2.2-2]", "20 02 01 00", 4, WIRE_CONNACK, 0, 0, 0, 0, true},
    {"CONNACK reserved flag bit", "20 02 02 00", -1, 0, 0, 0, 0, 0, false},
    {"SUBACK granted 1", "90 03 00 01 01", 5, WIRE_SUBACK, 0, 1, 1, 0, false},
    {"SUBACK failure [MQTT-3.9.3-2]", "90 03 00 01 80", 5, WIRE_SUBACK, 0, 1, 0x80, 0, false},
    {"PUBLISH QoS 0", "30 05 00 01 74 68 69", 7, WIRE_PUBLISH, 0, 0, 0, 2, false},
    {"PUBLISH QoS 1 id 7", "32 07 00 01 74 00 07 68 69", 9, WIRE_PUBLISH, 1, 7, 0, 2, false},
    {"PUBLISH QoS 2 id 258", "34 05 00 01 74 01 02", 7, WIRE_PUBLISH, 2, 258, 0, 0, false},
    {"PUBLISH QoS 3 [MQTT-3.3.1-4]", "36 05 00 01 74 00 01", -1, 0, 0, 0, 0, 0, false},
    {"PUBLISH topic past the end", "30 03 00 05 74", -1, 0, 0, 0, 0, 0, false},
    {"PUBACK id 513", "40 02 02 01", 4, WIRE_PUBACK, 0, 513, 0, 0, false},
    {"PUBREL flags 0010 [MQTT-3.6.1-1]", "62 02 00 09", 4, WIRE_PUBREL, 0, 9, 0, 0, false},
    {"PUBREL flags 0000", "60 02 00 09", -1, 0, 0, 0, 0, 0, false},
    {"PUBCOMP 3 bytes", "70 03 00 09 00", -1, 0, 0, 0, 0, 0, false},
    {"PINGRESP", "d0 00", 2, WIRE_PINGRESP, 0, 0, 0, 0, false},
    {"CONNECT from a server", "10 00", -1, 0, 0, 0, 0, 0, false},
    {"incomplete header", "30", 0, 0, 0, 0, 0, 0, false},
    {"incomplete body", "32 07 00 01 74 00", 0, 0, 0, 0, 0, 0, false},
    {"two-byte length, incomplete", "30 80 01 00 01", 0, 0, 0, 0, 0, 0, false},
    {"five length bytes [MQTT-2.2.3]", "30 80 80 80 80 01", -1, 0, 0, 0, 0, 0, false},
};

static int selftest_parse(void)
{
    int failed = 0;
    for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
        const struct parse_case *t = &parse_cases[i];
        unsigned char buf[64];
        struct wire_packet pk = {0};
        size_t n = hex_decode(t->hex, buf, sizeof buf);
        long got = wire_parse(buf, n, &pk);
        bool ok = got == t->want;
        if (ok && got > 0)
            ok = pk.type == t->type && pk.qos == t->qos && pk.id == t->id && pk.code == t->code &&
                 pk.payload_len == t->payload_len && pk.present == t->present;
        if (!ok) {
            fprintf(stderr, "self-test: parse %s: got %ld (type %d qos %d id %u code %u)\n",
                    t->name, got, pk.type, pk.qos, pk.id, pk.code);
            failed++;
        }
    }
    return failed;
}

static int expect_bytes(const char *name, struct bbuf *b, const char *hex)
{
    unsigned char want[128];
    size_t n = hex_decode(hex, want, sizeof want);
    bool ok = bbuf_pending(b) == n && memcmp(b->data + b->off, want, n) == 0;
    if (!ok) {
        fprintf(stderr, "self-test: encode %s: got", name);
        for (size_t i = b->off; i < b->len; i++)
            fprintf(stderr, " %02x", b->data[i]);
        fprintf(stderr, ", want %s\n", hex);
    }
    b->off = b->len = 0;
    return ok ? 0 : 1;
}

static int selftest_encode(void)
{
    struct bbuf b = {0};
    int failed = 0;
    unsigned char big[200];

    memset(big, 'x', sizeof big);
    wire_put_connect(&b, "a", 60, true);
    failed += expect_bytes("CONNECT", &b, "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 61");
    wire_put_connect(&b, "a", 60, false);
    failed +=
        expect_bytes("CONNECT cleanSession=0", &b, "10 0d 00 04 4d 51 54 54 04 00 00 3c 00 01 61");
    wire_put_subscribe(&b, 1, "t/#", 1);
    failed += expect_bytes("SUBSCRIBE", &b, "82 08 00 01 00 03 74 2f 23 01");
    wire_put_publish(&b, "t", 0, 0, "hi", 2);
    failed += expect_bytes("PUBLISH QoS 0", &b, "30 05 00 01 74 68 69");
    wire_put_publish(&b, "t", 7, 1, "hi", 2);
    failed += expect_bytes("PUBLISH QoS 1", &b, "32 07 00 01 74 00 07 68 69");
    wire_put_ack(&b, WIRE_PUBREL, 9);
    failed += expect_bytes("PUBREL", &b, "62 02 00 09");
    wire_put_ack(&b, WIRE_PUBACK, 513);
    failed += expect_bytes("PUBACK", &b, "40 02 02 01");
    wire_put_simple(&b, 12);
    failed += expect_bytes("PINGREQ", &b, "c0 00");
    /* 2 + 1 + 200 = 203 remaining: two length bytes cb 01 */
    wire_put_publish(&b, "t", 0, 0, big, sizeof big);
    struct wire_packet pk;
    if (wire_parse(b.data, b.len, &pk) != 206 || b.data[1] != 0xcb || b.data[2] != 0x01 ||
        pk.payload_len != sizeof big) {
        fprintf(stderr, "self-test: encode/parse PUBLISH of 200 bytes\n");
        failed++;
    }
    bbuf_free(&b);
    return failed;
}

static int selftest_hist(void)
{
    struct hist *h = calloc(1, sizeof *h);
    int failed = 0;
    if (!h)
        return 1;
    /* 1..100000 ns: p50 = 50000, p99 = 99000 within the 1.6% bucket width */
    for (uint64_t v = 1; v <= 100000; v++)
        hist_record(h, v);
    uint64_t p50 = hist_percentile(h, 0.50), p99 = hist_percentile(h, 0.99);
    if (p50 < 49200 || p50 > 50800 || p99 < 97400 || p99 > 100000 || h->max != 100000 ||
        hist_percentile(h, 1.0) != 100000 || h->n != 100000) {
        fprintf(stderr, "self-test: histogram p50 %llu p99 %llu\n", (unsigned long long)p50,
                (unsigned long long)p99);
        failed++;
    }
    free(h);
    return failed;
}

/* The offline plan hands out every message exactly once: the rounds of
 * all clients add up to publishers * count, and a client's rounds differ
 * from another's by at most one. */
static int selftest_offline(void)
{
    static const struct {
        int publishers;
        long count;
        int clients;
        uint32_t first, last; /* rounds of client 0 and of the last client */
    } cases[] = {
        {3, 5, 4, 4, 3},               /* 15 messages: 4 4 4 3 */
        {10, 100000, 10000, 100, 100}, /* the full benchmark */
        {1, 3, 5, 1, 0},               /* fewer messages than clients */
        {7, 1, 7, 1, 1},
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bench_opts o = {.publishers = cases[i].publishers,
                               .count = cases[i].count,
                               .offline = cases[i].clients};
        uint64_t sum = 0;
        for (int t = 0; t < o.offline; t++)
            sum += offline_rounds(&o, t);
        if (sum != offline_total(&o) || offline_rounds(&o, 0) != cases[i].first ||
            offline_rounds(&o, o.offline - 1) != cases[i].last) {
            fprintf(stderr, "self-test: offline plan %d x %ld over %d clients: %llu rounds\n",
                    o.publishers, o.count, o.offline, (unsigned long long)sum);
            failed++;
        }
    }
    return failed;
}

int bench_selftest(void)
{
    int failed = selftest_parse() + selftest_encode() + selftest_hist() + selftest_offline();
    printf("self-test: %s\n", failed ? "FAILED" : "ok");
    return failed ? 1 : 0;
}
