/*
 * queue_internal.h - lib/queue private helpers shared by its source files.
 */
#ifndef MX_QUEUE_INTERNAL_H
#define MX_QUEUE_INTERNAL_H

#include <stdint.h>

#include "queue.h"

/** "[a.b.c.d]" (whole string) into a host-order address.  0 or -EINVAL. */
int qi_parse_literal(const char *s, uint32_t *addr);
/** FNV-1a 64 over the ASCII-lowercased name. */
uint64_t qi_name_hash(const char *name);
/** Copy s into buf (cap) without CR, LF or other controls; length. */
size_t qi_sanitize(char *buf, size_t cap, const char *s);

#endif
