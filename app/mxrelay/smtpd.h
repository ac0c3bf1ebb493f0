/*
 * smtpd.h - the SMTP listeners of one worker: lib/net connections, lib/tls,
 * lib/smtp server sessions and lib/spool, glued together.
 */
#ifndef MX_RELAY_SMTPD_H
#define MX_RELAY_SMTPD_H

#include "relay.h"

/** Built once by the main lcore, shared read-only by the workers. */
struct smtpd_shared {
	const struct relay_config *conf;
	struct smtp_server_conf listener_conf[RELAY_MAX_LISTEN];
	struct tls_server_ctx *tls; /* NULL: no certificate, no STARTTLS/465/587 */
	struct smtp_cred_db *users; /* NULL: no AUTH */
	unsigned n_workers;
};

struct smtpd;

/** Load certificates and users, build per-listener configurations.  0 or -errno (logged). */
int smtpd_shared_init(struct smtpd_shared *sh, const struct relay_config *conf,
		      unsigned n_workers);
void smtpd_shared_free(struct smtpd_shared *sh);

struct deliver;
/**
 * On worker w: open its spool (recovering it) and listen.  Recovered and
 * newly committed messages go to dl (deliver.c; NULL: nobody delivers).
 * NULL on failure (logged).
 */
struct smtpd *smtpd_create(const struct smtpd_shared *sh, struct net_stack *st, unsigned w,
			   struct deliver *dl);
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
	uint64_t refused_per_ip, auth_blocked, client_table_full;
};
void smtpd_get_stats(const struct smtpd *d, struct smtpd_stats *out);

#endif

/** Every counter of this worker's SMTP service (smtp_, tls_, spool_, smtpd_ names). */
void smtpd_stats_foreach(const struct smtpd *d,
			 void (*fn)(void *arg, const char *name, uint64_t value), void *arg);
