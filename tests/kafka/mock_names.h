/* Names the control API accepts for Kafka protocol requests ("Produce") and
 * error codes ("NOT_LEADER_FOR_PARTITION"), mapped to the numbers the mock
 * cluster's error injection takes. */
#ifndef FXM_NAMES_H
#define FXM_NAMES_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

/* Kafka protocol ApiKey for a request name such as "Produce" or "JoinGroup"
 * (case-insensitive; a "Request" suffix is allowed). Returns 0 and sets *key,
 * or -1 for an unknown name. */
int fxm_api_key(const char *name, int16_t *key);
/* The name for an ApiKey, or NULL if it is not in the table. Static string. */
const char *fxm_api_name(int16_t key);
/* Writes the known request names, comma-separated, for error messages. */
void fxm_api_list(char *buf, size_t len);

/* librdkafka error code for a name as printed by rd_kafka_err2name(), e.g.
 * "NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT" or the internal
 * "_TRANSPORT" (which makes the mock broker drop the connection). A
 * "RD_KAFKA_RESP_ERR_" prefix is allowed; case-insensitive. Returns 0 and
 * sets *err, or -1 for an unknown name. */
int fxm_error_code(const char *name, rd_kafka_resp_err_t *err);
/* 0 if `code` is a known librdkafka error code (including NO_ERROR). */
int fxm_error_known(long code);

#endif
