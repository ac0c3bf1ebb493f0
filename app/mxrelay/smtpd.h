/*
 * smtpd.h - the SMTP listeners of one worker: lib/net connections, lib/tls,
 * lib/smtp server sessions and lib/spool, glued together.
 */
#ifndef MX_RELAY_SMTPD_H
#define MX_RELAY_SMTPD_H

#include "relay.h"

/**
 * One configuration generation: built by the main lcore (at start, then at
 * every reload), immutable once published, shared read-only by the workers.
 * Each connection holds the generation it was accepted under until it ends
 * (its policy, limits and TLS context stay those), each worker the one it
 * runs new connections with; refs counts both.  The main lcore frees a
 * replaced generation once every worker moved past it and refs is 0
 * (worker.c).
 */
struct smtpd_shared {
	const struct relay_config *conf;
	struct smtp_server_conf listener_conf[RELAY_MAX_LISTEN];
	struct tls_server_ctx *tls; /* NULL: no certificate, no STARTTLS/465/587 */
	struct smtp_cred_db *users; /* NULL: no AUTH */
	unsigned n_workers;
	uint64_t generation;	       /* 1 at start, one more per reload */
	uint32_t refs;		       /* atomic: connections and workers holding it */
	struct relay_config *own_conf; /* freed with the generation (NULL: the caller's) */
};

struct smtpd;

/**
 * Load certificates and users, build per-listener configurations.  0 or
 * -errno with the reason in err ("file: message"; also logged).  On error
 * whatever was loaded is freed again.
 */
int smtpd_shared_init(struct smtpd_shared *sh, const struct relay_config *conf, unsigned n_workers,
		      char *err, size_t errlen);
/** Log the listeners (once, at start). */
void smtpd_shared_log(const struct smtpd_shared *sh);
/** Free what smtpd_shared_init loaded, and own_conf; not sh itself. */
void smtpd_shared_free(struct smtpd_shared *sh);
/** Take and drop a reference (any lcore). */
void smtpd_shared_get(struct smtpd_shared *sh);
void smtpd_shared_put(struct smtpd_shared *sh);

struct deliver;
/**
 * On worker w: open its spool (recovering it) and listen.  Recovered and
 * newly committed messages go to dl (deliver.c; NULL: nobody delivers).
 * NULL on failure (logged).
 */
struct smtpd *smtpd_create(struct smtpd_shared *sh, struct net_stack *st, unsigned w,
			   struct deliver *dl);
/**
 * On the worker: new connections use generation sh from now on (policy,
 * users, per-client limits, certificate, DKIM keys); open ones keep
 * theirs.  -EBUSY: too many older generations are still in use on this
 * worker (DKIM signers of messages in progress): try again later.
 */
int smtpd_reconfigure(struct smtpd *d, struct smtpd_shared *sh);
/** The worker's spool (for deliver_attach_spool). */
struct spool *smtpd_spool(struct smtpd *d);
/** One turn: spool completions, timeouts.  Returns work done (for idle back-off). */
unsigned smtpd_poll(struct smtpd *d, uint64_t now_us);
/**
 * Graceful shutdown, step one: new connections get "421 4.3.2" and are
 * closed; sessions already open go on (their transactions complete).
 */
void smtpd_drain(struct smtpd *d);
/** No SMTP connection is open any more. */
bool smtpd_drained(const struct smtpd *d);
/** Stop listening, flush the spool, abort what is left, free. */
void smtpd_destroy(struct smtpd *d);

struct smtpd_stats {
	uint64_t connections, refused_busy, open, tls_handshakes, tls_failures;
	uint64_t messages_queued, commit_failures;
	uint64_t dkim_signed, dkim_failed;
	uint64_t dkim_offloaded, dkim_offload_full; /* to signer lcores; queue full: signed here */
	uint64_t refused_per_ip, auth_blocked, client_table_full;
	uint64_t replies_held; /* reply groups that waited for their message's 250 (HELD_MAX) */
};
void smtpd_get_stats(const struct smtpd *d, struct smtpd_stats *out);

#endif

/** Every counter of this worker's SMTP service (smtp_, tls_, spool_, smtpd_ names). */
void smtpd_stats_foreach(const struct smtpd *d,
			 void (*fn)(void *arg, const char *name, uint64_t value), void *arg);
