/*
 * signer.h - DKIM signatures made on lcores of their own ([dkim] sign_lcores).
 *
 * A worker hashes a message's body while it streams in (lib/dkim); the one
 * expensive step, the header hash and the RSA or Ed25519 signature
 * (dkim_sign_final), can move to a signer lcore so that the SMTP loop keeps
 * serving its connections meanwhile.  The worker submits a job that names
 * the message's signer object; a signer lcore finishes it and hands the job
 * back to that worker's reply ring; the worker collects it in its poll loop
 * and carries on (spool commit, then 250).  A signer object is used by one
 * thread at a time: the worker does not touch it between submit and collect.
 */
#ifndef MXRELAY_SIGNER_H
#define MXRELAY_SIGNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dkim_signer;
struct net_dataplane;
struct net_stack;

struct sign_job {
	struct dkim_signer *sg; /* in: the message's signer, body hashed */
	void *cookie;		/* in: the worker's own reference */
	unsigned worker;	/* in: whose reply ring */
	int rc;			/* out: dkim_sign_final() */
	const char *hdr;	/* out: the DKIM-Signature field(s), inside sg */
	size_t len;
};

/** Start one signer per reserved lcore of dp (none: signing stays on the workers). */
int signers_start(const struct net_dataplane *dp, unsigned n_workers);
/** Whether jobs can be submitted. */
bool signers_active(void);
/** A worker's stack, woken when a job comes back to it. */
void signers_attach_worker(unsigned worker, struct net_stack *st);
/** Queue a job: 0, or -ENOBUFS when the rings are full (then sign in place). */
int signer_submit(struct sign_job *job);
/** Finished jobs of this worker, up to max: their count. */
unsigned signer_collect(unsigned worker, struct sign_job **jobs, unsigned max);
/** Jobs of this worker not yet collected. */
unsigned signer_outstanding(unsigned worker);
/** Stop the signer lcores once no worker can submit any more; frees the rings. */
void signers_stop(void);
/** Counters of all signer lcores (jobs signed, sleeps), for the control plane. */
void signers_stats(void (*fn)(void *arg, const char *name, uint64_t value), void *arg);

#endif
