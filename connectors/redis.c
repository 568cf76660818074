/* Redis connector (hiredis, blocking context on the connector thread).
 *
 * Rule: export() pipelines the batch (in chunks), reads every reply in
 * order and acknowledges the prefix of records whose replies are not
 * errors. An error reply is a REJECT of that record (WRONGTYPE, ...)
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
 * Commands are always argument vectors (redisAppendCommandArgv): topic,
 * client and payload data never become command text. */
#include "connector.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../rules/template.h"

enum {
    REDIS_CONNECT_TIMEOUT_MS = 2000,
    REDIS_COMMAND_TIMEOUT_MS = 5000,
    REDIS_CHUNK = 1000, /* records per pipelined round trip */
    REDIS_ARGS_MAX = 24,
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

struct redis_target {
    enum rule_type type;
    enum redis_mode mode;
    struct template *key; /* outbound key or status stream */
    char *hash_prefix;    /* status only */
    char maxlen[24];      /* "" when unbounded */
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
    struct buf key, key2; /* rendering scratch */
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
    buf_free(&rc->key2);
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
    char why[256];
    uint64_t maxlen;
    const char *keyname = r->type == RULE_STATUS ? "stream" : "key";
    const struct kv *item = kv_find(r->options, keyname);
    if (template_compile(item->value, &t->key, why, sizeof why) != 0)
        return kv_error(err, errlen, r->options, item, "rule '%s': %s: %s", r->name, keyname, why);
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

static void redis_release(struct connector *c, void *compiled);

static int redis_compile(struct connector *c, const struct rule *r, void **compiled, char *err,
                         size_t errlen)
{
    char where[128];
    struct redis_target *t = NULL;
    *compiled = NULL;
    if (r->type == RULE_INBOUND) {
        kv_error(err, errlen, r->options, NULL,
                 "rule '%s': inbound rules from a redis connector are not supported", r->name);
        goto fail;
    }
    snprintf(where, sizeof where, "rule '%s'", r->name);
    if (kv_check(r->options, r->type == RULE_STATUS ? redis_status_keys : redis_outbound_keys,
                 where, err, errlen) != 0)
        goto fail;
    if ((t = calloc(1, sizeof *t)) == NULL) {
        kv_error(err, errlen, r->options, NULL, "%s: out of memory", where);
        goto fail;
    }
    t->type = r->type;
    if ((r->type == RULE_OUTBOUND && redis_compile_mode(r, t, err, errlen) != 0) ||
        redis_compile_fields(r, t, err, errlen) != 0)
        goto fail;
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

/* One command, waiting for its reply (open-time setup only). 0, or -1
 * with err; *reply is the reply (caller frees) on 0. */
static int redis_call(struct redis_conn *rc, int argc, const char **argv, const size_t *lens,
                      redisReply **reply, char *err, size_t errlen)
{
    *reply = redisCommandArgv(rc->ctx, argc, argv, lens);
    if (*reply == NULL) {
        snprintf(err, errlen, "redis '%s': %s: %s", rc->name, argv[0], rc->ctx->errstr);
        return -1;
    }
    if ((*reply)->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis '%s': %s: %s", rc->name, argv[0], (*reply)->str);
        freeReplyObject(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

static int redis_login(struct redis_conn *rc, char *err, size_t errlen)
{
    redisReply *rep = NULL;
    char db[16];
    if (rc->url.password != NULL) {
        const char *argv[3] = {"AUTH"};
        int argc = 1;
        if (rc->url.user != NULL)
            argv[argc++] = rc->url.user;
        argv[argc++] = rc->url.password;
        if (redis_call(rc, argc, argv, NULL, &rep, err, errlen) != 0)
            return -1; /* the reply names no password */
        freeReplyObject(rep);
    }
    if (rc->url.db != 0) {
        snprintf(db, sizeof db, "%u", rc->url.db);
        const char *argv[2] = {"SELECT", db};
        if (redis_call(rc, 2, argv, NULL, &rep, err, errlen) != 0)
            return -1;
        freeReplyObject(rep);
    }
    return 0;
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
    const struct redis_url *u = &rc->url;
    if (rc->ctx != NULL)
        return 0;
    struct timeval ctv = redis_tv(rc->connect_timeout_ms);
    rc->ctx = u->path ? redisConnectUnixWithTimeout(u->path, ctv)
                      : redisConnectWithTimeout(u->host, u->port, ctv);
    if (rc->ctx == NULL || rc->ctx->err) {
        char where[300];
        if (u->path != NULL)
            snprintf(where, sizeof where, "%s", u->path);
        else
            snprintf(where, sizeof where, "%s:%d", u->host, u->port);
        snprintf(err, errlen, "redis '%s': cannot connect to %s: %s", rc->name, where,
                 rc->ctx ? rc->ctx->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(rc->ctx, redis_tv(rc->command_timeout_ms)) != REDIS_OK ||
        (u->path == NULL && redisEnableKeepAlive(rc->ctx) != REDIS_OK)) {
        snprintf(err, errlen, "redis '%s': socket options: %s", rc->name, rc->ctx->errstr);
        goto fail;
    }
    if (redis_login(rc, err, errlen) != 0 || redis_load_script(rc, err, errlen) != 0)
        goto fail;
    return 0;
fail:
    redis_close(c);
    return CONNECTOR_RETRY;
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

/* ---- export (connector thread) ------------------------------------------ */

struct redis_args {
    int argc;
    const char *argv[REDIS_ARGS_MAX];
    size_t lens[REDIS_ARGS_MAX];
};

static void redis_arg(struct redis_args *a, const void *p, size_t len)
{
    a->argv[a->argc] = p;
    a->lens[a->argc++] = len;
}

static void redis_arg_str(struct redis_args *a, const char *s)
{
    redis_arg(a, s, strlen(s));
}

static int redis_render(struct buf *b, const struct template *t, const struct export_record *rec)
{
    const struct template_input in = {
        .client_id = rec->client_id ? rec->client_id : "",
        .topic = rec->topic ? rec->topic : "",
        .qos = rec->qos,
        .msg_id = rec->msg_id,
        .time_ms = rec->time_ms,
        .payload = rec->payload,
        .payload_len = rec->payload_len,
    };
    buf_reset(b);
    return template_render(t, &in, b);
}

/* XADD key [MAXLEN ~ N] * field value ... */
static void redis_xadd_head(struct redis_args *a, const struct buf *key, const char *maxlen)
{
    a->argc = 0;
    redis_arg_str(a, "XADD");
    redis_arg(a, key->data, key->len);
    if (maxlen[0] != '\0') {
        redis_arg_str(a, "MAXLEN");
        redis_arg_str(a, "~");
        redis_arg_str(a, maxlen);
    }
    redis_arg_str(a, "*");
}

/* Appends the message's command to the pipeline. 0 or -1 (no memory). */
static int redis_append_message(struct redis_conn *rc, const struct redis_target *t,
                                const struct export_record *rec)
{
    struct redis_args a = {0};
    char msgid[17], qos[4], ts[24];
    if (redis_render(&rc->key, t->key, rec) != 0)
        return -1;
    if (t->mode == REDIS_STREAM) {
        snprintf(msgid, sizeof msgid, "%016" PRIx64, rec->msg_id);
        snprintf(qos, sizeof qos, "%u", (unsigned)rec->qos);
        snprintf(ts, sizeof ts, "%" PRId64, rec->time_ms);
        redis_xadd_head(&a, &rc->key, t->maxlen);
        const char *fields[] = {"msgid",     msgid,
                                "topic",     rec->topic ? rec->topic : "",
                                "clientid",  rec->client_id ? rec->client_id : "",
                                "qos",       qos,
                                "timestamp", ts};
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            redis_arg_str(&a, fields[i]);
        redis_arg_str(&a, "payload");
    } else {
        redis_arg_str(&a, t->mode == REDIS_PUBLISH ? "PUBLISH" : "LPUSH");
        redis_arg(&a, rc->key.data, rc->key.len);
    }
    redis_arg(&a, rec->payload ? (const void *)rec->payload : "", rec->payload_len);
    return redisAppendCommandArgv(rc->ctx, a.argc, a.argv, a.lens) == REDIS_OK ? 0 : -1;
}

/* EVALSHA of the state rule for one status event. */
static int redis_append_state(struct redis_conn *rc, const struct redis_target *t,
                              const struct export_record *rec)
{
    char seq[24], ts[24];
    snprintf(seq, sizeof seq, "%" PRIu64, rec->msg_id);
    snprintf(ts, sizeof ts, "%" PRId64, rec->time_ms);
    const char *cid = rec->client_id ? rec->client_id : "";
    buf_reset(&rc->key2);
    if (buf_append(&rc->key2, t->hash_prefix, strlen(t->hash_prefix)) != 0 ||
        buf_append(&rc->key2, cid, strlen(cid)) != 0)
        return -1;
    struct redis_args a = {0};
    const char *head[] = {"EVALSHA", rc->sha, "1"};
    for (size_t i = 0; i < 3; i++)
        redis_arg_str(&a, head[i]);
    redis_arg(&a, rc->key2.data, rc->key2.len);
    const char *args[] = {seq, rec->event_type, rec->channel_id, rec->client_ip,
                          ts,  rec->client_id};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        redis_arg_str(&a, args[i] ? args[i] : "");
    return redisAppendCommandArgv(rc->ctx, a.argc, a.argv, a.lens) == REDIS_OK ? 0 : -1;
}

/* Appends XADD of the event and, when the script is loaded, EVALSHA of the
 * state rule; without a script the record is left OUT_STATE (one reply). */
static int redis_append_status(struct redis_conn *rc, const struct redis_target *t,
                               const struct export_record *rec, unsigned char *out)
{
    struct redis_args a = {0};
    char seq[24], ts[24];
    if (redis_render(&rc->key, t->key, rec) != 0)
        return -1;
    snprintf(seq, sizeof seq, "%" PRIu64, rec->msg_id);
    snprintf(ts, sizeof ts, "%" PRId64, rec->time_ms);
    redis_xadd_head(&a, &rc->key, t->maxlen);
    const char *fields[] = {"clientId",  rec->client_id,  "time",      ts,
                            "eventType", rec->event_type, "channelId", rec->channel_id,
                            "clientIp",  rec->client_ip,  "seq",       seq};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        redis_arg_str(&a, fields[i] ? fields[i] : "");
    redis_arg_str(&a, "body");
    redis_arg(&a, rec->payload ? (const void *)rec->payload : "", rec->payload_len);
    if (redisAppendCommandArgv(rc->ctx, a.argc, a.argv, a.lens) != REDIS_OK)
        return -1;
    if (rc->sha[0] == '\0') {
        *out = OUT_STATE;
        return 0;
    }
    return redis_append_state(rc, t, rec);
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

/* The connection is unusable after an I/O error or timeout. */
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

/* Reads one reply for recs[i]. 0, or -1 when the connection is lost. A
 * NOSCRIPT reply to EVALSHA (state) leaves the record OUT_STATE. */
static int redis_read_reply(struct redis_conn *rc, struct export_record *const *recs, size_t i,
                            bool state, size_t *first, char *err, size_t errlen)
{
    redisReply *rep = NULL;
    if (redisGetReply(rc->ctx, (void **)&rep) != REDIS_OK || rep == NULL) {
        redis_lost(rc, recs, i, first, err, errlen);
        return -1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (state && strncmp(rep->str, "NOSCRIPT", 8) == 0)
            rc->out[i] = OUT_STATE;
        else
            redis_fail(rc, recs, i, redis_reply_transient(rep->str) ? OUT_RETRY : OUT_REJECT,
                       rep->str, first, err, errlen);
    }
    freeReplyObject(rep);
    return 0;
}

/* Appends the commands of recs[a..b); returns where appending stopped (b,
 * or the record that could not be appended, marked failed). */
static size_t redis_chunk_append(struct redis_conn *rc, struct export_record *const *recs, size_t a,
                                 size_t b, size_t *first, char *err, size_t errlen)
{
    for (size_t i = a; i < b; i++) {
        const struct export_record *rec = recs[i];
        const struct redis_target *t = rec->rule ? rec->rule->compiled : NULL;
        if (t == NULL || (rec->kind == RECORD_STATUS) != (t->type == RULE_STATUS)) {
            redis_fail(rc, recs, i, OUT_REJECT, "the record does not match its rule's target",
                       first, err, errlen);
            return i;
        }
        int r = rec->kind == RECORD_STATUS ? redis_append_status(rc, t, rec, &rc->out[i])
                                           : redis_append_message(rc, t, rec);
        if (r != 0) {
            redis_fail(rc, recs, i, OUT_RETRY, "out of memory", first, err, errlen);
            return i;
        }
    }
    return b;
}

/* Redo the state updates left OUT_STATE: load the script (again), then
 * EVALSHA them. Applying them after later records is fine: the state rule
 * does not depend on the order in which events arrive. */
static int redis_state_fixup(struct redis_conn *rc, struct export_record *const *recs, size_t a,
                             size_t b, size_t *first, char *err, size_t errlen)
{
    char why[256];
    size_t pending = 0;
    for (size_t i = a; i < b; i++)
        pending += rc->out[i] == OUT_STATE;
    if (pending == 0)
        return 0;
    if (redis_load_script(rc, why, sizeof why) != 0) {
        redis_lost(rc, recs, a, first, err, errlen);
        return -1;
    }
    for (size_t i = a; i < b; i++) {
        if (rc->out[i] != OUT_STATE)
            continue;
        if (rc->sha[0] == '\0' || redis_append_state(rc, recs[i]->rule->compiled, recs[i]) != 0)
            redis_fail(rc, recs, i, OUT_RETRY, "cannot run the state script (SCRIPT LOAD refused)",
                       first, err, errlen);
    }
    for (size_t i = a; i < b; i++) {
        if (rc->out[i] != OUT_STATE)
            continue;
        rc->out[i] = OUT_OK;
        if (redis_read_reply(rc, recs, i, false, first, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* One pipelined round trip for recs[a..b). 0, or -1 when the connection
 * was lost (then closed). */
static int redis_chunk(struct redis_conn *rc, struct export_record *const *recs, size_t a, size_t b,
                       size_t *first, char *err, size_t errlen)
{
    size_t end = redis_chunk_append(rc, recs, a, b, first, err, errlen);
    for (size_t i = a; i < end; i++) {
        bool with_state = recs[i]->kind == RECORD_STATUS && rc->out[i] != OUT_STATE;
        if (redis_read_reply(rc, recs, i, false, first, err, errlen) != 0 ||
            (with_state && redis_read_reply(rc, recs, i, true, first, err, errlen) != 0))
            return -1;
    }
    return redis_state_fixup(rc, recs, a, end, first, err, errlen);
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

static void redis_skip_remember(struct redis_conn *rc, struct export_record *const *recs, size_t n,
                                size_t bad)
{
    size_t j = bad + 1;
    while (j < n && rc->out[j] == OUT_OK && recs[j]->seqno > recs[j - 1]->seqno)
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
    for (size_t a = redis_skip_leading(rc, recs, n); a < n && first == n; a += REDIS_CHUNK)
        if (redis_chunk(rc, recs, a, a + REDIS_CHUNK < n ? a + REDIS_CHUNK : n, &first, err,
                        errlen) != 0)
            break;
    *acked = first;
    if (first == n)
        return CONNECTOR_OK;
    if (rc->out[first] != OUT_REJECT)
        return CONNECTOR_RETRY;
    redis_skip_remember(rc, recs, n, first);
    return CONNECTOR_REJECT;
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
};
