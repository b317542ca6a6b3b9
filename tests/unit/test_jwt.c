#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <openssl/ecdsa.h>

#include "common/b64.h"
#include "common/config.h"
#include "common/jwt.h"
#include "unit_util.h"

typedef struct parsed {
  json_t *header, *claims;
  uint8_t *sig;
  size_t sig_len;
  char *signing_input;
} parsed;

static void parse_jwt(const char *jwt, parsed *p) {
  const char *d1 = strchr(jwt, '.');
  assert_non_null(d1);
  const char *d2 = strchr(d1 + 1, '.');
  assert_non_null(d2);
  assert_null(strchr(d2 + 1, '.'));
  assert_null(strchr(jwt, '=')); /* base64url without padding */
  size_t n;
  uint8_t *h = fx_b64url_decode(jwt, (size_t)(d1 - jwt), &n);
  uint8_t *c = fx_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &n);
  assert_non_null(h);
  assert_non_null(c);
  p->header = json_loads((char *)h, 0, NULL);
  p->claims = json_loads((char *)c, 0, NULL);
  assert_non_null(p->header);
  assert_non_null(p->claims);
  free(h);
  free(c);
  p->sig = fx_b64url_decode(d2 + 1, strlen(d2 + 1), &p->sig_len);
  assert_non_null(p->sig);
  p->signing_input = strndup(jwt, (size_t)(d2 - jwt));
}

static void parsed_free(parsed *p) {
  json_decref(p->header);
  json_decref(p->claims);
  free(p->sig);
  free(p->signing_input);
}

/* Verifies with OpenSSL directly; ES384 signatures arrive as raw R||S. */
static int verify(EVP_PKEY *pkey, fx_alg alg, const parsed *p) {
  unsigned char *der = NULL;
  const unsigned char *sig = p->sig;
  size_t sig_len = p->sig_len;
  if (alg == FX_ALG_ES384) {
    if (p->sig_len != 96) return 0;
    ECDSA_SIG *s = ECDSA_SIG_new();
    ECDSA_SIG_set0(s, BN_bin2bn(p->sig, 48, NULL), BN_bin2bn(p->sig + 48, 48, NULL));
    int len = i2d_ECDSA_SIG(s, &der);
    ECDSA_SIG_free(s);
    sig = der;
    sig_len = (size_t)len;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha384(), NULL, pkey) == 1 &&
           EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)p->signing_input,
                            strlen(p->signing_input)) == 1;
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  return ok;
}

static void check_assertion(fx_alg alg) {
  char *dir = ut_tmpdir();
  char *path = ut_path(dir, "k.pem");
  fx_err err = {0};
  assert_int_equal(fx_key_generate(alg, 2048, path, &err), 0);
  fx_key key;
  assert_int_equal(fx_key_load(path, alg, NULL, &key, &err), 0);
  const char *aud = "https://authorization.cerner.com/tenants/t1/protocols/oauth2/profiles/"
                    "smart-v1/token";
  char *jwt = NULL;
  time_t now = 1764480000;
  assert_int_equal(fx_jwt_client_assertion(&key, "client-1", aud, 0, now, &jwt, &err), 0);
  parsed p;
  parse_jwt(jwt, &p);
  assert_string_equal(json_string_value(json_object_get(p.header, "alg")), fx_alg_name(alg));
  assert_string_equal(json_string_value(json_object_get(p.header, "kid")), key.kid);
  assert_string_equal(json_string_value(json_object_get(p.header, "typ")), "JWT");
  assert_string_equal(json_string_value(json_object_get(p.claims, "iss")), "client-1");
  assert_string_equal(json_string_value(json_object_get(p.claims, "sub")), "client-1");
  assert_string_equal(json_string_value(json_object_get(p.claims, "aud")), aud);
  assert_int_equal(json_integer_value(json_object_get(p.claims, "iat")), now);
  assert_int_equal(json_integer_value(json_object_get(p.claims, "exp")), now + 240);
  assert_true(strlen(json_string_value(json_object_get(p.claims, "jti"))) >= 22); /* >=128 bits */
  if (alg == FX_ALG_ES384) assert_int_equal(p.sig_len, 96);
  else assert_int_equal(p.sig_len, 256);
  assert_true(verify(key.pkey, alg, &p));
  /* A changed claim must break the signature. */
  p.signing_input[strlen(p.signing_input) - 2] ^= 1;
  assert_false(verify(key.pkey, alg, &p));
  parsed_free(&p);
  free(jwt);
  fx_key_free(&key);
  free(path);
  ut_rmdir(dir);
}

static void rs384_assertion(void **state) {
  (void)state;
  check_assertion(FX_ALG_RS384);
}

static void es384_assertion(void **state) {
  (void)state;
  check_assertion(FX_ALG_ES384);
}

static void lifetime_limits(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *path = ut_path(dir, "k.pem");
  fx_err err = {0};
  fx_key key;
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, path, &err), 0);
  assert_int_equal(fx_key_load(path, FX_ALG_NONE, NULL, &key, &err), 0);
  char *jwt = NULL;
  assert_int_equal(fx_jwt_client_assertion(&key, "c", "https://a/token", 301, 1000, &jwt, &err),
                   FX_EINVAL);
  assert_null(jwt);
  assert_non_null(strstr(err.msg, "300"));
  assert_int_equal(fx_jwt_client_assertion(&key, "c", "https://a/token", 300, 1000, &jwt, &err),
                   0);
  parsed p;
  parse_jwt(jwt, &p);
  assert_int_equal(json_integer_value(json_object_get(p.claims, "exp")), 1300);
  parsed_free(&p);
  free(jwt);
  fx_key_free(&key);
  free(path);
  ut_rmdir(dir);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void jti_never_repeats(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *path = ut_path(dir, "k.pem");
  fx_err err = {0};
  fx_key key;
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, path, &err), 0);
  assert_int_equal(fx_key_load(path, FX_ALG_NONE, NULL, &key, &err), 0);
  enum { N = 2000 };
  char **jtis = calloc(N, sizeof *jtis);
  for (int i = 0; i < N; i++) {
    char *jwt = NULL;
    /* Same second, same key, same claims: only the jti can tell them apart. */
    assert_int_equal(fx_jwt_client_assertion(&key, "c", "https://a/token", 0, 1000, &jwt, &err),
                     0);
    parsed p;
    parse_jwt(jwt, &p);
    jtis[i] = strdup(json_string_value(json_object_get(p.claims, "jti")));
    parsed_free(&p);
    free(jwt);
  }
  qsort(jtis, N, sizeof *jtis, cmp_str);
  for (int i = 1; i < N; i++) assert_string_not_equal(jtis[i - 1], jtis[i]);
  for (int i = 0; i < N; i++) free(jtis[i]);
  free(jtis);
  fx_key_free(&key);
  free(path);
  ut_rmdir(dir);
}

/* A client id as long as the configuration allows (the SMART reference
 * server's are signed JWTs of 1,000+ characters) is carried whole. */
static void long_client_id(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *path = ut_path(dir, "k.pem");
  fx_err err = {0};
  fx_key key;
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, path, &err), 0);
  assert_int_equal(fx_key_load(path, FX_ALG_NONE, NULL, &key, &err), 0);
  char *id = malloc(FX_CLIENT_ID_MAX + 1);
  for (size_t i = 0; i < FX_CLIENT_ID_MAX; i++) id[i] = "eyJ0eXAiOiJKV1Qi.x-_"[i % 20];
  id[FX_CLIENT_ID_MAX] = '\0';
  char *jwt = NULL;
  assert_int_equal(fx_jwt_client_assertion(&key, id, "https://a/token", 0, 1000, &jwt, &err), 0);
  parsed p;
  parse_jwt(jwt, &p);
  assert_string_equal(json_string_value(json_object_get(p.claims, "iss")), id);
  assert_string_equal(json_string_value(json_object_get(p.claims, "sub")), id);
  assert_true(verify(key.pkey, FX_ALG_ES384, &p));
  parsed_free(&p);
  free(jwt);
  free(id);
  fx_key_free(&key);
  free(path);
  ut_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(rs384_assertion), cmocka_unit_test(es384_assertion),
      cmocka_unit_test(lifetime_limits), cmocka_unit_test(jti_never_repeats),
      cmocka_unit_test(long_client_id)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
