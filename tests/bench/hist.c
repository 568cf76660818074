/* Log-linear latency histogram.
 *
 * Values below 128 have a bucket each. Above, a value keeps its top 7
 * significant bits: with msb the index of its highest set bit and
 * shift = msb - 6, the bucket is HIST_SUB * shift + (value >> shift), so
 * 128..255 -> 128..191 (width 2), 256..511 -> 192..255 (width 4), ...
 * A bucket's width is 1/64 of its lower bound: percentiles read back from
 * bucket midpoints are within about 1.6% of the recorded values. */
#include <string.h>

#include "bench.h"

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6u;
    unsigned idx = HIST_SUB * shift + (unsigned)(v >> shift);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* Midpoint of the values that map to bucket idx. */
static uint64_t hist_value(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned shift = idx / HIST_SUB - 1u;
    uint64_t low = (uint64_t)(idx % HIST_SUB + HIST_SUB) << shift;
    return low + ((1ull << shift) >> 1);
}

void hist_record(struct hist *h, uint64_t value)
{
    h->bucket[hist_index(value)]++;
    h->n++;
    if (value > h->max)
        h->max = value;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->bucket[i] += from->bucket[i];
    into->n += from->n;
    if (from->max > into->max)
        into->max = from->max;
}

uint64_t hist_percentile(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n)
        rank = h->n - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen > rank) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}
