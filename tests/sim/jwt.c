#include "tests/sim/jwt.h"

#include "common/b64.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <string.h>

#define ES384_COORD 48 /* bytes per P-384 coordinate and per signature half */
#define MIN_RSA_BITS 2048

static json_t *decode_object(const char *seg, size_t len) {
  size_t n;
  uint8_t *raw = fx_b64url_decode(seg, len, &n);
  if (!raw) return NULL;
  json_t *o = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL);
  free(raw);
  if (o && !json_is_object(o)) {
    json_decref(o);
    o = NULL;
  }
  return o;
}

int sim_jwt_parse(const char *assertion, sim_jwt *out) {
  *out = (sim_jwt){0};
  const char *dot1 = strchr(assertion, '.');
  const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
  if (!dot2 || strchr(dot2 + 1, '.')) return -1;
  out->header = decode_object(assertion, (size_t)(dot1 - assertion));
  out->claims = decode_object(dot1 + 1, (size_t)(dot2 - dot1 - 1));
  out->sig = fx_b64url_decode(dot2 + 1, strlen(dot2 + 1), &out->sig_len);
  out->signing_len = (size_t)(dot2 - assertion);
  if (!out->header || !out->claims || !out->sig) {
    sim_jwt_clear(out);
    return -1;
  }
  return 0;
}

void sim_jwt_clear(sim_jwt *j) {
  json_decref(j->header);
  json_decref(j->claims);
  free(j->sig);
  *j = (sim_jwt){0};
}

char *sim_jwt_peek_iss(const char *assertion) {
  const char *dot1 = strchr(assertion, '.');
  const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
  if (!dot2) return NULL;
  json_t *claims = decode_object(dot1 + 1, (size_t)(dot2 - dot1 - 1));
  const char *iss = json_string_value(json_object_get(claims, "iss"));
  char *out = iss ? strdup(iss) : NULL;
  json_decref(claims);
  return out;
}

const json_t *sim_jwks_find(const json_t *jwks, const char *kid) {
  size_t i;
  const json_t *k;
  json_array_foreach(json_object_get(jwks, "keys"), i, k) {
    const char *v = json_string_value(json_object_get(k, "kid"));
    if (v && strcmp(v, kid) == 0) return k;
  }
  return NULL;
}

/* Decodes a base64url JWK member; NULL if absent or invalid. */
static uint8_t *jwk_bytes(const json_t *jwk, const char *name, size_t *len) {
  const char *s = json_string_value(json_object_get(jwk, name));
  return s ? fx_b64url_decode(s, strlen(s), len) : NULL;
}

static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld) {
  EVP_PKEY *pkey = NULL;
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
    pkey = NULL;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  return pkey;
}

static EVP_PKEY *rsa_key(const json_t *jwk) {
  size_t nlen = 0, elen = 0;
  uint8_t *n = jwk_bytes(jwk, "n", &nlen), *e = jwk_bytes(jwk, "e", &elen);
  BIGNUM *bn_n = n ? BN_bin2bn(n, (int)nlen, NULL) : NULL;
  BIGNUM *bn_e = e ? BN_bin2bn(e, (int)elen, NULL) : NULL;
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  EVP_PKEY *pkey = NULL;
  if (bn_n && bn_e && bld && BN_num_bits(bn_n) >= MIN_RSA_BITS &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) == 1)
    pkey = pkey_from_params("RSA", bld);
  OSSL_PARAM_BLD_free(bld);
  BN_free(bn_n);
  BN_free(bn_e);
  free(n);
  free(e);
  return pkey;
}

/* EC public keys are imported as an uncompressed point 04||x||y; OpenSSL
 * rejects points that are not on the curve. */
static EVP_PKEY *ec_p384_key(const json_t *jwk) {
  const char *crv = json_string_value(json_object_get(jwk, "crv"));
  if (!crv || strcmp(crv, "P-384") != 0) return NULL;
  size_t xlen = 0, ylen = 0;
  uint8_t *x = jwk_bytes(jwk, "x", &xlen), *y = jwk_bytes(jwk, "y", &ylen);
  unsigned char point[1 + 2 * ES384_COORD];
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  EVP_PKEY *pkey = NULL;
  if (x && y && bld && xlen == ES384_COORD && ylen == ES384_COORD) {
    point[0] = 0x04;
    memcpy(point + 1, x, ES384_COORD);
    memcpy(point + 1 + ES384_COORD, y, ES384_COORD);
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "secp384r1", 0) == 1 &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point) == 1)
      pkey = pkey_from_params("EC", bld);
  }
  OSSL_PARAM_BLD_free(bld);
  free(x);
  free(y);
  return pkey;
}

/* A JWK may restrict itself with alg, use and key_ops; honour them. */
static bool jwk_usable(const json_t *jwk, const char *alg) {
  const char *kalg = json_string_value(json_object_get(jwk, "alg"));
  const char *use = json_string_value(json_object_get(jwk, "use"));
  const json_t *ops = json_object_get(jwk, "key_ops");
  if ((kalg && strcmp(kalg, alg) != 0) || (use && strcmp(use, "sig") != 0)) return false;
  if (!ops) return true;
  size_t i;
  const json_t *op;
  json_array_foreach(ops, i, op) {
    if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0) return true;
  }
  return false;
}

/* JOSE ES384 signatures are R||S; OpenSSL verifies DER ECDSA-Sig-Value. */
static unsigned char *es384_to_der(const uint8_t *sig, size_t sig_len, size_t *der_len) {
  if (sig_len != 2 * ES384_COORD) return NULL;
  ECDSA_SIG *es = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, ES384_COORD, NULL);
  BIGNUM *s = BN_bin2bn(sig + ES384_COORD, ES384_COORD, NULL);
  unsigned char *der = NULL;
  if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
    r = s = NULL; /* now owned by es */
    int n = i2d_ECDSA_SIG(es, &der);
    if (n <= 0) der = NULL;
    *der_len = n > 0 ? (size_t)n : 0;
  }
  BN_free(r);
  BN_free(s);
  ECDSA_SIG_free(es);
  return der;
}

static int verify_digest(EVP_PKEY *pkey, const char *input, size_t input_len,
                         const unsigned char *sig, size_t sig_len) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha384(), NULL, pkey) == 1 &&
           EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)input, input_len) == 1;
  EVP_MD_CTX_free(md);
  return ok ? 0 : -1;
}

int sim_jwk_verify(const json_t *jwk, const char *alg, const char *input, size_t input_len,
                   const uint8_t *sig, size_t sig_len) {
  const char *kty = json_string_value(json_object_get(jwk, "kty"));
  if (!kty || !jwk_usable(jwk, alg)) return -1;
  int rc = -1;
  if (strcmp(alg, "RS384") == 0 && strcmp(kty, "RSA") == 0) {
    EVP_PKEY *pkey = rsa_key(jwk);
    if (pkey) rc = verify_digest(pkey, input, input_len, sig, sig_len);
    EVP_PKEY_free(pkey);
  } else if (strcmp(alg, "ES384") == 0 && strcmp(kty, "EC") == 0) {
    size_t der_len = 0;
    unsigned char *der = es384_to_der(sig, sig_len, &der_len);
    EVP_PKEY *pkey = der ? ec_p384_key(jwk) : NULL;
    if (pkey) rc = verify_digest(pkey, input, input_len, der, der_len);
    EVP_PKEY_free(pkey);
    OPENSSL_free(der);
  }
  return rc;
}
