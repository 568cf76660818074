/* The embedded store on SQLite (contract in store.h).
 *
 * Layout: one connection, WAL journal, every statement prepared once at open
 * and reused. The schema carries its version in PRAGMA user_version; each
 * entry of migrations[] upgrades by one version, so a future schema change is
 * one more string, applied at open inside one transaction.
 *
 * Grouped writes: each write function starts with ensure_txn(), which opens
 * a transaction when none is open; store_commit() closes it. SQLite's own
 * autocommit flag is the truth about "a transaction is open", so a
 * transaction that SQLite rolled back after an I/O error is not mistaken for
 * an open one.
 *
 * Keys: seq and message ids are uint64_t in the API and INTEGER (int64) in
 * SQLite. Ids round-trip bit for bit; seq orders correctly below 2^63, far
 * beyond what a per-session counter reaches.
 *
 * Load is defensive: a row that cannot be a valid record (a topic longer
 * than MQTT allows, a QoS of 7, ...) is skipped with a warning instead of
 * stopping the broker from starting. */
/* store.h uses size_t without including stddef.h (reported to the lead). */
#include <stddef.h>

#include "store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

#define STORE_BUSY_TIMEOUT_MS 1000
/* After a burst, truncate the WAL back to this size at checkpoint. */
#define STORE_WAL_SIZE_LIMIT "67108864"

/* migrations[v] upgrades a database at user_version v to v + 1; the last
 * statement of each sets the new version. */
static const char *const migrations[] = {
    "CREATE TABLE IF NOT EXISTS sessions("
    " client_id TEXT NOT NULL PRIMARY KEY,"
    " last_seen INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS subs("
    " client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,"
    " PRIMARY KEY(client_id, filter)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS out("
    " client_id TEXT NOT NULL, seq INTEGER NOT NULL, msg_id INTEGER NOT NULL,"
    " topic TEXT NOT NULL, payload BLOB NOT NULL, pub_qos INTEGER NOT NULL,"
    " msg_retain INTEGER NOT NULL, time_ms INTEGER NOT NULL, qos INTEGER NOT NULL,"
    " retain INTEGER NOT NULL, packet_id INTEGER NOT NULL, state INTEGER NOT NULL,"
    " PRIMARY KEY(client_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS qos2("
    " client_id TEXT NOT NULL, packet_id INTEGER NOT NULL,"
    " PRIMARY KEY(client_id, packet_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS retained("
    " topic TEXT NOT NULL PRIMARY KEY, msg_id INTEGER NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL, time_ms INTEGER NOT NULL);"
    "PRAGMA user_version = 1;",
};
#define STORE_SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

enum stmt_id {
    STMT_BEGIN,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_SESSION_PUT,
    STMT_SESSION_DEL,
    STMT_SESSION_DEL_SUBS,
    STMT_SESSION_DEL_OUT,
    STMT_SESSION_DEL_QOS2,
    STMT_SUB_PUT,
    STMT_SUB_DEL,
    STMT_OUT_PUT,
    STMT_OUT_UPDATE,
    STMT_OUT_DEL,
    STMT_QOS2_PUT,
    STMT_QOS2_DEL,
    STMT_RETAIN_PUT,
    STMT_RETAIN_DEL,
    STMT_LOAD_SESSIONS,
    STMT_LOAD_SUBS,
    STMT_LOAD_OUT,
    STMT_LOAD_QOS2,
    STMT_LOAD_RETAINED,
    STMT_COUNT
};

/* The message loaders select topic, payload, qos, retain, msg_id, time_ms as
 * columns 0-5 so that row_message() reads both tables. */
static const char *const stmt_sql[STMT_COUNT] = {
    /* IMMEDIATE: take the write lock now rather than at the first write,
     * so a transaction never has to be upgraded. */
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_SESSION_PUT] = "INSERT INTO sessions(client_id, last_seen) VALUES(?1, ?2)"
                         " ON CONFLICT(client_id) DO UPDATE SET last_seen = excluded.last_seen",
    [STMT_SESSION_DEL] = "DELETE FROM sessions WHERE client_id = ?1",
    [STMT_SESSION_DEL_SUBS] = "DELETE FROM subs WHERE client_id = ?1",
    [STMT_SESSION_DEL_OUT] = "DELETE FROM out WHERE client_id = ?1",
    [STMT_SESSION_DEL_QOS2] = "DELETE FROM qos2 WHERE client_id = ?1",
    [STMT_SUB_PUT] = "INSERT INTO subs(client_id, filter, qos) VALUES(?1, ?2, ?3)"
                     " ON CONFLICT(client_id, filter) DO UPDATE SET qos = excluded.qos",
    [STMT_SUB_DEL] = "DELETE FROM subs WHERE client_id = ?1 AND filter = ?2",
    [STMT_OUT_PUT] = "INSERT OR REPLACE INTO out(client_id, seq, msg_id, topic, payload, pub_qos,"
                     " msg_retain, time_ms, qos, retain, packet_id, state)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [STMT_OUT_UPDATE] =
        "UPDATE out SET packet_id = ?3, state = ?4 WHERE client_id = ?1 AND seq = ?2",
    [STMT_OUT_DEL] = "DELETE FROM out WHERE client_id = ?1 AND seq = ?2",
    [STMT_QOS2_PUT] = "INSERT OR IGNORE INTO qos2(client_id, packet_id) VALUES(?1, ?2)",
    [STMT_QOS2_DEL] = "DELETE FROM qos2 WHERE client_id = ?1 AND packet_id = ?2",
    [STMT_RETAIN_PUT] = "INSERT OR REPLACE INTO retained(topic, msg_id, payload, qos, time_ms)"
                        " VALUES(?1, ?2, ?3, ?4, ?5)",
    [STMT_RETAIN_DEL] = "DELETE FROM retained WHERE topic = ?1",
    [STMT_LOAD_SESSIONS] = "SELECT client_id, last_seen FROM sessions ORDER BY client_id",
    [STMT_LOAD_SUBS] = "SELECT client_id, filter, qos FROM subs ORDER BY client_id, filter",
    [STMT_LOAD_OUT] = "SELECT topic, payload, pub_qos, msg_retain, msg_id, time_ms,"
                      " client_id, seq, qos, retain, packet_id, state"
                      " FROM out ORDER BY client_id, seq",
    [STMT_LOAD_QOS2] = "SELECT client_id, packet_id FROM qos2 ORDER BY client_id, packet_id",
    [STMT_LOAD_RETAINED] = "SELECT topic, payload, qos, 1, msg_id, time_ms"
                           " FROM retained ORDER BY topic",
};

static const char *const sync_sql[] = {
    [STORE_SYNC_OFF] = "PRAGMA synchronous = OFF",
    [STORE_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [STORE_SYNC_FULL] = "PRAGMA synchronous = FULL",
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *stmt[STMT_COUNT];
};

/* ---- statement execution --------------------------------------------- */

static int store_fail(struct store *st, const char *what)
{
    log_error("store: %s: %s", what, sqlite3_errmsg(st->db));
    return -1;
}

/* Positional binding of ?1..?n in call order; the first failure sticks and
 * is reported by bind_run(). */
struct bind {
    struct store *st;
    sqlite3_stmt *s;
    int rc;
    int n;
};

static struct bind bind_start(struct store *st, enum stmt_id id)
{
    return (struct bind){.st = st, .s = st->stmt[id], .rc = SQLITE_OK, .n = 0};
}

static void bind_i64(struct bind *b, sqlite3_int64 v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->s, ++b->n, v);
}

/* len -1: up to the NUL. SQLITE_STATIC is safe: bind_run() steps and clears
 * the bindings before the caller's memory can go away. */
static void bind_text(struct bind *b, const char *v, int len)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_text(b->s, ++b->n, v, len, SQLITE_STATIC);
}

/* An empty payload is bound as a zero-length blob, never as NULL. */
static void bind_blob(struct bind *b, const void *v, uint32_t len)
{
    if (b->rc != SQLITE_OK)
        return;
    if (len == 0)
        b->rc = sqlite3_bind_zeroblob(b->s, ++b->n, 0);
    else
        b->rc = sqlite3_bind_blob64(b->s, ++b->n, v, len, SQLITE_STATIC);
}

/* Steps a write statement to completion, then resets it and clears the
 * bindings (which may point at the caller's memory). 0 or -1 (logged). */
static int bind_run(struct bind *b, const char *what)
{
    int ret = 0;
    if (b->rc != SQLITE_OK || sqlite3_step(b->s) != SQLITE_DONE)
        ret = store_fail(b->st, what);
    sqlite3_reset(b->s);
    sqlite3_clear_bindings(b->s);
    return ret;
}

static int stmt_run(struct store *st, enum stmt_id id, const char *what)
{
    struct bind b = bind_start(st, id);
    return bind_run(&b, what);
}

/* Opens the grouping transaction when none is open. */
static int ensure_txn(struct store *st)
{
    if (!sqlite3_get_autocommit(st->db))
        return 0;
    return stmt_run(st, STMT_BEGIN, "begin");
}

/* ---- open / close ------------------------------------------------------ */

/* Runs a PRAGMA returning one text row and checks the value. */
static int pragma_expect(sqlite3 *db, const char *sql, const char *want, char *got, size_t gotlen)
{
    sqlite3_stmt *s = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(s) != SQLITE_ROW)
        goto out;
    const unsigned char *v = sqlite3_column_text(s, 0);
    snprintf(got, gotlen, "%s", v ? (const char *)v : "");
    ret = sqlite3_stricmp(got, want) == 0 ? 0 : 1;
out:
    sqlite3_finalize(s);
    return ret;
}

static int schema_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *s = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(s) != SQLITE_ROW)
        goto out;
    *version = sqlite3_column_int(s, 0);
    ret = 0;
out:
    sqlite3_finalize(s);
    return ret;
}

/* Brings the schema to STORE_SCHEMA_VERSION in one transaction. */
static int schema_migrate(sqlite3 *db, char *err, size_t errlen)
{
    int version = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto db_fail;
    if (schema_version(db, &version) != 0)
        goto db_fail;
    if (version < 0 || version > STORE_SCHEMA_VERSION) {
        snprintf(err, errlen, "schema version %d is not supported (this build knows 0-%d)", version,
                 STORE_SCHEMA_VERSION);
        goto fail;
    }
    for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
        if (sqlite3_exec(db, migrations[v], NULL, NULL, NULL) != SQLITE_OK)
            goto db_fail;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto db_fail;
    return 0;
db_fail:
    snprintf(err, errlen, "schema: %s", sqlite3_errmsg(db));
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Connection settings; the first statement is also the first read of the
 * file, so a file that is not a database fails here. */
/* Offline messages of many sessions land on many B-tree pages: a page cache
 * that holds them (128 MiB) and checkpoints every 65536 pages instead of 1000
 * let repeated changes to a page cost one write, not one per checkpoint. */
#define STORE_TUNING "PRAGMA cache_size = -131072; PRAGMA wal_autocheckpoint = 65536"

static int store_configure(sqlite3 *db, enum store_sync sync, char *err, size_t errlen)
{
    char mode[32];
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
    int rc = pragma_expect(db, "PRAGMA journal_mode = WAL", "wal", mode, sizeof mode);
    if (rc < 0)
        goto db_fail;
    if (rc > 0) {
        snprintf(err, errlen, "cannot enable WAL journal (journal_mode is '%s')", mode);
        return -1;
    }
    /* Cascades are done by store_session_del; no foreign keys to check. */
    if (sqlite3_exec(db, sync_sql[sync], NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA foreign_keys = OFF", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA journal_size_limit = " STORE_WAL_SIZE_LIMIT, NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, STORE_TUNING, NULL, NULL, NULL) != SQLITE_OK)
        goto db_fail;
    return 0;
db_fail:
    snprintf(err, errlen, "%s", sqlite3_errmsg(db));
    return -1;
}

static int store_prepare(struct store *st, char *err, size_t errlen)
{
    for (int i = 0; i < STMT_COUNT; i++) {
        if (sqlite3_prepare_v3(st->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "preparing '%s': %s", stmt_sql[i], sqlite3_errmsg(st->db));
            return -1;
        }
    }
    return 0;
}

int store_open(const char *path, enum store_sync sync, struct store **out, char *err, size_t errlen)
{
    char why[512] = "";
    *out = NULL;
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    if ((unsigned)sync >= sizeof sync_sql / sizeof sync_sql[0]) {
        snprintf(why, sizeof why, "invalid sync level %d", (int)sync);
        goto fail;
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &st->db, flags, NULL) != SQLITE_OK) {
        snprintf(why, sizeof why, "%s", st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    if (store_configure(st->db, sync, why, sizeof why) != 0 ||
        schema_migrate(st->db, why, sizeof why) != 0 || store_prepare(st, why, sizeof why) != 0)
        goto fail;
    *out = st;
    return 0;
fail:
    if (err && errlen)
        snprintf(err, errlen, "store %s: %s", path, why);
    store_close(st);
    return -1;
}

void store_close(struct store *st)
{
    if (!st)
        return;
    if (st->db && st->stmt[STMT_COMMIT])
        store_commit(st);
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    sqlite3_close_v2(st->db);
    free(st);
}

/* A failed COMMIT is followed by ROLLBACK, as SQLite recommends after I/O,
 * disk-full or out-of-memory errors: the next write starts a clean
 * transaction instead of growing one that cannot be committed. */
int store_commit(struct store *st)
{
    if (sqlite3_get_autocommit(st->db))
        return 0;
    if (stmt_run(st, STMT_COMMIT, "commit") == 0)
        return 0;
    if (!sqlite3_get_autocommit(st->db)) {
        log_error("store: rolling back the uncommitted changes");
        stmt_run(st, STMT_ROLLBACK, "rollback");
    }
    return -1;
}

bool store_pending(const struct store *st)
{
    return !sqlite3_get_autocommit(st->db);
}

/* ---- writes ------------------------------------------------------------ */

int store_session_put(struct store *st, const char *client_id, int64_t last_seen_ms)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_SESSION_PUT);
    bind_text(&b, client_id, -1);
    bind_i64(&b, last_seen_ms);
    return bind_run(&b, "session_put");
}

int store_session_del(struct store *st, const char *client_id)
{
    static const enum stmt_id cascade[] = {STMT_SESSION_DEL_SUBS, STMT_SESSION_DEL_OUT,
                                           STMT_SESSION_DEL_QOS2, STMT_SESSION_DEL};
    if (ensure_txn(st) != 0)
        return -1;
    for (size_t i = 0; i < sizeof cascade / sizeof cascade[0]; i++) {
        struct bind b = bind_start(st, cascade[i]);
        bind_text(&b, client_id, -1);
        if (bind_run(&b, "session_del") != 0)
            return -1;
    }
    return 0;
}

int store_sub_put(struct store *st, const char *client_id, const char *filter, uint8_t qos)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_SUB_PUT);
    bind_text(&b, client_id, -1);
    bind_text(&b, filter, -1);
    bind_i64(&b, qos);
    return bind_run(&b, "sub_put");
}

int store_sub_del(struct store *st, const char *client_id, const char *filter)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_SUB_DEL);
    bind_text(&b, client_id, -1);
    bind_text(&b, filter, -1);
    return bind_run(&b, "sub_del");
}

int store_out_put(struct store *st, const char *client_id, uint64_t seq, const struct message *m,
                  uint8_t qos, uint16_t packet_id, uint8_t state, bool retain)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_OUT_PUT);
    bind_text(&b, client_id, -1);
    bind_i64(&b, (sqlite3_int64)seq);
    bind_i64(&b, (sqlite3_int64)m->id);
    bind_text(&b, m->topic, m->topic_len);
    bind_blob(&b, m->payload, m->payload_len);
    bind_i64(&b, m->qos);
    bind_i64(&b, m->retain);
    bind_i64(&b, m->time_ms);
    bind_i64(&b, qos);
    bind_i64(&b, retain);
    bind_i64(&b, packet_id);
    bind_i64(&b, state);
    return bind_run(&b, "out_put");
}

int store_out_update(struct store *st, const char *client_id, uint64_t seq, uint16_t packet_id,
                     uint8_t state)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_OUT_UPDATE);
    bind_text(&b, client_id, -1);
    bind_i64(&b, (sqlite3_int64)seq);
    bind_i64(&b, packet_id);
    bind_i64(&b, state);
    return bind_run(&b, "out_update");
}

int store_out_del(struct store *st, const char *client_id, uint64_t seq)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_OUT_DEL);
    bind_text(&b, client_id, -1);
    bind_i64(&b, (sqlite3_int64)seq);
    return bind_run(&b, "out_del");
}

int store_qos2_put(struct store *st, const char *client_id, uint16_t packet_id)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_QOS2_PUT);
    bind_text(&b, client_id, -1);
    bind_i64(&b, packet_id);
    return bind_run(&b, "qos2_put");
}

int store_qos2_del(struct store *st, const char *client_id, uint16_t packet_id)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_QOS2_DEL);
    bind_text(&b, client_id, -1);
    bind_i64(&b, packet_id);
    return bind_run(&b, "qos2_del");
}

int store_retain_put(struct store *st, const struct message *m)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_RETAIN_PUT);
    bind_text(&b, m->topic, m->topic_len);
    bind_i64(&b, (sqlite3_int64)m->id);
    bind_blob(&b, m->payload, m->payload_len);
    bind_i64(&b, m->qos);
    bind_i64(&b, m->time_ms);
    return bind_run(&b, "retain_put");
}

int store_retain_del(struct store *st, const char *topic)
{
    if (ensure_txn(st) != 0)
        return -1;
    struct bind b = bind_start(st, STMT_RETAIN_DEL);
    bind_text(&b, topic, -1);
    return bind_run(&b, "retain_del");
}

/* ---- load -------------------------------------------------------------- */

/* Row readers return 0 to go on (row delivered or skipped as corrupt) and
 * -1 to stop (a callback asked to, or out of memory). */
typedef int (*load_row_fn)(const struct store_loader *ld, void *ctx, sqlite3_stmt *s);

/* client_id may be NULL (retained rows, or the id itself is corrupt). */
static int skip_row(const char *table, const char *client_id, const char *why)
{
    if (client_id)
        log_warn("store: skipping corrupt row of table %s (client '%s'): %s", table, client_id,
                 why);
    else
        log_warn("store: skipping corrupt row of table %s: %s", table, why);
    return 0;
}

/* An integer column within [min, max]; false for NULL, non-integers and
 * values out of range. */
static bool col_int(sqlite3_stmt *s, int col, int64_t min, int64_t max, int64_t *out)
{
    if (sqlite3_column_type(s, col) != SQLITE_INTEGER)
        return false;
    *out = sqlite3_column_int64(s, col);
    return *out >= min && *out <= max;
}

static const char *col_text(sqlite3_stmt *s, int col)
{
    if (sqlite3_column_type(s, col) == SQLITE_NULL)
        return NULL;
    return (const char *)sqlite3_column_text(s, col);
}

/* Builds the message of a row from columns 0-5 (topic, payload, qos,
 * retain, msg_id, time_ms). 0 with *out set, 1 for a corrupt row (logged),
 * -1 when out of memory. */
static int row_message(sqlite3_stmt *s, const char *table, const char *client_id,
                       struct message **out)
{
    int64_t qos, retain, id, time_ms;
    const char *why = NULL;
    const char *topic = col_text(s, 0);
    int topic_len = sqlite3_column_bytes(s, 0);
    /* A zero-length blob comes back as a NULL pointer with 0 bytes. */
    const void *payload = sqlite3_column_blob(s, 1);
    int payload_len = sqlite3_column_bytes(s, 1);
    /* [MQTT-4.7.3-1] non-empty, [MQTT-4.7.3-2] no U+0000, and the length
     * must fit the 16-bit length prefix. */
    if (!topic || topic_len < 1 || topic_len > UINT16_MAX || memchr(topic, '\0', topic_len))
        why = "invalid topic";
    else if (sqlite3_column_type(s, 1) == SQLITE_NULL)
        why = "NULL payload";
    else if (!col_int(s, 2, 0, 2, &qos) || !col_int(s, 3, 0, 1, &retain) ||
             !col_int(s, 4, INT64_MIN, INT64_MAX, &id) ||
             !col_int(s, 5, INT64_MIN, INT64_MAX, &time_ms))
        why = "invalid message qos, retain, id or time";
    if (why) {
        skip_row(table, client_id, why);
        return 1;
    }
    struct message *m = message_new(topic, (uint16_t)topic_len, payload, (uint32_t)payload_len,
                                    (uint8_t)qos, retain != 0);
    if (!m) {
        log_error("store: out of memory loading %s", table);
        return -1;
    }
    m->id = (uint64_t)id;
    m->time_ms = time_ms;
    *out = m;
    return 0;
}

static int load_session_row(const struct store_loader *ld, void *ctx, sqlite3_stmt *s)
{
    int64_t last_seen;
    const char *client_id = col_text(s, 0);
    if (!client_id || !col_int(s, 1, INT64_MIN, INT64_MAX, &last_seen))
        return skip_row("sessions", client_id, "NULL client id or last_seen");
    return ld->session(ctx, client_id, last_seen) ? -1 : 0;
}

static int load_sub_row(const struct store_loader *ld, void *ctx, sqlite3_stmt *s)
{
    int64_t qos;
    const char *client_id = col_text(s, 0), *filter = col_text(s, 1);
    if (!client_id || !filter || !col_int(s, 2, 0, 2, &qos))
        return skip_row("subs", client_id, "NULL client id or filter, or invalid qos");
    return ld->sub(ctx, client_id, filter, (uint8_t)qos) ? -1 : 0;
}

static int load_out_row(const struct store_loader *ld, void *ctx, sqlite3_stmt *s)
{
    int64_t seq, qos, retain, packet_id, state;
    const char *client_id = col_text(s, 6);
    if (!client_id || !col_int(s, 7, INT64_MIN, INT64_MAX, &seq) || !col_int(s, 8, 0, 2, &qos) ||
        !col_int(s, 9, 0, 1, &retain) || !col_int(s, 10, 0, UINT16_MAX, &packet_id) ||
        !col_int(s, 11, 0, UINT8_MAX, &state))
        return skip_row("out", client_id,
                        "invalid client id, seq, qos, retain, packet id or state");
    struct message *m = NULL;
    int rc = row_message(s, "out", client_id, &m);
    if (rc != 0)
        return rc > 0 ? 0 : -1;
    return ld->out(ctx, client_id, (uint64_t)seq, m, (uint8_t)qos, (uint16_t)packet_id,
                   (uint8_t)state, retain != 0)
               ? -1
               : 0;
}

static int load_qos2_row(const struct store_loader *ld, void *ctx, sqlite3_stmt *s)
{
    int64_t packet_id;
    const char *client_id = col_text(s, 0);
    /* [MQTT-2.3.1-1] packet ids are non-zero */
    if (!client_id || !col_int(s, 1, 1, UINT16_MAX, &packet_id))
        return skip_row("qos2", client_id, "NULL client id or invalid packet id");
    return ld->qos2(ctx, client_id, (uint16_t)packet_id) ? -1 : 0;
}

static int load_retain_row(const struct store_loader *ld, void *ctx, sqlite3_stmt *s)
{
    struct message *m = NULL;
    int rc = row_message(s, "retained", NULL, &m);
    if (rc != 0)
        return rc > 0 ? 0 : -1;
    return ld->retain(ctx, m) ? -1 : 0;
}

static int load_table(struct store *st, enum stmt_id id, load_row_fn row,
                      const struct store_loader *ld, void *ctx)
{
    sqlite3_stmt *s = st->stmt[id];
    int ret = 0, rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (row(ld, ctx, s) != 0) {
            ret = -1;
            break;
        }
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = store_fail(st, "load");
    sqlite3_reset(s);
    return ret;
}

/* Strings passed to the callbacks live until the callback returns. A
 * callback may write to the store (e.g. drop an expired message it was just
 * given); the write joins the grouping transaction like any other. */
int store_load(struct store *st, const struct store_loader *loader, void *ctx)
{
    const struct {
        bool wanted;
        enum stmt_id id;
        load_row_fn row;
    } phases[] = {
        {loader->session != NULL, STMT_LOAD_SESSIONS, load_session_row},
        {loader->sub != NULL, STMT_LOAD_SUBS, load_sub_row},
        {loader->out != NULL, STMT_LOAD_OUT, load_out_row},
        {loader->qos2 != NULL, STMT_LOAD_QOS2, load_qos2_row},
        {loader->retain != NULL, STMT_LOAD_RETAINED, load_retain_row},
    };
    for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++) {
        if (phases[i].wanted && load_table(st, phases[i].id, phases[i].row, loader, ctx) != 0)
            return -1;
    }
    return 0;
}
