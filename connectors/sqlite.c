/* SQLite sink: the embedded default export target (quick start). One
 * database file in WAL mode, so readers see committed rows while the sink
 * writes; each export() call is one transaction.
 *
 * Outbound rule: one row per message. Default schema
 *   msg_id TEXT PRIMARY KEY, topic TEXT, client_id TEXT, qos INTEGER,
 *   payload BLOB, time_ms INTEGER
 * or the rule's `columns` (column -> template; exactly "${payload}" is bound
 * as a BLOB, every other template as TEXT; msg_id = ${msgid} is added
 * unless mapped). A repeated export is harmless:
 *   INSERT ... ON CONFLICT (msg_id) DO NOTHING.
 * Consecutive messages of one rule go in groups: one statement inserts
 * 2^k rows (VALUES (...), (...), ...; up to 128 rows, prepared once per
 * size), the values bound in place (SQLITE_STATIC: the records outlive the
 * statement's step). A group SQLite refuses for good is redone row by row,
 * so the refused record is found and the rows before it are kept.
 *
 * Status rule: the state table keeps one row per client, changed only by an
 * event with a greater seq that is a connect or belongs to the stored
 * channel, so late and repeated events never overwrite newer state:
 *   seq 10 connect    channel A  -> online, A
 *   seq 20 connect    channel B  -> online, B   (takeover)
 *   seq 21 tcpclean   channel A  -> ignored: A is no longer the client's
 *   seq 15 disconnect channel B  -> ignored: older than 20
 *   seq 30 disconnect channel B  -> offline, B
 * events_table appends one row per event: ON CONFLICT (seq) DO NOTHING.
 *
 * Errors: a row SQLite refuses for good (constraint, datatype of a STRICT
 * table, too big) -> CONNECTOR_REJECT at its index, the rows before it
 * committed; anything else (busy, I/O, disk full, missing table)
 * -> CONNECTOR_RETRY with nothing committed. */
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../rules/template.h"
#include "connector.h"

#define SQ_MAX_COLUMNS 64
#define SQ_CACHE_MAX 64 /* prepared targets per connection */
/* Multi-row inserts: statements of 1, 2, 4, ... SQ_GROUP_MAX rows. With
 * the default 6 columns, 128 rows per statement measured 0.55 us of CPU
 * per row against 1.1 us for one row per statement; 8 rows 0.65 us, 256
 * and 512 rows no better than 128 (docs/CONNECTORS.md, "Throughput"). */
#define SQ_GROUP_LEVELS 8
#define SQ_GROUP_MAX (1u << (SQ_GROUP_LEVELS - 1))
/* A group also ends once its payloads reach this many bytes, which bounds
 * the rendered template values held at once. */
#define SQ_GROUP_BYTES (1u << 20)

/* ---- Settings and rule options, as data --------------------------------- */

static const struct kv_key sqlite_settings[] = {
    {"path", KV_SCALAR, KV_REQUIRED, "export database file; its directory is created if missing"},
    {"sync", KV_SCALAR, 0, "off | normal | full: PRAGMA synchronous (default normal)"},
    {"busy_timeout_ms", KV_SCALAR, 0, "wait for a lock held by another process (default 5000)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key sqlite_outbound_keys[] = {
    {"table", KV_SCALAR, KV_REQUIRED, "table of the messages"},
    {"create_table", KV_SCALAR, 0, "create the table if missing (default true)"},
    {"columns", KV_MAP, 0, "column -> template; default: the fixed message schema"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key sqlite_status_keys[] = {
    {"table", KV_SCALAR, KV_REQUIRED, "state table: one row per client"},
    {"events_table", KV_SCALAR, 0, "optional: one row per event"},
    {"create_table", KV_SCALAR, 0, "create the tables if missing (default true)"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* PRAGMA synchronous levels: the statements are fixed text. */
static const struct {
    const char *name;
    const char *pragma;
} sq_sync_levels[] = {
    {"off", "PRAGMA synchronous = OFF"},
    {"normal", "PRAGMA synchronous = NORMAL"},
    {"full", "PRAGMA synchronous = FULL"},
};
enum { SQ_SYNC_NORMAL = 1 };

/* Where a column's value comes from. */
enum sq_source {
    SRC_MSG_ID,    /* 16 hex digits, TEXT */
    SRC_TOPIC,     /* TEXT */
    SRC_CLIENT_ID, /* TEXT */
    SRC_QOS,       /* INTEGER */
    SRC_PAYLOAD,   /* BLOB */
    SRC_TIME_MS,   /* INTEGER */
    SRC_TEMPLATE,  /* rendered; BLOB when the template is "${payload}", else TEXT */
};

struct sq_column {
    char *name;
    enum sq_source src;
    struct template *tpl; /* SRC_TEMPLATE only */
    bool blob;
};

static const struct {
    const char *name;
    const char *decl;
    enum sq_source src;
} sq_default_columns[] = {
    {"msg_id", "TEXT PRIMARY KEY", SRC_MSG_ID}, {"topic", "TEXT", SRC_TOPIC},
    {"client_id", "TEXT", SRC_CLIENT_ID},       {"qos", "INTEGER", SRC_QOS},
    {"payload", "BLOB", SRC_PAYLOAD},           {"time_ms", "INTEGER", SRC_TIME_MS},
};

/* A compiled rule target. Read-only after compile. */
struct sq_target {
    uint64_t id; /* unique per connector: key of the statement cache */
    enum rule_type type;
    bool create_table;
    struct sq_column *cols; /* outbound */
    unsigned ncols;
    char *create_sql;        /* NULL when create_table is false */
    char *create_events_sql; /* status with events_table and create_table */
    char *write_sql;         /* status: state upsert */
    char *events_sql;        /* status with events_table, else NULL */
    /* outbound: "INSERT INTO t (cols) VALUES " and " ON CONFLICT ...";
     * the statement for n rows puts n "(?, ...)" in between. */
    char *insert_head;
    char *insert_tail;
    bool has_templates; /* a column is SRC_TEMPLATE */
};

/* A target's statements on the open connection. */
struct sq_prepared {
    uint64_t target_id;
    sqlite3_stmt *write;                 /* status: state upsert */
    sqlite3_stmt *events;                /* status: events insert */
    sqlite3_stmt *rows[SQ_GROUP_LEVELS]; /* outbound: rows[k] inserts 2^k rows;
                                            prepared on first use */
    unsigned levels;                     /* usable sizes: 2^k rows * ncols <= SQLite's variables */
};

/* Where a rendered template value of a group sits in connector.value. */
struct sq_span {
    size_t off, len;
};

struct connector {
    char *name;
    char *path;
    int sync; /* index into sq_sync_levels */
    unsigned busy_timeout_ms;
    uint64_t last_target_id; /* main loop only (compile) */
    /* Connector thread only. */
    sqlite3 *db;
    struct sq_prepared cache[SQ_CACHE_MAX];
    unsigned ncache;
    struct buf value;           /* the rendered template values of a group */
    struct buf sql;             /* text of a multi-row statement being prepared */
    char hex[SQ_GROUP_MAX][16]; /* the group's msg ids, bound in place */
    struct sq_span spans[SQ_GROUP_MAX * (SQ_MAX_COLUMNS + 1)];
};

/* ---- Small helpers ------------------------------------------------------ */

/* [A-Za-z_][A-Za-z0-9_]{0,62}: the only names that reach SQL text. */
static bool sq_identifier_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return false;
    }
    return true;
}

/* Format the reason into err; -1 for `return sq_fail(...)`. */
#if defined(__GNUC__)
#define SQ_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define SQ_PRINTF(fmt, args)
#endif

static int sq_fail(char *err, size_t errlen, const char *fmt, ...) SQ_PRINTF(3, 4);

static int sq_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* SQL text pieces: fixed text and identifiers quoted by sqlite3_mprintf's
 * %w (validated before, so quoting is belt and braces). */
static int sq_sql(struct buf *b, const char *text)
{
    return buf_append(b, text, strlen(text));
}

static int sq_sql_ident(struct buf *b, const char *name)
{
    char *q = sqlite3_mprintf("\"%w\"", name);
    if (!q)
        return -1;
    int rc = sq_sql(b, q);
    sqlite3_free(q);
    return rc;
}

/* The NUL-terminated text of b, handed over to the caller (b is emptied). */
static char *sq_sql_take(struct buf *b)
{
    if (buf_append_u8(b, 0) < 0) {
        buf_free(b);
        return NULL;
    }
    char *s = (char *)b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

/* ---- Settings ------------------------------------------------------------ */

static void sqlite_destroy(struct connector *c);
static void sqlite_close(struct connector *c);

/* sync and busy_timeout_ms, with their defaults. */
static int sq_settings_read(struct connector *c, const struct kvmap *settings, const char *where,
                            char *err, size_t errlen)
{
    const struct kv *item;
    uint64_t ms;
    c->sync = SQ_SYNC_NORMAL;
    if ((item = kv_find(settings, "sync")) != NULL) {
        c->sync = -1;
        for (int i = 0; i < (int)(sizeof sq_sync_levels / sizeof sq_sync_levels[0]); i++)
            if (!strcmp(item->value, sq_sync_levels[i].name))
                c->sync = i;
        if (c->sync < 0)
            return kv_error(err, errlen, settings, item,
                            "%s: sync: expected off, normal or full, got '%s'", where, item->value);
    }
    c->busy_timeout_ms = 5000;
    if ((item = kv_find(settings, "busy_timeout_ms")) != NULL) {
        if (kv_uint(item, 0, 3600000, &ms) < 0)
            return kv_error(err, errlen, settings, item,
                            "%s: busy_timeout_ms: expected an integer 0..3600000, got '%s'", where,
                            item->value);
        c->busy_timeout_ms = (unsigned)ms;
    }
    return 0;
}

static int sqlite_create(const char *name, const struct kvmap *settings, struct connector **out,
                         char *err, size_t errlen)
{
    char where[96];
    snprintf(where, sizeof where, "connector '%s'", name);
    if (kv_check(settings, sqlite_settings, where, err, errlen) < 0)
        return -1;
    struct connector *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(name)))
        goto oom;
    const struct kv *path = kv_find(settings, "path");
    if (!path->value[0]) {
        kv_error(err, errlen, settings, path, "%s: path: must not be empty", where);
        goto fail;
    }
    if (!(c->path = strdup(path->value)))
        goto oom;
    if (sq_settings_read(c, settings, where, err, errlen) < 0)
        goto fail;
    *out = c;
    return 0;
oom:
    snprintf(err, errlen, "%s: out of memory", where);
fail:
    sqlite_destroy(c);
    return -1;
}

static void sqlite_destroy(struct connector *c)
{
    if (!c)
        return;
    sqlite_close(c);
    buf_free(&c->value);
    buf_free(&c->sql);
    free(c->path);
    free(c->name);
    free(c);
}

/* ---- Compiling a rule's target ------------------------------------------ */

static void sq_target_free(struct sq_target *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->ncols; i++) {
        free(t->cols[i].name);
        template_free(t->cols[i].tpl);
    }
    free(t->cols);
    free(t->create_sql);
    free(t->create_events_sql);
    free(t->write_sql);
    free(t->events_sql);
    free(t->insert_head);
    free(t->insert_tail);
    free(t);
}

/* The value of an identifier option (table, events_table), checked. */
static int sq_option_ident(const struct kvmap *opts, const char *key, const char *where,
                           const char **out, char *err, size_t errlen)
{
    const struct kv *item = kv_find(opts, key);
    *out = NULL;
    if (!item)
        return 0;
    if (!sq_identifier_ok(item->value))
        return kv_error(err, errlen, opts, item,
                        "%s: %s: '%s' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})", where,
                        key, item->value);
    *out = item->value;
    return 0;
}

static int sq_column_add(struct sq_target *t, const char *name, enum sq_source src)
{
    struct sq_column *col = &t->cols[t->ncols];
    memset(col, 0, sizeof *col);
    if (!(col->name = strdup(name)))
        return -1;
    col->src = src;
    t->ncols++;
    return 0;
}

/* `columns`: column -> template, compiled; msg_id added unless mapped. */
static int sq_columns_compile(struct sq_target *t, const struct kv *columns, const char *where,
                              char *err, size_t errlen)
{
    const struct kvmap *m = columns->map;
    bool has_msg_id = false;
    char cwhere[128];
    snprintf(cwhere, sizeof cwhere, "%s: columns", where);
    if (m->count == 0 || m->count > SQ_MAX_COLUMNS)
        return kv_error(err, errlen, NULL, columns, "%s: columns: expected 1..%d columns", where,
                        SQ_MAX_COLUMNS);
    if (!(t->cols = calloc(m->count + 1, sizeof *t->cols)))
        return sq_fail(err, errlen, "%s: out of memory", where);
    for (unsigned i = 0; i < m->count; i++) {
        const struct kv *item = &m->items[i];
        if (!sq_identifier_ok(item->key))
            return kv_error(err, errlen, m, item,
                            "%s: columns: '%s' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})",
                            where, item->key);
        for (unsigned j = 0; j < i; j++)
            if (!strcasecmp(m->items[j].key, item->key))
                return kv_error(err, errlen, m, item, "%s: columns: '%s' given twice", where,
                                item->key);
        if (sq_column_add(t, item->key, SRC_TEMPLATE) < 0)
            return sq_fail(err, errlen, "%s: out of memory", where);
        struct sq_column *col = &t->cols[t->ncols - 1];
        if (template_compile_kv(item, cwhere, &col->tpl, err, errlen) < 0)
            return -1;
        col->blob = !strcmp(item->value, "${payload}");
        if (col->blob)
            col->src = SRC_PAYLOAD; /* the same bytes, bound without a copy */
        has_msg_id |= !strcasecmp(item->key, "msg_id");
    }
    if (!has_msg_id && sq_column_add(t, "msg_id", SRC_MSG_ID) < 0)
        return sq_fail(err, errlen, "%s: out of memory", where);
    return 0;
}

static int sq_default_columns_add(struct sq_target *t)
{
    size_t n = sizeof sq_default_columns / sizeof sq_default_columns[0];
    if (!(t->cols = calloc(n, sizeof *t->cols)))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (sq_column_add(t, sq_default_columns[i].name, sq_default_columns[i].src) < 0)
            return -1;
    return 0;
}

/* CREATE TABLE and INSERT ... ON CONFLICT (msg_id) DO NOTHING. */
static int sq_outbound_sql(struct sq_target *t, const char *table, bool defaults)
{
    struct buf b = {0};
    int rc =
        sq_sql(&b, "CREATE TABLE IF NOT EXISTS ") || sq_sql_ident(&b, table) || sq_sql(&b, " (");
    for (unsigned i = 0; i < t->ncols; i++) {
        const struct sq_column *col = &t->cols[i];
        const char *decl = defaults                           ? sq_default_columns[i].decl
                           : !strcasecmp(col->name, "msg_id") ? "TEXT PRIMARY KEY"
                           : col->blob                        ? "BLOB"
                                                              : "TEXT";
        rc |= sq_sql(&b, i ? ", " : "") || sq_sql_ident(&b, col->name) || sq_sql(&b, " ") ||
              sq_sql(&b, decl);
    }
    rc |= sq_sql(&b, ")");
    if (rc || !(t->create_sql = sq_sql_take(&b)))
        goto fail;
    rc = sq_sql(&b, "INSERT INTO ") || sq_sql_ident(&b, table) || sq_sql(&b, " (");
    for (unsigned i = 0; i < t->ncols; i++)
        rc |= sq_sql(&b, i ? ", " : "") || sq_sql_ident(&b, t->cols[i].name);
    rc |= sq_sql(&b, ") VALUES ");
    if (rc || !(t->insert_head = sq_sql_take(&b)))
        goto fail;
    if (!(t->insert_tail = strdup(" ON CONFLICT (msg_id) DO NOTHING")))
        goto fail;
    for (unsigned i = 0; i < t->ncols; i++)
        t->has_templates |= t->cols[i].src == SRC_TEMPLATE;
    return 0;
fail:
    buf_free(&b);
    return -1;
}

/* The state upsert with the status-state rule, and the events insert. */
static int sq_status_sql(struct sq_target *t, const char *table, const char *events)
{
    struct buf b = {0};
    int rc = sq_sql(&b, "CREATE TABLE IF NOT EXISTS ") || sq_sql_ident(&b, table) ||
             sq_sql(&b, " (client_id TEXT PRIMARY KEY, online INTEGER NOT NULL, channel_id TEXT, "
                        "client_ip TEXT, since INTEGER NOT NULL, seq INTEGER NOT NULL, "
                        "event_type TEXT NOT NULL)");
    if (rc || !(t->create_sql = sq_sql_take(&b)))
        goto fail;
    rc = sq_sql(&b, "INSERT INTO ") || sq_sql_ident(&b, table) ||
         sq_sql(&b, " AS cur (client_id, online, channel_id, client_ip, since, seq, event_type) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
                    "online = excluded.online, channel_id = excluded.channel_id, "
                    "client_ip = excluded.client_ip, since = excluded.since, seq = excluded.seq, "
                    "event_type = excluded.event_type "
                    "WHERE excluded.seq > cur.seq AND (excluded.event_type = 'connect' "
                    "OR excluded.channel_id IS cur.channel_id)");
    if (rc || !(t->write_sql = sq_sql_take(&b)))
        goto fail;
    if (!events)
        return 0;
    rc = sq_sql(&b, "CREATE TABLE IF NOT EXISTS ") || sq_sql_ident(&b, events) ||
         sq_sql(&b, " (seq INTEGER PRIMARY KEY, client_id TEXT NOT NULL, event_type TEXT NOT NULL, "
                    "channel_id TEXT, client_ip TEXT, time_ms INTEGER NOT NULL, body TEXT)");
    if (rc || !(t->create_events_sql = sq_sql_take(&b)))
        goto fail;
    rc = sq_sql(&b, "INSERT INTO ") || sq_sql_ident(&b, events) ||
         sq_sql(&b, " (seq, client_id, event_type, channel_id, client_ip, time_ms, body) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING");
    if (rc || !(t->events_sql = sq_sql_take(&b)))
        goto fail;
    return 0;
fail:
    buf_free(&b);
    return -1;
}

static int sqlite_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                          size_t errlen)
{
    char where[96];
    const struct kvmap *opts = r->options;
    const char *table, *events = NULL;
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (r->type != RULE_OUTBOUND && r->type != RULE_STATUS)
        return kv_error(err, errlen, opts, NULL,
                        "%s: the sqlite connector takes outbound and status rules only", where);
    if (kv_check(opts, r->type == RULE_OUTBOUND ? sqlite_outbound_keys : sqlite_status_keys, where,
                 err, errlen) < 0)
        return -1;
    struct sq_target *t = calloc(1, sizeof *t);
    if (!t)
        return sq_fail(err, errlen, "%s: out of memory", where);
    t->type = r->type;
    t->create_table = true;
    const struct kv *item = kv_find(opts, "create_table");
    if (item && kv_bool(item, &t->create_table) < 0) {
        kv_error(err, errlen, opts, item, "%s: create_table: expected true or false, got '%s'",
                 where, item->value);
        goto fail;
    }
    if (sq_option_ident(opts, "table", where, &table, err, errlen) < 0 ||
        sq_option_ident(opts, "events_table", where, &events, err, errlen) < 0)
        goto fail;
    if (r->type == RULE_OUTBOUND) {
        const struct kv *columns = kv_find(opts, "columns");
        if (columns && sq_columns_compile(t, columns, where, err, errlen) < 0)
            goto fail;
        if (!columns && sq_default_columns_add(t) < 0)
            goto oom;
        if (sq_outbound_sql(t, table, !columns) < 0)
            goto oom;
    } else if (sq_status_sql(t, table, events) < 0) {
        goto oom;
    }
    if (!t->create_table) {
        free(t->create_sql);
        free(t->create_events_sql);
        t->create_sql = t->create_events_sql = NULL;
    }
    t->id = ++c->last_target_id;
    *compiled = t;
    return 0;
oom:
    sq_fail(err, errlen, "%s: out of memory", where);
fail:
    sq_target_free(t);
    return -1;
}

static void sqlite_release(struct connector *c, void *compiled)
{
    sq_target_free(compiled);
}

/* ---- Connection ---------------------------------------------------------- */

/* mkdir -p of the directory part of path. */
static int sq_mkdir_parent(const char *path, char *err, size_t errlen)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return 0;
    size_t len = (size_t)(slash - path);
    if (len >= sizeof dir)
        return sq_fail(err, errlen, "%s: path too long", path);
    memcpy(dir, path, len);
    dir[len] = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return sq_fail(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
        *p = saved;
        if (!saved)
            return 0;
    }
}

/* One-row PRAGMA read back as text ("" when none). */
static void sq_pragma_read(sqlite3 *db, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_text(st, 0))
        snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static void sq_cache_clear(struct connector *c)
{
    for (unsigned i = 0; i < c->ncache; i++) {
        sqlite3_finalize(c->cache[i].write);
        sqlite3_finalize(c->cache[i].events);
        for (unsigned k = 0; k < SQ_GROUP_LEVELS; k++)
            sqlite3_finalize(c->cache[i].rows[k]);
    }
    c->ncache = 0;
}

static void sqlite_close(struct connector *c)
{
    if (!c)
        return;
    sq_cache_clear(c);
    if (c->db)
        sqlite3_close(c->db);
    c->db = NULL;
}

/* Opens the database (its directory first), WAL journal, the sync level,
 * the busy timeout; logs the settings read back from SQLite. */
static int sqlite_open(struct connector *c, char *err, size_t errlen)
{
    char mode[32], sync[32];
    static const char *const sync_names[] = {"off", "normal", "full", "extra"};
    sqlite_close(c);
    if (sq_mkdir_parent(c->path, err, errlen) < 0)
        return CONNECTOR_RETRY;
    int rc = sqlite3_open_v2(
        c->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", c->path,
                 c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, (int)c->busy_timeout_ms);
    sq_pragma_read(c->db, "PRAGMA journal_mode = WAL", mode, sizeof mode);
    if (sqlite3_exec(c->db, sq_sync_levels[c->sync].pragma, NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", c->path, sqlite3_errmsg(c->db));
        goto fail;
    }
    sq_pragma_read(c->db, "PRAGMA synchronous", sync, sizeof sync);
    int level = atoi(sync);
    log_info("connector %s: sqlite %s open (journal_mode=%s, synchronous=%s, busy_timeout=%u ms)",
             c->name, c->path, mode[0] ? mode : "?",
             level >= 0 && level <= 3 ? sync_names[level] : "?", c->busy_timeout_ms);
    return 0;
fail:
    sqlite_close(c);
    return CONNECTOR_RETRY;
}

/* ---- Export -------------------------------------------------------------- */

/* A row SQLite refuses for good; anything else may pass on a retry. */
static bool sq_rejects(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return true;
    default:
        return false;
    }
}

static int sq_exec(struct connector *c, const char *sql, char *err, size_t errlen)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        snprintf(err, errlen, "%s: %s", c->path, sqlite3_errmsg(c->db));
    return rc;
}

static int sq_prepare_one(struct connector *c, const char *create, const char *sql,
                          sqlite3_stmt **out, char *err, size_t errlen)
{
    if (create && sq_exec(c, create, err, errlen) != SQLITE_OK)
        return -1;
    if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", c->path, sqlite3_errmsg(c->db));
        return -1;
    }
    return 0;
}

/* The statement inserting 2^level rows of t, prepared on first use.
 * NULL with err set when SQLite refuses it. */
static sqlite3_stmt *sq_rows_stmt(struct connector *c, const struct sq_target *t,
                                  struct sq_prepared *p, unsigned level, char *err, size_t errlen)
{
    if (p->rows[level])
        return p->rows[level];
    struct buf *b = &c->sql;
    buf_reset(b);
    int rc = sq_sql(b, t->insert_head);
    for (unsigned r = 0; r < 1u << level; r++) {
        rc |= sq_sql(b, r ? ", (?" : "(?");
        for (unsigned i = 1; i < t->ncols; i++)
            rc |= sq_sql(b, ", ?");
        rc |= sq_sql(b, ")");
    }
    rc |= sq_sql(b, t->insert_tail) || buf_append_u8(b, 0);
    if (rc) {
        snprintf(err, errlen, "%s: out of memory", c->path);
        return NULL;
    }
    if (sq_prepare_one(c, NULL, (const char *)b->data, &p->rows[level], err, errlen) < 0)
        return NULL;
    return p->rows[level];
}

/* The target's statements on this connection: created (tables included)
 * on first use; of the multi-row inserts only the one-row statement here,
 * the others when a group of their size comes. NULL with err set on
 * failure. */
static struct sq_prepared *sq_prepared_get(struct connector *c, const struct sq_target *t,
                                           char *err, size_t errlen)
{
    for (unsigned i = 0; i < c->ncache; i++)
        if (c->cache[i].target_id == t->id)
            return &c->cache[i];
    if (c->ncache == SQ_CACHE_MAX)
        sq_cache_clear(c); /* only after many reloads: start again */
    struct sq_prepared *p = &c->cache[c->ncache];
    memset(p, 0, sizeof *p);
    if (t->type == RULE_OUTBOUND) {
        /* 2^(levels-1) rows of ncols parameters within SQLite's limit. */
        int vars = sqlite3_limit(c->db, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
        for (p->levels = 1; p->levels < SQ_GROUP_LEVELS; p->levels++)
            if ((2ull << (p->levels - 1)) * t->ncols > (unsigned)vars)
                break;
        if (t->create_sql && sq_exec(c, t->create_sql, err, errlen) != SQLITE_OK)
            return NULL;
        if (!sq_rows_stmt(c, t, p, 0, err, errlen))
            return NULL;
    } else if (sq_prepare_one(c, t->create_sql, t->write_sql, &p->write, err, errlen) < 0 ||
               (t->events_sql && sq_prepare_one(c, t->create_events_sql, t->events_sql, &p->events,
                                                err, errlen) < 0)) {
        sqlite3_finalize(p->write);
        sqlite3_finalize(p->events);
        return NULL;
    }
    p->target_id = t->id;
    c->ncache++;
    return p;
}

/* Bind bytes (never NULL, even when empty) as TEXT or BLOB, in place: the
 * caller keeps them unchanged until the statement has been stepped. */
static int sq_bind_bytes(sqlite3_stmt *st, int i, const void *p, size_t len, bool blob)
{
    static const char empty[1] = "";
    if (!p)
        p = empty;
    return blob ? sqlite3_bind_blob64(st, i, p, len, SQLITE_STATIC)
                : sqlite3_bind_text64(st, i, p, len, SQLITE_STATIC, SQLITE_UTF8);
}

static int sq_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* 16 lowercase hex digits, as ${msgid} renders (no NUL). */
static void sq_hex16(char out[16], uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 0xf];
}

static int sq_bind_column(struct connector *c, sqlite3_stmt *st, int i, const struct sq_column *col,
                          const struct export_record *rec, unsigned row, const struct sq_span *span)
{
    switch (col->src) {
    case SRC_MSG_ID:
        sq_hex16(c->hex[row], rec->msg_id);
        return sqlite3_bind_text(st, i, c->hex[row], 16, SQLITE_STATIC);
    case SRC_TOPIC:
        return sq_bind_text(st, i, rec->topic);
    case SRC_CLIENT_ID:
        return sq_bind_text(st, i, rec->client_id);
    case SRC_QOS:
        return sqlite3_bind_int(st, i, rec->qos);
    case SRC_PAYLOAD:
        return sq_bind_bytes(st, i, rec->payload, rec->payload_len, true);
    case SRC_TIME_MS:
        return sqlite3_bind_int64(st, i, rec->time_ms);
    case SRC_TEMPLATE:
        break;
    }
    return sq_bind_bytes(st, i, c->value.data + span->off, span->len, col->blob);
}

/* Render the template columns of recs[0..n) into c->value, each value's
 * place in c->spans[row * ncols + column]. All are rendered before any is
 * bound: the buffer may move while it grows. */
static int sq_render_group(struct connector *c, const struct sq_target *t,
                           struct export_record *const *recs, size_t n)
{
    buf_reset(&c->value);
    for (size_t r = 0; r < n; r++) {
        const struct template_input in = export_record_input(recs[r]);
        for (unsigned i = 0; i < t->ncols; i++) {
            if (t->cols[i].src != SRC_TEMPLATE)
                continue;
            struct sq_span *span = &c->spans[r * t->ncols + i];
            span->off = c->value.len;
            if (template_render(t->cols[i].tpl, &in, &c->value) < 0)
                return SQLITE_NOMEM;
            span->len = c->value.len - span->off;
        }
    }
    return SQLITE_OK;
}

/* Insert recs[0..n) with st, a statement of n rows: one step. The
 * bindings are left in place (each use binds every parameter anew). */
static int sq_insert_group(struct connector *c, const struct sq_target *t, sqlite3_stmt *st,
                           struct export_record *const *recs, size_t n)
{
    int rc = t->has_templates ? sq_render_group(c, t, recs, n) : SQLITE_OK;
    for (size_t r = 0; r < n && rc == SQLITE_OK; r++)
        for (unsigned i = 0; i < t->ncols && rc == SQLITE_OK; i++)
            rc = sq_bind_column(c, st, (int)(r * t->ncols + i) + 1, &t->cols[i], recs[r],
                                (unsigned)r, &c->spans[r * t->ncols + i]);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

/* The reason a row failed, taken before any cleanup statement resets it. */
static void sq_row_error(struct connector *c, const struct export_record *rec, int rc, char *err,
                         size_t errlen)
{
    snprintf(err, errlen, "%s: %s (client %s)", c->path,
             rc == SQLITE_RANGE ? "seq out of range" : sqlite3_errmsg(c->db),
             rec->client_id ? rec->client_id : "-");
}

/* Insert the messages recs[0..n) of one outbound target, in groups of the
 * largest prepared size that fits. *done is how many went in; on a refused
 * group its rows go one by one, so *done stops at the refused record. */
static int sq_write_messages(struct connector *c, const struct sq_target *t, struct sq_prepared *p,
                             struct export_record *const *recs, size_t n, size_t *done,
                             bool *prep_failed, char *err, size_t errlen)
{
    *done = 0;
    while (*done < n) {
        unsigned level = p->levels - 1;
        while ((size_t)1 << level > n - *done)
            level--;
        size_t g = (size_t)1 << level;
        sqlite3_stmt *st = sq_rows_stmt(c, t, p, level, err, errlen);
        if (!st) {
            *prep_failed = true;
            return SQLITE_ERROR;
        }
        int rc = sq_insert_group(c, t, st, recs + *done, g);
        if (rc == SQLITE_OK) {
            *done += g;
            continue;
        }
        if (g > 1 && sq_rejects(rc) && !sqlite3_get_autocommit(c->db)) {
            /* The statement was undone whole (a table's own ON CONFLICT
             * ROLLBACK ends the transaction instead: the caller retries);
             * find the record. */
            for (size_t end = *done + g; *done < end; (*done)++)
                if ((rc = sq_insert_group(c, t, p->rows[0], recs + *done, 1)) != SQLITE_OK)
                    break;
            if (rc == SQLITE_OK)
                continue;
        }
        sq_row_error(c, recs[*done], rc, err, errlen);
        return rc;
    }
    return SQLITE_OK;
}

/* Run a bound statement to completion; it is reset for the next row. */
static int sq_step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* A parameter of a fixed statement. */
struct sq_param {
    enum { P_TEXT, P_INT } kind;
    const char *text; /* P_TEXT; NULL binds NULL */
    size_t len;
    int64_t i;
};

#define SQ_TEXT(s) \
    { \
        P_TEXT, (s), (s) ? strlen(s) : 0, 0 \
    }
#define SQ_INT(v) \
    { \
        P_INT, NULL, 0, (v) \
    }

/* Bind params to st and run it. */
static int sq_run(sqlite3_stmt *st, const struct sq_param *params, int n)
{
    int rc = SQLITE_OK;
    for (int i = 0; i < n && rc == SQLITE_OK; i++)
        rc = params[i].kind == P_INT ? sqlite3_bind_int64(st, i + 1, params[i].i)
             : params[i].text ? sq_bind_bytes(st, i + 1, params[i].text, params[i].len, false)
                              : sqlite3_bind_null(st, i + 1);
    if (rc != SQLITE_OK) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return rc;
    }
    return sq_step(st);
}

/* The state upsert and the event row; with both, a savepoint makes them
 * one: a refused event row must not leave its state change behind. */
static int sq_write_status(struct connector *c, const struct sq_prepared *p,
                           const struct export_record *rec, char *err, size_t errlen)
{
    if (rec->msg_id > INT64_MAX) {
        sq_row_error(c, rec, SQLITE_RANGE, err, errlen);
        return SQLITE_RANGE;
    }
    int64_t seq = (int64_t)rec->msg_id;
    bool online = rec->event_type && !strcmp(rec->event_type, "connect");
    const struct sq_param state[] = {
        SQ_TEXT(rec->client_id), SQ_INT(online), SQ_TEXT(rec->channel_id), SQ_TEXT(rec->client_ip),
        SQ_INT(rec->time_ms),    SQ_INT(seq),    SQ_TEXT(rec->event_type),
    };
    int rc = p->events ? sqlite3_exec(c->db, "SAVEPOINT mqb_event", NULL, NULL, NULL) : SQLITE_OK;
    if (rc == SQLITE_OK)
        rc = sq_run(p->write, state, 7);
    if (rc != SQLITE_OK || !p->events) {
        if (rc != SQLITE_OK)
            sq_row_error(c, rec, rc, err, errlen);
        return rc;
    }
    const struct sq_param event[] = {
        SQ_INT(seq),
        SQ_TEXT(rec->client_id),
        SQ_TEXT(rec->event_type),
        SQ_TEXT(rec->channel_id),
        SQ_TEXT(rec->client_ip),
        SQ_INT(rec->time_ms),
        {P_TEXT, (const char *)rec->payload, rec->payload_len, 0},
    };
    if ((rc = sq_run(p->events, event, 7)) != SQLITE_OK) {
        sq_row_error(c, rec, rc, err, errlen);
        sqlite3_exec(c->db, "ROLLBACK TO mqb_event", NULL, NULL, NULL);
    }
    sqlite3_exec(c->db, "RELEASE mqb_event", NULL, NULL, NULL);
    return rc;
}

/* The outbound target of rec, or NULL when the record does not fit its
 * rule (no target, a status record on an outbound rule or the reverse). */
static const struct sq_target *sq_target_of(const struct export_record *rec)
{
    const struct sq_target *t = rec->rule ? rec->rule->compiled : NULL;
    if (!t || (t->type == RULE_STATUS) != (rec->kind == RECORD_STATUS))
        return NULL;
    return t;
}

/* How many records from recs[0] (at most n) form one run of messages of
 * target t: bounded by SQ_GROUP_MAX and, past the first, SQ_GROUP_BYTES. */
static size_t sq_run_length(const struct sq_target *t, struct export_record *const *recs, size_t n)
{
    size_t run = 1, bytes = recs[0]->payload_len;
    while (run < n && run < SQ_GROUP_MAX && sq_target_of(recs[run]) == t &&
           (bytes += recs[run]->payload_len) <= SQ_GROUP_BYTES)
        run++;
    return run;
}

/* Write recs[0..n) inside the open transaction, from the first on: *done
 * of them went in; SQLITE_OK or the error code with err set. A missing
 * table or statement is not the record's fault: *prep_failed tells the
 * caller to retry rather than reject. */
static int sq_write(struct connector *c, struct export_record *const *recs, size_t n, size_t *done,
                    bool *prep_failed, char *err, size_t errlen)
{
    const struct sq_target *t = sq_target_of(recs[0]);
    *done = 0;
    *prep_failed = false;
    if (!t) {
        snprintf(err, errlen, "record kind does not match its rule");
        return SQLITE_MISMATCH;
    }
    struct sq_prepared *p = sq_prepared_get(c, t, err, errlen);
    if (!p) {
        *prep_failed = true;
        return SQLITE_ERROR;
    }
    if (t->type == RULE_STATUS) {
        int rc = sq_write_status(c, p, recs[0], err, errlen);
        *done = rc == SQLITE_OK;
        return rc;
    }
    return sq_write_messages(c, t, p, recs, sq_run_length(t, recs, n), done, prep_failed, err,
                             errlen);
}

/* One transaction for recs[0..n). On a rejected row the rows before it are
 * committed and *acked is its index; on any other failure nothing is. */
static int sqlite_export(struct connector *c, struct export_record *const *recs, size_t n,
                         size_t *acked, char *err, size_t errlen)
{
    size_t i = 0, done = 0;
    bool prep_failed = false;
    int rc = SQLITE_OK;
    *acked = 0;
    if (!c->db) {
        snprintf(err, errlen, "%s: not open", c->path);
        return CONNECTOR_RETRY;
    }
    if (n == 0)
        return CONNECTOR_OK;
    if (sq_exec(c, "BEGIN IMMEDIATE", err, errlen) != SQLITE_OK)
        return CONNECTOR_RETRY;
    while (i < n) {
        rc = sq_write(c, recs + i, n - i, &done, &prep_failed, err, errlen);
        i += done;
        if (rc != SQLITE_OK)
            break;
    }
    bool keep_prefix = i == n || (sq_rejects(rc) && !prep_failed);
    if (!keep_prefix || sqlite3_get_autocommit(c->db)) {
        if (!sqlite3_get_autocommit(c->db))
            sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        return CONNECTOR_RETRY;
    }
    char cerr[256];
    if (sq_exec(c, "COMMIT", cerr, sizeof cerr) != SQLITE_OK) {
        snprintf(err, errlen, "%s", cerr);
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        return CONNECTOR_RETRY;
    }
    *acked = i;
    return i == n ? CONNECTOR_OK : CONNECTOR_REJECT;
}

const struct connector_ops sqlite_connector = {
    .type = "sqlite",
    .settings = sqlite_settings,
    .create = sqlite_create,
    .destroy = sqlite_destroy,
    .compile = sqlite_compile,
    .release = sqlite_release,
    .open = sqlite_open,
    .close = sqlite_close,
    .export = sqlite_export,
};
