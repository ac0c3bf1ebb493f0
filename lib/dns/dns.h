/*
 * dns.h - mxrelay's DNS: message codec, shared cache, stub resolver, mail routes.
 *
 * Layers, lowest first:
 *  - codec (codec.c): RFC 1035 messages.  dns_msg_parse() decodes a response
 *    (or query) with compression, bound and loop checks; every rejection has a
 *    reason (enum dns_malformed).  dns_encode_query() and struct dns_builder
 *    write queries (EDNS0, UDP size 1232) and responses (tests, bench sink).
 *  - cache (cache.c): one struct dns_cache shared by all lcores.  Lookups are
 *    lock-free (rte_hash RW_CONCURRENCY_LF); entries are immutable and are
 *    reclaimed through rte_rcu_qsbr, so a pointer returned by a lookup stays
 *    valid until the calling thread's next dns_cache_quiescent().
 *  - resolver (resolver.c): one struct dns_resolver per lcore, transport
 *    agnostic.  It sends queries through ops->send() and is fed replies with
 *    dns_resolver_input(); timers run from dns_resolver_poll().  One upstream
 *    query per (name, type) for the whole machine (coalescing).
 *  - mail (mail.c): dns_mail_lookup(): domain -> ordered MX hosts with IPv4
 *    addresses, with the RFC 5321 5.1 / RFC 7505 rules and SMTP status codes.
 *
 * TCP framing: messages given to ops->send(tcp = true) and to
 * dns_resolver_input(tcp = true) are bare DNS messages WITHOUT the 2-byte
 * length prefix of RFC 1035 4.2.2; the transport adds and strips it.
 */
#ifndef MX_DNS_H
#define MX_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- constants ----------------------------------------------------------- */

#define DNS_NAME_MAX 255      /* wire octets, RFC 1035 2.3.4 */
#define DNS_NAME_TEXT_MAX 254 /* dotted text incl. NUL ("a.b" form, no trailing dot) */
#define DNS_LABEL_MAX 63
#define DNS_PTR_JUMPS_MAX 32 /* compression pointers followed per name */
#define DNS_MSG_MAX_RR 64    /* records kept per parsed message */
#define DNS_MSG_ARENA 16384  /* decoded names of one message */
#define DNS_EDNS_UDP_SIZE 1232
#define DNS_MAX_RESOLVERS 8 /* upstream servers in [dns] resolvers */
#define DNS_MAX_SELF_ADDRS 16
#define DNS_CNAME_MAX 8 /* CNAME hops followed per lookup */

enum dns_type {
	DNS_T_A = 1,
	DNS_T_NS = 2,
	DNS_T_CNAME = 5,
	DNS_T_SOA = 6,
	DNS_T_MX = 15,
	DNS_T_TXT = 16,
	DNS_T_AAAA = 28,
	DNS_T_OPT = 41,
	DNS_T_TLSA = 52,
};

#define DNS_C_IN 1

enum dns_rcode {
	DNS_RCODE_NOERROR = 0,
	DNS_RCODE_FORMERR = 1,
	DNS_RCODE_SERVFAIL = 2,
	DNS_RCODE_NXDOMAIN = 3,
	DNS_RCODE_NOTIMP = 4,
	DNS_RCODE_REFUSED = 5,
};

/* Header flag bits (host order of the 16-bit flags word). */
#define DNS_F_QR 0x8000
#define DNS_F_AA 0x0400
#define DNS_F_TC 0x0200
#define DNS_F_RD 0x0100
#define DNS_F_RA 0x0080
#define DNS_F_AD 0x0020
#define DNS_F_CD 0x0010
#define DNS_F_RCODE(f) ((f)&0x000f)

/* Why a message was rejected; counted per reason. */
enum dns_malformed {
	DNS_MAL_NONE = 0,
	DNS_MAL_SHORT_HEADER,  /* fewer than 12 octets */
	DNS_MAL_TRUNCATED,     /* a name, question or record runs past the end */
	DNS_MAL_PTR_FORWARD,   /* compression pointer not strictly backwards */
	DNS_MAL_PTR_LOOP,      /* more than DNS_PTR_JUMPS_MAX pointers */
	DNS_MAL_NAME_TOO_LONG, /* > 255 octets */
	DNS_MAL_LABEL_TYPE,    /* 0x40/0x80 label types (RFC 6891 6.1.1: reserved) */
	DNS_MAL_LABEL_CHAR,    /* '.', control or non-ASCII octet in a label */
	DNS_MAL_BAD_COUNT,     /* QDCOUNT != 1 in a response */
	DNS_MAL_RDLEN,	       /* RDLENGTH past the end of the message */
	DNS_MAL_RDATA,	       /* RDATA inconsistent with its type */
	DNS_MAL_TOO_BIG,       /* more records/names than we keep */
	DNS_MAL_NOT_RESPONSE,  /* QR clear, or opcode != QUERY */
	DNS_MAL__COUNT
};

const char *dns_malformed_str(enum dns_malformed why);

/* ---- codec ----------------------------------------------------------------- */

/* Decoded RDATA.  Names are dotted text without trailing dot ("" is the root);
 * byte strings point into the parsed packet (codec) or the cache entry. */
struct dns_rr {
	const char *name;
	uint16_t type;
	uint16_t rclass;
	uint32_t ttl;
	union {
		uint32_t a; /* host order */
		uint8_t aaaa[16];
		struct {
			uint16_t pref;
			const char *host;
		} mx;
		const char *target; /* CNAME, NS */
		struct {
			const char *mname, *rname;
			uint32_t serial, refresh, retry, expire, minimum;
		} soa;
		struct {
			const uint8_t *data; /* raw <character-string>s */
			uint16_t len;
		} txt;
		struct {
			uint8_t usage, selector, mtype;
			const uint8_t *data;
			uint16_t len;
		} tlsa;
		struct {
			const uint8_t *data; /* other types: raw rdata (names not expanded) */
			uint16_t len;
		} raw;
	};
};

enum dns_section { DNS_SEC_ANSWER = 0, DNS_SEC_AUTHORITY, DNS_SEC_ADDITIONAL };

struct dns_msg {
	uint16_t id;
	uint16_t flags;
	uint16_t qtype, qclass;
	char qname[DNS_NAME_TEXT_MAX];
	uint16_t count[3]; /* records kept per section */
	uint16_t rr_count; /* total kept, answer first, then authority, additional */
	bool rr_truncated; /* more than DNS_MSG_MAX_RR present: rest validated, dropped */
	bool edns;	   /* an OPT record was present */
	uint16_t edns_udp; /* its UDP payload size */
	struct dns_rr rr[DNS_MSG_MAX_RR];
	size_t arena_used;
	char arena[DNS_MSG_ARENA];
};

/**
 * Parse a DNS message.  @m must outlive nothing but the packet: TXT/TLSA data
 * point into @pkt.  Returns 0 or a negative errno (-EBADMSG) with *why set.
 * A message must have exactly one question.
 */
int dns_msg_parse(struct dns_msg *m, const uint8_t *pkt, size_t len, enum dns_malformed *why);

/** Records of section @sec: returns first index, *n the count. */
const struct dns_rr *dns_msg_section(const struct dns_msg *m, enum dns_section sec, unsigned *n);

/**
 * Encode a recursive query (RD set) for @name/@qtype class IN, with an EDNS0
 * OPT record advertising DNS_EDNS_UDP_SIZE when @edns.  Returns the length or
 * a negative errno (-EINVAL bad name, -ENOSPC buffer).
 */
int dns_encode_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype,
		     bool edns);

/** Response writer: header + question, then records in section order. */
struct dns_builder {
	uint8_t *buf;
	size_t cap, len;
	int err;	      /* first error; later calls do nothing */
	enum dns_section sec; /* current section; records must not go backwards */
	uint16_t counts[3];
	uint16_t name_off[32]; /* compression targets: offsets of names written */
	unsigned name_count;
};

/** Start a message.  @flags is the full flags word (QR, RCODE, AD, TC ...). */
void dns_builder_init(struct dns_builder *b, uint8_t *buf, size_t cap, uint16_t id, uint16_t flags,
		      const char *qname, uint16_t qtype, uint16_t qclass);
/** Append a record (names compressed against earlier names). */
void dns_builder_add(struct dns_builder *b, enum dns_section sec, const struct dns_rr *rr);
/** Append an EDNS0 OPT record to the additional section. */
void dns_builder_add_opt(struct dns_builder *b, uint16_t udp_size);
/** Finish: the length, or a negative errno if any step failed. */
int dns_builder_finish(struct dns_builder *b);

/** Text name -> uncompressed wire form; length or -EINVAL/-ENOSPC. */
int dns_name_to_wire(const char *name, uint8_t *out, size_t cap);
/** Case-insensitive name equality (ASCII only, RFC 4343). */
bool dns_name_equal(const char *a, const char *b);

/* ---- configuration --------------------------------------------------------- */

struct dns_conf {
	uint32_t resolvers[DNS_MAX_RESOLVERS]; /* IPv4, host order */
	unsigned resolver_count;
	uint16_t resolver_port; /* 53 */
	uint64_t timeout_us;	/* per try: 1 s */
	unsigned attempts;	/* rounds over all resolvers: 2 */
	uint32_t min_ttl;	/* 0 s */
	uint32_t max_ttl;	/* 86400 s */
	uint32_t negative_ttl;	/* cap for NXDOMAIN/NODATA: 3600 s */
	uint32_t stale_max;	/* serve-stale window after expiry: 86400 s */
	uint32_t stale_ttl;	/* TTL of a stale answer: 30 s (RFC 8767 4) */
	uint32_t max_entries;	/* cache bound: 100000 */
	uint32_t max_inflight;	/* upstream queries in flight, machine-wide: 4096 */
	uint32_t max_pending;	/* client requests per resolver: 4096 */
	unsigned max_threads;	/* RCU reader threads: 64 */
	uint32_t self_addrs[DNS_MAX_SELF_ADDRS]; /* the relay's own addresses */
	unsigned self_addr_count;
	uint64_t seed; /* 0: random; else deterministic IDs/ports/shuffles (tests) */
};

void dns_conf_defaults(struct dns_conf *c);

struct cfg_file;
/**
 * Apply the [dns] section of a parsed config file (keys: resolvers, timeout,
 * attempts, min_ttl, max_ttl, negative_ttl, stale_max, max_entries,
 * max_inflight, max_pending) over @c.  0, or -EINVAL with "file:line: ..."
 * in @err.  Keys absent keep their value.
 */
int dns_conf_load(struct dns_conf *c, struct cfg_file *cf, char *err, size_t errlen);

/* ---- counters -------------------------------------------------------------- */

struct dns_counters {
	uint64_t hits, misses, coalesced, upstream_queries, timeouts, stale_served;
	uint64_t evictions, prefetches, negative_hits, servfail, tcp_retries;
	uint64_t mismatched; /* responses dropped by RFC 5452 matching */
	uint64_t mismatch_id, mismatch_addr, mismatch_port, mismatch_question;
	uint64_t inflight_full, pending_full, notify_drops, reclaim_full;
	uint64_t port_busy; /* no free source port the transport accepted: try skipped */
	uint64_t malformed[DNS_MAL__COUNT];
	/* machine-wide, not per core */
	uint64_t entries, entries_allocated, entries_freed;
};

/* ---- cache ----------------------------------------------------------------- */

struct dns_cache;

enum dns_status {
	DNS_OK = 0,	  /* records in the entry (maybe stale) */
	DNS_NODATA = 1,	  /* name exists, no records of that type */
	DNS_NXDOMAIN = 2, /* name does not exist */
	DNS_CNAME = 3,	  /* entry holds only a CNAME chain to follow (internal) */
	DNS_TEMPFAIL = 4, /* SERVFAIL, REFUSED, timeouts: try later */
};

/* An immutable cache entry.  Readers see it until their next quiescent report. */
struct dns_entry {
	const char *name;  /* lowercased query name */
	const char *canon; /* owner of the records after CNAMEs; == name if none */
	uint16_t type;
	uint8_t status;	    /* enum dns_status */
	bool ad;	    /* upstream set AD */
	bool stale;	    /* a serve-stale copy */
	uint32_t ttl;	    /* clamped TTL it was stored with */
	uint64_t stored_us; /* when it was stored */
	uint64_t expire_us; /* stored_us + ttl */
	uint64_t stale_until_us;
	uint16_t rr_count;
	const struct dns_rr *rr;
};

/** Create the shared cache (EAL must be up).  NULL on error. */
struct dns_cache *dns_cache_create(const struct dns_conf *conf, const char *name);
/** Free it; no thread may use it any more. */
void dns_cache_destroy(struct dns_cache *c);

/** Register the calling thread as an RCU reader: 0 and *thread_id, or -ENOSPC. */
int dns_cache_register_thread(struct dns_cache *c, unsigned *thread_id);
void dns_cache_unregister_thread(struct dns_cache *c, unsigned thread_id);
/** Report a quiescent state: entries this thread looked up may now be freed. */
void dns_cache_quiescent(struct dns_cache *c, unsigned thread_id);

/**
 * Look up @name/@type.  Returns the entry (expired ones too: check
 * expire_us against @now_us), or NULL.  Counts a hit (fresh) or miss on
 * @thread_id's counters.  Lock-free.
 */
const struct dns_entry *dns_cache_lookup(struct dns_cache *c, unsigned thread_id, const char *name,
					 uint16_t type, uint64_t now_us);
/**
 * Store a built entry (see dns_cache_insert_msg).  Replaces any previous one
 * for the key; the old one is freed after a grace period.  0 or -errno.
 */
int dns_cache_insert_rrs(struct dns_cache *c, unsigned thread_id, const char *name, uint16_t type,
			 enum dns_status status, const char *canon, bool ad, uint32_t ttl,
			 const struct dns_rr *rrs, unsigned rr_count, uint64_t now_us);
/** Remove @name (all types) or everything when @name is NULL.  Returns entries removed. */
int dns_cache_flush(struct dns_cache *c, const char *name);
/** Call @fn on every entry (writer lock held: fn must not call the cache). */
int dns_cache_foreach(struct dns_cache *c, int (*fn)(void *arg, const struct dns_entry *e),
		      void *arg);
/** Free what the grace period allows now; returns entries freed. */
unsigned dns_cache_reclaim(struct dns_cache *c);
/** Sum the per-thread counters. */
void dns_cache_counters(struct dns_cache *c, struct dns_counters *out);
const struct dns_conf *dns_cache_conf(const struct dns_cache *c);

/* ---- resolver -------------------------------------------------------------- */

struct dns_resolver;

struct dns_resolver_ops {
	/** Send one query (bare DNS message) to @server_ip:port from local @src_port. */
	int (*send)(void *ctx, uint32_t server_ip, uint16_t src_port, const uint8_t *pkt,
		    size_t len, bool tcp);
	/**
	 * Optional: may a UDP query to @server_ip leave from @src_port?  The relay
	 * says no to ports whose replies its flow steering would hand to another
	 * core.  NULL: every port of [port_lo, port_hi].
	 */
	bool (*port_ok)(void *ctx, uint32_t server_ip, uint16_t src_port);
};

/**
 * Completion of dns_resolve(): @e is the entry (valid until the thread's next
 * dns_cache_quiescent()) for DNS_OK/NODATA/NXDOMAIN, NULL for DNS_TEMPFAIL.
 */
typedef void (*dns_resolve_cb)(void *arg, int status, const struct dns_entry *e);

/**
 * One per lcore.  Source ports are drawn from [port_lo, port_hi] so the
 * transport can steer replies back to this lcore.  @thread_id is this
 * thread's dns_cache_register_thread() id.
 */
struct dns_resolver *dns_resolver_create(struct dns_cache *c, unsigned thread_id,
					 const struct dns_resolver_ops *ops, void *ctx,
					 uint16_t port_lo, uint16_t port_hi);
/* Destroy only when no dns_mail_lookup() is outstanding on it (their state is freed
 * by their completion).  Client requests still waiting are dropped without callback. */
void dns_resolver_destroy(struct dns_resolver *r);

/**
 * Resolve @name/@type, following CNAMEs (at most DNS_CNAME_MAX hops).
 * Returns 1 with *hit set when the cache answers at once (no callback;
 * *hit is valid until this thread's next dns_cache_quiescent()), 0 when @cb
 * will be called from dns_resolver_poll()/dns_resolver_input() - or already
 * was, with DNS_TEMPFAIL, if no upstream query could be sent at all - or a
 * negative errno: -EINVAL bad name, -ENOSPC pending/in-flight table full
 * (counted), -ELOOP a cached CNAME chain longer than DNS_CNAME_MAX.
 */
int dns_resolve(struct dns_resolver *r, const char *name, uint16_t type, dns_resolve_cb cb,
		void *arg, const struct dns_entry **hit);
/** Feed one received message (UDP payload, or TCP message without length prefix). */
void dns_resolver_input(struct dns_resolver *r, uint32_t from_ip, uint16_t from_port,
			uint16_t to_port, const uint8_t *pkt, size_t len, bool tcp);
/** Run timers and cross-core notifications; @now_us is the resolver's clock. */
void dns_resolver_poll(struct dns_resolver *r, uint64_t now_us);
/** Upstream queries in flight owned by this resolver, and client requests waiting. */
unsigned dns_resolver_inflight(const struct dns_resolver *r);
/**
 * This resolver's thread's counters (its slot of the cache's per-thread
 * counters); the machine-wide fields (entries, entries_allocated,
 * entries_freed) are left 0: dns_cache_counters() has them.
 */
void dns_resolver_counters(const struct dns_resolver *r, struct dns_counters *out);
unsigned dns_resolver_pending(const struct dns_resolver *r);

/* ---- mail routing (RFC 5321 5.1) ------------------------------------------- */

#define DNS_MAIL_MAX_HOSTS 16
#define DNS_MAIL_MAX_ADDRS 8

enum dns_mail_result { DNS_MAIL_OK = 0, DNS_MAIL_TEMPFAIL, DNS_MAIL_PERMFAIL };

struct dns_mail_host {
	char name[DNS_NAME_TEXT_MAX];
	uint16_t pref;
	int status; /* enum dns_status of its A lookup */
	unsigned addr_count;
	uint32_t addrs[DNS_MAIL_MAX_ADDRS]; /* IPv4, host order */
};

struct dns_mail_route {
	int result;	    /* enum dns_mail_result */
	uint16_t reply;	    /* 0 on success; else SMTP reply code, e.g. 556 */
	char status[12];    /* enhanced status code, e.g. "5.1.10" */
	const char *reason; /* human text for the reply/DSN */
	bool implicit_mx;   /* no MX: the domain itself (RFC 5321 5.1) */
	bool literal;	    /* address literal, no DNS */
	bool ad;	    /* every answer used had AD set */
	uint32_t ttl_s;	    /* shortest TTL left of the records used (>= 1); 0 or UINT32_MAX: none */
	unsigned host_count;
	struct dns_mail_host hosts[DNS_MAIL_MAX_HOSTS]; /* in delivery order */
};

/** Route is owned by the lookup and valid only during the callback. */
typedef void (*dns_mail_cb)(void *arg, const struct dns_mail_route *route);

/**
 * Route mail for @domain.  @cb may run before this returns (cache hits,
 * address literals).  0 or a negative errno (then @cb is not called).
 */
int dns_mail_lookup(struct dns_resolver *r, const char *domain, dns_mail_cb cb, void *arg);

/** "[192.0.2.10]" -> 0 and *addr (host order); -EINVAL if not an IPv4 literal. */
int dns_mail_parse_literal(const char *domain, uint32_t *addr);

#endif
