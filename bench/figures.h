/*
 * figures.h - every figure one agentbus-bench report measured, the ratios
 * and targets judged on them, and one printer for all three output forms
 * (table, --json, --csv), so that no report can print a figure in one form
 * and forget it in another, and a missed target always shows and counts.
 *
 * A report calls bf_begin, adds its figures (a workload key, a system, a
 * value) and its ratios (one system's figure over a baseline system's,
 * with or without a target bound), then bf_print, which returns how many
 * targets were missed: the program's exit status follows from it.
 * Single-threaded; state is process-wide and reset by bf_begin.
 */
#ifndef BN_FIGURES_H
#define BN_FIGURES_H

#include <stdarg.h>

typedef enum { BF_TABLE, BF_JSON, BF_CSV } bf_format_t;

typedef enum {
    BF_INFO,     /* a ratio worth printing, no target */
    BF_AT_LEAST, /* met when ratio >= bound */
    BF_AT_MOST,  /* met when ratio <= bound */
    BF_WITHIN    /* met when 2 - bound <= ratio <= bound (1.1: within +-10%) */
} bf_op_t;

/* Starts a report named REPORT ("rr", "baseline", "batching", ...) with a
 * one-line TITLE for the table form. JUDGE 0 (--no-targets): targets are
 * printed as plain ratios and never counted as missed. */
void bf_begin(const char *report, const char *title, int judge);
/* A run parameter (runs, seconds, window, ...), printed in every form. */
void bf_param(const char *key, double value);
/* A figure: KEY names the workload in JSON/CSV (e.g. "rr_small_msgs_s"),
 * LABEL in the table ("rr 64B msgs/s"); UNIT decides the table's
 * precision ("msgs/s", "us", "bytes", "x" or anything else). Rows and
 * columns appear in the order first added. */
void bf_add(const char *key, const char *label, const char *unit, const char *system,
            double value);
/* A ratio of SYSTEM's KEY figure over BASELINE's. RATIO < 0 means "divide
 * the two figures"; a report that keeps the median of per-run ratios passes
 * it here. OP/BOUND: the target (BF_WITHIN: LOW <= ratio <= BOUND with LOW
 * = 2 - BOUND, i.e. BOUND 1.1 is +-10%). A ratio with a figure missing on
 * either side is printed as "not measured" and not judged. */
void bf_ratio(const char *key, const char *system, const char *baseline, double ratio, bf_op_t op,
              double bound);
/* FLAG ("--json" or "--csv") into *FORMAT: 1 when FLAG is one of them, 0
 * when not, -1 (said on stderr) when the other one was given before. */
int bf_format_flag(bf_format_t *format, const char *flag);
/* Prints everything in FORMAT to stdout; returns the number of missed
 * targets (0 when not judging). */
int bf_print(bf_format_t format);
/* A progress line on stderr with the seconds since bf_begin. */
void bf_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
