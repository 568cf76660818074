#include "hmap.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 16777619u;
    }
    return h;
}

static struct hmap_entry **find_slot(const struct hmap *m, const char *key, uint32_t h)
{
    struct hmap_entry **pp = &m->buckets[h & (m->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->next;
    return pp;
}

void *hmap_get(const struct hmap *m, const char *key)
{
    if (!m->nbuckets)
        return NULL;
    struct hmap_entry *e = *find_slot(m, key, hash_str(key));
    return e ? e->value : NULL;
}

static int grow(struct hmap *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 64;
    struct hmap_entry **nb = calloc(n, sizeof *nb);
    if (!nb)
        return -1;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_entry *e = m->buckets[i];
        while (e) {
            struct hmap_entry *next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = nb;
    m->nbuckets = n;
    return 0;
}

int hmap_put(struct hmap *m, const char *key, void *value)
{
    if (m->count >= m->nbuckets && grow(m) < 0 && !m->nbuckets)
        return -1;
    uint32_t h = hash_str(key);
    struct hmap_entry **pp = find_slot(m, key, h);
    if (*pp) {
        (*pp)->key = key;
        (*pp)->value = value;
        return 0;
    }
    struct hmap_entry *e = malloc(sizeof *e);
    if (!e)
        return -1;
    e->next = NULL;
    e->key = key;
    e->hash = h;
    e->value = value;
    *pp = e;
    m->count++;
    return 0;
}

void *hmap_del(struct hmap *m, const char *key)
{
    if (!m->nbuckets)
        return NULL;
    struct hmap_entry **pp = find_slot(m, key, hash_str(key));
    struct hmap_entry *e = *pp;
    if (!e)
        return NULL;
    void *v = e->value;
    *pp = e->next;
    free(e);
    m->count--;
    return v;
}

void hmap_foreach(const struct hmap *m, void (*fn)(const char *key, void *value, void *ctx),
                  void *ctx)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (struct hmap_entry *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->value, ctx);
}

void hmap_free(struct hmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_entry *e = m->buckets[i];
        while (e) {
            struct hmap_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = m->count = 0;
}
