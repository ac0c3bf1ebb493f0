/*
 * cfg.c - INI configuration reader.
 *
 * The whole file is read into one buffer that the entries point into, so a
 * parsed file is two allocations plus two arrays.  Every entry keeps its
 * line number: validation happens later, in whoever knows the schema, and
 * reports "file:line: message".
 */
#include "core.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#define CFG_MAX_FILE (4u << 20)

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

static int grow(void **arr, size_t *cap, size_t count, size_t elem)
{
	if (count < *cap)
		return 0;
	size_t ncap = *cap ? *cap * 2 : 16;
	void *n = realloc(*arr, ncap * elem);
	if (n == NULL)
		return -ENOMEM;
	*arr = n;
	*cap = ncap;
	return 0;
}

static bool valid_name(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.' && *s != '-')
			return false;
	return true;
}

int cfg_parse_string(const char *text, const char *name, struct cfg_file **out, char *err,
		     size_t errlen)
{
	struct cfg_file *cf = calloc(1, sizeof(*cf));
	size_t ecap = 0, scap = 0;
	const char *sect = NULL, *label = NULL;
	int lineno = 0, rc = 0;

	if (cf == NULL || (cf->text = strdup(text)) == NULL || (cf->path = strdup(name)) == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	for (char *line = cf->text; line != NULL;) {
		char *next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		lineno++;
		char *s = trim(line);
		line = next;
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *end = strrchr(s, ']');
			if (end == NULL || trim(end + 1)[0] != '\0') {
				snprintf(err, errlen, "%s:%d: malformed section header", name, lineno);
				rc = -EINVAL;
				goto fail;
			}
			*end = '\0';
			char *body = trim(s + 1);
			char *q = strchr(body, '"');
			label = NULL;
			if (q != NULL) {
				char *qe = strrchr(q + 1, '"');
				if (qe == NULL || qe[1] != '\0' || qe == q + 1) {
					snprintf(err, errlen, "%s:%d: malformed section label", name,
						 lineno);
					rc = -EINVAL;
					goto fail;
				}
				*qe = '\0';
				label = q + 1;
				*q = '\0';
				body = trim(body);
			}
			if (!valid_name(body)) {
				snprintf(err, errlen, "%s:%d: bad section name '%s'", name, lineno, body);
				rc = -EINVAL;
				goto fail;
			}
			sect = body;
			if ((rc = grow((void **)&cf->sections, &scap, cf->section_count,
				       sizeof(*cf->sections))) < 0)
				goto fail;
			cf->sections[cf->section_count++] =
				(struct cfg_section){.name = sect, .label = label, .line = lineno};
			continue;
		}
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			snprintf(err, errlen, "%s:%d: expected 'key = value'", name, lineno);
			rc = -EINVAL;
			goto fail;
		}
		if (sect == NULL) {
			snprintf(err, errlen, "%s:%d: key outside of any [section]", name, lineno);
			rc = -EINVAL;
			goto fail;
		}
		*eq = '\0';
		char *key = trim(s), *val = trim(eq + 1);
		if (!valid_name(key)) {
			snprintf(err, errlen, "%s:%d: bad key name '%s'", name, lineno, key);
			rc = -EINVAL;
			goto fail;
		}
		if ((rc = grow((void **)&cf->entries, &ecap, cf->entry_count,
			       sizeof(*cf->entries))) < 0)
			goto fail;
		cf->entries[cf->entry_count++] = (struct cfg_entry){
			.section = sect, .label = label, .key = key, .value = val, .line = lineno};
	}
	*out = cf;
	return 0;
fail:
	if (rc == -ENOMEM)
		snprintf(err, errlen, "%s: out of memory", name);
	cfg_free(cf);
	return rc;
}

int cfg_parse_file(const char *path, struct cfg_file **out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -errno;
	}
	char *buf = malloc(CFG_MAX_FILE + 1);
	size_t n = buf ? fread(buf, 1, CFG_MAX_FILE + 1, f) : 0;
	int bad = ferror(f);
	fclose(f);
	if (buf == NULL || bad || n > CFG_MAX_FILE) {
		snprintf(err, errlen, "%s: %s", path,
			 buf == NULL ? "out of memory" : bad ? "read error" : "file too large");
		free(buf);
		return -EINVAL;
	}
	buf[n] = '\0';
	if (memchr(buf, '\0', n) != NULL) {
		snprintf(err, errlen, "%s: contains a NUL byte", path);
		free(buf);
		return -EINVAL;
	}
	int rc = cfg_parse_string(buf, path, out, err, errlen);
	free(buf);
	return rc;
}

void cfg_free(struct cfg_file *cf)
{
	if (cf == NULL)
		return;
	free(cf->entries);
	free(cf->sections);
	free(cf->text);
	free(cf->path);
	free(cf);
}

static bool label_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

struct cfg_entry *cfg_get(struct cfg_file *cf, const char *section, const char *label,
			  const char *key)
{
	struct cfg_entry *found = NULL;
	for (size_t i = 0; i < cf->entry_count; i++) {
		struct cfg_entry *e = &cf->entries[i];
		if (strcmp(e->section, section) == 0 && label_eq(e->label, label) &&
		    strcmp(e->key, key) == 0) {
			e->used = true;
			found = e;
		}
	}
	return found;
}

int cfg_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*end != '\0')
		return -EINVAL;
	if (errno == ERANGE || v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

static int parse_scaled(const char *s, const char *const *units, const uint64_t *scale,
			size_t nunits, uint64_t dflt, uint64_t *out)
{
	char *end;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	uint64_t mul = dflt;
	if (*end != '\0') {
		size_t i;
		for (i = 0; i < nunits; i++)
			if (strcmp(end, units[i]) == 0)
				break;
		if (i == nunits)
			return -EINVAL;
		mul = scale[i];
	}
	if (v != 0 && mul > UINT64_MAX / v)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

int cfg_parse_size(const char *s, uint64_t *out)
{
	static const char *const units[] = {"K", "k", "KB", "KiB", "M", "MB", "MiB",
					    "G", "GB", "GiB", "B"};
	static const uint64_t scale[] = {1ull << 10, 1ull << 10, 1ull << 10, 1ull << 10,
					 1ull << 20, 1ull << 20, 1ull << 20, 1ull << 30,
					 1ull << 30, 1ull << 30, 1};
	return parse_scaled(s, units, scale, 11, 1, out);
}

int cfg_parse_duration_us(const char *s, uint64_t *out)
{
	static const char *const units[] = {"us", "ms", "s", "m", "h", "d"};
	static const uint64_t scale[] = {1, 1000, 1000000ull, 60000000ull, 3600000000ull,
					 86400000000ull};
	return parse_scaled(s, units, scale, 6, 1000000ull, out);
}

int cfg_parse_bool(const char *s, bool *out)
{
	if (!strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "on") || !strcmp(s, "1"))
		*out = true;
	else if (!strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "off") || !strcmp(s, "0"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

int cfg_parse_ipv4(const char *s, uint32_t *addr)
{
	struct in_addr a;
	if (inet_pton(AF_INET, s, &a) != 1)
		return -EINVAL;
	*addr = ntohl(a.s_addr);
	return 0;
}

int cfg_parse_ipv4_prefix(const char *s, uint32_t *addr, uint8_t *len)
{
	char buf[32];
	const char *slash = strchr(s, '/');
	if (slash == NULL || (size_t)(slash - s) >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, slash - s);
	buf[slash - s] = '\0';
	uint64_t l;
	int rc = cfg_parse_ipv4(buf, addr);
	if (rc == 0)
		rc = cfg_parse_u64(slash + 1, 0, 32, &l);
	if (rc == 0)
		*len = (uint8_t)l;
	return rc;
}

void cfg_error(struct cfg_report *r, const struct cfg_file *cf, int line, const char *fmt, ...)
{
	va_list ap;
	size_t room = sizeof(r->text) - r->len;
	int n;

	r->count++;
	if (room < 2)
		return;
	if (line > 0)
		n = snprintf(r->text + r->len, room, "%s:%d: ", cf->path, line);
	else if (line == 0)
		n = snprintf(r->text + r->len, room, "%s: ", cf->path);
	else
		n = 0; /* the message carries its own location */
	if (n < 0 || (size_t)n >= room)
		goto full;
	r->len += (size_t)n;
	room -= (size_t)n;
	va_start(ap, fmt);
	n = vsnprintf(r->text + r->len, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n + 1 >= room)
		goto full;
	r->len += (size_t)n;
	r->text[r->len++] = '\n';
	r->text[r->len] = '\0';
	return;
full:
	r->len = sizeof(r->text) - 1;
	r->text[r->len] = '\0';
}

static bool section_known(const char *name, const char *const *known)
{
	for (; *known != NULL; known++) {
		size_t n = strlen(*known);
		if ((*known)[n - 1] == '.' ? strncmp(name, *known, n) == 0 && name[n] != '\0'
					   : strcmp(name, *known) == 0)
			return true;
	}
	return false;
}

void cfg_check_unknown(struct cfg_file *cf, const char *const *known, struct cfg_report *r)
{
	for (size_t i = 0; i < cf->section_count; i++)
		if (!section_known(cf->sections[i].name, known))
			cfg_error(r, cf, cf->sections[i].line, "unknown section [%s]",
				  cf->sections[i].name);
	for (size_t i = 0; i < cf->entry_count; i++) {
		struct cfg_entry *e = &cf->entries[i];
		if (!e->used && section_known(e->section, known))
			cfg_error(r, cf, e->line, "unknown key '%s' in [%s]", e->key, e->section);
	}
}

void cfg_key_u64(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		 uint64_t min, uint64_t max, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	uint64_t v;
	if (e == NULL)
		return;
	int rc = cfg_parse_u64(e->value, min, max, &v);
	if (rc == -ERANGE)
		cfg_error(r, cf, e->line, "%s = %s: out of range %llu..%llu", key, e->value,
			  (unsigned long long)min, (unsigned long long)max);
	else if (rc != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a number", key, e->value);
	else
		*out = v;
}

void cfg_key_size(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		  uint64_t min, uint64_t max, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	uint64_t v;
	if (e == NULL)
		return;
	if (cfg_parse_size(e->value, &v) != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a size (e.g. 256K, 10M)", key, e->value);
	else if (v < min || v > max)
		cfg_error(r, cf, e->line, "%s = %s: out of range %llu..%llu bytes", key, e->value,
			  (unsigned long long)min, (unsigned long long)max);
	else
		*out = v;
}

void cfg_key_duration(struct cfg_file *cf, struct cfg_report *r, const char *sect,
		      const char *key, uint64_t min_us, uint64_t max_us, uint64_t *out)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	uint64_t v;
	if (e == NULL)
		return;
	if (cfg_parse_duration_us(e->value, &v) != 0)
		cfg_error(r, cf, e->line, "%s = %s: not a duration (e.g. 200ms, 30s, 5m, 4h, 5d)",
			  key, e->value);
	else if (v < min_us || v > max_us)
		cfg_error(r, cf, e->line, "%s = %s: out of range", key, e->value);
	else
		*out = v;
}

void cfg_key_str(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		 char *out, size_t outlen)
{
	struct cfg_entry *e = cfg_get(cf, sect, NULL, key);
	if (e == NULL)
		return;
	if (strlen(e->value) >= outlen)
		cfg_error(r, cf, e->line, "%s: value too long (max %zu)", key, outlen - 1);
	else
		strcpy(out, e->value);
}
