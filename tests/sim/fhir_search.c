/* The search engine shared by all resource types: required-parameter check
 * with Cerner's 400 text, matching over the tenant's data, _count, and
 * paging through an opaque -pageContext that encodes the original
 * parameters plus the offset (base64url JSON), so a next link is
 * self-contained like Cerner's. */
#include "common/b64.h"
#include "tests/sim/fhir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_CONTEXT "-pageContext"

typedef struct query {
  sim_kv *p; /* owned; never contains -pageContext */
  size_t n;
  size_t offset;
  unsigned count;
} query;

static void query_free(query *q) {
  for (size_t i = 0; i < q->n; i++) {
    free(q->p[i].key);
    free(q->p[i].value);
  }
  free(q->p);
  *q = (query){0};
}

static int query_add(query *q, const char *k, const char *v) {
  sim_kv *p = realloc(q->p, (q->n + 1) * sizeof *p);
  if (!p) return -1;
  q->p = p;
  p[q->n].key = strdup(k);
  p[q->n].value = strdup(v);
  if (!p[q->n].key || !p[q->n].value) {
    free(p[q->n].key);
    free(p[q->n].value);
    return -1;
  }
  q->n++;
  return 0;
}

static const char *query_get(const query *q, const char *key) {
  for (size_t i = 0; i < q->n; i++)
    if (strcmp(q->p[i].key, key) == 0) return q->p[i].value;
  return NULL;
}

/* ---- page context ---- */

static char *page_context_encode(const query *q, size_t offset) {
  json_t *params = json_array();
  for (size_t i = 0; params && i < q->n; i++)
    json_array_append_new(params, json_pack("[s,s]", q->p[i].key, q->p[i].value));
  json_t *doc = json_pack("{s:I, s:o}", "o", (json_int_t)offset, "p", params);
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  char *out = text ? fx_b64url_encode_alloc((const uint8_t *)text, strlen(text)) : NULL;
  free(text);
  return out;
}

static int page_context_decode(const char *ctx, query *q) {
  size_t len;
  uint8_t *raw = fx_b64url_decode(ctx, strlen(ctx), &len);
  json_t *doc = raw ? json_loadb((const char *)raw, len, 0, NULL) : NULL;
  free(raw);
  const json_t *o = json_object_get(doc, "o"), *params = json_object_get(doc, "p");
  int rc = json_is_integer(o) && json_integer_value(o) >= 0 && json_is_array(params) ? 0 : -1;
  size_t i;
  const json_t *kv;
  json_array_foreach(params, i, kv) {
    const char *k = json_string_value(json_array_get(kv, 0));
    const char *v = json_string_value(json_array_get(kv, 1));
    if (rc || !k || !v || strcmp(k, PAGE_CONTEXT) == 0 || query_add(q, k, v) != 0) rc = -1;
  }
  if (rc == 0) q->offset = (size_t)json_integer_value(o);
  json_decref(doc);
  return rc;
}

/* ---- parameter checks ---- */

static bool has_required(const sim_search_def *def, const query *q, bool paged) {
  if (!def->required || paged) return true;
  for (size_t i = 0; def->required[i]; i++) {
    const char *v = query_get(q, def->required[i]);
    if (v && *v) return true;
  }
  return false;
}

/* Cerner's wording: "at least one of a, b, or c must be provided". */
static char *missing_message(const sim_search_def *def) {
  sim_buf b = {0};
  sim_buf_puts(&b, "at least one of ");
  for (size_t i = 0; def->required[i]; i++) {
    if (i) sim_buf_puts(&b, def->required[i + 1] ? ", " : ", or ");
    sim_buf_puts(&b, def->required[i]);
  }
  sim_buf_puts(&b, " must be provided");
  return sim_buf_steal(&b, NULL);
}

static int parse_count(const sim_search_def *def, const query *q, unsigned *count) {
  const char *s = query_get(q, "_count");
  *count = def->default_count;
  if (!s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1) return -1;
  *count = v > (long)def->max_count ? def->max_count : (unsigned)v;
  return 0;
}

/* ---- matching ---- */

/* Candidates come from the type's index when the query pins its indexed
 * parameter to one value (patient=123), else from a scan of the type. */
static bool index_candidates(const sim_store *store, const sim_search_def *def, const query *q,
                             const size_t **idx, size_t *n) {
  if (!def->indexed_param) return false;
  const char *v = query_get(q, def->indexed_param);
  if (!v || strchr(v, ',')) return false;
  const char *slash = strrchr(v, '/'); /* patient=Patient/123 */
  return sim_store_lookup(store, def->type, def->indexed_param, slash ? slash + 1 : v, idx, n);
}

/* Indices of matching resources in store order; *oom on allocation failure. */
static size_t *find_matches(const sim_store *store, const sim_search_def *def, const query *q,
                            size_t *n, bool *oom) {
  /* Matchers see only filter parameters. */
  sim_kv *filters = calloc(q->n + 1, sizeof *filters);
  size_t nf = 0;
  for (size_t i = 0; filters && i < q->n; i++)
    if (strcmp(q->p[i].key, "_count") != 0) filters[nf++] = q->p[i];
  const size_t *cand = NULL;
  size_t ncand = 0;
  bool indexed = index_candidates(store, def, q, &cand, &ncand);
  if (!indexed) ncand = sim_store_count(store, def->type);
  size_t *idx = ncand ? malloc(ncand * sizeof *idx) : NULL;
  *n = 0;
  *oom = !filters || (ncand && !idx);
  for (size_t c = 0; !*oom && c < ncand; c++) {
    size_t i = indexed ? cand[c] : c;
    if (sim_fhir_match(def, sim_store_at(store, def->type, i), filters, nf)) idx[(*n)++] = i;
  }
  free(filters);
  return idx;
}

/* ---- bundle ---- */

static void append_link(sim_buf *b, const char *relation, const char *url, bool first) {
  sim_buf_printf(b, "%s{\"relation\":\"%s\",\"url\":", first ? "" : ",", relation);
  sim_buf_json_str(b, url);
  sim_buf_puts(b, "}");
}

static void append_query_url(sim_buf *b, const char *base, const sim_kv *p, size_t n) {
  sim_buf_puts(b, base);
  for (size_t i = 0; i < n; i++) {
    sim_buf_puts(b, i ? "&" : "?");
    sim_buf_url_encode(b, p[i].key);
    sim_buf_puts(b, "=");
    sim_buf_url_encode(b, p[i].value);
  }
}

static void append_links(sim_buf *b, const sim_req *req, const char *base, const query *q,
                         size_t next_offset, bool has_next) {
  sim_buf url = {0};
  append_query_url(&url, base, req->query, req->nquery);
  sim_buf_puts(b, "\"link\":[");
  append_link(b, "self", url.data ? url.data : base, true);
  if (has_next) {
    char *ctx = page_context_encode(q, next_offset);
    url.len = 0;
    sim_buf_printf(&url, "%s?" PAGE_CONTEXT "=%s", base, ctx ? ctx : "");
    append_link(b, "next", url.data ? url.data : base, false);
    free(ctx);
  }
  sim_buf_puts(b, "]");
  sim_buf_free(&url);
}

static void append_entries(sim_buf *b, const char *base, const sim_store *store,
                           const sim_search_def *def, const size_t *idx, size_t from, size_t n) {
  if (!n) return;
  sim_buf_puts(b, ",\"entry\":[");
  for (size_t i = 0; i < n; i++) {
    const sim_resource *r = sim_store_at(store, def->type, idx[from + i]);
    sim_buf_printf(b, "%s{\"fullUrl\":\"%s/%s\",\"resource\":", i ? "," : "", base, r->id);
    sim_buf_append(b, r->json, r->json_len);
    sim_buf_puts(b, ",\"search\":{\"mode\":\"match\"}}");
  }
  sim_buf_puts(b, "]");
}

static void send_bundle(sim_req *req, sim_resp *resp, const sim_search_def *def, const query *q,
                        const size_t *idx, size_t total) {
  char base[512], uuid[37];
  snprintf(base, sizeof base, "http://%s/r4/%s/%s", req->host, req->tenant->id,
           sim_rtype_name(def->type));
  size_t from = q->offset < total ? q->offset : total;
  size_t n = total - from < q->count ? total - from : q->count;
  sim_uuid4(uuid);
  sim_buf b = {0};
  sim_buf_printf(&b, "{\"resourceType\":\"Bundle\",\"id\":\"%s\",\"type\":\"searchset\",", uuid);
  append_links(&b, req, base, q, from + n, from + n < total);
  append_entries(&b, base, req->tenant->store, def, idx, from, n);
  sim_buf_puts(&b, "}");
  size_t len;
  char *body = sim_buf_steal(&b, &len);
  if (body)
    sim_resp_body(resp, 200, SIM_CT_FHIR, body, len);
  else
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
}

/* Fills q from the request; answers 400 itself and returns -1 when the
 * -pageContext is not one this server produced. */
static int load_query(sim_req *req, sim_resp *resp, query *q, bool *paged) {
  const char *ctx = sim_req_query(req, PAGE_CONTEXT);
  *paged = ctx != NULL;
  if (ctx) {
    if (page_context_decode(ctx, q) == 0) return 0;
    sim_fhir_outcome(resp, 400, "invalid", "-pageContext is invalid or expired");
    return -1;
  }
  for (size_t i = 0; i < req->nquery; i++) {
    if (query_add(q, req->query[i].key, req->query[i].value) != 0) {
      sim_fhir_outcome(resp, 500, "exception", "out of memory");
      return -1;
    }
  }
  return 0;
}

void sim_fhir_search(sim_req *req, sim_resp *resp, const sim_search_def *def) {
  if (!def->searchable) {
    sim_fhir_outcome(resp, 405, "not-supported", "search is not supported for this resource type");
    return;
  }
  query q = {0};
  bool paged, oom;
  if (load_query(req, resp, &q, &paged) != 0) goto out;
  if (!has_required(def, &q, paged)) {
    char *msg = missing_message(def);
    sim_fhir_outcome(resp, 400, "invalid", msg ? msg : "a required search parameter is missing");
    free(msg);
    goto out;
  }
  if (parse_count(def, &q, &q.count) != 0) {
    sim_fhir_outcome(resp, 400, "invalid", "_count must be a positive integer");
    goto out;
  }
  size_t total;
  size_t *idx = find_matches(req->tenant->store, def, &q, &total, &oom);
  if (oom)
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
  else if (def->max_matches && total > def->max_matches)
    sim_fhir_outcome(resp, 422, "too-costly",
                     "the search matches too many resources; add parameters to narrow it");
  else
    send_bundle(req, resp, def, &q, idx, total);
  free(idx);
out:
  query_free(&q);
}
