#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int fx_err_set(fx_err *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

void fx_err_prefix(fx_err *err, const char *fmt, ...) {
  if (!err) return;
  char prefix[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  char old[sizeof err->msg];
  memcpy(old, err->msg, sizeof old);
  snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
}

void fx_err_clear(fx_err *err) {
  if (!err) return;
  err->code = 0;
  err->msg[0] = '\0';
}

const char *fx_err_name(int code) {
  switch (code) {
  case FX_OK: return "OK";
  case FX_EINVAL: return "EINVAL";
  case FX_ENOMEM: return "ENOMEM";
  case FX_EIO: return "EIO";
  case FX_EPERM: return "EPERM";
  case FX_ECRYPTO: return "ECRYPTO";
  case FX_EAUTH: return "EAUTH";
  case FX_ETRANSIENT: return "ETRANSIENT";
  case FX_EHTTP: return "EHTTP";
  case FX_ENOTFOUND: return "ENOTFOUND";
  case FX_ECANCELED: return "ECANCELED";
  case FX_ETOOLARGE: return "ETOOLARGE";
  case FX_EUNSUPPORTED: return "EUNSUPPORTED";
  case FX_EAGAIN: return "EAGAIN";
  default: return "E?";
  }
}
