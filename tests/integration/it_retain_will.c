/* Retained messages (set, replace, clear, RETAIN flag on delivery,
 * persistence across a restart) and will messages (published on an
 * abnormal close or a keep-alive timeout, not after DISCONNECT, retained
 * when the will retain flag asks). */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness.h"

static void client_connect(struct it_client *c, uint16_t port, const char *id)
{
    struct it_connect_opts o = {.client_id = id, .clean = true};
    ck_assert_msg(it_client_open(c, port, &o) == 0, "%s: CONNECT refused", id);
}

/* Message i of c must be payload on topic with the given RETAIN flag. */
static void expect_msg(struct it_client *c, size_t i, const char *topic, const char *payload,
                       bool retain)
{
    ck_assert_msg(it_client_wait_msgs(c, i + 1, IT_WAIT_MS), "no message %zu ('%s' on %s)", i,
                  payload, topic);
    struct it_msg m = it_client_msg(c, i);
    ck_assert_str_eq(m.topic, topic);
    ck_assert_str_eq(m.payload, payload);
    ck_assert_msg(m.retain == retain, "'%s' on %s: RETAIN %d, want %d", payload, topic, m.retain,
                  retain);
}

static void publish_wait(struct it_client *pub, const char *topic, const char *payload, int qos,
                         bool retain)
{
    int before;
    pthread_mutex_lock(&pub->mu);
    before = pub->published;
    pthread_mutex_unlock(&pub->mu);
    ck_assert_int_eq(it_client_publish(pub, topic, payload, qos, retain), 0);
    ck_assert(it_client_wait_published(pub, before + 1, IT_WAIT_MS));
}

/* [MQTT-3.3.1-5..12] set, replace, clear; RETAIN=1 only for the delivery
 * caused by a new subscription, RETAIN=0 on live delivery. */
START_TEST(test_retained_set_replace_clear)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client pub, s1, s2, s3, s4;
    client_connect(&pub, b.port, "it-ret-pub");
    publish_wait(&pub, "ret/a", "v1", 1, true);

    client_connect(&s1, b.port, "it-ret-s1");
    ck_assert_int_eq(it_client_subscribe(&s1, "ret/a", 1), 1);
    expect_msg(&s1, 0, "ret/a", "v1", true); /* [MQTT-3.3.1-6] [MQTT-3.3.1-8] */

    publish_wait(&pub, "ret/a", "v2", 1, true);
    expect_msg(&s1, 1, "ret/a", "v2", false); /* [MQTT-3.3.1-9] */
    client_connect(&s2, b.port, "it-ret-s2");
    ck_assert_int_eq(it_client_subscribe(&s2, "ret/a", 1), 1);
    expect_msg(&s2, 0, "ret/a", "v2", true); /* replaced, one retained per topic */
    ck_assert(it_client_quiet(&s2, 1, IT_QUIET_MS));

    publish_wait(&pub, "ret/a", "", 1, true); /* [MQTT-3.3.1-10] clears */
    expect_msg(&s1, 2, "ret/a", "", false);
    client_connect(&s3, b.port, "it-ret-s3");
    ck_assert_int_eq(it_client_subscribe(&s3, "ret/a", 1), 1);
    ck_assert_msg(it_client_quiet(&s3, 0, IT_QUIET_MS), "cleared retained message delivered");

    publish_wait(&pub, "ret/a", "v3", 1, true);
    publish_wait(&pub, "ret/a", "live", 1, false); /* [MQTT-3.3.1-12] keeps v3 */
    client_connect(&s4, b.port, "it-ret-s4");
    ck_assert_int_eq(it_client_subscribe(&s4, "ret/a", 1), 1);
    expect_msg(&s4, 0, "ret/a", "v3", true);
    ck_assert(it_client_quiet(&s4, 1, IT_QUIET_MS));

    it_client_close(&s4);
    it_client_close(&s3);
    it_client_close(&s2);
    it_client_close(&s1);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* Count the messages of c among [from, to) with payload p, RETAIN=1 and
 * QoS qos. */
static int count_retained(struct it_client *c, size_t from, size_t to, const char *p, int qos)
{
    int n = 0;
    for (size_t i = from; i < to; i++) {
        struct it_msg m = it_client_msg(c, i);
        n += m.retain && m.qos == qos && strcmp(m.payload, p) == 0;
    }
    return n;
}

/* Retained messages survive SIGTERM + restart, wildcard subscriptions
 * receive every matching one, each at min(its QoS, the subscription's). */
START_TEST(test_retained_survive_restart)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client pub, sub;
    client_connect(&pub, b.port, "it-retp-pub");
    publish_wait(&pub, "retp/x/1", "a", 1, true);
    publish_wait(&pub, "retp/x/2", "b", 1, true);
    publish_wait(&pub, "retp/y", "c", 0, true);
    publish_wait(&pub, "retp/z", "d", 2, true);
    it_client_close(&pub);
    ck_assert_int_eq(it_broker_stop(&b), 0);
    it_broker_restart(&b);

    client_connect(&sub, b.port, "it-retp-sub");
    ck_assert_int_eq(it_client_subscribe(&sub, "retp/x/+", 1), 1);
    ck_assert(it_client_wait_msgs(&sub, 2, IT_WAIT_MS));
    ck_assert(it_client_quiet(&sub, 2, IT_QUIET_MS));
    ck_assert_int_eq(count_retained(&sub, 0, 2, "a", 1), 1);
    ck_assert_int_eq(count_retained(&sub, 0, 2, "b", 1), 1);
    ck_assert_int_eq(it_client_subscribe(&sub, "retp/#", 1), 1);
    ck_assert(it_client_wait_msgs(&sub, 6, IT_WAIT_MS));
    ck_assert(it_client_quiet(&sub, 6, IT_QUIET_MS));
    ck_assert_int_eq(count_retained(&sub, 2, 6, "a", 1), 1);
    ck_assert_int_eq(count_retained(&sub, 2, 6, "c", 0), 1);
    ck_assert_int_eq(count_retained(&sub, 2, 6, "d", 1), 1);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* A subscriber on will/# and a raw client with a will on topic. */
static void will_setup(struct it_broker *b, struct it_client *sub, struct it_raw *r,
                       const char *topic, const char *payload, uint16_t keep_alive, bool retain)
{
    it_broker_start(b, NULL);
    client_connect(sub, b->port, "it-will-sub");
    ck_assert_int_eq(it_client_subscribe(sub, "will/#", 1), 1);
    struct it_connect_opts o = {.client_id = "it-will",
                                .clean = true,
                                .keep_alive = keep_alive,
                                .will_topic = topic,
                                .will_payload = payload,
                                .will_qos = 1,
                                .will_retain = retain};
    ck_assert_int_eq(it_raw_connect(r, b->port, &o, NULL), 0);
}

/* [MQTT-3.1.2-8] closing the socket without DISCONNECT publishes the will. */
START_TEST(test_will_on_socket_close)
{
    struct it_broker b;
    struct it_client sub;
    struct it_raw r;
    will_setup(&b, &sub, &r, "will/close", "gone-close", 0, false);
    it_raw_close(&r);
    expect_msg(&sub, 0, "will/close", "gone-close", false);
    ck_assert_int_eq(it_client_msg(&sub, 0).qos, 1);
    ck_assert(it_client_quiet(&sub, 1, IT_QUIET_MS));
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* A keep-alive timeout is an abnormal close too: the will is published. */
START_TEST(test_will_on_keepalive_timeout)
{
    struct it_broker b;
    struct it_client sub;
    struct it_raw r;
    will_setup(&b, &sub, &r, "will/ka", "gone-ka", 1, false);
    ck_assert_int_eq(it_raw_next(&r, NULL, 10000), IT_RAW_EOF);
    ck_assert(it_client_wait_msgs(&sub, 1, IT_WAIT_MS));
    expect_msg(&sub, 0, "will/ka", "gone-ka", false);
    it_raw_close(&r);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.1.2-8] the broker closing the connection for a protocol error
 * publishes the will; a DISCONNECT with reserved flags set is such an
 * error [MQTT-3.14.1-1], not a clean goodbye. */
static const struct {
    const char *name;
    const char *hex;
} will_error_cases[] = {
    {"PUBLISH QoS 3", "36 08 0003 612f62 0001 78"},
    {"DISCONNECT with flags 1", "e1 00"},
};

START_TEST(test_will_on_protocol_error)
{
    for (size_t i = 0; i < sizeof will_error_cases / sizeof will_error_cases[0]; i++) {
        struct it_broker b;
        struct it_client sub;
        struct it_raw r;
        will_setup(&b, &sub, &r, "will/err", will_error_cases[i].name, 0, false);
        ck_assert_int_eq(it_raw_send_hex(&r, will_error_cases[i].hex), 0);
        ck_assert_msg(it_raw_next(&r, NULL, IT_WAIT_MS) == IT_RAW_EOF, "%s: not closed",
                      will_error_cases[i].name);
        expect_msg(&sub, 0, "will/err", will_error_cases[i].name, false);
        it_raw_close(&r);
        it_client_close(&sub);
        it_broker_cleanup(&b);
    }
}
END_TEST

/* [MQTT-3.1.2-10] [MQTT-3.14.4-3] DISCONNECT discards the will. A marker
 * published afterwards on the will topic must be the only message. */
START_TEST(test_no_will_after_disconnect)
{
    struct it_broker b;
    struct it_client sub, pub;
    struct it_raw r;
    will_setup(&b, &sub, &r, "will/clean", "must-not-appear", 0, false);
    ck_assert_int_eq(it_raw_leave(&r), 0);
    client_connect(&pub, b.port, "it-will-marker");
    publish_wait(&pub, "will/clean", "marker", 1, false);
    expect_msg(&sub, 0, "will/clean", "marker", false);
    ck_assert_msg(it_client_quiet(&sub, 1, IT_QUIET_MS), "a will after DISCONNECT");
    it_client_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.1.2-17] a will with the retain flag becomes the retained
 * message of its topic. */
START_TEST(test_will_retain_flag)
{
    struct it_broker b;
    struct it_client sub, late;
    struct it_raw r;
    will_setup(&b, &sub, &r, "will/ret", "kept", 0, true);
    it_raw_close(&r);
    expect_msg(&sub, 0, "will/ret", "kept", false); /* live: RETAIN=0 */
    client_connect(&late, b.port, "it-will-late");
    ck_assert_int_eq(it_client_subscribe(&late, "will/ret", 1), 1);
    expect_msg(&late, 0, "will/ret", "kept", true);
    it_client_close(&late);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *retain_will_suite(void)
{
    Suite *s = suite_create("it_retain_will");
    TCase *tc = tcase_create("retain_will");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_retained_set_replace_clear);
    tcase_add_test(tc, test_retained_survive_restart);
    tcase_add_test(tc, test_will_on_socket_close);
    tcase_add_test(tc, test_will_on_keepalive_timeout);
    tcase_add_test(tc, test_will_on_protocol_error);
    tcase_add_test(tc, test_no_will_after_disconnect);
    tcase_add_test(tc, test_will_retain_flag);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(retain_will_suite)
