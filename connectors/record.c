/* Records: import_record_new() makes an import_record in one allocation
 * with copies of its strings; export_record_input() is what templates see
 * of an export_record. */
#include <stdlib.h>
#include <string.h>

#include "connector.h"

static char *put_str(char **at, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *dst = memcpy(*at, s, n);
    *at += n;
    return dst;
}

struct import_record *import_record_new(const char *id, const char *sub_topic, const char *qos,
                                        const char *client_id, const void *payload,
                                        uint32_t payload_len)
{
    size_t strings = (id ? strlen(id) + 1 : 0) + (sub_topic ? strlen(sub_topic) + 1 : 0) +
                     (qos ? strlen(qos) + 1 : 0) + (client_id ? strlen(client_id) + 1 : 0);
    struct import_record *rec = malloc(sizeof *rec + payload_len + strings + 1);
    if (!rec)
        return NULL;
    memset(rec, 0, sizeof *rec);
    rec->payload = (uint8_t *)(rec + 1);
    if (payload_len)
        memcpy(rec->payload, payload, payload_len);
    rec->payload_len = payload_len;
    char *at = (char *)rec->payload + payload_len;
    rec->id = put_str(&at, id);
    rec->sub_topic = put_str(&at, sub_topic);
    rec->qos = put_str(&at, qos);
    rec->client_id = put_str(&at, client_id);
    return rec;
}

void import_record_free(struct import_record *rec)
{
    free(rec);
}

struct template_input export_record_input(const struct export_record *rec)
{
    return (struct template_input){
        .client_id = rec->client_id,
        .topic = rec->topic,
        .qos = rec->qos,
        .msg_id = rec->msg_id,
        .time_ms = rec->time_ms,
        .payload = rec->payload,
        .payload_len = rec->payload_len,
    };
}
