/* Templates in rule targets: "${clientid}", "dev-${device}", "${payload.a.b}".
 *
 * Fields: ${clientid} the publisher's client ID; ${group} and ${device} its
 * two halves around "@@@" (empty when the ID has no "@@@"); ${topic};
 * ${qos}; ${msgid} (16 hex digits); ${timestamp} (epoch milliseconds);
 * ${payload} (the payload bytes as they are); ${payload.a.b} (a field of a
 * JSON payload: a string renders without quotes, other values as compact
 * JSON, a missing field or a payload that is not JSON renders empty).
 * "$$" is a literal "$". Anything else after "$" is an error at compile
 * time, as is an unknown field:
 *   "${clientId}" -> "unknown field 'clientId' (fields: clientid, group, ...)"
 * Compiling is done once per rule (rules_build); rendering runs on the
 * connector threads and is thread-safe (the template is read-only). */
#ifndef MQB_TEMPLATE_H
#define MQB_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/kv.h"

struct template;

/* What a template renders from. */
struct template_input {
    const char *client_id;
    const char *topic;
    uint8_t qos;
    uint64_t msg_id;
    int64_t time_ms;
    const uint8_t *payload;
    uint32_t payload_len;
};

/* 0 and *out, or -1 with the reason in err (no position: the caller adds
 * it). */
int template_compile(const char *text, struct template **out, char *err, size_t errlen);
/* The same for a setting (a scalar item of a rule's options), for
 * connectors' compile: on error -1 with "file:line:col: where: key 'k':
 * reason" (where may be NULL), e.g.
 *   rules.yaml:9:7: rule 'x': key 'key': unknown field 'clientId' (fields: ...)
 * A mapping instead of a scalar is refused. */
int template_compile_kv(const struct kv *item, const char *where, struct template **out, char *err,
                        size_t errlen);
void template_free(struct template *t);
/* True when rendering needs the payload parsed as JSON. */
bool template_uses_json(const struct template *t);
/* True when the template is one literal (no fields). */
bool template_is_literal(const struct template *t);
/* Append the rendering to out. 0, or -1 when out of memory. */
int template_render(const struct template *t, const struct template_input *in, struct buf *out);

#endif
