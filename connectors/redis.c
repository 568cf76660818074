/* Redis connector (hiredis, blocking context on the connector thread).
 *
 * Rule: export() pipelines the batch (in chunks), reads every reply in
 * order and acknowledges the prefix of records whose replies were read and
 * are not errors. An error reply is a REJECT of that record (WRONGTYPE, ...)
 * unless it says the server is only temporarily unable (LOADING, BUSY,
 * READONLY, OOM, NOAUTH, MOVED ...): then RETRY. A lost connection or a
 * timeout is a RETRY. Examples, for a batch of 4 XADDs:
 *   replies id id id id          -> OK, acked 4
 *   replies id id WRONGTYPE id   -> REJECT, acked 2; #3 was written and is
 *     remembered, so the engine's re-offer from #3 does not write it twice
 *   replies id <connection lost> -> RETRY, acked 1
 *
 * Status events append to a stream and update the state hash
 * <hash_prefix><clientId> with a Lua script that applies the status-state
 * rule: an event replaces the state only when its seq is greater than the
 * stored one and it is a connect or comes from the stored channel. So late
 * or repeated events never overwrite newer state:
 *   state {seq 7, channel B, online 1}, event tcpclean seq 5 channel A -> unchanged
 *   state {seq 7, channel B, online 1}, event tcpclean seq 9 channel A -> unchanged
 *   state {seq 7, channel B, online 1}, event tcpclean seq 9 channel B -> online 0
 *
 * Commands are encoded by the connector itself, every argument a counted
 * string (topic, client and payload data never become command text), and
 * pipelined with two chunks in flight (see the export section).
 *
 * Inbound rules (source_*): a stream read through a consumer group, acked
 * after the broker committed (at least once), or a Pub/Sub channel (best
 * effort); each on its own connection. See the source section's comment. */
#include "connector.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../rules/template.h"

enum {
    REDIS_CONNECT_TIMEOUT_MS = 2000,
    REDIS_COMMAND_TIMEOUT_MS = 5000,
    REDIS_CHUNK = 1000, /* source: entry ids per XACK */
    /* export: records and bytes per chunk written at once (a chunk ends
     * after the record that crosses the byte limit), chunks in flight, and
     * the send buffer kept between batches */
    REDIS_SEND_RECORDS = 1000,
    REDIS_SEND_BYTES = 256 * 1024,
    REDIS_WINDOW = 2,
    REDIS_SEND_KEEP = 4 * 1024 * 1024,
};

static const struct kv_key redis_settings[] = {
    {"url", KV_SCALAR, KV_REQUIRED,
     "redis://[[user]:password@]host[:port][/db] or unix:///path[?db=N&password=P]"},
    {"connect_timeout_ms", KV_SCALAR, 0, "TCP connect timeout (default 2000)"},
    {"command_timeout_ms", KV_SCALAR, 0,
     "socket read/write timeout; past it the connection is dropped (default 5000)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key redis_outbound_keys[] = {
    {"mode", KV_SCALAR, 0, "stream (default) | publish | lpush"},
    {"key", KV_SCALAR, KV_REQUIRED, "stream, channel or list name (template)"},
    {"maxlen", KV_SCALAR, 0, "stream only: XADD MAXLEN ~ N"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key redis_status_keys[] = {
    {"stream", KV_SCALAR, KV_REQUIRED, "stream of the events (template)"},
    {"hash_prefix", KV_SCALAR, 0, "state hash key prefix (default \"mqtt:presence:\")"},
    {"maxlen", KV_SCALAR, 0, "XADD MAXLEN ~ N on the events stream"},
    {NULL, KV_SCALAR, 0, NULL},
};

/* Inbound rules: r->options is the source without `connector`; the target
 * holds only `topic`, so r->target_options must be empty. */
static const struct kv_key redis_stream_source_keys[] = {
    {"mode", KV_SCALAR, 0, "stream (default) | pubsub"},
    {"stream", KV_SCALAR, KV_REQUIRED, "the stream to read"},
    {"group", KV_SCALAR, 0, "consumer group (default \"mqbridge\"), created at the start"},
    {"consumer", KV_SCALAR, 0, "consumer name, one per mqbridge instance (default \"mqbridge\")"},
    {"dead_letter_stream", KV_SCALAR, 0, "skipped entries are copied here, with `reason`"},
    {"claim_idle_ms", KV_SCALAR, 0,
     "claim other consumers' entries pending longer than this (default 30000; 0: never)"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key redis_pubsub_source_keys[] = {
    {"mode", KV_SCALAR, 0, "stream (default) | pubsub"},
    {"channel", KV_SCALAR, KV_REQUIRED, "the channel to subscribe to"},
    {NULL, KV_SCALAR, 0, NULL},
};

static const struct kv_key redis_no_keys[] = {{NULL, KV_SCALAR, 0, NULL}};

/* The status-state rule. seq values are decimal uint64 without leading
 * zeros, compared as strings (Lua numbers are doubles: 2^53 and up would
 * round). KEYS[1] the hash; ARGV: seq, eventType, channelId, clientIp,
 * since, clientId. Returns 1 when applied, 0 when the event is stale. */
static const char redis_state_script[] =
    "local seq, ev, ch = ARGV[1], ARGV[2], ARGV[3]\n"
    "local cur = redis.call('HMGET', KEYS[1], 'seq', 'channelId')\n"
    "if cur[1] then\n"
    "  local old = cur[1]\n"
    "  if #seq < #old or (#seq == #old and seq <= old) then return 0 end\n"
    "  if ev ~= 'connect' and ch ~= cur[2] then return 0 end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'clientId', ARGV[6], 'online', ev == 'connect' and '1' or '0',\n"
    "  'channelId', ch, 'clientIp', ARGV[4], 'since', ARGV[5], 'seq', seq, 'eventType', ev)\n"
    "return 1\n";

enum redis_mode { REDIS_STREAM, REDIS_PUBLISH, REDIS_LPUSH };

/* What happened to one record of a batch. */
enum redis_outcome {
    OUT_OK = 0,
    OUT_STATE,  /* status event appended; state update still to do (no script) */
    OUT_REJECT, /* refused for good */
    OUT_RETRY,  /* not done; worth a retry */
};

enum redis_source_mode { SOURCE_STREAM, SOURCE_PUBSUB };

/* A compiled inbound rule (see the source section). */
struct redis_inbound {
    enum redis_source_mode mode;
    char *stream, *group, *consumer; /* stream mode */
    char *dead_letter;               /* stream mode; NULL when not configured */
    char *channel;                   /* pubsub mode */
    uint64_t claim_idle_ms;          /* 0: never claim */
};

struct redis_target {
    enum rule_type type;
    enum redis_mode mode;
    struct template *key;    /* outbound key or status stream */
    char *hash_prefix;       /* status only */
    char maxlen[24];         /* "" when unbounded */
    struct redis_inbound in; /* inbound only */
};

struct redis_url {
    char *host; /* TCP, or NULL */
    int port;
    char *path; /* unix socket, or NULL */
    char *user, *password;
    unsigned db;
};

struct redis_conn {
    char *name;
    struct redis_url url;
    int connect_timeout_ms, command_timeout_ms;
    redisContext *ctx; /* NULL while closed */
    char sha[41];      /* of redis_state_script; "" when not loaded */
    /* See the file comment: records after a rejected one that were written
     * already, by seqno. */
    bool skip_valid;
    uint64_t skip_first, skip_last;
    unsigned char *out; /* enum redis_outcome per record of the batch */
    size_t out_cap;
    struct buf key;  /* rendering scratch */
    struct buf wbuf; /* commands to send (see the export section) */
};

static struct redis_conn *redis_of(struct connector *c)
{
    return (struct redis_conn *)(void *)c;
}

/* ---- url ----------------------------------------------------------------- */

static int redis_hex(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Copy s[0..len) with %XX decoded; NULL on a bad escape or no memory. */
static char *redis_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 >= len || (hi = redis_hex(s[i + 1])) < 0 || (lo = redis_hex(s[i + 2])) < 0) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

static void redis_url_clear(struct redis_url *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof *u);
}

/* "[user]:password@" before the host. */
static const char *redis_url_userinfo(const char *s, struct redis_url *u, const char **why)
{
    const char *at = strchr(s, '@'), *slash = strchr(s, '/');
    if (at == NULL || (slash != NULL && slash < at))
        return s;
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (colon == NULL) {
        *why = "credentials must be ':password@' or 'user:password@'";
        return NULL;
    }
    if (colon > s && (u->user = redis_decode(s, (size_t)(colon - s))) == NULL) {
        *why = "bad %-escape in the user name";
        return NULL;
    }
    if ((u->password = redis_decode(colon + 1, (size_t)(at - colon - 1))) == NULL) {
        *why = "bad %-escape in the password";
        return NULL;
    }
    return at + 1;
}

static int redis_url_number(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    *out = strtoul(s, &end, 10);
    return errno != 0 || *end != '\0' || *out > max ? -1 : 0;
}

/* host[:port][/db], host possibly "[v6]" */
static int redis_url_tcp(const char *s, struct redis_url *u, const char **why)
{
    const char *slash = strchr(s, '/'), *end = slash ? slash : s + strlen(s);
    const char *hs = s, *he, *port = NULL;
    unsigned long v;
    if (*s == '[') {
        hs = s + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (he == NULL)
            return *why = "unclosed '[' in the host", -1;
        if (he + 1 < end && he[1] != ':')
            return *why = "expected ':' after ']'", -1;
        port = he + 1 < end ? he + 2 : NULL;
    } else {
        he = memchr(s, ':', (size_t)(end - s));
        port = he ? he + 1 : NULL;
        he = he ? he : end;
    }
    if (he == hs || (u->host = strndup(hs, (size_t)(he - hs))) == NULL)
        return *why = "missing host", -1;
    u->port = 6379;
    if (port != NULL) {
        char num[8] = "";
        if ((size_t)(end - port) >= sizeof num)
            return *why = "bad port", -1;
        memcpy(num, port, (size_t)(end - port));
        if (redis_url_number(num, 65535, &v) != 0 || v == 0)
            return *why = "bad port", -1;
        u->port = (int)v;
    }
    if (slash != NULL && slash[1] != '\0') {
        if (redis_url_number(slash + 1, INT_MAX, &v) != 0)
            return *why = "bad database number after '/'", -1;
        u->db = (unsigned)v;
    }
    return 0;
}

/* One "name=value" of a unix:// query: db, user or password. */
static int redis_url_param(const char *p, size_t len, struct redis_url *u, const char **why)
{
    const char *eq = memchr(p, '=', len);
    size_t nlen = eq ? (size_t)(eq - p) : len, vlen = eq ? len - nlen - 1 : 0;
    char **dst = NULL;
    if (eq != NULL && nlen == 2 && strncmp(p, "db", 2) == 0) {
        char num[16] = "";
        unsigned long v;
        if (vlen >= sizeof num)
            return *why = "bad db=", -1;
        memcpy(num, eq + 1, vlen);
        if (redis_url_number(num, INT_MAX, &v) != 0)
            return *why = "bad db=", -1;
        u->db = (unsigned)v;
        return 0;
    }
    if (eq != NULL && nlen == 4 && strncmp(p, "user", 4) == 0)
        dst = &u->user;
    else if (eq != NULL && nlen == 8 && strncmp(p, "password", 8) == 0)
        dst = &u->password;
    if (dst == NULL)
        return *why = "unknown query parameter (db, user, password)", -1;
    free(*dst);
    if ((*dst = redis_decode(eq + 1, vlen)) == NULL)
        return *why = "bad %-escape in a query parameter", -1;
    return 0;
}

/* unix:///path[?db=N][&user=U][&password=P] */
static int redis_url_unix(const char *s, struct redis_url *u, const char **why)
{
    const char *q = strchr(s, '?');
    if (*s != '/')
        return *why = "unix:// needs an absolute path", -1;
    if ((u->path = strndup(s, q ? (size_t)(q - s) : strlen(s))) == NULL)
        return *why = "out of memory", -1;
    while (q != NULL) {
        const char *p = q + 1;
        q = strchr(p, '&');
        if (redis_url_param(p, q ? (size_t)(q - p) : strlen(p), u, why) != 0)
            return -1;
    }
    return 0;
}

/* 0, or -1 with *why (never quoting the URL: it may hold a password). */
static int redis_url_parse(const char *url, struct redis_url *u, const char **why)
{
    memset(u, 0, sizeof *u);
    if (strncmp(url, "unix://", 7) == 0)
        return redis_url_unix(url + 7, u, why);
    if (strncmp(url, "rediss://", 9) == 0)
        return *why = "TLS (rediss://) is not supported", -1;
    if (strncmp(url, "redis://", 8) != 0)
        return *why = "expected redis://... or unix://...", -1;
    const char *rest = redis_url_userinfo(url + 8, u, why);
    return rest == NULL ? -1 : redis_url_tcp(rest, u, why);
}

/* ---- configuration (engine loop) ---------------------------------------- */

static int redis_timeout(const struct kvmap *settings, const char *key, int def, int *out,
                         char *err, size_t errlen)
{
    uint64_t v = (uint64_t)def;
    const struct kv *item = kv_find(settings, key);
    if (item != NULL && kv_uint(item, 1, 600000, &v) != 0)
        return kv_error(err, errlen, settings, item, "%s: expected 1..600000", key);
    *out = (int)v;
    return 0;
}

static void redis_destroy(struct connector *c);

static int redis_create(const char *name, const struct kvmap *settings, struct connector **out,
                        char *err, size_t errlen)
{
    char where[128];
    const char *why = NULL;
    struct redis_conn *rc = NULL;
    *out = NULL;
    snprintf(where, sizeof where, "connector '%s'", name);
    if (kv_check(settings, redis_settings, where, err, errlen) != 0)
        goto fail;
    if ((rc = calloc(1, sizeof *rc)) == NULL || (rc->name = strdup(name)) == NULL) {
        kv_error(err, errlen, settings, NULL, "%s: out of memory", where);
        goto fail;
    }
    const struct kv *url = kv_find(settings, "url");
    if (redis_url_parse(url->value, &rc->url, &why) != 0) {
        kv_error(err, errlen, settings, url, "%s: url: %s", where, why);
        goto fail;
    }
    if (redis_timeout(settings, "connect_timeout_ms", REDIS_CONNECT_TIMEOUT_MS,
                      &rc->connect_timeout_ms, err, errlen) != 0 ||
        redis_timeout(settings, "command_timeout_ms", REDIS_COMMAND_TIMEOUT_MS,
                      &rc->command_timeout_ms, err, errlen) != 0)
        goto fail;
    *out = (struct connector *)(void *)rc;
    return 0;
fail:
    redis_destroy((struct connector *)(void *)rc);
    return -1;
}

static void redis_close(struct connector *c);

static void redis_destroy(struct connector *c)
{
    struct redis_conn *rc = redis_of(c);
    if (rc == NULL)
        return;
    redis_close(c);
    redis_url_clear(&rc->url);
    buf_free(&rc->key);
    buf_free(&rc->wbuf);
    free(rc->out);
    free(rc->name);
    free(rc);
}

/* ---- rules (engine loop) ------------------------------------------------ */

static int redis_compile_mode(const struct rule *r, struct redis_target *t, char *err,
                              size_t errlen)
{
    static const char *const names[] = {"stream", "publish", "lpush"};
    const struct kv *item = kv_find(r->options, "mode");
    t->mode = REDIS_STREAM;
    if (item == NULL)
        return 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(item->value, names[i]) == 0) {
            t->mode = (enum redis_mode)i;
            return 0;
        }
    return kv_error(err, errlen, r->options, item,
                    "rule '%s': mode '%s': expected stream, publish or lpush", r->name,
                    item->value);
}

static int redis_compile_fields(const struct rule *r, struct redis_target *t, char *err,
                                size_t errlen)
{
    char where[96];
    uint64_t maxlen;
    const char *keyname = r->type == RULE_STATUS ? "stream" : "key";
    const struct kv *item = kv_find(r->options, keyname);
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (template_compile_kv(item, where, &t->key, err, errlen) != 0)
        return -1;
    if ((item = kv_find(r->options, "maxlen")) != NULL) {
        if (t->mode != REDIS_STREAM)
            return kv_error(err, errlen, r->options, item,
                            "rule '%s': maxlen applies to mode stream only", r->name);
        if (kv_uint(item, 1, UINT64_MAX, &maxlen) != 0)
            return kv_error(err, errlen, r->options, item,
                            "rule '%s': maxlen: expected a positive integer", r->name);
        snprintf(t->maxlen, sizeof t->maxlen, "%" PRIu64, maxlen);
    }
    if (r->type == RULE_STATUS &&
        (t->hash_prefix = strdup(kv_str(r->options, "hash_prefix", "mqtt:presence:"))) == NULL)
        return kv_error(err, errlen, r->options, NULL, "rule '%s': out of memory", r->name);
    return 0;
}

/* A non-empty scalar option, copied; *out stays NULL when absent and def
 * is NULL. */
static int redis_option_str(const struct rule *r, const char *key, const char *def, char **out,
                            char *err, size_t errlen)
{
    const struct kv *item = kv_find(r->options, key);
    if (item != NULL && item->value[0] == '\0')
        return kv_error(err, errlen, r->options, item, "rule '%s': %s: must not be empty", r->name,
                        key);
    const char *v = item != NULL ? item->value : def;
    if (v != NULL && (*out = strdup(v)) == NULL)
        return kv_error(err, errlen, r->options, item, "rule '%s': out of memory", r->name);
    return 0;
}

static int redis_compile_stream_source(const struct rule *r, struct redis_inbound *in, char *err,
                                       size_t errlen)
{
    const struct kv *item = kv_find(r->options, "claim_idle_ms");
    if (redis_option_str(r, "stream", NULL, &in->stream, err, errlen) != 0 ||
        redis_option_str(r, "group", "mqbridge", &in->group, err, errlen) != 0 ||
        redis_option_str(r, "consumer", "mqbridge", &in->consumer, err, errlen) != 0 ||
        redis_option_str(r, "dead_letter_stream", NULL, &in->dead_letter, err, errlen) != 0)
        return -1;
    if (in->dead_letter != NULL && strcmp(in->dead_letter, in->stream) == 0)
        return kv_error(err, errlen, r->options, kv_find(r->options, "dead_letter_stream"),
                        "rule '%s': dead_letter_stream: must be another stream than '%s'", r->name,
                        in->stream);
    in->claim_idle_ms = 30000;
    if (item != NULL && kv_uint(item, 0, INT32_MAX, &in->claim_idle_ms) != 0)
        return kv_error(err, errlen, r->options, item, "rule '%s': claim_idle_ms: expected 0..%d",
                        r->name, INT32_MAX);
    return 0;
}

/* Inbound: the source's keys by mode; nothing but `topic` in the target. */
static int redis_compile_inbound(const struct rule *r, struct redis_inbound *in, char *err,
                                 size_t errlen)
{
    char where[128], twhere[140];
    const struct kv *item = kv_find(r->options, "mode");
    if (item != NULL && strcmp(item->value, "stream") != 0 && strcmp(item->value, "pubsub") != 0)
        return kv_error(err, errlen, r->options, item,
                        "rule '%s': mode '%s': expected stream or pubsub", r->name, item->value);
    in->mode = item != NULL && strcmp(item->value, "pubsub") == 0 ? SOURCE_PUBSUB : SOURCE_STREAM;
    snprintf(where, sizeof where, "rule '%s' (mode %s)", r->name,
             in->mode == SOURCE_PUBSUB ? "pubsub" : "stream");
    snprintf(twhere, sizeof twhere, "rule '%s': target", r->name);
    if (kv_check(r->options,
                 in->mode == SOURCE_PUBSUB ? redis_pubsub_source_keys : redis_stream_source_keys,
                 where, err, errlen) != 0 ||
        kv_check(r->target_options, redis_no_keys, twhere, err, errlen) != 0)
        return -1;
    if (in->mode == SOURCE_PUBSUB)
        return redis_option_str(r, "channel", NULL, &in->channel, err, errlen);
    return redis_compile_stream_source(r, in, err, errlen);
}

static void redis_release(struct connector *c, void *compiled);

static int redis_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                         size_t errlen)
{
    char where[128];
    struct redis_target *t = NULL;
    *compiled = NULL;
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (r->type != RULE_INBOUND &&
        kv_check(r->options, r->type == RULE_STATUS ? redis_status_keys : redis_outbound_keys,
                 where, err, errlen) != 0)
        goto fail;
    if ((t = calloc(1, sizeof *t)) == NULL) {
        kv_error(err, errlen, r->options, NULL, "%s: out of memory", where);
        goto fail;
    }
    t->type = r->type;
    if (r->type == RULE_INBOUND) {
        if (redis_compile_inbound(r, &t->in, err, errlen) != 0)
            goto fail;
    } else if ((r->type == RULE_OUTBOUND && redis_compile_mode(r, t, err, errlen) != 0) ||
               redis_compile_fields(r, t, err, errlen) != 0) {
        goto fail;
    }
    *compiled = t;
    return 0;
fail:
    redis_release(c, t);
    return -1;
}

static void redis_release(struct connector *c, void *compiled)
{
    struct redis_target *t = compiled;
    if (t == NULL)
        return;
    template_free(t->key);
    free(t->hash_prefix);
    free(t->in.stream);
    free(t->in.group);
    free(t->in.consumer);
    free(t->in.dead_letter);
    free(t->in.channel);
    free(t);
}

/* ---- connection (connector thread) -------------------------------------- */

static struct timeval redis_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* The server may be busy or failing over: these error replies are worth a
 * retry. Everything else refuses the record itself. */
static bool redis_reply_transient(const char *s)
{
    static const char *const prefixes[] = {
        "LOADING", "BUSY",   "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "OOM",
        "NOAUTH",  "NOPERM", "MISCONF",    "MOVED",    "ASK ",     "NOSCRIPT"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(s, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

/* One command on ctx, waiting for its reply (setup calls). 0, or -1 with
 * err ("redis '<name>': <command>: <why>"); *reply is the reply (caller
 * frees) on 0. */
static int redis_call(const char *name, redisContext *ctx, int argc, const char **argv,
                      const size_t *lens, redisReply **reply, char *err, size_t errlen)
{
    *reply = redisCommandArgv(ctx, argc, argv, lens);
    if (*reply == NULL) {
        snprintf(err, errlen, "redis '%s': %s: %s", name, argv[0],
                 ctx->errstr[0] ? ctx->errstr : "timeout");
        return -1;
    }
    if ((*reply)->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis '%s': %s: %s", name, argv[0], (*reply)->str);
        freeReplyObject(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

static int redis_login(const struct redis_conn *rc, redisContext *ctx, char *err, size_t errlen)
{
    redisReply *rep = NULL;
    char db[16];
    if (rc->url.password != NULL) {
        const char *argv[3] = {"AUTH"};
        int argc = 1;
        if (rc->url.user != NULL)
            argv[argc++] = rc->url.user;
        argv[argc++] = rc->url.password;
        if (redis_call(rc->name, ctx, argc, argv, NULL, &rep, err, errlen) != 0)
            return -1; /* the reply names no password */
        freeReplyObject(rep);
    }
    if (rc->url.db != 0) {
        snprintf(db, sizeof db, "%u", rc->url.db);
        const char *argv[2] = {"SELECT", db};
        if (redis_call(rc->name, ctx, 2, argv, NULL, &rep, err, errlen) != 0)
            return -1;
        freeReplyObject(rep);
    }
    return 0;
}

/* A new connection: connect, socket options, AUTH, SELECT. Reads only the
 * settings, which are immutable after create, so the sink thread and the
 * import threads may each call it for connections of their own. NULL with
 * err on failure (naming the host and port, never the URL). */
static redisContext *redis_connect(const struct redis_conn *rc, char *err, size_t errlen)
{
    const struct redis_url *u = &rc->url;
    struct timeval ctv = redis_tv(rc->connect_timeout_ms);
    redisContext *ctx = u->path ? redisConnectUnixWithTimeout(u->path, ctv)
                                : redisConnectWithTimeout(u->host, u->port, ctv);
    if (ctx == NULL || ctx->err) {
        char where[300];
        if (u->path != NULL)
            snprintf(where, sizeof where, "%s", u->path);
        else
            snprintf(where, sizeof where, "%s:%d", u->host, u->port);
        snprintf(err, errlen, "redis '%s': cannot connect to %s: %s", rc->name, where,
                 ctx ? ctx->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(ctx, redis_tv(rc->command_timeout_ms)) != REDIS_OK ||
        (u->path == NULL && redisEnableKeepAlive(ctx) != REDIS_OK)) {
        snprintf(err, errlen, "redis '%s': socket options: %s", rc->name, ctx->errstr);
        goto fail;
    }
    if (redis_login(rc, ctx, err, errlen) != 0)
        goto fail;
    return ctx;
fail:
    if (ctx != NULL)
        redisFree(ctx);
    return NULL;
}

/* SCRIPT LOAD the state script; rc->sha stays "" when refused. */
static int redis_load_script(struct redis_conn *rc, char *err, size_t errlen)
{
    const char *argv[3] = {"SCRIPT", "LOAD", redis_state_script};
    redisReply *rep = NULL;
    rc->sha[0] = '\0';
    rep = redisCommandArgv(rc->ctx, 3, argv, NULL);
    if (rep == NULL) {
        snprintf(err, errlen, "redis '%s': SCRIPT LOAD: %s", rc->name, rc->ctx->errstr);
        return -1;
    }
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(rc->sha, rep->str, 41);
    else
        log_warn("redis '%s': SCRIPT LOAD refused (%s): status rules will fail", rc->name,
                 rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    freeReplyObject(rep);
    return 0;
}

static int redis_open(struct connector *c, char *err, size_t errlen)
{
    struct redis_conn *rc = redis_of(c);
    if (rc->ctx != NULL)
        return 0;
    if ((rc->ctx = redis_connect(rc, err, errlen)) == NULL ||
        redis_load_script(rc, err, errlen) != 0) {
        redis_close(c);
        return CONNECTOR_RETRY;
    }
    return 0;
}

static void redis_close(struct connector *c)
{
    struct redis_conn *rc = redis_of(c);
    if (rc == NULL)
        return;
    if (rc->ctx != NULL)
        redisFree(rc->ctx);
    rc->ctx = NULL;
    rc->skip_valid = false;
}

/* ---- export (connector thread) ------------------------------------------
 *
 * Commands are encoded here, straight into one buffer in the protocol's
 * own form: "*<argc>\r\n", then "$<len>\r\n<bytes>\r\n" per argument.
 * Every argument is a counted string, so topic, client and payload data
 * are never parsed as command text (payloads are binary safe). A chunk of
 * up to REDIS_SEND_RECORDS records (REDIS_SEND_BYTES bytes) is written
 * with blocking send()s, and up to REDIS_WINDOW chunks are in flight:
 * chunk k+1 is encoded and written before the replies of chunk k are
 * read, so encoding, the server's work and reading overlap. For a batch
 * of 2,500 with chunks of 1,000 and a window of 2:
 *   send 0..999, send 1000..1999, read 0..999, send 2000..2499,
 *   read 1000..1999, read 2000..2499
 * The server never blocks on us: it keeps the replies it cannot send yet.
 * Replies are read in order. After a failure nothing more is written, but
 * the chunks in flight are read to the end (the pipeline stays in step,
 * and a REJECT knows which later records were written). */

/* The room a command of `args` arguments needs beyond the bytes of its
 * variable arguments: per argument '$', up to 20 digits and 2 x CRLF, the
 * same again for the "*<argc>" header, and 128 for the literal arguments
 * (names, numbers, the script's sha) of any command here. */
#define RESP_ROOM(args) (((args) + 1) * 25 + 128)

/* Decimal digits of v at p; returns the end. */
static char *resp_digits(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(p, tmp + sizeof tmp - n, n);
    return p + n;
}

static char *resp_crlf(char *p)
{
    p[0] = '\r';
    p[1] = '\n';
    return p + 2;
}

/* "*<argc>\r\n": a command of argc arguments follows. */
static char *resp_array(char *p, unsigned argc)
{
    *p++ = '*';
    return resp_crlf(resp_digits(p, argc));
}

static char *resp_arg(char *p, const void *s, size_t len)
{
    *p++ = '$';
    p = resp_crlf(resp_digits(p, len));
    if (len > 0)
        memcpy(p, s, len);
    return resp_crlf(p + len);
}

static char *resp_str(char *p, const char *s)
{
    return resp_arg(p, s, strlen(s));
}

static char *resp_uint(char *p, uint64_t v)
{
    char tmp[20];
    return resp_arg(p, tmp, (size_t)(resp_digits(tmp, v) - tmp));
}

static char *resp_int(char *p, int64_t v)
{
    char tmp[21], *e = tmp;
    if (v < 0)
        *e++ = '-';
    e = resp_digits(e, v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
    return resp_arg(p, tmp, (size_t)(e - tmp));
}

/* 16 lowercase hex digits, as "%016" PRIx64. */
static char *resp_hex16(char *p, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(p, "$16\r\n", 5);
    p += 5;
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = hex[v & 15];
    return resp_crlf(p + 16);
}

/* A string literal as an argument (its length known at compile time). */
#define RESP_LIT(p, s) resp_arg((p), (s), sizeof(s) - 1)

/* Room for `bytes` more in the send buffer: where to write, or NULL (no
 * memory). redis_end() sets the new length. */
static char *redis_room(struct redis_conn *rc, size_t bytes)
{
    if (buf_reserve(&rc->wbuf, bytes) != 0)
        return NULL;
    return (char *)rc->wbuf.data + rc->wbuf.len;
}

static void redis_end(struct redis_conn *rc, const char *p)
{
    rc->wbuf.len = (size_t)((const uint8_t *)p - rc->wbuf.data);
}

static const char *redis_s(const char *s)
{
    return s != NULL ? s : "";
}

static int redis_render(struct buf *b, const struct template *t, const struct export_record *rec)
{
    const struct template_input in = export_record_input(rec);
    buf_reset(b);
    return template_render(t, &in, b);
}

/* XADD key [MAXLEN ~ N] *, then `fields` field-value pairs follow. */
static char *redis_xadd_head(char *p, unsigned fields, const struct buf *key, const char *maxlen)
{
    p = resp_array(p, 3 + (maxlen[0] != '\0' ? 3 : 0) + 2 * fields);
    p = RESP_LIT(p, "XADD");
    p = resp_arg(p, key->data, key->len);
    if (maxlen[0] != '\0') {
        p = RESP_LIT(p, "MAXLEN");
        p = RESP_LIT(p, "~");
        p = resp_str(p, maxlen);
    }
    return RESP_LIT(p, "*");
}

/* The command of an outbound message:
 *   XADD key [MAXLEN ~ N] * msgid <16 hex> topic .. clientid .. qos ..
 *     timestamp <ms> payload <bytes>
 *   PUBLISH key <payload> / LPUSH key <payload>
 * 0 or -1 (no memory; nothing appended). */
static int redis_encode_message(struct redis_conn *rc, const struct redis_target *t,
                                const struct export_record *rec)
{
    const char *topic = redis_s(rec->topic), *cid = redis_s(rec->client_id);
    size_t tlen = strlen(topic), clen = strlen(cid);
    if (redis_render(&rc->key, t->key, rec) != 0)
        return -1;
    char *p = redis_room(rc, RESP_ROOM(18) + rc->key.len + sizeof t->maxlen + tlen + clen +
                                 rec->payload_len);
    if (p == NULL)
        return -1;
    if (t->mode == REDIS_STREAM) {
        p = redis_xadd_head(p, 6, &rc->key, t->maxlen);
        p = RESP_LIT(p, "msgid");
        p = resp_hex16(p, rec->msg_id);
        p = RESP_LIT(p, "topic");
        p = resp_arg(p, topic, tlen);
        p = RESP_LIT(p, "clientid");
        p = resp_arg(p, cid, clen);
        p = RESP_LIT(p, "qos");
        p = resp_uint(p, rec->qos);
        p = RESP_LIT(p, "timestamp");
        p = resp_int(p, rec->time_ms);
        p = RESP_LIT(p, "payload");
    } else {
        p = resp_array(p, 3);
        p = t->mode == REDIS_PUBLISH ? RESP_LIT(p, "PUBLISH") : RESP_LIT(p, "LPUSH");
        p = resp_arg(p, rc->key.data, rc->key.len);
    }
    p = resp_arg(p, rec->payload, rec->payload_len);
    redis_end(rc, p);
    return 0;
}

/* EVALSHA <sha> 1 <hash_prefix><clientId> seq eventType channelId clientIp
 * time clientId: the state rule for one status event. 0 or -1 (no
 * memory; nothing appended). */
static int redis_encode_state(struct redis_conn *rc, const struct redis_target *t,
                              const struct export_record *rec)
{
    const char *cid = redis_s(rec->client_id), *ev = redis_s(rec->event_type);
    const char *ch = redis_s(rec->channel_id), *ip = redis_s(rec->client_ip);
    size_t plen = strlen(t->hash_prefix), clen = strlen(cid), elen = strlen(ev), chlen = strlen(ch),
           iplen = strlen(ip);
    char *p = redis_room(rc, RESP_ROOM(10) + plen + 2 * clen + elen + chlen + iplen);
    if (p == NULL)
        return -1;
    p = resp_array(p, 10);
    p = RESP_LIT(p, "EVALSHA");
    p = resp_arg(p, rc->sha, 40);
    p = RESP_LIT(p, "1");
    *p++ = '$';
    p = resp_crlf(resp_digits(p, plen + clen));
    memcpy(p, t->hash_prefix, plen);
    memcpy(p + plen, cid, clen);
    p = resp_crlf(p + plen + clen);
    p = resp_uint(p, rec->msg_id);
    p = resp_arg(p, ev, elen);
    p = resp_arg(p, ch, chlen);
    p = resp_arg(p, ip, iplen);
    p = resp_int(p, rec->time_ms);
    p = resp_arg(p, cid, clen);
    redis_end(rc, p);
    return 0;
}

/* XADD <stream> [MAXLEN ~ N] * clientId .. time .. eventType ..
 * channelId .. clientIp .. seq .. body <the JSON event>, then, when the
 * script is loaded, its EVALSHA; without a script the record is left
 * OUT_STATE (one reply). So a status record has two replies exactly when
 * rc->sha is set, which does not change while chunks are in flight
 * (redis_load_script runs at open and in redis_state_fixup, after the
 * pipeline is drained). 0 or -1 (no memory; the caller drops what was
 * appended). */
static int redis_encode_status(struct redis_conn *rc, const struct redis_target *t,
                               const struct export_record *rec, unsigned char *out)
{
    const char *cid = redis_s(rec->client_id), *ev = redis_s(rec->event_type);
    const char *ch = redis_s(rec->channel_id), *ip = redis_s(rec->client_ip);
    size_t clen = strlen(cid), elen = strlen(ev), chlen = strlen(ch), iplen = strlen(ip);
    if (redis_render(&rc->key, t->key, rec) != 0)
        return -1;
    char *p = redis_room(rc, RESP_ROOM(20) + rc->key.len + sizeof t->maxlen + clen + elen + chlen +
                                 iplen + rec->payload_len);
    if (p == NULL)
        return -1;
    p = redis_xadd_head(p, 7, &rc->key, t->maxlen);
    p = RESP_LIT(p, "clientId");
    p = resp_arg(p, cid, clen);
    p = RESP_LIT(p, "time");
    p = resp_int(p, rec->time_ms);
    p = RESP_LIT(p, "eventType");
    p = resp_arg(p, ev, elen);
    p = RESP_LIT(p, "channelId");
    p = resp_arg(p, ch, chlen);
    p = RESP_LIT(p, "clientIp");
    p = resp_arg(p, ip, iplen);
    p = RESP_LIT(p, "seq");
    p = resp_uint(p, rec->msg_id);
    p = RESP_LIT(p, "body");
    p = resp_arg(p, rec->payload, rec->payload_len);
    redis_end(rc, p);
    if (rc->sha[0] == '\0') {
        *out = OUT_STATE;
        return 0;
    }
    return redis_encode_state(rc, t, rec);
}

/* Notes the failure of recs[i]; err keeps the earliest one's reason. */
static void redis_fail(struct redis_conn *rc, struct export_record *const *recs, size_t i,
                       enum redis_outcome o, const char *why, size_t *first, char *err,
                       size_t errlen)
{
    rc->out[i] = (unsigned char)o;
    if (i >= *first)
        return;
    *first = i;
    snprintf(err, errlen, "redis '%s': record %zu (rule '%s', client '%s'): %s", rc->name, i,
             recs[i]->rule ? recs[i]->rule->name : "?",
             recs[i]->client_id ? recs[i]->client_id : "", why);
}

/* The connection is unusable after an I/O error or timeout: recs[i] is
 * the first record whose replies were not all read. */
static void redis_lost(struct redis_conn *rc, struct export_record *const *recs, size_t i,
                       size_t *first, char *err, size_t errlen)
{
    char why[256];
    snprintf(why, sizeof why, "connection lost: %s",
             rc->ctx->errstr[0] ? rc->ctx->errstr : "timeout");
    redis_fail(rc, recs, i, OUT_RETRY, why, first, err, errlen);
    redisFree(rc->ctx);
    rc->ctx = NULL;
}

/* Writes the send buffer whole and empties it. The socket is blocking,
 * with command_timeout_ms as its send timeout. 0, or -1 with the reason
 * in the context's errstr ("" for a timeout). */
static int redis_send(struct redis_conn *rc)
{
    const uint8_t *p = rc->wbuf.data;
    size_t left = rc->wbuf.len;
    while (left > 0) {
        ssize_t w = send(rc->ctx->fd, p, left, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc->ctx->err = REDIS_ERR_IO;
            rc->ctx->errstr[0] = '\0';
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                strerror_r(errno, rc->ctx->errstr, sizeof rc->ctx->errstr);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    buf_reset(&rc->wbuf);
    return 0;
}

/* Reads one reply for recs[i]. 0, or -1 when the connection is lost. A
 * NOSCRIPT reply to EVALSHA (state) leaves a record whose XADD succeeded
 * OUT_STATE. */
static int redis_read_reply(struct redis_conn *rc, struct export_record *const *recs, size_t i,
                            bool state, size_t *first, char *err, size_t errlen)
{
    redisReply *rep = NULL;
    if (redisGetReply(rc->ctx, (void **)&rep) != REDIS_OK || rep == NULL) {
        redis_lost(rc, recs, i, first, err, errlen);
        return -1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (state && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
            if (rc->out[i] == OUT_OK)
                rc->out[i] = OUT_STATE;
        } else {
            redis_fail(rc, recs, i, redis_reply_transient(rep->str) ? OUT_RETRY : OUT_REJECT,
                       rep->str, first, err, errlen);
        }
    }
    freeReplyObject(rep);
    return 0;
}

/* Appends the command(s) of recs[i]. 0, or -1 with recs[i] marked failed
 * and nothing of it appended. */
static int redis_encode(struct redis_conn *rc, struct export_record *const *recs, size_t i,
                        size_t *first, char *err, size_t errlen)
{
    const struct export_record *rec = recs[i];
    const struct redis_target *t = rec->rule ? rec->rule->compiled : NULL;
    size_t mark = rc->wbuf.len;
    if (t == NULL || t->type == RULE_INBOUND ||
        (rec->kind == RECORD_STATUS) != (t->type == RULE_STATUS)) {
        redis_fail(rc, recs, i, OUT_REJECT, "the record does not match its rule's target", first,
                   err, errlen);
        return -1;
    }
    int r = rec->kind == RECORD_STATUS ? redis_encode_status(rc, t, rec, &rc->out[i])
                                       : redis_encode_message(rc, t, rec);
    if (r != 0) {
        rc->wbuf.len = mark; /* a status record may have its XADD appended */
        redis_fail(rc, recs, i, OUT_RETRY, "out of memory", first, err, errlen);
        return -1;
    }
    return 0;
}

/* The records of one export() call on their way: [read, next) are
 * written, in chunks ending at ends[]. */
struct redis_pipe {
    size_t next; /* the first record not written */
    size_t read; /* the first record whose replies are not all read */
    bool stop;   /* a record failed: write nothing more */
    unsigned head, count;
    size_t ends[REDIS_WINDOW]; /* a ring, the oldest chunk at head */
};

/* Encodes and writes the next chunk. 0, or -1 when the connection was
 * lost (then closed). A record that cannot be encoded ends the chunk and
 * stops the pipeline. */
static int redis_pipe_send(struct redis_conn *rc, struct export_record *const *recs, size_t n,
                           struct redis_pipe *p, size_t *first, char *err, size_t errlen)
{
    size_t i = p->next, end = n - i > REDIS_SEND_RECORDS ? i + REDIS_SEND_RECORDS : n;
    buf_reset(&rc->wbuf);
    for (; i < end && rc->wbuf.len < REDIS_SEND_BYTES; i++)
        if (redis_encode(rc, recs, i, first, err, errlen) != 0) {
            p->stop = true;
            break;
        }
    if (i == p->next)
        return 0;
    if (redis_send(rc) != 0) {
        redis_lost(rc, recs, p->read, first, err, errlen);
        return -1;
    }
    p->ends[(p->head + p->count++) % REDIS_WINDOW] = i;
    p->next = i;
    return 0;
}

/* Reads the replies of the oldest chunk in flight. 0, or -1 when the
 * connection was lost (then closed); p->read is where it stopped. */
static int redis_pipe_read(struct redis_conn *rc, struct export_record *const *recs, size_t n,
                           struct redis_pipe *p, size_t *first, char *err, size_t errlen)
{
    size_t end = p->ends[p->head];
    bool eval = rc->sha[0] != '\0'; /* see redis_encode_status */
    for (; p->read < end; p->read++) {
        size_t i = p->read;
        if (redis_read_reply(rc, recs, i, false, first, err, errlen) != 0 ||
            (recs[i]->kind == RECORD_STATUS && eval &&
             redis_read_reply(rc, recs, i, true, first, err, errlen) != 0))
            return -1;
    }
    p->head = (p->head + 1) % REDIS_WINDOW;
    p->count--;
    p->stop = p->stop || *first < n;
    return 0;
}

/* Redo the state updates left OUT_STATE among recs[a..b) (every reply
 * read, nothing in flight): load the script (again), then EVALSHA them,
 * a chunk at a time. Applying them after later records is fine: the
 * state rule does not depend on the order in which events arrive. 0, or
 * -1 when the connection was lost (then closed). */
static int redis_state_fixup(struct redis_conn *rc, struct export_record *const *recs, size_t a,
                             size_t b, size_t *first, char *err, size_t errlen)
{
    char why[256];
    while (a < b && rc->out[a] != OUT_STATE)
        a++;
    if (a == b)
        return 0;
    if (redis_load_script(rc, why, sizeof why) != 0) {
        redis_lost(rc, recs, a, first, err, errlen);
        return -1;
    }
    for (size_t ca = a; ca < b; ca += REDIS_SEND_RECORDS) {
        size_t cb = b - ca > REDIS_SEND_RECORDS ? ca + REDIS_SEND_RECORDS : b;
        buf_reset(&rc->wbuf);
        for (size_t i = ca; i < cb; i++) {
            if (rc->out[i] != OUT_STATE)
                continue;
            if (rc->sha[0] == '\0')
                redis_fail(rc, recs, i, OUT_RETRY,
                           "cannot run the state script (SCRIPT LOAD refused)", first, err, errlen);
            else if (redis_encode_state(rc, recs[i]->rule->compiled, recs[i]) != 0)
                redis_fail(rc, recs, i, OUT_RETRY, "out of memory", first, err, errlen);
        }
        if (rc->wbuf.len > 0 && redis_send(rc) != 0) {
            size_t i = ca;
            while (rc->out[i] != OUT_STATE) /* wbuf is not empty: there is one */
                i++;
            redis_lost(rc, recs, i, first, err, errlen);
            return -1;
        }
        for (size_t i = ca; i < cb; i++) {
            if (rc->out[i] != OUT_STATE)
                continue;
            rc->out[i] = OUT_OK;
            if (redis_read_reply(rc, recs, i, false, first, err, errlen) != 0)
                return -1;
        }
    }
    return 0;
}

/* Leading records written already before a rejection (see skip_*). */
static size_t redis_skip_leading(struct redis_conn *rc, struct export_record *const *recs, size_t n)
{
    size_t s = 0;
    if (rc->skip_valid && n > 0 && recs[0]->seqno == rc->skip_first)
        while (s < n && recs[s]->seqno <= rc->skip_last &&
               (s == 0 || recs[s]->seqno > recs[s - 1]->seqno))
            s++;
    rc->skip_valid = false;
    return s;
}

/* recs[bad] was rejected: remember the records after it that Redis wrote,
 * up to `done` (the first record whose replies were not read, or not
 * written at all). */
static void redis_skip_remember(struct redis_conn *rc, struct export_record *const *recs,
                                size_t done, size_t bad)
{
    size_t j = bad + 1;
    while (j < done && rc->out[j] == OUT_OK && recs[j]->seqno > recs[j - 1]->seqno)
        j++;
    if (j > bad + 1) {
        rc->skip_valid = true;
        rc->skip_first = recs[bad + 1]->seqno;
        rc->skip_last = recs[j - 1]->seqno;
    }
}

static int redis_export(struct connector *c, struct export_record *const *recs, size_t n,
                        size_t *acked, char *err, size_t errlen)
{
    struct redis_conn *rc = redis_of(c);
    size_t first = n;
    int lost = 0;
    *acked = 0;
    if (rc->ctx == NULL) {
        snprintf(err, errlen, "redis '%s': not connected", rc->name);
        return CONNECTOR_RETRY;
    }
    if (n == 0)
        return CONNECTOR_OK;
    if (n > rc->out_cap) {
        unsigned char *o = realloc(rc->out, n);
        if (o == NULL) {
            snprintf(err, errlen, "redis '%s': out of memory", rc->name);
            return CONNECTOR_RETRY;
        }
        rc->out = o;
        rc->out_cap = n;
    }
    memset(rc->out, OUT_OK, n);
    size_t start = redis_skip_leading(rc, recs, n);
    struct redis_pipe p = {.next = start, .read = start};
    while (lost == 0) {
        if (!p.stop && p.next < n && p.count < REDIS_WINDOW)
            lost = redis_pipe_send(rc, recs, n, &p, &first, err, errlen);
        else if (p.count > 0)
            lost = redis_pipe_read(rc, recs, n, &p, &first, err, errlen);
        else
            break;
    }
    if (lost == 0)
        redis_state_fixup(rc, recs, start, p.read, &first, err, errlen);
    if (rc->wbuf.cap > REDIS_SEND_KEEP)
        buf_free(&rc->wbuf); /* after a huge record */
    *acked = first;
    if (first == n)
        return CONNECTOR_OK;
    if (rc->out[first] != OUT_REJECT)
        return CONNECTOR_RETRY;
    redis_skip_remember(rc, recs, p.read, first);
    return CONNECTOR_REJECT;
}

/* ---- source (the inbound rule's import thread) ---------------------------
 *
 * Rule: stream mode reads through a consumer group and acknowledges (XACK)
 * an entry only when the engine hands it back to source_ack, i.e. after the
 * broker committed it. Until then it stays in this consumer's pending list,
 * and a crash or a lost connection delivers it again. A fetch returns, in
 * this order of preference:
 *   1. this consumer's own pending entries, delivered before a crash or a
 *      reconnect and never acknowledged (XREADGROUP ... STREAMS s 0, paged
 *      by id), until that list has been read once;
 *   2. entries another consumer of the group left pending for more than
 *      claim_idle_ms, e.g. a crashed instance (XAUTOCLAIM, one page per
 *      fetch; a new scan claim_idle_ms after one ended);
 *   3. new entries (XREADGROUP ... BLOCK timeout_ms STREAMS s >).
 * Entry fields (names case-sensitive, the first occurrence counts):
 *   payload "on", mqttSecondTopic "lamp/1", qoslevel "0" -> <topic>/lamp/1, QoS 0
 *   payload "on", topic "lamp/2"                         -> <topic>/lamp/2, QoS 1
 *   payload "on", clientId "GID_x@@@d1"                  -> P2P to GID_x@@@d1
 *   mqttSecondTopic "lamp/3" (no payload)                -> <topic>/lamp/3, empty
 * mqttSecondTopic wins over topic; other fields are ignored (and kept in a
 * dead-letter copy). An entry that cannot become a record (deleted from the
 * stream while pending, a text field holding a NUL byte) is dead-lettered
 * and acknowledged at once, like one the engine skipped.
 *
 * Pub/Sub mode is best effort: SUBSCRIBE; each message is a record holding
 * the message as payload and nothing else; there is nothing to acknowledge,
 * and what is published while mqbridge is not subscribed is lost. */

struct redis_source {
    const struct redis_conn *rc; /* settings only: shared with the sink thread */
    const struct rule *rule;
    const struct redis_inbound *in;
    redisContext *ctx; /* this source's own connection */
    bool opened;
    int timeout_ms;     /* the socket's read timeout now */
    bool own_done;      /* own pending entries read once (step 1) */
    char own_after[48]; /* step 1 goes on after this id */
    bool claim_off;     /* the server has no XAUTOCLAIM (before 6.2) */
    char claim_cursor[48];
    uint64_t claim_at_ms; /* monotonic: when the next scan may start */
    /* The last fetch's reply and its entries: the fields of a dead-letter
     * copy. rec->offset is the entry's index in it. */
    redisReply *last;
    const redisReply *entries;
    const char **argv; /* command scratch */
    size_t *argl;
    size_t args_cap;
    struct {
        uint64_t fetched, own, claimed, acked, dead, dead_failed, dropped;
    } st;
};

static struct redis_source *redis_source_of(struct source *s)
{
    return (struct redis_source *)(void *)s;
}

static uint64_t redis_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* RETRY with "redis '<name>': rule '<rule>': <what>: <why>"; why is the
 * error reply, else the connection's error (it is unusable then). */
static int redis_source_fail(const struct redis_source *s, const char *what, const redisReply *rep,
                             char *err, size_t errlen)
{
    const char *why = rep != NULL && rep->type == REDIS_REPLY_ERROR ? rep->str
                      : rep != NULL                                 ? "unexpected reply"
                      : s->ctx->errstr[0]                           ? s->ctx->errstr
                                                                    : "timeout";
    snprintf(err, errlen, "redis '%s': rule '%s': %s: %s", s->rc->name, s->rule->name, what, why);
    return CONNECTOR_RETRY;
}

/* The socket's read timeout, set only when it changes. 0 or -1. */
static int redis_source_timeout(struct redis_source *s, int ms)
{
    if (ms == s->timeout_ms)
        return 0;
    if (redisSetTimeout(s->ctx, redis_tv(ms)) != REDIS_OK)
        return -1;
    s->timeout_ms = ms;
    return 0;
}

/* Room for n arguments in the scratch vectors. 0 or -1. */
static int redis_source_args(struct redis_source *s, size_t n)
{
    if (n <= s->args_cap)
        return 0;
    const char **argv = realloc(s->argv, n * sizeof *argv);
    if (argv != NULL)
        s->argv = argv;
    size_t *argl = argv != NULL ? realloc(s->argl, n * sizeof *argl) : NULL;
    if (argl == NULL)
        return -1;
    s->argl = argl;
    s->args_cap = n;
    return 0;
}

static void redis_source_forget(struct redis_source *s)
{
    if (s->last != NULL)
        freeReplyObject(s->last);
    s->last = NULL;
    s->entries = NULL;
}

/* ---- source: entries ---- */

/* The value of the first field `name` in [field, value, ...], or NULL. */
static const redisReply *redis_field(const redisReply *fields, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i], *v = fields->element[i + 1];
        if (f->type == REDIS_REPLY_STRING && f->len == len && memcmp(f->str, name, len) == 0)
            return v->type == REDIS_REPLY_STRING ? v : NULL;
    }
    return NULL;
}

/* A text field's value or NULL; *bad names it when it holds a NUL byte
 * (the record would carry a shorter, different text). */
static const char *redis_text_field(const redisReply *fields, const char *name, const char **bad)
{
    const redisReply *v = redis_field(fields, name);
    if (v != NULL && memchr(v->str, '\0', v->len) != NULL)
        *bad = name;
    return v != NULL ? v->str : NULL;
}

/* [[id, [field, value, ...] or nil], ...] */
static bool redis_entries_valid(const redisReply *entries)
{
    if (entries->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            (e->element[1]->type != REDIS_REPLY_ARRAY && e->element[1]->type != REDIS_REPLY_NIL))
            return false;
    }
    return true;
}

/* entries[index] as a record (see the section comment). 0 with *out; 1
 * when it cannot be one (why says why); -1 out of memory. */
static int redis_entry_record(const redisReply *entries, size_t index, struct import_record **out,
                              char *why, size_t whylen)
{
    const redisReply *e = entries->element[index], *fields = e->element[1];
    const char *bad = NULL;
    *out = NULL;
    if (fields->type != REDIS_REPLY_ARRAY) {
        snprintf(why, whylen, "deleted from the stream before it was delivered");
        return 1;
    }
    const char *sub = redis_text_field(fields, "mqttSecondTopic", &bad);
    if (sub == NULL)
        sub = redis_text_field(fields, "topic", &bad);
    const char *qos = redis_text_field(fields, "qoslevel", &bad);
    const char *client = redis_text_field(fields, "clientId", &bad);
    const redisReply *payload = redis_field(fields, "payload");
    if (bad != NULL) {
        snprintf(why, whylen, "field '%s' holds a NUL byte", bad);
        return 1;
    }
    if (payload != NULL && payload->len > UINT32_MAX) {
        snprintf(why, whylen, "payload larger than 4 GiB");
        return 1;
    }
    *out = import_record_new(e->element[0]->str, sub, qos, client,
                             payload != NULL ? payload->str : NULL,
                             payload != NULL ? (uint32_t)payload->len : 0);
    if (*out == NULL)
        return -1;
    (*out)->offset = (int64_t)index;
    return 0;
}

/* rec's entry in the last fetch: true with *fields (NULL when the entry
 * was deleted), false when rec is not from the last fetch. */
static bool redis_entry_find(const struct redis_source *s, const struct import_record *rec,
                             const redisReply **fields)
{
    const redisReply *e;
    *fields = NULL;
    if (s->entries == NULL || rec->id == NULL || rec->offset < 0 ||
        (size_t)rec->offset >= s->entries->elements)
        return false;
    e = s->entries->element[rec->offset];
    if (strcmp(e->element[0]->str, rec->id) != 0)
        return false;
    if (e->element[1]->type == REDIS_REPLY_ARRAY)
        *fields = e->element[1];
    return true;
}

/* ---- source: acknowledging ---- */

/* Appends XADD <dead_letter> * <the entry's fields> source_id <id>
 * reason <reason>. 0 or -1 (no memory). */
static int redis_dead_letter_append(struct redis_source *s, const struct import_record *rec)
{
    const redisReply *fields;
    if (!redis_entry_find(s, rec, &fields))
        log_warn("redis '%s': rule '%s': entry %s: fields unknown, the dead-letter copy holds "
                 "its id and reason only",
                 s->rc->name, s->rule->name, rec->id ? rec->id : "?");
    size_t nf = fields != NULL ? fields->elements : 0, argc = 0;
    if (redis_source_args(s, nf + 7) != 0)
        return -1;
    const char *head[] = {"XADD", s->in->dead_letter, "*"};
    for (size_t i = 0; i < 3; i++, argc++) {
        s->argv[argc] = head[i];
        s->argl[argc] = strlen(head[i]);
    }
    for (size_t i = 0; i < nf; i++, argc++) {
        s->argv[argc] = fields->element[i]->str;
        s->argl[argc] = fields->element[i]->len;
    }
    const char *tail[] = {"source_id", rec->id ? rec->id : "", "reason", rec->reason};
    for (size_t i = 0; i < 4; i++, argc++) {
        s->argv[argc] = tail[i];
        s->argl[argc] = strlen(tail[i]);
    }
    return redisAppendCommandArgv(s->ctx, (int)argc, s->argv, s->argl) == REDIS_OK ? 0 : -1;
}

/* Copies the SKIPPED records to the dead-letter stream (one pipeline) and
 * waits for every reply, so an entry is acknowledged only after its copy
 * is stored. 0, or RETRY with err: connection lost, or an error reply
 * that a retry may cure (OOM, READONLY, ...). Any other error reply (the
 * key holds another type) is logged and counted, and the entry is
 * acknowledged anyway: one bad entry must not stop the rule for ever. */
static int redis_stream_dead_letter(struct redis_source *s, struct import_record *const *recs,
                                    size_t n, char *err, size_t errlen)
{
    size_t sent = 0;
    for (size_t i = 0; s->in->dead_letter != NULL && i < n; i++) {
        if (recs[i]->outcome != IMPORT_SKIPPED)
            continue;
        if (redis_dead_letter_append(s, recs[i]) != 0) {
            snprintf(err, errlen, "redis '%s': rule '%s': out of memory", s->rc->name,
                     s->rule->name);
            return CONNECTOR_RETRY;
        }
        sent++;
    }
    for (size_t i = 0, got = 0; got < sent; i++) {
        redisReply *rep = NULL;
        if (recs[i]->outcome != IMPORT_SKIPPED)
            continue;
        got++;
        if (redisGetReply(s->ctx, (void **)&rep) != REDIS_OK || rep == NULL)
            return redis_source_fail(s, "XADD to the dead-letter stream", NULL, err, errlen);
        if (rep->type == REDIS_REPLY_ERROR && redis_reply_transient(rep->str)) {
            redis_source_fail(s, "XADD to the dead-letter stream", rep, err, errlen);
            freeReplyObject(rep);
            return CONNECTOR_RETRY; /* the remaining replies die with the connection */
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            log_error("redis '%s': rule '%s': entry %s (skipped: %s) not dead-lettered to %s: %s",
                      s->rc->name, s->rule->name, recs[i]->id ? recs[i]->id : "?", recs[i]->reason,
                      s->in->dead_letter, rep->str);
            s->st.dead_failed++;
        } else {
            s->st.dead++;
        }
        freeReplyObject(rep);
    }
    return 0;
}

/* XACK s g id... for recs[a..b). 0 or -1 (no memory). */
static int redis_xack_append(struct redis_source *s, struct import_record *const *recs, size_t a,
                             size_t b)
{
    size_t argc = 0;
    if (redis_source_args(s, b - a + 3) != 0)
        return -1;
    const char *head[] = {"XACK", s->in->stream, s->in->group};
    for (size_t i = 0; i < 3; i++, argc++) {
        s->argv[argc] = head[i];
        s->argl[argc] = strlen(head[i]);
    }
    for (size_t i = a; i < b; i++) {
        if (recs[i]->id == NULL)
            continue;
        s->argv[argc] = recs[i]->id;
        s->argl[argc++] = strlen(recs[i]->id);
    }
    return redisAppendCommandArgv(s->ctx, (int)argc, s->argv, s->argl) == REDIS_OK ? 0 : -1;
}

static int redis_stream_ack(struct redis_source *s, struct import_record *const *recs, size_t n,
                            char *err, size_t errlen)
{
    size_t chunks = (n + REDIS_CHUNK - 1) / REDIS_CHUNK;
    if (n == 0)
        return CONNECTOR_OK;
    if (redis_source_timeout(s, s->rc->command_timeout_ms) != 0)
        return redis_source_fail(s, "socket options", NULL, err, errlen);
    if (redis_stream_dead_letter(s, recs, n, err, errlen) != 0)
        return CONNECTOR_RETRY;
    for (size_t a = 0; a < n; a += REDIS_CHUNK)
        if (redis_xack_append(s, recs, a, a + REDIS_CHUNK < n ? a + REDIS_CHUNK : n) != 0) {
            snprintf(err, errlen, "redis '%s': rule '%s': out of memory", s->rc->name,
                     s->rule->name);
            return CONNECTOR_RETRY;
        }
    for (size_t k = 0; k < chunks; k++) {
        redisReply *rep = NULL;
        if (redisGetReply(s->ctx, (void **)&rep) != REDIS_OK || rep == NULL)
            return redis_source_fail(s, "XACK", NULL, err, errlen);
        bool failed = rep->type == REDIS_REPLY_ERROR;
        if (failed)
            redis_source_fail(s, "XACK", rep, err, errlen);
        freeReplyObject(rep);
        if (failed)
            return CONNECTOR_RETRY;
    }
    s->st.acked += n;
    return CONNECTOR_OK;
}

/* An entry that cannot be a record: dead-letter and acknowledge it now. */
static int redis_stream_drop(struct redis_source *s, size_t index, const char *why, char *err,
                             size_t errlen)
{
    const char *id = s->entries->element[index]->element[0]->str;
    struct import_record *rec = import_record_new(id, NULL, NULL, NULL, NULL, 0);
    if (rec == NULL) {
        snprintf(err, errlen, "redis '%s': rule '%s': out of memory", s->rc->name, s->rule->name);
        return CONNECTOR_RETRY;
    }
    rec->offset = (int64_t)index;
    rec->outcome = IMPORT_SKIPPED;
    snprintf(rec->reason, sizeof rec->reason, "%s", why);
    log_warn("redis '%s': rule '%s': entry %s skipped: %s", s->rc->name, s->rule->name, id, why);
    int rc = redis_stream_ack(s, &rec, 1, err, errlen);
    s->st.dropped += rc == CONNECTOR_OK;
    import_record_free(rec);
    return rc;
}

/* ---- source: reading ---- */

/* XREADGROUP GROUP g c COUNT max [BLOCK block_ms] STREAMS s <from>. On 0,
 * *rep is the reply (caller frees) and *entries its entries, or NULL when
 * there are none (nil: the block timed out). */
static int redis_stream_read(struct redis_source *s, size_t max, const char *from, int block_ms,
                             redisReply **rep, const redisReply **entries, char *err, size_t errlen)
{
    char count[24], block[24];
    const char *argv[11] = {"XREADGROUP", "GROUP", s->in->group, s->in->consumer, "COUNT", count};
    int argc = 6;
    snprintf(count, sizeof count, "%zu", max);
    if (block_ms > 0) {
        snprintf(block, sizeof block, "%d", block_ms);
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = s->in->stream;
    argv[argc++] = from;
    *entries = NULL;
    if (redis_source_timeout(s, s->rc->command_timeout_ms + (block_ms > 0 ? block_ms : 0)) != 0 ||
        (*rep = redisCommandArgv(s->ctx, argc, argv, NULL)) == NULL)
        return redis_source_fail(s, "XREADGROUP", NULL, err, errlen);
    const redisReply *r = *rep;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2)
        *entries = r->element[0]->element[1];
    if (r->type != REDIS_REPLY_NIL && (*entries == NULL || !redis_entries_valid(*entries))) {
        redis_source_fail(s, "XREADGROUP", r, err, errlen);
        freeReplyObject(*rep);
        *rep = NULL;
        return CONNECTOR_RETRY;
    }
    if (*entries != NULL && (*entries)->elements == 0)
        *entries = NULL;
    return 0;
}

/* One page of the claim scan (step 2): XAUTOCLAIM s g c <claim_idle_ms>
 * <cursor> COUNT max. As redis_stream_read; nothing when claiming is off
 * or the next scan is not due. */
static int redis_stream_claim(struct redis_source *s, size_t max, redisReply **rep,
                              const redisReply **entries, char *err, size_t errlen)
{
    char idle[24], count[24];
    *rep = NULL;
    *entries = NULL;
    if (s->claim_off || s->in->claim_idle_ms == 0 || redis_now_ms() < s->claim_at_ms)
        return 0;
    snprintf(idle, sizeof idle, "%" PRIu64, s->in->claim_idle_ms);
    snprintf(count, sizeof count, "%zu", max);
    const char *argv[] = {"XAUTOCLAIM", s->in->stream,   s->in->group, s->in->consumer,
                          idle,         s->claim_cursor, "COUNT",      count};
    if (redis_source_timeout(s, s->rc->command_timeout_ms) != 0 ||
        (*rep = redisCommandArgv(s->ctx, 8, argv, NULL)) == NULL)
        return redis_source_fail(s, "XAUTOCLAIM", NULL, err, errlen);
    const redisReply *r = *rep;
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "unknown command") != NULL) {
        log_warn("redis '%s': rule '%s': the server has no XAUTOCLAIM (Redis < 6.2): entries "
                 "other consumers left pending are not claimed",
                 s->rc->name, s->rule->name);
        s->claim_off = true;
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
               r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[0]->len >= sizeof s->claim_cursor ||
               !redis_entries_valid(r->element[1])) {
        redis_source_fail(s, "XAUTOCLAIM", r, err, errlen);
        freeReplyObject(*rep);
        *rep = NULL;
        return CONNECTOR_RETRY;
    } else {
        memcpy(s->claim_cursor, r->element[0]->str, r->element[0]->len + 1);
        if (strcmp(s->claim_cursor, "0-0") == 0) /* the scan is complete */
            s->claim_at_ms = redis_now_ms() + s->in->claim_idle_ms;
        *entries = r->element[1]->elements > 0 ? r->element[1] : NULL;
    }
    return 0;
}

/* The entries of the last fetch as records; the ones that cannot be are
 * dropped (dead-lettered and acknowledged). */
static int redis_stream_records(struct redis_source *s, struct import_record **recs, size_t max,
                                size_t *n, uint64_t *counter, char *err, size_t errlen)
{
    char why[96];
    for (size_t i = 0; i < s->entries->elements && *n < max; i++) {
        struct import_record *rec = NULL;
        int r = redis_entry_record(s->entries, i, &rec, why, sizeof why);
        if (r < 0) {
            snprintf(err, errlen, "redis '%s': rule '%s': out of memory", s->rc->name,
                     s->rule->name);
            goto fail;
        }
        if (r > 0 && redis_stream_drop(s, i, why, err, errlen) != CONNECTOR_OK)
            goto fail;
        if (r == 0)
            recs[(*n)++] = rec;
    }
    s->st.fetched += *n;
    *counter += *n;
    return CONNECTOR_OK;
fail:
    for (size_t i = 0; i < *n; i++)
        import_record_free(recs[i]);
    *n = 0;
    return CONNECTOR_RETRY;
}

static int redis_stream_fetch(struct redis_source *s, struct import_record **recs, size_t max,
                              size_t *n, int timeout_ms, char *err, size_t errlen)
{
    redisReply *rep = NULL;
    const redisReply *entries = NULL;
    uint64_t unused = 0, *counter = &s->st.own;
    redis_source_forget(s);
    if (!s->own_done) {
        if (redis_stream_read(s, max, s->own_after, 0, &rep, &entries, err, errlen) != 0)
            return CONNECTOR_RETRY;
        const redisReply *tail = entries ? entries->element[entries->elements - 1] : NULL;
        if (tail == NULL || tail->element[0]->len >= sizeof s->own_after)
            s->own_done = true;
        else
            memcpy(s->own_after, tail->element[0]->str, tail->element[0]->len + 1);
    }
    if (entries == NULL) {
        freeReplyObject(rep);
        counter = &s->st.claimed;
        if (redis_stream_claim(s, max, &rep, &entries, err, errlen) != 0)
            return CONNECTOR_RETRY;
    }
    if (entries == NULL) {
        freeReplyObject(rep);
        counter = &unused;
        if (redis_stream_read(s, max, ">", timeout_ms, &rep, &entries, err, errlen) != 0)
            return CONNECTOR_RETRY;
    }
    if (entries == NULL) {
        freeReplyObject(rep);
        return CONNECTOR_OK;
    }
    s->last = rep;
    s->entries = entries;
    return redis_stream_records(s, recs, max, n, counter, err, errlen);
}

/* ---- source: Pub/Sub ---- */

/* A pushed ["message", channel, payload] becomes a record; anything else
 * (the subscribe confirmation) is ignored. 0 or -1 (no memory). */
static int redis_pubsub_take(struct redis_source *s, const redisReply *m,
                             struct import_record **recs, size_t *n)
{
    if (m->type != REDIS_REPLY_ARRAY || m->elements != 3 ||
        m->element[0]->type != REDIS_REPLY_STRING || strcmp(m->element[0]->str, "message") != 0 ||
        m->element[2]->type != REDIS_REPLY_STRING || m->element[2]->len > UINT32_MAX)
        return 0;
    struct import_record *rec =
        import_record_new(NULL, NULL, NULL, NULL, m->element[2]->str, (uint32_t)m->element[2]->len);
    if (rec == NULL)
        return -1;
    rec->offset = (int64_t)++s->st.fetched;
    recs[(*n)++] = rec;
    return 0;
}

/* Waits up to timeout_ms for the first message, then takes what has
 * arrived already, up to max. Records in hand when the connection drops
 * are returned (OK); the next fetch says RETRY. */
static int redis_pubsub_fetch(struct redis_source *s, struct import_record **recs, size_t max,
                              size_t *n, int timeout_ms, char *err, size_t errlen)
{
    uint64_t deadline = redis_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    const char *why = NULL;
    while (*n < max && why == NULL) {
        void *reply = NULL;
        if (redisGetReplyFromReader(s->ctx, &reply) != REDIS_OK) {
            why = s->ctx->errstr;
        } else if (reply != NULL) {
            if (redis_pubsub_take(s, reply, recs, n) != 0)
                why = "out of memory";
            freeReplyObject(reply);
        } else {
            uint64_t now = redis_now_ms();
            struct pollfd p = {.fd = s->ctx->fd, .events = POLLIN};
            int ready = poll(&p, 1, *n > 0 || now >= deadline ? 0 : (int)(deadline - now));
            if (ready == 0)
                break;
            if (ready < 0 && errno != EINTR)
                why = "poll failed";
            else if (ready > 0 && redisBufferRead(s->ctx) != REDIS_OK)
                why = s->ctx->errstr[0] ? s->ctx->errstr : "connection closed";
        }
    }
    if (why == NULL || *n > 0)
        return CONNECTOR_OK;
    snprintf(err, errlen, "redis '%s': rule '%s': SUBSCRIBE %s: %s", s->rc->name, s->rule->name,
             s->in->channel, why);
    return CONNECTOR_RETRY;
}

/* ---- source: backlog ---- */

/* Stream ids "<ms>-<seq>" compared as numbers: <0, 0, >0. */
static int redis_id_cmp(const char *a, const char *b)
{
    uint64_t ams = 0, aseq = 0, bms = 0, bseq = 0;
    sscanf(a, "%" SCNu64 "-%" SCNu64, &ams, &aseq);
    sscanf(b, "%" SCNu64 "-%" SCNu64, &bms, &bseq);
    if (ams != bms)
        return ams < bms ? -1 : 1;
    return aseq < bseq ? -1 : aseq > bseq;
}

/* Our group's entry in an XINFO GROUPS reply, or NULL. */
static const redisReply *redis_group_info(const redisReply *groups, const char *group)
{
    if (groups->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i < groups->elements; i++) {
        const redisReply *g = groups->element[i], *name;
        if (g->type == REDIS_REPLY_ARRAY && (name = redis_field(g, "name")) != NULL &&
            strcmp(name->str, group) == 0)
            return g;
    }
    return NULL;
}

/* The value of an integer field of an XINFO reply, or -1. */
static int64_t redis_info_int(const redisReply *info, const char *name)
{
    for (size_t i = 0; i + 1 < info->elements; i += 2) {
        const redisReply *f = info->element[i], *v = info->element[i + 1];
        if (f->type == REDIS_REPLY_STRING && strcmp(f->str, name) == 0)
            return v->type == REDIS_REPLY_INTEGER ? v->integer : -1;
    }
    return -1;
}

/* pending + unread. unread: 0 when the group has read up to the last
 * entry; else the group's `lag` (Redis 7), else XLEN (an upper bound:
 * Redis cannot tell, e.g. after XDEL in the unread part, or before 7). */
static int64_t redis_stream_backlog(const struct redis_source *s, redisReply *const rep[3])
{
    const redisReply *g = redis_group_info(rep[0], s->in->group);
    const redisReply *delivered = g != NULL ? redis_field(g, "last-delivered-id") : NULL;
    int64_t pending = g != NULL ? redis_info_int(g, "pending") : -1;
    int64_t lag = g != NULL ? redis_info_int(g, "lag") : -1;
    if (pending < 0 || delivered == NULL || rep[1]->type != REDIS_REPLY_ARRAY ||
        rep[2]->type != REDIS_REPLY_INTEGER)
        return -1;
    const redisReply *newest = rep[1]->elements > 0 ? rep[1]->element[0] : NULL;
    if (newest == NULL || newest->type != REDIS_REPLY_ARRAY || newest->elements < 1 ||
        redis_id_cmp(newest->element[0]->str, delivered->str) <= 0)
        return pending;
    return pending + (lag >= 0 ? lag : rep[2]->integer);
}

/* XINFO GROUPS, XREVRANGE s + - COUNT 1 and XLEN in one round trip. -1
 * when unknown (a lost connection shows at the next fetch). */
static int64_t redis_source_lag(struct source *src)
{
    struct redis_source *s = redis_source_of(src);
    redisReply *rep[3] = {NULL, NULL, NULL};
    const char *cmds[3][6] = {{"XINFO", "GROUPS", s->in->stream},
                              {"XREVRANGE", s->in->stream, "+", "-", "COUNT", "1"},
                              {"XLEN", s->in->stream}};
    const int argc[3] = {3, 6, 2};
    int64_t backlog = -1;
    bool whole = true;
    if (s->in->mode == SOURCE_PUBSUB || redis_source_timeout(s, s->rc->command_timeout_ms) != 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (redisAppendCommandArgv(s->ctx, argc[i], cmds[i], NULL) != REDIS_OK)
            return -1;
    for (int i = 0; i < 3 && whole; i++) /* every reply, or the pipeline is out of step */
        whole = redisGetReply(s->ctx, (void **)&rep[i]) == REDIS_OK && rep[i] != NULL;
    if (whole)
        backlog = redis_stream_backlog(s, rep);
    for (int i = 0; i < 3; i++)
        if (rep[i] != NULL)
            freeReplyObject(rep[i]);
    return backlog;
}

/* ---- source: life cycle ---- */

/* XGROUP CREATE s g 0 MKSTREAM: a new group starts at the beginning of
 * the stream; an existing one (BUSYGROUP) keeps its position. */
static int redis_group_create(struct redis_source *s, char *err, size_t errlen)
{
    const char *argv[] = {"XGROUP", "CREATE", s->in->stream, s->in->group, "0", "MKSTREAM"};
    redisReply *rep = redisCommandArgv(s->ctx, 6, argv, NULL);
    if (rep == NULL)
        return redis_source_fail(s, "XGROUP CREATE", NULL, err, errlen);
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0)
        rc = redis_source_fail(s, "XGROUP CREATE", rep, err, errlen);
    freeReplyObject(rep);
    return rc;
}

static void redis_source_close(struct source *src);

static int redis_source_open(struct connector *c, const struct rule *r, struct source **out,
                             char *err, size_t errlen)
{
    const struct redis_target *t = r->compiled;
    struct redis_source *s = NULL;
    redisReply *rep = NULL;
    *out = NULL;
    if (t == NULL || t->type != RULE_INBOUND) {
        snprintf(err, errlen, "redis '%s': rule '%s' is not an inbound rule of this connector",
                 redis_of(c)->name, r->name);
        goto fail;
    }
    if ((s = calloc(1, sizeof *s)) == NULL) {
        snprintf(err, errlen, "redis '%s': out of memory", redis_of(c)->name);
        goto fail;
    }
    s->rc = redis_of(c);
    s->rule = r;
    s->in = &t->in;
    s->timeout_ms = s->rc->command_timeout_ms;
    snprintf(s->own_after, sizeof s->own_after, "0");
    snprintf(s->claim_cursor, sizeof s->claim_cursor, "0-0");
    if ((s->ctx = redis_connect(s->rc, err, errlen)) == NULL)
        goto fail;
    if (s->in->mode == SOURCE_PUBSUB) {
        const char *argv[] = {"SUBSCRIBE", s->in->channel};
        if (redis_call(s->rc->name, s->ctx, 2, argv, NULL, &rep, err, errlen) != 0)
            goto fail;
        freeReplyObject(rep);
    } else if (redis_group_create(s, err, errlen) != 0) {
        goto fail;
    }
    s->opened = true;
    *out = (struct source *)(void *)s;
    return 0;
fail:
    redis_source_close((struct source *)(void *)s);
    return CONNECTOR_RETRY;
}

/* Frees the connection; what was fetched and not acknowledged stays in
 * the consumer's pending list (nothing is acknowledged here). */
static void redis_source_close(struct source *src)
{
    struct redis_source *s = redis_source_of(src);
    if (s == NULL)
        return;
    if (s->opened && s->in->mode == SOURCE_STREAM)
        log_notice("redis '%s': rule '%s': closed; fetched %" PRIu64 " (%" PRIu64
                   " redelivered from this consumer's pending list, %" PRIu64
                   " claimed from other consumers), acknowledged %" PRIu64
                   ", dead-lettered %" PRIu64 " (%" PRIu64 " failed), dropped at fetch %" PRIu64,
                   s->rc->name, s->rule->name, s->st.fetched, s->st.own, s->st.claimed, s->st.acked,
                   s->st.dead, s->st.dead_failed, s->st.dropped);
    else if (s->opened)
        log_notice("redis '%s': rule '%s': closed; received %" PRIu64 " Pub/Sub messages",
                   s->rc->name, s->rule->name, s->st.fetched);
    redis_source_forget(s);
    if (s->ctx != NULL)
        redisFree(s->ctx);
    free(s->argv);
    free(s->argl);
    free(s);
}

static int redis_source_fetch(struct source *src, struct import_record **recs, size_t max,
                              size_t *n, int timeout_ms, char *err, size_t errlen)
{
    struct redis_source *s = redis_source_of(src);
    *n = 0;
    if (max == 0)
        return CONNECTOR_OK;
    return s->in->mode == SOURCE_PUBSUB
               ? redis_pubsub_fetch(s, recs, max, n, timeout_ms, err, errlen)
               : redis_stream_fetch(s, recs, max, n, timeout_ms, err, errlen);
}

/* Pub/Sub has nothing to acknowledge. */
static int redis_source_ack(struct source *src, struct import_record *const *recs, size_t n,
                            char *err, size_t errlen)
{
    struct redis_source *s = redis_source_of(src);
    return s->in->mode == SOURCE_PUBSUB ? CONNECTOR_OK : redis_stream_ack(s, recs, n, err, errlen);
}

const struct connector_ops redis_connector = {
    .type = "redis",
    .settings = redis_settings,
    .create = redis_create,
    .destroy = redis_destroy,
    .compile = redis_compile,
    .release = redis_release,
    .open = redis_open,
    .close = redis_close,
    .export = redis_export,
    .source_open = redis_source_open,
    .source_close = redis_source_close,
    .source_fetch = redis_source_fetch,
    .source_ack = redis_source_ack,
    .source_lag = redis_source_lag,
};
