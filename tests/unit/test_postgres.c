/* postgres_suite: the PostgreSQL export connector (connectors/postgres.c)
 * against a real server: MQB_PG_CONNINFO from tests/services/start (run
 * under scripts/test or tests/services/run). Settings and rule validation
 * with positions, the default schema, exact read-back, export order,
 * idempotent repeats, template columns, the status-state rule under late
 * and repeated events, REJECT of a bad row, RETRY for a missing table, an
 * unreachable server and a server restart (of a private server), and a
 * throughput figure. The COPY way and its fallback to the INSERT way:
 * repeats, one refused record among many, the connection killed inside a
 * COPY, typed custom columns, tables COPY cannot fill, mixed batches of
 * several rules and status events, a table changed under the connection.
 *
 * Tables and schemas are named <prefix>_<n> with a prefix unique to this
 * run; the tests drop theirs, and a teardown drops whatever a failed test
 * left behind. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pthread.h>
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

/* The number in the first column of the first row of sql. */
static long long db_number(PGconn *db, const char *sql, int n, const char *const *params)
{
    PGresult *res = db_query(db, sql, n, params);
    long long v = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

static long long db_count(PGconn *db, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    return db_number(db, sql, 0, NULL);
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

/* The end of a test: its rule and connector freed, the tables and schemas
 * of this run dropped. */
static void sink_done(struct connector *c, struct rule *r)
{
    rule_free(c, r);
    ops->destroy(c);
    drop_all();
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

/* Messages 0..n-1 of rule r, in a new array. */
static struct msg *msgs_new(const struct rule *r, size_t n)
{
    struct msg *m = calloc(n ? n : 1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    for (size_t i = 0; i < n; i++)
        msg_make(&m[i], r, (unsigned)i);
    return m;
}

/* The records of m[0..n), as export() takes them, in a new array. */
static struct export_record **recs_of(struct msg *m, size_t n)
{
    struct export_record **recs = calloc(n ? n : 1, sizeof *recs);
    ck_assert_ptr_nonnull(recs);
    for (size_t i = 0; i < n; i++)
        recs[i] = &m[i].rec;
    return recs;
}

static const char *export_msgs(struct connector *c, struct msg *m, size_t n, int want_rc,
                               size_t want_acked)
{
    struct export_record **recs = recs_of(m, n);
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

/* The one row sql (with text parameters) returns holds want[0..n), as
 * text; `row` names it in the failure message. */
static void check_row(PGconn *db, const char *sql, int nparams, const char *const *params,
                      const char *row, const char *const *want, int n)
{
    PGresult *res = db_query(db, sql, nparams, params);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_int_eq(PQnfields(res), n);
    for (int k = 0; k < n; k++)
        ck_assert_msg(!strcmp(PQgetvalue(res, 0, k), want[k]), "%s: %s is '%s', want '%s'", row,
                      PQfname(res, k), PQgetvalue(res, 0, k), want[k]);
    PQclear(res);
}

/* The columns of the default schema (what create_table makes). */
#define DEFAULT_COLUMNS \
    "msg_id TEXT PRIMARY KEY, topic TEXT NOT NULL, client_id TEXT NOT NULL, qos SMALLINT NOT " \
    "NULL, payload BYTEA NOT NULL, ts TIMESTAMPTZ NOT NULL"

/* An owner's table: a new table of this run made with the column
 * definitions `columns`, the test's connection, a connector open on the
 * server and an outbound rule into the table with the custom columns
 * `cols` (NULL: the default mapping). */
struct owner_table {
    char name[64];
    PGconn *db;
    struct connector *c;
    struct rule *r;
};

static void owner_table_open(struct owner_table *t, const char *what, const char *columns,
                             const struct item *cols)
{
    char sql[1024];
    unique_name(t->name, sizeof t->name, what);
    t->db = db_connect();
    snprintf(sql, sizeof sql, "CREATE TABLE %s (%s)", t->name, columns);
    db_exec(t->db, sql);
    t->c = sink_open();
    struct item items[] = {{"table", t->name}, {NULL, NULL}};
    t->r = rule_ok(t->c, RULE_OUTBOUND, items, cols);
}

/* Frees what owner_table_open made and drops the tables of this run. */
static void owner_table_close(struct owner_table *t)
{
    PQfinish(t->db);
    sink_done(t->c, t->r);
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
    {"inbound: missing table",
     RULE_INBOUND,
     {{"channel", "c"}},
     {{NULL, NULL}},
     "t.yaml:1:1: rule 'r': missing required key 'table'"},
    {"inbound: unknown key",
     RULE_INBOUND,
     {{"table", "t"}, {"poll_m", "5"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': unknown key 'poll_m' (did you mean 'poll_ms'?)"},
    {"inbound: an outbound key",
     RULE_INBOUND,
     {{"table", "t"}, {"events_table", "e"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': unknown key 'events_table'"},
    {"inbound: bad table",
     RULE_INBOUND,
     {{"table", "out box"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: 'out box' is not a table name ([schema.]table, each "
     "[A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"inbound: create_table",
     RULE_INBOUND,
     {{"table", "t"}, {"create_table", "maybe"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': create_table: expected true or false, got 'maybe'"},
    {"inbound: bad dead-letter table",
     RULE_INBOUND,
     {{"table", "t"}, {"dead_letter_table", "dead;--"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': dead_letter_table: 'dead;--' is not a table name"},
    {"inbound: dead letters into the outbox",
     RULE_INBOUND,
     {{"table", "s.t"}, {"dead_letter_table", "s.t"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': dead_letter_table: must be another table than the outbox 's.t'"},
    {"inbound: channel with a dot",
     RULE_INBOUND,
     {{"table", "t"}, {"channel", "a.b"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': channel: 'a.b' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"inbound: channel quoted",
     RULE_INBOUND,
     {{"table", "t"}, {"channel", "x\"; NOTIFY y; --"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': channel: 'x\"; NOTIFY y; --' is not an identifier"},
    {"inbound: poll_ms 0",
     RULE_INBOUND,
     {{"table", "t"}, {"poll_ms", "0"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': poll_ms: expected an integer 1..60000, got '0'"},
    {"inbound: poll_ms too large",
     RULE_INBOUND,
     {{"table", "t"}, {"poll_ms", "60001"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': poll_ms: expected an integer 1..60000, got '60001'"},
    {"inbound: poll_ms not a number",
     RULE_INBOUND,
     {{"table", "t"}, {"poll_ms", "1s"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': poll_ms: expected an integer 1..60000, got '1s'"},
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
    struct msg *m = msgs_new(r, N);
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
    sink_done(c, r);
}
END_TEST

/* Rows arrive in export order: the test's table numbers them. */
START_TEST(test_export_order)
{
    enum { N = 30 };
    char sql[512];
    struct owner_table t;
    owner_table_open(&t, "order",
                     "ord BIGSERIAL, msg_id TEXT PRIMARY KEY, topic TEXT, client_id TEXT, "
                     "qos INTEGER, payload BYTEA, ts TIMESTAMPTZ",
                     NULL);
    struct msg m[N];
    for (unsigned i = 0; i < N; i++) {
        msg_make(&m[i], t.r, i);
        m[i].rec.msg_id = 0xfff00000ull - i * 7; /* ids fall while the order rises */
    }
    export_msgs(t.c, m, 10, CONNECTOR_OK, 10);
    export_msgs(t.c, m + 10, N - 10, CONNECTOR_OK, N - 10);
    snprintf(sql, sizeof sql, "SELECT msg_id, client_id FROM %s ORDER BY ord", t.name);
    PGresult *res = db_query(t.db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), N);
    for (int i = 0; i < N; i++) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        ck_assert_str_eq(PQgetvalue(res, i, 0), hex);
        ck_assert_str_eq(PQgetvalue(res, i, 1), m[i].client);
    }
    PQclear(res);
    owner_table_close(&t);
}
END_TEST

/* Template columns into typed columns: ${payload} goes binary into bytea
 * and as text into jsonb; the others as text, typed by the server. */
START_TEST(test_custom_columns)
{
    char sql[512];
    struct item cols[] = {
        {"device", "${device}"},
        {"temp", "${payload.temp}"},
        {"raw", "${payload}"},
        {"body", "${payload}"},
        {"note", "${group}|${topic}|${qos}"},
        {"at", "${timestamp}"},
        {NULL, NULL},
    };
    struct owner_table t;
    owner_table_open(&t, "custom",
                     "msg_id TEXT PRIMARY KEY, device TEXT, temp INTEGER, raw BYTEA, body JSONB, "
                     "note TEXT, at BIGINT",
                     cols);
    static const char *const json[] = {
        "{\"temp\": 21, \"unit\": \"C\"}",
        "{\"temp\": -4}",
        "{\"temp\": 0, \"nested\": {\"a\": [1, 2]}}",
    };
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++) {
        msg_make(&m[i], t.r, i);
        msg_json(&m[i], json[i]);
    }
    export_msgs(t.c, m, 3, CONNECTOR_OK, 3);
    export_msgs(t.c, m, 3, CONNECTOR_OK, 3);

    snprintf(sql, sizeof sql,
             "SELECT device, temp, encode(raw, 'hex'), body = $1::jsonb, note, at "
             "FROM %s WHERE msg_id = $2",
             t.name);
    static const struct {
        const char *device, *temp, *note, *at;
    } want[] = {
        {"dev1", "21", "GID_a|SensorData/0|0", "1700000000000"},
        {"dev2", "-4", "GID_a|SensorData/1|1", "1700000000001"},
        {"x-9", "0", "GID_b|SensorData/2|2", "1700000000002"},
    };
    ck_assert_int_eq(db_count(t.db, t.name), 3);
    for (unsigned i = 0; i < 3; i++) {
        char hex[17], phex[260];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        hex_of(m[i].payload, m[i].rec.payload_len, phex);
        const char *params[2] = {json[i], hex};
        const char *row[] = {want[i].device, want[i].temp, phex, "t", want[i].note, want[i].at};
        check_row(t.db, sql, 2, params, hex, row, (int)ARRAY_LEN(row));
    }
    owner_table_close(&t);
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
    sink_done(c, r);
}
END_TEST

/* ---- Failures ------------------------------------------------------------------------------ */

/* "abc" for an INTEGER column: that record is refused, the ones before it
 * committed, the ones after it go in the next export. */
START_TEST(test_reject_bad_row)
{
    char sql[256];
    struct item cols[] = {{"temp", "${payload.temp}"}, {"note", "${payload.note}"}, {NULL, NULL}};
    struct owner_table t;
    owner_table_open(&t, "reject", "msg_id TEXT PRIMARY KEY, temp INTEGER, note TEXT NOT NULL",
                     cols);
    static const char *const json[] = {
        "{\"temp\":1,\"note\":\"a\"}",       "{\"temp\":2,\"note\":\"b\"}",
        "{\"temp\":\"abc\",\"note\":\"c\"}", "{\"temp\":4,\"note\":\"d\"}",
        "{\"temp\":5,\"note\":\"e\"}",
    };
    struct msg m[5];
    for (unsigned i = 0; i < 5; i++) {
        msg_make(&m[i], t.r, i);
        msg_json(&m[i], json[i]);
    }
    const char *err = export_msgs(t.c, m, 5, CONNECTOR_REJECT, 2);
    ck_assert_msg(strstr(err, "invalid input syntax for type integer") &&
                      strstr(err, "GID_b@@@x-9") && strstr(err, "22P02"),
                  "err: %s", err);
    ck_assert_int_eq(db_count(t.db, t.name), 2);
    export_msgs(t.c, m + 3, 2, CONNECTOR_OK, 2);
    snprintf(sql, sizeof sql, "SELECT string_agg(note, '' ORDER BY temp) FROM %s", t.name);
    PGresult *res = db_query(t.db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "abde");
    PQclear(res);
    owner_table_close(&t);
}
END_TEST

/* An owner's events table whose CHECK refuses tcpclean events. */
static void create_events_no_tcpclean(PGconn *db, const char *events)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (seq BIGINT PRIMARY KEY, client_id TEXT, event_type TEXT "
             "CHECK (event_type <> 'tcpclean'), channel_id TEXT, client_ip TEXT, "
             "\"time\" TIMESTAMPTZ, body JSONB)",
             events);
    db_exec(db, sql);
}

/* Two statements per status event: a refused events row (the owner's
 * CHECK) rejects the right event, and its state change is not kept. */
START_TEST(test_reject_status_event)
{
    char state[64], events[64];
    unique_name(state, sizeof state, "state");
    unique_name(events, sizeof events, "events");
    PGconn *db = db_connect();
    create_events_no_tcpclean(db, events);
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
    sink_done(c, r);
}
END_TEST

/* Zero bytes cannot go into a text column: the first record is refused
 * (nothing acknowledged), and a repeat of the same batch agrees. */
START_TEST(test_reject_first_row)
{
    char sql[256];
    struct item cols[] = {{"body", "${payload}"}, {NULL, NULL}};
    struct owner_table t;
    owner_table_open(&t, "nul", "msg_id TEXT PRIMARY KEY, body TEXT", cols);
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++)
        msg_make(&m[i], t.r, i);
    msg_json(&m[1], "plain text");
    export_msgs(t.c, m, 3, CONNECTOR_REJECT, 0);
    export_msgs(t.c, m, 3, CONNECTOR_REJECT, 0);
    ck_assert_int_eq(db_count(t.db, t.name), 0);
    export_msgs(t.c, m + 1, 1, CONNECTOR_OK, 1);
    snprintf(sql, sizeof sql, "SELECT body FROM %s", t.name);
    PGresult *res = db_query(t.db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "plain text");
    PQclear(res);
    owner_table_close(&t);
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
    snprintf(sql, sizeof sql, "CREATE TABLE %s (" DEFAULT_COLUMNS ")", table);
    db_exec(db, sql);
    char oerr[512] = "";
    ck_assert_msg(ops->open(c, oerr, sizeof oerr) == 0, "open: %s", oerr);
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    check_messages(db, table, m, 3);
    PQfinish(db);
    sink_done(c, r);
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

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- COPY and the INSERT way -----------------------------------------------------------------
 * Tables made by these tests have a column that tells which way each row
 * came: its default is the first word of the statement that inserted the
 * row ("COPY" or "INSERT"). */

#define VIA_COLUMN "via TEXT DEFAULT split_part(current_query(), ' ', 1)"

static long long db_count_via(PGconn *db, const char *table, const char *via)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE via = $1", table);
    const char *params[1] = {via};
    return db_number(db, sql, 1, params);
}

/* New rows go by COPY; a batch that repeats stored rows (COPY fails on the
 * key) goes the INSERT way and adds only the new ones; a record twice in
 * one batch is stored once; every row reads back exactly. */
START_TEST(test_copy_repeats)
{
    enum { N = 400 };
    struct owner_table t;
    owner_table_open(&t, "rep", DEFAULT_COLUMNS ", " VIA_COLUMN, NULL);
    struct msg *m = msgs_new(t.r, N);

    export_msgs(t.c, m, 200, CONNECTOR_OK, 200);
    ck_assert_int_eq(db_count_via(t.db, t.name, "COPY"), 200);
    export_msgs(t.c, m + 100, 200, CONNECTOR_OK, 200); /* 100 stored, 100 new */
    ck_assert_int_eq(db_count(t.db, t.name), 300);
    ck_assert_int_eq(db_count_via(t.db, t.name, "COPY"), 200);
    ck_assert_int_eq(db_count_via(t.db, t.name, "INSERT"), 100);
    struct export_record *twice[] = {&m[300].rec, &m[301].rec, &m[300].rec};
    export_expect(t.c, twice, 3, CONNECTOR_OK, 3);
    ck_assert_int_eq(db_count(t.db, t.name), 302);
    export_msgs(t.c, m + 302, N - 302, CONNECTOR_OK, N - 302);
    ck_assert_int_eq(db_count_via(t.db, t.name, "COPY"), 200 + N - 302);
    export_msgs(t.c, m, N, CONNECTOR_OK, N); /* all of it again */
    check_messages(t.db, t.name, m, N);
    free(m);
    owner_table_close(&t);
}
END_TEST

/* A value too long for a varchar, then a CHECK: each time exactly that
 * record is refused, the ones before it are stored, the engine goes on
 * with the ones after it. */
START_TEST(test_copy_reject_one)
{
    enum { N = 300, LONG = 120, HOT = 200 };
    char sql[512];
    struct item cols[] = {{"device", "${device}"}, {"temp", "${payload.temp}"}, {NULL, NULL}};
    struct owner_table t;
    owner_table_open(&t, "rej",
                     "msg_id TEXT PRIMARY KEY, device VARCHAR(8), "
                     "temp INTEGER CHECK (temp < 100), " VIA_COLUMN,
                     cols);
    struct msg *m = msgs_new(t.r, N);
    for (unsigned i = 0; i < N; i++) {
        char json[32];
        snprintf(json, sizeof json, "{\"temp\": %u}", i == HOT ? 150 : i % 50);
        msg_json(&m[i], json);
    }
    snprintf(m[LONG].client, sizeof m[LONG].client, "GID_a@@@far-too-long");

    const char *err = export_msgs(t.c, m, N, CONNECTOR_REJECT, LONG);
    ck_assert_msg(strstr(err, "too long") && strstr(err, "22001") && strstr(err, "far-too-long"),
                  "err: %s", err);
    ck_assert_int_eq(db_count(t.db, t.name), LONG);
    err = export_msgs(t.c, m + LONG + 1, N - LONG - 1, CONNECTOR_REJECT, HOT - LONG - 1);
    ck_assert_msg(strstr(err, "check constraint") && strstr(err, "23514"), "err: %s", err);
    ck_assert_int_eq(db_count(t.db, t.name), HOT - 1);
    export_msgs(t.c, m + HOT + 1, N - HOT - 1, CONNECTOR_OK, N - HOT - 1);
    ck_assert_int_eq(db_count(t.db, t.name), N - 2);
    ck_assert_int_eq(db_count_via(t.db, t.name, "COPY"), N - HOT - 1);
    char ids[2][17];
    snprintf(ids[0], sizeof ids[0], "%016" PRIx64, m[LONG].rec.msg_id);
    snprintf(ids[1], sizeof ids[1], "%016" PRIx64, m[HOT].rec.msg_id);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE msg_id IN ($1, $2)", t.name);
    const char *params[2] = {ids[0], ids[1]};
    ck_assert_int_eq(db_number(t.db, sql, 2, params), 0);
    free(m);
    owner_table_close(&t);
}
END_TEST

struct export_job {
    struct connector *c;
    struct export_record **recs;
    size_t n, acked;
    int rc;
    char err[512];
};

static void *export_main(void *arg)
{
    struct export_job *j = arg;
    j->rc = ops->export(j->c, j->recs, j->n, &j->acked, j->err, sizeof j->err);
    return NULL;
}

/* The connection killed while the server is inside a COPY (its trigger
 * waits for a lock the test holds at row 3000 of 5000): RETRY, nothing
 * acknowledged, nothing stored; after open() everything is stored once. */
START_TEST(test_copy_connection_killed)
{
    enum { N = 5000, HOLD_AT = 3000 };
    char schema[64], table[160], app[64], ci[700], sql[1024], key[24];
    unique_name(schema, sizeof schema, "kill");
    unique_name(app, sizeof app, "app");
    snprintf(table, sizeof table, "%s.msgs", schema);
    snprintf(key, sizeof key, "%ld", 424200000L + (long)getpid());
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    db_exec(db, sql);
    snprintf(sql, sizeof sql, "CREATE TABLE %s (" DEFAULT_COLUMNS ")", table);
    db_exec(db, sql);
    snprintf(sql, sizeof sql,
             "CREATE FUNCTION %s.hold() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
             "IF NEW.msg_id = '%016" PRIx64 "' THEN PERFORM pg_advisory_xact_lock_shared(%s); "
             "END IF; RETURN NEW; END$$",
             schema, (uint64_t)0xabc00000u + HOLD_AT, key);
    db_exec(db, sql);
    snprintf(sql, sizeof sql,
             "CREATE TRIGGER hold BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s.hold()",
             table, schema);
    db_exec(db, sql);
    const char *kparams[1] = {key};
    PQclear(db_query(db, "SELECT pg_advisory_lock($1::bigint)", 1, kparams));

    snprintf(ci, sizeof ci, "%s application_name=%s", conninfo(), app);
    struct connector *c = sink_open_to(ci);
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_OUTBOUND, items, NULL);
    struct msg *m = msgs_new(r, N);
    struct export_record **recs = recs_of(m, N);
    struct export_job job = {.c = c, .recs = recs, .n = N, .acked = 99999};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, export_main, &job), 0);
    /* Wait until the COPY waits at row HOLD_AT, then end its backend. */
    const char *aparams[1] = {app};
    double deadline = now_s() + 30;
    for (;;) {
        PGresult *res = db_query(db,
                                 "SELECT count(pg_terminate_backend(pid, 5000)) FROM "
                                 "pg_stat_activity WHERE application_name = $1 AND "
                                 "wait_event_type = 'Lock' AND query LIKE 'COPY %'",
                                 1, aparams);
        bool done = !strcmp(PQgetvalue(res, 0, 0), "1");
        PQclear(res);
        if (done)
            break;
        ck_assert_msg(now_s() < deadline, "the COPY never waited for the lock within 30 s");
        struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL); /* poll interval, bounded by the deadline */
    }
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(job.rc == CONNECTOR_RETRY, "export: rc %d (%s)", job.rc, job.err);
    ck_assert_uint_eq(job.acked, 0);
    ck_assert_msg(strstr(job.err, "host=127.0.0.1"), "err: %s", job.err);
    ck_assert_int_eq(db_count(db, table), 0);

    PQclear(db_query(db, "SELECT pg_advisory_unlock($1::bigint)", 1, kparams));
    ops->close(c);
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
    export_expect(c, recs, N, CONNECTOR_OK, N);
    export_expect(c, recs, N, CONNECTOR_OK, N);
    check_messages(db, table, m, N);
    PQfinish(db);
    free(recs);
    free(m);
    sink_done(c, r);
}
END_TEST

/* An owner's table with a custom mapping into text, varchar, char, the
 * integer types, bytea, jsonb and json: by COPY, values as the INSERT way
 * stores them; a value only the server converts (" 7" for an integer)
 * sends that batch the INSERT way. */
START_TEST(test_copy_custom_columns)
{
    char sql[1024];
    struct item cols[] = {
        {"device", "${device}"},
        {"code", "q${qos}"},
        {"temp", "${payload.temp}"},
        {"small", "${qos}"},
        {"big", "${timestamp}"},
        {"raw", "${payload}"},
        {"tag", "${device}"},
        {"body", "${payload}"},
        {"doc", "${payload}"},
        {"note", "${group}|${topic}|${qos}"},
        {NULL, NULL},
    };
    struct owner_table t;
    owner_table_open(&t, "map",
                     "msg_id TEXT PRIMARY KEY, device VARCHAR(32), code CHAR(4), temp INTEGER, "
                     "small SMALLINT, big BIGINT, raw BYTEA, tag BYTEA, body JSONB, doc JSON, "
                     "note TEXT, " VIA_COLUMN,
                     cols);
    static const char *const json[] = {
        "{\"temp\": 21, \"unit\": \"C\"}",
        "{\"temp\": -2147483648}",
        "{\"temp\": 0, \"nested\": {\"a\": [1, 2]}}",
        "{\"temp\": \" 7\"}",
        "{\"temp\": 2147483647}",
    };
    static const struct {
        const char *device, *code, *temp, *note, *at, *via;
    } want[] = {
        {"dev1", "q0  ", "21", "GID_a|SensorData/0|0", "1700000000000", "COPY"},
        {"dev2", "q1  ", "-2147483648", "GID_a|SensorData/1|1", "1700000000001", "COPY"},
        {"x-9", "q2  ", "0", "GID_b|SensorData/2|2", "1700000000002", "COPY"},
        {"dev1", "q0  ", "7", "GID_a|SensorData/0|0", "1700000000003", "INSERT"},
        {"dev2", "q1  ", "2147483647", "GID_a|SensorData/1|1", "1700000000004", "INSERT"},
    };
    struct msg m[5];
    for (unsigned i = 0; i < 5; i++) {
        msg_make(&m[i], t.r, i);
        msg_json(&m[i], json[i]);
    }
    export_msgs(t.c, m, 3, CONNECTOR_OK, 3);
    export_msgs(t.c, m + 3, 2, CONNECTOR_OK, 2);
    ck_assert_int_eq(db_count(t.db, t.name), 5);

    snprintf(sql, sizeof sql,
             "SELECT device, code, temp, small, big, encode(raw, 'hex'), convert_from(tag, "
             "'UTF8'), body = $1::jsonb, doc::text, note, via FROM %s WHERE msg_id = $2",
             t.name);
    for (unsigned i = 0; i < 5; i++) {
        char hex[17], phex[260], qos[4];
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        snprintf(qos, sizeof qos, "%u", m[i].rec.qos);
        hex_of(m[i].payload, m[i].rec.payload_len, phex);
        const char *params[2] = {json[i], hex};
        const char *row[] = {
            want[i].device, want[i].code,   want[i].temp, qos,     want[i].at,
            phex,           want[i].device, "t",          json[i], /* json keeps the text */
            want[i].note,   want[i].via,
        };
        check_row(t.db, sql, 2, params, hex, row, (int)ARRAY_LEN(row));
    }
    owner_table_close(&t);
}
END_TEST

/* Columns COPY cannot fill as the INSERT would (the record's time into a
 * timestamp without time zone, a numeric): that target's rows go the
 * INSERT way, every time, and are stored right. */
START_TEST(test_copy_not_for_this_table)
{
    char sql[512];
    struct owner_table t;
    owner_table_open(&t, "ins",
                     "msg_id TEXT PRIMARY KEY, topic TEXT, client_id TEXT, qos NUMERIC, "
                     "payload BYTEA, ts TIMESTAMP, " VIA_COLUMN,
                     NULL);
    struct msg m[6];
    for (unsigned i = 0; i < 6; i++)
        msg_make(&m[i], t.r, i);
    export_msgs(t.c, m, 3, CONNECTOR_OK, 3);
    export_msgs(t.c, m + 3, 3, CONNECTOR_OK, 3);
    ck_assert_int_eq(db_count_via(t.db, t.name, "INSERT"), 6);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(qos::text || ':' || (extract(epoch FROM ts AT TIME ZONE "
             "current_setting('TimeZone')) * 1000)::bigint, ',' ORDER BY msg_id) FROM %s",
             t.name);
    PGresult *res = db_query(t.db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0),
                     "0:1700000000000,1:1700000000001,2:1700000000002,0:1700000000003,"
                     "1:1700000000004,2:1700000000005");
    PQclear(res);
    owner_table_close(&t);
}
END_TEST

/* The owner changes a column's type while the connector is connected:
 * whatever the old statements make of it, nothing is stored wrong or
 * lost, and after the engine reconnects (on RETRY) the rows go by COPY
 * again. */
START_TEST(test_copy_table_changed)
{
    char sql[512];
    struct item cols[] = {{"n", "${qos}"}, {NULL, NULL}};
    struct owner_table t;
    owner_table_open(&t, "alter", "msg_id TEXT PRIMARY KEY, n TEXT, " VIA_COLUMN, cols);
    struct connector *c = t.c;
    struct msg m[9];
    for (unsigned i = 0; i < 9; i++)
        msg_make(&m[i], t.r, i);
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    snprintf(sql, sizeof sql, "ALTER TABLE %s ALTER COLUMN n TYPE integer USING n::integer",
             t.name);
    db_exec(t.db, sql);
    char err[512] = "";
    size_t acked = 0;
    struct export_record *recs[3] = {&m[3].rec, &m[4].rec, &m[5].rec};
    int rc = ops->export(c, recs, 3, &acked, err, sizeof err);
    ck_assert_msg(rc == CONNECTOR_OK || (rc == CONNECTOR_RETRY && acked == 0), "rc %d: %s", rc,
                  err);
    if (rc != CONNECTOR_OK) { /* the engine: close, open, the same records again */
        ops->close(c);
        ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
        export_msgs(c, m + 3, 3, CONNECTOR_OK, 3);
    }
    ops->close(c);
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
    export_msgs(c, m + 6, 3, CONNECTOR_OK, 3);
    snprintf(sql, sizeof sql, "SELECT string_agg(n::text || via, ',' ORDER BY msg_id) FROM %s",
             t.name);
    PGresult *res = db_query(t.db, sql, 0, NULL);
    /* PostgreSQL 15 keeps the prepared INSERT's text parameter, which the
     * integer column now refuses (42804): RETRY, and all rows by COPY. */
    ck_assert_str_eq(PQgetvalue(res, 0, 0),
                     rc == CONNECTOR_OK
                         ? "0COPY,1COPY,2COPY,0INSERT,1INSERT,2INSERT,0COPY,1COPY,2COPY"
                         : "0COPY,1COPY,2COPY,0COPY,1COPY,2COPY,0COPY,1COPY,2COPY");
    PQclear(res);
    ck_assert_int_eq(db_count(t.db, t.name), 9);
    owner_table_close(&t);
}
END_TEST

/* Two outbound rules and a status rule in one batch: one transaction, the
 * messages by COPY (each table's rows in batch order), the events by
 * statements; a repeat adds nothing; a refused event rejects exactly that
 * record. */
START_TEST(test_copy_mixed_batch)
{
    char tb[64], state[64], events[64], sql[512];
    struct owner_table t; /* table a, with rule ra */
    owner_table_open(&t, "mixa", "n BIGSERIAL, " DEFAULT_COLUMNS ", " VIA_COLUMN, NULL);
    struct connector *c = t.c;
    PGconn *db = t.db;
    const char *ta = t.name;
    unique_name(tb, sizeof tb, "mixb");
    unique_name(state, sizeof state, "mixs");
    unique_name(events, sizeof events, "mixe");
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (n BIGSERIAL, msg_id TEXT PRIMARY KEY, who TEXT, " VIA_COLUMN ")",
             tb);
    db_exec(db, sql);
    create_events_no_tcpclean(db, events);
    struct item ib[] = {{"table", tb}, {NULL, NULL}};
    struct item cb[] = {{"who", "${clientid}"}, {NULL, NULL}};
    struct item is[] = {
        {"table", state}, {"events_table", events}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *ra = t.r;
    struct rule *rb = rule_ok(c, RULE_OUTBOUND, ib, cb);
    struct rule *rs = rule_ok(c, RULE_STATUS, is, NULL);
    struct msg ma[5], mb[2];
    for (unsigned i = 0; i < 5; i++)
        msg_make(&ma[i], ra, i);
    for (unsigned i = 0; i < 2; i++)
        msg_make(&mb[i], rb, 100 + i);
    struct status_rec s[3];
    status_make(&s[0], rs, &status_steps[0]); /* connect, seq 10 */
    status_make(&s[1], rs, &status_steps[1]); /* disconnect, seq 11 */
    status_make(&s[2], rs, &status_steps[2]); /* tcpclean, seq 12: the CHECK refuses it */

    struct export_record *batch[] = {&ma[0].rec, &s[0].rec, &mb[0].rec, &ma[1].rec,
                                     &mb[1].rec, &s[1].rec, &ma[2].rec};
    export_expect(c, batch, 7, CONNECTOR_OK, 7);
    check_messages(db, ta, ma, 3);
    ck_assert_int_eq(db_count_via(db, ta, "COPY"), 3);
    ck_assert_int_eq(db_count_via(db, tb, "COPY"), 2);
    check_state(db, state, &status_steps[1], 1);
    ck_assert_int_eq(db_count(db, events), 2);
    export_expect(c, batch, 7, CONNECTOR_OK, 7); /* a repeat */
    ck_assert_int_eq(db_count(db, ta) + db_count(db, tb) + db_count(db, events), 7);
    snprintf(sql, sizeof sql, "SELECT string_agg(right(msg_id, 1), '' ORDER BY n) FROM %s", ta);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "012");
    PQclear(res);

    struct export_record *bad[] = {&ma[3].rec, &s[2].rec, &ma[4].rec};
    const char *err = export_expect(c, bad, 3, CONNECTOR_REJECT, 1);
    ck_assert_msg(strstr(err, "check constraint") && strstr(err, "23514"), "err: %s", err);
    export_expect(c, bad + 2, 1, CONNECTOR_OK, 1);
    check_messages(db, ta, ma, 5);
    check_state(db, state, &status_steps[1], 2);
    ck_assert_int_eq(db_count(db, events), 2);

    rule_free(c, rb);
    rule_free(c, rs);
    owner_table_close(&t);
}
END_TEST

/* An owner's table without a unique index on msg_id cannot take repeats:
 * refused up front (RETRY, the records wait), with the server's reason. */
START_TEST(test_retry_no_unique_msg_id)
{
    struct item cols[] = {{"note", "${topic}"}, {NULL, NULL}};
    struct owner_table t;
    owner_table_open(&t, "nokey", "msg_id TEXT, note TEXT", cols);
    struct msg m[2];
    msg_make(&m[0], t.r, 0);
    msg_make(&m[1], t.r, 1);
    const char *err = export_msgs(t.c, m, 2, CONNECTOR_RETRY, 0);
    ck_assert_msg(strstr(err, "no unique or exclusion constraint"), "err: %s", err);
    ck_assert_int_eq(db_count(t.db, t.name), 0);
    owner_table_close(&t);
}
END_TEST

/* ---- Server restart ------------------------------------------------------------------------- */

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
    sink_done(c, r);
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
    struct msg *m = msgs_new(r, N);
    for (unsigned i = 0; i < N; i++) {
        memset(m[i].payload, 'a' + i % 26, 64);
        m[i].rec.payload_len = 64;
    }
    struct export_record **recs = recs_of(m, N);
    export_expect(c, recs, 1, CONNECTOR_OK, 1); /* table made and statement prepared */
    double t0 = now_s();
    export_expect(c, recs + 1, N - 1, CONNECTOR_OK, N - 1);
    double dt = now_s() - t0;
    printf("postgres: %d rows of 64-byte payloads in one export (COPY): %.3f s, %.0f rows/s\n",
           N - 1, dt, (N - 1) / dt);
    t0 = now_s();
    export_expect(c, recs, N, CONNECTOR_OK, N);
    dt = now_s() - t0;
    printf("postgres: the same %d rows again (a repeat: the INSERT way): %.3f s, %.0f rows/s\n", N,
           dt, N / dt);
    PGconn *db = db_connect();
    ck_assert_int_eq(db_count(db, table), N);
    PQfinish(db);
    free(recs);
    free(m);
    sink_done(c, r);
}
END_TEST

/* ---- Inbound: the outbox source --------------------------------------------------------------
 * Sources open their own connections: the connector is created, never
 * opened as a sink. */

static const struct {
    const char *name;
    struct item items[6];
} inbound_ok_cases[] = {
    {"table only", {{"table", "mqtt_outbox"}}},
    {"everything",
     {{"table", "iot.mqtt_outbox"},
      {"create_table", "true"},
      {"dead_letter_table", "iot.mqtt_outbox_dead"},
      {"channel", "Outbox_1"},
      {"poll_ms", "1"}}},
    {"longest poll", {{"table", "t"}, {"poll_ms", "60000"}, {"create_table", "no"}}},
};

/* An inbound rule's target takes nothing but `topic` (which the rules
 * module keeps for itself). */
START_TEST(test_inbound_target_options)
{
    struct connector *c = sink_new("host=127.0.0.1", NULL);
    struct item items[] = {{"table", "t"}, {NULL, NULL}};
    struct item target[] = {{"qos", "1"}, {NULL, NULL}};
    struct rule *r = rule_new(c, RULE_INBOUND, items, NULL);
    kvmap_free(r->target_options);
    r->target_options = map_build(target, NULL);
    char err[512] = "";
    ck_assert_int_eq(ops->compile(c, r, &r->compiled, err, sizeof err), -1);
    ck_assert_ptr_null(r->compiled);
    ck_assert_str_eq(err, "t.yaml:2:3: rule 'r': target: unknown key 'qos'");
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

START_TEST(test_inbound_compile_ok)
{
    struct connector *c = sink_new("host=127.0.0.1", NULL);
    struct rule *r = rule_new(c, RULE_INBOUND, inbound_ok_cases[_i].items, NULL);
    char err[512] = "";
    ck_assert_msg(ops->compile(c, r, &r->compiled, err, sizeof err) == 0, "%s: %s",
                  inbound_ok_cases[_i].name, err);
    ck_assert_ptr_nonnull(r->compiled);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* A row of the outbox as the test writes it; NULL fields are SQL NULLs. */
struct row {
    const char *topic, *qos, *client_id;
    const char *payload;
    int len;
};

/* Insert rows (each its own statement and transaction); their ids into
 * ids[] when given. */
static void outbox_insert(PGconn *db, const char *table, const struct row *rows, size_t n,
                          long long *ids)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (topic, qos, client_id, payload) VALUES ($1, $2::smallint, $3, $4) "
             "RETURNING id",
             table);
    for (size_t i = 0; i < n; i++) {
        const char *values[4] = {rows[i].topic, rows[i].qos, rows[i].client_id, rows[i].payload};
        int lengths[4] = {0, 0, 0, rows[i].len}, formats[4] = {0, 0, 0, 1};
        PGresult *res = PQexecParams(db, sql, 4, NULL, values, lengths, formats, 0);
        ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql,
                      PQresultErrorMessage(res));
        if (ids)
            ids[i] = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
    }
}

static struct connector *source_connector(const char *application_name)
{
    char ci[600];
    snprintf(ci, sizeof ci, "%s application_name=%s", conninfo(), application_name);
    return sink_new(ci, NULL);
}

static struct source *source_open(struct connector *c, const struct rule *r)
{
    struct source *s = NULL;
    char err[512] = "";
    ck_assert_msg(ops->source_open(c, r, &s, err, sizeof err) == 0, "source_open: %s", err);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Fetch, expecting rc; returns n. */
static size_t source_fetch(struct source *s, struct import_record **recs, size_t max,
                           int timeout_ms, int want_rc)
{
    char err[512] = "";
    size_t n = 99999;
    int rc = ops->source_fetch(s, recs, max, &n, timeout_ms, err, sizeof err);
    ck_assert_msg(rc == want_rc, "source_fetch: rc %d, want %d (%s)", rc, want_rc, err);
    ck_assert_uint_le(n, max);
    return n;
}

/* Mark every record published, acknowledge, expect rc. */
static const char *source_ack(struct source *s, struct import_record **recs, size_t n, int want_rc)
{
    static char err[512];
    err[0] = '\0';
    for (size_t i = 0; i < n; i++)
        if (recs[i]->outcome == IMPORT_PENDING)
            recs[i]->outcome = IMPORT_PUBLISHED;
    int rc = ops->source_ack(s, recs, n, err, sizeof err);
    ck_assert_msg(rc == want_rc, "source_ack: rc %d, want %d (%s)", rc, want_rc, err);
    return err;
}

static void records_free(struct import_record **recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        import_record_free(recs[i]);
}

/* The records carry the ids given, in that order. */
static void check_ids(struct import_record *const *recs, size_t n, const long long *ids)
{
    for (size_t i = 0; i < n; i++) {
        char text[24];
        snprintf(text, sizeof text, "%lld", ids[i]);
        ck_assert_int_eq(recs[i]->offset, ids[i]);
        ck_assert_str_eq(recs[i]->id, text);
    }
}

static void check_optional(const char *got, const char *want, const char *what, size_t i)
{
    if (!want)
        ck_assert_msg(!got, "row %zu: %s: got '%s', want NULL", i, what, got);
    else
        ck_assert_msg(got && !strcmp(got, want), "row %zu: %s: got '%s', want '%s'", i, what,
                      got ? got : "(null)", want);
}

/* create_table makes the outbox, the dead-letter table and the trigger, in
 * a schema; a second open (or a second source) finds them and changes
 * nothing. */
START_TEST(test_source_create_table)
{
    char schema[64], table[160], dead[160], sql[256];
    unique_name(schema, sizeof schema, "sch");
    snprintf(table, sizeof table, "%s.outbox", schema);
    snprintf(dead, sizeof dead, "%s.dead", schema);
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    db_exec(db, sql);
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {
        {"table", table}, {"create_table", "true"}, {"dead_letter_table", dead}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s1 = source_open(c, r), *s2 = source_open(c, r);

    static const char *const want_outbox[] = {
        "id bigint NO",       "topic text YES",   "qos smallint YES",
        "client_id text YES", "payload bytea NO", "created_at timestamp with time zone NO",
    };
    static const char *const want_dead[] = {
        "id bigint NO",     "topic text YES",
        "qos smallint YES", "client_id text YES",
        "payload bytea NO", "created_at timestamp with time zone NO",
        "reason text YES",  "failed_at timestamp with time zone NO",
    };
    const struct {
        const char *name;
        const char *const *want;
        int n;
    } tables[] = {{"outbox", want_outbox, (int)ARRAY_LEN(want_outbox)},
                  {"dead", want_dead, (int)ARRAY_LEN(want_dead)}};
    for (unsigned k = 0; k < ARRAY_LEN(tables); k++) {
        const char *params[2] = {schema, tables[k].name};
        PGresult *res = db_query(db,
                                 "SELECT column_name || ' ' || data_type || ' ' || is_nullable "
                                 "FROM information_schema.columns WHERE table_schema = $1 AND "
                                 "table_name = $2 ORDER BY ordinal_position",
                                 2, params);
        ck_assert_int_eq(PQntuples(res), tables[k].n);
        for (int i = 0; i < tables[k].n; i++)
            ck_assert_str_eq(PQgetvalue(res, i, 0), tables[k].want[i]);
        PQclear(res);
    }
    /* One statement-level trigger, notifying the default channel (the
     * table's name without the schema). */
    const char *params[1] = {table};
    PGresult *res = db_query(db,
                             "SELECT tgname, encode(tgargs, 'escape'), tgtype FROM pg_trigger "
                             "WHERE tgrelid = $1::regclass AND NOT tgisinternal",
                             1, params);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "mqbridge_notify");
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "outbox\\000");
    ck_assert_str_eq(PQgetvalue(res, 0, 2), "4"); /* TRIGGER_TYPE_INSERT, statement, after */
    PQclear(res);

    ops->source_close(s1);
    ops->source_close(s2);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* Rows come in id order with every field exact (NULLs as NULL, zero bytes
 * in payloads); the ack deletes them and moves the skipped one, with its
 * reason, into the dead letters. */
START_TEST(test_source_fetch_exact)
{
    char table[64], dead[64], sql[256];
    unique_name(table, sizeof table, "exact");
    unique_name(dead, sizeof dead, "dead");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {
        {"table", table}, {"create_table", "true"}, {"dead_letter_table", dead}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    static const struct row rows[] = {
        {"dev1/cmd", "0", NULL, "\0\1\2", 3},
        {NULL, NULL, NULL, "", 0},
        {"a/b", "2", "GID_x@@@d1", "hello\0world", 11},
        {"", "1", "", "\xff\xfe\x80", 3},
        {"sub", "7", NULL, "x", 1}, /* the engine's to refuse, not the source's */
        {"\xc3\xa9t\xc3\xa9", NULL, "GID_y@@@\xe2\x82\xac", "{\"on\":true}", 11},
    };
    enum { N = ARRAY_LEN(rows) };
    long long ids[N];
    PGconn *db = db_connect();
    outbox_insert(db, table, rows, N, ids);
    ck_assert_int_eq(ops->source_lag(s), N);

    struct import_record *recs[16];
    size_t n = source_fetch(s, recs, 16, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, N);
    check_ids(recs, n, ids);
    for (size_t i = 0; i < n; i++) {
        check_optional(recs[i]->sub_topic, rows[i].topic, "topic", i);
        check_optional(recs[i]->qos, rows[i].qos, "qos", i);
        check_optional(recs[i]->client_id, rows[i].client_id, "client_id", i);
        ck_assert_uint_eq(recs[i]->payload_len, (unsigned)rows[i].len);
        ck_assert(!memcmp(recs[i]->payload, rows[i].payload, (size_t)rows[i].len));
    }
    recs[4]->outcome = IMPORT_SKIPPED;
    snprintf(recs[4]->reason, sizeof recs[4]->reason, "qoslevel '7' is not 0, 1 or 2");
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);

    ck_assert_int_eq(db_count(db, table), 0);
    ck_assert_int_eq(ops->source_lag(s), 0);
    snprintf(sql, sizeof sql,
             "SELECT id, topic, qos, client_id IS NULL, encode(payload, 'hex'), reason, "
             "failed_at IS NOT NULL AND created_at <= failed_at FROM %s",
             dead);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_int_eq(atoll(PQgetvalue(res, 0, 0)), ids[4]);
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "sub");
    ck_assert_str_eq(PQgetvalue(res, 0, 2), "7");
    ck_assert_str_eq(PQgetvalue(res, 0, 3), "t");
    ck_assert_str_eq(PQgetvalue(res, 0, 4), "78");
    ck_assert_str_eq(PQgetvalue(res, 0, 5), "qoslevel '7' is not 0, 1 or 2");
    ck_assert_str_eq(PQgetvalue(res, 0, 6), "t");
    PQclear(res);
    ck_assert_uint_eq(source_fetch(s, recs, 16, 50, CONNECTOR_OK), 0);

    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* Without a dead-letter table a skipped row is just deleted; a reason with
 * bytes the server might refuse is stored as printable ASCII. */
START_TEST(test_source_skipped_rows)
{
    char table[64], dead[64], sql[256];
    unique_name(table, sizeof table, "skipped");
    unique_name(dead, sizeof dead, "dead");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item plain[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct item with_dead[] = {
        {"table", table}, {"create_table", "true"}, {"dead_letter_table", dead}, {NULL, NULL}};
    struct rule *r1 = rule_ok(c, RULE_INBOUND, plain, NULL);
    struct rule *r2 = rule_ok(c, RULE_INBOUND, with_dead, NULL);
    PGconn *db = db_connect();
    struct source *s = source_open(c, r1);
    static const struct row rows[] = {{"a", "9", NULL, "1", 1}, {"b", NULL, NULL, "2", 1}};
    long long ids[4];
    outbox_insert(db, table, rows, 2, ids);
    struct import_record *recs[4];
    size_t n = source_fetch(s, recs, 4, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 2);
    recs[0]->outcome = IMPORT_SKIPPED;
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 0);
    ops->source_close(s);

    s = source_open(c, r2);
    outbox_insert(db, table, rows, 2, ids + 2);
    n = source_fetch(s, recs, 4, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 2);
    check_ids(recs, n, ids + 2);
    recs[0]->outcome = recs[1]->outcome = IMPORT_SKIPPED;
    snprintf(recs[0]->reason, sizeof recs[0]->reason, "topic 'caf\xc3");
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 0);
    snprintf(sql, sizeof sql, "SELECT id, reason FROM %s ORDER BY id", dead);
    PGresult *res = db_query(db, sql, 0, NULL);
    ck_assert_int_eq(PQntuples(res), 2);
    ck_assert_int_eq(atoll(PQgetvalue(res, 0, 0)), ids[2]);
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "topic 'caf?");
    ck_assert(PQgetisnull(res, 1, 1)); /* no reason given */
    PQclear(res);

    ops->source_close(s);
    PQfinish(db);
    rule_free(c, r1);
    rule_free(c, r2);
    ops->destroy(c);
    drop_all();
}
END_TEST

/* Fetched but never acknowledged: a second fetch, and a new source after
 * a close (a crash), get the same rows again in the same order. */
START_TEST(test_source_redelivery)
{
    char table[64];
    unique_name(table, sizeof table, "redeliver");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    static const struct row rows[] = {
        {"t/1", "1", NULL, "one", 3}, {"t/2", "1", NULL, "two", 3}, {"t/3", "1", NULL, "three", 5}};
    long long ids[3];
    PGconn *db = db_connect();
    outbox_insert(db, table, rows, 3, ids);

    struct import_record *recs[8];
    size_t n = source_fetch(s, recs, 2, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 2);
    check_ids(recs, n, ids);
    records_free(recs, n);
    n = source_fetch(s, recs, 8, 1000, CONNECTOR_OK); /* the last batch was not acknowledged */
    ck_assert_uint_eq(n, 3);
    check_ids(recs, n, ids);
    records_free(recs, n);
    ops->source_close(s); /* the "crash" */
    ck_assert_int_eq(db_count(db, table), 3);

    s = source_open(c, r);
    n = source_fetch(s, recs, 8, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 3);
    check_ids(recs, n, ids);
    ck_assert(!memcmp(recs[2]->payload, "three", 5));
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 0);
    ck_assert_uint_eq(source_fetch(s, recs, 8, 50, CONNECTOR_OK), 0);
    /* An ack without a fetched batch cannot be honoured. */
    struct import_record *stray = import_record_new("1", NULL, NULL, NULL, "", 0);
    stray->offset = 1;
    source_ack(s, &stray, 1, CONNECTOR_RETRY);
    import_record_free(stray);

    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* Two sources on one table: SKIP LOCKED gives each other rows; a row is
 * delivered once. */
START_TEST(test_source_skip_locked)
{
    enum { N = 10 };
    char table[64];
    unique_name(table, sizeof table, "locked");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *a = source_open(c, r), *b = source_open(c, r);
    struct row rows[N];
    long long ids[N];
    for (int i = 0; i < N; i++)
        rows[i] = (struct row){"t", "1", NULL, "p", 1};
    PGconn *db = db_connect();
    outbox_insert(db, table, rows, N, ids);

    struct import_record *ra[N], *rb[N];
    size_t na = source_fetch(a, ra, 4, 1000, CONNECTOR_OK);
    size_t nb = source_fetch(b, rb, N, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(na, 4);
    ck_assert_uint_eq(nb, N - 4);
    check_ids(ra, na, ids);
    check_ids(rb, nb, ids + 4);
    source_ack(b, rb, nb, CONNECTOR_OK);
    records_free(rb, nb);
    ck_assert_uint_eq(source_fetch(b, rb, N, 50, CONNECTOR_OK), 0); /* a's rows are locked */
    ck_assert_int_eq(ops->source_lag(b), 4);                        /* and still backlog */
    ck_assert_int_eq(ops->source_lag(a), -1); /* not while its batch is open */
    source_ack(a, ra, na, CONNECTOR_OK);
    records_free(ra, na);
    ck_assert_int_eq(db_count(db, table), 0);

    ops->source_close(a);
    ops->source_close(b);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* The other side of the NOTIFY case: waits (polling with a deadline) until
 * the source's session is idle after the COMMIT of its empty look, i.e.
 * waiting, then inserts one row. */
struct notifier {
    const char *table, *application_name;
    bool saw_waiting, inserted;
    double inserted_at; /* when the INSERT was sent */
    char error[256];
};

static void *notifier_main(void *arg)
{
    struct notifier *nt = arg;
    PGconn *db = PQconnectdb(conninfo());
    const char *params[1] = {nt->application_name};
    double deadline = now_s() + 5;
    while (PQstatus(db) == CONNECTION_OK && !nt->saw_waiting && now_s() < deadline) {
        PGresult *res = PQexecParams(db,
                                     "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
                                     "AND state = 'idle' AND query = 'COMMIT'",
                                     1, NULL, params, NULL, NULL, 0);
        nt->saw_waiting = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
        PQclear(res);
        struct timespec pause = {0, 5 * 1000 * 1000};
        if (!nt->saw_waiting)
            nanosleep(&pause, NULL); /* poll interval, bounded by the deadline */
    }
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (topic, payload) VALUES ('woken', '\\x01')",
             nt->table);
    nt->inserted_at = now_s();
    PGresult *res = PQexec(db, sql);
    nt->inserted = PQresultStatus(res) == PGRES_COMMAND_OK;
    snprintf(nt->error, sizeof nt->error, "%s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(db);
    return NULL;
}

/* poll_ms is a minute, so only the trigger's NOTIFY can end the wait: a
 * row inserted while fetch waits (timeout 5 s) comes at once. */
START_TEST(test_source_notify_wakes)
{
    char table[64], app[64];
    unique_name(table, sizeof table, "notify");
    unique_name(app, sizeof app, "app");
    struct connector *c = source_connector(app);
    struct item items[] = {
        {"table", table}, {"create_table", "true"}, {"poll_ms", "60000"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    struct notifier nt = {.table = table, .application_name = app};
    pthread_t th;
    double t0 = now_s();
    ck_assert_int_eq(pthread_create(&th, NULL, notifier_main, &nt), 0);
    struct import_record *recs[4];
    size_t n = source_fetch(s, recs, 4, 5000, CONNECTOR_OK);
    double t1 = now_s(), dt = t1 - t0;
    pthread_join(th, NULL);
    ck_assert_msg(nt.saw_waiting, "the source never waited after an empty look");
    ck_assert_msg(nt.inserted, "insert: %s", nt.error);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(recs[0]->sub_topic, "woken");
    ck_assert_msg(dt < 2.0, "fetch took %.3f s", dt);
    printf("postgres: source: fetch returned %.1f ms after the INSERT was sent\n",
           (t1 - nt.inserted_at) * 1e3);
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ops->source_close(s);
    sink_done(c, r);
}
END_TEST

/* An owner's table without a trigger, made with the documented columns:
 * no rows -> n = 0 after the timeout; rows inserted meanwhile are found by
 * polling (poll_ms 100), with no NOTIFY. */
START_TEST(test_source_poll_without_trigger)
{
    char table[64], sql[512];
    unique_name(table, sizeof table, "owned");
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (id BIGSERIAL PRIMARY KEY, topic TEXT, qos SMALLINT, client_id "
             "TEXT, payload BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
             table);
    db_exec(db, sql);
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {{"table", table}, {"poll_ms", "100"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    struct import_record *recs[4];
    double t0 = now_s();
    ck_assert_uint_eq(source_fetch(s, recs, 4, 300, CONNECTOR_OK), 0);
    double dt = now_s() - t0;
    ck_assert_msg(dt >= 0.29 && dt < 2.5, "an empty fetch took %.3f s, want 0.3", dt);

    static const struct row row = {"polled", "0", NULL, "z", 1};
    long long id;
    outbox_insert(db, table, &row, 1, &id);
    t0 = now_s();
    size_t n = source_fetch(s, recs, 4, 3000, CONNECTOR_OK);
    dt = now_s() - t0;
    ck_assert_uint_eq(n, 1);
    check_ids(recs, n, &id);
    ck_assert_msg(dt < 2.0, "polling took %.3f s (poll_ms 100)", dt);
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 0);
    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* create_table false and no table: open says RETRY and names it; once the
 * owner made it, open succeeds. */
START_TEST(test_source_missing_table)
{
    char table[64], sql[512], err[512] = "";
    unique_name(table, sizeof table, "later");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {{"table", table}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = NULL;
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, "does not exist") && strstr(err, table), "err: %s", err);
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql, "CREATE TABLE %s (id BIGSERIAL PRIMARY KEY, payload JSONB)", table);
    db_exec(db, sql);
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "topic") && strstr(err, "does not exist"), "err: %s", err);
    snprintf(sql, sizeof sql,
             "ALTER TABLE %s ADD topic TEXT, ADD qos SMALLINT, ADD client_id TEXT, "
             "ADD created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
             table);
    db_exec(db, sql);
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "payload must be bytea or text"), "err: %s", err);
    snprintf(sql, sizeof sql, "ALTER TABLE %s ALTER payload TYPE TEXT", table);
    db_exec(db, sql);
    s = source_open(c, r);
    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* The source's session is killed while it holds a batch: ack and fetch say
 * RETRY, nothing was deleted, and after a new open the rows come again. */
START_TEST(test_source_connection_lost)
{
    char table[64], app[64];
    unique_name(table, sizeof table, "lost");
    unique_name(app, sizeof app, "app");
    struct connector *c = source_connector(app);
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    static const struct row rows[] = {{"a", NULL, NULL, "1", 1}, {"b", NULL, NULL, "2", 1}};
    long long ids[2];
    PGconn *db = db_connect();
    outbox_insert(db, table, rows, 2, ids);
    struct import_record *recs[4];
    size_t n = source_fetch(s, recs, 4, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 2);

    const char *params[1] = {app};
    PGresult *res = db_query(db,
                             "SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM "
                             "pg_stat_activity WHERE application_name = $1",
                             1, params);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    const char *err = source_ack(s, recs, n, CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "host=127.0.0.1"), "err: %s", err);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 2);
    ck_assert_int_eq(ops->source_lag(s), -1);
    source_fetch(s, recs, 4, 100, CONNECTOR_RETRY);
    ops->source_close(s);

    s = source_open(c, r);
    n = source_fetch(s, recs, 4, 1000, CONNECTOR_OK);
    ck_assert_uint_eq(n, 2);
    check_ids(recs, n, ids);
    source_ack(s, recs, n, CONNECTOR_OK);
    records_free(recs, n);
    ck_assert_int_eq(db_count(db, table), 0);
    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

/* A port nobody listens on: RETRY, naming the server without the
 * password. */
START_TEST(test_source_unreachable)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    char ci[256], want[128], err[512] = "";
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%u dbname=nowhere user=u password=hunter2",
             ntohs(sa.sin_port));
    snprintf(want, sizeof want, "cannot connect to host=127.0.0.1 port=%u dbname=nowhere",
             ntohs(sa.sin_port));
    struct connector *c = sink_new(ci, "2");
    struct item items[] = {{"table", "t"}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = NULL;
    ck_assert_int_eq(ops->source_open(c, r, &s, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, want), "err: %s", err);
    ck_assert_msg(!strstr(err, "hunter2"), "password in: %s", err);
    ops->source_close(NULL);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* fetch + ack in batches of 1000 rows with 64-byte payloads: every row
 * once, in id order; the rate is printed. */
START_TEST(test_source_throughput)
{
    enum { N = 20000, BATCH = 1000 };
    char table[64], sql[512];
    unique_name(table, sizeof table, "bench");
    struct connector *c = sink_new(conninfo(), NULL);
    struct item items[] = {{"table", table}, {"create_table", "true"}, {NULL, NULL}};
    struct rule *r = rule_ok(c, RULE_INBOUND, items, NULL);
    struct source *s = source_open(c, r);
    PGconn *db = db_connect();
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (topic, qos, payload) SELECT 'dev' || (g %% 100) || '/cmd', "
             "(g %% 3)::smallint, decode(repeat(lpad(to_hex(g %% 256), 2, '0'), 64), 'hex') "
             "FROM generate_series(1, %d) AS g",
             table, N);
    db_exec(db, sql);
    struct import_record **recs = calloc(BATCH, sizeof *recs);
    ck_assert_ptr_nonnull(recs);
    size_t total = 0;
    int64_t last = 0;
    double t0 = now_s();
    while (total < N) {
        size_t n = source_fetch(s, recs, BATCH, 1000, CONNECTOR_OK);
        ck_assert_uint_gt(n, 0);
        for (size_t i = 0; i < n; i++) {
            ck_assert_int_gt(recs[i]->offset, last);
            ck_assert_uint_eq(recs[i]->payload_len, 64);
            last = recs[i]->offset;
        }
        source_ack(s, recs, n, CONNECTOR_OK);
        records_free(recs, n);
        total += n;
    }
    double dt = now_s() - t0;
    printf("postgres: source: %d rows of 64-byte payloads by fetch + ack in batches of %d: "
           "%.3f s, %.0f records/s\n",
           N, BATCH, dt, N / dt);
    ck_assert_uint_eq(total, N);
    ck_assert_int_eq(db_count(db, table), 0);
    free(recs);
    ops->source_close(s);
    PQfinish(db);
    sink_done(c, r);
}
END_TEST

Suite *postgres_suite(void)
{
    snprintf(prefix, sizeof prefix, "mqbt%ld_%ld", (long)getpid(), (long)time(NULL) % 100000);
    Suite *s = suite_create("postgres");
    TCase *tc = tcase_create("validation");
    tcase_add_loop_test(tc, test_settings_errors, 0, ARRAY_LEN(settings_cases));
    tcase_add_loop_test(tc, test_rule_errors, 0, ARRAY_LEN(rule_cases));
    tcase_add_test(tc, test_inbound_target_options);
    tcase_add_loop_test(tc, test_inbound_compile_ok, 0, ARRAY_LEN(inbound_ok_cases));
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
    tcase_add_test(tc, test_retry_no_unique_msg_id);
    tcase_add_test(tc, test_copy_repeats);
    tcase_add_test(tc, test_copy_reject_one);
    tcase_add_test(tc, test_copy_connection_killed);
    tcase_add_test(tc, test_copy_custom_columns);
    tcase_add_test(tc, test_copy_not_for_this_table);
    tcase_add_test(tc, test_copy_table_changed);
    tcase_add_test(tc, test_copy_mixed_batch);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);

    tc = tcase_create("source");
    tcase_add_unchecked_fixture(tc, NULL, drop_all);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_source_create_table);
    tcase_add_test(tc, test_source_fetch_exact);
    tcase_add_test(tc, test_source_skipped_rows);
    tcase_add_test(tc, test_source_redelivery);
    tcase_add_test(tc, test_source_skip_locked);
    tcase_add_test(tc, test_source_notify_wakes);
    tcase_add_test(tc, test_source_poll_without_trigger);
    tcase_add_test(tc, test_source_missing_table);
    tcase_add_test(tc, test_source_connection_lost);
    tcase_add_test(tc, test_source_unreachable);
    tcase_add_test(tc, test_source_throughput);
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
