/*
 * msgcmd.c - brokerctl's messaging commands.
 *
 *   send AGENT DATA   sends a direct message; prints "delivered" or "queued"
 *   listen NAME       connects as agent NAME and prints its direct messages
 *                     (the mailbox first), one a line
 *   pub TOPIC DATA    publishes DATA on TOPIC
 *   sub PATTERN       prints each message on matching topics, one a line
 *   agents            named and connected agents: age, mailbox, subscriptions
 *
 * A line is "TOPIC-OR-SENDER<TAB>DATA" with DATA's control characters
 * escaped, or with --json a compact JSON object. A gap (messages the broker
 * dropped because this subscriber was slow) prints "# gap: N messages lost".
 */
#include "msgcmd.h"
#include "render.h"
#include "text.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int s_fail(ab_client_t *c, int rc, int json)
{
    const char *text = ab_client_last_error(c)[0] ? ab_client_last_error(c) : ab_strerror(rc);
    ctl_report_error(json, ab_status_name(rc), text);
    return 1;
}

/* DATA as one line of text: backslashes and control characters escaped,
 * C1 ones (U+0080..U+009F: U+009B is a terminal's CSI) and bytes that are
 * not UTF-8 (0x9B alone is CSI to a terminal that is not UTF-8) too, each
 * byte as \xNN. */
static void s_print_escaped(FILE *out, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n;) {
        unsigned char tmp[5] = {0}; /* the sequence must end inside N */
        memcpy(tmp, p + i, n - i < 4 ? n - i : 4);
        size_t k = p[i] >= 0x80 ? ab_utf8_seq(tmp) : 1;
        int c1 = k == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0;
        if (p[i] == '\\')
            fputs("\\\\", out);
        else if (p[i] == '\n')
            fputs("\\n", out);
        else if (p[i] < 0x20 || p[i] == 0x7f || k == 0 || c1)
            fprintf(out, "\\x%02x", p[i]);
        else
            fwrite(p + i, 1, k, out);
        i += k && !c1 ? k : 1;
    }
}

static void s_print_message(const ab_message_t *m, int json)
{
    static const char *types[] = {"", "direct", "topic", "receipt", "gap", "error"};
    const char *type = m->type >= 1 && m->type <= 5 ? types[m->type] : "unknown";
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:I}", "type", type, "sender", m->sender,
                              m->type == AB_MSG_TOPIC ? "topic" : "to", m->target, "id",
                              (json_int_t)m->id);
        if (m->reply_to)
            json_object_set_new(j, "reply_to", json_integer((json_int_t)m->reply_to));
        if (m->type == AB_MSG_GAP)
            json_object_set_new(j, "dropped", json_integer((json_int_t)m->dropped));
        if (m->type == AB_MSG_ERROR) {
            json_object_set_new(j, "code", json_string(ab_status_name(m->status)));
            json_object_set_new(j, "error", json_string(m->error_text));
        }
        if (m->type == AB_MSG_DIRECT || m->type == AB_MSG_TOPIC) {
            json_t *d = json_stringn(m->data ? m->data : "", m->size);
            json_object_set_new(j, d ? "data" : "bytes", d ? d : json_integer((json_int_t)m->size));
        }
        ctl_json_print(stdout, j); /* a stream: ctl_json_lines is set */
    } else if (m->type == AB_MSG_GAP) {
        printf("# gap: %llu messages lost\n", (unsigned long long)m->dropped);
    } else if (m->type == AB_MSG_ERROR) {
        char text[1024]; /* a peer broker's text may come through: shown safely */
        snprintf(text, sizeof text, "%s", m->error_text ? m->error_text : "");
        ctl_clean_str(text, 1);
        printf("# error: %s: %s\n", ab_status_name(m->status), text);
    } else if (m->type == AB_MSG_RECEIPT) {
        printf("# receipt for %llu\n", (unsigned long long)m->id);
    } else {
        printf("%s\t", m->type == AB_MSG_TOPIC ? m->target : m->sender);
        s_print_escaped(stdout, m->data, m->size);
        printf("\n");
    }
    fflush(stdout);
}

/* Prints messages as they arrive until stopped or COUNT were printed.
 *
 * Every refusal ends it (exit 1): listen and sub send the broker nothing
 * but their HELLO (the name) and their subscription, and the library sends
 * those again only after a reconnect, so a refused name (DENIED, BAD_NAME,
 * NAME_TAKEN, a takeover by another connection) or pattern leaves nothing
 * to wait for. A broker that is away is not a refusal: it is silence here,
 * and the library reconnects (and says HELLO again) when it is back. */
static int s_print_loop(ab_client_t *c, const ctl_msgcmd_opts_t *o)
{
    long printed = 0;
    int up = ab_client_connected(c), was_up = up;
    while (!*o->stop && (o->count == 0 || printed < o->count)) {
        ab_message_t *m = NULL;
        int rc = ab_client_recv(c, &m, 200);
        int now_up = ab_client_connected(c);
        if (now_up != up) { /* said on stderr: the stream on stdout stays as it was */
            if (!now_up)
                fprintf(stderr, "brokerctl: lost the broker; waiting for it (topics "
                                "published meanwhile are not kept for us)\n");
            else if (was_up)
                fprintf(stderr, "brokerctl: connected to the broker again\n");
            up = now_up;
            was_up |= now_up;
        }
        if (rc == AB_ETIMEOUT)
            continue;
        if (rc != AB_OK)
            return *o->stop ? 0 : s_fail(c, rc, o->json);
        s_print_message(m, o->json);
        if (m->type == AB_MSG_DIRECT || m->type == AB_MSG_TOPIC)
            printed++;
        if (m->type == AB_MSG_ERROR) {
            /* On stdout already, in the stream's format; stderr as always. */
            fprintf(stderr, "brokerctl: %s: %s\n", ab_status_name(m->status), m->error_text);
            ab_message_destroy(&m);
            return 1;
        }
        ab_message_destroy(&m);
    }
    return 0;
}

static int s_show_agents(ab_client_t *c, const ctl_msgcmd_opts_t *o)
{
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, "agents", o->timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return s_fail(c, rc, o->json);
    Agentbus__AgentList *al = agentbus__agent_list__unpack(NULL, len, buf);
    ab_free(buf);
    if (!al) {
        fprintf(stderr, "brokerctl: MALFORMED: the broker's answer could not be decoded\n");
        return 1;
    }
    ctl_clean_pb(&al->base, !o->json);
    ctl_render_agents(stdout, al, o->json);
    agentbus__agent_list__free_unpacked(al, NULL);
    return 0;
}

int ctl_msgcmd_run(ab_client_t *c, const char *cmd, char **args, const ctl_msgcmd_opts_t *o)
{
    int rc;
    if (strcmp(cmd, "agents") == 0)
        return s_show_agents(c, o);
    if (strcmp(cmd, "send") == 0) {
        int queued = 0;
        rc = ab_client_send_wait(c, args[0], args[1], strlen(args[1]), 0, o->timeout_ms,
                                 &queued);
        if (rc != AB_OK)
            return s_fail(c, rc, o->json);
        if (o->json)
            ctl_json_print(stdout, json_pack("{s:b, s:b}", "ok", 1, "queued", queued));
        else
            printf("%s\n", queued ? "queued (agent offline or busy)" : "delivered");
        return 0;
    }
    if (strcmp(cmd, "pub") == 0) {
        /* Publishing is fire-and-forget; a round trip afterwards makes sure
         * the broker has it (and any refusal) before this process exits. */
        rc = ab_client_publish(c, args[0], args[1], strlen(args[1]), NULL);
        void *buf = NULL;
        size_t len = 0;
        if (rc == AB_OK)
            rc = ab_client_control(c, "stats", o->timeout_ms, &buf, &len);
        ab_free(buf);
        ab_message_t *m = NULL;
        if (rc == AB_OK && ab_client_recv(c, &m, 0) == AB_OK && m->type == AB_MSG_ERROR)
            rc = m->status;
        ab_message_destroy(&m);
        if (rc != AB_OK)
            return s_fail(c, rc, o->json);
        if (o->json)
            ctl_json_print(stdout, json_pack("{s:b}", "ok", 1));
        return 0;
    }
    if (strcmp(cmd, "sub") == 0) {
        rc = ab_client_subscribe(c, args[0], o->timeout_ms);
        if (rc != AB_OK)
            return s_fail(c, rc, o->json);
        return s_print_loop(c, o);
    }
    /* listen: the name was set on the client; its mailbox arrives first. */
    return s_print_loop(c, o);
}

void ctl_render_msg_stats(FILE *out, const Agentbus__Stats *st)
{
    fprintf(out,
            "direct       sent %llu   delivered %llu   queued %llu   expired %llu   refused %llu"
            " (too large %llu)   receipts %llu\n",
            (unsigned long long)st->msgs_sent, (unsigned long long)st->msgs_delivered,
            (unsigned long long)st->msgs_queued, (unsigned long long)st->msgs_expired,
            (unsigned long long)st->msgs_refused, (unsigned long long)st->msgs_too_large,
            (unsigned long long)st->receipts);
    fprintf(out, "mailboxes    %u messages, %llu bytes   named agents %u\n", st->mailbox_msgs,
            (unsigned long long)st->mailbox_bytes, st->named_agents);
    fprintf(out,
            "pub/sub      topics %u   subscribers %u   published %llu   fan-out %llu (%.0f/s)"
            "   slow-subscriber drops %llu   too large %llu   unmatched %llu\n",
            st->topics, st->subscribers, (unsigned long long)st->published,
            (unsigned long long)st->fanout, st->fanout_per_s, (unsigned long long)st->slow_drops,
            (unsigned long long)st->pub_too_large, (unsigned long long)st->no_subscribers);
}

void ctl_render_agents(FILE *out, const Agentbus__AgentList *al, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < al->n_agents; i++) {
            const Agentbus__AgentInfo *a = al->agents[i];
            json_t *subs = json_array();
            for (size_t k = 0; k < a->n_subscriptions; k++)
                json_array_append_new(subs, json_string(a->subscriptions[k]));
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:b, s:I, s:I, s:I, s:o, s:I, s:I}", "name", a->name,
                               "id", a->id, "connected", a->connected, "connected_ms",
                               (json_int_t)a->connected_ms, "mailbox_depth",
                               (json_int_t)a->mailbox_depth, "mailbox_bytes",
                               (json_int_t)a->mailbox_bytes, "subscriptions", subs, "sub_queue",
                               (json_int_t)a->sub_queue, "sub_dropped",
                               (json_int_t)a->sub_dropped));
            json_t *last = json_array_get(arr, json_array_size(arr) - 1);
            json_object_set_new(last, "sub_too_large", json_integer((json_int_t)a->sub_too_large));
            json_object_set_new(last, "max_payload", json_integer((json_int_t)a->max_payload));
        }
        ctl_json_print(out, arr);
        return;
    }
    fprintf(out, "%-20s %-12s %9s %8s %10s %7s %8s %9s %11s  %s\n", "NAME", "ID", "AGE_S",
            "MAILBOX", "MBOX_BYTES", "SUB_Q", "DROPPED", "TOO_LARGE", "MAX_PAYLOAD",
            "SUBSCRIPTIONS");
    for (size_t i = 0; i < al->n_agents; i++) {
        const Agentbus__AgentInfo *a = al->agents[i];
        char age[32];
        if (a->connected)
            snprintf(age, sizeof age, "%.1f", a->connected_ms / 1000.0);
        else
            snprintf(age, sizeof age, "offline");
        fprintf(out, "%-20s %-12s %9s %8u %10llu %7u %8llu %9llu %11llu ",
                a->name[0] ? a->name : "-", a->id[0] ? a->id : "-", age, a->mailbox_depth,
                (unsigned long long)a->mailbox_bytes, a->sub_queue,
                (unsigned long long)a->sub_dropped, (unsigned long long)a->sub_too_large,
                (unsigned long long)a->max_payload);
        for (size_t k = 0; k < a->n_subscriptions; k++)
            fprintf(out, " %s", a->subscriptions[k]);
        fprintf(out, "\n");
    }
    if (al->n_agents == 0)
        fprintf(out, "(no agents)\n");
}

void *ctl_render_msg_stats_json(const Agentbus__Stats *st)
{
    json_t *j = json_pack("{s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
                     " s:{s:I, s:I, s:I, s:I, s:f, s:I, s:I}}",
                     "direct", "sent", (json_int_t)st->msgs_sent, "delivered",
                     (json_int_t)st->msgs_delivered, "queued", (json_int_t)st->msgs_queued,
                     "expired", (json_int_t)st->msgs_expired, "refused",
                     (json_int_t)st->msgs_refused, "receipts", (json_int_t)st->receipts,
                     "mailbox_msgs", (json_int_t)st->mailbox_msgs, "mailbox_bytes",
                     (json_int_t)st->mailbox_bytes, "named_agents", (json_int_t)st->named_agents,
                     "pubsub", "topics", (json_int_t)st->topics, "subscribers",
                     (json_int_t)st->subscribers, "published", (json_int_t)st->published,
                     "fanout", (json_int_t)st->fanout, "fanout_per_s", st->fanout_per_s,
                     "slow_drops", (json_int_t)st->slow_drops, "unmatched",
                     (json_int_t)st->no_subscribers);
    /* Over a receiver's max payload (Hello.max_payload; docs/messaging.md). */
    json_object_set_new(json_object_get(j, "direct"), "too_large",
                        json_integer((json_int_t)st->msgs_too_large));
    json_object_set_new(json_object_get(j, "pubsub"), "too_large",
                        json_integer((json_int_t)st->pub_too_large));
    return j;
}
