/* postgres_suite: the PostgreSQL export connector (connectors/postgres.c)
 * against a real server: MQB_PG_CONNINFO from tests/services/start (run
 * under scripts/test or tests/services/run). Settings and rule validation
 * with positions, the default schema, exact read-back, export order,
 * idempotent repeats, template columns, the status-state rule under late
 * and repeated events, REJECT of a bad row, RETRY for a missing table, an
 * unreachable server and a server restart (of a private server), and a
 * throughput figure.
 *
 * Tables and schemas are named <prefix>_<n> with a prefix unique to this
 * run; the tests drop theirs, and a teardown drops whatever a failed test
 * left behind. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../connectors/connector.h"
#include "check_main.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

extern const struct connector_ops postgres_connector;
static const struct connector_ops *ops = &postgres_connector;

static char prefix[40]; /* set before the tests fork: shared by all */
static unsigned name_counter;

static const char *conninfo(void)
{
    const char *ci = getenv("MQB_PG_CONNINFO");
    ck_assert_msg(ci && *ci, "MQB_PG_CONNINFO is not set: run under scripts/test or export "
                             "MQB_PG_CONNINFO from tests/services/start");
    return ci;
}

/* A new table or schema name of this run. */
static const char *unique_name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "%s_%s%u", prefix, what, ++name_counter);
    return out;
}

/* ---- The test's own connection ------------------------------------------------ */

static PGconn *db_connect_to(const char *ci)
{
    PGconn *db = PQconnectdb(ci);
    ck_assert_msg(PQstatus(db) == CONNECTION_OK, "test connection: %s", PQerrorMessage(db));
    return db;
}

static PGconn *db_connect(void)
{
    return db_connect_to(conninfo());
}

static void db_exec(PGconn *db, const char *sql)
{
    PGresult *res = PQexec(db, sql);
    ExecStatusType st = PQresultStatus(res);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
                  PQresultErrorMessage(res));
    PQclear(res);
}

/* Rows of a query with text parameters; the caller PQclears. */
static PGresult *db_query(PGconn *db, const char *sql, int n, const char *const *params)
{
    PGresult *res = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(res));
    return res;
}

static long long db_count(PGconn *db, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    PGresult *res = db_query(db, sql, 0, NULL);
    long long n = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

/* Drop every table and schema of this run (tests that failed leave some). */
static void drop_all(void)
{
    const char *ci = getenv("MQB_PG_CONNINFO");
    if (!ci || !*ci)
        return;
    PGconn *db = PQconnectdb(ci);
    char like[64];
    PQclear(PQexec(db, "SET client_min_messages = warning"));
    snprintf(like, sizeof like, "%s\\_%%", prefix);
    const char *params[1] = {like};
    PGresult *res =
        PQexecParams(db,
                     "SELECT format('DROP TABLE IF EXISTS %I.%I CASCADE', schemaname, tablename) "
                     "FROM pg_tables WHERE tablename LIKE $1 UNION ALL "
                     "SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', nspname) "
                     "FROM pg_namespace WHERE nspname LIKE $1",
                     1, NULL, params, NULL, NULL, 0);
    for (int i = 0; PQresultStatus(res) == PGRES_TUPLES_OK && i < PQntuples(res); i++)
        PQclear(PQexec(db, PQgetvalue(res, i, 0)));
    PQclear(res);
    PQfinish(db);
}

/* ---- Settings trees -------------------------------------------------------------
 * A map built here sits at t.yaml:1:1; its i-th item at line i + 2, column
 * 3; a nested `columns` map's j-th item at line 20 + j, column 5. */

struct item {
    const char *key, *value;
};

static struct kvmap *map_new(int line, int col, unsigned cap)
{
    struct kvmap *m = calloc(1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    m->items = calloc(cap, sizeof *m->items);
    ck_assert_ptr_nonnull(m->items);
    m->file = "t.yaml";
    m->line = line;
    m->col = col;
    return m;
}

static struct kv *map_add(struct kvmap *m, const char *key, int line, int col)
{
    struct kv *it = &m->items[m->count++];
    it->key = strdup(key);
    it->file = "t.yaml";
    it->line = line;
    it->col = col;
    return it;
}

static struct kvmap *map_build(const struct item *items, const struct item *columns)
{
    struct kvmap *m = map_new(1, 1, 16);
    unsigned i = 0;
    for (; items && items[i].key; i++)
        map_add(m, items[i].key, (int)i + 2, 3)->value = strdup(items[i].value);
    if (columns) {
        struct kv *it = map_add(m, "columns", (int)i + 2, 3);
        it->map = map_new(it->line, 5, 80);
        for (unsigned j = 0; columns[j].key; j++)
            map_add(it->map, columns[j].key, 20 + (int)j, 5)->value = strdup(columns[j].value);
    }
    return m;
}

/* ---- Connector and rules -------------------------------------------------------- */

static struct connector *sink_new(const char *ci, const char *connect_timeout)
{
    struct item items[3] = {{"conninfo", ci}};
    if (connect_timeout)
        items[1] = (struct item){"connect_timeout_s", connect_timeout};
    struct kvmap *settings = map_build(items, NULL);
    struct connector *c = NULL;
    char err[512] = "";
    ck_assert_msg(ops->create("pg", settings, &c, err, sizeof err) == 0, "create: %s", err);
    kvmap_free(settings);
    return c;
}

static struct connector *sink_open_to(const char *ci)
{
    struct connector *c = sink_new(ci, NULL);
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
    return c;
}

static struct connector *sink_open(void)
{
    return sink_open_to(conninfo());
}

static struct rule *rule_new(struct connector *c, enum rule_type type, const struct item *items,
                             const struct item *columns)
{
    struct rule *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->name = strdup("r");
    r->type = type;
    r->enabled = true;
    r->file = "t.yaml";
    r->line = r->col = 1;
    r->options = map_build(items, columns);
    r->target_options = map_new(1, 1, 1);
    return r;
}

static struct rule *rule_ok(struct connector *c, enum rule_type type, const struct item *items,
                            const struct item *columns)
{
    struct rule *r = rule_new(c, type, items, columns);
    char err[512] = "";
    ck_assert_msg(ops->compile(c, r, &r->compiled, err, sizeof err) == 0, "compile: %s", err);
    return r;
}

static void rule_free(struct connector *c, struct rule *r)
{
    if (r->compiled)
        ops->release(c, r->compiled);
    kvmap_free(r->options);
    kvmap_free(r->target_options);
    free(r->name);
    free(r);
}

/* ---- Records ---------------------------------------------------------------------- */

struct msg {
    struct export_record rec;
    char client[64], topic[64];
    uint8_t payload[128];
};

static const char *const clients[] = {"GID_a@@@dev1", "GID_a@@@dev2", "GID_b@@@x-9"};

/* Message i: client i % 3, qos i % 3, a payload with zero bytes and bytes
 * >= 0x80, id 0xabc00000 + i, time 1.7e12 + i ms. */
static void msg_make(struct msg *m, const struct rule *r, unsigned i)
{
    memset(m, 0, sizeof *m);
    snprintf(m->client, sizeof m->client, "%s", clients[i % 3]);
    snprintf(m->topic, sizeof m->topic, "SensorData/%u", i % 3);
    uint32_t len = 5 + i % 7;
    for (uint32_t k = 0; k < len; k++)
        m->payload[k] = (uint8_t)(k % 3 == 1 ? 0 : 0xf0 + (i + k) % 16);
    m->rec = (struct export_record){
        .seqno = i + 1,
        .kind = RECORD_MESSAGE,
        .rule = r,
        .msg_id = 0xabc00000ull + i,
        .time_ms = 1700000000000 + i,
        .qos = (uint8_t)(i % 3),
        .client_id = m->client,
        .topic = m->topic,
        .payload = m->payload,
        .payload_len = len,
    };
}

static void msg_json(struct msg *m, const char *json)
{
    size_t n = strlen(json);
    ck_assert_uint_lt(n, sizeof m->payload);
    memcpy(m->payload, json, n);
    m->rec.payload_len = (uint32_t)n;
}

/* Export; checks rc and *acked, returns err (static). */
static const char *export_expect(struct connector *c, struct export_record *const *recs, size_t n,
                                 int want_rc, size_t want_acked)
{
    static char err[512];
    size_t acked = 99999;
    err[0] = '\0';
    int rc = ops->export(c, recs, n, &acked, err, sizeof err);
    ck_assert_msg(rc == want_rc, "export: rc %d, want %d (%s)", rc, want_rc, err);
    ck_assert_msg(acked == want_acked, "export: acked %zu, want %zu (%s)", acked, want_acked, err);
    return err;
}

static const char *export_msgs(struct connector *c, struct msg *m, size_t n, int want_rc,
                               size_t want_acked)
{
    struct export_record **recs = calloc(n ? n : 1, sizeof *recs);
    ck_assert_ptr_nonnull(recs);
    for (size_t i = 0; i < n; i++)
        recs[i] = &m[i].rec;
    const char *err = export_expect(c, recs, n, want_rc, want_acked);
    free(recs);
    return err;
}

static void hex_of(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
    out[2 * n] = '\0';
}

/* Rows of the default schema equal the messages (ordered by msg_id, which
 * grows with i). */
static void check_messages(PGconn *db, const char *table, const struct msg *m, size_t n)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT msg_id, topic, client_id, qos, encode(payload, 'hex'), "
             "(extract(epoch FROM ts) * 1000)::bigint FROM %s ORDER BY msg_id",
             table);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), (int)n);
    for (size_t i = 0; i < n; i++) {
        char hex[17], phex[260], qos[4], ms[24];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        hex_of(m[i].payload, m[i].rec.payload_len, phex);
        snprintf(qos, sizeof qos, "%u", m[i].rec.qos);
        snprintf(ms, sizeof ms, "%" PRId64, m[i].rec.time_ms);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 0), hex);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 1), m[i].topic);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 2), m[i].client);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 3), qos);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 4), phex);
        ck_assert_str_eq(PQgetvalue(res, (int)i, 5), ms);
    }
    PQclear(res);
}

/* ---- Validation (no server needed) ----------------------------------------------------- */

static const struct {
    const char *name;
    struct item items[4];
    const char *want;
} settings_cases[] = {
    {"unknown key",
     {{"conninfo", "host=x"}, {"statement_timeout", "5"}},
     "t.yaml:3:3: connector 'pg': unknown key 'statement_timeout' (did you mean "
     "'statement_timeout_ms'?)"},
    {"missing conninfo",
     {{"connect_timeout_s", "5"}},
     "t.yaml:1:1: connector 'pg': missing required key 'conninfo'"},
    {"connect timeout 0",
     {{"conninfo", "host=x"}, {"connect_timeout_s", "0"}},
     "t.yaml:3:3: connector 'pg': connect_timeout_s: expected an integer 1..3600, got '0'"},
    {"statement timeout not a number",
     {{"conninfo", "host=x"}, {"statement_timeout_ms", "10s"}},
     "t.yaml:3:3: connector 'pg': statement_timeout_ms: expected an integer 0..86400000, got "
     "'10s'"},
    {"bad conninfo",
     {{"conninfo", "host=localhost port"}},
     "t.yaml:2:3: connector 'pg': conninfo: not a valid libpq connection string: missing \"=\" "
     "after \"port\" in connection info string"},
    /* libpq would quote the text near the error: here the password */
    {"bad conninfo with a password",
     {{"conninfo", "host=x password=hunter2 x"}},
     "t.yaml:2:3: connector 'pg': conninfo: not a valid libpq connection string"},
};

START_TEST(test_settings_errors)
{
    struct kvmap *settings = map_build(settings_cases[_i].items, NULL);
    struct connector *c = NULL;
    char err[512] = "";
    ck_assert_int_eq(ops->create("pg", settings, &c, err, sizeof err), -1);
    ck_assert_ptr_null(c);
    ck_assert_msg(!strcmp(err, settings_cases[_i].want), "%s:\n got  %s\n want %s",
                  settings_cases[_i].name, err, settings_cases[_i].want);
    kvmap_free(settings);
}
END_TEST

static const struct {
    const char *name;
    enum rule_type type;
    struct item items[4];
    struct item columns[4];
    const char *want;
} rule_cases[] = {
    {"unknown key",
     RULE_OUTBOUND,
     {{"table", "t"}, {"create_tabel", "true"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': unknown key 'create_tabel' (did you mean 'create_table'?)"},
    {"missing table",
     RULE_STATUS,
     {{"events_table", "e"}},
     {{NULL, NULL}},
     "t.yaml:1:1: rule 'r': missing required key 'table'"},
    {"bad identifier",
     RULE_OUTBOUND,
     {{"table", "tele-metry"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: 'tele-metry' is not a table name ([schema.]table, each "
     "[A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"three parts",
     RULE_OUTBOUND,
     {{"table", "a.b.c"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: 'a.b.c' is not a table name"},
    {"empty schema",
     RULE_STATUS,
     {{"table", "s"}, {"events_table", ".ev"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': events_table: '.ev' is not a table name"},
    {"injection",
     RULE_OUTBOUND,
     {{"table", "t; DROP TABLE x"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: 't; DROP TABLE x' is not a table name"},
    {"create_table",
     RULE_OUTBOUND,
     {{"table", "t"}, {"create_table", "1"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': create_table: expected true or false, got '1'"},
    {"bad column",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"a", "${qos}"}, {"b\"c", "${topic}"}},
     "t.yaml:21:5: rule 'r': columns: 'b\"c' is not an identifier"},
    {"bad template",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"temp", "${payload.}"}},
     "t.yaml:20:5: rule 'r': columns: key 'temp': "},
    {"dollar",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"price", "5$"}},
     "t.yaml:20:5: rule 'r': columns: key 'price': "},
    {"columns on status",
     RULE_STATUS,
     {{"table", "t"}},
     {{"a", "${qos}"}},
     "t.yaml:3:3: rule 'r': unknown key 'columns'"},
    {"inbound",
     RULE_INBOUND,
     {{"table", "t"}},
     {{NULL, NULL}},
     "t.yaml:1:1: rule 'r': the postgres connector takes outbound and status rules only"},
};

START_TEST(test_rule_errors)
{
    struct connector *c = sink_new("host=127.0.0.1", NULL);
    struct rule *r = rule_new(c, rule_cases[_i].type, rule_cases[_i].items,
                              rule_cases[_i].columns[0].key ? rule_cases[_i].columns : NULL);
    char err[512] = "";
    ck_assert_int_eq(ops->compile(c, r, &r->compiled, err, sizeof err), -1);
    ck_assert_ptr_null(r->compiled);
    ck_assert_msg(!strncmp(err, rule_cases[_i].want, strlen(rule_cases[_i].want)),
                  "%s:\n got  %s\n want %s...", rule_cases[_i].name, err, rule_cases[_i].want);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- Messages ------------------------------------------------------------------------------ */

/* create_table: true makes the default schema; rows read back exactly;
 * repeats of any part of the history add nothing. */
START_TEST(test_messages_exact_and_idempotent)
{
    enum { N = 60 };
    char table[64];
    unique_name(table, sizeof table, "msgs");
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg *m = calloc(N, sizeof *m);
    ck_assert_ptr_nonnull(m);
    for (unsigned i = 0; i < N; i++)
        msg_make(&m[i], r, i);
    m[7].rec.payload_len = 0; /* an empty payload is a row too */

    export_msgs(c, m, 20, CONNECTOR_OK, 20);
    export_msgs(c, m + 20, N - 20, CONNECTOR_OK, N - 20);
    PGconn *db = db_connect();
    check_messages(db, table, m, N);
    export_msgs(c, m + 5, 30, CONNECTOR_OK, 30);
    export_msgs(c, m, N, CONNECTOR_OK, N);
    ck_assert_int_eq(db_count(db, table), N);
    check_messages(db, table, m, N);
    export_msgs(c, m, 0, CONNECTOR_OK, 0);

    const char *params[1] = {table};
    PGresult *res = db_query(db,
                             "SELECT column_name || ' ' || data_type || ' ' || is_nullable "
                             "FROM information_schema.columns WHERE table_name = $1 "
                             "ORDER BY ordinal_position",
                             1, params);
    static const char *const want[] = {
        "msg_id text NO",  "topic text NO",    "client_id text NO",
        "qos smallint NO", "payload bytea NO", "ts timestamp with time zone NO",
    };
    ck_assert_int_eq(PQntuples(res), (int)ARRAY_LEN(want));
    for (int i = 0; i < (int)ARRAY_LEN(want); i++)
        ck_assert_str_eq(PQgetvalue(res, i, 0), want[i]);
    PQclear(res);

    PQfinish(db);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* Rows arrive in export order: the test's table numbers them. */
START_TEST(test_export_order)
{
    enum { N = 30 };
    char table[64], sql[512];
    unique_name(table, sizeof table, "order");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (ord BIGSERIAL, msg_id TEXT PRIMARY KEY, topic TEXT, "
             "client_id TEXT, qos INTEGER, payload BYTEA, ts TIMESTAMPTZ)",
             table);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg m[N];
    for (unsigned i = 0; i < N; i++) {
        msg_make(&m[i], r, i);
        m[i].rec.msg_id = 0xfff00000ull - i * 7; /* ids fall while the order rises */
    }
    export_msgs(c, m, 10, CONNECTOR_OK, 10);
    export_msgs(c, m + 10, N - 10, CONNECTOR_OK, N - 10);
    snprintf(sql, sizeof sql, "SELECT msg_id, client_id FROM %s ORDER BY ord", table);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), N);
    for (int i = 0; i < N; i++) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        ck_assert_str_eq(PQgetvalue(res, i, 0), hex);
        ck_assert_str_eq(PQgetvalue(res, i, 1), m[i].client);
    }
    PQclear(res);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* Template columns into typed columns: ${payload} goes binary into bytea
 * and as text into jsonb; the others as text, typed by the server. */
START_TEST(test_custom_columns)
{
    char table[64], sql[512];
    unique_name(table, sizeof table, "custom");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (msg_id TEXT PRIMARY KEY, device TEXT, temp INTEGER, raw BYTEA, "
             "body JSONB, note TEXT, at BIGINT)",
             table);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct item cols[] = {
        {"device", "${device}"},
        {"temp", "${payload.temp}"},
        {"raw", "${payload}"},
        {"body", "${payload}"},
        {"note", "${group}|${topic}|${qos}"},
        {"at", "${timestamp}"},
        {NULL, NULL},
    };
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, cols);
    static const char *const json[] = {
        "{\"temp\": 21, \"unit\": \"C\"}",
        "{\"temp\": -4}",
        "{\"temp\": 0, \"nested\": {\"a\": [1, 2]}}",
    };
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++) {
        msg_make(&m[i], r, i);
        msg_json(&m[i], json[i]);
    }
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    export_msgs(c, m, 3, CONNECTOR_OK, 3);

    snprintf(sql, sizeof sql,
             "SELECT device, temp, encode(raw, 'hex'), body = $1::jsonb, note, at, msg_id "
             "FROM %s WHERE msg_id = $2",
             table);
    static const struct {
        const char *device, *temp, *note, *at;
    } want[] = {
        {"dev1", "21", "GID_a|SensorData/0|0", "1700000000000"},
        {"dev2", "-4", "GID_a|SensorData/1|1", "1700000000001"},
        {"x-9", "0", "GID_b|SensorData/2|2", "1700000000002"},
    };
    ck_assert_int_eq(db_count(db, table), 3);
    for (unsigned i = 0; i < 3; i++) {
        char hex[17], phex[260];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        hex_of(m[i].payload, m[i].rec.payload_len, phex);
        const char *params[2] = {json[i], hex};
        PGresult *res = db_query(db, sql, 2, params);
        ck_assert_int_eq(PQntuples(res), 1);
        ck_assert_str_eq(PQgetvalue(res, 0, 0), want[i].device);
        ck_assert_str_eq(PQgetvalue(res, 0, 1), want[i].temp);
        ck_assert_str_eq(PQgetvalue(res, 0, 2), phex);
        ck_assert_str_eq(PQgetvalue(res, 0, 3), "t");
        ck_assert_str_eq(PQgetvalue(res, 0, 4), want[i].note);
        ck_assert_str_eq(PQgetvalue(res, 0, 5), want[i].at);
        PQclear(res);
    }
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* ---- Status events ------------------------------------------------------------------------ */

struct event {
    const char *client, *type, *channel;
    uint64_t seq;
    /* the state row after it */
    const char *online, *want_channel, *want_type;
    uint64_t want_seq;
};

#define CH_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define CH_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define CH_C "cccccccccccccccccccccccccccccccc"
#define DEV "GID_s@@@d1"

static const struct event status_steps[] = {
    {DEV, "connect", CH_A, 10, "t", CH_A, "connect", 10},
    {DEV, "disconnect", CH_A, 11, "f", CH_A, "disconnect", 11},
    {DEV, "tcpclean", CH_A, 12, "f", CH_A, "tcpclean", 12},
    {DEV, "connect", CH_B, 20, "t", CH_B, "connect", 20},
    /* late: channel A's tcpclean, emitted earlier, arrives now */
    {DEV, "tcpclean", CH_A, 13, "t", CH_B, "connect", 20},
    /* takeover: channel A's close comes after B's connect (greater seq) */
    {DEV, "tcpclean", CH_A, 21, "t", CH_B, "connect", 20},
    /* a repeat, and an old connect of another channel */
    {DEV, "connect", CH_B, 20, "t", CH_B, "connect", 20},
    {DEV, "connect", CH_C, 5, "t", CH_B, "connect", 20},
    {DEV, "disconnect", CH_B, 30, "f", CH_B, "disconnect", 30},
    /* a lower seq never overwrites, even a connect */
    {DEV, "connect", CH_A, 25, "f", CH_B, "disconnect", 30},
    {DEV, "connect", CH_C, 40, "t", CH_C, "connect", 40},
    /* first seen with a close: offline from the start */
    {"GID_s@@@d2", "tcpclean", CH_A, 41, "f", CH_A, "tcpclean", 41},
};

struct status_rec {
    struct export_record rec;
    char body[256];
};

static void status_make(struct status_rec *s, const struct rule *r, const struct event *e)
{
    memset(s, 0, sizeof *s);
    int64_t t = 1570868366000 + (int64_t)e->seq;
    snprintf(s->body, sizeof s->body,
             "{\"clientId\":\"%s\",\"time\":%" PRId64 ",\"eventType\":\"%s\","
             "\"channelId\":\"%s\",\"clientIp\":\"10.0.0.5:52144\",\"seq\":%" PRIu64 "}",
             e->client, t, e->type, e->channel, e->seq);
    s->rec = (struct export_record){
        .kind = RECORD_STATUS,
        .rule = r,
        .msg_id = e->seq,
        .time_ms = t,
        .client_id = e->client,
        .payload = (const uint8_t *)s->body,
        .payload_len = (uint32_t)strlen(s->body),
        .event_type = e->type,
        .channel_id = e->channel,
        .client_ip = "10.0.0.5:52144",
    };
}

static void check_state(PGconn *db, const char *table, const struct event *e, unsigned step)
{
    char sql[512], since[24], seq[24];
    snprintf(sql, sizeof sql,
             "SELECT online, channel_id, event_type, seq, "
             "(extract(epoch FROM since) * 1000)::bigint, client_ip FROM %s WHERE client_id = $1",
             table);
    const char *params[1] = {e->client};
    PGresult *res = db_query(db, sql, 1, params);
    ck_assert_int_eq(PQntuples(res), 1);
    snprintf(seq, sizeof seq, "%" PRIu64, e->want_seq);
    snprintf(since, sizeof since, "%" PRId64, 1570868366000 + (int64_t)e->want_seq);
    ck_assert_msg(!strcmp(PQgetvalue(res, 0, 0), e->online), "step %u: online %s", step,
                  PQgetvalue(res, 0, 0));
    ck_assert_str_eq(PQgetvalue(res, 0, 1), e->want_channel);
    ck_assert_str_eq(PQgetvalue(res, 0, 2), e->want_type);
    ck_assert_str_eq(PQgetvalue(res, 0, 3), seq);
    ck_assert_str_eq(PQgetvalue(res, 0, 4), since);
    ck_assert_str_eq(PQgetvalue(res, 0, 5), "10.0.0.5:52144");
    PQclear(res);
}

/* Schema-qualified tables made by create_table; the state after each event
 * of a history with late, repeated and taken-over events. */
START_TEST(test_status_state_rule)
{
    char schema[64], state[140], events[140], sql[512];
    unique_name(schema, sizeof schema, "s");
    snprintf(state, sizeof state, "%s.state", schema);
    snprintf(events, sizeof events, "%s.events", schema);
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {
        {"table", state}, {"events_table", events}, {"create_table", "yes"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_STATUS, items, NULL);
    size_t n = ARRAY_LEN(status_steps);
    struct status_rec *s = calloc(n, sizeof *s);
    struct export_record **recs = calloc(n, sizeof *recs);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(recs);
    for (unsigned i = 0; i < n; i++) {
        status_make(&s[i], r, &status_steps[i]);
        recs[i] = &s[i].rec;
        export_expect(c, &recs[i], 1, CONNECTOR_OK, 1);
        check_state(db, state, &status_steps[i], i);
    }
    ck_assert_int_eq(db_count(db, events), (long long)n - 1); /* seq 20 came twice */
    export_expect(c, recs, n, CONNECTOR_OK, n);
    ck_assert_int_eq(db_count(db, events), (long long)n - 1);
    ck_assert_int_eq(db_count(db, state), 2);
    check_state(db, state, &status_steps[n - 2], 99);
    check_state(db, state, &status_steps[n - 1], 99);

    snprintf(sql, sizeof sql,
             "SELECT client_id, event_type, channel_id, client_ip, "
             "(extract(epoch FROM \"time\") * 1000)::bigint, body->>'eventType', "
             "(body->>'seq')::bigint FROM %s WHERE seq = 21",
             events);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), DEV);
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "tcpclean");
    ck_assert_str_eq(PQgetvalue(res, 0, 2), CH_A);
    ck_assert_str_eq(PQgetvalue(res, 0, 3), "10.0.0.5:52144");
    ck_assert_str_eq(PQgetvalue(res, 0, 4), "1570868366021");
    ck_assert_str_eq(PQgetvalue(res, 0, 5), "tcpclean");
    ck_assert_str_eq(PQgetvalue(res, 0, 6), "21");
    PQclear(res);

    PQfinish(db);
    free(recs);
    free(s);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* ---- Failures ------------------------------------------------------------------------------ */

/* "abc" for an INTEGER column: that record is refused, the ones before it
 * committed, the ones after it go in the next export. */
START_TEST(test_reject_bad_row)
{
    char table[64], sql[256];
    unique_name(table, sizeof table, "reject");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (msg_id TEXT PRIMARY KEY, temp INTEGER, note TEXT NOT NULL)", table);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct item cols[] = {{"temp", "${payload.temp}"}, {"note", "${payload.note}"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, cols);
    static const char *const json[] = {
        "{\"temp\":1,\"note\":\"a\"}",       "{\"temp\":2,\"note\":\"b\"}",
        "{\"temp\":\"abc\",\"note\":\"c\"}", "{\"temp\":4,\"note\":\"d\"}",
        "{\"temp\":5,\"note\":\"e\"}",
    };
    struct msg m[5];
    for (unsigned i = 0; i < 5; i++) {
        msg_make(&m[i], r, i);
        msg_json(&m[i], json[i]);
    }
    const char *err = export_msgs(c, m, 5, CONNECTOR_REJECT, 2);
    ck_assert_msg(strstr(err, "invalid input syntax for type integer") &&
                      strstr(err, "GID_b@@@x-9") && strstr(err, "22P02"),
                  "err: %s", err);
    ck_assert_int_eq(db_count(db, table), 2);
    export_msgs(c, m + 3, 2, CONNECTOR_OK, 2);
    snprintf(sql, sizeof sql, "SELECT string_agg(note, '' ORDER BY temp) FROM %s", table);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "abde");
    PQclear(res);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* Two statements per status event: a refused events row (the owner's
 * CHECK) rejects the right event, and its state change is not kept. */
START_TEST(test_reject_status_event)
{
    char state[64], events[64], sql[512];
    unique_name(state, sizeof state, "state");
    unique_name(events, sizeof events, "events");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (seq BIGINT PRIMARY KEY, client_id TEXT, event_type TEXT "
             "CHECK (event_type <> 'tcpclean'), channel_id TEXT, client_ip TEXT, "
             "\"time\" TIMESTAMPTZ, body JSONB)",
             events);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {
        {"table", state}, {"events_table", events}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_STATUS, items, NULL);
    const struct event steps[] = {
        {DEV, "connect", CH_A, 1, "t", CH_A, "connect", 1},
        {"GID_s@@@d2", "connect", CH_B, 2, "t", CH_B, "connect", 2},
        {DEV, "tcpclean", CH_A, 3, "t", CH_A, "connect", 1},
        {DEV, "disconnect", CH_A, 4, "f", CH_A, "disconnect", 4},
    };
    struct status_rec s[4];
    struct export_record *recs[4];
    for (unsigned i = 0; i < 4; i++) {
        status_make(&s[i], r, &steps[i]);
        recs[i] = &s[i].rec;
    }
    const char *err = export_expect(c, recs, 4, CONNECTOR_REJECT, 2);
    ck_assert_msg(strstr(err, "check constraint") && strstr(err, "23514"), "err: %s", err);
    check_state(db, state, &steps[2], 2);
    check_state(db, state, &steps[1], 1);
    ck_assert_int_eq(db_count(db, events), 2);
    export_expect(c, recs + 3, 1, CONNECTOR_OK, 1);
    check_state(db, state, &steps[3], 3);
    ck_assert_int_eq(db_count(db, events), 3);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* Zero bytes cannot go into a text column: the first record is refused
 * (nothing acknowledged), and a repeat of the same batch agrees. */
START_TEST(test_reject_first_row)
{
    char table[64], sql[256];
    unique_name(table, sizeof table, "nul");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql, "CREATE TABLE %s (msg_id TEXT PRIMARY KEY, body TEXT)", table);
    db_exec(db, sql);
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct item cols[] = {{"body", "${payload}"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, cols);
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++)
        msg_make(&m[i], r, i);
    msg_json(&m[1], "plain text");
    export_msgs(c, m, 3, CONNECTOR_REJECT, 0);
    export_msgs(c, m, 3, CONNECTOR_REJECT, 0);
    ck_assert_int_eq(db_count(db, table), 0);
    export_msgs(c, m + 1, 1, CONNECTOR_OK, 1);
    snprintf(sql, sizeof sql, "SELECT body FROM %s", table);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "plain text");
    PQclear(res);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* A missing table (create_table: false) is not the records' fault. */
START_TEST(test_retry_missing_table)
{
    char table[64], sql[256];
    unique_name(table, sizeof table, "later");
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++)
        msg_make(&m[i], r, i);
    const char *err = export_msgs(c, m, 3, CONNECTOR_RETRY, 0);
    ck_assert_msg(strstr(err, "does not exist") && strstr(err, table), "err: %s", err);
    /* The engine closes and opens again after a RETRY. */
    ops->close(c);
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (msg_id TEXT PRIMARY KEY, topic TEXT NOT NULL, client_id TEXT NOT "
             "NULL, qos SMALLINT NOT NULL, payload BYTEA NOT NULL, ts TIMESTAMPTZ NOT NULL)",
             table);
    db_exec(db, sql);
    char oerr[512] = "";
    ck_assert_msg(ops->open(c, oerr, sizeof oerr) == 0, "open: %s", oerr);
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    check_messages(db, table, m, 3);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* A port nobody listens on: open and export say RETRY, nothing is
 * acknowledged, and the password never shows in the messages. */
START_TEST(test_retry_unreachable)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd); /* the port is free, and closed */
    char ci[256], want[128], err[512] = "";
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%u dbname=nowhere user=u password=hunter2",
             ntohs(sa.sin_port));
    snprintf(want, sizeof want, "cannot connect to host=127.0.0.1 port=%u dbname=nowhere",
             ntohs(sa.sin_port));
    struct connector *c = sink_new(ci, "2");
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, want), "err: %s", err);
    ck_assert_msg(!strstr(err, "hunter2"), "password in: %s", err);
    struct item items[] = {{"table", "t"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg m[2];
    msg_make(&m[0], r, 0);
    msg_make(&m[1], r, 1);
    const char *xerr = export_msgs(c, m, 2, CONNECTOR_RETRY, 0);
    ck_assert_msg(strstr(xerr, "not connected") && !strstr(xerr, "hunter2"), "err: %s", xerr);
    ops->close(c);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- Server restart ------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The server the restart case restarts: the one of MQB_PG_DATADIR (with
 * MQB_PG_CONNINFO) when set, else a private one from `tests/services/start
 * pg` (run from the source directory, as ctest does), so that a restart
 * never disturbs other tests sharing the services. Started and stopped by
 * the test case's unchecked fixture, in the runner: a failing test cannot
 * leave it behind. */
static char restart_dir[512]; /* the private services folder, "" if none */
static char restart_conninfo[512];
static char restart_datadir[600];

/* "KEY=value" or "KEY='value'" from start's output into out. */
static void setting_take(const char *line, const char *key, char *out, size_t len)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0 || line[k] != '=')
        return;
    const char *v = line + k + 1;
    size_t n = strcspn(v, "\n");
    if (n >= 2 && v[0] == '\'' && v[n - 1] == '\'') {
        v++;
        n -= 2;
    }
    snprintf(out, len, "%.*s", (int)n, v);
}

static void restart_server_start(void)
{
    const char *d = getenv("MQB_PG_DATADIR");
    char line[1024];
    if (d && *d) {
        snprintf(restart_datadir, sizeof restart_datadir, "%s", d);
        return; /* with MQB_PG_CONNINFO, checked by the test */
    }
    FILE *f = popen("tests/services/start pg", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        setting_take(line, "MQB_SERVICES_DIR", restart_dir, sizeof restart_dir);
        setting_take(line, "MQB_PG_CONNINFO", restart_conninfo, sizeof restart_conninfo);
    }
    if (pclose(f) != 0 || !restart_dir[0] || !restart_conninfo[0]) {
        restart_dir[0] = restart_conninfo[0] = '\0';
        return;
    }
    snprintf(restart_datadir, sizeof restart_datadir, "%s/pg/data", restart_dir);
}

static void restart_server_stop(void)
{
    if (!restart_dir[0])
        return;
    pid_t pid = fork();
    if (pid == 0) {
        execl("tests/services/stop", "tests/services/stop", "--quiet", restart_dir, (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
}

/* pg_ctl restart -m fast -w, as the owner of the data directory. */
static void pg_restart(const char *datadir)
{
    struct stat st;
    char pg_ctl[600], log[700];
    ck_assert_int_eq(stat(datadir, &st), 0);
    const char *bindir = getenv("MQB_PG_BINDIR");
    snprintf(pg_ctl, sizeof pg_ctl, "%s%s", bindir && *bindir ? bindir : "",
             bindir && *bindir ? "/pg_ctl" : "pg_ctl");
    /* tests/services keeps the server log next to the data directory. */
    snprintf(log, sizeof log, "%s/../postgres.log", datadir);
    if (access(log, F_OK) != 0)
        snprintf(log, sizeof log, "%s/restart.log", datadir);
    const struct passwd *pw = getpwuid(st.st_uid);
    bool as_owner = geteuid() == 0 && st.st_uid != 0;
    ck_assert(!as_owner || pw);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (as_owner)
            execlp("runuser", "runuser", "-u", pw->pw_name, "--", pg_ctl, "-D", datadir, "-l", log,
                   "-m", "fast", "-w", "-t", "60", "restart", (char *)NULL);
        else
            execlp(pg_ctl, pg_ctl, "-D", datadir, "-l", log, "-m", "fast", "-w", "-t", "60",
                   "restart", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pg_ctl restart failed (%d)",
                  status);
}

/* Export, restart the server, export again: RETRY with nothing
 * acknowledged; after open() succeeds again everything is written once. */
START_TEST(test_server_restart)
{
    if (!restart_datadir[0]) {
        printf("postgres: server restart case skipped: no MQB_PG_DATADIR, and no private server "
               "from tests/services/start pg (run from the source directory)\n");
        return;
    }
    const char *datadir = restart_datadir;
    const char *ci = restart_conninfo[0] ? restart_conninfo : conninfo();
    enum { N = 20 };
    char table[64];
    unique_name(table, sizeof table, "restart");
    struct connector *c = sink_open_to(ci);
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg m[N];
    for (unsigned i = 0; i < N; i++)
        msg_make(&m[i], r, i);
    export_msgs(c, m, N / 2, CONNECTOR_OK, N / 2);

    pg_restart(datadir);
    const char *xerr = export_msgs(c, m + N / 2, N / 2, CONNECTOR_RETRY, 0);
    ck_assert_msg(strstr(xerr, "host=") && strlen(xerr) > 40, "err: %s", xerr);
    ops->close(c);
    double deadline = now_s() + 30;
    char err[512] = "";
    while (ops->open(c, err, sizeof err) != 0) {
        ck_assert_msg(now_s() < deadline, "no reconnect within 30 s: %s", err);
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL); /* poll interval, bounded by the deadline */
    }
    export_msgs(c, m, N, CONNECTOR_OK, N); /* the first half again: harmless */
    PGconn *db = db_connect_to(ci);
    check_messages(db, table, m, N);
    PQfinish(db);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* ---- Throughput (printed, not asserted) ------------------------------------------------------ */

START_TEST(test_throughput)
{
    enum { N = 10000 };
    char table[64];
    unique_name(table, sizeof table, "bench");
    struct connector *c = sink_open();
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg *m = calloc(N, sizeof *m);
    struct export_record **recs = calloc(N, sizeof *recs);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(recs);
    for (unsigned i = 0; i < N; i++) {
        msg_make(&m[i], r, i);
        memset(m[i].payload, 'a' + i % 26, 64);
        m[i].rec.payload_len = 64;
        recs[i] = &m[i].rec;
    }
    export_expect(c, recs, 1, CONNECTOR_OK, 1); /* table made and statement prepared */
    double t0 = now_s();
    export_expect(c, recs, N, CONNECTOR_OK, N);
    double dt = now_s() - t0;
    printf("postgres: %d rows of 64-byte payloads in one export: %.3f s, %.0f rows/s\n", N, dt,
           N / dt);
    PGconn *db = db_connect();
    ck_assert_int_eq(db_count(db, table), N);
    PQfinish(db);
    free(recs);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
}
END_TEST

Suite *postgres_suite(void)
{
    snprintf(prefix, sizeof prefix, "mqbt%ld_%ld", (long)getpid(), (long)time(NULL) % 100000);
    Suite *s = suite_create("postgres");
    TCase *tc = tcase_create("validation");
    tcase_add_loop_test(tc, test_settings_errors, 0, ARRAY_LEN(settings_cases));
    tcase_add_loop_test(tc, test_rule_errors, 0, ARRAY_LEN(rule_cases));
    suite_add_tcase(s, tc);

    tc = tcase_create("server");
    tcase_add_unchecked_fixture(tc, NULL, drop_all);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_messages_exact_and_idempotent);
    tcase_add_test(tc, test_export_order);
    tcase_add_test(tc, test_custom_columns);
    tcase_add_test(tc, test_status_state_rule);
    tcase_add_test(tc, test_reject_bad_row);
    tcase_add_test(tc, test_reject_first_row);
    tcase_add_test(tc, test_reject_status_event);
    tcase_add_test(tc, test_retry_missing_table);
    tcase_add_test(tc, test_retry_unreachable);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);

    tc = tcase_create("restart");
    tcase_add_unchecked_fixture(tc, restart_server_start, restart_server_stop);
    tcase_add_unchecked_fixture(tc, NULL, drop_all);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_server_restart);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(postgres_suite)
