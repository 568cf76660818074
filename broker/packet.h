/* MQTT 3.1.1 (protocol level 4) and 3.1 (level 3) packet codec.
 *
 * Pure functions, no I/O, no allocation except the topic arrays of
 * SUBSCRIBE / UNSUBSCRIBE / SUBACK (released by mqtt_packet_clear()).
 * Decoded strings and payloads point INTO the caller's buffer: they are
 * valid only as long as that buffer is, and are not NUL-terminated.
 *
 * The decoder validates everything the spec asks of a receiver and cites
 * the statement ids; the broker only applies policy on top (limits,
 * naming). The encoder writes complete packets into a struct buf. */
#ifndef MQB_PACKET_H
#define MQB_PACKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
};

/* CONNACK return codes [MQTT-3.2.2.3] */
enum mqtt_connack_rc {
    MQTT_CONNACK_ACCEPTED = 0x00,
    MQTT_CONNACK_BAD_PROTOCOL = 0x01,
    MQTT_CONNACK_ID_REJECTED = 0x02,
    MQTT_CONNACK_UNAVAILABLE = 0x03,
    MQTT_CONNACK_BAD_CREDENTIALS = 0x04,
    MQTT_CONNACK_NOT_AUTHORIZED = 0x05,
};

#define MQTT_SUBACK_FAILURE 0x80
#define MQTT_MAX_REMAINING_LENGTH 268435455u /* 4-byte varint maximum */

/* Decoder results. */
enum packet_err {
    PKT_OK = 0,
    PKT_NEED_MORE = 1,      /* mqtt_fixed_header(): not enough bytes yet */
    PKT_ERR_MALFORMED = -1, /* close the connection [MQTT-4.8.0-1] */
    PKT_ERR_PROTOCOL = -2,  /* CONNECT with a known protocol name but an
                               unsupported level: answer CONNACK 0x01, close
                               [MQTT-3.1.2-2]; out->connect.protocol_level
                               holds what the client sent */
};

/* A length-delimited view into the input buffer. */
struct mqtt_str {
    const char *p;
    uint16_t len;
};

struct mqtt_connect {
    uint8_t protocol_level; /* 3 (MQIsdp) or 4 (MQTT) */
    bool clean_session;
    uint16_t keep_alive; /* seconds, 0 = disabled */
    struct mqtt_str client_id;
    bool will_flag;
    uint8_t will_qos;
    bool will_retain;
    struct mqtt_str will_topic;
    const uint8_t *will_payload;
    uint16_t will_payload_len;
    bool has_username;
    struct mqtt_str username;
    bool has_password;
    const uint8_t *password;
    uint16_t password_len;
};

struct mqtt_connack {
    bool session_present;
    uint8_t rc;
};

struct mqtt_publish {
    struct mqtt_str topic;
    uint16_t packet_id; /* 0 for QoS 0 */
    uint8_t qos;
    bool dup;
    bool retain;
    const uint8_t *payload;
    uint32_t payload_len;
};

struct mqtt_topic_req {
    struct mqtt_str filter;
    uint8_t qos; /* SUBSCRIBE only */
};

/* SUBSCRIBE, UNSUBSCRIBE */
struct mqtt_subscribe {
    uint16_t packet_id;
    uint32_t count;
    struct mqtt_topic_req *topics; /* malloc'd, count entries */
};

struct mqtt_suback {
    uint16_t packet_id;
    uint32_t count;
    uint8_t *rcs; /* malloc'd, count entries */
};

struct mqtt_packet {
    uint8_t type;  /* enum mqtt_type */
    uint8_t flags; /* low nibble of the first byte */
    union {
        struct mqtt_connect connect;
        struct mqtt_connack connack;
        struct mqtt_publish publish;
        struct mqtt_subscribe subscribe; /* also UNSUBSCRIBE */
        struct mqtt_suback suback;
        uint16_t packet_id; /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK */
    } u;
};

/* Parse the fixed header at buf[0..len). On PKT_OK sets *first_byte,
 * *remaining (the Remaining Length) and *header_len (1 + varint bytes);
 * the whole packet is then header_len + remaining bytes.
 * PKT_NEED_MORE when the varint is incomplete; PKT_ERR_MALFORMED when it
 * is longer than 4 bytes [MQTT-2.2.3]. */
int mqtt_fixed_header(const uint8_t *buf, size_t len, uint8_t *first_byte, uint32_t *remaining,
                      size_t *header_len);

/* Decode one complete packet: buf points at the first byte and len is
 * exactly header_len + remaining. Any packet type is accepted (the broker
 * refuses the server-to-client ones). Returns PKT_OK, PKT_ERR_MALFORMED or
 * PKT_ERR_PROTOCOL. On error, *out needs no clearing. On PKT_OK call
 * mqtt_packet_clear(out) when done. */
int mqtt_decode(const uint8_t *buf, size_t len, struct mqtt_packet *out);

/* Release what mqtt_decode allocated; safe on a zeroed packet. */
void mqtt_packet_clear(struct mqtt_packet *p);

/* Validate UTF-8 as MQTT strings require: well formed, no U+0000
 * [MQTT-1.5.3-1] [MQTT-1.5.3-2]. true when valid. */
bool mqtt_utf8_valid(const char *s, size_t len);

/* Encoders: append one whole packet to out. 0 on success, -1 when out of
 * memory or when the packet would exceed the protocol limits. */
int mqtt_encode_connack(struct buf *out, bool session_present, uint8_t rc);
int mqtt_encode_publish(struct buf *out, const char *topic, uint16_t topic_len,
                        const uint8_t *payload, uint32_t payload_len, uint8_t qos, bool retain,
                        bool dup, uint16_t packet_id);
/* PUBACK, PUBREC, PUBREL (flags 0x2 [MQTT-3.6.1-1]), PUBCOMP, UNSUBACK */
int mqtt_encode_ack(struct buf *out, enum mqtt_type type, uint16_t packet_id);
int mqtt_encode_suback(struct buf *out, uint16_t packet_id, const uint8_t *rcs, uint32_t count);
int mqtt_encode_pingresp(struct buf *out);
/* Client side (tests, bench, fuzz round trips). */
int mqtt_encode_connect(struct buf *out, const struct mqtt_connect *c);
int mqtt_encode_subscribe(struct buf *out, uint16_t packet_id, const struct mqtt_topic_req *topics,
                          uint32_t count);
int mqtt_encode_unsubscribe(struct buf *out, uint16_t packet_id,
                            const struct mqtt_topic_req *topics, uint32_t count);
int mqtt_encode_pingreq(struct buf *out);
int mqtt_encode_disconnect(struct buf *out);

/* "CONNECT", "PUBLISH", ... or "RESERVED" for logs. */
const char *mqtt_type_name(unsigned type);

#endif
