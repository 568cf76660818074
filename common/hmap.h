/* A string-keyed hash map (separate chaining, power-of-two buckets,
 * FNV-1a). Keys are borrowed: the caller keeps each key alive while its
 * entry exists (typically the key lives inside the value). */
#ifndef MQB_HMAP_H
#define MQB_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hmap_entry {
    struct hmap_entry *next;
    const char *key;
    uint32_t hash;
    void *value;
};

struct hmap {
    struct hmap_entry **buckets;
    size_t nbuckets; /* power of two, 0 before the first insert */
    size_t count;
};

/* Zero-initialised struct hmap is an empty map. */
void *hmap_get(const struct hmap *m, const char *key);
/* Insert or replace. 0 on success, -1 out of memory. */
int hmap_put(struct hmap *m, const char *key, void *value);
/* Remove and return the value, or NULL when absent. */
void *hmap_del(struct hmap *m, const char *key);
/* Visit every entry; fn may not modify the map. */
void hmap_foreach(const struct hmap *m, void (*fn)(const char *key, void *value, void *ctx),
                  void *ctx);
/* Free the table (not keys nor values). Accepts NULL. */
void hmap_free(struct hmap *m);

#endif
