/* PostgreSQL sink and outbox source (libpq). Each export() call is one
 * transaction, all or nothing: *acked is n after its COMMIT, 0 otherwise.
 *
 * The fast way, for message rows: BEGIN, then per target of the batch one
 * `COPY table (columns) FROM STDIN (FORMAT binary)` of its rows in batch
 * order, streamed in large chunks; the batch's other records (status
 * events, rows of targets COPY cannot take) as prepared statements in
 * pipeline mode; COMMIT. COPY has no ON CONFLICT, so a repeat fails it with
 * unique_violation. Whenever that transaction fails with the connection
 * alive (a repeat, a refused row, a value only the server can convert), it
 * is rolled back and the batch goes the idempotent way:
 *
 * The INSERT way: in pipeline mode BEGIN, one prepared INSERT per row (two
 * for a status event with an events table), COMMIT, one sync. When the
 * server refuses one row for good the transaction is re-run without it and
 * its index reported.
 *
 *   batch m1..m5000 (new)             -> one COPY, COMMIT: acked 5000
 *   the same batch again (a repeat)   -> COPY: 23505, ROLLBACK; INSERT ...
 *                                        ON CONFLICT DO NOTHING: nothing added
 *   m1..m9, m5 refused (CHECK)        -> COPY: 23514, ROLLBACK; INSERTs find
 *                                        m5: m1..m4 committed, REJECT m5
 *
 * COPY is used for a target when its table is a plain or partitioned table
 * without rules or row-level security and every column takes one of the
 * binary encodings below (checked once per connection); else its rows go
 * by INSERT. Values reach COPY exactly as the INSERT's text and binary
 * parameters would reach the columns: bytes for text, varchar, char, json
 * and jsonb (version 1 prefix), the payload's bytes for bytea, big-endian
 * integers for smallint/integer/bigint, microseconds since 2000-01-01 for
 * timestamptz. A value whose conversion only the server knows (an integer
 * column given "4.5" or " 7", a zero byte in text, a backslash for bytea)
 * sends the batch the INSERT way, where the server decides.
 *
 * Outbound rule: default schema (create_table: true, or made by the owner)
 *   msg_id TEXT PRIMARY KEY, topic TEXT NOT NULL, client_id TEXT NOT NULL,
 *   qos SMALLINT NOT NULL, payload BYTEA NOT NULL, ts TIMESTAMPTZ NOT NULL
 * or the rule's `columns` (column -> template; msg_id = ${msgid} added
 * unless mapped). Repeats are harmless: ON CONFLICT (msg_id) DO NOTHING,
 * which needs a unique index on msg_id (the INSERT is prepared for every
 * target, COPY or not, so a table without one is refused up front, and a
 * repeat always fails the COPY). INSERT values are text parameters whose
 * types the server infers from the columns, except the payload, sent in
 * binary when its column is bytea or text-like, so zero bytes survive.
 *
 * Status rule: the state table keeps one row per client, changed only by a
 * newer event (greater seq) that is a connect or comes from the stored
 * channel, so late and repeated events never overwrite newer state:
 *   seq 10 connect  channel A -> online (A);  seq 20 connect channel B ->
 *   online (B);  seq 21 tcpclean channel A -> ignored (A was taken over);
 *   seq 15 disconnect channel B -> ignored (older than 20).
 * events_table gets one row per event: ON CONFLICT (seq) DO NOTHING.
 *
 * Inbound rule: an outbox table read in id order, rows locked while the
 * engine publishes them and deleted when it acknowledges them (see "Inbound:
 * the outbox source" below):
 *   id BIGSERIAL PRIMARY KEY, topic TEXT (subtopic), qos SMALLINT (NULL: 1),
 *   client_id TEXT (P2P target), payload BYTEA NOT NULL, created_at TIMESTAMPTZ
 *
 * Error classes: SQLSTATE classes 22 (data exception), 23 (integrity
 * constraint) and 54 (program limit) refuse a row -> CONNECTOR_REJECT;
 * everything else (connection lost, shutdown, timeout, missing table,
 * permissions) -> CONNECTOR_RETRY, the records wait (a source knows only
 * RETRY: rows not acknowledged come again). Table and column names reach SQL
 * only after the identifier check at compile time and PQescapeIdentifier on
 * the connection; data only as $n parameters or COPY data. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../rules/template.h"
#include "connector.h"

#define PG_MAX_COLUMNS 64
#define PG_CACHE_KEEP 256            /* prepared targets kept per connection */
#define PG_COPY_CHUNK (256u * 1024u) /* COPY data handed to libpq at once */
/* export's own outcome next to enum connector_rc: nothing was committed,
 * the connection is fine, run the batch the INSERT way. */
#define PG_FALLBACK 1
/* A value for COPY that only the server can convert (pg_copy_field). */
#define PG_DECLINE 1

/* Type OIDs (pg_type.h is server-side): payloads go binary to these, and
 * COPY knows the binary form of all of them. */
enum {
    PG_BYTEA = 17,
    PG_INT8 = 20,
    PG_INT2 = 21,
    PG_INT4 = 23,
    PG_TEXT = 25,
    PG_JSON = 114,
    PG_BPCHAR = 1042,
    PG_VARCHAR = 1043,
    PG_TIMESTAMPTZ = 1184,
    PG_JSONB = 3802,
};

/* How a column's value goes into a binary COPY tuple. */
enum pg_enc {
    ENC_NONE = 0,    /* no binary form here: the target's rows go by INSERT */
    ENC_TEXT,        /* text, varchar, char: the bytes (no zero byte) */
    ENC_JSON,        /* json: the text */
    ENC_JSONB,       /* jsonb: version byte 1, the text */
    ENC_BYTEA,       /* the payload's bytes; other text without a backslash */
    ENC_INT2,        /* smallint, integer, bigint: big endian, from qos or */
    ENC_INT4,        /* from a plain decimal ("-12", not " 12", "1e3", "") */
    ENC_INT8,        /*   */
    ENC_TIMESTAMPTZ, /* the record's time: microseconds since 2000-01-01 UTC */
};

/* ---- Settings and rule options, as data --------------------------------- */

static const struct kv_key pg_settings[] = {
    {"conninfo", KV_SCALAR, KV_REQUIRED, "libpq connection string or URI"},
    {"connect_timeout_s", KV_SCALAR, 0, "seconds to connect (default 5)"},
    {"statement_timeout_ms", KV_SCALAR, 0,
     "server-side limit per export transaction (default 10000)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key pg_outbound_keys[] = {
    {"table", KV_SCALAR, KV_REQUIRED, "[schema.]table of the messages"},
    {"create_table", KV_SCALAR, 0, "create the table if missing (default false)"},
    {"columns", KV_MAP, 0, "column -> template; default: the fixed message schema"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key pg_status_keys[] = {
    {"table", KV_SCALAR, KV_REQUIRED, "[schema.]table of the client states"},
    {"events_table", KV_SCALAR, 0, "optional [schema.]table: one row per event"},
    {"create_table", KV_SCALAR, 0, "create the tables if missing (default false)"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* Inbound rule: `source` without `connector`. */
static const struct kv_key pg_inbound_keys[] = {
    {"table", KV_SCALAR, KV_REQUIRED, "[schema.]table: the outbox"},
    {"create_table", KV_SCALAR, 0,
     "create the outbox, the dead-letter table and the NOTIFY trigger if missing (default "
     "false)"},
    {"dead_letter_table", KV_SCALAR, 0, "optional [schema.]table for skipped rows"},
    {"channel", KV_SCALAR, 0, "the channel to LISTEN on (default: the outbox's table name)"},
    {"poll_ms", KV_SCALAR, 0, "look for rows at least this often, 1..60000 (default 1000)"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* Inbound rule: `target` without `topic` takes nothing else. */
static const struct kv_key pg_no_keys[] = {
    {NULL, KV_SCALAR, 0, NULL},
};

enum pg_source {
    SRC_MSG_ID,
    SRC_TOPIC,
    SRC_CLIENT_ID,
    SRC_QOS,
    SRC_PAYLOAD,
    SRC_TIME,
    SRC_TEMPLATE
};

struct pg_column {
    char *name;
    enum pg_source src;
    struct template *tpl; /* SRC_TEMPLATE */
    bool payload;         /* the payload bytes: SRC_PAYLOAD or exactly "${payload}" */
};

static const struct {
    const char *name;
    const char *decl;
    enum pg_source src;
} pg_default_columns[] = {
    {"msg_id", "TEXT PRIMARY KEY", SRC_MSG_ID},    {"topic", "TEXT NOT NULL", SRC_TOPIC},
    {"client_id", "TEXT NOT NULL", SRC_CLIENT_ID}, {"qos", "SMALLINT NOT NULL", SRC_QOS},
    {"payload", "BYTEA NOT NULL", SRC_PAYLOAD},    {"ts", "TIMESTAMPTZ NOT NULL", SRC_TIME},
};

/* A table name: optional schema and the table, both checked identifiers. */
struct pg_name {
    char *schema; /* NULL: the search_path decides */
    char *table;
    char *text; /* as configured, for messages */
};

/* A compiled rule: an outbound or status target, or an inbound rule's
 * outbox. Read-only after compile. */
struct pg_target {
    uint64_t id; /* unique per connector: key of the statement cache */
    enum rule_type type;
    bool create_table;
    bool custom_columns;          /* `columns` given */
    struct pg_name table, events; /* events.table NULL: no events table */
    struct pg_column *cols;       /* outbound */
    unsigned ncols;
    /* inbound */
    struct pg_name dead; /* dead.table NULL: skipped rows are only deleted */
    char *channel;
    unsigned poll_ms;
};

/* A target's prepared statements on the open connection. */
struct pg_prepared {
    uint64_t target_id;
    char write[24], events[24];      /* statement names; events "" when none */
    int formats[PG_MAX_COLUMNS + 1]; /* outbound: per parameter, 1 = binary */
    bool copy;                       /* outbound: rows go by binary COPY */
    uint8_t enc[PG_MAX_COLUMNS + 1]; /* with copy: per column, enum pg_enc */
};

struct connector {
    char *name;
    char *conninfo;
    char *display; /* "host=... port=... dbname=..." (never the password) */
    unsigned connect_timeout_s, statement_timeout_ms;
    uint64_t last_target_id; /* main loop only (compile) */
    /* Connector thread only. */
    PGconn *pg;
    struct pg_prepared *cache;
    size_t ncache, capcache;
    uint64_t next_statement;
    struct buf values; /* rendered values of one row */
    struct buf copy;   /* COPY data not yet handed to libpq */
    bool *copied;      /* per record of a batch: written by COPY */
    size_t capcopied;
};

/* ---- Small helpers ------------------------------------------------------ */

#if defined(__GNUC__)
#define PG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define PG_PRINTF(fmt, args)
#endif

static int pg_fail(char *err, size_t errlen, const char *fmt, ...) PG_PRINTF(3, 4);

static int pg_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* [A-Za-z_][A-Za-z0-9_]{0,62}: the only names that reach SQL text. */
static bool pg_identifier_ok(const char *s, size_t n)
{
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

/* libpq messages end with a newline; keep the first line. */
static const char *pg_first_line(const char *msg, char *out, size_t outlen)
{
    size_t n = strcspn(msg ? msg : "", "\n");
    snprintf(out, outlen, "%.*s", (int)n, msg ? msg : "");
    return out;
}

/* The server's primary message of a failed result ("relation ... does not
 * exist"), else libpq's first line. */
static const char *pg_result_text(const PGresult *res, char *out, size_t outlen)
{
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (primary) {
        snprintf(out, outlen, "%s", primary);
        return out;
    }
    return pg_first_line(PQresultErrorMessage(res), out, outlen);
}

/* Server notices ("relation already exists, skipping") go to the debug
 * log, not to stderr. */
static void pg_notice(void *arg, const char *message)
{
    char line[256];
    const struct connector *c = arg;
    log_debug("connector %s: %s", c->name, pg_first_line(message, line, sizeof line));
}

/* ---- Settings ------------------------------------------------------------ */

static void pg_destroy(struct connector *c);
static void pg_close(struct connector *c);

/* "host=H port=P dbname=D" from the parsed conninfo: what logs may show. */
static char *pg_display(const PQconninfoOption *opts)
{
    const char *host = NULL, *port = NULL, *db = NULL;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "host") || (!host && !strcmp(o->keyword, "hostaddr")))
            host = o->val;
        else if (!strcmp(o->keyword, "port"))
            port = o->val;
        else if (!strcmp(o->keyword, "dbname"))
            db = o->val;
    }
    char text[512];
    snprintf(text, sizeof text, "host=%s port=%s dbname=%s", host ? host : "(default)",
             port ? port : "(default)", db ? db : "(default)");
    return strdup(text);
}

static int pg_setting_uint(const struct kvmap *settings, const char *key, const char *where,
                           uint64_t min, uint64_t max, unsigned *out, char *err, size_t errlen)
{
    const struct kv *item = kv_find(settings, key);
    uint64_t v;
    if (!item)
        return 0;
    if (kv_uint(item, min, max, &v) < 0)
        return kv_error(err, errlen, settings, item,
                        "%s: %s: expected an integer %" PRIu64 "..%" PRIu64 ", got '%s'", where,
                        key, min, max, item->value);
    *out = (unsigned)v;
    return 0;
}

static int pg_create(const char *name, const struct kvmap *settings, struct connector **out,
                     char *err, size_t errlen)
{
    char where[96], *perr = NULL;
    PQconninfoOption *opts = NULL;
    snprintf(where, sizeof where, "connector '%s'", name);
    if (kv_check(settings, pg_settings, where, err, errlen) < 0)
        return -1;
    struct connector *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(name)))
        goto oom;
    c->connect_timeout_s = 5;
    c->statement_timeout_ms = 10000;
    if (pg_setting_uint(settings, "connect_timeout_s", where, 1, 3600, &c->connect_timeout_s, err,
                        errlen) < 0 ||
        pg_setting_uint(settings, "statement_timeout_ms", where, 0, 86400000,
                        &c->statement_timeout_ms, err, errlen) < 0)
        goto fail;
    const struct kv *item = kv_find(settings, "conninfo");
    if (!(opts = PQconninfoParse(item->value, &perr))) {
        /* libpq quotes the offending text, which may be the password. */
        char line[256];
        bool secret = strstr(item->value, "password") || strchr(item->value, '@');
        kv_error(err, errlen, settings, item,
                 "%s: conninfo: not a valid libpq connection string%s%s", where, secret ? "" : ": ",
                 secret ? "" : pg_first_line(perr, line, sizeof line));
        goto fail;
    }
    if (!(c->conninfo = strdup(item->value)) || !(c->display = pg_display(opts)))
        goto oom;
    PQconninfoFree(opts);
    *out = c;
    return 0;
oom:
    pg_fail(err, errlen, "%s: out of memory", where);
fail:
    PQfreemem(perr);
    PQconninfoFree(opts);
    pg_destroy(c);
    return -1;
}

static void pg_destroy(struct connector *c)
{
    if (!c)
        return;
    pg_close(c);
    free(c->cache);
    free(c->copied);
    buf_free(&c->values);
    buf_free(&c->copy);
    free(c->display);
    free(c->conninfo);
    free(c->name);
    free(c);
}

/* ---- Compiling a rule's target ------------------------------------------ */

static void pg_name_free(struct pg_name *n)
{
    free(n->schema);
    free(n->table);
    free(n->text);
}

static void pg_target_free(struct pg_target *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->ncols; i++) {
        free(t->cols[i].name);
        template_free(t->cols[i].tpl);
    }
    free(t->cols);
    pg_name_free(&t->table);
    pg_name_free(&t->events);
    pg_name_free(&t->dead);
    free(t->channel);
    free(t);
}

/* "table" or "schema.table" of an option, checked and split. */
static int pg_option_name(const struct kvmap *opts, const char *key, const char *where,
                          struct pg_name *out, char *err, size_t errlen)
{
    const struct kv *item = kv_find(opts, key);
    if (!item)
        return 0;
    const char *s = item->value, *dot = strchr(s, '.');
    size_t first = dot ? (size_t)(dot - s) : strlen(s);
    if (!pg_identifier_ok(s, first) || (dot && !pg_identifier_ok(dot + 1, strlen(dot + 1))))
        return kv_error(err, errlen, opts, item,
                        "%s: %s: '%s' is not a table name ([schema.]table, each "
                        "[A-Za-z_][A-Za-z0-9_]{0,62})",
                        where, key, s);
    if (!(out->text = strdup(s)) || (dot && !(out->schema = strndup(s, first))) ||
        !(out->table = strdup(dot ? dot + 1 : s)))
        return pg_fail(err, errlen, "%s: out of memory", where);
    return 0;
}

static int pg_column_add(struct pg_target *t, const char *name, enum pg_source src)
{
    struct pg_column *col = &t->cols[t->ncols];
    memset(col, 0, sizeof *col);
    if (!(col->name = strdup(name)))
        return -1;
    col->src = src;
    col->payload = src == SRC_PAYLOAD;
    t->ncols++;
    return 0;
}

/* `columns`: column -> template, compiled; msg_id added unless mapped. */
static int pg_columns_compile(struct pg_target *t, const struct kv *columns, const char *where,
                              char *err, size_t errlen)
{
    const struct kvmap *m = columns->map;
    bool has_msg_id = false;
    char cwhere[128];
    snprintf(cwhere, sizeof cwhere, "%s: columns", where);
    if (m->count == 0 || m->count > PG_MAX_COLUMNS)
        return kv_error(err, errlen, NULL, columns, "%s: columns: expected 1..%d columns", where,
                        PG_MAX_COLUMNS);
    if (!(t->cols = calloc(m->count + 1, sizeof *t->cols)))
        return pg_fail(err, errlen, "%s: out of memory", where);
    for (unsigned i = 0; i < m->count; i++) {
        const struct kv *item = &m->items[i];
        if (!pg_identifier_ok(item->key, strlen(item->key)))
            return kv_error(err, errlen, m, item,
                            "%s: columns: '%s' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})",
                            where, item->key);
        for (unsigned j = 0; j < i; j++)
            if (!strcmp(m->items[j].key, item->key))
                return kv_error(err, errlen, m, item, "%s: columns: '%s' given twice", where,
                                item->key);
        if (pg_column_add(t, item->key, SRC_TEMPLATE) < 0)
            return pg_fail(err, errlen, "%s: out of memory", where);
        struct pg_column *col = &t->cols[t->ncols - 1];
        if (template_compile_kv(item, cwhere, &col->tpl, err, errlen) < 0)
            return -1;
        col->payload = !strcmp(item->value, "${payload}");
        has_msg_id |= !strcmp(item->key, "msg_id");
    }
    if (!has_msg_id && pg_column_add(t, "msg_id", SRC_MSG_ID) < 0)
        return pg_fail(err, errlen, "%s: out of memory", where);
    return 0;
}

static int pg_default_columns_add(struct pg_target *t)
{
    size_t n = sizeof pg_default_columns / sizeof pg_default_columns[0];
    if (!(t->cols = calloc(n, sizeof *t->cols)))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (pg_column_add(t, pg_default_columns[i].name, pg_default_columns[i].src) < 0)
            return -1;
    return 0;
}

/* Inbound: dead_letter_table, channel (default: the table's name, which
 * fits a channel: at most 63 bytes) and poll_ms. */
static int pg_inbound_compile(struct pg_target *t, const struct kvmap *opts, const char *where,
                              char *err, size_t errlen)
{
    const struct kv *item = kv_find(opts, "dead_letter_table");
    if (pg_option_name(opts, "dead_letter_table", where, &t->dead, err, errlen) < 0)
        return -1;
    if (item && !strcmp(t->dead.text, t->table.text))
        return kv_error(err, errlen, opts, item,
                        "%s: dead_letter_table: must be another table than the outbox '%s'", where,
                        t->table.text);
    item = kv_find(opts, "channel");
    if (item && !pg_identifier_ok(item->value, strlen(item->value)))
        return kv_error(err, errlen, opts, item,
                        "%s: channel: '%s' is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,62})",
                        where, item->value);
    if (!(t->channel = strdup(item ? item->value : t->table.table)))
        return pg_fail(err, errlen, "%s: out of memory", where);
    t->poll_ms = 1000;
    return pg_setting_uint(opts, "poll_ms", where, 1, 60000, &t->poll_ms, err, errlen);
}

static const struct kv_key *pg_rule_keys(enum rule_type type)
{
    switch (type) {
    case RULE_OUTBOUND:
        return pg_outbound_keys;
    case RULE_STATUS:
        return pg_status_keys;
    case RULE_INBOUND:
        return pg_inbound_keys;
    }
    return NULL;
}

static int pg_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                      size_t errlen)
{
    char where[96], twhere[112];
    const struct kvmap *opts = r->options;
    const struct kv_key *keys = pg_rule_keys(r->type);
    snprintf(where, sizeof where, "rule '%s'", r->name);
    snprintf(twhere, sizeof twhere, "%s: target", where);
    if (!keys)
        return kv_error(err, errlen, opts, NULL, "%s: not a rule type of the postgres connector",
                        where);
    if (kv_check(opts, keys, where, err, errlen) < 0 ||
        (r->type == RULE_INBOUND &&
         kv_check(r->target_options, pg_no_keys, twhere, err, errlen) < 0))
        return -1;
    struct pg_target *t = calloc(1, sizeof *t);
    if (!t)
        return pg_fail(err, errlen, "%s: out of memory", where);
    t->type = r->type;
    const struct kv *item = kv_find(opts, "create_table");
    if (item && kv_bool(item, &t->create_table) < 0) {
        kv_error(err, errlen, opts, item, "%s: create_table: expected true or false, got '%s'",
                 where, item->value);
        goto fail;
    }
    if (pg_option_name(opts, "table", where, &t->table, err, errlen) < 0 ||
        pg_option_name(opts, "events_table", where, &t->events, err, errlen) < 0)
        goto fail;
    if (r->type == RULE_INBOUND && pg_inbound_compile(t, opts, where, err, errlen) < 0)
        goto fail;
    if (r->type == RULE_OUTBOUND) {
        const struct kv *columns = kv_find(opts, "columns");
        t->custom_columns = columns != NULL;
        if (columns && pg_columns_compile(t, columns, where, err, errlen) < 0)
            goto fail;
        if (!columns && pg_default_columns_add(t) < 0) {
            pg_fail(err, errlen, "%s: out of memory", where);
            goto fail;
        }
    }
    t->id = ++c->last_target_id;
    *compiled = t;
    return 0;
fail:
    pg_target_free(t);
    return -1;
}

static void pg_release(struct connector *c, void *compiled)
{
    pg_target_free(compiled);
}

/* ---- SQL text ------------------------------------------------------------
 * Builders append fixed text, escaped identifiers and $n placeholders, and
 * end the text with a NUL; they return 0, or nonzero when out of memory. */

static int pg_sql(struct buf *b, const char *text)
{
    return buf_append(b, text, strlen(text));
}

/* A name quoted by the server's rules (PQescapeIdentifier). */
static int pg_sql_ident(struct buf *b, PGconn *pg, const char *name)
{
    char *q = PQescapeIdentifier(pg, name, strlen(name));
    if (!q)
        return -1;
    int rc = pg_sql(b, q);
    PQfreemem(q);
    return rc;
}

static int pg_sql_table(struct buf *b, PGconn *pg, const struct pg_name *n)
{
    if (n->schema && (pg_sql_ident(b, pg, n->schema) < 0 || pg_sql(b, ".") < 0))
        return -1;
    return pg_sql_ident(b, pg, n->table);
}

/* "$k", or the timestamptz expression of an epoch-milliseconds "$k". */
static int pg_sql_param(struct buf *b, unsigned k, bool time_ms)
{
    char text[96];
    if (time_ms)
        snprintf(text, sizeof text,
                 "('epoch'::timestamptz + $%u::bigint * interval '1 millisecond')", k);
    else
        snprintf(text, sizeof text, "$%u", k);
    return pg_sql(b, text);
}

static int pg_sql_end(struct buf *b)
{
    return buf_append_u8(b, 0);
}

static int pg_outbound_create_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    bool defaults = !t->custom_columns;
    int rc = pg_sql(b, "CREATE TABLE IF NOT EXISTS ") || pg_sql_table(b, pg, &t->table) ||
             pg_sql(b, " (");
    for (unsigned i = 0; i < t->ncols && !rc; i++) {
        const struct pg_column *col = &t->cols[i];
        const char *decl = defaults                       ? pg_default_columns[i].decl
                           : !strcmp(col->name, "msg_id") ? "TEXT PRIMARY KEY"
                           : col->payload                 ? "BYTEA"
                                                          : "TEXT";
        rc = pg_sql(b, i ? ", " : "") || pg_sql_ident(b, pg, col->name) || pg_sql(b, " ") ||
             pg_sql(b, decl);
    }
    return rc || pg_sql(b, ")") || pg_sql_end(b);
}

static int pg_outbound_insert_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    int rc = pg_sql(b, "INSERT INTO ") || pg_sql_table(b, pg, &t->table) || pg_sql(b, " (");
    for (unsigned i = 0; i < t->ncols && !rc; i++)
        rc = pg_sql(b, i ? ", " : "") || pg_sql_ident(b, pg, t->cols[i].name);
    rc = rc || pg_sql(b, ") VALUES (");
    for (unsigned i = 0; i < t->ncols && !rc; i++)
        rc = pg_sql(b, i ? ", " : "") || pg_sql_param(b, i + 1, t->cols[i].src == SRC_TIME);
    return rc || pg_sql(b, ") ON CONFLICT (msg_id) DO NOTHING") || pg_sql_end(b);
}

static int pg_outbound_copy_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    int rc = pg_sql(b, "COPY ") || pg_sql_table(b, pg, &t->table) || pg_sql(b, " (");
    for (unsigned i = 0; i < t->ncols && !rc; i++)
        rc = pg_sql(b, i ? ", " : "") || pg_sql_ident(b, pg, t->cols[i].name);
    return rc || pg_sql(b, ") FROM STDIN (FORMAT binary)") || pg_sql_end(b);
}

static int pg_state_create_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "CREATE TABLE IF NOT EXISTS ") || pg_sql_table(b, pg, &t->table) ||
           pg_sql(b, " (client_id TEXT PRIMARY KEY, online BOOLEAN NOT NULL, "
                     "channel_id TEXT, client_ip TEXT, since TIMESTAMPTZ NOT NULL, "
                     "seq BIGINT NOT NULL, event_type TEXT NOT NULL)") ||
           pg_sql_end(b);
}

/* The status-state rule as an upsert (the alias keeps a schema-qualified
 * name out of the WHERE clause). */
static int pg_state_upsert_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "INSERT INTO ") || pg_sql_table(b, pg, &t->table) ||
           pg_sql(b, " AS cur (client_id, online, channel_id, client_ip, since, seq, "
                     "event_type) VALUES ($1, $2, $3, $4, ") ||
           pg_sql_param(b, 5, true) ||
           pg_sql(b, ", $6, $7) ON CONFLICT (client_id) DO UPDATE SET "
                     "online = EXCLUDED.online, channel_id = EXCLUDED.channel_id, "
                     "client_ip = EXCLUDED.client_ip, since = EXCLUDED.since, "
                     "seq = EXCLUDED.seq, event_type = EXCLUDED.event_type "
                     "WHERE EXCLUDED.seq > cur.seq AND (EXCLUDED.event_type = 'connect' "
                     "OR EXCLUDED.channel_id IS NOT DISTINCT FROM cur.channel_id)") ||
           pg_sql_end(b);
}

static int pg_events_create_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "CREATE TABLE IF NOT EXISTS ") || pg_sql_table(b, pg, &t->events) ||
           pg_sql(b, " (seq BIGINT PRIMARY KEY, client_id TEXT NOT NULL, "
                     "event_type TEXT NOT NULL, channel_id TEXT, client_ip TEXT, "
                     "\"time\" TIMESTAMPTZ NOT NULL, body JSONB)") ||
           pg_sql_end(b);
}

static int pg_events_insert_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "INSERT INTO ") || pg_sql_table(b, pg, &t->events) ||
           pg_sql(b, " (seq, client_id, event_type, channel_id, client_ip, \"time\", "
                     "body) VALUES ($1, $2, $3, $4, $5, ") ||
           pg_sql_param(b, 6, true) || pg_sql(b, ", $7) ON CONFLICT (seq) DO NOTHING") ||
           pg_sql_end(b);
}

/* ---- Connection ---------------------------------------------------------- */

static void pg_close(struct connector *c)
{
    if (!c)
        return;
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    c->ncache = 0;
}

/* A new session with the connector's settings (the sink's and each
 * source's own): the timeouts, keep-alives so a dead peer is noticed, and
 * statement_timeout. The conninfo comes after the defaults (it may override
 * them) and before connect_timeout (the setting wins). NULL with err. */
static PGconn *pg_connect(struct connector *c, char *err, size_t errlen)
{
    char timeout[16], stmt_timeout[16], line[256];
    snprintf(timeout, sizeof timeout, "%u", c->connect_timeout_s);
    snprintf(stmt_timeout, sizeof stmt_timeout, "%u", c->statement_timeout_ms);
    const char *const keys[] = {
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count",          "dbname",     "connect_timeout", NULL};
    const char *const vals[] = {"mqbridge", "1", "30", "10", "3", c->conninfo, timeout, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        pg_fail(err, errlen, "cannot connect to %s: %s", c->display,
                pg ? pg_first_line(PQerrorMessage(pg), line, sizeof line) : "out of memory");
        goto fail;
    }
    PQsetNoticeProcessor(pg, pg_notice, c);
    const char *params[1] = {stmt_timeout};
    PGresult *res = PQexecParams(pg, "SELECT set_config('statement_timeout', $1, false)", 1, NULL,
                                 params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        pg_fail(err, errlen, "%s: setting statement_timeout: %s", c->display,
                pg_result_text(res, line, sizeof line));
    PQclear(res);
    if (ok)
        return pg;
fail:
    PQfinish(pg);
    return NULL;
}

static int pg_open(struct connector *c, char *err, size_t errlen)
{
    pg_close(c);
    if (!(c->pg = pg_connect(c, err, errlen)))
        return CONNECTOR_RETRY;
    c->next_statement = 0;
    log_info("connector %s: connected to %s (server %d)", c->name, c->display,
             PQserverVersion(c->pg));
    return 0;
}

/* ---- Preparing a target on the connection -------------------------------- */

/* Outbound: the payload parameters go binary when the server inferred
 * bytea or a text type for them; text otherwise (json, jsonb, ...). */
static int pg_payload_formats(struct connector *c, const struct pg_target *t, struct pg_prepared *p,
                              char *err, size_t errlen)
{
    char line[256];
    PGresult *res = PQdescribePrepared(c->pg, p->write);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK && PQnparams(res) == (int)t->ncols ? 0 : -1;
    if (rc < 0)
        pg_fail(err, errlen, "table %s: describing the insert: %s", t->table.text,
                pg_result_text(res, line, sizeof line));
    for (unsigned i = 0; i < t->ncols && rc == 0; i++) {
        Oid type = PQparamtype(res, (int)i);
        p->formats[i] = t->cols[i].payload && (type == PG_BYTEA || type == PG_TEXT ||
                                               type == PG_VARCHAR || type == PG_BPCHAR);
    }
    PQclear(res);
    return rc;
}

/* The binary COPY form of a column of this type fed from this source;
 * ENC_NONE when only the INSERT's conversion would do (the record's time
 * goes into timestamptz only: INSERT converts it into other types in the
 * session's time zone and DateStyle). */
static enum pg_enc pg_enc_of(Oid type, const struct pg_column *col)
{
    if (col->src == SRC_TIME)
        return type == PG_TIMESTAMPTZ ? ENC_TIMESTAMPTZ : ENC_NONE;
    switch (type) {
    case PG_TEXT:
    case PG_VARCHAR:
    case PG_BPCHAR:
        return ENC_TEXT;
    case PG_JSON:
        return ENC_JSON;
    case PG_JSONB:
        return ENC_JSONB;
    case PG_BYTEA:
        return ENC_BYTEA;
    case PG_INT2:
        return ENC_INT2;
    case PG_INT4:
        return ENC_INT4;
    case PG_INT8:
        return ENC_INT8;
    default:
        return ENC_NONE;
    }
}

/* The table's kind; whether COPY would bypass its rules or hit row-level
 * security (COPY FROM refuses it); whether msg_id has the unique index ON
 * CONFLICT (msg_id) infers (valid, immediate, no predicate or expression):
 * only then does a repeat fail the COPY rather than add a row twice; and
 * its columns' types. */
#define PG_COPY_PLAN_SQL \
    "SELECT c.relkind::text, (c.relhasrules OR c.relrowsecurity)::text, " \
    "EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute k " \
    "ON k.attrelid = i.indrelid AND k.attnum = i.indkey[0] WHERE i.indrelid = c.oid " \
    "AND i.indisunique AND i.indimmediate AND i.indisvalid AND i.indnkeyatts = 1 " \
    "AND i.indpred IS NULL AND i.indexprs IS NULL AND k.attname = 'msg_id')::text, " \
    "a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod) " \
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid " \
    "WHERE c.oid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped"

/* Outbound: can the target's rows go by COPY, and each column how? Else
 * they go by INSERT (logged once per connection, with the reason). */
static int pg_copy_plan(struct connector *c, const struct pg_target *t, struct pg_prepared *p,
                        char *err, size_t errlen)
{
    struct buf name = {0};
    char line[256], why[200] = "";
    p->copy = false;
    if (pg_sql_table(&name, c->pg, &t->table) || pg_sql_end(&name)) {
        buf_free(&name);
        return pg_fail(err, errlen, "table %s: out of memory", t->table.text);
    }
    const char *params[1] = {(const char *)name.data};
    PGresult *res = PQexecParams(c->pg, PG_COPY_PLAN_SQL, 1, NULL, params, NULL, NULL, 0);
    buf_free(&name);
    int rows = PQntuples(res);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 6 || rows < 1) {
        pg_fail(err, errlen, "table %s: reading its column types: %s", t->table.text,
                PQresultStatus(res) == PGRES_TUPLES_OK ? "no columns"
                                                       : pg_result_text(res, line, sizeof line));
        PQclear(res);
        return -1;
    }
    const char *kind = PQgetvalue(res, 0, 0);
    if (strcmp(kind, "r") != 0 && strcmp(kind, "p") != 0)
        snprintf(why, sizeof why, "not a plain or partitioned table (relkind '%s')", kind);
    else if (!strcmp(PQgetvalue(res, 0, 1), "true"))
        snprintf(why, sizeof why, "it has rules or row-level security");
    else if (strcmp(PQgetvalue(res, 0, 2), "true") != 0)
        snprintf(why, sizeof why, "no unique index on msg_id alone");
    for (unsigned i = 0; i < t->ncols && !why[0]; i++) {
        int row = 0;
        while (row < rows && strcmp(PQgetvalue(res, row, 3), t->cols[i].name) != 0)
            row++;
        Oid type = row < rows ? (Oid)strtoul(PQgetvalue(res, row, 4), NULL, 10) : 0;
        p->enc[i] = (uint8_t)pg_enc_of(type, &t->cols[i]);
        if (p->enc[i] == ENC_NONE)
            snprintf(why, sizeof why, "column %s is %s", t->cols[i].name,
                     row < rows ? PQgetvalue(res, row, 5) : "missing");
    }
    PQclear(res);
    p->copy = !why[0];
    if (p->copy)
        log_debug("connector %s: table %s: rows go by COPY", c->name, t->table.text);
    else
        log_notice("connector %s: table %s: rows go by INSERT, not COPY: %s", c->name,
                   t->table.text, why);
    return 0;
}

typedef int (*pg_sql_fn)(struct buf *b, PGconn *pg, const struct pg_target *t);

/* Build a statement with fn, then run it (name NULL) or prepare it as name. */
static int pg_build_run(PGconn *pg, const struct pg_target *t, pg_sql_fn fn, const char *name,
                        char *err, size_t errlen)
{
    struct buf sql = {0};
    char line[256];
    if (fn(&sql, pg, t) != 0) {
        buf_free(&sql);
        return pg_fail(err, errlen, "table %s: out of memory", t->table.text);
    }
    const char *text = (const char *)sql.data;
    PGresult *res = name ? PQprepare(pg, name, text, 0, NULL) : PQexec(pg, text);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc < 0)
        pg_fail(err, errlen, "table %s: %s", t->table.text, pg_result_text(res, line, sizeof line));
    PQclear(res);
    buf_free(&sql);
    return rc;
}

/* Create the tables (when asked), prepare the statements. */
static int pg_prepare_target(struct connector *c, const struct pg_target *t, struct pg_prepared *p,
                             char *err, size_t errlen)
{
    bool status = t->type == RULE_STATUS;
    uint64_t k = ++c->next_statement;
    memset(p, 0, sizeof *p);
    snprintf(p->write, sizeof p->write, "mqb_w%" PRIu64, k);
    if (t->create_table &&
        pg_build_run(c->pg, t, status ? pg_state_create_sql : pg_outbound_create_sql, NULL, err,
                     errlen) < 0)
        return -1;
    if (pg_build_run(c->pg, t, status ? pg_state_upsert_sql : pg_outbound_insert_sql, p->write, err,
                     errlen) < 0)
        return -1;
    if (!status)
        return pg_payload_formats(c, t, p, err, errlen) < 0 ? -1
                                                            : pg_copy_plan(c, t, p, err, errlen);
    if (!t->events.table)
        return 0;
    snprintf(p->events, sizeof p->events, "mqb_e%" PRIu64, k);
    if (t->create_table && pg_build_run(c->pg, t, pg_events_create_sql, NULL, err, errlen) < 0)
        return -1;
    return pg_build_run(c->pg, t, pg_events_insert_sql, p->events, err, errlen);
}

static struct pg_prepared *pg_prepared_find(struct connector *c, uint64_t target_id)
{
    for (size_t i = 0; i < c->ncache; i++)
        if (c->cache[i].target_id == target_id)
            return &c->cache[i];
    return NULL;
}

/* Make sure the target is prepared on this connection. */
static int pg_target_ready(struct connector *c, const struct pg_target *t, char *err, size_t errlen)
{
    if (pg_prepared_find(c, t->id))
        return 0;
    if (c->ncache == c->capcache) {
        size_t cap = c->capcache ? c->capcache * 2 : 8;
        struct pg_prepared *p = realloc(c->cache, cap * sizeof *p);
        if (!p)
            return pg_fail(err, errlen, "out of memory");
        c->cache = p;
        c->capcache = cap;
    }
    if (pg_prepare_target(c, t, &c->cache[c->ncache], err, errlen) < 0)
        return -1;
    c->cache[c->ncache++].target_id = t->id;
    return 0;
}

/* Forget every prepared statement when many reloads piled them up. */
static void pg_cache_trim(struct connector *c)
{
    if (c->ncache <= PG_CACHE_KEEP)
        return;
    PGresult *res = PQexec(c->pg, "DEALLOCATE ALL");
    PQclear(res);
    c->ncache = 0;
}

/* ---- Rows ---------------------------------------------------------------- */

/* The parameters of one statement. Text values point into c->values or
 * are direct pointers; they live until the statement is sent. */
struct pg_row {
    const char *values[PG_MAX_COLUMNS + 1];
    int lengths[PG_MAX_COLUMNS + 1];
    int formats[PG_MAX_COLUMNS + 1];
    size_t offsets[PG_MAX_COLUMNS + 1]; /* into c->values; SIZE_MAX: not there */
    int n;
};

/* Append text (NUL-terminated in c->values) as parameter k; a zero byte
 * cannot travel as text. */
static int pg_row_text(struct connector *c, struct pg_row *row, int k, const void *p, size_t len,
                       char *err, size_t errlen)
{
    if (len && memchr(p, 0, len))
        return pg_fail(err, errlen, "a text value holds a zero byte");
    row->offsets[k] = c->values.len;
    row->lengths[k] = 0;
    row->formats[k] = 0;
    if (buf_append(&c->values, p, len) < 0 || buf_append_u8(&c->values, 0) < 0)
        return pg_fail(err, errlen, "out of memory");
    return 0;
}

/* Point values[] into c->values now that it no longer moves. */
static void pg_row_fix(struct connector *c, struct pg_row *row)
{
    for (int k = 0; k < row->n; k++)
        if (row->offsets[k] != SIZE_MAX)
            row->values[k] = (const char *)c->values.data + row->offsets[k];
}

static void pg_row_direct(struct pg_row *row, int k, const char *value, int len, int format)
{
    row->values[k] = value;
    row->lengths[k] = len;
    row->formats[k] = format;
    row->offsets[k] = SIZE_MAX;
}

/* A template column as text: rendered into c->values, NUL-terminated. */
static int pg_row_template(struct connector *c, const struct pg_column *col,
                           const struct export_record *rec, struct pg_row *row, int k, char *err,
                           size_t errlen)
{
    const struct template_input in = export_record_input(rec);
    size_t start = c->values.len;
    if (template_render(col->tpl, &in, &c->values) < 0)
        return pg_fail(err, errlen, "out of memory");
    size_t len = c->values.len - start;
    if (len && memchr(c->values.data + start, 0, len))
        return pg_fail(err, errlen, "column %s: the value holds a zero byte", col->name);
    if (buf_append_u8(&c->values, 0) < 0)
        return pg_fail(err, errlen, "out of memory");
    row->offsets[k] = start;
    row->lengths[k] = 0;
    row->formats[k] = 0;
    return 0;
}

/* Parameter k of a message row; format 1: the payload goes binary (the
 * prepared statement found a bytea or text column for it). */
static int pg_row_column(struct connector *c, const struct pg_column *col, int format,
                         const struct export_record *rec, struct pg_row *row, int k, char *err,
                         size_t errlen)
{
    static const char empty[1] = "";
    char num[24];
    switch (col->src) {
    case SRC_MSG_ID:
        snprintf(num, sizeof num, "%016" PRIx64, rec->msg_id);
        return pg_row_text(c, row, k, num, strlen(num), err, errlen);
    case SRC_QOS:
        snprintf(num, sizeof num, "%u", rec->qos);
        return pg_row_text(c, row, k, num, strlen(num), err, errlen);
    case SRC_TIME:
        snprintf(num, sizeof num, "%" PRId64, rec->time_ms);
        return pg_row_text(c, row, k, num, strlen(num), err, errlen);
    case SRC_TOPIC:
        return pg_row_text(c, row, k, rec->topic, rec->topic ? strlen(rec->topic) : 0, err, errlen);
    case SRC_CLIENT_ID:
        return pg_row_text(c, row, k, rec->client_id, rec->client_id ? strlen(rec->client_id) : 0,
                           err, errlen);
    case SRC_PAYLOAD:
    case SRC_TEMPLATE:
        break;
    }
    if (col->payload && format == 1) {
        pg_row_direct(row, k, rec->payload ? (const char *)rec->payload : empty,
                      (int)rec->payload_len, 1);
        return 0;
    }
    if (col->src == SRC_PAYLOAD)
        return pg_row_text(c, row, k, rec->payload, rec->payload_len, err, errlen);
    return pg_row_template(c, col, rec, row, k, err, errlen);
}

static int pg_row_message(struct connector *c, const struct pg_target *t,
                          const struct pg_prepared *p, const struct export_record *rec,
                          struct pg_row *row, char *err, size_t errlen)
{
    buf_reset(&c->values);
    row->n = (int)t->ncols;
    for (unsigned i = 0; i < t->ncols; i++)
        if (pg_row_column(c, &t->cols[i], p->formats[i], rec, row, (int)i, err, errlen) < 0)
            return -1;
    pg_row_fix(c, row);
    return 0;
}

/* Status statements: state (state = true) or event row; text values,
 * NULL for absent ones. */
static int pg_row_status(struct connector *c, const struct export_record *rec, bool state,
                         struct pg_row *row, char *err, size_t errlen)
{
    char seq[24], ms[24];
    snprintf(seq, sizeof seq, "%" PRIu64, rec->msg_id);
    snprintf(ms, sizeof ms, "%" PRId64, rec->time_ms);
    bool online = rec->event_type && !strcmp(rec->event_type, "connect");
    const char *state_v[7] = {
        rec->client_id, online ? "true" : "false", rec->channel_id, rec->client_ip, ms, seq,
        rec->event_type};
    const char *event_v[6] = {seq, rec->client_id, rec->event_type, rec->channel_id, rec->client_ip,
                              ms};
    const char *const *v = state ? state_v : event_v;
    buf_reset(&c->values);
    row->n = 7;
    for (int k = 0; k < (state ? 7 : 6); k++) {
        if (!v[k])
            pg_row_direct(row, k, NULL, 0, 0);
        else if (pg_row_text(c, row, k, v[k], strlen(v[k]), err, errlen) < 0)
            return -1;
    }
    if (!state) {
        if (!rec->payload_len)
            pg_row_direct(row, 6, NULL, 0, 0);
        else if (pg_row_text(c, row, 6, rec->payload, rec->payload_len, err, errlen) < 0)
            return -1;
    }
    pg_row_fix(c, row);
    return 0;
}

/* ---- The pipeline -------------------------------------------------------- */

static unsigned pg_statements_of(const struct export_record *rec)
{
    const struct pg_target *t = rec->rule->compiled;
    return t->type == RULE_STATUS && t->events.table ? 2 : 1;
}

/* Queue the statements of one record, counting them in *queued; -1 with
 * err when the record cannot be encoded, -2 when sending failed. */
static int pg_send_record(struct connector *c, const struct export_record *rec, unsigned *queued,
                          char *err, size_t errlen)
{
    const struct pg_target *t = rec->rule->compiled;
    const struct pg_prepared *p = pg_prepared_find(c, t->id);
    struct pg_row row;
    bool status = t->type == RULE_STATUS;
    int rc = status ? pg_row_status(c, rec, true, &row, err, errlen)
                    : pg_row_message(c, t, p, rec, &row, err, errlen);
    if (rc < 0)
        return -1;
    if (!PQsendQueryPrepared(c->pg, p->write, row.n, row.values, row.lengths, row.formats, 0))
        return -2;
    ++*queued;
    if (!status || !p->events[0])
        return 0;
    if (pg_row_status(c, rec, false, &row, err, errlen) < 0)
        return -1;
    if (!PQsendQueryPrepared(c->pg, p->events, row.n, row.values, row.lengths, row.formats, 0))
        return -2;
    ++*queued;
    return 0;
}

static bool pg_send_simple(PGconn *pg, const char *sql)
{
    return PQsendQueryParams(pg, sql, 0, NULL, NULL, NULL, NULL, 0) == 1;
}

/* The first failure in a pipeline's results. */
struct pg_failure {
    bool seen;
    unsigned query; /* 0 = BEGIN, 1.. statements, last = COMMIT/ROLLBACK */
    bool reject;
    char text[320];
};

static void pg_failure_note(PGconn *pg, struct pg_failure *f, unsigned q, const PGresult *res)
{
    char line[256];
    if (f->seen)
        return;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    f->seen = true;
    f->query = q;
    f->reject = PQstatus(pg) == CONNECTION_OK && state &&
                (!strncmp(state, "22", 2) || !strncmp(state, "23", 2) || !strncmp(state, "54", 2));
    snprintf(f->text, sizeof f->text, "%s (SQLSTATE %s)", pg_result_text(res, line, sizeof line),
             state ? state : "none");
}

/* The result of the next query of the pipeline, its terminating NULL
 * consumed; NULL when the connection broke. */
static PGresult *pg_result_next(PGconn *pg)
{
    PGresult *res = PQgetResult(pg);
    if (res && PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
        PGresult *extra;
        for (int guard = 0; guard < 8 && (extra = PQgetResult(pg)) != NULL; guard++)
            PQclear(extra);
    }
    return res;
}

/* Read nq query results and the sync. -1 when the connection broke. */
static int pg_read_results(PGconn *pg, unsigned nq, struct pg_failure *f)
{
    for (unsigned q = 0; q < nq; q++) {
        PGresult *res = pg_result_next(pg);
        if (!res)
            return -1;
        ExecStatusType st = PQresultStatus(res);
        /* After a failure the server skips the rest: PGRES_PIPELINE_ABORTED. */
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_PIPELINE_ABORTED)
            pg_failure_note(pg, f, q, res);
        PQclear(res);
    }
    PGresult *sync = PQgetResult(pg);
    int rc = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC ? 0 : -1;
    PQclear(sync);
    return rc;
}

/* The record whose statement is query q (1-based after BEGIN). */
static size_t pg_record_of(struct export_record *const *recs, size_t n, unsigned q)
{
    unsigned at = 1;
    for (size_t i = 0; i < n; i++) {
        at += pg_statements_of(recs[i]);
        if (q < at)
            return i;
    }
    return n;
}

/* One transaction for recs[0..n) in pipeline mode. CONNECTOR_OK when
 * committed; CONNECTOR_REJECT with *bad when the server (or the encoding)
 * refused recs[*bad] (nothing committed); CONNECTOR_RETRY otherwise.
 * With `copied` (the COPY way), the transaction is open already and holds
 * the records copied[i] marks: the others follow and COMMIT ends it; any
 * failure is PG_FALLBACK (rolled back) or CONNECTOR_RETRY (broken). */
static int pg_pipeline(struct connector *c, struct export_record *const *recs, size_t n,
                       const bool *copied, size_t *bad, char *err, size_t errlen)
{
    struct pg_failure f = {0};
    char enc_err[256] = "";
    size_t sent = 0;
    unsigned nq = copied ? 0 : 1;
    int enc = 0;
    if (!PQenterPipelineMode(c->pg) || (!copied && !pg_send_simple(c->pg, "BEGIN")))
        goto broken;
    for (; sent < n; sent++)
        if ((!copied || !copied[sent]) &&
            (enc = pg_send_record(c, recs[sent], &nq, enc_err, sizeof enc_err)) != 0)
            break;
    if (enc == -2)
        goto broken;
    /* A record that cannot be encoded ends the batch: roll back, report it. */
    if (!pg_send_simple(c->pg, enc ? "ROLLBACK" : "COMMIT") || !PQpipelineSync(c->pg))
        goto broken;
    if (pg_read_results(c->pg, nq + 1, &f) < 0 || !PQexitPipelineMode(c->pg))
        goto broken;
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        PQclear(PQexec(c->pg, "ROLLBACK"));
    if (copied && (f.seen || enc)) {
        pg_fail(err, errlen, "%s", f.seen ? f.text : enc_err);
        return PG_FALLBACK;
    }
    /* A server failure can only concern records up to the one that could
     * not be encoded: it comes first. */
    if (f.seen) {
        *bad = pg_record_of(recs, n, f.query);
        if (!f.reject || *bad >= n) {
            pg_fail(err, errlen, "%s: %s", c->display, f.text);
            return CONNECTOR_RETRY;
        }
        const struct pg_target *t = recs[*bad]->rule->compiled;
        pg_fail(err, errlen, "client %s: table %s: %s",
                recs[*bad]->client_id ? recs[*bad]->client_id : "-", t->table.text, f.text);
        return CONNECTOR_REJECT;
    }
    if (enc) {
        *bad = sent;
        pg_fail(err, errlen, "client %s: %s", recs[sent]->client_id ? recs[sent]->client_id : "-",
                enc_err);
        return CONNECTOR_REJECT;
    }
    return CONNECTOR_OK;
broken:
    if (!f.seen)
        pg_first_line(PQerrorMessage(c->pg), f.text, sizeof f.text);
    pg_fail(err, errlen, "%s: %s", c->display, f.text);
    pg_close(c); /* mid-pipeline: nothing to salvage; open() starts afresh */
    return CONNECTOR_RETRY;
}

/* ---- COPY ---------------------------------------------------------------- */

/* Binary COPY: signature, flags, header extension length; each tuple is
 * an int16 field count and per field an int32 length and the value; the
 * trailer an int16 -1. Integers big endian. */
static const uint8_t pg_copy_header[19] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n'};
static const uint8_t pg_copy_trailer[2] = {0xff, 0xff};

/* Unix epoch to PostgreSQL's (2000-01-01 UTC), in ms; the times COPY
 * takes as they are (far inside timestamptz's range, and exact in the
 * INSERT's float8 arithmetic). */
#define PG_EPOCH_MS INT64_C(946684800000)
#define PG_TIME_MS_LIMIT INT64_C(4000000000000000) /* about 126,000 years */

static void pg_be(uint8_t *out, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        out[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static int pg_put_be(struct buf *b, uint64_t v, unsigned bytes)
{
    uint8_t out[8];
    pg_be(out, v, bytes);
    return buf_append(b, out, bytes);
}

/* A plain decimal "-?[0-9]+" in range for an ENC_INT* column; false for
 * anything the server's parser might read otherwise (spaces, "+", "1e3",
 * "0x1F") or refuse: the server decides those. */
static bool pg_decimal(const uint8_t *s, size_t len, enum pg_enc enc, int64_t *out)
{
    bool neg = len > 0 && s[0] == '-';
    size_t i = neg;
    uint64_t v = 0, max = enc == ENC_INT2 ? 32767 : enc == ENC_INT4 ? 2147483647 : INT64_MAX;
    if (i == len)
        return false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (max + neg - (s[i] - '0')) / 10)
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* Append a text-like column's value as the INSERT would send it (the time
 * column never comes here: pg_enc_of). 0, or -1 when out of memory. */
static int pg_copy_text(const struct pg_column *col, const struct export_record *rec,
                        struct buf *out)
{
    char num[24];
    int len;
    switch (col->src) {
    case SRC_MSG_ID:
        len = snprintf(num, sizeof num, "%016" PRIx64, rec->msg_id);
        return buf_append(out, num, (size_t)len);
    case SRC_QOS:
        len = snprintf(num, sizeof num, "%u", rec->qos);
        return buf_append(out, num, (size_t)len);
    case SRC_TOPIC:
        return buf_append(out, rec->topic ? rec->topic : "", rec->topic ? strlen(rec->topic) : 0);
    case SRC_CLIENT_ID:
        return buf_append(out, rec->client_id ? rec->client_id : "",
                          rec->client_id ? strlen(rec->client_id) : 0);
    case SRC_PAYLOAD:
        return buf_append(out, rec->payload, rec->payload_len);
    case SRC_TEMPLATE:
        if (col->payload) /* "${payload}" renders the bytes as they are */
            return buf_append(out, rec->payload, rec->payload_len);
        {
            const struct template_input in = export_record_input(rec);
            return template_render(col->tpl, &in, out);
        }
    case SRC_TIME:
        break;
    }
    return -1;
}

/* Append one field (length, value) to c->copy. 0, PG_DECLINE (the
 * server must convert it: the batch goes the INSERT way) or -1 (out of
 * memory). */
static int pg_copy_field(struct connector *c, const struct pg_column *col, enum pg_enc enc,
                         const struct export_record *rec)
{
    struct buf *b = &c->copy;
    size_t at = b->len, from;
    int64_t v = 0;
    if (buf_reserve(b, 12) < 0)
        return -1;
    b->len += 4; /* the length, filled in below */
    from = b->len;
    switch (enc) {
    case ENC_TIMESTAMPTZ:
        if (rec->time_ms < -PG_TIME_MS_LIMIT || rec->time_ms > PG_TIME_MS_LIMIT)
            return PG_DECLINE;
        pg_put_be(b, (uint64_t)((rec->time_ms - PG_EPOCH_MS) * 1000), 8);
        break;
    case ENC_INT2:
    case ENC_INT4:
    case ENC_INT8:
        if (col->src == SRC_QOS) {
            v = rec->qos;
        } else {
            buf_reset(&c->values);
            if (pg_copy_text(col, rec, &c->values) < 0)
                return -1;
            if (!pg_decimal(c->values.data, c->values.len, enc, &v))
                return PG_DECLINE;
        }
        pg_put_be(b, (uint64_t)v, enc == ENC_INT2 ? 2 : enc == ENC_INT4 ? 4 : 8);
        break;
    case ENC_JSONB:
        buf_append_u8(b, 1); /* room reserved above */
        from = b->len;
        /* fall through */
    case ENC_TEXT:
    case ENC_JSON:
    case ENC_BYTEA: {
        if (pg_copy_text(col, rec, b) < 0)
            return -1;
        size_t len = b->len - from;
        bool raw = enc == ENC_BYTEA && (col->src == SRC_PAYLOAD || col->payload);
        if (!raw && len &&
            (memchr(b->data + from, 0, len) ||
             (enc == ENC_BYTEA && memchr(b->data + from, '\\', len))))
            return PG_DECLINE; /* text never holds a zero byte; bytea escapes */
        break;
    }
    case ENC_NONE:
        return PG_DECLINE;
    }
    if (b->len - at - 4 > INT32_MAX)
        return PG_DECLINE; /* the server refuses it anyway */
    pg_be(b->data + at, b->len - at - 4, 4);
    return 0;
}

static int pg_copy_row(struct connector *c, const struct pg_target *t, const struct pg_prepared *p,
                       const struct export_record *rec)
{
    size_t start = c->copy.len;
    int rc = pg_put_be(&c->copy, t->ncols, 2);
    for (unsigned i = 0; i < t->ncols && rc == 0; i++)
        rc = pg_copy_field(c, &t->cols[i], (enum pg_enc)p->enc[i], rec);
    if (rc != 0)
        c->copy.len = start;
    return rc;
}

/* The prepared target of a record when its rows go by COPY, else NULL. */
static struct pg_prepared *pg_copy_prepared(struct connector *c, const struct export_record *rec)
{
    const struct pg_target *t = rec->rule->compiled;
    struct pg_prepared *p = t->type == RULE_OUTBOUND ? pg_prepared_find(c, t->id) : NULL;
    return p && p->copy ? p : NULL;
}

/* The end of a COPY: its result and the NULL after it. 0 when the server
 * took the rows, else -1 with err and, when the server said why, *stale:
 * it could not read the binary values (the table changed since
 * pg_copy_plan looked at it). */
static int pg_copy_result(struct connector *c, const struct pg_target *t, bool *stale, char *err,
                          size_t errlen)
{
    struct pg_failure f = {0};
    PGresult *res = PQgetResult(c->pg), *extra;
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc < 0) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        /* invalid_binary_representation, protocol_violation */
        *stale = state && (!strcmp(state, "22P03") || !strcmp(state, "08P01"));
        pg_failure_note(c->pg, &f, 0, res);
        pg_fail(err, errlen, "table %s: COPY: %s", t->table.text, f.text);
    }
    PQclear(res);
    for (int guard = 0; guard < 8 && (extra = PQgetResult(c->pg)) != NULL; guard++)
        PQclear(extra);
    return rc;
}

/* One COPY, in the open transaction, of the rows of p's target from
 * recs[first] on, in order, marked in c->copied. 0, PG_FALLBACK or
 * CONNECTOR_RETRY (the connection is broken), with err. */
static int pg_copy_rows(struct connector *c, struct export_record *const *recs, size_t n,
                        size_t first, struct pg_prepared *p, char *err, size_t errlen)
{
    const struct pg_target *t = recs[first]->rule->compiled;
    struct buf *b = &c->copy;
    char line[256];
    bool stale = false;
    int rc = 0;
    buf_reset(b);
    if (pg_outbound_copy_sql(b, c->pg, t) != 0) {
        pg_fail(err, errlen, "table %s: out of memory", t->table.text);
        return PG_FALLBACK;
    }
    PGresult *res = PQexec(c->pg, (const char *)b->data);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        /* COPY itself is refused (the table changed since it was looked
         * at?): this connection writes the target's rows by INSERT. */
        pg_fail(err, errlen, "table %s: COPY: %s", t->table.text,
                pg_result_text(res, line, sizeof line));
        PQclear(res);
        if (PQstatus(c->pg) != CONNECTION_OK)
            return CONNECTOR_RETRY;
        log_warn("connector %s: %s; rows go by INSERT on this connection", c->name, err);
        p->copy = false;
        return PG_FALLBACK;
    }
    PQclear(res);
    buf_reset(b);
    buf_append(b, pg_copy_header, sizeof pg_copy_header); /* into the kept capacity */
    for (size_t j = first; j < n && rc == 0; j++) {
        if (recs[j]->rule->compiled != t)
            continue;
        rc = pg_copy_row(c, t, p, recs[j]);
        c->copied[j] = true;
        if (rc == 0 && b->len >= PG_COPY_CHUNK) {
            if (PQputCopyData(c->pg, (const char *)b->data, (int)b->len) != 1)
                goto broken;
            buf_reset(b);
        }
    }
    if (rc == 0 && buf_append(b, pg_copy_trailer, sizeof pg_copy_trailer) < 0)
        rc = -1;
    if (rc == 0 && PQputCopyData(c->pg, (const char *)b->data, (int)b->len) != 1)
        goto broken;
    /* A value the server must convert, or no memory: abort the COPY. */
    if (PQputCopyEnd(c->pg, rc == 0            ? NULL
                            : rc == PG_DECLINE ? "mqbridge: a value for the INSERT way"
                                               : "mqbridge: out of memory") != 1)
        goto broken;
    if (pg_copy_result(c, t, &stale, err, errlen) == 0 && rc == 0)
        return 0;
    if (PQstatus(c->pg) != CONNECTION_OK)
        return CONNECTOR_RETRY; /* err: the server's last word, or libpq's */
    if (stale) {
        log_warn("connector %s: %s; rows go by INSERT on this connection", c->name, err);
        p->copy = false;
    }
    if (rc == PG_DECLINE)
        pg_fail(err, errlen, "table %s: a value only the server can convert", t->table.text);
    else if (rc < 0)
        pg_fail(err, errlen, "table %s: out of memory", t->table.text);
    return PG_FALLBACK;
broken:
    pg_fail(err, errlen, "table %s: COPY: %s", t->table.text,
            pg_first_line(PQerrorMessage(c->pg), line, sizeof line));
    return CONNECTOR_RETRY;
}

/* A statement outside pipeline mode that must say `tag` ("BEGIN",
 * "COMMIT": a COMMIT of a failed transaction says "ROLLBACK"). */
static int pg_exec_tag(struct connector *c, const char *sql, const char *tag, char *err,
                       size_t errlen)
{
    char line[256];
    PGresult *res = PQexec(c->pg, sql);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK && !strcmp(PQcmdStatus(res), tag) ? 0 : -1;
    if (rc < 0)
        pg_fail(err, errlen, "%s: %s", sql,
                PQresultStatus(res) == PGRES_COMMAND_OK ? PQcmdStatus(res)
                                                        : pg_result_text(res, line, sizeof line));
    PQclear(res);
    return rc;
}

/* The COPY way for recs[0..n) (see the top of the file): one transaction,
 * one COPY per COPY target in the order they first appear, each with its
 * rows in batch order, the other records pipelined, COMMIT. CONNECTOR_OK
 * when committed; CONNECTOR_RETRY when the connection broke (closed);
 * PG_FALLBACK when nothing was committed and the connection is fine (no
 * COPY target in the batch, a repeat, a refused row, a value for the
 * server to convert). */
static int pg_copy_transaction(struct connector *c, struct export_record *const *recs, size_t n,
                               char *err, size_t errlen)
{
    char why[512];
    size_t copies = 0, bad = 0;
    int rc = PG_FALLBACK;
    if (n > c->capcopied) {
        bool *p = realloc(c->copied, n * sizeof *p);
        if (!p)
            return PG_FALLBACK;
        c->copied = p;
        c->capcopied = n;
    }
    memset(c->copied, 0, n * sizeof *c->copied);
    for (size_t i = 0; i < n; i++)
        copies += pg_copy_prepared(c, recs[i]) != NULL;
    if (copies == 0)
        return PG_FALLBACK;
    if (pg_exec_tag(c, "BEGIN", "BEGIN", err, errlen) < 0)
        goto failed;
    for (size_t i = 0; i < n; i++) {
        struct pg_prepared *p = c->copied[i] ? NULL : pg_copy_prepared(c, recs[i]);
        if (p && (rc = pg_copy_rows(c, recs, n, i, p, err, errlen)) != 0)
            goto failed;
    }
    if (copies < n) {
        rc = pg_pipeline(c, recs, n, c->copied, &bad, err, errlen);
        return rc == CONNECTOR_OK || !c->pg ? rc : PG_FALLBACK; /* !c->pg: closed, RETRY */
    }
    if (pg_exec_tag(c, "COMMIT", "COMMIT", err, errlen) == 0 &&
        PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        return CONNECTOR_OK;
failed:
    if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        PQclear(PQexec(c->pg, "ROLLBACK"));
    if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
        log_debug("connector %s: %s: the batch goes the INSERT way", c->name, err);
        return PG_FALLBACK;
    }
    snprintf(why, sizeof why, "%s", err);
    pg_fail(err, errlen, "%s: %s", c->display, why);
    pg_close(c);
    return CONNECTOR_RETRY;
}

/* ---- Export -------------------------------------------------------------- */

/* recs[0..n): prepare their targets, then one transaction; after a refused
 * row, the rows before it go again in a new transaction. */
static int pg_export(struct connector *c, struct export_record *const *recs, size_t n,
                     size_t *acked, char *err, size_t errlen)
{
    char prep_err[320] = "", reject_err[512] = "";
    size_t ready = 0, lim, bad = 0;
    bool mismatch = false, copy;
    *acked = 0;
    if (!c->pg || PQstatus(c->pg) != CONNECTION_OK) {
        pg_fail(err, errlen, "%s: not connected", c->display);
        return CONNECTOR_RETRY;
    }
    pg_cache_trim(c);
    for (; ready < n; ready++) {
        const struct pg_target *t = recs[ready]->rule ? recs[ready]->rule->compiled : NULL;
        if (!t || t->type == RULE_INBOUND ||
            (t->type == RULE_STATUS) != (recs[ready]->kind == RECORD_STATUS)) {
            snprintf(prep_err, sizeof prep_err, "record kind does not match its rule");
            mismatch = true; /* this record can never be written: refuse it */
            break;
        }
        if (pg_target_ready(c, t, prep_err, sizeof prep_err) < 0)
            break;
    }
    /* The COPY way first; after a refused row the INSERT way finds it, and
     * runs the rows before it again. */
    for (lim = ready, copy = true; lim > 0; copy = false) {
        int rc = copy ? pg_copy_transaction(c, recs, lim, err, errlen) : PG_FALLBACK;
        if (rc == PG_FALLBACK)
            rc = pg_pipeline(c, recs, lim, NULL, &bad, err, errlen);
        if (rc == CONNECTOR_OK)
            break;
        if (rc == CONNECTOR_RETRY)
            return CONNECTOR_RETRY;
        snprintf(reject_err, sizeof reject_err, "%s", err);
        lim = bad;
    }
    *acked = lim;
    if (reject_err[0] || mismatch) {
        pg_fail(err, errlen, "%s", reject_err[0] ? reject_err : prep_err);
        return CONNECTOR_REJECT;
    }
    if (ready < n) {
        pg_fail(err, errlen, "%s", prep_err);
        return CONNECTOR_RETRY;
    }
    return CONNECTOR_OK;
}

/* ---- Inbound: the outbox source -------------------------------------------
 * An inbound rule reads an outbox table that applications fill in their own
 * transactions (the transactional-outbox pattern). One fetch is one
 * transaction: the oldest rows by id, locked FOR UPDATE SKIP LOCKED (so a
 * second mqbridge on the same table takes other rows), kept locked while
 * the engine publishes them; the acknowledgement deletes them (and copies
 * the skipped ones into the dead-letter table) and commits. A crash or a
 * lost connection before that COMMIT rolls the transaction back: the rows
 * are there again and come again (at least once, never skipped). Rows are
 * deleted, not passed by a cursor, so a producer that commits a smaller id
 * late is still read, later.
 *   rows 1 2 3, fetch(max 2)     -> 1 2 (locked);  another source: 3
 *   ack(1 PUBLISHED, 2 SKIPPED)  -> 1 2 deleted, 2 also in the dead letters
 *   fetch -> 4 5, crash          -> 4 5 unlocked; the next fetch: 4 5
 * Waiting: the source LISTENs on the channel a trigger notifies on insert,
 * and looks at least every poll_ms anyway (a notification is lost while
 * the connection is down, or when the table has no trigger). */

/* Statement names on the source's own connection. */
#define PG_SRC_SELECT "mqb_src_select"
#define PG_SRC_DELETE "mqb_src_delete"
#define PG_SRC_DEAD "mqb_src_dead"
#define PG_SRC_COUNT "mqb_src_count"
/* Serialises table and trigger creation by all mqbridges of a database. */
#define PG_SRC_CREATE_LOCK "7237104733626905"

struct source {
    struct connector *c;       /* settings and name; outlives the source */
    const struct pg_target *t; /* the rule's outbox (type RULE_INBOUND) */
    PGconn *pg;                /* NULL once the connection broke */
    bool in_tx;                /* the last fetch's rows are locked until the ack */
    bool idle;                 /* the last look, at idle_at_ms, found no rows */
    bool notified;             /* a NOTIFY came since the last look */
    int64_t idle_at_ms;
    struct buf ids; /* "{1,2,...}": the ids of one ack */
};

static int64_t pg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A statement without results that matter; 0 or -1 with err. */
static int pg_exec(PGconn *pg, const char *sql, int n, const char *const *params, char *err,
                   size_t errlen)
{
    char line[256];
    PGresult *res = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
    if (rc < 0)
        pg_fail(err, errlen, "%s: %s", sql, pg_result_text(res, line, sizeof line));
    PQclear(res);
    return rc;
}

/* ---- Outbox SQL text ---- */

static int pg_outbox_create_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "CREATE TABLE IF NOT EXISTS ") || pg_sql_table(b, pg, &t->table) ||
           pg_sql(b, " (id BIGSERIAL PRIMARY KEY, topic TEXT, qos SMALLINT, client_id TEXT, "
                     "payload BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())") ||
           pg_sql_end(b);
}

/* The outbox's columns, then why and when. No key: outbox ids start again
 * when the outbox is made anew, and a dead letter must never be refused. */
static int pg_dead_create_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "CREATE TABLE IF NOT EXISTS ") || pg_sql_table(b, pg, &t->dead) ||
           pg_sql(b, " (id BIGINT NOT NULL, topic TEXT, qos SMALLINT, client_id TEXT, "
                     "payload BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL, reason TEXT, "
                     "failed_at TIMESTAMPTZ NOT NULL DEFAULT now())") ||
           pg_sql_end(b);
}

/* "[schema.]mqbridge_outbox_notify": next to the outbox. */
static int pg_sql_notify_fn(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    if (t->table.schema && (pg_sql_ident(b, pg, t->table.schema) || pg_sql(b, ".")))
        return -1;
    return pg_sql(b, "mqbridge_outbox_notify");
}

/* One function for every outbox: the channel is the trigger's argument. */
static int pg_notify_fn_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "CREATE OR REPLACE FUNCTION ") || pg_sql_notify_fn(b, pg, t) ||
           pg_sql(b, "() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END$$") ||
           pg_sql_end(b);
}

static int pg_notify_drop_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "DROP TRIGGER IF EXISTS mqbridge_notify ON ") ||
           pg_sql_table(b, pg, &t->table) || pg_sql_end(b);
}

/* CREATE OR REPLACE TRIGGER needs PostgreSQL 14 (older: drop, create). The
 * channel is a checked identifier, quoted as a literal. */
static int pg_notify_trigger_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    char *channel = PQescapeLiteral(pg, t->channel, strlen(t->channel));
    if (!channel)
        return -1;
    int rc =
        pg_sql(b, PQserverVersion(pg) >= 140000 ? "CREATE OR REPLACE TRIGGER" : "CREATE TRIGGER") ||
        pg_sql(b, " mqbridge_notify AFTER INSERT ON ") || pg_sql_table(b, pg, &t->table) ||
        pg_sql(b, " FOR EACH STATEMENT EXECUTE FUNCTION ") || pg_sql_notify_fn(b, pg, t) ||
        pg_sql(b, "(") || pg_sql(b, channel) || pg_sql(b, ")") || pg_sql_end(b);
    PQfreemem(channel);
    return rc;
}

static int pg_listen_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "LISTEN ") || pg_sql_ident(b, pg, t->channel) || pg_sql_end(b);
}

/* The casts accept an owner's int/varchar columns; the alias keeps
 * ORDER BY on the column (and its index), not on the cast. */
static int pg_outbox_select_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "SELECT o.id::bigint, o.topic::text, o.qos::text, o.client_id::text, "
                     "o.payload FROM ") ||
           pg_sql_table(b, pg, &t->table) ||
           pg_sql(b, " AS o ORDER BY o.id LIMIT $1 FOR UPDATE SKIP LOCKED") || pg_sql_end(b);
}

static int pg_outbox_delete_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "DELETE FROM ") || pg_sql_table(b, pg, &t->table) ||
           pg_sql(b, " WHERE id = ANY($1::bigint[])") || pg_sql_end(b);
}

/* The row as stored (it is locked: nobody changed it), with the reason. */
static int pg_dead_insert_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "INSERT INTO ") || pg_sql_table(b, pg, &t->dead) ||
           pg_sql(b, " (id, topic, qos, client_id, payload, created_at, reason, failed_at) "
                     "SELECT id, topic, qos, client_id, payload, created_at, $2, now() FROM ") ||
           pg_sql_table(b, pg, &t->table) || pg_sql(b, " WHERE id = $1::bigint") || pg_sql_end(b);
}

static int pg_outbox_count_sql(struct buf *b, PGconn *pg, const struct pg_target *t)
{
    return pg_sql(b, "SELECT count(*) FROM ") || pg_sql_table(b, pg, &t->table) || pg_sql_end(b);
}

/* ---- Opening ---- */

/* create_table: the tables, the function and the trigger, in one
 * transaction under an advisory lock (two mqbridges starting at once would
 * otherwise collide on CREATE ... IF NOT EXISTS). */
static int pg_outbox_create(PGconn *pg, const struct pg_target *t, char *err, size_t errlen)
{
    const char *lock[1] = {PG_SRC_CREATE_LOCK};
    bool drop_first = PQserverVersion(pg) < 140000;
    if (pg_exec(pg, "BEGIN", 0, NULL, err, errlen) < 0)
        return -1;
    if (pg_exec(pg, "SELECT pg_advisory_xact_lock($1::bigint)", 1, lock, err, errlen) < 0 ||
        pg_build_run(pg, t, pg_outbox_create_sql, NULL, err, errlen) < 0 ||
        (t->dead.table && pg_build_run(pg, t, pg_dead_create_sql, NULL, err, errlen) < 0) ||
        pg_build_run(pg, t, pg_notify_fn_sql, NULL, err, errlen) < 0 ||
        (drop_first && pg_build_run(pg, t, pg_notify_drop_sql, NULL, err, errlen) < 0) ||
        pg_build_run(pg, t, pg_notify_trigger_sql, NULL, err, errlen) < 0 ||
        pg_exec(pg, "COMMIT", 0, NULL, err, errlen) < 0) {
        PQclear(PQexec(pg, "ROLLBACK"));
        return -1;
    }
    return 0;
}

/* The statements of fetch, ack and lag; the payload column must come back
 * as its bytes (binary bytea or text). */
static int pg_source_prepare(struct source *s, char *err, size_t errlen)
{
    const struct pg_target *t = s->t;
    if (pg_build_run(s->pg, t, pg_outbox_select_sql, PG_SRC_SELECT, err, errlen) < 0 ||
        pg_build_run(s->pg, t, pg_outbox_delete_sql, PG_SRC_DELETE, err, errlen) < 0 ||
        pg_build_run(s->pg, t, pg_outbox_count_sql, PG_SRC_COUNT, err, errlen) < 0 ||
        (t->dead.table && pg_build_run(s->pg, t, pg_dead_insert_sql, PG_SRC_DEAD, err, errlen) < 0))
        return -1;
    PGresult *res = PQdescribePrepared(s->pg, PG_SRC_SELECT);
    Oid type = PQresultStatus(res) == PGRES_COMMAND_OK && PQnfields(res) == 5 ? PQftype(res, 4) : 0;
    PQclear(res);
    if (type == PG_BYTEA || type == PG_TEXT || type == PG_VARCHAR || type == PG_BPCHAR)
        return 0;
    return pg_fail(err, errlen, "table %s: column payload must be bytea or text (type oid %u)",
                   t->table.text, (unsigned)type);
}

static void pg_source_close(struct source *s)
{
    if (!s)
        return;
    if (s->pg)
        PQfinish(s->pg); /* an open batch rolls back: its rows come again */
    buf_free(&s->ids);
    free(s);
}

/* Own connection (the sink's is another thread's), tables if asked,
 * LISTEN, statements. */
static int pg_source_open(struct connector *c, const struct rule *r, struct source **out, char *err,
                          size_t errlen)
{
    const struct pg_target *t = r->compiled;
    if (!t || t->type != RULE_INBOUND) {
        pg_fail(err, errlen, "rule '%s' is not an inbound rule of connector %s", r->name, c->name);
        return CONNECTOR_RETRY;
    }
    struct source *s = calloc(1, sizeof *s);
    if (!s) {
        pg_fail(err, errlen, "out of memory");
        return CONNECTOR_RETRY;
    }
    s->c = c;
    s->t = t;
    if (!(s->pg = pg_connect(c, err, errlen)) ||
        (t->create_table && pg_outbox_create(s->pg, t, err, errlen) < 0) ||
        pg_build_run(s->pg, t, pg_listen_sql, NULL, err, errlen) < 0 ||
        pg_source_prepare(s, err, errlen) < 0) {
        pg_source_close(s);
        return CONNECTOR_RETRY;
    }
    log_info("connector %s: rule %s: reading table %s on %s (LISTEN %s, poll every %u ms)", c->name,
             r->name, t->table.text, c->display, t->channel, t->poll_ms);
    *out = s;
    return 0;
}

/* ---- Fetching ---- */

/* After a failure: roll back what can be, or drop the connection (the
 * server rolls back then). Either way the rows are free again. */
static void pg_source_abort(struct source *s)
{
    s->in_tx = false;
    if (!s->pg)
        return;
    PGTransactionStatusType ts = PQtransactionStatus(s->pg);
    if (PQstatus(s->pg) == CONNECTION_OK && PQpipelineStatus(s->pg) == PQ_PIPELINE_OFF &&
        ts != PQTRANS_ACTIVE && ts != PQTRANS_UNKNOWN) {
        if (ts == PQTRANS_IDLE)
            return;
        PGresult *res = PQexec(s->pg, "ROLLBACK");
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (ok)
            return;
    }
    PQfinish(s->pg);
    s->pg = NULL;
}

/* Read what arrived; note notifications. -1 with err when the connection
 * broke. */
static int pg_source_drain(struct source *s, char *err, size_t errlen)
{
    char line[256];
    PGnotify *nf;
    if (!PQconsumeInput(s->pg) || PQstatus(s->pg) != CONNECTION_OK)
        return pg_fail(err, errlen, "%s: %s", s->c->display,
                       pg_first_line(PQerrorMessage(s->pg), line, sizeof line));
    while ((nf = PQnotifies(s->pg)) != NULL) {
        s->notified = true;
        PQfreemem(nf);
    }
    return 0;
}

/* Wait up to ms for a notification on the socket. */
static int pg_source_wait(struct source *s, int64_t ms, char *err, size_t errlen)
{
    int64_t until = pg_now_ms() + ms;
    while (!s->notified) {
        int64_t left = until - pg_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = PQsocket(s->pg), .events = POLLIN};
        if (p.fd < 0)
            return pg_fail(err, errlen, "%s: no connection", s->c->display);
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno != EINTR)
            return pg_fail(err, errlen, "%s: poll: %s", s->c->display, strerror(errno));
        if (rc > 0 && pg_source_drain(s, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static const char *pg_value(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* Binary rows (int8, text, text, text, bytes) into records; all or none.
 * Text values hold no zero byte (PostgreSQL text cannot) and libpq ends
 * every value with one. */
static int pg_source_records(struct source *s, const PGresult *res, struct import_record **recs,
                             size_t *n, char *err, size_t errlen)
{
    for (int i = 0; i < PQntuples(res); i++) {
        const uint8_t *v = (const uint8_t *)PQgetvalue(res, i, 0);
        uint64_t id = 0;
        char text[24];
        if (PQgetisnull(res, i, 0) || PQgetlength(res, i, 0) != 8) {
            pg_fail(err, errlen, "table %s: a row without an id", s->t->table.text);
            goto fail;
        }
        for (int k = 0; k < 8; k++)
            id = id << 8 | v[k];
        snprintf(text, sizeof text, "%" PRId64, (int64_t)id);
        struct import_record *rec =
            import_record_new(text, pg_value(res, i, 1), pg_value(res, i, 2), pg_value(res, i, 3),
                              PQgetvalue(res, i, 4), (uint32_t)PQgetlength(res, i, 4));
        if (!rec) {
            pg_fail(err, errlen, "out of memory");
            goto fail;
        }
        rec->offset = (int64_t)id;
        recs[(*n)++] = rec;
    }
    return 0;
fail:
    while (*n)
        import_record_free(recs[--*n]);
    return -1;
}

/* One look: BEGIN and the locking SELECT. Rows: records, the transaction
 * stays open (their locks) until the ack; none: COMMIT, notifications can
 * come (they are only delivered outside a transaction). */
static int pg_source_look(struct source *s, struct import_record **recs, size_t max, size_t *n,
                          char *err, size_t errlen)
{
    char limit[24], line[256];
    snprintf(limit, sizeof limit, "%zu", max < INT_MAX ? max : (size_t)INT_MAX);
    const char *params[1] = {limit};
    s->notified = false;
    if (pg_exec(s->pg, "BEGIN", 0, NULL, err, errlen) < 0)
        return -1;
    s->in_tx = true;
    PGresult *res = PQexecPrepared(s->pg, PG_SRC_SELECT, 1, params, NULL, NULL, 1);
    int rc = PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 5 ? 0 : -1;
    if (rc < 0)
        pg_fail(err, errlen, "%s: table %s: %s", s->c->display, s->t->table.text,
                pg_result_text(res, line, sizeof line));
    else
        rc = pg_source_records(s, res, recs, n, err, errlen);
    PQclear(res);
    s->idle = rc == 0 && *n == 0;
    if (!s->idle)
        return rc;
    s->idle_at_ms = pg_now_ms();
    if (pg_exec(s->pg, "COMMIT", 0, NULL, err, errlen) < 0)
        return -1;
    s->in_tx = false;
    return 0;
}

/* Look now if notified, busy, or poll_ms after the last empty look; else
 * wait for a notification until then, up to the deadline. */
static int pg_source_fetch(struct source *s, struct import_record **recs, size_t max, size_t *n,
                           int timeout_ms, char *err, size_t errlen)
{
    *n = 0;
    if (s->in_tx)
        pg_source_abort(s); /* never acknowledged: those rows come again */
    if (!s->pg) {
        pg_fail(err, errlen, "%s: not connected", s->c->display);
        return CONNECTOR_RETRY;
    }
    int64_t now = pg_now_ms(), deadline = now + (timeout_ms > 0 ? timeout_ms : 0);
    while (max > 0) {
        if (pg_source_drain(s, err, errlen) < 0)
            goto fail;
        if (s->notified || !s->idle || now - s->idle_at_ms >= s->t->poll_ms) {
            if (pg_source_look(s, recs, max, n, err, errlen) < 0)
                goto fail;
            if (*n)
                return CONNECTOR_OK;
            now = pg_now_ms();
        }
        if (now >= deadline)
            break;
        int64_t next = s->idle_at_ms + s->t->poll_ms;
        if (pg_source_wait(s, (next < deadline ? next : deadline) - now, err, errlen) < 0)
            goto fail;
        now = pg_now_ms();
    }
    return CONNECTOR_OK;
fail:
    pg_source_abort(s);
    return CONNECTOR_RETRY;
}

/* ---- Acknowledging ---- */

/* "{1,2,3}" of recs into s->ids; *skipped: how many were SKIPPED. A
 * record neither published nor skipped cannot be acknowledged. */
static int pg_source_ids(struct source *s, struct import_record *const *recs, size_t n,
                         size_t *skipped, char *err, size_t errlen)
{
    char num[24];
    buf_reset(&s->ids);
    *skipped = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i]->outcome != IMPORT_PUBLISHED && recs[i]->outcome != IMPORT_SKIPPED)
            return pg_fail(err, errlen,
                           "table %s: row %" PRId64 " was neither published nor "
                           "skipped",
                           s->t->table.text, recs[i]->offset);
        *skipped += recs[i]->outcome == IMPORT_SKIPPED;
        int len = snprintf(num, sizeof num, "%s%" PRId64, i ? "," : "{", recs[i]->offset);
        if (buf_append(&s->ids, num, (size_t)len) < 0)
            return pg_fail(err, errlen, "out of memory");
    }
    if (pg_sql(&s->ids, "}") || pg_sql_end(&s->ids))
        return pg_fail(err, errlen, "out of memory");
    return 0;
}

/* The reason as printable ASCII: the engine's text may quote row data cut
 * inside a character, and a value the server refuses would hold the batch
 * back for ever. */
static void pg_reason_text(const struct import_record *rec, char *out, size_t len)
{
    size_t k = 0;
    for (; k + 1 < len && k < sizeof rec->reason && rec->reason[k]; k++)
        out[k] = rec->reason[k] >= 0x20 && rec->reason[k] < 0x7f ? rec->reason[k] : '?';
    out[k] = '\0';
}

/* One skipped row into the dead letters (pipeline mode). */
static bool pg_source_send_dead(struct source *s, const struct import_record *rec)
{
    char id[24], reason[sizeof rec->reason + 1];
    snprintf(id, sizeof id, "%" PRId64, rec->offset);
    pg_reason_text(rec, reason, sizeof reason);
    const char *params[2] = {id, reason[0] ? reason : NULL};
    return PQsendQueryPrepared(s->pg, PG_SRC_DEAD, 2, params, NULL, NULL, 0) == 1;
}

/* In the fetch's transaction, one round trip: dead letters, DELETE,
 * COMMIT. Acknowledged only once the COMMIT succeeded. */
static int pg_source_ack(struct source *s, struct import_record *const *recs, size_t n, char *err,
                         size_t errlen)
{
    struct pg_failure f = {0};
    size_t skipped = 0;
    unsigned nq = 2;
    if (n == 0)
        return CONNECTOR_OK;
    if (!s->pg || !s->in_tx) {
        pg_fail(err, errlen, "%s: table %s: no fetched batch is open (its rows come again)",
                s->c->display, s->t->table.text);
        goto fail;
    }
    if (pg_source_ids(s, recs, n, &skipped, err, errlen) < 0)
        goto fail;
    const char *params[1] = {(const char *)s->ids.data};
    if (!PQenterPipelineMode(s->pg))
        goto broken;
    for (size_t i = 0; s->t->dead.table && skipped && i < n; i++) {
        if (recs[i]->outcome != IMPORT_SKIPPED)
            continue;
        if (!pg_source_send_dead(s, recs[i]))
            goto broken;
        nq++;
    }
    if (!PQsendQueryPrepared(s->pg, PG_SRC_DELETE, 1, params, NULL, NULL, 0) ||
        !pg_send_simple(s->pg, "COMMIT") || !PQpipelineSync(s->pg) ||
        pg_read_results(s->pg, nq, &f) < 0 || !PQexitPipelineMode(s->pg))
        goto broken;
    if (f.seen || PQtransactionStatus(s->pg) != PQTRANS_IDLE) {
        pg_fail(err, errlen, "%s: table %s: %s", s->c->display, s->t->table.text,
                f.seen ? f.text : "the transaction did not commit");
        goto fail;
    }
    s->in_tx = false;
    s->idle = false;
    return CONNECTOR_OK;
broken:
    pg_fail(err, errlen, "%s: %s", s->c->display,
            f.seen ? f.text : pg_first_line(PQerrorMessage(s->pg), f.text, sizeof f.text));
fail:
    pg_source_abort(s);
    return CONNECTOR_RETRY;
}

/* Rows waiting, locked ones included: one count(*) (an index-only or
 * sequential scan; the engine asks every 5 s). -1 when unknown. */
static int64_t pg_source_lag(struct source *s)
{
    if (!s->pg || s->in_tx)
        return -1;
    PGresult *res = PQexecPrepared(s->pg, PG_SRC_COUNT, 0, NULL, NULL, NULL, 0);
    int64_t lag = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                      ? strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                      : -1;
    PQclear(res);
    return lag;
}

const struct connector_ops postgres_connector = {
    .type = "postgres",
    .settings = pg_settings,
    .create = pg_create,
    .destroy = pg_destroy,
    .compile = pg_compile,
    .release = pg_release,
    .open = pg_open,
    .close = pg_close,
    .export = pg_export,
    .source_open = pg_source_open,
    .source_close = pg_source_close,
    .source_fetch = pg_source_fetch,
    .source_ack = pg_source_ack,
    .source_lag = pg_source_lag,
};
