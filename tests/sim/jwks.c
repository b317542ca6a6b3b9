/* Loading a client's JWKS. Separate from jwt.c because it does I/O: a file
 * read or an HTTP GET with libcurl's easy interface (token requests are rare
 * enough that a blocking fetch on a pool thread is acceptable). */
#include "tests/sim/jwt.h"

#include "tests/sim/util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#define JWKS_MAX_BYTES (1024 * 1024)
#define JWKS_TIMEOUT_MS 5000L

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata) {
  sim_buf *b = userdata;
  size_t n = size * nmemb;
  if (b->len + n > JWKS_MAX_BYTES) return 0; /* aborts the transfer */
  sim_buf_append(b, ptr, n);
  return b->oom ? 0 : n;
}

static json_t *fetch_url(const char *url, char *why, size_t whylen) {
  sim_buf body = {0};
  long status = 0;
  CURL *h = curl_easy_init();
  if (!h) {
    snprintf(why, whylen, "curl_easy_init failed");
    return NULL;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, JWKS_TIMEOUT_MS);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  json_t *jwks = NULL;
  if (rc != CURLE_OK)
    snprintf(why, whylen, "fetching %s failed: %s", url, curl_easy_strerror(rc));
  else if (status != 200)
    snprintf(why, whylen, "fetching %s answered HTTP %ld", url, status);
  else if (!(jwks = json_loadb(body.data ? body.data : "", body.len, 0, NULL)))
    snprintf(why, whylen, "%s did not return JSON", url);
  sim_buf_free(&body);
  return jwks;
}

json_t *sim_jwks_load(const sim_client *c, char *why, size_t whylen) {
  json_t *jwks = NULL;
  if (c->jwks) {
    jwks = json_incref(c->jwks);
  } else if (c->jwks_file) {
    json_error_t e;
    jwks = json_load_file(c->jwks_file, 0, &e);
    if (!jwks) snprintf(why, whylen, "reading %s failed: %s", c->jwks_file, e.text);
  } else if (c->jwks_url) {
    jwks = fetch_url(c->jwks_url, why, whylen);
  }
  if (jwks && (!json_is_object(jwks) || !json_is_array(json_object_get(jwks, "keys")))) {
    snprintf(why, whylen, "the client's JWKS is not an object with a \"keys\" array");
    json_decref(jwks);
    jwks = NULL;
  }
  return jwks;
}
