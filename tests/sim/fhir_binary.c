/* GET Binary/{id}: the Accept header chooses the form, as on Cerner
 * (binary.md):
 *
 *   application/fhir+json (also application/json+fhir, the wildcards "* / *"
 *   and "application / *" written without spaces, or no Accept at all) -> a
 *   Binary resource with the document base64-encoded in `data`;
 *   the document's own contentType (application/pdf, application/xml or
 *   text/html, as its attachment says) -> the raw bytes;
 *   application/json -> 406: "This resource will not accept the
 *   application/json mime type unless the underlying binary data is json",
 *   and no simulated document is JSON;
 *   anything else -> 406 (r4.md: an unsupported media type is 406).
 *
 * The first acceptable media range in the header wins; q-values are not
 * weighed. Large documents (binary_large_bytes) are built in one buffer
 * without intermediate copies. */
#include "tests/sim/fhir.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { FORM_NONE, FORM_FHIR, FORM_RAW, FORM_JSON } form;

static form media_form(const char *range, size_t len, const char *content_type) {
  static const char *const fhir[] = {"application/fhir+json", "application/json+fhir", "*/*",
                                     "application/*"};
  for (size_t i = 0; i < sizeof fhir / sizeof *fhir; i++)
    if (len == strlen(fhir[i]) && strncasecmp(range, fhir[i], len) == 0) return FORM_FHIR;
  if (len == strlen(content_type) && strncasecmp(range, content_type, len) == 0) return FORM_RAW;
  if (len == strlen("application/json") && strncasecmp(range, "application/json", len) == 0)
    return FORM_JSON;
  return FORM_NONE;
}

static form choose_form(const char *accept, const char *content_type) {
  if (!accept || !*accept) return FORM_FHIR;
  form first_refused = FORM_NONE;
  for (const char *p = accept; *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    size_t len = strcspn(p, ",;");
    size_t trimmed = len;
    while (trimmed && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t')) trimmed--;
    form f = trimmed ? media_form(p, trimmed, content_type) : FORM_NONE;
    if (f == FORM_FHIR || f == FORM_RAW) return f;
    if (f == FORM_JSON && first_refused == FORM_NONE) first_refused = f;
    p += strcspn(p, ","); /* skip parameters up to the next range */
  }
  return first_refused;
}

void sim_fhir_read_binary(sim_req *req, sim_resp *resp, const char *id) {
  const sim_store *store = req->tenant->store;
  uint64_t handle;
  if (!sim_binary_resolve(store, id, &handle)) {
    char diag[160];
    snprintf(diag, sizeof diag, "Binary/%s was not found", *id ? id : "(invalid id)");
    sim_fhir_outcome(resp, 404, "not-found", diag);
    return;
  }
  if (sim_store_params(store)->knobs.binary_signed_urls) {
    /* binary.md: use the exact link given; "modifying the link has undefined
     * consequences". Here: a link without its sig is not found. */
    char sig[17];
    const char *got = sim_req_query(req, "sig");
    sim_binary_sig(store, handle, sig);
    if (!got || strcmp(got, sig) != 0) {
      char diag[200];
      snprintf(diag, sizeof diag,
               "Binary/%s was not found at this link: use the attachment URL exactly as given",
               id);
      sim_fhir_outcome(resp, 404, "not-found", diag);
      return;
    }
  }
  const char *ct = sim_binary_content_type(handle);
  form f = choose_form(sim_req_header(req, "Accept"), ct);
  if (f == FORM_NONE || f == FORM_JSON) {
    char diag[300];
    if (f == FORM_JSON)
      snprintf(diag, sizeof diag,
               "This resource will not accept the application/json mime type unless the "
               "underlying binary data is json; this document is %s: ask for "
               "application/fhir+json or %s",
               ct, ct);
    else
      snprintf(diag, sizeof diag,
               "Accept must be application/fhir+json or the document's contentType (%s)", ct);
    sim_fhir_outcome(resp, 406, "not-supported", diag);
    return;
  }
  size_t size = sim_binary_size(store, handle);
  if (f == FORM_RAW) {
    uint8_t *bytes = malloc(size ? size : 1);
    if (!bytes) {
      sim_fhir_outcome(resp, 500, "exception", "out of memory");
      return;
    }
    sim_binary_fill(store, handle, bytes, size);
    sim_resp_body(resp, 200, ct, (char *)bytes, size);
    return;
  }
  char head[192];
  int hn = snprintf(head, sizeof head,
                    "{\"resourceType\":\"Binary\",\"id\":\"%s\",\"contentType\":\"%s\",\"data\":\"",
                    id, ct);
  static const char tail[] = "\"}";
  size_t b64 = 4 * ((size + 2) / 3);
  size_t total = (size_t)hn + b64 + sizeof tail; /* sizeof tail covers EVP's NUL too */
  uint8_t *bytes = malloc(size ? size : 1);
  char *body = malloc(total);
  if (!bytes || !body) {
    free(bytes);
    free(body);
    sim_fhir_outcome(resp, 500, "exception", "out of memory");
    return;
  }
  sim_binary_fill(store, handle, bytes, size);
  memcpy(body, head, (size_t)hn);
  /* EVP_EncodeBlock takes an int length: chunk it (multiples of 3 bytes). */
  size_t in = 0, out = (size_t)hn;
  while (in < size) {
    size_t chunk = size - in > 3u * (1u << 20) ? 3u * (1u << 20) : size - in;
    out += (size_t)EVP_EncodeBlock((unsigned char *)body + out, bytes + in, (int)chunk);
    in += chunk;
  }
  free(bytes);
  memcpy(body + out, tail, sizeof tail);
  sim_resp_body(resp, 200, SIM_CT_FHIR, body, out + sizeof tail - 1);
}
