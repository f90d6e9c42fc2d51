/*
 * test_metrics_http.c - broker/metrics_http.c on its own: listen addresses checked, the
 * text rendered for each scrape served, nothing rendered unasked, /healthz
 * 503 once the loop is silent (stuck), /readyz following the ready flag,
 * other paths and methods refused.
 */
#include "metrics_http.h"
#include "test.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Status code of METHOD PATH on 127.0.0.1:PORT; BODY gets the body. */
static int s_get(unsigned port, const char *method, const char *path, char *body, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: x\r\n\r\n", method, path);
    REQUIRE(write(fd, req, (size_t)n) == n);
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    int status = 0;
    REQUIRE(sscanf(buf, "HTTP/1.%*d %d", &status) == 1);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return status;
}

/* Polls METHOD PATH until it answers WANT, at most 10 s: the stand-in loop
 * is a thread that may not run for a while on a busy machine. The last
 * status seen. */
static int s_wait_status(unsigned port, const char *path, int want, char *body, size_t cap)
{
    int st = 0;
    for (int64_t end = ab_now_ms() + 10000; ab_now_ms() < end; usleep(10000))
        if ((st = s_get(port, "GET", path, body, cap)) == want)
            break;
    return st;
}

static void s_addresses(void)
{
    CHECK_TRUE(ab_http_addr_problem("127.0.0.1:9464") == NULL);
    CHECK_TRUE(ab_http_addr_problem("localhost:0") == NULL);
    CHECK_TRUE(ab_http_addr_problem("[::1]:9464") == NULL);
    const char *bad[] = {"127.0.0.1", "127.0.0.1:", ":80", "::1:80", "[::1:80", "1.2.3.4:65536",
                         "127.0.0.1:-1", "127.0.0.1:80x", "no-such-host.invalid:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_TRUE(ab_http_addr_problem(bad[i]) != NULL);
}

/* A stand-in for the broker's loop: beats every 10 ms, renders "n N\n"
 * (N counting renders) when a scrape waits; stops beating when told. */
static ab_http_t *s_h;
static atomic_int s_ready, s_frozen, s_quit, s_renders;

static void *s_loop(void *arg)
{
    (void)arg;
    while (!atomic_load(&s_quit)) {
        if (!atomic_load(&s_frozen)) {
            if (ab_http_wanted(s_h)) {
                char *t = malloc(32);
                REQUIRE(t);
                int n = snprintf(t, 32, "n %d\n", atomic_fetch_add(&s_renders, 1) + 1);
                ab_http_publish(s_h, t, (size_t)n, ab_now_ms(), atomic_load(&s_ready));
            } else {
                ab_http_beat(s_h, ab_now_ms(), atomic_load(&s_ready));
            }
        }
        usleep(10000);
    }
    return NULL;
}

static void s_serving(void)
{
    s_h = ab_http_start("127.0.0.1:0");
    REQUIRE(s_h);
    unsigned port = ab_http_port(s_h);
    CHECK_TRUE(port > 0);
    char body[8192];
    /* No loop yet: not alive, not ready, and a scrape times out. */
    CHECK_EQ(s_get(port, "GET", "/healthz", body, sizeof body), 503);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503);
    int64_t t0 = ab_now_ms();
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 503);
    CHECK_TRUE(ab_now_ms() - t0 >= AB_HTTP_RENDER_WAIT_MS - 50);

    pthread_t loop;
    REQUIRE(pthread_create(&loop, NULL, s_loop, NULL) == 0);
    CHECK_EQ(s_wait_status(port, "/healthz", 200, body, sizeof body), 200);
    CHECK_EQ(atomic_load(&s_renders), 0); /* nobody scraped: nothing rendered */
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503); /* starting/draining */
    /* Each scrape gets a render of its own, made after it asked. */
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 200);
    CHECK_STR(body, "n 1\n");
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 200);
    CHECK_STR(body, "n 2\n");
    atomic_store(&s_ready, 1);
    CHECK_EQ(s_wait_status(port, "/readyz", 200, body, sizeof body), 200);

    /* The loop stops reporting: after AB_HTTP_STALE_MS, neither alive nor
     * ready, and a scrape gets 503 rather than old figures. */
    atomic_store(&s_frozen, 1);
    usleep((AB_HTTP_STALE_MS + 300) * 1000);
    CHECK_EQ(s_get(port, "GET", "/healthz", body, sizeof body), 503);
    CHECK_TRUE(strstr(body, "stale") != NULL);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503);
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 503);
    atomic_store(&s_frozen, 0);
    CHECK_EQ(s_wait_status(port, "/healthz", 200, body, sizeof body), 200);

    CHECK_EQ(s_get(port, "GET", "/other", body, sizeof body), 404);
    CHECK_EQ(s_get(port, "POST", "/metrics", body, sizeof body), 405);
    CHECK_EQ(s_get(port, "HEAD", "/healthz", body, sizeof body), 200);
    atomic_store(&s_quit, 1);
    pthread_join(loop, NULL);
    ab_http_stop(&s_h);
    CHECK_TRUE(s_h == NULL);
    ab_http_stop(&s_h); /* twice is harmless */
}

int main(void)
{
    s_addresses();
    s_serving();
    return TEST_DONE("test_metrics_http");
}
