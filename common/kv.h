/* Settings as a tree of keys with their source positions: what the YAML
 * loaders hand to the parts that own the meaning (a connector's settings, a
 * rule's target). Values are scalars (value != NULL) or nested mappings
 * (map != NULL). Positions are 1-based; file is borrowed from the loader
 * (it outlives the map).
 *
 * A schema (an array of struct kv_key ending with a NULL name) declares the
 * keys a map may hold, as data: kv_check() refuses unknown keys, missing
 * required keys and wrong kinds, naming file:line:column. */
#ifndef MQB_KV_H
#define MQB_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kvmap;

struct kv {
    char *key;
    char *value;       /* scalar, NUL-terminated; NULL for a mapping */
    struct kvmap *map; /* nested mapping; NULL for a scalar */
    const char *file;
    int line, col;
};

struct kvmap {
    struct kv *items;
    unsigned count;
    const char *file; /* position of the mapping itself */
    int line, col;
};

/* A list of mappings (e.g. the items of a `rules:` sequence). */
struct kvlist {
    struct kvmap **items;
    unsigned count;
};
/* Append (takes ownership of m). 0 or -1. */
int kvlist_push(struct kvlist *l, struct kvmap *m);
/* Free the maps and the array; the struct may be reused. Accepts NULL. */
void kvlist_clear(struct kvlist *l);

enum kv_kind { KV_SCALAR, KV_MAP };
enum { KV_REQUIRED = 1 };

struct kv_key {
    const char *name;
    enum kv_kind kind;
    int flags; /* KV_REQUIRED */
    const char *help;
};

/* The item with that key, or NULL. */
const struct kv *kv_find(const struct kvmap *m, const char *key);
/* Its scalar value, or def when absent. */
const char *kv_str(const struct kvmap *m, const char *key, const char *def);

/* Check m against schema (NULL-name terminated). where names the map in
 * messages ("connector 'pg'"). 0 or -1 with "file:line:col: where: ..." */
int kv_check(const struct kvmap *m, const struct kv_key *schema, const char *where, char *err,
             size_t errlen);

/* Format "file:line:col: " + message about item (or about the map when item
 * is NULL) into err. Returns -1 for `return kv_error(...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
int kv_error(char *err, size_t errlen, const struct kvmap *m, const struct kv *item,
             const char *fmt, ...);

/* Parse an unsigned decimal scalar in [min, max]. 0 or -1. */
int kv_uint(const struct kv *item, uint64_t min, uint64_t max, uint64_t *out);
/* true/false/yes/no. 0 or -1. */
int kv_bool(const struct kv *item, bool *out);

/* Deep copy (file pointers are shared). NULL when out of memory. */
struct kvmap *kvmap_dup(const struct kvmap *m);
/* Deep copy leaving out the item named skip (NULL: none), keeping m's
 * position (e.g. a rule's target without `connector`). NULL when out of
 * memory or m is NULL. */
struct kvmap *kvmap_dup_without(const struct kvmap *m, const char *skip);
/* Free the items and the map itself. Accepts NULL. */
void kvmap_free(struct kvmap *m);

#endif
