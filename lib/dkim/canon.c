/*
 * canon.c - RFC 6376 section 3.4 canonicalisation, body (streaming) and header.
 *
 * Body, simple (3.4.3): bytes pass unchanged, trailing empty lines are
 * dropped, a missing final CRLF is added, an empty body becomes one CRLF.
 * Body, relaxed (3.4.4): additionally WSP at the end of a line is dropped and
 * WSP runs inside a line become one SP; an empty body stays empty.
 *
 * Two decisions are only possible later than the byte that raises them: a
 * WSP run is trailing only if CRLF follows, and a CRLF is a trailing empty
 * line only if the body ends before more content.  So the state keeps a
 * "WSP pending" flag and a count of pending CRLFs, and flushes them when a
 * content byte arrives.  Runs of bytes that need no change are found 32, 16
 * or 8 bytes at a time (AVX2, SSE2 or word-at-a-time, chosen once from the
 * CPU) and passed to the sink as whole spans, so ordinary text costs well
 * under a cycle per byte and the hash sees few, large updates; a WSP run is
 * consumed in one step, and pending empty lines are only a count.
 *
 * An unterminated last line keeps its (compressed) trailing WSP before the
 * added CRLF, as dkimpy and the RFC's order of steps do.
 */
#include "dkim_canon.h"

#include <errno.h>
#include <string.h>

static inline bool is_wsp(uint8_t b)
{
	return b == ' ' || b == '\t';
}

static void stage_flush(struct dkim_body_canon *c)
{
	if (c->stage_len) {
		c->sink(c->sink_arg, c->stage, c->stage_len);
		c->stage_len = 0;
	}
}

static void emit(struct dkim_body_canon *c, const uint8_t *p, size_t n)
{
	c->length += n;
	if (n >= DKIM_CANON_STAGE / 4) {
		stage_flush(c);
		c->sink(c->sink_arg, p, n);
		return;
	}
	if (c->stage_len + n > DKIM_CANON_STAGE)
		stage_flush(c);
	memcpy(c->stage + c->stage_len, p, n);
	c->stage_len += n;
}

static void emit_byte(struct dkim_body_canon *c, uint8_t b)
{
	if (c->stage_len == DKIM_CANON_STAGE)
		stage_flush(c);
	c->stage[c->stage_len++] = b;
	c->length++;
}

/* Content is coming: the pending CRLFs were real line ends, the WSP was inside. */
static void flush_pending(struct dkim_body_canon *c)
{
	while (c->crlf_pending) {
		emit_byte(c, '\r');
		emit_byte(c, '\n');
		c->crlf_pending--;
	}
	if (c->wsp_pending) {
		emit_byte(c, ' ');
		c->wsp_pending = false;
	}
	c->any_output = true;
}

void dkim_body_canon_init(struct dkim_body_canon *c, bool relaxed, dkim_canon_sink_fn sink,
			  void *arg)
{
	memset(c, 0, offsetof(struct dkim_body_canon, stage));
	c->relaxed = relaxed;
	c->sink = sink;
	c->sink_arg = arg;
}

/*
 * Byte classes for the relaxed scan: 0 passes unchanged, 1 is SP (unchanged
 * when one ordinary byte follows), 2 needs the state machine (HTAB, CR).
 */
static const uint8_t relaxed_class[256] = {['\t'] = 2, ['\r'] = 2, [' '] = 1};

/*
 * A CR at i (i + 2 < n) that needs no state: CRLF followed by a content byte
 * in this buffer, so the line end is neither part of trailing empty lines
 * nor preceded by trailing WSP (a SP before the CR already ended the span).
 * A SP or HTAB starting the next line is not taken: that line may turn out
 * to be empty (3.4.4) and the CRLF then belongs to the pending count.
 */
static inline bool relaxed_crlf_plain(const uint8_t *p, size_t i)
{
	return p[i + 1] == '\n' && relaxed_class[p[i + 2]] == 0;
}

/* Of the candidate bytes set in mask (bit k: p[i + k]), the first the state machine
 * must see, or SIZE_MAX: the SSE2 and AVX2 scans share it. */
static inline size_t mask_first_stop(const uint8_t *p, size_t i, uint32_t mask)
{
	while (mask) {
		size_t j = i + (size_t)__builtin_ctz(mask);
		if (p[j] != '\r' || !relaxed_crlf_plain(p, j))
			return j;
		mask &= mask - 1;
	}
	return SIZE_MAX;
}

/*
 * The first byte at or after i that the relaxed state machine must see:
 * HTAB, a SP followed by SP, HTAB or CR (a WSP run or trailing WSP), or a CR
 * that relaxed_crlf_plain() does not pass.  A lone SP between content bytes
 * and a CRLF inside a line of content pass unchanged, so ordinary text is
 * one long span.  Blocks of 8 (word-at-a-time), 16 (SSE2) or 32 (AVX2) bytes
 * are tested at once; each block reads up to 2 bytes past itself, so blocks
 * stop 2 bytes short of n, return where they stopped, and the caller does
 * the tail bytewise.
 */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* High bit of each byte of x that equals b (exact per byte: no carry crosses a byte). */
static inline uint64_t bytes_eq(uint64_t x, uint8_t b)
{
	uint64_t y = x ^ (ONES * b);
	return ~(((y & ~HIGHS) + ~HIGHS) | y) & HIGHS;
}

static size_t scan_relaxed_words(const uint8_t *p, size_t i, size_t n)
{
	while (i + 10 <= n) {
		uint64_t v, next;
		memcpy(&v, p + i, 8);
		memcpy(&next, p + i + 1, 8);
		uint64_t next_ws =
			bytes_eq(next, ' ') | bytes_eq(next, '\t') | bytes_eq(next, '\r');
		uint64_t hit = (bytes_eq(v, ' ') & next_ws) | bytes_eq(v, '\t') | bytes_eq(v, '\r');
		while (hit) {
			/* byte k of the block in memory order, on either endianness */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			size_t j = i + (size_t)__builtin_ctzll(hit) / 8;
			hit &= hit - 1;
#else
			size_t j = i + (size_t)__builtin_clzll(hit) / 8;
			hit &= ~(0x8000000000000000ull >> (8 * (j - i)));
#endif
			if (p[j] != '\r' || !relaxed_crlf_plain(p, j))
				return j;
		}
		i += 8;
	}
	return i;
}

#if defined(__x86_64__) && !defined(DKIM_CANON_NO_SIMD)
#include <immintrin.h>
#define HAVE_X86_SCAN 1

static size_t scan_relaxed_sse2(const uint8_t *p, size_t i, size_t n)
{
	const __m128i sp = _mm_set1_epi8(' '), tab = _mm_set1_epi8('\t'), cr = _mm_set1_epi8('\r');
	while (i + 18 <= n) {
		__m128i v = _mm_loadu_si128((const __m128i *)(p + i));
		__m128i next = _mm_loadu_si128((const __m128i *)(p + i + 1));
		__m128i next_ws = _mm_or_si128(
			_mm_or_si128(_mm_cmpeq_epi8(next, sp), _mm_cmpeq_epi8(next, tab)),
			_mm_cmpeq_epi8(next, cr));
		__m128i hit =
			_mm_or_si128(_mm_and_si128(_mm_cmpeq_epi8(v, sp), next_ws),
				     _mm_or_si128(_mm_cmpeq_epi8(v, tab), _mm_cmpeq_epi8(v, cr)));
		size_t j = mask_first_stop(p, i, (uint32_t)_mm_movemask_epi8(hit));
		if (j != SIZE_MAX)
			return j;
		i += 16;
	}
	return i;
}

__attribute__((target("avx2"))) static size_t scan_relaxed_avx2(const uint8_t *p, size_t i,
								size_t n)
{
	const __m256i sp = _mm256_set1_epi8(' '), tab = _mm256_set1_epi8('\t'),
		      cr = _mm256_set1_epi8('\r');
	while (i + 34 <= n) {
		__m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
		__m256i next = _mm256_loadu_si256((const __m256i *)(p + i + 1));
		__m256i next_ws = _mm256_or_si256(
			_mm256_or_si256(_mm256_cmpeq_epi8(next, sp), _mm256_cmpeq_epi8(next, tab)),
			_mm256_cmpeq_epi8(next, cr));
		__m256i hit = _mm256_or_si256(
			_mm256_and_si256(_mm256_cmpeq_epi8(v, sp), next_ws),
			_mm256_or_si256(_mm256_cmpeq_epi8(v, tab), _mm256_cmpeq_epi8(v, cr)));
		size_t j = mask_first_stop(p, i, (uint32_t)_mm256_movemask_epi8(hit));
		if (j != SIZE_MAX)
			return j;
		i += 32;
	}
	/* the last 16 to 33 bytes: the SSE2 blocks, then bytewise */
	return scan_relaxed_sse2(p, i, n);
}
#endif

/*
 * -1: not chosen yet; otherwise a dkim_canon_scan value.  Read by every core
 * (relaxed atomics: several may make the same first choice at once).
 */
static int scan_kind = -1;

static void set_scan_kind(int kind)
{
	__atomic_store_n(&scan_kind, kind, __ATOMIC_RELAXED);
}

int dkim_canon_scan_select(enum dkim_canon_scan kind)
{
	if (kind == DKIM_SCAN_AUTO) {
#ifdef HAVE_X86_SCAN
		__builtin_cpu_init();
		set_scan_kind(__builtin_cpu_supports("avx2") ? DKIM_SCAN_AVX2 : DKIM_SCAN_SSE2);
#else
		set_scan_kind(DKIM_SCAN_WORDS);
#endif
		return 0;
	}
	if (kind == DKIM_SCAN_WORDS) {
		set_scan_kind(kind);
		return 0;
	}
#ifdef HAVE_X86_SCAN
	if (kind == DKIM_SCAN_SSE2 || (kind == DKIM_SCAN_AVX2 && __builtin_cpu_supports("avx2"))) {
		set_scan_kind(kind);
		return 0;
	}
#endif
	return -ENOTSUP;
}

static size_t scan_relaxed_blocks(const uint8_t *p, size_t i, size_t n)
{
	int kind = __atomic_load_n(&scan_kind, __ATOMIC_RELAXED);
	if (__builtin_expect(kind < 0, 0)) {
		dkim_canon_scan_select(DKIM_SCAN_AUTO);
		kind = __atomic_load_n(&scan_kind, __ATOMIC_RELAXED);
	}
#ifdef HAVE_X86_SCAN
	if (kind == DKIM_SCAN_AVX2)
		return scan_relaxed_avx2(p, i, n);
	if (kind == DKIM_SCAN_SSE2)
		return scan_relaxed_sse2(p, i, n);
#endif
	return scan_relaxed_words(p, i, n);
}

/* End of a span of bytes that pass unchanged, starting at i. */
static size_t scan_plain(const struct dkim_body_canon *c, const uint8_t *p, size_t i, size_t n)
{
	if (!c->relaxed) {
		/* Simple: only a CR may start trailing empty lines (3.4.3). */
		for (;;) {
			const uint8_t *cr = memchr(p + i, '\r', n - i);
			if (!cr)
				return n;
			i = (size_t)(cr - p);
			if (i + 2 >= n || p[i + 1] != '\n' || p[i + 2] == '\r')
				return i;
			i += 3;
		}
	}
	i = scan_relaxed_blocks(p, i, n);
	while (i < n) {
		uint8_t k = relaxed_class[p[i]];
		if (k == 0) {
			i++;
			continue;
		}
		if (k == 1) {
			if (i + 1 < n && relaxed_class[p[i + 1]] == 0) {
				i += 2;
				continue;
			}
			return i;
		}
		if (p[i] == '\r' && i + 2 < n && relaxed_crlf_plain(p, i)) {
			i += 3;
			continue;
		}
		return i;
	}
	return i;
}

/*
 * Relaxed, from a state with nothing pending: besides the plain spans, the
 * WSP cases that are decided within this buffer are done here without the
 * state machine: a WSP run followed by content becomes one SP, and trailing
 * WSP followed by CRLF and content is dropped.  Returns where the state
 * machine must take over (a WSP run or CR whose meaning depends on bytes
 * not seen yet, or a CR that is not a plain line end), or n.
 */
static size_t relaxed_fast(struct dkim_body_canon *c, const uint8_t *p, size_t i, size_t n)
{
	size_t start = i;
	for (;;) {
		i = scan_plain(c, p, i, n);
		if (i == n || !is_wsp(p[i]))
			break;
		size_t k = i + 1;
		while (k < n && is_wsp(p[k]))
			k++;
		if (k < n && p[k] != '\r') {
			/* 3.4.4: a WSP run inside a line is one SP */
			emit(c, p + start, i - start);
			emit_byte(c, ' ');
		} else if (k + 2 < n && relaxed_crlf_plain(p, k)) {
			/* 3.4.4: WSP at the end of a line goes; more content follows */
			emit(c, p + start, i - start);
			emit_byte(c, '\r');
			emit_byte(c, '\n');
			k += 2;
		} else {
			break;
		}
		c->any_output = true;
		start = i = k;
	}
	if (i > start) {
		emit(c, p + start, i - start);
		c->any_output = true;
	}
	return i;
}

void dkim_body_canon_update(struct dkim_body_canon *c, const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (!c->cr_pending && !c->wsp_pending && c->crlf_pending == 0) {
			if (c->relaxed) {
				i = relaxed_fast(c, p, i, n);
			} else {
				size_t start = i;
				i = scan_plain(c, p, i, n);
				if (i > start) {
					emit(c, p + start, i - start);
					c->any_output = true;
				}
			}
			if (i == n)
				break;
		}
		uint8_t b = p[i++];
		if (c->cr_pending) {
			c->cr_pending = false;
			if (b == '\n') {
				/* End of line: a WSP run before it was trailing (3.4.4). */
				c->wsp_pending = false;
				c->crlf_pending++;
				continue;
			}
			/* A bare CR is content. */
			flush_pending(c);
			emit_byte(c, '\r');
		}
		if (b == '\r') {
			c->cr_pending = true;
		} else if (c->relaxed && is_wsp(b)) {
			/* The whole WSP run at once: it becomes one SP or nothing. */
			c->wsp_pending = true;
			while (i < n && is_wsp(p[i]))
				i++;
		} else {
			flush_pending(c);
			emit_byte(c, b);
		}
	}
}

void dkim_body_canon_final(struct dkim_body_canon *c)
{
	if (c->cr_pending) {
		c->cr_pending = false;
		flush_pending(c);
		emit_byte(c, '\r');
	}
	if (c->wsp_pending) {
		/* Unterminated last line ending in WSP: kept as one SP (see header). */
		flush_pending(c);
	}
	if (c->any_output || !c->relaxed) {
		/* One CRLF ends the body; further pending CRLFs were empty lines. */
		emit_byte(c, '\r');
		emit_byte(c, '\n');
	}
	c->crlf_pending = 0;
	stage_flush(c);
}

size_t dkim_header_canon(bool relaxed, const uint8_t *f, size_t len, bool add_crlf, uint8_t *out)
{
	if (!relaxed) {
		memcpy(out, f, len);
		return len;
	}
	size_t o = 0, i = 0, colon = len;
	const uint8_t *col = memchr(f, ':', len);
	if (col)
		colon = (size_t)(col - f);
	/* Name: lowercase, without WSP before the colon. */
	size_t name_end = colon;
	while (name_end > 0 && is_wsp(f[name_end - 1]))
		name_end--;
	for (i = 0; i < name_end; i++) {
		uint8_t b = f[i];
		out[o++] = (b >= 'A' && b <= 'Z') ? (uint8_t)(b + 32) : b;
	}
	if (col) {
		out[o++] = ':';
		bool sp = false, started = false;
		for (i = colon + 1; i < len;) {
			/* A run of bytes that pass unchanged: one copy. */
			size_t run = i;
			while (run < len && relaxed_class[f[run]] == 0)
				run++;
			if (run > i) {
				if (sp)
					out[o++] = ' ';
				sp = false;
				started = true;
				memcpy(out + o, f + i, run - i);
				o += run - i;
				i = run;
				continue;
			}
			uint8_t b = f[i++];
			if (b == '\r' && i < len && f[i] == '\n') {
				/* Unfold: the CRLF goes, the WSP after it is a WSP run. */
				i++;
				continue;
			}
			if (is_wsp(b)) {
				sp = started;
				continue;
			}
			/* a bare CR is content */
			if (sp)
				out[o++] = ' ';
			sp = false;
			started = true;
			out[o++] = b;
		}
	}
	if (add_crlf) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return o;
}
