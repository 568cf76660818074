/* The libmosquitto client of the integration tests: a well-behaved MQTT
 * client on its own network thread. Callbacks record under c->mu what
 * arrived; the test thread polls those records with deadlines. It never
 * reconnects on its own: a test decides when to connect again. */
#include "harness.h"

#include <mosquitto.h>
#include <stdlib.h>
#include <string.h>

static void it_on_connect(struct mosquitto *m, void *ud, int rc, int flags)
{
    struct it_client *c = ud;
    pthread_mutex_lock(&c->mu);
    c->connack_rc = rc;
    c->connected = rc == 0;
    c->session_present = flags & 1;
    pthread_mutex_unlock(&c->mu);
}

static void it_on_disconnect(struct mosquitto *m, void *ud, int rc)
{
    struct it_client *c = ud;
    pthread_mutex_lock(&c->mu);
    c->disconnected = true;
    c->connected = false;
    pthread_mutex_unlock(&c->mu);
    mosquitto_disconnect(m); /* sets the state that stops the thread's reconnect */
}

static void it_on_publish(struct mosquitto *m, void *ud, int mid)
{
    struct it_client *c = ud;
    pthread_mutex_lock(&c->mu);
    c->published++;
    pthread_mutex_unlock(&c->mu);
}

static void it_on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
    struct it_client *c = ud;
    pthread_mutex_lock(&c->mu);
    c->granted_count = n < 8 ? n : 8;
    for (int i = 0; i < c->granted_count; i++)
        c->granted[i] = granted[i];
    c->subacks++;
    pthread_mutex_unlock(&c->mu);
}

static void it_on_unsubscribe(struct mosquitto *m, void *ud, int mid)
{
    struct it_client *c = ud;
    pthread_mutex_lock(&c->mu);
    c->unsubacks++;
    pthread_mutex_unlock(&c->mu);
}

static void it_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    struct it_client *c = ud;
    struct it_msg im = {.len = msg->payloadlen, .qos = msg->qos, .retain = msg->retain};
    im.topic = strdup(msg->topic);
    im.payload = malloc((size_t)msg->payloadlen + 1);
    if (!im.topic || !im.payload)
        abort(); /* out of memory in a test client */
    if (msg->payloadlen > 0)
        memcpy(im.payload, msg->payload, (size_t)msg->payloadlen);
    im.payload[msg->payloadlen] = '\0';
    pthread_mutex_lock(&c->mu);
    if (c->nmsgs == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->msgs = realloc(c->msgs, c->cap * sizeof *c->msgs);
        if (!c->msgs)
            abort();
    }
    c->msgs[c->nmsgs++] = im;
    pthread_mutex_unlock(&c->mu);
}

/* A counter of c read under the lock, compared with a target. */
struct it_watch {
    struct it_client *c;
    const int *field;
    int target;
};

static bool it_watch_reached(void *ctx)
{
    struct it_watch *w = ctx;
    pthread_mutex_lock(&w->c->mu);
    bool ok = *w->field >= w->target;
    pthread_mutex_unlock(&w->c->mu);
    return ok;
}

static bool it_client_connack_seen(void *ctx)
{
    struct it_client *c = ctx;
    pthread_mutex_lock(&c->mu);
    bool seen = c->connected || c->connack_rc >= 0 || c->disconnected;
    pthread_mutex_unlock(&c->mu);
    return seen;
}

static int it_client_setup(struct it_client *c, const struct it_connect_opts *o)
{
    static bool lib_ready;
    if (!lib_ready) {
        mosquitto_lib_init();
        lib_ready = true;
    }
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->connack_rc = -1;
    c->mosq = mosquitto_new(o->client_id, o->clean, c);
    if (!c->mosq)
        return -1;
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_with_flags_callback_set(c->mosq, it_on_connect);
    mosquitto_disconnect_callback_set(c->mosq, it_on_disconnect);
    mosquitto_publish_callback_set(c->mosq, it_on_publish);
    mosquitto_subscribe_callback_set(c->mosq, it_on_subscribe);
    mosquitto_unsubscribe_callback_set(c->mosq, it_on_unsubscribe);
    mosquitto_message_callback_set(c->mosq, it_on_message);
    if (o->will_topic) {
        const char *wp = o->will_payload ? o->will_payload : "";
        if (mosquitto_will_set(c->mosq, o->will_topic, (int)strlen(wp), wp, o->will_qos,
                               o->will_retain) != MOSQ_ERR_SUCCESS)
            return -1;
    }
    return 0;
}

int it_client_open(struct it_client *c, uint16_t port, const struct it_connect_opts *o)
{
    if (it_client_setup(c, o) != 0)
        return -1;
    int ka = o->keep_alive ? o->keep_alive : 60;
    if (mosquitto_connect(c->mosq, "127.0.0.1", port, ka) != MOSQ_ERR_SUCCESS ||
        mosquitto_loop_start(c->mosq) != MOSQ_ERR_SUCCESS)
        return -1;
    if (!it_wait_until(it_client_connack_seen, c, IT_WAIT_MS))
        return -1;
    pthread_mutex_lock(&c->mu);
    int rc = c->connack_rc;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int it_client_subscribe(struct it_client *c, const char *filter, int qos)
{
    pthread_mutex_lock(&c->mu);
    struct it_watch w = {c, &c->subacks, c->subacks + 1};
    pthread_mutex_unlock(&c->mu);
    if (mosquitto_subscribe(c->mosq, NULL, filter, qos) != MOSQ_ERR_SUCCESS ||
        !it_wait_until(it_watch_reached, &w, IT_WAIT_MS))
        return -1;
    pthread_mutex_lock(&c->mu);
    int granted = c->granted_count ? c->granted[0] : -1;
    pthread_mutex_unlock(&c->mu);
    return granted;
}

int it_client_unsubscribe(struct it_client *c, const char *filter)
{
    pthread_mutex_lock(&c->mu);
    struct it_watch w = {c, &c->unsubacks, c->unsubacks + 1};
    pthread_mutex_unlock(&c->mu);
    if (mosquitto_unsubscribe(c->mosq, NULL, filter) != MOSQ_ERR_SUCCESS ||
        !it_wait_until(it_watch_reached, &w, IT_WAIT_MS))
        return -1;
    return 0;
}

int it_client_publish(struct it_client *c, const char *topic, const char *payload, int qos,
                      bool retain)
{
    int rc = mosquitto_publish(c->mosq, NULL, topic, (int)strlen(payload), payload, qos, retain);
    return rc == MOSQ_ERR_SUCCESS ? 0 : -1;
}

bool it_client_wait_published(struct it_client *c, int n, int timeout_ms)
{
    struct it_watch w = {c, &c->published, n};
    return it_wait_until(it_watch_reached, &w, timeout_ms);
}

struct it_count_watch {
    struct it_client *c;
    size_t n;
};

static bool it_count_reached(void *ctx)
{
    struct it_count_watch *w = ctx;
    return it_client_count(w->c) >= w->n;
}

bool it_client_wait_msgs(struct it_client *c, size_t n, int timeout_ms)
{
    struct it_count_watch w = {c, n};
    return it_wait_until(it_count_reached, &w, timeout_ms);
}

bool it_client_quiet(struct it_client *c, size_t n, int window_ms)
{
    struct it_count_watch w = {c, n + 1};
    return !it_wait_until(it_count_reached, &w, window_ms);
}

size_t it_client_count(struct it_client *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nmsgs;
    pthread_mutex_unlock(&c->mu);
    return n;
}

struct it_msg it_client_msg(struct it_client *c, size_t i)
{
    struct it_msg m = {0};
    pthread_mutex_lock(&c->mu);
    if (i < c->nmsgs)
        m = c->msgs[i];
    pthread_mutex_unlock(&c->mu);
    return m;
}

bool it_client_is_disconnected(struct it_client *c)
{
    pthread_mutex_lock(&c->mu);
    bool d = c->disconnected;
    pthread_mutex_unlock(&c->mu);
    return d;
}

void it_client_close(struct it_client *c)
{
    if (!c || !c->mosq)
        return;
    mosquitto_disconnect(c->mosq);
    mosquitto_loop_stop(c->mosq, false);
    mosquitto_destroy(c->mosq);
    c->mosq = NULL;
    for (size_t i = 0; i < c->nmsgs; i++) {
        free(c->msgs[i].topic);
        free(c->msgs[i].payload);
    }
    free(c->msgs);
    c->msgs = NULL;
    c->nmsgs = c->cap = 0;
    pthread_mutex_destroy(&c->mu);
}
