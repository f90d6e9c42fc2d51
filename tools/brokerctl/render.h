/* render.h - brokerctl's output: the broker's answers as text or JSON. */
#ifndef CTL_RENDER_H
#define CTL_RENDER_H

#include "agentbus.pb-c.h"
#include <stdio.h>

void ctl_render_stats(FILE *out, const Agentbus__Stats *st, int json);
void ctl_render_services(FILE *out, Agentbus__ServiceInfo **sv, size_t n, int json);
void ctl_render_workers(FILE *out, const Agentbus__WorkerList *wl, int json);
/* CONTROL "peers": broker links (peers.c). */
void ctl_render_peers(FILE *out, const Agentbus__PeerList *pl, int json);
/* The first word of a worker's backend STATE ("ok", "down", "failing"), in
 * BUF of CAP bytes; "down" when DOWN (its inference state says so), "-" when
 * it reports none. */
const char *ctl_backend_word(const char *state, int down, char *buf, size_t cap);
/* One worker as a JSON object (new reference), health figures included. */
#include <jansson.h>
json_t *ctl_render_worker_json(const Agentbus__WorkerInfo *w);
/* A request's reply as JSON: {"ok": true, "bytes": N, "reply": "..."} (the
 * reply as a string when it is UTF-8, else "reply_hex"). */
void ctl_render_reply(FILE *out, const void *data, size_t len);
/* Sets KEY of J to DATA as a string when it is UTF-8, else KEY_hex to its
 * bytes in hex. */
void ctl_json_set_bytes(json_t *j, const char *key, const void *data, size_t len);
/* --json output, one rule for every command: a command that prints one
 * result prints one indented JSON document; a command that prints a
 * stream (ctl_json_lines set: watch, listen, sub, generate, chat, --watch)
 * prints one compact JSON object per line. Takes J's reference. */
extern int ctl_json_lines;
void ctl_json_print(FILE *out, json_t *j);
/* (Its strings' DEL and C1 controls, U+0080..U+009F, come out as \u007f,
 * \u0080..., which JSON allows raw: a terminal takes U+009B for CSI.) */
/* {"ok": false, "code": CODE, "error": TEXT} */
void ctl_render_error(FILE *out, const char *code, const char *text);

/* Makes S safe to print, in place, '?' for each byte that is not: a byte
 * that is not UTF-8 (jansson refuses the string: json_pack failed and the
 * worker or service it named was left out of --json workers / services);
 * for TEXT output also each control character (C0 with tab and newline,
 * DEL, C1: one '?' for its two bytes), so that a name or label a worker
 * chose can neither start a line of its own in a table nor send the
 * terminal an escape sequence. --json output escapes DEL and C1 instead
 * (ctl_json_print). S may get shorter; it is written only then. */
void ctl_clean_str(char *s, int text);
/* A failed command's error: "brokerctl: CODE: TEXT" on stderr, and with
 * JSON {"ok": false, ...} on stdout; TEXT as ctl_clean_str shows it (a
 * worker chooses the text of its failures: ab_worker_fail). */
void ctl_report_error(int json, const char *code, const char *text);
/* ctl_clean_str on every string of M, of the messages in it and so on:
 * for the broker's answers, whose strings peers and backends chose. */
void ctl_clean_pb(ProtobufCMessage *m, int text);

#endif
