/* Outbound and status rules into PostgreSQL (connectors/postgres.c), read
 * back with libpq from the server of tests/services (MQB_PG_CONNINFO):
 *   - 4 clients x 250 QoS 1 messages: one row each (msg_id, topic,
 *     client_id, qos, payload as bytea, ts), in per-client order. The test
 *     creates the message table itself, as a database owner would
 *     (create_table: false), with an extra `n bigserial` column that numbers
 *     the rows in the order they were inserted (a heap has no order: a small
 *     row may fill a gap on an earlier page);
 *   - status events in the events table (body JSONB) and the state row;
 *   - the server stopped mid-stream (tests/services/ctl stop pg) while
 *     publishing goes on, then started again: nothing lost, nothing twice;
 *   - kill -9 of mqbridge mid-stream: every PUBACKed message, once.
 * See harness_export.h for the scenarios. */
#include <check.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"

struct pg_sink {
    const char *conninfo;
    PGconn *conn;
    char msgs[64], state[64], events[64];
    struct ex_msgs got_msgs;
    struct ex_events got_events;
};

static void pg_write_yaml(struct ex_sink *s, struct buf *yaml)
{
    struct pg_sink *k = s->ctx;
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "connectors:\n"
                     "  " EX_CONNECTOR ": { type: postgres, conninfo: \"%s\" }\n"
                     "rules:\n"
                     "  - name: " EX_RULE_MSGS "\n"
                     "    type: outbound\n"
                     "    source: { topic: " EX_PARENT " }\n"
                     "    target: { connector: " EX_CONNECTOR ", table: %s, create_table: false }\n"
                     "  - name: " EX_RULE_STATUS "\n"
                     "    type: status\n"
                     "    source: { group: " EX_GROUP " }\n"
                     "    target: { connector: " EX_CONNECTOR ", table: %s, events_table: %s,"
                     " create_table: true }\n",
                     k->conninfo, k->msgs, k->state, k->events);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* A connection, re-established after the server came back. false while
 * the server cannot be reached. */
static bool pg_ready(struct pg_sink *k)
{
    if (!k->conn) {
        char info[512];
        snprintf(info, sizeof info, "%s connect_timeout=5", k->conninfo);
        k->conn = PQconnectdb(info);
        ck_assert(k->conn != NULL);
    } else if (PQstatus(k->conn) != CONNECTION_OK) {
        PQreset(k->conn);
    }
    return PQstatus(k->conn) == CONNECTION_OK;
}

/* Run a query with up to one text parameter. The rows, or NULL when the
 * server is away (the caller keeps what it had) or the table does not
 * exist yet (*missing). Any other error fails the test. */
static PGresult *pg_query(struct pg_sink *k, const char *sql, const char *param, bool *missing)
{
    *missing = false;
    if (!pg_ready(k))
        return NULL;
    PGresult *res = PQexecParams(k->conn, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    bool away = PQstatus(k->conn) != CONNECTION_OK;
    *missing = state && !strcmp(state, "42P01"); /* undefined_table */
    ck_assert_msg(away || *missing, "%s: %s", sql, PQerrorMessage(k->conn));
    PQclear(res);
    return NULL;
}

/* "SELECT <cols> FROM <table quoted> <tail>" into out. */
static void pg_sql(struct pg_sink *k, char *out, size_t len, const char *cols, const char *table,
                   const char *tail)
{
    if (!pg_ready(k)) {
        /* quoting needs no server; our names are plain identifiers */
        snprintf(out, len, "SELECT %s FROM \"%s\" %s", cols, table, tail);
        return;
    }
    char *q = PQescapeIdentifier(k->conn, table, strlen(table));
    ck_assert(q != NULL);
    snprintf(out, len, "SELECT %s FROM %s %s", cols, q, tail);
    PQfreemem(q);
}

static char *pg_text(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return ex_strndup(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

static const struct ex_msgs *pg_read_msgs(struct ex_sink *s)
{
    struct pg_sink *k = s->ctx;
    char sql[512];
    bool missing;
    pg_sql(k, sql, sizeof sql,
           "msg_id, topic, client_id, qos, payload, round(extract(epoch FROM ts) * 1000)::bigint",
           k->msgs, "ORDER BY n");
    PGresult *res = pg_query(k, sql, NULL, &missing);
    if (!res) {
        if (missing)
            ex_msgs_clear(&k->got_msgs);
        return &k->got_msgs;
    }
    ex_msgs_clear(&k->got_msgs);
    for (int i = 0; i < PQntuples(res); i++) {
        struct ex_msg *m = ex_msgs_add(&k->got_msgs);
        m->msg_id = pg_text(res, i, 0);
        m->topic = pg_text(res, i, 1);
        m->client_id = pg_text(res, i, 2);
        m->qos = atoi(PQgetvalue(res, i, 3));
        size_t n = 0;
        unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 4), &n);
        ck_assert(raw != NULL);
        m->payload = (uint8_t *)ex_strndup(raw, n);
        m->len = n;
        PQfreemem(raw);
        m->time_ms = strtoll(PQgetvalue(res, i, 5), NULL, 10);
    }
    PQclear(res);
    return &k->got_msgs;
}

static const struct ex_events *pg_read_events(struct ex_sink *s)
{
    struct pg_sink *k = s->ctx;
    char sql[512];
    bool missing;
    pg_sql(k, sql, sizeof sql,
           "seq, client_id, event_type, channel_id, client_ip, "
           "round(extract(epoch FROM time) * 1000)::bigint, body::text",
           k->events, "ORDER BY seq");
    PGresult *res = pg_query(k, sql, NULL, &missing);
    if (!res) {
        if (missing)
            ex_events_clear(&k->got_events);
        return &k->got_events;
    }
    ex_events_clear(&k->got_events);
    for (int i = 0; i < PQntuples(res); i++) {
        struct ex_event *e = ex_events_add(&k->got_events);
        e->seq = strtoull(PQgetvalue(res, i, 0), NULL, 10);
        e->client_id = pg_text(res, i, 1);
        e->event_type = pg_text(res, i, 2);
        e->channel_id = pg_text(res, i, 3);
        e->client_ip = pg_text(res, i, 4);
        e->time_ms = strtoll(PQgetvalue(res, i, 5), NULL, 10);
        e->body = pg_text(res, i, 6);
    }
    PQclear(res);
    return &k->got_events;
}

static void pg_read_state(struct ex_sink *s, const char *client_id, struct ex_state *out)
{
    struct pg_sink *k = s->ctx;
    char sql[512];
    bool missing;
    memset(out, 0, sizeof *out);
    pg_sql(k, sql, sizeof sql,
           "online, channel_id, client_ip, round(extract(epoch FROM since) * 1000)::bigint, seq, "
           "event_type",
           k->state, "WHERE client_id = $1");
    PGresult *res = pg_query(k, sql, client_id, &missing);
    if (!res)
        return;
    if (PQntuples(res) == 1) {
        out->found = true;
        out->online = !strcmp(PQgetvalue(res, 0, 0), "t");
        snprintf(out->channel_id, sizeof out->channel_id, "%s", PQgetvalue(res, 0, 1));
        snprintf(out->client_ip, sizeof out->client_ip, "%s", PQgetvalue(res, 0, 2));
        out->since = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        out->seq = strtoull(PQgetvalue(res, 0, 4), NULL, 10);
        snprintf(out->event_type, sizeof out->event_type, "%s", PQgetvalue(res, 0, 5));
    }
    PQclear(res);
}

/* The default message schema plus n, the insertion order. */
static void pg_create_msgs_table(struct pg_sink *k)
{
    char sql[512];
    char *q = PQescapeIdentifier(k->conn, k->msgs, strlen(k->msgs));
    ck_assert(q != NULL);
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (n BIGSERIAL, msg_id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
             "client_id TEXT NOT NULL, qos SMALLINT NOT NULL, payload BYTEA NOT NULL, "
             "ts TIMESTAMPTZ NOT NULL)",
             q);
    PQfreemem(q);
    PGresult *res = PQexec(k->conn, sql);
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(k->conn));
    PQclear(res);
}

static void pg_sink_init(struct ex_sink *s, struct pg_sink *k)
{
    memset(k, 0, sizeof *k);
    k->conninfo = ex_env("MQB_PG_CONNINFO");
    ex_unique_name(k->msgs, sizeof k->msgs, "telemetry");
    ex_unique_name(k->state, sizeof k->state, "device_status");
    ex_unique_name(k->events, sizeof k->events, "device_events");
    ck_assert_msg(pg_ready(k), "cannot connect to %s: %s", k->conninfo, PQerrorMessage(k->conn));
    pg_create_msgs_table(k);
    *s = (struct ex_sink){
        .type = "postgres",
        .dedups = true,
        .service = "pg",
        .write_yaml = pg_write_yaml,
        .read_msgs = pg_read_msgs,
        .read_events = pg_read_events,
        .read_state = pg_read_state,
        .ctx = k,
    };
}

static void pg_sink_free(struct pg_sink *k)
{
    PQfinish(k->conn);
    ex_msgs_clear(&k->got_msgs);
    ex_events_clear(&k->got_events);
    free(k->got_msgs.v);
    free(k->got_events.v);
}

START_TEST(test_postgres_messages)
{
    struct ex_sink s;
    struct pg_sink k;
    pg_sink_init(&s, &k);
    ex_scenario_messages(&s);
    pg_sink_free(&k);
}
END_TEST

START_TEST(test_postgres_status)
{
    struct ex_sink s;
    struct pg_sink k;
    pg_sink_init(&s, &k);
    ex_scenario_status(&s);
    pg_sink_free(&k);
}
END_TEST

START_TEST(test_postgres_restarted_mid_stream)
{
    struct ex_sink s;
    struct pg_sink k;
    pg_sink_init(&s, &k);
    ex_env("MQB_SERVICES_DIR");
    ex_scenario_outage(&s);
    pg_sink_free(&k);
}
END_TEST

START_TEST(test_postgres_kill9_mid_stream)
{
    struct ex_sink s;
    struct pg_sink k;
    pg_sink_init(&s, &k);
    ex_scenario_kill9(&s);
    pg_sink_free(&k);
}
END_TEST

static Suite *export_postgres_suite(void)
{
    Suite *s = suite_create("it_export_postgres");
    TCase *tc = tcase_create("postgres");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_export_postgres", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_postgres_messages);
        tcase_add_test(tc, test_postgres_status);
        tcase_add_test(tc, test_postgres_restarted_mid_stream);
        tcase_add_test(tc, test_postgres_kill9_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(export_postgres_suite)
