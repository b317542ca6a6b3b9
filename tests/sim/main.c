/* cerner-sim: a stand-in for Oracle Health (Cerner) Millennium tenants that
 * the tests and the demo run against. See docs/simulator.md.
 *
 *   cerner-sim --config FILE [--host 127.0.0.1] [--port N] [--port-file PATH]
 *              [--storage-port N] [--storage-port-file PATH] [--threads N] [--verbose]
 *              [--tls-cert PEM --tls-key PEM]
 *
 * Two servers listen on --host: the FHIR/token/control server on --port and
 * the storage server that Bulk Data downloads are redirected to on
 * --storage-port (storage.c). With --tls-cert and --tls-key the FHIR server
 * speaks HTTPS and every URL it builds for itself says https; the storage
 * server stays plain HTTP (another host, as S3 is for Cerner).
 *
 * Exit status: 0 after SIGTERM/SIGINT, 2 for bad arguments or configuration,
 * 1 when the server cannot start. */
#include "common/log.h"
#include "tests/sim/config.h"
#include "tests/sim/fhir.h"
#include "tests/sim/http.h"
#include "tests/sim/state.h"

#include <curl/curl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 64

typedef struct options {
  const char *config;
  const char *host;
  const char *port_file;
  const char *storage_port_file;
  unsigned port;
  unsigned storage_port;
  unsigned threads;
  bool verbose;
  const char *tls_cert; /* paths */
  const char *tls_key;
} options;

static int usage(const char *problem) {
  fprintf(stderr,
          "cerner-sim: %s\nusage: cerner-sim --config FILE [--host 127.0.0.1] [--port N] "
          "[--port-file PATH] [--storage-port N] [--storage-port-file PATH] [--threads N] "
          "[--verbose] [--tls-cert PEM --tls-key PEM]\n",
          problem);
  return 2;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned *out) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (!*s || *end || *s == '-' || v < lo || v > hi) return -1;
  *out = (unsigned)v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},    {"host", required_argument, NULL, 'H'},
      {"port", required_argument, NULL, 'p'},      {"port-file", required_argument, NULL, 'f'},
      {"threads", required_argument, NULL, 't'},   {"verbose", no_argument, NULL, 'v'},
      {"storage-port", required_argument, NULL, 's'},
      {"storage-port-file", required_argument, NULL, 'S'},
      {"tls-cert", required_argument, NULL, 'C'},  {"tls-key", required_argument, NULL, 'K'},
      {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
  *o = (options){.host = "127.0.0.1", .threads = 2};
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': o->config = optarg; break;
    case 'H': o->host = optarg; break;
    case 'f': o->port_file = optarg; break;
    case 'S': o->storage_port_file = optarg; break;
    case 'C': o->tls_cert = optarg; break;
    case 'K': o->tls_key = optarg; break;
    case 's':
      if (parse_uint(optarg, 0, 65535, &o->storage_port))
        return usage("--storage-port: expected 0-65535");
      break;
    case 'v': o->verbose = true; break;
    case 'p':
      if (parse_uint(optarg, 0, 65535, &o->port)) return usage("--port: expected 0-65535");
      break;
    case 't':
      if (parse_uint(optarg, 1, MAX_THREADS, &o->threads))
        return usage("--threads: expected 1-64");
      break;
    default: return usage("unknown option");
    }
  }
  if (optind < argc) return usage("unexpected argument");
  if (!o->config) return usage("--config is required");
  if (!o->tls_cert != !o->tls_key) return usage("--tls-cert and --tls-key go together");
  return 0;
}

/* Written as tmp + rename so a reader polling for the file never sees a
 * partial number. */
static int write_port_file(const char *path, unsigned port) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  int ok = fprintf(f, "%u\n", port) > 0;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

/* SIGTERM/SIGINT are blocked in every thread (MHD's threads inherit the mask)
 * and collected synchronously with sigwait, so no handler runs at an
 * arbitrary point and shutdown happens on the main thread. */
static void block_signals(sigset_t *set) {
  /* POSIX leaves it unspecified whether a blocked signal whose action is an
   * inherited SIG_IGN stays pending; with the default action sigwait always
   * sees it. */
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  pthread_sigmask(SIG_BLOCK, set, NULL);
  signal(SIGPIPE, SIG_IGN);
}

static int serve_with(const options *o, sim_state *st, const sigset_t *set, const char *tls_cert,
                      const char *tls_key);

/* The whole of a small PEM file as a string (caller frees), or NULL. */
static char *read_pem(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  bool whole = buf && feof(f) && !ferror(f) && n > 0;
  fclose(f);
  if (!whole) {
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  return buf;
}

static int serve(const options *o, sim_state *st, const sigset_t *set) {
  char *tls_cert = NULL, *tls_key = NULL;
  if (o->tls_cert) {
    tls_cert = read_pem(o->tls_cert);
    tls_key = read_pem(o->tls_key);
    if (!tls_cert || !tls_key) {
      fprintf(stderr, "cerner-sim: cannot read %s (a PEM file of at most 1 MiB)\n",
              !tls_cert ? o->tls_cert : o->tls_key);
      free(tls_cert);
      free(tls_key);
      return 2;
    }
    sim_set_scheme("https");
  }
  int rc = serve_with(o, st, set, tls_cert, tls_key);
  free(tls_cert);
  free(tls_key);
  return rc;
}

static int serve_with(const options *o, sim_state *st, const sigset_t *set, const char *tls_cert,
                      const char *tls_key) {
  char err[512];
  /* Storage first: the FHIR server hands out its origin in redirects, and
   * its port file is written before the FHIR server's, so a test that saw
   * the FHIR port can read the storage port too. */
  sim_server_opts so = {.host = o->host, .port = o->storage_port, .threads = o->threads,
                        .verbose = o->verbose};
  sim_storage *storage = sim_storage_start(st, &so, err, sizeof err);
  if (!storage) {
    fprintf(stderr, "cerner-sim: %s\n", err);
    return 1;
  }
  if (o->storage_port_file && write_port_file(o->storage_port_file, sim_storage_port(storage))) {
    fprintf(stderr, "cerner-sim: cannot write --storage-port-file %s\n", o->storage_port_file);
    sim_storage_stop(storage);
    return 1;
  }
  so.port = o->port;
  so.tls_cert_pem = tls_cert;
  so.tls_key_pem = tls_key;
  sim_server *srv = sim_server_start(st, &so, err, sizeof err);
  if (!srv) {
    fprintf(stderr, "cerner-sim: %s\n", err);
    sim_storage_stop(storage);
    return 1;
  }
  unsigned port = sim_server_port(srv);
  if (o->port_file && write_port_file(o->port_file, port) != 0) {
    fprintf(stderr, "cerner-sim: cannot write --port-file %s\n", o->port_file);
    sim_server_stop(srv);
    sim_storage_stop(storage);
    return 1;
  }
  if (o->verbose) {
    fx_log_set_level(FX_LOG_DEBUG);
    char p[16], sp[16];
    snprintf(p, sizeof p, "%u", port);
    snprintf(sp, sizeof sp, "%u", sim_storage_port(storage));
    fx_log(FX_LOG_INFO, "cerner-sim listening", "host", o->host, "port", p, "storage_port", sp,
           NULL);
  }
  int sig = 0;
  sigwait(set, &sig);
  if (o->verbose) fx_log(FX_LOG_INFO, "cerner-sim stopping", NULL);
  sim_server_stop(srv);
  sim_storage_stop(storage);
  return 0;
}

int main(int argc, char **argv) {
  /* First, so a SIGTERM that arrives during start-up stays pending and ends
   * in a clean shutdown instead of killing a half-initialized process. */
  sigset_t set;
  block_signals(&set);
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc) return rc;

  char err[512];
  sim_config cfg;
  if (sim_config_load(o.config, &cfg, err, sizeof err) != 0) {
    fprintf(stderr, "cerner-sim: config %s: %s\n", o.config, err);
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  sim_state st;
  if (sim_state_init(&st, &cfg, sim_fhir_prepare_store, err, sizeof err) != 0) {
    fprintf(stderr, "cerner-sim: %s\n", err);
    rc = 1;
  } else {
    rc = serve(&o, &st, &set);
  }
  sim_state_free(&st);
  sim_config_free(&cfg);
  curl_global_cleanup();
  return rc;
}
