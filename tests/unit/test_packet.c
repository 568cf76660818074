/* Packet codec: wire vectors for every decoder rule, varint boundaries,
 * UTF-8 validation, byte-exact encoder output and encode -> decode round
 * trips. Vectors are hex strings; spaces are ignored. */
#include "../../broker/packet.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"

#define MAX_VECTOR 256

/* Parse "10 0d 0004 4d..." into out; returns the byte count. */
static size_t hex_to_bytes(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;
    for (const char *c = hex; *c; c++) {
        int v;
        if (*c == ' ')
            continue;
        if (*c >= '0' && *c <= '9')
            v = *c - '0';
        else if (*c >= 'a' && *c <= 'f')
            v = *c - 'a' + 10;
        else
            ck_abort_msg("bad hex character '%c' in \"%s\"", *c, hex);
        if (hi < 0) {
            hi = v;
            continue;
        }
        ck_assert_uint_lt(n, cap);
        out[n++] = (uint8_t)(hi << 4 | v);
        hi = -1;
    }
    ck_assert_msg(hi < 0, "odd number of hex digits in \"%s\"", hex);
    return n;
}

static void assert_buf_hex(const struct buf *b, const char *hex)
{
    uint8_t want[MAX_VECTOR];
    size_t n = hex_to_bytes(hex, want, sizeof want);
    ck_assert_uint_eq(b->len, n);
    ck_assert_mem_eq(b->data, want, n);
}

static bool str_is(struct mqtt_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

/* Re-encode a decoded packet with the public encoders. */
static int encode_packet(struct buf *b, const struct mqtt_packet *p)
{
    const struct mqtt_publish *m = &p->u.publish;
    switch (p->type) {
    case MQTT_CONNECT:
        return mqtt_encode_connect(b, &p->u.connect);
    case MQTT_CONNACK:
        return mqtt_encode_connack(b, p->u.connack.session_present, p->u.connack.rc);
    case MQTT_PUBLISH:
        return mqtt_encode_publish(b, m->topic.p, m->topic.len, m->payload, m->payload_len, m->qos,
                                   m->retain, m->dup, m->packet_id);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return mqtt_encode_ack(b, (enum mqtt_type)p->type, p->u.packet_id);
    case MQTT_SUBSCRIBE:
        return mqtt_encode_subscribe(b, p->u.subscribe.packet_id, p->u.subscribe.topics,
                                     p->u.subscribe.count);
    case MQTT_UNSUBSCRIBE:
        return mqtt_encode_unsubscribe(b, p->u.subscribe.packet_id, p->u.subscribe.topics,
                                       p->u.subscribe.count);
    case MQTT_SUBACK:
        return mqtt_encode_suback(b, p->u.suback.packet_id, p->u.suback.rcs, p->u.suback.count);
    case MQTT_PINGREQ:
        return mqtt_encode_pingreq(b);
    case MQTT_PINGRESP:
        return mqtt_encode_pingresp(b);
    case MQTT_DISCONNECT:
        return mqtt_encode_disconnect(b);
    }
    return -1;
}

/* ---- decoder vectors -------------------------------------------------- */

struct decode_vector {
    const char *name;
    const char *hex;
    int want;
};

/* CONNECT below: "10 0d 0004 4d515454 04 02 003c 0001 63" is MQTT level 4,
 * clean session, keep alive 60, client id "c". */
static const struct decode_vector decode_vectors[] = {
    /* CONNECT */
    {"CONNECT minimal MQTT level 4", "10 0d 0004 4d515454 04 02 003c 0001 63", PKT_OK},
    {"CONNECT MQIsdp level 3", "10 0f 0006 4d5149736470 03 02 003c 0001 63", PKT_OK},
    {"CONNECT empty client id (broker decides)", "10 0c 0004 4d515454 04 02 003c 0000", PKT_OK},
    {"CONNECT wrong protocol name [MQTT-3.1.2-1]", "10 0d 0004 4d515455 04 02 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT lowercase protocol name [MQTT-3.1.2-1]", "10 0d 0004 6d717474 04 02 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT empty protocol name [MQTT-3.1.2-1]", "10 09 0000 04 02 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT MQTT level 5 [MQTT-3.1.2-2]", "10 0d 0004 4d515454 05 02 003c 0001 63",
     PKT_ERR_PROTOCOL},
    {"CONNECT MQTT 5 with properties [MQTT-3.1.2-2]", "10 0e 0004 4d515454 05 02 003c 00 0001 63",
     PKT_ERR_PROTOCOL},
    {"CONNECT MQTT level 3 [MQTT-3.1.2-2]", "10 0d 0004 4d515454 03 02 003c 0001 63",
     PKT_ERR_PROTOCOL},
    {"CONNECT MQIsdp level 4 [MQTT-3.1.2-2]", "10 0f 0006 4d5149736470 04 02 003c 0001 63",
     PKT_ERR_PROTOCOL},
    {"CONNECT level only, nothing after [MQTT-3.1.2-2]", "10 07 0004 4d515454 06",
     PKT_ERR_PROTOCOL},
    {"CONNECT fixed header flags [MQTT-2.2.2-2]", "11 0d 0004 4d515454 04 02 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT reserved connect flag [MQTT-3.1.2-3]", "10 0d 0004 4d515454 04 03 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT will QoS 1", "10 13 0004 4d515454 04 0e 003c 0001 63 0001 77 0001 6d", PKT_OK},
    {"CONNECT will QoS 2 retained, empty message",
     "10 12 0004 4d515454 04 36 003c 0001 63 0001 77 0000", PKT_OK},
    {"CONNECT will QoS 3 [MQTT-3.1.2-14]", "10 13 0004 4d515454 04 1e 003c 0001 63 0001 77 0001 6d",
     PKT_ERR_MALFORMED},
    {"CONNECT will QoS without will flag [MQTT-3.1.2-13]", "10 0d 0004 4d515454 04 0a 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT will retain without will flag [MQTT-3.1.2-15]",
     "10 0d 0004 4d515454 04 22 003c 0001 63", PKT_ERR_MALFORMED},
    {"CONNECT will flag without will fields [MQTT-3.1.2-9]",
     "10 0d 0004 4d515454 04 06 003c 0001 63", PKT_ERR_MALFORMED},
    {"CONNECT will topic without will message [MQTT-3.1.2-9]",
     "10 10 0004 4d515454 04 06 003c 0001 63 0001 77", PKT_ERR_MALFORMED},
    {"CONNECT will fields without will flag [MQTT-3.1.2-11]",
     "10 13 0004 4d515454 04 02 003c 0001 63 0001 77 0001 6d", PKT_ERR_MALFORMED},
    {"CONNECT will topic with wildcard [MQTT-4.7.1-1]",
     "10 13 0004 4d515454 04 0e 003c 0001 63 0001 23 0001 6d", PKT_ERR_MALFORMED},
    {"CONNECT empty will topic [MQTT-4.7.3-1]",
     "10 12 0004 4d515454 04 0e 003c 0001 63 0000 0001 6d", PKT_ERR_MALFORMED},
    {"CONNECT will topic invalid UTF-8 [MQTT-3.1.3-10]",
     "10 13 0004 4d515454 04 0e 003c 0001 63 0001 fe 0001 6d", PKT_ERR_MALFORMED},
    {"CONNECT username and password", "10 13 0004 4d515454 04 c2 003c 0001 63 0001 75 0001 70",
     PKT_OK},
    {"CONNECT username only", "10 10 0004 4d515454 04 82 003c 0001 63 0001 75", PKT_OK},
    {"CONNECT password without username [MQTT-3.1.2-22]",
     "10 10 0004 4d515454 04 42 003c 0001 63 0001 70", PKT_ERR_MALFORMED},
    {"CONNECT username flag, no username [MQTT-3.1.2-19]", "10 0d 0004 4d515454 04 82 003c 0001 63",
     PKT_ERR_MALFORMED},
    {"CONNECT password flag, no password [MQTT-3.1.2-21]",
     "10 10 0004 4d515454 04 c2 003c 0001 63 0001 75", PKT_ERR_MALFORMED},
    {"CONNECT username without flag [MQTT-3.1.2-18]",
     "10 10 0004 4d515454 04 02 003c 0001 63 0001 75", PKT_ERR_MALFORMED},
    {"CONNECT password is binary, not UTF-8",
     "10 14 0004 4d515454 04 c2 003c 0001 63 0001 75 0002 ff00", PKT_OK},
    {"CONNECT username with surrogate [MQTT-1.5.3-1]",
     "10 12 0004 4d515454 04 82 003c 0001 63 0003 eda080", PKT_ERR_MALFORMED},
    {"CONNECT client id invalid UTF-8 [MQTT-3.1.3-4]", "10 0d 0004 4d515454 04 02 003c 0001 ff",
     PKT_ERR_MALFORMED},
    {"CONNECT client id U+0000 [MQTT-1.5.3-2]", "10 0d 0004 4d515454 04 02 003c 0001 00",
     PKT_ERR_MALFORMED},
    {"CONNECT client id longer than packet", "10 0d 0004 4d515454 04 02 003c 0002 63",
     PKT_ERR_MALFORMED},
    {"CONNECT no client id [MQTT-3.1.3-3]", "10 0a 0004 4d515454 04 02 003c", PKT_ERR_MALFORMED},
    {"CONNECT no keep alive", "10 08 0004 4d515454 04 02", PKT_ERR_MALFORMED},
    {"CONNECT trailing byte", "10 0e 0004 4d515454 04 02 003c 0001 63 00", PKT_ERR_MALFORMED},
    {"CONNECT empty body", "10 00", PKT_ERR_MALFORMED},

    /* CONNACK */
    {"CONNACK accepted", "20 02 00 00", PKT_OK},
    {"CONNACK session present", "20 02 01 00", PKT_OK},
    {"CONNACK not authorized", "20 02 00 05", PKT_OK},
    {"CONNACK reserved ack flags [MQTT 3.2.2.1]", "20 02 02 00", PKT_ERR_MALFORMED},
    {"CONNACK refusal with session [MQTT-3.2.2-4]", "20 02 01 01", PKT_ERR_MALFORMED},
    {"CONNACK remaining length 3", "20 03 00 00 00", PKT_ERR_MALFORMED},
    {"CONNACK remaining length 1", "20 01 00", PKT_ERR_MALFORMED},
    {"CONNACK flags [MQTT-2.2.2-2]", "21 02 00 00", PKT_ERR_MALFORMED},

    /* PUBLISH */
    {"PUBLISH QoS 0", "30 07 0003 612f62 6869", PKT_OK},
    {"PUBLISH QoS 0 empty payload", "30 05 0003 612f62", PKT_OK},
    {"PUBLISH QoS 0 binary payload", "30 07 0001 61 00ff00ff", PKT_OK},
    {"PUBLISH QoS 0 multi-byte UTF-8 topic", "30 04 0002 c3a9", PKT_OK},
    {"PUBLISH QoS 1", "32 09 0003 612f62 0001 6869", PKT_OK},
    {"PUBLISH QoS 2 empty payload", "34 07 0003 612f62 ffff", PKT_OK},
    {"PUBLISH QoS 1 dup retain", "3b 09 0003 612f62 1234 6869", PKT_OK},
    {"PUBLISH QoS 3 [MQTT-3.3.1-4]", "36 09 0003 612f62 0001 6869", PKT_ERR_MALFORMED},
    {"PUBLISH DUP with QoS 0 [MQTT-3.3.1-2]", "38 07 0003 612f62 6869", PKT_ERR_MALFORMED},
    {"PUBLISH QoS 1 packet id 0 [MQTT-2.3.1-1]", "32 09 0003 612f62 0000 6869", PKT_ERR_MALFORMED},
    {"PUBLISH QoS 2 packet id 0 [MQTT-2.3.1-1]", "34 07 0003 612f62 0000", PKT_ERR_MALFORMED},
    {"PUBLISH QoS 1 packet id cut short", "32 06 0003 612f62 00", PKT_ERR_MALFORMED},
    {"PUBLISH QoS 1 no packet id", "32 05 0003 612f62", PKT_ERR_MALFORMED},
    {"PUBLISH empty topic [MQTT-4.7.3-1]", "30 04 0000 6869", PKT_ERR_MALFORMED},
    {"PUBLISH topic with + [MQTT-3.3.2-2]", "30 07 0003 612f2b 6869", PKT_ERR_MALFORMED},
    {"PUBLISH topic with # [MQTT-3.3.2-2]", "30 07 0003 612f23 6869", PKT_ERR_MALFORMED},
    {"PUBLISH topic invalid UTF-8 [MQTT-3.3.2-1]", "30 05 0003 61ff62", PKT_ERR_MALFORMED},
    {"PUBLISH topic U+0000 [MQTT-1.5.3-2]", "30 05 0003 610062", PKT_ERR_MALFORMED},
    {"PUBLISH topic longer than packet", "30 05 0005 612f62", PKT_ERR_MALFORMED},
    {"PUBLISH topic length cut short", "30 01 00", PKT_ERR_MALFORMED},
    {"PUBLISH empty body", "30 00", PKT_ERR_MALFORMED},

    /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: exactly a packet id */
    {"PUBACK", "40 02 0001", PKT_OK},
    {"PUBACK remaining length 3", "40 03 000100", PKT_ERR_MALFORMED},
    {"PUBACK remaining length 1", "40 01 00", PKT_ERR_MALFORMED},
    {"PUBACK flags [MQTT-2.2.2-2]", "41 02 0001", PKT_ERR_MALFORMED},
    {"PUBREC", "50 02 0001", PKT_OK},
    {"PUBREC flags [MQTT-2.2.2-2]", "52 02 0001", PKT_ERR_MALFORMED},
    {"PUBREC remaining length 0", "50 00", PKT_ERR_MALFORMED},
    {"PUBREL", "62 02 0001", PKT_OK},
    {"PUBREL flags 0 [MQTT-3.6.1-1]", "60 02 0001", PKT_ERR_MALFORMED},
    {"PUBREL remaining length 3", "62 03 000100", PKT_ERR_MALFORMED},
    {"PUBCOMP", "70 02 0001", PKT_OK},
    {"PUBCOMP remaining length 0", "70 00", PKT_ERR_MALFORMED},
    {"PUBCOMP flags [MQTT-2.2.2-2]", "78 02 0001", PKT_ERR_MALFORMED},
    {"UNSUBACK", "b0 02 0001", PKT_OK},
    {"UNSUBACK flags [MQTT-2.2.2-2]", "b2 02 0001", PKT_ERR_MALFORMED},
    {"UNSUBACK remaining length 3", "b0 03 000101", PKT_ERR_MALFORMED},

    /* SUBSCRIBE */
    {"SUBSCRIBE one filter", "82 06 1234 0001 61 01", PKT_OK},
    {"SUBSCRIBE two wildcard filters", "82 0c 1234 0003 612f23 02 0001 2b 00", PKT_OK},
    {"SUBSCRIBE bad wildcard syntax is the broker's call", "82 07 1234 0002 2361 00", PKT_OK},
    {"SUBSCRIBE QoS 3 [MQTT-3.8.3-4]", "82 06 1234 0001 61 03", PKT_ERR_MALFORMED},
    {"SUBSCRIBE reserved QoS bits [MQTT-3.8.3-4]", "82 06 1234 0001 61 41", PKT_ERR_MALFORMED},
    {"SUBSCRIBE QoS byte 0x80 [MQTT-3.8.3-4]", "82 06 1234 0001 61 80", PKT_ERR_MALFORMED},
    {"SUBSCRIBE flags 0 [MQTT-3.8.1-1]", "80 06 1234 0001 61 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE flags 3 [MQTT-3.8.1-1]", "83 06 1234 0001 61 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE no filter [MQTT-3.8.3-3]", "82 02 1234", PKT_ERR_MALFORMED},
    {"SUBSCRIBE packet id 0 [MQTT-2.3.1-1]", "82 06 0000 0001 61 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE no QoS byte", "82 05 1234 0001 61", PKT_ERR_MALFORMED},
    {"SUBSCRIBE empty filter [MQTT-4.7.3-1]", "82 05 1234 0000 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE filter invalid UTF-8 [MQTT-3.8.3-1]", "82 06 1234 0001 ff 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE filter U+0000 [MQTT-1.5.3-2]", "82 06 1234 0001 00 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE filter longer than packet", "82 06 1234 0002 61 01", PKT_ERR_MALFORMED},
    {"SUBSCRIBE trailing partial entry", "82 07 1234 0001 61 01 00", PKT_ERR_MALFORMED},
    {"SUBSCRIBE packet id cut short", "82 01 12", PKT_ERR_MALFORMED},

    /* UNSUBSCRIBE */
    {"UNSUBSCRIBE one filter", "a2 05 1234 0001 61", PKT_OK},
    {"UNSUBSCRIBE two filters", "a2 0a 1234 0001 61 0003 612f23", PKT_OK},
    {"UNSUBSCRIBE no filter [MQTT-3.10.3-2]", "a2 02 1234", PKT_ERR_MALFORMED},
    {"UNSUBSCRIBE flags 0 [MQTT-3.10.1-1]", "a0 05 1234 0001 61", PKT_ERR_MALFORMED},
    {"UNSUBSCRIBE packet id 0 [MQTT-2.3.1-1]", "a2 05 0000 0001 61", PKT_ERR_MALFORMED},
    {"UNSUBSCRIBE empty filter [MQTT-4.7.3-1]", "a2 04 1234 0000", PKT_ERR_MALFORMED},
    {"UNSUBSCRIBE trailing byte", "a2 06 1234 0001 61 00", PKT_ERR_MALFORMED},
    {"UNSUBSCRIBE overlong UTF-8 [MQTT-3.10.3-1]", "a2 06 1234 0002 c0af", PKT_ERR_MALFORMED},

    /* SUBACK */
    {"SUBACK one code", "90 03 1234 00", PKT_OK},
    {"SUBACK every legal code", "90 06 1234 00 01 02 80", PKT_OK},
    {"SUBACK code 3 [MQTT-3.9.3-2]", "90 03 1234 03", PKT_ERR_MALFORMED},
    {"SUBACK code 0x81 [MQTT-3.9.3-2]", "90 03 1234 81", PKT_ERR_MALFORMED},
    {"SUBACK no code [MQTT-3.8.4-5]", "90 02 1234", PKT_ERR_MALFORMED},
    {"SUBACK flags [MQTT-2.2.2-2]", "92 03 1234 00", PKT_ERR_MALFORMED},

    /* PINGREQ, PINGRESP, DISCONNECT */
    {"PINGREQ", "c0 00", PKT_OK},
    {"PINGREQ remaining length 1", "c0 01 00", PKT_ERR_MALFORMED},
    {"PINGREQ flags [MQTT-2.2.2-2]", "c1 00", PKT_ERR_MALFORMED},
    {"PINGREQ non-minimal length (3.1.1 allows)", "c0 80 00", PKT_OK},
    {"PINGRESP", "d0 00", PKT_OK},
    {"PINGRESP remaining length 1", "d0 01 00", PKT_ERR_MALFORMED},
    {"PINGRESP flags [MQTT-2.2.2-2]", "d8 00", PKT_ERR_MALFORMED},
    {"DISCONNECT", "e0 00", PKT_OK},
    {"DISCONNECT remaining length 1", "e0 01 00", PKT_ERR_MALFORMED},
    {"DISCONNECT flags [MQTT-3.14.1-1]", "e2 00", PKT_ERR_MALFORMED},

    /* Reserved types and framing */
    {"reserved type 0", "00 00", PKT_ERR_MALFORMED},
    {"reserved type 15", "f0 00", PKT_ERR_MALFORMED},
    {"reserved type 15 with body", "f0 02 0001", PKT_ERR_MALFORMED},
    {"buffer longer than the packet", "c0 00 00", PKT_ERR_MALFORMED},
    {"buffer shorter than the packet", "40 02 00", PKT_ERR_MALFORMED},
    {"incomplete fixed header", "30", PKT_ERR_MALFORMED},
    {"five-byte remaining length [MQTT-2.2.3]", "30 ff ff ff ff 7f", PKT_ERR_MALFORMED},
};
#define N_DECODE_VECTORS (int)(sizeof decode_vectors / sizeof decode_vectors[0])

static size_t varint_size(uint32_t v)
{
    return v < 128u ? 1 : v < 16384u ? 2 : v < 2097152u ? 3 : 4;
}

/* Each vector decodes to the expected result; each valid one with a
 * minimal length encoding re-encodes to exactly the same bytes. */
START_TEST(test_decode_vector)
{
    const struct decode_vector *v = &decode_vectors[_i];
    uint8_t bytes[MAX_VECTOR];
    size_t n = hex_to_bytes(v->hex, bytes, sizeof bytes);
    struct mqtt_packet p;
    int rc = mqtt_decode(bytes, n, &p);
    ck_assert_msg(rc == v->want, "%s: got %d, want %d", v->name, rc, v->want);
    if (rc != PKT_OK)
        return;

    uint8_t first;
    uint32_t remaining;
    size_t header_len;
    ck_assert_int_eq(mqtt_fixed_header(bytes, n, &first, &remaining, &header_len), PKT_OK);
    struct buf out = {0};
    ck_assert_msg(encode_packet(&out, &p) == 0, "%s: re-encode failed", v->name);
    if (header_len == 1 + varint_size(remaining)) {
        ck_assert_msg(out.len == n && memcmp(out.data, bytes, n) == 0, "%s: re-encoded differs",
                      v->name);
    }
    buf_free(&out);
    mqtt_packet_clear(&p);
}
END_TEST

/* ---- decoded fields --------------------------------------------------- */

static void decode_hex(const char *hex, uint8_t *bytes, size_t *n, struct mqtt_packet *p)
{
    *n = hex_to_bytes(hex, bytes, MAX_VECTOR);
    ck_assert_int_eq(mqtt_decode(bytes, *n, p), PKT_OK);
}

START_TEST(test_fields_connect_full)
{
    /* flags f6: username, password, will retain, will QoS 2, will, clean */
    uint8_t b[MAX_VECTOR];
    size_t n;
    struct mqtt_packet p;
    decode_hex("10 21 0004 4d515454 04 f6 012c 0003 636964 0003 772f74 0002 0001"
               " 0002 7573 0003 ff0070",
               b, &n, &p);
    const struct mqtt_connect *c = &p.u.connect;
    ck_assert_uint_eq(p.type, MQTT_CONNECT);
    ck_assert_uint_eq(c->protocol_level, 4);
    ck_assert(c->clean_session);
    ck_assert_uint_eq(c->keep_alive, 300);
    ck_assert(str_is(c->client_id, "cid"));
    ck_assert(c->will_flag);
    ck_assert_uint_eq(c->will_qos, 2);
    ck_assert(c->will_retain);
    ck_assert(str_is(c->will_topic, "w/t"));
    ck_assert_uint_eq(c->will_payload_len, 2);
    ck_assert_mem_eq(c->will_payload, "\x00\x01", 2);
    ck_assert(c->has_username);
    ck_assert(str_is(c->username, "us"));
    ck_assert(c->has_password);
    ck_assert_uint_eq(c->password_len, 3);
    ck_assert_mem_eq(c->password, "\xff\x00\x70", 3);
    /* Views point into the input buffer. */
    ck_assert_ptr_eq(c->client_id.p, (const char *)b + 14);
    ck_assert_ptr_eq(c->password, b + n - 3);
    mqtt_packet_clear(&p);
}
END_TEST

START_TEST(test_fields_connect_minimal)
{
    uint8_t b[MAX_VECTOR];
    size_t n;
    struct mqtt_packet p;
    decode_hex("10 0f 0006 4d5149736470 03 00 0000 0001 63", b, &n, &p);
    const struct mqtt_connect *c = &p.u.connect;
    ck_assert_uint_eq(c->protocol_level, 3);
    ck_assert(!c->clean_session);
    ck_assert_uint_eq(c->keep_alive, 0);
    ck_assert(str_is(c->client_id, "c"));
    ck_assert(!c->will_flag && !c->has_username && !c->has_password);
    mqtt_packet_clear(&p);
}
END_TEST

/* [MQTT-3.1.2-2] the broker answers CONNACK 0x01 and needs the level. */
START_TEST(test_protocol_level_reported)
{
    uint8_t b[MAX_VECTOR];
    size_t n = hex_to_bytes("10 0d 0004 4d515454 05 02 003c 0001 63", b, sizeof b);
    struct mqtt_packet p;
    ck_assert_int_eq(mqtt_decode(b, n, &p), PKT_ERR_PROTOCOL);
    ck_assert_uint_eq(p.type, MQTT_CONNECT);
    ck_assert_uint_eq(p.u.connect.protocol_level, 5);
}
END_TEST

START_TEST(test_fields_publish)
{
    uint8_t b[MAX_VECTOR];
    size_t n;
    struct mqtt_packet p;
    decode_hex("3b 09 0003 612f62 1234 6869", b, &n, &p);
    const struct mqtt_publish *m = &p.u.publish;
    ck_assert_uint_eq(p.type, MQTT_PUBLISH);
    ck_assert_uint_eq(p.flags, 0x0b);
    ck_assert(str_is(m->topic, "a/b"));
    ck_assert_uint_eq(m->qos, 1);
    ck_assert(m->dup && m->retain);
    ck_assert_uint_eq(m->packet_id, 0x1234);
    ck_assert_uint_eq(m->payload_len, 2);
    ck_assert_ptr_eq(m->payload, b + 9);
    mqtt_packet_clear(&p);

    decode_hex("30 05 0003 612f62", b, &n, &p);
    ck_assert_uint_eq(p.u.publish.qos, 0);
    ck_assert_uint_eq(p.u.publish.packet_id, 0);
    ck_assert_uint_eq(p.u.publish.payload_len, 0);
    ck_assert(!p.u.publish.dup && !p.u.publish.retain);
    mqtt_packet_clear(&p);
}
END_TEST

START_TEST(test_fields_subscribe)
{
    uint8_t b[MAX_VECTOR];
    size_t n;
    struct mqtt_packet p;
    decode_hex("82 0c 1234 0003 612f23 02 0001 2b 00", b, &n, &p);
    const struct mqtt_subscribe *s = &p.u.subscribe;
    ck_assert_uint_eq(s->packet_id, 0x1234);
    ck_assert_uint_eq(s->count, 2);
    ck_assert(str_is(s->topics[0].filter, "a/#"));
    ck_assert_uint_eq(s->topics[0].qos, 2);
    ck_assert(str_is(s->topics[1].filter, "+"));
    ck_assert_uint_eq(s->topics[1].qos, 0);
    mqtt_packet_clear(&p);
    ck_assert_ptr_null(p.u.subscribe.topics);

    decode_hex("a2 0a 1234 0001 61 0003 612f23", b, &n, &p);
    ck_assert_uint_eq(p.type, MQTT_UNSUBSCRIBE);
    ck_assert_uint_eq(p.u.subscribe.count, 2);
    ck_assert(str_is(p.u.subscribe.topics[0].filter, "a"));
    ck_assert(str_is(p.u.subscribe.topics[1].filter, "a/#"));
    mqtt_packet_clear(&p);
}
END_TEST

START_TEST(test_fields_acks)
{
    uint8_t b[MAX_VECTOR];
    size_t n;
    struct mqtt_packet p;
    decode_hex("90 06 abcd 00 01 02 80", b, &n, &p);
    ck_assert_uint_eq(p.u.suback.packet_id, 0xabcd);
    ck_assert_uint_eq(p.u.suback.count, 4);
    ck_assert_mem_eq(p.u.suback.rcs, "\x00\x01\x02\x80", 4);
    mqtt_packet_clear(&p);

    decode_hex("20 02 01 00", b, &n, &p);
    ck_assert(p.u.connack.session_present);
    ck_assert_uint_eq(p.u.connack.rc, MQTT_CONNACK_ACCEPTED);
    mqtt_packet_clear(&p);

    decode_hex("62 02 beef", b, &n, &p);
    ck_assert_uint_eq(p.type, MQTT_PUBREL);
    ck_assert_uint_eq(p.flags, 0x2);
    ck_assert_uint_eq(p.u.packet_id, 0xbeef);
    mqtt_packet_clear(&p);
}
END_TEST

/* ---- fixed header ----------------------------------------------------- */

struct varint_vector {
    const char *hex;
    int want;
    uint32_t remaining;
    size_t header_len;
};

static const struct varint_vector varint_vectors[] = {
    {"c0 00", PKT_OK, 0, 2},
    {"30 7f", PKT_OK, 127, 2},
    {"30 80 01", PKT_OK, 128, 3},
    {"30 ff 7f", PKT_OK, 16383, 3},
    {"30 80 80 01", PKT_OK, 16384, 4},
    {"30 ff ff 7f", PKT_OK, 2097151, 4},
    {"30 80 80 80 01", PKT_OK, 2097152, 5},
    {"30 ff ff ff 7f", PKT_OK, 268435455, 5},
    {"30 7f 00 00", PKT_OK, 127, 2}, /* body bytes are not its business */
    {"30 ff ff ff ff 7f", PKT_ERR_MALFORMED, 0, 0},
    {"30 80 80 80 80 01", PKT_ERR_MALFORMED, 0, 0},
    {"30 80 80 80 80", PKT_ERR_MALFORMED, 0, 0},
    {"", PKT_NEED_MORE, 0, 0},
    {"30", PKT_NEED_MORE, 0, 0},
    {"30 80", PKT_NEED_MORE, 0, 0},
    {"30 ff ff", PKT_NEED_MORE, 0, 0},
    {"30 ff ff ff", PKT_NEED_MORE, 0, 0},
};
#define N_VARINT_VECTORS (int)(sizeof varint_vectors / sizeof varint_vectors[0])

START_TEST(test_fixed_header)
{
    const struct varint_vector *v = &varint_vectors[_i];
    uint8_t b[MAX_VECTOR];
    size_t n = hex_to_bytes(v->hex, b, sizeof b);
    uint8_t first = 0;
    uint32_t remaining = 0;
    size_t header_len = 0;
    int rc = mqtt_fixed_header(b, n, &first, &remaining, &header_len);
    ck_assert_msg(rc == v->want, "\"%s\": got %d want %d", v->hex, rc, v->want);
    if (rc != PKT_OK)
        return;
    ck_assert_uint_eq(first, b[0]);
    ck_assert_uint_eq(remaining, v->remaining);
    ck_assert_uint_eq(header_len, v->header_len);
}
END_TEST

/* The encoder picks the shortest length encoding at each boundary. */
START_TEST(test_encode_length_boundaries)
{
    static const uint32_t lengths[] = {127, 128, 16383, 16384, 2097151, 2097152};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        uint32_t payload_len = lengths[i] - 3; /* topic "a" takes 3 bytes */
        uint8_t *payload = calloc(1, payload_len);
        ck_assert_ptr_nonnull(payload);
        struct buf out = {0};
        ck_assert_int_eq(
            mqtt_encode_publish(&out, "a", 1, payload, payload_len, 0, false, false, 0), 0);
        uint8_t first;
        uint32_t remaining;
        size_t header_len;
        ck_assert_int_eq(mqtt_fixed_header(out.data, out.len, &first, &remaining, &header_len),
                         PKT_OK);
        ck_assert_uint_eq(remaining, lengths[i]);
        ck_assert_uint_eq(header_len, 1 + varint_size(lengths[i]));
        ck_assert_uint_eq(out.len, header_len + lengths[i]);
        struct mqtt_packet p;
        ck_assert_int_eq(mqtt_decode(out.data, out.len, &p), PKT_OK);
        ck_assert_uint_eq(p.u.publish.payload_len, payload_len);
        mqtt_packet_clear(&p);
        buf_free(&out);
        free(payload);
    }
}
END_TEST

/* ---- UTF-8 ------------------------------------------------------------ */

struct utf8_vector {
    const char *name;
    const char *hex;
    bool valid;
};

static const struct utf8_vector utf8_vectors[] = {
    {"empty", "", true},
    {"ASCII", "612f62", true},
    {"control characters are allowed", "017f", true},
    {"U+00E9", "c3a9", true},
    {"U+20AC", "e282ac", true},
    {"U+D7FF below surrogates", "ed9fbf", true},
    {"U+E000 above surrogates", "ee8080", true},
    {"U+FFFF noncharacter (receiver may accept)", "efbfbf", true},
    {"U+1F600", "f09f9880", true},
    {"U+10FFFF", "f48fbfbf", true},
    {"U+0000 [MQTT-1.5.3-2]", "00", false},
    {"U+0000 inside", "610062", false},
    {"lone continuation", "80", false},
    {"overlong C0 [MQTT-1.5.3-1]", "c0af", false},
    {"overlong C1", "c1bf", false},
    {"overlong 3-byte", "e080af", false},
    {"overlong 4-byte", "f08282ac", false},
    {"surrogate U+D800 [MQTT-1.5.3-1]", "eda080", false},
    {"surrogate U+DFFF", "edbfbf", false},
    {"above U+10FFFF", "f4908080", false},
    {"F5 lead", "f5808080", false},
    {"FF byte", "ff", false},
    {"truncated 2-byte", "c3", false},
    {"truncated 3-byte", "e282", false},
    {"truncated 4-byte", "f09f98", false},
    {"bad continuation", "c328", false},
    {"bad third byte", "e28228", false},
    {"bad fourth byte", "f09f9828", false},
};
#define N_UTF8_VECTORS (int)(sizeof utf8_vectors / sizeof utf8_vectors[0])

START_TEST(test_utf8)
{
    const struct utf8_vector *v = &utf8_vectors[_i];
    uint8_t b[MAX_VECTOR];
    size_t n = hex_to_bytes(v->hex, b, sizeof b);
    ck_assert_msg(mqtt_utf8_valid((const char *)b, n) == v->valid, "%s", v->name);
}
END_TEST

/* ---- encoders --------------------------------------------------------- */

START_TEST(test_encode_connack)
{
    struct buf b = {0};
    ck_assert_int_eq(mqtt_encode_connack(&b, false, MQTT_CONNACK_ACCEPTED), 0);
    assert_buf_hex(&b, "20 02 00 00");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_connack(&b, true, MQTT_CONNACK_ACCEPTED), 0);
    assert_buf_hex(&b, "20 02 01 00");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_connack(&b, false, MQTT_CONNACK_NOT_AUTHORIZED), 0);
    assert_buf_hex(&b, "20 02 00 05");
    buf_reset(&b);
    /* [MQTT-3.2.2-4] */
    ck_assert_int_eq(mqtt_encode_connack(&b, true, MQTT_CONNACK_BAD_PROTOCOL), -1);
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_encode_publish)
{
    struct buf b = {0};
    const uint8_t *hi = (const uint8_t *)"hi";
    ck_assert_int_eq(mqtt_encode_publish(&b, "a/b", 3, hi, 2, 0, false, false, 0), 0);
    assert_buf_hex(&b, "30 07 0003 612f62 6869");
    buf_reset(&b);
    /* QoS 0 writes no packet id even when one is passed */
    ck_assert_int_eq(mqtt_encode_publish(&b, "a/b", 3, hi, 2, 0, true, false, 7), 0);
    assert_buf_hex(&b, "31 07 0003 612f62 6869");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_publish(&b, "a/b", 3, hi, 2, 1, true, false, 0x1234), 0);
    assert_buf_hex(&b, "33 09 0003 612f62 1234 6869");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_publish(&b, "a/b", 3, NULL, 0, 2, false, true, 1), 0);
    assert_buf_hex(&b, "3c 07 0003 612f62 0001");
    buf_free(&b);
}
END_TEST

/* Refusals leave what the buffer already held untouched. */
START_TEST(test_encode_publish_refused)
{
    struct buf b = {0};
    const uint8_t *hi = (const uint8_t *)"hi";
    ck_assert_int_eq(buf_append(&b, "xy", 2), 0);
    ck_assert_int_eq(mqtt_encode_publish(&b, "", 0, hi, 2, 0, false, false, 0), -1);
    ck_assert_int_eq(mqtt_encode_publish(&b, "a", 1, hi, 2, 3, false, false, 1), -1);
    ck_assert_int_eq(mqtt_encode_publish(&b, "a", 1, hi, 2, 0, false, true, 0), -1);
    ck_assert_int_eq(mqtt_encode_publish(&b, "a", 1, hi, 2, 1, false, false, 0), -1);
    /* Remaining Length 2 + 1 + (max - 2) = max + 1; the payload is never read. */
    ck_assert_int_eq(
        mqtt_encode_publish(&b, "a", 1, hi, MQTT_MAX_REMAINING_LENGTH - 2, 0, false, false, 0), -1);
    ck_assert_uint_eq(b.len, 2);
    ck_assert_mem_eq(b.data, "xy", 2);
    buf_free(&b);
}
END_TEST

START_TEST(test_encode_acks)
{
    static const struct {
        enum mqtt_type type;
        const char *hex;
    } acks[] = {
        {MQTT_PUBACK, "40 02 0102"},  {MQTT_PUBREC, "50 02 0102"},   {MQTT_PUBREL, "62 02 0102"},
        {MQTT_PUBCOMP, "70 02 0102"}, {MQTT_UNSUBACK, "b0 02 0102"},
    };
    struct buf b = {0};
    for (size_t i = 0; i < sizeof acks / sizeof acks[0]; i++) {
        buf_reset(&b);
        ck_assert_int_eq(mqtt_encode_ack(&b, acks[i].type, 0x0102), 0);
        assert_buf_hex(&b, acks[i].hex);
    }
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_ack(&b, MQTT_CONNECT, 1), -1);
    ck_assert_int_eq(mqtt_encode_ack(&b, MQTT_SUBACK, 1), -1);
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_encode_suback)
{
    struct buf b = {0};
    const uint8_t rcs[] = {0, 1, 2, MQTT_SUBACK_FAILURE};
    const uint8_t bad[] = {0, 3};
    ck_assert_int_eq(mqtt_encode_suback(&b, 0x1234, rcs, 4), 0);
    assert_buf_hex(&b, "90 06 1234 00 01 02 80");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_suback(&b, 0x1234, rcs, 0), -1); /* [MQTT-3.8.4-5] */
    ck_assert_int_eq(mqtt_encode_suback(&b, 0x1234, bad, 2), -1); /* [MQTT-3.9.3-2] */
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_encode_empty_packets)
{
    struct buf b = {0};
    ck_assert_int_eq(mqtt_encode_pingreq(&b), 0);
    ck_assert_int_eq(mqtt_encode_pingresp(&b), 0);
    ck_assert_int_eq(mqtt_encode_disconnect(&b), 0);
    assert_buf_hex(&b, "c0 00 d0 00 e0 00");
    buf_free(&b);
}
END_TEST

static struct mqtt_str mstr(const char *s)
{
    return (struct mqtt_str){.p = s, .len = (uint16_t)strlen(s)};
}

START_TEST(test_encode_connect)
{
    struct buf b = {0};
    struct mqtt_connect c = {.clean_session = true, .keep_alive = 60, .client_id = mstr("c")};
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), 0);
    assert_buf_hex(&b, "10 0d 0004 4d515454 04 02 003c 0001 63");
    buf_reset(&b);
    c.protocol_level = 3;
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), 0);
    assert_buf_hex(&b, "10 0f 0006 4d5149736470 03 02 003c 0001 63");
    buf_reset(&b);

    c = (struct mqtt_connect){.protocol_level = 4,
                              .clean_session = true,
                              .keep_alive = 300,
                              .client_id = mstr("cid"),
                              .will_flag = true,
                              .will_qos = 2,
                              .will_retain = true,
                              .will_topic = mstr("w/t"),
                              .will_payload = (const uint8_t *)"\x00\x01",
                              .will_payload_len = 2,
                              .has_username = true,
                              .username = mstr("us"),
                              .has_password = true,
                              .password = (const uint8_t *)"\xff\x00\x70",
                              .password_len = 3};
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), 0);
    assert_buf_hex(&b, "10 21 0004 4d515454 04 f6 012c 0003 636964 0003 772f74 0002 0001"
                       " 0002 7573 0003 ff0070");
    buf_reset(&b);

    c.has_username = false; /* [MQTT-3.1.2-22] */
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), -1);
    c.has_username = true;
    c.will_qos = 3; /* [MQTT-3.1.2-14] */
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), -1);
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

START_TEST(test_encode_subscribe)
{
    struct buf b = {0};
    struct mqtt_topic_req t[] = {{mstr("a"), 1}, {mstr("b/#"), 2}};
    ck_assert_int_eq(mqtt_encode_subscribe(&b, 0x1234, t, 1), 0);
    assert_buf_hex(&b, "82 06 1234 0001 61 01");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_subscribe(&b, 0x1234, t, 2), 0);
    assert_buf_hex(&b, "82 0c 1234 0001 61 01 0003 622f23 02");
    buf_reset(&b);
    ck_assert_int_eq(mqtt_encode_unsubscribe(&b, 0x1234, t, 2), 0);
    assert_buf_hex(&b, "a2 0a 1234 0001 61 0003 622f23");
    buf_reset(&b);

    ck_assert_int_eq(mqtt_encode_subscribe(&b, 0, t, 1), -1);   /* [MQTT-2.3.1-1] */
    ck_assert_int_eq(mqtt_encode_subscribe(&b, 1, t, 0), -1);   /* [MQTT-3.8.3-3] */
    ck_assert_int_eq(mqtt_encode_unsubscribe(&b, 1, t, 0), -1); /* [MQTT-3.10.3-2] */
    t[1].qos = 3;
    ck_assert_int_eq(mqtt_encode_subscribe(&b, 1, t, 2), -1);  /* [MQTT-3.8.3-4] */
    ck_assert_int_eq(mqtt_encode_unsubscribe(&b, 1, t, 2), 0); /* no QoS there */
    buf_reset(&b);
    t[0].filter = mstr("");
    ck_assert_int_eq(mqtt_encode_unsubscribe(&b, 1, t, 1), -1); /* [MQTT-4.7.3-1] */
    ck_assert_uint_eq(b.len, 0);
    buf_free(&b);
}
END_TEST

/* ---- round trips ------------------------------------------------------ */

START_TEST(test_round_trip_connect)
{
    struct buf b = {0};
    struct mqtt_connect c = {.protocol_level = 3,
                             .keep_alive = 65535,
                             .client_id = mstr(""),
                             .will_flag = true,
                             .will_qos = 1,
                             .will_topic = mstr("status/\xc3\xa9"),
                             .has_username = true,
                             .username = mstr("user")};
    ck_assert_int_eq(mqtt_encode_connect(&b, &c), 0);
    struct mqtt_packet p;
    ck_assert_int_eq(mqtt_decode(b.data, b.len, &p), PKT_OK);
    const struct mqtt_connect *d = &p.u.connect;
    ck_assert_uint_eq(d->protocol_level, 3);
    ck_assert(!d->clean_session);
    ck_assert_uint_eq(d->keep_alive, 65535);
    ck_assert_uint_eq(d->client_id.len, 0);
    ck_assert(d->will_flag && !d->will_retain);
    ck_assert_uint_eq(d->will_qos, 1);
    ck_assert(str_is(d->will_topic, "status/\xc3\xa9"));
    ck_assert_uint_eq(d->will_payload_len, 0);
    ck_assert(d->has_username && !d->has_password);
    ck_assert(str_is(d->username, "user"));
    mqtt_packet_clear(&p);
    buf_free(&b);
}
END_TEST

START_TEST(test_round_trip_publish)
{
    uint32_t len = 200000; /* three-byte Remaining Length */
    uint8_t *payload = malloc(len);
    ck_assert_ptr_nonnull(payload);
    for (uint32_t i = 0; i < len; i++)
        payload[i] = (uint8_t)(i * 31);
    for (uint8_t qos = 0; qos <= 2; qos++) {
        struct buf b = {0};
        ck_assert_int_eq(mqtt_encode_publish(&b, "x/y/z", 5, payload, len, qos, qos == 1, qos == 2,
                                             qos ? 65535 : 0),
                         0);
        struct mqtt_packet p;
        ck_assert_int_eq(mqtt_decode(b.data, b.len, &p), PKT_OK);
        const struct mqtt_publish *m = &p.u.publish;
        ck_assert(str_is(m->topic, "x/y/z"));
        ck_assert_uint_eq(m->qos, qos);
        ck_assert(m->retain == (qos == 1));
        ck_assert(m->dup == (qos == 2));
        ck_assert_uint_eq(m->packet_id, qos ? 65535 : 0);
        ck_assert_uint_eq(m->payload_len, len);
        ck_assert_mem_eq(m->payload, payload, len);
        mqtt_packet_clear(&p);
        buf_free(&b);
    }
    free(payload);
}
END_TEST

START_TEST(test_round_trip_lists)
{
    enum { N = 300 };
    struct mqtt_topic_req t[N];
    uint8_t rcs[N];
    char names[N][8];
    for (int i = 0; i < N; i++) {
        int len = snprintf(names[i], sizeof names[i], "t/%d", i);
        t[i] = (struct mqtt_topic_req){{names[i], (uint16_t)len}, (uint8_t)(i % 3)};
        rcs[i] = i % 4 == 3 ? MQTT_SUBACK_FAILURE : (uint8_t)(i % 4);
    }
    struct buf b = {0};
    ck_assert_int_eq(mqtt_encode_subscribe(&b, 9, t, N), 0);
    ck_assert_int_eq(mqtt_encode_unsubscribe(&b, 10, t, N), 0);
    ck_assert_int_eq(mqtt_encode_suback(&b, 11, rcs, N), 0);

    /* Three packets back to back, split as a connection would. */
    size_t off = 0;
    for (int k = 0; k < 3; k++) {
        uint8_t first;
        uint32_t remaining;
        size_t header_len;
        ck_assert_int_eq(
            mqtt_fixed_header(b.data + off, b.len - off, &first, &remaining, &header_len), PKT_OK);
        struct mqtt_packet p;
        ck_assert_int_eq(mqtt_decode(b.data + off, header_len + remaining, &p), PKT_OK);
        if (k < 2) {
            ck_assert_uint_eq(p.u.subscribe.packet_id, 9 + k);
            ck_assert_uint_eq(p.u.subscribe.count, N);
            for (int i = 0; i < N; i++) {
                ck_assert(str_is(p.u.subscribe.topics[i].filter, names[i]));
                ck_assert_uint_eq(p.u.subscribe.topics[i].qos, k == 0 ? t[i].qos : 0);
            }
        } else {
            ck_assert_uint_eq(p.u.suback.packet_id, 11);
            ck_assert_uint_eq(p.u.suback.count, N);
            ck_assert_mem_eq(p.u.suback.rcs, rcs, N);
        }
        mqtt_packet_clear(&p);
        off += header_len + remaining;
    }
    ck_assert_uint_eq(off, b.len);
    buf_free(&b);
}
END_TEST

START_TEST(test_round_trip_acks)
{
    static const enum mqtt_type types[] = {MQTT_PUBACK, MQTT_PUBREC, MQTT_PUBREL, MQTT_PUBCOMP,
                                           MQTT_UNSUBACK};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        struct buf b = {0};
        struct mqtt_packet p;
        ck_assert_int_eq(mqtt_encode_ack(&b, types[i], 0xfffe), 0);
        ck_assert_int_eq(mqtt_decode(b.data, b.len, &p), PKT_OK);
        ck_assert_uint_eq(p.type, types[i]);
        ck_assert_uint_eq(p.u.packet_id, 0xfffe);
        mqtt_packet_clear(&p);
        buf_free(&b);
    }
}
END_TEST

/* ---- misc ------------------------------------------------------------- */

START_TEST(test_type_names)
{
    ck_assert_str_eq(mqtt_type_name(MQTT_CONNECT), "CONNECT");
    ck_assert_str_eq(mqtt_type_name(MQTT_PUBLISH), "PUBLISH");
    ck_assert_str_eq(mqtt_type_name(MQTT_UNSUBSCRIBE), "UNSUBSCRIBE");
    ck_assert_str_eq(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
    ck_assert_str_eq(mqtt_type_name(0), "RESERVED");
    ck_assert_str_eq(mqtt_type_name(15), "RESERVED");
    ck_assert_str_eq(mqtt_type_name(1000), "RESERVED");
}
END_TEST

START_TEST(test_clear_is_safe)
{
    struct mqtt_packet p = {0};
    mqtt_packet_clear(&p);
    mqtt_packet_clear(NULL);
    p.type = MQTT_SUBSCRIBE; /* zeroed list */
    mqtt_packet_clear(&p);
    ck_assert_uint_eq(p.type, 0);
    ck_assert_ptr_null(p.u.subscribe.topics);
}
END_TEST

Suite *packet_suite(void);

Suite *packet_suite(void)
{
    Suite *s = suite_create("packet");
    TCase *tc = tcase_create("decode");
    tcase_add_loop_test(tc, test_decode_vector, 0, N_DECODE_VECTORS);
    tcase_add_test(tc, test_fields_connect_full);
    tcase_add_test(tc, test_fields_connect_minimal);
    tcase_add_test(tc, test_protocol_level_reported);
    tcase_add_test(tc, test_fields_publish);
    tcase_add_test(tc, test_fields_subscribe);
    tcase_add_test(tc, test_fields_acks);
    suite_add_tcase(s, tc);

    tc = tcase_create("framing");
    tcase_add_loop_test(tc, test_fixed_header, 0, N_VARINT_VECTORS);
    tcase_add_test(tc, test_encode_length_boundaries);
    tcase_add_loop_test(tc, test_utf8, 0, N_UTF8_VECTORS);
    suite_add_tcase(s, tc);

    tc = tcase_create("encode");
    tcase_add_test(tc, test_encode_connack);
    tcase_add_test(tc, test_encode_publish);
    tcase_add_test(tc, test_encode_publish_refused);
    tcase_add_test(tc, test_encode_acks);
    tcase_add_test(tc, test_encode_suback);
    tcase_add_test(tc, test_encode_empty_packets);
    tcase_add_test(tc, test_encode_connect);
    tcase_add_test(tc, test_encode_subscribe);
    tcase_add_test(tc, test_round_trip_connect);
    tcase_add_test(tc, test_round_trip_publish);
    tcase_add_test(tc, test_round_trip_lists);
    tcase_add_test(tc, test_round_trip_acks);
    tcase_add_test(tc, test_type_names);
    tcase_add_test(tc, test_clear_is_safe);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(packet_suite)
