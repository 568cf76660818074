/* Settings trees with positions, and their schema checks.
 *
 * Rule: a map is checked against a schema (struct kv_key[], NULL-name
 * terminated) that lists every key it may hold. kv_check() refuses, in the
 * order the items appear, the first unknown key (with the nearest known
 * name as a hint), a key given twice, or a key of the wrong kind; then the
 * first required key that is missing, at the map's own position:
 *
 *   pg.yaml:4:5: connector 'pg': unknown key 'tabel' (did you mean 'table'?)
 *   pg.yaml:6:5: connector 'pg': key 'table': expected a value, got a mapping
 *   pg.yaml:3:5: connector 'pg': missing required key 'dsn'
 *
 * An item's position is the position of its key in the file. */
#include "kv.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Lists ------------------------------------------------------------- */

/* The array holds 4 items, then doubles: a push must grow it when count is
 * 0 or a power of two >= 4. (A list truncated by its owner may grow early;
 * that is harmless.) */
static int kvlist_grow(struct kvlist *l)
{
    unsigned n = l->count;
    if (n != 0 && (n < 4 || (n & (n - 1)) != 0))
        return 0;
    if (n > UINT_MAX / 2)
        return -1;
    size_t cap = n ? (size_t)n * 2 : 4;
    struct kvmap **items = realloc(l->items, cap * sizeof *items);
    if (!items)
        return -1;
    l->items = items;
    return 0;
}

/* Ownership of m moves to the list even on failure (m is then freed), so a
 * caller never frees m after the call. */
int kvlist_push(struct kvlist *l, struct kvmap *m)
{
    if (kvlist_grow(l) < 0) {
        kvmap_free(m);
        return -1;
    }
    l->items[l->count++] = m;
    return 0;
}

void kvlist_clear(struct kvlist *l)
{
    if (!l)
        return;
    for (unsigned i = 0; i < l->count; i++)
        kvmap_free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

/* ---- Lookup ------------------------------------------------------------ */

const struct kv *kv_find(const struct kvmap *m, const char *key)
{
    if (!m || !key)
        return NULL;
    for (unsigned i = 0; i < m->count; i++)
        if (!strcmp(m->items[i].key, key))
            return &m->items[i];
    return NULL;
}

/* A mapping where a value was expected also yields def: the schema check
 * (kv_check) is where a wrong kind is reported. */
const char *kv_str(const struct kvmap *m, const char *key, const char *def)
{
    const struct kv *item = kv_find(m, key);
    return item && item->value ? item->value : def;
}

/* ---- Messages ---------------------------------------------------------- */

int kv_error(char *err, size_t errlen, const struct kvmap *m, const struct kv *item,
             const char *fmt, ...)
{
    const char *file = item ? item->file : m ? m->file : NULL;
    int line = item ? item->line : m ? m->line : 0;
    int col = item ? item->col : m ? m->col : 0;
    int n = 0;
    va_list ap;
    if (!err || !errlen)
        return -1;
    err[0] = '\0';
    if (file)
        n = snprintf(err, errlen, "%s:%d:%d: ", file, line, col);
    if (n >= 0 && (size_t)n < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Copy text for a message: at most 40 bytes, cut on a UTF-8 boundary,
 * control bytes as '?'. buf has room for 44 bytes. */
static const char *kv_quote(const char *s, char *buf)
{
    size_t len = strlen(s), limit = 40, i;
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

/* ---- Schema check ------------------------------------------------------ */

static char kv_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static size_t kv_min(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Edit distance of two short strings for hints (longer ones: SIZE_MAX):
 * insertions, deletions, substitutions and swaps of neighbours count one,
 * case is ignored ("tabel" and "DSN" are one edit from "table", "dsn"). */
static size_t kv_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), d[33][33];
    if (la > 32 || lb > 32)
        return SIZE_MAX;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = kv_lower(a[i - 1]) != kv_lower(b[j - 1]);
            d[i][j] = kv_min(d[i - 1][j - 1] + cost, kv_min(d[i - 1][j], d[i][j - 1]) + 1);
            if (i > 1 && j > 1 && kv_lower(a[i - 1]) == kv_lower(b[j - 2]) &&
                kv_lower(a[i - 2]) == kv_lower(b[j - 1]))
                d[i][j] = kv_min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[la][lb];
}

/* The schema entry named key, or NULL. */
static const struct kv_key *kv_schema_find(const struct kv_key *schema, const char *key)
{
    for (const struct kv_key *k = schema; k->name; k++)
        if (!strcmp(k->name, key))
            return k;
    return NULL;
}

/* " (did you mean 'x'?)" for the closest schema name: up to 1 edit for
 * short names, 3 for names of 8 characters or more; "" when none. */
static const char *kv_hint(const struct kv_key *schema, const char *key, char *buf, size_t len)
{
    size_t best = strlen(key) >= 8 ? 4 : 2;
    buf[0] = '\0';
    for (const struct kv_key *k = schema; k->name; k++) {
        size_t d = kv_distance(key, k->name);
        if (d < best) {
            best = d;
            snprintf(buf, len, " (did you mean '%s'?)", k->name);
        }
    }
    return buf;
}

/* One item against the schema: known, not repeated, of the right kind. */
static int kv_check_item(const struct kvmap *m, unsigned i, const struct kv_key *schema,
                         const char *where, const char *sep, char *err, size_t errlen)
{
    const struct kv *item = &m->items[i];
    const struct kv_key *k = kv_schema_find(schema, item->key);
    char q[48], q2[48], hint[96];
    if (!k)
        return kv_error(err, errlen, m, item, "%s%sunknown key '%s'%s", where, sep,
                        kv_quote(item->key, q), kv_hint(schema, item->key, hint, sizeof hint));
    for (unsigned j = 0; j < i; j++)
        if (!strcmp(m->items[j].key, item->key))
            return kv_error(err, errlen, m, item, "%s%sduplicate key '%s'", where, sep, k->name);
    if (k->kind == KV_SCALAR && !item->value)
        return kv_error(err, errlen, m, item, "%s%skey '%s': expected a value, got a mapping",
                        where, sep, k->name);
    if (k->kind == KV_MAP && !item->map)
        return kv_error(err, errlen, m, item, "%s%skey '%s': expected a mapping, got '%s'", where,
                        sep, k->name, kv_quote(item->value ? item->value : "", q2));
    return 0;
}

int kv_check(const struct kvmap *m, const struct kv_key *schema, const char *where, char *err,
             size_t errlen)
{
    const char *sep = where && *where ? ": " : "";
    where = where ? where : "";
    if (!m)
        return 0;
    for (unsigned i = 0; i < m->count; i++)
        if (kv_check_item(m, i, schema, where, sep, err, errlen) < 0)
            return -1;
    for (const struct kv_key *k = schema; k->name; k++)
        if ((k->flags & KV_REQUIRED) && !kv_find(m, k->name))
            return kv_error(err, errlen, m, NULL, "%s%smissing required key '%s'", where, sep,
                            k->name);
    return 0;
}

/* ---- Scalars ----------------------------------------------------------- */

/* Plain decimal only: no sign, no leading zero, no separators or spaces. */
int kv_uint(const struct kv *item, uint64_t min, uint64_t max, uint64_t *out)
{
    const char *s = item ? item->value : NULL;
    if (!s || s[0] == '\0' || (s[0] == '0' && s[1] != '\0'))
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int kv_bool(const struct kv *item, bool *out)
{
    const char *s = item ? item->value : NULL;
    if (!s)
        return -1;
    if (!strcmp(s, "true") || !strcmp(s, "yes"))
        *out = true;
    else if (!strcmp(s, "false") || !strcmp(s, "no"))
        *out = false;
    else
        return -1;
    return 0;
}

/* ---- Copies ------------------------------------------------------------ */

/* Copy src into the zeroed dst; on failure dst holds what was copied, for
 * kvmap_free. */
static int kv_copy(struct kv *dst, const struct kv *src)
{
    dst->file = src->file;
    dst->line = src->line;
    dst->col = src->col;
    if (!(dst->key = strdup(src->key)))
        return -1;
    if (src->value)
        return (dst->value = strdup(src->value)) ? 0 : -1;
    return (dst->map = kvmap_dup(src->map)) ? 0 : -1;
}

struct kvmap *kvmap_dup_without(const struct kvmap *m, const char *skip)
{
    struct kvmap *d;
    if (!m || !(d = calloc(1, sizeof *d)))
        return NULL;
    d->file = m->file;
    d->line = m->line;
    d->col = m->col;
    if (m->count && !(d->items = calloc(m->count, sizeof *d->items)))
        goto fail;
    for (unsigned i = 0; i < m->count; i++) {
        if (skip && !strcmp(m->items[i].key, skip))
            continue;
        d->count++; /* counted before the copy, so that a half copy is freed */
        if (kv_copy(&d->items[d->count - 1], &m->items[i]) < 0)
            goto fail;
    }
    return d;
fail:
    kvmap_free(d);
    return NULL;
}

struct kvmap *kvmap_dup(const struct kvmap *m)
{
    return kvmap_dup_without(m, NULL);
}

void kvmap_free(struct kvmap *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->count; i++) {
        free(m->items[i].key);
        free(m->items[i].value);
        kvmap_free(m->items[i].map);
    }
    free(m->items);
    free(m);
}
