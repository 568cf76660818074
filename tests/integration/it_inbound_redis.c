/* Inbound rules from Redis streams (connectors/redis.c as a source, mode
 * stream), against the server of tests/services (MQB_REDIS_URL). Each
 * scenario gets its own stream, read by consumer group "mqb", and its own
 * dead-letter stream (given to the rule in the malformed scenario only: the
 * others run read ahead); records are added with XADD (fields mqttSecondTopic,
 * qoslevel, clientId when present, and payload, binary safe). A skipped
 * record must show up in the dead-letter stream with its payload and a
 * `reason` field. See harness_inbound.h for the scenarios. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"
#include "harness_inbound.h"

#define RD_TIMEOUT_S 10

struct rd_source {
    const char *url;
    char host[128];
    int port;
    redisContext *ctx;
    char stream[96], dead[96];
};

/* host and port of redis://host:port[/db]; the tests/services form. */
static void rd_parse_url(struct rd_source *r)
{
    int end = -1;
    ck_assert_msg(sscanf(r->url, "redis://%127[^:/]:%d%n", r->host, &r->port, &end) == 2 &&
                      (r->url[end] == '\0' || r->url[end] == '/'),
                  "MQB_REDIS_URL '%s': want redis://host:port[/db]", r->url);
}

/* A connection to the server, made again when the server was restarted. */
static redisContext *rd_conn(struct rd_source *r)
{
    if (r->ctx && !r->ctx->err)
        return r->ctx;
    if (r->ctx)
        redisFree(r->ctx);
    struct timeval tv = {.tv_sec = RD_TIMEOUT_S};
    r->ctx = redisConnectWithTimeout(r->host, r->port, tv);
    ck_assert_msg(r->ctx && !r->ctx->err, "redis %s: %s", r->url,
                  r->ctx ? r->ctx->errstr : "out of memory");
    redisSetTimeout(r->ctx, tv);
    return r->ctx;
}

static void rd_prepare(struct in_source *s, bool ordered)
{
    struct rd_source *r = s->ctx;
    char name[64];
    ex_unique_name(name, sizeof name, "inb");
    snprintf(r->stream, sizeof r->stream, "%s_commands", name);
    snprintf(r->dead, sizeof r->dead, "%s_dead", name);
}

static void rd_write_connector(struct in_source *s, struct buf *yaml)
{
    struct rd_source *r = s->ctx;
    char text[512];
    int n = snprintf(text, sizeof text, "type: redis, url: \"%s\"", r->url);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

static void rd_write_source(struct in_source *s, struct buf *yaml)
{
    struct rd_source *r = s->ctx;
    char text[512];
    int n = s->dead_letter
                ? snprintf(text, sizeof text,
                           "mode: stream, stream: %s, group: mqb, dead_letter_stream: %s",
                           r->stream, r->dead)
                : snprintf(text, sizeof text, "mode: stream, stream: %s, group: mqb", r->stream);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* Queue XADD stream * field value ... for one record. */
static void rd_append_xadd(struct rd_source *r, const struct in_rec *rec)
{
    const char *argv[11] = {"XADD", r->stream, "*"};
    size_t lens[11] = {4, strlen(r->stream), 1};
    int argc = 3;
    const char *names[] = {"mqttSecondTopic", "qoslevel", "clientId"};
    const char *values[] = {rec->sub_topic, rec->qos, rec->client_id};
    for (int i = 0; i < 3; i++) {
        if (!values[i])
            continue;
        argv[argc] = names[i];
        lens[argc++] = strlen(names[i]);
        argv[argc] = values[i];
        lens[argc++] = strlen(values[i]);
    }
    argv[argc] = "payload";
    lens[argc++] = 7;
    argv[argc] = (const char *)rec->payload;
    lens[argc++] = rec->len;
    ck_assert(redisAppendCommandArgv(rd_conn(r), argc, argv, lens) == REDIS_OK);
}

/* A command with one argument; the connection is made again once when the
 * server was restarted since its last use (the command then finds it
 * closed). */
static redisReply *rd_command(struct rd_source *r, const char *fmt, const char *arg)
{
    redisReply *rep = redisCommand(rd_conn(r), fmt, arg);
    if (!rep && r->ctx->err)
        rep = redisCommand(rd_conn(r), fmt, arg);
    return rep;
}

/* XADD each record, pipelined, and require an id for each. */
static void rd_produce(struct in_source *s, const struct in_rec *recs, size_t n)
{
    struct rd_source *r = s->ctx;
    redisReply *up = rd_command(r, "PING %s", "up"); /* a live connection for the pipeline */
    ck_assert_msg(up != NULL, "PING: %s", r->ctx->errstr);
    freeReplyObject(up);
    for (size_t i = 0; i < n; i++)
        rd_append_xadd(r, &recs[i]);
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = NULL;
        ck_assert_msg(redisGetReply(r->ctx, (void **)&rep) == REDIS_OK && rep, "XADD %s: %s",
                      r->stream, r->ctx->errstr);
        ck_assert_msg(rep->type == REDIS_REPLY_STRING, "XADD %s: %s", r->stream,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "not an id");
        freeReplyObject(rep);
    }
}

/* The field named name of a stream entry's field list, or NULL. */
static const redisReply *rd_field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; fields && i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i];
        if (f->type == REDIS_REPLY_STRING && f->len == strlen(name) &&
            !memcmp(f->str, name, f->len))
            return fields->element[i + 1];
    }
    return NULL;
}

/* XRANGE dead - +: each entry's payload and reason fields. */
static void rd_read_dead(struct in_source *s, struct in_deads *out)
{
    struct rd_source *r = s->ctx;
    in_deads_clear(out);
    redisReply *rep = rd_command(r, "XRANGE %s - +", r->dead);
    ck_assert_msg(rep && rep->type == REDIS_REPLY_ARRAY, "XRANGE %s: %s", r->dead,
                  rep && rep->type == REDIS_REPLY_ERROR ? rep->str : r->ctx->errstr);
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        const redisReply *fields = e->elements == 2 ? e->element[1] : NULL;
        const redisReply *p = rd_field(fields, "payload"), *why = rd_field(fields, "reason");
        in_deads_add(out, p ? p->str : NULL, p ? p->len : 0,
                     why && why->type == REDIS_REPLY_STRING ? why->str : NULL);
    }
    freeReplyObject(rep);
}

/* XINFO GROUPS: the group's pending entries plus its lag (entries not yet
 * read); -1 when the server does not say. */
static int64_t rd_unacked(struct in_source *s)
{
    struct rd_source *r = s->ctx;
    int64_t pending = -1, lag = -1;
    redisReply *rep = rd_command(r, "XINFO GROUPS %s", r->stream);
    ck_assert_msg(rep && rep->type == REDIS_REPLY_ARRAY, "XINFO GROUPS %s: %s", r->stream,
                  rep && rep->type == REDIS_REPLY_ERROR ? rep->str : r->ctx->errstr);
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *g = rep->element[i];
        const redisReply *name = rd_field(g, "name");
        if (!name || name->type != REDIS_REPLY_STRING || strcmp(name->str, "mqb") != 0)
            continue;
        const redisReply *p = rd_field(g, "pending"), *l = rd_field(g, "lag");
        pending = p && p->type == REDIS_REPLY_INTEGER ? p->integer : -1;
        lag = l && l->type == REDIS_REPLY_INTEGER ? l->integer : -1;
    }
    freeReplyObject(rep);
    return pending < 0 || lag < 0 ? -1 : pending + lag;
}

static void rd_source_init(struct in_source *s, struct rd_source *r)
{
    memset(r, 0, sizeof *r);
    r->url = ex_env("MQB_REDIS_URL");
    rd_parse_url(r);
    *s = (struct in_source){
        .type = "redis",
        .reads_ahead = true,
        .service = "redis",
        .prepare = rd_prepare,
        .write_connector = rd_write_connector,
        .write_source = rd_write_source,
        .produce = rd_produce,
        .read_dead = rd_read_dead,
        .unacked = rd_unacked,
        .ctx = r,
    };
}

static void rd_source_free(struct rd_source *r)
{
    if (r->ctx) {
        const char *argv[] = {"DEL", r->stream, r->dead};
        redisReply *rep = r->ctx->err ? NULL : redisCommandArgv(r->ctx, 3, argv, NULL);
        freeReplyObject(rep);
        redisFree(r->ctx);
    }
}

#define RD_TEST(name, scenario) \
    START_TEST(name) \
    { \
        struct in_source s; \
        struct rd_source r; \
        rd_source_init(&s, &r); \
        scenario(&s); \
        rd_source_free(&r); \
    } \
    END_TEST

RD_TEST(test_redis_offline_subscriber_and_stopped_broker, in_scenario_offline)
RD_TEST(test_redis_online_subtopics_qos_p2p, in_scenario_online)
RD_TEST(test_redis_kill9_mid_stream, in_scenario_kill9)
RD_TEST(test_redis_malformed_skipped_counted_dead_lettered, in_scenario_malformed)
RD_TEST(test_redis_down_at_start, in_scenario_source_down)
RD_TEST(test_redis_slow_subscriber_no_loss, in_scenario_slow_subscriber)
RD_TEST(test_redis_reload_mid_stream, in_scenario_reload)
RD_TEST(test_redis_stuck_subscriber_holds_the_rule, in_scenario_stuck_subscriber)
RD_TEST(test_redis_restarted_mid_stream, in_scenario_source_restart)

static Suite *inbound_redis_suite(void)
{
    Suite *s = suite_create("it_inbound_redis");
    TCase *tc = tcase_create("redis");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_inbound_redis", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_redis_offline_subscriber_and_stopped_broker);
        tcase_add_test(tc, test_redis_online_subtopics_qos_p2p);
        tcase_add_test(tc, test_redis_kill9_mid_stream);
        tcase_add_test(tc, test_redis_malformed_skipped_counted_dead_lettered);
        tcase_add_test(tc, test_redis_down_at_start);
        tcase_add_test(tc, test_redis_slow_subscriber_no_loss);
        tcase_add_test(tc, test_redis_reload_mid_stream);
        tcase_add_test(tc, test_redis_stuck_subscriber_holds_the_rule);
        tcase_add_test(tc, test_redis_restarted_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(inbound_redis_suite)
