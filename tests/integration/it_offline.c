/* Offline messages of the managed service (SEMANTICS.md "Messaging"), in
 * `naming: managed` mode, through the real binary:
 *   - QoS 1 messages for an offline cleanSession=0 subscriber are stored
 *     and delivered in order on reconnect, also across a SIGTERM restart
 *     and a kill -9 (every message the publisher saw PUBACKed survives);
 *   - QoS 0 is not kept for an offline client, and a cleanSession=1 client
 *     gets nothing of what was published while it was away;
 *   - limits.offline_message_ttl: an expired message is never delivered;
 *   - limits.max_offline_messages bounds the whole instance: past it the
 *     oldest messages are evicted (and counted).
 * Counters are read from the "stats:" lines the broker logs on SIGUSR1.
 * None of this runs against mosquitto (managed naming is mqbridge's). */
#include <check.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../unit/check_main.h"
#include "harness.h"

#define OFFLINE_INSTANCE \
    "{ naming: managed, parent_topics: [SensorData], groups: [GID_sensors, GID-app] }"

/* ---- counters from the broker log ---- */

static long log_size(const struct it_broker *b)
{
    struct stat st;
    return stat(b->log, &st) == 0 ? (long)st.st_size : 0;
}

struct stats_watch {
    const struct it_broker *b;
    long from;       /* log offset before the SIGUSR1 */
    const char *key; /* " name=" */
    char line[1024]; /* the stats line found */
};

/* Whether a complete "stats:" line with w->key was written after w->from. */
static bool stats_line_found(void *ctx)
{
    struct stats_watch *w = ctx;
    FILE *f = fopen(w->b->log, "r");
    if (!f)
        return false;
    bool found = false;
    char line[sizeof w->line];
    if (fseek(f, w->from, SEEK_SET) == 0) {
        while (!found && fgets(line, sizeof line, f)) {
            size_t n = strlen(line);
            found = n && line[n - 1] == '\n' && strstr(line, "stats: ") && strstr(line, w->key);
        }
    }
    fclose(f);
    if (found)
        snprintf(w->line, sizeof w->line, "%.*s", (int)strcspn(line, "\n"), line);
    return found;
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
        struct stats_watch w = {.b = b, .from = log_size(b), .key = key};
        ck_assert_msg(kill(b->pid, SIGUSR1) == 0, "SIGUSR1 to the broker failed");
        if (it_wait_until(stats_line_found, &w, IT_WAIT_MS)) {
            snprintf(last, sizeof last, "%s", w.line);
            if (strtoll(strstr(w.line, key) + strlen(key), NULL, 10) == want)
                return;
        }
        ck_assert_msg(it_now_ms() < deadline, "counter %s: want %lld; last: %s", name, want, last);
        poll(NULL, 0, 50); /* the polling period */
    }
}

/* ---- clients ---- */

static void offline_start(struct it_broker *b, const char *limits)
{
    struct it_broker_opts o = {.instance_yaml = OFFLINE_INSTANCE, .limits_yaml = limits};
    it_broker_start(b, &o);
}

/* A persistent subscriber to filter at QoS 1 that goes offline. */
static void subscribe_and_leave(uint16_t port, const char *id, const char *filter)
{
    struct it_raw sub;
    it_raw_connect_ok(&sub, port, id, false, false);
    ck_assert_int_eq(it_raw_sub1(&sub, filter, 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);
}

/* PUBLISH payload at QoS 1 and wait for its PUBACK. */
static void pub1(struct it_raw *r, const char *topic, const char *payload, uint16_t pid)
{
    ck_assert_int_eq(it_raw_publish(r, topic, payload, strlen(payload), 1, false, false, pid), 0);
    it_raw_expect_ack(r, MQTT_PUBACK, pid);
}

/* The next packet must be the QoS 1 PUBLISH of payload on topic; it is
 * acknowledged. */
static void recv1(struct it_raw *r, const char *topic, const char *payload)
{
    uint16_t pid = it_raw_expect_publish(r, topic, payload, 1, false);
    ck_assert_int_eq(it_raw_ack(r, MQTT_PUBACK, pid), 0);
}

/* Publish "m<first>" .. "m<last>" at QoS 1, each after the PUBACK of the
 * one before. */
static void publish_range(uint16_t port, const char *topic, int first, int last)
{
    struct it_raw pub;
    it_raw_connect_ok(&pub, port, "GID-app@@@publisher", true, false);
    for (int i = first; i <= last; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "m%03d", i);
        pub1(&pub, topic, payload, (uint16_t)(i + 1));
    }
    it_raw_close(&pub);
}

/* The next messages on r must be "m<first>" .. "m<last>", in order. */
static void receive_range(struct it_raw *r, const char *topic, int first, int last)
{
    for (int i = first; i <= last; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "m%03d", i);
        recv1(r, topic, payload);
    }
}

/* Publish a marker and require it to be the next message on r: whatever
 * should not have been delivered would have come first. */
static void expect_only_marker(struct it_raw *r, uint16_t port, const char *topic)
{
    struct it_raw pub;
    it_raw_connect_ok(&pub, port, "GID-app@@@marker", true, false);
    pub1(&pub, topic, "marker", 1);
    recv1(r, topic, "marker");
    it_raw_close(&pub);
}

/* ---- stored and delivered in order ---- */

#define ORDER_COUNT 200

enum broker_break { BREAK_NONE, BREAK_SIGTERM, BREAK_KILL9 };

static const struct {
    const char *name;
    enum broker_break brk;
} order_cases[] = {
    {"while running", BREAK_NONE},
    {"across SIGTERM and restart", BREAK_SIGTERM},
    {"across kill -9 and restart", BREAK_KILL9},
};

/* 200 QoS 1 messages for an offline persistent subscriber: none lost,
 * order kept, nothing more; then the store is empty. */
START_TEST(test_offline_in_order)
{
    const char *topic = "SensorData/off/t";
    struct it_broker b;
    offline_start(&b, NULL);
    subscribe_and_leave(b.port, "GID_sensors@@@store", "SensorData/off/#");
    publish_range(b.port, topic, 0, ORDER_COUNT - 1);
    stats_expect(&b, "offline_messages", ORDER_COUNT, IT_WAIT_MS);
    if (order_cases[_i].brk == BREAK_SIGTERM)
        ck_assert_msg(it_broker_stop(&b) == 0, "%s: exit status on SIGTERM", order_cases[_i].name);
    if (order_cases[_i].brk == BREAK_KILL9)
        it_broker_kill9(&b);
    if (order_cases[_i].brk != BREAK_NONE)
        it_broker_restart(&b);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@store", false, true);
    receive_range(&sub, topic, 0, ORDER_COUNT - 1);
    expect_only_marker(&sub, b.port, topic);
    stats_expect(&b, "offline_messages", 0, IT_WAIT_MS);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- what is not kept ---- */

/* QoS 0 is not kept for an offline persistent subscriber (its QoS 1 is);
 * a cleanSession=1 subscriber has no session while away: it gets nothing
 * and must subscribe again. */
START_TEST(test_offline_not_kept)
{
    struct it_broker b;
    offline_start(&b, NULL);
    subscribe_and_leave(b.port, "GID_sensors@@@persist", "SensorData/nk/p");
    struct it_raw sub, pub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@clean", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "SensorData/nk/c", 1), 1);
    ck_assert_int_eq(it_raw_leave(&sub), 0);

    it_raw_connect_ok(&pub, b.port, "GID-app@@@publisher", true, false);
    ck_assert_int_eq(it_raw_publish(&pub, "SensorData/nk/p", "zero", 4, 0, false, false, 0), 0);
    pub1(&pub, "SensorData/nk/c", "lost", 1);
    pub1(&pub, "SensorData/nk/p", "one", 2);
    stats_expect(&b, "offline_stored", 1, IT_WAIT_MS);

    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@persist", false, true);
    recv1(&sub, "SensorData/nk/p", "one"); /* "zero" did not come first */
    expect_only_marker(&sub, b.port, "SensorData/nk/p");
    it_raw_close(&sub);

    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@clean", true, false);
    ck_assert_int_eq(it_raw_sub1(&sub, "SensorData/nk/c", 1), 1);
    expect_only_marker(&sub, b.port, "SensorData/nk/c"); /* "lost" did not come first */
    it_raw_close(&sub);
    it_raw_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- expiry ---- */

/* offline_message_ttl 1: the queued message expires (counted, removed from
 * the store), and neither a reconnect nor a restart brings it back. */
START_TEST(test_offline_expiry)
{
    struct it_broker b;
    offline_start(&b, "offline_message_ttl: 1");
    subscribe_and_leave(b.port, "GID_sensors@@@exp", "SensorData/exp");
    struct it_raw pub;
    it_raw_connect_ok(&pub, b.port, "GID-app@@@publisher", true, false);
    pub1(&pub, "SensorData/exp", "old", 1);
    it_raw_close(&pub);
    stats_expect(&b, "offline_stored", 1, IT_WAIT_MS);
    stats_expect(&b, "offline_expired", 1, IT_WAIT_MS);
    stats_expect(&b, "offline_messages", 0, IT_WAIT_MS);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@exp", false, true);
    expect_only_marker(&sub, b.port, "SensorData/exp");
    it_raw_close(&sub);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_broker_restart(&b);
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@exp", false, true);
    expect_only_marker(&sub, b.port, "SensorData/exp");
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* ---- the instance bound ---- */

/* max_offline_messages 5, 8 messages: the subscriber gets exactly the
 * newest 5, in order; the oldest 3 are evicted and counted. */
START_TEST(test_offline_bound_oldest_evicted)
{
    const char *topic = "SensorData/bound";
    struct it_broker b;
    offline_start(&b, "max_offline_messages: 5");
    subscribe_and_leave(b.port, "GID_sensors@@@bound", topic);
    publish_range(b.port, topic, 0, 7);
    stats_expect(&b, "offline_evicted", 3, IT_WAIT_MS);
    stats_expect(&b, "offline_messages", 5, IT_WAIT_MS);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@bound", false, true);
    receive_range(&sub, topic, 3, 7);
    expect_only_marker(&sub, b.port, topic);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* The bound is for the whole instance, not per client: 3 messages for A,
 * then 3 for B, with max_offline_messages 5, evict A's oldest only. */
START_TEST(test_offline_bound_instance_wide)
{
    struct it_broker b;
    offline_start(&b, "max_offline_messages: 5");
    subscribe_and_leave(b.port, "GID_sensors@@@a", "SensorData/a");
    subscribe_and_leave(b.port, "GID_sensors@@@b", "SensorData/b");
    publish_range(b.port, "SensorData/a", 0, 2);
    publish_range(b.port, "SensorData/b", 0, 2);
    stats_expect(&b, "offline_evicted", 1, IT_WAIT_MS);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@a", false, true);
    receive_range(&sub, "SensorData/a", 1, 2);
    expect_only_marker(&sub, b.port, "SensorData/a");
    it_raw_close(&sub);
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@b", false, true);
    receive_range(&sub, "SensorData/b", 0, 2);
    expect_only_marker(&sub, b.port, "SensorData/b");
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* max_queued bounds an online client's queue only: offline messages are
 * bounded per instance (SEMANTICS), so with max_queued 3 an offline
 * persistent session keeps all 10 messages published to its subscription
 * and all 10 P2P messages sent to it. */
START_TEST(test_offline_not_bounded_by_max_queued)
{
    const char *topic = "SensorData/q3";
    const char *p2p = "SensorData/p2p/GID_sensors@@@q3";
    struct it_broker b;
    struct it_broker_opts o = {.instance_yaml = OFFLINE_INSTANCE, .max_queued = 3};
    it_broker_start(&b, &o);
    subscribe_and_leave(b.port, "GID_sensors@@@q3", topic);
    publish_range(b.port, topic, 0, 9);
    publish_range(b.port, p2p, 0, 9);
    stats_expect(&b, "offline_messages", 20, IT_WAIT_MS);

    struct it_raw sub;
    it_raw_connect_ok(&sub, b.port, "GID_sensors@@@q3", false, true);
    receive_range(&sub, topic, 0, 9);
    receive_range(&sub, p2p, 0, 9);
    expect_only_marker(&sub, b.port, topic);
    it_raw_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *offline_suite(void)
{
    Suite *s = suite_create("it_offline");
    TCase *tc = tcase_create("offline");
    tcase_set_timeout(tc, 60);
    if (it_mode_mosquitto()) {
        it_note_skip("it_offline", "managed naming and offline limits are mqbridge behaviour");
    } else {
        int n = (int)(sizeof order_cases / sizeof order_cases[0]);
        tcase_add_loop_test(tc, test_offline_in_order, 0, n);
        tcase_add_test(tc, test_offline_not_kept);
        tcase_add_test(tc, test_offline_expiry);
        tcase_add_test(tc, test_offline_bound_oldest_evicted);
        tcase_add_test(tc, test_offline_bound_instance_wide);
        tcase_add_test(tc, test_offline_not_bounded_by_max_queued);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(offline_suite)
