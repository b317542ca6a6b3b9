/* Public keys as a JWK Set (RFC 7517), the document registered on Cerner
 * Central and served by the admin endpoint /.well-known/jwks.json. */
#ifndef FX_JWKS_H
#define FX_JWKS_H

#include <jansson.h>

#include "common/err.h"
#include "common/keys.h"

/* Public JWK of one key: kty, kid, alg, use:"sig", key_ops:["verify"], then
 * n/e (RSA) or crv/x/y (EC, 48-byte coordinates). Returns a new reference. */
json_t *fx_jwk_public(const fx_key *key, fx_err *err);

/* {"keys":[...]} for every key of the set, oldest first. New reference. */
json_t *fx_jwks_build(const fx_keyset *ks, fx_err *err);

#endif
