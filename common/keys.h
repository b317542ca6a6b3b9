/* Signing keys for SMART Backend Services client assertions.
 *
 * A key is a PEM private key on disk: RSA (>= 2048 bits) for RS384 or EC P-384
 * for ES384. Files must be private to their owner (mode 0600 or stricter):
 * loading refuses anything readable or writable by group or others.
 *
 * A key set holds every configured key, oldest first. All public keys are
 * published in the JWKS (so the authorization server can verify assertions
 * signed by a key being rotated out); the newest, i.e. the last listed, signs. */
#ifndef FX_KEYS_H
#define FX_KEYS_H

#include <jansson.h>
#include <openssl/evp.h>
#include <stddef.h>

#include "common/err.h"

typedef enum { FX_ALG_NONE = 0, FX_ALG_RS384, FX_ALG_ES384 } fx_alg;

/* "RS384"/"ES384" <-> fx_alg; parse returns FX_ALG_NONE for anything else. */
const char *fx_alg_name(fx_alg alg);
fx_alg fx_alg_parse(const char *name);

typedef struct fx_key {
  EVP_PKEY *pkey; /* owned */
  fx_alg alg;
  char kid[128];
  char path[512];
} fx_key;

typedef struct fx_keyset {
  fx_key *keys; /* owned array, oldest first */
  size_t n;
} fx_keyset;

/* Loads a private key. alg may be FX_ALG_NONE to infer it from the key type;
 * otherwise the key type must match. kid NULL or "" means the RFC 7638 JWK
 * thumbprint. On success fills *out (release with fx_key_free). */
int fx_key_load(const char *path, fx_alg alg, const char *kid, fx_key *out, fx_err *err);
void fx_key_free(fx_key *key);

/* Generates a new key and writes it as unencrypted PKCS#8 PEM with mode 0600.
 * Refuses to overwrite an existing file. rsa_bits is ignored for ES384 and
 * must be >= 2048 for RS384 (0 means the default, 3072). */
int fx_key_generate(fx_alg alg, int rsa_bits, const char *path, fx_err *err);

/* RFC 7638 thumbprint (SHA-256, base64url) of the public part; out >= 44 bytes. */
int fx_key_thumbprint(EVP_PKEY *pkey, char *out, size_t out_size, fx_err *err);

/* The JWK members required by RFC 7638 for the key's public part: kty plus
 * n/e (RSA, minimal big-endian) or crv/x/y (EC P-384, 48-byte coordinates).
 * Returns a new reference, NULL on failure. */
json_t *fx_key_public_members(EVP_PKEY *pkey, fx_err *err);

/* The key that signs new assertions: the newest (last) one. NULL if empty. */
const fx_key *fx_keyset_signer(const fx_keyset *ks);
void fx_keyset_free(fx_keyset *ks);

#endif
