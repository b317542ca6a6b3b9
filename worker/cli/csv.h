/* One CSV record, split in place (RFC 4180, without quoted line breaks). */
#ifndef FX_CSV_H
#define FX_CSV_H

#include <stddef.h>

/* Splits line (without its line terminator; a trailing '\r' is dropped) at
 * commas. A field may be quoted with '"', a doubled quote inside standing for
 * one; spaces around unquoted fields are trimmed. fields[i] point into line,
 * which is modified. Returns the number of fields, or -1 with *why naming
 * the problem (an unterminated quote, text after a closing quote, more than
 * max fields). */
int fx_csv_split(char *line, char **fields, size_t max, const char **why);

#endif
