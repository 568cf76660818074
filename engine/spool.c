/* The export spool as one append-only log per connector (contract in
 * spool.h).
 *
 * Rule: a record is in the spool from spool_put() until the connector's
 * acknowledged watermark A passes it (spool_ack: every seqno <= A is done)
 * or it is deleted (spool_delete_range: a hole above A); a committed record
 * survives kill -9 (and power loss with sync full). For example, with
 * records 1..5 of connector "k" committed:
 *   spool_ack("k", 3)             leaves 4, 5       A = 3
 *   spool_delete_range("k", 5, 5) leaves 4          A = 3, holes {5..5}
 *   spool_load("k", 0, 10, ...)   hands over 4
 *   spool_ack("k", 4)             leaves nothing    A = 5 (the hole is absorbed)
 * and connector "j" is untouched by all of it.
 *
 * Layout (dir = <storage>/spool):
 *   dir/<connector>/                one directory per connector. The name is
 *                                   escaped: bytes other than A-Z a-z 0-9 _ -
 *                                   become %XX ("a.b" -> "a%2Eb"), so "." and
 *                                   ".." are plain names.
 *   dir/<connector>/<20 digits>.seg segments: records back to back, named by
 *                                   the seqno of their first record. A new
 *                                   segment starts when the next write would
 *                                   take the current one past SEG_MAX (64 MiB;
 *                                   one write, so one record, may be larger).
 *   dir/<connector>/state.0, .1     the watermark and the holes, written in
 *                                   turn (a torn write leaves the other one)
 *   dir/<connector>/<seg>.corrupt   damaged data set aside at recovery; never
 *                                   read or deleted by the spool
 * Anything else in these directories is left alone.
 *
 * Record (little endian), REC_HDR bytes of header, then the strings (rule,
 * client_id, topic, event_type, channel_id, client_ip; no NULs) and the
 * payload:
 *    0 magic "MQS1"       4 crc32 of bytes 8..len   8 u32 len (whole record)
 *   12 u8 kind           13 u8 qos                 14 u8 which strings are
 *   15 u8 0              16 u64 seqno                 not NULL (bit i)
 *   24 u64 generation    32 u64 msg_id             40 i64 time_ms
 *   48 u32 payload_len   52 6 x u16 string lengths
 * State file: "MQBSTAT1", u32 crc32 of bytes 12..len, u32 len, u64 counter
 * (+1 per write; the valid copy with the higher one wins), u64 A, u32 hole
 * count, u32 0, then (u64 first, u64 last) per hole, sorted, disjoint, not
 * adjacent, all above A.
 *
 * Writes: spool_put encodes into the connector's pending buffer (nothing
 * else: no system call); spool_commit writes each connector's buffer with
 * one write() (O_APPEND) to its last segment, then the state file when A or
 * the holes changed (pwrite), then with sync full fdatasyncs what it wrote,
 * and only then unlinks segments whose records are all <= A or in holes
 * (the last one only once it is 1/16 of SEG_MAX large, or at close). A failed
 * write is cut off again (ftruncate) and retried at the next commit.
 *
 * Reads: spool_load writes the connector's pending buffer first (so it sees
 * uncommitted puts) and reads through a cursor (segment, offset, and the
 * lowest seqno the position is good for), so loading in order costs one
 * pread per READ_CHUNK; a caller that jumps back, or forward past the
 * cursor's segment, is placed at the start of the segment that holds its
 * seqno (segments are sorted by first seqno) and scans from there.
 *
 * Recovery (at a connector's first use): the state with the higher valid
 * counter gives A and the holes; every segment is read and every record's
 * CRC and fields checked, and seqnos must grow across the whole log. At the
 * first bad byte of a segment:
 *   - in the last segment, with no valid record anywhere behind it (and not
 *     itself a whole record that is only out of order): a write that never
 *     finished (crash, or power loss before the fdatasync). The file is
 *     truncated there, with a warning giving the byte count.
 *   - otherwise (a record in the middle fails its CRC, a segment that was
 *     complete is not, seqnos go back): data that was written is damaged.
 *     The rest of that segment from the bad byte is copied to
 *     <segment>.corrupt and cut off, an error names the file, the offset,
 *     the byte count and the seqnos that may be lost (above the last good
 *     record, below the next segment's first); loading goes on with the
 *     next segment, which starts at a record boundary. Nothing behind the damage is parsed by
 * guessing (a payload may hold bytes that look like a record). The live records are counted on the
 * way, so spool_range is free after the recovery (later it scans when acks or deletes cut into the
 * range).
 *
 * In memory (dir NULL) the same code keeps each segment as a buffer: no
 * state file, no recovery, nothing on disk. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../common/log.h"

#define SEG_MAX ((uint64_t)64 << 20)      /* default: start a new segment past this */
#define PENDING_FLUSH ((size_t)8 << 20)   /* write early past this */
#define PENDING_MAX ((size_t)256 << 20)   /* refuse puts past this (writes failing) */
#define READ_CHUNK ((size_t)256 << 10)    /* one pread */
#define SCAN_BUDGET ((uint64_t)256 << 20) /* bytes a recovery scan may look at */
#define REC_HDR 64u
#define REC_MAX ((uint32_t)1 << 30) /* no record is longer */
#define REC_STRINGS 6               /* rule + the record's 5 strings */
#define STR_MAX 65535u
#define STATE_HDR 40u
#define STATE_MAX_HOLES ((UINT32_MAX - STATE_HDR) / 16u)
#define NAME_LEN 32 /* "<20 digits>.seg" and "state.N" fit */

static const uint8_t rec_magic[4] = {'M', 'Q', 'S', '1'};
static const uint8_t state_magic[8] = {'M', 'Q', 'B', 'S', 'T', 'A', 'T', '1'};

struct segment {
    uint64_t id;    /* the number in its file name */
    uint64_t first; /* seqno of its first record (id while it has none) */
    uint64_t last;  /* seqno of its last record */
    uint64_t size;  /* bytes of whole, valid records */
    int fd;         /* -1 when closed (files only) */
    bool unsynced;  /* written since its last fdatasync (sync full only) */
    bool sealed;    /* never append (a failed truncate left bytes behind) */
    bool keep;      /* damaged bytes that could not be set aside: never unlink */
    uint8_t *mem;   /* in memory: the bytes */
    size_t cap;
};

struct hole {
    uint64_t lo, hi;
};

/* A read position: every live record with seqno >= lo is at (seg, off) or
 * after it. */
struct cursor {
    size_t seg;
    uint64_t off;
    uint64_t lo;
};

/* One connector's log. */
struct clog {
    char *name; /* the connector's name */
    char *path; /* its directory, for messages; NULL in memory */
    int dirfd;  /* -1 in memory */
    bool failed;
    struct segment *segs;
    size_t nseg, segcap;
    uint64_t acked; /* A */
    struct hole *holes;
    size_t nholes, holecap;
    uint64_t high; /* highest seqno used (put, acked or deleted) */
    /* Encoded records not yet written. */
    uint8_t *pend;
    size_t pend_len, pend_cap;
    uint64_t pend_first, pend_last;
    /* State file. */
    int state_fd[2];
    uint64_t state_counter;
    bool state_dirty, state_unsynced[2];
    bool gc_due; /* acks or deletes since the last look for dead segments */
    struct cursor rd;
    /* Count, first and last live record, while known. */
    bool range_valid;
    uint64_t r_count, r_first, r_last;
};

struct spool {
    char *root; /* NULL in memory */
    int rootfd;
    enum store_sync sync;
    uint64_t seg_max;     /* SEG_MAX unless set */
    uint64_t seg_recycle; /* a dead last segment this big goes: seg_max / 16 */
    struct clog **logs;
    size_t nlogs;
    struct clog *recent;
    /* What was last read from a file: bytes [w_off, w_off + w_len) of
     * segment w_id of w_log. */
    uint8_t *rbuf;
    size_t rcap;
    const struct clog *w_log;
    uint64_t w_id, w_off;
    size_t w_len;
    bool loading;
    char *scratch; /* the rule name handed to a load callback */
    size_t scratch_cap;
};

/* ---- little endian -------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t crc_of(const uint8_t *p, size_t n)
{
    return (uint32_t)crc32(0, p, (uInt)n);
}

/* ---- system calls ----------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Short files are an error (EIO). */
static int pread_all(int fd, uint8_t *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static bool grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    if (n > SIZE_MAX / elem)
        return false;
    void *p = realloc(*(void **)pp, n * elem);
    if (!p)
        return false;
    *(void **)pp = p;
    *cap = n;
    return true;
}

static void seg_name(char *out, uint64_t id)
{
    snprintf(out, NAME_LEN, "%020" PRIu64 ".seg", id);
}

/* ---- records ------------------------------------------------------------- */

/* The record's strings in encoding order; NULL ones are absent. */
static void rec_strings(const struct export_record *rec, const char *rule,
                        const char *out[REC_STRINGS])
{
    out[0] = rule;
    out[1] = rec->client_id;
    out[2] = rec->topic;
    out[3] = rec->event_type;
    out[4] = rec->channel_id;
    out[5] = rec->client_ip;
}

/* Checks the header at p (avail bytes readable from p in the file); the
 * record's length, or 0 when it cannot be one. */
static uint32_t hdr_len(const uint8_t *p, uint64_t avail)
{
    if (avail < REC_HDR || memcmp(p, rec_magic, 4) != 0)
        return 0;
    uint32_t len = get32(p + 8);
    if (len < REC_HDR || len > REC_MAX || len > avail)
        return 0;
    return len;
}

/* The whole record at p (len from hdr_len): CRC and fields. */
static bool rec_valid(const uint8_t *p, uint32_t len)
{
    if (crc_of(p + 8, len - 8) != get32(p + 4))
        return false;
    uint8_t kind = p[12], qos = p[13], present = p[14];
    if ((kind != RECORD_MESSAGE && kind != RECORD_STATUS) || qos > 2 || p[15] != 0 ||
        (present >> REC_STRINGS) != 0)
        return false;
    uint64_t total = REC_HDR + (uint64_t)get32(p + 48);
    for (int i = 0; i < REC_STRINGS; i++) {
        uint16_t n = get16(p + 52 + 2 * i);
        if (n && !(present & (1u << i)))
            return false;
        total += n;
    }
    return total == len;
}

/* *acc += n, false on overflow (a 4 GiB payload on a 32-bit size_t). */
static bool size_add(size_t *acc, size_t n)
{
    if (n > SIZE_MAX - *acc)
        return false;
    *acc += n;
    return true;
}

/* A string of known length; p NULL: absent. */
struct span {
    const char *p;
    size_t len;
};

/* Layout: the struct, the payload, then each present string with its NUL.
 * payload is never NULL, even when empty, so connectors can memcpy it.
 * str: client_id, topic, event_type, channel_id, client_ip. */
static struct export_record *record_build(enum record_kind kind, uint64_t msg_id, int64_t time_ms,
                                          uint8_t qos, const struct span str[5],
                                          const uint8_t *payload, uint32_t payload_len)
{
    size_t size = sizeof(struct export_record);
    if (!size_add(&size, payload_len))
        return NULL;
    for (size_t i = 0; i < 5; i++)
        if (str[i].p && (!size_add(&size, str[i].len) || !size_add(&size, 1)))
            return NULL;
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
    const char **const dst[5] = {&rec->client_id, &rec->topic, &rec->event_type, &rec->channel_id,
                                 &rec->client_ip};
    for (size_t i = 0; i < 5; i++) {
        if (!str[i].p)
            continue;
        memcpy(p, str[i].p, str[i].len);
        p[str[i].len] = '\0';
        *dst[i] = (const char *)p;
        p += str[i].len + 1;
    }
    return rec;
}

struct export_record *export_record_new(enum record_kind kind, uint64_t msg_id, int64_t time_ms,
                                        uint8_t qos, const char *client_id, const char *topic,
                                        const uint8_t *payload, uint32_t payload_len,
                                        const char *event_type, const char *channel_id,
                                        const char *client_ip)
{
    const char *const src[5] = {client_id, topic, event_type, channel_id, client_ip};
    struct span str[5];
    for (size_t i = 0; i < 5; i++)
        str[i] = (struct span){src[i], src[i] ? strlen(src[i]) : 0};
    return record_build(kind, msg_id, time_ms, qos, str, payload, payload_len);
}

void export_record_free(struct export_record *rec)
{
    free(rec);
}

/* The record at p (valid): a new export_record, its rule name (not NUL
 * terminated; NULL when absent) and generation. NULL when out of memory. */
static struct export_record *rec_decode(const uint8_t *p, struct span *rule, uint64_t *generation)
{
    struct span s[REC_STRINGS];
    const uint8_t *q = p + REC_HDR;
    for (int i = 0; i < REC_STRINGS; i++) {
        size_t n = get16(p + 52 + 2 * i);
        s[i] = (struct span){(p[14] & (1u << i)) ? (const char *)q : NULL, n};
        q += n;
    }
    *rule = s[0];
    *generation = get64(p + 24);
    uint64_t time_bits = get64(p + 40);
    int64_t time_ms;
    memcpy(&time_ms, &time_bits, sizeof time_ms);
    struct export_record *rec = record_build((enum record_kind)p[12], get64(p + 32), time_ms, p[13],
                                             s + 1, q, get32(p + 48));
    if (rec)
        rec->seqno = get64(p + 16);
    return rec;
}

/* ---- the read window and segment files ------------------------------------- */

static void window_drop(struct spool *sp, const struct clog *lg, const struct segment *s)
{
    if (sp->w_log == lg && sp->w_id == s->id)
        sp->w_len = 0;
}

/* The segment's file, opened when needed. Besides the last segment and
 * those waiting for an fdatasync, one segment per log stays open. */
static int seg_fd(struct spool *sp, struct clog *lg, size_t i)
{
    struct segment *s = &lg->segs[i];
    if (s->fd >= 0)
        return s->fd;
    for (size_t j = 0; j + 1 < lg->nseg; j++) {
        struct segment *o = &lg->segs[j];
        if (j != i && o->fd >= 0 && !o->unsynced) {
            close(o->fd);
            o->fd = -1;
        }
    }
    char name[NAME_LEN];
    seg_name(name, s->id);
    s->fd = openat(lg->dirfd, name, O_RDWR | O_APPEND | O_CLOEXEC);
    if (s->fd < 0)
        log_error("spool: cannot open %s/%s: %s", lg->path, name, strerror(errno));
    return s->fd;
}

/* Bytes [off, off + len) of segment i (within its size), or NULL on an
 * I/O error (logged). Valid until the next call. */
static const uint8_t *seg_bytes(struct spool *sp, struct clog *lg, size_t i, uint64_t off,
                                size_t len)
{
    struct segment *s = &lg->segs[i];
    if (off > s->size || len > s->size - off) {
        log_error("spool: connector '%s': read past the end of segment %" PRIu64, lg->name, s->id);
        return NULL;
    }
    if (!sp->root)
        return s->mem ? s->mem + off : (const uint8_t *)"";
    if (sp->w_log == lg && sp->w_id == s->id && off >= sp->w_off &&
        off - sp->w_off + len <= sp->w_len)
        return sp->rbuf + (off - sp->w_off);
    size_t want = len > READ_CHUNK ? len : READ_CHUNK;
    if (want > s->size - off)
        want = (size_t)(s->size - off);
    sp->w_len = 0;
    if (!grow(&sp->rbuf, &sp->rcap, want, 1)) {
        log_error("spool: out of memory reading %s", lg->path);
        return NULL;
    }
    int fd = seg_fd(sp, lg, i);
    if (fd < 0)
        return NULL;
    if (pread_all(fd, sp->rbuf, want, off) < 0) {
        char name[NAME_LEN];
        seg_name(name, s->id);
        log_error("spool: cannot read %s/%s at offset %" PRIu64 ": %s", lg->path, name, off,
                  strerror(errno));
        return NULL;
    }
    sp->w_log = lg;
    sp->w_id = s->id;
    sp->w_off = off;
    sp->w_len = want;
    return sp->rbuf;
}

/* The valid record at (i, off) with a seqno above after: 1 with its bytes,
 * length and seqno; 0 when there is none there; -1 on an I/O error. */
static int rec_at(struct spool *sp, struct clog *lg, size_t i, uint64_t off, uint64_t after,
                  const uint8_t **out, uint32_t *len, uint64_t *seqno)
{
    uint64_t avail = lg->segs[i].size - off;
    const uint8_t *p = seg_bytes(sp, lg, i, off, avail < REC_HDR ? (size_t)avail : REC_HDR);
    if (!p)
        return -1;
    uint32_t n = hdr_len(p, avail);
    if (!n)
        return 0;
    if (!(p = seg_bytes(sp, lg, i, off, n)))
        return -1;
    if (!rec_valid(p, n) || get64(p + 16) <= after)
        return 0;
    *out = p;
    *len = n;
    *seqno = get64(p + 16);
    return 1;
}

/* Starts a segment for records from first on (it becomes the last one). */
static int seg_new(struct spool *sp, struct clog *lg, uint64_t first)
{
    if (!grow(&lg->segs, &lg->segcap, lg->nseg + 1, sizeof *lg->segs)) {
        log_error("spool: connector '%s': out of memory", lg->name);
        return -1;
    }
    uint64_t id = first;
    if (lg->nseg && lg->segs[lg->nseg - 1].id >= id)
        id = lg->segs[lg->nseg - 1].id + 1; /* names stay sorted */
    struct segment s = {.id = id, .first = first, .last = first, .fd = -1};
    if (sp->root) {
        char name[NAME_LEN];
        seg_name(name, id);
        s.fd = openat(lg->dirfd, name, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (s.fd < 0) {
            log_error("spool: cannot create %s/%s: %s", lg->path, name, strerror(errno));
            return -1;
        }
        if (sp->sync == STORE_SYNC_FULL && fsync(lg->dirfd) < 0) {
            log_error("spool: cannot sync %s: %s", lg->path, strerror(errno));
            close(s.fd);
            unlinkat(lg->dirfd, name, 0);
            return -1;
        }
    }
    lg->segs[lg->nseg++] = s;
    return 0;
}

/* No more appends to s: synced first with sync full, then closed. */
static int seg_seal(struct spool *sp, struct clog *lg, struct segment *s)
{
    if (s->unsynced && fdatasync(s->fd) < 0) {
        log_error("spool: cannot sync %s: %s", lg->path, strerror(errno));
        return -1;
    }
    s->unsynced = false;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    return 0;
}

/* Closes and unlinks (or frees) segment s. */
static void seg_drop(struct spool *sp, struct clog *lg, struct segment *s)
{
    window_drop(sp, lg, s);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    free(s->mem);
    s->mem = NULL;
    if (!sp->root)
        return;
    char name[NAME_LEN];
    seg_name(name, s->id);
    if (unlinkat(lg->dirfd, name, 0) < 0 && errno != ENOENT)
        log_error("spool: cannot delete %s/%s: %s", lg->path, name, strerror(errno));
}

/* ---- the watermark and the holes ------------------------------------------- */

/* The first hole with hi >= seqno (nholes when none). */
static size_t hole_find(const struct clog *lg, uint64_t seqno)
{
    size_t lo = 0, hi = lg->nholes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lg->holes[mid].hi < seqno)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool is_live(const struct clog *lg, uint64_t seqno)
{
    if (seqno <= lg->acked)
        return false;
    size_t i = hole_find(lg, seqno);
    return i == lg->nholes || lg->holes[i].lo > seqno;
}

/* Holes at or below A go; a hole starting right above A moves A. */
static void holes_absorb(struct clog *lg)
{
    size_t k = 0;
    while (k < lg->nholes && lg->holes[k].hi <= lg->acked)
        k++;
    if (k < lg->nholes && lg->holes[k].lo <= lg->acked)
        lg->holes[k].lo = lg->acked + 1;
    if (k < lg->nholes && lg->holes[k].lo == lg->acked + 1)
        lg->acked = lg->holes[k++].hi;
    if (k == 0)
        return;
    memmove(lg->holes, lg->holes + k, (lg->nholes - k) * sizeof *lg->holes);
    lg->nholes -= k;
}

/* Adds lo..hi (lo > A, so lo >= 1), merged with the holes it overlaps or
 * touches. */
static int holes_add(struct clog *lg, uint64_t lo, uint64_t hi)
{
    size_t i = hole_find(lg, lo - 1); /* the first hole that may touch */
    size_t j = i;
    while (j < lg->nholes && lg->holes[j].lo - 1 <= hi) {
        if (lg->holes[j].lo < lo)
            lo = lg->holes[j].lo;
        if (lg->holes[j].hi > hi)
            hi = lg->holes[j].hi;
        j++;
    }
    if (j == i) {
        if (lg->nholes >= STATE_MAX_HOLES ||
            !grow(&lg->holes, &lg->holecap, lg->nholes + 1, sizeof *lg->holes))
            return -1;
        memmove(lg->holes + i + 1, lg->holes + i, (lg->nholes - i) * sizeof *lg->holes);
        lg->nholes++;
    } else {
        memmove(lg->holes + i + 1, lg->holes + j, (lg->nholes - j) * sizeof *lg->holes);
        lg->nholes -= j - i - 1;
    }
    lg->holes[i] = (struct hole){lo, hi};
    return 0;
}

/* Whether every record of s is <= A or in a hole. */
static bool seg_dead(const struct clog *lg, const struct segment *s)
{
    if (s->size == 0)
        return false;
    if (s->last <= lg->acked)
        return true;
    uint64_t pos = s->first > lg->acked ? s->first : lg->acked + 1;
    for (size_t i = hole_find(lg, pos); i < lg->nholes; i++) {
        if (lg->holes[i].lo > pos)
            return false;
        if (lg->holes[i].hi >= s->last)
            return true;
        pos = lg->holes[i].hi + 1;
    }
    return false;
}

/* Unlinks dead segments; the last one only when with_last or when it is
 * seg_recycle large. The cursor keeps its place. Not during a load. */
static void log_gc(struct spool *sp, struct clog *lg, bool with_last)
{
    if (sp->loading)
        return;
    size_t w = 0, rd = lg->rd.seg, new_rd = rd;
    bool rd_gone = false;
    for (size_t r = 0; r < lg->nseg; r++) {
        struct segment *s = &lg->segs[r];
        bool is_last = r + 1 == lg->nseg;
        if (!s->keep && seg_dead(lg, s) &&
            (!is_last || with_last || s->sealed || s->size >= sp->seg_recycle)) {
            seg_drop(sp, lg, s);
            if (r < rd)
                new_rd--;
            else if (r == rd)
                rd_gone = true;
            continue;
        }
        lg->segs[w++] = *s;
    }
    lg->nseg = w;
    lg->rd.seg = new_rd;
    if (rd_gone)
        lg->rd.off = 0;
    lg->gc_due = false;
}

/* ---- the state file --------------------------------------------------------- */

static int state_open(struct spool *sp, struct clog *lg, int slot, bool create)
{
    if (lg->state_fd[slot] >= 0)
        return lg->state_fd[slot];
    char name[NAME_LEN];
    snprintf(name, sizeof name, "state.%d", slot);
    int fd = openat(lg->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        fd = openat(lg->dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        if (fd >= 0 && sp->sync == STORE_SYNC_FULL && fsync(lg->dirfd) < 0) {
            log_error("spool: cannot sync %s: %s", lg->path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    if (fd < 0 && (create || errno != ENOENT))
        log_error("spool: cannot open %s/%s: %s", lg->path, name, strerror(errno));
    lg->state_fd[slot] = fd;
    return fd;
}

static int state_write(struct spool *sp, struct clog *lg)
{
    if (!sp->root) {
        lg->state_dirty = false;
        return 0;
    }
    uint8_t small[4096];
    size_t len = STATE_HDR + 16 * lg->nholes;
    uint8_t *b = len <= sizeof small ? small : malloc(len);
    int ret = -1;
    if (!b) {
        log_error("spool: connector '%s': out of memory", lg->name);
        return -1;
    }
    uint64_t counter = lg->state_counter + 1;
    int slot = (int)(counter % 2);
    int fd = state_open(sp, lg, slot, true);
    if (fd < 0)
        goto out;
    memcpy(b, state_magic, 8);
    put32(b + 12, (uint32_t)len);
    put64(b + 16, counter);
    put64(b + 24, lg->acked);
    put32(b + 32, (uint32_t)lg->nholes);
    put32(b + 36, 0);
    for (size_t i = 0; i < lg->nholes; i++) {
        put64(b + STATE_HDR + 16 * i, lg->holes[i].lo);
        put64(b + STATE_HDR + 16 * i + 8, lg->holes[i].hi);
    }
    put32(b + 8, crc_of(b + 12, len - 12));
    ssize_t w;
    do
        w = pwrite(fd, b, len, 0);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len) {
        log_error("spool: cannot write %s/state.%d: %s", lg->path, slot,
                  w < 0 ? strerror(errno) : "short write");
        goto out;
    }
    lg->state_counter = counter;
    lg->state_dirty = false;
    lg->state_unsynced[slot] = sp->sync == STORE_SYNC_FULL;
    ret = 0;
out:
    if (b != small)
        free(b);
    return ret;
}

/* One state file: 1 when valid (fills counter, A, holes), 0 when absent or
 * empty, -1 when damaged. */
static int state_parse(struct spool *sp, struct clog *lg, int slot, uint64_t *counter,
                       uint64_t *acked, struct hole **holes, size_t *nholes)
{
    int fd = state_open(sp, lg, slot, false);
    struct stat st;
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    if (fstat(fd, &st) < 0)
        return -1;
    if (st.st_size == 0)
        return 0;
    if (st.st_size < STATE_HDR || st.st_size > (off_t)UINT32_MAX)
        return -1;
    size_t size = (size_t)st.st_size;
    uint8_t *b = malloc(size);
    int ret = -1;
    if (!b || pread_all(fd, b, size, 0) < 0)
        goto out;
    uint32_t len = get32(b + 12), n = get32(b + 32);
    if (memcmp(b, state_magic, 8) != 0 || len < STATE_HDR || len > size ||
        crc_of(b + 12, len - 12) != get32(b + 8) || n > (len - STATE_HDR) / 16 ||
        len != STATE_HDR + 16 * n)
        goto out;
    struct hole *h = n ? malloc(n * sizeof *h) : NULL;
    if (n && !h)
        goto out;
    uint64_t a = get64(b + 24), prev = a;
    for (uint32_t i = 0; i < n; i++) {
        h[i].lo = get64(b + STATE_HDR + 16 * i);
        h[i].hi = get64(b + STATE_HDR + 16 * i + 8);
        /* sorted, above A, not touching the one before */
        if (h[i].lo > h[i].hi || h[i].lo <= prev || (i > 0 && h[i].lo - 1 <= prev)) {
            free(h);
            goto out;
        }
        prev = h[i].hi;
    }
    *counter = get64(b + 16);
    *acked = a;
    *holes = h;
    *nholes = n;
    ret = 1;
out:
    free(b);
    return ret;
}

/* A and the holes from the newer valid state file. Both damaged: an error
 * is logged and A = 0 (acknowledged records may be exported again: at
 * least once holds). */
static void state_read(struct spool *sp, struct clog *lg)
{
    uint64_t counter[2] = {0, 0}, acked[2] = {0, 0};
    struct hole *holes[2] = {NULL, NULL};
    size_t nholes[2] = {0, 0};
    int rc[2];
    for (int k = 0; k < 2; k++)
        rc[k] = state_parse(sp, lg, k, &counter[k], &acked[k], &holes[k], &nholes[k]);
    int best = -1;
    for (int k = 0; k < 2; k++)
        if (rc[k] == 1 && (best < 0 || (int64_t)(counter[k] - counter[best]) > 0))
            best = k;
    if (best >= 0) {
        lg->state_counter = counter[best];
        lg->acked = acked[best];
        lg->holes = holes[best];
        lg->nholes = lg->holecap = nholes[best];
        holes[best] = NULL;
    } else if (rc[0] < 0 || rc[1] < 0) {
        log_error("spool: %s: both state files are damaged; reading from the start of the "
                  "log (acknowledged records may be exported again)",
                  lg->path);
    }
    for (int k = 0; k < 2; k++) {
        if (rc[k] < 0)
            log_warn("spool: %s/state.%d is damaged; %s", lg->path, k,
                     best >= 0 ? "the other copy is used" : "ignored");
        free(holes[k]);
    }
}

/* ---- recovery --------------------------------------------------------------- */

static int seg_cmp(const void *a, const void *b)
{
    const struct segment *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* "<20 digits>.seg" -> its number. */
static bool seg_parse_name(const char *name, uint64_t *id)
{
    char again[NAME_LEN];
    if (strlen(name) != 24)
        return false;
    for (int i = 0; i < 20; i++)
        if (name[i] < '0' || name[i] > '9')
            return false;
    *id = strtoull(name, NULL, 10);
    seg_name(again, *id);
    return strcmp(again, name) == 0;
}

/* The segment files, sorted by number. */
static int seg_list(struct clog *lg)
{
    int fd = dup(lg->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        log_error("spool: cannot list %s: %s", lg->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct dirent *e;
    int ret = 0;
    rewinddir(d);
    while ((e = readdir(d)) != NULL) {
        uint64_t id;
        if (!seg_parse_name(e->d_name, &id))
            continue;
        if (!grow(&lg->segs, &lg->segcap, lg->nseg + 1, sizeof *lg->segs)) {
            log_error("spool: connector '%s': out of memory", lg->name);
            ret = -1;
            break;
        }
        lg->segs[lg->nseg++] = (struct segment){.id = id, .first = id, .last = id, .fd = -1};
    }
    closedir(d);
    if (lg->nseg > 1)
        qsort(lg->segs, lg->nseg, sizeof *lg->segs, seg_cmp);
    return ret;
}

/* Whether a valid record with a seqno above after starts anywhere in
 * segment i from offset from on. 1 (also when SCAN_BUDGET ran out before
 * an answer), 0, or -1 on an I/O error. */
static int valid_record_after(struct spool *sp, struct clog *lg, size_t i, uint64_t from,
                              uint64_t after)
{
    uint64_t size = lg->segs[i].size;
    uint64_t p = from;
    uint64_t spent = 0;
    while (p + REC_HDR <= size) {
        size_t n = size - p < READ_CHUNK ? (size_t)(size - p) : READ_CHUNK;
        const uint8_t *w = seg_bytes(sp, lg, i, p, n);
        if (!w)
            return -1;
        const uint8_t *hit = NULL;
        for (const uint8_t *q = w; q + 4 <= w + n; q++) {
            q = memchr(q, rec_magic[0], (size_t)(w + n - q));
            if (!q || q + 4 > w + n)
                break;
            if (memcmp(q, rec_magic, 4) == 0) {
                hit = q;
                break;
            }
        }
        if (!hit) {
            p += n > 3 ? n - 3 : n; /* a magic may straddle the chunks */
            continue;
        }
        uint64_t at = p + (uint64_t)(hit - w);
        /* Payloads may hold "MQS1" and header-like bytes: each candidate
         * costs a read window and a CRC over its claimed length. Past the
         * budget, answer "maybe": the caller then sets the rest aside
         * (kept, with an error) instead of truncating it. */
        uint64_t claimed = (uint64_t)(w + n - hit) >= 12 ? get32(hit + 8) : 0;
        if (claimed > size - at)
            claimed = size - at;
        spent += claimed > READ_CHUNK ? claimed : READ_CHUNK;
        if (spent > SCAN_BUDGET)
            return 1;
        const uint8_t *rec;
        uint32_t len;
        uint64_t seqno;
        int rc = rec_at(sp, lg, i, at, after, &rec, &len, &seqno);
        if (rc != 0)
            return rc;
        p = at + 1;
    }
    return 0;
}

/* Copies bytes [off, size) of segment i to "<name>.corrupt" (".corrupt.N"
 * when taken) and cuts them off. 0, or -1 (logged) with the file untouched. */
static int seg_set_aside(struct spool *sp, struct clog *lg, size_t i, uint64_t off, char *aside,
                         size_t asidelen)
{
    struct segment *s = &lg->segs[i];
    char name[NAME_LEN];
    seg_name(name, s->id);
    int out = -1;
    for (int k = 0; k < 100 && out < 0; k++) {
        if (k == 0)
            snprintf(aside, asidelen, "%s.corrupt", name);
        else
            snprintf(aside, asidelen, "%s.corrupt.%d", name, k);
        out = openat(lg->dirfd, aside, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (out < 0 && errno != EEXIST)
            break;
    }
    if (out < 0) {
        log_error("spool: cannot create %s/%s: %s", lg->path, aside, strerror(errno));
        return -1;
    }
    for (uint64_t p = off; p < s->size;) {
        size_t n = s->size - p < READ_CHUNK ? (size_t)(s->size - p) : READ_CHUNK;
        const uint8_t *b = seg_bytes(sp, lg, i, p, n);
        if (!b || write_all(out, b, n) < 0) {
            if (b)
                log_error("spool: cannot write %s/%s: %s", lg->path, aside, strerror(errno));
            goto fail;
        }
        p += n;
    }
    if ((sp->sync == STORE_SYNC_FULL && fdatasync(out) < 0) || ftruncate(s->fd, (off_t)off) < 0) {
        log_error("spool: cannot set aside the end of %s/%s: %s", lg->path, name, strerror(errno));
        goto fail;
    }
    close(out);
    window_drop(sp, lg, s);
    s->size = off;
    return 0;
fail:
    close(out);
    unlinkat(lg->dirfd, aside, 0);
    return -1;
}

/* Segment i is bad from off on (prev: the last good seqno). Torn end of the
 * log: truncated. Damage: set aside. Either way the segment ends at off. */
static int seg_damaged(struct spool *sp, struct clog *lg, size_t i, uint64_t off, uint64_t prev)
{
    struct segment *s = &lg->segs[i];
    char name[NAME_LEN], aside[NAME_LEN + 32], next[64] = "";
    uint64_t bad = s->size - off;
    bool is_last = i + 1 == lg->nseg;
    seg_name(name, s->id);
    /* A whole record that is only out of order was written: not torn. */
    const uint8_t *rec;
    uint32_t len;
    uint64_t seqno;
    int whole = rec_at(sp, lg, i, off, 0, &rec, &len, &seqno);
    int later = whole ? whole : valid_record_after(sp, lg, i, off + 1, prev);
    if (later < 0)
        return -1;
    if (is_last && !later) {
        if (ftruncate(s->fd, (off_t)off) < 0) {
            log_error("spool: cannot truncate %s/%s: %s", lg->path, name, strerror(errno));
            return -1;
        }
        log_warn("spool: %s/%s: %" PRIu64 " bytes of an unfinished write at offset %" PRIu64
                 " dropped",
                 lg->path, name, bad, off);
        window_drop(sp, lg, s);
        s->size = off;
        return 0;
    }
    if (!is_last)
        snprintf(next, sizeof next, " and below %" PRIu64, lg->segs[i + 1].id);
    if (seg_set_aside(sp, lg, i, off, aside, sizeof aside) == 0) {
        log_error("spool: %s/%s is damaged at offset %" PRIu64 ": %" PRIu64
                  " bytes from there moved to %s; records of connector '%s' above seqno %" PRIu64
                  "%s that were there are not exported",
                  lg->path, name, off, bad, aside, lg->name, prev, next);
    } else {
        /* Keep the bytes where they are: read up to off, never append. */
        log_error("spool: %s/%s is damaged at offset %" PRIu64 " (%" PRIu64
                  " bytes, left in place); records of connector '%s' above seqno %" PRIu64
                  "%s that were there are not exported",
                  lg->path, name, off, bad, lg->name, prev, next);
        s->size = off;
        s->sealed = true;
        s->keep = true;
    }
    return 0;
}

/* Reads segment i whole: fixes its first, last and size, counts live
 * records and places the cursor at the first one. */
static int seg_scan(struct spool *sp, struct clog *lg, size_t i, uint64_t *prev, bool *cursor_set)
{
    struct segment *s = &lg->segs[i];
    struct stat st;
    int fd = seg_fd(sp, lg, i);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0) {
        log_error("spool: cannot stat %s/segment %" PRIu64 ": %s", lg->path, s->id,
                  strerror(errno));
        return -1;
    }
    s->size = (uint64_t)st.st_size;
    uint64_t off = 0;
    while (off < s->size) {
        const uint8_t *p;
        uint32_t len;
        uint64_t seqno;
        int rc = rec_at(sp, lg, i, off, *prev, &p, &len, &seqno);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        if (off == 0)
            s->first = seqno;
        s->last = seqno;
        *prev = seqno;
        if (is_live(lg, seqno)) {
            if (!*cursor_set) {
                lg->rd = (struct cursor){.seg = i, .off = off, .lo = 0};
                *cursor_set = true;
                lg->r_first = seqno;
            }
            lg->r_count++;
            lg->r_last = seqno;
        }
        off += len;
    }
    if (off < s->size && seg_damaged(sp, lg, i, off, *prev) < 0)
        return -1;
    return 0;
}

/* Opens (creating when missing) and recovers the connector's directory. */
static int log_recover(struct spool *sp, struct clog *lg, const char *esc)
{
    bool created = mkdirat(sp->rootfd, esc, 0750) == 0;
    if (!created && errno != EEXIST) {
        log_error("spool: cannot create %s: %s", lg->path, strerror(errno));
        return -1;
    }
    if (created && sp->sync == STORE_SYNC_FULL)
        fsync(sp->rootfd);
    lg->dirfd = openat(sp->rootfd, esc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lg->dirfd < 0) {
        log_error("spool: cannot open %s: %s", lg->path, strerror(errno));
        return -1;
    }
    state_read(sp, lg);
    holes_absorb(lg);
    if (seg_list(lg) < 0)
        return -1;
    uint64_t prev = 0;
    bool cursor_set = false;
    for (size_t i = 0; i < lg->nseg;) {
        if (seg_scan(sp, lg, i, &prev, &cursor_set) < 0)
            return -1;
        struct segment *s = &lg->segs[i];
        if (s->size == 0 && !s->keep) {
            seg_drop(sp, lg, s);
            memmove(s, s + 1, (lg->nseg - i - 1) * sizeof *s);
            lg->nseg--;
            continue;
        }
        if (i + 1 < lg->nseg && s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
        i++;
    }
    /* No live record: the next one will be appended to the last segment,
     * or start a new one. */
    if (!cursor_set)
        lg->rd = lg->nseg ? (struct cursor){lg->nseg - 1, lg->segs[lg->nseg - 1].size, 0}
                          : (struct cursor){0, 0, 0};
    lg->high = prev > lg->acked ? prev : lg->acked;
    if (lg->nholes && lg->holes[lg->nholes - 1].hi > lg->high)
        lg->high = lg->holes[lg->nholes - 1].hi;
    lg->range_valid = true;
    if (lg->r_count)
        log_info("spool: connector '%s': %" PRIu64 " records (%" PRIu64 "..%" PRIu64
                 ") in %zu segments, acknowledged up to %" PRIu64 ", %zu holes",
                 lg->name, lg->r_count, lg->r_first, lg->r_last, lg->nseg, lg->acked, lg->nholes);
    log_gc(sp, lg, true);
    return 0;
}

/* ---- connectors' logs ------------------------------------------------------- */

/* Bytes outside A-Z a-z 0-9 _ - become %XX; "" becomes "%". */
static char *name_escape(const char *name)
{
    size_t n = strlen(name);
    char *out = malloc(3 * n + 2);
    if (!out)
        return NULL;
    char *p = out;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '_' || *c == '-')
            *p++ = (char)*c;
        else
            p += sprintf(p, "%%%02X", *c);
    }
    if (p == out)
        *p++ = '%';
    *p = '\0';
    return out;
}

static void log_free(struct spool *sp, struct clog *lg)
{
    for (size_t i = 0; i < lg->nseg; i++) {
        if (lg->segs[i].fd >= 0)
            close(lg->segs[i].fd);
        free(lg->segs[i].mem);
    }
    for (int k = 0; k < 2; k++)
        if (lg->state_fd[k] >= 0)
            close(lg->state_fd[k]);
    if (lg->dirfd >= 0)
        close(lg->dirfd);
    if (sp->w_log == lg)
        sp->w_log = NULL;
    free(lg->segs);
    free(lg->holes);
    free(lg->pend);
    free(lg->name);
    free(lg->path);
    free(lg);
}

/* The connector's log, opened and recovered at its first use. NULL when it
 * cannot be (logged once; later calls fail quietly). */
static struct clog *log_get(struct spool *sp, const char *name)
{
    struct clog *lg = sp->recent;
    if (!lg || strcmp(lg->name, name) != 0) {
        lg = NULL;
        for (size_t i = 0; i < sp->nlogs && !lg; i++)
            if (strcmp(sp->logs[i]->name, name) == 0)
                lg = sp->logs[i];
    }
    if (lg) {
        sp->recent = lg;
        return lg->failed ? NULL : lg;
    }
    struct clog **logs = realloc(sp->logs, (sp->nlogs + 1) * sizeof *logs);
    if (!logs || !(lg = calloc(1, sizeof *lg))) {
        if (logs)
            sp->logs = logs;
        log_error("spool: connector '%s': out of memory", name);
        return NULL;
    }
    sp->logs = logs;
    lg->dirfd = lg->state_fd[0] = lg->state_fd[1] = -1;
    char *esc = NULL;
    if (!(lg->name = strdup(name)) || (sp->root && !(esc = name_escape(name)))) {
        log_error("spool: connector '%s': out of memory", name);
        log_free(sp, lg);
        free(esc);
        return NULL;
    }
    sp->logs[sp->nlogs++] = lg;
    sp->recent = lg;
    if (!sp->root) {
        lg->range_valid = true;
        return lg;
    }
    size_t n = strlen(sp->root) + strlen(esc) + 2;
    if (!(lg->path = malloc(n))) {
        lg->failed = true;
    } else {
        snprintf(lg->path, n, "%s/%s", sp->root, esc);
        lg->failed = log_recover(sp, lg, esc) < 0;
    }
    free(esc);
    if (lg->failed)
        log_error("spool: connector '%s': its log cannot be used; records are held in memory "
                  "only",
                  name);
    return lg->failed ? NULL : lg;
}

/* ---- writes ----------------------------------------------------------------- */

/* Writes the pending records to the last segment (a new one when there is
 * none or it would grow past SEG_MAX). On failure nothing of it stays in
 * the file and the records stay pending. */
static int log_flush(struct spool *sp, struct clog *lg)
{
    if (lg->pend_len == 0)
        return 0;
    struct segment *t = lg->nseg ? &lg->segs[lg->nseg - 1] : NULL;
    if (!t || t->sealed || (t->size > 0 && t->size + lg->pend_len > sp->seg_max)) {
        if (t && sp->root && seg_seal(sp, lg, t) < 0)
            return -1;
        if (seg_new(sp, lg, lg->pend_first) < 0)
            return -1;
        t = &lg->segs[lg->nseg - 1];
    }
    if (!sp->root) {
        if (!grow(&t->mem, &t->cap, (size_t)t->size + lg->pend_len, 1)) {
            log_error("spool: connector '%s': out of memory", lg->name);
            return -1;
        }
        memcpy(t->mem + t->size, lg->pend, lg->pend_len);
    } else {
        int fd = seg_fd(sp, lg, lg->nseg - 1);
        if (fd < 0)
            return -1;
        if (write_all(fd, lg->pend, lg->pend_len) < 0) {
            char name[NAME_LEN];
            seg_name(name, t->id);
            log_error("spool: cannot write %zu bytes to %s/%s: %s", lg->pend_len, lg->path, name,
                      strerror(errno));
            if (ftruncate(fd, (off_t)t->size) < 0) {
                log_error("spool: cannot truncate %s/%s back to %" PRIu64 " bytes: %s", lg->path,
                          name, t->size, strerror(errno));
                t->sealed = true;
            }
            return -1;
        }
        t->unsynced = sp->sync == STORE_SYNC_FULL;
    }
    if (t->size == 0)
        t->first = lg->pend_first;
    t->size += lg->pend_len;
    t->last = lg->pend_last;
    lg->pend_len = 0;
    return 0;
}

static int log_sync(struct clog *lg)
{
    int ret = 0;
    for (size_t i = 0; i < lg->nseg; i++) {
        struct segment *s = &lg->segs[i];
        if (!s->unsynced)
            continue;
        if (fdatasync(s->fd) < 0) {
            log_error("spool: cannot sync %s: %s", lg->path, strerror(errno));
            ret = -1;
            continue;
        }
        s->unsynced = false;
    }
    for (int k = 0; k < 2; k++) {
        if (!lg->state_unsynced[k])
            continue;
        if (fdatasync(lg->state_fd[k]) < 0) {
            log_error("spool: cannot sync %s/state.%d: %s", lg->path, k, strerror(errno));
            ret = -1;
            continue;
        }
        lg->state_unsynced[k] = false;
    }
    return ret;
}

int spool_commit(struct spool *sp)
{
    int ret = 0;
    for (size_t i = 0; i < sp->nlogs; i++) {
        struct clog *lg = sp->logs[i];
        if (lg->failed)
            continue;
        if (log_flush(sp, lg) < 0)
            ret = -1;
        if (lg->state_dirty && state_write(sp, lg) < 0)
            ret = -1;
        if (sp->sync == STORE_SYNC_FULL && log_sync(lg) < 0)
            ret = -1;
        /* Unlink only what the state on disk says is done. */
        if (lg->gc_due && !lg->state_dirty)
            log_gc(sp, lg, false);
    }
    return ret;
}

/* What the load side will accept back; checked before anything is
 * encoded. Fills the strings' lengths and the record's length. */
static const char *record_invalid(const struct clog *lg, const struct export_record *rec,
                                  const char *const str[REC_STRINGS], size_t len[REC_STRINGS],
                                  size_t *total)
{
    if (rec->seqno <= lg->high)
        return "seqno not above the last one used";
    if (rec->kind != RECORD_MESSAGE && rec->kind != RECORD_STATUS)
        return "invalid kind";
    if (rec->qos > 2)
        return "invalid qos";
    if (!rec->payload && rec->payload_len > 0)
        return "NULL payload with a length";
    uint64_t sum = REC_HDR + (uint64_t)rec->payload_len;
    for (int i = 0; i < REC_STRINGS; i++) {
        len[i] = str[i] ? strlen(str[i]) : 0;
        if (len[i] > STR_MAX)
            return "a string longer than 65535 bytes";
        sum += len[i];
    }
    if (sum > REC_MAX)
        return "record larger than 1 GiB";
    if (lg->pend_len > PENDING_MAX)
        return "too much waiting to be written (the spool's writes are failing)";
    *total = (size_t)sum;
    return NULL;
}

int spool_put(struct spool *sp, const char *connector, const struct export_record *rec,
              const char *rule_name, uint64_t generation)
{
    struct clog *lg = log_get(sp, connector);
    if (!lg)
        return -1;
    const char *str[REC_STRINGS];
    size_t len[REC_STRINGS], total = 0;
    rec_strings(rec, rule_name, str);
    const char *why = record_invalid(lg, rec, str, len, &total);
    if (why) {
        log_error("spool: put: connector '%s' seqno %" PRIu64 ": %s", connector, rec->seqno, why);
        return -1;
    }
    if (!grow(&lg->pend, &lg->pend_cap, lg->pend_len + total, 1)) {
        log_error("spool: put: connector '%s': out of memory", connector);
        return -1;
    }
    uint8_t *p = lg->pend + lg->pend_len;
    uint8_t present = 0;
    memcpy(p, rec_magic, 4);
    put32(p + 8, (uint32_t)total);
    p[12] = (uint8_t)rec->kind;
    p[13] = rec->qos;
    p[15] = 0;
    put64(p + 16, rec->seqno);
    put64(p + 24, generation);
    put64(p + 32, rec->msg_id);
    uint64_t time_bits;
    memcpy(&time_bits, &rec->time_ms, sizeof time_bits);
    put64(p + 40, time_bits);
    put32(p + 48, rec->payload_len);
    uint8_t *q = p + REC_HDR;
    for (int i = 0; i < REC_STRINGS; i++) {
        put16(p + 52 + 2 * i, (uint16_t)len[i]);
        if (!str[i])
            continue;
        present |= (uint8_t)(1u << i);
        memcpy(q, str[i], len[i]);
        q += len[i];
    }
    p[14] = present;
    if (rec->payload_len)
        memcpy(q, rec->payload, rec->payload_len);
    put32(p + 4, crc_of(p + 8, total - 8));
    if (lg->pend_len == 0)
        lg->pend_first = rec->seqno;
    lg->pend_last = lg->high = rec->seqno;
    lg->pend_len += total;
    if (lg->range_valid) {
        if (lg->r_count++ == 0)
            lg->r_first = rec->seqno;
        lg->r_last = rec->seqno;
    }
    /* A burst: write early (harmless) rather than hold it all; once per
     * PENDING_FLUSH bytes, so that a failing write is retried by the
     * commit, not by every put. */
    if (lg->pend_len >= PENDING_FLUSH && lg->pend_len - total < PENDING_FLUSH)
        log_flush(sp, lg);
    return 0;
}

/* After the live range lost first..last: the cached range stays known when
 * it lost nothing or everything. */
static void range_cut(struct clog *lg, uint64_t first, uint64_t last)
{
    if (!lg->range_valid || lg->r_count == 0 || last < lg->r_first || first > lg->r_last)
        return;
    if (first <= lg->r_first && last >= lg->r_last)
        lg->r_count = lg->r_first = lg->r_last = 0;
    else
        lg->range_valid = false;
}

int spool_ack(struct spool *sp, const char *connector, uint64_t upto)
{
    struct clog *lg = log_get(sp, connector);
    if (!lg)
        return -1;
    if (upto > lg->high)
        upto = lg->high; /* seqnos above have no record yet */
    if (upto <= lg->acked)
        return 0;
    range_cut(lg, lg->acked + 1, upto);
    lg->acked = upto;
    holes_absorb(lg);
    lg->state_dirty = lg->gc_due = true;
    return 0;
}

int spool_delete_range(struct spool *sp, const char *connector, uint64_t first, uint64_t last)
{
    struct clog *lg = log_get(sp, connector);
    if (!lg)
        return -1;
    if (last > lg->high)
        last = lg->high;
    if (first <= lg->acked)
        first = lg->acked + 1;
    if (first > last)
        return 0;
    range_cut(lg, first, last);
    if (holes_add(lg, first, last) < 0) {
        log_error("spool: connector '%s': out of memory", connector);
        return -1;
    }
    holes_absorb(lg);
    lg->state_dirty = lg->gc_due = true;
    return 0;
}

/* ---- reads ------------------------------------------------------------------ */

/* Places c for a read from seqno from on: kept when it is good for from and
 * from is not in a later segment; else the start of the last segment whose
 * first record is <= from. */
static void cursor_seek(const struct clog *lg, struct cursor *c, uint64_t from)
{
    if (from >= c->lo && c->seg < lg->nseg &&
        (c->seg + 1 >= lg->nseg || from < lg->segs[c->seg + 1].first))
        return;
    size_t lo = 0, hi = lg->nseg;
    while (lo < hi) { /* the first segment with first > from */
        size_t mid = lo + (hi - lo) / 2;
        if (lg->segs[mid].first <= from)
            lo = mid + 1;
        else
            hi = mid;
    }
    c->seg = lo ? lo - 1 : 0;
    c->off = 0;
    c->lo = lo ? lg->segs[c->seg].first : 0;
}

/* The record at c or the next segment's first: 1 with its length and
 * seqno, 0 at the end of the log, -1 on an error (logged). */
static int cursor_peek(struct spool *sp, struct clog *lg, struct cursor *c, uint32_t *len,
                       uint64_t *seqno)
{
    for (;;) {
        if (c->seg >= lg->nseg)
            return 0;
        if (c->off < lg->segs[c->seg].size)
            break;
        if (c->seg + 1 == lg->nseg)
            return 0; /* stay: the last segment may grow */
        c->seg++;
        c->off = 0;
    }
    struct segment *s = &lg->segs[c->seg];
    uint64_t avail = s->size - c->off;
    const uint8_t *p = seg_bytes(sp, lg, c->seg, c->off, avail < REC_HDR ? (size_t)avail : REC_HDR);
    if (!p)
        return -1;
    if (!(*len = hdr_len(p, avail))) {
        char name[NAME_LEN];
        seg_name(name, s->id);
        log_error("spool: %s/%s: no valid record at offset %" PRIu64 " (damaged since it was read)",
                  lg->path ? lg->path : "(memory)", name, c->off);
        return -1;
    }
    *seqno = get64(p + 16);
    return 1;
}

/* Count and range of the live records, by reading them: the segments,
 * then the pending buffer (not written: spool_range writes nothing). */
static int log_count(struct spool *sp, struct clog *lg)
{
    struct cursor c = {0, 0, 0};
    uint64_t count = 0, first = 0, last = 0;
    if (lg->acked == UINT64_MAX)
        goto done;
    cursor_seek(lg, &c, lg->acked + 1);
    for (;;) {
        uint32_t len;
        uint64_t seqno;
        int rc = cursor_peek(sp, lg, &c, &len, &seqno);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        if (is_live(lg, seqno)) {
            if (count++ == 0)
                first = seqno;
            last = seqno;
        }
        c.off += len;
    }
    for (size_t off = 0; off < lg->pend_len; off += get32(lg->pend + off + 8)) {
        uint64_t seqno = get64(lg->pend + off + 16);
        if (is_live(lg, seqno)) {
            if (count++ == 0)
                first = seqno;
            last = seqno;
        }
    }
done:
    lg->r_count = count;
    lg->r_first = first;
    lg->r_last = last;
    lg->range_valid = true;
    return 0;
}

int spool_range(struct spool *sp, const char *connector, uint64_t *count, uint64_t *first,
                uint64_t *last)
{
    struct clog *lg = log_get(sp, connector);
    if (!lg)
        return -1;
    if (!lg->range_valid && log_count(sp, lg) < 0)
        return -1;
    if (count)
        *count = lg->r_count;
    if (first)
        *first = lg->r_first;
    if (last)
        *last = lg->r_last;
    return 0;
}

int spool_seqno_high(struct spool *sp, const char *connector, uint64_t *high)
{
    struct clog *lg = log_get(sp, connector);
    if (!lg)
        return -1;
    *high = lg->high;
    return 0;
}

/* The rule name as a C string for the callback. */
static const char *scratch_str(struct spool *sp, struct span s)
{
    if (!s.p)
        return NULL;
    if (!grow(&sp->scratch, &sp->scratch_cap, s.len + 1, 1))
        return NULL;
    memcpy(sp->scratch, s.p, s.len);
    sp->scratch[s.len] = '\0';
    return sp->scratch;
}

int spool_load(struct spool *sp, const char *connector, uint64_t from, unsigned max,
               spool_load_fn fn, void *ctx, unsigned *loaded)
{
    unsigned n = 0;
    int ret = 0;
    if (sp->loading) {
        log_error("spool: load: called from inside a load callback");
        ret = -1;
        goto out;
    }
    struct clog *lg = log_get(sp, connector);
    if (!lg) {
        ret = -1;
        goto out;
    }
    if (max == 0 || lg->acked == UINT64_MAX)
        goto out;
    if (log_flush(sp, lg) < 0) {
        ret = -1;
        goto out;
    }
    if (from <= lg->acked)
        from = lg->acked + 1;
    cursor_seek(lg, &lg->rd, from);
    sp->loading = true;
    while (n < max) {
        struct cursor *c = &lg->rd;
        uint32_t len;
        uint64_t seqno;
        int rc = cursor_peek(sp, lg, c, &len, &seqno);
        if (rc <= 0) {
            ret = rc;
            break;
        }
        if (seqno < from || !is_live(lg, seqno)) {
            c->off += len;
            c->lo = seqno == UINT64_MAX ? UINT64_MAX : seqno + 1;
            continue;
        }
        const uint8_t *p;
        uint64_t got, generation;
        struct span rule;
        rc = rec_at(sp, lg, c->seg, c->off, seqno - 1, &p, &len, &got);
        if (rc <= 0) {
            if (rc == 0) {
                char name[NAME_LEN];
                seg_name(name, lg->segs[c->seg].id);
                log_error("spool: %s/%s: record %" PRIu64 " at offset %" PRIu64
                          " fails its check (damaged since it was written)",
                          lg->path ? lg->path : "(memory)", name, seqno, c->off);
            }
            ret = -1;
            break;
        }
        struct export_record *rec = rec_decode(p, &rule, &generation);
        const char *rule_name = rec ? scratch_str(sp, rule) : NULL;
        if (!rec || (rule.p && !rule_name)) {
            log_error("spool: load: out of memory");
            export_record_free(rec);
            ret = -1;
            break;
        }
        c->off += len;
        c->lo = seqno == UINT64_MAX ? UINT64_MAX : seqno + 1;
        n++;
        if (fn(ctx, rec, rule_name, generation) != 0) {
            ret = -1;
            break;
        }
    }
    sp->loading = false;
out:
    if (loaded)
        *loaded = n;
    return ret;
}

/* ---- open / close ------------------------------------------------------------ */

int spool_open(const char *dir, enum store_sync sync, struct spool **out, char *err, size_t errlen)
{
    char why[512] = "";
    *out = NULL;
    struct spool *sp = calloc(1, sizeof *sp);
    if (!sp) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    sp->rootfd = -1;
    sp->sync = sync;
    spool_set_segment_max(sp, SEG_MAX);
    if ((unsigned)sync > STORE_SYNC_FULL) {
        snprintf(why, sizeof why, "invalid sync level %d", (int)sync);
        goto fail;
    }
    if (dir) {
        if (!(sp->root = strdup(dir))) {
            snprintf(why, sizeof why, "out of memory");
            goto fail;
        }
        if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
            snprintf(why, sizeof why, "cannot create the directory: %s", strerror(errno));
            goto fail;
        }
        sp->rootfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sp->rootfd < 0) {
            snprintf(why, sizeof why, "cannot open the directory: %s", strerror(errno));
            goto fail;
        }
    }
    *out = sp;
    return 0;
fail:
    if (err && errlen)
        snprintf(err, errlen, "spool %s: %s", dir ? dir : "(memory)", why);
    spool_close(sp);
    return -1;
}

void spool_set_segment_max(struct spool *sp, uint64_t bytes)
{
    sp->seg_max = bytes ? bytes : 1;
    sp->seg_recycle = sp->seg_max / 16;
}

void spool_close(struct spool *sp)
{
    if (!sp)
        return;
    spool_commit(sp);
    for (size_t i = 0; i < sp->nlogs; i++) {
        struct clog *lg = sp->logs[i];
        if (!lg->failed && !lg->state_dirty)
            log_gc(sp, lg, true);
        log_free(sp, lg);
    }
    free(sp->logs);
    if (sp->rootfd >= 0)
        close(sp->rootfd);
    free(sp->rbuf);
    free(sp->scratch);
    free(sp->root);
    free(sp);
}
