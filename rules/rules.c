/* Building a rule set from rule mappings, and its lookup index.
 *
 * Rule (SEMANTICS.md "Rules"): a set holds at most ctx->max_rules rules
 * and at most one rule of each type per resource: one outbound and one
 * inbound rule per parent topic, one status rule per group ID. Disabled
 * rules are configured rules: they count toward every limit, but the index
 * (rules_outbound_for, rules_status_for) never returns them. A set that
 * breaks any rule is refused as a whole; the first error is reported with
 * its position, e.g.
 *   r.yaml:9:5: rule 'b': a second outbound rule for parent topic 'SensorData'
 *       (rule 'a' at r.yaml:3:5 has it)
 *   r.yaml:10:7: rule name 'a' used twice (also at r.yaml:3:7)
 *   r.yaml:4:7: rule 'a': unknown key 'soruce' (did you mean 'source'?)
 * Order of checks: each rule in turn (limit on the count, keys, name, type,
 * enabled, source and target, then its conflicts with the rules before
 * it); once every rule is valid, each is compiled by its connector. */
#include "rules.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/hmap.h"

#define RULE_NAME_MAX 64
#define RESOURCE_MAX 64 /* parent topics and group IDs */
#define NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

struct rule_set {
    struct rule *rules;
    unsigned count;
    /* resource -> struct rule *, for every rule (enabled or not) */
    struct hmap outbound, inbound, status;
    /* from the context, to release compiled objects */
    void *connectors;
    void (*release)(void *connectors, const struct rule *r, void *compiled);
};

static const struct kv_key rule_keys[] = {
    {"name", KV_SCALAR, KV_REQUIRED, "1..64 characters of A-Z a-z 0-9 _ . -, unique"},
    {"type", KV_SCALAR, KV_REQUIRED, "outbound, status or inbound"},
    {"enabled", KV_SCALAR, 0, "true (default) or false"},
    {"source", KV_MAP, KV_REQUIRED, "where the data comes from"},
    {"target", KV_MAP, KV_REQUIRED, "where the data goes"},
    {NULL, 0, 0, NULL},
};

static const struct kv_key topic_source_keys[] = {
    {"topic", KV_SCALAR, KV_REQUIRED, "a parent topic"},
    {NULL, 0, 0, NULL},
};

static const struct kv_key group_source_keys[] = {
    {"group", KV_SCALAR, KV_REQUIRED, "a group ID"},
    {NULL, 0, 0, NULL},
};

static const char *const type_names[] = {"outbound", "status", "inbound"};

const char *rule_type_name(enum rule_type t)
{
    return (unsigned)t < sizeof type_names / sizeof type_names[0] ? type_names[t] : "unknown";
}

/* ---- Building one rule ------------------------------------------------- */

/* What is being built: the context, and for messages the rule's label
 * ("rule 'x'", or "rule" before a name is known). */
struct build {
    const struct rules_context *ctx;
    const struct kvlist *items;
    struct rule_set *set;
    struct hmap names; /* rule name -> struct rule * */
    char label[96];
    char *err;
    size_t errlen;
};

/* Text for a message: at most 64 bytes, control bytes as '?'. buf holds
 * 68 bytes or more. */
static const char *rules_quote(const char *s, char *buf)
{
    size_t len = strlen(s), i, limit = RULE_NAME_MAX;
    while (len > limit && limit > 0 && ((unsigned char)s[limit] & 0xc0) == 0x80)
        limit--;
    for (i = 0; i < len && i < limit; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (len > limit) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static bool rules_valid_name(const char *s, size_t max, const char *chars)
{
    size_t len = strlen(s);
    return len >= 1 && len <= max && strspn(s, chars) == len;
}

static bool rules_valid_group(const char *s)
{
    size_t len = strlen(s);
    return len >= 7 && len <= RESOURCE_MAX && strspn(s, NAME_CHARS) == len &&
           (!strncmp(s, "GID_", 4) || !strncmp(s, "GID-", 4));
}

static int rule_copy(struct build *b, char **dst, const char *s)
{
    if (!(*dst = strdup(s)))
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    return 0;
}

static int rule_name(struct build *b, const struct kvmap *m, struct rule *r)
{
    const struct kv *item = kv_find(m, "name");
    if (!rules_valid_name(item->value, RULE_NAME_MAX, NAME_CHARS "."))
        return kv_error(b->err, b->errlen, m, item,
                        "%s: name: expected 1..64 characters of A-Z a-z 0-9 _ . -", b->label);
    const struct rule *other = hmap_get(&b->names, item->value);
    if (other) {
        const struct kv *first = kv_find(b->items->items[other->index], "name");
        return kv_error(b->err, b->errlen, m, item, "rule name '%s' used twice (also at %s:%d:%d)",
                        item->value, first->file, first->line, first->col);
    }
    if (rule_copy(b, &r->name, item->value) < 0)
        return -1;
    if (hmap_put(&b->names, r->name, r) < 0)
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    return 0;
}

static int rule_type_enabled(struct build *b, const struct kvmap *m, struct rule *r)
{
    const struct kv *type = kv_find(m, "type"), *enabled = kv_find(m, "enabled");
    char q[72];
    unsigned t;
    for (t = 0; t < sizeof type_names / sizeof type_names[0]; t++)
        if (!strcmp(type->value, type_names[t]))
            break;
    if (t == sizeof type_names / sizeof type_names[0])
        return kv_error(b->err, b->errlen, m, type,
                        "%s: type: expected outbound, status or inbound, got '%s'", b->label,
                        rules_quote(type->value, q));
    r->type = (enum rule_type)t;
    r->enabled = true;
    if (enabled && kv_bool(enabled, &r->enabled) < 0)
        return kv_error(b->err, b->errlen, m, enabled,
                        "%s: enabled: expected true, false, yes or no, got '%s'", b->label,
                        rules_quote(enabled->value, q));
    return 0;
}

/* A parent topic in item (the value of map.key): declared (exact case)
 * when the context checks declarations, else one level of
 * [A-Za-z0-9_-], 1..64 characters. */
static int rule_parent_topic(struct build *b, const char *map, const struct kv *item, char **out)
{
    const struct rules_context *ctx = b->ctx;
    const char *t = item->value;
    char q[72], hint[96] = "";
    if (!ctx->check_declared) {
        if (!rules_valid_name(t, RESOURCE_MAX, NAME_CHARS))
            return kv_error(b->err, b->errlen, NULL, item,
                            "%s: %s.%s: '%s' is not a parent topic (one level: 1..64 characters "
                            "of A-Z a-z 0-9 _ -)",
                            b->label, map, item->key, rules_quote(t, q));
        return rule_copy(b, out, t);
    }
    for (unsigned i = 0; i < ctx->parent_topic_count; i++) {
        if (!strcmp(ctx->parent_topics[i], t))
            return rule_copy(b, out, t);
        if (!strcasecmp(ctx->parent_topics[i], t))
            snprintf(hint, sizeof hint, " (did you mean '%s'?)",
                     rules_quote(ctx->parent_topics[i], q));
    }
    return kv_error(b->err, b->errlen, NULL, item,
                    "%s: %s.%s: '%s' is not a declared parent topic%s", b->label, map, item->key,
                    rules_quote(t, q), hint);
}

/* A group ID in item: declared (exact case) or, without declarations,
 * GID_ or GID- then [A-Za-z0-9_-], 7..64 characters in all. */
static int rule_group(struct build *b, const struct kv *item, char **out)
{
    const struct rules_context *ctx = b->ctx;
    const char *g = item->value;
    char q[72];
    if (!ctx->check_declared) {
        if (!rules_valid_group(g))
            return kv_error(b->err, b->errlen, NULL, item,
                            "%s: source.group: '%s' is not a group ID (GID_ or GID- and 7..64 "
                            "characters of A-Z a-z 0-9 _ -)",
                            b->label, rules_quote(g, q));
        return rule_copy(b, out, g);
    }
    for (unsigned i = 0; i < ctx->group_count; i++)
        if (!strcmp(ctx->groups[i], g))
            return rule_copy(b, out, g);
    return kv_error(b->err, b->errlen, NULL, item,
                    "%s: source.group: '%s' is not a declared group ID", b->label,
                    rules_quote(g, q));
}

/* The scalar item key of m (source or target), required. */
static const struct kv *rule_need(struct build *b, const struct kvmap *m, const char *map,
                                  const char *key)
{
    const struct kv *item = kv_find(m, key);
    if (!item)
        kv_error(b->err, b->errlen, m, NULL, "%s: %s: missing required key '%s'", b->label, map,
                 key);
    else if (!item->value)
        kv_error(b->err, b->errlen, m, item, "%s: %s: key '%s': expected a value, got a mapping",
                 b->label, map, key);
    return item && item->value ? item : NULL;
}

/* m's `connector` names a declared connector; the rest of m becomes
 * r->options. */
static int rule_connector(struct build *b, const struct kvmap *m, const char *map, struct rule *r)
{
    const struct rules_context *ctx = b->ctx;
    const struct kv *item = rule_need(b, m, map, "connector");
    char q[72];
    if (!item)
        return -1;
    if (!ctx->connector_type || !ctx->connector_type(ctx->connectors, item->value))
        return kv_error(b->err, b->errlen, m, item,
                        "%s: %s.connector: no connector named '%s' (declare it under connectors)",
                        b->label, map, rules_quote(item->value, q));
    if (rule_copy(b, &r->connector, item->value) < 0)
        return -1;
    if (!(r->options = kvmap_dup_without(m, "connector")))
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    return 0;
}

/* outbound: source {topic}; status: source {group}; target {connector, ...}. */
static int rule_export_ends(struct build *b, const struct kvmap *source, const struct kvmap *target,
                            struct rule *r)
{
    char where[128];
    bool outbound = r->type == RULE_OUTBOUND;
    snprintf(where, sizeof where, "%s: source", b->label);
    if (kv_check(source, outbound ? topic_source_keys : group_source_keys, where, b->err,
                 b->errlen) < 0)
        return -1;
    int rc = outbound ? rule_parent_topic(b, "source", kv_find(source, "topic"), &r->resource)
                      : rule_group(b, kv_find(source, "group"), &r->resource);
    if (rc < 0 || rule_connector(b, target, "target", r) < 0)
        return -1;
    /* No target options: an empty map at the target's position. */
    if (!(r->target_options = calloc(1, sizeof *r->target_options)))
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    r->target_options->file = target->file;
    r->target_options->line = target->line;
    r->target_options->col = target->col;
    return 0;
}

/* inbound: source {connector, ...}; target {topic, ...}. */
static int rule_import_ends(struct build *b, const struct kvmap *source, const struct kvmap *target,
                            struct rule *r)
{
    const struct kv *topic;
    if (rule_connector(b, source, "source", r) < 0 ||
        !(topic = rule_need(b, target, "target", "topic")) ||
        rule_parent_topic(b, "target", topic, &r->resource) < 0)
        return -1;
    if (!(r->target_options = kvmap_dup_without(target, "topic")))
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    return 0;
}

/* ---- Limits across rules ------------------------------------------------ */

/* One rule of each type per resource; disabled rules included. */
static int rule_check_conflict(struct build *b, struct rule *r)
{
    static const char *const what[] = {"parent topic", "group", "parent topic"};
    struct hmap *index = r->type == RULE_OUTBOUND ? &b->set->outbound
                         : r->type == RULE_STATUS ? &b->set->status
                                                  : &b->set->inbound;
    const struct rule *other = hmap_get(index, r->resource);
    if (other)
        return kv_error(b->err, b->errlen, b->items->items[r->index], NULL,
                        "%s: a second %s rule for %s '%s' (rule '%s' at %s:%d:%d has it)", b->label,
                        rule_type_name(r->type), what[r->type], r->resource, other->name,
                        other->file, other->line, other->col);
    if (hmap_put(index, r->resource, r) < 0)
        return kv_error(b->err, b->errlen, NULL, NULL, "out of memory");
    return 0;
}

/* Rule i from its mapping m, checked against the rules before it. */
static int rule_build_one(struct build *b, const struct kvmap *m, unsigned i, struct rule *r)
{
    const struct kv *name = kv_find(m, "name");
    char q[72];
    r->index = i;
    r->file = m->file;
    r->line = m->line;
    r->col = m->col;
    if (name && name->value)
        snprintf(b->label, sizeof b->label, "rule '%s'", rules_quote(name->value, q));
    else
        snprintf(b->label, sizeof b->label, "rule");
    if (i >= b->ctx->max_rules)
        return kv_error(b->err, b->errlen, m, NULL, "%s: more than %u rules", b->label,
                        b->ctx->max_rules);
    if (kv_check(m, rule_keys, b->label, b->err, b->errlen) < 0 || rule_name(b, m, r) < 0 ||
        rule_type_enabled(b, m, r) < 0)
        return -1;
    const struct kvmap *source = kv_find(m, "source")->map, *target = kv_find(m, "target")->map;
    int rc = r->type == RULE_INBOUND ? rule_import_ends(b, source, target, r)
                                     : rule_export_ends(b, source, target, r);
    return rc < 0 ? -1 : rule_check_conflict(b, r);
}

/* ---- The set ------------------------------------------------------------ */

static int rules_compile_all(struct build *b)
{
    const struct rules_context *ctx = b->ctx;
    for (unsigned i = 0; ctx->compile && i < b->set->count; i++) {
        void *compiled = NULL;
        if (ctx->compile(ctx->connectors, &b->set->rules[i], &compiled, b->err, b->errlen) < 0)
            return -1;
        b->set->rules[i].compiled = compiled;
    }
    return 0;
}

int rules_build(const struct kvlist *items, const struct rules_context *ctx, struct rule_set **out,
                char *err, size_t errlen)
{
    static const struct kvlist none = {NULL, 0};
    char scratch[1];
    struct build b = {.ctx = ctx, .items = items ? items : &none, .err = err, .errlen = errlen};
    *out = NULL;
    if (!ctx)
        return kv_error(err, errlen, NULL, NULL, "no rules context");
    if (!err || !errlen) {
        b.err = scratch;
        b.errlen = sizeof scratch;
    }
    b.err[0] = '\0';
    if (!(b.set = calloc(1, sizeof *b.set)) ||
        (b.items->count && !(b.set->rules = calloc(b.items->count, sizeof *b.set->rules)))) {
        kv_error(b.err, b.errlen, NULL, NULL, "out of memory");
        goto fail;
    }
    b.set->connectors = ctx->connectors;
    b.set->release = ctx->release;
    for (unsigned i = 0; i < b.items->count; i++) {
        b.set->count = i + 1; /* the set frees what rule i holds so far */
        if (rule_build_one(&b, b.items->items[i], i, &b.set->rules[i]) < 0)
            goto fail;
    }
    if (rules_compile_all(&b) < 0)
        goto fail;
    hmap_free(&b.names);
    *out = b.set;
    return 0;
fail:
    hmap_free(&b.names);
    rules_set_free(b.set);
    return -1;
}

void rules_set_free(struct rule_set *set)
{
    if (!set)
        return;
    for (unsigned i = 0; i < set->count; i++) {
        struct rule *r = &set->rules[i];
        if (r->compiled && set->release)
            set->release(set->connectors, r, r->compiled);
        free(r->name);
        free(r->resource);
        free(r->connector);
        kvmap_free(r->options);
        kvmap_free(r->target_options);
    }
    hmap_free(&set->outbound);
    hmap_free(&set->inbound);
    hmap_free(&set->status);
    free(set->rules);
    free(set);
}

unsigned rules_count(const struct rule_set *set)
{
    return set ? set->count : 0;
}

const struct rule *rules_at(const struct rule_set *set, unsigned i)
{
    return set && i < set->count ? &set->rules[i] : NULL;
}

/* ---- Lookups (hot path: no allocation) ---------------------------------- */

/* The enabled rule of index for key[0..len), copied into a stack buffer to
 * make the NUL-terminated hash key; too long or with a NUL byte: none. */
static const struct rule *rules_lookup(const struct hmap *index, const char *key, size_t len)
{
    char k[RESOURCE_MAX + 1];
    if (!key || len == 0 || len > RESOURCE_MAX || memchr(key, '\0', len))
        return NULL;
    memcpy(k, key, len);
    k[len] = '\0';
    const struct rule *r = hmap_get(index, k);
    return r && r->enabled ? r : NULL;
}

const struct rule *rules_outbound_for(const struct rule_set *set, const char *topic, size_t len)
{
    if (!set || !topic)
        return NULL;
    const char *slash = memchr(topic, '/', len);
    return rules_lookup(&set->outbound, topic, slash ? (size_t)(slash - topic) : len);
}

const struct rule *rules_status_for(const struct rule_set *set, const char *group, size_t len)
{
    return set ? rules_lookup(&set->status, group, len) : NULL;
}
