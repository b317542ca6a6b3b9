#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include "common/b64.h"
#include "common/jwks.h"
#include "common/keys.h"
#include "unit_util.h"

/* RFC 7638 section 3.1: the example RSA key and its thumbprint. */
static const char rfc_n[] =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPeb"
    "WKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368Q"
    "QMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2"
    "NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

static EVP_PKEY *rsa_from_jwk(const char *n64, const char *e64) {
  size_t nl, el;
  uint8_t *n = fx_b64url_decode(n64, strlen(n64), &nl);
  uint8_t *e = fx_b64url_decode(e64, strlen(e64), &el);
  BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
  OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn);
  OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be);
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
  EVP_PKEY *pkey = NULL;
  EVP_PKEY_fromdata_init(ctx);
  EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(b);
  BN_free(bn);
  BN_free(be);
  free(n);
  free(e);
  return pkey;
}

static void rfc7638_thumbprint(void **state) {
  (void)state;
  EVP_PKEY *pkey = rsa_from_jwk(rfc_n, "AQAB");
  assert_non_null(pkey);
  char tp[64];
  fx_err err = {0};
  assert_int_equal(fx_key_thumbprint(pkey, tp, sizeof tp, &err), 0);
  assert_string_equal(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
  EVP_PKEY_free(pkey);
}

static void generate_and_load(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *es = ut_path(dir, "es.pem"), *rs = ut_path(dir, "rs.pem");
  fx_err err = {0};
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, es, &err), 0);
  assert_int_equal(fx_key_generate(FX_ALG_RS384, 2048, rs, &err), 0);
  struct stat st;
  assert_int_equal(stat(es, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);

  fx_key k;
  assert_int_equal(fx_key_load(es, FX_ALG_NONE, NULL, &k, &err), 0);
  assert_int_equal(k.alg, FX_ALG_ES384);
  char tp[64];
  assert_int_equal(fx_key_thumbprint(k.pkey, tp, sizeof tp, &err), 0);
  assert_string_equal(k.kid, tp); /* kid defaults to the thumbprint */
  assert_int_equal(strlen(k.kid), 43);
  fx_key_free(&k);

  assert_int_equal(fx_key_load(rs, FX_ALG_RS384, "my-kid", &k, &err), 0);
  assert_int_equal(k.alg, FX_ALG_RS384);
  assert_string_equal(k.kid, "my-kid");
  fx_key_free(&k);

  /* Never overwrite a key. */
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, es, &err), FX_EIO);
  assert_non_null(strstr(err.msg, "refusing to overwrite"));
  free(es);
  free(rs);
  ut_rmdir(dir);
}

static void refuses_readable_key(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *es = ut_path(dir, "es.pem");
  fx_err err = {0};
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, es, &err), 0);
  const mode_t modes[] = {0644, 0640, 0604, 0620, 0660};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    chmod(es, modes[i]);
    fx_key k;
    fx_err_clear(&err);
    assert_int_equal(fx_key_load(es, FX_ALG_NONE, NULL, &k, &err), FX_EPERM);
    assert_non_null(strstr(err.msg, es));
    assert_non_null(strstr(err.msg, "chmod 600"));
  }
  chmod(es, 0400); /* owner read-only is fine */
  fx_key k;
  assert_int_equal(fx_key_load(es, FX_ALG_NONE, NULL, &k, &err), 0);
  fx_key_free(&k);
  free(es);
  ut_rmdir(dir);
}

static void refuses_weak_or_wrong_keys(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *small = ut_path(dir, "rsa1024.pem"), *p256 = ut_path(dir, "p256.pem");
  char *es = ut_path(dir, "es.pem"), *junk = ut_path(dir, "junk.pem");
  char *missing = ut_path(dir, "missing.pem");
  ut_write_pkey(small, EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024));
  ut_write_pkey(p256, EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"));
  ut_write(junk, "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", 0600);
  fx_err err = {0};
  fx_key k;
  assert_int_equal(fx_key_load(small, FX_ALG_NONE, NULL, &k, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "at least 2048"));
  assert_int_equal(fx_key_load(p256, FX_ALG_NONE, NULL, &k, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "P-384"));
  assert_int_equal(fx_key_load(junk, FX_ALG_NONE, NULL, &k, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "not an unencrypted PEM private key"));
  assert_int_equal(fx_key_load(missing, FX_ALG_NONE, NULL, &k, &err), FX_EIO);
  assert_non_null(strstr(err.msg, "fhirx keys generate"));
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, es, &err), 0);
  assert_int_equal(fx_key_load(es, FX_ALG_RS384, NULL, &k, &err), FX_EINVAL);
  assert_non_null(strstr(err.msg, "configured as RS384"));
  free(small), free(p256), free(es), free(junk), free(missing);
  ut_rmdir(dir);
}

static void jwks_lists_every_key(void **state) {
  (void)state;
  char *dir = ut_tmpdir();
  char *es = ut_path(dir, "es.pem"), *rs = ut_path(dir, "rs.pem");
  fx_err err = {0};
  assert_int_equal(fx_key_generate(FX_ALG_RS384, 2048, rs, &err), 0);
  assert_int_equal(fx_key_generate(FX_ALG_ES384, 0, es, &err), 0);
  fx_keyset ks = {calloc(2, sizeof(fx_key)), 2};
  assert_int_equal(fx_key_load(rs, FX_ALG_NONE, NULL, &ks.keys[0], &err), 0);
  assert_int_equal(fx_key_load(es, FX_ALG_NONE, NULL, &ks.keys[1], &err), 0);
  assert_ptr_equal(fx_keyset_signer(&ks), &ks.keys[1]); /* the newest signs */

  json_t *jwks = fx_jwks_build(&ks, &err);
  assert_non_null(jwks);
  json_t *keys = json_object_get(jwks, "keys");
  assert_int_equal(json_array_size(keys), 2);
  json_t *r = json_array_get(keys, 0), *e = json_array_get(keys, 1);
  assert_string_equal(json_string_value(json_object_get(r, "kty")), "RSA");
  assert_string_equal(json_string_value(json_object_get(r, "alg")), "RS384");
  assert_string_equal(json_string_value(json_object_get(r, "e")), "AQAB");
  assert_int_equal(strlen(json_string_value(json_object_get(r, "n"))), 342); /* 256 bytes */
  assert_string_equal(json_string_value(json_object_get(r, "kid")), ks.keys[0].kid);
  assert_string_equal(json_string_value(json_object_get(e, "kty")), "EC");
  assert_string_equal(json_string_value(json_object_get(e, "crv")), "P-384");
  assert_string_equal(json_string_value(json_object_get(e, "alg")), "ES384");
  assert_string_equal(json_string_value(json_object_get(e, "use")), "sig");
  assert_int_equal(strlen(json_string_value(json_object_get(e, "x"))), 64); /* 48 bytes */
  assert_int_equal(strlen(json_string_value(json_object_get(e, "y"))), 64);
  assert_null(json_object_get(e, "d")); /* never the private part */
  assert_null(json_object_get(r, "d"));
  /* The published n/e rebuild a key with the same thumbprint as the kid. */
  EVP_PKEY *pub = rsa_from_jwk(json_string_value(json_object_get(r, "n")), "AQAB");
  char tp[64];
  assert_int_equal(fx_key_thumbprint(pub, tp, sizeof tp, &err), 0);
  assert_string_equal(tp, ks.keys[0].kid);
  EVP_PKEY_free(pub);
  json_decref(jwks);
  fx_keyset_free(&ks);
  free(es), free(rs);
  ut_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(rfc7638_thumbprint), cmocka_unit_test(generate_and_load),
      cmocka_unit_test(refuses_readable_key), cmocka_unit_test(refuses_weak_or_wrong_keys),
      cmocka_unit_test(jwks_lists_every_key)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
