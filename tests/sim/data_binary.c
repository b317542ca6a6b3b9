/* Binary: the PDF behind each DocumentReference (id "XR-<DocumentReference
 * id>") and each DiagnosticReport (id "TR-<DiagnosticReport id>"). Sizes and
 * bytes derive from the source resource, so nothing is stored and the size
 * written into attachment.size is always the size served. */
#include "tests/sim/data_internal.h"

#include <stdio.h>
#include <string.h>

/* handle = source handle * 2 + (1 for DiagnosticReport) */
uint64_t sim_binary_handle_for(sim_rtype source, uint64_t source_handle) {
  return source_handle * 2 + (source == SIM_RT_DIAGNOSTIC_REPORT ? 1 : 0);
}

static sim_rtype source_type(uint64_t handle) {
  return handle & 1 ? SIM_RT_DIAGNOSTIC_REPORT : SIM_RT_DOCUMENT_REFERENCE;
}

void sim_binary_id_for(sim_rtype source, uint64_t source_handle, char out[64]) {
  /* Only the id shape matters here; sim_pp_id needs no store for these types. */
  char id[64];
  sim_pp_id(NULL, source, source_handle, id);
  snprintf(out, 64, "%s-%s", source == SIM_RT_DIAGNOSTIC_REPORT ? "TR" : "XR", id);
}

bool sim_binary_resolve(const sim_store *s, const char *id, uint64_t *handle) {
  sim_rtype source;
  if (strncmp(id, "XR-", 3) == 0)
    source = SIM_RT_DOCUMENT_REFERENCE;
  else if (strncmp(id, "TR-", 3) == 0)
    source = SIM_RT_DIAGNOSTIC_REPORT;
  else
    return false;
  uint64_t source_handle;
  if (!sim_pp_resolve(s, source, id + 3, &source_handle)) return false;
  *handle = sim_binary_handle_for(source, source_handle);
  return true;
}

size_t sim_binary_size(const sim_store *s, uint64_t handle) {
  const sim_data_knobs *k = &s->p.knobs;
  sim_rng r;
  sim_rng_init_domain(&r, &s->p, SIM_DOMAIN_BINARY, handle);
  uint32_t large_roll = k->binary_large_every ? sim_rng_below(&r, k->binary_large_every) : 1;
  uint32_t spread = sim_rng_below(&r, k->binary_max_bytes - k->binary_min_bytes + 1);
  if (large_roll == 0) return k->binary_large_bytes;
  return (size_t)k->binary_min_bytes + spread;
}

/* A PDF header, one object naming the document, lines of filler and the
 * %%EOF trailer: enough for a content sniffer to say "PDF", and every byte a
 * function of the handle. */
void sim_binary_fill(const sim_store *s, uint64_t handle, uint8_t *out, size_t size) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  static const char trailer[] = "\n%%EOF\n";
  char head[256];
  int hn = snprintf(head, sizeof head,
                    "%%PDF-1.4\n%%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Title (%s %llu) "
                    ">>\nendobj\n",
                    sim_rtype_name(source_type(handle)), (unsigned long long)(handle >> 1));
  sim_rng r;
  sim_rng_init_domain(&r, &s->p, SIM_DOMAIN_BINARY, handle ^ 0x8000000000000000ULL);
  /* Filler: "% " + 76 characters + "\n" per line, 6 bits per character. */
  uint64_t bits = 0;
  unsigned have = 0;
  for (size_t i = 0; i < size; i++) {
    size_t col = i % 79;
    if (col == 0)
      out[i] = '%';
    else if (col == 1)
      out[i] = ' ';
    else if (col == 78)
      out[i] = '\n';
    else {
      if (have < 6) {
        bits = sim_rng_next(&r);
        have = 64;
      }
      out[i] = (uint8_t)alphabet[bits & 63];
      bits >>= 6;
      have -= 6;
    }
  }
  size_t n = (size_t)hn < size ? (size_t)hn : size;
  memcpy(out, head, n);
  size_t tn = sizeof trailer - 1;
  if (size >= n + tn) memcpy(out + size - tn, trailer, tn);
}
