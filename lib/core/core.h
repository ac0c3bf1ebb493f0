/*
 * core.h - configuration, logging, time and allocation helpers shared by every
 * mxrelay library and program.
 *
 * Configuration: cfg_parse_file() reads an INI file into a flat list of
 * entries that remember file:line, so that whoever validates a key can report
 * "file:line: message".  Sections are "[name]" or "[name \"label\"]"
 * (e.g. [dkim "example.com"]).  Value parsers (cfg_parse_*) return 0 or a
 * negative errno and never accept trailing garbage.
 *
 * Logging: mx_log() writes one line per call with one write(2), so lines from
 * several lcores never interleave.  No log line per packet.
 */
#ifndef MX_CORE_H
#define MX_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration ---------------------------------------------------- */

struct cfg_entry {
	const char *section; /* "smtp", "port.0", "dkim" */
	const char *label;   /* "example.com" for [dkim "example.com"], else NULL */
	const char *key;
	const char *value; /* trimmed; never NULL */
	int line;
	bool used; /* set by cfg_get*(); unused entries are unknown keys */
};

struct cfg_section {
	const char *name;
	const char *label;
	int line;
};

struct cfg_file {
	char *path;
	struct cfg_entry *entries;
	size_t entry_count;
	struct cfg_section *sections;
	size_t section_count;
	char *text; /* owns the strings the entries point to */
};

/**
 * Parse an INI file.  On a syntax error returns -EINVAL and writes
 * "file:line: message" into err.  The caller frees *out with cfg_free().
 */
int cfg_parse_file(const char *path, struct cfg_file **out, char *err, size_t errlen);
/** Same, from memory; name is used in messages. */
int cfg_parse_string(const char *text, const char *name, struct cfg_file **out, char *err,
		     size_t errlen);
void cfg_free(struct cfg_file *cf);

/** Last entry for section/label/key (label may be NULL), marked used; NULL if absent. */
struct cfg_entry *cfg_get(struct cfg_file *cf, const char *section, const char *label,
			  const char *key);

/**
 * Collected configuration errors: every module validates its own sections
 * and adds "file:line: message" lines here, so --check-config reports all
 * problems at once.
 */
struct cfg_report {
	char text[8192];
	size_t len;
	unsigned count;
};

/**
 * Add "file:line: message" (line > 0), "file: message" (line 0), or the
 * message alone (line < 0: it already says where, e.g. a library's error).
 */
void cfg_error(struct cfg_report *r, const struct cfg_file *cf, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/**
 * Report every entry that no module read (unknown key) and every section
 * whose name is not in known (NULL-terminated; "port." matches "port.0").
 */
void cfg_check_unknown(struct cfg_file *cf, const char *const *known, struct cfg_report *r);

/*
 * Key readers for validators: each reads section/key (no label), marks it
 * used, leaves *out unchanged when the key is absent, and reports a bad
 * value as "file:line: key = value: reason".  Sizes and durations take the
 * units of cfg_parse_size / cfg_parse_duration_us.
 */
void cfg_key_u64(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		 uint64_t min, uint64_t max, uint64_t *out);
void cfg_key_size(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		  uint64_t min, uint64_t max, uint64_t *out);
void cfg_key_duration(struct cfg_file *cf, struct cfg_report *r, const char *sect,
		      const char *key, uint64_t min_us, uint64_t max_us, uint64_t *out);
void cfg_key_str(struct cfg_file *cf, struct cfg_report *r, const char *sect, const char *key,
		 char *out, size_t outlen);

/* Value parsers: 0 on success, -EINVAL on syntax, -ERANGE out of range. */
int cfg_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/** Sizes: 512, 64K, 10M, 2G (binary multiples). */
int cfg_parse_size(const char *s, uint64_t *out);
/** Durations to microseconds: 200us, 5ms, 30s, 1m, 4h, 5d; a bare number is seconds. */
int cfg_parse_duration_us(const char *s, uint64_t *out);
int cfg_parse_bool(const char *s, bool *out);
/** "A.B.C.D" into host-order address. */
int cfg_parse_ipv4(const char *s, uint32_t *addr);
/** "A.B.C.D/len" into host-order address and prefix length. */
int cfg_parse_ipv4_prefix(const char *s, uint32_t *addr, uint8_t *len);

/* ---- host interfaces (control plane only) ----------------------------- */

/**
 * Give kernel interface ifindex the address addr/prefix_len (host order)
 * and bring it up: the host side of a net_tap port.  0 or -errno.
 */
int mx_hostif_set_addr(unsigned ifindex, uint32_t addr, uint8_t prefix_len);

/* ---- logging ---------------------------------------------------------- */

enum mx_log_level { MX_LOG_ERR = 0, MX_LOG_WARN, MX_LOG_INFO, MX_LOG_DEBUG };

void mx_log_set_level(enum mx_log_level level);
enum mx_log_level mx_log_get_level(void);
/** Log to this file instead of stderr; NULL or "-" means stderr.  0 or -errno. */
int mx_log_open(const char *path);
int mx_log_parse_level(const char *s, enum mx_log_level *out);
void mx_log(enum mx_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mx_vlog(enum mx_log_level level, const char *fmt, va_list ap);

#define MX_ERR(...) mx_log(MX_LOG_ERR, __VA_ARGS__)
#define MX_WARN(...) mx_log(MX_LOG_WARN, __VA_ARGS__)
#define MX_INFO(...) mx_log(MX_LOG_INFO, __VA_ARGS__)
#define MX_DEBUG(...)                                                                              \
	do {                                                                                       \
		if (mx_log_get_level() >= MX_LOG_DEBUG)                                            \
			mx_log(MX_LOG_DEBUG, __VA_ARGS__);                                         \
	} while (0)

/* ---- time ------------------------------------------------------------- */

/** Monotonic microseconds. */
uint64_t mx_now_us(void);
/** Wall-clock seconds since the epoch. */
int64_t mx_wall_s(void);

/* ---- text ------------------------------------------------------------- */

#define MX_U64_DEC_MAX 20 /* digits of UINT64_MAX */

/** Decimal digits of v into out[0..n) (no NUL), for formatting without printf; returns n. */
size_t mx_u64_dec(uint64_t v, char out[MX_U64_DEC_MAX]);

/* ---- allocation --------------------------------------------------------- */

/**
 * Route OpenSSL's allocations through jemalloc (the process allocator).
 * Call once, before any other OpenSSL call.  0 or -1 if OpenSSL already
 * allocated.
 */
int mx_alloc_init(void);

/*
 * malloc'ed and written whole with zeros, so its pages are resident now
 * and not faulted in by their first use on a poll loop (the prewarmed
 * pools).  GCC folds a malloc followed by a memset of 0 over the same size
 * into calloc, and calloc leaves fresh pages untouched: the empty asm
 * between them keeps the write.
 */
static inline void *mx_malloc_written(size_t n)
{
	void *p = malloc(n);
	if (p != NULL) {
		__asm__ volatile("" : : "r"(p) : "memory");
		memset(p, 0, n);
	}
	return p;
}

#endif
