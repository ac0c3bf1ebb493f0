/*
 * mail.c - mail routing: domain -> ordered MX hosts with IPv4 addresses.
 *
 * RFC 5321 5.1 as an MTA applies it:
 *  - an address literal "[192.0.2.10]" is the route, no DNS;
 *  - MX lookup first (the resolver follows CNAMEs); hosts sorted by
 *    preference, random order among equal preferences;
 *  - no MX records (NODATA) -> implicit MX: the domain itself, preference 0;
 *  - a Null MX (RFC 7505 3: a single "MX 0 .") -> 556 5.1.10, permanent;
 *  - NXDOMAIN -> 550 5.1.2, permanent; SERVFAIL/timeouts -> 451 4.4.3;
 *  - each host resolved to A records (AAAA is for later);
 *  - if one of the relay's own addresses (conf.self_addrs) appears, that
 *    host and every host of the same or a worse preference are dropped; if
 *    nothing is left the relay is the best MX: 554 5.4.6 mail loop.
 *  - no host with an address: 451 4.4.3 if any lookup failed temporarily,
 *    else 550 5.4.4 (unable to route).
 */
#include "dns_internal.h"
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mail_lookup;

struct host_query {
	struct mail_lookup *ml;
	unsigned idx;
};

struct mail_lookup {
	struct dns_resolver *r;
	dns_mail_cb cb;
	void *arg;
	char domain[DNS_NAME_TEXT_MAX];
	unsigned outstanding;
	bool issuing;
	struct host_query hq[DNS_MAIL_MAX_HOSTS];
	struct dns_mail_route route;
};

int dns_mail_parse_literal(const char *domain, uint32_t *addr)
{
	char buf[20];
	size_t n;

	if (domain == NULL || domain[0] != '[')
		return -EINVAL;
	n = strlen(domain);
	if (n < 9 || n - 2 >= sizeof(buf) || domain[n - 1] != ']')
		return -EINVAL;
	memcpy(buf, domain + 1, n - 2);
	buf[n - 2] = '\0';
	return cfg_parse_ipv4(buf, addr);
}

static bool is_self(const struct dns_conf *conf, uint32_t addr)
{
	for (unsigned i = 0; i < conf->self_addr_count && i < DNS_MAX_SELF_ADDRS; i++)
		if (conf->self_addrs[i] == addr)
			return true;
	return false;
}

static void set_fail(struct dns_mail_route *rt, int result, uint16_t reply, const char *status,
		     const char *reason)
{
	rt->result = result;
	rt->reply = reply;
	snprintf(rt->status, sizeof(rt->status), "%s", status);
	rt->reason = reason;
	rt->host_count = 0;
}

static void complete(struct mail_lookup *ml)
{
	ml->cb(ml->arg, &ml->route);
	free(ml);
}

/* All host lookups done: loop detection, then keep hosts with addresses. */
static void finish_hosts(struct mail_lookup *ml)
{
	const struct dns_conf *conf = dns_cache_conf(dns_resolver_cache(ml->r));
	struct dns_mail_route *rt = &ml->route;
	unsigned keep = rt->host_count, kept = 0;
	bool temp = false;

	for (unsigned i = 0; i < rt->host_count && keep == rt->host_count; i++)
		for (unsigned a = 0; a < rt->hosts[i].addr_count; a++)
			if (is_self(conf, rt->hosts[i].addrs[a])) {
				/* RFC 5321 5.1: drop this preference and all worse ones. */
				keep = i;
				while (keep > 0 && rt->hosts[keep - 1].pref == rt->hosts[i].pref)
					keep--;
				break;
			}
	if (keep == 0 && rt->host_count > 0) {
		set_fail(rt, DNS_MAIL_PERMFAIL, 554, "5.4.6",
			 "mail loop: the relay is the best MX");
		complete(ml);
		return;
	}
	for (unsigned i = 0; i < keep; i++) {
		if (rt->hosts[i].status == DNS_TEMPFAIL)
			temp = true;
		if (rt->hosts[i].addr_count == 0)
			continue;
		if (kept != i)
			rt->hosts[kept] = rt->hosts[i];
		kept++;
	}
	rt->host_count = kept;
	if (kept == 0) {
		if (temp)
			set_fail(rt, DNS_MAIL_TEMPFAIL, 451, "4.4.3", "MX host lookup failed");
		else
			set_fail(rt, DNS_MAIL_PERMFAIL, 550, "5.4.4", "no address for any MX host");
	} else {
		rt->result = DNS_MAIL_OK;
	}
	complete(ml);
}

/* The route lives no longer than the records it was made of (the shortest TTL left). */
static void route_ttl(struct mail_lookup *ml, const struct dns_entry *e)
{
	uint64_t now = dns_resolver_now(ml->r);
	/* At least 1 s: 0 means "no TTL given" to the route's user. */
	uint32_t left =
		e->expire_us > now + 1000000 ? (uint32_t)((e->expire_us - now) / 1000000) : 1;
	if (left < ml->route.ttl_s)
		ml->route.ttl_s = left;
}

static void host_result(struct mail_lookup *ml, unsigned idx, int status, const struct dns_entry *e)
{
	struct dns_mail_host *h = &ml->route.hosts[idx];
	h->status = status;
	if (status == DNS_OK && e != NULL) {
		for (unsigned i = 0; i < e->rr_count && h->addr_count < DNS_MAIL_MAX_ADDRS; i++)
			if (e->rr[i].type == DNS_T_A)
				h->addrs[h->addr_count++] = e->rr[i].a;
	}
	if (e != NULL && !e->ad)
		ml->route.ad = false;
	if (e != NULL)
		route_ttl(ml, e);
	if (--ml->outstanding == 0 && !ml->issuing)
		finish_hosts(ml);
}

static void host_cb(void *arg, int status, const struct dns_entry *e)
{
	struct host_query *hq = arg;
	host_result(hq->ml, hq->idx, status, e);
}

static void resolve_hosts(struct mail_lookup *ml)
{
	struct dns_mail_route *rt = &ml->route;
	ml->outstanding = rt->host_count;
	ml->issuing = true;
	for (unsigned i = 0; i < rt->host_count; i++) {
		const struct dns_entry *e = NULL;
		ml->hq[i].ml = ml;
		ml->hq[i].idx = i;
		int rc = dns_resolve(ml->r, rt->hosts[i].name, DNS_T_A, host_cb, &ml->hq[i], &e);
		if (rc == 1)
			host_result(ml, i, e->status, e);
		else if (rc < 0)
			host_result(ml, i, DNS_TEMPFAIL, NULL);
	}
	ml->issuing = false;
	if (ml->outstanding == 0)
		finish_hosts(ml);
}

static void mx_result(struct mail_lookup *ml, int status, const struct dns_entry *e)
{
	struct dns_mail_route *rt = &ml->route;
	struct {
		uint16_t pref;
		const char *host;
	} mx[DNS_MSG_MAX_RR];
	unsigned n = 0, nulls = 0;

	switch (status) {
	case DNS_OK:
		break;
	case DNS_NXDOMAIN:
		set_fail(rt, DNS_MAIL_PERMFAIL, 550, "5.1.2", "domain does not exist");
		complete(ml);
		return;
	case DNS_NODATA:
		/* RFC 5321 5.1: no MX -> the domain is its own MX, preference 0. */
		rt->implicit_mx = true;
		rt->host_count = 1;
		snprintf(rt->hosts[0].name, sizeof(rt->hosts[0].name), "%s", ml->domain);
		if (e && !e->ad)
			rt->ad = false;
		if (e)
			route_ttl(ml, e);
		resolve_hosts(ml);
		return;
	default:
		set_fail(rt, DNS_MAIL_TEMPFAIL, 451, "4.4.3", "MX lookup failed temporarily");
		complete(ml);
		return;
	}
	if (!e->ad)
		rt->ad = false;
	route_ttl(ml, e);
	for (unsigned i = 0; i < e->rr_count && n < DNS_MSG_MAX_RR; i++) {
		if (e->rr[i].type != DNS_T_MX)
			continue;
		if (e->rr[i].mx.host[0] == '\0') {
			nulls++; /* RFC 7505 3: "." cannot be a host */
			continue;
		}
		/* Insertion sort by preference, stable. */
		unsigned j = n++;
		while (j > 0 && mx[j - 1].pref > e->rr[i].mx.pref) {
			mx[j] = mx[j - 1];
			j--;
		}
		mx[j].pref = e->rr[i].mx.pref;
		mx[j].host = e->rr[i].mx.host;
	}
	if (n == 0) {
		if (nulls > 0)
			set_fail(rt, DNS_MAIL_PERMFAIL, 556, "5.1.10",
				 "domain does not accept mail (null MX)");
		else
			set_fail(rt, DNS_MAIL_TEMPFAIL, 451, "4.4.3", "MX answer without hosts");
		complete(ml);
		return;
	}
	/* RFC 5321 5.1: random order among equal preferences (Fisher-Yates per group). */
	for (unsigned g = 0; g < n;) {
		unsigned end = g;
		while (end < n && mx[end].pref == mx[g].pref)
			end++;
		for (unsigned k = end - 1; k > g; k--) {
			unsigned j = g + dns_resolver_random(ml->r) % (k - g + 1);
			const char *tmp = mx[k].host;
			mx[k].host = mx[j].host;
			mx[j].host = tmp;
		}
		g = end;
	}
	rt->host_count = n < DNS_MAIL_MAX_HOSTS ? n : DNS_MAIL_MAX_HOSTS;
	for (unsigned i = 0; i < rt->host_count; i++) {
		rt->hosts[i].pref = mx[i].pref;
		snprintf(rt->hosts[i].name, sizeof(rt->hosts[i].name), "%s", mx[i].host);
	}
	resolve_hosts(ml);
}

static void mx_cb(void *arg, int status, const struct dns_entry *e)
{
	mx_result(arg, status, e);
}

int dns_mail_lookup(struct dns_resolver *r, const char *domain, dns_mail_cb cb, void *arg)
{
	uint8_t wire[DNS_NAME_MAX];
	struct mail_lookup *ml;
	const struct dns_entry *e = NULL;

	if (r == NULL || domain == NULL || cb == NULL)
		return -EINVAL;
	if (domain[0] == '[') {
		struct dns_mail_route lit;
		uint32_t addr;
		memset(&lit, 0, sizeof(lit));
		lit.literal = true;
		if (dns_mail_parse_literal(domain, &addr) < 0) {
			set_fail(&lit, DNS_MAIL_PERMFAIL, 550, "5.1.2",
				 "unsupported address literal");
		} else if (is_self(dns_cache_conf(dns_resolver_cache(r)), addr)) {
			set_fail(&lit, DNS_MAIL_PERMFAIL, 554, "5.4.6",
				 "mail loop: literal is the relay");
		} else {
			lit.host_count = 1;
			snprintf(lit.hosts[0].name, sizeof(lit.hosts[0].name), "%s", domain);
			lit.hosts[0].addr_count = 1;
			lit.hosts[0].addrs[0] = addr;
		}
		cb(arg, &lit);
		return 0;
	}
	if (dns_name_to_wire(domain, wire, sizeof(wire)) <= 1)
		return -EINVAL;
	ml = calloc(1, sizeof(*ml));
	if (ml == NULL)
		return -ENOMEM;
	ml->r = r;
	ml->cb = cb;
	ml->arg = arg;
	ml->route.ad = true;
	ml->route.ttl_s = UINT32_MAX;
	snprintf(ml->domain, sizeof(ml->domain), "%s", domain);
	int rc = dns_resolve(r, domain, DNS_T_MX, mx_cb, ml, &e);
	if (rc == 1) {
		mx_result(ml, e->status, e);
	} else if (rc == -ELOOP) {
		mx_result(ml, DNS_TEMPFAIL, NULL);
	} else if (rc < 0) {
		free(ml);
		return rc;
	}
	return 0;
}
