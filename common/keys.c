#include "common/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/b64.h"

#define RSA_MIN_BITS 2048
#define RSA_DEFAULT_BITS 3072
#define P384_COORD_BYTES 48

const char *fx_alg_name(fx_alg alg) {
  switch (alg) {
  case FX_ALG_RS384: return "RS384";
  case FX_ALG_ES384: return "ES384";
  default: return "none";
  }
}

fx_alg fx_alg_parse(const char *name) {
  if (name && strcmp(name, "RS384") == 0) return FX_ALG_RS384;
  if (name && strcmp(name, "ES384") == 0) return FX_ALG_ES384;
  return FX_ALG_NONE;
}

/* The last OpenSSL error as text, for messages; clears the error queue. */
static const char *ossl_reason(char *buf, size_t size) {
  unsigned long e = ERR_get_error();
  if (!e) return "no detail from OpenSSL";
  ERR_error_string_n(e, buf, size);
  ERR_clear_error();
  return buf;
}

/* Refuses to continue on an encrypted key rather than prompting on a tty. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static int check_file(const char *path, fx_err *err) {
  struct stat st;
  if (stat(path, &st) != 0) {
    if (errno == ENOENT)
      return fx_err_set(err, FX_EIO,
                        "key file %s does not exist; create one with "
                        "`fhirx keys generate --alg ES384 --out %s`",
                        path, path);
    return fx_err_set(err, FX_EIO, "cannot read key file %s: %s", path, strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    return fx_err_set(err, FX_EINVAL, "key file %s is not a regular file", path);
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    return fx_err_set(err, FX_EPERM,
                      "key file %s is accessible by group or others (mode %04o); "
                      "a private key must be private: run `chmod 600 %s`",
                      path, (unsigned)(st.st_mode & 07777), path);
  return 0;
}

static int check_type(EVP_PKEY *pkey, fx_alg *alg, const char *path, fx_err *err) {
  fx_alg actual;
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    int bits = EVP_PKEY_get_bits(pkey);
    if (bits < RSA_MIN_BITS)
      return fx_err_set(err, FX_EINVAL,
                        "key file %s holds a %d-bit RSA key; RS384 needs at least %d bits "
                        "(generate one with `fhirx keys generate --alg RS384`)",
                        path, bits, RSA_MIN_BITS);
    actual = FX_ALG_RS384;
  } else if (EVP_PKEY_is_a(pkey, "EC")) {
    char group[64] = "";
    size_t glen = 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                        &glen) ||
        strcmp(group, "secp384r1") != 0)
      return fx_err_set(err, FX_EINVAL,
                        "key file %s holds an EC key on curve '%s'; ES384 needs P-384 "
                        "(secp384r1)",
                        path, group[0] ? group : "unknown");
    actual = FX_ALG_ES384;
  } else {
    return fx_err_set(err, FX_EINVAL,
                      "key file %s holds a %s key; use RSA (RS384) or EC P-384 (ES384)", path,
                      EVP_PKEY_get0_type_name(pkey));
  }
  if (*alg != FX_ALG_NONE && *alg != actual)
    return fx_err_set(err, FX_EINVAL, "key file %s is configured as %s but holds a key for %s",
                      path, fx_alg_name(*alg), fx_alg_name(actual));
  *alg = actual;
  return 0;
}

int fx_key_load(const char *path, fx_alg alg, const char *kid, fx_key *out, fx_err *err) {
  memset(out, 0, sizeof *out);
  int rc = check_file(path, err);
  if (rc) return rc;
  BIO *bio = BIO_new_file(path, "r");
  if (!bio) return fx_err_set(err, FX_EIO, "cannot open key file %s: %s", path, strerror(errno));
  EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
  BIO_free(bio);
  if (!pkey) {
    char why[256];
    return fx_err_set(err, FX_EINVAL,
                      "key file %s is not an unencrypted PEM private key (%s)", path,
                      ossl_reason(why, sizeof why));
  }
  rc = check_type(pkey, &alg, path, err);
  if (rc) goto fail;
  if (kid && *kid) {
    if (strlen(kid) >= sizeof out->kid) {
      rc = fx_err_set(err, FX_EINVAL, "kid for key %s is longer than %zu characters", path,
                      sizeof out->kid - 1);
      goto fail;
    }
    memcpy(out->kid, kid, strlen(kid) + 1);
  } else {
    rc = fx_key_thumbprint(pkey, out->kid, sizeof out->kid, err);
    if (rc) goto fail;
  }
  snprintf(out->path, sizeof out->path, "%s", path);
  out->pkey = pkey;
  out->alg = alg;
  return 0;
fail:
  EVP_PKEY_free(pkey);
  return rc;
}

void fx_key_free(fx_key *key) {
  if (!key) return;
  EVP_PKEY_free(key->pkey);
  key->pkey = NULL;
}

int fx_key_generate(fx_alg alg, int rsa_bits, const char *path, fx_err *err) {
  EVP_PKEY *pkey = NULL;
  char why[256];
  if (alg == FX_ALG_RS384) {
    if (rsa_bits == 0) rsa_bits = RSA_DEFAULT_BITS;
    if (rsa_bits < RSA_MIN_BITS || rsa_bits > 16384)
      return fx_err_set(err, FX_EINVAL, "RSA key size %d is out of range (%d..16384)", rsa_bits,
                        RSA_MIN_BITS);
    pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)rsa_bits);
  } else if (alg == FX_ALG_ES384) {
    pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  } else {
    return fx_err_set(err, FX_EINVAL, "unknown algorithm; use RS384 or ES384");
  }
  if (!pkey)
    return fx_err_set(err, FX_ECRYPTO, "key generation failed: %s", ossl_reason(why, sizeof why));

  int rc = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    rc = errno == EEXIST ? fx_err_set(err, FX_EIO,
                                      "%s already exists; refusing to overwrite a key "
                                      "(move it away or choose another --out)",
                                      path)
                         : fx_err_set(err, FX_EIO, "cannot create %s: %s", path, strerror(errno));
    EVP_PKEY_free(pkey);
    return rc;
  }
  BIO *bio = BIO_new_fd(fd, BIO_CLOSE);
  if (!bio || !PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) ||
      BIO_flush(bio) != 1) {
    rc = fx_err_set(err, FX_EIO, "cannot write %s: %s", path, ossl_reason(why, sizeof why));
    if (!bio) close(fd);
    unlink(path);
  }
  BIO_free(bio);
  EVP_PKEY_free(pkey);
  return rc;
}

/* Big-endian unsigned integer parameter as base64url; pad = fixed width or 0. */
static json_t *bn_param_b64(EVP_PKEY *pkey, const char *name, int pad) {
  BIGNUM *bn = NULL;
  if (!EVP_PKEY_get_bn_param(pkey, name, &bn)) return NULL;
  int len = pad ? pad : BN_num_bytes(bn);
  json_t *out = NULL;
  unsigned char *buf = malloc((size_t)(len ? len : 1));
  if (buf && BN_bn2binpad(bn, buf, len) == len) {
    char *s = fx_b64url_encode_alloc(buf, (size_t)len);
    if (s) out = json_string(s);
    free(s);
  }
  free(buf);
  BN_free(bn);
  return out;
}

json_t *fx_key_public_members(EVP_PKEY *pkey, fx_err *err) {
  json_t *o = json_object();
  if (!o) return NULL;
  int ok;
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    json_t *n = bn_param_b64(pkey, OSSL_PKEY_PARAM_RSA_N, 0);
    json_t *e = bn_param_b64(pkey, OSSL_PKEY_PARAM_RSA_E, 0);
    ok = n && e;
    json_object_set_new(o, "kty", json_string("RSA"));
    json_object_set_new(o, "n", n ? n : json_null());
    json_object_set_new(o, "e", e ? e : json_null());
  } else if (EVP_PKEY_is_a(pkey, "EC")) {
    json_t *x = bn_param_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_X, P384_COORD_BYTES);
    json_t *y = bn_param_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, P384_COORD_BYTES);
    ok = x && y;
    json_object_set_new(o, "kty", json_string("EC"));
    json_object_set_new(o, "crv", json_string("P-384"));
    json_object_set_new(o, "x", x ? x : json_null());
    json_object_set_new(o, "y", y ? y : json_null());
  } else {
    ok = 0;
  }
  if (!ok) {
    json_decref(o);
    char why[256];
    fx_err_set(err, FX_ECRYPTO, "cannot read the public part of the key: %s",
               ossl_reason(why, sizeof why));
    return NULL;
  }
  return o;
}

int fx_key_thumbprint(EVP_PKEY *pkey, char *out, size_t out_size, fx_err *err) {
  json_t *members = fx_key_public_members(pkey, err);
  if (!members) return FX_ECRYPTO;
  /* RFC 7638: required members only, lexicographic order, no whitespace;
   * jansson's compact sorted output is exactly that for these ASCII values. */
  char *canon = json_dumps(members, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(members);
  if (!canon) return fx_err_set(err, FX_ENOMEM, "out of memory computing a key thumbprint");
  unsigned char digest[32];
  unsigned int dlen = 0;
  int ok = EVP_Digest(canon, strlen(canon), digest, &dlen, EVP_sha256(), NULL);
  free(canon);
  if (!ok || dlen != sizeof digest || out_size < fx_b64url_encoded_len(sizeof digest) + 1)
    return fx_err_set(err, FX_ECRYPTO, "cannot compute the key thumbprint");
  fx_b64url_encode(digest, sizeof digest, out);
  return 0;
}

const fx_key *fx_keyset_signer(const fx_keyset *ks) {
  return ks && ks->n ? &ks->keys[ks->n - 1] : NULL;
}

void fx_keyset_free(fx_keyset *ks) {
  if (!ks) return;
  for (size_t i = 0; i < ks->n; i++) fx_key_free(&ks->keys[i]);
  free(ks->keys);
  ks->keys = NULL;
  ks->n = 0;
}
