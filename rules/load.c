/* Rule files: one YAML document whose top level is a mapping with the
 * single key `rules`, a sequence of rule mappings (see rules.h):
 *
 *   rules:
 *     - name: telemetry-to-kafka
 *       type: outbound
 *       source: { topic: SensorData }
 *       target: { connector: events-kafka, topic: sensor-telemetry }
 *
 * An empty file, a file of comments, `rules:` and `rules: []` hold no
 * rules. Everything else at the top level is refused with its position:
 *   r.yaml:3:1: unknown key 'rule' (a rule file has only the key 'rules')
 *   r.yaml:1:1: expected a mapping with the key 'rules', got a sequence
 * Files are read whole, at most YAML_MAX_FILE_SIZE (1 MiB). This file only
 * reads; rules.c gives the mappings their meaning. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/buf.h"
#include "../common/fs.h"
#include "rules.h"
#include "yaml.h"

#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
static int
load_fail(char *err, size_t errlen, const char *file, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    int len = snprintf(err, errlen, "%s:%zu:%zu: ", file, n->start_mark.line + 1,
                       n->start_mark.column + 1);
    if (len >= 0 && (size_t)len < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + len, errlen - (size_t)len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* The top-level mapping: only `rules`, once. */
static int load_root(yaml_document_t *doc, const char *file, struct kvlist *out, char *err,
                     size_t errlen)
{
    yaml_node_t *root = yaml_document_get_root_node(doc);
    char got[64];
    bool seen = false;
    if (!root || yaml_node_is_null(root))
        return 0;
    if (yaml_check_tag(root, file, "", err, errlen) < 0)
        return -1;
    if (root->type != YAML_MAPPING_NODE)
        return load_fail(err, errlen, file, root, "expected a mapping with the key 'rules', got %s",
                         yaml_node_describe(root, got, sizeof got));
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *key = yaml_document_get_node(doc, p->key);
        if (yaml_check_tag(key, file, "", err, errlen) < 0)
            return -1;
        if (key->type != YAML_SCALAR_NODE || yaml_node_is_null(key))
            return load_fail(err, errlen, file, key, "expected a key name, got %s",
                             yaml_node_describe(key, got, sizeof got));
        if (strcmp((char *)key->data.scalar.value, "rules") != 0 || key->data.scalar.length != 5)
            return load_fail(err, errlen, file, key,
                             "unknown key %s (a rule file has only the key 'rules')",
                             yaml_node_describe(key, got, sizeof got));
        if (seen)
            return load_fail(err, errlen, file, key, "duplicate key 'rules'");
        seen = true;
        if (yaml_to_kvlist(doc, yaml_document_get_node(doc, p->value), file, "rules", out, err,
                           errlen) < 0)
            return -1;
    }
    return 0;
}

/* The interned copy of name in files (added when new), or NULL. */
static const char *load_intern(struct rules_files *files, const char *name, bool *added)
{
    *added = false;
    for (unsigned i = 0; i < files->count; i++)
        if (!strcmp(files->names[i], name))
            return files->names[i];
    char **names = realloc(files->names, (files->count + 1) * sizeof *names);
    if (!names)
        return NULL;
    files->names = names;
    if (!(names[files->count] = strdup(name)))
        return NULL;
    *added = true;
    return names[files->count++];
}

int rules_text_read(const char *text, size_t len, const char *name, struct rules_files *files,
                    struct kvlist *out, char *err, size_t errlen)
{
    yaml_document_t doc;
    unsigned keep = out->count;
    bool added;
    char scratch[1];
    int rc = -1;
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    const char *file = load_intern(files, name ? name : "<string>", &added);
    if (!file) {
        snprintf(err, errlen, "%s: out of memory", name ? name : "<string>");
        return -1;
    }
    if (yaml_load_document(text, len, file, &doc, err, errlen) < 0)
        goto done;
    rc = load_root(&doc, file, out, err, errlen);
    yaml_document_delete(&doc);
done:
    if (rc < 0) {
        while (out->count > keep)
            kvmap_free(out->items[--out->count]);
        if (added)
            free(files->names[--files->count]);
    }
    return rc;
}

/* The whole file into b, refusing more than YAML_MAX_FILE_SIZE bytes. */
static int load_file(const char *path, struct buf *b, char *err, size_t errlen)
{
    return fs_read_file(path, YAML_MAX_FILE_SIZE, b, err, errlen);
}

int rules_file_read(const char *path, struct rules_files *files, struct kvlist *out, char *err,
                    size_t errlen)
{
    struct buf b = {0};
    char scratch[1];
    int rc = -1;
    if (!err || !errlen) {
        err = scratch;
        errlen = sizeof scratch;
    }
    if (load_file(path, &b, err, errlen) == 0)
        rc = rules_text_read(b.data ? (const char *)b.data : "", b.len, path, files, out, err,
                             errlen);
    buf_free(&b);
    return rc;
}

void rules_files_clear(struct rules_files *files)
{
    if (!files)
        return;
    for (unsigned i = 0; i < files->count; i++)
        free(files->names[i]);
    free(files->names);
    files->names = NULL;
    files->count = 0;
}
