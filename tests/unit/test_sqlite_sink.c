/* sqlite_sink_suite: the SQLite export connector (connectors/sqlite.c).
 * Settings and rule validation with positions, the default and the custom
 * column schemas, exact read-back of exported rows, idempotent repeats, the
 * status-state rule under late and repeated events, REJECT and RETRY, the
 * database directory, WAL readers, the sync level, multi-row groups (batch
 * sizes around the group sizes, a refused record inside a group, custom
 * columns, mixed rules, large payloads) and a throughput figure.
 * Each test works in its own mkdtemp directory, removed afterwards. */
#define _XOPEN_SOURCE 700 /* nftw */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../connectors/connector.h"
#include "check_main.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

extern const struct connector_ops sqlite_connector;
static const struct connector_ops *ops = &sqlite_connector;

static char dir[256];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void dir_setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/mqb_sqlite_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void dir_teardown(void)
{
    ck_assert_int_eq(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* ---- Settings trees -------------------------------------------------------
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

/* items end at a NULL key; columns (may be NULL) end at a NULL key. */
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

/* ---- Connector and rules ---------------------------------------------------- */

static struct connector *sink_new(const char *path, const char *sync, const char *busy_ms)
{
    struct item items[4] = {{"path", path}};
    unsigned n = 1;
    if (sync)
        items[n++] = (struct item){"sync", sync};
    if (busy_ms)
        items[n++] = (struct item){"busy_timeout_ms", busy_ms};
    struct kvmap *settings = map_build(items, NULL);
    struct connector *c = NULL;
    char err[512] = "";
    ck_assert_msg(ops->create("lite", settings, &c, err, sizeof err) == 0, "create: %s", err);
    kvmap_free(settings);
    return c;
}

static struct connector *sink_open(const char *path)
{
    struct connector *c = sink_new(path, NULL, NULL);
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "open: %s", err);
    return c;
}

static void rule_init(struct rule *r, const char *name, enum rule_type type, struct kvmap *options)
{
    memset(r, 0, sizeof *r);
    r->name = strdup(name);
    r->type = type;
    r->enabled = true;
    r->file = "t.yaml";
    r->line = 1;
    r->col = 1;
    r->options = options;
    r->target_options = map_new(1, 1, 1);
}

/* Compile; 0 or -1 with err. */
static int rule_compile(struct connector *c, struct rule *r, char *err, size_t errlen)
{
    err[0] = '\0';
    return ops->compile(c, r, &r->compiled, err, errlen);
}

static void rule_compile_ok(struct connector *c, struct rule *r)
{
    char err[512];
    ck_assert_msg(rule_compile(c, r, err, sizeof err) == 0, "compile: %s", err);
}

static void rule_done(struct connector *c, struct rule *r)
{
    if (r->compiled)
        ops->release(c, r->compiled);
    kvmap_free(r->options);
    kvmap_free(r->target_options);
    free(r->name);
}

/* ---- Records ---------------------------------------------------------------- */

struct msg {
    struct export_record rec;
    char client[64], topic[64];
    uint8_t payload[128];
};

static const char *const clients[] = {"GID_a@@@dev1", "GID_a@@@dev2", "GID_b@@@x-9"};

/* Message i: client i % 3, topic "SensorData/<client>", qos i % 3, a
 * payload with zero bytes, id 0xabc00000 + i, time 1.7e12 + i. */
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

/* A JSON payload for the template tests. */
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

/* ---- A reader on the database ------------------------------------------------ */

static sqlite3 *db_open(const char *path)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static int64_t db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK, "%s: %s", sql,
                  msg ? msg : "");
}

/* A new database at path with the owner's tables `sql` makes; the caller
 * closes the connection. */
static sqlite3 *db_create(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    db_exec(db, sql);
    return db;
}

static char *path_in(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* ---- Validation ---------------------------------------------------------------- */

static const struct {
    const char *name;
    struct item items[4];
    const char *want;
} settings_cases[] = {
    {"unknown key",
     {{"path", "x.db"}, {"paht", "y"}},
     "t.yaml:3:3: connector 'lite': unknown key 'paht' (did you mean 'path'?)"},
    {"missing path",
     {{"sync", "full"}},
     "t.yaml:1:1: connector 'lite': missing required key 'path'"},
    {"empty path", {{"path", ""}}, "t.yaml:2:3: connector 'lite': path: must not be empty"},
    {"bad sync",
     {{"path", "x.db"}, {"sync", "sometimes"}},
     "t.yaml:3:3: connector 'lite': sync: expected off, normal or full, got 'sometimes'"},
    {"bad busy timeout",
     {{"path", "x.db"}, {"sync", "off"}, {"busy_timeout_ms", "-1"}},
     "t.yaml:4:3: connector 'lite': busy_timeout_ms: expected an integer 0..3600000, got '-1'"},
};

START_TEST(test_settings_errors)
{
    struct kvmap *settings = map_build(settings_cases[_i].items, NULL);
    struct connector *c = NULL;
    char err[512] = "";
    ck_assert_int_eq(ops->create("lite", settings, &c, err, sizeof err), -1);
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
     {{"tabel", "t"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': unknown key 'tabel' (did you mean 'table'?)"},
    {"missing table",
     RULE_OUTBOUND,
     {{"create_table", "true"}},
     {{NULL, NULL}},
     "t.yaml:1:1: rule 'r': missing required key 'table'"},
    {"bad identifier",
     RULE_OUTBOUND,
     {{"table", "msgs; DROP TABLE x"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: 'msgs; DROP TABLE x' is not an identifier "
     "([A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"digit first",
     RULE_STATUS,
     {{"table", "1state"}},
     {{NULL, NULL}},
     "t.yaml:2:3: rule 'r': table: '1state' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"bad events table",
     RULE_STATUS,
     {{"table", "state"}, {"events_table", "ev\"x"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': events_table: 'ev\"x' is not an identifier "
     "([A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"create_table not a bool",
     RULE_OUTBOUND,
     {{"table", "t"}, {"create_table", "maybe"}},
     {{NULL, NULL}},
     "t.yaml:3:3: rule 'r': create_table: expected true or false, got 'maybe'"},
    {"columns on a status rule",
     RULE_STATUS,
     {{"table", "t"}},
     {{"a", "${clientid}"}},
     "t.yaml:3:3: rule 'r': unknown key 'columns'"},
    {"bad column name",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"ok", "${topic}"}, {"bad col", "${qos}"}},
     "t.yaml:21:5: rule 'r': columns: 'bad col' is not an identifier "
     "([A-Za-z_][A-Za-z0-9_]{0,62})"},
    {"bad template",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"who", "${clientId}"}},
     "t.yaml:20:5: rule 'r': columns: key 'who': unknown field 'clientId'"},
    {"column twice",
     RULE_OUTBOUND,
     {{"table", "t"}},
     {{"a", "${qos}"}, {"A", "${topic}"}},
     "t.yaml:21:5: rule 'r': columns: 'A' given twice"},
    {"inbound rule",
     RULE_INBOUND,
     {{"table", "t"}},
     {{NULL, NULL}},
     "t.yaml:1:1: rule 'r': the sqlite connector takes outbound and status rules only"},
};

START_TEST(test_rule_errors)
{
    struct connector *c = sink_new(path_in("v.db"), NULL, NULL);
    struct rule r;
    rule_init(&r, "r", rule_cases[_i].type,
              map_build(rule_cases[_i].items,
                        rule_cases[_i].columns[0].key ? rule_cases[_i].columns : NULL));
    char err[512];
    ck_assert_int_eq(rule_compile(c, &r, err, sizeof err), -1);
    ck_assert_msg(!strncmp(err, rule_cases[_i].want, strlen(rule_cases[_i].want)),
                  "%s:\n got  %s\n want %s...", rule_cases[_i].name, err, rule_cases[_i].want);
    ck_assert_ptr_null(r.compiled);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* ---- Messages -------------------------------------------------------------------- */

static struct rule *outbound_rule(struct connector *c, const char *table, const struct item *cols)
{
    struct rule *r = malloc(sizeof *r);
    ck_assert_ptr_nonnull(r);
    struct item items[] = {{"table", table}, {NULL, NULL}};
    rule_init(r, "out", RULE_OUTBOUND, map_build(items, cols));
    rule_compile_ok(c, r);
    return r;
}

static void rule_free(struct connector *c, struct rule *r)
{
    rule_done(c, r);
    free(r);
}

/* An outbound rule (named after the table) into the owner's table `table`
 * (create_table: false), with custom columns cols (NULL: the default
 * mapping); rule_done() frees it. */
static void owner_rule(struct connector *c, struct rule *r, const char *table,
                       const struct item *cols)
{
    struct item items[] = {{"table", table}, {"create_table", "false"}, {NULL, NULL}};
    rule_init(r, table, RULE_OUTBOUND, map_build(items, cols));
    rule_compile_ok(c, r);
}

/* Every row equals the message it came from, in export order. */
static void check_messages(sqlite3 *db, const char *table, const struct msg *m, size_t n)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT msg_id, topic, client_id, qos, payload, time_ms, typeof(payload) "
             "FROM %s ORDER BY rowid",
             table);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    for (size_t i = 0; i < n; i++) {
        char hex[17];
        ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), hex);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), m[i].topic);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 2), m[i].client);
        ck_assert_int_eq(sqlite3_column_int(st, 3), m[i].rec.qos);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 6), "blob");
        ck_assert_int_eq(sqlite3_column_bytes(st, 4), (int)m[i].rec.payload_len);
        ck_assert_mem_eq(sqlite3_column_blob(st, 4), m[i].payload, m[i].rec.payload_len);
        ck_assert_int_eq(sqlite3_column_int64(st, 5), m[i].rec.time_ms);
    }
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
}

START_TEST(test_messages_exact_and_idempotent)
{
    enum { N = 60 };
    const char *path = path_in("export.db");
    struct connector *c = sink_open(path);
    struct rule *r = outbound_rule(c, "telemetry", NULL);
    struct msg *m = calloc(N, sizeof *m);
    ck_assert_ptr_nonnull(m);
    for (unsigned i = 0; i < N; i++)
        msg_make(&m[i], r, i);

    export_msgs(c, m, 25, CONNECTOR_OK, 25);
    export_msgs(c, m + 25, N - 25, CONNECTOR_OK, N - 25);
    sqlite3 *db = db_open(path);
    check_messages(db, "telemetry", m, N);
    /* The engine offers records again after a crash or a retry. */
    export_msgs(c, m + 10, 30, CONNECTOR_OK, 30);
    export_msgs(c, m, N, CONNECTOR_OK, N);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM telemetry"), N);
    check_messages(db, "telemetry", m, N);
    /* An empty batch is a no-op. */
    export_msgs(c, m, 0, CONNECTOR_OK, 0);

    sqlite3_close(db);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

START_TEST(test_custom_columns)
{
    const char *path = path_in("custom.db");
    struct connector *c = sink_open(path);
    const struct item cols[] = {
        {"device", "${device}"},      {"temp", "${payload.temp}"}, {"raw", "${payload}"},
        {"label", "${group}/${qos}"}, {"seen", "${timestamp}"},    {NULL, NULL},
    };
    struct rule *r = outbound_rule(c, "readings", cols);
    struct msg m[3];
    static const char *const json[] = {"{\"temp\":21}", "{\"temp\":-3.5,\"x\":1}", "not json"};
    for (unsigned i = 0; i < 3; i++) {
        msg_make(&m[i], r, i);
        msg_json(&m[i], json[i]);
    }
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    export_msgs(c, m, 3, CONNECTOR_OK, 3); /* msg_id keeps repeats out */

    static const struct {
        const char *device, *temp, *label, *seen;
    } want[] = {
        {"dev1", "21", "GID_a/0", "1700000000000"},
        {"dev2", "-3.5", "GID_a/1", "1700000000001"},
        {"x-9", "", "GID_b/2", "1700000000002"},
    };
    sqlite3 *db = db_open(path);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT device, temp, raw, typeof(raw), typeof(temp), "
                                        "label, seen, msg_id FROM readings ORDER BY rowid",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (unsigned i = 0; i < 3; i++) {
        char hex[17];
        ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), want[i].device);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), want[i].temp);
        ck_assert_int_eq(sqlite3_column_bytes(st, 2), (int)strlen(json[i]));
        ck_assert_mem_eq(sqlite3_column_blob(st, 2), json[i], strlen(json[i]));
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 3), "blob");
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 4), "text");
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 5), want[i].label);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 6), want[i].seen);
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 7), hex);
    }
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- Status events ------------------------------------------------------------------- */

struct event {
    const char *client, *type, *channel;
    uint64_t seq;
    /* the state row after it */
    int online;
    const char *want_channel, *want_type;
    uint64_t want_seq;
};

#define CH_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define CH_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define CH_C "cccccccccccccccccccccccccccccccc"
#define DEV "GID_s@@@d1"

/* Applied one by one; each row is the state expected afterwards. */
static const struct event status_steps[] = {
    {DEV, "connect", CH_A, 10, 1, CH_A, "connect", 10},
    {DEV, "disconnect", CH_A, 11, 0, CH_A, "disconnect", 11},
    {DEV, "tcpclean", CH_A, 12, 0, CH_A, "tcpclean", 12},
    {DEV, "connect", CH_B, 20, 1, CH_B, "connect", 20},
    /* late: the tcpclean of channel A, emitted earlier, arrives now */
    {DEV, "tcpclean", CH_A, 13, 1, CH_B, "connect", 20},
    /* takeover: channel A's close comes after B's connect (greater seq) */
    {DEV, "tcpclean", CH_A, 21, 1, CH_B, "connect", 20},
    /* a repeat of the connect, and an old connect of another channel */
    {DEV, "connect", CH_B, 20, 1, CH_B, "connect", 20},
    {DEV, "connect", CH_C, 5, 1, CH_B, "connect", 20},
    {DEV, "disconnect", CH_B, 30, 0, CH_B, "disconnect", 30},
    /* a lower seq must not overwrite, even a connect */
    {DEV, "connect", CH_A, 25, 0, CH_B, "disconnect", 30},
    {DEV, "connect", CH_C, 40, 1, CH_C, "connect", 40},
    /* first seen with a close: offline from the start */
    {"GID_s@@@d2", "tcpclean", CH_A, 41, 0, CH_A, "tcpclean", 41},
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

static void check_state(sqlite3 *db, const struct event *e, unsigned step)
{
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT online, channel_id, event_type, seq, since, "
                                        "client_ip FROM state WHERE client_id = ?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, e->client, -1, SQLITE_STATIC);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_msg(sqlite3_column_int(st, 0) == e->online, "step %u: online", step);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), e->want_channel);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 2), e->want_type);
    ck_assert_msg((uint64_t)sqlite3_column_int64(st, 3) == e->want_seq, "step %u: seq", step);
    ck_assert_int_eq(sqlite3_column_int64(st, 4), 1570868366000 + (int64_t)e->want_seq);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 5), "10.0.0.5:52144");
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
}

START_TEST(test_status_state_rule)
{
    const char *path = path_in("status.db");
    struct connector *c = sink_open(path);
    struct rule r;
    struct item items[] = {{"table", "state"}, {"events_table", "events"}, {NULL, NULL}};
    rule_init(&r, "st", RULE_STATUS, map_build(items, NULL));
    rule_compile_ok(c, &r);
    size_t n = ARRAY_LEN(status_steps);
    struct status_rec *s = calloc(n, sizeof *s);
    struct export_record **recs = calloc(n, sizeof *recs);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(recs);
    sqlite3 *db = NULL;
    for (unsigned i = 0; i < n; i++) {
        status_make(&s[i], &r, &status_steps[i]);
        recs[i] = &s[i].rec;
        export_expect(c, &recs[i], 1, CONNECTOR_OK, 1);
        if (!db)
            db = db_open(path);
        check_state(db, &status_steps[i], i);
    }
    /* One events row per distinct seq (the repeat of seq 20 is absorbed). */
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM events"), n - 1);
    /* The whole history again, in one batch: nothing changes. */
    export_expect(c, recs, n, CONNECTOR_OK, n);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM events"), n - 1);
    check_state(db, &status_steps[n - 2], 99);
    check_state(db, &status_steps[n - 1], 99);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM state"), 2);

    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT client_id, event_type, channel_id, client_ip, "
                                        "time_ms, body FROM events WHERE seq = 21",
                                        -1, &st, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), DEV);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), "tcpclean");
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 2), CH_A);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 3), "10.0.0.5:52144");
    ck_assert_int_eq(sqlite3_column_int64(st, 4), 1570868366021);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 5), s[5].body);
    sqlite3_finalize(st);

    sqlite3_close(db);
    free(recs);
    free(s);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* ---- Failures ----------------------------------------------------------------------- */

/* A STRICT table refuses "abc" in an INTEGER column: that record is
 * rejected, the ones before it are committed. */
START_TEST(test_reject_bad_row)
{
    const char *path = path_in("strict.db");
    sqlite3 *db = db_create(
        path, "CREATE TABLE strict_t (msg_id TEXT PRIMARY KEY, device TEXT, temp INTEGER) STRICT");
    struct connector *c = sink_open(path);
    struct rule r;
    struct item cols[] = {{"device", "${device}"}, {"temp", "${payload.temp}"}, {NULL, NULL}};
    owner_rule(c, &r, "strict_t", cols);
    struct msg m[5];
    static const char *const temps[] = {"1", "2", "\"abc\"", "4", "5"};
    for (unsigned i = 0; i < 5; i++) {
        char json[64];
        msg_make(&m[i], &r, i);
        snprintf(json, sizeof json, "{\"temp\":%s}", temps[i]);
        msg_json(&m[i], json);
    }
    const char *err = export_msgs(c, m, 5, CONNECTOR_REJECT, 2);
    ck_assert_msg(strstr(err, "cannot store TEXT value in INTEGER column strict_t.temp") &&
                      strstr(err, "GID_b@@@x-9"),
                  "err: %s", err);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM strict_t"), 2);
    ck_assert_int_eq(db_int(db, "SELECT sum(temp) FROM strict_t"), 3);
    /* The engine drops record 2 and goes on with the rest. */
    export_msgs(c, m + 3, 2, CONNECTOR_OK, 2);
    ck_assert_int_eq(db_int(db, "SELECT sum(temp) FROM strict_t"), 12);
    sqlite3_close(db);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* A status event whose events row is refused (the owner's CHECK) is
 * rejected whole: its state change is not committed either. */
START_TEST(test_reject_status_event)
{
    const char *path = path_in("evcheck.db");
    sqlite3 *db = db_create(path, "CREATE TABLE ev (seq INTEGER PRIMARY KEY, client_id TEXT, "
                                  "event_type TEXT CHECK (event_type <> 'tcpclean'), channel_id "
                                  "TEXT, client_ip TEXT, time_ms INTEGER, body TEXT)");
    struct connector *c = sink_open(path);
    struct rule r;
    struct item items[] = {{"table", "state"}, {"events_table", "ev"}, {NULL, NULL}};
    rule_init(&r, "st", RULE_STATUS, map_build(items, NULL));
    rule_compile_ok(c, &r);
    const struct event steps[] = {
        {DEV, "connect", CH_A, 1, 1, CH_A, "connect", 1},
        {DEV, "tcpclean", CH_A, 2, 1, CH_A, "connect", 1},
        {DEV, "connect", CH_B, 3, 1, CH_B, "connect", 3},
    };
    struct status_rec s[3];
    struct export_record *recs[3];
    for (unsigned i = 0; i < 3; i++) {
        status_make(&s[i], &r, &steps[i]);
        recs[i] = &s[i].rec;
    }
    const char *err = export_expect(c, recs, 3, CONNECTOR_REJECT, 1);
    ck_assert_msg(strstr(err, "CHECK constraint failed"), "err: %s", err);
    check_state(db, &steps[1], 1);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM ev"), 1);
    export_expect(c, recs + 2, 1, CONNECTOR_OK, 1);
    check_state(db, &steps[2], 2);
    sqlite3_close(db);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* A table that is missing (create_table: false) is not the records'
 * fault: RETRY, nothing acknowledged, then fine once the table exists. */
START_TEST(test_retry_missing_table)
{
    const char *path = path_in("missing.db");
    struct connector *c = sink_open(path);
    struct rule r;
    struct item items[] = {{"table", "later"}, {"create_table", "no"}, {NULL, NULL}};
    rule_init(&r, "later", RULE_OUTBOUND, map_build(items, NULL));
    rule_compile_ok(c, &r);
    struct msg m[3];
    for (unsigned i = 0; i < 3; i++)
        msg_make(&m[i], &r, i);
    size_t acked = 7;
    char err[512] = "";
    struct export_record *recs[3] = {&m[0].rec, &m[1].rec, &m[2].rec};
    ck_assert_int_eq(ops->export(c, recs, 3, &acked, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_uint_eq(acked, 0);
    ck_assert_msg(strstr(err, "no such table: later"), "err: %s", err);
    sqlite3 *db = db_open(path);
    db_exec(db, "CREATE TABLE later (msg_id TEXT PRIMARY KEY, topic TEXT, client_id TEXT, "
                "qos INTEGER, payload BLOB, time_ms INTEGER)");
    export_msgs(c, m, 3, CONNECTOR_OK, 3);
    check_messages(db, "later", m, 3);
    sqlite3_close(db);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* Another process holds the write lock longer than busy_timeout_ms. */
START_TEST(test_retry_when_locked)
{
    const char *path = path_in("locked.db");
    struct connector *c = sink_new(path, NULL, "50");
    char err[512] = "";
    ck_assert_int_eq(ops->open(c, err, sizeof err), 0);
    struct rule *r = outbound_rule(c, "t", NULL);
    struct msg m[4];
    for (unsigned i = 0; i < 4; i++)
        msg_make(&m[i], r, i);
    export_msgs(c, m, 1, CONNECTOR_OK, 1);

    sqlite3 *db = db_open(path);
    db_exec(db, "BEGIN IMMEDIATE");
    export_msgs(c, m + 1, 3, CONNECTOR_RETRY, 0);
    db_exec(db, "COMMIT");
    export_msgs(c, m + 1, 3, CONNECTOR_OK, 3);
    check_messages(db, "t", m, 4);
    sqlite3_close(db);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* The database cannot be created (its "directory" is a file): open and
 * export say RETRY; nothing is acknowledged. */
START_TEST(test_retry_unopenable)
{
    FILE *f = fopen(path_in("plainfile"), "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    char path[600];
    snprintf(path, sizeof path, "%s/plainfile/sub/x.db", dir);
    struct connector *c = sink_new(path, NULL, NULL);
    char err[512] = "";
    ck_assert_int_eq(ops->open(c, err, sizeof err), CONNECTOR_RETRY);
    ck_assert_msg(strstr(err, "cannot create directory") && strstr(err, "plainfile"), "err: %s",
                  err);
    struct rule *r = outbound_rule(c, "t", NULL);
    struct msg m[1];
    msg_make(&m[0], r, 0);
    export_msgs(c, m, 1, CONNECTOR_RETRY, 0);
    ops->close(c);
    ops->close(c); /* twice is fine */
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- The database file ----------------------------------------------------------------- */

START_TEST(test_directory_created)
{
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/a/b/c/export.db", dir);
    struct connector *c = sink_open(path);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    /* Reopening an existing database keeps its rows. */
    struct rule *r = outbound_rule(c, "t", NULL);
    struct msg m[2];
    msg_make(&m[0], r, 0);
    msg_make(&m[1], r, 1);
    export_msgs(c, m, 2, CONNECTOR_OK, 2);
    ops->close(c);
    char err[512] = "";
    ck_assert_msg(ops->open(c, err, sizeof err) == 0, "reopen: %s", err);
    export_msgs(c, m, 2, CONNECTOR_OK, 2);
    snprintf(path, sizeof path, "%s/a/b/c/export.db", dir);
    sqlite3 *db = db_open(path);
    check_messages(db, "t", m, 2);
    sqlite3_close(db);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* WAL: a reader sees each committed batch, and a long read transaction
 * neither blocks the sink nor sees rows committed after it began. */
START_TEST(test_concurrent_reader)
{
    const char *path = path_in("wal.db");
    struct connector *c = sink_open(path);
    struct rule *r = outbound_rule(c, "t", NULL);
    struct msg m[30];
    for (unsigned i = 0; i < 30; i++)
        msg_make(&m[i], r, i);
    export_msgs(c, m, 10, CONNECTOR_OK, 10);
    sqlite3 *db = db_open(path);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), 10);
    db_exec(db, "BEGIN");
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), 10);
    export_msgs(c, m + 10, 10, CONNECTOR_OK, 10);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), 10); /* its snapshot */
    db_exec(db, "COMMIT");
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), 20);
    export_msgs(c, m + 20, 10, CONNECTOR_OK, 10);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), 30);
    check_messages(db, "t", m, 30);
    sqlite3_close(db);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* open() reports the settings it read back from SQLite; capture its log. */
static const struct {
    const char *sync, *want;
} sync_cases[] = {
    {"off", "synchronous=off"},
    {"normal", "synchronous=normal"},
    {"full", "synchronous=full"},
    {NULL, "synchronous=normal"},
};

START_TEST(test_sync_applied)
{
    char log_path[600], line[1024], err[512] = "";
    snprintf(log_path, sizeof log_path, "%s/open.log", dir);
    struct connector *c = sink_new(path_in("sync.db"), sync_cases[_i].sync, "1234");
    fflush(stderr);
    int saved = dup(2), fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(saved, 0);
    dup2(fd, 2);
    int rc = ops->open(c, err, sizeof err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    ck_assert_msg(rc == 0, "open: %s", err);
    FILE *f = fopen(log_path, "r");
    ck_assert_ptr_nonnull(f);
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (strstr(line, sync_cases[_i].want) && strstr(line, "journal_mode=wal") &&
            strstr(line, "busy_timeout=1234 ms"))
            found = true;
    fclose(f);
    ck_assert_msg(found, "no '%s' in the open log", sync_cases[_i].want);
    ops->destroy(c);
}
END_TEST

/* ---- Multi-row groups -----------------------------------------------------------------
 * Messages of one rule go in statements of 1, 2, 4, ... 128 rows: a batch
 * of 129 is 128 + 1, one of 127 is 64 + 32 + 16 + 8 + 4 + 2 + 1. */

static struct msg *msgs_new(const struct rule *r, size_t n, unsigned first)
{
    struct msg *m = calloc(n ? n : 1, sizeof *m);
    ck_assert_ptr_nonnull(m);
    for (size_t i = 0; i < n; i++)
        msg_make(&m[i], r, first + (unsigned)i);
    return m;
}

static const size_t batch_sizes[] = {1, 2, 127, 128, 129, 255, 256, 257, 5000};

/* Every size reads back exactly, and a repeat of the batch, whole or
 * shifted so that the groups fall elsewhere, adds nothing. */
START_TEST(test_batch_sizes)
{
    size_t n = batch_sizes[_i];
    const char *path = path_in("sizes.db");
    struct connector *c = sink_open(path);
    struct rule *r = outbound_rule(c, "t", NULL);
    struct msg *m = msgs_new(r, 2 * n, 0);
    export_msgs(c, m, n, CONNECTOR_OK, n);
    sqlite3 *db = db_open(path);
    check_messages(db, "t", m, n);
    export_msgs(c, m, n, CONNECTOR_OK, n);
    export_msgs(c, m + n / 2, n, CONNECTOR_OK, n); /* half repeats, half new */
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM t"), (int64_t)(n / 2 + n));
    check_messages(db, "t", m, n / 2 + n);
    sqlite3_close(db);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* The owner's CHECK refuses one record of a 300-record batch (128 + 128 +
 * 32 + 8 + 4): exactly that one is rejected, the ones before it are
 * committed and none after it; the engine then offers the rest. */
static const size_t refused_at[] = {0, 1, 63, 127, 128, 200, 255, 256, 299};

START_TEST(test_reject_in_group)
{
    enum { N = 300 };
    size_t bad = refused_at[_i];
    char sql[512];
    const char *path = path_in("check.db");
    snprintf(sql, sizeof sql,
             "CREATE TABLE chk (msg_id TEXT PRIMARY KEY, topic TEXT, client_id TEXT, qos INTEGER, "
             "payload BLOB, time_ms INTEGER CHECK (time_ms <> %" PRId64 "))",
             (int64_t)1700000000000 + (int64_t)bad);
    sqlite3 *db = db_create(path, sql);
    struct connector *c = sink_open(path);
    struct rule r;
    owner_rule(c, &r, "chk", NULL);
    struct msg *m = msgs_new(&r, N, 0);

    const char *err = export_msgs(c, m, N, CONNECTOR_REJECT, bad);
    ck_assert_msg(strstr(err, "CHECK constraint failed") && strstr(err, m[bad].client), "err: %s",
                  err);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM chk"), (int64_t)bad);
    check_messages(db, "chk", m, bad);
    /* Offered again (a retry of the batch): the same answer. */
    export_msgs(c, m, N, CONNECTOR_REJECT, bad);
    /* The engine drops it and goes on with the next. */
    export_msgs(c, m + bad + 1, N - bad - 1, CONNECTOR_OK, N - bad - 1);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM chk"), N - 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM chk WHERE msg_id = '%016" PRIx64 "'",
             m[bad].rec.msg_id);
    ck_assert_int_eq(db_int(db, sql), 0);
    sqlite3_close(db);
    free(m);
    rule_done(c, &r);
    ops->destroy(c);
}
END_TEST

/* The owner's UNIQUE ... ON CONFLICT FAIL keeps the rows a refused
 * statement inserted before the refused one; the row-by-row redo meets
 * them again as repeats. ON CONFLICT IGNORE skips rows silently. */
START_TEST(test_reject_owner_conflict_clauses)
{
    enum { N = 200 };
    const char *path = path_in("fail.db");
    sqlite3 *db =
        db_create(path, "CREATE TABLE f (msg_id TEXT PRIMARY KEY, tag TEXT UNIQUE ON CONFLICT "
                        "FAIL); CREATE TABLE ig (msg_id TEXT PRIMARY KEY, tag TEXT UNIQUE ON "
                        "CONFLICT IGNORE)");
    struct connector *c = sink_open(path);
    /* tag t<i>: unique, except that record 150 repeats record 10's. */
    const struct item cols[] = {{"tag", "${payload.tag}"}, {NULL, NULL}};
    struct rule rf, ri;
    owner_rule(c, &rf, "f", cols);
    owner_rule(c, &ri, "ig", cols);
    struct msg *m = msgs_new(&rf, N, 0);
    for (unsigned i = 0; i < N; i++) {
        char json[64];
        snprintf(json, sizeof json, "{\"tag\":\"t%u\"}", i == 150 ? 10 : i); /* 150 repeats 10 */
        msg_json(&m[i], json);
    }
    const char *err = export_msgs(c, m, N, CONNECTOR_REJECT, 150);
    ck_assert_msg(strstr(err, "UNIQUE constraint failed: f.tag"), "err: %s", err);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM f"), 150);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM f WHERE tag = 't150'"), 0);
    export_msgs(c, m + 151, N - 151, CONNECTOR_OK, N - 151);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM f"), N - 1);

    for (unsigned i = 0; i < N; i++)
        m[i].rec.rule = &ri;
    export_msgs(c, m, N, CONNECTOR_OK, N);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM ig"), N - 1);
    sqlite3_close(db);
    free(m);
    rule_done(c, &rf);
    rule_done(c, &ri);
    ops->destroy(c);
}
END_TEST

/* Custom columns over many groups: every rendered value lands in its own
 * row (the values of a group are rendered before any is bound). */
START_TEST(test_custom_columns_groups)
{
    enum { N = 700 };
    const char *path = path_in("customg.db");
    struct connector *c = sink_open(path);
    const struct item cols[] = {
        {"device", "${device}"},
        {"temp", "${payload.temp}"},
        {"raw", "${payload}"},
        {"label", "${group}/${qos}/${msgid}"},
        {NULL, NULL},
    };
    struct rule *r = outbound_rule(c, "readings", cols);
    struct msg *m = msgs_new(r, N, 0);
    for (unsigned i = 0; i < N; i++) {
        char json[64];
        snprintf(json, sizeof json, "{\"temp\":%u.5,\"pad\":\"%*s\"}", i, (int)(i % 40), "");
        msg_json(&m[i], json);
    }
    export_msgs(c, m, N, CONNECTOR_OK, N);
    export_msgs(c, m + 1, N - 1, CONNECTOR_OK, N - 1); /* repeats, groups shifted */

    sqlite3 *db = db_open(path);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM readings"), N);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "SELECT device, temp, raw, typeof(raw), label, msg_id "
                                        "FROM readings ORDER BY rowid",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (unsigned i = 0; i < N; i++) {
        char want[96], hex[17];
        ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), strchr(m[i].client, '@') + 3);
        snprintf(want, sizeof want, "%u.5", i);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), want);
        ck_assert_int_eq(sqlite3_column_bytes(st, 2), (int)m[i].rec.payload_len);
        ck_assert_mem_eq(sqlite3_column_blob(st, 2), m[i].payload, m[i].rec.payload_len);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 3), "blob");
        snprintf(hex, sizeof hex, "%016" PRIx64, m[i].rec.msg_id);
        snprintf(want, sizeof want, "GID_%c/%u/%s", m[i].client[4], i % 3, hex);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 4), want);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 5), hex);
    }
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* One batch mixing two outbound rules and a status rule: each record goes
 * to its own table, in order, whatever the runs look like. */
START_TEST(test_mixed_rules_batch)
{
    enum { N = 400 };
    const char *path = path_in("mixed.db");
    struct connector *c = sink_open(path);
    struct rule *ra = outbound_rule(c, "ta", NULL);
    struct rule *rb = outbound_rule(c, "tb", NULL);
    struct rule rs;
    struct item items[] = {{"table", "state"}, {"events_table", "events"}, {NULL, NULL}};
    rule_init(&rs, "st", RULE_STATUS, map_build(items, NULL));
    rule_compile_ok(c, &rs);
    struct msg *m = msgs_new(ra, N, 0);
    struct msg *ma = calloc(N, sizeof *ma), *mb = calloc(N, sizeof *mb);
    struct status_rec s[4];
    struct export_record *recs[N + 4];
    ck_assert_ptr_nonnull(ma);
    ck_assert_ptr_nonnull(mb);
    size_t na = 0, nb = 0, n = 0, ns = 0;
    for (unsigned i = 0; i < N; i++) {
        /* runs: 150 a, then alternating a/b, then 130 b, a status event
         * every 100 records */
        bool to_b = (i >= 150 && i < 250 && i % 2) || i >= 270;
        m[i].rec.rule = to_b ? rb : ra;
        if (to_b)
            mb[nb++] = m[i];
        else
            ma[na++] = m[i];
        recs[n++] = &m[i].rec;
        if (i % 100 == 99) {
            const struct event e = {.client = DEV,
                                    .type = ns % 2 ? "disconnect" : "connect",
                                    .channel = CH_A,
                                    .seq = 10 + ns};
            status_make(&s[ns], &rs, &e);
            recs[n++] = &s[ns++].rec;
        }
    }
    export_expect(c, recs, n, CONNECTOR_OK, n);
    export_expect(c, recs, n, CONNECTOR_OK, n);
    sqlite3 *db = db_open(path);
    check_messages(db, "ta", ma, na);
    check_messages(db, "tb", mb, nb);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM events"), 4);
    ck_assert_int_eq(db_int(db, "SELECT seq FROM state"), 13);
    /* A status record on an outbound rule in the middle of a run: refused,
     * the records before it kept. */
    struct msg *more = msgs_new(ra, 10, N);
    struct export_record *mixed[11];
    for (unsigned i = 0; i < 10; i++)
        mixed[i < 6 ? i : i + 1] = &more[i].rec;
    struct status_rec wrong;
    const struct event e = {.client = DEV, .type = "connect", .channel = CH_B, .seq = 99};
    status_make(&wrong, ra, &e);
    mixed[6] = &wrong.rec;
    const char *err = export_expect(c, mixed, 11, CONNECTOR_REJECT, 6);
    ck_assert_msg(strstr(err, "record kind does not match its rule"), "err: %s", err);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM ta"), (int64_t)na + 6);
    sqlite3_close(db);
    free(more);
    free(ma);
    free(mb);
    free(m);
    rule_free(c, ra);
    rule_free(c, rb);
    rule_done(c, &rs);
    ops->destroy(c);
}
END_TEST

/* Large payloads end a group early (at 1 MiB of payloads); every byte of
 * every row reads back. */
START_TEST(test_large_payloads)
{
    enum { N = 40, SIZE = 100000 };
    const char *path = path_in("large.db");
    struct connector *c = sink_open(path);
    const struct item cols[] = {{"body", "${payload}"}, {"n", "${payload.n}"}, {NULL, NULL}};
    struct rule *r = outbound_rule(c, "big", cols);
    struct msg *m = msgs_new(r, N, 0);
    uint8_t *data = malloc((size_t)N * SIZE);
    struct export_record *recs[N];
    ck_assert_ptr_nonnull(data);
    for (unsigned i = 0; i < N; i++) {
        uint8_t *p = data + (size_t)i * SIZE;
        int k = snprintf((char *)p, SIZE, "{\"n\":%u,\"x\":\"", i);
        memset(p + k, 'a' + i % 26, SIZE - k - 2);
        memcpy(p + SIZE - 2, "\"}", 2);
        m[i].rec.payload = p;
        m[i].rec.payload_len = SIZE;
        recs[i] = &m[i].rec;
    }
    export_expect(c, recs, N, CONNECTOR_OK, N);
    sqlite3 *db = db_open(path);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(
        sqlite3_prepare_v2(db, "SELECT body, n FROM big ORDER BY rowid", -1, &st, NULL), SQLITE_OK);
    for (unsigned i = 0; i < N; i++) {
        ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
        ck_assert_int_eq(sqlite3_column_bytes(st, 0), SIZE);
        ck_assert_mem_eq(sqlite3_column_blob(st, 0), data + (size_t)i * SIZE, SIZE);
        ck_assert_int_eq(sqlite3_column_int(st, 1), (int)i);
    }
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(data);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

/* ---- Throughput (printed, not asserted) -------------------------------------------------- */

static double now_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 100,000 rows of 64-byte payloads in export() calls of 5,000, as the
 * engine hands them under load; wall rate and this thread's CPU per row. */
START_TEST(test_throughput)
{
    enum { N = 100000, BATCH = 5000 };
    const char *path = path_in("bench.db");
    struct connector *c = sink_open(path);
    struct rule *r = outbound_rule(c, "bench", NULL);
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
    double t0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (size_t i = 0; i < N; i += BATCH)
        export_expect(c, recs + i, BATCH, CONNECTOR_OK, BATCH);
    double dt = now_s(CLOCK_MONOTONIC) - t0, dc = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    printf("sqlite_sink: %d rows of 64-byte payloads, export() of %d: %.3f s, %.0f rows/s, "
           "%.2f us CPU per row\n",
           N, BATCH, dt, N / dt, dc * 1e6 / N);
    sqlite3 *db = db_open(path);
    ck_assert_int_eq(db_int(db, "SELECT count(*) FROM bench"), N);
    sqlite3_close(db);
    free(recs);
    free(m);
    rule_free(c, r);
    ops->destroy(c);
}
END_TEST

Suite *sqlite_sink_suite(void)
{
    Suite *s = suite_create("sqlite_sink");
    TCase *tc = tcase_create("validation");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_add_loop_test(tc, test_settings_errors, 0, ARRAY_LEN(settings_cases));
    tcase_add_loop_test(tc, test_rule_errors, 0, ARRAY_LEN(rule_cases));
    suite_add_tcase(s, tc);

    tc = tcase_create("export");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_messages_exact_and_idempotent);
    tcase_add_test(tc, test_custom_columns);
    tcase_add_test(tc, test_status_state_rule);
    tcase_add_test(tc, test_reject_bad_row);
    tcase_add_test(tc, test_reject_status_event);
    tcase_add_test(tc, test_retry_missing_table);
    tcase_add_test(tc, test_retry_when_locked);
    tcase_add_test(tc, test_retry_unopenable);
    tcase_add_test(tc, test_directory_created);
    tcase_add_test(tc, test_concurrent_reader);
    tcase_add_loop_test(tc, test_sync_applied, 0, ARRAY_LEN(sync_cases));
    tcase_add_loop_test(tc, test_batch_sizes, 0, ARRAY_LEN(batch_sizes));
    tcase_add_loop_test(tc, test_reject_in_group, 0, ARRAY_LEN(refused_at));
    tcase_add_test(tc, test_reject_owner_conflict_clauses);
    tcase_add_test(tc, test_custom_columns_groups);
    tcase_add_test(tc, test_mixed_rules_batch);
    tcase_add_test(tc, test_large_payloads);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(sqlite_sink_suite)
