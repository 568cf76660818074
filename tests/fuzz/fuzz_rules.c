/* libFuzzer target: rule files and templates.
 *
 * The input is read as a rule file (rules_text_read) and, when it reads,
 * built twice: against declared resources with a limit of 8 rules, and in
 * `naming: mqtt` mode with the default limit. The fake connectors compile
 * every scalar option of a rule as a template, as real connectors do, and
 * release them through the set. A built set must satisfy its invariants
 * (count within the limit, every enabled rule found by the index under its
 * resource, no disabled one); every failure must name the file. Then the
 * input's text up to its first NUL is compiled as a template and rendered
 * against the input itself as payload and against a fixed JSON payload.
 * Any broken invariant aborts; ASan reports leaks and bad accesses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/buf.h"
#include "../../rules/rules.h"
#include "../../rules/template.h"

#define FUZZ_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *const parent_topics[] = {"SensorData", "Commands", "Alerts"};
static char *const groups[] = {"GID_sensors", "GID-app"};

static const char *fuzz_type(void *connectors, const char *name)
{
    return !strcmp(name, "kafka") || !strcmp(name, "pg") ? name : NULL;
}

/* The templates of one rule: one per scalar option. */
struct compiled {
    struct template **t;
    unsigned n;
};

static void fuzz_release(void *connectors, const struct rule *r, void *p)
{
    struct compiled *c = p;
    for (unsigned i = 0; i < c->n; i++)
        template_free(c->t[i]);
    free(c->t);
    free(c);
}

static int fuzz_compile_map(const struct rule *r, const struct kvmap *m, struct compiled *c,
                            char *err, size_t errlen)
{
    for (unsigned i = 0; i < m->count; i++) {
        if (!m->items[i].value)
            continue; /* nested settings: not templates here */
        if (template_compile_kv(&m->items[i], r->name, &c->t[c->n], err, errlen) < 0)
            return -1;
        c->n++;
    }
    return 0;
}

static int fuzz_compile(void *connectors, const struct rule *r, void **out, char *err,
                        size_t errlen)
{
    struct compiled *c = calloc(1, sizeof *c);
    FUZZ_CHECK(c);
    c->t = calloc(r->options->count + r->target_options->count + 1, sizeof *c->t);
    FUZZ_CHECK(c->t);
    if (fuzz_compile_map(r, r->options, c, err, errlen) < 0 ||
        fuzz_compile_map(r, r->target_options, c, err, errlen) < 0) {
        fuzz_release(connectors, r, c);
        return -1;
    }
    *out = c;
    return 0;
}

static void check_set(const struct rule_set *set, unsigned max_rules)
{
    FUZZ_CHECK(rules_count(set) <= max_rules);
    for (unsigned i = 0; i < rules_count(set); i++) {
        const struct rule *r = rules_at(set, i);
        const size_t len = strlen(r->resource);
        FUZZ_CHECK(r->index == i && r->name && r->options && r->target_options && r->compiled);
        FUZZ_CHECK(r->file && !strcmp(r->file, "fuzz.yaml") && r->line >= 1 && r->col >= 1);
        const struct rule *found =
            r->type == RULE_OUTBOUND ? rules_outbound_for(set, r->resource, len)
            : r->type == RULE_STATUS ? rules_status_for(set, r->resource, len)
                                     : r;
        FUZZ_CHECK(r->enabled ? found == r : found == NULL);
    }
}

static void fuzz_build(const struct kvlist *items, bool declared, unsigned max_rules)
{
    struct rules_context ctx = {
        .check_declared = declared,
        .parent_topics = parent_topics,
        .parent_topic_count = 3,
        .groups = groups,
        .group_count = 2,
        .max_rules = max_rules,
        .connector_type = fuzz_type,
        .compile = fuzz_compile,
        .release = fuzz_release,
    };
    struct rule_set *set = NULL;
    char err[512];
    if (rules_build(items, &ctx, &set, err, sizeof err) == 0)
        check_set(set, max_rules);
    else
        FUZZ_CHECK(!set && !strncmp(err, "fuzz.yaml:", 10));
    rules_set_free(set);
}

static void fuzz_template(const uint8_t *data, size_t size)
{
    static const char json[] = "{\"a\": {\"b\": [1, 2.5, \"x\"], \"c\": \"d\"}, \"n\": -3e7}";
    char *text = strndup((const char *)data, size), err[256];
    struct template *t = NULL;
    struct buf out = {0};
    FUZZ_CHECK(text);
    if (template_compile(text, &t, err, sizeof err) == 0) {
        struct template_input in = {
            .client_id = "GID_x@@@dev",
            .topic = "SensorData/a",
            .qos = 2,
            .msg_id = 42,
            .time_ms = 1700000000000,
            .payload = data,
            .payload_len = (uint32_t)size,
        };
        FUZZ_CHECK(template_render(t, &in, &out) == 0);
        in.payload = (const uint8_t *)json;
        in.payload_len = sizeof json - 1;
        FUZZ_CHECK(template_render(t, &in, &out) == 0);
        FUZZ_CHECK(!template_is_literal(t) || !template_uses_json(t));
    } else {
        FUZZ_CHECK(!t && err[0]);
    }
    template_free(t);
    buf_free(&out);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rules_files files = {0};
    struct kvlist items = {0};
    char err[512];
    if (rules_text_read((const char *)data, size, "fuzz.yaml", &files, &items, err, sizeof err) ==
        0) {
        fuzz_build(&items, true, 8);
        fuzz_build(&items, false, 100);
    } else {
        FUZZ_CHECK(items.count == 0 && files.count == 0 && !strncmp(err, "fuzz.yaml", 9));
    }
    kvlist_clear(&items);
    rules_files_clear(&files);
    fuzz_template(data, size);
    return 0;
}
