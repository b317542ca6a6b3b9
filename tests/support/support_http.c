/* Minimal blocking HTTP client for tests (libcurl easy interface). */
#include "fx_testsupport.h"
#include "support_internal.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  fx_test__sbuf_append(ud, p, size * n);
  return ((fx_test__sbuf *)ud)->oom ? 0 : size * n;
}

int fxt_http(const char *method, const char *url, const char *const *headers, const char *body,
            fxt_http_resp *out) {
  *out = (fxt_http_resp){0};
  CURL *h = curl_easy_init();
  if (!h) return -1;
  struct curl_slist *list = NULL;
  for (size_t i = 0; headers && headers[i]; i++) list = curl_slist_append(list, headers[i]);
  fx_test__sbuf resp_body = {0}, resp_headers = {0};
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp_body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &resp_headers);
  if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  } else if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
  }
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
  else fprintf(stderr, "fxt_http: %s %s: %s\n", method, url, curl_easy_strerror(rc));
  curl_easy_cleanup(h);
  curl_slist_free_all(list);
  out->body = fx_test__sbuf_take(&resp_body, &out->body_len);
  out->headers = fx_test__sbuf_take(&resp_headers, NULL);
  return rc == CURLE_OK ? 0 : -1;
}

char *fxt_http_header(const fxt_http_resp *r, const char *name) {
  size_t nlen = strlen(name);
  for (const char *line = r->headers; line && *line;) {
    const char *eol = strstr(line, "\r\n");
    size_t len = eol ? (size_t)(eol - line) : strlen(line);
    if (len > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
      const char *v = line + nlen + 1;
      while (v < line + len && isspace((unsigned char)*v)) v++;
      size_t vlen = (size_t)(line + len - v);
      while (vlen && isspace((unsigned char)v[vlen - 1])) vlen--;
      char *out = malloc(vlen + 1);
      if (out) memcpy(out, v, vlen), out[vlen] = '\0';
      return out;
    }
    line = eol ? eol + 2 : line + len;
  }
  return NULL;
}

void fxt_http_resp_free(fxt_http_resp *r) {
  free(r->body);
  free(r->headers);
  *r = (fxt_http_resp){0};
}
