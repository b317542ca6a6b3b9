/* URL checks built on curl's URL API. */
#ifndef FX_URL_H
#define FX_URL_H

#include <stddef.h>

/* 1 if url has the same scheme, host and port as base and its path is base's
 * path or below it (segment-wise: /r4/t1 does not cover /r4/t10); else 0.
 * This is the test a URL must pass before it may carry a tenant's token. */
int fx_url_within(const char *url, const char *base);

/* Copies url into out without query values and fragment ("?patient=&_count=")
 * so it can be logged or published without patient ids or page secrets. */
void fx_url_redact(const char *url, char *out, size_t size);

/* For a redirect status (300-399), a sentence fragment for error messages into
 * out: "a redirect to <location without query values>, not followed (...)";
 * for any other status "". location may be NULL (not sent, or not known). */
void fx_url_redirect_note(long status, const char *location, char *out, size_t size);

#endif
