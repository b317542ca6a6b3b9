#include "common/jwt.h"

#include <jansson.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "common/b64.h"

#define JTI_BYTES 24 /* 192 bits: collisions are not a practical concern */
#define ES384_COORD 48

/* base64url of the compact JSON serialization of o (new string). */
static char *b64_json(json_t *o) {
  char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!txt) return NULL;
  char *b = fx_b64url_encode_alloc((const uint8_t *)txt, strlen(txt));
  free(txt);
  return b;
}

/* OpenSSL produces ECDSA signatures as DER SEQUENCE{r, s}; JWS (RFC 7518
 * 3.4) wants the two integers as fixed-width big-endian octets, R||S. */
static int der_to_raw_es384(const unsigned char *der, size_t der_len, unsigned char *raw) {
  const unsigned char *p = der;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
  if (!sig) return -1;
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  int ok = BN_bn2binpad(r, raw, ES384_COORD) == ES384_COORD &&
           BN_bn2binpad(s, raw + ES384_COORD, ES384_COORD) == ES384_COORD;
  ECDSA_SIG_free(sig);
  return ok ? 0 : -1;
}

int fx_jws_sign(const fx_key *key, const char *signing_input, char **out_b64, fx_err *err) {
  *out_b64 = NULL;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned char *sig = NULL;
  size_t sig_len = 0;
  int rc = FX_ECRYPTO;
  if (!md || EVP_DigestSignInit(md, NULL, EVP_sha384(), NULL, key->pkey) != 1 ||
      EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)signing_input,
                     strlen(signing_input)) != 1)
    goto out;
  sig = malloc(sig_len);
  if (!sig || EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)signing_input,
                             strlen(signing_input)) != 1)
    goto out;
  if (key->alg == FX_ALG_ES384) {
    unsigned char raw[2 * ES384_COORD];
    if (der_to_raw_es384(sig, sig_len, raw) != 0) goto out;
    *out_b64 = fx_b64url_encode_alloc(raw, sizeof raw);
  } else {
    *out_b64 = fx_b64url_encode_alloc(sig, sig_len);
  }
  rc = *out_b64 ? 0 : FX_ENOMEM;
out:
  if (rc) {
    char why[256] = "no detail";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    fx_err_set(err, rc, "signing with key %s (kid %s) failed: %s", key->path, key->kid, why);
  }
  free(sig);
  EVP_MD_CTX_free(md);
  return rc;
}

int fx_jwt_client_assertion(const fx_key *key, const char *client_id, const char *aud,
                            int lifetime_s, time_t now, char **out, fx_err *err) {
  *out = NULL;
  if (lifetime_s == 0) lifetime_s = FX_JWT_DEFAULT_LIFETIME;
  if (lifetime_s < 1 || lifetime_s > FX_JWT_MAX_LIFETIME)
    return fx_err_set(err, FX_EINVAL,
                      "assertion lifetime %d s is out of range: servers reject exp more than "
                      "%d s ahead",
                      lifetime_s, FX_JWT_MAX_LIFETIME);
  if (!client_id || !*client_id || !aud || !*aud)
    return fx_err_set(err, FX_EINVAL, "client assertion needs a client_id and a token endpoint");

  unsigned char jti_raw[JTI_BYTES];
  if (RAND_bytes(jti_raw, sizeof jti_raw) != 1)
    return fx_err_set(err, FX_ECRYPTO, "the system random generator failed; cannot make a jti");
  char jti[JTI_BYTES * 4 / 3 + 4];
  fx_b64url_encode(jti_raw, sizeof jti_raw, jti);

  json_t *hdr = json_pack("{s:s, s:s, s:s}", "alg", fx_alg_name(key->alg), "kid", key->kid,
                          "typ", "JWT");
  json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", client_id, "sub",
                             client_id, "aud", aud, "exp", (json_int_t)(now + lifetime_s), "iat",
                             (json_int_t)now, "jti", jti);
  char *h64 = hdr ? b64_json(hdr) : NULL;
  char *c64 = claims ? b64_json(claims) : NULL;
  json_decref(hdr);
  json_decref(claims);
  char *input = NULL, *sig = NULL;
  int rc = FX_ENOMEM;
  if (!h64 || !c64) {
    fx_err_set(err, rc, "out of memory building a client assertion");
    goto out;
  }
  size_t hl = strlen(h64), cl = strlen(c64);
  input = malloc(hl + 1 + cl + 1);
  if (!input) {
    fx_err_set(err, rc, "out of memory building a client assertion");
    goto out;
  }
  memcpy(input, h64, hl);
  input[hl] = '.';
  memcpy(input + hl + 1, c64, cl + 1);
  rc = fx_jws_sign(key, input, &sig, err);
  if (rc) goto out;
  size_t il = hl + 1 + cl, sl = strlen(sig);
  *out = malloc(il + 1 + sl + 1);
  if (!*out) {
    rc = fx_err_set(err, FX_ENOMEM, "out of memory building a client assertion");
    goto out;
  }
  memcpy(*out, input, il);
  (*out)[il] = '.';
  memcpy(*out + il + 1, sig, sl + 1);
out:
  free(h64);
  free(c64);
  free(input);
  free(sig);
  return rc;
}
