/* Key generation, JWK export and JWT signing for the simulator's tests,
 * written independently of the simulator's verifier (and of fhirx's own
 * signer) so a shared bug cannot make both sides agree. */
#ifndef SIM_TEST_KEYS_H
#define SIM_TEST_KEYS_H

#include <jansson.h>
#include <openssl/evp.h>

typedef struct test_key {
  EVP_PKEY *pkey;
  char alg[8]; /* "RS384" or "ES384" */
  char kid[64];
} test_key;

/* Generates an RSA-2048 (RS384) or P-384 (ES384) key. Returns 0 or -1. */
int test_key_gen(test_key *k, const char *alg, const char *kid);
void test_key_free(test_key *k);

/* Public JWK {kty,kid,alg,use,...}: new reference or NULL. */
json_t *test_key_jwk(const test_key *k);

/* Compact JWS of claims (borrowed) signed with k. header_alg overrides the
 * "alg" written in the header (NULL: k->alg), kid overrides the kid (NULL:
 * k->kid). New string (caller frees) or NULL. */
char *test_jwt_sign(const test_key *k, const json_t *claims, const char *header_alg,
                    const char *kid);

#endif
