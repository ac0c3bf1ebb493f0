/*
 * tls_pair.c - the in-memory link between two tls_conns (see tls_pair.h).
 * Randomness comes from rand(): tests seed it for reproducible runs.
 */
#include "tls_pair.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void buf_append(struct pair_buf *b, const uint8_t *p, size_t n)
{
	if (b->len + n > b->cap) {
		if (b->off > 0) {
			memmove(b->data, b->data + b->off, b->len - b->off);
			b->len -= b->off;
			b->off = 0;
		}
		if (b->len + n > b->cap) {
			size_t cap = b->cap ? b->cap : 4096;
			while (cap < b->len + n)
				cap *= 2;
			uint8_t *nd = realloc(b->data, cap);
			if (nd == NULL)
				abort();
			b->data = nd;
			b->cap = cap;
		}
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void pair_buf_free(struct pair_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static size_t on_ciphertext(void *user, const uint8_t *data, size_t len)
{
	struct pair_ep *e = user;
	size_t n = len;

	if (e->window_limited) {
		if (n > e->window)
			n = e->window;
		e->window -= n;
	}
	buf_append(&e->wire, data, n);
	return n;
}

static size_t on_plaintext(void *user, const uint8_t *data, size_t len)
{
	struct pair_ep *e = user;
	size_t n = len;

	if (e->reenter) {
		e->reenter_input_rc = (int)tls_conn_input(e->tc, (const uint8_t *)"\x17", 1);
		e->reenter_resume_rc = tls_conn_resume(e->tc);
	}
	for (unsigned i = 0; i < e->reply_count; i++)
		if (tls_conn_write(e->tc, (const uint8_t *)e->reply, strlen(e->reply)) !=
		    (ssize_t)strlen(e->reply))
			e->errors += 100;
	if (e->big_reply_len > 0 &&
	    tls_conn_write(e->tc, e->big_reply, e->big_reply_len) != (ssize_t)e->big_reply_len)
		e->errors += 100;
	if (e->paused)
		return 0;
	if (e->take_max > 0) {
		size_t t = 1 + (size_t)rand() % e->take_max;
		if (t < n)
			n = t;
	}
	if (e->keep_rx)
		buf_append(&e->rx, data, n);
	e->rx_count += n;
	return n;
}

static void on_handshake_done(void *user, const struct tls_handshake_info *info)
{
	struct pair_ep *e = user;

	e->handshakes++;
	e->info = *info;
	if (e->greeting != NULL &&
	    tls_conn_write(e->tc, (const uint8_t *)e->greeting, strlen(e->greeting)) < 0)
		e->errors += 100;
}

static void on_error(void *user, const char *reason)
{
	struct pair_ep *e = user;

	e->errors++;
	snprintf(e->error, sizeof(e->error), "%s", reason);
	if (e->free_on_error) {
		tls_conn_free(e->tc); /* deferred by the library */
		e->tc = NULL;
	}
}

static void on_peer_closed(void *user)
{
	((struct pair_ep *)user)->peer_closed++;
}

static void on_writable(void *user)
{
	((struct pair_ep *)user)->writable++;
}

const struct tls_conn_ops pair_ops = {
	.on_ciphertext = on_ciphertext,
	.on_plaintext = on_plaintext,
	.on_handshake_done = on_handshake_done,
	.on_error = on_error,
	.on_peer_closed = on_peer_closed,
	.on_writable = on_writable,
};

void pair_ep_init(struct pair_ep *e, const char *name, struct tls_stats *stats)
{
	memset(e, 0, sizeof(*e));
	e->name = name;
	e->stats = stats;
	e->keep_rx = true;
}

void pair_ep_reset(struct pair_ep *e)
{
	tls_conn_free(e->tc);
	pair_buf_free(&e->wire);
	pair_buf_free(&e->rx);
	struct pair_ep *peer = e->peer;
	pair_ep_init(e, e->name, e->stats);
	e->peer = peer;
}

void pair_link(struct pair_ep *a, struct pair_ep *b)
{
	a->peer = b;
	b->peer = a;
}

/* Write as much of e->tx as the connection takes now. */
static void write_some(struct pair_ep *e)
{
	while (e->tc != NULL && e->tx_off < e->tx_len && tls_conn_handshake_done(e->tc)) {
		size_t n = e->tx_len - e->tx_off;
		if (e->tx_chunk_max > 0) {
			size_t c = 1 + (size_t)rand() % e->tx_chunk_max;
			if (c < n)
				n = c;
		}
		ssize_t w = tls_conn_write(e->tc, e->tx + e->tx_off, n);
		size_t pend = tls_conn_output_pending(e->tc);
		if (pend > e->max_pending)
			e->max_pending = pend;
		if (w <= 0)
			break;
		e->tx_off += (size_t)w;
		if ((size_t)w < n)
			break;
	}
}

/* Everything that moves; an unchanged snapshot means the pair is quiescent. */
struct snapshot {
	size_t v[10];
};

static struct snapshot snap(const struct pair_ep *a, const struct pair_ep *b)
{
	struct snapshot s = {{a->wire.off, a->wire.len, a->rx_count, a->tx_off, b->wire.off,
			      b->wire.len, b->rx_count, b->tx_off, a->tc != NULL, b->tc != NULL}};
	return s;
}

void pair_pump(struct pair_ep *a, struct pair_ep *b, size_t max_chunk)
{
	struct pair_ep *eps[2] = {a, b};

	for (int round = 0; round < 10000000; round++) {
		struct snapshot before = snap(a, b), after;

		for (int k = 0; k < 2; k++) {
			struct pair_ep *e = eps[k], *p = e->peer;

			if (e->tc == NULL)
				continue;
			if (e->window_limited)
				e->window = e->window_per_round;
			tls_conn_flush(e->tc);
			if (e->tc != NULL && !e->paused)
				tls_conn_resume(e->tc);
			write_some(e);
			while (p->tc != NULL && e->wire.off < e->wire.len) {
				size_t avail = e->wire.len - e->wire.off, chunk = avail;

				if (max_chunk > 0) {
					chunk = 1 + (size_t)rand() % max_chunk;
					if (chunk > avail)
						chunk = avail;
				}
				ssize_t r =
					tls_conn_input(p->tc, e->wire.data + e->wire.off, chunk);
				if (r <= 0)
					break;
				e->wire.off += (size_t)r;
				if ((size_t)r < chunk)
					break;
			}
		}
		after = snap(a, b);
		if (memcmp(&before, &after, sizeof(before)) == 0)
			break;
	}
}
