/* Integration test harness: runs the real broker binary on a private port
 * and a temporary folder, and drives it with real MQTT clients.
 *
 * Which broker runs:
 *   default                 mqbridge (MQBRIDGE_BIN, or env MQB_IT_BIN)
 *   MQB_IT_BROKER=mosquitto the Debian `mosquitto` with an equivalent
 *                           mosquitto.conf, to validate the tests themselves.
 * Tests of mqbridge-only behaviour are not registered in mosquitto mode;
 * it_note_skip() prints why.
 *
 * Two kinds of clients:
 *   struct it_client  libmosquitto with its own network thread, collecting
 *                     what it receives; tests poll its counters.
 *   struct it_raw     a plain socket speaking bytes, for exact packet ids and
 *                     flags, malformed packets and misbehaving clients. Its
 *                     decoder is written here on purpose, independent of the
 *                     broker's codec, so a codec bug cannot hide itself.
 *
 * Nothing sleeps for a fixed time: every wait polls a condition with a
 * deadline (it_wait_until). A test that fails dies without running its
 * cleanup; a small reaper process then prints the tail of the broker log
 * and removes the temporary folder (set MQB_IT_KEEP=1 to keep it). */
#ifndef MQB_IT_HARNESS_H
#define MQB_IT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <pthread.h>

#include "../../broker/packet.h" /* enum mqtt_type only: the codec is not used */
#include "../../common/buf.h"

#define IT_WAIT_MS 5000   /* default deadline for something that must happen */
#define IT_QUIET_MS 400   /* window in which something must NOT happen */
#define IT_START_MS 10000 /* broker readiness and shutdown deadline */

/* ---- time and polling ---- */

/* Monotonic clock in milliseconds. */
int64_t it_now_ms(void);
/* Poll cond(ctx) every few milliseconds until it is true (returns true) or
 * timeout_ms passed (returns false). */
bool it_wait_until(bool (*cond)(void *ctx), void *ctx, int timeout_ms);

/* pipe() with both ends close-on-exec. 0 or -1. */
int it_pipe(int fds[2]);
/* A free TCP port on 127.0.0.1 (bound to port 0 and read back). */
uint16_t it_free_port(void);
/* true when a TCP connect to 127.0.0.1:port succeeds. */
bool it_port_accepts(uint16_t port);
/* mkdtemp under /tmp (dir: at least 32 bytes), known to the reaper so a
 * failed test does not leave it behind. Fails the test on error. */
void it_tmpdir_make(char *dir, size_t len);
/* rm -rf dir (unless MQB_IT_KEEP is set); dir becomes "". */
void it_tmpdir_remove(char *dir);
/* Write text to path, failing the test on error. */
void it_write_file(const char *path, const char *text);

/* ---- the broker under test ---- */

/* Limits written into the config; 0 keeps the default (max_inflight 20,
 * max_queued 1000, max_connections unlimited, max_packet_size 268435460). */
struct it_broker_opts {
    unsigned max_inflight;
    unsigned max_queued;
    unsigned max_connections;
    unsigned long max_packet_size;
    /* mqbridge only: the YAML flow mapping of the `instance` section
     * (default "{ naming: mqtt }"), and extra `limits` keys appended inside
     * the limits mapping, e.g. "max_subscriptions_per_client: 3". */
    const char *instance_yaml;
    const char *limits_yaml;
    /* mqbridge only: YAML appended verbatim at the end of the generated
     * file, for top-level sections (connectors, rules, rule_files,
     * export). NULL: nothing. */
    const char *extra_yaml;
};

struct it_broker {
    char dir[64];   /* mkdtemp folder: config, store, broker.log */
    char conf[128]; /* config file written for this broker */
    char log[128];  /* broker stdout+stderr, appended across restarts */
    uint16_t port;
    pid_t pid; /* 0 when not running */
    struct it_broker_opts opts;
};

/* True when MQB_IT_BROKER=mosquitto. */
bool it_mode_mosquitto(void);
/* The mqbridge binary: env MQB_IT_BIN, else MQBRIDGE_BIN. */
const char *it_mqbridge_path(void);
/* "mqbridge" or "mosquitto", for messages. */
const char *it_broker_name(void);
/* Print once why a test is not run in this mode. */
void it_note_skip(const char *test, const char *why);

/* Create the folder, pick a free port, write the config, start the broker
 * and wait until it accepts TCP connections. opts may be NULL. Fails the
 * test (with the log tail) when the broker does not come up. */
void it_broker_start(struct it_broker *b, const struct it_broker_opts *opts);
/* Start again on the same port and folder after stop or kill9. */
void it_broker_restart(struct it_broker *b);
/* SIGTERM, then wait up to IT_START_MS for the exit. Returns the exit
 * status (0 expected), 128 + signal when killed by a signal, or -1 when it
 * did not exit in time (it is then killed). */
int it_broker_stop(struct it_broker *b);
/* SIGKILL and reap. */
void it_broker_kill9(struct it_broker *b);
/* Stop with SIGTERM if running, failing the test unless the exit status
 * is 0, and remove the folder. Accepts a zeroed struct. */
void it_broker_cleanup(struct it_broker *b);
/* Write the last `lines` lines of the broker log to stderr. */
void it_broker_print_log(const struct it_broker *b, int lines);

/* ---- child processes (CLI tests) ---- */

struct it_proc {
    pid_t pid;
    int out_fd, err_fd;  /* -1 once drained */
    struct buf out, err; /* NUL-terminated after every read */
    int status;          /* see it_proc_wait */
};

/* Start argv[0] (searched in PATH) with stdout and stderr captured.
 * 0 or -1. */
int it_proc_spawn(struct it_proc *p, char *const argv[]);
/* Read the child's stdout until it contains needle. true when found. */
bool it_proc_wait_output(struct it_proc *p, const char *needle, int timeout_ms);
/* Drain both pipes and reap. Returns the exit status, 128 + signal, or -1
 * when the child did not exit in time (it is then killed). */
int it_proc_wait(struct it_proc *p, int timeout_ms);
/* Kill if running, free buffers. Accepts a zeroed struct. */
void it_proc_cleanup(struct it_proc *p);
/* spawn + wait; the caller cleans up p. */
int it_run(struct it_proc *p, char *const argv[], int timeout_ms);

/* ---- raw socket client ---- */

enum {
    IT_RAW_TIMEOUT = -1, /* nothing complete within the deadline */
    IT_RAW_ERROR = -2,   /* socket error or undecodable server packet */
    IT_RAW_EOF = 0,      /* the server closed the connection */
    /* > 0: the packet type received, enum mqtt_type */
};

/* A decoded server packet. body is a heap copy of the variable header and
 * payload; topic and payload point into it. */
struct it_pkt {
    uint8_t type, flags;
    uint8_t *body;
    uint32_t len;
    uint16_t pid;           /* PUBLISH QoS>0, acks, SUBACK, UNSUBACK */
    uint8_t qos;            /* PUBLISH */
    bool dup, retain;       /* PUBLISH */
    char topic[256];        /* PUBLISH, NUL-terminated copy */
    const uint8_t *payload; /* PUBLISH */
    uint32_t payload_len;   /* PUBLISH */
    bool session_present;   /* CONNACK */
    uint8_t rc;             /* CONNACK */
    const uint8_t *rcs;     /* SUBACK return codes */
    uint32_t rc_count;      /* SUBACK */
};

struct it_raw {
    int fd;
    struct buf rx;
};

/* What a CONNECT carries; zero values mean: level 4, keep-alive 0, no
 * will. client_id NULL means a zero-length id. */
struct it_connect_opts {
    const char *client_id;
    bool clean;
    uint16_t keep_alive;
    uint8_t level; /* 4 "MQTT", 3 "MQIsdp"; others are sent with "MQTT" */
    const char *will_topic;
    const char *will_payload;
    uint8_t will_qos;
    bool will_retain;
};

/* TCP connect to 127.0.0.1:port. 0 or -1. */
int it_raw_open(struct it_raw *r, uint16_t port);
/* Accepts a zeroed struct. */
void it_raw_close(struct it_raw *r);
/* Half-close our side (after DISCONNECT), so the server sees EOF. */
void it_raw_shutdown(struct it_raw *r);
int it_raw_send(struct it_raw *r, const void *data, size_t len);
/* Send bytes written as hex digits; spaces are ignored: "c0 00". */
int it_raw_send_hex(struct it_raw *r, const char *hex);
/* Next packet: its type (> 0), IT_RAW_EOF, IT_RAW_TIMEOUT or IT_RAW_ERROR.
 * p may be NULL. Clear p with it_pkt_clear after a positive return. */
int it_raw_next(struct it_raw *r, struct it_pkt *p, int timeout_ms);
void it_pkt_clear(struct it_pkt *p);
/* Wait for the server to close, discarding packets meanwhile. Returns
 * IT_RAW_EOF, or IT_RAW_TIMEOUT when still open at the deadline. */
int it_raw_wait_eof(struct it_raw *r, int timeout_ms);

int it_raw_send_connect(struct it_raw *r, const struct it_connect_opts *o);
/* Open, CONNECT, read the CONNACK. Returns the CONNACK return code, or -1
 * when no CONNACK came (sp may be NULL). */
int it_raw_connect(struct it_raw *r, uint16_t port, const struct it_connect_opts *o, bool *sp);
int it_raw_publish(struct it_raw *r, const char *topic, const void *payload, size_t len,
                   uint8_t qos, bool retain, bool dup, uint16_t pid);
/* PUBACK, PUBREC, PUBREL (flags 0x2 added), PUBCOMP. */
int it_raw_ack(struct it_raw *r, uint8_t type, uint16_t pid);
int it_raw_subscribe(struct it_raw *r, uint16_t pid, const char *const *filters, const uint8_t *qos,
                     size_t n);
int it_raw_unsubscribe(struct it_raw *r, uint16_t pid, const char *const *filters, size_t n);
int it_raw_pingreq(struct it_raw *r);
int it_raw_disconnect(struct it_raw *r);
/* SUBSCRIBE one filter with packet id 1 and read the SUBACK: the granted
 * code, or -1 when no SUBACK with id 1 came. */
int it_raw_sub1(struct it_raw *r, const char *filter, uint8_t qos);
/* A clean goodbye: DISCONNECT, half-close, wait until the server closed
 * (so it has processed the DISCONNECT), close. 0, or -1 when the server
 * did not close in time. */
int it_raw_leave(struct it_raw *r);

/* Assertions (they fail the running test): */
/* Connect and require CONNACK 0 with the given session-present flag. */
void it_raw_connect_ok(struct it_raw *r, uint16_t port, const char *id, bool clean, bool want_sp);
/* The next packet must be a PUBLISH of payload on topic at qos with that
 * DUP flag and RETAIN=0; returns its packet id (non-zero for QoS > 0). */
uint16_t it_raw_expect_publish(struct it_raw *r, const char *topic, const char *payload, int qos,
                               bool dup);
/* The next packet must be of type (PUBACK ... UNSUBACK) with packet id pid. */
void it_raw_expect_ack(struct it_raw *r, int type, uint16_t pid);

/* ---- libmosquitto client ---- */

struct it_msg {
    char *topic;
    char *payload; /* NUL-terminated copy */
    int len;
    int qos;
    bool retain;
};

struct it_client {
    struct mosquitto *mosq;
    pthread_mutex_t mu;
    bool connected, disconnected, session_present;
    int connack_rc;
    int published; /* on_publish: QoS 0 sent, QoS 1 PUBACK, QoS 2 PUBCOMP */
    int subacks, unsubacks;
    int granted[8]; /* of the last SUBACK */
    int granted_count;
    struct it_msg *msgs;
    size_t nmsgs, cap;
};

/* Connect (client_id, clean and will from o; keep-alive 60 unless set) and
 * wait for the CONNACK. Returns the CONNACK code, or -1 when none came. */
int it_client_open(struct it_client *c, uint16_t port, const struct it_connect_opts *o);
/* Subscribe and wait for the SUBACK: the granted QoS, 0x80, or -1. */
int it_client_subscribe(struct it_client *c, const char *filter, int qos);
int it_client_unsubscribe(struct it_client *c, const char *filter);
/* Queue a publish (payload is a string). 0 or -1; does not wait. */
int it_client_publish(struct it_client *c, const char *topic, const char *payload, int qos,
                      bool retain);
/* Wait until on_publish fired n times in total. */
bool it_client_wait_published(struct it_client *c, int n, int timeout_ms);
/* Wait until n messages in total were received. */
bool it_client_wait_msgs(struct it_client *c, size_t n, int timeout_ms);
/* true when no more than n messages arrive within window_ms. */
bool it_client_quiet(struct it_client *c, size_t n, int window_ms);
size_t it_client_count(struct it_client *c);
/* Copy of message i (pointers stay owned by the client). */
struct it_msg it_client_msg(struct it_client *c, size_t i);
bool it_client_is_disconnected(struct it_client *c);
/* DISCONNECT, stop the thread, free. Accepts a zeroed struct. */
void it_client_close(struct it_client *c);

#endif
