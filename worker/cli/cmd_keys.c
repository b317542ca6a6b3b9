/* fhirx keys generate | jwks */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/jwks.h"
#include "common/log.h"
#include "worker/model/app.h"
#include "worker/cli/cli.h"

static const char keys_usage[] =
    "usage: fhirx keys generate --alg RS384|ES384 --out PATH [--bits N]\n"
    "       fhirx keys jwks (--config FILE | --key PATH [--key PATH ...])\n"
    "\n"
    "generate  creates a private key file with mode 0600 (never overwrites). ES384 (EC P-384)\n"
    "          is compact and fast; RS384 uses RSA, 3072 bits unless --bits says otherwise.\n"
    "jwks      prints the public JWK Set of the configured keys (all of them, so a key being\n"
    "          rotated out still verifies). Host it at the JWKS URL registered for the app on\n"
    "          Cerner Central.\n";

static int generate(int argc, char **argv) {
  static const struct option opts[] = {{"alg", required_argument, 0, 'a'},
                                       {"out", required_argument, 0, 'o'},
                                       {"bits", required_argument, 0, 'b'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *alg = NULL, *out = NULL;
  int bits = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'a': alg = optarg; break;
    case 'o': out = optarg; break;
    case 'b': {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || v <= 0 || v > 16384)
        return fx_cli_fail("keys generate", FX_EXIT_USAGE, "--bits must be a number of bits");
      bits = (int)v;
      break;
    }
    case 'h': fputs(keys_usage, stdout); return FX_EXIT_OK;
    default: fputs(keys_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  fx_alg a = fx_alg_parse(alg);
  if (a == FX_ALG_NONE)
    return fx_cli_fail("keys generate", FX_EXIT_USAGE, "--alg must be RS384 or ES384");
  if (!out) return fx_cli_fail("keys generate", FX_EXIT_USAGE, "--out PATH is required");
  fx_err err = {0};
  if (fx_key_generate(a, bits, out, &err) != 0)
    return fx_cli_fail("keys generate", FX_EXIT_FAIL, "%s", err.msg);
  fx_key key;
  if (fx_key_load(out, a, NULL, &key, &err) != 0)
    return fx_cli_fail("keys generate", FX_EXIT_FAIL, "%s", err.msg);
  printf("wrote %s key %s (mode 0600), kid %s\n"
         "next: list it under keys[] in the config (last = signing key), then publish\n"
         "`fhirx keys jwks --config FILE` at the JWKS URL registered on Cerner Central\n",
         fx_alg_name(a), out, key.kid);
  fx_key_free(&key);
  return FX_EXIT_OK;
}

static int jwks(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"key", required_argument, 0, 'k'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL;
  const char *paths[16];
  size_t n_paths = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 'k':
      if (n_paths == sizeof paths / sizeof paths[0])
        return fx_cli_fail("keys jwks", FX_EXIT_USAGE, "at most 16 --key options");
      paths[n_paths++] = optarg;
      break;
    case 'h': fputs(keys_usage, stdout); return FX_EXIT_OK;
    default: fputs(keys_usage, stderr); return FX_EXIT_USAGE;
    }
  }
  if (!n_paths) config = fx_cli_config(config);
  if (!config == !n_paths)
    return fx_cli_fail("keys jwks", FX_EXIT_USAGE, "give either --config FILE or --key PATH");
  fx_err err = {0};
  fx_keyset ks = {0};
  int rc = 0;
  if (config) {
    fx_config *cfg = NULL;
    rc = fx_config_load(config, &cfg, &err);
    if (!rc) rc = fx_app_load_keys(cfg, &ks, &err);
    fx_config_free(cfg);
  } else {
    ks.keys = calloc(n_paths, sizeof *ks.keys);
    rc = ks.keys ? 0 : fx_err_set(&err, FX_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n_paths; i++) {
      rc = fx_key_load(paths[i], FX_ALG_NONE, NULL, &ks.keys[i], &err);
      if (!rc) ks.n = i + 1;
    }
  }
  json_t *doc = rc ? NULL : fx_jwks_build(&ks, &err);
  fx_keyset_free(&ks);
  if (!doc) return fx_cli_fail("keys jwks", FX_EXIT_FAIL, "%s", err.msg);
  char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(doc);
  if (!text) return fx_cli_fail("keys jwks", FX_EXIT_FAIL, "out of memory");
  puts(text);
  free(text);
  return FX_EXIT_OK;
}

int fx_cmd_keys(int argc, char **argv) {
  fx_cli_log_level(FX_LOG_WARN);
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(keys_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? FX_EXIT_USAGE : FX_EXIT_OK;
  }
  if (strcmp(argv[1], "generate") == 0) return generate(argc - 1, argv + 1);
  if (strcmp(argv[1], "jwks") == 0) return jwks(argc - 1, argv + 1);
  return fx_cli_fail("keys", FX_EXIT_USAGE, "unknown subcommand '%s'; use generate or jwks",
                     argv[1]);
}
