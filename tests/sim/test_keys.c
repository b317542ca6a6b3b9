#include "tests/sim/test_keys.h"

#include "common/b64.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int test_key_gen(test_key *k, const char *alg, const char *kid) {
  memset(k, 0, sizeof *k);
  if (strcmp(alg, "RS384") == 0)
    k->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  else if (strcmp(alg, "ES384") == 0)
    k->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  snprintf(k->alg, sizeof k->alg, "%s", alg);
  snprintf(k->kid, sizeof k->kid, "%s", kid);
  return k->pkey ? 0 : -1;
}

void test_key_free(test_key *k) {
  EVP_PKEY_free(k->pkey);
  k->pkey = NULL;
}

/* base64url of a big number, left-padded to `pad` bytes when pad > 0. */
static char *bn_b64(EVP_PKEY *pkey, const char *param, int pad) {
  BIGNUM *bn = NULL;
  if (EVP_PKEY_get_bn_param(pkey, param, &bn) != 1) return NULL;
  int n = pad > 0 ? pad : BN_num_bytes(bn);
  unsigned char buf[1024];
  char *out = NULL;
  if (n <= (int)sizeof buf && BN_bn2binpad(bn, buf, n) == n)
    out = fx_b64url_encode_alloc(buf, (size_t)n);
  BN_free(bn);
  return out;
}

json_t *test_key_jwk(const test_key *k) {
  bool rsa = strcmp(k->alg, "RS384") == 0;
  char *a = bn_b64(k->pkey, rsa ? OSSL_PKEY_PARAM_RSA_N : OSSL_PKEY_PARAM_EC_PUB_X, rsa ? 0 : 48);
  char *b = bn_b64(k->pkey, rsa ? OSSL_PKEY_PARAM_RSA_E : OSSL_PKEY_PARAM_EC_PUB_Y, rsa ? 0 : 48);
  json_t *jwk = NULL;
  if (a && b && rsa)
    jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "kid", k->kid, "alg", k->alg,
                    "use", "sig", "n", a, "e", b);
  else if (a && b)
    jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "kid", k->kid, "alg",
                    k->alg, "use", "sig", "crv", "P-384", "x", a, "y", b);
  free(a);
  free(b);
  return jwk;
}

static char *b64_json(const json_t *doc) {
  char *text = json_dumps(doc, JSON_COMPACT);
  char *out = text ? fx_b64url_encode_alloc((const uint8_t *)text, strlen(text)) : NULL;
  free(text);
  return out;
}

/* OpenSSL produces DER ECDSA-Sig-Value; JOSE wants R||S, 48 bytes each. */
static size_t der_to_raw(const unsigned char *der, size_t len, unsigned char *raw) {
  const unsigned char *p = der;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
  if (!sig) return 0;
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  size_t ok = BN_bn2binpad(r, raw, 48) == 48 && BN_bn2binpad(s, raw + 48, 48) == 48 ? 96 : 0;
  ECDSA_SIG_free(sig);
  return ok;
}

static char *sign_input(const test_key *k, const char *input) {
  unsigned char sig[1024], raw[96];
  size_t sig_len = sizeof sig;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha384(), NULL, k->pkey) == 1 &&
           EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) == 1;
  EVP_MD_CTX_free(md);
  if (!ok) return NULL;
  if (strcmp(k->alg, "ES384") == 0) {
    if (der_to_raw(sig, sig_len, raw) != 96) return NULL;
    return fx_b64url_encode_alloc(raw, 96);
  }
  return fx_b64url_encode_alloc(sig, sig_len);
}

char *test_jwt_sign(const test_key *k, const json_t *claims, const char *header_alg,
                    const char *kid) {
  json_t *header = json_pack("{s:s, s:s, s:s}", "alg", header_alg ? header_alg : k->alg, "kid",
                             kid ? kid : k->kid, "typ", "JWT");
  char *h = header ? b64_json(header) : NULL, *c = b64_json(claims);
  json_decref(header);
  char *out = NULL;
  if (h && c) {
    size_t n = strlen(h) + strlen(c) + 2;
    char *input = malloc(n);
    if (input) snprintf(input, n, "%s.%s", h, c);
    char *sig = input ? sign_input(k, input) : NULL;
    if (sig) {
      out = malloc(n + strlen(sig) + 1);
      if (out) snprintf(out, n + strlen(sig) + 1, "%s.%s", input, sig);
    }
    free(sig);
    free(input);
  }
  free(h);
  free(c);
  return out;
}
