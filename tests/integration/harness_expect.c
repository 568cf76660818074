/* Assertions on the raw client shared by the test files: each fails the
 * running Check test with a message saying what came instead. */
#include "harness.h"

#include <check.h>
#include <string.h>

void it_raw_connect_ok(struct it_raw *r, uint16_t port, const char *id, bool clean, bool want_sp)
{
    struct it_connect_opts o = {.client_id = id, .clean = clean};
    bool sp = !want_sp;
    int rc = it_raw_connect(r, port, &o, &sp);
    ck_assert_msg(rc == 0, "%s: CONNACK %d, want 0", id, rc);
    ck_assert_msg(sp == want_sp, "%s: session present %d, want %d", id, sp, want_sp);
}

uint16_t it_raw_expect_publish(struct it_raw *r, const char *topic, const char *payload, int qos,
                               bool dup)
{
    struct it_pkt p;
    int got = it_raw_next(r, &p, IT_WAIT_MS);
    ck_assert_msg(got == MQTT_PUBLISH, "want PUBLISH '%s' on %s, got %d", payload, topic, got);
    ck_assert_msg(strcmp(p.topic, topic) == 0, "'%s': topic %s, want %s", payload, p.topic, topic);
    ck_assert_msg(p.payload_len == strlen(payload) && !memcmp(p.payload, payload, p.payload_len),
                  "on %s: payload '%.*s', want '%s'", topic, (int)p.payload_len,
                  (const char *)p.payload, payload);
    ck_assert_msg(p.qos == qos, "'%s': QoS %d, want %d", payload, p.qos, qos);
    ck_assert_msg(p.dup == dup, "'%s': DUP %d, want %d", payload, p.dup, dup);
    ck_assert_msg(!p.retain, "'%s': RETAIN set on a live delivery [MQTT-3.3.1-9]", payload);
    ck_assert_msg(qos == 0 || p.pid != 0, "'%s': packet id 0 [MQTT-2.3.1-1]", payload);
    uint16_t pid = p.pid;
    it_pkt_clear(&p);
    return pid;
}

void it_raw_expect_ack(struct it_raw *r, int type, uint16_t pid)
{
    struct it_pkt p;
    int got = it_raw_next(r, &p, IT_WAIT_MS);
    ck_assert_msg(got == type, "want packet type %d for id %u, got %d", type, pid, got);
    ck_assert_msg(p.pid == pid, "type %d: packet id %u, want %u", type, p.pid, pid);
    it_pkt_clear(&p);
}
