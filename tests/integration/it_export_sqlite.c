/* Outbound and status rules into the SQLite sink (connectors/sqlite.c),
 * read back with sqlite3 from the database file:
 *   - 4 clients x 250 QoS 1 messages: one row each (msg_id, topic,
 *     client_id, qos, payload as a BLOB, time_ms), in per-client order;
 *   - status events (connect, clean disconnect, dropped TCP, takeover) in
 *     the events table and the state row per client afterwards;
 *   - an outage: the test holds the database locked (BEGIN EXCLUSIVE) while
 *     publishing goes on, then releases it: nothing lost, nothing twice;
 *   - kill -9 of mqbridge mid-stream: every PUBACKed message, once.
 * No server needed. See harness_export.h for the scenarios. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"

struct sq_sink {
    char dir[64];
    char path[128];
    char msgs[64], state[64], events[64];
    struct ex_sqlite *q;
};

static void sq_write_yaml(struct ex_sink *s, struct buf *yaml)
{
    struct sq_sink *k = s->ctx;
    char text[2048];
    /* busy_timeout_ms: a locked file is an outage after 100 ms, not 5 s */
    int n = snprintf(text, sizeof text,
                     "connectors:\n"
                     "  " EX_CONNECTOR ": { type: sqlite, path: \"%s\", busy_timeout_ms: 100 }\n"
                     "rules:\n"
                     "  - name: " EX_RULE_MSGS "\n"
                     "    type: outbound\n"
                     "    source: { topic: " EX_PARENT " }\n"
                     "    target: { connector: " EX_CONNECTOR ", table: %s, create_table: true }\n"
                     "  - name: " EX_RULE_STATUS "\n"
                     "    type: status\n"
                     "    source: { group: " EX_GROUP " }\n"
                     "    target: { connector: " EX_CONNECTOR ", table: %s, events_table: %s,"
                     " create_table: true }\n",
                     k->path, k->msgs, k->state, k->events);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

static const struct ex_msgs *sq_read_msgs(struct ex_sink *s)
{
    struct sq_sink *k = s->ctx;
    return ex_sqlite_msgs(k->q, k->msgs);
}

static const struct ex_events *sq_read_events(struct ex_sink *s)
{
    struct sq_sink *k = s->ctx;
    return ex_sqlite_events(k->q, k->events);
}

static void sq_read_state(struct ex_sink *s, const char *client_id, struct ex_state *out)
{
    struct sq_sink *k = s->ctx;
    ex_sqlite_state(k->q, k->state, client_id, out);
}

static void sq_outage_begin(struct ex_sink *s)
{
    struct sq_sink *k = s->ctx;
    ex_sqlite_lock(k->q);
}

static void sq_outage_end(struct ex_sink *s)
{
    struct sq_sink *k = s->ctx;
    ex_sqlite_unlock(k->q);
}

static void sq_sink_init(struct ex_sink *s, struct sq_sink *k)
{
    memset(k, 0, sizeof *k);
    it_tmpdir_make(k->dir, sizeof k->dir);
    snprintf(k->path, sizeof k->path, "%s/sink.db", k->dir);
    ex_unique_name(k->msgs, sizeof k->msgs, "telemetry");
    ex_unique_name(k->state, sizeof k->state, "device_status");
    ex_unique_name(k->events, sizeof k->events, "device_events");
    k->q = ex_sqlite_new(k->path);
    *s = (struct ex_sink){
        .type = "sqlite",
        .dedups = true,
        .write_yaml = sq_write_yaml,
        .read_msgs = sq_read_msgs,
        .read_events = sq_read_events,
        .read_state = sq_read_state,
        .outage_begin = sq_outage_begin,
        .outage_end = sq_outage_end,
        .outage_holds_back = true,
        .ctx = k,
    };
}

static void sq_sink_free(struct sq_sink *k)
{
    ex_sqlite_free(k->q);
    it_tmpdir_remove(k->dir);
}

START_TEST(test_sqlite_messages)
{
    struct ex_sink s;
    struct sq_sink k;
    sq_sink_init(&s, &k);
    ex_scenario_messages(&s);
    sq_sink_free(&k);
}
END_TEST

START_TEST(test_sqlite_status)
{
    struct ex_sink s;
    struct sq_sink k;
    sq_sink_init(&s, &k);
    ex_scenario_status(&s);
    sq_sink_free(&k);
}
END_TEST

START_TEST(test_sqlite_locked_mid_stream)
{
    struct ex_sink s;
    struct sq_sink k;
    sq_sink_init(&s, &k);
    ex_scenario_outage(&s);
    sq_sink_free(&k);
}
END_TEST

START_TEST(test_sqlite_kill9_mid_stream)
{
    struct ex_sink s;
    struct sq_sink k;
    sq_sink_init(&s, &k);
    ex_scenario_kill9(&s);
    sq_sink_free(&k);
}
END_TEST

static Suite *export_sqlite_suite(void)
{
    Suite *s = suite_create("it_export_sqlite");
    TCase *tc = tcase_create("sqlite");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_export_sqlite", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_sqlite_messages);
        tcase_add_test(tc, test_sqlite_status);
        tcase_add_test(tc, test_sqlite_locked_mid_stream);
        tcase_add_test(tc, test_sqlite_kill9_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(export_sqlite_suite)
