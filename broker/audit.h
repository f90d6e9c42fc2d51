/*
 * audit.h - the broker checks its own bookkeeping (audit.c).
 *
 * Every count the broker keeps about requests is kept in two places: the
 * requests themselves (who holds each one, its payload size, its queue)
 * and the totals the limits read (a client's held and queued requests and
 * bytes, a service's queue length, a worker's in-flight count, the
 * broker's held bytes). A total that drifts from its requests, or a list
 * that still names a freed request, is the kind of bug hostile sequences
 * find: quotas refuse forever, or a record is used after it is freed.
 *
 * ab_broker_audit recounts everything from the pending table and compares.
 * It is O(requests + peers + services) and allocates: run at shutdown
 * always, and every self-check-ms when that is set (tests, fuzzing).
 * Everything runs on the broker thread.
 */
#ifndef AB_AUDIT_H
#define AB_AUDIT_H

#include "broker.h"

/* 0 when every total matches its requests; else -1 and the first
 * difference found, in WHY (CAP bytes). Out of memory: 0 (nothing judged). */
int ab_broker_audit(ab_broker_t *b, char *why, size_t cap);
/* Writes the difference FMT... to WHY (CAP bytes) and returns -1: for the
 * owners' own audits (lanes.c, mailbox.c, pubsub.c). */
int ab_audit_bad(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Registers the self-check-ms timer (none when 0). 0 or -1. */
int ab_audit_init(ab_broker_t *b);
/* Audits B (broker shutdown, or the timer); a difference is logged once
 * as an error and counted: the broker then exits with status 3. */
void ab_audit_run(ab_broker_t *b, const char *when);

#endif
