#include "common/b64.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

size_t fx_b64url_encoded_len(size_t n) {
  return (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0);
}

size_t fx_b64url_encode(const uint8_t *in, size_t n, char *out) {
  /* EVP_EncodeBlock writes padded standard base64 plus a NUL; with padding it
   * needs 4*ceil(n/3)+1 bytes, which can exceed the caller's unpadded buffer by
   * up to two bytes, so encode full groups in place and the tail separately. */
  size_t full = n - n % 3;
  size_t len = 0;
  if (full) len = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)full);
  if (n % 3) {
    unsigned char tail[5];
    EVP_EncodeBlock(tail, in + full, (int)(n % 3));
    size_t keep = n % 3 + 1;
    memcpy(out + len, tail, keep);
    len += keep;
  }
  out[len] = '\0';
  for (size_t i = 0; i < len; i++) {
    if (out[i] == '+') out[i] = '-';
    else if (out[i] == '/') out[i] = '_';
  }
  return len;
}

char *fx_b64url_encode_alloc(const uint8_t *in, size_t n) {
  char *out = malloc(fx_b64url_encoded_len(n) + 1);
  if (out) fx_b64url_encode(in, n, out);
  return out;
}

uint8_t *fx_b64url_decode(const char *in, size_t len, size_t *out_len) {
  if (len % 4 == 1) return NULL; /* no byte count encodes to this length */
  size_t padded = len + (4 - len % 4) % 4;
  unsigned char *std = malloc(padded + 1);
  uint8_t *out = malloc(padded / 4 * 3 + 1);
  if (!std || !out) goto fail;
  for (size_t i = 0; i < len; i++) {
    char c = in[i];
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
    else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
      goto fail; /* '=', '+', '/', whitespace and anything else */
    std[i] = (unsigned char)c;
  }
  for (size_t i = len; i < padded; i++) std[i] = '=';
  std[padded] = '\0';
  int n = padded ? EVP_DecodeBlock(out, std, (int)padded) : 0;
  if (n < 0) goto fail;
  /* EVP_DecodeBlock counts padding as zero bytes; remove them. */
  size_t real = (size_t)n - (padded - len);
  out[real] = '\0';
  free(std);
  *out_len = real;
  return out;
fail:
  free(std);
  free(out);
  return NULL;
}
