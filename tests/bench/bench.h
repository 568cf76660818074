/* mqbench internals shared by its files: options, the latency histogram,
 * clients and the worker threads that drive them.
 *
 * Threading model: every MQTT client belongs to exactly one worker thread,
 * which drives it with one event loop (epoll for the raw engine, poll()
 * for libmosquitto). No client is touched by two threads.
 * Workers publish progress to the main thread through the atomics of struct
 * bench_shared; detailed statistics stay per worker and are merged by the
 * main thread after the workers have been joined.
 *
 * Two client engines drive the same scenarios:
 *  - raw (default): a minimal MQTT 3.1.1 client on non-blocking sockets
 *    (wire.c, engine_raw.c) that reads up to 64 KiB per system call and
 *    writes all packets queued in a loop turn at once, so the tool spends
 *    far less CPU per message than the broker it measures;
 *  - mosquitto: libmosquitto driven with mosquitto_loop_read/write/misc
 *    (engine_mosq.c), a reference client to cross-check the raw engine.
 *    libmosquitto 2.0 reads a packet header byte by byte and writes a
 *    wake-up byte per queued packet: about 10 system calls per QoS 1
 *    message, as much CPU as the broker itself uses. */
#ifndef MQB_BENCH_H
#define MQB_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct mosquitto;

enum bench_engine { ENGINE_RAW, ENGINE_MOSQ };

struct bench_opts {
    const char *host;
    int port;
    int publishers;
    int subscribers;
    int qos;
    int size;   /* payload bytes, at least BENCH_HEADER_SIZE */
    long count; /* messages per publisher */
    const char *topic;
    const char *id_prefix; /* client IDs are <id_prefix><pid>-<s|p|i><n> */
    int timeout_s;         /* connect phase, and the run from the first publish */
    int idle;              /* > 0: idle-connection mode with this many clients */
    int hold_s;            /* idle mode: hold this long; 0 = until stdin EOF */
    int threads;
    int inflight; /* QoS 1/2 window per publisher */
    int keepalive;
    int drain_ms;       /* QoS 0: stop waiting after this long without progress */
    long backlog;       /* QoS 1/2 publishers pause while a subscriber lags more; 0 = off */
    const char *client; /* "raw" or "mosquitto" */
    enum bench_engine engine;
    bool json;
    /* --offline N: store-and-replay mode with N persistent subscribers
     * (offline.c); 0 = the load or idle mode */
    int offline;
    bool no_baseline;      /* offline: skip the no-subscriber and in-memory runs */
    const char *store_dir; /* offline: the broker's storage directory, measured; NULL = not */
    int broker_pid;        /* offline: the broker's CPU and I/O per phase; 0 = not */
};

/* Offline mode's message plan. Publisher p's message s is message number
 * g = p + s * publishers of publishers * count; it goes to persistent
 * client g % offline (topic PREFIX/o/<client>) as that client's round
 * g / offline. A client receives its rounds from each publisher in
 * increasing order: rounds of one publisher to one topic keep their order
 * [MQTT-4.6.0-5]. */
static inline uint64_t offline_total(const struct bench_opts *o)
{
    return (uint64_t)o->publishers * (uint64_t)o->count;
}

/* Messages (rounds) persistent client t receives. */
static inline uint32_t offline_rounds(const struct bench_opts *o, int t)
{
    uint64_t m = offline_total(o), n = (uint64_t)o->offline;
    return m > (uint64_t)t ? (uint32_t)((m - (uint64_t)t + n - 1) / n) : 0;
}

/* Payload header, written at offset 0 of every payload in host byte order
 * (sender and receiver are the same process). */
#define BENCH_MAGIC 0x4d514248u /* "MQBH" */
#define BENCH_HEADER_SIZE 24

/* Latency histogram: log-linear buckets, 64 per power of two above 128 ns,
 * so a percentile is exact to about 1.6%. */
#define HIST_SUB 64
#define HIST_BUCKETS (HIST_SUB * 59)

struct hist {
    uint64_t n;
    uint64_t max;
    uint64_t bucket[HIST_BUCKETS];
};

void hist_record(struct hist *h, uint64_t value);
void hist_merge(struct hist *into, const struct hist *from);
/* Value below which the fraction q (0..1) of the samples lie; 0 if empty. */
uint64_t hist_percentile(const struct hist *h, double q);

/* Growable byte buffer: bytes [off, len) are pending. */
struct bbuf {
    unsigned char *data;
    size_t off, len, cap;
};

/* Makes room for n more bytes at data + len; 0 or -1 (out of memory). */
int bbuf_reserve(struct bbuf *b, size_t n);
/* Drops the consumed prefix [0, off). */
void bbuf_compact(struct bbuf *b);
static inline size_t bbuf_pending(const struct bbuf *b)
{
    return b->len - b->off;
}
void bbuf_free(struct bbuf *b);

/* MQTT 3.1.1 packets the raw engine sends and receives (wire.c). Every
 * wire_put_* appends one packet to b and returns 0, or -1 when out of
 * memory. */
enum wire_type {
    WIRE_CONNACK = 2,
    WIRE_PUBLISH = 3,
    WIRE_PUBACK = 4,
    WIRE_PUBREC = 5,
    WIRE_PUBREL = 6,
    WIRE_PUBCOMP = 7,
    WIRE_SUBACK = 9,
    WIRE_PINGRESP = 13,
};

struct wire_packet {
    int type;                     /* enum wire_type or any other control packet type */
    int qos;                      /* PUBLISH */
    uint16_t id;                  /* packet identifier, where the packet has one */
    uint8_t code;                 /* CONNACK return code, first SUBACK return code */
    bool present;                 /* CONNACK session present flag [MQTT-3.2.2-2] */
    const unsigned char *payload; /* PUBLISH application message, points into the buffer */
    size_t payload_len;
};

/* clean: the cleanSession flag [MQTT-3.1.2-4]. */
int wire_put_connect(struct bbuf *b, const char *client_id, int keepalive, bool clean);
int wire_put_subscribe(struct bbuf *b, uint16_t id, const char *filter, int qos);
/* id is ignored at QoS 0 [MQTT-2.3.1-5]. */
int wire_put_publish(struct bbuf *b, const char *topic, uint16_t id, int qos, const void *payload,
                     size_t payload_len);
int wire_put_ack(struct bbuf *b, int type, uint16_t id); /* PUBACK, PUBREC, PUBREL, PUBCOMP */
int wire_put_simple(struct bbuf *b, int type);           /* PINGREQ, DISCONNECT */
/* Decodes one packet from p[0..len). Returns its size, 0 if incomplete,
 * -1 if malformed. */
long wire_parse(const unsigned char *p, size_t len, struct wire_packet *out);

enum bench_phase { PHASE_CONNECT, PHASE_RUN, PHASE_STOP };
enum client_role { ROLE_SUB, ROLE_PUB, ROLE_IDLE };
enum client_state { CL_NEW, CL_CONNECTING, CL_SUBSCRIBING, CL_READY, CL_DEAD };

/* Per-worker results, merged by the main thread after join. */
struct bench_stats {
    uint64_t published;  /* messages handed to the connection */
    uint64_t completed;  /* written (QoS 0) or acknowledged (QoS 1/2) */
    uint64_t unique;     /* first deliveries of a (publisher, seq) */
    uint64_t duplicates; /* further deliveries of an already seen (publisher, seq) */
    uint64_t out_of_order;
    uint64_t malformed;
    int64_t first_pub_ns; /* 0 = none */
    int64_t last_pub_ns;
    int64_t last_recv_ns;
    int64_t last_ready_ns; /* the last client got ready (CONNACK or SUBACK) */
    struct hist latency;   /* ns from publish to delivery, first deliveries only */
};

/* Progress visible to the main thread while the workers run. */
struct bench_shared {
    atomic_int phase;
    atomic_int ready;     /* clients connected (and, for subscribers, subscribed) */
    atomic_int failed;    /* clients that could not connect or lost the connection */
    atomic_int pubs_done; /* publishers with every message written/acknowledged */
    atomic_ullong unique; /* sum of the workers' unique deliveries */
    atomic_ullong published;
};

struct worker;

struct client {
    struct worker *w;
    enum client_role role;
    enum client_state state;
    int index;        /* publisher or subscriber number */
    char id[80];      /* MQTT client identifier */
    char *topic;      /* publish topic or subscription filter */
    size_t topic_cap; /* bytes allocated for topic */
    /* How the next connection starts (set between cycles, offline mode):
     * with cleanSession, and whether a subscriber subscribes after CONNACK
     * (a subscriber that does not is resuming its session and requires the
     * CONNACK session present flag). */
    bool clean;
    bool subscribe;
    struct mosquitto *mosq; /* engine mosquitto */
    int fd;                 /* engine raw, -1 when closed */
    struct bbuf in, out;    /* engine raw */
    bool polled;            /* engine raw: in the worker's epoll set */
    bool want_out;          /* engine raw: waiting for a write event (kernel buffer full) */
    bool dirty;             /* engine raw: in the worker's list of clients to write */
    int64_t last_out_ns;    /* engine raw: for PINGREQ */
    /* publisher */
    uint32_t next_seq;
    uint64_t completed;
    uint16_t next_id;
    bool done;
    unsigned char *payload;
    /* subscriber: seen bitmap indexed by publisher * count + seq (offline
     * mode: by round), and per publisher the highest seq (round) delivered
     * so far plus one */
    uint64_t *seen;
    uint32_t *next_expected;
};

struct worker {
    const struct bench_opts *opts;
    struct bench_shared *shared;
    const struct sockaddr *addr; /* broker address, engine raw */
    socklen_t addrlen;
    int id;
    struct client **clients; /* owned by the main thread */
    int nclients;
    int next_connect;    /* clients[0..next_connect) have been started */
    int pending;         /* connects waiting for CONNACK/SUBACK */
    bool graceful;       /* stop: DISCONNECT, then wait for the broker to close (raw engine) */
    int linger_timeouts; /* graceful stop: connections the broker did not close in time */
    struct bench_stats st;
    uint64_t flushed_unique; /* share of st.unique already added to shared */
    uint64_t flushed_published;
    const char *error; /* first fatal error of this worker, static text */
    pthread_t thread;
};

/* Builds a client of the given role; NULL on allocation failure. Destroy
 * with client_destroy(), which accepts NULL and half-built clients. A
 * client starts with clean = true and subscribe = true. */
struct client *client_create(const struct bench_opts *o, enum client_role role, int index);
void client_destroy(struct client *c);
/* Readies a client for another cycle (offline mode): closes its socket,
 * empties its buffers, forgets what it published and received, and
 * detaches it from its worker. Keeps its id, role and clean/subscribe. */
void client_reset(struct client *c, const struct bench_opts *o);

/* Engine-independent steps of a client's life (client.c). */
/* Marks c failed (once; the run then stops). why is static text, errnum an
 * errno value or 0. */
void client_fail(struct client *c, const char *why, int errnum);
void client_set_ready(struct client *c);
void client_check_done(struct client *c); /* publisher: all written/acked? */
/* Checks and records one delivery to subscriber c. */
void client_record_delivery(struct client *c, const void *payload, size_t len, int64_t now);
/* Stamps the next message of publisher c into c->payload (offline mode:
 * and its topic into c->topic), counts it as published. */
void client_stamp_next(struct client *c);
/* Adds this worker's new deliveries and publishes to the shared counters. */
void worker_flush(struct worker *w);
/* QoS 1/2: true while the messages published but not yet delivered exceed
 * opts->backlog per subscriber: publishers then wait, so that a broker that
 * acknowledges faster than it delivers is measured at the rate it can
 * sustain instead of overflowing its queue (and dropping) per its
 * max_queued limit. */
bool worker_backlog_full(const struct worker *w);

/* Thread bodies: connect the worker's clients, publish and receive in
 * PHASE_RUN, disconnect everything once shared->phase is PHASE_STOP. */
void *engine_raw_run(void *arg);
void *engine_mosq_run(void *arg);
/* Engine-specific parts of client_create/client_destroy. */
int engine_mosq_client_init(struct client *c, const struct bench_opts *o);
void engine_mosq_client_free(struct client *c);

int64_t bench_now_ns(void);

/* Checks the wire codec and the histogram against known values; prints
 * the failures and returns 0 when all pass (selftest.c). */
int bench_selftest(void);

/* Runs the benchmark or idle test described by opts, prints the report on
 * stdout, and returns the exit status (0 ok, 1 failed). */
int bench_run(const struct bench_opts *opts);

/* A crew: worker threads driving a set of clients through one cycle,
 * PHASE_CONNECT -> (PHASE_RUN) -> PHASE_STOP (run.c). The clients are
 * borrowed: they outlive the crew and can serve in the next one. */
struct crew {
    struct bench_shared shared;
    struct worker *workers;
    int nworkers;
    int started; /* threads running */
    int nclients;
};

/* Deals clients[0..n) round-robin to min(o->threads, n) workers (with
 * graceful stops if asked) and starts them in PHASE_CONNECT against the
 * broker at addr. 0, or -1 with err filled; crew_free() in both cases. */
int crew_start(struct crew *cr, const struct bench_opts *o, struct client **clients, int n,
               const struct sockaddr *addr, socklen_t addrlen, bool graceful, char *err,
               size_t errlen);
/* Polls until every client is ready (connected; subscribers subscribed),
 * a client failed, or o->timeout_s passed. 0 when all are ready. */
int crew_wait_ready(struct crew *cr, const struct bench_opts *o, char *err, size_t errlen);
/* PHASE_STOP, then joins the threads (each disconnects its clients). */
void crew_stop(struct crew *cr);
/* Merges the workers' statistics into *into; *error gets the first worker
 * error (static text) if it is still NULL. Call after crew_stop(). */
void crew_collect(const struct crew *cr, struct bench_stats *into, const char **error);
/* Stops the crew if needed and frees it; accepts a zeroed crew. */
void crew_free(struct crew *cr);

/* Resolves host:port once; 0, or -1 with err filled. */
int bench_resolve(const char *host, int port, struct sockaddr_storage *addr, socklen_t *addrlen,
                  char *err, size_t errlen);
/* Raises RLIMIT_NOFILE for nsockets sockets; 0, or -1 with err filled. */
int bench_raise_nofile(const struct bench_opts *o, int nsockets, char *err, size_t errlen);
void bench_stats_merge(struct bench_stats *into, const struct bench_stats *from);
double bench_process_cpu_s(void);
void bench_sleep_ms(int ms);

/* Offline mode: in-memory comparison, store, replay; prints the report and
 * returns the exit status (offline.c). */
int offline_run(const struct bench_opts *opts);

#endif
