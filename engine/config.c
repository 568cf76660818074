/* The instance configuration file.
 *
 * Rule: every key is declared once, as data, in the schema tables below.
 * The same entry gives the key's type, its range, where the value goes in
 * struct instance_config, its default (written as YAML text and run through
 * the same conversion as a value read from the file) and the help text that
 * docs/CONFIG.md repeats. Unknown keys, duplicate keys, wrong types, values
 * out of range and YAML tags are errors naming file:line:column:
 *
 *   my.yaml:5:3: limits: unknown key 'max_inflite' (did you mean 'max_inflight'?)
 *   my.yaml:2:17: limits.max_inflight: expected an integer 1..65535, got 'abc'
 *   my.yaml:3:9: storage.sync: expected one of off, normal, full, got 'sometimes'
 *   my.yaml:4:31: instance.parent_topics[1]: 'sensordata' duplicates
 *       'SensorData' (parent topics are unique ignoring case)
 *
 * Integers are plain decimal scalars without sign, leading zeros or
 * separators ("1.5", "0x10", "+5", "010", "1_000" and quoted "20" are
 * rejected). An empty document gives every default. A section written with
 * no content ("limits:") counts as an empty mapping (or an empty listener
 * list). The document is walked with one small function per section; rules
 * that tie two sections together (instance.parent_topics against
 * limits.max_parent_topics, in whatever order the sections come) are
 * checked once the whole document is read, still naming the offending
 * node's position.
 *
 * The rules-engine sections are read here but owned elsewhere: each
 * connector's settings and each inline rule become a settings tree (struct
 * kvmap, through rules/yaml.h) whose positions point at cfg->source, for
 * the exporter and rules_build to check; rule_files stay patterns until
 * config_gather_rules reads them (the loader itself touches no file but the
 * instance file):
 *
 *   my.yaml:9:3: connectors: 'pg main': expected 1..64 characters of
 *       A-Z a-z 0-9 _ . -
 *   my.yaml:9:9: connectors.pg: missing required key 'type'
 *   my.yaml:14:5: rules[1]: expected a mapping, got 'telemetry'
 *   my.yaml:20:17: export.retry_max_ms: 100 is less than
 *       export.retry_initial_ms (200) */
#include "config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <glob.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../broker/naming.h"
#include "../common/buf.h"
#include "../common/fs.h"
#include "../common/hmap.h"
#include "../rules/yaml.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)

_Static_assert(sizeof(enum store_sync) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum log_level) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum naming_mode) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum duplicate_policy) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(((struct export_settings *)0)->overflow) == sizeof(int),
               "enums are stored as int");

enum cfg_type {
    CFG_SECTION, /* a top-level section, parsed by the entry's own function */
    CFG_STR,     /* string of min..max bytes */
    CFG_NAME,    /* identifier: min..max characters of [A-Za-z0-9_-] */
    CFG_HOST,    /* IPv4 or IPv6 literal, or "localhost" */
    CFG_UINT,    /* decimal integer min..max, stored in a field of `size` bytes */
    CFG_BOOL,    /* true/false/yes/no, stored in a bool */
    CFG_ENUM,    /* one of `names`, stored as int */
    CFG_LIST,    /* sequence of strings checked by `list`, stored as char ** + count */
};

enum { CFG_REQUIRED = 1 }; /* must appear when its section is written */

struct cfg_name {
    const char *name;
    int value;
};

/* A CFG_LIST key: a YAML sequence of strings, stored as a heap array of
 * heap strings (the key's field, a char **) beside an unsigned count. */
struct cfg_list {
    const char *item, *items; /* "parent topic", "parent topics": for messages */
    bool (*valid)(const char *s, const char **why); /* the rule for one item */
    bool ignore_case;    /* items are unique ignoring ASCII case, else exactly */
    size_t count_offset; /* the unsigned count in the section's target struct */
};

struct cfg_ctx;

struct cfg_key {
    const char *name;
    enum cfg_type type;
    unsigned flags;
    uint64_t min, max;            /* CFG_UINT: value; CFG_STR, CFG_NAME: length */
    const struct cfg_name *names; /* CFG_ENUM, terminated by { NULL, 0 } */
    const struct cfg_list *list;  /* CFG_LIST */
    size_t offset, size;          /* the field in the section's target struct */
    const char *def;              /* default as YAML text; NULL = none */
    const char *help;
    /* CFG_SECTION: parse the section's node into the instance config. */
    int (*parse)(struct cfg_ctx *c, const yaml_node_t *node, void *base);
};

/* A leaf key: CFG_KEY(name, type, flags, min, max, enum names, field, default, help),
 * field being INST_FIELD(member) or LISTENER_FIELD(member). */
#define CFG_KEY(name_, type_, flags_, min_, max_, names_, field_, def_, help_) \
    { \
        .name = (name_), .type = (type_), .flags = (flags_), .min = (min_), .max = (max_), \
        .names = (names_), field_, .def = (def_), .help = (help_) \
    }
#define INST_FIELD(m) \
    .offset = offsetof(struct instance_config, m), .size = sizeof(((struct instance_config *)0)->m)
#define LISTENER_FIELD(m) \
    .offset = offsetof(struct broker_listener, m), .size = sizeof(((struct broker_listener *)0)->m)
/* A list key: CFG_LIST_KEY(name, list, field, help); the default is the
 * empty list. */
#define CFG_LIST_KEY(name_, list_, field_, help_) \
    { \
        .name = (name_), .type = CFG_LIST, .list = (list_), field_, .help = (help_) \
    }

static const struct cfg_name sync_names[] = {
    {"off", STORE_SYNC_OFF},
    {"normal", STORE_SYNC_NORMAL},
    {"full", STORE_SYNC_FULL},
    {NULL, 0},
};

static const struct cfg_name log_level_names[] = {
    {"debug", LOG_DEBUG}, {"info", LOG_INFO},   {"notice", LOG_NOTICE},
    {"warn", LOG_WARN},   {"error", LOG_ERROR}, {NULL, 0},
};

static const struct cfg_name naming_mode_names[] = {
    {"managed", NAMING_MANAGED},
    {"mqtt", NAMING_MQTT},
    {NULL, 0},
};

static const struct cfg_name duplicate_names[] = {
    {"takeover", DUPLICATE_TAKEOVER},
    {"reject", DUPLICATE_REJECT},
    {NULL, 0},
};

static const struct cfg_name overflow_names[] = {
    {"drop_oldest", OVERFLOW_DROP_OLDEST},
    {"drop_newest", OVERFLOW_DROP_NEWEST},
    {NULL, 0},
};

/* A rule_files item: a path or glob pattern; whether it matches anything
 * is seen when config_gather_rules reads the files. */
static bool rule_file_pattern_valid(const char *s, const char **why)
{
    size_t len = strlen(s);
    if (len >= 1 && len <= 4095)
        return true;
    *why = "1..4095 bytes";
    return false;
}

static const struct cfg_list rule_file_list = {
    .item = "rule file pattern",
    .items = "rule file patterns",
    .valid = rule_file_pattern_valid,
    .ignore_case = false,
    .count_offset = offsetof(struct instance_config, rule_file_count),
};

static const struct cfg_list parent_topic_list = {
    .item = "parent topic",
    .items = "parent topics",
    .valid = naming_parent_topic_valid,
    .ignore_case = true,
    .count_offset = offsetof(struct instance_config, broker.naming.parent_topic_count),
};

static const struct cfg_list group_list = {
    .item = "group ID",
    .items = "group IDs",
    .valid = naming_group_id_valid,
    .ignore_case = false,
    .count_offset = offsetof(struct instance_config, broker.naming.group_count),
};

static const struct cfg_key instance_keys[] = {
    CFG_KEY("id", CFG_NAME, 0, 1, 64, NULL, INST_FIELD(instance_id), "mqbridge",
            "Name of this instance, used in logs."),
    CFG_KEY("naming", CFG_ENUM, 0, 0, 0, naming_mode_names, INST_FIELD(broker.naming_mode),
            "managed", "Which client IDs and topics are accepted (see below)."),
    CFG_KEY("on_duplicate_client_id", CFG_ENUM, 0, 0, 0, duplicate_names,
            INST_FIELD(broker.on_duplicate_client_id), "takeover",
            "A connection with a client ID already connected: takeover closes the old connection "
            "[MQTT-3.1.4-2]; reject refuses the new one (CONNACK 0x02, identifier rejected)."),
    CFG_LIST_KEY("parent_topics", &parent_topic_list, INST_FIELD(broker.naming.parent_topics),
                 "Declared parent topics: level 1 of every topic."),
    CFG_LIST_KEY("groups", &group_list, INST_FIELD(broker.naming.groups), "Declared group IDs."),
};

static const struct cfg_key listener_keys[] = {
    CFG_KEY("host", CFG_HOST, 0, 0, 0, NULL, LISTENER_FIELD(host), "0.0.0.0",
            "Address to listen on: an IPv4 or IPv6 literal, or localhost."),
    CFG_KEY("port", CFG_UINT, 0, 1, 65535, NULL, LISTENER_FIELD(port), "1883", "TCP port."),
};

static const struct cfg_key storage_keys[] = {
    CFG_KEY("path", CFG_STR, CFG_REQUIRED, 1, 4095, NULL, INST_FIELD(broker.storage_dir), "./data",
            "Directory of the embedded store; the broker creates it at start."),
    CFG_KEY("sync", CFG_ENUM, 0, 0, 0, sync_names, INST_FIELD(broker.sync), "normal",
            "Durability: off survives a process crash, normal survives kill -9, full survives "
            "power loss."),
};

static const struct cfg_key limits_keys[] = {
    CFG_KEY("max_inflight", CFG_UINT, 0, 1, 65535, NULL, INST_FIELD(broker.limits.max_inflight),
            "20", "Unacknowledged QoS 1 and 2 messages per client."),
    CFG_KEY("max_queued", CFG_UINT, 0, 0, 10000000, NULL, INST_FIELD(broker.limits.max_queued),
            "1000", "Messages queued per client; past it new messages are dropped."),
    CFG_KEY("max_packet_size", CFG_UINT, 0, 16, 268435460, NULL,
            INST_FIELD(broker.limits.max_packet_size), "268435460",
            "Largest packet accepted, in bytes; a bigger one closes the connection."),
    CFG_KEY("max_connections", CFG_UINT, 0, 0, 10000000, NULL,
            INST_FIELD(broker.limits.max_connections), "0",
            "Concurrent client connections; 0 = unlimited."),
    CFG_KEY("max_keepalive", CFG_UINT, 0, 0, 65535, NULL, INST_FIELD(broker.limits.max_keepalive),
            "0", "Upper bound on the client's keep-alive, seconds; 0 = accept the client's."),
    CFG_KEY("max_message_size", CFG_UINT, 0, 1, 268435455, NULL,
            INST_FIELD(broker.limits.max_message_size), "65536",
            "Largest message payload, in bytes; a larger message is discarded (and counted)."),
    CFG_KEY("max_subscriptions_per_client", CFG_UINT, 0, 1, 65535, NULL,
            INST_FIELD(broker.limits.max_subscriptions_per_client), "30",
            "Subscriptions one client may hold; a wildcard filter counts as one (A/# and A/a1/# "
            "are two)."),
    CFG_KEY("max_wildcard_subscriptions_per_parent", CFG_UINT, 0, 1, 65535, NULL,
            INST_FIELD(broker.limits.max_wildcard_subscriptions_per_parent), "100",
            "Wildcard subscriptions under one parent topic, across the instance; the next one is "
            "refused."),
    CFG_KEY("max_parent_topics", CFG_UINT, 0, 1, 1000, NULL,
            INST_FIELD(broker.limits.max_parent_topics), "25",
            "Parent topics instance.parent_topics may declare."),
    CFG_KEY("max_rules", CFG_UINT, 0, 1, 100000, NULL, INST_FIELD(broker.limits.max_rules), "100",
            "Rules (outbound, status, inbound) the instance may hold, across the instance file "
            "and every rule file."),
    CFG_KEY("offline_message_ttl", CFG_UINT, 0, 1, 315360000, NULL,
            INST_FIELD(broker.limits.offline_message_ttl), "259200",
            "Seconds an offline message (QoS 1, cleanSession=false) is kept before it expires; "
            "259200 = 3 days, 315360000 = 10 years."),
    CFG_KEY("max_offline_messages", CFG_UINT, 0, 1, 4294967295, NULL,
            INST_FIELD(broker.limits.max_offline_messages), "1000000",
            "Offline messages stored for the whole instance; past it the oldest are deleted (and "
            "counted)."),
    CFG_KEY("max_topic_length", CFG_UINT, 0, 1, 65535, NULL,
            INST_FIELD(broker.naming.limits.max_topic_length), "64",
            "Characters in a topic name or filter (naming: managed); a P2P target client ID is not "
            "counted."),
    CFG_KEY("max_topic_levels", CFG_UINT, 0, 1, 64, NULL,
            INST_FIELD(broker.naming.limits.max_topic_levels), "3",
            "Levels in a topic name or filter, the parent topic and a # included (naming: "
            "managed)."),
    CFG_KEY("max_client_id_length", CFG_UINT, 0, 1, 65535, NULL,
            INST_FIELD(broker.naming.limits.max_client_id_length), "64",
            "Characters in a client ID (naming: managed)."),
};

static const struct cfg_key log_keys[] = {
    CFG_KEY("level", CFG_ENUM, 0, 0, 0, log_level_names, INST_FIELD(log_level), "info",
            "Least severe level written to stderr."),
};

static const struct cfg_key export_keys[] = {
    CFG_KEY("memory_queue", CFG_UINT, 0, 1, 100000000, NULL, INST_FIELD(export.memory_queue),
            "100000",
            "Records held in memory per connector; past it new records wait in the spool only and "
            "are loaded back in order as the sink drains."),
    CFG_KEY("spool_max", CFG_UINT, 0, 1, UINT64_C(1000000000000), NULL,
            INST_FIELD(export.spool_max), "10000000",
            "Backlog records per connector kept in the spool; past it `overflow` applies."),
    CFG_KEY("overflow", CFG_ENUM, 0, 0, 0, overflow_names, INST_FIELD(export.overflow),
            "drop_oldest",
            "When the spool is full: drop_oldest deletes the oldest backlog record, drop_newest "
            "refuses the new one; either is counted as dropped."),
    CFG_KEY("batch_max", CFG_UINT, 0, 1, 100000, NULL, INST_FIELD(export.batch_max), "1000",
            "Records handed to a connector in one export call."),
    CFG_KEY("retry_initial_ms", CFG_UINT, 0, 1, 3600000, NULL, INST_FIELD(export.retry_initial_ms),
            "200",
            "First delay before retrying a sink that failed, in ms; doubled on each "
            "failure."),
    CFG_KEY("retry_max_ms", CFG_UINT, 0, 1, 86400000, NULL, INST_FIELD(export.retry_max_ms),
            "30000", "Longest delay between retries, in ms; at least retry_initial_ms."),
    CFG_KEY("drain_timeout_ms", CFG_UINT, 0, 0, 600000, NULL, INST_FIELD(export.drain_timeout_ms),
            "5000",
            "At shutdown, time given to the connectors to export what is queued, in ms; what is "
            "left stays in the spool for the next start."),
};

/* ---- Parsing context and messages -------------------------------------- */

struct cfg_ctx {
    const char *name; /* file name for messages; kv positions point at it */
    yaml_document_t *doc;
    char *err;
    size_t errlen;
    size_t kv_items; /* keys converted into connectors and rules so far */
};

#if defined(__GNUC__)
#define CFG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define CFG_PRINTF(fmt, args)
#endif

/* Write "name:line:column: message" (or "name: message" without a
 * position) into the caller's buffer. Always return -1, so that callers can
 * `return cfg_fail(...)`. cfg_fail takes the node's position (none when
 * node is NULL). */
static int cfg_vfail(struct cfg_ctx *c, const yaml_mark_t *at, const char *fmt, va_list ap)
    CFG_PRINTF(3, 0);
static int cfg_fail_at(struct cfg_ctx *c, const yaml_mark_t *at, const char *fmt, ...)
    CFG_PRINTF(3, 4);
static int cfg_fail(struct cfg_ctx *c, const yaml_node_t *node, const char *fmt, ...)
    CFG_PRINTF(3, 4);

static int cfg_vfail(struct cfg_ctx *c, const yaml_mark_t *at, const char *fmt, va_list ap)
{
    int n;
    if (at)
        n = snprintf(c->err, c->errlen, "%s:%zu:%zu: ", c->name, at->line + 1, at->column + 1);
    else
        n = snprintf(c->err, c->errlen, "%s: ", c->name);
    if (n >= 0 && (size_t)n < c->errlen)
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    return -1;
}

static int cfg_fail_at(struct cfg_ctx *c, const yaml_mark_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfg_vfail(c, at, fmt, ap);
    va_end(ap);
    return -1;
}

static int cfg_fail(struct cfg_ctx *c, const yaml_node_t *node, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfg_vfail(c, node ? &node->start_mark : NULL, fmt, ap);
    va_end(ap);
    return -1;
}

/* Copy text for a message: at most 40 bytes, cut on a UTF-8 boundary,
 * control bytes as '?'. */
static const char *cfg_quote(const void *text, size_t len, char *buf, size_t buflen)
{
    const unsigned char *s = text;
    size_t limit = 40, i;
    assert(buflen > limit + 3);
    while (len > limit && limit > 0 && (s[limit] & 0xc0) == 0x80)
        limit--; /* do not cut a UTF-8 sequence */
    for (i = 0; i < len && i < limit; i++)
        buf[i] = (s[i] < 0x20 || s[i] == 0x7f) ? '?' : (char)s[i];
    if (len > limit) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* A plain scalar YAML reads as null: nothing, "~" or "null". */
static bool cfg_is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

/* What was found instead of the expected value, for "got ..." messages. */
static const char *cfg_describe(const yaml_node_t *n, char *buf, size_t buflen)
{
    char q[48];
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a sequence";
    if (cfg_is_null(n))
        return n->data.scalar.length ? "null" : "nothing";
    cfg_quote(n->data.scalar.value, n->data.scalar.length, q, sizeof q);
    snprintf(buf, buflen, "%s'%s'",
             n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "" : "the quoted string ", q);
    return buf;
}

/* Describe what a key accepts: "an integer 1..65535", "one of off, normal, full". */
static const char *cfg_expect(const struct cfg_key *k, char *buf, size_t buflen)
{
    size_t n = 0;
    switch (k->type) {
    case CFG_UINT:
        snprintf(buf, buflen, "an integer %llu..%llu", (unsigned long long)k->min,
                 (unsigned long long)k->max);
        break;
    case CFG_STR:
        snprintf(buf, buflen, "a string of %llu..%llu bytes", (unsigned long long)k->min,
                 (unsigned long long)k->max);
        break;
    case CFG_NAME:
        snprintf(buf, buflen, "%llu..%llu characters of A-Z a-z 0-9 _ -",
                 (unsigned long long)k->min, (unsigned long long)k->max);
        break;
    case CFG_HOST:
        snprintf(buf, buflen, "an IPv4 or IPv6 address or localhost");
        break;
    case CFG_BOOL:
        snprintf(buf, buflen, "true, false, yes or no");
        break;
    case CFG_ENUM:
        n = (size_t)snprintf(buf, buflen, "one of ");
        for (const struct cfg_name *e = k->names; e->name && n < buflen; e++)
            n += (size_t)snprintf(buf + n, buflen - n, "%s%s", e->name, e[1].name ? ", " : "");
        break;
    case CFG_LIST:
        snprintf(buf, buflen, "a sequence of %s", k->list->items);
        break;
    case CFG_SECTION:
        snprintf(buf, buflen, "a mapping");
        break;
    }
    return buf;
}

/* ---- Converting one scalar into its field ------------------------------ */

enum { CFG_OK = 0, CFG_EINVAL = -1, CFG_ENOMEM = -2 };

/* Decimal only: no sign, no leading zero, no separators; range-checked. */
static int cfg_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (s[0] == '\0' || (s[0] == '0' && s[1] != '\0'))
        return CFG_EINVAL;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return CFG_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE || v < min || v > max)
        return CFG_EINVAL;
    *out = v;
    return CFG_OK;
}

static int cfg_store_uint(const struct cfg_key *k, const char *s, void *dst)
{
    uint64_t v;
    if (cfg_parse_uint(s, k->min, k->max, &v) < 0)
        return CFG_EINVAL;
    assert(k->size == 8 || k->max >> (8 * k->size) == 0); /* the table's range fits */
    uint8_t v8 = (uint8_t)v;
    uint16_t v16 = (uint16_t)v;
    uint32_t v32 = (uint32_t)v;
    switch (k->size) {
    case 1:
        memcpy(dst, &v8, 1);
        break;
    case 2:
        memcpy(dst, &v16, 2);
        break;
    case 4:
        memcpy(dst, &v32, 4);
        break;
    default:
        memcpy(dst, &v, 8);
        break;
    }
    return CFG_OK;
}

static int cfg_store_bool(const char *s, void *dst)
{
    bool v;
    if (!strcmp(s, "true") || !strcmp(s, "yes"))
        v = true;
    else if (!strcmp(s, "false") || !strcmp(s, "no"))
        v = false;
    else
        return CFG_EINVAL;
    memcpy(dst, &v, sizeof v);
    return CFG_OK;
}

static int cfg_store_enum(const struct cfg_key *k, const char *s, void *dst)
{
    assert(k->size == sizeof(int));
    for (const struct cfg_name *e = k->names; e->name; e++) {
        if (!strcmp(s, e->name)) {
            memcpy(dst, &e->value, sizeof e->value);
            return CFG_OK;
        }
    }
    return CFG_EINVAL;
}

static bool cfg_valid_string(const struct cfg_key *k, const char *s)
{
    size_t len = strlen(s);
    unsigned char a4[4], a6[16];
    switch (k->type) {
    case CFG_NAME:
        if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != len)
            return false;
        return len >= k->min && len <= k->max;
    case CFG_HOST:
        return !strcmp(s, "localhost") || inet_pton(AF_INET, s, a4) == 1 ||
               inet_pton(AF_INET6, s, a6) == 1;
    default:
        return len >= k->min && len <= k->max;
    }
}

/* Replace the string at dst with a copy of s. */
static int cfg_store_string(const struct cfg_key *k, const char *s, void *dst)
{
    char *copy, *old;
    if (!cfg_valid_string(k, s))
        return CFG_EINVAL;
    if (!(copy = strdup(s)))
        return CFG_ENOMEM;
    memcpy(&old, dst, sizeof old);
    free(old);
    memcpy(dst, &copy, sizeof copy);
    return CFG_OK;
}

/* Convert the NUL-terminated text s as key k and store it into base. */
static int cfg_store(const struct cfg_key *k, const char *s, void *base)
{
    void *dst = (char *)base + k->offset;
    switch (k->type) {
    case CFG_UINT:
        return cfg_store_uint(k, s, dst);
    case CFG_BOOL:
        return cfg_store_bool(s, dst);
    case CFG_ENUM:
        return cfg_store_enum(k, s, dst);
    case CFG_STR:
    case CFG_NAME:
    case CFG_HOST:
        return cfg_store_string(k, s, dst);
    case CFG_LIST: /* parsed from a sequence by cfg_parse_list */
    case CFG_SECTION:
        break;
    }
    return CFG_EINVAL;
}

/* Store every default of a key table into base. */
static int cfg_apply_defaults(struct cfg_ctx *c, const struct cfg_key *keys, size_t n, void *base)
{
    for (size_t i = 0; i < n; i++) {
        if (!keys[i].def)
            continue;
        int rc = cfg_store(&keys[i], keys[i].def, base);
        if (rc == CFG_ENOMEM)
            return cfg_fail(c, NULL, "out of memory");
        if (rc < 0) /* a bug in the table, caught by the unit tests */
            return cfg_fail(c, NULL, "bad default '%s' for key '%s'", keys[i].def, keys[i].name);
    }
    return 0;
}

/* ---- Walking the document ---------------------------------------------- */

/* Explicit tags ("!!int 5", "!custom x") are rejected: values are typed by
 * the schema, not by the file. */
static int cfg_check_tag(struct cfg_ctx *c, const char *where, const yaml_node_t *n)
{
    const char *want = n->type == YAML_SCALAR_NODE     ? YAML_DEFAULT_SCALAR_TAG
                       : n->type == YAML_SEQUENCE_NODE ? YAML_DEFAULT_SEQUENCE_TAG
                                                       : YAML_DEFAULT_MAPPING_TAG;
    char q[48];
    if (!n->tag || !strcmp((const char *)n->tag, want))
        return 0;
    cfg_quote(n->tag, strlen((const char *)n->tag), q, sizeof q);
    return cfg_fail(c, n, "%s: unexpected tag '%s'", where, q);
}

/* Parse one leaf value (a scalar) for key k into base. */
static int cfg_parse_value(struct cfg_ctx *c, const char *where, const struct cfg_key *k,
                           const yaml_node_t *n, void *base)
{
    char want[96], got[96];
    if (cfg_check_tag(c, where, n) < 0)
        return -1;
    cfg_expect(k, want, sizeof want);
    bool typed = k->type == CFG_UINT || k->type == CFG_BOOL; /* a quoted "20" is a string */
    if (n->type != YAML_SCALAR_NODE || cfg_is_null(n) ||
        (typed && n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) ||
        strlen((const char *)n->data.scalar.value) != n->data.scalar.length)
        return cfg_fail(c, n, "%s: expected %s, got %s", where, want,
                        cfg_describe(n, got, sizeof got));
    int rc = cfg_store(k, (const char *)n->data.scalar.value, base);
    if (rc == CFG_ENOMEM)
        return cfg_fail(c, n, "out of memory");
    if (rc < 0)
        return cfg_fail(c, n, "%s: expected %s, got %s", where, want,
                        cfg_describe(n, got, sizeof got));
    return 0;
}

/* ---- Lists of names ---------------------------------------------------- */

static char ***cfg_list_items(const struct cfg_key *k, void *base)
{
    return (char ***)((char *)base + k->offset);
}

static unsigned *cfg_list_count(const struct cfg_key *k, void *base)
{
    return (unsigned *)((char *)base + k->list->count_offset);
}

/* Free a list's strings and array; leave it empty. */
static void cfg_list_clear(const struct cfg_key *k, void *base)
{
    char ***items = cfg_list_items(k, base);
    unsigned *count = cfg_list_count(k, base);
    for (unsigned i = 0; i < *count; i++)
        free((*items)[i]);
    free(*items);
    *items = NULL;
    *count = 0;
}

/* One item: a scalar (plain or quoted, no NUL byte) that passes the
 * list's rule. */
static int cfg_check_list_item(struct cfg_ctx *c, const char *where, const struct cfg_list *l,
                               const yaml_node_t *n)
{
    char got[96], q[48];
    const char *why = NULL;
    if (cfg_check_tag(c, where, n) < 0)
        return -1;
    if (n->type != YAML_SCALAR_NODE || cfg_is_null(n) ||
        strlen((const char *)n->data.scalar.value) != n->data.scalar.length)
        return cfg_fail(c, n, "%s: expected a %s, got %s", where, l->item,
                        cfg_describe(n, got, sizeof got));
    if (!l->valid((const char *)n->data.scalar.value, &why))
        return cfg_fail(c, n, "%s: '%s': %s", where,
                        cfg_quote(n->data.scalar.value, n->data.scalar.length, q, sizeof q),
                        why ? why : "not allowed");
    return 0;
}

/* Lower-case ASCII copy of s into dst (strlen(s) + 1 bytes). */
static void cfg_fold_case(char *dst, const char *s)
{
    do
        *dst++ = (*s >= 'A' && *s <= 'Z') ? (char)(*s - 'A' + 'a') : *s;
    while (*s++);
}

/* The items of the sequence seq, already stored in items[0..n), must be
 * unique (exactly, or ignoring case): report the first one equal to an
 * earlier one, at its position. Linear, with a hash map of the keys. */
static int cfg_check_list_unique(struct cfg_ctx *c, const char *where, const yaml_node_t *seq,
                                 const struct cfg_list *l, char *const *items, size_t n)
{
    struct hmap seen = {0};
    size_t total = 0;
    char *keys = NULL, q1[48], q2[48];
    int rc = -1;
    for (size_t i = 0; i < n; i++)
        total += strlen(items[i]) + 1;
    if (!(keys = malloc(total ? total : 1))) {
        cfg_fail(c, NULL, "out of memory");
        goto done;
    }
    char *key = keys;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(items[i]);
        if (l->ignore_case)
            cfg_fold_case(key, items[i]);
        else
            memcpy(key, items[i], len + 1);
        void *earlier = hmap_get(&seen, key);
        if (earlier) {
            size_t e = (size_t)(uintptr_t)earlier - 1;
            cfg_fail(c, yaml_document_get_node(c->doc, seq->data.sequence.items.start[i]),
                     "%s[%zu]: '%s' duplicates '%s' (%s are unique%s)", where, i,
                     cfg_quote(items[i], len, q1, sizeof q1),
                     cfg_quote(items[e], strlen(items[e]), q2, sizeof q2), l->items,
                     l->ignore_case ? " ignoring case" : "");
            goto done;
        }
        if (hmap_put(&seen, key, (void *)(uintptr_t)(i + 1)) < 0) {
            cfg_fail(c, NULL, "out of memory");
            goto done;
        }
        key += len + 1;
    }
    rc = 0;
done:
    hmap_free(&seen);
    free(keys);
    return rc;
}

/* A sequence of strings for list key k (null = the empty list), replacing
 * the list in base. On failure the items stored so far stay in base, counted,
 * for config_free. */
static int cfg_parse_list(struct cfg_ctx *c, const char *where, const struct cfg_key *k,
                          const yaml_node_t *node, void *base)
{
    const struct cfg_list *l = k->list;
    char ***items = cfg_list_items(k, base), got[96], path[128];
    unsigned *count = cfg_list_count(k, base);
    size_t n = 0;
    if (cfg_check_tag(c, where, node) < 0)
        return -1;
    if (node->type == YAML_SEQUENCE_NODE)
        n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    else if (!cfg_is_null(node))
        return cfg_fail(c, node, "%s: expected a sequence of %s, got %s", where, l->items,
                        cfg_describe(node, got, sizeof got));
    cfg_list_clear(k, base);
    if (n == 0)
        return 0;
    if (!(*items = calloc(n, sizeof **items)))
        return cfg_fail(c, node, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item =
            yaml_document_get_node(c->doc, node->data.sequence.items.start[i]);
        snprintf(path, sizeof path, "%s[%zu]", where, i);
        if (cfg_check_list_item(c, path, l, item) < 0)
            return -1;
        if (!((*items)[i] = strdup((const char *)item->data.scalar.value)))
            return cfg_fail(c, item, "out of memory");
        *count = (unsigned)i + 1;
    }
    return cfg_check_list_unique(c, where, node, l, *items, n);
}

/* Edit distance of two short strings, for "did you mean" hints. */
static size_t cfg_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[33], prev;
    if (la > 32 || lb > 32)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t best = prev + (a[i - 1] != b[j - 1]);
            best = row[j] + 1 < best ? row[j] + 1 : best;
            best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
            prev = row[j];
            row[j] = best;
        }
    }
    return row[lb];
}

/* Report a key that is not in the table, with the closest known name. */
static int cfg_fail_unknown(struct cfg_ctx *c, const char *path, const yaml_node_t *key,
                            const struct cfg_key *keys, size_t n)
{
    char q[48], hint[64] = "";
    const char *name = (const char *)key->data.scalar.value;
    /* Up to 1 edit for short names, 3 for longer ones. */
    for (size_t i = 0, best = strlen(name) >= 8 ? 4 : 2; i < n; i++) {
        size_t d = cfg_distance(name, keys[i].name);
        if (d < best) {
            best = d;
            snprintf(hint, sizeof hint, " (did you mean '%s'?)", keys[i].name);
        }
    }
    cfg_quote(name, key->data.scalar.length, q, sizeof q);
    if (!*path)
        return cfg_fail(c, key, "unknown section '%s'%s", q, hint);
    return cfg_fail(c, key, "%s: unknown key '%s'%s", path, q, hint);
}

/* Find the table entry for a mapping key; fails on an unknown, non-scalar
 * or duplicate key. *seen has one bit per table entry already met. */
static const struct cfg_key *cfg_lookup(struct cfg_ctx *c, const char *path, const yaml_node_t *key,
                                        const struct cfg_key *keys, size_t n, uint64_t *seen)
{
    const char *label = *path ? path : "top level";
    char got[96];
    if (cfg_check_tag(c, label, key) < 0)
        return NULL;
    if (key->type != YAML_SCALAR_NODE) {
        cfg_fail(c, key, "%s: expected a key name, got %s", label,
                 cfg_describe(key, got, sizeof got));
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp((const char *)key->data.scalar.value, keys[i].name) != 0 ||
            strlen(keys[i].name) != key->data.scalar.length)
            continue;
        if (*seen & (UINT64_C(1) << i)) {
            cfg_fail(c, key, "%s: duplicate %s '%s'", label, *path ? "key" : "section",
                     keys[i].name);
            return NULL;
        }
        *seen |= UINT64_C(1) << i;
        return &keys[i];
    }
    cfg_fail_unknown(c, path, key, keys, n);
    return NULL;
}

static int cfg_check_required(struct cfg_ctx *c, const char *path, const yaml_node_t *node,
                              const struct cfg_key *keys, size_t n, uint64_t seen)
{
    for (size_t i = 0; i < n; i++)
        if ((keys[i].flags & CFG_REQUIRED) && !(seen & (UINT64_C(1) << i)))
            return cfg_fail(c, node, "%s: missing required key '%s'", path, keys[i].name);
    return 0;
}

/* Walk a mapping whose keys are declared in keys[], storing into base.
 * path names the mapping in messages ("limits", "listeners[1]", "" for the
 * top level). A null node is an empty mapping. */
static int cfg_parse_mapping(struct cfg_ctx *c, const yaml_node_t *node, const char *path,
                             const struct cfg_key *keys, size_t n, void *base)
{
    uint64_t seen = 0;
    char got[96], where[96];
    assert(n <= 64);
    if (cfg_check_tag(c, *path ? path : "top level", node) < 0)
        return -1;
    if (cfg_is_null(node))
        return cfg_check_required(c, path, node, keys, n, 0);
    if (node->type != YAML_MAPPING_NODE)
        return cfg_fail(c, node, "%s: expected a mapping, got %s", *path ? path : "top level",
                        cfg_describe(node, got, sizeof got));
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *value = yaml_document_get_node(c->doc, p->value);
        const struct cfg_key *k =
            cfg_lookup(c, path, yaml_document_get_node(c->doc, p->key), keys, n, &seen);
        if (!k)
            return -1;
        snprintf(where, sizeof where, "%s%s%s", path, *path ? "." : "", k->name);
        int rc = k->type == CFG_SECTION ? k->parse(c, value, base)
                 : k->type == CFG_LIST  ? cfg_parse_list(c, where, k, value, base)
                                        : cfg_parse_value(c, where, k, value, base);
        if (rc < 0)
            return -1;
    }
    return cfg_check_required(c, path, node, keys, n, seen);
}

/* ---- Finding nodes ----------------------------------------------------- */

/* The value of key name in a mapping node, or NULL (also for a NULL or
 * non-mapping node). */
static const yaml_node_t *cfg_find_value(struct cfg_ctx *c, const yaml_node_t *map,
                                         const char *name)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *key = yaml_document_get_node(c->doc, p->key);
        if (key->type == YAML_SCALAR_NODE && !strcmp((const char *)key->data.scalar.value, name))
            return yaml_document_get_node(c->doc, p->value);
    }
    return NULL;
}

/* Item i of a sequence node, or NULL. */
static const yaml_node_t *cfg_item(struct cfg_ctx *c, const yaml_node_t *seq, size_t i)
{
    if (!seq || seq->type != YAML_SEQUENCE_NODE ||
        i >= (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start))
        return NULL;
    return yaml_document_get_node(c->doc, seq->data.sequence.items.start[i]);
}

/* ---- One function per section ------------------------------------------ */

static int config_parse_instance(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    return cfg_parse_mapping(c, node, "instance", instance_keys, ARRAY_LEN(instance_keys), cfg);
}

static void listeners_clear(struct broker_config *b)
{
    for (size_t i = 0; i < BROKER_MAX_LISTENERS; i++) {
        free(b->listeners[i].host);
        b->listeners[i].host = NULL;
        b->listeners[i].port = 0;
    }
    b->listener_count = 0;
}

/* Two listeners on the same address and port cannot both bind. */
static int listener_check_unique(struct cfg_ctx *c, const yaml_node_t *item,
                                 const struct broker_config *b, size_t i)
{
    const struct broker_listener *l = &b->listeners[i];
    for (size_t j = 0; j < i; j++)
        if (b->listeners[j].port == l->port && !strcmp(b->listeners[j].host, l->host))
            return cfg_fail(c, item, "listeners[%zu]: same host and port as listeners[%zu] (%s:%u)",
                            i, j, l->host, (unsigned)l->port);
    return 0;
}

/* A sequence of 1..BROKER_MAX_LISTENERS mappings; it replaces the default
 * listener, and each item starts from the listener keys' defaults. */
static int config_parse_listeners(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    struct broker_config *b = &((struct instance_config *)cfg)->broker;
    char got[96], path[32];
    size_t n = 0;
    if (cfg_check_tag(c, "listeners", node) < 0)
        return -1;
    if (node->type == YAML_SEQUENCE_NODE)
        n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    else if (!cfg_is_null(node))
        return cfg_fail(c, node, "listeners: expected a sequence of 1..%d listeners, got %s",
                        BROKER_MAX_LISTENERS, cfg_describe(node, got, sizeof got));
    if (n < 1 || n > BROKER_MAX_LISTENERS)
        return cfg_fail(c, node, "listeners: expected 1..%d listeners, got %zu",
                        BROKER_MAX_LISTENERS, n);
    listeners_clear(b);
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item =
            yaml_document_get_node(c->doc, node->data.sequence.items.start[i]);
        snprintf(path, sizeof path, "listeners[%zu]", i);
        b->listener_count = (unsigned)i + 1;
        if (cfg_apply_defaults(c, listener_keys, ARRAY_LEN(listener_keys), &b->listeners[i]) < 0 ||
            cfg_parse_mapping(c, item, path, listener_keys, ARRAY_LEN(listener_keys),
                              &b->listeners[i]) < 0 ||
            listener_check_unique(c, item, b, i) < 0)
            return -1;
    }
    return 0;
}

static int config_parse_storage(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    return cfg_parse_mapping(c, node, "storage", storage_keys, ARRAY_LEN(storage_keys), cfg);
}

static int config_parse_limits(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    return cfg_parse_mapping(c, node, "limits", limits_keys, ARRAY_LEN(limits_keys), cfg);
}

static int config_parse_log(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    return cfg_parse_mapping(c, node, "log", log_keys, ARRAY_LEN(log_keys), cfg);
}

/* retry_max_ms >= retry_initial_ms, either of which may be a default:
 * the message points at whichever of the two the section sets. */
static int config_check_retry(struct cfg_ctx *c, const yaml_node_t *node,
                              const struct export_settings *e)
{
    if (e->retry_max_ms >= e->retry_initial_ms)
        return 0;
    const yaml_node_t *max = cfg_find_value(c, node, "retry_max_ms");
    if (max)
        return cfg_fail(c, max, "export.retry_max_ms: %u is less than export.retry_initial_ms (%u)",
                        (unsigned)e->retry_max_ms, (unsigned)e->retry_initial_ms);
    return cfg_fail(c, cfg_find_value(c, node, "retry_initial_ms"),
                    "export.retry_initial_ms: %u is greater than export.retry_max_ms (%u)",
                    (unsigned)e->retry_initial_ms, (unsigned)e->retry_max_ms);
}

static int config_parse_export(struct cfg_ctx *c, const yaml_node_t *node, void *cfg)
{
    if (cfg_parse_mapping(c, node, "export", export_keys, ARRAY_LEN(export_keys), cfg) < 0)
        return -1;
    return config_check_retry(c, node, &((struct instance_config *)cfg)->export);
}

/* ---- Settings trees: connectors and inline rules ------------------------ */

/* Keys in a settings tree, nested ones included. */
static size_t cfg_kv_count(const struct kvmap *m)
{
    size_t n = m->count;
    for (unsigned i = 0; i < m->count; i++)
        if (m->items[i].map)
            n += cfg_kv_count(m->items[i].map);
    return n;
}

/* Aliases let a small file expand into many keys; yaml_to_kvmap bounds one
 * conversion, this bounds their sum over the instance file. */
static int cfg_charge_kv(struct cfg_ctx *c, const yaml_node_t *node, const char *where, size_t n)
{
    c->kv_items += n;
    if (c->kv_items <= YAML_KV_MAX_ITEMS)
        return 0;
    return cfg_fail(c, node, "%s: connectors and rules hold more than %d keys (aliases expanded)",
                    where, YAML_KV_MAX_ITEMS);
}

/* A connector name: 1..64 of A-Z a-z 0-9 _ . - */
static bool connector_name_valid(const char *s, size_t len)
{
    static const char allowed[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-";
    return len >= 1 && len <= 64 && strlen(s) == len && strspn(s, allowed) == len;
}

/* The name of a connector (a key of `connectors`), or NULL after an error. */
static const char *config_connector_name(struct cfg_ctx *c, const yaml_node_t *key)
{
    char got[96];
    if (cfg_check_tag(c, "connectors", key) < 0)
        return NULL;
    if (key->type != YAML_SCALAR_NODE || cfg_is_null(key)) {
        cfg_fail(c, key, "connectors: expected a connector name, got %s",
                 cfg_describe(key, got, sizeof got));
        return NULL;
    }
    if (!connector_name_valid((const char *)key->data.scalar.value, key->data.scalar.length)) {
        cfg_fail(c, key, "connectors: '%s': expected 1..64 characters of A-Z a-z 0-9 _ . -",
                 cfg_quote(key->data.scalar.value, key->data.scalar.length, got, sizeof got));
        return NULL;
    }
    return (const char *)key->data.scalar.value;
}

/* Split a connector's settings tree m into decl: its `type` (a non-empty
 * string) and the other settings. Takes ownership of m. */
static int config_connector_split(struct cfg_ctx *c, const char *where, struct kvmap *m,
                                  struct connector_decl *decl)
{
    const struct kv *type = kv_find(m, "type");
    int rc = -1;
    if (!type)
        kv_error(c->err, c->errlen, m, NULL, "%s: missing required key 'type'", where);
    else if (!type->value || !*type->value)
        kv_error(c->err, c->errlen, m, type, "%s.type: expected a connector type, got %s", where,
                 type->value ? "''" : "a mapping");
    else if (!(decl->type = strdup(type->value)) ||
             !(decl->settings = kvmap_dup_without(m, "type")))
        kv_error(c->err, c->errlen, m, NULL, "out of memory");
    else
        rc = 0;
    kvmap_free(m);
    return rc;
}

/* One `name: { type: ..., ... }` pair into the zeroed decl. */
static int config_parse_connector(struct cfg_ctx *c, const yaml_node_t *key,
                                  const yaml_node_t *value, struct connector_decl *decl)
{
    char where[96], got[96];
    struct kvmap *m = NULL;
    const char *name = config_connector_name(c, key);
    if (!name)
        return -1;
    snprintf(where, sizeof where, "connectors.%s", name);
    if (cfg_check_tag(c, where, value) < 0)
        return -1;
    if (value->type != YAML_MAPPING_NODE)
        return cfg_fail(c, value, "%s: expected a mapping of settings, got %s", where,
                        cfg_describe(value, got, sizeof got));
    if (!(decl->name = strdup(name)))
        return cfg_fail(c, key, "out of memory");
    if (yaml_to_kvmap(c->doc, (yaml_node_t *)value, c->name, &m, c->err, c->errlen) < 0)
        return -1;
    if (cfg_charge_kv(c, value, where, cfg_kv_count(m)) < 0) {
        kvmap_free(m);
        return -1;
    }
    return config_connector_split(c, where, m, decl);
}

/* A mapping of connector name -> settings; names are unique (exactly). On
 * failure what was stored stays counted in cfg, for config_free. */
static int config_parse_connectors(struct cfg_ctx *c, const yaml_node_t *node, void *base)
{
    struct instance_config *cfg = base;
    struct hmap seen = {0};
    char got[96];
    int rc = -1;
    if (cfg_check_tag(c, "connectors", node) < 0)
        return -1;
    if (cfg_is_null(node))
        return 0;
    if (node->type != YAML_MAPPING_NODE)
        return cfg_fail(c, node, "connectors: expected a mapping of connector names, got %s",
                        cfg_describe(node, got, sizeof got));
    size_t n = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    if (n == 0)
        return 0;
    if (!(cfg->connectors = calloc(n, sizeof *cfg->connectors)))
        return cfg_fail(c, node, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const yaml_node_pair_t *p = &node->data.mapping.pairs.start[i];
        const yaml_node_t *key = yaml_document_get_node(c->doc, p->key);
        struct connector_decl *decl = &cfg->connectors[i];
        cfg->connector_count = (unsigned)i + 1;
        if (config_parse_connector(c, key, yaml_document_get_node(c->doc, p->value), decl) < 0)
            goto done;
        if (hmap_get(&seen, decl->name)) {
            cfg_fail(c, key, "connectors: duplicate connector '%s'", decl->name);
            goto done;
        }
        if (hmap_put(&seen, decl->name, decl) < 0) {
            cfg_fail(c, key, "out of memory");
            goto done;
        }
    }
    rc = 0;
done:
    hmap_free(&seen);
    return rc;
}

/* A sequence of mappings, kept as settings trees for rules_build. */
static int config_parse_rules(struct cfg_ctx *c, const yaml_node_t *node, void *base)
{
    struct kvlist *rules = &((struct instance_config *)base)->rules;
    char got[96];
    size_t n = 0;
    if (cfg_check_tag(c, "rules", node) < 0)
        return -1;
    if (!cfg_is_null(node) && node->type != YAML_SEQUENCE_NODE)
        return cfg_fail(c, node, "rules: expected a sequence of rules, got %s",
                        cfg_describe(node, got, sizeof got));
    unsigned before = rules->count;
    if (yaml_to_kvlist(c->doc, (yaml_node_t *)node, c->name, "rules", rules, c->err, c->errlen) < 0)
        return -1;
    for (unsigned i = before; i < rules->count; i++)
        n += 1 + cfg_kv_count(rules->items[i]);
    return cfg_charge_kv(c, node, "rules", n);
}

/* The top level. rule_files is a list like instance.groups. */
static const struct cfg_key root_keys[] = {
    {.name = "instance", .type = CFG_SECTION, .parse = config_parse_instance},
    {.name = "listeners", .type = CFG_SECTION, .parse = config_parse_listeners},
    {.name = "storage", .type = CFG_SECTION, .parse = config_parse_storage},
    {.name = "limits", .type = CFG_SECTION, .parse = config_parse_limits},
    {.name = "log", .type = CFG_SECTION, .parse = config_parse_log},
    {.name = "connectors", .type = CFG_SECTION, .parse = config_parse_connectors},
    {.name = "rules", .type = CFG_SECTION, .parse = config_parse_rules},
    CFG_LIST_KEY("rule_files", &rule_file_list, INST_FIELD(rule_files),
                 "Rule files: paths or glob patterns, relative to the instance file's directory."),
    {.name = "export", .type = CFG_SECTION, .parse = config_parse_export},
};

/* Every key's default, from the tables; the default listener list is one
 * listener made of the listener keys' defaults. */
static int config_set_defaults(struct cfg_ctx *c, struct instance_config *cfg)
{
    if (cfg_apply_defaults(c, instance_keys, ARRAY_LEN(instance_keys), cfg) < 0 ||
        cfg_apply_defaults(c, storage_keys, ARRAY_LEN(storage_keys), cfg) < 0 ||
        cfg_apply_defaults(c, limits_keys, ARRAY_LEN(limits_keys), cfg) < 0 ||
        cfg_apply_defaults(c, log_keys, ARRAY_LEN(log_keys), cfg) < 0 ||
        cfg_apply_defaults(c, export_keys, ARRAY_LEN(export_keys), cfg) < 0)
        return -1;
    cfg->broker.listener_count = 1;
    return cfg_apply_defaults(c, listener_keys, ARRAY_LEN(listener_keys),
                              &cfg->broker.listeners[0]);
}

/* ---- Rules across sections -------------------------------------------- */

/* instance.parent_topics against the limits section, which may come
 * before or after it: at most limits.max_parent_topics of them, and each
 * short enough to appear in a topic of limits.max_topic_length. */
static int config_check_parent_topics(struct cfg_ctx *c, const yaml_node_t *root,
                                      const struct instance_config *cfg)
{
    const struct broker_config *b = &cfg->broker;
    const struct naming *n = &b->naming;
    char q[48];
    if (n->parent_topic_count == 0)
        return 0;
    const yaml_node_t *seq =
        cfg_find_value(c, cfg_find_value(c, root, "instance"), "parent_topics");
    if (n->parent_topic_count > b->limits.max_parent_topics)
        return cfg_fail(c, seq,
                        "instance.parent_topics: %u parent topics, limits.max_parent_topics is %u",
                        n->parent_topic_count, (unsigned)b->limits.max_parent_topics);
    for (unsigned i = 0; i < n->parent_topic_count; i++) {
        size_t len = strlen(n->parent_topics[i]);
        if (len > n->limits.max_topic_length)
            return cfg_fail(c, cfg_item(c, seq, i),
                            "instance.parent_topics[%u]: '%s' is %zu characters, longer than "
                            "limits.max_topic_length (%u)",
                            i, cfg_quote(n->parent_topics[i], len, q, sizeof q), len,
                            (unsigned)n->limits.max_topic_length);
    }
    return 0;
}

/* ---- Entry points ------------------------------------------------------ */

/* Report a libyaml error with its own problem text and position. */
static int cfg_fail_syntax(struct cfg_ctx *c, const yaml_parser_t *p, const char *text, size_t len)
{
    yaml_mark_t at = p->problem_mark;
    if (p->error == YAML_MEMORY_ERROR)
        return cfg_fail(c, NULL, "out of memory");
    if (p->error == YAML_READER_ERROR) { /* only a byte offset is known: count */
        at.line = at.column = 0;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n') {
                at.line++;
                at.column = 0;
            } else if (((unsigned char)text[i] & 0xc0) != 0x80) {
                at.column++;
            }
        }
    }
    if (p->context)
        return cfg_fail_at(c, &at, "%s (%s at %zu:%zu)", p->problem ? p->problem : "syntax error",
                           p->context, p->context_mark.line + 1, p->context_mark.column + 1);
    return cfg_fail_at(c, &at, "%s", p->problem ? p->problem : "syntax error");
}

/* The file holds one document: a second one is an error, not ignored. */
static int cfg_check_single_document(struct cfg_ctx *c, yaml_parser_t *parser, const char *text,
                                     size_t len)
{
    yaml_document_t next;
    if (!yaml_parser_load(parser, &next))
        return cfg_fail_syntax(c, parser, text, len);
    yaml_node_t *root = yaml_document_get_root_node(&next);
    int rc = root ? cfg_fail(c, root, "only one YAML document is allowed") : 0;
    yaml_document_delete(&next);
    return rc;
}

/* The file name and base directory go first: the settings trees of
 * connectors and rules point at out->source. Takes ownership of base_dir
 * (freed on failure). */
static int config_load_text(const char *text, size_t len, const char *name, char *base_dir,
                            struct instance_config *out, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    char scratch[1];
    struct cfg_ctx c = {
        .name = name ? name : "<string>", .doc = &doc, .err = err, .errlen = errlen};
    bool parsed = false;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (!err || !errlen) {
        c.err = scratch;
        c.errlen = sizeof scratch;
    }
    c.err[0] = '\0';
    if (!text) {
        text = "";
        len = 0;
    }
    out->base_dir = base_dir;
    if (!base_dir || !(out->source = strdup(c.name))) {
        config_free(out);
        return cfg_fail(&c, NULL, "out of memory");
    }
    c.name = out->source;
    if (!yaml_parser_initialize(&parser)) {
        cfg_fail(&c, NULL, "out of memory");
        config_free(out);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        cfg_fail_syntax(&c, &parser, text, len);
        goto done;
    }
    parsed = true;
    if (config_set_defaults(&c, out) < 0)
        goto done;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && cfg_parse_mapping(&c, root, "", root_keys, ARRAY_LEN(root_keys), out) < 0)
        goto done;
    if (root && config_check_parent_topics(&c, root, out) < 0)
        goto done;
    if (root && cfg_check_single_document(&c, &parser, text, len) < 0)
        goto done;
    rc = 0;
done:
    if (parsed)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc < 0)
        config_free(out);
    return rc;
}

int config_load_string(const char *text, size_t len, const char *name, struct instance_config *out,
                       char *err, size_t errlen)
{
    return config_load_text(text, len, name, strdup("."), out, err, errlen);
}

/* The directory part of path, as a heap string (NULL when out of memory):
 * "a/b.yaml" -> "a", "/b.yaml" -> "/", "b.yaml" -> ".". */
static char *config_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    size_t n = (size_t)(slash - path);
    while (n > 0 && path[n - 1] == '/')
        n--;
    return n ? strndup(path, n) : strdup("/");
}

/* Read the whole file (at most CONFIG_MAX_FILE_SIZE bytes) into b. */
static int config_read_file(const char *path, struct buf *b, char *err, size_t errlen)
{
    return fs_read_file(path, CONFIG_MAX_FILE_SIZE, b, err, errlen);
}

int config_load_file(const char *path, struct instance_config *out, char *err, size_t errlen)
{
    struct buf b = {0};
    char scratch[1];
    int rc = -1;
    memset(out, 0, sizeof *out);
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    if (config_read_file(path, &b, err, errlen) == 0)
        rc = config_load_text(b.data ? (const char *)b.data : "", b.len, path, config_dir_of(path),
                              out, err, errlen);
    buf_free(&b);
    return rc;
}

/* ---- Gathering the rules --------------------------------------------- */

static bool config_gather_is_glob(const char *pattern)
{
    return strpbrk(pattern, "*?[") != NULL;
}

/* The pattern as a path from the working directory: absolute ones and
 * those under "." as written, others after base_dir and a '/'. For a glob,
 * base_dir's own glob characters are escaped so that they match only
 * themselves. NULL when out of memory. */
static char *config_gather_path(const char *base_dir, const char *pattern, bool glob_pattern)
{
    struct buf b = {0};
    if (pattern[0] != '/' && strcmp(base_dir, ".") != 0) {
        for (const char *p = base_dir; *p; p++)
            if ((glob_pattern && strchr("*?[\\", *p) && buf_append(&b, "\\", 1) < 0) ||
                buf_append(&b, p, 1) < 0)
                goto fail;
        if (base_dir[strlen(base_dir) - 1] != '/' && buf_append(&b, "/", 1) < 0)
            goto fail;
    }
    if (buf_append(&b, pattern, strlen(pattern) + 1) < 0)
        goto fail;
    return (char *)b.data;
fail:
    buf_free(&b);
    return NULL;
}

static int config_gather_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read every file a glob matches, in byte order of their paths. */
static int config_gather_glob(const struct instance_config *cfg, unsigned i, const char *path,
                              struct kvlist *out, struct rules_files *files, char *err,
                              size_t errlen)
{
    glob_t g;
    int rc = -1;
    memset(&g, 0, sizeof g);
    int grc = glob(path, GLOB_MARK | GLOB_NOSORT, NULL, &g);
    if (grc == GLOB_NOMATCH) {
        log_notice("%s: rule_files[%u]: '%s' matches no file", cfg->source, i, cfg->rule_files[i]);
        rc = 0;
    } else if (grc != 0) {
        snprintf(err, errlen, "%s: rule_files[%u]: '%s': %s", cfg->source, i, cfg->rule_files[i],
                 grc == GLOB_NOSPACE ? "out of memory" : "cannot read a directory");
    } else {
        qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, config_gather_cmp);
        size_t k = 0;
        for (; k < g.gl_pathc; k++) {
            const char *match = g.gl_pathv[k];
            if (match[strlen(match) - 1] == '/') /* GLOB_MARK: a directory */
                continue;
            if (rules_file_read(match, files, out, err, errlen) < 0)
                break;
        }
        rc = k == g.gl_pathc ? 0 : -1;
    }
    globfree(&g);
    return rc;
}

/* The rules of the files of rule_files[i]. */
static int config_gather_pattern(const struct instance_config *cfg, unsigned i, struct kvlist *out,
                                 struct rules_files *files, char *err, size_t errlen)
{
    bool is_glob = config_gather_is_glob(cfg->rule_files[i]);
    char *path =
        config_gather_path(cfg->base_dir ? cfg->base_dir : ".", cfg->rule_files[i], is_glob);
    int rc = -1;
    if (!path)
        snprintf(err, errlen, "%s: out of memory", cfg->source);
    else if (is_glob)
        rc = config_gather_glob(cfg, i, path, out, files, err, errlen);
    else
        rc = rules_file_read(path, files, out, err, errlen);
    free(path);
    return rc;
}

int config_gather_rules(const struct instance_config *cfg, struct kvlist *out,
                        struct rules_files *files, char *err, size_t errlen)
{
    unsigned before = out->count;
    char scratch[1];
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    for (unsigned i = 0; i < cfg->rules.count; i++) {
        struct kvmap *m = kvmap_dup(cfg->rules.items[i]);
        if (!m || kvlist_push(out, m) < 0) {
            snprintf(err, errlen, "%s: out of memory", cfg->source);
            goto fail;
        }
    }
    for (unsigned i = 0; i < cfg->rule_file_count; i++)
        if (config_gather_pattern(cfg, i, out, files, err, errlen) < 0)
            goto fail;
    return 0;
fail:
    /* Back to the caller's list (kvlist_push tolerates a truncated list). */
    for (unsigned i = before; i < out->count; i++)
        kvmap_free(out->items[i]);
    out->count = before;
    return -1;
}

void config_free(struct instance_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->source);
    free(cfg->base_dir);
    free(cfg->instance_id);
    broker_config_free(&cfg->broker);
    for (unsigned i = 0; i < cfg->connector_count; i++) {
        free(cfg->connectors[i].name);
        free(cfg->connectors[i].type);
        kvmap_free(cfg->connectors[i].settings);
    }
    free(cfg->connectors);
    kvlist_clear(&cfg->rules);
    for (unsigned i = 0; i < cfg->rule_file_count; i++)
        free(cfg->rule_files[i]);
    free(cfg->rule_files);
    memset(cfg, 0, sizeof *cfg);
}
