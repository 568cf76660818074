/* The embedded store: persistence across reopen, cascades, ordering,
 * binary payloads, load aborts, grouped commits and open failures. Each
 * test works in its own mkdtemp directory, removed afterwards. */
#include <stddef.h> /* store.h needs size_t */

#include "../../broker/store.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"

static char dir[256];
static char path[300];

/* Under $TMPDIR when set, so the throughput test can be pointed at a disk. */
static void dir_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/mqb_store_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/store.db", dir);
}

/* The directory is flat: store.db, its -wal and -shm, test files. */
static void dir_teardown(void)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    char file[600];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(file, sizeof file, "%s/%s", dir, e->d_name);
        unlink(file);
    }
    closedir(d);
    ck_assert_int_eq(rmdir(dir), 0);
}

/* ---- helpers ------------------------------------------------------------ */

static struct store *open_ok(enum store_sync sync)
{
    char err[1024] = "";
    struct store *st = NULL;
    ck_assert_msg(store_open(path, sync, &st, err, sizeof err) == 0, "store_open: %s", err);
    ck_assert_ptr_nonnull(st);
    return st;
}

static struct message *msg_make(const char *topic, const void *payload, uint32_t len, uint8_t qos,
                                bool retain, uint64_t id, int64_t time_ms)
{
    struct message *m = message_new(topic, (uint16_t)strlen(topic), payload, len, qos, retain);
    ck_assert_ptr_nonnull(m);
    m->id = id;
    m->time_ms = time_ms;
    return m;
}

static void out_put_ok(struct store *st, const char *client, uint64_t seq, const char *topic,
                       const char *payload, uint8_t qos, uint16_t packet_id, uint8_t state)
{
    struct message *m = msg_make(topic, payload, (uint32_t)strlen(payload), qos, false, seq, 1000);
    ck_assert_int_eq(store_out_put(st, client, seq, m, qos, packet_id, state, false), 0);
    message_unref(m);
}

static void retain_put_ok(struct store *st, const char *topic, const char *payload, uint8_t qos,
                          uint64_t id)
{
    struct message *m = msg_make(topic, payload, (uint32_t)strlen(payload), qos, true, id, 2000);
    ck_assert_int_eq(store_retain_put(st, m), 0);
    message_unref(m);
}

/* Reads one integer through a second, independent connection. */
static int64_t peer_query(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

static void peer_exec(const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                     SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "?");
    sqlite3_close(db);
}

/* ---- a loader that records what it is given as text --------------------- */

struct rec {
    char text[8192];
    size_t len;
    int calls;
    int stop_at; /* the callback of this call number returns 1; 0 = never */
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int
rec_add(struct rec *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->text + r->len, sizeof r->text - r->len, fmt, ap);
    va_end(ap);
    ck_assert(n > 0 && (size_t)n < sizeof r->text - r->len);
    r->len += (size_t)n;
    return ++r->calls == r->stop_at;
}

/* Appends "topic q=1 r=0 id=5 t=1000 p=6869" and drops the message, which
 * must come with refcount 1. */
static void rec_message(struct rec *r, struct message *m)
{
    ck_assert_uint_eq(m->refcount, 1);
    ck_assert_uint_eq(strlen(m->topic), m->topic_len);
    size_t n = (size_t)snprintf(r->text + r->len, sizeof r->text - r->len,
                                "%s q=%u r=%d id=%llu t=%lld p=", m->topic, m->qos, m->retain,
                                (unsigned long long)m->id, (long long)m->time_ms);
    r->len += n;
    for (uint32_t i = 0; i < m->payload_len && r->len + 3 < sizeof r->text; i++)
        r->len += (size_t)snprintf(r->text + r->len, 3, "%02x", m->payload[i]);
    message_unref(m);
}

static int rec_session(void *ctx, const char *client_id, int64_t last_seen_ms)
{
    return rec_add(ctx, "session %s %lld\n", client_id, (long long)last_seen_ms);
}

static int rec_sub(void *ctx, const char *client_id, const char *filter, uint8_t qos)
{
    return rec_add(ctx, "sub %s %s %u\n", client_id, filter, qos);
}

static int rec_out(void *ctx, const char *client_id, uint64_t seq, struct message *m, uint8_t qos,
                   uint16_t packet_id, uint8_t state, bool retain)
{
    struct rec *r = ctx;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len,
                               "out %s %llu q=%u pid=%u st=%u r=%d | ", client_id,
                               (unsigned long long)seq, qos, packet_id, state, retain);
    rec_message(r, m);
    return rec_add(r, "\n");
}

static int rec_qos2(void *ctx, const char *client_id, uint16_t packet_id)
{
    return rec_add(ctx, "qos2 %s %u\n", client_id, packet_id);
}

static int rec_retain(void *ctx, struct message *m)
{
    struct rec *r = ctx;
    r->len += (size_t)snprintf(r->text + r->len, sizeof r->text - r->len, "retain ");
    rec_message(r, m);
    return rec_add(r, "\n");
}

static const struct store_loader rec_loader = {
    .session = rec_session,
    .sub = rec_sub,
    .out = rec_out,
    .qos2 = rec_qos2,
    .retain = rec_retain,
};

/* Reopens the file and returns everything store_load reports. */
static const char *reload(struct store **st, struct rec *r)
{
    store_close(*st);
    *st = open_ok(STORE_SYNC_NORMAL);
    memset(r, 0, sizeof *r);
    ck_assert_int_eq(store_load(*st, &rec_loader, r), 0);
    return r->text;
}

/* Two clients with one row in every table, plus two retained messages. */
static void fill_two_clients(struct store *st)
{
    ck_assert_int_eq(store_session_put(st, "b", 200), 0);
    ck_assert_int_eq(store_session_put(st, "a", 100), 0);
    ck_assert_int_eq(store_sub_put(st, "a", "x/#", 1), 0);
    ck_assert_int_eq(store_sub_put(st, "b", "y/+", 2), 0);
    out_put_ok(st, "a", 1, "x/1", "hi", 1, 10, 1);
    out_put_ok(st, "b", 1, "y/1", "yo", 2, 11, 2);
    ck_assert_int_eq(store_qos2_put(st, "a", 7), 0);
    ck_assert_int_eq(store_qos2_put(st, "b", 8), 0);
    retain_put_ok(st, "r/1", "one", 1, 50);
    retain_put_ok(st, "r/2", "two", 0, 51);
}

static const char two_clients_text[] =
    "session a 100\n"
    "session b 200\n"
    "sub a x/# 1\n"
    "sub b y/+ 2\n"
    "out a 1 q=1 pid=10 st=1 r=0 | x/1 q=1 r=0 id=1 t=1000 p=6869\n"
    "out b 1 q=2 pid=11 st=2 r=0 | y/1 q=2 r=0 id=1 t=1000 p=796f\n"
    "qos2 a 7\n"
    "qos2 b 8\n"
    "retain r/1 q=1 r=1 id=50 t=2000 p=6f6e65\n"
    "retain r/2 q=0 r=1 id=51 t=2000 p=74776f\n";

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_reopen_keeps_every_table)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    fill_two_clients(st);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_str_eq(reload(&st, &r), two_clients_text);
    /* A second reopen (schema already there) changes nothing. */
    ck_assert_str_eq(reload(&st, &r), two_clients_text);
    store_close(st);
}
END_TEST

START_TEST(test_session_del_cascades_one_client)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    fill_two_clients(st);
    out_put_ok(st, "a", 2, "x/2", "", 1, 0, 0);
    ck_assert_int_eq(store_session_del(st, "a"), 0);
    ck_assert_int_eq(store_session_del(st, "nobody"), 0);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_str_eq(reload(&st, &r),
                     "session b 200\n"
                     "sub b y/+ 2\n"
                     "out b 1 q=2 pid=11 st=2 r=0 | y/1 q=2 r=0 id=1 t=1000 p=796f\n"
                     "qos2 b 8\n"
                     "retain r/1 q=1 r=1 id=50 t=2000 p=6f6e65\n"
                     "retain r/2 q=0 r=1 id=51 t=2000 p=74776f\n");
    store_close(st);
}
END_TEST

START_TEST(test_out_order_update_del)
{
    const uint64_t big = 1ULL << 33;
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    out_put_ok(st, "b", 3, "t", "", 1, 0, 0);
    out_put_ok(st, "a", big + 2, "t", "", 1, 0, 0);
    out_put_ok(st, "a", 1ULL << 40, "t", "", 1, 0, 0);
    out_put_ok(st, "a", big, "t", "", 1, 0, 0);
    out_put_ok(st, "a", 5, "t", "", 1, 0, 0);
    out_put_ok(st, "a", UINT32_MAX, "t", "", 1, 0, 0);
    ck_assert_int_eq(store_out_update(st, "a", big, 65535, 3), 0);
    ck_assert_int_eq(store_out_del(st, "a", 5), 0);
    ck_assert_int_eq(store_out_del(st, "a", 6), 0); /* absent: not an error */
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_str_eq(reload(&st, &r),
                     "out a 4294967295 q=1 pid=0 st=0 r=0 | t q=1 r=0 id=4294967295 t=1000 p=\n"
                     "out a 8589934592 q=1 pid=65535 st=3 r=0 | t q=1 r=0 id=8589934592 t=1000 p=\n"
                     "out a 8589934594 q=1 pid=0 st=0 r=0 | t q=1 r=0 id=8589934594 t=1000 p=\n"
                     "out a 1099511627776 q=1 pid=0 st=0 r=0 | t q=1 r=0 id=1099511627776 "
                     "t=1000 p=\n"
                     "out b 3 q=1 pid=0 st=0 r=0 | t q=1 r=0 id=3 t=1000 p=\n");
    store_close(st);
}
END_TEST

/* The message's own fields (qos, retain, id, time) are kept apart from the
 * delivery's (qos, retain flag to send). */
START_TEST(test_out_message_fields_round_trip)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    struct message *m = msg_make("m/1", "\x01", 1, 2, true, UINT64_MAX, -5);
    ck_assert_int_eq(store_out_put(st, "c", 9, m, 1, 42, 1, true), 0);
    message_unref(m);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_str_eq(reload(&st, &r), "out c 9 q=1 pid=42 st=1 r=1 | "
                                      "m/1 q=2 r=1 id=18446744073709551615 t=-5 p=01\n");
    store_close(st);
}
END_TEST

/* Payloads kept by the collecting loader below, compared byte for byte. */
static const struct {
    const char *name;
    const char *bytes;
    uint32_t len;
} payloads[] = {
    {"empty", "", 0},
    {"one zero byte", "\0", 1},
    {"zeros inside", "a\0b\0\0c", 6},
    {"high bytes", "\xff\xfe\x00\x80", 4},
    {"large (64 KiB of 0x00)", NULL, 65536},
};
#define N_PAYLOADS (sizeof payloads / sizeof payloads[0])

struct collected {
    struct message *out[N_PAYLOADS];
    struct message *retained[N_PAYLOADS];
};

static int collect_out(void *ctx, const char *client_id, uint64_t seq, struct message *m,
                       uint8_t qos, uint16_t packet_id, uint8_t state, bool retain)
{
    struct collected *c = ctx;
    ck_assert_uint_lt(seq, N_PAYLOADS);
    c->out[seq] = m;
    return 0;
}

static int collect_retain(void *ctx, struct message *m)
{
    struct collected *c = ctx;
    unsigned i = (unsigned)atoi(m->topic + 2); /* "p/<i>" */
    ck_assert_uint_lt(i, N_PAYLOADS);
    c->retained[i] = m;
    return 0;
}

static void payload_expect(const struct message *m, size_t i, const uint8_t *want)
{
    ck_assert_msg(m != NULL, "%s: not loaded", payloads[i].name);
    ck_assert_msg(m->payload_len == payloads[i].len, "%s: length %u", payloads[i].name,
                  m->payload_len);
    ck_assert_msg(memcmp(m->payload, want, payloads[i].len) == 0, "%s: bytes differ",
                  payloads[i].name);
}

START_TEST(test_binary_payloads_round_trip)
{
    static const uint8_t zeros[65536];
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    for (size_t i = 0; i < N_PAYLOADS; i++) {
        char topic[16];
        snprintf(topic, sizeof topic, "p/%zu", i);
        const void *bytes = payloads[i].bytes ? (const void *)payloads[i].bytes : zeros;
        struct message *m = msg_make(topic, bytes, payloads[i].len, 1, false, i, 0);
        ck_assert_int_eq(store_out_put(st, "c", i, m, 1, 0, 0, false), 0);
        ck_assert_int_eq(store_retain_put(st, m), 0);
        message_unref(m);
    }
    store_close(st);
    st = open_ok(STORE_SYNC_NORMAL);
    struct collected c = {0};
    const struct store_loader loader = {.out = collect_out, .retain = collect_retain};
    ck_assert_int_eq(store_load(st, &loader, &c), 0);
    for (size_t i = 0; i < N_PAYLOADS; i++) {
        const uint8_t *want = payloads[i].bytes ? (const uint8_t *)payloads[i].bytes : zeros;
        payload_expect(c.out[i], i, want);
        payload_expect(c.retained[i], i, want);
        message_unref(c.out[i]);
        message_unref(c.retained[i]);
    }
    /* Stored as zero-length blobs, not NULL. */
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out WHERE payload IS NULL"), 0);
    ck_assert_int_eq(peer_query("SELECT typeof(payload) = 'blob' FROM retained WHERE topic='p/0'"),
                     1);
    store_close(st);
}
END_TEST

START_TEST(test_retained_put_replace_del)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    retain_put_ok(st, "a/1", "x", 0, 1);
    retain_put_ok(st, "a/2", "y", 1, 2);
    retain_put_ok(st, "a/1", "z", 2, 3);
    ck_assert_int_eq(store_retain_del(st, "a/2"), 0);
    ck_assert_int_eq(store_retain_del(st, "a/none"), 0);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_str_eq(reload(&st, &r), "retain a/1 q=2 r=1 id=3 t=2000 p=7a\n");
    store_close(st);
}
END_TEST

START_TEST(test_sub_and_qos2_put_replace_del)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    ck_assert_int_eq(store_sub_put(st, "c", "a/+", 0), 0);
    ck_assert_int_eq(store_sub_put(st, "c", "b/#", 1), 0);
    ck_assert_int_eq(store_sub_put(st, "c", "a/+", 2), 0); /* replaces the qos */
    ck_assert_int_eq(store_sub_del(st, "c", "b/#"), 0);
    ck_assert_int_eq(store_qos2_put(st, "c", 1), 0);
    ck_assert_int_eq(store_qos2_put(st, "c", 1), 0); /* already there */
    ck_assert_int_eq(store_qos2_put(st, "c", 65535), 0);
    ck_assert_int_eq(store_qos2_del(st, "c", 1), 0);
    ck_assert_int_eq(store_session_put(st, "c", 1), 0);
    ck_assert_int_eq(store_session_put(st, "c", 2), 0); /* updates last_seen */
    ck_assert_str_eq(reload(&st, &r), "session c 2\n"
                                      "sub c a/+ 2\n"
                                      "qos2 c 65535\n");
    store_close(st);
}
END_TEST

/* fill_two_clients() loads as 10 callbacks: 2 sessions, 2 subs, 2 out,
 * 2 qos2, 2 retained. Stopping at any of them returns -1 and calls no
 * further callback; the messages already handed over are the callee's
 * (ASan's leak check proves none is lost). */
static const int abort_at[] = {1, 2, 3, 5, 6, 7, 8, 9, 10};

START_TEST(test_load_abort)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    fill_two_clients(st);
    ck_assert_int_eq(store_commit(st), 0);
    struct rec r = {.stop_at = abort_at[_i]};
    ck_assert_int_eq(store_load(st, &rec_loader, &r), -1);
    ck_assert_int_eq(r.calls, abort_at[_i]);
    /* The statements were reset: a full load works afterwards. */
    memset(&r, 0, sizeof r);
    ck_assert_int_eq(store_load(st, &rec_loader, &r), 0);
    ck_assert_str_eq(r.text, two_clients_text);
    store_close(st);
}
END_TEST

START_TEST(test_load_null_callbacks_skip_tables)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    fill_two_clients(st);
    struct rec r = {0};
    const struct store_loader only_qos2 = {.qos2 = rec_qos2};
    ck_assert_int_eq(store_load(st, &only_qos2, &r), 0);
    ck_assert_str_eq(r.text, "qos2 a 7\nqos2 b 8\n");
    const struct store_loader none = {0};
    ck_assert_int_eq(store_load(st, &none, &r), 0);
    store_close(st);
}
END_TEST

/* The broker may drop an expired message while loading it. */
struct deleting {
    struct store *st;
    int calls;
};

static int delete_while_loading(void *ctx, const char *client_id, uint64_t seq, struct message *m,
                                uint8_t qos, uint16_t packet_id, uint8_t state, bool retain)
{
    struct deleting *d = ctx;
    ck_assert_uint_eq(seq, (uint64_t)++d->calls);
    message_unref(m);
    return store_out_del(d->st, client_id, seq);
}

START_TEST(test_load_callback_may_delete)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    for (uint64_t seq = 1; seq <= 50; seq++)
        out_put_ok(st, "a", seq, "t", "p", 1, 0, 0);
    ck_assert_int_eq(store_commit(st), 0);
    struct deleting d = {.st = st};
    const struct store_loader loader = {.out = delete_while_loading};
    ck_assert_int_eq(store_load(st, &loader, &d), 0);
    ck_assert_int_eq(d.calls, 50);
    ck_assert(store_pending(st));
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 0);
    store_close(st);
}
END_TEST

START_TEST(test_commit_groups_writes)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    ck_assert(!store_pending(st));
    ck_assert_int_eq(store_commit(st), 0); /* nothing to commit */
    ck_assert_int_eq(store_session_put(st, "a", 1), 0);
    ck_assert(store_pending(st));
    for (uint64_t seq = 1; seq <= 100; seq++)
        out_put_ok(st, "a", seq, "t", "p", 1, 0, 0);
    ck_assert(store_pending(st));
    /* Another connection sees none of the open transaction. */
    ck_assert_int_eq(peer_query("SELECT count(*) FROM sessions"), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 0);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert(!store_pending(st));
    ck_assert_int_eq(peer_query("SELECT count(*) FROM sessions"), 1);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 100);
    /* A delete is grouped the same way. */
    ck_assert_int_eq(store_session_del(st, "a"), 0);
    ck_assert(store_pending(st));
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 100);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 0);
    store_close(st);
}
END_TEST

START_TEST(test_close_commits_pending)
{
    struct store *st = open_ok(STORE_SYNC_FULL);
    struct rec r;
    ck_assert_int_eq(store_session_put(st, "late", 9), 0);
    ck_assert(store_pending(st));
    ck_assert_str_eq(reload(&st, &r), "session late 9\n");
    store_close(st);
    store_close(NULL);
}
END_TEST

static const enum store_sync sync_levels[] = {STORE_SYNC_OFF, STORE_SYNC_NORMAL, STORE_SYNC_FULL};

START_TEST(test_open_sync_levels_use_wal)
{
    struct store *st = open_ok(sync_levels[_i]);
    /* The journal mode is a property of the file, visible to any reader. */
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(db);
    ck_assert_int_eq(peer_query("PRAGMA user_version"), 1);
    store_close(st);
}
END_TEST

/* Every failed open leaves *out NULL and says why, naming the file. */
static void open_fails(const char *file, enum store_sync sync, const char *why)
{
    char err[1024] = "";
    struct store *st = (struct store *)&err; /* must be overwritten */
    ck_assert_int_eq(store_open(file, sync, &st, err, sizeof err), -1);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, file) != NULL, "no path in '%s'", err);
    ck_assert_msg(strstr(err, why) != NULL, "expected '%s' in '%s'", why, err);
}

START_TEST(test_open_missing_directory_fails)
{
    char file[300];
    snprintf(file, sizeof file, "%s/no/such/dir/store.db", dir);
    open_fails(file, STORE_SYNC_NORMAL, "unable to open");
}
END_TEST

START_TEST(test_open_not_a_database_fails)
{
    static const char junk[] = "this is a text file, not an SQLite database\n";
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 200; i++)
        fputs(junk, f);
    fclose(f);
    open_fails(path, STORE_SYNC_NORMAL, "not a database");
    /* The file is left as it was. */
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[128];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, junk);
    fclose(f);
}
END_TEST

START_TEST(test_open_newer_schema_fails)
{
    peer_exec("PRAGMA user_version = 99");
    open_fails(path, STORE_SYNC_NORMAL, "schema version 99");
}
END_TEST

START_TEST(test_open_invalid_sync_fails)
{
    open_fails(path, (enum store_sync)7, "sync level 7");
}
END_TEST

/* Rows no valid broker could have written are skipped (with a warning);
 * the rest loads. */
START_TEST(test_load_skips_corrupt_rows)
{
    struct store *st = open_ok(STORE_SYNC_NORMAL);
    struct rec r;
    fill_two_clients(st);
    store_close(st);
    peer_exec("INSERT INTO retained VALUES(printf('%.70000c', 'a'), 1, x'00', 0, 0);"
              "INSERT INTO retained VALUES(CAST(x'610062' AS TEXT), 1, x'', 0, 0);"
              "INSERT INTO retained VALUES('', 1, x'', 0, 0);"
              "INSERT INTO retained VALUES('q/7', 1, x'', 7, 0);"
              "INSERT INTO out VALUES('a', 2, 1, 't', x'', 1, 0, 0, 1, 0, 70000, 0);"
              "INSERT INTO out VALUES('a', 3, 1, 't', x'', 1, 0, 0, 3, 0, 1, 0);"
              "INSERT INTO out VALUES('a', 4, 1, 't', 'text', 1, 0, 0, 1, 0, 1, 300);"
              "INSERT INTO subs VALUES('a', 'z', 3);"
              "INSERT INTO qos2 VALUES('a', 0);");
    st = open_ok(STORE_SYNC_NORMAL);
    ck_assert_str_eq(reload(&st, &r), two_clients_text);
    store_close(st);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Not a timing assertion: prints the rate of the broker's hot write path
 * (one row per queued QoS 1 message, one commit per 1000-row batch) and
 * asserts that every row arrived. */
START_TEST(test_out_put_throughput)
{
    enum { BATCHES = 20, BATCH = 1000 };
    static const char *const names[] = {"OFF", "NORMAL", "FULL"};
    uint8_t payload[100];
    memset(payload, 'p', sizeof payload);
    struct message *m =
        msg_make("devices/sensor-0001/telemetry", payload, sizeof payload, 1, false, 1, 1);
    struct store *st = open_ok(sync_levels[_i]);
    double t0 = now_s();
    for (uint64_t seq = 0; seq < BATCHES * BATCH; seq++) {
        ck_assert_int_eq(store_out_put(st, "client-0001", seq, m, 1, 0, 0, false), 0);
        if (seq % BATCH == BATCH - 1)
            ck_assert_int_eq(store_commit(st), 0);
    }
    double put_s = now_s() - t0;
    t0 = now_s();
    for (uint64_t seq = 0; seq < BATCHES * BATCH; seq++) {
        ck_assert_int_eq(store_out_del(st, "client-0001", seq), 0);
        if (seq % BATCH == BATCH - 1)
            ck_assert_int_eq(store_commit(st), 0);
    }
    double del_s = now_s() - t0;
    ck_assert_int_eq(peer_query("SELECT count(*) FROM out"), 0);
    printf("store sync=%s: out_put %.0f rows/s (%.0f batches/s), out_del %.0f rows/s\n", names[_i],
           BATCHES * BATCH / put_s, BATCHES / put_s, BATCHES * BATCH / del_s);
    message_unref(m);
    store_close(st);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_reopen_keeps_every_table);
    tcase_add_test(tc, test_session_del_cascades_one_client);
    tcase_add_test(tc, test_out_order_update_del);
    tcase_add_test(tc, test_out_message_fields_round_trip);
    tcase_add_test(tc, test_binary_payloads_round_trip);
    tcase_add_test(tc, test_retained_put_replace_del);
    tcase_add_test(tc, test_sub_and_qos2_put_replace_del);
    tcase_add_loop_test(tc, test_load_abort, 0, sizeof abort_at / sizeof abort_at[0]);
    tcase_add_test(tc, test_load_null_callbacks_skip_tables);
    tcase_add_test(tc, test_load_callback_may_delete);
    tcase_add_test(tc, test_commit_groups_writes);
    tcase_add_test(tc, test_close_commits_pending);
    tcase_add_loop_test(tc, test_open_sync_levels_use_wal, 0, 3);
    tcase_add_test(tc, test_open_missing_directory_fails);
    tcase_add_test(tc, test_open_not_a_database_fails);
    tcase_add_test(tc, test_open_newer_schema_fails);
    tcase_add_test(tc, test_open_invalid_sync_fails);
    tcase_add_test(tc, test_load_skips_corrupt_rows);
    tcase_add_loop_test(tc, test_out_put_throughput, 0, 3);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(store_suite)
