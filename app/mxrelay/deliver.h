/*
 * deliver.h - the delivery side of one worker: lib/queue decisions executed
 * with lib/smtp's client over lib/net TCP (and lib/tls STARTTLS), results
 * written back to lib/spool.
 *
 * Worker loop use:
 *
 *	dl = deliver_create(conf, st, w, n_workers);   before smtpd_create()
 *	smtpd_create(..., dl)      recovery hands unfinished messages over
 *	                           (deliver_recovered), every durable commit
 *	                           too (deliver_accepted)
 *	deliver_attach_spool(dl, smtpd_spool(d));
 *	loop: deliver_poll(dl, now)
 *	deliver_destroy(dl)        before smtpd_destroy() (which syncs the spool)
 */
#ifndef MX_RELAY_DELIVER_H
#define MX_RELAY_DELIVER_H

#include "relay.h"

#include <stdio.h>

struct deliver;

/**
 * Once, before the workers start: the workers' mailboxes (descriptors to a
 * destination's owner worker, marks back to the spool's) and the shared
 * DNS cache.  0 or -errno (logged).
 */
int deliver_shared_init(const struct relay_config *conf, unsigned n_workers);
/** After the workers stopped. */
void deliver_shared_free(void);

/** Read [queue]/[relay]/[smtp] hostname, set up TLS client and the queue.  NULL (logged). */
struct deliver *deliver_create(const struct relay_config *conf, struct net_stack *st,
			       unsigned worker, unsigned n_workers);
/** The spool of this worker: body reads and state records go there. */
void deliver_attach_spool(struct deliver *dl, struct spool *sp);
/**
 * A message of this worker's spool is durable: queue it.  env is the
 * session's envelope (valid during the call).  Never fails visibly: a
 * message that cannot be queued now is retried, and stays in the spool.
 */
void deliver_accepted(struct deliver *dl, uint64_t id, const struct smtp_envelope *env);
/** Spool recovery found an unfinished message: queue its pending recipients. */
void deliver_recovered(struct deliver *dl, const struct spool_recovered *m);
/**
 * A spool completion: true if it is one of ours (a DSN this file injected,
 * odd cookie), which is then queued; false: smtpd's own.
 */
bool deliver_commit_done(struct deliver *dl, const struct spool_completion *c);
/** One turn: queue actions, session timers.  Returns work done (for idle back-off). */
unsigned deliver_poll(struct deliver *dl, uint64_t now_us);
/**
 * Stopping, on every worker before its spool closes: abort the sessions,
 * send what is waiting for other workers, wait (bounded) until every worker
 * did, and write the marks that came for this worker's spool.
 */
void deliver_quiesce(struct deliver *dl);
/**
 * Reload (on the worker, between two poll turns): conf is the new
 * configuration generation; conf->queue holds the [queue] keys (per-
 * destination limits, retry schedule).  conf stays valid until the next
 * deliver_reconfigure() or deliver_destroy() (worker.c holds it).  Keys
 * that need a restart (smarthost, outbound TLS, [dns]) carry their running
 * values in conf.
 */
void deliver_reconfigure(struct deliver *dl, const struct relay_config *conf);
/** Abort sessions and free; undelivered messages stay in the spool. */
void deliver_destroy(struct deliver *dl);
/** Every counter (queue_, smtpc_, deliver_ names). */
void deliver_stats_foreach(const struct deliver *dl,
			   void (*fn)(void *arg, const char *name, uint64_t value), void *arg);

/*
 * Control requests (mxctl queue / show / flush / suspend / resume).  They run
 * on the worker's own lcore (control.c hands them over and waits), write
 * human-readable lines to out, and return 0 or -errno: -ENOENT nothing by
 * that id or name on this worker, -ENOSYS not available.
 *
 *   queue        one line per destination this worker owns: name, queued,
 *                in flight, connections, state (ready, backoff until, suspended)
 *   show ID      the message's envelope and the state of each recipient
 *   flush DEST   retry now (DEST NULL: every destination)
 *   suspend DEST / resume DEST   hold a destination's queue (messages stay)
 */
int deliver_ctl_queue(struct deliver *dl, FILE *out);
int deliver_ctl_show(struct deliver *dl, uint64_t id, FILE *out);
int deliver_ctl_flush(struct deliver *dl, const char *dest, FILE *out);
int deliver_ctl_suspend(struct deliver *dl, const char *dest, bool suspend, FILE *out);

#endif
