/* Binary: the documents behind DocumentReference and DiagnosticReport
 * attachment URLs, with Cerner's ids and content types (binary.md,
 * diagnostic-report.md, document-reference.md):
 *
 *   DocumentReference  content[0]        XR-<id>  application/pdf
 *   DiagnosticReport   presentedForm[0]  XR-<id>  application/pdf
 *                      presentedForm[1]  R-<id>   application/xml
 *                      presentedForm[2]  TR-<id>  text/html   (about half of them)
 *
 * so a DiagnosticReport has 2 or 3 forms, as on Cerner. Sizes and bytes
 * derive from the handle, so nothing is stored and the size written into
 * the attachment is always the size served. */
#include "tests/sim/data_internal.h"

#include <stdio.h>
#include <string.h>

static const struct {
  const char *prefix, *content_type;
} forms[SIM_BIN_FORMS] = {
    [SIM_BIN_PDF] = {"XR-", "application/pdf"},
    [SIM_BIN_XML] = {"R-", "application/xml"},
    [SIM_BIN_HTML] = {"TR-", "text/html"},
};

/* handle = (source handle * 2 + (1 for DiagnosticReport)) * 4 + form */
uint64_t sim_binary_handle_for(sim_rtype source, uint64_t source_handle, sim_bin_form form) {
  return (source_handle * 2 + (source == SIM_RT_DIAGNOSTIC_REPORT ? 1 : 0)) * 4 + (uint64_t)form;
}

static sim_rtype source_type(uint64_t handle) {
  return (handle >> 2) & 1 ? SIM_RT_DIAGNOSTIC_REPORT : SIM_RT_DOCUMENT_REFERENCE;
}

static uint64_t source_handle(uint64_t handle) { return handle >> 3; }

static sim_bin_form form_of(uint64_t handle) { return (sim_bin_form)(handle & 3); }

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

size_t sim_binary_forms(sim_rtype source, uint64_t source_handle, sim_bin_form out[SIM_BIN_FORMS]) {
  size_t n = 0;
  out[n++] = SIM_BIN_PDF;
  if (source == SIM_RT_DIAGNOSTIC_REPORT) {
    out[n++] = SIM_BIN_XML;
    if (mix(source_handle ^ 0x7472ULL) & 1) out[n++] = SIM_BIN_HTML;
  }
  return n;
}

void sim_binary_id_for(sim_rtype source, uint64_t source_handle, sim_bin_form form,
                       char out[64]) {
  /* Only the id shape matters here; sim_pp_id needs no store for these types. */
  char id[64];
  sim_pp_id(NULL, source, source_handle, id);
  snprintf(out, 64, "%s%s", forms[form].prefix, id);
}

const char *sim_binary_content_type(uint64_t handle) { return forms[form_of(handle)].content_type; }

bool sim_binary_resolve(const sim_store *s, const char *id, uint64_t *handle) {
  for (int f = 0; f < SIM_BIN_FORMS; f++) {
    size_t pl = strlen(forms[f].prefix);
    if (strncmp(id, forms[f].prefix, pl) != 0) continue;
    /* XR- names the PDF of either source: their ids never overlap. */
    static const sim_rtype sources[] = {SIM_RT_DOCUMENT_REFERENCE, SIM_RT_DIAGNOSTIC_REPORT};
    for (size_t k = 0; k < 2; k++) {
      uint64_t sh;
      if (!sim_pp_resolve(s, sources[k], id + pl, &sh)) continue;
      sim_bin_form have[SIM_BIN_FORMS];
      size_t n = sim_binary_forms(sources[k], sh, have);
      for (size_t i = 0; i < n; i++)
        if ((int)have[i] == f) {
          *handle = sim_binary_handle_for(sources[k], sh, (sim_bin_form)f);
          return true;
        }
    }
    return false;
  }
  return false;
}

void sim_binary_sig(const sim_store *s, uint64_t handle, char out[17]) {
  sim_rng r;
  sim_rng_init_domain(&r, &s->p, SIM_DOMAIN_BINARY, handle ^ 0x4000000000000000ULL);
  snprintf(out, 17, "%016llx", (unsigned long long)sim_rng_next(&r));
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

/* A header naming the document, lines of filler and a trailer, in the
 * form's format (PDF, XML, HTML): enough for a content sniffer to say what
 * it is, and every byte a function of the handle. */
void sim_binary_fill(const sim_store *s, uint64_t handle, uint8_t *out, size_t size) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const char *name = sim_rtype_name(source_type(handle));
  unsigned long long n = (unsigned long long)source_handle(handle);
  char head[256];
  const char *trailer, *line_open, *line_close;
  int hn;
  switch (form_of(handle)) {
  case SIM_BIN_XML:
    hn = snprintf(head, sizeof head,
                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ClinicalDocument "
                  "xmlns=\"urn:hl7-org:v3\"><title>%s %llu</title>\n",
                  name, n);
    trailer = "\n</ClinicalDocument>\n";
    line_open = "<p>";
    line_close = "</p>";
    break;
  case SIM_BIN_HTML:
    hn = snprintf(head, sizeof head,
                  "<!DOCTYPE html>\n<html><head><title>%s %llu</title></head><body>\n", name, n);
    trailer = "\n</body></html>\n";
    line_open = "<p>";
    line_close = "</p>";
    break;
  default:
    hn = snprintf(head, sizeof head,
                  "%%PDF-1.4\n%%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Title (%s %llu) "
                  ">>\nendobj\n",
                  name, n);
    trailer = "\n%%EOF\n";
    line_open = "% ";
    line_close = "";
    break;
  }
  sim_rng r;
  sim_rng_init_domain(&r, &s->p, SIM_DOMAIN_BINARY, handle ^ 0x8000000000000000ULL);
  /* Filler: 79-byte lines, line_open + characters + line_close + "\n", 6 bits
   * per character. */
  size_t lo = strlen(line_open), lc = strlen(line_close);
  uint64_t bits = 0;
  unsigned have = 0;
  for (size_t i = 0; i < size; i++) {
    size_t col = i % 79;
    if (col < lo)
      out[i] = (uint8_t)line_open[col];
    else if (col == 78)
      out[i] = '\n';
    else if (col >= 78 - lc)
      out[i] = (uint8_t)line_close[col - (78 - lc)];
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
  size_t hlen = (size_t)hn < size ? (size_t)hn : size;
  memcpy(out, head, hlen);
  size_t tn = strlen(trailer);
  if (size >= hlen + tn) memcpy(out + size - tn, trailer, tn);
}
