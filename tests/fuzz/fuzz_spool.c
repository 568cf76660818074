/* libFuzzer target: the export spool's recovery (engine/spool.c). The input
 * is one connector's spool directory as a crash, a disk or a user's tool may
 * leave it, then a few operations on it:
 *
 *    0  u8 flags   bit 0: state.0 exists       bit 1: state.1 exists
 *                  bit 2: a second segment     bit 3: 512-byte segments
 *                  bit 4: "<first segment>.corrupt" is already there
 *                  bit 5: files the spool does not know are there
 *                  bit 6: fix the CRCs (of the state files and of the
 *                         records the length fields chain to), so that
 *                         mutations reach the checks behind the CRC
 *                  bit 7: full loads one record per call (else 7)
 *    1  u16 x 4    lengths: state.0, state.1, first and second segment
 *    9  u32 x 2    the segments' numbers (their names <20 digits>.seg)
 *   17  the files' bytes back to back (lengths cut to what is there), then
 *       the operations, two bytes each (opcode, argument; see run_op)
 *
 * Recovery must not crash, hang or read out of bounds (ASan, UBSan), and
 * must leave a log that behaves like one. The records the first full load
 * hands over (strictly growing seqnos, matching spool_range) become a model;
 * every later put, ack, delete and load is checked against it, also loads
 * whose callback puts, acks and commits. After a close the spool's own files
 * must recover cleanly: the reopened log holds exactly the model's records,
 * spool_seqno_high does not go back, no segment is cut and no .corrupt file
 * appears, and files the spool does not own are still there.
 *
 * Each process works in one directory, $TMPDIR (else /dev/shm, else /tmp)
 * /mqb_fuzz_spool.<pid>, emptied after every input and removed at exit.
 * The spool logs nothing unless FUZZ_SPOOL_LOG is set (a failing input's
 * story: FUZZ_SPOOL_LOG=1 ./fuzz_spool crash-file). The seeds in
 * tests/fuzz/corpus/spool were written from the format in engine/spool.c: a
 * valid log, torn tails, a bad CRC in the middle, an earlier segment torn,
 * seqnos going back, bad state files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../../common/log.h"
#include "../../engine/spool.h"

#define CONNECTOR "k.1"
#define CONNECTOR_DIR "k%2E1" /* CONNECTOR escaped as spool.c names its directory */
#define HDR_LEN 17
#define MAX_OPS 48
#define MAX_REOPENS 2
#define FULL_CHUNK 7
#define SMALL_SEGMENT 512
#define OLD_CORRUPT "old damage, not the spool's to touch"

enum {
    F_STATE0 = 1 << 0,
    F_STATE1 = 1 << 1,
    F_SEG2 = 1 << 2,
    F_SMALL_SEG = 1 << 3,
    F_OLD_CORRUPT = 1 << 4,
    F_STRANGERS = 1 << 5,
    F_FIX_CRC = 1 << 6,
    F_CHUNK1 = 1 << 7,
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- the run's state ------------------------------------------------------- */

static char base[512];     /* the process's directory */
static char root[600];     /* the spool: base/spool */
static char conn_dir[700]; /* root/CONNECTOR_DIR */
static char seg1_name[32]; /* the first segment's file name, this input */

/* A live record as the harness expects it: seqno and a digest of its
 * content, in seqno order. */
struct mrec {
    uint64_t seqno;
    uint64_t hash;
};

static struct {
    struct mrec *v;
    size_t n, cap;
} model;

static struct spool *sp;
static uint8_t flags;
static unsigned reopens;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_spool: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ---- record digests and the model ------------------------------------------ */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    uint8_t present = s != NULL;
    h = fnv(h, &present, 1);
    if (s) {
        size_t n = strlen(s);
        h = fnv(h, &n, sizeof n);
        h = fnv(h, s, n);
    }
    return h;
}

static uint64_t rec_hash(const struct export_record *r, const char *rule, uint64_t generation)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    uint8_t kq[2] = {(uint8_t)r->kind, r->qos};
    h = fnv(h, kq, sizeof kq);
    h = fnv(h, &r->msg_id, sizeof r->msg_id);
    h = fnv(h, &r->time_ms, sizeof r->time_ms);
    h = fnv(h, &generation, sizeof generation);
    h = fnv_str(h, rule);
    h = fnv_str(h, r->client_id);
    h = fnv_str(h, r->topic);
    h = fnv_str(h, r->event_type);
    h = fnv_str(h, r->channel_id);
    h = fnv_str(h, r->client_ip);
    h = fnv(h, &r->payload_len, sizeof r->payload_len);
    if (!r->payload)
        fail("seqno %" PRIu64 ": NULL payload", r->seqno);
    return fnv(h, r->payload, r->payload_len);
}

/* Index of the first model record with seqno >= from. */
static size_t model_from(uint64_t from)
{
    size_t lo = 0, hi = model.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (model.v[mid].seqno < from)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void model_add(uint64_t seqno, uint64_t hash)
{
    if (model.n && model.v[model.n - 1].seqno >= seqno)
        fail("model: seqno %" PRIu64 " not above %" PRIu64, seqno, model.v[model.n - 1].seqno);
    if (model.n == model.cap) {
        size_t cap = model.cap ? 2 * model.cap : 256;
        struct mrec *v = realloc(model.v, cap * sizeof *v);
        if (!v)
            fail("out of memory");
        model.v = v;
        model.cap = cap;
    }
    model.v[model.n++] = (struct mrec){seqno, hash};
}

/* Removes the records with lo <= seqno <= hi. */
static void model_cut(uint64_t lo, uint64_t hi)
{
    if (lo > hi)
        return;
    size_t a = model_from(lo), b = a;
    while (b < model.n && model.v[b].seqno <= hi)
        b++;
    if (a == b)
        return;
    memmove(model.v + a, model.v + b, (model.n - b) * sizeof *model.v);
    model.n -= b - a;
}

/* ---- files ------------------------------------------------------------------ */

static void write_file(const char *name, const uint8_t *p, size_t n)
{
    char file[800];
    snprintf(file, sizeof file, "%s/%s", conn_dir, name);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        fail("cannot create %s: %s", file, strerror(errno));
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            fail("cannot write %s: %s", file, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    close(fd);
}

/* Empties d (the spool makes no directories there; a stranger may be one). */
static void empty_dir(const char *d)
{
    DIR *dd = opendir(d);
    if (!dd)
        fail("cannot list %s: %s", d, strerror(errno));
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (unlinkat(dirfd(dd), e->d_name, 0) < 0 &&
            (errno != EISDIR || unlinkat(dirfd(dd), e->d_name, AT_REMOVEDIR) < 0))
            fail("cannot remove %s/%s: %s", d, e->d_name, strerror(errno));
    }
    closedir(dd);
}

static void remove_base(void)
{
    if (!base[0])
        return;
    empty_dir(conn_dir);
    rmdir(conn_dir);
    rmdir(root);
    rmdir(base);
}

/* The segments' names and sizes and the .corrupt files, for comparing the
 * directory across a reopen. */
struct listing {
    char text[8192];
    size_t len;
};

static void list_dir(struct listing *l)
{
    DIR *dd = opendir(conn_dir);
    if (!dd)
        fail("cannot list %s: %s", conn_dir, strerror(errno));
    struct dirent *e;
    l->len = 0;
    l->text[0] = '\0';
    while ((e = readdir(dd)) != NULL) {
        const char *dot = strchr(e->d_name, '.');
        if (!dot || (strcmp(dot, ".seg") != 0 && !strstr(dot, ".corrupt")))
            continue;
        struct stat st;
        if (fstatat(dirfd(dd), e->d_name, &st, 0) < 0)
            fail("cannot stat %s/%s: %s", conn_dir, e->d_name, strerror(errno));
        int n = snprintf(l->text + l->len, sizeof l->text - l->len, "%s:%lld ", e->d_name,
                         (long long)st.st_size);
        if (n < 0 || (size_t)n >= sizeof l->text - l->len)
            fail("listing of %s too long", conn_dir);
        l->len += (size_t)n;
    }
    closedir(dd);
}

/* "name:size " in l. */
static bool listed(const struct listing *l, const char *entry)
{
    for (const char *p = l->text; (p = strstr(p, entry)) != NULL; p++)
        if (p == l->text || p[-1] == ' ')
            return true;
    return false;
}

/* Every .seg and .corrupt entry of after (the directory right after a
 * reopen's recovery) was in before, with the same size: the spool's own
 * files recover without truncation or setting aside. Deleted segments are
 * fine (dead ones go). */
static void expect_clean_recovery(const struct listing *before, const struct listing *after)
{
    char entry[128];
    for (const char *p = after->text; *p;) {
        const char *sp_end = strchr(p, ' ');
        size_t n = (size_t)(sp_end - p);
        if (n >= sizeof entry)
            fail("listing entry too long");
        memcpy(entry, p, n);
        entry[n] = ' ';
        entry[n + 1] = '\0';
        if (n + 1 >= sizeof entry || !listed(before, entry))
            fail("recovering the spool's own files changed them: before [%s], after [%s]",
                 before->text, after->text);
        p = sp_end + 1;
    }
}

static bool file_is(const char *name, const char *content)
{
    char file[800], buf[128];
    snprintf(file, sizeof file, "%s/%s", conn_dir, name);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n == (ssize_t)strlen(content) && memcmp(buf, content, (size_t)n) == 0;
}

static bool trace; /* FUZZ_SPOOL_LOG set: the operations too */

/* ---- CRC fixing (flag bit 6) ------------------------------------------------ */

static void fix_state_crc(uint8_t *b, size_t n)
{
    if (n < 40)
        return;
    uint32_t len = get32(b + 12);
    if (len >= 12 && len <= n)
        put32(b + 8, (uint32_t)crc32(0, b + 12, len - 12));
}

/* Records chained by their length fields from offset 0, while they look
 * like records. */
static void fix_segment_crcs(uint8_t *b, size_t n)
{
    for (size_t off = 0; n - off >= 64;) {
        uint32_t len = get32(b + off + 8);
        if (memcmp(b + off, "MQS1", 4) != 0 || len < 64 || len > n - off)
            return;
        put32(b + off + 4, (uint32_t)crc32(0, b + off + 8, len - 8));
        off += len;
    }
}

/* ---- spool calls ------------------------------------------------------------ */

static void open_spool(void)
{
    char err[512] = "";
    if (spool_open(root, STORE_SYNC_NORMAL, &sp, err, sizeof err) != 0)
        fail("spool_open: %s", err);
    if (flags & F_SMALL_SEG)
        spool_set_segment_max(sp, SMALL_SEGMENT);
}

static uint64_t seqno_high(void)
{
    uint64_t high;
    if (spool_seqno_high(sp, CONNECTOR, &high) != 0)
        fail("spool_seqno_high failed");
    return high;
}

/* spool_range agrees with the model and lies within spool_seqno_high. */
static void check_range(const char *when)
{
    uint64_t count, first, last;
    if (spool_range(sp, CONNECTOR, &count, &first, &last) != 0)
        fail("%s: spool_range failed", when);
    uint64_t want_first = model.n ? model.v[0].seqno : 0;
    uint64_t want_last = model.n ? model.v[model.n - 1].seqno : 0;
    if (count != model.n || first != want_first || last != want_last)
        fail("%s: spool_range says %" PRIu64 " records %" PRIu64 "..%" PRIu64
             ", expected %zu records %" PRIu64 "..%" PRIu64,
             when, count, first, last, model.n, want_first, want_last);
    if (seqno_high() < want_last)
        fail("%s: spool_seqno_high %" PRIu64 " below the last record %" PRIu64, when, seqno_high(),
             want_last);
}

/* What a load callback does besides checking. */
struct load_ctx {
    size_t next;       /* model index of the record expected next */
    uint64_t last;     /* seqno of the last record handed over */
    unsigned got;      /* records handed over */
    bool learn;        /* the first load after recovery: fills the model */
    bool ack;          /* acknowledge each record */
    bool put;          /* put one new record per record */
    bool commit;       /* commit after each record */
    bool nested;       /* try a load from inside the callback (refused) */
    unsigned stop;     /* return 1 after this many records (0: never) */
    uint64_t put_from; /* seqnos put during the load are >= this */
};

static void put_one(uint64_t seqno, unsigned a);

static int on_record(void *ctx, struct export_record *rec, const char *rule, uint64_t generation)
{
    struct load_ctx *c = ctx;
    uint64_t seqno = rec->seqno, h = rec_hash(rec, rule, generation);
    export_record_free(rec);
    if (c->got > 0 && seqno <= c->last)
        fail("load handed over seqno %" PRIu64 " after %" PRIu64, seqno, c->last);
    c->got++;
    c->last = seqno;
    if (c->learn) {
        if (seqno == 0)
            fail("load handed over seqno 0");
        model_add(seqno, h);
        return 0;
    }
    if (c->next >= model.n || model.v[c->next].seqno != seqno || model.v[c->next].hash != h)
        fail("load handed over seqno %" PRIu64 " (digest %016" PRIx64 "), expected %s%" PRIu64,
             seqno, h, c->next >= model.n ? "none after " : "",
             c->next >= model.n ? (model.n ? model.v[model.n - 1].seqno : 0)
                                : model.v[c->next].seqno);
    c->next++;
    if (c->nested) {
        unsigned n = 99;
        if (spool_load(sp, CONNECTOR, 0, 1, on_record, c, &n) != -1 || n != 0)
            fail("a load inside a load callback was not refused");
    }
    if (c->ack) {
        if (spool_ack(sp, CONNECTOR, seqno) != 0)
            fail("spool_ack(%" PRIu64 ") in a load callback failed", seqno);
        model_cut(0, seqno);
        c->next = model_from(sat_add(seqno, 1));
    }
    if (c->put) {
        uint64_t high = seqno_high();
        if (high < UINT64_MAX - 1)
            put_one(high + 1, (unsigned)seqno);
    }
    if (c->commit && spool_commit(sp) != 0)
        fail("spool_commit in a load callback failed");
    return c->stop && c->got >= c->stop;
}

/* Loads everything from `from` on, chunk records per call, and checks it
 * against the model (or fills it). */
static void load_all(uint64_t from, bool learn, const char *when)
{
    unsigned chunk = (flags & F_CHUNK1) ? 1 : FULL_CHUNK;
    struct load_ctx c = {.next = model_from(from), .learn = learn};
    for (size_t calls = 0;; calls++) {
        unsigned loaded = 0, before = c.got;
        if (spool_load(sp, CONNECTOR, from, chunk, on_record, &c, &loaded) != 0)
            fail("%s: spool_load from %" PRIu64 " failed", when, from);
        if (loaded != c.got - before)
            fail("%s: spool_load says %u loaded, the callback got %u", when, loaded,
                 c.got - before);
        if (loaded == 0)
            break;
        if (c.last == UINT64_MAX)
            break;
        from = c.last + 1;
        if (calls > (learn ? 1000000 : model.n + 2))
            fail("%s: the load does not end", when);
    }
    if (!learn && c.next != model.n)
        fail("%s: the load ended before seqno %" PRIu64, when, model.v[c.next].seqno);
}

/* A record whose content follows from seqno and a (payload up to 105
 * bytes; status events on odd seqnos; some strings absent). */
static void put_one(uint64_t seqno, unsigned a)
{
    char client[32], topic[48], rule[24], ip[24];
    uint8_t payload[7 * 15];
    uint32_t plen = ((a >> 4) & 15) * 7;
    for (uint32_t i = 0; i < plen; i++)
        payload[i] = (uint8_t)(seqno * 31 + i);
    snprintf(client, sizeof client, "c%" PRIu64, seqno % 1000);
    snprintf(topic, sizeof topic, "t/%" PRIu64 "/x", seqno);
    snprintf(rule, sizeof rule, "rule-%u", a & 7);
    snprintf(ip, sizeof ip, "10.0.0.%u:1883", (unsigned)(seqno % 250));
    bool status = seqno & 1;
    struct export_record rec = {
        .seqno = seqno,
        .kind = status ? RECORD_STATUS : RECORD_MESSAGE,
        .msg_id = seqno * 3,
        .time_ms = (int64_t)(seqno & 0xffffffffu) - 5,
        .qos = status ? 0 : (uint8_t)(seqno % 3),
        .client_id = client,
        .topic = status ? NULL : topic,
        .payload = plen ? payload : NULL,
        .payload_len = plen,
        .event_type = status ? "connect" : NULL,
        .channel_id = status ? "0123456789abcdef0123456789abcdef" : NULL,
        .client_ip = status ? ip : NULL,
    };
    const char *rule_name = seqno % 4 == 0 ? NULL : rule;
    uint64_t generation = seqno / 7;
    if (spool_put(sp, CONNECTOR, &rec, rule_name, generation) != 0)
        fail("spool_put of seqno %" PRIu64 " failed", seqno);
    static const uint8_t empty[1];
    if (!rec.payload)
        rec.payload = empty; /* loads hand over "" */
    model_add(seqno, rec_hash(&rec, rule_name, generation));
}

/* Close, reopen (the recovery of the spool's own files must be clean) and
 * check everything against the model. */
static void reopen(const char *when)
{
    uint64_t high = seqno_high();
    struct listing before, after;
    spool_close(sp);
    sp = NULL;
    list_dir(&before);
    open_spool();
    check_range(when); /* recovers */
    list_dir(&after);
    expect_clean_recovery(&before, &after);
    if (seqno_high() < high)
        fail("%s: spool_seqno_high went back from %" PRIu64 " to %" PRIu64, when, high,
             seqno_high());
    load_all(0, false, when);
    check_range(when);
}

/* A seqno near the model's records, picked by a. */
static uint64_t pick_seqno(unsigned a)
{
    if (model.n)
        return model.v[(a & 0x3f) % model.n].seqno;
    return seqno_high();
}

/* One operation: opcode op, argument a. */
static void run_op(unsigned op, unsigned a)
{
    switch (op % 8) {
    case 0: { /* put 1..4 records, leaving a gap of 0..3 */
        uint64_t seqno = sat_add(seqno_high(), 1 + ((a >> 2) & 3));
        for (unsigned n = 1 + (a & 3); n > 0 && seqno < UINT64_MAX; n--, seqno++)
            put_one(seqno, a);
        break;
    }
    case 1:
        if (spool_commit(sp) != 0)
            fail("spool_commit failed");
        break;
    case 2: { /* ack near the first record, or everything */
        uint64_t start = model.n ? model.v[0].seqno - 1 : seqno_high();
        uint64_t upto = a >= 0xf0 ? UINT64_MAX : sat_add(start, a & 0x1f);
        if (spool_ack(sp, CONNECTOR, upto) != 0)
            fail("spool_ack(%" PRIu64 ") failed", upto);
        model_cut(0, upto);
        break;
    }
    case 3: { /* delete a range near a record */
        uint64_t lo = a == 0 ? 0 : sat_add(pick_seqno(a), (a >> 6) & 1);
        uint64_t hi = sat_add(lo, (a >> 3) & 7);
        if (spool_delete_range(sp, CONNECTOR, lo, hi) != 0)
            fail("spool_delete_range(%" PRIu64 ", %" PRIu64 ") failed", lo, hi);
        model_cut(lo, hi);
        break;
    }
    case 4: { /* a load of up to 8 from anywhere: jumps the cursor */
        uint64_t from = (a & 0x80) ? (a & 0x40 ? 0 : sat_add(seqno_high(), 1) - (a & 1))
                                   : sat_add(pick_seqno(a), (a >> 6) & 1);
        unsigned max = 1 + (a & 7), loaded = 0;
        struct load_ctx c = {.next = model_from(from)};
        size_t expect = model.n - c.next < max ? model.n - c.next : max;
        if (spool_load(sp, CONNECTOR, from, max, on_record, &c, &loaded) != 0 || loaded != expect ||
            c.got != expect)
            fail("spool_load from %" PRIu64 " max %u: %u records, expected %zu", from, max, loaded,
                 expect);
        break;
    }
    case 5:
        check_range("range");
        break;
    case 6:
        if (reopens++ < MAX_REOPENS)
            reopen("reopen");
        break;
    case 7: { /* a load whose callback acks, puts, commits, nests or stops */
        uint64_t from = a & 0x80 ? 0 : pick_seqno(a);
        unsigned max = 1 + (a & 3), loaded = 0;
        struct load_ctx c = {.next = model_from(from),
                             .ack = true,
                             .put = a & 0x04,
                             .commit = a & 0x08,
                             .nested = a & 0x10,
                             .stop = a & 0x20 ? 1 : 0,
                             .put_from = sat_add(seqno_high(), 1)};
        int rc = spool_load(sp, CONNECTOR, from, max, on_record, &c, &loaded);
        if (loaded != c.got || (c.stop && c.got >= c.stop ? rc != -1 : rc != 0))
            fail("busy spool_load from %" PRIu64 ": rc %d, %u loaded, callback got %u", from, rc,
                 loaded, c.got);
        /* Stopped early without a reason: only records put during the load
         * (unspecified whether it sees them) may be left. */
        if (rc == 0 && loaded < max && c.next < model.n && model.v[c.next].seqno < c.put_from)
            fail("busy spool_load from %" PRIu64 " ended before seqno %" PRIu64, from,
                 model.v[c.next].seqno);
        break;
    }
    }
}

/* ---- the target ------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* log.h has no "off": a threshold above LOG_ERROR silences everything
     * (log_msg drops levels below it), so damage is not a line per run. */
    const char *log = getenv("FUZZ_SPOOL_LOG");
    trace = log && *log;
    if (!trace)
        log_set_level((enum log_level)(LOG_ERROR + 1));
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(base, sizeof base, "%s/mqb_fuzz_spool.%ld", tmp, (long)getpid());
    snprintf(root, sizeof root, "%s/spool", base);
    snprintf(conn_dir, sizeof conn_dir, "%s/%s", root, CONNECTOR_DIR);
    if ((mkdir(base, 0700) < 0 && errno != EEXIST) || (mkdir(root, 0700) < 0 && errno != EEXIST) ||
        (mkdir(conn_dir, 0700) < 0 && errno != EEXIST))
        fail("cannot create %s: %s", conn_dir, strerror(errno));
    empty_dir(conn_dir);
    atexit(remove_base);
    return 0;
}

/* Writes the input's files into conn_dir; returns where the operations
 * start. */
static size_t write_input(const uint8_t *data, size_t size)
{
    static uint8_t buf[2][65535];
    uint8_t hdr[HDR_LEN] = {0};
    size_t off = size < HDR_LEN ? size : HDR_LEN;
    memcpy(hdr, data, off);
    flags = hdr[0];
    uint8_t *file[4] = {buf[0], buf[1], buf[0], buf[1]};
    size_t len[4];
    for (int i = 0; i < 4; i++) {
        len[i] = (size_t)(hdr[1 + 2 * i] | hdr[2 + 2 * i] << 8);
        if (len[i] > size - off)
            len[i] = size - off;
        memcpy(file[i], data + off, len[i]);
        off += len[i];
        if (i < 2 && (flags & (F_STATE0 << i))) {
            if (flags & F_FIX_CRC)
                fix_state_crc(file[i], len[i]);
            write_file(i ? "state.1" : "state.0", file[i], len[i]);
        }
    }
    uint64_t id1 = get32(hdr + 9);
    uint64_t id2 = get32(hdr + 13);
    snprintf(seg1_name, sizeof seg1_name, "%020" PRIu64 ".seg", id1);
    if (flags & F_FIX_CRC)
        fix_segment_crcs(file[2], len[2]);
    write_file(seg1_name, file[2], len[2]);
    if ((flags & F_SEG2) && id2 != id1) {
        char name[32];
        snprintf(name, sizeof name, "%020" PRIu64 ".seg", id2);
        if (flags & F_FIX_CRC)
            fix_segment_crcs(file[3], len[3]);
        write_file(name, file[3], len[3]);
    }
    if (flags & F_OLD_CORRUPT) {
        char name[48];
        snprintf(name, sizeof name, "%s.corrupt", seg1_name);
        write_file(name, (const uint8_t *)OLD_CORRUPT, strlen(OLD_CORRUPT));
    }
    if (flags & F_STRANGERS) {
        write_file("notes", (const uint8_t *)"x", 1);
        write_file("state.2", (const uint8_t *)"MQBSTAT1", 8);
        write_file("1.seg", (const uint8_t *)"MQS1", 4);
        write_file("0000000000000000000a.seg", (const uint8_t *)"MQS1", 4);
        char dname[800]; /* a directory; its number is above 2^64 */
        snprintf(dname, sizeof dname, "%s/99999999999999999999.seg", conn_dir);
        if (mkdir(dname, 0700) < 0)
            fail("cannot create %s: %s", dname, strerror(errno));
    }
    return off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t ops = write_input(data, size);
    model.n = 0;
    reopens = 0;
    open_spool();

    /* Recovery, then everything it kept. */
    uint64_t count, first, last;
    if (spool_range(sp, CONNECTOR, &count, &first, &last) != 0)
        fail("recovery failed (spool_range)");
    load_all(0, true, "first load");
    check_range("after recovery");

    for (unsigned n = 0; ops + 1 < size && n < MAX_OPS; ops += 2, n++) {
        if (trace)
            fprintf(stderr,
                    "fuzz_spool: op %u(0x%02x), model %zu records %" PRIu64 "..%" PRIu64
                    ", high %" PRIu64 "\n",
                    data[ops] % 8, data[ops + 1], model.n, model.n ? model.v[0].seqno : 0,
                    model.n ? model.v[model.n - 1].seqno : 0, seqno_high());
        run_op(data[ops], data[ops + 1]);
    }
    reopen("final reopen");
    spool_close(sp);
    sp = NULL;

    if ((flags & F_OLD_CORRUPT)) {
        char name[48];
        snprintf(name, sizeof name, "%s.corrupt", seg1_name);
        if (!file_is(name, OLD_CORRUPT))
            fail("the spool changed %s, which was there before", name);
    }
    if ((flags & F_STRANGERS) &&
        (!file_is("notes", "x") || !file_is("state.2", "MQBSTAT1") || !file_is("1.seg", "MQS1") ||
         !file_is("0000000000000000000a.seg", "MQS1")))
        fail("the spool changed a file that is not its own");
    empty_dir(conn_dir);
    return 0;
}
