/* JWS compact parsing and signature verification against a JWK, as a strict
 * authorization server does it: RS384 (RSASSA-PKCS1-v1_5 + SHA-384) and
 * ES384 (P-384, raw R||S signatures). Keys are built from the JWK members
 * with OpenSSL 3's EVP_PKEY_fromdata, never from PEM. */
#ifndef SIM_JWT_H
#define SIM_JWT_H

#include "tests/sim/config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sim_jwt {
  json_t *header;        /* owned */
  json_t *claims;        /* owned */
  size_t signing_len;    /* bytes of "header.payload" at the start of the assertion */
  uint8_t *sig;          /* owned, decoded signature */
  size_t sig_len;
} sim_jwt;

/* Splits and decodes a compact JWS. Returns 0, or -1 when it is not three
 * base64url segments or header/claims are not JSON objects. */
int sim_jwt_parse(const char *assertion, sim_jwt *out);
void sim_jwt_clear(sim_jwt *j);

/* Unverified "iss" of an assertion (for per-client counters), new string or NULL. */
char *sim_jwt_peek_iss(const char *assertion);

/* Borrowed key with that kid from a {"keys":[...]} set, or NULL. */
const json_t *sim_jwks_find(const json_t *jwks, const char *kid);

/* Returns 0 when sig is a valid `alg` signature of input under jwk, -1 for
 * any failure: wrong key type for the alg, a key not meant for signatures,
 * an RSA modulus under 2048 bits, a bad length or a signature mismatch. */
int sim_jwk_verify(const json_t *jwk, const char *alg, const char *input, size_t input_len,
                   const uint8_t *sig, size_t sig_len);

/* Loads the client's current JWKS (file re-read, URL fetched, or inline copy).
 * Returns a new reference to an object with a "keys" array, or NULL with the
 * cause in why. Blocks on file/network I/O: call without locks held. */
json_t *sim_jwks_load(const sim_client *c, char *why, size_t whylen);

#endif
