/*
 * figures.c - see figures.h.
 */
#include "figures.h"
#include "tl_clock.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { MAX_FIG = 256, MAX_RATIO = 64, MAX_PARAM = 16, MAX_NAME = 40 };

typedef struct {
    char key[MAX_NAME], label[MAX_NAME], unit[12], system[MAX_NAME];
    double value;
} s_fig_t;

typedef struct {
    char key[MAX_NAME], system[MAX_NAME], baseline[MAX_NAME];
    double ratio, bound;
    bf_op_t op, shown; /* judged op (BF_INFO when not judging); the target as printed */
    int measured, met;
} s_ratio_t;

static struct {
    char report[MAX_NAME], title[1024];
    int judge;
    uint64_t t0;
    char pkey[MAX_PARAM][MAX_NAME];
    double pval[MAX_PARAM];
    int nparam, nfig, nratio;
    s_fig_t fig[MAX_FIG];
    s_ratio_t ratio[MAX_RATIO];
} S;

void bf_begin(const char *report, const char *title, int judge)
{
    memset(&S, 0, sizeof S);
    snprintf(S.report, sizeof S.report, "%s", report);
    snprintf(S.title, sizeof S.title, "%s", title);
    S.judge = judge;
    S.t0 = tl_now_ns();
}

void bf_param(const char *key, double value)
{
    if (S.nparam == MAX_PARAM)
        return;
    snprintf(S.pkey[S.nparam], MAX_NAME, "%s", key);
    S.pval[S.nparam++] = value;
}

static s_fig_t *s_find(const char *key, const char *system)
{
    for (int i = 0; i < S.nfig; i++)
        if (!strcmp(S.fig[i].key, key) && !strcmp(S.fig[i].system, system))
            return &S.fig[i];
    return NULL;
}

void bf_add(const char *key, const char *label, const char *unit, const char *system,
            double value)
{
    s_fig_t *f = s_find(key, system);
    if (!f) {
        if (S.nfig == MAX_FIG)
            return;
        f = &S.fig[S.nfig++];
    }
    snprintf(f->key, sizeof f->key, "%s", key);
    snprintf(f->label, sizeof f->label, "%s", label);
    snprintf(f->unit, sizeof f->unit, "%s", unit);
    snprintf(f->system, sizeof f->system, "%s", system);
    f->value = value;
}

void bf_ratio(const char *key, const char *system, const char *baseline, double ratio, bf_op_t op,
              double bound)
{
    if (S.nratio == MAX_RATIO)
        return;
    s_ratio_t *r = &S.ratio[S.nratio++];
    snprintf(r->key, sizeof r->key, "%s", key);
    snprintf(r->system, sizeof r->system, "%s", system);
    snprintf(r->baseline, sizeof r->baseline, "%s", baseline);
    const s_fig_t *a = s_find(key, system), *b = s_find(key, baseline);
    r->measured = a && b && b->value > 0 && a->value >= 0;
    r->ratio = ratio >= 0 ? ratio : r->measured ? a->value / b->value : 0;
    r->op = S.judge ? op : BF_INFO;
    r->shown = op;
    r->bound = bound;
    r->met = !r->measured || r->op == BF_INFO ||
             (r->op == BF_AT_LEAST && r->ratio >= bound) ||
             (r->op == BF_AT_MOST && r->ratio <= bound) ||
             (r->op == BF_WITHIN && r->ratio <= bound && r->ratio >= 2 - bound);
}

/* "-12%": how far a missed ratio is from its bound, relative to it. */
static double s_miss_pct(const s_ratio_t *r)
{
    if (r->met || r->bound <= 0)
        return 0;
    if (r->op == BF_AT_LEAST || (r->op == BF_WITHIN && r->ratio < 2 - r->bound))
        return (r->ratio / (r->op == BF_WITHIN ? 2 - r->bound : r->bound) - 1) * 100;
    return (r->ratio / r->bound - 1) * 100;
}

static const char *s_op_text(bf_op_t op)
{
    return op == BF_AT_LEAST ? ">=" : op == BF_AT_MOST ? "<=" : op == BF_WITHIN ? "+-" : "";
}

static const char *s_label(const char *key)
{
    for (int i = 0; i < S.nfig; i++)
        if (!strcmp(S.fig[i].key, key))
            return S.fig[i].label;
    return key;
}

/* Systems (or keys) in the order first added; returns how many. */
static int s_order(int by_system, const char **out, int cap)
{
    int n = 0;
    for (int i = 0; i < S.nfig; i++) {
        const char *name = by_system ? S.fig[i].system : S.fig[i].key;
        int seen = 0;
        for (int j = 0; j < n && !seen; j++)
            seen = !strcmp(out[j], name);
        if (!seen && n < cap)
            out[n++] = name;
    }
    return n;
}

static void s_value(char *buf, size_t cap, const s_fig_t *f)
{
    if (!f)
        snprintf(buf, cap, "-");
    else if (!strcmp(f->unit, "us"))
        snprintf(buf, cap, "%.1f", f->value);
    else if (!strcmp(f->unit, "x") ||
             (strcmp(f->unit, "n") && strcmp(f->unit, "msgs/s") && fabs(f->value) < 100))
        snprintf(buf, cap, "%.2f", f->value);
    else
        snprintf(buf, cap, "%.0f", f->value);
}

static int s_missed(void)
{
    int n = 0;
    for (int i = 0; i < S.nratio; i++)
        n += !S.ratio[i].met;
    return n;
}

static void s_print_table(void)
{
    const char *sys[32], *keys[64];
    int ns = s_order(1, sys, 32), nk = s_order(0, keys, 64);
    printf("%s\n", S.title);
    for (int i = 0; i < S.nparam; i++)
        printf("%s%s %g", i ? ", " : "", S.pkey[i], S.pval[i]);
    printf("\n\n%-24s", "workload");
    for (int j = 0; j < ns; j++)
        printf(" %*s", (int)(strlen(sys[j]) > 11 ? strlen(sys[j]) : 11), sys[j]);
    printf("\n");
    for (int i = 0; i < nk; i++) {
        printf("%-24s", s_label(keys[i]));
        for (int j = 0; j < ns; j++) {
            char v[32];
            s_value(v, sizeof v, s_find(keys[i], sys[j]));
            printf(" %*s", (int)(strlen(sys[j]) > 11 ? strlen(sys[j]) : 11), v);
        }
        printf("\n");
    }
    if (!S.nratio)
        return;
    printf("\n%-24s %-34s %8s %10s  %s\n", "ratio", "system / baseline", "value", "target",
           S.judge ? "status" : "(targets not judged)");
    for (int i = 0; i < S.nratio; i++) {
        const s_ratio_t *r = &S.ratio[i];
        char pair[96], bound[16] = "", status[48] = "";
        snprintf(pair, sizeof pair, "%s / %s", r->system, r->baseline);
        char value[16] = "-";
        if (r->shown == BF_WITHIN)
            snprintf(bound, sizeof bound, "%.2f-%.2fx", 2 - r->bound, r->bound);
        else if (r->shown != BF_INFO)
            snprintf(bound, sizeof bound, "%s%.2fx", s_op_text(r->shown), r->bound);
        if (r->measured)
            snprintf(value, sizeof value, "%.2fx", r->ratio);
        if (!r->measured)
            snprintf(status, sizeof status, "not measured");
        else if (r->op != BF_INFO)
            snprintf(status, sizeof status, r->met ? "met" : "MISSED (%+.0f%%)", s_miss_pct(r));
        else if (r->shown != BF_INFO)
            snprintf(status, sizeof status, "not judged");
        printf("%-24s %-34s %8s %10s  %s\n", s_label(r->key), pair, value, bound, status);
    }
    if (S.judge)
        printf("\ntargets missed: %d\n", s_missed());
}

static void s_json_name(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s", name);
    for (char *p = out; *p; p++)
        if (*p == '-' || *p == ' ' || *p == '/')
            *p = '_';
}

static void s_print_json(void)
{
    const char *sys[32], *keys[64];
    int ns = s_order(1, sys, 32), nk = s_order(0, keys, 64);
    printf("{\"report\": \"%s\"", S.report);
    for (int i = 0; i < S.nparam; i++)
        printf(", \"%s\": %g", S.pkey[i], S.pval[i]);
    for (int j = 0; j < ns; j++) {
        char name[MAX_NAME];
        s_json_name(name, sizeof name, sys[j]);
        printf(",\n \"%s\": {", name);
        int first = 1;
        for (int i = 0; i < nk; i++) {
            const s_fig_t *f = s_find(keys[i], sys[j]);
            if (f)
                printf("%s\"%s\": %.3f", first ? "" : ", ", f->key, f->value), first = 0;
        }
        printf("}");
    }
    printf(",\n \"ratios\": [");
    for (int i = 0; i < S.nratio; i++) {
        const s_ratio_t *r = &S.ratio[i];
        printf("%s\n  {\"key\": \"%s\", \"system\": \"%s\", \"baseline\": \"%s\", "
               "\"measured\": %s, \"ratio\": %.4f",
               i ? "," : "", r->key, r->system, r->baseline, r->measured ? "true" : "false",
               r->ratio);
        if (r->shown != BF_INFO)
            printf(", \"target\": \"%s%.2f\"", s_op_text(r->shown), r->bound);
        if (r->op != BF_INFO)
            printf(", \"met\": %s, \"miss_pct\": %.1f", r->met ? "true" : "false", s_miss_pct(r));
        printf("}");
    }
    printf("],\n \"targets_judged\": %s, \"targets_missed\": %d}\n", S.judge ? "true" : "false",
           s_missed());
}

static void s_print_csv(void)
{
    printf("report,kind,key,label,system,baseline,value,unit,target,met,miss_pct\n");
    for (int i = 0; i < S.nparam; i++)
        printf("%s,param,%s,,,,%g,,,,\n", S.report, S.pkey[i], S.pval[i]);
    for (int i = 0; i < S.nfig; i++) {
        const s_fig_t *f = &S.fig[i];
        printf("%s,figure,%s,%s,%s,,%.3f,%s,,,\n", S.report, f->key, f->label, f->system,
               f->value, f->unit);
    }
    for (int i = 0; i < S.nratio; i++) {
        const s_ratio_t *r = &S.ratio[i];
        printf("%s,ratio,%s,%s,%s,%s,", S.report, r->key, s_label(r->key), r->system,
               r->baseline);
        if (r->measured)
            printf("%.4f", r->ratio);
        printf(",x,");
        if (r->shown != BF_INFO)
            printf("%s%.2f", s_op_text(r->shown), r->bound);
        if (r->op != BF_INFO)
            printf(",%s,%.1f", r->met ? "yes" : "no", s_miss_pct(r));
        else
            printf(",,");
        printf("\n");
    }
}

int bf_format_flag(bf_format_t *format, const char *flag)
{
    bf_format_t want = !strcmp(flag, "--json") ? BF_JSON : !strcmp(flag, "--csv") ? BF_CSV
                                                                                : BF_TABLE;
    if (want == BF_TABLE)
        return 0;
    if (*format != BF_TABLE && *format != want) { /* the last one won, unsaid */
        fprintf(stderr, "agentbus-bench: --json and --csv: give one output format\n");
        return -1;
    }
    *format = want;
    return 1;
}

int bf_print(bf_format_t format)
{
    if (format == BF_JSON)
        s_print_json();
    else if (format == BF_CSV)
        s_print_csv();
    else
        s_print_table();
    fflush(stdout);
    return s_missed();
}

void bf_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "agentbus-bench [%6.1f s] ", (double)(tl_now_ns() - S.t0) / 1e9);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
