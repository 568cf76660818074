/* Rule configuration, through the real binary:
 *   - `mqbridge -c FILE --check-config` refuses each kind of bad rule with
 *     exit 1 and one "file:line:col: ..." message naming the rule: an
 *     unknown key, an unknown connector, an undeclared parent topic or
 *     group, a template with an unknown field, more than 100 rules, a second
 *     outbound rule for a parent topic and a second status rule for a group
 *     (both rules named, each with its position), and accepts a good set;
 *   - SIGHUP reload of the rule files on a running broker: an invalid file
 *     is refused and the running rules keep exporting; a valid changed file
 *     takes over; records queued across the reload (SQLite sink held
 *     locked) are exported once, under the rule they were matched with.
 * Rule files are listed in `rule_files`; the SQLite connector needs no
 * server. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../unit/check_main.h"
#include "harness_export.h"

#define CLI_MS 10000
#define MANAGED "{ naming: managed, parent_topics: [SensorData, Commands], groups: [GID_sensors] }"

/* ---- --check-config ---- */

struct rule_case {
    const char *name;
    const char *instance;            /* the instance mapping; NULL: MANAGED */
    const char *inline_rules;        /* a `rules:` section of the instance file, or NULL */
    const char *a, *b;               /* rule files a.yaml, b.yaml; NULL: not listed */
    void (*make_b)(struct buf *out); /* writes b.yaml instead of b */
    /* stderr is exactly "<dir>/<file>:<line>:<col>: <message>\n", a
     * conflict's message ending in "(rule '<other>' at <dir>/<other_file>:
     * L:C has it)" with the position of the other rule's mapping. */
    const char *file;
    int line, col;
    const char *message;
    const char *other, *other_file;
};

/* 101 outbound rules, each on its own parent topic: r101 is one too many. */
static void make_101_rules(struct buf *out)
{
    buf_append(out, "rules:\n", 7);
    for (int i = 1; i <= 101; i++) {
        char line[160];
        int n = snprintf(line, sizeof line,
                         "  - { name: r%d, type: outbound, source: { topic: T%d },"
                         " target: { connector: sink, table: t%d } }\n",
                         i, i, i);
        buf_append(out, line, (size_t)n);
    }
}

static const struct rule_case rule_cases[] = {
    {"unknown key in a rule", NULL, NULL, NULL,
     "rules:\n"
     "  - name: r1\n"
     "    type: outbound\n"
     "    source: { topic: SensorData }\n"
     "    target: { connector: sink, table: t1 }\n"
     "    topik: SensorData\n",
     NULL, "b.yaml", 6, 5, "rule 'r1': unknown key 'topik'", NULL, NULL},
    {"unknown connector", NULL, NULL, NULL,
     "rules:\n"
     "  - name: r1\n"
     "    type: outbound\n"
     "    source: { topic: SensorData }\n"
     "    target:\n"
     "      connector: nope\n"
     "      table: t1\n",
     NULL, "b.yaml", 6, 7,
     "rule 'r1': target.connector: no connector named 'nope' (declare it under connectors)", NULL,
     NULL},
    {"undeclared parent topic", NULL, NULL, NULL,
     "rules:\n"
     "  - name: r1\n"
     "    type: outbound\n"
     "    source:\n"
     "      topic: Unknown\n"
     "    target: { connector: sink, table: t1 }\n",
     NULL, "b.yaml", 5, 7, "rule 'r1': source.topic: 'Unknown' is not a declared parent topic",
     NULL, NULL},
    {"undeclared group", NULL, NULL, NULL,
     "rules:\n"
     "  - name: r1\n"
     "    type: status\n"
     "    source:\n"
     "      group: GID_nope\n"
     "    target: { connector: sink, table: s1 }\n",
     NULL, "b.yaml", 5, 7, "rule 'r1': source.group: 'GID_nope' is not a declared group ID", NULL,
     NULL},
    {"template with an unknown field", NULL, NULL, NULL,
     "rules:\n"
     "  - name: r1\n"
     "    type: outbound\n"
     "    source: { topic: SensorData }\n"
     "    target:\n"
     "      connector: cache\n"
     "      mode: stream\n"
     "      key: \"dev-${clientId}\"\n",
     NULL, "b.yaml", 8, 7,
     "rule 'r1': key 'key': unknown field 'clientId' (fields: clientid, group, device, topic, "
     "qos, msgid, timestamp, payload, payload.<key>...)",
     NULL, NULL},
    {"more than 100 rules", "{ naming: mqtt }", NULL, NULL, NULL, make_101_rules, "b.yaml", 102, 5,
     "rule 'r101': more than 100 rules", NULL, NULL},
    {"two outbound rules for one parent topic", NULL, NULL,
     "rules:\n"
     "  - name: a\n"
     "    type: outbound\n"
     "    source: { topic: SensorData }\n"
     "    target: { connector: sink, table: ta }\n",
     "rules:\n"
     "  - name: b\n"
     "    type: outbound\n"
     "    source: { topic: SensorData }\n"
     "    target: { connector: sink, table: tb }\n",
     NULL, "b.yaml", 2, 5, "rule 'b': a second outbound rule for parent topic 'SensorData'", "a",
     "a.yaml"},
    {"two status rules for one group (inline and file)", NULL,
     "rules:\n"
     "  - name: a\n"
     "    type: status\n"
     "    source: { group: GID_sensors }\n"
     "    target: { connector: sink, table: sa }\n",
     NULL,
     "rules:\n"
     "  - name: b\n"
     "    type: status\n"
     "    source: { group: GID_sensors }\n"
     "    target: { connector: sink, table: sb }\n",
     NULL, "b.yaml", 2, 5, "rule 'b': a second status rule for group 'GID_sensors'", "a",
     "mqbridge.yaml"},
};

/* "<dir>/<file>:L:C" of the mapping of rule `name` ("  - name: <name>")
 * in a file's text. */
static void rule_position(const char *dir, const char *file, const char *text, const char *name,
                          char *out, size_t len)
{
    char needle[64];
    snprintf(needle, sizeof needle, "- name: %s\n", name);
    const char *at = strstr(text, needle);
    ck_assert_msg(at != NULL, "rule '%s' not in %s", name, file);
    int line = 1;
    const char *bol = text;
    for (const char *p = text; p < at; p++)
        if (*p == '\n') {
            line++;
            bol = p + 1;
        }
    snprintf(out, len, "%s/%s:%d:%d", dir, file, line, (int)(at - bol) + 3);
}

/* The instance file of a case (connectors sink: sqlite, cache: redis;
 * --check-config connects to nothing), its rule files and inline rules;
 * text_of_main gets the instance file's text. */
static void write_case_files(const struct rule_case *rc, const char *dir, struct buf *text_of_main)
{
    char path[128];
    struct buf b = {0};
    if (rc->make_b) {
        rc->make_b(&b);
        buf_append(&b, "", 1);
    }
    const char *btext = rc->make_b ? (const char *)b.data : rc->b;
    char inst[4096];
    int n = snprintf(inst, sizeof inst,
                     "instance: %s\n"
                     "listeners:\n"
                     "  - { host: 127.0.0.1, port: 1883 }\n"
                     "storage: { path: %s/store, sync: normal }\n"
                     "log: { level: info }\n"
                     "connectors:\n"
                     "  sink: { type: sqlite, path: \"%s/sink.db\" }\n"
                     "  cache: { type: redis, url: \"redis://127.0.0.1:6379/0\" }\n",
                     rc->instance ? rc->instance : MANAGED, dir, dir);
    if (rc->a || btext) {
        n += snprintf(inst + n, sizeof inst - (size_t)n, "rule_files: [");
        if (rc->a)
            n += snprintf(inst + n, sizeof inst - (size_t)n, "\"%s/a.yaml\"%s", dir,
                          btext ? ", " : "");
        if (btext)
            n += snprintf(inst + n, sizeof inst - (size_t)n, "\"%s/b.yaml\"", dir);
        n += snprintf(inst + n, sizeof inst - (size_t)n, "]\n");
    }
    if (rc->inline_rules)
        n += snprintf(inst + n, sizeof inst - (size_t)n, "%s", rc->inline_rules);
    ck_assert((size_t)n < sizeof inst);
    snprintf(path, sizeof path, "%s/mqbridge.yaml", dir);
    it_write_file(path, inst);
    buf_append(text_of_main, inst, (size_t)n + 1);
    if (rc->a) {
        snprintf(path, sizeof path, "%s/a.yaml", dir);
        it_write_file(path, rc->a);
    }
    if (btext) {
        snprintf(path, sizeof path, "%s/b.yaml", dir);
        it_write_file(path, btext);
    }
    buf_free(&b);
}

/* Run --check-config on dir/mqbridge.yaml: the exit status; stderr and
 * stdout stay in p. */
static int check_config(const char *dir, struct it_proc *p)
{
    char path[128];
    snprintf(path, sizeof path, "%s/mqbridge.yaml", dir);
    char *argv[] = {(char *)it_mqbridge_path(), "-c", path, "--check-config", NULL};
    return it_run(p, argv, CLI_MS);
}

START_TEST(test_bad_rule)
{
    const struct rule_case *rc = &rule_cases[_i];
    char dir[64], want[512];
    struct buf main_text = {0};
    struct it_proc p;
    it_tmpdir_make(dir, sizeof dir);
    write_case_files(rc, dir, &main_text);
    int st = check_config(dir, &p);
    const char *err = p.err.data ? (const char *)p.err.data : "";
    ck_assert_msg(st == 1, "%s: --check-config exit %d, want 1; stderr: %s", rc->name, st, err);
    char other[256] = "";
    if (rc->other) {
        char pos[192];
        const char *text = !strcmp(rc->other_file, "a.yaml") ? rc->a : (char *)main_text.data;
        rule_position(dir, rc->other_file, text, rc->other, pos, sizeof pos);
        snprintf(other, sizeof other, " (rule '%s' at %s has it)", rc->other, pos);
    }
    snprintf(want, sizeof want, "%s/%s:%d:%d: %s%s\n", dir, rc->file, rc->line, rc->col,
             rc->message, other);
    ck_assert_msg(!strcmp(err, want), "%s:\n got: %s want: %s", rc->name, err, want);
    it_proc_cleanup(&p);
    buf_free(&main_text);
    it_tmpdir_remove(dir);
}
END_TEST

/* The same files made right pass: the cases fail for their reason. */
START_TEST(test_good_rules)
{
    static const struct rule_case good = {
        "good",
        NULL,
        "rules:\n"
        "  - name: presence\n"
        "    type: status\n"
        "    source: { group: GID_sensors }\n"
        "    target: { connector: sink, table: st, events_table: ev }\n",
        "rules:\n"
        "  - name: telemetry\n"
        "    type: outbound\n"
        "    source: { topic: SensorData }\n"
        "    target: { connector: sink, table: t1 }\n",
        "rules:\n"
        "  - name: commands-to-redis\n"
        "    type: outbound\n"
        "    source: { topic: Commands }\n"
        "    target: { connector: cache, mode: stream, key: \"cmd:${clientid}\" }\n",
        NULL,
        NULL,
        0,
        0,
        NULL,
        NULL,
        NULL};
    char dir[64];
    struct buf main_text = {0};
    struct it_proc p;
    it_tmpdir_make(dir, sizeof dir);
    write_case_files(&good, dir, &main_text);
    int st = check_config(dir, &p);
    const char *out = p.out.data ? (const char *)p.out.data : "";
    ck_assert_msg(st == 0, "a good rule set: exit %d; stderr: %s", st,
                  p.err.data ? (char *)p.err.data : "");
    ck_assert_msg(strstr(out, "configuration is valid"), "stdout: %s", out);
    it_proc_cleanup(&p);
    buf_free(&main_text);
    it_tmpdir_remove(dir);
}
END_TEST

/* ---- SIGHUP reload ---- */

struct table_reader {
    struct ex_sqlite *q;
    const char *table;
};

static const struct ex_msgs *read_table(void *ctx)
{
    struct table_reader *t = ctx;
    return ex_sqlite_msgs(t->q, t->table);
}

/* Replace the rule file at once (rename), as an editor or a deployment
 * would, so the broker never reads half a file. */
static void rules_replace(const char *path, const char *rule_extra, const char *table)
{
    char tmp[160], text[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(text, sizeof text,
             "rules:\n"
             "  - name: " EX_RULE_MSGS "\n"
             "    type: outbound\n"
             "    source: { topic: " EX_PARENT " }\n"
             "    target: { connector: " EX_CONNECTOR ", table: %s }\n"
             "%s",
             table, rule_extra);
    it_write_file(tmp, text);
    ck_assert(rename(tmp, path) == 0);
}

/* SIGHUP, then the log line that answers it. */
static void sighup_expect(const struct it_broker *b, const char *want, char *line, size_t len)
{
    long from = ex_log_size(b);
    ck_assert(kill(b->pid, SIGHUP) == 0);
    ck_assert_msg(ex_log_wait(b, from, want, NULL, line, len, IT_WAIT_MS),
                  "no '%s' in the log after SIGHUP", want);
}

START_TEST(test_sighup_reload)
{
    char dir[64], db[128], rules[128], t1[64], t2[64], extra[1024], line[1024], pos[192];
    it_tmpdir_make(dir, sizeof dir);
    snprintf(db, sizeof db, "%s/sink.db", dir);
    snprintf(rules, sizeof rules, "%s/rules.yaml", dir);
    ex_unique_name(t1, sizeof t1, "before");
    ex_unique_name(t2, sizeof t2, "after");
    rules_replace(rules, "", t1);
    snprintf(extra, sizeof extra,
             "connectors:\n"
             "  " EX_CONNECTOR ": { type: sqlite, path: \"%s\", busy_timeout_ms: 100 }\n"
             "rule_files: [\"%s\"]\n" EX_EXPORT_YAML,
             db, rules);
    struct it_broker b;
    struct ex_pub p;
    struct ex_sqlite *q = ex_sqlite_new(db);
    struct table_reader before = {q, t1}, after = {q, t2};
    ex_broker_start(&b, extra);
    ex_pub_open(&p, &b, 4);
    ex_pub_run(&p, 50, 10);
    ex_msgs_wait(&p, read_table, &before, 0, 50, true);

    /* an invalid file is refused; the running rule goes on exporting */
    rules_replace(rules, "    topik: x\n", t2);
    sighup_expect(&b, "SIGHUP: rules not reloaded, the running rules stay", line, sizeof line);
    snprintf(pos, sizeof pos, "%s:6:5: ", rules);
    ck_assert_msg(strstr(line, pos) && strstr(line, "unknown key 'topik'"),
                  "the refusal does not say '%s...unknown key 'topik'': %s", pos, line);
    ex_pub_run(&p, 50, 10);
    ex_msgs_wait(&p, read_table, &before, 0, 100, true);

    /* records queued when a valid change comes keep their rule */
    ex_sqlite_lock(q);
    ex_pub_run(&p, 50, 10); /* seq [100, 150): matched by the old rule, held */
    rules_replace(rules, "", t2);
    sighup_expect(&b, "SIGHUP: rules reloaded", line, sizeof line);
    ex_pub_run(&p, 50, 10); /* seq [150, 200): the new rule */
    ex_sqlite_unlock(q);
    ex_msgs_wait(&p, read_table, &before, 0, 150, true);
    ex_msgs_wait(&p, read_table, &after, 150, 200, true);
    /* and nothing moved meanwhile: each message in its table, once */
    ck_assert_int_eq(ex_msgs_check(&p, read_table(&before), 0, 150, true, NULL), 1);
    ck_assert_int_eq(ex_msgs_check(&p, read_table(&after), 150, 200, true, NULL), 1);
    ex_stats_expect_settled(&b, EX_RULE_MSGS, 800);
    ex_pub_close(&p);
    ex_sqlite_free(q);
    it_broker_cleanup(&b);
    it_tmpdir_remove(dir);
}
END_TEST

static Suite *rules_config_suite(void)
{
    Suite *s = suite_create("it_rules_config");
    TCase *tc = tcase_create("rules_config");
    tcase_set_timeout(tc, 60);
    if (it_mode_mosquitto()) {
        it_note_skip("it_rules_config", "rules are mqbridge behaviour");
    } else {
        tcase_add_loop_test(tc, test_bad_rule, 0, sizeof rule_cases / sizeof rule_cases[0]);
        tcase_add_test(tc, test_good_rules);
        tcase_add_test(tc, test_sighup_reload);
    }
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(rules_config_suite)
