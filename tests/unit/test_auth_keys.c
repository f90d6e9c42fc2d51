/*
 * test_auth_keys.c - the broker's table of trusted keys (broker/auth/
 * auth_keys.c): a certificate's capacity grant is read whole or the key is
 * not trusted, as a grant misread is a wider one.
 */
#include "test.h"
#include "auth_keys.h"

#include <czmq.h>
#include <unistd.h>

/* Writes a worker's public certificate with capacity CAP (NULL: none) as
 * DIR/NAME; its public key in PUB (41 bytes). */
static void s_cert(const char *dir, const char *name, const char *cap, char *pub)
{
    zcert_t *c = zcert_new();
    zcert_set_meta(c, "role", "worker");
    zcert_set_meta(c, "services", "echo");
    if (cap)
        zcert_set_meta(c, "capacity", "%s", cap);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    REQUIRE(zcert_save_public(c, path) == 0);
    snprintf(pub, 41, "%s", zcert_public_txt(c));
    zcert_destroy(&c);
}

int main(void)
{
    char dir[] = "/tmp/ab-test-keys.XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    /* strtoul read "-1" as 4294967295 (no cap), "8x" as 8 and "abc" as 0 */
    static const struct {
        const char *cap;
        long want; /* -1: not trusted */
    } cases[] = {{"8", 8}, {NULL, 0}, {"0", 0}, {"4294967295", 4294967295L}, {"-1", -1},
                 {"8x", -1}, {"abc", -1}, {"", -1}, {" 8", -1}, {"+8", -1}, {"0x10", -1},
                 {"4294967296", -1}};
    enum { N = sizeof cases / sizeof cases[0] };
    char pubs[N][41];
    for (size_t i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "w%zu.key", i);
        s_cert(dir, name, cases[i].cap, pubs[i]);
    }
    ab_keys_t *keys = ab_keys_new(dir);
    zlistx_t *gone = zlistx_new();
    REQUIRE(keys && gone);
    CHECK_EQ(ab_keys_reload(keys, gone), 4);
    for (size_t i = 0; i < N; i++) {
        ab_key_t *k = ab_keys_lookup(keys, pubs[i]);
        if (cases[i].want < 0) {
            CHECK_TRUE(k == NULL);
        } else {
            REQUIRE(k != NULL);
            CHECK_EQ(k->capacity, cases[i].want);
        }
    }
    zlistx_destroy(&gone);
    ab_keys_destroy(&keys);
    for (size_t i = 0; i < N; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/w%zu.key", dir, i);
        unlink(path);
    }
    rmdir(dir);
    return TEST_DONE("test_auth_keys");
}
