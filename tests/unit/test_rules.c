/* rules_suite: rule files (rules/load.c, rules/yaml.c), rule sets and
 * their index (rules/rules.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/buf.h"
#include "../../rules/rules.h"
#include "../../rules/yaml.h"
#include "check_main.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- A fixed context ----------------------------------------------------
 * Declared: parent topics SensorData, Commands, Alerts; groups GID_sensors,
 * GID-app; connectors events-kafka (kafka), main-pg (postgres), cache
 * (redis). compile allocates an object per rule (released through the set,
 * so ASan finds a missed release) and fails on an option named `fail`. */

static char *const parent_topics[] = {"SensorData", "Commands", "Alerts"};
static char *const groups[] = {"GID_sensors", "GID-app"};

struct fake_connectors {
    int compiled, released;
};

static const char *fake_type(void *connectors, const char *name)
{
    static const char *const table[][2] = {
        {"events-kafka", "kafka"}, {"main-pg", "postgres"}, {"cache", "redis"}};
    for (size_t i = 0; i < ARRAY_LEN(table); i++)
        if (!strcmp(table[i][0], name))
            return table[i][1];
    return NULL;
}

static int fake_compile(void *connectors, const struct rule *r, void **compiled, char *err,
                        size_t errlen)
{
    struct fake_connectors *f = connectors;
    const struct kv *bad = kv_find(r->options, "fail");
    if (!bad)
        bad = kv_find(r->target_options, "fail");
    if (bad)
        return kv_error(err, errlen, NULL, bad, "rule '%s': %s: bad option 'fail'", r->name,
                        fake_type(NULL, r->connector));
    *compiled = malloc(16);
    ck_assert_ptr_nonnull(*compiled);
    f->compiled++;
    return 0;
}

static void fake_release(void *connectors, const struct rule *r, void *compiled)
{
    struct fake_connectors *f = connectors;
    free(compiled);
    f->released++;
}

enum { DECLARED = 0, MQTT = 1, NO_CONNECTORS = 2 };

static struct rules_context make_ctx(int mode, unsigned max_rules, struct fake_connectors *f)
{
    struct rules_context ctx = {
        .check_declared = mode != MQTT,
        .parent_topics = parent_topics,
        .parent_topic_count = ARRAY_LEN(parent_topics),
        .groups = groups,
        .group_count = ARRAY_LEN(groups),
        .max_rules = max_rules ? max_rules : 100,
        .connectors = f,
        .connector_type = mode == NO_CONNECTORS ? NULL : fake_type,
        .compile = fake_compile,
        .release = fake_release,
    };
    return ctx;
}

/* Read text as "r.yaml" (interned in files, which must outlive the set)
 * and build it. */
static int build_text(const char *text, const struct rules_context *ctx, struct rules_files *files,
                      struct rule_set **set, char *err, size_t errlen)
{
    struct kvlist items = {0};
    int rc = rules_text_read(text, strlen(text), "r.yaml", files, &items, err, errlen);
    *set = NULL;
    if (rc == 0)
        rc = rules_build(&items, ctx, set, err, errlen);
    kvlist_clear(&items);
    return rc;
}

/* ---- Rule files and sets as a table -------------------------------------
 * Rule k of a file made of the macros below starts on line 2 + 4k (5 lines
 * for OFF); its mapping and its name key are at column 5, the name's value
 * at 11, `source`/`target` at 5, their '{' at 13 and first key at 14. */
#define HEAD "rules:\n"
#define OUTB(n, t) \
    "  - name: " n "\n    type: outbound\n    source: {topic: " t "}\n" \
    "    target: {connector: events-kafka, topic: t}\n"
#define STAT(n, g) \
    "  - name: " n "\n    type: status\n    source: {group: " g "}\n" \
    "    target: {connector: main-pg, table: s}\n"
#define INB(n, t) \
    "  - name: " n "\n    type: inbound\n    source: {connector: events-kafka, topic: c}\n" \
    "    target: {topic: " t "}\n"
#define OFF(n, t) \
    "  - name: " n "\n    type: outbound\n    source: {topic: " t "}\n" \
    "    target: {connector: cache, key: k}\n    enabled: false\n"
#define S65 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcde"
#define S64 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd"

struct rules_case {
    const char *name;
    const char *yaml;
    int mode;
    unsigned max_rules; /* 0: 100 */
    int rc;
    const char *err; /* exact message, or the rule count (as text) when rc == 0 */
};

static const struct rules_case rules_cases[] = {
    /* Valid sets. */
    {"empty file", "", DECLARED, 0, 0, "0"},
    {"comments only", "# no rules yet\n", DECLARED, 0, 0, "0"},
    {"rules with no content", "rules:\n", DECLARED, 0, 0, "0"},
    {"empty rule list", "rules: []\n", DECLARED, 0, 0, "0"},
    {"one of each type", HEAD OUTB("a", "SensorData") STAT("s", "GID_sensors") INB("i", "Commands"),
     DECLARED, 0, 0, "3"},
    {"flow style",
     "rules: [{name: a, type: outbound, source: {topic: Alerts}, target: {connector: cache}}]\n",
     DECLARED, 0, 0, "1"},
    {"outbound and inbound share a parent topic", HEAD OUTB("a", "Commands") INB("b", "Commands"),
     DECLARED, 0, 0, "2"},
    {"disabled rule", HEAD OFF("a", "SensorData"), DECLARED, 0, 0, "1"},
    {"enabled yes and no",
     HEAD "  - {name: a, type: status, enabled: yes, source: {group: GID-app},"
          " target: {connector: cache}}\n"
          "  - {name: b, type: outbound, enabled: no, source: {topic: Alerts},"
          " target: {connector: cache}}\n",
     DECLARED, 0, 0, "2"},
    {"mqtt naming: any topic and group ID",
     HEAD OUTB("a", "anything_1") STAT("s", "GID-whatever") INB("i", "x"), MQTT, 0, 0, "3"},
    {"name with dots and dashes", HEAD OUTB("a.b-c_9", "SensorData"), DECLARED, 0, 0, "1"},
    {"name of exactly 64", HEAD OUTB(S64, "SensorData"), DECLARED, 0, 0, "1"},
    {"exactly max_rules", HEAD OUTB("a", "SensorData") OUTB("b", "Commands") OUTB("c", "Alerts"),
     DECLARED, 3, 0, "3"},
    {"options of any shape",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: SensorData}\n"
          "    target: {connector: main-pg, table: t, columns: {id: '${msgid}'}, batch: 10}\n",
     DECLARED, 0, 0, "1"},

    /* The file's own shape (rules_text_read). */
    {"syntax error", "rules: [\n", DECLARED, 0, -1,
     "r.yaml:2:1: did not find expected node content (while parsing a flow node at 2:1)"},
    {"bad indentation", "rules:\n  - name: a\n   type: x\n", DECLARED, 0, -1,
     "r.yaml:3:4: did not find expected '-' indicator (while parsing a block collection at 2:3)"},
    {"invalid UTF-8", "rules: []\n# caf\xe9\n", DECLARED, 0, -1,
     "r.yaml:2:6: incomplete UTF-8 octet sequence"},
    {"two documents", "rules: []\n---\nrules: []\n", DECLARED, 0, -1,
     "r.yaml:3:1: only one YAML document is allowed"},
    {"top level is a sequence", "- name: a\n", DECLARED, 0, -1,
     "r.yaml:1:1: expected a mapping with the key 'rules', got a sequence"},
    {"top level is a scalar", "hello\n", DECLARED, 0, -1,
     "r.yaml:1:1: expected a mapping with the key 'rules', got 'hello'"},
    {"top level tag", "!cfg {rules: []}\n", DECLARED, 0, -1, "r.yaml:1:1: unexpected tag '!cfg'"},
    {"unknown top-level key", "rules: []\nrule: []\n", DECLARED, 0, -1,
     "r.yaml:2:1: unknown key 'rule' (a rule file has only the key 'rules')"},
    {"connectors in a rule file", "connectors: {}\n", DECLARED, 0, -1,
     "r.yaml:1:1: unknown key 'connectors' (a rule file has only the key 'rules')"},
    {"top-level key is a sequence", "? [a]\n: 1\n", DECLARED, 0, -1,
     "r.yaml:1:3: expected a key name, got a sequence"},
    {"rules twice", "rules: []\nrules: []\n", DECLARED, 0, -1, "r.yaml:2:1: duplicate key 'rules'"},
    {"rules is a mapping", "rules: {name: a}\n", DECLARED, 0, -1,
     "r.yaml:1:8: rules: expected a sequence of mappings, got a mapping"},
    {"rules is a scalar", "rules: none\n", DECLARED, 0, -1,
     "r.yaml:1:8: rules: expected a sequence of mappings, got 'none'"},
    {"rule is a scalar", "rules: [a, b]\n", DECLARED, 0, -1,
     "r.yaml:1:9: rules[0]: expected a mapping, got 'a'"},
    {"rule is empty", "rules:\n  -\n", DECLARED, 0, -1,
     "r.yaml:2:4: rules[0]: expected a mapping, got nothing"},
    {"second rule is a sequence", HEAD OUTB("a", "SensorData") "  - [x]\n", DECLARED, 0, -1,
     "r.yaml:6:5: rules[1]: expected a mapping, got a sequence"},
    {"sequence in a target",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: SensorData}\n"
          "    target: {connector: events-kafka, brokers: [a, b]}\n",
     DECLARED, 0, -1,
     "r.yaml:5:48: rules[0].target.brokers: sequences are not supported here (write one value)"},
    {"null name", HEAD "  - name:\n    type: outbound\n", DECLARED, 0, -1,
     "r.yaml:2:10: rules[0].name: expected a value, got nothing"},
    {"tilde value", HEAD "  - name: ~\n", DECLARED, 0, -1,
     "r.yaml:2:11: rules[0].name: expected a value, got null"},
    {"tagged value", HEAD "  - name: a\n    enabled: !!bool true\n", DECLARED, 0, -1,
     "r.yaml:3:14: rules[0].enabled: unexpected tag '!!bool'"},
    {"duplicate key in a rule", HEAD "  - name: a\n    type: status\n    name: b\n", DECLARED, 0,
     -1, "r.yaml:4:5: rules[0]: duplicate key 'name'"},
    {"duplicate key in a target",
     HEAD "  - {name: a, target: {connector: cache, connector: main-pg}}\n", DECLARED, 0, -1,
     "r.yaml:2:42: rules[0].target: duplicate key 'connector'"},

    /* Keys of a rule. */
    {"missing name",
     HEAD "  - type: outbound\n    source: {topic: Alerts}\n"
          "    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:2:5: rule: missing required key 'name'"},
    {"unknown key with hint",
     HEAD "  - name: a\n    type: outbound\n    soruce: {topic: SensorData}\n", DECLARED, 0, -1,
     "r.yaml:4:5: rule 'a': unknown key 'soruce' (did you mean 'source'?)"},
    {"unknown key without hint", HEAD "  - name: a\n    priority: 1\n", DECLARED, 0, -1,
     "r.yaml:3:5: rule 'a': unknown key 'priority'"},
    {"missing type",
     HEAD "  - name: a\n    source: {topic: Alerts}\n    target: {connector: cache}\n", DECLARED, 0,
     -1, "r.yaml:2:5: rule 'a': missing required key 'type'"},
    {"missing target", HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n",
     DECLARED, 0, -1, "r.yaml:2:5: rule 'a': missing required key 'target'"},
    {"source is a scalar",
     HEAD
     "  - name: a\n    type: outbound\n    source: SensorData\n    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:4:5: rule 'a': key 'source': expected a mapping, got 'SensorData'"},
    {"name is a mapping", HEAD "  - name: {first: a}\n", DECLARED, 0, -1,
     "r.yaml:2:5: rule: key 'name': expected a value, got a mapping"},
    {"name with a space", HEAD OUTB("a b", "SensorData"), DECLARED, 0, -1,
     "r.yaml:2:5: rule 'a b': name: expected 1..64 characters of A-Z a-z 0-9 _ . -"},
    {"name of 70 characters", HEAD OUTB("a.b-c_" S64, "SensorData"), DECLARED, 0, -1,
     "r.yaml:2:5: rule 'a.b-c_abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefgh...': "
     "name: expected 1..64 characters of A-Z a-z 0-9 _ . -"},
    {"name of 65 characters", HEAD OUTB(S65, "SensorData"), DECLARED, 0, -1,
     "r.yaml:2:5: rule '" S64 "...': name: expected 1..64 characters of A-Z a-z 0-9 _ . -"},
    {"empty name", HEAD OUTB("''", "SensorData"), DECLARED, 0, -1,
     "r.yaml:2:5: rule '': name: expected 1..64 characters of A-Z a-z 0-9 _ . -"},
    {"name used twice", HEAD OUTB("a", "SensorData") OUTB("a", "Commands"), DECLARED, 0, -1,
     "r.yaml:6:5: rule name 'a' used twice (also at r.yaml:2:5)"},
    {"name used twice, different types", HEAD STAT("x", "GID_sensors") INB("x", "Alerts"), DECLARED,
     0, -1, "r.yaml:6:5: rule name 'x' used twice (also at r.yaml:2:5)"},
    {"unknown type",
     HEAD "  - name: a\n    type: outbond\n    source: {topic: SensorData}\n"
          "    target: {connector: cache}\n",
     DECLARED, 0, -1,
     "r.yaml:3:5: rule 'a': type: expected outbound, status or inbound, got 'outbond'"},
    {"type case matters",
     HEAD "  - {name: a, type: Outbound, source: {topic: Alerts}, target: {connector: cache}}\n",
     DECLARED, 0, -1,
     "r.yaml:2:15: rule 'a': type: expected outbound, status or inbound, got 'Outbound'"},
    {"bad enabled",
     HEAD "  - {name: a, type: outbound, enabled: maybe, source: {topic: Alerts},"
          " target: {connector: cache}}\n",
     DECLARED, 0, -1,
     "r.yaml:2:31: rule 'a': enabled: expected true, false, yes or no, got 'maybe'"},

    /* Outbound. */
    {"outbound source with a group",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: SensorData, group: GID_sensors}\n"
          "    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:4:33: rule 'a': source: unknown key 'group'"},
    {"outbound source misspelt",
     HEAD "  - name: a\n    type: outbound\n    source: {topik: SensorData}\n"
          "    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:4:14: rule 'a': source: unknown key 'topik' (did you mean 'topic'?)"},
    {"outbound source empty",
     HEAD "  - name: a\n    type: outbound\n    source: {}\n    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:4:13: rule 'a': source: missing required key 'topic'"},
    {"undeclared parent topic", HEAD OUTB("a", "Nope"), DECLARED, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: 'Nope' is not a declared parent topic"},
    {"parent topic case differs", HEAD OUTB("a", "sensordata"), DECLARED, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: 'sensordata' is not a declared parent topic (did you "
     "mean 'SensorData'?)"},
    {"subtopic instead of parent", HEAD OUTB("a", "SensorData/x"), DECLARED, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: 'SensorData/x' is not a declared parent topic"},
    {"mqtt naming: two levels", HEAD OUTB("a", "a/b"), MQTT, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: 'a/b' is not a parent topic (one level: 1..64 "
     "characters of A-Z a-z 0-9 _ -)"},
    {"mqtt naming: wildcard", HEAD OUTB("a", "'#'"), MQTT, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: '#' is not a parent topic (one level: 1..64 "
     "characters of A-Z a-z 0-9 _ -)"},
    {"mqtt naming: 65 characters", HEAD OUTB("a", S65), MQTT, 0, -1,
     "r.yaml:4:14: rule 'a': source.topic: '" S64 "...' is not a parent topic (one level: 1..64 "
     "characters of A-Z a-z 0-9 _ -)"},
    {"mqtt naming: 64 characters", HEAD OUTB("a", S64), MQTT, 0, 0, "1"},
    {"target without connector",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n    target: {topic: t}\n",
     DECLARED, 0, -1, "r.yaml:5:13: rule 'a': target: missing required key 'connector'"},
    {"connector is a mapping",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n"
          "    target: {connector: {name: cache}}\n",
     DECLARED, 0, -1,
     "r.yaml:5:14: rule 'a': target: key 'connector': expected a value, got a mapping"},
    {"undeclared connector",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n"
          "    target: {connector: kafka}\n",
     DECLARED, 0, -1,
     "r.yaml:5:14: rule 'a': target.connector: no connector named 'kafka' (declare it under "
     "connectors)"},
    {"no connector lookup in the context", HEAD OUTB("a", "SensorData"), NO_CONNECTORS, 0, -1,
     "r.yaml:5:14: rule 'a': target.connector: no connector named 'events-kafka' (declare it "
     "under connectors)"},

    /* Status. */
    {"status with a topic",
     HEAD "  - name: s\n    type: status\n    source: {topic: SensorData}\n"
          "    target: {connector: cache}\n",
     DECLARED, 0, -1, "r.yaml:4:14: rule 's': source: unknown key 'topic'"},
    {"undeclared group", HEAD STAT("s", "GID_other"), DECLARED, 0, -1,
     "r.yaml:4:14: rule 's': source.group: 'GID_other' is not a declared group ID"},
    {"mqtt naming: bad group prefix", HEAD STAT("s", "gid_sensors"), MQTT, 0, -1,
     "r.yaml:4:14: rule 's': source.group: 'gid_sensors' is not a group ID (GID_ or GID- and "
     "7..64 characters of A-Z a-z 0-9 _ -)"},
    {"mqtt naming: group too short", HEAD STAT("s", "GID_ab"), MQTT, 0, -1,
     "r.yaml:4:14: rule 's': source.group: 'GID_ab' is not a group ID (GID_ or GID- and 7..64 "
     "characters of A-Z a-z 0-9 _ -)"},
    {"mqtt naming: group of 7", HEAD STAT("s", "GID_abc"), MQTT, 0, 0, "1"},

    /* Inbound. */
    {"inbound without source connector",
     HEAD "  - name: i\n    type: inbound\n    source: {topic: c}\n    target: {topic: Commands}\n",
     DECLARED, 0, -1, "r.yaml:4:13: rule 'i': source: missing required key 'connector'"},
    {"inbound undeclared connector",
     HEAD "  - name: i\n    type: inbound\n    source: {connector: pg}\n"
          "    target: {topic: Commands}\n",
     DECLARED, 0, -1,
     "r.yaml:4:14: rule 'i': source.connector: no connector named 'pg' (declare it under "
     "connectors)"},
    {"inbound without target topic",
     HEAD "  - name: i\n    type: inbound\n    source: {connector: cache}\n    target: {qos: 1}\n",
     DECLARED, 0, -1, "r.yaml:5:13: rule 'i': target: missing required key 'topic'"},
    {"inbound target topic is a mapping",
     HEAD "  - name: i\n    type: inbound\n    source: {connector: cache}\n"
          "    target: {topic: {a: b}}\n",
     DECLARED, 0, -1,
     "r.yaml:5:14: rule 'i': target: key 'topic': expected a value, got a mapping"},
    {"inbound undeclared topic", HEAD INB("i", "Nope"), DECLARED, 0, -1,
     "r.yaml:5:14: rule 'i': target.topic: 'Nope' is not a declared parent topic"},

    /* Limits. */
    {"more than max_rules", HEAD OUTB("a", "SensorData") OUTB("b", "Commands") OUTB("c", "Alerts"),
     DECLARED, 2, -1, "r.yaml:10:5: rule 'c': more than 2 rules"},
    {"disabled rules count", HEAD OFF("a", "SensorData") OFF("b", "Commands") OUTB("c", "Alerts"),
     DECLARED, 2, -1, "r.yaml:12:5: rule 'c': more than 2 rules"},
    {"second outbound for a parent topic", HEAD OUTB("a", "SensorData") OUTB("b", "SensorData"),
     DECLARED, 0, -1,
     "r.yaml:6:5: rule 'b': a second outbound rule for parent topic 'SensorData' (rule 'a' at "
     "r.yaml:2:5 has it)"},
    {"conflict with a disabled rule", HEAD OFF("a", "Alerts") OUTB("b", "Alerts"), DECLARED, 0, -1,
     "r.yaml:7:5: rule 'b': a second outbound rule for parent topic 'Alerts' (rule 'a' at "
     "r.yaml:2:5 has it)"},
    {"second status for a group",
     HEAD STAT("s1", "GID_sensors") OUTB("o", "Alerts") STAT("s2", "GID_sensors"), DECLARED, 0, -1,
     "r.yaml:10:5: rule 's2': a second status rule for group 'GID_sensors' (rule 's1' at "
     "r.yaml:2:5 has it)"},
    {"second inbound for a parent topic", HEAD INB("i1", "Commands") INB("i2", "Commands"),
     DECLARED, 0, -1,
     "r.yaml:6:5: rule 'i2': a second inbound rule for parent topic 'Commands' (rule 'i1' at "
     "r.yaml:2:5 has it)"},
    {"mqtt naming: topics differ by case", HEAD OUTB("a", "x") OUTB("b", "X"), MQTT, 0, 0, "2"},

    /* Compiling. */
    {"compile error as is",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n"
          "    target: {connector: events-kafka, fail: 1}\n",
     DECLARED, 0, -1, "r.yaml:5:39: rule 'a': kafka: bad option 'fail'"},
    {"compile error after compiled rules",
     HEAD OUTB("a", "SensorData")
         STAT("s", "GID_sensors") "  - name: i\n    type: inbound\n    source: {connector: cache}\n"
                                  "    target: {topic: Commands, fail: x}\n",
     DECLARED, 0, -1, "r.yaml:13:31: rule 'i': redis: bad option 'fail'"},
    {"validation before compiling",
     HEAD "  - name: a\n    type: outbound\n    source: {topic: Alerts}\n"
          "    target: {connector: events-kafka, fail: 1}\n" OUTB("b", "Nope"),
     DECLARED, 0, -1, "r.yaml:8:14: rule 'b': source.topic: 'Nope' is not a declared parent topic"},
};

START_TEST(test_rules_table)
{
    const struct rules_case *c = &rules_cases[_i];
    struct fake_connectors f = {0};
    struct rules_context ctx = make_ctx(c->mode, c->max_rules, &f);
    struct rule_set *set = (struct rule_set *)&set;
    struct rules_files files = {0};
    char err[512] = "";
    int rc = build_text(c->yaml, &ctx, &files, &set, err, sizeof err);
    ck_assert_msg(rc == c->rc, "%s: rc %d (%s)", c->name, rc, err);
    if (rc < 0) {
        ck_assert_ptr_null(set);
        ck_assert_msg(!strcmp(err, c->err), "%s: got\n '%s'\n want\n '%s'", c->name, err, c->err);
        ck_assert_int_eq(f.compiled, f.released); /* nothing half-built is kept */
        rules_files_clear(&files);
        return;
    }
    ck_assert_uint_eq(rules_count(set), (unsigned)atoi(c->err));
    for (unsigned i = 0; i < rules_count(set); i++)
        ck_assert_ptr_nonnull(rules_at(set, i)->name);
    ck_assert_int_eq(f.compiled, (int)rules_count(set));
    rules_set_free(set);
    rules_files_clear(&files);
    ck_assert_int_eq(f.released, f.compiled);
}
END_TEST

/* ---- What a built rule holds ------------------------------------------- */

static const char set_text[] =
    HEAD OUTB("a", "SensorData") STAT("s", "GID_sensors") INB("i", "Commands")
        OFF("off", "Alerts") "  - name: st-off\n    type: status\n    enabled: false\n"
                             "    source: {group: GID-app}\n    target: {connector: cache}\n";

START_TEST(test_rule_fields)
{
    struct fake_connectors f = {0};
    struct rules_context ctx = make_ctx(DECLARED, 0, &f);
    struct rule_set *set;
    struct rules_files files = {0};
    char err[256];
    ck_assert_int_eq(build_text(set_text, &ctx, &files, &set, err, sizeof err), 0);
    ck_assert_uint_eq(rules_count(set), 5);
    const struct rule *a = rules_at(set, 0), *s = rules_at(set, 1), *i = rules_at(set, 2);
    const struct rule *off = rules_at(set, 3);
    ck_assert_ptr_null(rules_at(set, 5));

    ck_assert_str_eq(a->name, "a");
    ck_assert_int_eq(a->type, RULE_OUTBOUND);
    ck_assert(a->enabled);
    ck_assert_str_eq(a->file, "r.yaml");
    ck_assert_int_eq(a->line, 2);
    ck_assert_int_eq(a->col, 5);
    ck_assert_str_eq(a->resource, "SensorData");
    ck_assert_str_eq(a->connector, "events-kafka");
    ck_assert_uint_eq(a->options->count, 1);
    ck_assert_str_eq(kv_str(a->options, "topic", ""), "t");
    ck_assert_ptr_null(kv_find(a->options, "connector"));
    ck_assert_int_eq(a->options->line, 5); /* the target's position */
    ck_assert_int_eq(a->options->col, 13);
    ck_assert_uint_eq(a->target_options->count, 0);
    ck_assert_int_eq(a->target_options->line, 5);
    ck_assert_ptr_nonnull(a->compiled);
    ck_assert_uint_eq(a->index, 0);

    ck_assert_int_eq(s->type, RULE_STATUS);
    ck_assert_str_eq(s->resource, "GID_sensors");
    ck_assert_str_eq(s->connector, "main-pg");
    ck_assert_str_eq(kv_str(s->options, "table", ""), "s");

    ck_assert_int_eq(i->type, RULE_INBOUND);
    ck_assert_str_eq(i->resource, "Commands");
    ck_assert_str_eq(i->connector, "events-kafka");
    ck_assert_str_eq(kv_str(i->options, "topic", ""), "c");
    ck_assert_ptr_null(kv_find(i->options, "connector"));
    ck_assert_int_eq(i->options->line, 12);
    ck_assert_uint_eq(i->target_options->count, 0);
    ck_assert_int_eq(i->target_options->line, 13);
    ck_assert_uint_eq(i->index, 2);

    ck_assert(!off->enabled);
    ck_assert_ptr_nonnull(off->compiled); /* disabled rules are compiled too */
    ck_assert_int_eq(f.compiled, 5);
    rules_set_free(set);
    rules_files_clear(&files);
    ck_assert_int_eq(f.released, 5);
    rules_set_free(NULL);
    ck_assert_uint_eq(rules_count(NULL), 0);
    ck_assert_ptr_null(rules_at(NULL, 0));
}
END_TEST

START_TEST(test_type_names)
{
    ck_assert_str_eq(rule_type_name(RULE_OUTBOUND), "outbound");
    ck_assert_str_eq(rule_type_name(RULE_STATUS), "status");
    ck_assert_str_eq(rule_type_name(RULE_INBOUND), "inbound");
    ck_assert_str_eq(rule_type_name((enum rule_type)7), "unknown");
}
END_TEST

/* ---- The index ---------------------------------------------------------- */

struct lookup_case {
    const char *key;
    size_t len;       /* 0: strlen */
    const char *want; /* rule name or NULL */
};

static const struct lookup_case outbound_cases[] = {
    {"SensorData", 0, "a"},       {"SensorData/room1/t", 0, "a"},
    {"SensorData/", 0, "a"},      {"SensorData/p2p/GID_x@@@d", 0, "a"},
    {"SensorDataX", 10, "a"},                              /* only len bytes count */
    {"SensorData/x", 5, NULL},                             /* "Senso" */
    {"sensordata/x", 0, NULL},                             /* exact case */
    {"SensorDat", 0, NULL},       {"Commands/x", 0, NULL}, /* inbound only */
    {"Alerts/x", 0, NULL},                                 /* disabled */
    {"/SensorData", 0, NULL},     {"", 0, NULL},
    {"GID_sensors", 0, NULL}, /* a group, not a topic */
    {S65 "/x", 0, NULL},      /* level too long */
    {"Sensor\0Data/x", 13, NULL},
};

static const struct lookup_case status_cases[] = {
    {"GID_sensors", 0, "s"}, {"GID_sensors@@@d", 11, "s"},
    {"GID_sensor", 0, NULL}, {"GID_sensorsX", 0, NULL},
    {"GID-app", 0, NULL}, /* disabled */
    {"SensorData", 0, NULL}, {"", 0, NULL},
    {S65, 0, NULL},
};

static struct rule_set *index_set;
static struct rules_files index_files;
static struct fake_connectors index_fake;

static void index_setup(void)
{
    struct rules_context ctx = make_ctx(DECLARED, 0, &index_fake);
    char err[256];
    ck_assert_int_eq(build_text(set_text, &ctx, &index_files, &index_set, err, sizeof err), 0);
}

static void index_teardown(void)
{
    rules_set_free(index_set);
    index_set = NULL;
    rules_files_clear(&index_files);
}

static void assert_lookup(const struct lookup_case *c, const struct rule *r)
{
    if (!c->want)
        ck_assert_msg(r == NULL, "'%s': got rule '%s'", c->key, r ? r->name : "");
    else
        ck_assert_msg(r && !strcmp(r->name, c->want), "'%s': want '%s'", c->key, c->want);
}

START_TEST(test_outbound_for)
{
    const struct lookup_case *c = &outbound_cases[_i];
    assert_lookup(c, rules_outbound_for(index_set, c->key, c->len ? c->len : strlen(c->key)));
}
END_TEST

START_TEST(test_status_for)
{
    const struct lookup_case *c = &status_cases[_i];
    assert_lookup(c, rules_status_for(index_set, c->key, c->len ? c->len : strlen(c->key)));
}
END_TEST

START_TEST(test_lookup_null_set)
{
    ck_assert_ptr_null(rules_outbound_for(NULL, "SensorData", 10));
    ck_assert_ptr_null(rules_status_for(NULL, "GID_sensors", 11));
    ck_assert_ptr_null(rules_outbound_for(index_set, NULL, 3));
    ck_assert_ptr_null(rules_status_for(index_set, NULL, 3));
}
END_TEST

/* An empty set: built from nothing, looks nothing up. */
START_TEST(test_empty_set)
{
    struct fake_connectors f = {0};
    struct rules_context ctx = make_ctx(DECLARED, 0, &f);
    struct rule_set *set;
    char err[64];
    struct kvlist none = {0};
    ck_assert_int_eq(rules_build(&none, &ctx, &set, err, sizeof err), 0);
    ck_assert_uint_eq(rules_count(set), 0);
    ck_assert_ptr_null(rules_outbound_for(set, "SensorData", 10));
    rules_set_free(set);
    ck_assert_int_eq(rules_build(NULL, &ctx, &set, err, sizeof err), 0);
    rules_set_free(set);
    ctx.compile = NULL; /* no compile: nothing stored */
    struct rules_files files = {0};
    ck_assert_int_eq(build_text(set_text, &ctx, &files, &set, err, sizeof err), 0);
    ck_assert_ptr_null(rules_at(set, 0)->compiled);
    rules_set_free(set);
    rules_files_clear(&files);
    ck_assert_int_eq(f.compiled, 0);
    ck_assert_int_eq(rules_build(&none, NULL, &set, err, sizeof err), -1);
    ck_assert_str_eq(err, "no rules context");
}
END_TEST

/* 100 rules (the default limit) of mixed types build; the 101st fails. */
START_TEST(test_hundred_rules)
{
    struct fake_connectors f = {0};
    struct rules_context ctx = make_ctx(MQTT, 0, &f);
    struct buf text = {0};
    struct rules_files files = {0};
    struct rule_set *set;
    char line[256], err[256], *first;
    size_t cut = 0;
    ck_assert_int_eq(buf_append(&text, "rules:\n", 7), 0);
    for (int i = 0; i < 101; i++) {
        char topic[32], group[32];
        snprintf(topic, sizeof topic, "{topic: T%d}", i);
        snprintf(group, sizeof group, "{group: GID_grp%d}", i);
        const char *type = i % 3 == 0 ? "outbound" : i % 3 == 1 ? "status" : "inbound";
        const char *source = i % 3 == 0 ? topic : i % 3 == 1 ? group : "{connector: cache}";
        const char *target = i % 3 == 2 ? topic : "{connector: cache}";
        int n = snprintf(line, sizeof line, "  - {name: r%d, type: %s, source: %s, target: %s}\n",
                         i, type, source, target);
        if (i == 100)
            cut = text.len;
        ck_assert_int_eq(buf_append(&text, line, (size_t)n), 0);
    }
    ck_assert_int_eq(buf_append_u8(&text, 0), 0);
    ck_assert_ptr_nonnull(first = strndup((const char *)text.data, cut)); /* 100 rules */
    ck_assert_msg(build_text(first, &ctx, &files, &set, err, sizeof err) == 0, "%s", err);
    free(first);
    ck_assert_uint_eq(rules_count(set), 100);
    ck_assert_str_eq(rules_outbound_for(set, "T99/x", 5)->name, "r99");
    ck_assert_str_eq(rules_status_for(set, "GID_grp97", 9)->name, "r97");
    rules_set_free(set);
    ck_assert_int_eq(build_text((const char *)text.data, &ctx, &files, &set, err, sizeof err), -1);
    ck_assert_str_eq(err, "r.yaml:102:5: rule 'r100': more than 100 rules");
    buf_free(&text);
    rules_files_clear(&files);
    ck_assert_int_eq(f.compiled, 100);
    ck_assert_int_eq(f.released, 100);
}
END_TEST

/* ---- Files -------------------------------------------------------------- */

static char *write_temp(const char *text, size_t len)
{
    char *path = strdup("/tmp/mqb_rules_XXXXXX");
    ck_assert_ptr_nonnull(path);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq((int)write(fd, text, len), (int)len);
    close(fd);
    return path;
}

/* Two files in one set: the conflict names both files; positions keep the
 * interned names. */
START_TEST(test_two_files)
{
    struct fake_connectors f = {0};
    struct rules_context ctx = make_ctx(DECLARED, 0, &f);
    const char *t1 = HEAD OUTB("a", "SensorData"),
               *t2 = HEAD STAT("s", "GID_sensors") OUTB("b", "SensorData");
    char *p1 = write_temp(t1, strlen(t1)), *p2 = write_temp(t2, strlen(t2));
    struct rules_files files = {0};
    struct kvlist items = {0};
    struct rule_set *set = NULL;
    char err[512], want[512];
    ck_assert_int_eq(rules_file_read(p1, &files, &items, err, sizeof err), 0);
    ck_assert_int_eq(rules_file_read(p2, &files, &items, err, sizeof err), 0);
    ck_assert_uint_eq(items.count, 3);
    ck_assert_uint_eq(files.count, 2);
    ck_assert_ptr_eq(items.items[0]->file, files.names[0]);
    ck_assert_ptr_eq(items.items[2]->file, files.names[1]);
    ck_assert_int_eq(rules_build(&items, &ctx, &set, err, sizeof err), -1);
    snprintf(want, sizeof want,
             "%s:6:5: rule 'b': a second outbound rule for parent topic 'SensorData' (rule 'a' at "
             "%s:2:5 has it)",
             p2, p1);
    ck_assert_str_eq(err, want);
    /* Reading a file again reuses its interned name. */
    ck_assert_int_eq(rules_file_read(p1, &files, &items, err, sizeof err), 0);
    ck_assert_uint_eq(files.count, 2);
    ck_assert_ptr_eq(items.items[3]->file, files.names[0]);
    kvlist_clear(&items);
    rules_files_clear(&files);
    rules_files_clear(&files);
    unlink(p1);
    unlink(p2);
    free(p1);
    free(p2);
}
END_TEST

START_TEST(test_file_errors)
{
    struct rules_files files = {0};
    struct kvlist items = {0};
    char err[512], want[512];
    ck_assert_int_eq(rules_file_read("/nonexistent/r.yaml", &files, &items, err, sizeof err), -1);
    ck_assert_str_eq(err, "cannot read /nonexistent/r.yaml: No such file or directory");
    ck_assert_int_eq(rules_file_read("/tmp", &files, &items, err, sizeof err), -1);
    ck_assert_str_eq(err, "cannot read /tmp: Is a directory");

    /* 1 MiB of comments is fine, one byte more is not. */
    size_t big = 1 << 20;
    char *text = malloc(big + 1);
    ck_assert_ptr_nonnull(text);
    memset(text, '#', big + 1);
    for (size_t i = 79; i < big; i += 80)
        text[i] = '\n';
    char *ok = write_temp(text, big), *large = write_temp(text, big + 1);
    ck_assert_int_eq(rules_file_read(ok, &files, &items, err, sizeof err), 0);
    ck_assert_uint_eq(items.count, 0);
    ck_assert_int_eq(rules_file_read(large, &files, &items, err, sizeof err), -1);
    snprintf(want, sizeof want, "cannot read %s: larger than 1048576 bytes", large);
    ck_assert_str_eq(err, want);
    ck_assert_uint_eq(files.count, 1); /* only the file that was read */
    unlink(ok);
    unlink(large);
    free(ok);
    free(large);
    free(text);
    rules_files_clear(&files);
}
END_TEST

/* A failed read leaves the list and the interned names as they were. */
START_TEST(test_failed_read_keeps_list)
{
    struct rules_files files = {0};
    struct kvlist items = {0};
    char err[256];
    const char *good = HEAD OUTB("a", "SensorData");
    const char *bad = HEAD OUTB("b", "SensorData") OUTB("c", "Alerts") "  - 5\n";
    ck_assert_int_eq(rules_text_read(good, strlen(good), "a.yaml", &files, &items, err, sizeof err),
                     0);
    ck_assert_int_eq(rules_text_read(bad, strlen(bad), "b.yaml", &files, &items, err, sizeof err),
                     -1);
    ck_assert_str_eq(err, "b.yaml:10:5: rules[2]: expected a mapping, got '5'");
    ck_assert_uint_eq(items.count, 1);
    ck_assert_uint_eq(files.count, 1);
    const char *twice = HEAD OUTB("b", "SensorData") "rules: []\n";
    ck_assert_int_eq(
        rules_text_read(twice, strlen(twice), "c.yaml", &files, &items, err, sizeof err), -1);
    ck_assert_str_eq(err, "c.yaml:6:1: duplicate key 'rules'");
    ck_assert_uint_eq(items.count, 1);
    ck_assert_str_eq(kv_str(items.items[0], "name", ""), "a");
    ck_assert_uint_eq(files.count, 1);
    ck_assert_int_eq(rules_text_read(NULL, 0, NULL, &files, &items, NULL, 0), 0);
    ck_assert_uint_eq(files.count, 2); /* "<string>" */
    kvlist_clear(&items);
    rules_files_clear(&files);
}
END_TEST

/* ---- YAML to settings trees --------------------------------------------- */

/* "key@line:col=value" or "key@line:col{@line:col ...}" for a map. */
static void dump_map(const struct kvmap *m, struct buf *out)
{
    char pos[64];
    for (unsigned i = 0; i < m->count; i++) {
        const struct kv *it = &m->items[i];
        int n = snprintf(pos, sizeof pos, "%s%s@%d:%d", i ? " " : "", it->key, it->line, it->col);
        ck_assert_int_eq(buf_append(out, pos, (size_t)n), 0);
        if (it->value) {
            ck_assert_int_eq(buf_append_u8(out, '='), 0);
            ck_assert_int_eq(buf_append(out, it->value, strlen(it->value)), 0);
        } else {
            n = snprintf(pos, sizeof pos, "{@%d:%d ", it->map->line, it->map->col);
            ck_assert_int_eq(buf_append(out, pos, (size_t)n), 0);
            dump_map(it->map, out);
            ck_assert_int_eq(buf_append_u8(out, '}'), 0);
        }
    }
}

struct yaml_case {
    const char *name;
    const char *yaml;
    int rc;
    const char *want; /* dump, or the exact error */
};

#define NEST16 "{a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: 1}}}}}}}}}}}}}}}}"
#define A16 "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a"

static const struct yaml_case yaml_cases[] = {
    {"scalars and a map", "a: 1\nb: {c: two, d: 'x y'}\n", 0,
     "a@1:1=1 b@2:1{@2:4 c@2:5=two d@2:13=x y}"},
    {"block nesting", "a:\n  b:\n    c: 1\n", 0, "a@1:1{@2:3 b@2:3{@3:5 c@3:5=1}}"},
    {"typed-looking scalars stay text", "a: true\nb: 010\nc: '5'\nd: 1.5e3\n", 0,
     "a@1:1=true b@2:1=010 c@3:1=5 d@4:1=1.5e3"},
    {"empty quoted string", "a: ''\nb: \"\"\n", 0, "a@1:1= b@2:1="},
    {"folded text", "a: >\n  one\n  two\n", 0, "a@1:1=one two\n"},
    {"str tag accepted", "a: !!str 5\n", 0, "a@1:1=5"},
    {"map tag accepted", "a: !!map {b: 1}\n", 0, "a@1:1{@1:4 b@1:11=1}"},
    {"scalar alias", "a: &v hello\nb: *v\n", 0, "a@1:1=hello b@2:1=hello"},
    {"mapping alias", "a: &m {x: 1}\nb: *m\n", 0, "a@1:1{@1:4 x@1:8=1} b@2:1{@1:4 x@1:8=1}"},
    {"empty mapping", "a: {}\n", 0, "a@1:1{@1:4 }"},
    {"16 levels", "a: " NEST16 "\n", 0, NULL},
    {"17 levels", "a: {a: " NEST16 "}\n", -1,
     "y.yaml:1:68: a." A16 ": nested deeper than 16 mappings"},
    {"alias cycle", "a: &x {b: *x}\n", -1,
     "y.yaml:1:4: a.b.b.b.b.b.b.b.b.b.b.b.b.b.b.b.b: nested deeper than 16 mappings"},
    {"root is a sequence", "- a\n", -1, "y.yaml:1:1: expected a mapping, got a sequence"},
    {"root is a scalar", "text\n", -1, "y.yaml:1:1: expected a mapping, got 'text'"},
    {"root is null", "~\n", -1, "y.yaml:1:1: expected a mapping, got null"},
    {"sequence value", "a: {b: [1]}\n", -1,
     "y.yaml:1:8: a.b: sequences are not supported here (write one value)"},
    {"block sequence value", "a:\n  - 1\n", -1,
     "y.yaml:2:3: a: sequences are not supported here (write one value)"},
    {"empty value", "a:\nb: 1\n", -1, "y.yaml:1:3: a: expected a value, got nothing"},
    {"null value", "a: null\n", -1, "y.yaml:1:4: a: expected a value, got null"},
    {"Null value", "a: Null\n", -1, "y.yaml:1:4: a: expected a value, got null"},
    {"quoted null is text", "a: 'null'\n", 0, "a@1:1=null"},
    {"int tag", "a: !!int 5\n", -1, "y.yaml:1:4: a: unexpected tag '!!int'"},
    {"local tag", "a: {b: !secret x}\n", -1, "y.yaml:1:8: a.b: unexpected tag '!secret'"},
    {"tagged key", "!k a: 1\n", -1, "y.yaml:1:1: unexpected tag '!k'"},
    {"duplicate key", "a: 1\nb: 2\na: 3\n", -1, "y.yaml:3:1: duplicate key 'a'"},
    {"duplicate nested key", "a: {b: 1, b: 2}\n", -1, "y.yaml:1:11: a: duplicate key 'b'"},
    {"sequence key", "? [a]\n: 1\n", -1, "y.yaml:1:3: expected a key name, got a sequence"},
    {"null key", "~: 1\n", -1, "y.yaml:1:1: expected a key name, got null"},
    {"empty key", "'': 1\n", -1, "y.yaml:1:1: expected a key name, got ''"},
    {"NUL in a value", "a: \"x\\0y\"\n", -1, "y.yaml:1:4: a: the value holds a NUL byte"},
    {"NUL in a key", "\"k\\0\": 1\n", -1, "y.yaml:1:1: key 'k?' holds a NUL byte"},
    {"long key path cut in messages",
     "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij: {b: ~}\n", -1,
     "y.yaml:1:57: abcdefghijabcdefghijabcdefghijabcdefghij....b: expected a value, got null"},
};

START_TEST(test_yaml_table)
{
    const struct yaml_case *c = &yaml_cases[_i];
    yaml_document_t doc;
    struct kvmap *m = (struct kvmap *)&m;
    char err[256] = "";
    ck_assert_int_eq(yaml_load_document(c->yaml, strlen(c->yaml), "y.yaml", &doc, err, sizeof err),
                     0);
    int rc = yaml_to_kvmap(&doc, yaml_document_get_root_node(&doc), "y.yaml", &m, err, sizeof err);
    ck_assert_msg(rc == c->rc, "%s: rc %d (%s)", c->name, rc, err);
    if (rc < 0) {
        ck_assert_ptr_null(m);
        ck_assert_msg(!strcmp(err, c->want), "%s: got\n '%s'\n want\n '%s'", c->name, err, c->want);
    } else if (c->want) {
        struct buf out = {0};
        dump_map(m, &out);
        ck_assert_int_eq(buf_append_u8(&out, 0), 0);
        ck_assert_msg(!strcmp((char *)out.data, c->want), "%s: got\n '%s'\n want\n '%s'", c->name,
                      (char *)out.data, c->want);
        buf_free(&out);
    }
    kvmap_free(m == (struct kvmap *)&m ? NULL : m);
    yaml_document_delete(&doc);
}
END_TEST

/* Aliases cannot blow a small file up: the conversion stops at
 * YAML_KV_MAX_ITEMS keys. */
START_TEST(test_yaml_alias_bomb)
{
    const char *text = "a: &a {k0: x, k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x}\n"
                       "b: &b {k0: *a, k1: *a, k2: *a, k3: *a, k4: *a, k5: *a, k6: *a, k7: *a}\n"
                       "c: &c {k0: *b, k1: *b, k2: *b, k3: *b, k4: *b, k5: *b, k6: *b, k7: *b}\n"
                       "d: &d {k0: *c, k1: *c, k2: *c, k3: *c, k4: *c, k5: *c, k6: *c, k7: *c}\n"
                       "e: &e {k0: *d, k1: *d, k2: *d, k3: *d, k4: *d, k5: *d, k6: *d, k7: *d}\n"
                       "f: &f {k0: *e, k1: *e, k2: *e, k3: *e, k4: *e, k5: *e, k6: *e, k7: *e}\n"
                       "g: &g {k0: *f, k1: *f, k2: *f, k3: *f, k4: *f, k5: *f, k6: *f, k7: *f}\n";
    yaml_document_t doc;
    struct kvmap *m;
    char err[256];
    ck_assert_int_eq(yaml_load_document(text, strlen(text), "y.yaml", &doc, err, sizeof err), 0);
    ck_assert_int_eq(
        yaml_to_kvmap(&doc, yaml_document_get_root_node(&doc), "y.yaml", &m, err, sizeof err), -1);
    ck_assert_msg(strstr(err, ": more than 100000 keys in one document"), "%s", err);
    ck_assert_ptr_null(m);
    yaml_document_delete(&doc);
}
END_TEST

START_TEST(test_yaml_load_errors)
{
    static const struct {
        const char *text;
        const char *err;
    } rows[] = {
        {"a: [1\n",
         "y.yaml:2:1: did not find expected ',' or ']' (while parsing a flow sequence at "
         "1:4)"},
        {"a: 'x\n", "y.yaml:2:1: found unexpected end of stream (while scanning a quoted scalar "
                    "at 1:4)"},
        {"a: *nope\n", "y.yaml:1:4: found undefined alias"},
        {"\tb: 1\n", "y.yaml:1:1: found character that cannot start any token (while scanning "
                     "for the next token at 1:1)"},
        {"a: 1\n\xc3\n", "y.yaml:2:2: invalid trailing UTF-8 octet"},
        {"a: 1\n...\n---\nb: 2\n", "y.yaml:4:1: only one YAML document is allowed"},
        {"a: 1\n---\n[b\n", "y.yaml:4:1: did not find expected ',' or ']' (while parsing a flow "
                            "sequence at 3:1)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        yaml_document_t doc;
        char err[256] = "";
        ck_assert_int_eq(
            yaml_load_document(rows[i].text, strlen(rows[i].text), "y.yaml", &doc, err, sizeof err),
            -1);
        ck_assert_msg(!strcmp(err, rows[i].err), "row %zu: got '%s'", i, err);
    }
    yaml_document_t doc;
    ck_assert_int_eq(yaml_load_document(NULL, 0, NULL, &doc, NULL, 0), 0);
    ck_assert_ptr_null(yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    ck_assert_int_eq(yaml_load_document("---\n...\n", 8, NULL, &doc, NULL, 0), 0);
    yaml_document_delete(&doc);
}
END_TEST

/* yaml_to_kvlist on its own: labels and an untouched list on error. */
START_TEST(test_yaml_kvlist)
{
    const char *text = "list: [{a: 1}, {b: 2}, {c: [x]}]\nnull:\nmap: {a: 1}\n";
    yaml_document_t doc;
    struct kvlist l = {0};
    char err[256];
    ck_assert_int_eq(yaml_load_document(text, strlen(text), "y.yaml", &doc, err, sizeof err), 0);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t *list = yaml_document_get_node(&doc, root->data.mapping.pairs.start[0].value);
    yaml_node_t *nul = yaml_document_get_node(&doc, root->data.mapping.pairs.start[1].value);
    yaml_node_t *map = yaml_document_get_node(&doc, root->data.mapping.pairs.start[2].value);
    ck_assert_int_eq(yaml_to_kvlist(&doc, nul, "y.yaml", "items", &l, err, sizeof err), 0);
    ck_assert_int_eq(yaml_to_kvlist(&doc, NULL, "y.yaml", "items", &l, err, sizeof err), 0);
    ck_assert_uint_eq(l.count, 0);
    ck_assert_int_eq(yaml_to_kvlist(&doc, list, "y.yaml", "items", &l, err, sizeof err), -1);
    ck_assert_str_eq(err, "y.yaml:1:28: items[2].c: sequences are not supported here (write one "
                          "value)");
    ck_assert_uint_eq(l.count, 0);
    ck_assert_int_eq(yaml_to_kvlist(&doc, map, "y.yaml", "items", &l, err, sizeof err), -1);
    ck_assert_str_eq(err, "y.yaml:3:6: items: expected a sequence of mappings, got a mapping");
    yaml_document_delete(&doc);
    kvlist_clear(&l);
}
END_TEST

static Suite *rules_suite(void)
{
    Suite *s = suite_create("rules");
    TCase *tc = tcase_create("build");
    tcase_add_loop_test(tc, test_rules_table, 0, (int)ARRAY_LEN(rules_cases));
    tcase_add_test(tc, test_rule_fields);
    tcase_add_test(tc, test_type_names);
    tcase_add_test(tc, test_empty_set);
    tcase_add_test(tc, test_hundred_rules);
    suite_add_tcase(s, tc);

    tc = tcase_create("index");
    tcase_add_checked_fixture(tc, index_setup, index_teardown);
    tcase_add_loop_test(tc, test_outbound_for, 0, (int)ARRAY_LEN(outbound_cases));
    tcase_add_loop_test(tc, test_status_for, 0, (int)ARRAY_LEN(status_cases));
    tcase_add_test(tc, test_lookup_null_set);
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_test(tc, test_two_files);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_failed_read_keeps_list);
    suite_add_tcase(s, tc);

    tc = tcase_create("yaml");
    tcase_add_loop_test(tc, test_yaml_table, 0, (int)ARRAY_LEN(yaml_cases));
    tcase_add_test(tc, test_yaml_alias_bomb);
    tcase_add_test(tc, test_yaml_load_errors);
    tcase_add_test(tc, test_yaml_kvlist);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(rules_suite)
