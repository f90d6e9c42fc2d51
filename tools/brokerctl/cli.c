/* cli.c - see cli.h. */
#include "cli.h"
#include "agentbus.h"
#include "tl_args.h"

#include <stdlib.h>
#include <string.h>

enum {
    O_BROKER = 1, O_JSON, O_TIMEOUT, O_HELP, O_VERSION, /* global: every command */
    O_WATCH, O_EVENTS, O_COUNT, O_TAKEOVER, O_CACHE, O_NOCACHE, O_NOSTORE, O_TIER,
    O_TEMP, O_SEED, O_PREDICT, O_SYSTEM, O_NOSTREAM, O_SERVICE, O_PRIORITY,
    O_KEY, O_BROKERKEY, /* global too */
    O_ROLE, O_SERVICES, O_NAMES, O_TOPICS, O_CAPACITY, O_OUT, O_FORCE, /* keygen */
};
#define B(o) (1u << (o))
#define GLOBAL (B(O_BROKER) | B(O_JSON) | B(O_TIMEOUT) | B(O_HELP) | B(O_VERSION) | B(O_KEY) | \
                B(O_BROKERKEY))
#define KEYGEN (B(O_ROLE) | B(O_SERVICES) | B(O_NAMES) | B(O_TOPICS) | B(O_CAPACITY) | B(O_OUT) | \
                B(O_FORCE))
#define GEN (B(O_TEMP) | B(O_SEED) | B(O_PREDICT) | B(O_SYSTEM) | B(O_NOSTREAM) | B(O_SERVICE) | \
             B(O_PRIORITY))
_Static_assert(O_FORCE < 32, "option bits: one unsigned mask");

static const tl_opt_t s_opts[] = {
    {"broker", 0, TL_VAL, O_BROKER},       {"json", 0, TL_NOVAL, O_JSON},
    {"timeout-ms", 0, TL_VAL, O_TIMEOUT},  {"help", 'h', TL_NOVAL, O_HELP},
    {"version", 0, TL_NOVAL, O_VERSION},   {"watch", 0, TL_VAL, O_WATCH},
    {"events", 0, TL_VAL, O_EVENTS},       {"count", 0, TL_VAL, O_COUNT},
    {"takeover", 0, TL_NOVAL, O_TAKEOVER}, {"cache", 0, TL_OPTVAL, O_CACHE},
    {"no-cache", 0, TL_NOVAL, O_NOCACHE},  {"no-store", 0, TL_NOVAL, O_NOSTORE},
    {"tier", 0, TL_VAL, O_TIER},           {"temperature", 0, TL_VAL, O_TEMP},
    {"seed", 0, TL_VAL, O_SEED},           {"num-predict", 0, TL_VAL, O_PREDICT},
    {"system", 0, TL_VAL, O_SYSTEM},       {"no-stream", 0, TL_NOVAL, O_NOSTREAM},
    {"service", 0, TL_VAL, O_SERVICE},     {"priority", 0, TL_VAL, O_PRIORITY},
    {"key", 0, TL_VAL, O_KEY},             {"broker-key", 0, TL_VAL, O_BROKERKEY},
    {"role", 0, TL_VAL, O_ROLE},           {"services", 0, TL_VAL, O_SERVICES},
    {"names", 0, TL_VAL, O_NAMES},         {"topics", 0, TL_VAL, O_TOPICS},
    {"capacity", 0, TL_VAL, O_CAPACITY},   {"out", 0, TL_VAL, O_OUT},
    {"force", 0, TL_NOVAL, O_FORCE},       {NULL, 0, 0, 0},
};

static const struct {
    int id;
    const char *flag, *help;
} s_opt_help[] = {
    {O_BROKER, "--broker ENDPOINT", "broker (default: $AB_BROKER, else " AB_DEFAULT_ENDPOINT ")"},
    {O_JSON, "--json", "JSON output: one indented document for a result, one compact\n"
                       "object per line for a stream (watch, listen, sub, generate,\n"
                       "chat, --watch)"},
    {O_TIMEOUT, "--timeout-ms N", "how long to wait for the broker to answer, and for a\n"
                                  "connection to it (default 5000; generate, chat, embed,\n"
                                  "models load|unload wait 120000 for the answer)"},
    {O_HELP, "--help, -h", "show this help"},
    {O_VERSION, "--version", "print \"brokerctl VERSION\""},
    {O_WATCH, "--watch SECONDS", "repeat every SECONDS until interrupted"},
    {O_EVENTS, "--events N", "exit after N changes"},
    {O_COUNT, "--count N", "exit after N messages"},
    {O_TAKEOVER, "--takeover", "take the name from a live connection"},
    {O_CACHE, "--cache[=TTL_S]", "mark the request cacheable (TTL in seconds, 1..2592000)"},
    {O_NOCACHE, "--no-cache", "do not answer from the broker's cache"},
    {O_NOSTORE, "--no-store", "do not store the reply in the broker's cache"},
    {O_TIER, "--tier l1|l2|l3", "clear only that tier"},
    {O_TEMP, "--temperature T", "sampling temperature, a decimal number 0..100"},
    {O_SEED, "--seed N", "sampling seed"},
    {O_PREDICT, "--num-predict N", "most tokens to generate (-1: no limit)"},
    {O_SYSTEM, "--system TEXT", "system prompt"},
    {O_NOSTREAM, "--no-stream", "print the answer when complete, not as it streams"},
    {O_SERVICE, "--service NAME", "inference service (default ollama)"},
    {O_PRIORITY, "--priority P", "lane at the broker: interactive, normal (default), batch,\n"
                                 "or a number 0..255 (1 batch, 3+ interactive)"},
    {O_KEY, "--key FILE", "this peer's secret certificate (keygen's NAME.key_secret)\n"
                          "for a broker with --auth curve (default: $AB_KEY)"},
    {O_BROKERKEY, "--broker-key KEY", "the broker's public key, Z85 or a certificate file\n"
                                      "(default: $AB_BROKER_KEY)"},
    {O_ROLE, "--role ROLE", "agent (default), worker, admin or peer"},
    {O_SERVICES, "--services LIST", "comma-separated globs: services a worker may register,\n"
                                    "an agent may request (default: worker none, others all);\n"
                                    "a grant given names at least one (also --names, --topics)"},
    {O_NAMES, "--names PATTERNS", "agent names it may take, globs (default: NAME itself;\n"
                                  "admin: all)"},
    {O_TOPICS, "--topics PATTERNS", "topics it may publish and subscribe to (default all)"},
    {O_CAPACITY, "--capacity N", "largest capacity a worker may register"},
    {O_OUT, "--out DIR", "directory to write the two files in (default .)"},
    {O_FORCE, "--force", "replace NAME.key and NAME.key_secret if they exist (without\n"
                         "it keygen refuses, exit 1, and writes nothing)"},
};

static const struct {
    const char *name, *args, *summary;
    int min, max;
    unsigned opts;
} s_cmds[] = {
    {"stats", "", "broker figures: connections, traffic, services, errors", 0, 0, B(O_WATCH)},
    {"services", "", "services with queue depth, workers, credit, latency", 0, 0, B(O_WATCH)},
    {"peers", "", "broker links: state, round trip, requests forwarded each way", 0, 0,
     B(O_WATCH)},
    {"workers", "", "registered workers with capacity, load, health and labels\n"
                    "(ID shortened to 12 characters; --json has the full id)", 0, 0, B(O_WATCH)},
    {"request", "SERVICE DATA", "send DATA ('-' reads stdin) and print the reply", 2, 2,
     B(O_CACHE) | B(O_NOCACHE) | B(O_NOSTORE) | B(O_PRIORITY)},
    {"watch", "", "print directory changes as they happen: a worker joins,\n"
                  "leaves or changes health, one line each", 0, 0, B(O_EVENTS)},
    {"generate", "MODEL PROMPT", "stream the model's answer to stdout as it is generated", 2, 2,
     GEN},
    {"chat", "MODEL MESSAGE", "one user message, the answer streamed", 2, 2, GEN},
    {"embed", "MODEL TEXT...", "print one embedding vector per TEXT, up to 16 a call", 2, 17,
     B(O_SERVICE) | B(O_PRIORITY)},
    {"models", "[load|unload WORKER MODEL]",
     "inference workers: slots, VRAM, loaded and available models;\n"
     "load|unload: (un)load MODEL on that worker's GPU", 0, 3, B(O_SERVICE)},
    {"cache", "[clear | get KEY]", "cache tiers: hits, misses, bytes, entries, lookup p50/p99;\n"
                                   "clear: drop cached replies; get: one entry by its key\n"
                                   "(32 hex digits; Redis shows keys: docs/cache.md)",
     0, 2, B(O_TIER)},
    {"send", "AGENT DATA", "direct message to agent AGENT (prints delivered/queued)", 2, 2, 0},
    {"listen", "NAME", "connect as agent NAME, print its messages (mailbox first)", 1, 1,
     B(O_COUNT) | B(O_TAKEOVER)},
    {"pub", "TOPIC DATA", "publish DATA on TOPIC (dot-separated)", 2, 2, 0},
    {"sub", "PATTERN", "print messages on PATTERN (a topic, or a prefix ending in\n"
                       "'.'), one a line, as they arrive", 1, 1, B(O_COUNT)},
    {"agents", "", "agents: connection age, mailbox depth, subscriptions", 0, 0, 0},
    {"clients", "", "clients (agent name, else connection): requests in flight,\n"
                    "queued and refused by their quotas, weight", 0, 0, B(O_WATCH)},
    {"keygen", "NAME", "write a CURVE keypair: NAME.key (public, for the broker's\n"
                       "keys directory) and NAME.key_secret (the peer's --key),\n"
                       "with the role and grants in it; needs no broker; refuses to\n"
                       "replace existing files unless --force", 1, 1, KEYGEN},
    {"keys", "[reload]", "the broker's public key and the keys it trusts with their\n"
                         "grants (admin); reload: read its keys directory again", 0, 1, 0},
};
#define NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static int s_cmd_index(const char *name)
{
    for (size_t i = 0; name && i < NCMDS; i++)
        if (strcmp(s_cmds[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* TEXT's lines after the first indented to column COL. */
static void s_wrapped(FILE *out, int col, const char *text)
{
    for (const char *p = text; *p; p++) {
        fputc(*p, out);
        if (*p == '\n')
            fprintf(out, "%*s", col, "");
    }
    fputc('\n', out);
}

static void s_options_of(FILE *out, unsigned mask)
{
    for (size_t i = 0; i < sizeof s_opt_help / sizeof s_opt_help[0]; i++)
        if (mask & B(s_opt_help[i].id)) {
            fprintf(out, "  %-22s ", s_opt_help[i].flag);
            s_wrapped(out, 25, s_opt_help[i].help);
        }
}

void ctl_cli_usage(FILE *out, const char *cmd)
{
    int k = s_cmd_index(cmd);
    if (k >= 0) {
        fprintf(out, "Usage: brokerctl [options] %s%s%s\n\n", s_cmds[k].name,
                s_cmds[k].args[0] ? " " : "", s_cmds[k].args);
        s_wrapped(out, 0, s_cmds[k].summary);
        if (s_cmds[k].opts) {
            fprintf(out, "\nOptions:\n");
            s_options_of(out, s_cmds[k].opts);
        }
        fprintf(out, "\nGlobal options (before or after the command):\n");
        s_options_of(out, GLOBAL);
        return;
    }
    fprintf(out, "Usage: brokerctl [options] COMMAND [ARGS] [options]\n\nCommands:\n");
    for (size_t i = 0; i < NCMDS; i++) {
        char head[64];
        snprintf(head, sizeof head, "%s %s", s_cmds[i].name, s_cmds[i].args);
        /* A head too long for its column puts the summary on the next line. */
        fprintf(out, strlen(head) > 30 ? "  %s\n%33s" : "  %-30s ", head, "");
        s_wrapped(out, 33, s_cmds[i].summary);
    }
    fprintf(out, "\nGlobal options (before or after the command):\n");
    s_options_of(out, GLOBAL);
    fprintf(out, "\n`brokerctl COMMAND --help` lists the options of COMMAND. Options may\n"
                 "come anywhere, as --opt VALUE or --opt=VALUE; '--' ends them, so a name,\n"
                 "topic or data starting with '-' goes after it.\n"
                 "Exit status: 0 success; 1 the broker answered with an error or could not\n"
                 "be reached (code and text on stderr); 2 bad usage.\n");
}

int ctl_cli_is_stream(const ctl_args_t *a)
{
    static const char *streams[] = {"watch", "listen", "sub", "generate", "chat"};
    for (size_t i = 0; a->cmd && i < sizeof streams / sizeof streams[0]; i++)
        if (strcmp(a->cmd, streams[i]) == 0)
            return 1;
    return a->watch > 0;
}

/* One option's value into A. 0, or -1 with the message in ERRBUF. */
static int s_take(ctl_args_t *a, int id, const char *name, const char *v, char *errbuf,
                  size_t cap)
{
    int ok = 1;
    long t;
    switch (id) {
    case O_BROKER: a->broker = v; break;
    case O_JSON: a->json = 1; break;
    case O_TIMEOUT: ok = !tl_parse_long(v, 1, 86400000, &a->timeout_ms); a->timeout_set = 1; break;
    case O_HELP: a->help = 1; break;
    case O_VERSION: a->version = 1; break;
    case O_WATCH: ok = !tl_parse_long(v, 1, 86400, &a->watch); break;
    case O_EVENTS: ok = !tl_parse_long(v, 1, 1000000000, &a->events); break;
    case O_COUNT: ok = !tl_parse_long(v, 1, 1000000000, &a->count); break;
    case O_TAKEOVER: a->takeover = 1; break;
    case O_CACHE:
        a->cache_flags |= AB_CACHE_ON;
        if (v && (ok = !tl_parse_long(v, 1, 30L * 86400, &t)))
            a->cache_ttl = (uint32_t)t;
        break;
    case O_NOCACHE: a->cache_flags |= AB_CACHE_NO_READ; break;
    case O_NOSTORE: a->cache_flags |= AB_CACHE_NO_STORE; break;
    case O_TIER:
        ok = !strcmp(v, "l1") || !strcmp(v, "l2") || !strcmp(v, "l3");
        a->tier = v;
        break;
    case O_TEMP: /* strtod took "0x10" (16), "inf", "nan" and " 1" */
        ok = !ab_parse_double(v, 0, 100, &a->infer.temperature);
        a->infer.has_temp = 1;
        break;
    case O_SEED:
        ok = !tl_parse_long(v, -(1L << 62), 1L << 62, &a->infer.seed);
        a->infer.has_seed = 1;
        break;
    case O_PREDICT:
        ok = !tl_parse_long(v, -2, 1L << 30, &a->infer.num_predict);
        a->infer.has_predict = 1;
        break;
    case O_SYSTEM: a->infer.system = v; break;
    case O_NOSTREAM: a->infer.no_stream = 1; break;
    case O_SERVICE: ok = *v != '\0'; a->infer.service = v; a->infer.has_service = 1; break;
    case O_PRIORITY:
        ok = ab_priority_parse(v, &a->priority) == AB_OK;
        a->infer.priority = a->priority;
        break;
    case O_KEY: a->key = v; break;
    case O_BROKERKEY: a->broker_key = v; break;
    case O_ROLE: a->kg.role = v; break;
    case O_SERVICES: a->kg.services = v; break;
    case O_NAMES: a->kg.names = v; break;
    case O_TOPICS: a->kg.topics = v; break;
    case O_CAPACITY: ok = !tl_parse_long(v, 1, 100000000, &a->kg.capacity); break;
    case O_OUT: ok = *v != '\0'; a->kg.out_dir = v; break;
    case O_FORCE: a->kg.force = 1; break;
    }
    if (!ok && id == O_TIER)
        snprintf(errbuf, cap, "unknown cache tier '%s' (l1, l2 or l3)", v);
    else if (!ok && id == O_TEMP)
        snprintf(errbuf, cap, "bad value '%s' for --%s: expected a decimal number 0..100", v,
                 name);
    else if (!ok && id == O_CACHE) /* "--cache=0" looked like a way to say no TTL */
        snprintf(errbuf, cap, "bad value '%s' for --%s: a TTL in seconds, 1..2592000 (30 days); "
                 "--cache alone takes the service's or the broker's", v, name);
    else if (!ok)
        snprintf(errbuf, cap, "bad value '%s' for --%s", v ? v : "", name);
    return ok ? 0 : -1;
}

static int s_hex32(const char *s)
{
    return strlen(s) == 32 && strspn(s, "0123456789abcdefABCDEF") == 32;
}

/* Arguments that only make sense together; "" if fine, else the complaint. */
static const char *s_check_args(const ctl_args_t *a, int k, unsigned seen)
{
    const char *c = a->cmd;
    int ttl_word = 0; /* "request --cache 600 echo hi": 600 was taken for an argument */
    for (int i = 0; i < a->npos; i++)
        ttl_word |= a->pos[i][0] && strspn(a->pos[i], "0123456789") == strlen(a->pos[i]);
    if (!strcmp(c, "request") && a->npos == 3 && (seen & B(O_CACHE)) && !a->cache_ttl &&
        ttl_word)
        return "wrong number of arguments (a TTL is written --cache=TTL_S: --cache takes "
               "no separate value)";
    if (a->npos < s_cmds[k].min || a->npos > s_cmds[k].max)
        return "wrong number of arguments";
    if (!strcmp(c, "models") && a->npos &&
        (a->npos != 3 || (strcmp(a->pos[0], "load") && strcmp(a->pos[0], "unload"))))
        return "expected: models, or models load|unload WORKER MODEL";
    /* A name or topic the broker would refuse is bad usage (exit 2), found
     * here as the broker finds it, not a broker's error (exit 1) or, for
     * listen, a client left unnamed waiting for messages nobody can send. */
    static char bad_name[400];
    const char *n = a->pos[0];
    int unnamed = !strcmp(c, "send") && n[0] == '~' && n[1]; /* "~id": ab_client_send's rule */
    if ((!strcmp(c, "listen") || !strcmp(c, "send")) && !unnamed && ab_agent_name_check(n)) {
        snprintf(bad_name, sizeof bad_name, "invalid agent name '%.64s': 1..255 printable "
                 "ASCII characters, no spaces, not starting with '~'%s", n,
                 strcmp(c, "send") ? "" : " (or '~' and an unnamed client's id)");
        return bad_name;
    }
    /* A service name is any bytes but none, up to the broker's 255 (an
     * empty one was the library's "invalid argument", exit 1). */
    if (!strcmp(c, "request") && (!n[0] || strlen(n) > 255)) {
        snprintf(bad_name, sizeof bad_name, "invalid service name '%.64s%s': 1..255 bytes", n,
                 strlen(n) > 64 ? "..." : "");
        return bad_name;
    }
    int sub = !strcmp(c, "sub");
    if ((sub || !strcmp(c, "pub")) && ab_topic_check(n, sub) != AB_OK) {
        snprintf(bad_name, sizeof bad_name, "invalid %s '%.64s': dot-separated labels of 1..64 "
                 "characters [A-Za-z0-9_-:], at most 16 labels and 255 bytes%s",
                 sub ? "pattern" : "topic", n, sub ? " (a prefix ends in '.')" : "");
        return bad_name;
    }
    if (!strcmp(c, "keys") && a->npos && strcmp(a->pos[0], "reload"))
        return "expected: keys, or keys reload";
    if (!strcmp(c, "cache")) {
        int clear = a->npos == 1 && !strcmp(a->pos[0], "clear");
        int get = a->npos == 2 && !strcmp(a->pos[0], "get");
        if (a->npos && !clear && !get)
            return "expected: cache, cache clear [--tier l1|l2|l3] or cache get KEY";
        if (get && !s_hex32(a->pos[1]))
            return "cache get wants a KEY of 32 hex digits";
        if ((seen & B(O_TIER)) && !clear)
            return "--tier goes with cache clear";
    }
    return "";
}

static int s_fail(ctl_args_t *a, FILE *err, const char *cmd, const char *what)
{
    snprintf(a->usage_error, sizeof a->usage_error, "%s%s%s", cmd ? cmd : "", cmd ? ": " : "",
             what);
    fprintf(err, "brokerctl: %s\n", a->usage_error);
    fprintf(err, "(see brokerctl %s%s--help)\n", cmd ? cmd : "", cmd ? " " : "");
    return -1;
}

int ctl_cli_parse(ctl_args_t *a, int argc, char **argv, FILE *err)
{
    memset(a, 0, sizeof *a);
    a->timeout_ms = 5000;
    a->infer.service = "ollama";
    a->kg.role = "agent";
    a->kg.out_dir = ".";
    tl_parser_t p;
    tl_parser_init(&p, argc, argv, 1);
    char first_err[300] = "";
    unsigned seen = 0;
    int id;
    /* The whole line is read even after an error, so that --help anywhere
     * wins: `brokerctl pub --help x` shows help, it does not publish. */
    while ((id = tl_next(&p, s_opts)) != TL_END) {
        if (id == TL_ERROR) {
            if (!first_err[0])
                snprintf(first_err, sizeof first_err, "%s", p.err);
        } else if (id == TL_ARG) {
            if (!a->cmd)
                a->cmd = p.arg;
            else if (a->npos < CTL_MAXPOS)
                a->pos[a->npos++] = p.arg;
            else if (!first_err[0] && !strcmp(a->cmd, "embed"))
                snprintf(first_err, sizeof first_err, "too many texts: embed takes at most %d "
                         "per call", CTL_MAXPOS - 1);
            else if (!first_err[0])
                snprintf(first_err, sizeof first_err, "too many arguments");
        } else {
            seen |= B(id);
            char e[200];
            if (s_take(a, id, p.opt->name, p.value, e, sizeof e) != 0 && !first_err[0])
                snprintf(first_err, sizeof first_err, "%s", e);
        }
    }
    int k = s_cmd_index(a->cmd);
    if (a->help || a->version)
        return 1;
    if (first_err[0])
        return s_fail(a, err, k >= 0 ? a->cmd : NULL, first_err);
    if (!a->cmd)
        return s_fail(a, err, NULL, "no command given");
    if (k < 0) {
        char e[300];
        snprintf(e, sizeof e, "unknown command '%s'", a->cmd);
        return s_fail(a, err, NULL, e);
    }
    unsigned extra = seen & ~(GLOBAL | s_cmds[k].opts);
    for (size_t i = 0; extra && s_opts[i].name; i++)
        if (extra & B(s_opts[i].id)) {
            char e[128];
            snprintf(e, sizeof e, "option --%s does not apply to this command", s_opts[i].name);
            return s_fail(a, err, a->cmd, e);
        }
    const char *bad = s_check_args(a, k, seen);
    if (*bad)
        return s_fail(a, err, a->cmd, bad);
    char why[200];
    if (a->broker && tl_check_endpoint(a->broker, why, sizeof why) != 0) {
        char e[400];
        snprintf(e, sizeof e, "invalid --broker '%s': %s", a->broker, why);
        return s_fail(a, err, NULL, e);
    }
    return 0;
}
