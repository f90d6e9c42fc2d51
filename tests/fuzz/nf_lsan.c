/*
 * nf_lsan.c - is a LeakSanitizer report in a log libzmq's loss at close
 * (nf_lsan.h)?
 */
#include "nf_lsan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int reports;     /* "ERROR: LeakSanitizer" lines */
    int in_report;   /* between that line and its SUMMARY */
    int direct;      /* the record being read is a direct leak */
    int bad;         /* something not libzmq's was seen */
    int frames;      /* frames read of the record being read */
    size_t size;     /* bytes of the record being read */
    size_t total;    /* bytes of every record */
} s_scan_t;

/* A record "Direct leak of N byte(s) in K object(s) allocated from:". */
static int s_record(s_scan_t *s, const char *line)
{
    unsigned long long n = 0, k = 0;
    int direct = strncmp(line, "Direct leak of ", 15) == 0;
    if (!direct && strncmp(line, "Indirect leak of ", 17) != 0)
        return 0;
    if (sscanf(line + (direct ? 15 : 17), "%llu byte(s) in %llu object(s)", &n, &k) != 2 || !k)
        s->bad = 1;
    if (s->in_report && s->size && s->frames < 2)
        s->bad = 1; /* the record before had no frame past the allocator */
    s->direct = direct;
    s->size = (size_t)n;
    s->frames = 0;
    s->total += (size_t)n;
    return 1;
}

/* A frame "    #I 0x... in FUNCTION FILE" or "    #I 0x...  (MODULE+0x...)". */
static void s_frame(s_scan_t *s, const char *line)
{
    int index = atoi(strchr(line, '#') + 1);
    s->frames++;
    if (index == 0) {
        int is_new = strstr(line, "operator new") != NULL;
        int is_malloc = strstr(line, "malloc") != NULL;
        if (!(is_new || is_malloc) || !strstr(line, "sanitizer"))
            s->bad = 1; /* not the allocator's interceptor */
        else if (!is_new && (!s->direct || s->size % NF_ZMQ_RECV_BUFFER))
            s->bad = 1; /* malloc'd, and not a lost receive buffer */
    } else if (!strstr(line, "libzmq.so") && !strstr(line, " zmq::")) {
        s->bad = 1; /* a frame outside libzmq: agentbus's, or unknown */
    }
}

static void s_line(s_scan_t *s, const char *line)
{
    if (strstr(line, "ERROR: LeakSanitizer")) {
        s->reports++;
        s->in_report = 1;
        return;
    }
    if (strstr(line, "ERROR: AddressSanitizer") || strstr(line, "runtime error:") ||
        strstr(line, "bookkeeping is inconsistent"))
        s->bad = 1;
    if (!s->in_report)
        return;
    const char *t = line + strspn(line, " \t");
    if (strncmp(t, "SUMMARY:", 8) == 0) {
        if (!s->size || s->frames < 2)
            s->bad = 1;
        s->in_report = 0;
    } else if (t[0] == '#' && t != line) {
        if (!s->size)
            s->bad = 1; /* a frame before any record */
        else
            s_frame(s, line);
    } else if (t[0] && t[0] != '\n' && !s_record(s, t)) {
        s->bad = 1; /* a line this reader does not know: not judged as libzmq's */
    }
}

int nf_lsan_only_libzmq(const char *path, size_t *bytes)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    s_scan_t s = {0};
    char line[1024];
    while (fgets(line, sizeof line, f))
        s_line(&s, line);
    fclose(f);
    if (bytes)
        *bytes = s.total;
    if (s.reports == 0 && !s.bad)
        return 0;
    return s.reports == 1 && !s.bad && !s.in_report && s.total ? 1 : -1;
}
