/* cache.c - see cache.h. */
#include "cachecmd.h"
#include "render.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

json_t *ctl_cache_json(const Agentbus__CacheStats *cs)
{
    json_t *tiers = json_array();
    for (size_t i = 0; i < cs->n_tiers; i++) {
        const Agentbus__CacheTier *t = cs->tiers[i];
        json_t *tj = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                             "name", t->name, "state", t->state, "hits", (json_int_t)t->hits,
                             "misses", (json_int_t)t->misses, "stores", (json_int_t)t->stores,
                             "bytes", (json_int_t)t->bytes, "max_bytes",
                             (json_int_t)t->max_bytes, "entries", (json_int_t)t->entries,
                             "evictions", (json_int_t)t->evictions, "expired",
                             (json_int_t)t->expired, "lookup_p50_ns",
                             (json_int_t)t->lookup_p50_ns, "lookup_p99_ns",
                             (json_int_t)t->lookup_p99_ns);
        if (tj && strcmp(t->name, "l1") != 0) /* writes the tier's thread could not make */
            json_object_set_new(tj, "dropped", json_integer((json_int_t)t->dropped));
        if (tj && strcmp(t->name, "l2") == 0) { /* the breaker at work (issue 11) */
            json_object_set_new(tj, "skipped", json_integer((json_int_t)t->skipped));
            json_object_set_new(tj, "lookups", json_integer((json_int_t)t->lookups));
            json_object_set_new(tj, "sent", json_integer((json_int_t)t->sent));
            json_object_set_new(tj, "timeouts", json_integer((json_int_t)t->timeouts));
            json_object_set_new(tj, "failed", json_integer((json_int_t)t->failed));
        }
        json_array_append_new(tiers, tj);
    }
    json_t *j = json_pack("{s:o, s:I, s:I, s:I, s:I, s:I}", "tiers", tiers, "coalesced",
                          (json_int_t)cs->coalesced, "redispatched", (json_int_t)cs->redispatched,
                          "in_flight", (json_int_t)cs->in_flight, "uncacheable",
                          (json_int_t)cs->uncacheable, "stores_skipped",
                          (json_int_t)cs->stores_skipped);
    if (j)
        json_object_set_new(j, "key_not_decompressed",
                            json_integer((json_int_t)cs->key_not_decompressed));
    return j;
}

void ctl_render_cache(FILE *out, const Agentbus__CacheStats *cs, int json)
{
    if (json) {
        ctl_json_print(out, ctl_cache_json(cs));
        return;
    }
    fprintf(out, "%-6s %-6s %10s %10s %10s %12s %10s %10s %10s %12s %12s\n", "TIER", "STATE",
            "HITS", "MISSES", "STORES", "BYTES", "ENTRIES", "EVICTED", "EXPIRED", "LOOKUP_P50",
            "LOOKUP_P99");
    for (size_t i = 0; i < cs->n_tiers; i++) {
        const Agentbus__CacheTier *t = cs->tiers[i];
        fprintf(out,
                "%-6s %-6s %10llu %10llu %10llu %12llu %10llu %10llu %10llu %10lluns %10lluns\n",
                t->name, t->state, (unsigned long long)t->hits, (unsigned long long)t->misses,
                (unsigned long long)t->stores, (unsigned long long)t->bytes,
                (unsigned long long)t->entries, (unsigned long long)t->evictions,
                (unsigned long long)t->expired, (unsigned long long)t->lookup_p50_ns,
                (unsigned long long)t->lookup_p99_ns);
    }
    fprintf(out, "coalesced %llu   re-dispatched %llu   in flight %llu   uncacheable %llu   "
                 "not stored %llu\n",
            (unsigned long long)cs->coalesced, (unsigned long long)cs->redispatched,
            (unsigned long long)cs->in_flight, (unsigned long long)cs->uncacheable,
            (unsigned long long)cs->stores_skipped);
    fprintf(out, "keyed compressed (over cache-key-decompress-max-bytes) %llu\n",
            (unsigned long long)cs->key_not_decompressed);
    for (size_t i = 0; i < cs->n_tiers; i++)
        if (strcmp(cs->tiers[i]->name, "l1") != 0)
            fprintf(out, "%s writes dropped %llu\n", cs->tiers[i]->name,
                    (unsigned long long)cs->tiers[i]->dropped);
    for (size_t i = 0; i < cs->n_tiers; i++)
        if (strcmp(cs->tiers[i]->name, "l2") == 0)
            fprintf(out, "l2 lookups %llu   skipped (breaker open) %llu   GETs sent to redis %llu"
                         "   missed by timeout %llu   by a failed connection %llu\n",
                    (unsigned long long)cs->tiers[i]->lookups,
                    (unsigned long long)cs->tiers[i]->skipped,
                    (unsigned long long)cs->tiers[i]->sent,
                    (unsigned long long)cs->tiers[i]->timeouts,
                    (unsigned long long)cs->tiers[i]->failed);
}

static void s_entry(FILE *out, const Agentbus__CacheEntry *e, int json)
{
    if (json) {
        json_t *chunks = json_array();
        for (size_t i = 0; i < e->n_chunks; i++) {
            const Agentbus__CacheChunk *ch = e->chunks[i];
            /* A chunk's bytes as they travelled: text, or hex for anything
             * else (an lz4-compressed chunk, binary data). */
            json_t *cj = json_pack(
                "{s:s, s:I, s:I}", "kind",
                ch->kind == AGENTBUS__KIND__KIND_PARTIAL ? "PARTIAL" : "REPLY", "flags",
                (json_int_t)ch->flags, "original_size", (json_int_t)ch->original_size);
            if (cj)
                ctl_json_set_bytes(cj, "data", ch->data.data, ch->data.len);
            json_array_append_new(chunks, cj);
        }
        ctl_json_print(out, json_pack("{s:s, s:s, s:I, s:o}", "key", e->key, "tier", e->tier,
                              "ttl_left_ms", (json_int_t)e->ttl_left_ms, "chunks", chunks));
        return;
    }
    fprintf(out, "key %s   tier %s   ttl left %.1f s   chunks %zu\n", e->key, e->tier,
            e->ttl_left_ms / 1000.0, e->n_chunks);
    for (size_t i = 0; i < e->n_chunks; i++) {
        const Agentbus__CacheChunk *ch = e->chunks[i];
        /* Its first 200 bytes as a terminal may show them: they went to the
         * screen as they were (escape sequences, lz4 bytes, cut at a NUL). */
        char shown[201];
        size_t n = ch->data.len > 200 ? 200 : ch->data.len;
        for (size_t k = 0; k < n; k++)
            shown[k] = ch->data.data[k] ? (char)ch->data.data[k] : '?';
        shown[n] = '\0';
        ctl_clean_str(shown, 1);
        fprintf(out, "%-7s flags 0x%x  %zu bytes: %s\n",
                ch->kind == AGENTBUS__KIND__KIND_PARTIAL ? "PARTIAL" : "REPLY", ch->flags,
                ch->data.len, shown);
    }
}

int ctl_cache(ab_client_t *c, int argc, char **argv, const char *tier, int json,
              int timeout_ms)
{
    char what[64];
    int get = 0;
    if (argc == 0) {
        snprintf(what, sizeof what, "cache");
    } else if (!strcmp(argv[0], "clear") && argc == 1) {
        snprintf(what, sizeof what, "cache clear%s%s", tier ? " " : "", tier ? tier : "");
    } else if (!strcmp(argv[0], "get") && argc == 2 && strlen(argv[1]) == 32) {
        snprintf(what, sizeof what, "cache get %s", argv[1]);
        get = 1;
    } else {
        return AB_EINVAL; /* cli.c checked the arguments: not reached */
    }
    void *buf = NULL;
    size_t len = 0;
    int rc = ab_client_control(c, what, timeout_ms, &buf, &len);
    if (rc != AB_OK)
        return rc;
    if (get) {
        Agentbus__CacheEntry *e = agentbus__cache_entry__unpack(NULL, len, buf);
        if (e) {
            s_entry(stdout, e, json);
            agentbus__cache_entry__free_unpacked(e, NULL);
        }
        rc = e ? AB_OK : AB_EDECODE;
    } else {
        Agentbus__CacheStats *cs = agentbus__cache_stats__unpack(NULL, len, buf);
        if (cs) {
            ctl_clean_pb(&cs->base, !json);
            ctl_render_cache(stdout, cs, json);
            agentbus__cache_stats__free_unpacked(cs, NULL);
        }
        rc = cs ? AB_OK : AB_EDECODE;
    }
    ab_free(buf);
    return rc;
}
