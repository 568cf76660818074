/* The managed "Message Queue for MQTT" semantics (SEMANTICS.md, docs/CONFIG.md
 * `instance` and `limits`), driven through the real binary:
 *   - client IDs <GroupID>@@@<DeviceID> with a declared group, at most 64
 *     characters; a refused one gets CONNACK 0x02 and is counted;
 *   - a duplicate client ID takes over (default) or is rejected;
 *   - topic names under a declared parent, at most 3 levels and 64
 *     characters; a bad one closes the publisher's connection;
 *   - max_message_size: a larger message is acknowledged and discarded;
 *   - message ids, increasing across publishes and restarts;
 *   - P2P messages <Parent>/p2p/<ClientId> to one client only;
 *   - 30 subscriptions per client, 100 wildcard subscriptions per parent
 *     topic, filters outside the parents, QoS 2 with cleanSession=0;
 *   - `naming: mqtt` lifts the naming rules but keeps the limits.
 * Counters are read from the "stats:" lines the broker logs on SIGUSR1.
 * Every test here is mqbridge behaviour: none runs against mosquitto. */
#include <check.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../unit/check_main.h"
#include "harness.h"

#define MANAGED_INSTANCE \
    "{ naming: managed, parent_topics: [SensorData, Commands], groups: [GID_sensors, GID-app] }"
#define MANAGED_LIMITS \
    "max_message_size: 65536, max_subscriptions_per_client: 30, " \
    "max_wildcard_subscriptions_per_parent: 100"

/* ---- the broker log: counters and log lines ---- */

static long log_size(const struct it_broker *b)
{
    struct stat st;
    return stat(b->log, &st) == 0 ? (long)st.st_size : 0;
}

/* The broker log from byte `from` to its end, NUL-terminated. The caller
 * frees it. */
static char *log_read_from(const struct it_broker *b, long from)
{
    FILE *f = fopen(b->log, "r");
    ck_assert_msg(f != NULL, "cannot open %s", b->log);
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    if (from > end)
        from = end;
    fseek(f, from, SEEK_SET);
    char *text = malloc((size_t)(end - from) + 1);
    ck_assert(text != NULL);
    size_t n = fread(text, 1, (size_t)(end - from), f);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* Copy into out the first complete line of text holding needle a and, when
 * not NULL, needle b. true when there is one. text is modified. */
static bool text_find_line(char *text, const char *a, const char *b, char *out, size_t outlen)
{
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        if (strstr(line, a) && (!b || strstr(line, b))) {
            snprintf(out, outlen, "%s", line);
            return true;
        }
    }
    return false;
}

struct log_watch {
    const struct it_broker *b;
    long from;
    const char *a, *b2;
    char line[1024];
};

static bool log_watch_found(void *ctx)
{
    struct log_watch *w = ctx;
    char *text = log_read_from(w->b, w->from);
    bool found = text_find_line(text, w->a, w->b2, w->line, sizeof w->line);
    free(text);
    return found;
}

/* Wait for a log line written after byte `from` holding a and (unless
 * NULL) b; fails the test when none comes. The line goes to out. */
static void log_expect(const struct it_broker *b, long from, const char *a, const char *b2,
                       char *out, size_t outlen)
{
    struct log_watch w = {.b = b, .from = from, .a = a, .b2 = b2};
    ck_assert_msg(it_wait_until(log_watch_found, &w, IT_WAIT_MS),
                  "no broker log line with '%s'%s%s%s", a, b2 ? " and '" : "", b2 ? b2 : "",
                  b2 ? "'" : "");
    if (out)
        snprintf(out, outlen, "%s", w.line);
}

/* The value of counter key (" name=") in a stats line, or -1. */
static long long stats_value(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* Ask for the counters (SIGUSR1) until the stats line shows name=want;
 * fails the test after timeout_ms with the last line seen. */
static void stats_expect(const struct it_broker *b, const char *name, long long want,
                         int timeout_ms)
{
    char key[64];
    snprintf(key, sizeof key, " %s=", name);
    int64_t deadline = it_now_ms() + timeout_ms;
    char last[1024] = "(no stats line)";
    for (;;) {
        struct log_watch w = {.b = b, .from = log_size(b), .a = "stats: ", .b2 = key};
        ck_assert_msg(kill(b->pid, SIGUSR1) == 0, "SIGUSR1 to the broker failed");
        if (it_wait_until(log_watch_found, &w, IT_WAIT_MS)) {
            snprintf(last, sizeof last, "%s", w.line);
            if (stats_value(w.line, key) == want)
                return;
        }
        ck_assert_msg(it_now_ms() < deadline, "counter %s: want %lld; last: %s", name, want, last);
        poll(NULL, 0, 50); /* the polling period */
    }
}

/* ---- raw client helpers ---- */

static void managed_start(struct it_broker *b, const char *instance, const char *limits)
{
    struct it_broker_opts o = {.instance_yaml = instance ? instance : MANAGED_INSTANCE,
                               .limits_yaml = limits ? limits : MANAGED_LIMITS};
    it_broker_start(b, &o);
}

/* PUBLISH at QoS 1 and require the PUBACK. */
static void pub1(struct it_raw *r, const char *topic, const void *payload, size_t len, uint16_t pid)
{
    ck_assert_int_eq(it_raw_publish(r, topic, payload, len, 1, false, false, pid), 0);
    it_raw_expect_ack(r, MQTT_PUBACK, pid);
}

/* The next packet must be the PUBLISH of payload on topic at qos; it is
 * acknowledged. */
static void recv_ack(struct it_raw *r, const char *topic, const char *payload, int qos)
{
    uint16_t pid = it_raw_expect_publish(r, topic, payload, qos, false);
    if (qos == 1)
        ck_assert_int_eq(it_raw_ack(r, MQTT_PUBACK, pid), 0);
}

/* One SUBSCRIBE of n filters at one QoS; the SUBACK must carry want[]. */
static void sub_expect(struct it_raw *r, uint16_t pid, const char *const *filters, uint8_t qos,
                       size_t n, const uint8_t *want)
{
    uint8_t qv[40];
    ck_assert(n <= sizeof qv);
    memset(qv, qos, n);
    ck_assert_int_eq(it_raw_subscribe(r, pid, filters, qv, n), 0);
    struct it_pkt p;
    int got = it_raw_next(r, &p, IT_WAIT_MS);
    ck_assert_msg(got == MQTT_SUBACK, "SUBSCRIBE %u: got packet %d, want SUBACK", pid, got);
    ck_assert_uint_eq(p.pid, pid);
    ck_assert_uint_eq(p.rc_count, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(p.rcs[i] == want[i], "'%s': SUBACK 0x%02x, want 0x%02x", filters[i], p.rcs[i],
                      want[i]);
    it_pkt_clear(&p);
}

static void unsub1(struct it_raw *r, uint16_t pid, const char *filter)
{
    ck_assert_int_eq(it_raw_unsubscribe(r, pid, &filter, 1), 0);
    it_raw_expect_ack(r, MQTT_UNSUBACK, pid);
}

/* ---- CONNECT: client IDs ---- */

static const struct {
    const char *name, *id;
    int rc;
    const char *reason; /* in the log line of a refusal */
} client_id_cases[] = {
    {"declared group", "GID_sensors@@@dev1", 0x00, NULL},
    {"GID- group, device with - and _", "GID-app@@@d_1-x", 0x00, NULL},
    {"64 characters", "GID_sensors@@@dddddddddddddddddddddddddddddddddddddddddddddddddd", 0x00,
     NULL},
    {"no group", "dev1", 0x02, "<GroupID>@@@<DeviceID>"},
    {"undeclared group", "GID_unknown@@@d", 0x02, "not declared"},
    {"empty device", "GID_sensors@@@", 0x02, "empty device ID"},
    {"space in device", "GID_sensors@@@a b", 0x02, "not allowed in device ID"},
    {"second @@@", "GID_sensors@@@a@@@b", 0x02, "must not contain '@'"},
    {"65 characters", "GID_sensors@@@ddddddddddddddddddddddddddddddddddddddddddddddddddd", 0x02,
     "65 characters"},
};

START_TEST(test_connect_client_ids)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    long long refused = 0;
    for (size_t i = 0; i < sizeof client_id_cases / sizeof client_id_cases[0]; i++) {
        const char *name = client_id_cases[i].name;
        struct it_connect_opts o = {.client_id = client_id_cases[i].id, .clean = true};
        struct it_raw r;
        long from = log_size(&b);
        int rc = it_raw_connect(&r, b.port, &o, NULL);
        ck_assert_msg(rc == client_id_cases[i].rc, "%s (%s): CONNACK %d, want %d", name,
                      o.client_id, rc, client_id_cases[i].rc);
        if (rc == 0) {
            ck_assert_int_eq(it_raw_pingreq(&r), 0);
            ck_assert_msg(it_raw_next(&r, NULL, IT_WAIT_MS) == MQTT_PINGRESP, "%s: no PINGRESP",
                          name);
            ck_assert_int_eq(it_raw_leave(&r), 0);
            continue;
        }
        ck_assert_msg(it_raw_wait_eof(&r, IT_WAIT_MS) == IT_RAW_EOF, "%s: not closed", name);
        it_raw_close(&r);
        log_expect(&b, from, "connection refused (CONNACK 0x02)", client_id_cases[i].reason, NULL,
                   0);
        stats_expect(&b, "bad_client_id", ++refused, IT_WAIT_MS);
    }
    it_broker_cleanup(&b);
}
END_TEST

/* ---- CONNECT: a client ID already connected ---- */

/* takeover (default): the first connection is closed, the second works;
 * a takeover is not a refusal. */
START_TEST(test_duplicate_takeover)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw first, second;
    it_raw_connect_ok(&first, b.port, "GID_sensors@@@dup", true, false);
    it_raw_connect_ok(&second, b.port, "GID_sensors@@@dup", true, false);
    ck_assert_msg(it_raw_wait_eof(&first, IT_WAIT_MS) == IT_RAW_EOF, "first still connected");
    ck_assert_int_eq(it_raw_sub1(&second, "SensorData/dup", 1), 1);
    struct it_raw pub;
    it_raw_connect_ok(&pub, b.port, "GID-app@@@pub", true, false);
    pub1(&pub, "SensorData/dup", "hello", 5, 1);
    recv_ack(&second, "SensorData/dup", "hello", 1);
    stats_expect(&b, "duplicate", 0, IT_WAIT_MS);
    it_raw_close(&first);
    it_raw_close(&second);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* reject: the newcomer gets CONNACK 0x02 and is closed; the first stays
 * connected and keeps receiving; once it leaves, the id is free again. */
START_TEST(test_duplicate_reject)
{
    struct it_broker b;
    managed_start(&b,
                  "{ naming: managed, on_duplicate_client_id: reject, "
                  "parent_topics: [SensorData], groups: [GID_sensors] }",
                  NULL);
    struct it_raw first, second, pub;
    it_raw_connect_ok(&first, b.port, "GID_sensors@@@dup", false, false);
    ck_assert_int_eq(it_raw_sub1(&first, "SensorData/dup", 1), 1);
    long from = log_size(&b);
    struct it_connect_opts o = {.client_id = "GID_sensors@@@dup", .clean = true};
    ck_assert_int_eq(it_raw_connect(&second, b.port, &o, NULL), 0x02);
    ck_assert_int_eq(it_raw_wait_eof(&second, IT_WAIT_MS), IT_RAW_EOF);
    it_raw_close(&second);
    log_expect(&b, from, "connection refused (CONNACK 0x02)", "on_duplicate_client_id", NULL, 0);
    stats_expect(&b, "duplicate", 1, IT_WAIT_MS);

    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    pub1(&pub, "SensorData/dup", "still here", 10, 1);
    recv_ack(&first, "SensorData/dup", "still here", 1);
    ck_assert_int_eq(it_raw_leave(&first), 0);
    it_raw_connect_ok(&second, b.port, "GID_sensors@@@dup", false, true);
    it_raw_close(&second);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- naming: mqtt ---- */

/* Any client ID and topic depth, but max_message_size and
 * max_subscriptions_per_client still apply. */
START_TEST(test_naming_mqtt_keeps_limits)
{
    struct it_broker b;
    managed_start(&b, "{ naming: mqtt, parent_topics: [SensorData], groups: [GID_sensors] }",
                  "max_message_size: 1024, max_subscriptions_per_client: 3");
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "anything", true, false);
    it_raw_connect_ok(&pub, b.port, "dev1", true, false);
    const char *filters[] = {"a/b/c/d/e", "Other/#", "+/x", "z"};
    const uint8_t want[] = {1, 1, 1, 0x80};
    sub_expect(&sub, 1, filters, 1, 4, want);
    stats_expect(&b, "too_many", 1, IT_WAIT_MS);

    char big[1025];
    memset(big, 'b', sizeof big);
    pub1(&pub, "a/b/c/d/e", big, sizeof big, 1); /* discarded, acknowledged */
    pub1(&pub, "a/b/c/d/e", big, 1024, 2);
    struct it_pkt p;
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_PUBLISH);
    ck_assert_str_eq(p.topic, "a/b/c/d/e");
    ck_assert_msg(p.payload_len == 1024, "first delivery has %u bytes, want the 1024-byte one",
                  p.payload_len);
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, p.pid), 0);
    it_pkt_clear(&p);
    pub1(&pub, "Other/x", "x", 1, 3); /* matches two filters: delivered once */
    recv_ack(&sub, "Other/x", "x", 1);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    stats_expect(&b, "discarded_oversize", 1, IT_WAIT_MS);
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- PUBLISH: topic names ---- */

static const struct {
    const char *name, *topic;
} bad_topic_cases[] = {
    {"undeclared parent", "Other/x"},
    {"parent in other case", "sensordata/x"},
    {"4 levels", "SensorData/a/b/c"},
    {"65 characters", "SensorData/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
    {"space", "SensorData/a b"},
    {"dot", "SensorData/a.b"},
    {"empty level", "SensorData//x"},
    {"P2P to an undeclared group", "SensorData/p2p/GID_nobody@@@d"},
};

/* A bad topic closes the publisher's connection without a PUBACK (MQTT
 * 3.1.1 has no negative PUBACK) and reaches nobody; a valid one and one of
 * exactly 64 characters go through. */
START_TEST(test_publish_bad_topic)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@sub", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "SensorData/#", 1), 1);
    size_t n = sizeof bad_topic_cases / sizeof bad_topic_cases[0];
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "GID_sensors@@@bad%zu", i);
        it_raw_connect_ok(&pub, b.port, id, true, false);
        const char *topic = bad_topic_cases[i].topic;
        ck_assert_int_eq(it_raw_publish(&pub, topic, "bad", 3, 1, false, false, 1), 0);
        int got = it_raw_next(&pub, NULL, IT_WAIT_MS);
        ck_assert_msg(got == IT_RAW_EOF, "%s (%s): got %d, want the connection closed",
                      bad_topic_cases[i].name, topic, got);
        it_raw_close(&pub);
    }
    stats_expect(&b, "publish_bad_topic", (long long)n, IT_WAIT_MS);

    const char *t64 = "SensorData/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    ck_assert_uint_eq(strlen(t64), 64);
    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@good", true, false);
    pub1(&pub, "SensorData/room1/t", "good", 4, 1);
    pub1(&pub, t64, "long", 4, 2);
    recv_ack(&sub, "SensorData/room1/t", "good", 1); /* nothing bad came before it */
    recv_ack(&sub, t64, "long", 1);
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- PUBLISH: max_message_size ---- */

START_TEST(test_oversize_discarded)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@sub", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "SensorData/big", 1), 1);
    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    uint8_t *big = malloc(65537);
    ck_assert(big != NULL);
    for (size_t i = 0; i < 65537; i++)
        big[i] = (uint8_t)(i * 7);
    long from = log_size(&b);
    pub1(&pub, "SensorData/big", big, 65537, 1); /* acknowledged, connection kept */
    log_expect(&b, from, "discarded", "65537 bytes", NULL, 0);
    pub1(&pub, "SensorData/big", "small", 5, 2);
    recv_ack(&sub, "SensorData/big", "small", 1);
    stats_expect(&b, "discarded_oversize", 1, IT_WAIT_MS);

    pub1(&pub, "SensorData/big", big, 65536, 3); /* exactly the limit */
    struct it_pkt p;
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_PUBLISH);
    ck_assert_uint_eq(p.payload_len, 65536);
    ck_assert_msg(memcmp(p.payload, big, 65536) == 0, "65536-byte payload changed");
    ck_assert_int_eq(it_raw_ack(&sub, MQTT_PUBACK, p.pid), 0);
    it_pkt_clear(&p);
    stats_expect(&b, "discarded_oversize", 1, IT_WAIT_MS);
    free(big);
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- message ids ---- */

/* The id the debug line "PUBLISH <topic> qos=1 id=<16 hex>" gave the
 * message published on topic. */
static uint64_t logged_message_id(const struct it_broker *b, const char *topic)
{
    char needle[128], line[1024];
    snprintf(needle, sizeof needle, "PUBLISH %s qos=1 id=", topic);
    log_expect(b, 0, needle, NULL, line, sizeof line);
    const char *hex = strstr(line, needle) + strlen(needle);
    size_t digits = strspn(hex, "0123456789abcdef");
    ck_assert_msg(digits == 16 && (hex[16] == ' ' || hex[16] == '\0'),
                  "message id is not 16 hex digits: %s", line);
    return strtoull(hex, NULL, 16);
}

START_TEST(test_message_ids_increase)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw pub;
    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    pub1(&pub, "SensorData/id/a", "a", 1, 1);
    pub1(&pub, "SensorData/id/b", "b", 1, 2);
    uint64_t a = logged_message_id(&b, "SensorData/id/a");
    uint64_t bb = logged_message_id(&b, "SensorData/id/b");
    ck_assert_msg(bb > a, "id %016" PRIx64 " after %016" PRIx64, bb, a);
    it_raw_close(&pub);

    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_broker_restart(&b);
    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    pub1(&pub, "SensorData/id/c", "c", 1, 1);
    uint64_t c = logged_message_id(&b, "SensorData/id/c");
    ck_assert_msg(c > bb, "id %016" PRIx64 " after the restart, %016" PRIx64 " before", c, bb);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- P2P ---- */

/* To the target only, without a subscription, at the published QoS; a
 * client subscribed to the parent's '#' does not see it. The target level
 * does not count against the 64 characters. */
START_TEST(test_p2p_online)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    const char *longid = "GID_sensors@@@dddddddddddddddddddddddddddddddddddddddddddddddddd";
    struct it_raw dev2, lng, other, pub;
    it_raw_connect_ok(&dev2, b.port, "GID_sensors@@@dev2", true, false);
    it_raw_connect_ok(&lng, b.port, longid, true, false);
    it_raw_connect_ok(&other, b.port, "GID-app@@@other", true, false);
    ck_assert_int_eq(it_raw_sub1(&other, "SensorData/#", 1), 1);
    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@dev1", true, false);

    pub1(&pub, "SensorData/p2p/GID_sensors@@@dev2", "one", 3, 1);
    recv_ack(&dev2, "SensorData/p2p/GID_sensors@@@dev2", "one", 1);
    ck_assert_int_eq(
        it_raw_publish(&pub, "SensorData/p2p/GID_sensors@@@dev2", "zero", 4, 0, false, false, 0),
        0);
    recv_ack(&dev2, "SensorData/p2p/GID_sensors@@@dev2", "zero", 0);
    char t[128];
    snprintf(t, sizeof t, "SensorData/p2p/%s", longid);
    pub1(&pub, t, "long", 4, 2);
    recv_ack(&lng, t, "long", 1);

    pub1(&pub, "SensorData/after", "marker", 6, 3);
    recv_ack(&other, "SensorData/after", "marker", 1); /* no P2P message before it */
    ck_assert_int_eq(it_raw_next(&dev2, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&dev2);
    it_raw_close(&lng);
    it_raw_close(&other);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* An offline target follows its own cleanSession: a persistent one gets
 * the QoS 1 message on reconnect, a clean one (no session left) does not,
 * and that drop is counted. */
START_TEST(test_p2p_offline)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw dev, pub;
    it_raw_connect_ok(&dev, b.port, "GID_sensors@@@keep", false, false);
    ck_assert_int_eq(it_raw_leave(&dev), 0);
    it_raw_connect_ok(&dev, b.port, "GID_sensors@@@gone", true, false);
    ck_assert_int_eq(it_raw_leave(&dev), 0);

    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@dev1", true, false);
    pub1(&pub, "SensorData/p2p/GID_sensors@@@keep", "kept", 4, 1);
    pub1(&pub, "SensorData/p2p/GID_sensors@@@gone", "lost", 4, 2);
    stats_expect(&b, "p2p_no_target", 1, IT_WAIT_MS);

    it_raw_connect_ok(&dev, b.port, "GID_sensors@@@keep", false, true);
    recv_ack(&dev, "SensorData/p2p/GID_sensors@@@keep", "kept", 1);
    ck_assert_int_eq(it_raw_leave(&dev), 0);

    it_raw_connect_ok(&dev, b.port, "GID_sensors@@@gone", true, false);
    pub1(&pub, "SensorData/p2p/GID_sensors@@@gone", "fresh", 5, 3);
    recv_ack(&dev, "SensorData/p2p/GID_sensors@@@gone", "fresh", 1); /* "lost" never came */
    it_raw_close(&dev);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- SUBSCRIBE: per-client limit ---- */

/* 31 filters in one SUBSCRIBE: 30 granted, the last refused; a later one
 * refused too; replacing an existing filter is not new (and changes its
 * QoS); after an UNSUBSCRIBE one more fits. A refused filter delivers
 * nothing. */
START_TEST(test_subscriptions_per_client)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@many", true, false);
    char names[33][24];
    const char *filters[33];
    uint8_t want[31];
    for (int i = 0; i < 33; i++) {
        snprintf(names[i], sizeof names[i], "SensorData/s/%d", i);
        filters[i] = names[i];
    }
    for (int i = 0; i < 31; i++)
        want[i] = i < 30 ? 1 : 0x80;
    sub_expect(&sub, 1, filters, 1, 31, want);
    stats_expect(&b, "too_many", 1, IT_WAIT_MS);
    ck_assert_int_eq(it_raw_sub1(&sub, filters[31], 1), 0x80);
    ck_assert_int_eq(it_raw_sub1(&sub, filters[0], 0), 0); /* replaces, at QoS 0 */
    stats_expect(&b, "too_many", 2, IT_WAIT_MS);

    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    pub1(&pub, filters[30], "refused", 7, 1);
    pub1(&pub, filters[0], "first", 5, 2);
    recv_ack(&sub, filters[0], "first", 0); /* min(1, 0): the replacement holds */

    unsub1(&sub, 2, filters[1]);
    ck_assert_int_eq(it_raw_sub1(&sub, filters[31], 1), 1);
    ck_assert_int_eq(it_raw_sub1(&sub, filters[32], 1), 0x80);
    stats_expect(&b, "too_many", 3, IT_WAIT_MS);
    pub1(&pub, filters[31], "late", 4, 3);
    recv_ack(&sub, filters[31], "late", 1);
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- SUBSCRIBE: wildcard subscriptions per parent topic ---- */

#define WILD_CLIENTS 10
#define WILD_PER_CLIENT 10

static void wild_fill(struct it_raw *c, uint16_t port)
{
    char names[WILD_PER_CLIENT][32], id[32];
    const char *filters[WILD_PER_CLIENT];
    uint8_t want[WILD_PER_CLIENT] = {0};
    for (int k = 0; k < WILD_CLIENTS; k++) {
        snprintf(id, sizeof id, "GID_sensors@@@w%d", k);
        it_raw_connect_ok(&c[k], port, id, true, false);
        for (int j = 0; j < WILD_PER_CLIENT; j++) {
            snprintf(names[j], sizeof names[j], "SensorData/+/w%d", k * WILD_PER_CLIENT + j);
            filters[j] = names[j];
        }
        sub_expect(&c[k], 1, filters, 0, WILD_PER_CLIENT, want);
    }
}

/* 100 wildcard filters on SensorData across 10 clients; the 101st is
 * refused while a wildcard on Commands and a plain SensorData filter are
 * granted in the same SUBSCRIBE; replacing an existing wildcard is not
 * new; an UNSUBSCRIBE or a clean client leaving frees slots. */
START_TEST(test_wildcards_per_parent)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw c[WILD_CLIENTS], x;
    wild_fill(c, b.port);
    it_raw_connect_ok(&x, b.port, "GID-app@@@x", true, false);
    const char *filters[] = {"SensorData/+/w100", "Commands/#", "SensorData/x/y", "SensorData/#"};
    const uint8_t want[] = {0x80, 1, 1, 0x80};
    sub_expect(&x, 1, filters, 1, 4, want);
    stats_expect(&b, "wildcard_limit", 2, IT_WAIT_MS);
    ck_assert_int_eq(it_raw_sub1(&c[2], "SensorData/+/w20", 1), 1); /* a replacement */

    unsub1(&c[0], 2, "SensorData/+/w0");
    ck_assert_int_eq(it_raw_sub1(&x, "SensorData/+/w100", 1), 1);
    ck_assert_int_eq(it_raw_sub1(&x, "SensorData/+/w101", 1), 0x80);
    stats_expect(&b, "wildcard_limit", 3, IT_WAIT_MS);

    ck_assert_int_eq(it_raw_leave(&c[1]), 0); /* its session and 10 wildcards go */
    ck_assert_int_eq(it_raw_sub1(&x, "SensorData/+/w101", 1), 1);
    stats_expect(&b, "wildcard_limit", 3, IT_WAIT_MS);
    for (int k = 0; k < WILD_CLIENTS; k++)
        it_raw_close(&c[k]);
    it_raw_close(&x);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- SUBSCRIBE: filters outside the parents, QoS 2 ---- */

START_TEST(test_filter_outside_parents)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@sub", true, false);
    const char *filters[] = {"Other/#",      "SensorData/#",     "#",           "+/x",
                             "Commands/+/y", "SensorData/+/+/+", "sensordata/#"};
    const uint8_t want[] = {0x80, 1, 0x80, 0x80, 1, 0x80, 0x80};
    long from = log_size(&b);
    sub_expect(&sub, 1, filters, 1, 7, want);
    log_expect(&b, from, "SUBSCRIBE 'Other/#' refused (SUBACK 0x80)", "not declared", NULL, 0);
    stats_expect(&b, "bad_filter", 5, IT_WAIT_MS);
    it_raw_connect_ok(&pub, b.port, "GID-app@@@pub", true, false);
    pub1(&pub, "Commands/a/y", "cmd", 3, 1);
    recv_ack(&sub, "Commands/a/y", "cmd", 1);
    pub1(&pub, "SensorData/t", "data", 4, 2);
    recv_ack(&sub, "SensorData/t", "data", 1);
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* The next packet must be a QoS 2 PUBLISH of payload on topic; run the
 * receiver's side of the exchange. */
static void recv_qos2(struct it_raw *r, const char *topic, const char *payload)
{
    uint16_t pid = it_raw_expect_publish(r, topic, payload, 2, false);
    ck_assert_int_eq(it_raw_ack(r, MQTT_PUBREC, pid), 0);
    it_raw_expect_ack(r, MQTT_PUBREL, pid);
    ck_assert_int_eq(it_raw_ack(r, MQTT_PUBCOMP, pid), 0);
}

/* QoS 2 with cleanSession=0 is refused (and does not take effect) while
 * another filter of the same SUBSCRIBE is granted; with cleanSession=1 it
 * is granted and delivers exactly once. */
START_TEST(test_qos2_persistent_refused)
{
    struct it_broker b;
    managed_start(&b, NULL, NULL);
    struct it_raw keep, clean, pub;
    it_raw_connect_ok(&keep, b.port, "GID_sensors@@@keep", false, false);
    const char *filters[] = {"SensorData/q2", "SensorData/q1"};
    const uint8_t qv[] = {2, 1};
    ck_assert_int_eq(it_raw_subscribe(&keep, 1, filters, qv, 2), 0);
    struct it_pkt p;
    ck_assert_int_eq(it_raw_next(&keep, &p, IT_WAIT_MS), MQTT_SUBACK);
    ck_assert_uint_eq(p.rc_count, 2);
    ck_assert_msg(p.rcs[0] == 0x80 && p.rcs[1] == 1, "SUBACK %02x %02x, want 80 01", p.rcs[0],
                  p.rcs[1]);
    it_pkt_clear(&p);
    stats_expect(&b, "qos2_persistent", 1, IT_WAIT_MS);
    it_raw_connect_ok(&clean, b.port, "GID_sensors@@@clean", true, false);
    ck_assert_int_eq(it_raw_sub1(&clean, "SensorData/q2", 2), 2);

    it_raw_connect_ok(&pub, b.port, "GID_sensors@@@pub", true, false);
    ck_assert_int_eq(it_raw_publish(&pub, "SensorData/q2", "two", 3, 2, false, false, 1), 0);
    it_raw_expect_ack(&pub, MQTT_PUBREC, 1);
    ck_assert_int_eq(it_raw_ack(&pub, MQTT_PUBREL, 1), 0);
    it_raw_expect_ack(&pub, MQTT_PUBCOMP, 1);
    recv_qos2(&clean, "SensorData/q2", "two");
    pub1(&pub, "SensorData/q1", "one", 3, 2);
    recv_ack(&keep, "SensorData/q1", "one", 1); /* the refused q2 delivered nothing */
    ck_assert_int_eq(it_raw_next(&clean, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&keep);
    it_raw_close(&clean);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *managed_suite(void)
{
    Suite *s = suite_create("it_managed");
    TCase *tc = tcase_create("managed");
    tcase_set_timeout(tc, 60);
    if (it_mode_mosquitto()) {
        it_note_skip("it_managed", "managed naming and limits are mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_connect_client_ids);
        tcase_add_test(tc, test_duplicate_takeover);
        tcase_add_test(tc, test_duplicate_reject);
        tcase_add_test(tc, test_naming_mqtt_keeps_limits);
        tcase_add_test(tc, test_publish_bad_topic);
        tcase_add_test(tc, test_oversize_discarded);
        tcase_add_test(tc, test_message_ids_increase);
        tcase_add_test(tc, test_p2p_online);
        tcase_add_test(tc, test_p2p_offline);
        tcase_add_test(tc, test_subscriptions_per_client);
        tcase_add_test(tc, test_wildcards_per_parent);
        tcase_add_test(tc, test_filter_outside_parents);
        tcase_add_test(tc, test_qos2_persistent_refused);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(managed_suite)
