/* The export spool: record round trips, ordering, ack and drop_oldest,
 * ranges, grouped commits seen from a second connection, durability across
 * close and across a crash (a forked child that exits without closing),
 * load aborts, in-memory mode and open failures. Each test works in its own
 * mkdtemp directory, removed afterwards. A throughput test prints numbers
 * (set TMPDIR to measure on a real disk). */
#include "../../engine/spool.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"

static char dir[256];
static char path[300];

static void dir_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/mqb_spool_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/spool.db", dir);
}

/* The directory is flat: spool.db, its -wal and -shm, test files. */
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

/* file NULL: in memory. */
static struct spool *open_at(const char *file, enum store_sync sync)
{
    char err[1024] = "";
    struct spool *sp = NULL;
    ck_assert_msg(spool_open(file, sync, &sp, err, sizeof err) == 0, "spool_open: %s", err);
    ck_assert_ptr_nonnull(sp);
    return sp;
}

static struct spool *open_ok(void)
{
    return open_at(path, STORE_SYNC_NORMAL);
}

/* A message record on the stack: spool_put copies what it needs. */
static struct export_record msg_rec(uint64_t seqno, const char *payload)
{
    return (struct export_record){.seqno = seqno,
                                  .kind = RECORD_MESSAGE,
                                  .msg_id = seqno * 10,
                                  .time_ms = 1000,
                                  .qos = 1,
                                  .client_id = "c1",
                                  .topic = "t/1",
                                  .payload = (const uint8_t *)payload,
                                  .payload_len = (uint32_t)strlen(payload)};
}

static void put_ok(struct spool *sp, const char *connector, uint64_t seqno)
{
    struct export_record rec = msg_rec(seqno, "p");
    ck_assert_int_eq(spool_put(sp, connector, &rec, "r", 1), 0);
}

static void put_range(struct spool *sp, const char *connector, uint64_t from, uint64_t to)
{
    for (uint64_t seqno = from; seqno <= to; seqno++)
        put_ok(sp, connector, seqno);
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

/* ---- a loader that renders what it is given as text --------------------- */

struct text {
    char buf[8192];
    size_t len;
    unsigned calls;
    unsigned stop_at; /* the callback of this call number returns 1; 0 = never */
    bool seqnos_only;
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
text_add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    va_end(ap);
    ck_assert(n >= 0 && (size_t)n < sizeof t->buf - t->len);
    t->len += (size_t)n;
}

/* NULL strings render as <null>, others quoted, so '' and NULL differ. */
static void text_str(struct text *t, const char *label, const char *s)
{
    if (s)
        text_add(t, " %s='%s'", label, s);
    else
        text_add(t, " %s=<null>", label);
}

/* "7 g=3 r='rule' k=1 id=70 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ..." */
static void text_record(struct text *t, const struct export_record *rec, const char *rule,
                        uint64_t generation)
{
    text_add(t, "%llu g=%llu", (unsigned long long)rec->seqno, (unsigned long long)generation);
    text_str(t, "r", rule);
    text_add(t, " k=%d id=%llu t=%lld q=%u", (int)rec->kind, (unsigned long long)rec->msg_id,
             (long long)rec->time_ms, rec->qos);
    text_str(t, "c", rec->client_id);
    text_str(t, "tp", rec->topic);
    text_add(t, " p=");
    for (uint32_t i = 0; i < rec->payload_len; i++)
        text_add(t, "%02x", rec->payload[i]);
    text_str(t, "e", rec->event_type);
    text_str(t, "ch", rec->channel_id);
    text_str(t, "ip", rec->client_ip);
    text_add(t, "\n");
}

/* Checks what the contract promises about a loaded record, renders and
 * frees it (it belongs to the callback). */
static int text_load(void *ctx, struct export_record *rec, const char *rule, uint64_t generation)
{
    struct text *t = ctx;
    ck_assert_ptr_null(rec->next);
    ck_assert_ptr_null(rec->rule);
    ck_assert_ptr_nonnull(rec->payload);
    if (t->seqnos_only)
        text_add(t, "%llu ", (unsigned long long)rec->seqno);
    else
        text_record(t, rec, rule, generation);
    export_record_free(rec);
    return ++t->calls == t->stop_at;
}

/* Everything of connector from seqno 0, as text. */
static const char *load_all(struct spool *sp, const char *connector, struct text *t,
                            bool seqnos_only)
{
    memset(t, 0, sizeof *t);
    t->seqnos_only = seqnos_only;
    unsigned loaded = 12345;
    ck_assert_int_eq(spool_load(sp, connector, 0, 100000, text_load, t, &loaded), 0);
    ck_assert_uint_eq(loaded, t->calls);
    return t->buf;
}

static void range_expect(struct spool *sp, const char *connector, uint64_t count, uint64_t first,
                         uint64_t last)
{
    uint64_t c = 99, f = 99, l = 99;
    ck_assert_int_eq(spool_range(sp, connector, &c, &f, &l), 0);
    ck_assert_uint_eq(c, count);
    ck_assert_uint_eq(f, first);
    ck_assert_uint_eq(l, last);
}

/* ---- round trip --------------------------------------------------------- */

static const uint8_t binary[] = {'a', 0, 'b', 0, 0, 0xff, 0x80};

/* Every field of both kinds, with NULL and empty strings, binary and empty
 * payloads, and ids and generations that use all 64 bits. */
static const struct {
    struct export_record rec;
    const char *rule;
    uint64_t generation;
    const char *text;
} round_trip[] = {
    {{.seqno = 1,
      .kind = RECORD_MESSAGE,
      .msg_id = UINT64_MAX,
      .time_ms = 1764061399123,
      .qos = 2,
      .client_id = "sensor-1",
      .topic = "SensorData/room/1",
      .payload = binary,
      .payload_len = sizeof binary},
     "telemetry-to-kafka",
     UINT64_MAX,
     "1 g=18446744073709551615 r='telemetry-to-kafka' k=1 id=18446744073709551615 "
     "t=1764061399123 q=2 c='sensor-1' tp='SensorData/room/1' p=6100620000ff80 e=<null> "
     "ch=<null> ip=<null>\n"},
    {{.seqno = 2,
      .kind = RECORD_MESSAGE,
      .msg_id = 1ULL << 63,
      .time_ms = -5,
      .qos = 1,
      .client_id = "",
      .topic = "t",
      .payload = NULL,
      .payload_len = 0},
     "",
     0,
     "2 g=0 r='' k=1 id=9223372036854775808 t=-5 q=1 c='' tp='t' p= e=<null> ch=<null> "
     "ip=<null>\n"},
    {{.seqno = 3,
      .kind = RECORD_STATUS,
      .msg_id = 42,
      .time_ms = 0,
      .qos = 0,
      .client_id = "dev-7",
      .topic = NULL,
      .payload = (const uint8_t *)"{\"event\":\"connect\"}",
      .payload_len = 19,
      .event_type = "connect",
      .channel_id = "0123456789abcdef0123456789abcdef",
      .client_ip = "192.0.2.1:50000"},
     "sensors-status",
     7,
     "3 g=7 r='sensors-status' k=2 id=42 t=0 q=0 c='dev-7' tp=<null> "
     "p=7b226576656e74223a22636f6e6e656374227d e='connect' "
     "ch='0123456789abcdef0123456789abcdef' ip='192.0.2.1:50000'\n"},
    {{.seqno = 4, .kind = RECORD_STATUS, .payload = (const uint8_t *)"", .payload_len = 0},
     NULL,
     1,
     "4 g=1 r=<null> k=2 id=0 t=0 q=0 c=<null> tp=<null> p= e=<null> ch=<null> ip=<null>\n"},
};
#define N_ROUND_TRIP (sizeof round_trip / sizeof round_trip[0])

static void expect_round_trip(const char *got)
{
    char want[4096] = "";
    for (size_t i = 0; i < N_ROUND_TRIP; i++)
        strcat(want, round_trip[i].text);
    ck_assert_str_eq(got, want);
}

START_TEST(test_round_trip_every_field)
{
    struct spool *sp = open_ok();
    struct text t;
    for (size_t i = 0; i < N_ROUND_TRIP; i++)
        ck_assert_int_eq(
            spool_put(sp, "k", &round_trip[i].rec, round_trip[i].rule, round_trip[i].generation),
            0);
    /* Before the commit, the same connection reads its own writes. */
    expect_round_trip(load_all(sp, "k", &t, false));
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    expect_round_trip(load_all(sp, "k", &t, false));
    /* Empty payloads are zero-length blobs, not NULL. */
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool WHERE payload IS NULL"), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool WHERE typeof(payload) = 'blob'"),
                     (int64_t)N_ROUND_TRIP);
    spool_close(sp);
}
END_TEST

START_TEST(test_record_new_is_one_allocation)
{
    struct export_record *rec = export_record_new(RECORD_STATUS, 9, -1, 0, "cid", NULL, binary,
                                                  sizeof binary, "disconnect", "", "::1:8");
    ck_assert_ptr_nonnull(rec);
    ck_assert_ptr_null(rec->next);
    ck_assert_ptr_null(rec->rule);
    ck_assert_ptr_null(rec->topic);
    ck_assert_uint_eq(rec->seqno, 0);
    ck_assert_int_eq(rec->kind, RECORD_STATUS);
    ck_assert_uint_eq(rec->msg_id, 9);
    ck_assert_int_eq(rec->time_ms, -1);
    ck_assert_uint_eq(rec->payload_len, sizeof binary);
    ck_assert_mem_eq(rec->payload, binary, sizeof binary);
    ck_assert_str_eq(rec->client_id, "cid");
    ck_assert_str_eq(rec->event_type, "disconnect");
    ck_assert_str_eq(rec->channel_id, "");
    ck_assert_str_eq(rec->client_ip, "::1:8");
    /* Everything lies right behind the struct: payload + 4 strings. */
    const char *lo = (const char *)(rec + 1);
    const char *hi = lo + sizeof binary + sizeof "cid" + sizeof "disconnect" + 1 + sizeof "::1:8";
    const void *inside[] = {rec->payload, rec->client_id, rec->event_type, rec->channel_id,
                            rec->client_ip};
    for (size_t i = 0; i < sizeof inside / sizeof inside[0]; i++)
        ck_assert((const char *)inside[i] >= lo && (const char *)inside[i] < hi);
    export_record_free(rec);

    /* Copies, not references; an empty payload still points somewhere. */
    char topic[] = "a/b";
    rec = export_record_new(RECORD_MESSAGE, 1, 2, 1, NULL, topic, NULL, 0, NULL, NULL, NULL);
    ck_assert_ptr_nonnull(rec);
    topic[0] = 'x';
    ck_assert_str_eq(rec->topic, "a/b");
    ck_assert_ptr_nonnull(rec->payload);
    ck_assert_uint_eq(rec->payload_len, 0);
    ck_assert_ptr_null(rec->client_id);
    export_record_free(rec);
    export_record_free(NULL);
}
END_TEST

/* ---- order, connectors, ack, drop_oldest, range ------------------------ */

START_TEST(test_order_across_2_32)
{
    static const uint64_t shuffled[] = {
        1ULL << 40, 5, (1ULL << 32) + 1, UINT32_MAX, INT64_MAX, 1ULL << 32, 0, 3,
    };
    struct spool *sp = open_ok();
    struct text t;
    for (size_t i = 0; i < sizeof shuffled / sizeof shuffled[0]; i++)
        put_ok(sp, "k", shuffled[i]);
    ck_assert_str_eq(load_all(sp, "k", &t, true), "0 3 5 4294967295 4294967296 4294967297 "
                                                  "1099511627776 9223372036854775807 ");
    range_expect(sp, "k", 8, 0, INT64_MAX);
    /* A page: from 2^32, at most 2. */
    memset(&t, 0, sizeof t);
    t.seqnos_only = true;
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 1ULL << 32, 2, text_load, &t, &loaded), 0);
    ck_assert_uint_eq(loaded, 2);
    ck_assert_str_eq(t.buf, "4294967296 4294967297 ");
    /* Past the end, max 0, and from above INT64_MAX give nothing. */
    static const struct {
        uint64_t from;
        unsigned max;
    } empty[] = {{(uint64_t)INT64_MAX + 1, 10}, {UINT64_MAX, 10}, {0, 0}};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        loaded = 99;
        ck_assert_int_eq(spool_load(sp, "k", empty[i].from, empty[i].max, text_load, &t, &loaded),
                         0);
        ck_assert_uint_eq(loaded, 0);
    }
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
}
END_TEST

START_TEST(test_connectors_are_independent)
{
    struct spool *sp = open_ok();
    struct text t;
    put_range(sp, "a", 1, 3);
    put_range(sp, "b", 2, 4);
    put_ok(sp, "ab", 1);
    uint64_t deleted = 0;
    ck_assert_int_eq(spool_ack(sp, "a", 2), 0);
    ck_assert_int_eq(spool_drop_oldest(sp, "b", 1, &deleted), 0);
    ck_assert_uint_eq(deleted, 1);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(load_all(sp, "a", &t, true), "3 ");
    ck_assert_str_eq(load_all(sp, "b", &t, true), "3 4 ");
    ck_assert_str_eq(load_all(sp, "ab", &t, true), "1 ");
    ck_assert_str_eq(load_all(sp, "none", &t, true), "");
    range_expect(sp, "a", 1, 3, 3);
    range_expect(sp, "b", 2, 3, 4);
    range_expect(sp, "ab", 1, 1, 1);
    spool_close(sp);
}
END_TEST

/* Records 1..10 of "k" (and 1..10 of "other", never touched). */
static const struct {
    uint64_t upto;
    const char *left;
} ack_cases[] = {
    {0, "1 2 3 4 5 6 7 8 9 10 "},
    {1, "2 3 4 5 6 7 8 9 10 "},
    {3, "4 5 6 7 8 9 10 "},
    {9, "10 "},
    {10, ""},
    {11, ""},
    {UINT64_MAX, ""},
};

START_TEST(test_ack_deletes_up_to_and_including)
{
    struct spool *sp = open_ok();
    struct text t;
    put_range(sp, "k", 1, 10);
    put_range(sp, "other", 1, 10);
    ck_assert_int_eq(spool_ack(sp, "k", ack_cases[_i].upto), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), ack_cases[_i].left);
    ck_assert_str_eq(load_all(sp, "other", &t, true), "1 2 3 4 5 6 7 8 9 10 ");
    /* Acking again, or lower, changes nothing. */
    ck_assert_int_eq(spool_ack(sp, "k", ack_cases[_i].upto), 0);
    ck_assert_int_eq(spool_ack(sp, "k", 0), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), ack_cases[_i].left);
    spool_close(sp);
}
END_TEST

/* Records 5..9 of "k" (and 1..3 of "other"). */
static const struct {
    const char *connector;
    uint64_t n;
    uint64_t deleted;
    const char *left;
} drop_cases[] = {
    {"k", 0, 0, "5 6 7 8 9 "},
    {"k", 1, 1, "6 7 8 9 "},
    {"k", 3, 3, "8 9 "},
    {"k", 5, 5, ""},
    {"k", 6, 5, ""},
    {"k", UINT64_MAX, 5, ""},
    {"nobody", 4, 0, "5 6 7 8 9 "},
    {"other", 2, 2, "5 6 7 8 9 "},
};

START_TEST(test_drop_oldest_counts)
{
    struct spool *sp = open_ok();
    struct text t;
    put_range(sp, "k", 5, 9);
    put_range(sp, "other", 1, 3);
    uint64_t deleted = 99;
    ck_assert_int_eq(spool_drop_oldest(sp, drop_cases[_i].connector, drop_cases[_i].n, &deleted),
                     0);
    ck_assert_uint_eq(deleted, drop_cases[_i].deleted);
    ck_assert_str_eq(load_all(sp, "k", &t, true), drop_cases[_i].left);
    uint64_t other_left = 3 - (strcmp(drop_cases[_i].connector, "other") == 0 ? 2 : 0);
    range_expect(sp, "other", other_left, 4 - other_left, other_left ? 3 : 0);
    /* deleted may be NULL. */
    ck_assert_int_eq(spool_drop_oldest(sp, "k", 1, NULL), 0);
    spool_close(sp);
}
END_TEST

START_TEST(test_range_empty_and_not)
{
    struct spool *sp = open_ok();
    range_expect(sp, "k", 0, 0, 0);
    put_ok(sp, "k", 1ULL << 33);
    put_ok(sp, "k", 7);
    put_ok(sp, "k", 3);
    range_expect(sp, "k", 3, 3, 1ULL << 33);
    range_expect(sp, "j", 0, 0, 0);
    /* Each output may be NULL. */
    uint64_t count = 0;
    ck_assert_int_eq(spool_range(sp, "k", &count, NULL, NULL), 0);
    ck_assert_uint_eq(count, 3);
    ck_assert_int_eq(spool_range(sp, "k", NULL, NULL, NULL), 0);
    ck_assert_int_eq(spool_ack(sp, "k", UINT64_MAX), 0);
    range_expect(sp, "k", 0, 0, 0);
    spool_close(sp);
}
END_TEST

/* ---- writes that are refused -------------------------------------------- */

START_TEST(test_put_refuses_and_transaction_goes_on)
{
    struct spool *sp = open_ok();
    struct text t;
    put_ok(sp, "k", 1);
    /* A second put of the same key would lose the first record. */
    struct export_record dup = msg_rec(1, "other payload");
    ck_assert_int_eq(spool_put(sp, "k", &dup, "r", 1), -1);
    struct export_record bad[] = {
        msg_rec((uint64_t)INT64_MAX + 1, "p"), /* would sort before 0 */
        msg_rec(2, "p"),
        msg_rec(3, "p"),
        msg_rec(4, "p"),
    };
    bad[1].kind = (enum record_kind)3;
    bad[2].qos = 3;
    bad[3].payload = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_eq(spool_put(sp, "k", &bad[i], "r", 1), -1);
    /* The failures did not end the transaction. */
    put_ok(sp, "k", 5);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 2);
    ck_assert_str_eq(load_all(sp, "k", &t, false),
                     "1 g=1 r='r' k=1 id=10 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ch=<null> "
                     "ip=<null>\n"
                     "5 g=1 r='r' k=1 id=50 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ch=<null> "
                     "ip=<null>\n");
    spool_close(sp);
}
END_TEST

/* ---- transactions and durability ---------------------------------------- */

START_TEST(test_uncommitted_invisible_to_peer)
{
    struct spool *sp = open_ok();
    ck_assert_int_eq(spool_commit(sp), 0); /* nothing to commit */
    put_range(sp, "k", 1, 100);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 0);
    range_expect(sp, "k", 100, 1, 100); /* the writer sees its own rows */
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 100);
    /* Deletes are grouped the same way. */
    ck_assert_int_eq(spool_ack(sp, "k", 60), 0);
    uint64_t deleted = 0;
    ck_assert_int_eq(spool_drop_oldest(sp, "k", 10, &deleted), 0);
    ck_assert_uint_eq(deleted, 10);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 30);
    ck_assert_int_eq(peer_query("SELECT min(seqno) FROM spool"), 71);
    spool_close(sp);
}
END_TEST

static const enum store_sync sync_levels[] = {STORE_SYNC_OFF, STORE_SYNC_NORMAL, STORE_SYNC_FULL};

START_TEST(test_reopen_keeps_committed)
{
    struct spool *sp = open_at(path, sync_levels[_i]);
    struct text t;
    put_range(sp, "k", 1, 50);
    put_range(sp, "j", 7, 8);
    ck_assert_int_eq(spool_ack(sp, "k", 20), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    put_range(sp, "k", 51, 52); /* pending: spool_close commits it */
    spool_close(sp);
    sp = open_at(path, sync_levels[_i]);
    range_expect(sp, "k", 32, 21, 52);
    range_expect(sp, "j", 2, 7, 8);
    /* A second reopen (schema already there) changes nothing. */
    spool_close(sp);
    sp = open_at(path, sync_levels[_i]);
    range_expect(sp, "k", 32, 21, 52);
    ck_assert_str_eq(load_all(sp, "j", &t, true), "7 8 ");
    ck_assert_int_eq(peer_query("PRAGMA user_version"), 1);
    ck_assert_int_eq(peer_query("PRAGMA application_id"), 1297171027);
    spool_close(sp);
    spool_close(NULL);
}
END_TEST

START_TEST(test_file_is_wal)
{
    struct spool *sp = open_ok();
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(db);
    spool_close(sp);
}
END_TEST

/* A crash: the child commits 1..50, writes 51..60 without a commit and
 * exits without closing. The parent finds exactly the committed rows. */
static int crash_child(void)
{
    char err[512];
    struct spool *sp = NULL;
    if (spool_open(path, STORE_SYNC_NORMAL, &sp, err, sizeof err) != 0)
        return 2;
    for (uint64_t seqno = 1; seqno <= 60; seqno++) {
        struct export_record rec = msg_rec(seqno, "payload");
        if (spool_put(sp, "k", &rec, "r", 3) != 0)
            return 3;
        if (seqno == 50 && spool_commit(sp) != 0)
            return 4;
    }
    return 0;
}

START_TEST(test_crash_loses_nothing_committed)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(crash_child()); /* no close, no atexit handlers */
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    struct spool *sp = open_ok();
    range_expect(sp, "k", 50, 1, 50);
    struct text t;
    load_all(sp, "k", &t, true);
    ck_assert_uint_eq(t.calls, 50);
    spool_close(sp);
}
END_TEST

/* ---- load callbacks ----------------------------------------------------- */

static const unsigned stop_at[] = {1, 2, 5};

START_TEST(test_load_abort)
{
    struct spool *sp = open_ok();
    put_range(sp, "k", 1, 5);
    struct text t = {.stop_at = stop_at[_i], .seqnos_only = true};
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 10, text_load, &t, &loaded), -1);
    /* The aborting call's record was handed over and is counted. */
    ck_assert_uint_eq(loaded, stop_at[_i]);
    ck_assert_uint_eq(t.calls, stop_at[_i]);
    /* The statement was reset: a full load works afterwards. */
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 5 ");
    spool_close(sp);
}
END_TEST

/* The engine may ack while loading; a nested load is refused. */
struct nested {
    struct spool *sp;
    unsigned calls;
    int nested_rc;
};

static int ack_while_loading(void *ctx, struct export_record *rec, const char *rule,
                             uint64_t generation)
{
    struct nested *n = ctx;
    struct text t = {0};
    if (n->calls++ == 0) {
        n->nested_rc = spool_load(n->sp, "k", 0, 10, text_load, &t, NULL);
        ck_assert_uint_eq(t.calls, 0);
    }
    int rc = spool_ack(n->sp, "k", rec->seqno);
    export_record_free(rec);
    return rc;
}

START_TEST(test_load_callback_may_ack)
{
    struct spool *sp = open_ok();
    put_range(sp, "k", 1, 30);
    ck_assert_int_eq(spool_commit(sp), 0);
    struct nested n = {.sp = sp};
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 100, ack_while_loading, &n, &loaded), 0);
    ck_assert_uint_eq(loaded, 30);
    ck_assert_uint_eq(n.calls, 30);
    ck_assert_int_eq(n.nested_rc, -1);
    range_expect(sp, "k", 0, 0, 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 30);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 0);
    spool_close(sp);
}
END_TEST

/* A row written by something else than spool_put is skipped, and does not
 * take a place in the page. */
START_TEST(test_load_skips_corrupt_rows)
{
    struct spool *sp = open_ok();
    struct text t;
    put_range(sp, "k", 1, 4);
    ck_assert_int_eq(spool_commit(sp), 0);
    peer_exec("UPDATE spool SET kind = 9 WHERE seqno = 2;"
              "UPDATE spool SET qos = 'x' WHERE seqno = 3");
    memset(&t, 0, sizeof t);
    t.seqnos_only = true;
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 2, text_load, &t, &loaded), 0);
    ck_assert_uint_eq(loaded, 2);
    ck_assert_str_eq(t.buf, "1 4 ");
    spool_close(sp);
}
END_TEST

/* ---- in memory ---------------------------------------------------------- */

START_TEST(test_memory_mode)
{
    struct spool *a = open_at(NULL, STORE_SYNC_FULL);
    struct spool *b = open_at(NULL, STORE_SYNC_OFF);
    struct text t;
    put_range(a, "k", 1, 5);
    put_ok(b, "k", 9);
    ck_assert_int_eq(spool_commit(a), 0);
    ck_assert_int_eq(spool_ack(a, "k", 2), 0);
    uint64_t deleted = 0;
    ck_assert_int_eq(spool_drop_oldest(a, "k", 1, &deleted), 0);
    ck_assert_uint_eq(deleted, 1);
    ck_assert_int_eq(spool_commit(a), 0);
    /* Two in-memory spools are two databases. */
    ck_assert_str_eq(load_all(a, "k", &t, true), "4 5 ");
    ck_assert_str_eq(load_all(b, "k", &t, true), "9 ");
    range_expect(a, "k", 2, 4, 5);
    spool_close(a);
    spool_close(b);
    /* Nothing of it is durable or on disk. */
    a = open_at(NULL, STORE_SYNC_NORMAL);
    range_expect(a, "k", 0, 0, 0);
    spool_close(a);
    ck_assert_int_eq(access(":memory:", F_OK), -1);
}
END_TEST

/* ---- open failures ------------------------------------------------------ */

/* Every failed open leaves *out NULL and says why, naming the file. */
static void open_fails(const char *file, enum store_sync sync, const char *why)
{
    char err[1024] = "";
    struct spool *sp = (struct spool *)&err; /* must be overwritten */
    ck_assert_int_eq(spool_open(file, sync, &sp, err, sizeof err), -1);
    ck_assert_ptr_null(sp);
    ck_assert_msg(strstr(err, file ? file : ":memory:") != NULL, "no path in '%s'", err);
    ck_assert_msg(strstr(err, why) != NULL, "expected '%s' in '%s'", why, err);
}

START_TEST(test_open_missing_directory_fails)
{
    char file[300];
    snprintf(file, sizeof file, "%s/no/such/dir/spool.db", dir);
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

/* The broker's store (or any other versioned database) is not a spool. */
START_TEST(test_open_foreign_database_fails)
{
    peer_exec("CREATE TABLE sessions(client_id TEXT PRIMARY KEY); PRAGMA user_version = 1");
    open_fails(path, STORE_SYNC_NORMAL, "not a spool file");
    ck_assert_int_eq(peer_query("SELECT count(*) FROM sqlite_schema WHERE name = 'spool'"), 0);
}
END_TEST

START_TEST(test_open_newer_schema_fails)
{
    peer_exec("PRAGMA application_id = 1297171027; PRAGMA user_version = 99");
    open_fails(path, STORE_SYNC_NORMAL, "schema version 99");
}
END_TEST

START_TEST(test_open_invalid_sync_fails)
{
    open_fails(path, (enum store_sync)7, "sync level 7");
    open_fails(NULL, (enum store_sync) - 1, "sync level -1");
}
END_TEST

/* ---- throughput (printed, not asserted) --------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

enum { BENCH_BATCH = 1000, BENCH_BATCHES = 20, BENCH_SINGLE = 200 };

/* Puts seqnos from..from+n-1 with 64-byte payloads, committing every batch
 * records. Returns the seconds taken. */
static double bench_put(struct spool *sp, uint64_t from, unsigned n, unsigned batch)
{
    static const char payload[65] =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    struct export_record rec = msg_rec(0, payload);
    rec.client_id = "bench-client-0001";
    rec.topic = "SensorData/building-1/floor-2/room-3";
    double t0 = now_s();
    for (unsigned i = 0; i < n; i++) {
        rec.seqno = from + i;
        rec.msg_id = from + i;
        ck_assert_int_eq(spool_put(sp, "bench", &rec, "telemetry-to-kafka", 1), 0);
        if ((i + 1) % batch == 0)
            ck_assert_int_eq(spool_commit(sp), 0);
    }
    ck_assert_int_eq(spool_commit(sp), 0);
    return now_s() - t0;
}

static void bench_level(enum store_sync sync, const char *name)
{
    struct spool *sp = open_at(path, sync);
    const unsigned total = BENCH_BATCH * BENCH_BATCHES;
    double put = bench_put(sp, 1, total, BENCH_BATCH);
    /* One commit per record: the worst case of one message per iteration. */
    double single = bench_put(sp, total + 1, BENCH_SINGLE, 1);
    /* Acks one record at a time, a commit per BENCH_BATCH acks. */
    double t0 = now_s();
    for (unsigned i = 1; i <= total + BENCH_SINGLE; i++) {
        ck_assert_int_eq(spool_ack(sp, "bench", i), 0);
        if (i % BENCH_BATCH == 0)
            ck_assert_int_eq(spool_commit(sp), 0);
    }
    ck_assert_int_eq(spool_commit(sp), 0);
    double ack = now_s() - t0;
    range_expect(sp, "bench", 0, 0, 0);
    fprintf(stderr,
            "spool throughput (%s, 64-byte payloads, %s): put+commit per %d: %.2f ms"
            " (%.0f puts/s); put+commit each: %.0f us (%.0f/s); ack: %.0f acks/s\n",
            name, dir, BENCH_BATCH, put * 1e3 / BENCH_BATCHES, total / put,
            single * 1e6 / BENCH_SINGLE, BENCH_SINGLE / single, (total + BENCH_SINGLE) / ack);
    spool_close(sp);
}

START_TEST(test_throughput)
{
    bench_level(STORE_SYNC_NORMAL, "sync=normal");
    bench_level(STORE_SYNC_FULL, "sync=full");
    ck_assert_int_eq(peer_query("SELECT count(*) FROM spool"), 0);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *spool_suite(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("spool");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip_every_field);
    tcase_add_test(tc, test_record_new_is_one_allocation);
    tcase_add_test(tc, test_order_across_2_32);
    tcase_add_test(tc, test_connectors_are_independent);
    tcase_add_loop_test(tc, test_ack_deletes_up_to_and_including, 0,
                        sizeof ack_cases / sizeof ack_cases[0]);
    tcase_add_loop_test(tc, test_drop_oldest_counts, 0, sizeof drop_cases / sizeof drop_cases[0]);
    tcase_add_test(tc, test_range_empty_and_not);
    tcase_add_test(tc, test_put_refuses_and_transaction_goes_on);
    tcase_add_test(tc, test_uncommitted_invisible_to_peer);
    tcase_add_loop_test(tc, test_reopen_keeps_committed, 0,
                        sizeof sync_levels / sizeof sync_levels[0]);
    tcase_add_test(tc, test_file_is_wal);
    tcase_add_test(tc, test_crash_loses_nothing_committed);
    tcase_add_loop_test(tc, test_load_abort, 0, sizeof stop_at / sizeof stop_at[0]);
    tcase_add_test(tc, test_load_callback_may_ack);
    tcase_add_test(tc, test_load_skips_corrupt_rows);
    tcase_add_test(tc, test_memory_mode);
    tcase_add_test(tc, test_open_missing_directory_fails);
    tcase_add_test(tc, test_open_not_a_database_fails);
    tcase_add_test(tc, test_open_foreign_database_fails);
    tcase_add_test(tc, test_open_newer_schema_fails);
    tcase_add_test(tc, test_open_invalid_sync_fails);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(spool_suite)
