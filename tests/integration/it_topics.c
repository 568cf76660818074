/* Topic filters: '+' and '#' matching, '$' topics hidden from wildcards
 * at the first level, overlapping subscriptions delivering once at the
 * highest QoS, SUBACK 0x80 for an invalid filter next to granted ones, and
 * UNSUBSCRIBE stopping delivery. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness.h"

/* Topics published once each, payload = topic ("a/été": UTF-8 levels). */
static const char *const wild_topics[] = {"a",   "a/b",   "a/b/c",  "/x",    "x",
                                          "b/x", "a/été", "$foo/x", "$SYS/x"};

/* [MQTT-4.7.1-1..3] [MQTT-4.7.2-1]: which of wild_topics each filter gets,
 * as a space-separated list. */
static const struct {
    const char *filter;
    const char *match;
} wild_cases[] = {
    {"a/+", "a/b a/été"},
    {"a/#", "a a/b a/b/c a/été"},
    {"+", "a x"},
    {"+/x", "/x b/x"},
    {"#", "a a/b a/b/c /x x b/x a/été"},
    {"+/+", "a/b /x b/x a/été"},
    {"/+", "/x"},
    {"+/#", "a a/b a/b/c /x x b/x a/été"},
    {"$foo/#", "$foo/x"},
    {"$foo/+", "$foo/x"},
    {"a/b/c", "a/b/c"},
    {"a/été", "a/été"},
};
enum { WILD_N = sizeof wild_cases / sizeof wild_cases[0] };

static bool in_list(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p++)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

static size_t list_len(const char *list)
{
    size_t n = *list ? 1 : 0;
    for (const char *p = list; *p; p++)
        n += *p == ' ';
    return n;
}

struct wild_ctx {
    struct it_client *subs;
};

static bool wild_any_extra(void *ctx)
{
    struct wild_ctx *w = ctx;
    for (size_t i = 0; i < WILD_N; i++)
        if (it_client_count(&w->subs[i]) > list_len(wild_cases[i].match))
            return true;
    return false;
}

START_TEST(test_wildcards)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client subs[WILD_N], pub;
    for (size_t i = 0; i < WILD_N; i++) {
        char id[32];
        snprintf(id, sizeof id, "it-wild-%zu", i);
        struct it_connect_opts o = {.client_id = id, .clean = true};
        ck_assert_int_eq(it_client_open(&subs[i], b.port, &o), 0);
        ck_assert_msg(it_client_subscribe(&subs[i], wild_cases[i].filter, 1) == 1,
                      "SUBSCRIBE %s refused", wild_cases[i].filter);
    }
    struct it_connect_opts po = {.client_id = "it-wild-pub", .clean = true};
    ck_assert_int_eq(it_client_open(&pub, b.port, &po), 0);
    size_t nt = sizeof wild_topics / sizeof wild_topics[0];
    for (size_t t = 0; t < nt; t++)
        ck_assert_int_eq(it_client_publish(&pub, wild_topics[t], wild_topics[t], 1, false), 0);
    ck_assert(it_client_wait_published(&pub, (int)nt, IT_WAIT_MS));

    for (size_t i = 0; i < WILD_N; i++)
        ck_assert_msg(it_client_wait_msgs(&subs[i], list_len(wild_cases[i].match), IT_WAIT_MS),
                      "filter %s: %zu messages, want %zu (%s)", wild_cases[i].filter,
                      it_client_count(&subs[i]), list_len(wild_cases[i].match),
                      wild_cases[i].match);
    struct wild_ctx w = {subs};
    ck_assert_msg(!it_wait_until(wild_any_extra, &w, IT_QUIET_MS), "a filter got extra messages");
    for (size_t i = 0; i < WILD_N; i++) {
        for (size_t k = 0; k < it_client_count(&subs[i]); k++) {
            const char *topic = it_client_msg(&subs[i], k).topic;
            ck_assert_msg(in_list(wild_cases[i].match, topic), "filter %s matched '%s'",
                          wild_cases[i].filter, topic);
            for (size_t j = 0; j < k; j++)
                ck_assert_msg(strcmp(it_client_msg(&subs[i], j).topic, topic) != 0,
                              "filter %s: '%s' twice", wild_cases[i].filter, topic);
        }
        it_client_close(&subs[i]);
    }
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.3.5-1] "ov/#" at QoS 1 and "ov/b" at QoS 2 by one client: a
 * message on ov/b comes once, at QoS 2; one on ov/c once at QoS 1. */
START_TEST(test_overlapping_subscriptions_once)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client sub, pub;
    struct it_connect_opts so = {.client_id = "it-ov-sub", .clean = true};
    struct it_connect_opts po = {.client_id = "it-ov-pub", .clean = true};
    ck_assert_int_eq(it_client_open(&sub, b.port, &so), 0);
    ck_assert_int_eq(it_client_subscribe(&sub, "ov/#", 1), 1);
    ck_assert_int_eq(it_client_subscribe(&sub, "ov/b", 2), 2);
    ck_assert_int_eq(it_client_open(&pub, b.port, &po), 0);

    ck_assert_int_eq(it_client_publish(&pub, "ov/b", "both", 2, false), 0);
    ck_assert(it_client_wait_msgs(&sub, 1, IT_WAIT_MS));
    ck_assert_msg(it_client_quiet(&sub, 1, IT_QUIET_MS), "overlapping filters: delivered twice");
    ck_assert_str_eq(it_client_msg(&sub, 0).payload, "both");
    ck_assert_int_eq(it_client_msg(&sub, 0).qos, 2);

    ck_assert_int_eq(it_client_publish(&pub, "ov/c", "one", 2, false), 0);
    ck_assert(it_client_wait_msgs(&sub, 2, IT_WAIT_MS));
    ck_assert(it_client_quiet(&sub, 2, IT_QUIET_MS));
    ck_assert_str_eq(it_client_msg(&sub, 1).payload, "one");
    ck_assert_int_eq(it_client_msg(&sub, 1).qos, 1);
    it_client_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.8.4-3] subscribing again to the same filter replaces the
 * subscription (new QoS, still one delivery per message) and re-sends the
 * retained message. */
START_TEST(test_resubscribe_replaces)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_client sub, pub;
    struct it_connect_opts so = {.client_id = "it-resub", .clean = true};
    struct it_connect_opts po = {.client_id = "it-resub-pub", .clean = true};
    ck_assert_int_eq(it_client_open(&pub, b.port, &po), 0);
    ck_assert_int_eq(it_client_publish(&pub, "resub/t", "kept", 1, true), 0);
    ck_assert(it_client_wait_published(&pub, 1, IT_WAIT_MS));
    ck_assert_int_eq(it_client_open(&sub, b.port, &so), 0);

    ck_assert_int_eq(it_client_subscribe(&sub, "resub/t", 0), 0);
    ck_assert(it_client_wait_msgs(&sub, 1, IT_WAIT_MS));
    ck_assert_int_eq(it_client_msg(&sub, 0).qos, 0);
    ck_assert_int_eq(it_client_subscribe(&sub, "resub/t", 2), 2);
    ck_assert(it_client_wait_msgs(&sub, 2, IT_WAIT_MS));
    struct it_msg again = it_client_msg(&sub, 1);
    ck_assert_str_eq(again.payload, "kept");
    ck_assert(again.retain);
    ck_assert_int_eq(again.qos, 1);

    ck_assert_int_eq(it_client_publish(&pub, "resub/t", "live", 2, false), 0);
    ck_assert(it_client_wait_msgs(&sub, 3, IT_WAIT_MS));
    ck_assert_msg(it_client_quiet(&sub, 3, IT_QUIET_MS), "two subscriptions after re-SUBSCRIBE");
    ck_assert_str_eq(it_client_msg(&sub, 2).payload, "live");
    ck_assert_int_eq(it_client_msg(&sub, 2).qos, 2);
    it_client_close(&pub);
    it_client_close(&sub);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.8.4-5] one return code per filter: invalid filters get 0x80 and
 * the valid ones of the same SUBSCRIBE are granted and deliver. */
START_TEST(test_suback_failure_code)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw r;
    struct it_connect_opts o = {.client_id = "it-suback", .clean = true};
    ck_assert_int_eq(it_raw_connect(&r, b.port, &o, NULL), 0);
    const char *filters[] = {"ok/1", "a/#/b", "a+", "ok/2", "a/b#"};
    const uint8_t qos[] = {1, 1, 0, 2, 0};
    const uint8_t want[] = {1, 0x80, 0x80, 2, 0x80};
    ck_assert_int_eq(it_raw_subscribe(&r, 42, filters, qos, 5), 0);
    struct it_pkt p;
    ck_assert_int_eq(it_raw_next(&r, &p, IT_WAIT_MS), MQTT_SUBACK);
    ck_assert_uint_eq(p.pid, 42); /* [MQTT-3.8.4-2] */
    ck_assert_uint_eq(p.rc_count, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(p.rcs[i] == want[i], "%s: SUBACK code 0x%02x, want 0x%02x", filters[i],
                      p.rcs[i], want[i]);
    it_pkt_clear(&p);

    ck_assert_int_eq(it_raw_publish(&r, "ok/2", "granted", 7, 0, false, false, 0), 0);
    ck_assert_int_eq(it_raw_next(&r, &p, IT_WAIT_MS), MQTT_PUBLISH);
    ck_assert_str_eq(p.topic, "ok/2");
    it_pkt_clear(&p);
    it_raw_close(&r);
    it_broker_cleanup(&b);
}
END_TEST

/* [MQTT-3.10.4-4] UNSUBACK carries the packet id, also for a filter that
 * was never subscribed [MQTT-3.10.4-5]; [MQTT-3.10.4-2] no more delivery
 * on the removed filter while the other one still delivers. */
START_TEST(test_unsubscribe_stops_delivery)
{
    struct it_broker b;
    it_broker_start(&b, NULL);
    struct it_raw sub;
    struct it_client pub;
    struct it_connect_opts so = {.client_id = "it-unsub", .clean = true};
    struct it_connect_opts po = {.client_id = "it-unsub-pub", .clean = true};
    ck_assert_int_eq(it_raw_connect(&sub, b.port, &so, NULL), 0);
    ck_assert_int_eq(it_raw_sub1(&sub, "un/a", 0), 0);
    ck_assert_int_eq(it_raw_sub1(&sub, "un/b", 0), 0);
    ck_assert_int_eq(it_client_open(&pub, b.port, &po), 0);
    ck_assert_int_eq(it_client_publish(&pub, "un/a", "before", 0, false), 0);
    struct it_pkt p;
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_PUBLISH);
    ck_assert_str_eq(p.topic, "un/a");
    it_pkt_clear(&p);

    const char *filter = "un/a", *never = "never/subscribed";
    ck_assert_int_eq(it_raw_unsubscribe(&sub, 77, &filter, 1), 0);
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_UNSUBACK);
    ck_assert_uint_eq(p.pid, 77);
    it_pkt_clear(&p);
    ck_assert_int_eq(it_raw_unsubscribe(&sub, 78, &never, 1), 0);
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_UNSUBACK);
    ck_assert_uint_eq(p.pid, 78);
    it_pkt_clear(&p);

    ck_assert_int_eq(it_client_publish(&pub, "un/a", "after", 1, false), 0);
    ck_assert(it_client_wait_published(&pub, 2, IT_WAIT_MS));
    ck_assert_int_eq(it_client_publish(&pub, "un/b", "marker", 1, false), 0);
    ck_assert_int_eq(it_raw_next(&sub, &p, IT_WAIT_MS), MQTT_PUBLISH);
    ck_assert_msg(strcmp(p.topic, "un/b") == 0, "delivery on '%s' after UNSUBSCRIBE", p.topic);
    it_pkt_clear(&p);
    ck_assert_int_eq(it_raw_next(&sub, NULL, IT_QUIET_MS), IT_RAW_TIMEOUT);
    it_raw_close(&sub);
    it_client_close(&pub);
    it_broker_cleanup(&b);
}
END_TEST

static Suite *topics_suite(void)
{
    Suite *s = suite_create("it_topics");
    TCase *tc = tcase_create("topics");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_wildcards);
    tcase_add_test(tc, test_overlapping_subscriptions_once);
    tcase_add_test(tc, test_resubscribe_replaces);
    if (!it_mode_mosquitto())
        tcase_add_test(tc, test_suback_failure_code);
    else
        it_note_skip("test_suback_failure_code", "mosquitto closes on an invalid filter");
    tcase_add_test(tc, test_unsubscribe_stops_delivery);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(topics_suite)
