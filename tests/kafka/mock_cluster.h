/* The mock Kafka cluster fhirx-kafka-mock hosts, plus the bookkeeping the
 * control API reports (which brokers are down, injected RTTs) that
 * librdkafka's mock API can set but not read back.
 *
 * Threads: fxm_cluster_new/free run on the main thread before the control
 * server starts and after it stops; every other function runs on the control
 * server's single thread. So the bookkeeping needs no lock. The librdkafka
 * mock functions themselves are thread-safe (they post to the mock's own
 * thread and wait for it). */
#ifndef FXM_CLUSTER_H
#define FXM_CLUSTER_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FXM_MAX_BROKERS 32
#define FXM_MAX_PARTITIONS 1024

typedef struct fxm_cluster fxm_cluster;

/* Creates a cluster of `brokers` brokers (ids 1..brokers). `default_partitions`
 * is used by fxm_cluster_create_topic when it is given 0. `verbose` turns on
 * librdkafka's mock debug logging. On failure returns NULL with a reason in
 * err. The result is owned by the caller: fxm_cluster_free. */
fxm_cluster *fxm_cluster_new(int brokers, int default_partitions, bool verbose, char *err,
                             size_t errlen);
/* Destroys the mock cluster (closing every client connection) and the
 * librdkafka handle hosting it. NULL is fine. */
void fxm_cluster_free(fxm_cluster *c);

/* The bootstrap.servers string clients use; borrowed, lives as long as c. */
const char *fxm_cluster_bootstraps(const fxm_cluster *c);
int fxm_cluster_broker_count(const fxm_cluster *c);
int fxm_cluster_default_partitions(const fxm_cluster *c);

/* Topic names: 1-249 characters of [a-zA-Z0-9._-], not "." or "..", as Kafka
 * requires. Returns 0 or -1 with a reason in err. */
int fxm_topic_name_check(const char *name, char *err, size_t errlen);

/* Creates a topic with `partitions` partitions (0: the default) and
 * replication factor min(3, brokers). Returns 0, 1 if it already existed
 * (with the partition count it has, which may differ), or -1 with a reason. */
int fxm_cluster_create_topic(fxm_cluster *c, const char *name, int partitions, char *err,
                             size_t errlen);

/* Makes broker `broker` the leader of `partition` of `topic`, or of every
 * partition when partition is -1 (the partitions are read from the
 * cluster's metadata, so the topic must exist: this never creates one).
 * Clients learn about it at their next metadata refresh, e.g. after a
 * NOT_LEADER_FOR_PARTITION answer or when they start. Returns the number of
 * partitions changed, or -1 with a reason in err. */
int fxm_cluster_set_leader(fxm_cluster *c, const char *topic, int32_t partition, int32_t broker,
                           char *err, size_t errlen);

/* Broker `id` (1..brokers), or every broker when id is -1, stops or starts
 * accepting connections; clients connected to it are disconnected. Leaders do
 * not move (the mock never elects new leaders). Returns 0 or -1 + reason. */
int fxm_cluster_set_up(fxm_cluster *c, int32_t id, bool up, char *err, size_t errlen);
/* Delays every response from broker `id` (-1: all) by rtt_ms. */
int fxm_cluster_set_rtt(fxm_cluster *c, int32_t id, int rtt_ms, char *err, size_t errlen);

/* Makes the next `n` requests of type `api_key` fail with errs[0..n-1] in
 * order. broker == 0: on whichever broker receives them (cluster-wide stack);
 * otherwise only on that broker, each response also delayed by rtt_ms (a
 * broker's own stack is consulted before the cluster's). */
int fxm_cluster_push_errors(fxm_cluster *c, int16_t api_key, const rd_kafka_resp_err_t *errs,
                            size_t n, int32_t broker, int rtt_ms, char *err, size_t errlen);
/* Drops what is left of the cluster-wide error stack for api_key. */
void fxm_cluster_clear_errors(fxm_cluster *c, int16_t api_key);

/* The GET /status document (new reference): bootstrap, brokers with their
 * up/rtt state, and topics with per-partition leader and offsets, read with a
 * short-lived client of our own. Returns NULL only when out of memory. */
json_t *fxm_cluster_status(fxm_cluster *c);

#endif
