/* An application message as the broker routes it: immutable after
 * creation, reference counted, one allocation (struct + topic + payload).
 * Every subscriber queue, the retained store and the engine hook share the
 * same object. Single-threaded: the broker loop owns all references. */
#ifndef MQB_MESSAGE_H
#define MQB_MESSAGE_H

#include <stdbool.h>
#include <stdint.h>

struct message {
    uint32_t refcount;
    uint8_t qos; /* QoS as published */
    bool retain;
    uint16_t topic_len;
    uint32_t payload_len;
    uint64_t id;      /* broker-assigned message id, 0 when not assigned */
    int64_t time_ms;  /* epoch ms when accepted */
    char *topic;      /* NUL-terminated, points inside the allocation */
    uint8_t *payload; /* points inside the allocation */
};

/* Returns a message with refcount 1, or NULL when out of memory. */
struct message *message_new(const char *topic, uint16_t topic_len, const uint8_t *payload,
                            uint32_t payload_len, uint8_t qos, bool retain);
static inline struct message *message_ref(struct message *m)
{
    m->refcount++;
    return m;
}
/* Drops one reference; frees at zero. Accepts NULL. */
void message_unref(struct message *m);

#endif
