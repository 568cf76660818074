/* The export backlog: records that wait only in the spool while a sink is
 * away (engine/export.c, engine/spool.c). The SQLite sink is held locked by
 * the test (no server needed); every test first exports one message per
 * client, so the sink's table exists and its thread is idle, then locks:
 *   - spill and refill: export.memory_queue 8, 4 clients x 100 QoS 1
 *     messages while locked: 8 wait in memory, 392 only in the spool
 *     (counted as spilled, the connector's segment files are there); a
 *     kill -9, unlock, restart: every message arrives once in per-client
 *     order; a second outage without a crash: the same, refilled by the
 *     running process;
 *   - overflow drop_oldest: memory_queue 5, spool_max 50, 200 messages
 *     while locked: exactly 145 dropped, the oldest of the backlog (seq
 *     6..150); a kill -9 before the sink comes back must not bring them
 *     back: the sink gets seq 0..5 and 151..200;
 *   - overflow drop_newest: the sink gets seq 0..55, 145 dropped. */
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check_main.h"
#include "harness_export.h"

struct backlog {
    char dir[64], path[128], table[64];
    struct ex_sqlite *q;
    struct it_broker b;
    struct ex_pub p;
};

static void bl_start(struct backlog *t, const char *export_yaml, unsigned clients)
{
    char yaml[2048];
    memset(t, 0, sizeof *t);
    it_tmpdir_make(t->dir, sizeof t->dir);
    snprintf(t->path, sizeof t->path, "%s/sink.db", t->dir);
    ex_unique_name(t->table, sizeof t->table, "backlog");
    t->q = ex_sqlite_new(t->path);
    int n = snprintf(yaml, sizeof yaml,
                     "connectors:\n"
                     "  " EX_CONNECTOR ": { type: sqlite, path: \"%s\", busy_timeout_ms: 100 }\n"
                     "rules:\n"
                     "  - name: " EX_RULE_MSGS "\n"
                     "    type: outbound\n"
                     "    source: { topic: " EX_PARENT " }\n"
                     "    target: { connector: " EX_CONNECTOR ", table: %s, create_table: true }\n"
                     "export: { retry_initial_ms: 100, retry_max_ms: 500, %s }\n",
                     t->path, t->table, export_yaml);
    ck_assert(n > 0 && (size_t)n < sizeof yaml);
    ex_broker_start(&t->b, yaml);
    ex_pub_open(&t->p, &t->b, clients);
}

static const struct ex_msgs *bl_read(void *ctx)
{
    struct backlog *t = ctx;
    return ex_sqlite_msgs(t->q, t->table);
}

static void bl_free(struct backlog *t)
{
    ex_pub_close(&t->p);
    it_broker_cleanup(&t->b);
    ex_sqlite_free(t->q);
    it_tmpdir_remove(t->dir);
}

/* One message per client, exported: the table exists, the thread idles. */
static void bl_prime(struct backlog *t)
{
    ex_pub_run(&t->p, 1, 1);
    ex_msgs_wait(&t->p, bl_read, t, 0, 1, true);
    ex_stats_expect_settled(&t->b, EX_RULE_MSGS, t->p.clients);
}

static uint64_t stat_value(const char *line, const char *name)
{
    char key[48];
    snprintf(key, sizeof key, " %s=", name);
    const char *v = strstr(line, key);
    ck_assert_msg(v != NULL, "no %s in %s", name, line);
    return strtoull(v + strlen(key), NULL, 10);
}

/* The rule's counters must read exactly these. */
static void bl_expect_stats(struct backlog *t, uint64_t matched, uint64_t exported, uint64_t queued,
                            uint64_t dropped)
{
    struct ex_rule_stats st;
    ex_stats_rule(&t->b, EX_RULE_MSGS, &st);
    ck_assert_msg(st.matched == matched && st.exported == exported && st.queued == queued &&
                      st.dropped == dropped,
                  "want matched=%" PRIu64 " exported=%" PRIu64 " queued=%" PRIu64
                  " dropped=%" PRIu64 ": %s",
                  matched, exported, queued, dropped, st.line);
}

/* Segment files of the connector's log in the broker's store. */
static unsigned bl_segments(struct backlog *t)
{
    char d[256];
    snprintf(d, sizeof d, "%s/store/spool/" EX_CONNECTOR, t->b.dir);
    DIR *dd = opendir(d);
    ck_assert_msg(dd != NULL, "no spool directory %s", d);
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        size_t l = strlen(e->d_name);
        n += l == 24 && strcmp(e->d_name + 20, ".seg") == 0;
    }
    closedir(dd);
    return n;
}

/* The sink holds exactly the messages of client 0 with seq in [a0, a1)
 * and [b0, b1), once each. */
static void bl_expect_seqs(struct backlog *t, uint32_t a0, uint32_t a1, uint32_t b0, uint32_t b1)
{
    unsigned want = (a1 - a0) + (b1 - b0);
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    const struct ex_msgs *got;
    while ((got = bl_read(t))->n < want) {
        ck_assert_msg(it_now_ms() < deadline, "the sink holds %zu messages, want %u", got->n, want);
        poll(NULL, 0, 20);
    }
    static uint8_t seen[EX_SEQ_MAX];
    memset(seen, 0, sizeof seen);
    for (size_t k = 0; k < got->n; k++) {
        unsigned c, seq;
        ck_assert_msg(sscanf(got->v[k].topic, EX_PARENT "/pub%u/%u", &c, &seq) == 2 && c == 0 &&
                          seq < EX_SEQ_MAX,
                      "unexpected topic %s", got->v[k].topic);
        ck_assert_msg((seq >= a0 && seq < a1) || (seq >= b0 && seq < b1),
                      "seq %u is in the sink: it was dropped", seq);
        ck_assert_msg(!seen[seq]++, "seq %u is there twice", seq);
    }
    ck_assert_uint_eq(got->n, want);
}

START_TEST(test_spill_refill_and_kill9)
{
    struct backlog t;
    bl_start(&t, "memory_queue: 8", 4);
    bl_prime(&t);
    ex_sqlite_lock(t.q);
    ex_pub_run(&t.p, 100, 10); /* PUBACKs come while the sink is locked */
    struct ex_rule_stats st;
    ex_stats_rule(&t.b, EX_RULE_MSGS, &st);
    ck_assert_msg(ex_stats_add_up(&st) && st.queued == 400 && stat_value(st.line, "spilled") == 392,
                  "want 400 queued, 392 of them spilled: %s", st.line);
    unsigned segs = bl_segments(&t);
    ck_assert_uint_ge(segs, 1);
    fprintf(stderr, "NOTE: sink locked, %u spool segments: %s\n", segs, strstr(st.line, "stats:"));
    it_broker_kill9(&t.b);
    ex_sqlite_unlock(t.q);
    long from = ex_log_size(&t.b);
    char line[512];
    it_broker_restart(&t.b);
    ck_assert(ex_log_wait(&t.b, from, "records from the spool to export", NULL, line, sizeof line,
                          IT_WAIT_MS));
    ck_assert_msg(strstr(line, " 400 records") != NULL, "%s", line);
    ex_pub_reconnect(&t.p);
    ex_msgs_wait(&t.p, bl_read, &t, 0, 101, true);
    ex_stats_expect_settled(&t.b, EX_RULE_MSGS, 400);
    /* Again without a crash: the running process reads its backlog back. */
    ex_sqlite_lock(t.q);
    ex_pub_run(&t.p, 50, 10);
    ex_stats_rule(&t.b, EX_RULE_MSGS, &st);
    ck_assert_msg(ex_stats_add_up(&st) && st.queued == 200 && stat_value(st.line, "spilled") == 192,
                  "want 200 queued, 192 of them spilled: %s", st.line);
    ex_sqlite_unlock(t.q);
    ex_msgs_wait(&t.p, bl_read, &t, 0, 151, true);
    ex_stats_expect_settled(&t.b, EX_RULE_MSGS, 600);
    bl_free(&t);
}
END_TEST

START_TEST(test_overflow_drop_oldest_survives_kill9)
{
    struct backlog t;
    bl_start(&t, "memory_queue: 5, spool_max: 50, overflow: drop_oldest", 1);
    bl_prime(&t);
    ex_sqlite_lock(t.q);
    ex_pub_run(&t.p, 200, 10);
    /* seq 1..5 in memory, 151..200 in the backlog, 6..150 dropped */
    bl_expect_stats(&t, 201, 1, 55, 145);
    it_broker_kill9(&t.b);
    ex_sqlite_unlock(t.q);
    it_broker_restart(&t.b);
    ex_pub_reconnect(&t.p);
    bl_expect_seqs(&t, 0, 6, 151, 201);
    ex_stats_expect_settled(&t.b, EX_RULE_MSGS, 55);
    bl_free(&t);
}
END_TEST

START_TEST(test_overflow_drop_newest)
{
    struct backlog t;
    bl_start(&t, "memory_queue: 5, spool_max: 50, overflow: drop_newest", 1);
    bl_prime(&t);
    ex_sqlite_lock(t.q);
    ex_pub_run(&t.p, 200, 10);
    bl_expect_stats(&t, 201, 1, 55, 145);
    ex_sqlite_unlock(t.q);
    bl_expect_seqs(&t, 0, 56, 0, 0);
    int64_t deadline = it_now_ms() + EX_SINK_MS;
    for (;;) {
        struct ex_rule_stats st;
        ex_stats_rule(&t.b, EX_RULE_MSGS, &st);
        if (st.queued == 0) {
            bl_expect_stats(&t, 201, 56, 0, 145);
            break;
        }
        ck_assert_msg(it_now_ms() < deadline, "still queued: %s", st.line);
        poll(NULL, 0, 100);
    }
    bl_free(&t);
}
END_TEST

static Suite *export_backlog_suite(void)
{
    Suite *s = suite_create("it_export_backlog");
    TCase *tc = tcase_create("backlog");
    tcase_set_timeout(tc, 120);
    if (it_mode_mosquitto()) {
        it_note_skip("it_export_backlog", "the rules engine is mqbridge behaviour");
    } else {
        tcase_add_test(tc, test_spill_refill_and_kill9);
        tcase_add_test(tc, test_overflow_drop_oldest_survives_kill9);
        tcase_add_test(tc, test_overflow_drop_newest);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(export_backlog_suite)
