/*
 * test_metrics_http.c - broker/metrics_http.c on its own: listen addresses checked, the
 * published text served, /healthz 503 once the render is stale (a stuck
 * loop), /readyz following the ready flag, other paths and methods refused.
 */
#include "metrics_http.h"
#include "test.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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

static void s_serving(void)
{
    ab_http_t *h = ab_http_start("127.0.0.1:0");
    REQUIRE(h);
    unsigned port = ab_http_port(h);
    CHECK_TRUE(port > 0);
    char body[8192];
    /* Nothing published yet: not alive, not ready, no metrics. */
    CHECK_EQ(s_get(port, "GET", "/healthz", body, sizeof body), 503);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503);
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 503);

    ab_http_publish(h, strdup("# TYPE a gauge\na 1\n"), 19, ab_now_ms(), 0);
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 200);
    CHECK_STR(body, "# TYPE a gauge\na 1\n");
    CHECK_EQ(s_get(port, "GET", "/healthz", body, sizeof body), 200);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503); /* starting/draining */

    ab_http_publish(h, strdup("b 2\n"), 4, ab_now_ms(), 1);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 200);
    CHECK_EQ(s_get(port, "GET", "/metrics", body, sizeof body), 200);
    CHECK_STR(body, "b 2\n");

    /* The loop stopped rendering: stale, so neither alive nor ready. */
    ab_http_publish(h, strdup("c 3\n"), 4, ab_now_ms() - AB_HTTP_STALE_MS - 1000, 1);
    CHECK_EQ(s_get(port, "GET", "/healthz", body, sizeof body), 503);
    CHECK_TRUE(strstr(body, "stale") != NULL);
    CHECK_EQ(s_get(port, "GET", "/readyz", body, sizeof body), 503);

    CHECK_EQ(s_get(port, "GET", "/other", body, sizeof body), 404);
    CHECK_EQ(s_get(port, "POST", "/metrics", body, sizeof body), 405);
    CHECK_EQ(s_get(port, "HEAD", "/healthz", body, sizeof body), 503);
    ab_http_stop(&h);
    CHECK_TRUE(h == NULL);
    ab_http_stop(&h); /* twice is harmless */
}

int main(void)
{
    s_addresses();
    s_serving();
    return TEST_DONE("test_metrics_http");
}
