/* Inbound rules from a PostgreSQL outbox (connectors/postgres.c as a
 * source), against the server of tests/services (MQB_PG_CONNINFO). Each
 * scenario gets its own outbox and dead-letter table, both made by the
 * connector (create_table: true); rows are added with INSERT (columns
 * topic, qos, client_id, payload; SQL NULL when absent; the payload sent in
 * binary). A skipped row must show up in the dead-letter table with its
 * payload and a `reason`. See harness_inbound.h for the scenarios. */
#include <check.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"
#include "harness_inbound.h"

struct pg_source {
    const char *conninfo;
    PGconn *pg;
    char table[96], dead[96];
    char *insert, *select_dead, *count; /* SQL with the escaped table names */
};

/* A connection to the server, made again when the server was restarted. */
static PGconn *pgs_conn(struct pg_source *p)
{
    if (p->pg && PQstatus(p->pg) == CONNECTION_OK)
        return p->pg;
    PQfinish(p->pg);
    p->pg = PQconnectdb(p->conninfo);
    ck_assert_msg(PQstatus(p->pg) == CONNECTION_OK, "PostgreSQL %s: %s", p->conninfo,
                  PQerrorMessage(p->pg));
    return p->pg;
}

/* fmt with one %s, filled with the escaped identifier name. */
static char *pgs_sql(struct pg_source *p, const char *fmt, const char *name)
{
    char *id = PQescapeIdentifier(pgs_conn(p), name, strlen(name));
    ck_assert(id != NULL);
    size_t n = strlen(fmt) + strlen(id);
    char *sql = malloc(n);
    ck_assert(sql != NULL);
    snprintf(sql, n, fmt, id);
    PQfreemem(id);
    return sql;
}

static void pgs_exec(struct pg_source *p, const char *sql)
{
    PGresult *res = PQexec(pgs_conn(p), sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQstatus(p->pg) != CONNECTION_OK) {
        PQclear(res); /* the server was restarted since: connect again */
        res = PQexec(pgs_conn(p), sql);
    }
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s: %s", sql,
                  PQresultErrorMessage(res));
    PQclear(res);
}

static void pgs_prepare(struct in_source *s, bool ordered)
{
    struct pg_source *p = s->ctx;
    char name[64];
    ex_unique_name(name, sizeof name, "inb");
    snprintf(p->table, sizeof p->table, "outbox_%s", name);
    snprintf(p->dead, sizeof p->dead, "outbox_%s_dead", name);
    free(p->insert);
    free(p->select_dead);
    free(p->count);
    p->count = pgs_sql(p, "SELECT count(*) FROM %s", p->table);
    p->insert = pgs_sql(
        p, "INSERT INTO %s (topic, qos, client_id, payload) VALUES ($1, $2, $3, $4)", p->table);
    p->select_dead = pgs_sql(p, "SELECT payload, reason FROM %s", p->dead);
}

static void pgs_write_connector(struct in_source *s, struct buf *yaml)
{
    struct pg_source *p = s->ctx;
    char text[512];
    int n = snprintf(text, sizeof text, "type: postgres, conninfo: \"%s\"", p->conninfo);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

static void pgs_write_source(struct in_source *s, struct buf *yaml)
{
    struct pg_source *p = s->ctx;
    char text[512];
    int n = snprintf(text, sizeof text, "table: %s, create_table: true, dead_letter_table: %s",
                     p->table, p->dead);
    ck_assert(n > 0 && (size_t)n < sizeof text);
    buf_append(yaml, text, (size_t)n);
}

/* One transaction of INSERTs, in order. */
static void pgs_produce(struct in_source *s, const struct in_rec *recs, size_t n)
{
    struct pg_source *p = s->ctx;
    pgs_exec(p, "BEGIN");
    for (size_t i = 0; i < n; i++) {
        const char *values[4] = {recs[i].sub_topic, recs[i].qos, recs[i].client_id,
                                 (const char *)recs[i].payload};
        int lens[4] = {0, 0, 0, (int)recs[i].len};
        int formats[4] = {0, 0, 0, 1}; /* the payload in binary: bytes as they are */
        PGresult *res = PQexecParams(p->pg, p->insert, 4, NULL, values, lens, formats, 0);
        ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s: %s", p->insert,
                      PQresultErrorMessage(res));
        PQclear(res);
    }
    pgs_exec(p, "COMMIT");
}

/* Every dead-letter row's payload and reason (binary results: the bytes of
 * a bytea or of a text alike). */
static void pgs_read_dead(struct in_source *s, struct in_deads *out)
{
    struct pg_source *p = s->ctx;
    in_deads_clear(out);
    PGresult *res = PQexecParams(pgs_conn(p), p->select_dead, 0, NULL, NULL, NULL, NULL, 1);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", p->select_dead,
                  PQresultErrorMessage(res));
    for (int i = 0; i < PQntuples(res); i++) {
        char *reason = PQgetisnull(res, i, 1)
                           ? NULL
                           : ex_strndup(PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
        in_deads_add(out, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0), reason);
        free(reason);
    }
    PQclear(res);
}

/* Rows left in the outbox: the ones not acknowledged (deleted) yet. */
static int64_t pgs_unacked(struct in_source *s)
{
    struct pg_source *p = s->ctx;
    PGresult *res = PQexec(pgs_conn(p), p->count);
    if (PQresultStatus(res) != PGRES_TUPLES_OK && PQstatus(p->pg) != CONNECTION_OK) {
        PQclear(res); /* the server was restarted since: connect again */
        res = PQexec(pgs_conn(p), p->count);
    }
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1, "%s: %s", p->count,
                  PQresultErrorMessage(res));
    int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

static void pgs_source_init(struct in_source *s, struct pg_source *p)
{
    memset(p, 0, sizeof *p);
    p->conninfo = ex_env("MQB_PG_CONNINFO");
    *s = (struct in_source){
        .type = "postgres",
        .service = "pg",
        .prepare = pgs_prepare,
        .write_connector = pgs_write_connector,
        .write_source = pgs_write_source,
        .produce = pgs_produce,
        .read_dead = pgs_read_dead,
        .unacked = pgs_unacked,
        .ctx = p,
    };
}

static void pgs_source_free(struct pg_source *p)
{
    free(p->insert);
    free(p->select_dead);
    free(p->count);
    PQfinish(p->pg);
}

#define PGS_TEST(name, scenario) \
    START_TEST(name) \
    { \
        struct in_source s; \
        struct pg_source p; \
        pgs_source_init(&s, &p); \
        scenario(&s); \
        pgs_source_free(&p); \
    } \
    END_TEST

PGS_TEST(test_postgres_offline_subscriber_and_stopped_broker, in_scenario_offline)
PGS_TEST(test_postgres_online_subtopics_qos_p2p, in_scenario_online)
PGS_TEST(test_postgres_kill9_mid_stream, in_scenario_kill9)
PGS_TEST(test_postgres_malformed_skipped_counted_dead_lettered, in_scenario_malformed)
PGS_TEST(test_postgres_down_at_start, in_scenario_source_down)
PGS_TEST(test_postgres_slow_subscriber_no_loss, in_scenario_slow_subscriber)
PGS_TEST(test_postgres_reload_mid_stream, in_scenario_reload)
PGS_TEST(test_postgres_restarted_mid_stream, in_scenario_source_restart)

static Suite *inbound_postgres_suite(void)
{
    Suite *s = suite_create("it_inbound_postgres");
    TCase *tc = tcase_create("postgres");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_inbound_postgres", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_postgres_offline_subscriber_and_stopped_broker);
        tcase_add_test(tc, test_postgres_online_subtopics_qos_p2p);
        tcase_add_test(tc, test_postgres_kill9_mid_stream);
        tcase_add_test(tc, test_postgres_malformed_skipped_counted_dead_lettered);
        tcase_add_test(tc, test_postgres_down_at_start);
        tcase_add_test(tc, test_postgres_slow_subscriber_no_loss);
        tcase_add_test(tc, test_postgres_reload_mid_stream);
        tcase_add_test(tc, test_postgres_restarted_mid_stream);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(inbound_postgres_suite)
