/* JWT client assertions (RFC 7523, SMART App Launch STU2 Backend Services).
 *
 * Header {alg, kid, typ:"JWT"}; claims iss = sub = client_id, aud = the token
 * endpoint URL exactly as we POST to it, exp (at most 5 minutes ahead), iat,
 * and jti: 192 bits from OpenSSL's CSPRNG, so a jti never repeats. RS384 is
 * RSASSA-PKCS1-v1_5 with SHA-384; ES384 signatures are converted from
 * OpenSSL's DER to the raw 96-byte R||S form JWS requires. */
#ifndef FX_JWT_H
#define FX_JWT_H

#include <time.h>

#include "common/err.h"
#include "common/keys.h"

#define FX_JWT_MAX_LIFETIME 300
#define FX_JWT_DEFAULT_LIFETIME 240

/* Builds and signs an assertion. lifetime_s in 1..300 (0 = default 240 s).
 * now is the current epoch time (a parameter so tests can pin it).
 * On success *out is a new malloc'd string the caller frees; it is a secret
 * credential for its lifetime and must never be logged. */
int fx_jwt_client_assertion(const fx_key *key, const char *client_id, const char *aud,
                            int lifetime_s, time_t now, char **out, fx_err *err);

/* Signs the JWS signing input with key, returning the base64url signature
 * (new string). Exposed for tests and for tools that sign other JWTs. */
int fx_jws_sign(const fx_key *key, const char *signing_input, char **out_b64, fx_err *err);

#endif
