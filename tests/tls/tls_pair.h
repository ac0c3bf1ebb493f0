/*
 * tls_pair.h - an in-memory "network" between two tls_conns for the lib/tls
 * tests and bench: each endpoint's ciphertext is staged in a wire buffer and
 * fed to its peer in chunks of random size (1 byte at a time when asked),
 * with an optional per-round send window (a TCP send buffer that is often
 * full) and an optional consumer that takes only part of the plaintext.
 */
#ifndef MX_TLS_PAIR_H
#define MX_TLS_PAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls.h"

struct pair_buf {
	uint8_t *data;
	size_t off, len, cap; /* unread bytes are [off, len) */
};

struct pair_ep {
	const char *name;
	struct tls_conn *tc;
	struct pair_ep *peer;
	struct tls_stats *stats;
	struct pair_buf wire; /* ciphertext on its way to the peer */
	struct pair_buf rx;   /* plaintext received */
	/* Send window: when limited, on_ciphertext takes at most window bytes per round. */
	bool window_limited;
	size_t window, window_per_round;
	/* Plaintext consumer: paused takes nothing; take_max > 0 takes 1..take_max per call. */
	bool paused;
	size_t take_max;
	/* Bulk data to send with tls_conn_write while pumping. */
	const uint8_t *tx;
	size_t tx_len, tx_off, tx_chunk_max;
	size_t max_pending; /* highest tls_conn_output_pending after a write */
	bool keep_rx;	    /* store plaintext in rx (otherwise only count it) */
	uint64_t rx_count;
	/* Events. */
	int handshakes, errors, peer_closed, writable;
	struct tls_handshake_info info;
	char error[256];
	bool free_on_error;
	const char *greeting; /* written from inside on_handshake_done (implicit TLS) */
	bool reenter;	      /* on_plaintext calls tls_conn_input/resume on its own conn */
	/* Replies written from inside on_plaintext: reply_count writes of reply, then
	 * big_reply_len bytes of big_reply in one write (an SMTP server's batch). */
	const char *reply;
	unsigned reply_count;
	const uint8_t *big_reply;
	size_t big_reply_len;
	int reenter_input_rc, reenter_resume_rc;
};

extern const struct tls_conn_ops pair_ops;

void pair_ep_init(struct pair_ep *e, const char *name, struct tls_stats *stats);
void pair_ep_reset(struct pair_ep *e); /* frees tc and buffers */
void pair_link(struct pair_ep *a, struct pair_ep *b);
/** Move bytes until nothing moves (bounded).  max_chunk 0 = whole buffers. */
void pair_pump(struct pair_ep *a, struct pair_ep *b, size_t max_chunk);
void pair_buf_free(struct pair_buf *b);

#endif
