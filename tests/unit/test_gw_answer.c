/*
 * test_gw_answer.c - an admitted request's answer as libmicrohttpd's
 * content reader takes it (gateway/gw_reply.c, gw_answer_*): the bytes come
 * out whole in blocks of any size, and the moment the last block is taken
 * the --max-in-flight slot is released and the answer's bytes are freed,
 * not at completion (a client that never reads its last block would
 * otherwise keep the whole answer after its slot is free). A block asked
 * for again after that is an error, never a read of freed bytes. Run under
 * ASan, it also checks that each mode frees exactly what it owns. And an
 * error's body is JSON whatever bytes a worker's error text holds.
 */
#include "gw_http.h"
#include "agentbus.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

#define S_BLOCK 65536

static gw_t *s_g;

static void s_conn(gw_conn_t *c)
{
    memset(c, 0, sizeof *c);
    c->g = s_g;
    c->admitted = 1;
    atomic_store(&s_g->m.admitted, 1);
}

static char *s_text(size_t len)
{
    char *p = malloc(len);
    REQUIRE(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (char)('a' + t_rand() % 26);
    return p;
}

/* Reads B (LEN bytes, expected SRC) as libmicrohttpd would, in blocks of
 * MAX bytes (0: random sizes up to S_BLOCK), checking the slot and the
 * bytes are held until the last block and gone right after it. */
static void s_drain(gw_answer_t *b, gw_conn_t *c, const char *src, size_t len, size_t max)
{
    char *got = malloc(len), buf[S_BLOCK];
    REQUIRE(got);
    size_t pos = 0;
    for (int n = 0; pos < len && n < 1000000; n++) {
        CHECK_EQ(gw_answer_held(b), 1);
        CHECK_EQ(c->admitted, 1);
        CHECK_U64(atomic_load(&s_g->m.admitted), 1);
        size_t want = max ? max : 1 + (size_t)(t_rand() % S_BLOCK);
        ssize_t r = gw_answer_read(b, pos, buf, want);
        REQUIRE(r > 0 && (size_t)r <= want && pos + (size_t)r <= len);
        memcpy(got + pos, buf, (size_t)r);
        pos += (size_t)r;
    }
    CHECK_U64(pos, len);
    CHECK_EQ(memcmp(got, src, len), 0);
    CHECK_EQ(gw_answer_held(b), 0); /* freed with the last block */
    CHECK_EQ(c->admitted, 0);
    CHECK_U64(atomic_load(&s_g->m.admitted), 0);
    CHECK_EQ(gw_answer_read(b, len, buf, S_BLOCK), MHD_CONTENT_READER_END_OF_STREAM);
    CHECK_EQ(gw_answer_read(b, 0, buf, S_BLOCK), MHD_CONTENT_READER_END_WITH_ERROR);
    CHECK_U64(atomic_load(&s_g->m.admitted), 0); /* released once */
    free(got);
}

/* A copy of the text, read in full blocks, in odd ones, and in tiny ones,
 * with lengths that end inside a block and on its edge. */
static void s_test_copy(void)
{
    static const size_t lens[] = {1, 100, S_BLOCK, 2 * S_BLOCK, 200000, 3 * S_BLOCK + 1};
    static const size_t maxes[] = {S_BLOCK, 0, 4093, 1};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
        for (size_t m = 0; m < sizeof maxes / sizeof *maxes; m++) {
            if (maxes[m] == 1 && lens[i] > 5000)
                continue;
            gw_conn_t c;
            s_conn(&c);
            char *src = s_text(lens[i]);
            gw_answer_t *b = gw_answer_new(&c, src, lens[i], MHD_RESPMEM_MUST_COPY);
            REQUIRE(b);
            s_drain(b, &c, src, lens[i], maxes[m]);
            gw_answer_free(b);
            free(src);
        }
}

/* A taken buffer is freed at the last block, or with the answer when the
 * client went away first; a persistent one is never freed. */
static void s_test_modes(void)
{
    gw_conn_t c;
    s_conn(&c);
    size_t len = 150000;
    char *src = s_text(len), *taken = malloc(len);
    REQUIRE(taken);
    memcpy(taken, src, len);
    gw_answer_t *b = gw_answer_new(&c, taken, len, MHD_RESPMEM_MUST_FREE);
    REQUIRE(b);
    s_drain(b, &c, src, len, S_BLOCK);
    gw_answer_free(b);

    s_conn(&c);
    taken = malloc(len);
    REQUIRE(taken);
    memcpy(taken, src, len);
    b = gw_answer_new(&c, taken, len, MHD_RESPMEM_MUST_FREE);
    REQUIRE(b);
    char buf[S_BLOCK];
    CHECK_EQ(gw_answer_read(b, 0, buf, S_BLOCK), S_BLOCK);
    CHECK_EQ(gw_answer_held(b), 1);
    CHECK_EQ(c.admitted, 1); /* the completion hook releases it then */
    gw_answer_free(b);       /* the client left half way: TAKEN goes here */

    static const char text[] = "405 method not allowed";
    s_conn(&c);
    b = gw_answer_new(&c, text, sizeof text - 1, MHD_RESPMEM_PERSISTENT);
    REQUIRE(b);
    s_drain(b, &c, text, sizeof text - 1, S_BLOCK);
    gw_answer_free(b);
    free(src);
}

/* A worker's error text that is not UTF-8 (an Ollama error body of other
 * bytes, a text cut inside a character): jansson refused it, the body was
 * NULL and the client's connection closed without an answer. */
static void s_test_error_body(void)
{
    gw_conn_t c;
    s_conn(&c);
    static const char *const texts[] = {"HTTP 500: \xFF\xFE bad \x01", "cut \xE2\x82", "fine"};
    static const char *const want[] = {"HTTP 500: \xEF\xBF\xBD\xEF\xBF\xBD bad \xEF\xBF\xBD",
                                       "cut \xEF\xBF\xBD\xEF\xBF\xBD", "fine"};
    for (int openai = 0; openai < 2; openai++)
        for (int i = 0; i < 3; i++) {
            c.openai = openai;
            json_t *j = gw_error_body(&c, 502, texts[i]);
            REQUIRE(j);
            json_t *e = json_object_get(j, "error");
            CHECK_STR(json_string_value(openai ? json_object_get(e, "message") : e), want[i]);
            json_decref(j);
        }
    char buf[600];
    gw_error_text(&c, AB_EBACKEND, "HTTP 500: \xC0\x7f", buf, sizeof buf);
    CHECK_STR(buf, "HTTP 500: \xEF\xBF\xBD\xEF\xBF\xBD");
}

int main(void)
{
    s_g = calloc(1, sizeof *s_g);
    REQUIRE(s_g);
    s_test_copy();
    s_test_modes();
    s_test_error_body();
    free(s_g);
    return TEST_DONE("gw_answer");
}
