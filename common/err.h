/* Error reporting shared by every fhirx module.
 *
 * Functions return 0 on success or a negative FX_E* code. When they fail they
 * also write a sentence for the operator into a caller-provided fx_err: what
 * failed, naming the file, field, tenant or URL involved, and what to do about
 * it. A NULL fx_err is allowed everywhere and simply drops the text. */
#ifndef FX_ERR_H
#define FX_ERR_H

#include <stddef.h>

enum {
  FX_OK = 0,
  FX_EINVAL = -1,     /* bad input: config, arguments, a malformed document */
  FX_ENOMEM = -2,
  FX_EIO = -3,        /* file system or network I/O */
  FX_EPERM = -4,      /* e.g. a private key readable by others */
  FX_ECRYPTO = -5,    /* OpenSSL refused an operation */
  FX_EAUTH = -6,      /* the authorization server refused us */
  FX_ETRANSIENT = -7, /* worth retrying later: timeouts, 5xx, HTML error pages */
  FX_EHTTP = -8,      /* an HTTP status that is not success and not retryable */
  FX_ENOTFOUND = -9,
  FX_ECANCELED = -10,
  FX_ETOOLARGE = -11,
  FX_EUNSUPPORTED = -12,
  FX_EAGAIN = -13     /* not now (a full queue): try the same again later */
};

typedef struct fx_err {
  int code;
  char msg[768];
} fx_err;

/* Formats into err->msg and stores code; returns code so callers can write
 * `return fx_err_set(err, FX_EINVAL, "...")`. */
int fx_err_set(fx_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (used to add context on the way up). */
void fx_err_prefix(fx_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void fx_err_clear(fx_err *err);

/* Short stable name of a code, e.g. "EINVAL"; for logs and tests. */
const char *fx_err_name(int code);

#endif
