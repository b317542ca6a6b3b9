/* base64url without padding (RFC 4648 section 5), as JWS/JWK require.
 * Built on OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock; only the alphabet and
 * padding translation lives here. */
#ifndef FX_B64_H
#define FX_B64_H

#include <stddef.h>
#include <stdint.h>

/* Length of the unpadded base64url text for n input bytes (without NUL). */
size_t fx_b64url_encoded_len(size_t n);

/* Encodes n bytes into out, which must hold fx_b64url_encoded_len(n) + 1 bytes.
 * Always NUL-terminates; returns the text length. */
size_t fx_b64url_encode(const uint8_t *in, size_t n, char *out);

/* Returns a new malloc'd NUL-terminated string (caller frees), NULL on OOM. */
char *fx_b64url_encode_alloc(const uint8_t *in, size_t n);

/* Decodes unpadded base64url text of length len. Rejects padding, the
 * standard alphabet's '+' and '/', whitespace and impossible lengths.
 * Returns a new malloc'd buffer (caller frees; one spare NUL byte is
 * appended so text payloads can be used as C strings) and its length in
 * *out_len, or NULL on invalid input or OOM. */
uint8_t *fx_b64url_decode(const char *in, size_t len, size_t *out_len);

#endif
