/*
 * conn_recv.c - the receive side of a connection to the broker (conn.c):
 * messages and the entries of BATCHes, each held to the max payload and
 * inflated when compressed, before the client or worker sees it.
 */
#include "internal.h"
#include "compress.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ab_in_close(ab_in_t *in)
{
    zmq_msg_close(&in->hdr);
    zmq_msg_close(&in->body);
}

/* Entries of a received BATCH kept decoded between batches; a larger array
 * is given back once its batch is handed out (an idle handle stays small). */
#define S_KEEP_ENTRIES 256

/* The received BATCH is handed out: its buffer and a large array go. */
static void s_batch_done(ab_conn_t *c)
{
    c->in_dec.n = c->in_next = 0;
    c->in_rd.left = 0;
    if (c->in_dec.cap > S_KEEP_ENTRIES)
        ab_batch_entries_fini(&c->in_dec);
    zmq_msg_close(&c->in_batch);
    zmq_msg_init(&c->in_batch);
}

/* Hands out the next entry of the BATCH being read, as views into the
 * batch (kept until the entry after the last is asked for, when every
 * caller has closed its ab_in_t). Its header was decoded when the batch
 * was checked (ab_batch_decode): not parsed again here. 1, or 0 when none
 * is left. */
static int s_batch_entry(ab_conn_t *c, ab_in_t *in)
{
    ab_frame_t f[2], pl;
    size_t nf = 0;
    if (c->in_next < c->in_dec.n) {
        const ab_batch_entry_t *e = &c->in_dec.e[c->in_next++];
        in->h = e->h;
        pl = e->payload;
        nf = e->has_payload ? 2 : 1;
    } else if (c->in_rd.left && ab_batch_next(&c->in_rd, f, &nf) == 1) {
        ab_msg_decode(f, nf, &c->rx_limits, &in->h, &pl); /* checked by ab_batch_open */
    } else {
        s_batch_done(c);
        return 0;
    }
    zmq_msg_init(&in->hdr);
    zmq_msg_init(&in->body);
    in->has_body = nf == 2;
    in->body_owned = 0;
    in->in_hdr = 0;
    in->data = in->has_body ? pl.data : NULL;
    in->size = in->has_body ? pl.size : 0;
    return 1;
}

int ab_in_take_body(ab_in_t *in, zmq_msg_t *out, size_t *at)
{
    *at = 0;
    if (in->body_owned)
        return zmq_msg_move(out, &in->body) == 0 ? AB_OK : AB_ENOMEM;
    /* The header frame goes whole: a copy of the payload into a frame of
     * its own cost a malloc and a free (in another thread, libzmq's) per
     * 64 B request in the worker (callgrind). Its offset is taken before
     * the move: a small frame's bytes live inside the zmq_msg_t itself. */
    if (in->in_hdr) {
        *at = (size_t)((const uint8_t *)in->data - (const uint8_t *)zmq_msg_data(&in->hdr));
        return zmq_msg_move(out, &in->hdr) == 0 ? AB_OK : AB_ENOMEM;
    }
    zmq_msg_close(out);
    if (zmq_msg_init_size(out, in->size) != 0) {
        zmq_msg_init(out);
        return AB_ENOMEM;
    }
    if (in->size)
        memcpy(zmq_msg_data(out), in->data, in->size);
    return AB_OK;
}

/* Makes IN, an answer (REPLY, PARTIAL) over the max payload, an ERROR
 * for its call with IN->status AB_EPAYLOADSIZE. Returns 1 (IN is ready). */
static int s_too_large(ab_in_t *in)
{
    ab_header_t *h = &in->h;
    h->kind = AB_KIND_ERROR;
    h->error_code = AB_ERR_MALFORMED;
    h->error_text = ab_view_of("an answer's payload exceeds the max payload "
                               "(ab_options_set_max_payload)");
    h->flags &= ~(uint32_t)AB_FLAG_LZ4;
    zmq_msg_close(&in->body);
    zmq_msg_init(&in->body);
    in->has_body = in->in_hdr = in->body_owned = 0;
    in->data = NULL;
    in->size = 0;
    in->status = AB_EPAYLOADSIZE;
    return 1;
}

/* Holds a received payload to the max payload (the message or BATCH it
 * came in was let in up to rx_limits). Before 2026-12-08 a message over it
 * was dropped unseen, and so was a BATCH whose body passed it, however
 * small its entries: a client with a max payload under the broker's batch
 * size lost whole bursts of answers, each call waiting for its deadline.
 * Now an answer (REPLY, PARTIAL) over it becomes an ERROR for its call,
 * with IN->status AB_EPAYLOADSIZE; a request is answered MALFORMED to the
 * broker (it frees the worker's credit); anything else is dropped.
 * 1: IN is ready; 0: IN was closed. */
static int s_fits(ab_conn_t *c, ab_in_t *in)
{
    ab_header_t *h = &in->h;
    in->status = AB_OK;
    if (!in->has_body || h->kind == AB_KIND_BATCH || in->size <= c->opts.max_payload)
        return 1;
    if (h->kind == AB_KIND_REPLY || h->kind == AB_KIND_PARTIAL)
        return s_too_large(in);
    if (h->kind == AB_KIND_REQUEST) {
        ab_header_t e = ab_header_init(AB_KIND_ERROR);
        e.correlation_id = h->id;
        e.error_code = AB_ERR_MALFORMED;
        e.error_text = ab_view_of("the request's payload exceeds the worker's max payload");
        ab_conn_send(c, &e, NULL, 0);
    }
    ab_in_close(in);
    return 0;
}

/* Replaces a compressed payload by its original bytes. 1: IN is ready (an
 * answer with a corrupt payload became an ERROR(MALFORMED) for its call);
 * 0: IN was a corrupt request, answered MALFORMED to the broker and closed. */
static int s_inflate(ab_conn_t *c, ab_in_t *in)
{
    ab_header_t *h = &in->h;
    if (!(h->flags & AB_FLAG_LZ4) || !in->has_body ||
        (h->kind != AB_KIND_REQUEST && h->kind != AB_KIND_PARTIAL && h->kind != AB_KIND_REPLY))
        return 1;
    size_t zl = in->size;
    int rc = ab_lz4_check(zl, h->original_size, c->opts.max_payload);
    zmq_msg_t out;
    zmq_msg_init(&out);
    if (rc == AB_OK) {
        zmq_msg_close(&out);
        if (zmq_msg_init_size(&out, (size_t)h->original_size) != 0) {
            zmq_msg_init(&out);
            rc = AB_ENOMEM;
        } else {
            rc = ab_lz4_decompress(in->data, zl, zmq_msg_data(&out), (size_t)h->original_size);
        }
    }
    if (rc == AB_OK) {
        zmq_msg_close(&in->body);
        zmq_msg_init(&in->body);
        zmq_msg_move(&in->body, &out);
        zmq_msg_close(&out);
        in->body_owned = 1;
        in->in_hdr = 0;
        in->data = zmq_msg_data(&in->body);
        in->size = zmq_msg_size(&in->body);
        h->flags &= ~(uint32_t)AB_FLAG_LZ4;
        h->original_size = 0;
        return 1;
    }
    zmq_msg_close(&out);
    static const char text[] = "compressed payload is corrupt or its original size is wrong";
    if (h->kind == AB_KIND_REQUEST) {
        ab_header_t e = ab_header_init(AB_KIND_ERROR);
        e.correlation_id = h->id;
        e.error_code = rc == AB_ENOMEM ? AB_ERR_INTERNAL : AB_ERR_MALFORMED;
        e.error_text = ab_view_of(rc == AB_ENOMEM ? "worker out of memory" : text);
        ab_conn_send(c, &e, NULL, 0);
        ab_in_close(in);
        return 0;
    }
    if (rc == AB_ELZ4 && h->original_size > c->opts.max_payload)
        return s_too_large(in); /* as it would be uncompressed: AB_EPAYLOADSIZE */
    h->kind = AB_KIND_ERROR;
    h->error_code = rc == AB_ENOMEM ? AB_ERR_INTERNAL : AB_ERR_MALFORMED;
    h->error_text = ab_view_of(rc == AB_ENOMEM ? "out of memory decompressing a reply" : text);
    zmq_msg_close(&in->body);
    zmq_msg_init(&in->body);
    in->has_body = in->in_hdr = 0;
    in->data = NULL;
    in->size = 0;
    /* ended here, not by the broker: the client tells it */
    in->status = rc == AB_ENOMEM ? AB_EINTERNAL : AB_EMALFORMED;
    return 1;
}

/* The broker's answer to HELLO/REGISTER says what it reads. It may come
 * inside a BATCH (with the first requests dispatched after a REGISTER). */
static void s_note_features(ab_conn_t *c, const ab_in_t *in)
{
    if ((in->h.kind == AB_KIND_HELLO || in->h.kind == AB_KIND_REGISTER) && in->h.correlation_id)
        c->broker_features = in->h.features;
    if (in->h.kind == AB_KIND_HELLO && in->h.correlation_id)
        c->hello_answers++;
}

/* IN (N frames, payload PL) is a BATCH: its entries are read from C's
 * batch reader from now on (s_batch_entry); IN is closed. */
static void s_batch_take(ab_conn_t *c, ab_in_t *in, size_t n, const ab_frame_t *pl)
{
    /* Moved first: a small body lives inside the zmq_msg_t itself, so the
     * reader must point into its final home. */
    int inl = n == 1 && pl->data;
    zmq_msg_t *from = inl ? &in->hdr : &in->body;
    size_t at = inl ? (size_t)((const uint8_t *)pl->data - (uint8_t *)zmq_msg_data(from)) : 0;
    zmq_msg_close(&c->in_batch);
    zmq_msg_init(&c->in_batch);
    zmq_msg_move(&c->in_batch, from);
    ab_in_close(in);
    const void *body = (const uint8_t *)zmq_msg_data(&c->in_batch) + at;
    size_t blen = pl->size;
    int brc = ab_batch_decode(&c->in_dec, body, blen, &c->rx_limits);
    c->in_next = 0;
    if (brc == AB_ENOMEM && ab_batch_open(&c->in_rd, body, blen, &c->rx_limits, NULL) != AB_OK)
        c->in_rd.left = 0; /* malformed: dropped whole */
    /* AB_EBATCH: in_dec is empty, dropped whole */
}

int ab_conn_recv(ab_conn_t *c, ab_in_t *in)
{
    c->in_idle = 0; /* until a receive finds nothing */
    for (;;) {
        if (s_batch_entry(c, in)) {
            s_note_features(c, in);
            if (s_fits(c, in) && s_inflate(c, in))
                return 1;
            continue;
        }
        zmq_msg_init(&in->hdr);
        zmq_msg_init(&in->body);
        in->has_body = 0;
        if (zmq_msg_recv(&in->hdr, c->sock, ZMQ_DONTWAIT) < 0) {
            ab_in_close(in);
            if (errno == EAGAIN || errno == EINTR) {
                c->in_idle = 1;
                return 0;
            }
            return ab_conn_fail(c, AB_EZMQ, "recv failed: %s", zmq_strerror(errno));
        }
        size_t n = 1;
        int more = zmq_msg_more(&in->hdr);
        while (more) { /* keep the second frame, drop any beyond it */
            zmq_msg_t *m = n == 1 ? &in->body : &(zmq_msg_t){0};
            if (n > 1)
                zmq_msg_init(m);
            zmq_msg_recv(m, c->sock, 0);
            more = zmq_msg_more(m);
            if (n > 1)
                zmq_msg_close(m);
            n++;
        }
        ab_frame_t f[2] = {{zmq_msg_data(&in->hdr), zmq_msg_size(&in->hdr)},
                           {zmq_msg_data(&in->body), zmq_msg_size(&in->body)}};
        ab_frame_t pl;
        if (ab_msg_decode(f, n, &c->rx_limits, &in->h, &pl) != AB_OK) {
            ab_in_close(in); /* a broker never sends these: skip it */
            continue;
        }
        /* An inline payload (codec.h) is a view into the header frame:
         * copied only if someone takes it (ab_in_take_body). */
        in->has_body = pl.data != NULL;
        in->body_owned = n == 2;
        in->in_hdr = n == 1 && pl.data;
        in->data = n == 2 ? zmq_msg_data(&in->body) : pl.data;
        in->size = pl.size;
        if (in->h.kind == AB_KIND_BATCH) {
            s_batch_take(c, in, n, &pl);
            continue;
        }
        s_note_features(c, in);
        if (s_fits(c, in) && s_inflate(c, in))
            return 1;
    }
}
