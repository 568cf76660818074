/* Templates: text with ${field} references, compiled once per rule and
 * rendered per record (see template.h for the fields).
 *
 * Rule: "$$" is a literal "$"; "${name}" is a field; any other "$" is an
 * error, as are an unterminated "${", an empty or unknown name and an empty
 * key in a payload path. Examples, with a client "GID_s@@@dev-1" publishing
 * {"t": 21.5, "meta": {"room": "k1"}} at QoS 1:
 *   "dev-${device}"           -> "dev-dev-1"
 *   "${group}/${qos}"         -> "GID_s/1"
 *   "${payload.meta.room}"    -> "k1"        (a string: no quotes)
 *   "${payload.meta}"         -> {"room":"k1"} (compact JSON)
 *   "${payload.nope}"         -> ""          (missing: empty)
 *   "cost: 5$$"               -> "cost: 5$"
 *   "${clientId}"             -> error: unknown field 'clientId' (...)
 * Payload paths walk nested objects by key; keys cannot contain '.', and
 * there are no array indexes. Numbers are read as double precision:
 * integers up to 2^53 render exactly ("12", "-7"), others with up to 17
 * significant digits. */
#include "template.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum tpl_field {
    TPL_LITERAL,
    TPL_CLIENTID,
    TPL_GROUP,
    TPL_DEVICE,
    TPL_TOPIC,
    TPL_QOS,
    TPL_MSGID,
    TPL_TIMESTAMP,
    TPL_PAYLOAD,
    TPL_JSON, /* payload.<key>[.<key>...] */
};

static const struct {
    const char *name;
    enum tpl_field field;
} tpl_fields[] = {
    {"clientid", TPL_CLIENTID},   {"group", TPL_GROUP},     {"device", TPL_DEVICE},
    {"topic", TPL_TOPIC},         {"qos", TPL_QOS},         {"msgid", TPL_MSGID},
    {"timestamp", TPL_TIMESTAMP}, {"payload", TPL_PAYLOAD},
};

#define TPL_FIELD_LIST \
    "clientid, group, device, topic, qos, msgid, timestamp, payload, payload.<key>..."
#define TPL_JSON_PREFIX "payload."

/* One piece of the template. A literal is text[off..off+len); a JSON path
 * is `keys` NUL-terminated keys starting at text + off. */
struct tpl_part {
    enum tpl_field field;
    size_t off, len;
    unsigned keys;
};

struct template
{
    char *text; /* literals and path keys, back to back */
    size_t text_len;
    struct tpl_part *parts;
    size_t count, cap;
    bool uses_json;
};

/* ---- Compiling --------------------------------------------------------- */

/* Copy a name for a message: at most 40 bytes, control bytes as '?'. */
static const char *tpl_quote(const char *s, size_t len, char *buf)
{
    size_t i, limit = len > 40 ? 40 : len;
    while (len > limit && limit > 0 && ((unsigned char)s[limit] & 0xc0) == 0x80)
        limit--;
    for (i = 0; i < limit; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (len > limit) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static struct tpl_part *tpl_add_part(struct template *t, enum tpl_field field)
{
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct tpl_part *p = realloc(t->parts, cap * sizeof *p);
        if (!p)
            return NULL;
        t->parts = p;
        t->cap = cap;
    }
    struct tpl_part *p = &t->parts[t->count++];
    memset(p, 0, sizeof *p);
    p->field = field;
    p->off = t->text_len;
    return p;
}

/* Literal bytes, merged into the previous part when it is a literal. The
 * text buffer was sized for the whole template up front. */
static int tpl_add_literal(struct template *t, const char *s, size_t len)
{
    struct tpl_part *p = t->count ? &t->parts[t->count - 1] : NULL;
    if (!p || p->field != TPL_LITERAL)
        p = tpl_add_part(t, TPL_LITERAL);
    if (!p)
        return -1;
    memcpy(t->text + t->text_len, s, len);
    t->text_len += len;
    p->len += len;
    return 0;
}

/* "payload.a.b": the keys are stored NUL-terminated; none may be empty. */
static int tpl_add_json(struct template *t, const char *name, size_t len, char *err, size_t errlen)
{
    const char *path = name + strlen(TPL_JSON_PREFIX);
    size_t plen = len - strlen(TPL_JSON_PREFIX);
    char q[48];
    struct tpl_part *p = tpl_add_part(t, TPL_JSON);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i <= plen; i++) {
        bool end = i == plen || path[i] == '.';
        if (end && (i == 0 || path[i - 1] == '.')) {
            snprintf(err, errlen, "field '%s' has an empty key (write ${payload.a.b})",
                     tpl_quote(name, len, q));
            return -1;
        }
        t->text[t->text_len++] = end ? '\0' : path[i];
        p->keys += end;
    }
    t->uses_json = true;
    return 0;
}

/* The field name[0..len) of a "${name}". */
static int tpl_add_field(struct template *t, const char *name, size_t len, size_t at, char *err,
                         size_t errlen)
{
    char q[48];
    if (len == 0) {
        snprintf(err, errlen, "empty field '${}' at character %zu", at);
        return -1;
    }
    if (len > strlen(TPL_JSON_PREFIX) && !strncmp(name, TPL_JSON_PREFIX, strlen(TPL_JSON_PREFIX)))
        return tpl_add_json(t, name, len, err, errlen);
    for (size_t i = 0; i < sizeof tpl_fields / sizeof tpl_fields[0]; i++) {
        if (strlen(tpl_fields[i].name) == len && !memcmp(tpl_fields[i].name, name, len)) {
            if (tpl_add_part(t, tpl_fields[i].field))
                return 0;
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    if (len == strlen(TPL_JSON_PREFIX) && !memcmp(name, TPL_JSON_PREFIX, len))
        snprintf(err, errlen, "field 'payload.' has an empty key (write ${payload.a.b})");
    else
        snprintf(err, errlen, "unknown field '%s' (fields: " TPL_FIELD_LIST ")",
                 tpl_quote(name, len, q));
    return -1;
}

/* What follows a '$' at text[i]: "$$" or "${name}". Returns the index after
 * it, or 0 with err set. */
static size_t tpl_dollar(struct template *t, const char *text, size_t i, char *err, size_t errlen)
{
    if (text[i + 1] == '$') {
        if (tpl_add_literal(t, "$", 1) == 0)
            return i + 2;
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    if (text[i + 1] != '{') {
        snprintf(err, errlen, "'$' at character %zu must start '${field}' or '$$' (a literal '$')",
                 i + 1);
        return 0;
    }
    const char *close = strchr(text + i + 2, '}');
    if (!close) {
        snprintf(err, errlen, "'${' at character %zu has no closing '}'", i + 1);
        return 0;
    }
    size_t len = (size_t)(close - (text + i + 2));
    if (tpl_add_field(t, text + i + 2, len, i + 1, err, errlen) < 0)
        return 0;
    return i + 3 + len;
}

int template_compile(const char *text, struct template **out, char *err, size_t errlen)
{
    char scratch[1];
    struct template *t = NULL;
    size_t len, i = 0;
    *out = NULL;
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    if (!text) {
        snprintf(err, errlen, "no template text");
        return -1;
    }
    len = strlen(text);
    if (!(t = calloc(1, sizeof *t)) || !(t->text = malloc(len + 1))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    while (i < len) {
        size_t lit = strcspn(text + i, "$");
        if (lit && tpl_add_literal(t, text + i, lit) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        i += lit;
        if (i < len && !(i = tpl_dollar(t, text, i, err, errlen)))
            goto fail;
    }
    *out = t;
    return 0;
fail:
    template_free(t);
    return -1;
}

int template_compile_kv(const struct kv *item, const char *where, struct template **out, char *err,
                        size_t errlen)
{
    char why[256];
    const char *sep = where && *where ? ": " : "";
    *out = NULL;
    if (!item->value)
        return kv_error(err, errlen, NULL, item, "%s%skey '%s': expected a template, got a mapping",
                        where ? where : "", sep, item->key);
    if (template_compile(item->value, out, why, sizeof why) < 0)
        return kv_error(err, errlen, NULL, item, "%s%skey '%s': %s", where ? where : "", sep,
                        item->key, why);
    return 0;
}

void template_free(struct template *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->parts);
    free(t);
}

bool template_uses_json(const struct template *t)
{
    return t && t->uses_json;
}

bool template_is_literal(const struct template *t)
{
    for (size_t i = 0; t && i < t->count; i++)
        if (t->parts[i].field != TPL_LITERAL)
            return false;
    return true;
}

/* ---- Rendering --------------------------------------------------------- */

/* cJSON's parser writes a process-wide "last error" variable on every
 * call; connector threads render concurrently, so parsing is serialised
 * (the walk and the printing are not). */
static pthread_mutex_t tpl_json_lock = PTHREAD_MUTEX_INITIALIZER;

/* The payload as a JSON document, or NULL when it is not exactly one JSON
 * value (surrounding whitespace allowed). */
static cJSON *tpl_parse_payload(const struct template_input *in)
{
    const char *end = NULL, *text = (const char *)in->payload;
    if (!text || !in->payload_len)
        return NULL;
    pthread_mutex_lock(&tpl_json_lock);
    cJSON *root = cJSON_ParseWithLengthOpts(text, in->payload_len, &end, 0);
    pthread_mutex_unlock(&tpl_json_lock);
    for (const char *p = end; root && p < text + in->payload_len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

static int tpl_append_str(struct buf *out, const char *s)
{
    return s ? buf_append(out, s, strlen(s)) : 0;
}

/* Integral values below 2^53 print exactly; others with the fewest of 15
 * or 17 significant digits that read back the same. */
static int tpl_append_number(struct buf *out, double d)
{
    char num[64];
    if (!isfinite(d))
        snprintf(num, sizeof num, "null"); /* what JSON can express */
    else if (d == 0)
        snprintf(num, sizeof num, "0");
    else if (d == floor(d) && fabs(d) < 9007199254740992.0)
        snprintf(num, sizeof num, "%.0f", d);
    else if (snprintf(num, sizeof num, "%.15g", d), strtod(num, NULL) != d)
        snprintf(num, sizeof num, "%.17g", d);
    return tpl_append_str(out, num);
}

static int tpl_append_json(struct buf *out, const cJSON *v)
{
    if (cJSON_IsString(v))
        return tpl_append_str(out, v->valuestring);
    if (cJSON_IsNumber(v))
        return tpl_append_number(out, v->valuedouble);
    char *s = cJSON_PrintUnformatted(v);
    if (!s)
        return -1;
    int rc = tpl_append_str(out, s);
    cJSON_free(s);
    return rc;
}

/* Walk the keys of part p from root; a missing key (or a non-object on
 * the way) renders nothing. */
static int tpl_render_json(const struct template *t, const struct tpl_part *p, const cJSON *root,
                           struct buf *out)
{
    const char *key = t->text + p->off;
    const cJSON *v = root;
    for (unsigned k = 0; v && k < p->keys; k++, key += strlen(key) + 1)
        v = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, key) : NULL;
    return v ? tpl_append_json(out, v) : 0;
}

/* ${group} (half 0) or ${device} (half 1) of "<group>@@@<device>". */
static int tpl_append_half(struct buf *out, const char *cid, int half)
{
    const char *sep = cid ? strstr(cid, "@@@") : NULL;
    if (!sep)
        return 0;
    return half == 0 ? buf_append(out, cid, (size_t)(sep - cid)) : tpl_append_str(out, sep + 3);
}

static int tpl_render_part(const struct template *t, const struct tpl_part *p,
                           const struct template_input *in, const cJSON *json, struct buf *out)
{
    char num[32];
    switch (p->field) {
    case TPL_LITERAL:
        return buf_append(out, t->text + p->off, p->len);
    case TPL_CLIENTID:
        return tpl_append_str(out, in->client_id);
    case TPL_GROUP:
        return tpl_append_half(out, in->client_id, 0);
    case TPL_DEVICE:
        return tpl_append_half(out, in->client_id, 1);
    case TPL_TOPIC:
        return tpl_append_str(out, in->topic);
    case TPL_QOS:
        snprintf(num, sizeof num, "%u", (unsigned)in->qos);
        return tpl_append_str(out, num);
    case TPL_MSGID:
        snprintf(num, sizeof num, "%016" PRIx64, in->msg_id);
        return tpl_append_str(out, num);
    case TPL_TIMESTAMP:
        snprintf(num, sizeof num, "%" PRId64, in->time_ms);
        return tpl_append_str(out, num);
    case TPL_PAYLOAD:
        return in->payload && in->payload_len ? buf_append(out, in->payload, in->payload_len) : 0;
    case TPL_JSON:
        return tpl_render_json(t, p, json, out);
    }
    return 0;
}

/* On failure the buffer is left as it was. */
int template_render(const struct template *t, const struct template_input *in, struct buf *out)
{
    size_t start = out->len;
    cJSON *json = t->uses_json ? tpl_parse_payload(in) : NULL;
    int rc = 0;
    for (size_t i = 0; i < t->count && rc == 0; i++)
        rc = tpl_render_part(t, &t->parts[i], in, json, out);
    cJSON_Delete(json);
    if (rc < 0)
        out->len = start;
    return rc < 0 ? -1 : 0;
}
