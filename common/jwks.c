#include "common/jwks.h"

json_t *fx_jwk_public(const fx_key *key, fx_err *err) {
  json_t *members = fx_key_public_members(key->pkey, err);
  if (!members) return NULL;
  /* Order the members the way people read JWKs: kty, kid, use, alg, then the key. */
  json_t *jwk = json_pack("{s:O, s:s, s:s, s:s, s:[s]}", "kty", json_object_get(members, "kty"),
                          "kid", key->kid, "use", "sig", "alg", fx_alg_name(key->alg), "key_ops",
                          "verify");
  if (!jwk) {
    json_decref(members);
    fx_err_set(err, FX_ENOMEM, "out of memory building a JWK");
    return NULL;
  }
  json_object_del(members, "kty");
  json_object_update(jwk, members);
  json_decref(members);
  return jwk;
}

json_t *fx_jwks_build(const fx_keyset *ks, fx_err *err) {
  json_t *keys = json_array();
  if (!keys) return NULL;
  for (size_t i = 0; i < ks->n; i++) {
    json_t *jwk = fx_jwk_public(&ks->keys[i], err);
    if (!jwk) {
      json_decref(keys);
      return NULL;
    }
    json_array_append_new(keys, jwk);
  }
  return json_pack("{s:o}", "keys", keys);
}
