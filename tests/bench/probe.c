/* The bare-work probe of `make bench`: what publishing FHIR resources costs
 * with no pipeline around it, measured in one process so that fhirx's CPU
 * per resource can be read as a ratio to it.
 *
 * Input: a file of FHIR JSON documents, one per line. In "pages" mode each
 * line is a search Bundle (or one resource, for a read) as the server sent
 * it; in "ndjson" mode each line is one resource, as a bulk file holds it.
 * The probe loads the file into memory first (not measured), then, --repeat
 * times over:
 *   pages:  json_loadb(page); for each entry resource: json_dumps compact;
 *   ndjson: json_loadb(line); json_dumps compact (what bulk publishes);
 * and produces each dump with key tenant/Type/id on one producer with a
 * delivery report callback (fhirx's producer settings: idempotent, acks=all,
 * lz4), serving delivery reports with rd_kafka_poll as it goes. It waits for
 * every report, then prints one JSON line: resources, CPU seconds
 * (getrusage, whole process, librdkafka's threads included) and CPU
 * microseconds per resource.
 *
 *   fhirx-bench-probe --bootstrap HOST:PORT --topic T --mode pages|ndjson FILE
 *                     [--repeat N] [--linger-ms 5]
 *
 * A probe, not a test: it asserts nothing. */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static long long delivered, failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk, (void)opaque;
  if (m->err) failed++;
  else delivered++;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double wall_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct line {
  char *text;
  size_t len;
} line;

static int load(const char *path, line **out, size_t *n_out) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  line *v = NULL;
  size_t n = 0, cap = 0;
  char *buf = NULL;
  size_t bcap = 0;
  ssize_t got;
  while ((got = getline(&buf, &bcap, f)) > 0) {
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r')) got--;
    if (got == 0) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 1024;
      line *g = realloc(v, cap * sizeof *g);
      if (!g) return -1;
      v = g;
    }
    v[n].text = malloc((size_t)got);
    if (!v[n].text) return -1;
    memcpy(v[n].text, buf, (size_t)got);
    v[n].len = (size_t)got;
    n++;
  }
  free(buf);
  fclose(f);
  *out = v;
  *n_out = n;
  return 0;
}

static rd_kafka_t *producer(const char *bootstrap, const char *linger) {
  static const char *const props[][2] = {{"enable.idempotence", "true"}, {"acks", "all"},
                                         {"compression.type", "lz4"},
                                         {"queue.buffering.max.kbytes", "65536"}};
  char why[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
    if (rd_kafka_conf_set(conf, props[i][0], props[i][1], why, sizeof why) != RD_KAFKA_CONF_OK)
      goto bad;
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, why, sizeof why) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "linger.ms", linger, why, sizeof why) != RD_KAFKA_CONF_OK)
    goto bad;
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (rk) return rk;
bad:
  fprintf(stderr, "fhirx-bench-probe: %s\n", why);
  exit(2);
}

/* One resource: dump compact and produce, waiting (polling) while the local
 * queue is full, as fhirx's deferral does. */
static void publish(rd_kafka_t *rk, const char *topic, const char *tenant, json_t *res) {
  const char *type = json_string_value(json_object_get(res, "resourceType"));
  const char *id = json_string_value(json_object_get(res, "id"));
  if (!type || !id) return;
  char key[512];
  snprintf(key, sizeof key, "%s/%s/%s", tenant, type, id);
  char *value = json_dumps(res, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!value) return;
  size_t len = strlen(value);
  for (;;) {
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE(value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END);
    if (!err) break;
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      free(value);
      failed++;
      return;
    }
    rd_kafka_poll(rk, 10);
  }
  rd_kafka_poll(rk, 0);
}

int main(int argc, char **argv) {
  const char *bootstrap = NULL, *topic = "fhirx.probe", *mode = "pages", *file = NULL;
  const char *tenant = "probe", *linger = "5";
  long repeat = 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--bootstrap") == 0 && i + 1 < argc) bootstrap = argv[++i];
    else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) topic = argv[++i];
    else if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) mode = argv[++i];
    else if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) tenant = argv[++i];
    else if (strcmp(argv[i], "--linger-ms") == 0 && i + 1 < argc) linger = argv[++i];
    else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = strtol(argv[++i], NULL, 10);
    else if (argv[i][0] != '-' && !file) file = argv[i];
    else {
      fprintf(stderr, "usage: fhirx-bench-probe --bootstrap HOST:PORT [--topic T] "
                      "[--mode pages|ndjson] [--repeat N] [--linger-ms MS] FILE\n");
      return 2;
    }
  }
  int ndjson = strcmp(mode, "ndjson") == 0;
  if (!bootstrap || !file || repeat < 1 || (!ndjson && strcmp(mode, "pages") != 0)) {
    fprintf(stderr, "fhirx-bench-probe: --bootstrap and FILE are required; --mode is pages or ndjson\n");
    return 2;
  }
  line *lines = NULL;
  size_t n = 0;
  if (load(file, &lines, &n) != 0) {
    fprintf(stderr, "fhirx-bench-probe: cannot read %s\n", file);
    return 1;
  }
  rd_kafka_t *rk = producer(bootstrap, linger);
  /* Connect and learn the topic's partitions before measuring. */
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  rd_kafka_metadata(rk, 0, rkt, &md, 10000);
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);

  double cpu0 = cpu_seconds(), wall0 = wall_seconds();
  long long resources = 0;
  for (long r = 0; r < repeat; r++) {
    for (size_t i = 0; i < n; i++) {
      json_error_t jerr;
      json_t *doc = json_loadb(lines[i].text, lines[i].len, 0, &jerr);
      if (!doc) continue;
      const char *rt = json_string_value(json_object_get(doc, "resourceType"));
      if (!ndjson && rt && strcmp(rt, "Bundle") == 0) {
        size_t k;
        json_t *e;
        json_array_foreach(json_object_get(doc, "entry"), k, e) {
          json_t *res = json_object_get(e, "resource");
          const char *et = json_string_value(json_object_get(res, "resourceType"));
          if (!et || strcmp(et, "OperationOutcome") == 0) continue;
          publish(rk, topic, tenant, res);
          resources++;
        }
      } else {
        publish(rk, topic, tenant, doc);
        resources++;
      }
      json_decref(doc);
    }
  }
  while (rd_kafka_outq_len(rk) > 0) rd_kafka_poll(rk, 50);
  double cpu = cpu_seconds() - cpu0, wall = wall_seconds() - wall0;
  printf("{\"mode\": \"%s\", \"inputs\": %zu, \"repeat\": %ld, \"resources\": %lld, "
         "\"delivered\": %lld, \"failed\": %lld, \"cpu_seconds\": %.3f, \"wall_seconds\": %.3f, "
         "\"cpu_us_per_resource\": %.2f}\n",
         mode, n, repeat, resources, delivered, failed, cpu, wall,
         resources ? cpu / (double)resources * 1e6 : 0.0);
  rd_kafka_destroy(rk);
  for (size_t i = 0; i < n; i++) free(lines[i].text);
  free(lines);
  return failed ? 1 : 0;
}
