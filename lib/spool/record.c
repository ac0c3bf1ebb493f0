/*
 * record.c - the spool's pure functions: CRC32C, message IDs, record headers
 * and the envelope codec.  No I/O here, so the fuzzer and the unit tests can
 * drive every decoder directly.  The byte layouts are in FORMAT.md.
 */
#include "spool_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- CRC32C ------------------------------------------------------------ */

/*
 * CRC32C with the conventions of RFC 3720 appendix B.4 (reflected, initial
 * and final value 0xFFFFFFFF): crc32c("123456789") = 0xE3069283.  The SSE4.2
 * crc32 instruction does the same polynomial 8 bytes at a time; loads go
 * through memcpy because records are not aligned.
 */
static uint32_t crc_table[256];

static void crc_table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t len)
{
	if (crc_table[1] == 0)
		crc_table_init();
	while (len--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c;
}

#if defined(__x86_64__)
/*
 * The crc32 instruction has a latency of 3 cycles and a throughput of 1, so
 * one dependent chain uses a third of it.  Above a few hundred bytes the data
 * is cut into three equal blocks of B bytes, run as three independent chains
 * (the 2nd and 3rd from register 0), then joined: the register is linear over
 * GF(2), so R(s, D0 D1 D2) = Z2(R(s, D0)) ^ Z1(R(0, D1)) ^ R(0, D2), where
 * Z1 and Z2 feed B and 2B zero bytes.  Each Z is a 32x32 bit matrix applied
 * as 4 byte-indexed tables, built at load time from the instruction itself;
 * Z2 and Z1 are looked up side by side, not one after the other (a join in
 * series cost as much as it saved on 3 x 32 byte rounds).  A 1.1 KiB record
 * is one 3 x 256 round, one 3 x 64 round and a tail of 140 bytes instead of
 * 137 chained steps.
 */
#define CRC_BLK_BIG 256
#define CRC_BLK_SMALL 64

/* Z for 64, 128, 256 and 512 zero bytes: the small round's Z1, Z2, the big round's */
static uint32_t crc_zeros[4][4][256];
static int crc_have_hw = -1;

__attribute__((target("sse4.2"))) static uint32_t crc_hw_chain(uint32_t c, const uint8_t *p,
							       size_t len)
{
	uint64_t c64 = c;
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c64 = __builtin_ia32_crc32di(c64, v);
		p += 8;
		len -= 8;
	}
	c = (uint32_t)c64;
	while (len--)
		c = __builtin_ia32_crc32qi(c, *p++);
	return c;
}

static inline uint32_t crc_shift(const uint32_t t[4][256], uint32_t c)
{
	return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}

/* Three chains of blk bytes each (a multiple of 8), joined as above. */
__attribute__((target("sse4.2"))) static inline uint32_t crc_hw_round(const uint32_t z1[4][256],
								      const uint32_t z2[4][256],
								      uint32_t c, const uint8_t *p,
								      size_t blk)
{
	uint64_t a = c, b = 0, d = 0;
	for (size_t i = 0; i < blk; i += 8) {
		uint64_t va, vb, vd;
		memcpy(&va, p + i, 8);
		memcpy(&vb, p + blk + i, 8);
		memcpy(&vd, p + 2 * blk + i, 8);
		a = __builtin_ia32_crc32di(a, va);
		b = __builtin_ia32_crc32di(b, vb);
		d = __builtin_ia32_crc32di(d, vd);
	}
	return crc_shift(z2, (uint32_t)a) ^ crc_shift(z1, (uint32_t)b) ^ (uint32_t)d;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t len)
{
	while (len >= 3 * CRC_BLK_BIG) {
		c = crc_hw_round(crc_zeros[2], crc_zeros[3], c, p, CRC_BLK_BIG);
		p += 3 * CRC_BLK_BIG;
		len -= 3 * CRC_BLK_BIG;
	}
	while (len >= 3 * CRC_BLK_SMALL) {
		c = crc_hw_round(crc_zeros[0], crc_zeros[1], c, p, CRC_BLK_SMALL);
		p += 3 * CRC_BLK_SMALL;
		len -= 3 * CRC_BLK_SMALL;
	}
	return crc_hw_chain(c, p, len);
}

/* t[k][v] = Z(v << 8k): Z of each basis bit, then every byte value as a sum of bits. */
static void crc_zeros_init(uint32_t t[4][256], size_t blk)
{
	static const uint8_t zero[2 * CRC_BLK_BIG];
	uint32_t basis[32];
	for (int i = 0; i < 32; i++)
		basis[i] = crc_hw_chain(1u << i, zero, blk);
	for (int k = 0; k < 4; k++)
		for (unsigned v = 0; v < 256; v++) {
			uint32_t z = 0;
			for (int bit = 0; bit < 8; bit++)
				if (v & (1u << bit))
					z ^= basis[8 * k + bit];
			t[k][v] = z;
		}
}

/* Before main (and so before any worker thread): nothing races on the tables. */
__attribute__((constructor)) static void crc_hw_init(void)
{
	crc_have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
	if (!crc_have_hw)
		return;
	for (int i = 0; i < 4; i++)
		crc_zeros_init(crc_zeros[i], (size_t)CRC_BLK_SMALL << i);
}
#endif

uint32_t spool_crc32c(uint32_t crc, const void *data, size_t len)
{
	uint32_t c = ~crc;
#if defined(__x86_64__)
	if (crc_have_hw > 0)
		return ~crc_hw(c, data, len);
#endif
	return ~crc_sw(c, data, len);
}

/* ---- message IDs ------------------------------------------------------- */

/* base32hex (RFC 4648 section 7): IDs sort like the numbers they encode. */
static const char b32[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";

void spool_id_format(uint64_t id, char out[SPOOL_ID_LEN + 1])
{
	for (int i = SPOOL_ID_LEN - 1; i >= 0; i--) {
		out[i] = b32[id & 31];
		id >>= 5;
	}
	out[SPOOL_ID_LEN] = '\0';
}

int spool_id_parse(const char *s, uint64_t *id)
{
	uint64_t v = 0;
	for (int i = 0; i < SPOOL_ID_LEN; i++) {
		char c = s[i];
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'A' && c <= 'V')
			d = c - 'A' + 10;
		else if (c >= 'a' && c <= 'v')
			d = c - 'a' + 10;
		else
			return -EINVAL;
		v = (v << 5) | (uint64_t)d;
	}
	if (s[SPOOL_ID_LEN] != '\0')
		return -EINVAL;
	*id = v;
	return 0;
}

uint64_t spool_id_make(uint32_t gen, unsigned core, uint32_t seq)
{
	return ((uint64_t)(gen & 0xffffffu) << 36) | ((uint64_t)(core & 0xffu) << 28) |
	       (seq & 0xfffffffu);
}

unsigned spool_id_core(uint64_t id)
{
	return (unsigned)((id >> 28) & 0xff);
}

/* ---- record headers ---------------------------------------------------- */

/*
 * Version 2 seeds the header checksum with the segment sequence: segment
 * files are preallocated and recycled, so bytes after the end of the data
 * may be whole records of the file's earlier life; they never check out
 * in the new one.  Records in a batch buffer carry seed 0 until flush()
 * knows their segment (spool_rec_reseal).
 */
static uint32_t hdr_crc(const uint8_t *in, uint8_t version, uint64_t seg)
{
	if (version < 2)
		return spool_crc32c(0, in, 28);
	uint8_t s[8];
	spool_put64(s, seg);
	return spool_crc32c(spool_crc32c(0, s, 8), in, 28);
}

void spool_rec_hdr_put(uint8_t out[SPOOL_REC_HDR], const struct spool_rec_hdr *h)
{
	spool_put32(out, SPOOL_REC_MAGIC);
	out[4] = SPOOL_REC_VERSION;
	out[5] = h->type;
	spool_put16(out + 6, h->flags);
	spool_put32(out + 8, h->length);
	spool_put32(out + 12, h->data_crc);
	spool_put64(out + 16, h->id);
	spool_put32(out + 24, h->aux);
	spool_put32(out + 28, hdr_crc(out, SPOOL_REC_VERSION, h->seg));
}

void spool_rec_reseal(uint8_t rec[SPOOL_REC_HDR], uint64_t seg)
{
	spool_put32(rec + 28, hdr_crc(rec, rec[4], seg));
}

int spool_rec_hdr_get_seg(const uint8_t in[SPOOL_REC_HDR], uint64_t seg, struct spool_rec_hdr *h)
{
	if (spool_get32(in) != SPOOL_REC_MAGIC)
		return -EBADMSG;
	uint8_t version = in[4];
	if (version == 0)
		return -EBADMSG;
	/* later versions keep version 2's header checksum (FORMAT.md, Version rules) */
	if (spool_get32(in + 28) != hdr_crc(in, version, seg))
		return -EBADMSG;
	h->version = version;
	if (h->version > SPOOL_REC_VERSION)
		return -EPROTONOSUPPORT;
	h->type = in[5];
	h->flags = spool_get16(in + 6);
	h->length = spool_get32(in + 8);
	h->data_crc = spool_get32(in + 12);
	h->id = spool_get64(in + 16);
	h->aux = spool_get32(in + 24);
	h->seg = seg;
	return 0;
}

int spool_rec_hdr_get(const uint8_t in[SPOOL_REC_HDR], struct spool_rec_hdr *h)
{
	return spool_rec_hdr_get_seg(in, 0, h);
}

size_t spool_rec_build(uint8_t *out, uint8_t type, uint16_t flags, uint64_t id, uint32_t aux,
		       const void *payload, uint32_t len)
{
	struct spool_rec_hdr h = {
		.type = type, .flags = flags, .length = len, .id = id, .aux = aux};
	if (len)
		memcpy(out + SPOOL_REC_HDR, payload, len);
	h.data_crc = spool_crc32c(0, out + SPOOL_REC_HDR, len);
	spool_rec_hdr_put(out, &h);
	return SPOOL_REC_HDR + (size_t)len;
}

int spool_rec_check_seg(const uint8_t *buf, size_t len, uint64_t seg, struct spool_rec_hdr *h)
{
	if (len < SPOOL_REC_HDR)
		return -EMSGSIZE;
	int rc = spool_rec_hdr_get_seg(buf, seg, h);
	if (rc < 0)
		return rc;
	if (h->length > len - SPOOL_REC_HDR)
		return -EMSGSIZE;
	if (spool_crc32c(0, buf + SPOOL_REC_HDR, h->length) != h->data_crc)
		return -EBADMSG;
	if (h->type == SPOOL_REC_MSG && h->aux > h->length)
		return -EBADMSG;
	return 0;
}

int spool_rec_check(const uint8_t *buf, size_t len, struct spool_rec_hdr *h)
{
	return spool_rec_check_seg(buf, len, 0, h);
}

int spool_seg_path(char *out, size_t cap, const char *dir, unsigned core, uint64_t seq)
{
	int n = snprintf(out, cap, "%s/c%u/%016llx.seg", dir, core, (unsigned long long)seq);
	return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int spool_core_path(char *out, size_t cap, const char *dir, unsigned core)
{
	int n = snprintf(out, cap, "%s/c%u", dir, core);
	return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

/* ---- envelope codec ---------------------------------------------------- */

/*
 * Layout (little-endian): u8 version, u8 ret, u16 rcpt_count, i64 arrival_us,
 * (version 2) u8 flags, then 8 strings (sender, envid, client_ip, helo,
 * tls_version, tls_cipher, auth_user, message_id), then per recipient:
 * u8 notify, addr, orcpt.  A string is u16 length + bytes, no NUL.
 * Version 1 (written by record versions 1 and 2) has no flags byte.
 */
#define ENV_FIXED_V1 12
#define ENV_FIXED 13
#define ENV_NSTR 8

static size_t slen(const char *s)
{
	return s ? strlen(s) : 0;
}

static const char *env_str(const struct spool_envelope *e, int i)
{
	const char *v[ENV_NSTR] = {e->sender,	   e->envid,	  e->client_ip, e->helo,
				   e->tls_version, e->tls_cipher, e->auth_user, e->message_id};
	return v[i];
}

long spool_env_size(const struct spool_envelope *env)
{
	if (env == NULL || env->rcpt_count == 0 || env->rcpt_count > 0xffff || env->rcpts == NULL ||
	    env->ret > SPOOL_RET_HDRS || (env->flags & ~SPOOL_ENV_F_ALL))
		return -EINVAL;
	size_t n = ENV_FIXED;
	for (int i = 0; i < ENV_NSTR; i++) {
		size_t l = slen(env_str(env, i));
		if (l > 0xffff)
			return -EINVAL;
		n += 2 + l;
	}
	for (uint32_t r = 0; r < env->rcpt_count; r++) {
		size_t a = slen(env->rcpts[r].addr), o = slen(env->rcpts[r].orcpt);
		if (a > 0xffff || o > 0xffff)
			return -EINVAL;
		n += 1 + 2 + a + 2 + o;
	}
	if (n > 0x7fffffff)
		return -EINVAL;
	return (long)n;
}

static uint8_t *put_str(uint8_t *p, const char *s)
{
	size_t l = slen(s);
	spool_put16(p, (uint16_t)l);
	if (l)
		memcpy(p + 2, s, l);
	return p + 2 + l;
}

long spool_env_encode(const struct spool_envelope *env, void *buf, size_t cap)
{
	long need = spool_env_size(env);
	if (need < 0)
		return need;
	if ((size_t)need > cap)
		return -ENOBUFS;
	uint8_t *p = buf;
	p[0] = SPOOL_ENV_VERSION;
	p[1] = env->ret;
	spool_put16(p + 2, (uint16_t)env->rcpt_count);
	spool_put64(p + 4, (uint64_t)env->arrival_us);
	p[12] = env->flags;
	p += ENV_FIXED;
	for (int i = 0; i < ENV_NSTR; i++)
		p = put_str(p, env_str(env, i));
	for (uint32_t r = 0; r < env->rcpt_count; r++) {
		*p++ = env->rcpts[r].notify;
		p = put_str(p, env->rcpts[r].addr);
		p = put_str(p, env->rcpts[r].orcpt);
	}
	return need;
}

/* Bounds-checked reader over hostile bytes. */
struct env_reader {
	const uint8_t *p;
	size_t left;
	char *strings; /* output area for NUL-terminated copies */
	size_t strings_left;
};

static int get_str(struct env_reader *r, const char **out, bool null_if_empty)
{
	if (r->left < 2)
		return -EINVAL;
	size_t l = spool_get16(r->p);
	r->p += 2;
	r->left -= 2;
	if (l > r->left || l + 1 > r->strings_left)
		return -EINVAL;
	if (memchr(r->p, '\0', l) != NULL)
		return -EINVAL;
	memcpy(r->strings, r->p, l);
	r->strings[l] = '\0';
	*out = (l == 0 && null_if_empty) ? NULL : r->strings;
	r->strings += l + 1;
	r->strings_left -= l + 1;
	r->p += l;
	r->left -= l;
	return 0;
}

int spool_env_decode(const void *buf, size_t len, struct spool_envelope **out)
{
	const uint8_t *p = buf;
	*out = NULL;
	if (len < 1 || p[0] < 1 || p[0] > SPOOL_ENV_VERSION)
		return -EINVAL;
	size_t fixed = p[0] == 1 ? ENV_FIXED_V1 : ENV_FIXED;
	if (len < fixed || p[1] > SPOOL_RET_HDRS)
		return -EINVAL;
	/* unknown flags are refused, not dropped: a new flag is a new envelope version */
	uint8_t flags = p[0] == 1 ? 0 : p[12];
	if (flags & ~SPOOL_ENV_F_ALL)
		return -EINVAL;
	uint32_t rc = spool_get16(p + 2);
	if (rc == 0)
		return -EINVAL;
	/* each recipient needs at least 5 bytes: a count beyond that is a lie */
	if ((size_t)rc * 5 > len)
		return -EINVAL;
	/* strings area: every byte of input at most once, plus one NUL per string */
	size_t nstr = ENV_NSTR + 2 * (size_t)rc;
	size_t strings = len + nstr;
	size_t total = sizeof(struct spool_envelope) + rc * sizeof(struct spool_rcpt) + strings;
	uint8_t *blk = malloc(total);
	if (blk == NULL)
		return -ENOMEM;
	struct spool_envelope *e = (struct spool_envelope *)blk;
	struct spool_rcpt *rcpts = (struct spool_rcpt *)(blk + sizeof(*e));
	memset(e, 0, sizeof(*e));
	e->ret = p[1];
	e->flags = flags;
	e->rcpt_count = rc;
	e->arrival_us = (int64_t)spool_get64(p + 4);
	e->rcpts = rcpts;
	struct env_reader r = {.p = p + fixed,
			       .left = len - fixed,
			       .strings = (char *)(rcpts + rc),
			       .strings_left = strings};
	const char **fields[ENV_NSTR] = {&e->sender,	&e->envid,	 &e->client_ip,
					 &e->helo,	&e->tls_version, &e->tls_cipher,
					 &e->auth_user, &e->message_id};
	for (int i = 0; i < ENV_NSTR; i++)
		if (get_str(&r, fields[i], false) < 0)
			goto bad;
	for (uint32_t i = 0; i < rc; i++) {
		if (r.left < 1)
			goto bad;
		rcpts[i].notify = *r.p;
		r.p++;
		r.left--;
		if (rcpts[i].notify & ~0x0f)
			goto bad;
		if (get_str(&r, &rcpts[i].addr, false) < 0 ||
		    get_str(&r, &rcpts[i].orcpt, true) < 0)
			goto bad;
	}
	if (r.left != 0)
		goto bad;
	*out = e;
	return 0;
bad:
	free(blk);
	return -EINVAL;
}
