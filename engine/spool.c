/* The export spool on SQLite (contract in spool.h).
 *
 * Rule: a record is in the spool from spool_put() until its sink
 * acknowledged it (spool_ack) or the overflow policy dropped it
 * (spool_drop_oldest); a committed record survives a crash. For example,
 * with records 1..5 of connector "k" committed:
 *   spool_ack("k", 3)             leaves 4, 5
 *   spool_drop_oldest("k", 1, &n) leaves 5, n = 1
 *   spool_load("k", 0, 10, ...)   hands over 5
 * and connector "j" is untouched by all three.
 *
 * Layout: one connection (WAL journal for files), every statement prepared
 * once at open and reused with SQLITE_STATIC bindings, so the per-record
 * cost is one B-tree insert or delete and no allocation of ours. The schema
 * version lives in PRAGMA user_version (migrations[] upgrades one version
 * per entry) and PRAGMA application_id marks the file as a spool, so that
 * pointing the spool at the broker's store file fails at open instead of
 * at the first write.
 *
 * Grouped writes: put, ack and drop_oldest open a transaction when none is
 * open (SQLite's autocommit flag is the truth about that, so a transaction
 * SQLite rolled back itself is not mistaken for an open one); spool_commit()
 * ends it once per loop iteration. Reads on the same connection see the
 * open transaction's rows.
 *
 * Keys: seqno is uint64_t in the API and INTEGER (int64) in SQLite; puts
 * above INT64_MAX are refused so that SQLite's order is the API's order.
 * msg_id and generation are stored as their int64 bit pattern and
 * round-trip exactly.
 *
 * Not thread-safe: one thread (the engine's loop) owns a spool. Functions
 * return 0 on success and -1 on failure, logged with the SQLite message. */
#include "spool.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

#define SPOOL_BUSY_TIMEOUT_MS 1000
/* After a burst, truncate the WAL back to this size at checkpoint. */
#define SPOOL_WAL_SIZE_LIMIT "67108864"
/* 'MQBS' in PRAGMA application_id; the same number is in migrations[0]. */
#define SPOOL_APPLICATION_ID 1297171027
#define SPOOL_SEQNO_MAX ((uint64_t)INT64_MAX)

/* migrations[v] upgrades a database at user_version v to v + 1; the last
 * statement of each sets the new version. Text columns are NULL where the
 * record's string is NULL; payload is never NULL (an empty one is a
 * zero-length blob). */
static const char *const migrations[] = {
    "CREATE TABLE IF NOT EXISTS spool("
    " connector TEXT NOT NULL, seqno INTEGER NOT NULL, generation INTEGER NOT NULL,"
    " rule TEXT, kind INTEGER NOT NULL, msg_id INTEGER NOT NULL, time_ms INTEGER NOT NULL,"
    " qos INTEGER NOT NULL, client_id TEXT, topic TEXT, payload BLOB NOT NULL,"
    " event_type TEXT, channel_id TEXT, client_ip TEXT,"
    " PRIMARY KEY(connector, seqno)) WITHOUT ROWID;"
    "PRAGMA application_id = 1297171027;"
    "PRAGMA user_version = 1;",
};
#define SPOOL_SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

enum stmt_id {
    STMT_BEGIN,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_PUT,
    STMT_ACK,
    STMT_DROP_OLDEST,
    STMT_DELETE_RANGE,
    STMT_LOAD,
    STMT_RANGE,
    STMT_COUNT
};

/* The load statement's columns, in select order. */
enum load_col {
    COL_SEQNO,
    COL_GENERATION,
    COL_RULE,
    COL_KIND,
    COL_MSG_ID,
    COL_TIME_MS,
    COL_QOS,
    COL_CLIENT_ID,
    COL_TOPIC,
    COL_PAYLOAD,
    COL_EVENT_TYPE,
    COL_CHANNEL_ID,
    COL_CLIENT_IP,
};

static const char *const stmt_sql[STMT_COUNT] = {
    /* IMMEDIATE: take the write lock now, so a transaction never has to be
     * upgraded (and never fails to be) at its first write. */
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    /* Plain INSERT: a seqno used twice is a bug upstream, and replacing the
     * row would lose a record that was never acknowledged. */
    [STMT_PUT] = "INSERT INTO spool(connector, seqno, generation, rule, kind, msg_id, time_ms,"
                 " qos, client_id, topic, payload, event_type, channel_id, client_ip)"
                 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    [STMT_ACK] = "DELETE FROM spool WHERE connector = ?1 AND seqno <= ?2",
    [STMT_DELETE_RANGE] = "DELETE FROM spool WHERE connector = ?1 AND seqno BETWEEN ?2 AND ?3",
    [STMT_DROP_OLDEST] = "DELETE FROM spool WHERE connector = ?1 AND seqno IN"
                         " (SELECT seqno FROM spool WHERE connector = ?1"
                         " ORDER BY seqno LIMIT ?2)",
    /* No LIMIT: spool_load stops stepping after max records handed over,
     * so a skipped (corrupt) row never shortens a page. The primary key
     * gives the order; nothing is sorted. */
    [STMT_LOAD] = "SELECT seqno, generation, rule, kind, msg_id, time_ms, qos, client_id, topic,"
                  " payload, event_type, channel_id, client_ip"
                  " FROM spool WHERE connector = ?1 AND seqno >= ?2 ORDER BY seqno",
    [STMT_RANGE] = "SELECT count(*), min(seqno), max(seqno) FROM spool WHERE connector = ?1",
};

static const char *const sync_sql[] = {
    [STORE_SYNC_OFF] = "PRAGMA synchronous = OFF",
    [STORE_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    [STORE_SYNC_FULL] = "PRAGMA synchronous = FULL",
};

struct spool {
    sqlite3 *db;
    sqlite3_stmt *stmt[STMT_COUNT];
};

/* ---- statement execution --------------------------------------------- */

static int spool_fail(struct spool *sp, const char *what)
{
    log_error("spool: %s: %s", what, sqlite3_errmsg(sp->db));
    return -1;
}

/* The int64 with the same bits, without implementation-defined conversion. */
static sqlite3_int64 bits_i64(uint64_t v)
{
    sqlite3_int64 out;
    memcpy(&out, &v, sizeof out);
    return out;
}

static uint64_t bits_u64(sqlite3_int64 v)
{
    uint64_t out;
    memcpy(&out, &v, sizeof out);
    return out;
}

/* Binds ?1..?n in call order; the first failure sticks and bind_run()
 * reports it. */
struct bind {
    struct spool *sp;
    sqlite3_stmt *s;
    int rc;
    int n;
};

static struct bind bind_start(struct spool *sp, enum stmt_id id)
{
    return (struct bind){.sp = sp, .s = sp->stmt[id], .rc = SQLITE_OK, .n = 0};
}

static void bind_i64(struct bind *b, sqlite3_int64 v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->s, ++b->n, v);
}

/* NULL binds SQL NULL. SQLITE_STATIC is safe: the statement is stepped,
 * reset and cleared before the caller's memory can go away. */
static void bind_text(struct bind *b, const char *v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_text(b->s, ++b->n, v, -1, SQLITE_STATIC);
}

/* An empty payload is a zero-length blob, never NULL. */
static void bind_blob(struct bind *b, const void *v, uint32_t len)
{
    if (b->rc != SQLITE_OK)
        return;
    if (len == 0)
        b->rc = sqlite3_bind_zeroblob(b->s, ++b->n, 0);
    else
        b->rc = sqlite3_bind_blob64(b->s, ++b->n, v, len, SQLITE_STATIC);
}

/* Resets the statement and drops bindings that point at caller memory. */
static void bind_end(struct bind *b)
{
    sqlite3_reset(b->s);
    sqlite3_clear_bindings(b->s);
}

/* Steps a write statement to completion and ends it. 0 or -1 (logged). */
static int bind_run(struct bind *b, const char *what)
{
    int ret = 0;
    if (b->rc != SQLITE_OK || sqlite3_step(b->s) != SQLITE_DONE)
        ret = spool_fail(b->sp, what);
    bind_end(b);
    return ret;
}

static int stmt_run(struct spool *sp, enum stmt_id id, const char *what)
{
    struct bind b = bind_start(sp, id);
    return bind_run(&b, what);
}

/* Opens the grouping transaction when none is open. */
static int spool_begin(struct spool *sp)
{
    if (!sqlite3_get_autocommit(sp->db))
        return 0;
    return stmt_run(sp, STMT_BEGIN, "begin");
}

/* ---- open / close ------------------------------------------------------ */

/* The integer a PRAGMA returns in its first row. */
static int pragma_int(sqlite3 *db, const char *sql, int *out)
{
    sqlite3_stmt *s = NULL;
    int ret = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(s) != SQLITE_ROW)
        goto out;
    *out = sqlite3_column_int(s, 0);
    ret = 0;
out:
    sqlite3_finalize(s);
    return ret;
}

/* Brings the schema to SPOOL_SCHEMA_VERSION in one transaction. A file
 * with tables but without the spool's application id is someone else's. */
static int schema_migrate(sqlite3 *db, char *err, size_t errlen)
{
    int version = 0, app_id = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
        pragma_int(db, "PRAGMA user_version", &version) != 0 ||
        pragma_int(db, "PRAGMA application_id", &app_id) != 0)
        goto db_fail;
    if (version != 0 && app_id != SPOOL_APPLICATION_ID) {
        snprintf(err, errlen, "not a spool file (application_id %d, user_version %d)", app_id,
                 version);
        goto fail;
    }
    if (version < 0 || version > SPOOL_SCHEMA_VERSION) {
        snprintf(err, errlen, "schema version %d is not supported (this build knows 0-%d)", version,
                 SPOOL_SCHEMA_VERSION);
        goto fail;
    }
    for (int v = version; v < SPOOL_SCHEMA_VERSION; v++) {
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

/* Connection settings. For a file, the journal mode statement is the first
 * read, so a file that is not a database fails here. */
static int spool_configure(sqlite3 *db, bool in_memory, enum store_sync sync, char *err,
                           size_t errlen)
{
    sqlite3_stmt *s = NULL;
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, SPOOL_BUSY_TIMEOUT_MS);
    if (!in_memory) {
        if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &s, NULL) != SQLITE_OK ||
            sqlite3_step(s) != SQLITE_ROW)
            goto db_fail;
        const char *mode = (const char *)sqlite3_column_text(s, 0);
        if (!mode || sqlite3_stricmp(mode, "wal") != 0) {
            snprintf(err, errlen, "cannot enable WAL journal (journal_mode is '%s')",
                     mode ? mode : "");
            goto fail;
        }
        sqlite3_finalize(s);
        s = NULL;
    }
    if (sqlite3_exec(db, sync_sql[sync], NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA journal_size_limit = " SPOOL_WAL_SIZE_LIMIT, NULL, NULL, NULL) !=
            SQLITE_OK)
        goto db_fail;
    return 0;
db_fail:
    snprintf(err, errlen, "%s", sqlite3_errmsg(db));
fail:
    sqlite3_finalize(s);
    return -1;
}

static int spool_prepare(struct spool *sp, char *err, size_t errlen)
{
    for (int i = 0; i < STMT_COUNT; i++) {
        if (sqlite3_prepare_v3(sp->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &sp->stmt[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "preparing '%s': %s", stmt_sql[i], sqlite3_errmsg(sp->db));
            return -1;
        }
    }
    return 0;
}

int spool_open(const char *path, enum store_sync sync, struct spool **out, char *err, size_t errlen)
{
    char why[512] = "";
    const char *name = path ? path : ":memory:";
    *out = NULL;
    struct spool *sp = calloc(1, sizeof *sp);
    if (!sp) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    if ((unsigned)sync >= sizeof sync_sql / sizeof sync_sql[0]) {
        snprintf(why, sizeof why, "invalid sync level %d", (int)sync);
        goto fail;
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(name, &sp->db, flags, NULL) != SQLITE_OK) {
        snprintf(why, sizeof why, "%s", sp->db ? sqlite3_errmsg(sp->db) : "out of memory");
        goto fail;
    }
    if (spool_configure(sp->db, path == NULL, sync, why, sizeof why) != 0 ||
        schema_migrate(sp->db, why, sizeof why) != 0 || spool_prepare(sp, why, sizeof why) != 0)
        goto fail;
    *out = sp;
    return 0;
fail:
    if (err && errlen)
        snprintf(err, errlen, "spool %s: %s", name, why);
    spool_close(sp);
    return -1;
}

void spool_close(struct spool *sp)
{
    if (!sp)
        return;
    if (sp->db && sp->stmt[STMT_COMMIT])
        spool_commit(sp);
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(sp->stmt[i]);
    sqlite3_close_v2(sp->db);
    free(sp);
}

/* A failed COMMIT is followed by ROLLBACK, as SQLite recommends after I/O,
 * disk-full or out-of-memory errors: the next write starts a clean
 * transaction instead of growing one that cannot be committed. The caller
 * must then treat the records of this iteration as not spooled. */
int spool_commit(struct spool *sp)
{
    if (sqlite3_get_autocommit(sp->db))
        return 0;
    if (stmt_run(sp, STMT_COMMIT, "commit") == 0)
        return 0;
    if (!sqlite3_get_autocommit(sp->db)) {
        log_error("spool: rolling back the uncommitted changes");
        stmt_run(sp, STMT_ROLLBACK, "rollback");
    }
    return -1;
}

/* ---- writes ------------------------------------------------------------ */

/* What the load side will accept back; checked before anything is written. */
static const char *record_invalid(const struct export_record *rec)
{
    if (rec->seqno > SPOOL_SEQNO_MAX)
        return "seqno above 2^63-1";
    if (rec->kind != RECORD_MESSAGE && rec->kind != RECORD_STATUS)
        return "invalid kind";
    if (rec->qos > 2)
        return "invalid qos";
    if (!rec->payload && rec->payload_len > 0)
        return "NULL payload with a length";
    return NULL;
}

int spool_put(struct spool *sp, const char *connector, const struct export_record *rec,
              const char *rule_name, uint64_t generation)
{
    const char *why = record_invalid(rec);
    if (why) {
        log_error("spool: put: connector '%s' seqno %llu: %s", connector,
                  (unsigned long long)rec->seqno, why);
        return -1;
    }
    if (spool_begin(sp) != 0)
        return -1;
    struct bind b = bind_start(sp, STMT_PUT);
    bind_text(&b, connector);
    bind_i64(&b, (sqlite3_int64)rec->seqno);
    bind_i64(&b, bits_i64(generation));
    bind_text(&b, rule_name);
    bind_i64(&b, rec->kind);
    bind_i64(&b, bits_i64(rec->msg_id));
    bind_i64(&b, rec->time_ms);
    bind_i64(&b, rec->qos);
    bind_text(&b, rec->client_id);
    bind_text(&b, rec->topic);
    bind_blob(&b, rec->payload, rec->payload_len);
    bind_text(&b, rec->event_type);
    bind_text(&b, rec->channel_id);
    bind_text(&b, rec->client_ip);
    return bind_run(&b, "put");
}

/* upto above INT64_MAX covers every storable seqno. */
int spool_ack(struct spool *sp, const char *connector, uint64_t upto)
{
    if (spool_begin(sp) != 0)
        return -1;
    struct bind b = bind_start(sp, STMT_ACK);
    bind_text(&b, connector);
    bind_i64(&b, (sqlite3_int64)(upto > SPOOL_SEQNO_MAX ? SPOOL_SEQNO_MAX : upto));
    return bind_run(&b, "ack");
}

int spool_delete_range(struct spool *sp, const char *connector, uint64_t first, uint64_t last)
{
    if (first > last || first > SPOOL_SEQNO_MAX)
        return 0;
    if (spool_begin(sp) != 0)
        return -1;
    struct bind b = bind_start(sp, STMT_DELETE_RANGE);
    bind_text(&b, connector);
    bind_i64(&b, (sqlite3_int64)first);
    bind_i64(&b, (sqlite3_int64)(last > SPOOL_SEQNO_MAX ? SPOOL_SEQNO_MAX : last));
    return bind_run(&b, "delete_range");
}

/* n is clamped to INT64_MAX: a negative LIMIT would mean "no limit" to
 * SQLite, which is what a huge n means anyway. */
int spool_drop_oldest(struct spool *sp, const char *connector, uint64_t n, uint64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (n == 0)
        return 0;
    if (spool_begin(sp) != 0)
        return -1;
    struct bind b = bind_start(sp, STMT_DROP_OLDEST);
    bind_text(&b, connector);
    bind_i64(&b, (sqlite3_int64)(n > SPOOL_SEQNO_MAX ? SPOOL_SEQNO_MAX : n));
    if (bind_run(&b, "drop_oldest") != 0)
        return -1;
    if (deleted)
        *deleted = (uint64_t)sqlite3_changes64(sp->db);
    return 0;
}

/* ---- reads ------------------------------------------------------------- */

static const char *col_text(sqlite3_stmt *s, int col)
{
    if (sqlite3_column_type(s, col) == SQLITE_NULL)
        return NULL;
    return (const char *)sqlite3_column_text(s, col);
}

static bool col_is_int(sqlite3_stmt *s, int col)
{
    return sqlite3_column_type(s, col) == SQLITE_INTEGER;
}

/* Builds the record of the current row, or NULL for a row no spool_put can
 * have written (logged, skipped) or when out of memory (*oom set). */
static struct export_record *row_record(sqlite3_stmt *s, const char *connector, bool *oom)
{
    /* Types first: sqlite3_column_type() is undefined after a conversion. */
    static const enum load_col int_cols[] = {COL_SEQNO,  COL_GENERATION, COL_KIND,
                                             COL_MSG_ID, COL_TIME_MS,    COL_QOS};
    bool ints = true;
    for (size_t i = 0; i < sizeof int_cols / sizeof int_cols[0]; i++)
        ints = ints && col_is_int(s, int_cols[i]);
    sqlite3_int64 seqno = sqlite3_column_int64(s, COL_SEQNO);
    sqlite3_int64 kind = sqlite3_column_int64(s, COL_KIND);
    sqlite3_int64 qos = sqlite3_column_int64(s, COL_QOS);
    if (!ints || seqno < 0 || (kind != RECORD_MESSAGE && kind != RECORD_STATUS) || qos < 0 ||
        qos > 2) {
        log_warn("spool: skipping corrupt row of connector '%s' (seqno %lld)", connector,
                 (long long)seqno);
        return NULL;
    }
    /* Blob first, then its length; a zero-length blob comes back as NULL. */
    const uint8_t *payload = sqlite3_column_blob(s, COL_PAYLOAD);
    int payload_len = sqlite3_column_bytes(s, COL_PAYLOAD);
    struct export_record *rec = export_record_new(
        (enum record_kind)kind, bits_u64(sqlite3_column_int64(s, COL_MSG_ID)),
        sqlite3_column_int64(s, COL_TIME_MS), (uint8_t)qos, col_text(s, COL_CLIENT_ID),
        col_text(s, COL_TOPIC), payload, (uint32_t)payload_len, col_text(s, COL_EVENT_TYPE),
        col_text(s, COL_CHANNEL_ID), col_text(s, COL_CLIENT_IP));
    if (!rec) {
        *oom = true;
        return NULL;
    }
    rec->seqno = (uint64_t)seqno;
    return rec;
}

/* fn may write to the spool (ack, put, drop_oldest: they join the open
 * transaction); whether this load then sees those rows is unspecified.
 * fn must not call spool_load: the statement is in use, and that is
 * refused. rule_name is valid only during fn's call. */
int spool_load(struct spool *sp, const char *connector, uint64_t from, unsigned max,
               spool_load_fn fn, void *ctx, unsigned *loaded)
{
    struct bind b = bind_start(sp, STMT_LOAD);
    unsigned n = 0;
    int ret = 0, rc = SQLITE_DONE;
    if (sqlite3_stmt_busy(b.s)) {
        /* Resetting it here would break the load that is running. */
        log_error("spool: load: called from inside a load callback");
        ret = -1;
        goto done;
    }
    /* Nothing above INT64_MAX is stored (see record_invalid). */
    if (max == 0 || from > SPOOL_SEQNO_MAX)
        goto done;
    bind_text(&b, connector);
    bind_i64(&b, (sqlite3_int64)from);
    if (b.rc != SQLITE_OK) {
        ret = spool_fail(sp, "load");
        goto out;
    }
    while (n < max && (rc = sqlite3_step(b.s)) == SQLITE_ROW) {
        bool oom = false;
        struct export_record *rec = row_record(b.s, connector, &oom);
        if (oom) {
            log_error("spool: load: out of memory");
            ret = -1;
            goto out;
        }
        if (!rec)
            continue;
        n++;
        if (fn(ctx, rec, col_text(b.s, COL_RULE),
               bits_u64(sqlite3_column_int64(b.s, COL_GENERATION))) != 0) {
            ret = -1;
            goto out;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        ret = spool_fail(sp, "load");
out:
    bind_end(&b);
done:
    if (loaded)
        *loaded = n;
    return ret;
}

int spool_range(struct spool *sp, const char *connector, uint64_t *count, uint64_t *first,
                uint64_t *last)
{
    struct bind b = bind_start(sp, STMT_RANGE);
    int ret = 0;
    bind_text(&b, connector);
    if (b.rc != SQLITE_OK || sqlite3_step(b.s) != SQLITE_ROW) {
        ret = spool_fail(sp, "range");
        goto out;
    }
    /* min() and max() of no rows are NULL, read as 0. */
    if (count)
        *count = (uint64_t)sqlite3_column_int64(b.s, 0);
    if (first)
        *first = (uint64_t)sqlite3_column_int64(b.s, 1);
    if (last)
        *last = (uint64_t)sqlite3_column_int64(b.s, 2);
out:
    bind_end(&b);
    return ret;
}

/* ---- records ----------------------------------------------------------- */

/* *acc += n, false on overflow (a 4 GiB payload on a 32-bit size_t). */
static bool size_add(size_t *acc, size_t n)
{
    if (n > SIZE_MAX - *acc)
        return false;
    *acc += n;
    return true;
}

/* Layout: the struct, the payload, then each non-NULL string with its NUL.
 * payload is never NULL, even when empty, so connectors can memcpy it. */
struct export_record *export_record_new(enum record_kind kind, uint64_t msg_id, int64_t time_ms,
                                        uint8_t qos, const char *client_id, const char *topic,
                                        const uint8_t *payload, uint32_t payload_len,
                                        const char *event_type, const char *channel_id,
                                        const char *client_ip)
{
    const char *const src[] = {client_id, topic, event_type, channel_id, client_ip};
    enum { NSTR = sizeof src / sizeof src[0] };
    size_t len[NSTR];
    size_t size = sizeof(struct export_record);
    if (!size_add(&size, payload_len))
        return NULL;
    for (size_t i = 0; i < NSTR; i++) {
        len[i] = src[i] ? strlen(src[i]) + 1 : 0;
        if (!size_add(&size, len[i]))
            return NULL;
    }
    struct export_record *rec = malloc(size);
    if (!rec)
        return NULL;
    uint8_t *p = (uint8_t *)(rec + 1);
    *rec = (struct export_record){.kind = kind,
                                  .msg_id = msg_id,
                                  .time_ms = time_ms,
                                  .qos = qos,
                                  .payload = p,
                                  .payload_len = payload_len};
    if (payload_len > 0)
        memcpy(p, payload, payload_len);
    p += payload_len;
    const char **const dst[NSTR] = {&rec->client_id, &rec->topic, &rec->event_type,
                                    &rec->channel_id, &rec->client_ip};
    for (size_t i = 0; i < NSTR; i++) {
        if (!src[i])
            continue;
        memcpy(p, src[i], len[i]);
        *dst[i] = (const char *)p;
        p += len[i];
    }
    return rec;
}

void export_record_free(struct export_record *rec)
{
    free(rec);
}
