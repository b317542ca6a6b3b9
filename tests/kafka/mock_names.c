#include "tests/kafka/mock_names.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* librdkafka keeps its RD_KAFKAP_* ApiKey constants in a private header, so
 * the table lists the Kafka protocol ApiKeys the way the protocol guide
 * numbers them. It covers every request a librdkafka client sends; the mock
 * answers only a subset (anything else is refused at ApiVersion time). */
static const struct api_name {
  const char *name;
  int16_t key;
} api_names[] = {
    {"Produce", 0},
    {"Fetch", 1},
    {"ListOffsets", 2},
    {"Metadata", 3},
    {"LeaderAndIsr", 4},
    {"StopReplica", 5},
    {"UpdateMetadata", 6},
    {"ControlledShutdown", 7},
    {"OffsetCommit", 8},
    {"OffsetFetch", 9},
    {"FindCoordinator", 10},
    {"JoinGroup", 11},
    {"Heartbeat", 12},
    {"LeaveGroup", 13},
    {"SyncGroup", 14},
    {"DescribeGroups", 15},
    {"ListGroups", 16},
    {"SaslHandshake", 17},
    {"ApiVersions", 18},
    {"CreateTopics", 19},
    {"DeleteTopics", 20},
    {"DeleteRecords", 21},
    {"InitProducerId", 22},
    {"OffsetForLeaderEpoch", 23},
    {"AddPartitionsToTxn", 24},
    {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},
    {"WriteTxnMarkers", 27},
    {"TxnOffsetCommit", 28},
    {"DescribeAcls", 29},
    {"CreateAcls", 30},
    {"DeleteAcls", 31},
    {"DescribeConfigs", 32},
    {"AlterConfigs", 33},
    {"AlterReplicaLogDirs", 34},
    {"DescribeLogDirs", 35},
    {"SaslAuthenticate", 36},
    {"CreatePartitions", 37},
    {"CreateDelegationToken", 38},
    {"RenewDelegationToken", 39},
    {"ExpireDelegationToken", 40},
    {"DescribeDelegationToken", 41},
    {"DeleteGroups", 42},
    {"ElectLeaders", 43},
    {"IncrementalAlterConfigs", 44},
    {"AlterPartitionReassignments", 45},
    {"ListPartitionReassignments", 46},
    {"OffsetDelete", 47},
};

#define N_API_NAMES (sizeof api_names / sizeof api_names[0])

int fxm_api_key(const char *name, int16_t *key) {
  size_t len = strlen(name);
  static const char suffix[] = "Request";
  if (len > sizeof suffix - 1 && strcasecmp(name + len - (sizeof suffix - 1), suffix) == 0)
    len -= sizeof suffix - 1;
  for (size_t i = 0; i < N_API_NAMES; i++) {
    if (strlen(api_names[i].name) == len && strncasecmp(api_names[i].name, name, len) == 0) {
      *key = api_names[i].key;
      return 0;
    }
  }
  return -1;
}

const char *fxm_api_name(int16_t key) {
  for (size_t i = 0; i < N_API_NAMES; i++)
    if (api_names[i].key == key) return api_names[i].name;
  return NULL;
}

void fxm_api_list(char *buf, size_t len) {
  size_t used = 0;
  if (len == 0) return;
  buf[0] = '\0';
  for (size_t i = 0; i < N_API_NAMES && used < len; i++) {
    int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", api_names[i].name);
    if (n < 0) return;
    used += (size_t)n;
  }
}

/* rd_kafka_get_err_descs() is librdkafka's own table: it is indexed by code
 * offset and has NULL names in the gaps, so each lookup is a linear scan over
 * a few hundred entries (only done per control request). */
int fxm_error_code(const char *name, rd_kafka_resp_err_t *err) {
  static const char prefix[] = "RD_KAFKA_RESP_ERR_";
  if (strncasecmp(name, prefix, sizeof prefix - 1) == 0) name += sizeof prefix - 1;
  const struct rd_kafka_err_desc *descs;
  size_t cnt;
  rd_kafka_get_err_descs(&descs, &cnt);
  for (size_t i = 0; i < cnt; i++) {
    if (descs[i].name && strcasecmp(descs[i].name, name) == 0) {
      *err = descs[i].code;
      return 0;
    }
  }
  return -1;
}

int fxm_error_known(long code) {
  const struct rd_kafka_err_desc *descs;
  size_t cnt;
  rd_kafka_get_err_descs(&descs, &cnt);
  for (size_t i = 0; i < cnt; i++)
    if (descs[i].name && (long)descs[i].code == code) return 0;
  return -1;
}
