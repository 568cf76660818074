/* Outbound and status rules into Redis (connectors/redis.c), read back
 * with hiredis from the server of tests/services (MQB_REDIS_URL):
 *   - 4 clients x 250 QoS 1 messages: one stream entry each (fields msgid,
 *     topic, clientid, qos, timestamp, payload), in per-client order;
 *   - status events in the events stream (clientId, time, eventType,
 *     channelId, clientIp, seq, body) and the state hash per client
 *     (<hash_prefix><clientId>: online, channelId, clientIp, since, seq,
 *     eventType);
 *   - the server stopped mid-stream (tests/services/ctl stop redis: SHUTDOWN
 *     SAVE, so what it held survives) while publishing goes on, then started
 *     again: nothing lost, order per client kept (a stream may repeat an
 *     entry after a retry: at least once);
 *   - kill -9 of mqbridge mid-stream: every PUBACKed message (repeats
 *     allowed).
 * See harness_export.h for the scenarios. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"

struct rd_sink {
    const char *url;
    char host[64];
    int port, db;
    redisContext *ctx;
    char msgs[96], events[96], prefix[96];
    char last_msgs[48], last_events[48]; /* stream ids read so far */
    struct ex_msgs got_msgs;
    struct ex_events got_events;
};

static void rd_write_yaml(struct ex_sink *s, struct buf *yaml)
{
    struct rd_sink *k = s->ctx;
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "connectors:\n"
                     "  " EX_CONNECTOR ": { type: redis, url: \"%s\" }\n"
                     "rules:\n"
                     "  - name: " EX_RULE_MSGS "\n"
                     "    type: outbound\n"
                     "    source: { topic: " EX_PARENT " }\n"
                     "    target: { connector: " EX_CONNECTOR ", mode: stream, key: \"%s\" }\n"
                     "  - name: " EX_RULE_STATUS "\n"
                     "    type: status\n"
                     "    source: { group: " EX_GROUP " }\n"
                     "    target: { connector: " EX_CONNECTOR ", stream: \"%s\","
                     " hash_prefix: \"%s\" }\n",
                     k->url, k->msgs, k->events, k->prefix);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* A connection, made again after the server came back. false while the
 * server cannot be reached. */
static bool rd_ready(struct rd_sink *k)
{
    if (k->ctx)
        return true;
    struct timeval tv = {.tv_sec = 2};
    k->ctx = redisConnectWithTimeout(k->host, k->port, tv);
    if (!k->ctx || k->ctx->err) {
        redisFree(k->ctx);
        k->ctx = NULL;
        return false;
    }
    redisSetTimeout(k->ctx, (struct timeval){.tv_sec = 5});
    if (k->db) {
        redisReply *r = redisCommand(k->ctx, "SELECT %d", k->db);
        ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "SELECT %d failed", k->db);
        freeReplyObject(r);
    }
    return true;
}

/* A command's reply, or NULL when the connection broke (it is dropped and
 * made again next time). An error reply fails the test. */
static redisReply *rd_command(struct rd_sink *k, int argc, const char **argv)
{
    if (!rd_ready(k))
        return NULL;
    redisReply *r = redisCommandArgv(k->ctx, argc, argv, NULL);
    if (!r) {
        redisFree(k->ctx);
        k->ctx = NULL;
        return NULL;
    }
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s %s: %s", argv[0], argv[1], r->str);
    return r;
}

/* The value of field name in a field list (name, value, ...), or NULL. */
static const redisReply *rd_field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            !strcmp(fields->element[i]->str, name))
            return fields->element[i + 1];
    return NULL;
}

static char *rd_str(const redisReply *fields, const char *name)
{
    const redisReply *v = rd_field(fields, name);
    return v && v->type == REDIS_REPLY_STRING ? ex_strndup(v->str, v->len) : NULL;
}

/* Copy field name into out ("" when absent). */
static void rd_copy(const redisReply *fields, const char *name, char *out, size_t len)
{
    const redisReply *v = rd_field(fields, name);
    snprintf(out, len, "%.*s", v && v->type == REDIS_REPLY_STRING ? (int)v->len : 0,
             v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

static long long rd_num(const redisReply *fields, const char *name)
{
    const redisReply *v = rd_field(fields, name);
    return v && v->type == REDIS_REPLY_STRING ? strtoll(v->str, NULL, 10) : -1;
}

/* The entries of stream key after id last (updated): XRANGE key (last +. */
static redisReply *rd_xrange(struct rd_sink *k, const char *key, char *last)
{
    char from[64];
    snprintf(from, sizeof from, "%s%s", last[0] ? "(" : "", last[0] ? last : "-");
    const char *argv[] = {"XRANGE", key, from, "+"};
    redisReply *r = rd_command(k, 4, argv);
    if (!r)
        return NULL;
    ck_assert_msg(r->type == REDIS_REPLY_ARRAY, "XRANGE %s: not an array", key);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        ck_assert(e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
                  e->element[0]->type == REDIS_REPLY_STRING &&
                  e->element[1]->type == REDIS_REPLY_ARRAY);
    }
    if (r->elements)
        snprintf(last, 48, "%s", r->element[r->elements - 1]->element[0]->str);
    return r;
}

static const struct ex_msgs *rd_read_msgs(struct ex_sink *s)
{
    struct rd_sink *k = s->ctx;
    redisReply *r = rd_xrange(k, k->msgs, k->last_msgs);
    for (size_t i = 0; r && i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        struct ex_msg *m = ex_msgs_add(&k->got_msgs);
        m->msg_id = rd_str(f, "msgid");
        m->topic = rd_str(f, "topic");
        m->client_id = rd_str(f, "clientid");
        m->qos = (int)rd_num(f, "qos");
        m->time_ms = rd_num(f, "timestamp");
        const redisReply *p = rd_field(f, "payload");
        if (p && p->type == REDIS_REPLY_STRING) {
            m->payload = (uint8_t *)ex_strndup(p->str, p->len);
            m->len = p->len;
        }
    }
    freeReplyObject(r);
    return &k->got_msgs;
}

static const struct ex_events *rd_read_events(struct ex_sink *s)
{
    struct rd_sink *k = s->ctx;
    redisReply *r = rd_xrange(k, k->events, k->last_events);
    for (size_t i = 0; r && i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        struct ex_event *e = ex_events_add(&k->got_events);
        e->client_id = rd_str(f, "clientId");
        e->event_type = rd_str(f, "eventType");
        e->channel_id = rd_str(f, "channelId");
        e->client_ip = rd_str(f, "clientIp");
        e->time_ms = rd_num(f, "time");
        e->seq = (uint64_t)rd_num(f, "seq");
        e->body = rd_str(f, "body");
    }
    freeReplyObject(r);
    return &k->got_events;
}

static void rd_read_state(struct ex_sink *s, const char *client_id, struct ex_state *out)
{
    struct rd_sink *k = s->ctx;
    char key[192];
    memset(out, 0, sizeof *out);
    snprintf(key, sizeof key, "%s%s", k->prefix, client_id);
    const char *argv[] = {"HGETALL", key};
    redisReply *r = rd_command(k, 2, argv);
    if (!r)
        return;
    ck_assert_msg(r->type == REDIS_REPLY_ARRAY, "HGETALL %s: not an array", key);
    if (r->elements) {
        out->found = true;
        out->online = rd_num(r, "online") == 1;
        out->since = rd_num(r, "since");
        out->seq = (uint64_t)rd_num(r, "seq");
        rd_copy(r, "channelId", out->channel_id, sizeof out->channel_id);
        rd_copy(r, "clientIp", out->client_ip, sizeof out->client_ip);
        rd_copy(r, "eventType", out->event_type, sizeof out->event_type);
        char id[128];
        rd_copy(r, "clientId", id, sizeof id);
        ck_assert_msg(!strcmp(id, client_id), "%s: clientId '%s'", key, id);
    }
    freeReplyObject(r);
}

static void rd_sink_init(struct ex_sink *s, struct rd_sink *k)
{
    memset(k, 0, sizeof *k);
    k->url = ex_env("MQB_REDIS_URL");
    ck_assert_msg(sscanf(k->url, "redis://%63[^:/]:%d/%d", k->host, &k->port, &k->db) >= 2,
                  "MQB_REDIS_URL '%s': want redis://HOST:PORT[/DB]", k->url);
    char name[64];
    ex_unique_name(name, sizeof name, "it");
    snprintf(k->msgs, sizeof k->msgs, "mqb:%s:telemetry", name);
    snprintf(k->events, sizeof k->events, "mqb:%s:events", name);
    snprintf(k->prefix, sizeof k->prefix, "mqb:%s:presence:", name);
    ck_assert_msg(rd_ready(k), "cannot connect to %s", k->url);
    *s = (struct ex_sink){
        .type = "redis",
        .dedups = false,
        .service = "redis",
        .write_yaml = rd_write_yaml,
        .read_msgs = rd_read_msgs,
        .read_events = rd_read_events,
        .read_state = rd_read_state,
        .ctx = k,
    };
}

static void rd_sink_free(struct rd_sink *k)
{
    redisFree(k->ctx);
    ex_msgs_clear(&k->got_msgs);
    ex_events_clear(&k->got_events);
    free(k->got_msgs.v);
    free(k->got_events.v);
}

START_TEST(test_redis_messages)
{
    struct ex_sink s;
    struct rd_sink k;
    rd_sink_init(&s, &k);
    ex_scenario_messages(&s);
    rd_sink_free(&k);
}
END_TEST

START_TEST(test_redis_status)
{
    struct ex_sink s;
    struct rd_sink k;
    rd_sink_init(&s, &k);
    ex_scenario_status(&s);
    rd_sink_free(&k);
}
END_TEST

START_TEST(test_redis_restarted_mid_stream)
{
    struct ex_sink s;
    struct rd_sink k;
    rd_sink_init(&s, &k);
    ex_env("MQB_SERVICES_DIR");
    ex_scenario_outage(&s);
    rd_sink_free(&k);
}
END_TEST

START_TEST(test_redis_kill9_mid_stream)
{
    struct ex_sink s;
    struct rd_sink k;
    rd_sink_init(&s, &k);
    ex_scenario_kill9(&s);
    rd_sink_free(&k);
}
END_TEST

static Suite *export_redis_suite(void)
{
    Suite *s = suite_create("it_export_redis");
    TCase *tc = tcase_create("redis");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_export_redis", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_redis_messages);
        tcase_add_test(tc, test_redis_status);
        tcase_add_test(tc, test_redis_restarted_mid_stream);
        tcase_add_test(tc, test_redis_kill9_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(export_redis_suite)
