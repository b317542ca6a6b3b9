/* The control API of fhirx-kafka-mock: JSON over HTTP on 127.0.0.1 (see
 * docs/embedded-kafka.md for every route). One libmicrohttpd thread serves
 * all requests, so control actions are applied one at a time in arrival
 * order and fxm_cluster's bookkeeping needs no lock. */
#ifndef FXM_HTTP_H
#define FXM_HTTP_H

#include "tests/kafka/mock_cluster.h"

#include <stddef.h>

typedef struct fxm_http fxm_http;

/* Starts serving on 127.0.0.1:port (0 = a free port). The cluster is borrowed
 * and must outlive the server. Returns NULL with a reason in err. */
fxm_http *fxm_http_start(fxm_cluster *cluster, unsigned port, char *err, size_t errlen);
/* The port actually bound. */
unsigned fxm_http_port(const fxm_http *h);
/* Stops the server thread (waiting for a request in progress) and frees h.
 * NULL is fine. */
void fxm_http_stop(fxm_http *h);

#endif
