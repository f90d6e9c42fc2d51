/* test_topic.c - syntax of topics, patterns and agent names (common/topic.c)
 * and the wire codes of the messaging errors. */
#include "agentbus.h"
#include "codec.h"
#include "test.h"
#include "topic.h"

#include <string.h>

static void s_test_topics(void)
{
    static const char *good[] = {"a", "alerts.gpu.temp", "A-b_c:d.e", "x.y.z.w",
                                 "0.1.2.3.4.5.6.7.8.9.a.b.c.d.e.f"};
    static const char *bad[] = {"",   ".",    "..",  "a.",  ".a",  "a..b", "a b",
                                "a*", "a.>",  "a/b", "ä",   "a\nb", "a.b\t"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CHECK_EQ(ab_topic_check(good[i], 0), AB_OK);
        CHECK_EQ(ab_topic_check(good[i], 1), AB_OK);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(ab_topic_check(bad[i], 0), AB_EBADNAME);
    /* A trailing dot is a prefix pattern: allowed only for subscriptions. */
    CHECK_EQ(ab_topic_check("alerts.", 1), AB_OK);
    CHECK_EQ(ab_topic_check("alerts.", 0), AB_EBADNAME);
    CHECK_EQ(ab_topic_check("alerts..", 1), AB_EBADNAME);
    CHECK_EQ(ab_topic_check(".", 1), AB_EBADNAME);
    CHECK_EQ(ab_topic_check(NULL, 1), AB_EINVAL); /* a NULL pointer, as everywhere */
    /* Limits: 64-byte labels, 16 labels, 255 bytes. */
    char buf[400];
    memset(buf, 'a', 64);
    buf[64] = '\0';
    CHECK_EQ(ab_topic_check(buf, 0), AB_OK);
    buf[64] = 'a', buf[65] = '\0';
    CHECK_EQ(ab_topic_check(buf, 0), AB_EBADNAME);
    CHECK_EQ(ab_topic_check("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", 0), AB_OK);
    CHECK_EQ(ab_topic_check("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", 0), AB_EBADNAME);
    size_t n = 0;
    while (n + 33 < 255) { /* 32-byte labels up to just under 255 bytes */
        memset(buf + n, 'x', 32);
        n += 32;
        buf[n++] = '.';
    }
    buf[n++] = 'y';
    buf[n] = '\0';
    CHECK_EQ(ab_topic_check(buf, 0), n <= 255 ? AB_OK : AB_EBADNAME);
    /* The length-bounded variant reads no further than told. */
    CHECK_EQ(ab_topic_check_n("alerts.gpu", 6, 0), AB_OK);
    CHECK_EQ(ab_topic_check_n("alerts.gpu", 7, 0), AB_EBADNAME);
    CHECK_EQ(ab_topic_check_n("alerts.gpu", 7, 1), AB_OK);
}

static void s_test_names(void)
{
    CHECK_EQ(ab_agent_name_check("coder"), AB_OK);
    CHECK_EQ(ab_agent_name_check("planner/1@host"), AB_OK);
    CHECK_EQ(ab_agent_name_check(""), AB_EBADNAME);
    CHECK_EQ(ab_agent_name_check("has space"), AB_EBADNAME);
    CHECK_EQ(ab_agent_name_check("~006b8b4567"), AB_EBADNAME); /* reserved for unnamed */
    CHECK_EQ(ab_agent_name_check("tab\there"), AB_EBADNAME);
    CHECK_EQ(ab_agent_name_check(NULL), AB_EINVAL);
    char longname[300];
    memset(longname, 'n', sizeof longname);
    longname[255] = '\0';
    CHECK_EQ(ab_agent_name_check(longname), AB_OK);
    longname[255] = 'n', longname[256] = '\0';
    CHECK_EQ(ab_agent_name_check(longname), AB_EBADNAME);
}

static void s_test_codes(void)
{
    static const int st[] = {AB_ENAMETAKEN, AB_EBADNAME, AB_ETOOLARGE, AB_ENOAGENT};
    static const uint32_t wire[] = {AB_ERR_NAME_TAKEN, AB_ERR_BAD_NAME, AB_ERR_TOO_LARGE,
                                    AB_ERR_NO_AGENT};
    static const char *names[] = {"NAME_TAKEN", "BAD_NAME", "TOO_LARGE", "NO_AGENT"};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(ab_status_from_wire(wire[i]), st[i]);
        CHECK_U64(ab_status_to_wire(st[i]), wire[i]);
        CHECK_STR(ab_wire_error_name(wire[i]), names[i]);
        CHECK_STR(ab_status_name(st[i]), names[i]);
        CHECK_TRUE(strcmp(ab_strerror(st[i]), "unknown error code") != 0);
    }
    CHECK_EQ(ab_status_from_wire(99), AB_EINTERNAL);
    CHECK_STR(ab_wire_error_name(99), "UNKNOWN");
}

int main(void)
{
    s_test_topics();
    s_test_names();
    s_test_codes();
    return TEST_DONE("test_topic");
}
