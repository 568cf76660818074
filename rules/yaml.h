/* YAML documents (libyaml's document API) to settings trees (struct kvmap,
 * common/kv.h) with positions, for the rule files and for the instance
 * configuration's `connectors:` and `rules:` sections.
 *
 * What converts: a mapping whose keys are plain or quoted scalars and whose
 * values are scalars (kept as text: "5", "true" and "'5'" all become the
 * string) or nested mappings. What is refused, naming file:line:column and
 * the key path:
 *   r.yaml:4:7: target.brokers: sequences are not supported here (write one value)
 *   r.yaml:5:7: target.key: expected a value, got nothing   (also ~ and null)
 *   r.yaml:6:7: target: duplicate key 'topic'
 *   r.yaml:7:12: target.qos: unexpected tag '!!int'
 * plus keys that are not scalars, NUL bytes in text, nesting deeper than
 * YAML_KV_MAX_DEPTH and documents that expand (through aliases) to more
 * than YAML_KV_MAX_ITEMS items. An empty quoted string ('') is a value.
 * Positions: a kv is at its key, a kvmap at the mapping itself. */
#ifndef MQB_RULES_YAML_H
#define MQB_RULES_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

#include "../common/kv.h"

enum {
    YAML_KV_MAX_DEPTH = 16,      /* nested mappings below the converted one */
    YAML_KV_MAX_ITEMS = 100000,  /* keys converted by one call */
    YAML_MAX_FILE_SIZE = 1 << 20 /* what the loaders read */
};

/* Parse text[0..len) as exactly one YAML document (a second document is an
 * error; no document gives an empty one, whose root is NULL). 0 and *doc
 * (free with yaml_document_delete), or -1 with "file:line:col: problem". */
int yaml_load_document(const char *text, size_t len, const char *file, yaml_document_t *doc,
                       char *err, size_t errlen);

/* Convert the mapping node into a new *out. file is borrowed into every
 * position (it must outlive *out). 0, or -1 with "file:line:col: ..." in
 * err and *out NULL. */
int yaml_to_kvmap(yaml_document_t *doc, yaml_node_t *node, const char *file, struct kvmap **out,
                  char *err, size_t errlen);

/* Append the mappings of a sequence node to out (a null node is an empty
 * sequence). what names the sequence in messages ("rules" gives
 * "rules[2]: expected a mapping, got 'x'"). On error -1 and out is as it
 * was before the call. */
int yaml_to_kvlist(yaml_document_t *doc, yaml_node_t *node, const char *file, const char *what,
                   struct kvlist *out, char *err, size_t errlen);

/* A plain scalar that YAML reads as null: nothing, ~, null, Null, NULL. */
bool yaml_node_is_null(const yaml_node_t *n);
/* What a node is, for "got ..." messages: "a mapping", "a sequence",
 * "nothing", "null", "'text'" (cut at 40 bytes). buf: 64 bytes or more. */
const char *yaml_node_describe(const yaml_node_t *n, char *buf, size_t buflen);
/* Refuse an explicit tag other than the node kind's default ("!!str x" is
 * fine, "!!int 5" and "!foo x" are not). 0 or -1 with
 * "file:line:col: where: unexpected tag 'T'". */
int yaml_check_tag(const yaml_node_t *n, const char *file, const char *where, char *err,
                   size_t errlen);

#endif
