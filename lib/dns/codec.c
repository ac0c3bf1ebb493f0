/*
 * codec.c - RFC 1035 message decoding and encoding.
 *
 * dns_msg_parse() treats every input as hostile: each read is bounds-checked
 * against the message length, compression pointers must point strictly
 * backwards (before the start of the label run that contains them, so that
 * positions decrease at every jump and no loop is possible) and at most
 * DNS_PTR_JUMPS_MAX are followed, names are at most 255 octets on the wire
 * (RFC 1035 2.3.4), RDATA must be consumed exactly by its type's fields.
 * Decoded names go to a bounded arena inside struct dns_msg.
 *
 * The encoders write queries (RD, optional EDNS0 OPT, RFC 6891) and whole
 * responses (struct dns_builder) with name compression (RFC 1035 4.1.4).
 */
#include "dns.h"

#include <errno.h>
#include <string.h>

static const char *const mal_names[DNS_MAL__COUNT] = {
	[DNS_MAL_NONE] = "none",
	[DNS_MAL_SHORT_HEADER] = "short_header",
	[DNS_MAL_TRUNCATED] = "truncated",
	[DNS_MAL_PTR_FORWARD] = "pointer_forward",
	[DNS_MAL_PTR_LOOP] = "pointer_loop",
	[DNS_MAL_NAME_TOO_LONG] = "name_too_long",
	[DNS_MAL_LABEL_TYPE] = "label_type",
	[DNS_MAL_LABEL_CHAR] = "label_char",
	[DNS_MAL_BAD_COUNT] = "bad_count",
	[DNS_MAL_RDLEN] = "rdlength",
	[DNS_MAL_RDATA] = "rdata",
	[DNS_MAL_TOO_BIG] = "too_big",
	[DNS_MAL_NOT_RESPONSE] = "not_response",
};

const char *dns_malformed_str(enum dns_malformed why)
{
	if ((unsigned)why >= DNS_MAL__COUNT)
		return "unknown";
	return mal_names[why];
}

static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline char lower(char ch)
{
	return (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
}

bool dns_name_equal(const char *a, const char *b)
{
	for (;; a++, b++) {
		if (lower(*a) != lower(*b))
			return false;
		if (*a == '\0')
			return true;
	}
}

/*
 * Decode the name at @off.  Labels before the first pointer must lie below
 * @limit (the end of the RDATA or message); after a jump the message end
 * bounds them.  *next is the offset just after the name in the original
 * run.  @out receives dotted text (cap >= DNS_NAME_TEXT_MAX).
 */
static int read_name(const uint8_t *pkt, size_t len, size_t off, size_t limit, size_t *next,
		     char *out, enum dns_malformed *why)
{
	size_t pos = off, run_start = off, end = limit, text = 0, wire = 0;
	unsigned jumps = 0;
	bool jumped = false;

	for (;;) {
		if (pos >= end) {
			*why = DNS_MAL_TRUNCATED;
			return -EBADMSG;
		}
		uint8_t c = pkt[pos];
		if ((c & 0xc0) == 0xc0) {
			if (pos + 1 >= end) {
				*why = DNS_MAL_TRUNCATED;
				return -EBADMSG;
			}
			size_t ptr = ((size_t)(c & 0x3f) << 8) | pkt[pos + 1];
			/* Strictly before the current run: positions decrease, no loops. */
			if (ptr >= run_start) {
				*why = DNS_MAL_PTR_FORWARD;
				return -EBADMSG;
			}
			if (++jumps > DNS_PTR_JUMPS_MAX) {
				*why = DNS_MAL_PTR_LOOP;
				return -EBADMSG;
			}
			if (!jumped) {
				*next = pos + 2;
				jumped = true;
			}
			pos = run_start = ptr;
			end = len;
			continue;
		}
		if (c & 0xc0) {
			*why = DNS_MAL_LABEL_TYPE;
			return -EBADMSG;
		}
		if (c == 0) {
			if (!jumped)
				*next = pos + 1;
			out[text] = '\0';
			return 0;
		}
		if (pos + 1 + c > end) {
			*why = DNS_MAL_TRUNCATED;
			return -EBADMSG;
		}
		wire += 1u + c;
		if (wire + 1 > DNS_NAME_MAX) {
			*why = DNS_MAL_NAME_TOO_LONG;
			return -EBADMSG;
		}
		if (text > 0)
			out[text++] = '.';
		for (unsigned i = 0; i < c; i++) {
			uint8_t ch = pkt[pos + 1 + i];
			if (ch <= 0x20 || ch >= 0x7f || ch == '.') {
				*why = DNS_MAL_LABEL_CHAR;
				return -EBADMSG;
			}
			out[text++] = (char)ch;
		}
		pos += 1u + c;
	}
}

/* Read a name into the message arena. */
static int arena_name(struct dns_msg *m, const uint8_t *pkt, size_t len, size_t off, size_t limit,
		      size_t *next, const char **out, enum dns_malformed *why)
{
	char tmp[DNS_NAME_TEXT_MAX];
	int rc = read_name(pkt, len, off, limit, next, tmp, why);
	if (rc < 0)
		return rc;
	size_t n = strlen(tmp) + 1;
	if (m->arena_used + n > sizeof(m->arena)) {
		*why = DNS_MAL_TOO_BIG;
		return -EBADMSG;
	}
	char *dst = m->arena + m->arena_used;
	memcpy(dst, tmp, n);
	m->arena_used += n;
	*out = dst;
	return 0;
}

static int parse_rdata(struct dns_msg *m, struct dns_rr *rr, const uint8_t *pkt, size_t len,
		       size_t off, size_t rdlen, enum dns_malformed *why)
{
	size_t end = off + rdlen, next = 0;
	const uint8_t *p = pkt + off;
	int rc;

	switch (rr->type) {
	case DNS_T_A:
		if (rdlen != 4)
			goto bad;
		rr->a = get32(p);
		return 0;
	case DNS_T_AAAA:
		if (rdlen != 16)
			goto bad;
		memcpy(rr->aaaa, p, 16);
		return 0;
	case DNS_T_MX:
		if (rdlen < 3)
			goto bad;
		rr->mx.pref = get16(p);
		rc = arena_name(m, pkt, len, off + 2, end, &next, &rr->mx.host, why);
		if (rc < 0)
			return rc;
		break;
	case DNS_T_CNAME:
	case DNS_T_NS:
		rc = arena_name(m, pkt, len, off, end, &next, &rr->target, why);
		if (rc < 0)
			return rc;
		break;
	case DNS_T_SOA:
		rc = arena_name(m, pkt, len, off, end, &next, &rr->soa.mname, why);
		if (rc < 0)
			return rc;
		rc = arena_name(m, pkt, len, next, end, &next, &rr->soa.rname, why);
		if (rc < 0)
			return rc;
		if (end - next != 20)
			goto bad;
		rr->soa.serial = get32(pkt + next);
		rr->soa.refresh = get32(pkt + next + 4);
		rr->soa.retry = get32(pkt + next + 8);
		rr->soa.expire = get32(pkt + next + 12);
		rr->soa.minimum = get32(pkt + next + 16);
		return 0;
	case DNS_T_TXT:
		/* One or more <character-string>s that tile the RDATA exactly. */
		if (rdlen == 0)
			goto bad;
		for (size_t i = 0; i < rdlen; i += 1u + p[i])
			if (i + 1u + p[i] > rdlen)
				goto bad;
		rr->txt.data = p;
		rr->txt.len = (uint16_t)rdlen;
		return 0;
	case DNS_T_TLSA:
		if (rdlen < 4)
			goto bad;
		rr->tlsa.usage = p[0];
		rr->tlsa.selector = p[1];
		rr->tlsa.mtype = p[2];
		rr->tlsa.data = p + 3;
		rr->tlsa.len = (uint16_t)(rdlen - 3);
		return 0;
	default:
		rr->raw.data = p;
		rr->raw.len = (uint16_t)rdlen;
		return 0;
	}
	if (next != end)
		goto bad;
	return 0;
bad:
	*why = DNS_MAL_RDATA;
	return -EBADMSG;
}

int dns_msg_parse(struct dns_msg *m, const uint8_t *pkt, size_t len, enum dns_malformed *why)
{
	enum dns_malformed dummy;
	size_t off, next = 0;
	int rc;

	if (why == NULL)
		why = &dummy;
	*why = DNS_MAL_NONE;
	m->rr_count = 0;
	m->rr_truncated = false;
	m->edns = false;
	m->edns_udp = 0;
	m->arena_used = 0;
	memset(m->count, 0, sizeof(m->count));
	if (pkt == NULL || len < 12) {
		*why = DNS_MAL_SHORT_HEADER;
		return -EBADMSG;
	}
	m->id = get16(pkt);
	m->flags = get16(pkt + 2);
	uint16_t qd = get16(pkt + 4);
	unsigned sec_count[3] = {get16(pkt + 6), get16(pkt + 8), get16(pkt + 10)};
	if (qd != 1) {
		*why = DNS_MAL_BAD_COUNT;
		return -EBADMSG;
	}
	/* Every record needs at least 11 octets: catch absurd counts early. */
	if ((size_t)(sec_count[0] + sec_count[1] + sec_count[2]) * 11 > len - 12) {
		*why = DNS_MAL_TRUNCATED;
		return -EBADMSG;
	}
	rc = read_name(pkt, len, 12, len, &next, m->qname, why);
	if (rc < 0)
		return rc;
	if (next + 4 > len) {
		*why = DNS_MAL_TRUNCATED;
		return -EBADMSG;
	}
	m->qtype = get16(pkt + next);
	m->qclass = get16(pkt + next + 2);
	off = next + 4;

	for (unsigned s = 0; s < 3; s++) {
		for (unsigned i = 0; i < sec_count[s]; i++) {
			struct dns_rr tmp, *rr;
			const char *owner;
			bool keep = m->rr_count < DNS_MSG_MAX_RR;

			rr = keep ? &m->rr[m->rr_count] : &tmp;
			size_t arena_mark = m->arena_used;
			rc = arena_name(m, pkt, len, off, len, &next, &owner, why);
			if (rc < 0)
				return rc;
			if (next + 10 > len) {
				*why = DNS_MAL_TRUNCATED;
				return -EBADMSG;
			}
			memset(rr, 0, sizeof(*rr));
			rr->name = owner;
			rr->type = get16(pkt + next);
			rr->rclass = get16(pkt + next + 2);
			rr->ttl = get32(pkt + next + 4);
			/* RFC 2181 8: a TTL with the top bit set is treated as zero. */
			if (rr->ttl & 0x80000000u)
				rr->ttl = 0;
			size_t rdlen = get16(pkt + next + 8);
			off = next + 10;
			if (rdlen > len - off) {
				*why = DNS_MAL_RDLEN;
				return -EBADMSG;
			}
			rc = parse_rdata(m, rr, pkt, len, off, rdlen, why);
			if (rc < 0)
				return rc;
			off += rdlen;
			if (rr->type == DNS_T_OPT) {
				/* RFC 6891 6.1.1: one OPT, additional section, root owner. */
				if (s != DNS_SEC_ADDITIONAL || owner[0] != '\0' || m->edns) {
					*why = DNS_MAL_RDATA;
					return -EBADMSG;
				}
				m->edns = true;
				m->edns_udp = rr->rclass;
				m->arena_used = arena_mark;
				continue;
			}
			if (!keep) {
				m->rr_truncated = true;
				m->arena_used = arena_mark;
				continue;
			}
			m->rr_count++;
			m->count[s]++;
		}
	}
	return 0;
}

const struct dns_rr *dns_msg_section(const struct dns_msg *m, enum dns_section sec, unsigned *n)
{
	unsigned start = 0;
	for (unsigned s = 0; s < (unsigned)sec && s < 3; s++)
		start += m->count[s];
	*n = (unsigned)sec < 3 ? m->count[sec] : 0;
	return &m->rr[start];
}

/* ---- encoding ------------------------------------------------------------ */

int dns_name_to_wire(const char *name, uint8_t *out, size_t cap)
{
	size_t o = 0;
	const char *p = name;

	if (name == NULL)
		return -EINVAL;
	if (p[0] == '.' && p[1] == '\0')
		p++;
	while (*p != '\0') {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);
		if (l == 0 || l > DNS_LABEL_MAX)
			return -EINVAL;
		if (o + 1 + l + 1 > DNS_NAME_MAX)
			return -EINVAL;
		if (o + 1 + l > cap)
			return -ENOSPC;
		out[o++] = (uint8_t)l;
		memcpy(out + o, p, l);
		o += l;
		p += l;
		if (*p == '.')
			p++;
	}
	if (o + 1 > cap)
		return -ENOSPC;
	out[o++] = 0;
	return (int)o;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

int dns_encode_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype,
		     bool edns)
{
	struct dns_builder b;

	dns_builder_init(&b, buf, cap, id, DNS_F_RD, name, qtype, DNS_C_IN);
	if (edns)
		dns_builder_add_opt(&b, DNS_EDNS_UDP_SIZE);
	return dns_builder_finish(&b);
}

static bool builder_room(struct dns_builder *b, size_t n)
{
	if (b->err)
		return false;
	if (b->len + n > b->cap) {
		b->err = -ENOSPC;
		return false;
	}
	return true;
}

/* Does the (trusted, our own) name at @off equal the uncompressed wire @w? */
static bool wire_equal_at(const uint8_t *buf, size_t off, const uint8_t *w)
{
	for (unsigned guard = 0; guard < 128; guard++) {
		uint8_t c = buf[off];
		if ((c & 0xc0) == 0xc0) {
			off = ((size_t)(c & 0x3f) << 8) | buf[off + 1];
			continue;
		}
		if (c != *w)
			return false;
		if (c == 0)
			return true;
		for (unsigned i = 1; i <= c; i++)
			if (lower((char)buf[off + i]) != lower((char)w[i]))
				return false;
		off += 1u + c;
		w += 1u + c;
	}
	return false;
}

/* Write @name compressed against names already in the message. */
static void builder_name(struct dns_builder *b, const char *name)
{
	uint8_t w[DNS_NAME_MAX];
	int wl = dns_name_to_wire(name, w, sizeof(w));
	size_t pos = 0;

	if (b->err)
		return;
	if (wl < 0) {
		b->err = wl;
		return;
	}
	while (w[pos] != 0) {
		for (unsigned i = 0; i < b->name_count; i++) {
			if (wire_equal_at(b->buf, b->name_off[i], w + pos)) {
				if (!builder_room(b, 2))
					return;
				put16(b->buf + b->len, (uint16_t)(0xc000 | b->name_off[i]));
				b->len += 2;
				return;
			}
		}
		size_t l = 1u + w[pos];
		if (!builder_room(b, l))
			return;
		if (b->len < 0x3fff && b->name_count < sizeof(b->name_off) / sizeof(b->name_off[0]))
			b->name_off[b->name_count++] = (uint16_t)b->len;
		memcpy(b->buf + b->len, w + pos, l);
		b->len += l;
		pos += l;
	}
	if (builder_room(b, 1))
		b->buf[b->len++] = 0;
}

void dns_builder_init(struct dns_builder *b, uint8_t *buf, size_t cap, uint16_t id, uint16_t flags,
		      const char *qname, uint16_t qtype, uint16_t qclass)
{
	memset(b, 0, sizeof(*b));
	b->buf = buf;
	b->cap = cap;
	if (!builder_room(b, 12))
		return;
	memset(buf, 0, 12);
	put16(buf, id);
	put16(buf + 2, flags);
	put16(buf + 4, 1);
	b->len = 12;
	builder_name(b, qname);
	if (!builder_room(b, 4))
		return;
	put16(b->buf + b->len, qtype);
	put16(b->buf + b->len + 2, qclass);
	b->len += 4;
}

static void builder_section(struct dns_builder *b, enum dns_section sec)
{
	if (b->err == 0 && ((unsigned)sec > 2 || sec < b->sec))
		b->err = -EINVAL;
	if (b->err == 0)
		b->sec = sec;
}

void dns_builder_add(struct dns_builder *b, enum dns_section sec, const struct dns_rr *rr)
{
	builder_section(b, sec);
	builder_name(b, rr->name);
	if (!builder_room(b, 10))
		return;
	size_t hdr = b->len;
	put16(b->buf + hdr, rr->type);
	put16(b->buf + hdr + 2, rr->rclass);
	put32(b->buf + hdr + 4, rr->ttl);
	b->len += 10;
	size_t rd = b->len;

	switch (rr->type) {
	case DNS_T_A:
		if (builder_room(b, 4)) {
			put32(b->buf + b->len, rr->a);
			b->len += 4;
		}
		break;
	case DNS_T_AAAA:
		if (builder_room(b, 16)) {
			memcpy(b->buf + b->len, rr->aaaa, 16);
			b->len += 16;
		}
		break;
	case DNS_T_MX:
		if (builder_room(b, 2)) {
			put16(b->buf + b->len, rr->mx.pref);
			b->len += 2;
		}
		builder_name(b, rr->mx.host);
		break;
	case DNS_T_CNAME:
	case DNS_T_NS:
		builder_name(b, rr->target);
		break;
	case DNS_T_SOA:
		builder_name(b, rr->soa.mname);
		builder_name(b, rr->soa.rname);
		if (builder_room(b, 20)) {
			uint8_t *p = b->buf + b->len;
			put32(p, rr->soa.serial);
			put32(p + 4, rr->soa.refresh);
			put32(p + 8, rr->soa.retry);
			put32(p + 12, rr->soa.expire);
			put32(p + 16, rr->soa.minimum);
			b->len += 20;
		}
		break;
	case DNS_T_TLSA:
		if (builder_room(b, 3u + rr->tlsa.len)) {
			uint8_t *p = b->buf + b->len;
			p[0] = rr->tlsa.usage;
			p[1] = rr->tlsa.selector;
			p[2] = rr->tlsa.mtype;
			if (rr->tlsa.len)
				memcpy(p + 3, rr->tlsa.data, rr->tlsa.len);
			b->len += 3u + rr->tlsa.len;
		}
		break;
	default: /* TXT and unknown types: raw bytes (txt and raw share layout) */
		if (builder_room(b, rr->raw.len)) {
			if (rr->raw.len)
				memcpy(b->buf + b->len, rr->raw.data, rr->raw.len);
			b->len += rr->raw.len;
		}
		break;
	}
	if (b->err)
		return;
	if (b->len - rd > 0xffff) {
		b->err = -EMSGSIZE;
		return;
	}
	put16(b->buf + hdr + 8, (uint16_t)(b->len - rd));
	b->counts[sec]++;
}

void dns_builder_add_opt(struct dns_builder *b, uint16_t udp_size)
{
	builder_section(b, DNS_SEC_ADDITIONAL);
	if (!builder_room(b, 11))
		return;
	uint8_t *p = b->buf + b->len;
	p[0] = 0; /* root owner */
	put16(p + 1, DNS_T_OPT);
	put16(p + 3, udp_size);
	put32(p + 5, 0); /* extended rcode, version 0, no DO */
	put16(p + 9, 0);
	b->len += 11;
	b->counts[DNS_SEC_ADDITIONAL]++;
}

int dns_builder_finish(struct dns_builder *b)
{
	if (b->err)
		return b->err;
	put16(b->buf + 6, b->counts[0]);
	put16(b->buf + 8, b->counts[1]);
	put16(b->buf + 10, b->counts[2]);
	return (int)b->len;
}
