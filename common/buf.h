/* Growable byte buffer: the output side of the packet encoder and of every
 * connection. Never shrinks on its own; buf_reset() keeps the capacity. */
#ifndef MQB_BUF_H
#define MQB_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

/* Make room for `extra` more bytes. 0 on success, -1 when out of memory
 * (the buffer is left as it was). */
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *data, size_t len);
int buf_append_u8(struct buf *b, uint8_t v);
int buf_append_u16(struct buf *b, uint16_t v); /* big endian, as MQTT */
/* Drop the first n bytes (what a partial write consumed). */
void buf_consume(struct buf *b, size_t n);
static inline void buf_reset(struct buf *b)
{
    b->len = 0;
}
/* Release the storage; the struct may be reused after it. Accepts NULL. */
void buf_free(struct buf *b);

#endif
