/* The export spool (append-only log per connector): record round trips,
 * order and seqno gaps, acknowledgements and deleted ranges (also across
 * reopen), segment rotation and deletion, recovery from a torn tail and
 * from damage in the middle, the state file's two copies, durability
 * across a crash (a forked child that exits without closing), the load
 * cursor and callbacks, the in-memory mode, open failures, and a random
 * sequence of operations (with crashes) checked against a model. Each test
 * works in its own mkdtemp directory, removed afterwards. A throughput test
 * prints numbers (set TMPDIR to measure on another disk). */
#include "../../engine/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"

static char dir[256];  /* the test's directory */
static char path[300]; /* the spool in it */

static void dir_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/mqb_spool_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/spool", dir);
}

/* rm -r (the spool makes two levels of directories). */
static void remove_tree(const char *d)
{
    DIR *dd = opendir(d);
    ck_assert_msg(dd != NULL, "opendir %s", d);
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char file[1024];
        struct stat st;
        snprintf(file, sizeof file, "%s/%s", d, e->d_name);
        ck_assert_int_eq(lstat(file, &st), 0);
        if (S_ISDIR(st.st_mode))
            remove_tree(file);
        else
            ck_assert_int_eq(unlink(file), 0);
    }
    closedir(dd);
    ck_assert_int_eq(rmdir(d), 0);
}

static void dir_teardown(void)
{
    remove_tree(dir);
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

static struct spool *open_small(uint64_t seg_max)
{
    struct spool *sp = open_ok();
    spool_set_segment_max(sp, seg_max);
    return sp;
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

/* Puts from..to with a payload of len bytes ('a' + seqno % 26). */
static void put_sized(struct spool *sp, const char *connector, uint64_t from, uint64_t to,
                      size_t len)
{
    char *payload = malloc(len + 1);
    ck_assert_ptr_nonnull(payload);
    for (uint64_t seqno = from; seqno <= to; seqno++) {
        memset(payload, 'a' + (int)(seqno % 26), len);
        payload[len] = '\0';
        struct export_record rec = msg_rec(seqno, payload);
        ck_assert_int_eq(spool_put(sp, connector, &rec, "r", 1), 0);
    }
    free(payload);
}

static void subpath(char *out, size_t len, const char *rel)
{
    snprintf(out, len, "%s/%s", path, rel);
}

static long file_size(const char *file)
{
    struct stat st;
    return stat(file, &st) == 0 ? (long)st.st_size : -1;
}

static bool file_exists(const char *file)
{
    return access(file, F_OK) == 0;
}

/* The names in a directory that end with suffix, sorted, space separated. */
static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *list_dir(const char *d, const char *suffix, char *out, size_t len)
{
    char *names[512];
    size_t n = 0;
    DIR *dd = opendir(d);
    ck_assert_msg(dd != NULL, "opendir %s", d);
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        size_t l = strlen(e->d_name), sl = strlen(suffix);
        if (e->d_name[0] == '.' && (l == 1 || (l == 2 && e->d_name[1] == '.')))
            continue;
        if (l >= sl && strcmp(e->d_name + l - sl, suffix) == 0) {
            ck_assert(n < 512);
            names[n++] = strdup(e->d_name);
        }
    }
    closedir(dd);
    qsort(names, n, sizeof names[0], name_cmp);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        ck_assert(strlen(out) + strlen(names[i]) + 2 < len);
        strcat(out, names[i]);
        strcat(out, " ");
        free(names[i]);
    }
    return out;
}

/* The segment files of connector k, as "first-seqno ..." */
static const char *segments(char *out, size_t len)
{
    char d[400], names[8192];
    subpath(d, sizeof d, "k");
    list_dir(d, ".seg", names, sizeof names);
    out[0] = '\0';
    for (char *tok = strtok(names, " "); tok; tok = strtok(NULL, " ")) {
        char num[32];
        snprintf(num, sizeof num, "%llu ", strtoull(tok, NULL, 10));
        ck_assert(strlen(out) + strlen(num) < len);
        strcat(out, num);
    }
    return out;
}

static void seg_path(char *out, size_t len, uint64_t first)
{
    snprintf(out, len, "%s/k/%020llu.seg", path, (unsigned long long)first);
}

/* stderr into a file while the spool logs. */
static int saved_stderr = -1;
static char captured[300];

static void capture_start(void)
{
    snprintf(captured, sizeof captured, "%s/stderr.txt", dir);
    fflush(stderr);
    int fd = open(captured, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    saved_stderr = dup(2);
    ck_assert_int_ge(saved_stderr, 0);
    ck_assert_int_ge(dup2(fd, 2), 0);
    close(fd);
}

static const char *capture_end(char *out, size_t len)
{
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    FILE *f = fopen(captured, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(out, 1, len - 1, f);
    out[n] = '\0';
    fclose(f);
    unlink(captured);
    fputs(out, stderr); /* still shown */
    return out;
}

/* ---- a loader that renders what it is given as text --------------------- */

struct text {
    char buf[16384];
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

/* Seqnos of connector from `from`, at most max. */
static const char *load_page(struct spool *sp, const char *connector, uint64_t from, unsigned max,
                             struct text *t)
{
    memset(t, 0, sizeof *t);
    t->seqnos_only = true;
    unsigned loaded = 12345;
    ck_assert_int_eq(spool_load(sp, connector, from, max, text_load, t, &loaded), 0);
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

static uint64_t high_of(struct spool *sp, const char *connector)
{
    uint64_t h = 99;
    ck_assert_int_eq(spool_seqno_high(sp, connector, &h), 0);
    return h;
}

/* The state file copy with the higher counter, decoded: "A=3 holes=5-5,8-9" */
static const char *state_text(const char *connector_dir, char *out, size_t len)
{
    uint64_t best_counter = 0;
    out[0] = '\0';
    for (int k = 0; k < 2; k++) {
        char file[400];
        uint8_t b[4096];
        snprintf(file, sizeof file, "%s/%s/state.%d", path, connector_dir, k);
        FILE *f = fopen(file, "rb");
        if (!f)
            continue;
        size_t n = fread(b, 1, sizeof b, f);
        fclose(f);
        if (n < 40 || memcmp(b, "MQBSTAT1", 8) != 0)
            continue;
        uint64_t v[3];
        uint32_t holes;
        memcpy(v, b + 16, 16); /* counter, A (the tests run on little endian) */
        memcpy(&holes, b + 32, 4);
        if (v[0] < best_counter)
            continue;
        best_counter = v[0];
        int w = snprintf(out, len, "A=%llu holes=", (unsigned long long)v[1]);
        for (uint32_t i = 0; i < holes && 40 + 16 * i + 16 <= n; i++) {
            memcpy(v, b + 40 + 16 * i, 16);
            w += snprintf(out + w, len - (size_t)w, "%s%llu-%llu", i ? "," : "",
                          (unsigned long long)v[0], (unsigned long long)v[1]);
        }
    }
    return out;
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
      .time_ms = INT64_MIN,
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
     "3 g=7 r='sensors-status' k=2 id=42 t=-9223372036854775808 q=0 c='dev-7' tp=<null> "
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

/* _i: 0 files, 1 in memory. */
START_TEST(test_round_trip_every_field)
{
    struct spool *sp = open_at(_i ? NULL : path, STORE_SYNC_NORMAL);
    struct text t;
    for (size_t i = 0; i < N_ROUND_TRIP; i++)
        ck_assert_int_eq(
            spool_put(sp, "k", &round_trip[i].rec, round_trip[i].rule, round_trip[i].generation),
            0);
    /* Before the commit, a load sees the puts. */
    expect_round_trip(load_all(sp, "k", &t, false));
    ck_assert_int_eq(spool_commit(sp), 0);
    expect_round_trip(load_all(sp, "k", &t, false));
    if (_i == 0) {
        spool_close(sp);
        sp = open_ok();
        expect_round_trip(load_all(sp, "k", &t, false));
        /* One segment, named by its first seqno, and nothing else. */
        char names[256], d[400];
        subpath(d, sizeof d, "k");
        ck_assert_str_eq(list_dir(d, "", names, sizeof names), "00000000000000000001.seg ");
    }
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

/* ---- order, gaps, connectors -------------------------------------------- */

START_TEST(test_order_and_seqno_gaps)
{
    static const uint64_t seqnos[] = {
        3, 5, UINT32_MAX, 1ULL << 32, (1ULL << 32) + 1, 1ULL << 40, INT64_MAX, (1ULL << 63) + 7,
    };
    struct spool *sp = open_small(200); /* a few segments */
    struct text t;
    for (size_t i = 0; i < sizeof seqnos / sizeof seqnos[0]; i++)
        put_ok(sp, "k", seqnos[i]);
    static const char all[] = "3 5 4294967295 4294967296 4294967297 1099511627776 "
                              "9223372036854775807 9223372036854775815 ";
    ck_assert_str_eq(load_all(sp, "k", &t, true), all);
    range_expect(sp, "k", 8, 3, (1ULL << 63) + 7);
    ck_assert_uint_eq(high_of(sp, "k"), (1ULL << 63) + 7);
    /* Pages from any seqno, also one between two records. */
    ck_assert_str_eq(load_page(sp, "k", 1ULL << 32, 2, &t), "4294967296 4294967297 ");
    ck_assert_str_eq(load_page(sp, "k", 4, 2, &t), "5 4294967295 ");
    ck_assert_str_eq(load_page(sp, "k", INT64_MAX, 5, &t),
                     "9223372036854775807 9223372036854775815 ");
    /* Past the end and max 0 give nothing. */
    ck_assert_str_eq(load_page(sp, "k", (1ULL << 63) + 8, 10, &t), "");
    ck_assert_str_eq(load_page(sp, "k", UINT64_MAX, 10, &t), "");
    ck_assert_str_eq(load_page(sp, "k", 0, 0, &t), "");
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), all);
    ck_assert_uint_eq(high_of(sp, "k"), (1ULL << 63) + 7);
    /* The next put must be above the highest seqno. */
    struct export_record rec = msg_rec(INT64_MAX, "p");
    ck_assert_int_eq(spool_put(sp, "k", &rec, "r", 1), -1);
    rec.seqno = UINT64_MAX;
    ck_assert_int_eq(spool_put(sp, "k", &rec, "r", 1), 0);
    ck_assert_str_eq(load_page(sp, "k", UINT64_MAX, 10, &t), "18446744073709551615 ");
    spool_close(sp);
}
END_TEST

/* Names that are not file names as they are each get their own directory. */
static const struct {
    const char *name;
    const char *dir;
} conn_names[] = {
    {"a", "a"},         {"b", "b"},       {"ab", "ab"}, {"A", "A"},       {".", "%2E"},
    {"..", "%2E%2E"},   {"a/b", "a%2Fb"}, {"", "%"},    {"%41", "%2541"}, {"x y\n", "x%20y%0A"},
    {"k-1_2", "k-1_2"},
};
#define N_CONN_NAMES (sizeof conn_names / sizeof conn_names[0])

START_TEST(test_connectors_are_independent)
{
    struct spool *sp = open_ok();
    struct text t;
    for (size_t i = 0; i < N_CONN_NAMES; i++)
        put_range(sp, conn_names[i].name, 1, i + 1);
    ck_assert_int_eq(spool_ack(sp, "a", 1), 0);
    ck_assert_int_eq(spool_delete_range(sp, "b", 2, 2), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "a", &t, true), "");
    ck_assert_str_eq(load_all(sp, "b", &t, true), "1 ");
    ck_assert_str_eq(load_all(sp, "ab", &t, true), "1 2 3 ");
    for (size_t i = 2; i < N_CONN_NAMES; i++)
        range_expect(sp, conn_names[i].name, i + 1, 1, i + 1);
    ck_assert_str_eq(load_all(sp, "none", &t, true), "");
    spool_close(sp);
    /* The directories, escaped ("none" was looked at: it exists, empty). */
    char want[512] = "", names[512];
    const char *sorted[N_CONN_NAMES + 1];
    for (size_t i = 0; i < N_CONN_NAMES; i++)
        sorted[i] = conn_names[i].dir;
    sorted[N_CONN_NAMES] = "none";
    qsort(sorted, N_CONN_NAMES + 1, sizeof sorted[0], name_cmp);
    for (size_t i = 0; i <= N_CONN_NAMES; i++) {
        strcat(want, sorted[i]);
        strcat(want, " ");
    }
    ck_assert_str_eq(list_dir(path, "", names, sizeof names), want);
}
END_TEST

/* ---- ack and delete_range ------------------------------------------------ */

/* Records 1..10 of "k" (and 1..10 of "other", never touched). */
static const struct {
    uint64_t upto;
    const char *left;
    const char *state;
} ack_cases[] = {
    {0, "1 2 3 4 5 6 7 8 9 10 ", ""},
    {1, "2 3 4 5 6 7 8 9 10 ", "A=1 holes="},
    {3, "4 5 6 7 8 9 10 ", "A=3 holes="},
    {9, "10 ", "A=9 holes="},
    {10, "", "A=10 holes="},
    {11, "", "A=10 holes="},
    {UINT64_MAX, "", "A=10 holes="},
};

START_TEST(test_ack_forgets_up_to_and_including)
{
    struct spool *sp = open_ok();
    struct text t;
    char state[256];
    put_range(sp, "k", 1, 10);
    put_range(sp, "other", 1, 10);
    ck_assert_int_eq(spool_ack(sp, "k", ack_cases[_i].upto), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), ack_cases[_i].left);
    ck_assert_str_eq(load_all(sp, "other", &t, true), "1 2 3 4 5 6 7 8 9 10 ");
    /* Acking again, or lower, changes nothing. */
    ck_assert_int_eq(spool_ack(sp, "k", ack_cases[_i].upto), 0);
    ck_assert_int_eq(spool_ack(sp, "k", 0), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), ack_cases[_i].left);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(state_text("k", state, sizeof state), ack_cases[_i].state);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), ack_cases[_i].left);
    ck_assert_uint_eq(high_of(sp, "k"), 10);
    spool_close(sp);
}
END_TEST

/* Records 1..10 of "k", then deletes (first..last pairs), then an ack. */
static const struct {
    uint64_t del[3][2];
    uint64_t ack;
    const char *left;
    const char *state; /* after the commit: the holes merged and absorbed */
} delete_cases[] = {
    {{{5, 5}}, 0, "1 2 3 4 6 7 8 9 10 ", "A=0 holes=5-5"},
    {{{5, 5}, {6, 7}}, 0, "1 2 3 4 8 9 10 ", "A=0 holes=5-7"},
    {{{5, 5}, {7, 7}, {6, 6}}, 0, "1 2 3 4 8 9 10 ", "A=0 holes=5-7"},
    {{{2, 3}, {8, 9}}, 0, "1 4 5 6 7 10 ", "A=0 holes=2-3,8-9"},
    {{{2, 3}, {8, 9}}, 1, "4 5 6 7 10 ", "A=3 holes=8-9"},
    {{{2, 3}, {8, 9}}, 7, "10 ", "A=9 holes="},
    {{{1, 3}}, 0, "4 5 6 7 8 9 10 ", "A=3 holes="},
    {{{0, 0}, {4, 2}}, 0, "1 2 3 4 5 6 7 8 9 10 ", ""},
    {{{9, UINT64_MAX}}, 0, "1 2 3 4 5 6 7 8 ", "A=0 holes=9-10"},
    {{{0, UINT64_MAX}}, 0, "", "A=10 holes="},
    {{{3, 4}}, 5, "6 7 8 9 10 ", "A=5 holes="},
};

START_TEST(test_delete_range_holes_survive_reopen)
{
    struct spool *sp = open_ok();
    struct text t;
    char state[256];
    put_range(sp, "k", 1, 10);
    ck_assert_int_eq(spool_commit(sp), 0);
    for (int d = 0; d < 3; d++) {
        const uint64_t *r = delete_cases[_i].del[d];
        if (d > 0 && r[0] == 0 && r[1] == 0)
            break;
        ck_assert_int_eq(spool_delete_range(sp, "k", r[0], r[1]), 0);
    }
    ck_assert_int_eq(spool_ack(sp, "k", delete_cases[_i].ack), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), delete_cases[_i].left);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(state_text("k", state, sizeof state), delete_cases[_i].state);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), delete_cases[_i].left);
    /* Deleted records stay deleted, also once newer ones come. */
    put_range(sp, "k", 11, 12);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    char want[128];
    snprintf(want, sizeof want, "%s11 12 ", delete_cases[_i].left);
    ck_assert_str_eq(load_all(sp, "k", &t, true), want);
    spool_close(sp);
}
END_TEST

START_TEST(test_range_known_and_scanned)
{
    struct spool *sp = open_small(300);
    range_expect(sp, "k", 0, 0, 0);
    put_range(sp, "k", 1, 10);
    put_ok(sp, "k", 20);
    range_expect(sp, "k", 11, 1, 20);
    ck_assert_int_eq(spool_ack(sp, "k", 3), 0);
    range_expect(sp, "k", 8, 4, 20); /* a cut inside: scanned */
    ck_assert_int_eq(spool_delete_range(sp, "k", 5, 6), 0);
    range_expect(sp, "k", 6, 4, 20);
    ck_assert_int_eq(spool_delete_range(sp, "k", 11, 20), 0);
    range_expect(sp, "k", 5, 4, 10);
    put_ok(sp, "k", 21); /* pending, not written: counted all the same */
    range_expect(sp, "k", 6, 4, 21);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    range_expect(sp, "k", 6, 4, 21);
    ck_assert_uint_eq(high_of(sp, "k"), 21);
    ck_assert_int_eq(spool_delete_range(sp, "k", 1, 100), 0);
    range_expect(sp, "k", 0, 0, 0);
    ck_assert_uint_eq(high_of(sp, "k"), 21);
    /* Each output may be NULL. */
    ck_assert_int_eq(spool_range(sp, "k", NULL, NULL, NULL), 0);
    spool_close(sp);
}
END_TEST

/* ---- writes that are refused -------------------------------------------- */

START_TEST(test_put_refuses_and_goes_on)
{
    struct spool *sp = open_ok();
    struct text t;
    put_ok(sp, "k", 1);
    put_ok(sp, "k", 3);
    /* Not above the last seqno: a repeat would be a second copy. */
    struct export_record again[] = {msg_rec(3, "other"), msg_rec(2, "p"), msg_rec(0, "p")};
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++)
        ck_assert_int_eq(spool_put(sp, "k", &again[i], "r", 1), -1);
    static char long_topic[70000];
    memset(long_topic, 'x', sizeof long_topic - 1);
    struct export_record bad[] = {msg_rec(4, "p"), msg_rec(4, "p"), msg_rec(4, "p"),
                                  msg_rec(4, "p")};
    bad[0].kind = (enum record_kind)3;
    bad[1].qos = 3;
    bad[2].payload = NULL;
    bad[3].topic = long_topic;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_eq(spool_put(sp, "k", &bad[i], "r", 1), -1);
    /* Refused puts use no seqno. */
    ck_assert_uint_eq(high_of(sp, "k"), 3);
    put_ok(sp, "k", 4);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, false),
                     "1 g=1 r='r' k=1 id=10 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ch=<null> "
                     "ip=<null>\n"
                     "3 g=1 r='r' k=1 id=30 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ch=<null> "
                     "ip=<null>\n"
                     "4 g=1 r='r' k=1 id=40 t=1000 q=1 c='c1' tp='t/1' p=70 e=<null> ch=<null> "
                     "ip=<null>\n");
    spool_close(sp);
}
END_TEST

/* ---- durability ----------------------------------------------------------- */

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
    spool_close(sp);
    sp = open_at(path, sync_levels[_i]);
    range_expect(sp, "k", 32, 21, 52);
    ck_assert_str_eq(load_all(sp, "j", &t, true), "7 8 ");
    spool_close(sp);
    spool_close(NULL);
}
END_TEST

/* A crash: the child commits puts, an ack and a delete, then puts, acks and
 * deletes more without a commit and exits without closing. The parent
 * finds exactly what was committed. */
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
        if (seqno == 50 && (spool_ack(sp, "k", 10) != 0 ||
                            spool_delete_range(sp, "k", 40, 41) != 0 || spool_commit(sp) != 0))
            return 4;
    }
    if (spool_ack(sp, "k", 20) != 0 || spool_delete_range(sp, "k", 30, 35) != 0)
        return 5;
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
    range_expect(sp, "k", 38, 11, 50);
    ck_assert_uint_eq(high_of(sp, "k"), 50);
    struct text t;
    load_all(sp, "k", &t, true);
    ck_assert_uint_eq(t.calls, 38);
    ck_assert_ptr_null(strstr(t.buf, " 40 "));
    ck_assert_ptr_nonnull(strstr(t.buf, " 35 "));
    /* The seqnos lost with the crash can be used again. */
    put_ok(sp, "k", 51);
    range_expect(sp, "k", 39, 11, 51);
    spool_close(sp);
}
END_TEST

/* ---- segments ------------------------------------------------------------- */

/* Each record of put_sized(.., 100) takes 64 + 1 + 2 + 3 + 100 = 170 bytes. */
enum { REC170 = 170 };

START_TEST(test_rotation_and_segment_deletion)
{
    struct spool *sp = open_small(4 * REC170); /* 4 records per segment */
    struct text t;
    char segs[512];
    put_sized(sp, "k", 1, 10, 100);
    ck_assert_int_eq(spool_commit(sp), 0); /* one write: one segment */
    put_sized(sp, "k", 11, 30, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    for (uint64_t s = 31; s <= 50; s++) { /* a commit per record */
        put_sized(sp, "k", s, s, 100);
        ck_assert_int_eq(spool_commit(sp), 0);
    }
    ck_assert_str_eq(segments(segs, sizeof segs), "1 11 31 35 39 43 47 ");
    char file[400];
    seg_path(file, sizeof file, 1);
    ck_assert_int_eq(file_size(file), 10 * REC170);
    /* Acks delete a segment once all of it is acknowledged, at the commit. */
    ck_assert_int_eq(spool_ack(sp, "k", 34), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "1 11 31 35 39 43 47 ");
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "35 39 43 47 ");
    /* A hole over a whole segment deletes it too. */
    ck_assert_int_eq(spool_delete_range(sp, "k", 38, 43), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "35 43 47 ");
    ck_assert_str_eq(load_all(sp, "k", &t, true), "35 36 37 44 45 46 47 48 49 50 ");
    spool_close(sp);
    sp = open_small(4 * REC170);
    ck_assert_str_eq(load_all(sp, "k", &t, true), "35 36 37 44 45 46 47 48 49 50 ");
    /* One record larger than a segment gets one of its own. */
    put_sized(sp, "k", 51, 51, 2000);
    put_sized(sp, "k", 52, 52, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "35 43 47 51 ");
    put_sized(sp, "k", 53, 53, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "35 43 47 51 53 ");
    /* Everything acknowledged: gone at the commit (the last segment is as
     * large as a sixteenth of the bound), the state stays. */
    ck_assert_int_eq(spool_ack(sp, "k", 53), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(segments(segs, sizeof segs), "");
    spool_close(sp);
    char names[256], d[400];
    subpath(d, sizeof d, "k");
    ck_assert_str_eq(list_dir(d, "", names, sizeof names), "state.0 state.1 ");
    sp = open_ok();
    ck_assert_uint_eq(high_of(sp, "k"), 53);
    range_expect(sp, "k", 0, 0, 0);
    spool_close(sp);
}
END_TEST

START_TEST(test_idle_last_segment_goes_at_close)
{
    struct spool *sp = open_ok(); /* 64 MiB segments */
    char segs[128];
    put_sized(sp, "k", 1, 5, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(spool_ack(sp, "k", 5), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    /* Small and in use: kept for the next records. */
    ck_assert_str_eq(segments(segs, sizeof segs), "1 ");
    put_sized(sp, "k", 6, 6, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    char file[400];
    seg_path(file, sizeof file, 1);
    ck_assert_int_eq(file_size(file), 6 * REC170);
    ck_assert_int_eq(spool_ack(sp, "k", 6), 0);
    spool_close(sp);
    ck_assert_str_eq(segments(segs, sizeof segs), "");
}
END_TEST

/* 64 KiB payloads, each a different pattern, and one of 1 MiB. */
static int check_large(void *ctx, struct export_record *rec, const char *rule, uint64_t gen)
{
    unsigned *calls = ctx;
    uint32_t want = rec->seqno == 21 ? 1u << 20 : 65536;
    ck_assert_uint_eq(rec->payload_len, want);
    for (uint32_t i = 0; i < want; i++)
        if (rec->payload[i] != (uint8_t)(rec->seqno * 131 + i * 7 + (i >> 8)))
            ck_abort_msg("record %llu: byte %u differs", (unsigned long long)rec->seqno, i);
    ck_assert_str_eq(rule, "big");
    ck_assert_uint_eq(gen, rec->seqno);
    ck_assert_uint_eq(rec->seqno, ++*calls);
    export_record_free(rec);
    return 0;
}

START_TEST(test_large_payloads)
{
    struct spool *sp = open_small(200000); /* 3 per segment */
    uint8_t *payload = malloc(1u << 20);
    ck_assert_ptr_nonnull(payload);
    for (uint64_t seqno = 1; seqno <= 21; seqno++) {
        uint32_t len = seqno == 21 ? 1u << 20 : 65536;
        for (uint32_t i = 0; i < len; i++)
            payload[i] = (uint8_t)(seqno * 131 + i * 7 + (i >> 8));
        struct export_record rec = msg_rec(seqno, "");
        rec.payload = payload;
        rec.payload_len = len;
        ck_assert_int_eq(spool_put(sp, "k", &rec, "big", seqno), 0);
        if (seqno % 4 == 0)
            ck_assert_int_eq(spool_commit(sp), 0);
    }
    free(payload);
    unsigned calls = 0, loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 100, check_large, &calls, &loaded), 0);
    ck_assert_uint_eq(loaded, 21);
    spool_close(sp);
    sp = open_ok();
    calls = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 100, check_large, &calls, &loaded), 0);
    ck_assert_uint_eq(loaded, 21);
    spool_close(sp);
}
END_TEST

/* ---- recovery --------------------------------------------------------------- */

static void truncate_by(const char *file, long n)
{
    long size = file_size(file);
    ck_assert_int_gt(size, n);
    ck_assert_int_eq(truncate(file, size - n), 0);
}

static void append_bytes(const char *file, const void *data, size_t n)
{
    FILE *f = fopen(file, "ab");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void flip_byte(const char *file, long off)
{
    int fd = open(file, O_RDWR);
    ck_assert_int_ge(fd, 0);
    uint8_t b;
    ck_assert_int_eq(pread(fd, &b, 1, off), 1);
    b ^= 0x20;
    ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

/* How the end of the last segment is spoiled. */
enum tail_damage { TAIL_CUT, TAIL_GARBAGE, TAIL_ZEROS, TAIL_HEADER_ONLY, TAIL_BAD_CRC };

START_TEST(test_torn_tail_is_cut_off)
{
    struct spool *sp = open_small(6 * REC170);
    struct text t;
    char log[4096], file[400], want[64];
    put_sized(sp, "k", 1, 8, 100); /* one segment (one write) */
    ck_assert_int_eq(spool_commit(sp), 0);
    put_sized(sp, "k", 9, 10, 100); /* the last segment: 9 10 */
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    seg_path(file, sizeof file, 9);
    long good = file_size(file);
    ck_assert_int_eq(good, 2 * REC170);
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    long left = good; /* the size after recovery */
    const char *lost = "";
    switch ((enum tail_damage)_i) {
    case TAIL_CUT: /* record 10 lacks its last 3 bytes */
        truncate_by(file, 3);
        left = REC170;
        lost = "10";
        snprintf(want, sizeof want, "%d bytes of an unfinished write at offset %d", REC170 - 3,
                 REC170);
        break;
    case TAIL_GARBAGE:
        append_bytes(file, junk, sizeof junk);
        snprintf(want, sizeof want, "%zu bytes of an unfinished write at offset %ld", sizeof junk,
                 good);
        break;
    case TAIL_ZEROS: { /* what a file system may show after a power cut */
        static const uint8_t zeros[4096];
        append_bytes(file, zeros, sizeof zeros);
        snprintf(want, sizeof want, "4096 bytes of an unfinished write at offset %ld", good);
        break;
    }
    case TAIL_HEADER_ONLY: /* a record's header, its body never written */
        memcpy(junk, "MQS1", 4);
        append_bytes(file, junk, 64);
        snprintf(want, sizeof want, "64 bytes of an unfinished write at offset %ld", good);
        break;
    case TAIL_BAD_CRC: /* the last record complete but wrong */
        flip_byte(file, good - 5);
        left = REC170;
        lost = "10";
        snprintf(want, sizeof want, "%d bytes of an unfinished write at offset %d", REC170, REC170);
        break;
    }
    capture_start();
    sp = open_ok();
    range_expect(sp, "k", *lost ? 9 : 10, 1, *lost ? 9 : 10);
    capture_end(log, sizeof log);
    ck_assert_msg(strstr(log, want) != NULL, "expected '%s' in '%s'", want, log);
    ck_assert_ptr_nonnull(strstr(log, "WARN"));
    ck_assert_ptr_null(strstr(log, "ERROR"));
    ck_assert_int_eq(file_size(file), left);
    ck_assert_str_eq(load_all(sp, "k", &t, true),
                     *lost ? "1 2 3 4 5 6 7 8 9 " : "1 2 3 4 5 6 7 8 9 10 ");
    /* The log goes on where it was cut, and a reopen is quiet. */
    ck_assert_uint_eq(high_of(sp, "k"), *lost ? 9 : 10);
    put_sized(sp, "k", 11, 11, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    capture_start();
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true),
                     *lost ? "1 2 3 4 5 6 7 8 9 11 " : "1 2 3 4 5 6 7 8 9 10 11 ");
    capture_end(log, sizeof log);
    ck_assert_ptr_null(strstr(log, "WARN"));
    ck_assert_ptr_null(strstr(log, "ERROR"));
    spool_close(sp);
}
END_TEST

static void read_file(const char *file, long off, uint8_t *out, size_t n)
{
    FILE *f = fopen(file, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, off, SEEK_SET), 0);
    ck_assert_uint_eq(fread(out, 1, n, f), n);
    fclose(f);
}

/* Segments 1-4, 5-8, 9-12 (4 records each). A record in the middle of a
 * segment fails its CRC: the rest of that segment is set aside, the other
 * segments are read. _i: which segment (0: the first, 2: the last). */
START_TEST(test_damage_in_the_middle_is_set_aside)
{
    struct spool *sp = open_small(4 * REC170);
    struct text t;
    char log[4096], file[400], aside[420], want[256];
    for (uint64_t s = 1; s <= 12; s += 4) {
        put_sized(sp, "k", s, s + 3, 100);
        ck_assert_int_eq(spool_commit(sp), 0);
    }
    spool_close(sp);
    uint64_t first = 1 + 4 * (uint64_t)_i;
    seg_path(file, sizeof file, first);
    uint8_t before[3 * REC170];
    read_file(file, REC170, before, sizeof before);
    flip_byte(file, REC170 + 100); /* inside the second record's payload */
    capture_start();
    sp = open_ok();
    const char *got = load_all(sp, "k", &t, true);
    capture_end(log, sizeof log);
    static const char *const left[] = {"1 5 6 7 8 9 10 11 12 ", "1 2 3 4 5 9 10 11 12 ",
                                       "1 2 3 4 5 6 7 8 9 "};
    ck_assert_str_eq(got, left[_i]);
    range_expect(sp, "k", 9, 1, _i == 2 ? 9 : 12);
    snprintf(want, sizeof want,
             "%020llu.seg is damaged at offset %d: %d bytes from there moved to "
             "%020llu.seg.corrupt; records of connector 'k' above seqno %llu",
             (unsigned long long)first, REC170, 3 * REC170, (unsigned long long)first,
             (unsigned long long)first);
    ck_assert_msg(strstr(log, want) != NULL, "expected '%s' in '%s'", want, log);
    ck_assert_ptr_nonnull(strstr(log, "ERROR"));
    if (_i < 2) {
        snprintf(want, sizeof want, "and below %llu that were there are not exported",
                 (unsigned long long)first + 4);
        ck_assert_msg(strstr(log, want) != NULL, "expected '%s' in '%s'", want, log);
    }
    /* The bytes are kept, unchanged apart from the damage. */
    snprintf(aside, sizeof aside, "%s.corrupt", file);
    ck_assert_int_eq(file_size(aside), 3 * REC170);
    ck_assert_int_eq(file_size(file), REC170);
    uint8_t kept[3 * REC170];
    read_file(aside, 0, kept, sizeof kept);
    before[100] ^= 0x20;
    ck_assert_mem_eq(kept, before, sizeof kept);
    /* New records go on; a reopen finds a sound log and leaves the copy. */
    put_sized(sp, "k", 13, 13, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    capture_start();
    sp = open_ok();
    range_expect(sp, "k", 10, 1, 13);
    capture_end(log, sizeof log);
    ck_assert_ptr_null(strstr(log, "WARN"));
    ck_assert_ptr_null(strstr(log, "ERROR"));
    ck_assert_int_eq(file_size(aside), 3 * REC170);
    /* Acknowledging everything deletes the segments, not the copy. */
    ck_assert_int_eq(spool_ack(sp, "k", 13), 0);
    spool_close(sp);
    char segs[128];
    ck_assert_str_eq(segments(segs, sizeof segs), "");
    ck_assert_int_eq(file_size(aside), 3 * REC170);
}
END_TEST

/* A segment that is not the last one ends in a torn record: damage too
 * (it was complete when the next one started). */
START_TEST(test_torn_end_of_an_earlier_segment)
{
    struct spool *sp = open_small(4 * REC170);
    struct text t;
    char log[4096], file[400];
    put_sized(sp, "k", 1, 4, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    put_sized(sp, "k", 5, 8, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    seg_path(file, sizeof file, 1);
    truncate_by(file, 10);
    capture_start();
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 5 6 7 8 ");
    capture_end(log, sizeof log);
    ck_assert_ptr_nonnull(strstr(log, "is damaged at offset 510: 160 bytes"));
    ck_assert_ptr_nonnull(strstr(log, "above seqno 3 and below 5"));
    spool_close(sp);
}
END_TEST

/* Records out of order (a segment that repeats seqnos) count as damage. */
START_TEST(test_seqnos_must_grow_across_segments)
{
    struct spool *sp = open_small(4 * REC170);
    struct text t;
    char log[4096], a[400], b[400];
    put_sized(sp, "k", 1, 4, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    put_sized(sp, "k", 5, 8, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    /* A stray copy of the first segment named as if it came last. */
    seg_path(a, sizeof a, 1);
    seg_path(b, sizeof b, 9);
    uint8_t bytes[4 * REC170];
    read_file(a, 0, bytes, sizeof bytes);
    append_bytes(b, bytes, sizeof bytes);
    capture_start();
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 5 6 7 8 ");
    capture_end(log, sizeof log);
    ck_assert_ptr_nonnull(strstr(log, "00000000000000000009.seg is damaged at offset 0"));
    char aside[420];
    snprintf(aside, sizeof aside, "%s.corrupt", b);
    ck_assert_int_eq(file_size(aside), 4 * REC170);
    ck_assert(!file_exists(b));
    spool_close(sp);
}
END_TEST

/* The state file copies: the newer valid one wins; a damaged newer copy
 * falls back to the older; both damaged: from the start (at least once). */
START_TEST(test_state_copies)
{
    struct spool *sp = open_ok();
    struct text t;
    char log[4096], s0[400], s1[400];
    put_range(sp, "k", 1, 10);
    ck_assert_int_eq(spool_ack(sp, "k", 3), 0);
    ck_assert_int_eq(spool_commit(sp), 0); /* counter 1: state.1 */
    ck_assert_int_eq(spool_ack(sp, "k", 6), 0);
    ck_assert_int_eq(spool_delete_range(sp, "k", 9, 9), 0);
    ck_assert_int_eq(spool_commit(sp), 0); /* counter 2: state.0 */
    spool_close(sp);
    subpath(s0, sizeof s0, "k/state.0");
    subpath(s1, sizeof s1, "k/state.1");
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "7 8 10 ");
    spool_close(sp);
    flip_byte(s0, 30); /* inside A */
    capture_start();
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "4 5 6 7 8 9 10 ");
    capture_end(log, sizeof log);
    ck_assert_ptr_nonnull(strstr(log, "state.0 is damaged; the other copy is used"));
    spool_close(sp);
    truncate_by(s1, 1);
    capture_start();
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 5 6 7 8 9 10 ");
    capture_end(log, sizeof log);
    ck_assert_ptr_nonnull(strstr(log, "both state files are damaged"));
    /* The next write gives a valid state again. */
    ck_assert_int_eq(spool_ack(sp, "k", 2), 0);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "3 4 5 6 7 8 9 10 ");
    spool_close(sp);
}
END_TEST

/* ---- the load cursor and callbacks ---------------------------------------- */

START_TEST(test_load_in_pages_jumps_and_pending)
{
    struct spool *sp = open_small(3 * 71); /* 3 records per segment */
    struct text t;
    char want[1024];
    put_range(sp, "k", 1, 100);
    ck_assert_int_eq(spool_commit(sp), 0);
    /* In order, 7 at a time, as the exporter does. */
    uint64_t from = 1;
    while (from <= 100) {
        load_page(sp, "k", from, 7, &t);
        unsigned n = from + 6 <= 100 ? 7 : (unsigned)(101 - from);
        ck_assert_uint_eq(t.calls, n);
        want[0] = '\0';
        for (unsigned i = 0; i < n; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%llu ",
                     (unsigned long long)(from + i));
        ck_assert_str_eq(t.buf, want);
        from += n;
    }
    /* Back, forward past segments, and into the middle of one. */
    ck_assert_str_eq(load_page(sp, "k", 3, 3, &t), "3 4 5 ");
    ck_assert_str_eq(load_page(sp, "k", 90, 2, &t), "90 91 ");
    ck_assert_str_eq(load_page(sp, "k", 44, 2, &t), "44 45 ");
    ck_assert_str_eq(load_page(sp, "k", 46, 1, &t), "46 ");
    /* Records put but not committed are loaded, also in the middle of a
     * page that started with committed ones. */
    put_range(sp, "k", 101, 103);
    ck_assert_str_eq(load_page(sp, "k", 99, 10, &t), "99 100 101 102 103 ");
    put_range(sp, "k", 104, 104);
    ck_assert_str_eq(load_page(sp, "k", 104, 10, &t), "104 ");
    /* Acked and deleted records are passed over. */
    ck_assert_int_eq(spool_ack(sp, "k", 50), 0);
    ck_assert_int_eq(spool_delete_range(sp, "k", 52, 98), 0);
    ck_assert_str_eq(load_page(sp, "k", 0, 10, &t), "51 99 100 101 102 103 104 ");
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(load_page(sp, "k", 0, 10, &t), "51 99 100 101 102 103 104 ");
    spool_close(sp);
}
END_TEST

static const unsigned stop_at[] = {1, 2, 5};

/* Found by fuzz_spool: the segment holding the read cursor is unlinked
 * (all its records deleted) while an earlier one with room survives; the
 * next record goes to that earlier segment, behind the cursor, and must
 * still be loaded, also after a restart. */
START_TEST(test_cursor_survives_its_segment)
{
    struct spool *sp = open_small(4 * 71 + 70); /* 4 records, then room for 70 bytes */
    struct text t;
    put_range(sp, "k", 1, 4);
    ck_assert_int_eq(spool_commit(sp), 0);
    put_range(sp, "k", 5, 8);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 5 6 7 8 ");
    ck_assert_int_eq(spool_delete_range(sp, "k", 5, 8), 0);
    ck_assert_int_eq(spool_commit(sp), 0);     /* the second segment goes */
    struct export_record rec = msg_rec(9, ""); /* 70 bytes: fits in the first */
    ck_assert_int_eq(spool_put(sp, "k", &rec, "r", 1), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_str_eq(load_page(sp, "k", 9, 10, &t), "9 ");
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 9 ");
    put_range(sp, "k", 10, 12); /* a new segment, named after the first */
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 9 10 11 12 ");
    range_expect(sp, "k", 8, 1, 12);
    spool_close(sp);
}
END_TEST

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
    /* A full load works afterwards. */
    ck_assert_str_eq(load_all(sp, "k", &t, true), "1 2 3 4 5 ");
    spool_close(sp);
}
END_TEST

/* What the engine does from a load callback: ack, delete the record (its
 * rule is gone), put new records, commit. A nested load is refused. */
struct nested {
    struct spool *sp;
    unsigned calls;
    int nested_rc;
    uint64_t next_put;
};

static int busy_callback(void *ctx, struct export_record *rec, const char *rule,
                         uint64_t generation)
{
    struct nested *n = ctx;
    struct text t = {0};
    if (n->calls++ == 0) {
        n->nested_rc = spool_load(n->sp, "k", 0, 10, text_load, &t, NULL);
        ck_assert_uint_eq(t.calls, 0);
    }
    int rc = 0;
    if (rec->seqno % 3 == 0)
        rc |= spool_delete_range(n->sp, "k", rec->seqno, rec->seqno);
    else
        rc |= spool_ack(n->sp, "k", rec->seqno);
    put_ok(n->sp, "k", n->next_put++);
    if (rec->seqno % 4 == 0)
        rc |= spool_commit(n->sp);
    export_record_free(rec);
    return rc;
}

START_TEST(test_load_callback_may_write)
{
    struct spool *sp = open_small(3 * 71);
    struct text t;
    put_range(sp, "k", 1, 30);
    ck_assert_int_eq(spool_commit(sp), 0);
    struct nested n = {.sp = sp, .next_put = 100};
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, "k", 0, 30, busy_callback, &n, &loaded), 0);
    ck_assert_uint_eq(loaded, 30);
    ck_assert_uint_eq(n.calls, 30);
    ck_assert_int_eq(n.nested_rc, -1);
    /* Acked up to 29, 30 deleted; the 30 new records remain. */
    range_expect(sp, "k", 30, 100, 129);
    ck_assert_int_eq(spool_commit(sp), 0);
    spool_close(sp);
    sp = open_ok();
    load_all(sp, "k", &t, true);
    ck_assert_uint_eq(t.calls, 30);
    range_expect(sp, "k", 30, 100, 129);
    spool_close(sp);
}
END_TEST

/* ---- in memory --------------------------------------------------------- */

START_TEST(test_memory_mode)
{
    char before[4096], after[4096];
    list_dir(dir, "", before, sizeof before);
    struct spool *a = open_at(NULL, STORE_SYNC_FULL);
    struct spool *b = open_at(NULL, STORE_SYNC_OFF);
    spool_set_segment_max(a, 3 * 71); /* 3 records per segment */
    struct text t;
    for (uint64_t seqno = 1; seqno <= 50; seqno++) {
        put_ok(a, "k", seqno);
        ck_assert_int_eq(spool_commit(a), 0);
    }
    put_ok(b, "k", 9);
    ck_assert_int_eq(spool_ack(a, "k", 40), 0);
    ck_assert_int_eq(spool_delete_range(a, "k", 42, 43), 0);
    ck_assert_int_eq(spool_commit(a), 0);
    /* Two in-memory spools are two spools. */
    ck_assert_str_eq(load_all(a, "k", &t, true), "41 44 45 46 47 48 49 50 ");
    ck_assert_str_eq(load_page(a, "k", 45, 2, &t), "45 46 ");
    ck_assert_str_eq(load_all(b, "k", &t, true), "9 ");
    range_expect(a, "k", 8, 41, 50);
    ck_assert_uint_eq(high_of(a, "k"), 50);
    spool_close(a);
    spool_close(b);
    /* Nothing of it is durable or on disk. */
    a = open_at(NULL, STORE_SYNC_NORMAL);
    range_expect(a, "k", 0, 0, 0);
    spool_close(a);
    ck_assert_str_eq(list_dir(dir, "", after, sizeof after), before);
}
END_TEST

/* ---- open failures and files that are not ours ------------------------------- */

/* Every failed open leaves *out NULL and says why, naming the directory. */
static void open_fails(const char *file, enum store_sync sync, const char *why)
{
    char err[1024] = "";
    struct spool *sp = (struct spool *)&err; /* must be overwritten */
    ck_assert_int_eq(spool_open(file, sync, &sp, err, sizeof err), -1);
    ck_assert_ptr_null(sp);
    ck_assert_msg(strstr(err, file ? file : "(memory)") != NULL, "no path in '%s'", err);
    ck_assert_msg(strstr(err, why) != NULL, "expected '%s' in '%s'", why, err);
}

START_TEST(test_open_failures)
{
    char file[400];
    snprintf(file, sizeof file, "%s/no/such/dir", dir);
    open_fails(file, STORE_SYNC_NORMAL, "cannot create the directory: No such file");
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("not a directory\n", f);
    fclose(f);
    open_fails(path, STORE_SYNC_NORMAL, "cannot open the directory: Not a directory");
    ck_assert_int_eq(file_size(path), 16);
    open_fails(dir, (enum store_sync)7, "sync level 7");
    open_fails(NULL, (enum store_sync) - 1, "sync level -1");
}
END_TEST

/* A connector whose directory cannot be made: its calls fail (the engine
 * then holds its records in memory), the others work. */
START_TEST(test_unusable_connector_log)
{
    struct spool *sp = open_ok();
    char file[400], log[4096];
    subpath(file, sizeof file, "bad");
    append_bytes(file, "x", 1);
    capture_start();
    struct export_record rec = msg_rec(1, "p");
    ck_assert_int_eq(spool_put(sp, "bad", &rec, "r", 1), -1);
    ck_assert_int_eq(spool_put(sp, "bad", &rec, "r", 1), -1);
    ck_assert_int_eq(spool_range(sp, "bad", NULL, NULL, NULL), -1);
    capture_end(log, sizeof log);
    ck_assert_ptr_nonnull(strstr(log, "/bad: Not a directory"));
    /* Said once, not per record. */
    ck_assert_ptr_null(strstr(strstr(log, "cannot be used") + 1, "cannot be used"));
    put_ok(sp, "k", 1);
    ck_assert_int_eq(spool_commit(sp), 0);
    range_expect(sp, "k", 1, 1, 1);
    spool_close(sp);
}
END_TEST

START_TEST(test_foreign_files_untouched)
{
    char file[400], d[400], names[512];
    /* The SQLite spool of earlier builds sat next to the spool directory. */
    snprintf(file, sizeof file, "%s/export-spool.db", dir);
    append_bytes(file, "old", 3);
    struct spool *sp = open_ok();
    put_range(sp, "k", 1, 3);
    ck_assert_int_eq(spool_commit(sp), 0);
    static const char *const foreign[] = {"notes.txt", "123.seg", "00000000000000000001.seg.bak",
                                          "0000000000000000000x.seg"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        char f[500];
        snprintf(f, sizeof f, "%s/k/%s", path, foreign[i]);
        append_bytes(f, "mine", 4);
    }
    ck_assert_int_eq(spool_ack(sp, "k", 3), 0);
    spool_close(sp);
    sp = open_ok();
    range_expect(sp, "k", 0, 0, 0);
    spool_close(sp);
    subpath(d, sizeof d, "k");
    ck_assert_str_eq(list_dir(d, "", names, sizeof names),
                     "00000000000000000001.seg.bak 0000000000000000000x.seg 123.seg notes.txt "
                     "state.1 "); /* one state write so far: the copy for counter 1 */
    ck_assert_int_eq(file_size(file), 3);
}
END_TEST

/* ---- random operations against a model ------------------------------------------ */

/* What a record with seqno s of connector c holds: every field derived from
 * (c, s), so a loaded record can be checked whole. */
static void model_record(unsigned c, uint64_t s, struct export_record *rec, char strs[4][48],
                         uint8_t *payload, const char **rule, uint64_t *generation)
{
    bool status = s % 5 == 0;
    uint32_t len = s % 13 == 0 ? 900 + (uint32_t)(s % 200) : (uint32_t)(s % 97);
    for (uint32_t i = 0; i < len; i++)
        payload[i] = (uint8_t)(s * 31 + i * 7 + c);
    snprintf(strs[0], 48, "client-%u-%llu", c, (unsigned long long)(s % 11));
    snprintf(strs[1], 48, "t/%llu", (unsigned long long)s);
    snprintf(strs[2], 48, "ch%llu", (unsigned long long)s);
    snprintf(strs[3], 48, "rule-%u", c);
    *rec = (struct export_record){
        .seqno = s,
        .kind = status ? RECORD_STATUS : RECORD_MESSAGE,
        .msg_id = s * 1000003u,
        .time_ms = (int64_t)s * 7 - 1000,
        .qos = status ? 0 : (uint8_t)(s % 3),
        .client_id = strs[0],
        .topic = status ? NULL : strs[1],
        .payload = payload,
        .payload_len = len,
        .event_type = status ? "connect" : NULL,
        .channel_id = status ? strs[2] : NULL,
        .client_ip = status ? "192.0.2.9:1883" : NULL,
    };
    *rule = s % 4 == 0 ? NULL : strs[3];
    *generation = s / 10;
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

enum { M_CONNS = 3, M_MAX_PUTS = 8192, M_MAX_HOLES = 2048 };
static const char *const m_names[M_CONNS] = {"k", "r.2", "p/3"};

struct m_hole {
    uint64_t lo, hi;
};

/* One connector as the contract says it must look. Holes are kept as
 * given (not merged): only what is live matters. */
struct m_conn {
    uint64_t puts[M_MAX_PUTS];
    size_t n, n_durable; /* puts[0..n_durable) survive a crash */
    uint64_t acked, d_acked;
    struct m_hole holes[M_MAX_HOLES], d_holes[M_MAX_HOLES];
    size_t nh, d_nh;
};

struct model {
    struct m_conn c[M_CONNS];
    uint64_t rng;
};

static uint64_t rnd(struct model *m)
{
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return m->rng;
}

static bool m_live(const struct m_conn *c, uint64_t s)
{
    if (s <= c->acked)
        return false;
    for (size_t i = 0; i < c->nh; i++)
        if (s >= c->holes[i].lo && s <= c->holes[i].hi)
            return false;
    return true;
}

static uint64_t m_high(const struct m_conn *c)
{
    uint64_t h = c->acked;
    if (c->n && c->puts[c->n - 1] > h)
        h = c->puts[c->n - 1];
    for (size_t i = 0; i < c->nh; i++)
        if (c->holes[i].hi > h)
            h = c->holes[i].hi;
    return h;
}

static void m_commit(struct model *m)
{
    for (int k = 0; k < M_CONNS; k++) {
        struct m_conn *c = &m->c[k];
        c->n_durable = c->n;
        c->d_acked = c->acked;
        memcpy(c->d_holes, c->holes, c->nh * sizeof c->holes[0]);
        c->d_nh = c->nh;
    }
}

static void m_crash(struct model *m)
{
    for (int k = 0; k < M_CONNS; k++) {
        struct m_conn *c = &m->c[k];
        c->n = c->n_durable;
        c->acked = c->d_acked;
        memcpy(c->holes, c->d_holes, c->d_nh * sizeof c->holes[0]);
        c->nh = c->d_nh;
    }
}

/* A number around the connector's range: [acked - 2, high + 2]. */
static uint64_t m_near(struct model *m, const struct m_conn *c)
{
    uint64_t lo = c->acked > 2 ? c->acked - 2 : 0, hi = m_high(c) + 2;
    return lo + rnd(m) % (hi - lo + 1);
}

/* One write operation (put, ack, delete, commit), on the model and, when
 * sp is not NULL, on the spool. Returns false when the spool failed. */
static bool m_write_op(struct model *m, struct spool *sp)
{
    uint64_t r = rnd(m);
    unsigned k = (unsigned)(rnd(m) % M_CONNS);
    struct m_conn *c = &m->c[k];
    unsigned kind = (unsigned)(r % 100);
    if (kind < 60) { /* put, sometimes with a gap */
        uint64_t s = m_high(c) + 1 + (rnd(m) % 4 == 0 ? rnd(m) % 5 : 0);
        if (c->n == M_MAX_PUTS)
            return true;
        c->puts[c->n++] = s;
        if (!sp)
            return true;
        struct export_record rec;
        char strs[4][48];
        static uint8_t payload[2048];
        const char *rule;
        uint64_t gen;
        model_record(k, s, &rec, strs, payload, &rule, &gen);
        return spool_put(sp, m_names[k], &rec, rule, gen) == 0;
    }
    if (kind < 75) {
        m_commit(m);
        return !sp || spool_commit(sp) == 0;
    }
    if (kind < 88) {
        uint64_t upto = m_near(m, c);
        if (upto > m_high(c))
            upto = m_high(c);
        if (upto > c->acked)
            c->acked = upto;
        return !sp || spool_ack(sp, m_names[k], upto) == 0;
    }
    uint64_t first = m_near(m, c), span = rnd(m) % 8 == 0 ? rnd(m) % 40 : rnd(m) % 3;
    uint64_t last = first + span, lo = first, hi = last;
    if (hi > m_high(c))
        hi = m_high(c);
    if (lo <= c->acked)
        lo = c->acked + 1;
    if (lo <= hi && c->nh < M_MAX_HOLES)
        c->holes[c->nh++] = (struct m_hole){lo, hi};
    return !sp || spool_delete_range(sp, m_names[k], first, last) == 0;
}

struct m_check {
    unsigned conn;
    uint64_t expect[M_MAX_PUTS];
    size_t n, at;
};

static int m_check_record(void *ctx, struct export_record *got, const char *rule,
                          uint64_t generation)
{
    struct m_check *mc = ctx;
    ck_assert_msg(mc->at < mc->n, "connector %s: record %llu loaded, none expected",
                  m_names[mc->conn], (unsigned long long)got->seqno);
    ck_assert_msg(got->seqno == mc->expect[mc->at],
                  "connector %s: record %llu loaded, %llu expected", m_names[mc->conn],
                  (unsigned long long)got->seqno, (unsigned long long)mc->expect[mc->at]);
    mc->at++;
    struct export_record want;
    char strs[4][48];
    static uint8_t payload[2048];
    const char *want_rule;
    uint64_t want_gen;
    model_record(mc->conn, got->seqno, &want, strs, payload, &want_rule, &want_gen);
    ck_assert(got->kind == want.kind && got->msg_id == want.msg_id &&
              got->time_ms == want.time_ms && got->qos == want.qos &&
              got->payload_len == want.payload_len && generation == want_gen);
    ck_assert(memcmp(got->payload, want.payload, want.payload_len) == 0);
    ck_assert(str_same(got->client_id, want.client_id) && str_same(got->topic, want.topic) &&
              str_same(got->event_type, want.event_type) &&
              str_same(got->channel_id, want.channel_id) &&
              str_same(got->client_ip, want.client_ip) && str_same(rule, want_rule));
    export_record_free(got);
    return 0;
}

/* Load from `from`, at most max, and compare with the model. */
static void m_check_load(struct model *m, struct spool *sp, unsigned k, uint64_t from, unsigned max)
{
    struct m_conn *c = &m->c[k];
    static struct m_check mc;
    mc.conn = k;
    mc.n = mc.at = 0;
    for (size_t i = 0; i < c->n && mc.n < max; i++)
        if (c->puts[i] >= from && m_live(c, c->puts[i]))
            mc.expect[mc.n++] = c->puts[i];
    unsigned loaded = 0;
    ck_assert_int_eq(spool_load(sp, m_names[k], from, max, m_check_record, &mc, &loaded), 0);
    ck_assert_msg(loaded == mc.n, "connector %s from %llu max %u: %u loaded, %zu expected",
                  m_names[k], (unsigned long long)from, max, loaded, mc.n);
    c->n_durable = c->n; /* a load writes what is pending */
}

static void m_check_range(struct model *m, struct spool *sp, unsigned k)
{
    struct m_conn *c = &m->c[k];
    uint64_t count = 0, first = 0, last = 0;
    for (size_t i = 0; i < c->n; i++)
        if (m_live(c, c->puts[i])) {
            if (count++ == 0)
                first = c->puts[i];
            last = c->puts[i];
        }
    range_expect(sp, m_names[k], count, first, last);
    ck_assert_uint_eq(high_of(sp, m_names[k]), m_high(c));
}

static struct spool *m_open(void)
{
    struct spool *sp = open_ok();
    spool_set_segment_max(sp, 700);
    return sp;
}

START_TEST(test_random_operations_against_a_model)
{
    static struct model m;
    memset(&m, 0, sizeof m);
    m.rng = 0x9e3779b97f4a7c15ULL;
    struct spool *sp = m_open();
    unsigned crashes = 0, reopens = 0;
    for (int op = 0; op < 4000; op++) {
        unsigned kind = (unsigned)(rnd(&m) % 100);
        unsigned k = (unsigned)(rnd(&m) % M_CONNS);
        if (kind < 80) {
            ck_assert_msg(m_write_op(&m, sp), "operation %d failed", op);
        } else if (kind < 88) {
            uint64_t from = rnd(&m) % (m_high(&m.c[k]) + 3);
            m_check_load(&m, sp, k, from, 1 + (unsigned)(rnd(&m) % 20));
        } else if (kind < 94) {
            m_check_range(&m, sp, k);
        } else if (kind < 97) {
            spool_close(sp); /* commits */
            m_commit(&m);
            sp = m_open();
            reopens++;
        } else {
            /* A crash: a child writes a burst and dies without closing;
             * the same burst on the model, then what was committed. */
            spool_close(sp);
            m_commit(&m);
            unsigned burst = 1 + (unsigned)(rnd(&m) % 30);
            pid_t pid = fork();
            ck_assert_int_ge(pid, 0);
            if (pid == 0) {
                struct spool *child = NULL;
                char err[256];
                if (spool_open(path, STORE_SYNC_NORMAL, &child, err, sizeof err) != 0)
                    _exit(2);
                spool_set_segment_max(child, 700);
                for (unsigned i = 0; i < burst; i++)
                    if (!m_write_op(&m, child))
                        _exit(3);
                _exit(0);
            }
            for (unsigned i = 0; i < burst; i++)
                m_write_op(&m, NULL);
            int status = 0;
            ck_assert_int_eq(waitpid(pid, &status, 0), pid);
            ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            m_crash(&m);
            sp = m_open();
            crashes++;
        }
        if (op % 200 == 199)
            for (unsigned j = 0; j < M_CONNS; j++) {
                m_check_load(&m, sp, j, 0, M_MAX_PUTS);
                m_check_range(&m, sp, j);
            }
    }
    ck_assert_uint_gt(crashes, 20);
    ck_assert_uint_gt(reopens, 20);
    spool_close(sp);
    m_commit(&m);
    sp = m_open();
    for (unsigned j = 0; j < M_CONNS; j++) {
        m_check_load(&m, sp, j, 0, M_MAX_PUTS);
        m_check_range(&m, sp, j);
        /* Everything acknowledged: no segment is left after the close. */
        ck_assert_int_eq(spool_ack(sp, m_names[j], UINT64_MAX), 0);
    }
    spool_close(sp);
    char names[4096], d[400];
    for (unsigned j = 0; j < M_CONNS; j++) {
        static const char *const dirs[M_CONNS] = {"k", "r%2E2", "p%2F3"};
        subpath(d, sizeof d, dirs[j]);
        ck_assert_str_eq(list_dir(d, ".seg", names, sizeof names), "");
    }
}
END_TEST

/* ---- throughput (printed, not asserted) --------------------------------- */

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The loop's pattern: a put per record, a commit per `batch`, an ack per
 * 5000. 200,000 records of 64 bytes; CPU time per record. */
static void bench_level(enum store_sync sync, const char *name, unsigned batch)
{
    static const char payload[65] =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    struct spool *sp = open_at(path, sync);
    struct export_record rec = msg_rec(0, payload);
    rec.client_id = "GID_mqbench@@@12345-p1";
    rec.topic = "mqbench/1";
    uint64_t base = high_of(sp, "bench");
    const unsigned total = 200000;
    int failed = 0; /* no ck_assert in the loop: each one does I/O of Check's */
    double t0 = cpu_now();
    for (unsigned i = 1; i <= total; i++) {
        rec.seqno = base + i;
        failed |= spool_put(sp, "bench", &rec, "bench-redis", 1);
        if (i % batch == 0)
            failed |= spool_commit(sp);
        if (i % 5000 == 0)
            failed |= spool_ack(sp, "bench", base + i - 2500);
    }
    failed |= spool_commit(sp);
    double cpu = cpu_now() - t0;
    ck_assert_int_eq(failed, 0);
    ck_assert_int_eq(spool_ack(sp, "bench", UINT64_MAX), 0);
    range_expect(sp, "bench", 0, 0, 0);
    fprintf(stderr,
            "spool throughput (%s, commit per %u, 64-byte payloads, %s): %.3f us CPU per record\n",
            name, batch, dir, cpu * 1e6 / total);
    spool_close(sp);
}

START_TEST(test_throughput)
{
    bench_level(STORE_SYNC_NORMAL, "sync=normal", 200);
    bench_level(STORE_SYNC_NORMAL, "sync=normal", 50);
    bench_level(STORE_SYNC_FULL, "sync=full", 1000);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *spool_suite(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("spool");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_round_trip_every_field, 0, 2);
    tcase_add_test(tc, test_record_new_is_one_allocation);
    tcase_add_test(tc, test_order_and_seqno_gaps);
    tcase_add_test(tc, test_connectors_are_independent);
    tcase_add_loop_test(tc, test_ack_forgets_up_to_and_including, 0,
                        sizeof ack_cases / sizeof ack_cases[0]);
    tcase_add_loop_test(tc, test_delete_range_holes_survive_reopen, 0,
                        sizeof delete_cases / sizeof delete_cases[0]);
    tcase_add_test(tc, test_range_known_and_scanned);
    tcase_add_test(tc, test_put_refuses_and_goes_on);
    tcase_add_loop_test(tc, test_reopen_keeps_committed, 0,
                        sizeof sync_levels / sizeof sync_levels[0]);
    tcase_add_test(tc, test_crash_loses_nothing_committed);
    tcase_add_test(tc, test_rotation_and_segment_deletion);
    tcase_add_test(tc, test_idle_last_segment_goes_at_close);
    tcase_add_test(tc, test_large_payloads);
    tcase_add_loop_test(tc, test_torn_tail_is_cut_off, TAIL_CUT, TAIL_BAD_CRC + 1);
    tcase_add_loop_test(tc, test_damage_in_the_middle_is_set_aside, 0, 3);
    tcase_add_test(tc, test_torn_end_of_an_earlier_segment);
    tcase_add_test(tc, test_seqnos_must_grow_across_segments);
    tcase_add_test(tc, test_state_copies);
    tcase_add_test(tc, test_load_in_pages_jumps_and_pending);
    tcase_add_test(tc, test_cursor_survives_its_segment);
    tcase_add_loop_test(tc, test_load_abort, 0, sizeof stop_at / sizeof stop_at[0]);
    tcase_add_test(tc, test_load_callback_may_write);
    tcase_add_test(tc, test_memory_mode);
    tcase_add_test(tc, test_open_failures);
    tcase_add_test(tc, test_unusable_connector_log);
    tcase_add_test(tc, test_foreign_files_untouched);
    tcase_add_test(tc, test_random_operations_against_a_model);
    tcase_add_test(tc, test_throughput);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(spool_suite)
