/* YAML nodes to settings trees; the rules are in yaml.h.
 *
 * The document is walked recursively with a depth limit (an alias may point
 * back into its own mapping, which makes the node graph cyclic) and an item
 * budget (aliases can make a small file expand exponentially). */
#include "yaml.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/hmap.h"

struct ywalk {
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t errlen;
    unsigned items; /* converted so far, against YAML_KV_MAX_ITEMS */
    char path[256]; /* key path of the node being converted, for messages */
};

#if defined(__GNUC__)
#define YW_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define YW_PRINTF(fmt, args)
#endif

static int yw_vfail(char *err, size_t errlen, const char *file, const yaml_mark_t *at,
                    const char *where, const char *fmt, va_list ap) YW_PRINTF(6, 0);
static int yw_fail(struct ywalk *w, const yaml_node_t *n, const char *fmt, ...) YW_PRINTF(3, 4);
static int yw_fail_at(char *err, size_t errlen, const char *file, const yaml_mark_t *at,
                      const char *fmt, ...) YW_PRINTF(5, 6);

/* "file:line:col: where: message" (no position when at is NULL, no
 * "where: " when where is empty). Returns -1. */
static int yw_vfail(char *err, size_t errlen, const char *file, const yaml_mark_t *at,
                    const char *where, const char *fmt, va_list ap)
{
    int n;
    if (!err || !errlen)
        return -1;
    if (at)
        n = snprintf(err, errlen, "%s:%zu:%zu: %s%s", file, at->line + 1, at->column + 1, where,
                     *where ? ": " : "");
    else
        n = snprintf(err, errlen, "%s: %s%s", file, where, *where ? ": " : "");
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    return -1;
}

static int yw_fail(struct ywalk *w, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    yw_vfail(w->err, w->errlen, w->file, n ? &n->start_mark : NULL, w->path, fmt, ap);
    va_end(ap);
    return -1;
}

static int yw_fail_at(char *err, size_t errlen, const char *file, const yaml_mark_t *at,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    yw_vfail(err, errlen, file, at, "", fmt, ap);
    va_end(ap);
    return -1;
}

/* Text for a message: at most 40 bytes, cut on a UTF-8 boundary, control
 * bytes as '?'. buf holds 44 bytes or more. */
static const char *yw_quote(const void *text, size_t len, char *buf)
{
    const unsigned char *s = text;
    size_t limit = 40, i;
    while (len > limit && limit > 0 && (s[limit] & 0xc0) == 0x80)
        limit--;
    for (i = 0; i < len && i < limit; i++)
        buf[i] = (s[i] < 0x20 || s[i] == 0x7f) ? '?' : (char)s[i];
    if (len > limit) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* ---- Node helpers ------------------------------------------------------ */

bool yaml_node_is_null(const yaml_node_t *n)
{
    if (!n || n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

const char *yaml_node_describe(const yaml_node_t *n, char *buf, size_t buflen)
{
    char q[48];
    if (!n)
        return "nothing";
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a sequence";
    if (yaml_node_is_null(n))
        return n->data.scalar.length ? "null" : "nothing";
    snprintf(buf, buflen, "'%s'", yw_quote(n->data.scalar.value, n->data.scalar.length, q));
    return buf;
}

int yaml_check_tag(const yaml_node_t *n, const char *file, const char *where, char *err,
                   size_t errlen)
{
    const char *want = n->type == YAML_SCALAR_NODE     ? YAML_DEFAULT_SCALAR_TAG
                       : n->type == YAML_SEQUENCE_NODE ? YAML_DEFAULT_SEQUENCE_TAG
                                                       : YAML_DEFAULT_MAPPING_TAG;
    char q[48], at[300];
    if (!n->tag || !strcmp((const char *)n->tag, want))
        return 0;
    /* Show the short form of the YAML core tags, as written. */
    const char *tag = (const char *)n->tag, *core = "tag:yaml.org,2002:";
    if (!strncmp(tag, core, strlen(core)))
        snprintf(at, sizeof at, "!!%s", tag + strlen(core));
    else
        snprintf(at, sizeof at, "%s", tag);
    return yw_fail_at(err, errlen, file, &n->start_mark, "%s%sunexpected tag '%s'",
                      where ? where : "", where && *where ? ": " : "", yw_quote(at, strlen(at), q));
}

static int yw_check_tag(struct ywalk *w, const yaml_node_t *n)
{
    return yaml_check_tag(n, w->file, w->path, w->err, w->errlen);
}

/* ---- Mappings ---------------------------------------------------------- */

static int yw_map(struct ywalk *w, const yaml_node_t *node, int depth, struct kvmap **out);

/* A key: a non-empty scalar without NUL bytes, not seen before in m. */
static int yw_key(struct ywalk *w, const yaml_node_t *key, struct kvmap *m, struct hmap *seen)
{
    char got[64], q[48];
    if (yw_check_tag(w, key) < 0)
        return -1;
    if (key->type != YAML_SCALAR_NODE || yaml_node_is_null(key) || !key->data.scalar.length)
        return yw_fail(w, key, "expected a key name, got %s",
                       key->type == YAML_SCALAR_NODE && !yaml_node_is_null(key)
                           ? "''"
                           : yaml_node_describe(key, got, sizeof got));
    const char *name = (const char *)key->data.scalar.value;
    if (strlen(name) != key->data.scalar.length)
        return yw_fail(w, key, "key '%s' holds a NUL byte",
                       yw_quote(name, key->data.scalar.length, q));
    if (hmap_get(seen, name))
        return yw_fail(w, key, "duplicate key '%s'", yw_quote(name, strlen(name), q));
    struct kv *item = &m->items[m->count];
    if (!(item->key = strdup(name)))
        return yw_fail(w, NULL, "out of memory");
    m->count++; /* from here on kvmap_free releases the item */
    item->file = w->file;
    item->line = (int)key->start_mark.line + 1;
    item->col = (int)key->start_mark.column + 1;
    if (hmap_put(seen, item->key, item) < 0)
        return yw_fail(w, NULL, "out of memory");
    return 0;
}

/* The value of item (already keyed): a scalar or a nested mapping. The
 * path names the item while its value is converted. */
static int yw_value(struct ywalk *w, const yaml_node_t *value, struct kv *item, int depth)
{
    char got[64], q[48];
    size_t plen = strlen(w->path);
    int rc = -1;
    snprintf(w->path + plen, sizeof w->path - plen, "%s%s", plen ? "." : "",
             yw_quote(item->key, strlen(item->key), q));
    if (yw_check_tag(w, value) < 0)
        goto done;
    if (value->type == YAML_SEQUENCE_NODE) {
        yw_fail(w, value, "sequences are not supported here (write one value)");
    } else if (value->type == YAML_MAPPING_NODE) {
        if (depth >= YAML_KV_MAX_DEPTH)
            yw_fail(w, value, "nested deeper than %d mappings", YAML_KV_MAX_DEPTH);
        else
            rc = yw_map(w, value, depth + 1, &item->map);
    } else if (yaml_node_is_null(value)) {
        yw_fail(w, value, "expected a value, got %s", yaml_node_describe(value, got, sizeof got));
    } else if (strlen((const char *)value->data.scalar.value) != value->data.scalar.length) {
        yw_fail(w, value, "the value holds a NUL byte");
    } else if (!(item->value = strdup((const char *)value->data.scalar.value))) {
        yw_fail(w, NULL, "out of memory");
    } else {
        rc = 0;
    }
done:
    if (rc == 0)
        w->path[plen] = '\0'; /* on error the path stays for the message */
    return rc;
}

static int yw_map(struct ywalk *w, const yaml_node_t *node, int depth, struct kvmap **out)
{
    char got[64];
    struct hmap seen = {0};
    struct kvmap *m = NULL;
    *out = NULL;
    if (yw_check_tag(w, node) < 0)
        return -1;
    if (node->type != YAML_MAPPING_NODE)
        return yw_fail(w, node, "expected a mapping, got %s",
                       yaml_node_describe(node, got, sizeof got));
    size_t n = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    if (n > YAML_KV_MAX_ITEMS - w->items)
        return yw_fail(w, node, "more than %d keys in one document", YAML_KV_MAX_ITEMS);
    w->items += (unsigned)n;
    if (!(m = calloc(1, sizeof *m)) || (n && !(m->items = calloc(n, sizeof *m->items)))) {
        yw_fail(w, NULL, "out of memory");
        goto fail;
    }
    m->file = w->file;
    m->line = (int)node->start_mark.line + 1;
    m->col = (int)node->start_mark.column + 1;
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        if (yw_key(w, yaml_document_get_node(w->doc, p->key), m, &seen) < 0 ||
            yw_value(w, yaml_document_get_node(w->doc, p->value), &m->items[m->count - 1], depth) <
                0)
            goto fail;
    }
    hmap_free(&seen);
    *out = m;
    return 0;
fail:
    hmap_free(&seen);
    kvmap_free(m);
    return -1;
}

int yaml_to_kvmap(yaml_document_t *doc, yaml_node_t *node, const char *file, struct kvmap **out,
                  char *err, size_t errlen)
{
    struct ywalk w = {.doc = doc, .file = file ? file : "<string>", .err = err, .errlen = errlen};
    *out = NULL;
    if (!node)
        return yw_fail(&w, NULL, "expected a mapping, got nothing");
    return yw_map(&w, node, 0, out);
}

/* Drop the items of l from index keep on. */
static void yw_truncate(struct kvlist *l, unsigned keep)
{
    while (l->count > keep)
        kvmap_free(l->items[--l->count]);
}

int yaml_to_kvlist(yaml_document_t *doc, yaml_node_t *node, const char *file, const char *what,
                   struct kvlist *out, char *err, size_t errlen)
{
    struct ywalk w = {.doc = doc, .file = file ? file : "<string>", .err = err, .errlen = errlen};
    unsigned keep = out->count;
    char got[64];
    snprintf(w.path, sizeof w.path, "%s", what ? what : "");
    if (!node || yaml_node_is_null(node))
        return 0;
    if (yw_check_tag(&w, node) < 0)
        return -1;
    if (node->type != YAML_SEQUENCE_NODE)
        return yw_fail(&w, node, "expected a sequence of mappings, got %s",
                       yaml_node_describe(node, got, sizeof got));
    for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top;
         it++) {
        struct kvmap *m;
        snprintf(w.path, sizeof w.path, "%s[%zu]", what ? what : "",
                 (size_t)(it - node->data.sequence.items.start));
        if (yw_map(&w, yaml_document_get_node(doc, *it), 0, &m) < 0)
            goto fail;
        if (kvlist_push(out, m) < 0) {
            yw_fail(&w, NULL, "out of memory");
            goto fail;
        }
    }
    return 0;
fail:
    yw_truncate(out, keep);
    return -1;
}

/* ---- Parsing ----------------------------------------------------------- */

/* libyaml's problem and position. A reader error (bad UTF-8) only has a
 * byte offset: the line and column are counted from the text. */
static int yw_syntax_error(const yaml_parser_t *p, const char *file, const char *text, size_t len,
                           char *err, size_t errlen)
{
    yaml_mark_t at = p->problem_mark;
    if (p->error == YAML_MEMORY_ERROR)
        return yw_fail_at(err, errlen, file, NULL, "out of memory");
    if (p->error == YAML_READER_ERROR) {
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
    const char *problem = p->problem ? p->problem : "syntax error";
    if (p->context)
        return yw_fail_at(err, errlen, file, &at, "%s (%s at %zu:%zu)", problem, p->context,
                          p->context_mark.line + 1, p->context_mark.column + 1);
    return yw_fail_at(err, errlen, file, &at, "%s", problem);
}

int yaml_load_document(const char *text, size_t len, const char *file, yaml_document_t *doc,
                       char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t next;
    int rc = -1;
    file = file ? file : "<string>";
    memset(doc, 0, sizeof *doc);
    if (!text)
        len = 0;
    if (!yaml_parser_initialize(&parser))
        return yw_fail_at(err, errlen, file, NULL, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    if (!yaml_parser_load(&parser, doc)) {
        yw_syntax_error(&parser, file, text, len, err, errlen);
        goto done;
    }
    if (yaml_document_get_root_node(doc)) { /* a second document is an error */
        if (!yaml_parser_load(&parser, &next)) {
            yw_syntax_error(&parser, file, text, len, err, errlen);
            yaml_document_delete(doc);
            goto done;
        }
        yaml_node_t *root = yaml_document_get_root_node(&next);
        if (root)
            yw_fail_at(err, errlen, file, &root->start_mark, "only one YAML document is allowed");
        yaml_document_delete(&next);
        if (root) {
            yaml_document_delete(doc);
            goto done;
        }
    }
    rc = 0;
done:
    yaml_parser_delete(&parser);
    return rc;
}
