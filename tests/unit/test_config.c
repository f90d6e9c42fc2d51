/*
 * test_config.c - the broker's config files: the shipped
 * etc/agentbus/broker.conf loads with the values it shows, and files czmq's
 * ZPL parser refuses (a tab, 2-space indentation, a missing file) are
 * refused, while what it accepts (a tab before a comment, blank lines with
 * any spaces) still loads.
 */
#include "config.h"
#include "log.h"
#include "parse.h"
#include "test.h"

#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char s_path[64];

/* Writes TEXT to a fresh temporary file; its name is in s_path. */
static const char *s_file(const char *text)
{
    snprintf(s_path, sizeof s_path, "/tmp/ab-test-config.XXXXXX");
    int fd = mkstemp(s_path);
    REQUIRE(fd >= 0);
    size_t len = strlen(text);
    REQUIRE(write(fd, text, len) == (ssize_t)len);
    close(fd);
    return s_path;
}

/* ab_config_load with --config PATH and then EXTRA (may be NULL). */
static int s_load(ab_broker_config_t *cfg, const char *path, const char *extra)
{
    char *argv[] = {"agentbus-broker", "--config", (char *)path, (char *)extra, NULL};
    int rc = ab_config_load(cfg, extra ? 4 : 3, argv);
    return rc;
}

static int s_load_text(ab_broker_config_t *cfg, const char *text)
{
    int rc = s_load(cfg, s_file(text), NULL);
    unlink(s_path);
    return rc;
}

static void s_test_shipped(void)
{
    ab_broker_config_t cfg;
    CHECK_EQ(s_load(&cfg, AB_SOURCE_DIR "/etc/agentbus/broker.conf", NULL), 0);
    CHECK_EQ(cfg.nbinds, 1);
    CHECK_STR(cfg.nbinds > 0 ? cfg.binds[0] : NULL, "tcp://127.0.0.1:5555");
    CHECK_EQ(cfg.queue_max, 10000);
    CHECK_EQ(cfg.default_timeout_ms, 30000);
    CHECK_EQ(cfg.max_timeout_ms, 600000);
    CHECK_EQ(cfg.drain_ms, 2000);
    CHECK_EQ(cfg.log_format, AB_LOG_TEXT);
    CHECK_TRUE(cfg.data_dir == NULL || cfg.data_dir[0] == '\0'); /* commented out */
    ab_config_free(&cfg);
    /* A flag wins over the file (the packaging test binds a free port so). */
    CHECK_EQ(s_load(&cfg, AB_SOURCE_DIR "/etc/agentbus/broker.conf",
                    "--bind=tcp://127.0.0.1:1"), 0);
    CHECK_EQ(cfg.nbinds, 1);
    CHECK_STR(cfg.nbinds > 0 ? cfg.binds[0] : NULL, "tcp://127.0.0.1:1");
    ab_config_free(&cfg);
}

static void s_test_indentation(void)
{
    ab_broker_config_t cfg;
    /* Refused: a tab before a key, 2 spaces, a comment by 2 spaces. */
    CHECK_EQ(s_load_text(&cfg, "broker\n\tqueue-max = 5\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n  queue-max = 5\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    queue-max = 5\n  # two\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    \tqueue-max = 5\n"), -1);
    ab_config_free(&cfg);
    /* Accepted, as by zconfig: a tab before a comment, blank lines of
     * spaces or tabs, the last line without a newline, top-level keys. */
    CHECK_EQ(s_load_text(&cfg, "\t# c\nbroker\n  \n\t\n    queue-max = 5"), 0);
    CHECK_EQ(cfg.queue_max, 5);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "queue-max = 7\n"), 0);
    CHECK_EQ(cfg.queue_max, 7);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, ""), 0);
    CHECK_EQ(cfg.queue_max, 10000);
    ab_config_free(&cfg);
    /* A flag takes "--name VALUE" like every option (0 or 1), or stands alone. */
    char *fa[] = {"agentbus-broker", "--compress-local", "1", "--insecure", "0", NULL};
    CHECK_EQ(ab_config_load(&cfg, 5, fa), 0);
    CHECK_EQ(cfg.compress_local, 1);
    CHECK_EQ(cfg.insecure, 0);
    ab_config_free(&cfg);
    char *fb[] = {"agentbus-broker", "--insecure", "--compress-local", NULL};
    CHECK_EQ(ab_config_load(&cfg, 3, fb), 0);
    CHECK_EQ(cfg.insecure, 1);
    CHECK_EQ(cfg.compress_local, 1);
    ab_config_free(&cfg);
    /* A cap below its default is what applies, and the config says so. */
    CHECK_EQ(s_load_text(&cfg, "broker\n    default-timeout-ms = 700000\n    max-timeout-ms = "
                               "1000\n"), 0);
    CHECK_EQ(cfg.default_timeout_ms, 1000);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    eject-base-ms = 100000\n    eject-max-ms = 10\n"), 0);
    CHECK_EQ(cfg.eject_base_ms, 10);
    ab_config_free(&cfg);
    /* The docs give sizes up to 1T: a T suffix reads as one. */
    CHECK_EQ(s_load_text(&cfg, "broker\n    max-held-bytes = 1T\n"), 0);
    CHECK_U64(cfg.max_held_bytes, 1ull << 40);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    max-held-bytes = 2T\n"), -1); /* over its range */
    ab_config_free(&cfg);
}

static void s_test_unreadable(void)
{
    ab_broker_config_t cfg;
    CHECK_EQ(s_load(&cfg, "/nonexistent/agentbus.conf", NULL), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load(&cfg, "/tmp", NULL), -1); /* a directory */
    ab_config_free(&cfg);
    /* Well indented, still not ZPL: czmq's error, the file named. */
    CHECK_EQ(s_load_text(&cfg, "broker\n    bind = \"tcp://x\n"), -1);
    ab_config_free(&cfg);
    /* Not an option / no value: the broker's own errors, unchanged. */
    CHECK_EQ(s_load_text(&cfg, "broker\n    no-such-key = 1\n"), -1);
    ab_config_free(&cfg);
    /* The section name given a value, and lines under a key, were ignored
     * without a word (queue-max stayed 10000 with the 5 below). */
    CHECK_EQ(s_load_text(&cfg, "broker = 1\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "queue-max = 7\n    queue-max = 5\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    queue-max = 7\n        drain-ms = 5\n"), -1);
    ab_config_free(&cfg);
    CHECK_EQ(s_load_text(&cfg, "broker\n    queue-max = 7\n"), 0); /* as documented */
    CHECK_EQ(cfg.queue_max, 7);
    ab_config_free(&cfg);
}

/* log-format from a file, a flag over it, and a value it does not know. */
static void s_test_log_format(void)
{
    ab_broker_config_t cfg;
    const char *path = s_file("broker\n    log-format = json\n");
    CHECK_EQ(s_load(&cfg, path, NULL), 0);
    CHECK_EQ(cfg.log_format, AB_LOG_JSON);
    ab_config_free(&cfg);
    CHECK_EQ(s_load(&cfg, path, "--log-format=text"), 0);
    CHECK_EQ(cfg.log_format, AB_LOG_TEXT);
    ab_config_free(&cfg);
    CHECK_TRUE(s_load(&cfg, path, "--log-format=xml") < 0);
    ab_config_free(&cfg);
    unlink(path);
}

/* client-weights (issue 16): NAME=W items, W 1..1000; a bad item is refused
 * at start-up, not found later. */
static void s_test_client_weights(void)
{
    ab_broker_config_t cfg;
    CHECK_EQ(s_load_text(&cfg, "broker\n    client-weights = voice=4,~0a1b=2 a=b=3\n"), 0);
    CHECK_STR(cfg.client_weights, "voice=4,~0a1b=2 a=b=3");
    CHECK_EQ(cfg.lane_normal_min_pct, 20);
    CHECK_EQ(cfg.lane_batch_min_pct, 10);
    CHECK_EQ(cfg.max_client_queued, 10000);
    ab_config_free(&cfg);
    static const char *bad[] = {"voice", "voice=0", "=3", "voice=1001", "voice=4x",
                                "voice=4;planner=2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "broker\n    client-weights = %s\n", bad[i]);
        CHECK_EQ(s_load_text(&cfg, text), -1);
        ab_config_free(&cfg);
    }
    /* The reader both the check and the broker use (parse.h). */
    const char *spec = " voice=4,,~0a1b=2 a=b=3, ";
    static const char *names[] = {"voice", "~0a1b", "a=b"};
    static const long ws[] = {4, 2, 3};
    ab_weight_item_t it;
    char why[128];
    size_t pos = 0;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(ab_parse_weight_item(spec, &pos, 1000, &it, why, sizeof why), 1);
        CHECK_EQ((long)it.name_len, (long)strlen(names[i]));
        CHECK_TRUE(strncmp(it.item, names[i], it.name_len) == 0);
        CHECK_EQ(it.weight, ws[i]);
    }
    CHECK_EQ(ab_parse_weight_item(spec, &pos, 1000, &it, why, sizeof why), 0);
    pos = 0;
    spec = "a=1,b=2;c=3 d=4";
    CHECK_EQ(ab_parse_weight_item(spec, &pos, 1000, &it, why, sizeof why), 1);
    CHECK_EQ(ab_parse_weight_item(spec, &pos, 1000, &it, why, sizeof why), -1);
    CHECK_TRUE(it.item_len == 7 && strncmp(it.item, "b=2;c=3", 7) == 0);
    CHECK_TRUE(strstr(why, "';' is no separator") != NULL);
    pos = 0;
    CHECK_EQ(ab_parse_weight_item("v=1001", &pos, 1000, &it, why, sizeof why), -1);
    CHECK_TRUE(strstr(why, "WEIGHT 1..1000") != NULL);
}

/* --peer's KEY with --auth curve: a missing certificate file, a mistyped
 * Z85 key, a file that is no certificate or no key at all are bad values
 * (exit 2, said at start-up), not the link's "its public key is needed"
 * (exit 1); a Z85 key or a certificate file loads. */
static void s_test_peer_keys(void)
{
    ab_broker_config_t cfg;
    char dir[] = "/tmp/ab-test-peerkey.XXXXXX", cert[64], junk[64], arg[160];
    REQUIRE(mkdtemp(dir) != NULL);
    snprintf(cert, sizeof cert, "%s/peer.key", dir);
    snprintf(junk, sizeof junk, "%s/junk.key", dir);
    zcert_t *c = zcert_new();
    REQUIRE(c && zcert_save_public(c, cert) == 0);
    FILE *f = fopen(junk, "w");
    REQUIRE(f != NULL);
    fputs("not a certificate\n", f);
    fclose(f);
    const char *z85 = zcert_public_txt(c);
    const char *good[] = {z85, cert};
    const char *bad[] = {"", "short", "/nonexistent/peer.key", junk, NULL};
    for (size_t i = 0; i < 7; i++) {
        const char *key = i < 2 ? good[i] : bad[i - 2];
        snprintf(arg, sizeof arg, "--peer=tcp://127.0.0.1:5999%s%s", key ? "#" : "",
                 key ? key : "");
        char *argv[] = {"agentbus-broker", "--auth", "curve", "--data-dir", dir, arg, NULL};
        CHECK_EQ(ab_config_load(&cfg, 6, argv), i < 2 ? 0 : -1);
        ab_config_free(&cfg);
    }
    /* More peers than links: a bad option (was exit 1 from the link code,
     * "too many peers"), 16 is fine. */
    char many[1024] = "--peer=", *w = many + 7;
    for (int i = 1; i <= 17; i++) {
        char *argv2[] = {"agentbus-broker", many, NULL};
        w += sprintf(w, "%stcp://127.0.0.1:%d", i > 1 ? "," : "", 6000 + i);
        if (i >= 16) {
            CHECK_EQ(ab_config_load(&cfg, 2, argv2), i == 16 ? 0 : -1);
            ab_config_free(&cfg);
        }
    }
    /* The same peer twice (file and flag add up): said, not dialed twice. */
    const char *twice = s_file("broker\n    peer = tcp://127.0.0.1:6001\n");
    CHECK_EQ(s_load(&cfg, twice, "--peer=tcp://127.0.0.1:6002"), 0);
    ab_config_free(&cfg);
    CHECK_EQ(s_load(&cfg, twice, "--peer=tcp://127.0.0.1:6001"), -1);
    ab_config_free(&cfg);
    unlink(twice);
    /* Without auth the key is not used (the link code warns): not checked. */
    char *plain[] = {"agentbus-broker", "--peer=tcp://127.0.0.1:5999#short", NULL};
    CHECK_EQ(ab_config_load(&cfg, 2, plain), 0);
    ab_config_free(&cfg);
    zcert_destroy(&c);
    unlink(cert);
    unlink(junk);
    rmdir(dir);
}

int main(void)
{
    unsetenv("AB_CONFIG"); /* the environment must not add a file of its own */
    s_test_shipped();
    s_test_indentation();
    s_test_unreadable();
    s_test_log_format();
    s_test_client_weights();
    s_test_peer_keys();
    return TEST_DONE("test_config");
}
