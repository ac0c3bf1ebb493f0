/*
 * check.c - `mxdkim check`: a domain's published DKIM, SPF and DMARC records
 * against the relay's configuration.
 *
 *   mxdkim check --config FILE [--resolver IP[:PORT]] [--relay-ip IP] DOMAIN
 *
 * The misconfigurations that silently break a whole fleet's deliverability
 * are checked the way a receiver would see them:
 *  - DKIM: the relay signs DOMAIN's mail with the key of dkim_table_choose()
 *    (lib/dkim); for each of that domain's keys, selector._domainkey.D must
 *    hold one record that publishes that very key (dkim_key_record_check).
 *  - SPF (RFC 7208): DOMAIN's v=spf1 record must authorise the relay's public
 *    address: ip4:, a, mx, include: and redirect= are evaluated, within the
 *    RFC's limit of 10 DNS-querying terms (4.6.4); ptr, exists: and macros
 *    are not evaluated (a WARN says so) and count as no match.
 *  - DMARC (RFC 7489): _dmarc.DOMAIN (or the organisational domain's record)
 *    must exist and DMARC must pass: by the relay's DKIM signature when its
 *    d= is aligned (adkim), or by SPF when it passes (aspf; the envelope
 *    sender is assumed to be in DOMAIN).  The organisational domain is taken
 *    as the last two labels (no public suffix list: an offline tool).
 * Every finding is one line: "OK|WARN|FAIL area name: what[; fix: ...]".
 * Exit status: 0 no FAIL, 1 some FAIL, 2 usage or configuration error.
 *
 * DNS goes through lib/dns's codec over an ordinary kernel UDP socket (TCP
 * when the answer is truncated): this is an operator's tool, not the data
 * path.  Every query is bounded in time (2 tries of 2 s) and in count.
 */
#include "check.h"

#include "core.h"
#include "dkim.h"
#include "dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ANS_MAX 16	      /* records kept per answer */
#define ANS_TEXT 16384	      /* joined TXT strings of one answer */
#define QUERY_TIMEOUT_MS 2000 /* per try */
#define QUERY_TRIES 2	      /* per query */
#define QUERY_LIMIT 200	      /* queries per run: a looping zone cannot keep us busy */
#define SPF_LOOKUP_LIMIT 10   /* RFC 7208 4.6.4 */
#define SPF_MX_LIMIT 10	      /* RFC 7208 4.6.4: MX names looked up per mx term */
#define SPF_DEPTH_LIMIT 10    /* include/redirect nesting */

struct answer {
	int status; /* 0 records, -ENOENT NXDOMAIN, -ENODATA no record of the type, -EAGAIN */
	unsigned count;
	uint32_t a[ANS_MAX];
	char mx[ANS_MAX][DNS_NAME_TEXT_MAX];
	size_t txt_off[ANS_MAX], txt_len[ANS_MAX];
	char text[ANS_TEXT];
};

struct checker {
	struct sockaddr_in resolver;
	unsigned queries;
	unsigned fails, warns;
	struct dns_msg msg; /* parse area, reused */
	uint8_t pkt[65536];
};

/* ---- output ---------------------------------------------------------------------- */

static void finding(struct checker *c, const char *level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void finding(struct checker *c, const char *level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%-4s ", level);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	if (strcmp(level, "FAIL") == 0)
		c->fails++;
	else if (strcmp(level, "WARN") == 0)
		c->warns++;
}

/* Append src to the NUL-terminated dst of cap bytes, cutting what does not fit. */
static void str_append(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(dst), add = strlen(src);
	if (n + 1 >= cap)
		return;
	if (add > cap - n - 1)
		add = cap - n - 1;
	memcpy(dst + n, src, add);
	dst[n + add] = '\0';
}

static const char *ip_str(uint32_t ip, char *buf)
{
	snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
	return buf;
}

/* ---- DNS ------------------------------------------------------------------------- */

static int tcp_exchange(struct checker *c, const uint8_t *q, size_t qlen, size_t *rlen)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct timeval tv = {.tv_sec = QUERY_TIMEOUT_MS / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	uint8_t hdr[2] = {(uint8_t)(qlen >> 8), (uint8_t)qlen};
	int rc = -EIO;
	if (connect(fd, (struct sockaddr *)&c->resolver, sizeof(c->resolver)) != 0 ||
	    send(fd, hdr, 2, MSG_NOSIGNAL) != 2 || send(fd, q, qlen, MSG_NOSIGNAL) != (ssize_t)qlen)
		goto out;
	size_t got = 0, want = 2;
	uint8_t lenbuf[2];
	while (got < want) {
		ssize_t n = recv(fd, lenbuf + got, want - got, 0);
		if (n <= 0)
			goto out;
		got += (size_t)n;
	}
	want = (size_t)lenbuf[0] << 8 | lenbuf[1];
	if (want > sizeof(c->pkt))
		goto out;
	for (got = 0; got < want;) {
		ssize_t n = recv(fd, c->pkt + got, want - got, 0);
		if (n <= 0)
			goto out;
		got += (size_t)n;
	}
	*rlen = want;
	rc = 0;
out:
	close(fd);
	return rc;
}

static int udp_exchange(struct checker *c, const uint8_t *q, size_t qlen, uint16_t id, size_t *rlen)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* a connected socket only receives from the resolver's address and port */
	int rc = -ETIMEDOUT;
	if (connect(fd, (struct sockaddr *)&c->resolver, sizeof(c->resolver)) != 0) {
		rc = -errno;
		goto out;
	}
	for (int attempt = 0; attempt < QUERY_TRIES; attempt++) {
		if (send(fd, q, qlen, 0) != (ssize_t)qlen) {
			rc = -EIO;
			continue;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		/* replies with another ID are ignored; at most ANS_MAX of them per try */
		for (int stray = 0; stray < ANS_MAX && poll(&pfd, 1, QUERY_TIMEOUT_MS) == 1;
		     stray++) {
			ssize_t n = recv(fd, c->pkt, sizeof(c->pkt), 0);
			if (n >= 12 && (c->pkt[0] << 8 | c->pkt[1]) == id) {
				*rlen = (size_t)n;
				rc = 0;
				goto out;
			}
			if (n < 0 && errno == ECONNREFUSED) {
				rc = -ECONNREFUSED;
				break;
			}
		}
	}
out:
	close(fd);
	return rc;
}

/* Ask the resolver name/qtype; records of that type in the answer section go into ans. */
static void dns_ask(struct checker *c, const char *name, uint16_t qtype, struct answer *ans)
{
	uint8_t q[DNS_NAME_MAX + 64];
	memset(ans, 0, offsetof(struct answer, text));
	ans->status = -EAGAIN;
	if (++c->queries > QUERY_LIMIT)
		return;
	uint16_t id = (uint16_t)(rand() & 0xffff);
	int qlen = dns_encode_query(q, sizeof(q), id, name, qtype, true);
	if (qlen < 0) {
		ans->status = -EINVAL;
		return;
	}
	size_t rlen = 0;
	enum dns_malformed why;
	if (udp_exchange(c, q, (size_t)qlen, id, &rlen) != 0 ||
	    dns_msg_parse(&c->msg, c->pkt, rlen, &why) != 0)
		return;
	if (c->msg.flags & DNS_F_TC) {
		if (tcp_exchange(c, q, (size_t)qlen, &rlen) != 0 ||
		    dns_msg_parse(&c->msg, c->pkt, rlen, &why) != 0 || c->msg.id != id)
			return;
	}
	if (c->msg.qtype != qtype || !dns_name_equal(c->msg.qname, name))
		return;
	unsigned rcode = DNS_F_RCODE(c->msg.flags);
	if (rcode == DNS_RCODE_NXDOMAIN) {
		ans->status = -ENOENT;
		return;
	}
	if (rcode != DNS_RCODE_NOERROR)
		return;
	unsigned n;
	const struct dns_rr *rr = dns_msg_section(&c->msg, DNS_SEC_ANSWER, &n);
	size_t used = 0;
	for (unsigned i = 0; i < n && ans->count < ANS_MAX; i++) {
		if (rr[i].type != qtype)
			continue; /* CNAMEs on the way */
		unsigned k = ans->count;
		if (qtype == DNS_T_A) {
			ans->a[k] = rr[i].a;
		} else if (qtype == DNS_T_MX) {
			snprintf(ans->mx[k], sizeof(ans->mx[k]), "%s", rr[i].mx.host);
		} else if (qtype == DNS_T_TXT) {
			if (used >= sizeof(ans->text))
				break; /* the text area is full: keep what fits */
			/* join the character-strings (RFC 7208 3.3, RFC 6376 3.6.2.2) */
			const uint8_t *p = rr[i].txt.data;
			size_t len = rr[i].txt.len, off = 0;
			ans->txt_off[k] = used;
			while (off < len) {
				size_t sl = p[off++];
				if (sl > len - off || used + sl + 1 > sizeof(ans->text))
					break;
				memcpy(ans->text + used, p + off, sl);
				used += sl;
				off += sl;
			}
			ans->txt_len[k] = used - ans->txt_off[k];
			ans->text[used++] = '\0';
		} else {
			continue;
		}
		ans->count++;
	}
	ans->status = ans->count ? 0 : -ENODATA;
}

static const char *txt_at(const struct answer *a, unsigned i)
{
	return a->text + a->txt_off[i];
}

static const char *status_str(int status)
{
	switch (status) {
	case -ENOENT:
		return "the name does not exist (NXDOMAIN)";
	case -ENODATA:
		return "no TXT record";
	case -EINVAL:
		return "not a valid DNS name";
	default:
		return "no answer from the resolver (timeout, SERVFAIL or a malformed reply)";
	}
}

/* ---- DKIM -------------------------------------------------------------------------- */

/* The record to publish, in strings of at most 255 bytes (RFC 1035 3.3.14). */
static void fix_record(const struct dkim_key *key, const char *name, char *out, size_t cap)
{
	char rec[2048];
	int n = dkim_key_txt_record(key, rec, sizeof(rec));
	size_t o = (size_t)snprintf(out, cap, "%s. IN TXT", name);
	for (int off = 0; n > 0 && off < n && o < cap; off += 255)
		o += (size_t)snprintf(out + o, cap - o, " \"%.*s\"", n - off < 255 ? n - off : 255,
				      rec + off);
}

/* Returns true when the published record is the key's. */
static bool check_one_key(struct checker *c, const struct dkim_key *key, const char *selector,
			  const char *domain, struct answer *ans)
{
	char name[DNS_NAME_TEXT_MAX + 64], fix[4096], why[256];
	snprintf(name, sizeof(name), "%s._domainkey.%s", selector, domain);
	fix_record(key, name, fix, sizeof(fix));
	const char *alg =
		dkim_key_alg(key) == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
	dns_ask(c, name, DNS_T_TXT, ans);
	if (ans->status != 0) {
		finding(c, "FAIL", "dkim %s: %s; fix: publish %s", name, status_str(ans->status),
			fix);
		return false;
	}
	if (ans->count > 1) {
		/* RFC 6376 3.6.2.2: a verifier may pick any of them */
		finding(c, "FAIL", "dkim %s: %u TXT records; fix: keep only %s", name, ans->count,
			fix);
		return false;
	}
	unsigned flags;
	int rc = dkim_key_record_check(key, txt_at(ans, 0), ans->txt_len[0], &flags, why,
				       sizeof(why));
	if (rc != 0) {
		finding(c, "FAIL", "dkim %s: %s; fix: publish %s", name, why, fix);
		return false;
	}
	finding(c, "OK", "dkim %s: publishes the configured %s key (%u bits)", name, alg,
		dkim_key_bits(key));
	if (flags & DKIM_RECORD_TESTING)
		finding(c, "WARN",
			"dkim %s: t=y (testing): receivers may ignore the signature; fix: remove "
			"t=y",
			name);
	return true;
}

/* ---- SPF (RFC 7208) ---------------------------------------------------------------- */

enum spf_result {
	SPF_NONE,
	SPF_NEUTRAL,
	SPF_PASS,
	SPF_FAIL,
	SPF_SOFTFAIL,
	SPF_TEMPERROR,
	SPF_PERMERROR
};

static const char *const spf_names[] = {"none",	    "neutral",	 "pass",     "fail",
					"softfail", "temperror", "permerror"};

struct spf {
	struct checker *c;
	uint32_t ip;
	unsigned lookups;
	char matched[512]; /* "include:x -> ip4:..." */
	char why[512];	   /* for permerror/temperror, and notes */
	bool unevaluated;  /* a ptr/exists/macro term was skipped */
};

static enum spf_result spf_eval(struct spf *x, const char *domain, unsigned depth);

static bool spf_in(uint32_t ip, uint32_t net, unsigned len)
{
	uint32_t mask = len == 0 ? 0 : 0xffffffffu << (32 - len);
	return (ip & mask) == (net & mask);
}

/* "/24" at the end of spec: strips it and returns the length, 32 if absent, -1 if bad. */
static int spf_cidr(char *spec)
{
	char *slash = strchr(spec, '/');
	if (!slash)
		return 32;
	*slash = '\0';
	char *end;
	long v = strtol(slash + 1, &end, 10);
	if (end == slash + 1 || (*end != '\0' && *end != '/') || v < 0 || v > 32)
		return -1;
	return (int)v; /* a "//64" IPv6 length after it is ignored */
}

static bool spf_lookup_budget(struct spf *x)
{
	if (++x->lookups > SPF_LOOKUP_LIMIT) {
		snprintf(x->why, sizeof(x->why), "more than %d DNS-querying terms (RFC 7208 4.6.4)",
			 SPF_LOOKUP_LIMIT);
		return false;
	}
	return true;
}

/* a / mx: does ip fall in one of the target's A records (len bits)? -1 temperror */
static int spf_match_a(struct spf *x, const char *target, int len)
{
	struct answer *a = malloc(sizeof(*a));
	if (!a)
		return -1;
	dns_ask(x->c, target, DNS_T_A, a);
	int rc = a->status == -EAGAIN ? -1 : 0;
	for (unsigned i = 0; i < a->count && rc == 0; i++)
		rc = spf_in(x->ip, a->a[i], (unsigned)len);
	free(a);
	return rc;
}

static int spf_match_mx(struct spf *x, const char *target, int len)
{
	struct answer *mx = malloc(sizeof(*mx));
	if (!mx)
		return -1;
	dns_ask(x->c, target, DNS_T_MX, mx);
	int rc = mx->status == -EAGAIN ? -1 : 0;
	for (unsigned i = 0; i < mx->count && i < SPF_MX_LIMIT && rc == 0; i++)
		rc = spf_match_a(x, mx->mx[i], len);
	free(mx);
	return rc;
}

/* One term; returns 1 match, 0 no match, -1 temperror, -2 permerror. */
static int spf_term(struct spf *x, const char *domain, const char *mech, char *arg, bool has_arg,
		    unsigned depth)
{
	char target[DNS_NAME_TEXT_MAX];
	int len = 32;
	if (strcasecmp(mech, "all") == 0)
		return 1;
	if (strcasecmp(mech, "ip4") == 0) {
		uint32_t net;
		len = spf_cidr(arg);
		if (!has_arg || len < 0 || cfg_parse_ipv4(arg, &net) != 0) {
			snprintf(x->why, sizeof(x->why), "bad ip4 term in %s's record", domain);
			return -2;
		}
		return spf_in(x->ip, net, (unsigned)len);
	}
	if (strcasecmp(mech, "ip6") == 0)
		return 0; /* the relay's address is IPv4 */
	if (strcasecmp(mech, "a") == 0 || strcasecmp(mech, "mx") == 0 ||
	    strcasecmp(mech, "include") == 0 || strcasecmp(mech, "ptr") == 0 ||
	    strcasecmp(mech, "exists") == 0) {
		if (!spf_lookup_budget(x))
			return -2;
	} else {
		snprintf(x->why, sizeof(x->why), "unknown mechanism '%s' in %s's record", mech,
			 domain);
		return -2;
	}
	if (strcasecmp(mech, "ptr") == 0 || strcasecmp(mech, "exists") == 0 || strchr(arg, '%')) {
		x->unevaluated = true;
		return 0;
	}
	if (strcasecmp(mech, "a") == 0 || strcasecmp(mech, "mx") == 0) {
		len = spf_cidr(arg);
		if (len < 0) {
			snprintf(x->why, sizeof(x->why), "bad CIDR length in %s's record", domain);
			return -2;
		}
	}
	snprintf(target, sizeof(target), "%s", has_arg && arg[0] ? arg : domain);
	if (strcasecmp(mech, "a") == 0)
		return spf_match_a(x, target, len);
	if (strcasecmp(mech, "mx") == 0)
		return spf_match_mx(x, target, len);
	/* include: RFC 7208 5.2: pass matches; fail, softfail, neutral do not */
	if (!has_arg || !arg[0]) {
		snprintf(x->why, sizeof(x->why), "include without a domain in %s's record", domain);
		return -2;
	}
	enum spf_result r = spf_eval(x, target, depth + 1);
	if (r == SPF_PASS)
		return 1;
	x->matched[0] = '\0'; /* what ended the included record is not a match here */
	if (r == SPF_TEMPERROR)
		return -1;
	if (r == SPF_NONE || r == SPF_PERMERROR) {
		if (r == SPF_NONE)
			snprintf(x->why, sizeof(x->why), "include:%s has no SPF record", target);
		return -2;
	}
	return 0;
}

static enum spf_result spf_eval(struct spf *x, const char *domain, unsigned depth)
{
	if (depth > SPF_DEPTH_LIMIT) {
		snprintf(x->why, sizeof(x->why), "include/redirect nested deeper than %d",
			 SPF_DEPTH_LIMIT);
		return SPF_PERMERROR;
	}
	struct answer *ans = malloc(sizeof(*ans));
	if (!ans)
		return SPF_TEMPERROR;
	enum spf_result result = SPF_NEUTRAL;
	char record[4096], redirect[DNS_NAME_TEXT_MAX] = "";
	dns_ask(x->c, domain, DNS_T_TXT, ans);
	if (ans->status == -EAGAIN || ans->status == -EINVAL) {
		snprintf(x->why, sizeof(x->why), "TXT %s: %s", domain, status_str(ans->status));
		result = ans->status == -EINVAL ? SPF_PERMERROR : SPF_TEMPERROR;
		goto out;
	}
	/* 4.5: records that begin with "v=spf1" and then a space or nothing */
	int found = -1, spf_count = 0;
	for (unsigned i = 0; i < ans->count; i++) {
		const char *t = txt_at(ans, i);
		if (strncasecmp(t, "v=spf1", 6) == 0 && (t[6] == ' ' || t[6] == '\0')) {
			found = (int)i;
			spf_count++;
		}
	}
	if (spf_count == 0) {
		result = SPF_NONE;
		goto out;
	}
	if (spf_count > 1) {
		snprintf(x->why, sizeof(x->why), "%s has %d SPF records (RFC 7208 3.2)", domain,
			 spf_count);
		result = SPF_PERMERROR;
		goto out;
	}
	snprintf(record, sizeof(record), "%s", txt_at(ans, (unsigned)found) + 6);
	char *save = NULL;
	for (char *term = strtok_r(record, " ", &save); term; term = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(term, '='), *colon = strchr(term, ':'),
		     *slash = strchr(term, '/');
		if (eq && (!colon || eq < colon) && (!slash || eq < slash)) {
			/* modifier (RFC 7208 6): only redirect= changes the result */
			if (strncasecmp(term, "redirect=", 9) == 0)
				snprintf(redirect, sizeof(redirect), "%s", eq + 1);
			continue;
		}
		char qual = '+';
		if (strchr("+-~?", term[0])) {
			qual = term[0];
			term++;
		}
		char whole[512];
		snprintf(whole, sizeof(whole), "%c%s", qual, term);
		char *arg = "";
		bool has_arg = false;
		char mech[16];
		size_t ml = strcspn(term, ":/");
		if (ml >= sizeof(mech) || ml == 0) {
			snprintf(x->why, sizeof(x->why), "bad term '%s' in %s's record", term,
				 domain);
			result = SPF_PERMERROR;
			goto out;
		}
		memcpy(mech, term, ml);
		mech[ml] = '\0';
		if (term[ml] == ':') {
			arg = term + ml + 1;
			has_arg = true;
		} else if (term[ml] == '/') {
			arg = term + ml; /* "a/24": the domain is the current one */
		}
		int m = spf_term(x, domain, mech, arg, has_arg, depth);
		if (m == -1) {
			result = SPF_TEMPERROR;
			goto out;
		}
		if (m == -2) {
			result = SPF_PERMERROR;
			goto out;
		}
		if (m == 1) {
			result = qual == '-'   ? SPF_FAIL
				 : qual == '~' ? SPF_SOFTFAIL
				 : qual == '?' ? SPF_NEUTRAL
					       : SPF_PASS;
			/* "term in domain", then what an include matched inside it */
			char chain[sizeof(x->matched)] = "";
			str_append(chain, sizeof(chain), whole);
			str_append(chain, sizeof(chain), " in ");
			str_append(chain, sizeof(chain), domain);
			if (x->matched[0]) {
				str_append(chain, sizeof(chain), " -> ");
				str_append(chain, sizeof(chain), x->matched);
			}
			memcpy(x->matched, chain, sizeof(chain));
			goto out;
		}
	}
	if (redirect[0]) {
		/* 6.1: only when no mechanism matched; a target without SPF is permerror */
		if (!spf_lookup_budget(x)) {
			result = SPF_PERMERROR;
			goto out;
		}
		result = spf_eval(x, redirect, depth + 1);
		if (result == SPF_NONE) {
			snprintf(x->why, sizeof(x->why), "redirect=%s has no SPF record", redirect);
			result = SPF_PERMERROR;
		}
	}
out:
	free(ans);
	return result;
}

/* The domain's own record, for the fix line: its text, or "". */
static void spf_record_text(struct checker *c, const char *domain, char *out, size_t cap)
{
	struct answer *ans = malloc(sizeof(*ans));
	out[0] = '\0';
	if (!ans)
		return;
	dns_ask(c, domain, DNS_T_TXT, ans);
	for (unsigned i = 0; i < ans->count; i++) {
		const char *t = txt_at(ans, i);
		if (strncasecmp(t, "v=spf1", 6) == 0 && (t[6] == ' ' || t[6] == '\0')) {
			snprintf(out, cap, "%s", t);
			break;
		}
	}
	free(ans);
}

static bool check_spf(struct checker *c, const char *domain, uint32_t ip)
{
	char ipb[16], rec[4096];
	struct spf x = {.c = c, .ip = ip};
	if (ip == 0) {
		finding(c, "WARN",
			"spf %s: the relay's public address is unknown, not evaluated; fix: give "
			"--relay-ip or set [dkim] public_addr",
			domain);
		return false;
	}
	ip_str(ip, ipb);
	enum spf_result r = spf_eval(&x, domain, 0);
	if (x.unevaluated)
		finding(c, "WARN", "spf %s: ptr, exists: or macro terms were not evaluated",
			domain);
	switch (r) {
	case SPF_PASS:
		finding(c, "OK", "spf %s: %s is authorised (%s)", domain, ipb, x.matched);
		if (strncmp(x.matched, "+all", 4) == 0)
			finding(c, "WARN",
				"spf %s: +all authorises every host on the Internet; fix: replace "
				"it "
				"with ip4:%s -all",
				domain, ipb);
		return true;
	case SPF_NONE:
		finding(c, "FAIL",
			"spf %s: no SPF record; fix: publish %s. IN TXT \"v=spf1 ip4:%s -all\"",
			domain, domain, ipb);
		return false;
	case SPF_TEMPERROR:
		finding(c, "FAIL", "spf %s: cannot evaluate: %s", domain, x.why);
		return false;
	case SPF_PERMERROR:
		finding(c, "FAIL", "spf %s: permerror: %s; fix: correct the record", domain, x.why);
		return false;
	default:
		spf_record_text(c, domain, rec, sizeof(rec));
		finding(c, "FAIL",
			"spf %s: %s is not authorised (result %s%s%s); fix: publish %s. IN TXT "
			"\"v=spf1 ip4:%s%s\"",
			domain, ipb, spf_names[r], x.matched[0] ? " by " : "", x.matched, domain,
			ipb, rec[0] ? rec + 6 : " -all");
		return false;
	}
}

/* ---- DMARC (RFC 7489) ---------------------------------------------------------------- */

/* Organisational domain, approximated by the last two labels (no public suffix list). */
static const char *org_domain(const char *d)
{
	const char *last = strrchr(d, '.');
	if (!last || last == d)
		return d;
	for (const char *p = last - 1; p > d; p--)
		if (*p == '.')
			return p + 1;
	return d;
}

/* value of tag name in a DMARC tag list ("v=DMARC1; p=reject"), copied into out, or NULL */
static const char *dmarc_tag(const char *rec, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name);
	for (const char *p = rec; p && *p;) {
		while (*p == ' ' || *p == '\t' || *p == ';')
			p++;
		const char *end = strchr(p, ';');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		if (eq) {
			size_t k = (size_t)(eq - p);
			while (k > 0 && (p[k - 1] == ' ' || p[k - 1] == '\t'))
				k--;
			if (k == nl && strncasecmp(p, name, nl) == 0) {
				const char *v = eq + 1;
				size_t vl = len - (size_t)(v - p);
				while (vl && (*v == ' ' || *v == '\t'))
					v++, vl--;
				while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
					vl--;
				snprintf(out, cap, "%.*s", (int)vl, v);
				return out;
			}
		}
		p = end;
	}
	return NULL;
}

static void check_dmarc(struct checker *c, const char *domain, const char *sig_domain, bool dkim_ok,
			bool spf_ok)
{
	char name[DNS_NAME_TEXT_MAX + 16], rec[4096] = "", p[32], adkim[8] = "r", aspf[8] = "r";
	struct answer *ans = malloc(sizeof(*ans));
	if (!ans)
		return;
	const char *where[2] = {domain, org_domain(domain)};
	int tries = strcasecmp(where[0], where[1]) == 0 ? 1 : 2, count = 0, w;
	for (w = 0; w < tries && count == 0; w++) {
		snprintf(name, sizeof(name), "_dmarc.%s", where[w]);
		dns_ask(c, name, DNS_T_TXT, ans);
		if (ans->status == -EAGAIN) {
			finding(c, "FAIL", "dmarc %s: %s", name, status_str(ans->status));
			free(ans);
			return;
		}
		/* RFC 7489 6.6.3: records that start with v=DMARC1; more than one: none applies */
		for (unsigned i = 0; i < ans->count; i++) {
			const char *t = txt_at(ans, i);
			size_t k = 0;
			while (t[k] == ' ')
				k++;
			if (strncmp(t + k, "v=DMARC1", 8) == 0 &&
			    (t[k + 8] == ';' || t[k + 8] == ' ' || t[k + 8] == '\0')) {
				snprintf(rec, sizeof(rec), "%s", t);
				count++;
			}
		}
	}
	free(ans);
	snprintf(name, sizeof(name), "_dmarc.%s", domain);
	if (count == 0) {
		finding(c, "FAIL",
			"dmarc %s: no DMARC record; fix: publish %s. IN TXT \"v=DMARC1; p=none; "
			"rua=mailto:dmarc-reports@%s\" (then quarantine or reject once reports are "
			"clean)",
			name, name, domain);
		return;
	}
	if (count > 1) {
		finding(c, "FAIL",
			"dmarc %s: %d DMARC records, receivers apply none; fix: keep one", name,
			count);
		return;
	}
	if (w == 2)
		finding(c, "WARN",
			"dmarc %s: no record; the organisational domain's _dmarc.%s applies", name,
			where[1]);
	if (!dmarc_tag(rec, "p", p, sizeof(p)) ||
	    (strcmp(p, "none") && strcmp(p, "quarantine") && strcmp(p, "reject"))) {
		finding(c, "FAIL",
			"dmarc %s: p= missing or invalid in \"%s\"; fix: p=none, quarantine or "
			"reject",
			name, rec);
		return;
	}
	dmarc_tag(rec, "adkim", adkim, sizeof(adkim));
	dmarc_tag(rec, "aspf", aspf, sizeof(aspf));
	bool dkim_aligned = sig_domain != NULL &&
			    (strcasecmp(sig_domain, domain) == 0 ||
			     (strcmp(adkim, "s") != 0 &&
			      strcasecmp(org_domain(sig_domain), org_domain(domain)) == 0));
	/* SPF authenticates the envelope sender, assumed to be in domain: aligned either way */
	bool dkim_pass = dkim_ok && dkim_aligned;
	if (!dkim_pass && !spf_ok) {
		finding(c, "FAIL",
			"dmarc %s: p=%s and DMARC would fail: %s%s%s, and SPF does not pass; fix: "
			"%s",
			name, p, sig_domain ? "DKIM d=" : "no DKIM signature",
			sig_domain ? sig_domain : "",
			sig_domain && !dkim_aligned ? " is not aligned (adkim)"
			: sig_domain		    ? " does not verify"
						    : "",
			!dkim_aligned ? "sign with a key of this domain ([dkim \"domain\"])"
				      : "publish the DKIM record above");
		return;
	}
	finding(c, "OK", "dmarc %s: p=%s; passes by %s%s%s%s", name, p, dkim_pass ? "DKIM (d=" : "",
		dkim_pass ? sig_domain : "", dkim_pass ? ")" : "",
		spf_ok ? (dkim_pass ? " and SPF" : "SPF") : "");
	if (strcmp(p, "none") == 0)
		finding(c, "WARN",
			"dmarc %s: p=none only monitors; fix: p=quarantine or p=reject once "
			"reports "
			"are clean",
			name);
	if (!dkim_pass)
		finding(c, "WARN",
			"dmarc %s: passes by SPF alone, which forwarding breaks; fix: the DKIM "
			"findings above",
			name);
}

/* ---- the command ----------------------------------------------------------------------- */

static int parse_resolver(const char *s, struct sockaddr_in *out)
{
	char host[64];
	unsigned port = 53;
	const char *colon = strchr(s, ':');
	size_t hl = colon ? (size_t)(colon - s) : strlen(s);
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = '\0';
	if (colon) {
		char *end;
		unsigned long v = strtoul(colon + 1, &end, 10);
		if (*end || v == 0 || v > 65535)
			return -EINVAL;
		port = (unsigned)v;
	}
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -EINVAL;
}

/* The first IPv4 nameserver of /etc/resolv.conf. */
static int system_resolver(struct sockaddr_in *out)
{
	FILE *fp = fopen("/etc/resolv.conf", "r");
	char line[256], addr[64];
	int rc = -ENOENT;
	if (!fp)
		return -errno;
	while (rc != 0 && fgets(line, sizeof(line), fp))
		if (sscanf(line, " nameserver %63s", addr) == 1 && strchr(addr, ':') == NULL)
			rc = parse_resolver(addr, out);
	fclose(fp);
	return rc;
}

int mxdkim_check(const char *config, const char *resolver, const char *relay_ip,
		 const char *domain_arg)
{
	struct checker *c = calloc(1, sizeof(*c));
	struct cfg_file *cf = NULL;
	struct dkim_table *t = NULL;
	struct cfg_report r = {0};
	char err[512], domain[DNS_NAME_TEXT_MAX], ipb[16];
	int status = 2;
	if (!c)
		return 2;
	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	snprintf(domain, sizeof(domain), "%s", domain_arg);
	for (char *p = domain; *p; p++)
		*p = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
	size_t dl = strlen(domain);
	if (dl && domain[dl - 1] == '.')
		domain[dl - 1] = '\0';
	if ((resolver ? parse_resolver(resolver, &c->resolver) : system_resolver(&c->resolver))) {
		fprintf(stderr, "mxdkim: %s: not a resolver address (IP or IP:PORT)\n",
			resolver ? resolver : "/etc/resolv.conf");
		goto out;
	}
	if (cfg_parse_file(config, &cf, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxdkim: %s\n", err);
		goto out;
	}
	if (dkim_table_load(cf, &t, &r) != 0) {
		fprintf(stderr, "%s", r.text);
		goto out;
	}
	uint32_t ip = t->public_addr;
	if (relay_ip && cfg_parse_ipv4(relay_ip, &ip) != 0) {
		fprintf(stderr, "mxdkim: --relay-ip %s: not an IPv4 address\n", relay_ip);
		goto out;
	}
	struct cfg_entry *e;
	uint8_t plen;
	if (ip == 0 && (e = cfg_get(cf, "port.0", NULL, "addr")) != NULL)
		cfg_parse_ipv4_prefix(e->value, &ip, &plen);

	/* DKIM: the domain the relay signs DOMAIN's mail with, and its keys */
	const struct dkim_domain *d = dkim_table_choose(t, domain, domain);
	bool dkim_ok = false;
	if (d == NULL) {
		finding(c, "FAIL",
			"dkim %s: the relay has no key for it and no default_domain: mail is sent "
			"unsigned; fix: add a [dkim \"%s\"] section with selector and key",
			domain, domain);
	} else {
		if (strcasecmp(d->domain, domain) != 0)
			finding(c, "WARN",
				"dkim %s: signed as d=%s (no [dkim \"%s\"] section, or "
				"domain_from); "
				"DMARC needs it aligned",
				domain, d->domain, domain);
		struct answer *ans = malloc(sizeof(*ans));
		if (!ans)
			goto out;
		dkim_ok = true;
		const struct dkim_signer_config *sc = &d->config;
		if (sc->rsa_key)
			dkim_ok &= check_one_key(c, sc->rsa_key, sc->selector, d->domain, ans);
		if (sc->ed25519_key)
			dkim_ok &= check_one_key(c, sc->ed25519_key,
						 sc->ed25519_selector ? sc->ed25519_selector
								      : sc->selector,
						 d->domain, ans);
		free(ans);
	}
	bool spf_ok = check_spf(c, domain, ip);
	check_dmarc(c, domain, d ? d->domain : NULL, dkim_ok, spf_ok);
	printf("%s: %u FAIL, %u WARN (relay address %s, %u DNS queries)\n", domain, c->fails,
	       c->warns, ip ? ip_str(ip, ipb) : "unknown", c->queries);
	status = c->fails ? 1 : 0;
out:
	dkim_table_free(t);
	cfg_free(cf);
	free(c);
	return status;
}
