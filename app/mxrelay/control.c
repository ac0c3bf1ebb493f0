/*
 * control.c - the relay's management plane, served by the main lcore only.
 *
 *   control socket  Unix SOCK_STREAM at [control] socket: one request line
 *                   per connection ("status", "stats", "stats json", "help",
 *                   "reload", "queue", "show", "flush", "suspend", "resume",
 *                   "dns lookup", "dns flush"), one reply, then close.
 *                   tools/mxctl is its client.  A reply that starts with
 *                   "error:" is a failure (mxctl exits 1).
 *   Prometheus      GET /metrics over HTTP/1.0 at [control] http_listen, text
 *                   exposition format 0.0.4.  This is a KERNEL TCP socket on
 *                   purpose: it belongs to the management network, never to
 *                   the data plane (DESIGN.md principle 2), and it must keep
 *                   answering when the DPDK ports are saturated.
 *   DPDK telemetry  /mxrelay/stats, /mxrelay/status, /mxrelay/worker_stats,N
 *                   on the EAL telemetry socket (dpdk-telemetry.py).
 *
 * Everything is non-blocking and poll()-driven from control_poll(); clients
 * are bounded in number, request size and time.  Counters are read with
 * workers_stats_foreach() on the main lcore only: telemetry callbacks run
 * on EAL's telemetry thread, so they ask the main lcore for a fresh
 * snapshot through an eventfd and wait (bounded) for it.
 *
 * Reload (control_reload: SIGHUP or "reload") reads the file again, builds
 * a new configuration generation and publishes it to the workers
 * (worker.c); a file with any error changes nothing.  Queue commands run
 * on the workers' own lcores through their mailboxes (workers_call) and
 * the answers are joined here.  DNS commands read the shared cache
 * (resolve.c) directly: lookups are lock-free, with the main lcore
 * registered as a reader of its own.
 */
#include "control.h"
#include "deliver.h"
#include "resolve.h"
#include "smtpd.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <rte_telemetry.h>

#ifndef MXRELAY_VERSION
#define MXRELAY_VERSION "unknown"
#endif

#define CTL_MAX_STATS 512
#define CTL_MAX_WORKERS 64
#define CTL_NAME_LEN 64
#define CTL_REQ_MAX 1024      /* control request line */
#define CTL_HTTP_REQ_MAX 4096 /* HTTP request head */
#define CTL_REPLY_MAX (8u << 20)
#define CTL_CLIENT_TIMEOUT_US 5000000ull
#define CTL_TEL_WAIT_MS 1000
#define CTL_CALL_TIMEOUT_US 2000000ull /* a worker's answer to a queue command */
#define CTL_MAX_ARGS 4
#define CTL_ARG_MAX 256

/* ---- counters of every worker, by name ---- */

struct stat_table {
	unsigned n_names, n_workers;
	unsigned hint, last_worker;
	uint64_t dropped; /* names beyond CTL_MAX_STATS or too long */
	char names[CTL_MAX_STATS][CTL_NAME_LEN];
	uint64_t total[CTL_MAX_STATS];
	uint64_t val[CTL_MAX_WORKERS][CTL_MAX_STATS];
};

static void table_add(void *arg, unsigned worker, const char *raw, uint64_t value)
{
	struct stat_table *t = arg;
	char name[CTL_NAME_LEN];
	size_t len = strlen(raw);
	unsigned i;

	if (worker >= CTL_MAX_WORKERS || len >= CTL_NAME_LEN) {
		t->dropped++;
		return;
	}
	/* Keep names [a-z0-9_]: valid in Prometheus, JSON and telemetry as they are. */
	for (size_t k = 0; k <= len; k++) {
		char ch = raw[k];
		if (ch >= 'A' && ch <= 'Z')
			ch = (char)(ch + 32);
		else if (ch != '\0' && !(ch >= 'a' && ch <= 'z') && !(ch >= '0' && ch <= '9'))
			ch = '_';
		name[k] = ch;
	}
	if (worker != t->last_worker) {
		t->last_worker = worker;
		t->hint = 0;
	}
	if (worker + 1 > t->n_workers)
		t->n_workers = worker + 1;
	/* Every worker reports the same names in the same order: try the next one first. */
	i = t->hint;
	if (i >= t->n_names || strcmp(t->names[i], name) != 0) {
		for (i = 0; i < t->n_names; i++)
			if (strcmp(t->names[i], name) == 0)
				break;
	}
	if (i == t->n_names) {
		if (t->n_names == CTL_MAX_STATS) {
			t->dropped++;
			return;
		}
		memcpy(t->names[i], name, len + 1);
		t->n_names++;
	}
	/* Same name twice in one worker (port_* of several ports): add them up. */
	t->val[worker][i] += value;
	t->hint = i + 1;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/*
 * Aggregated with max instead of a sum: maxima and latency percentiles,
 * and port_* counters, which are device-wide (rte_eth_stats) so every
 * worker reading that port reports the same number.
 */
static bool stat_is_max(const char *name)
{
	return ends_with(name, "_max") || ends_with(name, "_p50_us") ||
	       ends_with(name, "_p99_us") || strncmp(name, "port_", 5) == 0;
}

/* A level that goes up and down (Prometheus gauge), not a count of events. */
static bool stat_is_gauge(const char *name)
{
	static const char *const gauges[] = {"smtpd_open",
					     "spool_live_messages",
					     "spool_used_bytes",
					     "spool_segments",
					     "queue_queued",
					     "queue_in_flight",
					     "queue_conns_open",
					     "queue_dests",
					     "deliver_sessions_open",
					     "deliver_backlog",
					     "deliver_outbox",
					     "dns_cache_entries",
					     "dns_tcp_open",
					     "dkim_signer_lcores",
					     NULL};
	for (int i = 0; gauges[i]; i++)
		if (strcmp(name, gauges[i]) == 0)
			return true;
	return ends_with(name, "_max") || ends_with(name, "_p50_us") || ends_with(name, "_p99_us");
}

static void table_collect(struct stat_table *t)
{
	t->n_names = 0;
	t->n_workers = 0;
	t->hint = 0;
	t->last_worker = 0;
	t->dropped = 0;
	memset(t->val, 0, sizeof(t->val));
	workers_stats_foreach(table_add, t);
	for (unsigned i = 0; i < t->n_names; i++) {
		bool max = stat_is_max(t->names[i]);
		uint64_t v = 0;
		for (unsigned w = 0; w < t->n_workers; w++)
			v = max ? (t->val[w][i] > v ? t->val[w][i] : v) : v + t->val[w][i];
		t->total[i] = v;
	}
}

static uint64_t table_total(const struct stat_table *t, const char *name)
{
	for (unsigned i = 0; i < t->n_names; i++)
		if (strcmp(t->names[i], name) == 0)
			return t->total[i];
	return 0;
}

/* ---- bounded growable reply buffer ---- */

struct obuf {
	char *p;
	size_t len, cap;
	bool full; /* CTL_REPLY_MAX or out of memory: the reply is cut */
};

static void ob_printf(struct obuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void ob_printf(struct obuf *b, const char *fmt, ...)
{
	va_list ap;
	if (b->full)
		return;
	for (;;) {
		size_t room = b->cap - b->len;
		int n;
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->full = true;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 4096;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		if (cap > CTL_REPLY_MAX) {
			b->full = true;
			return;
		}
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->full = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* ---- state ---- */

enum client_kind { CLIENT_CONTROL, CLIENT_HTTP };

struct client {
	int fd; /* -1: free slot */
	enum client_kind kind;
	uint64_t deadline_us;
	size_t in_len;
	char in[CTL_HTTP_REQ_MAX + 1];
	struct obuf out;
	size_t out_off;
	bool replying;
	/*
	 * Reply sent, our side shut down: read and drop what the peer still
	 * sends (bounded) until it closes, so that closing with unread input
	 * does not reset the connection before the peer has read the reply.
	 */
	bool draining;
	size_t drained;
};

struct ctl_counters {
	uint64_t requests, errors, refused_full, timeouts, too_long, http_requests, http_not_found,
		telemetry_requests;
	uint64_t reloads_ok, reloads_failed, worker_timeouts;
};

static struct {
	bool started;
	const struct relay_config *conf;
	const struct net_dataplane *dp;
	const char *config_path;
	uint64_t start_us;
	int unix_fd, http_fd, event_fd;
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct client *clients;
	unsigned max_clients, n_clients;
	struct ctl_counters ctr;
	/* Telemetry: the telemetry thread asks, the main lcore fills tab. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t tel_asked, tel_done;
	bool tel_registered, tel_closed;
	uint64_t last_reclaim_us;
} ctl = {
	.unix_fd = -1,
	.http_fd = -1,
	.event_fd = -1,
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
};

/* Guarded by ctl.lock: the telemetry thread reads it. */
static struct stat_table tab;

int control_parse_listen(const char *s, uint32_t *addr, uint16_t *port)
{
	char host[INET_ADDRSTRLEN];
	const char *colon = strrchr(s, ':');
	struct in_addr a;
	char *end;

	if (colon == NULL || (size_t)(colon - s) >= sizeof(host) || colon[1] == '\0')
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (inet_pton(AF_INET, host, &a) != 1)
		return -EINVAL;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || p == 0 || p > 65535 || colon[1] < '0' || colon[1] > '9')
		return -EINVAL;
	*addr = ntohl(a.s_addr);
	*port = (uint16_t)p;
	return 0;
}

/* ---- replies ---- */

static void reply_status(struct obuf *o)
{
	const struct relay_config *c = ctl.conf;
	uint64_t now = mx_now_us();

	pthread_mutex_lock(&ctl.lock);
	table_collect(&tab);
	ob_printf(o, "version %s\n", MXRELAY_VERSION);
	ob_printf(o, "config %s\n", ctl.config_path ? ctl.config_path : "-");
	ob_printf(o, "uptime_s %llu\n", (unsigned long long)((now - ctl.start_us) / 1000000));
	ob_printf(o, "workers %u\n", workers_count());
	for (unsigned w = 0; w < workers_count() && w < 64; w++)
		ob_printf(o, "worker %u lcore %u\n", w, ctl.dp->worker_lcore[w]);
	for (unsigned i = 0; i < c->net.n_ports && i < NET_CFG_MAX_PORTS; i++) {
		uint32_t a = c->net.ports[i].addr;
		ob_printf(o, "port %u addr %u.%u.%u.%u/%u steering %s\n", i, a >> 24,
			  (a >> 16) & 255, (a >> 8) & 255, a & 255, c->net.ports[i].prefix_len,
			  ctl.dp->ports[i] ? net_port_steering(ctl.dp->ports[i]) : "none");
	}
	ob_printf(o, "listeners");
	for (unsigned i = 0; i < c->n_listen; i++)
		ob_printf(o, "%s%u", i ? "," : " ", c->listen[i]);
	ob_printf(o, "\n");
	ob_printf(o, "smtp_open %llu\n", (unsigned long long)table_total(&tab, "smtpd_open"));
	ob_printf(o, "smtp_connections %llu\n",
		  (unsigned long long)table_total(&tab, "smtpd_connections"));
	ob_printf(o, "smtp_messages_accepted %llu\n",
		  (unsigned long long)table_total(&tab, "smtp_messages_accepted"));
	ob_printf(o, "spool_messages_queued %llu\n",
		  (unsigned long long)table_total(&tab, "spool_live_messages"));
	ob_printf(o, "spool_used_bytes %llu\n",
		  (unsigned long long)table_total(&tab, "spool_used_bytes"));
	ob_printf(o, "stats_dropped %llu\n", (unsigned long long)tab.dropped);
	ob_printf(o, "control_requests %llu\n", (unsigned long long)ctl.ctr.requests);
	ob_printf(o, "control_clients %u/%u\n", ctl.n_clients, ctl.max_clients);
	ob_printf(o, "control_refused_full %llu\n", (unsigned long long)ctl.ctr.refused_full);
	ob_printf(o, "control_timeouts %llu\n", (unsigned long long)ctl.ctr.timeouts);
	ob_printf(o, "control_too_long %llu\n", (unsigned long long)ctl.ctr.too_long);
	ob_printf(o, "telemetry_requests %llu\n", (unsigned long long)ctl.ctr.telemetry_requests);
	uint64_t gen;
	workers_config(&gen);
	ob_printf(o, "config_generation %llu\n", (unsigned long long)gen);
	ob_printf(o, "config_generation_workers %llu\n",
		  (unsigned long long)workers_generation_acked());
	ob_printf(o, "config_generations_held %u\n", workers_generations_held());
	ob_printf(o, "reloads_ok %llu\n", (unsigned long long)ctl.ctr.reloads_ok);
	ob_printf(o, "reloads_failed %llu\n", (unsigned long long)ctl.ctr.reloads_failed);
	pthread_mutex_unlock(&ctl.lock);
}

static void reply_stats(struct obuf *o, bool json)
{
	pthread_mutex_lock(&ctl.lock);
	table_collect(&tab);
	/* Relay-wide counters of the main lcore, ahead of the workers' sums. */
	uint64_t gen;
	workers_config(&gen);
	const struct {
		const char *name;
		uint64_t value;
	} own[] = {
		{"config_generation", gen},
		{"reloads_ok", ctl.ctr.reloads_ok},
		{"reloads_failed", ctl.ctr.reloads_failed},
		{"control_worker_timeouts", ctl.ctr.worker_timeouts},
	};
	const unsigned n_own = sizeof(own) / sizeof(own[0]);
	if (!json) {
		for (unsigned i = 0; i < n_own; i++)
			ob_printf(o, "%s %llu\n", own[i].name, (unsigned long long)own[i].value);
		for (unsigned i = 0; i < tab.n_names; i++)
			ob_printf(o, "%s %llu\n", tab.names[i], (unsigned long long)tab.total[i]);
		for (unsigned w = 0; w < tab.n_workers; w++)
			for (unsigned i = 0; i < tab.n_names; i++)
				ob_printf(o, "worker.%u.%s %llu\n", w, tab.names[i],
					  (unsigned long long)tab.val[w][i]);
	} else {
		/* Counter names are [a-z0-9_] (workers_stats_foreach): no escaping needed. */
		ob_printf(o, "{\"total\":{");
		for (unsigned i = 0; i < n_own; i++)
			ob_printf(o, "\"%s\":%llu,", own[i].name, (unsigned long long)own[i].value);
		for (unsigned i = 0; i < tab.n_names; i++)
			ob_printf(o, "%s\"%s\":%llu", i ? "," : "", tab.names[i],
				  (unsigned long long)tab.total[i]);
		ob_printf(o, "},\"workers\":[");
		for (unsigned w = 0; w < tab.n_workers; w++) {
			ob_printf(o, "%s{", w ? "," : "");
			for (unsigned i = 0; i < tab.n_names; i++)
				ob_printf(o, "%s\"%s\":%llu", i ? "," : "", tab.names[i],
					  (unsigned long long)tab.val[w][i]);
			ob_printf(o, "}");
		}
		ob_printf(o, "]}\n");
	}
	pthread_mutex_unlock(&ctl.lock);
}

static const char help_text[] =
	"status              version, uptime, workers, ports, listeners, open sessions, spool\n"
	"stats               every counter: totals, then worker.N.name per worker\n"
	"stats json          the same as {\"total\":{...},\"workers\":[{...}]}\n"
	"reload              read the configuration file again (as SIGHUP does)\n"
	"queue [DEST]        destinations and their queues (or one)\n"
	"show ID             one message: envelope and recipients' state\n"
	"flush [DEST]        retry now (every destination, or one)\n"
	"suspend DEST        hold a destination's queue; resume DEST lets it go\n"
	"suspend '*'         hold every destination, new ones too; resume '*' lets them go\n"
	"dns lookup NAME [TYPE]  the shared DNS cache's entry (TYPE: A, AAAA, MX, ...)\n"
	"dns flush [NAME]    drop NAME (all types) or everything from the DNS cache\n"
	"help                this text\n";

/* ---- reload ---- */

/* Each line of text as "prefix line" to the log (at level lvl) and the reply. */
static void lines_out(struct obuf *o, const char *text, const char *prefix, bool error)
{
	const char *p = text;
	while (*p) {
		const char *nl = strchr(p, '\n');
		int n = nl ? (int)(nl - p) : (int)strlen(p);
		if (error)
			MX_ERR("%s%.*s", prefix, n, p);
		else
			MX_WARN("%s%.*s", prefix, n, p);
		if (o != NULL)
			ob_printf(o, "%.*s\n", n, p);
		p += n + (nl != NULL);
	}
}

static int reload(const char *why, struct obuf *o)
{
	uint64_t gen;
	const struct relay_config *run = workers_config(&gen);
	struct relay_config *next = calloc(1, sizeof(*next));
	struct smtpd_shared *g = NULL;
	struct cfg_report rep = {0}, notes = {0};
	char err[600];
	const char *path = ctl.config_path;

	if (run == NULL || path == NULL || next == NULL) {
		free(next);
		ctl.ctr.reloads_failed++;
		MX_ERR("reload (%s): %s", why, next == NULL ? "out of memory" : "not running");
		if (o != NULL)
			ob_printf(o, "error: reload: %s\n",
				  next == NULL ? "out of memory" : "the relay is not running");
		return -EINVAL;
	}
	MX_INFO("reload (%s): reading %s", why, path);
	if (relay_config_load(path, workers_count(), next, &rep) == 0)
		relay_config_keep_restart_keys(run, next, &notes, &rep);
	if (rep.count == 0) {
		g = calloc(1, sizeof(*g));
		if (g == NULL)
			cfg_error(&rep, next->cf, -1, "out of memory");
		else if (smtpd_shared_init(g, next, workers_count(), err, sizeof(err)) != 0)
			cfg_error(&rep, next->cf, 0, "%s", err);
	}
	if (rep.count == 0) {
		g->own_conf = next;
		int rc = workers_publish(g);
		if (rc != 0) {
			cfg_error(&rep, next->cf, -1,
				  "too many older configurations are still in use by open "
				  "connections; try again later");
			g->own_conf = NULL;
		}
	}
	if (rep.count != 0) {
		if (g != NULL)
			smtpd_shared_free(g);
		free(g);
		relay_config_free(next);
		free(next);
		ctl.ctr.reloads_failed++;
		MX_ERR("reload (%s) refused: %u error(s); configuration generation %llu stays in "
		       "force",
		       why, rep.count, (unsigned long long)gen);
		if (o != NULL)
			ob_printf(o,
				  "error: reload refused: %u error(s); the running configuration "
				  "(generation %llu) stays in force\n",
				  rep.count, (unsigned long long)gen);
		lines_out(o, rep.text, "reload: ", true);
		return -EINVAL;
	}
	ctl.ctr.reloads_ok++;
	mx_log_set_level(next->log_level);
	MX_INFO("reload (%s): configuration generation %llu in force for new connections; "
		"open ones keep theirs",
		why, (unsigned long long)g->generation);
	if (o != NULL)
		ob_printf(o,
			  "reloaded: configuration generation %llu (new connections; open ones "
			  "keep theirs)\n",
			  (unsigned long long)g->generation);
	lines_out(o, notes.text, "reload: ", false);
	return 0;
}

int control_reload(const char *why)
{
	return reload(why, NULL);
}

/* ---- queue commands: asked of the workers ---- */

static const char *const cmd_verbs[] = {"queue", "show", "flush", "suspend", "resume"};
enum { CMD_QUEUE, CMD_SHOW, CMD_FLUSH, CMD_SUSPEND, CMD_RESUME };

static int call_queue(struct deliver *dl, unsigned w, const char *arg, FILE *out)
{
	(void)w;
	(void)arg;
	return deliver_ctl_queue(dl, out);
}

static int call_show(struct deliver *dl, unsigned w, const char *arg, FILE *out)
{
	uint64_t id;
	(void)w;
	if (spool_id_parse(arg, &id) != 0)
		return -EINVAL;
	return deliver_ctl_show(dl, id, out);
}

static int call_flush(struct deliver *dl, unsigned w, const char *arg, FILE *out)
{
	(void)w;
	return deliver_ctl_flush(dl, arg[0] ? arg : NULL, out);
}

static int call_suspend(struct deliver *dl, unsigned w, const char *arg, FILE *out)
{
	(void)w;
	return deliver_ctl_suspend(dl, arg, true, out);
}

static int call_resume(struct deliver *dl, unsigned w, const char *arg, FILE *out)
{
	(void)w;
	return deliver_ctl_suspend(dl, arg, false, out);
}

/* Keep the lines of text whose first word is dest (mxctl queue DEST). */
static size_t filter_dest(struct obuf *o, const char *text, const char *dest)
{
	size_t kept = 0, dlen = strlen(dest);
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		if (n >= dlen && strncasecmp(p, dest, dlen) == 0 &&
		    (n == dlen || p[dlen] == ' ' || p[dlen] == '\t')) {
			ob_printf(o, "%.*s\n", (int)n, p);
			kept++;
		}
		p += n + (nl != NULL);
	}
	return kept;
}

static const char *call_error(int rc)
{
	switch (rc) {
	case -ENODEV:
		return "not running";
	case -EBUSY:
		return "still busy with an earlier request";
	case -ETIMEDOUT:
		return "no answer within 2 s";
	case -E2BIG:
		return "argument too long";
	default:
		return strerror(-rc);
	}
}

static void reply_queue_cmd(int cmd, const char *arg, struct obuf *o)
{
	static const worker_call_fn fns[] = {call_queue, call_show, call_flush, call_suspend,
					     call_resume};
	struct worker_answer ans[64];
	unsigned n = workers_count() < 64 ? workers_count() : 64;
	uint64_t mask = n == 64 ? ~0ull : (1ull << n) - 1;
	const char *verb = cmd_verbs[cmd];
	unsigned ok = 0, nosys = 0, noent = 0, inval = 0, failed = 0;
	struct obuf body = {0}, errs = {0};

	if (cmd == CMD_SHOW) {
		uint64_t id;
		if (spool_id_parse(arg, &id) != 0) {
			ob_printf(o,
				  "error: show: '%s' is not a message ID (12 characters, as in "
				  "\"queued as ID\")\n",
				  arg);
			ctl.ctr.errors++;
			return;
		}
		/* The message lives in the spool of the worker that accepted it. */
		if (spool_id_core(id) < n)
			mask = 1ull << spool_id_core(id);
	}
	workers_call(mask, fns[cmd], arg, CTL_CALL_TIMEOUT_US, ans);
	for (unsigned w = 0; w < n; w++) {
		if (!(mask >> w & 1))
			continue;
		int rc = ans[w].rc;
		if (rc == 0) {
			ok++;
			if (ans[w].text != NULL) {
				if (cmd == CMD_QUEUE && arg[0])
					filter_dest(&body, ans[w].text, arg);
				else
					ob_printf(&body, "%s", ans[w].text);
			}
		} else if (rc == -ENOSYS) {
			nosys++;
		} else if (rc == -ENOENT) {
			noent++;
		} else if (rc == -EINVAL) {
			inval++;
			if (ans[w].text != NULL)
				ob_printf(&errs, "%s", ans[w].text);
		} else {
			failed++;
			if (rc == -ETIMEDOUT)
				ctl.ctr.worker_timeouts++;
			ob_printf(&errs, "worker %u: %s\n", w, call_error(rc));
		}
		free(ans[w].text);
	}
	if (failed > 0) {
		ob_printf(o, "error: %s: %u worker(s) did not answer%s\n", verb, failed,
			  ok ? "; the answers of the others follow" : "");
		if (errs.p)
			ob_printf(o, "%s", errs.p);
		if (body.p)
			ob_printf(o, "%s", body.p);
		ctl.ctr.errors++;
	} else if (ok == 0 && nosys > 0) {
		ob_printf(o, "error: %s is not available yet\n", verb);
		ctl.ctr.errors++;
	} else if (ok == 0 && inval > 0) {
		ob_printf(o, "error: %s: bad argument '%s'\n%s", verb, arg, errs.p ? errs.p : "");
		ctl.ctr.errors++;
	} else if (ok == 0 || (cmd == CMD_QUEUE && arg[0] && body.len == 0)) {
		if (cmd == CMD_SHOW)
			ob_printf(o, "error: show: no message %s in the queue\n", arg);
		else
			ob_printf(o, "error: %s: no destination '%s' in the queue\n", verb, arg);
		ctl.ctr.errors++;
	} else if (body.len == 0) {
		ob_printf(o, "%s\n", cmd == CMD_QUEUE ? "queue empty" : "ok");
	} else {
		ob_printf(o, "%s", body.p);
	}
	if (body.full || errs.full)
		o->full = true;
	free(body.p);
	free(errs.p);
}

/* ---- DNS cache ---- */

static const struct {
	const char *name;
	uint16_t type;
} dns_types[] = {
	{"A", DNS_T_A},	  {"NS", DNS_T_NS},   {"CNAME", DNS_T_CNAME}, {"SOA", DNS_T_SOA},
	{"MX", DNS_T_MX}, {"TXT", DNS_T_TXT}, {"AAAA", DNS_T_AAAA},   {"TLSA", DNS_T_TLSA},
};

static const char *dns_type_str(uint16_t type, char *buf, size_t cap)
{
	for (size_t i = 0; i < sizeof(dns_types) / sizeof(dns_types[0]); i++)
		if (dns_types[i].type == type)
			return dns_types[i].name;
	snprintf(buf, cap, "TYPE%u", type);
	return buf;
}

/* "MX", "mx", "TYPE15" or "15".  0 or -EINVAL. */
static int dns_type_parse(const char *s, uint16_t *type)
{
	for (size_t i = 0; i < sizeof(dns_types) / sizeof(dns_types[0]); i++)
		if (strcasecmp(s, dns_types[i].name) == 0) {
			*type = dns_types[i].type;
			return 0;
		}
	if (strncasecmp(s, "TYPE", 4) == 0)
		s += 4;
	uint64_t v;
	if (cfg_parse_u64(s, 1, 65535, &v) != 0)
		return -EINVAL;
	*type = (uint16_t)v;
	return 0;
}

/* Printable text of cache data: names came off the wire (hostile until proven otherwise). */
static void ob_safe(struct obuf *o, const char *s)
{
	for (; s != NULL && *s; s++)
		ob_printf(o, "%c", *s > 0x20 && *s < 0x7f ? *s : '?');
}

static void dns_print_rr(struct obuf *o, const struct dns_rr *rr)
{
	char tb[16];
	ob_printf(o, "  ");
	ob_safe(o, rr->name);
	ob_printf(o, " %s ", dns_type_str(rr->type, tb, sizeof(tb)));
	switch (rr->type) {
	case DNS_T_A:
		ob_printf(o, "%u.%u.%u.%u", rr->a >> 24, (rr->a >> 16) & 255, (rr->a >> 8) & 255,
			  rr->a & 255);
		break;
	case DNS_T_AAAA: {
		char txt[INET6_ADDRSTRLEN];
		ob_printf(o, "%s", inet_ntop(AF_INET6, rr->aaaa, txt, sizeof(txt)) ? txt : "?");
		break;
	}
	case DNS_T_MX:
		ob_printf(o, "%u ", rr->mx.pref);
		ob_safe(o, rr->mx.host);
		break;
	case DNS_T_CNAME:
	case DNS_T_NS:
		ob_safe(o, rr->target);
		break;
	case DNS_T_SOA:
		ob_safe(o, rr->soa.mname);
		ob_printf(o, " ");
		ob_safe(o, rr->soa.rname);
		ob_printf(o, " %u", rr->soa.serial);
		break;
	default:
		ob_printf(o, "(%u bytes)", rr->raw.len);
		break;
	}
	ob_printf(o, "\n");
}

static const char *dns_status_str(uint8_t st)
{
	static const char *const names[] = {"ok", "nodata (negative)", "nxdomain (negative)",
					    "cname", "tempfail"};
	return st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

static void dns_print_entry(struct obuf *o, const struct dns_entry *e, uint64_t now)
{
	char tb[16];
	ob_safe(o, e->name);
	ob_printf(o, " %s %s", dns_type_str(e->type, tb, sizeof(tb)), dns_status_str(e->status));
	if (now < e->expire_us)
		ob_printf(o, " ttl %u left %llu s", e->ttl,
			  (unsigned long long)((e->expire_us - now + 999999) / 1000000));
	else
		ob_printf(o, " ttl %u expired %llu s ago", e->ttl,
			  (unsigned long long)((now - e->expire_us) / 1000000));
	if (e->stale || now >= e->expire_us)
		ob_printf(o, " stale%s",
			  now < e->stale_until_us ? " (may be served)" : " (not served)");
	if (e->ad)
		ob_printf(o, " ad");
	if (e->canon != NULL && e->name != NULL && strcmp(e->canon, e->name) != 0) {
		ob_printf(o, " canonical ");
		ob_safe(o, e->canon);
	}
	ob_printf(o, " records %u\n", e->rr_count);
	for (unsigned i = 0; i < e->rr_count; i++)
		dns_print_rr(o, &e->rr[i]);
}

static struct dns_cache *dns_cache_for_ctl(struct obuf *o)
{
	struct dns_cache *c = resolve_shared_cache();
	if (c == NULL) {
		ob_printf(o, "error: dns: no DNS cache ([dns] resolvers is not set)\n");
		ctl.ctr.errors++;
	}
	return c;
}

static void reply_dns(int argc, char argv[][CTL_ARG_MAX], struct obuf *o)
{
	if (argc >= 3 && argc <= 4 && strcmp(argv[1], "lookup") == 0) {
		uint16_t type = DNS_T_MX;
		if (argc == 4 && dns_type_parse(argv[3], &type) != 0) {
			ob_printf(o, "error: dns lookup: unknown type '");
			ob_safe(o, argv[3]);
			ob_printf(o, "' (A, AAAA, MX, CNAME, NS, TXT, SOA, TLSA or a number)\n");
			ctl.ctr.errors++;
			return;
		}
		struct dns_cache *c = dns_cache_for_ctl(o);
		unsigned reader;
		if (c == NULL)
			return;
		/*
		 * The main lcore reads the cache lock-free like a worker, so it
		 * needs a reader id of its own, only for this request: a reader
		 * that stays registered without reporting quiescent states
		 * would hold back every reclamation in the cache.
		 */
		if (dns_cache_register_thread(c, &reader) != 0) {
			ob_printf(o, "error: dns: no reader slot left in the cache\n");
			ctl.ctr.errors++;
			return;
		}
		/* Without a type: what mail routing asks (MX, then the hosts' addresses). */
		static const uint16_t route_types[] = {DNS_T_MX, DNS_T_A, DNS_T_AAAA, DNS_T_CNAME};
		const uint16_t *types = argc == 4 ? &type : route_types;
		unsigned n_types = argc == 4 ? 1 : 4, found = 0;
		uint64_t now = mx_now_us();
		for (unsigned i = 0; i < n_types; i++) {
			const struct dns_entry *e =
				dns_cache_lookup(c, reader, argv[2], types[i], now);
			if (e == NULL)
				continue;
			dns_print_entry(o, e, now);
			found++;
		}
		dns_cache_unregister_thread(c, reader); /* the entries may be freed from now on */
		if (found == 0) {
			ob_safe(o, argv[2]);
			ob_printf(o, " %s: not in the cache\n",
				  argc == 4 ? argv[3] : "MX/A/AAAA/CNAME");
		}
		return;
	}
	if (argc >= 2 && argc <= 3 && strcmp(argv[1], "flush") == 0) {
		struct dns_cache *c = dns_cache_for_ctl(o);
		if (c == NULL)
			return;
		int n = dns_cache_flush(c, argc == 3 ? argv[2] : NULL);
		if (n < 0) {
			ob_printf(o, "error: dns flush: '");
			ob_safe(o, argv[2]);
			ob_printf(o, "' is not a domain name\n");
			ctl.ctr.errors++;
			return;
		}
		ob_printf(o, "flushed %d entr%s\n", n, n == 1 ? "y" : "ies");
		MX_INFO("control: dns flush %s: %d entries", argc == 3 ? argv[2] : "(all)", n);
		return;
	}
	ob_printf(o, "error: usage: dns lookup NAME [TYPE] | dns flush [NAME]\n");
	ctl.ctr.errors++;
}

/* Answer one control request line (NUL-terminated, without its newline). */
static void control_answer(const char *line, struct obuf *o)
{
	char argv[CTL_MAX_ARGS + 1][CTL_ARG_MAX];
	int argc = 0;
	const char *p = line;

	ctl.ctr.requests++;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		size_t n = strcspn(p, " \t");
		if (argc == CTL_MAX_ARGS + 1 || n >= CTL_ARG_MAX) {
			ob_printf(o, "error: too many or too long arguments (try help)\n");
			ctl.ctr.errors++;
			return;
		}
		memcpy(argv[argc], p, n);
		argv[argc++][n] = '\0';
		p += n;
	}
	for (int i = 0; i < argc; i++)
		for (char *q = argv[i]; *q; q++)
			if (*q < 0x21 || *q > 0x7e) {
				ob_printf(o, "error: request has non-printable bytes (try help)\n");
				ctl.ctr.errors++;
				return;
			}
	const char *cmd = argc > 0 ? argv[0] : "";
	if (argc == 0) {
		ob_printf(o, "error: empty request (try help)\n");
	} else if (strcmp(cmd, "help") == 0 && argc == 1) {
		ob_printf(o, "%s", help_text);
		return;
	} else if (strcmp(cmd, "status") == 0 && argc == 1) {
		reply_status(o);
		return;
	} else if (strcmp(cmd, "stats") == 0 &&
		   (argc == 1 || (argc == 2 && !strcmp(argv[1], "json")))) {
		reply_stats(o, argc == 2);
		return;
	} else if (strcmp(cmd, "reload") == 0 && argc == 1) {
		reload("mxctl", o);
		return;
	} else if (strcmp(cmd, "dns") == 0) {
		reply_dns(argc, argv, o);
		return;
	} else if ((strcmp(cmd, "queue") == 0 || strcmp(cmd, "flush") == 0) && argc <= 2) {
		reply_queue_cmd(cmd[0] == 'q' ? CMD_QUEUE : CMD_FLUSH, argc == 2 ? argv[1] : "", o);
		return;
	} else if (strcmp(cmd, "show") == 0 && argc == 2) {
		reply_queue_cmd(CMD_SHOW, argv[1], o);
		return;
	} else if ((strcmp(cmd, "suspend") == 0 || strcmp(cmd, "resume") == 0) && argc == 2) {
		reply_queue_cmd(cmd[0] == 's' ? CMD_SUSPEND : CMD_RESUME, argv[1], o);
		return;
	} else {
		bool known = false;
		static const char *const others[] = {"help", "status", "stats", "reload", NULL};
		for (int i = 0; others[i]; i++)
			known = known || strcmp(cmd, others[i]) == 0;
		for (int i = 0; i < 5; i++)
			known = known || strcmp(cmd, cmd_verbs[i]) == 0;
		if (known)
			ob_printf(o, "error: bad arguments to '%s' (try help)\n", cmd);
		else
			ob_printf(o, "error: unknown command '%s' (try help)\n", cmd);
	}
	ctl.ctr.errors++;
}

static void prom_family(struct obuf *o, const char *metric, const char *type, const char *help)
{
	ob_printf(o, "# HELP %s %s\n# TYPE %s %s\n", metric, help, metric, type);
}

/*
 * Prometheus text format 0.0.4.  Counters end in _total, gauges do not.
 * Two families per counter: mxrelay_<name>[_total] for the relay as a
 * whole, mxrelay_worker_<name>[_total]{worker="N"} per worker, so that
 * sum(mxrelay_worker_x_total) == mxrelay_x_total without double counting.
 */
#define CTL_METRIC_DESTS 1000 /* destinations exported with their own series */

/*
 * Per destination, from each worker's `mxctl queue` lines ("NAME worker=N
 * state=S queued=N waiting=N in_flight=N conns=N idle=N sent=N deferred=N
 * bounced=N ..."): the queue depth as gauges and the delivery results as
 * counters (since the destination was first seen on that worker), labelled
 * by destination and worker.  Bounded: the first CTL_METRIC_DESTS lines.
 */
static void metrics_destinations(struct obuf *o)
{
	static const struct {
		const char *field, *help;
		bool counter;
	} fields[] = {
		{"queued", "recipients waiting in the destination's queue", false},
		{"waiting", "recipients deferred, waiting for their retry time", false},
		{"in_flight", "recipients in a transaction now", false},
		{"conns", "connections open or connecting", false},
		{"sent", "recipients delivered", true},
		{"deferred", "recipient delivery attempts deferred (4xx, no answer)", true},
		{"bounced", "recipients bounced (5xx, or too old)", true},
		{"reused", "messages sent on a session that had carried one before", true},
		{"tls_full", "outbound TLS handshakes that were full ones", true},
		{"tls_resumed", "outbound TLS handshakes that resumed a cached session", true},
	};
	struct worker_answer ans[64];
	unsigned n = workers_count() < 64 ? workers_count() : 64;
	uint64_t mask = n == 64 ? ~0ull : (1ull << n) - 1;

	workers_call(mask, call_queue, "", 2000000, ans);
	for (unsigned f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
		const char *suffix = fields[f].counter ? "_total" : "";
		unsigned lines = 0;
		ob_printf(o, "# HELP mxrelay_destination_%s%s %s\n# TYPE mxrelay_destination_%s%s %s\n",
			  fields[f].field, suffix, fields[f].help, fields[f].field, suffix,
			  fields[f].counter ? "counter" : "gauge");
		for (unsigned w = 0; w < n; w++) {
			for (const char *p = ans[w].rc == 0 ? ans[w].text : NULL; p && *p;) {
				const char *nl = strchr(p, '\n');
				size_t len = nl ? (size_t)(nl - p) : strlen(p);
				char line[512], key[24];
				const char *v;
				if (len < sizeof(line) && lines < CTL_METRIC_DESTS) {
					memcpy(line, p, len);
					line[len] = 0;
					snprintf(key, sizeof(key), " %s=", fields[f].field);
					char *sp = strchr(line, ' ');
					if (sp != NULL && (v = strstr(line, key)) != NULL) {
						*sp = 0;
						bool clean =
							true; /* names are DNS names or literals */
						for (char *c = line; *c; c++)
							clean = clean && *c != '"' && *c != '\\';
						if (clean) {
							ob_printf(o,
								  "mxrelay_destination_%s%s{"
								  "destination=\"%s\","
								  "worker=\"%u\"} %llu\n",
								  fields[f].field, suffix, line, w,
								  strtoull(v + strlen(key), NULL,
									   10));
							lines++;
						}
					}
				}
				p += len + (nl != NULL);
			}
		}
	}
	for (unsigned w = 0; w < n; w++)
		free(ans[w].text);
}

static void reply_metrics(struct obuf *o)
{
	char metric[CTL_NAME_LEN + 32];

	pthread_mutex_lock(&ctl.lock);
	table_collect(&tab);
	prom_family(o, "mxrelay_build_info", "gauge", "version of the running relay");
	ob_printf(o, "mxrelay_build_info{version=\"%s\"} 1\n", MXRELAY_VERSION);
	prom_family(o, "mxrelay_uptime_seconds", "gauge", "seconds since the relay started");
	ob_printf(o, "mxrelay_uptime_seconds %llu\n",
		  (unsigned long long)((mx_now_us() - ctl.start_us) / 1000000));
	prom_family(o, "mxrelay_workers", "gauge", "worker lcores");
	ob_printf(o, "mxrelay_workers %u\n", workers_count());
	prom_family(o, "mxrelay_control_requests_total", "counter",
		    "control socket and HTTP requests answered");
	ob_printf(o, "mxrelay_control_requests_total %llu\n",
		  (unsigned long long)(ctl.ctr.requests + ctl.ctr.http_requests));
	prom_family(o, "mxrelay_control_refused_total", "counter",
		    "control and HTTP clients refused: max_clients reached");
	ob_printf(o, "mxrelay_control_refused_total %llu\n",
		  (unsigned long long)ctl.ctr.refused_full);
	prom_family(o, "mxrelay_control_timeouts_total", "counter",
		    "control and HTTP clients closed after 5 s without a request");
	ob_printf(o, "mxrelay_control_timeouts_total %llu\n", (unsigned long long)ctl.ctr.timeouts);
	uint64_t gen;
	workers_config(&gen);
	prom_family(o, "mxrelay_config_generation", "gauge",
		    "configuration generation in force (1 at start, one more per reload)");
	ob_printf(o, "mxrelay_config_generation %llu\n", (unsigned long long)gen);
	prom_family(o, "mxrelay_reloads_ok_total", "counter", "configuration reloads applied");
	ob_printf(o, "mxrelay_reloads_ok_total %llu\n", (unsigned long long)ctl.ctr.reloads_ok);
	prom_family(o, "mxrelay_reloads_failed_total", "counter",
		    "configuration reloads refused (the running configuration stayed)");
	ob_printf(o, "mxrelay_reloads_failed_total %llu\n",
		  (unsigned long long)ctl.ctr.reloads_failed);
	for (unsigned i = 0; i < tab.n_names; i++) {
		const char *name = tab.names[i];
		bool gauge = stat_is_gauge(name);
		const char *sfx = gauge ? "" : "_total";
		const char *type = gauge ? "gauge" : "counter";
		const char *agg = stat_is_max(name) ? "maximum" : "sum";

		snprintf(metric, sizeof(metric), "mxrelay_%s%s", name, sfx);
		ob_printf(o, "# HELP %s %s, %s over workers\n# TYPE %s %s\n", metric, name, agg,
			  metric, type);
		ob_printf(o, "%s %llu\n", metric, (unsigned long long)tab.total[i]);
		snprintf(metric, sizeof(metric), "mxrelay_worker_%s%s", name, sfx);
		ob_printf(o, "# HELP %s %s, per worker\n# TYPE %s %s\n", metric, name, metric,
			  type);
		for (unsigned w = 0; w < tab.n_workers; w++)
			ob_printf(o, "%s{worker=\"%u\"} %llu\n", metric, w,
				  (unsigned long long)tab.val[w][i]);
	}
	pthread_mutex_unlock(&ctl.lock);
	metrics_destinations(o);
}

static void http_reply(struct obuf *o, int code, const char *reason, const struct obuf *body,
		       const char *ctype)
{
	const char *text = body ? body->p : NULL;
	size_t len = body ? body->len : strlen(reason) + 1;
	ob_printf(o,
		  "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		  "Connection: close\r\n\r\n",
		  code, reason, ctype, len);
	if (text != NULL)
		ob_printf(o, "%.*s", (int)body->len, text);
	else
		ob_printf(o, "%s\n", reason);
}

/* Answer one HTTP request head (NUL-terminated). */
static void http_answer(const char *head, struct obuf *o)
{
	char method[16], target[256], version[16];

	ctl.ctr.http_requests++;
	if (sscanf(head, "%15s %255s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0) {
		http_reply(o, 400, "Bad Request", NULL, "text/plain");
		return;
	}
	if (strcmp(method, "GET") != 0) {
		http_reply(o, 405, "Method Not Allowed", NULL, "text/plain");
		return;
	}
	char *q = strchr(target, '?');
	if (q != NULL)
		*q = '\0';
	if (strcmp(target, "/metrics") != 0) {
		ctl.ctr.http_not_found++;
		http_reply(o, 404, "Not Found", NULL, "text/plain");
		return;
	}
	struct obuf body = {0};
	reply_metrics(&body);
	if (body.full) {
		http_reply(o, 500, "Internal Server Error", NULL, "text/plain");
	} else {
		http_reply(o, 200, "OK", &body, "text/plain; version=0.0.4; charset=utf-8");
	}
	free(body.p);
}

/* ---- telemetry (runs on EAL's telemetry thread) ---- */

/* Ask the main lcore for a fresh table; returns with ctl.lock held, false if none came. */
static bool tel_refresh_locked(void)
{
	struct timespec until;
	uint64_t one = 1, want;
	bool ok = true;

	pthread_mutex_lock(&ctl.lock);
	if (ctl.tel_closed)
		return false;
	want = ++ctl.tel_asked;
	if (write(ctl.event_fd, &one, sizeof(one)) != sizeof(one))
		return false;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += CTL_TEL_WAIT_MS / 1000;
	while (ctl.tel_done < want && !ctl.tel_closed && ok)
		ok = pthread_cond_timedwait(&ctl.cond, &ctl.lock, &until) == 0;
	return ctl.tel_done >= want;
}

static int tel_stats(const char *cmd, const char *params, struct rte_tel_data *d)
{
	(void)cmd;
	(void)params;
	if (!tel_refresh_locked()) {
		pthread_mutex_unlock(&ctl.lock);
		return -EAGAIN;
	}
	rte_tel_data_start_dict(d);
	for (unsigned i = 0; i < tab.n_names && i < RTE_TEL_MAX_DICT_ENTRIES; i++)
		rte_tel_data_add_dict_u64(d, tab.names[i], tab.total[i]);
	pthread_mutex_unlock(&ctl.lock);
	return 0;
}

static int tel_worker_stats(const char *cmd, const char *params, struct rte_tel_data *d)
{
	char *end;
	(void)cmd;
	if (params == NULL || *params < '0' || *params > '9')
		return -EINVAL;
	unsigned long w = strtoul(params, &end, 10);
	if (*end != '\0')
		return -EINVAL;
	if (!tel_refresh_locked()) {
		pthread_mutex_unlock(&ctl.lock);
		return -EAGAIN;
	}
	if (w >= tab.n_workers) {
		pthread_mutex_unlock(&ctl.lock);
		return -EINVAL;
	}
	rte_tel_data_start_dict(d);
	for (unsigned i = 0; i < tab.n_names && i < RTE_TEL_MAX_DICT_ENTRIES; i++)
		rte_tel_data_add_dict_u64(d, tab.names[i], tab.val[w][i]);
	pthread_mutex_unlock(&ctl.lock);
	return 0;
}

static int tel_status(const char *cmd, const char *params, struct rte_tel_data *d)
{
	(void)cmd;
	(void)params;
	if (!tel_refresh_locked()) {
		pthread_mutex_unlock(&ctl.lock);
		return -EAGAIN;
	}
	rte_tel_data_start_dict(d);
	rte_tel_data_add_dict_string(d, "version", MXRELAY_VERSION);
	rte_tel_data_add_dict_u64(d, "uptime_s", (mx_now_us() - ctl.start_us) / 1000000);
	rte_tel_data_add_dict_u64(d, "workers", tab.n_workers);
	rte_tel_data_add_dict_u64(d, "ports", ctl.conf->net.n_ports);
	rte_tel_data_add_dict_u64(d, "smtp_open", table_total(&tab, "smtpd_open"));
	rte_tel_data_add_dict_u64(d, "smtp_messages_accepted",
				  table_total(&tab, "smtp_messages_accepted"));
	rte_tel_data_add_dict_u64(d, "spool_messages_queued",
				  table_total(&tab, "spool_live_messages"));
	pthread_mutex_unlock(&ctl.lock);
	return 0;
}

/* On the main lcore: the telemetry thread asked for a table. */
static void tel_serve(void)
{
	uint64_t v;
	if (read(ctl.event_fd, &v, sizeof(v)) != sizeof(v))
		return;
	pthread_mutex_lock(&ctl.lock);
	table_collect(&tab);
	ctl.tel_done = ctl.tel_asked;
	ctl.ctr.telemetry_requests += v;
	pthread_cond_broadcast(&ctl.cond);
	pthread_mutex_unlock(&ctl.lock);
}

/* ---- sockets ---- */

/* mkdir -p of the socket's directory. */
static int make_parent_dirs(const char *path)
{
	char dir[sizeof(ctl.unix_path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(dir, 0750) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int open_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	rc = make_parent_dirs(path);
	if (rc != 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		if (errno != EADDRINUSE)
			goto fail;
		/* A live relay answers on it: leave it alone.  A stale file does not. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			close(fd);
			return -EADDRINUSE;
		}
		unlink(path);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			goto fail;
	}
	if (chmod(path, 0660) != 0 || listen(fd, 16) != 0)
		goto fail;
	return fd;
fail:
	rc = -errno;
	close(fd);
	return rc;
}

static int open_http(const char *spec)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	uint32_t addr;
	uint16_t port;
	int fd, one = 1, rc;

	if (control_parse_listen(spec, &addr, &port) != 0)
		return -EINVAL;
	sa.sin_addr.s_addr = htonl(addr);
	sa.sin_port = htons(port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

static void client_close(struct client *c)
{
	close(c->fd);
	c->fd = -1;
	free(c->out.p);
	memset(&c->out, 0, sizeof(c->out));
	ctl.n_clients--;
}

static void accept_clients(int lfd, enum client_kind kind)
{
	/* Bounded per turn so one listener cannot starve the other. */
	for (int n = 0; n < 16; n++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct client *c = NULL;
		for (unsigned i = 0; i < ctl.max_clients; i++)
			if (ctl.clients[i].fd < 0) {
				c = &ctl.clients[i];
				break;
			}
		if (c == NULL) {
			static const char busy[] = "error: control busy, try again\n";
			ctl.ctr.refused_full++;
			if (kind == CLIENT_CONTROL && write(fd, busy, sizeof(busy) - 1) < 0)
				ctl.ctr.errors++;
			close(fd);
			continue;
		}
		c->fd = fd;
		c->kind = kind;
		c->in_len = 0;
		c->out_off = 0;
		c->replying = false;
		c->draining = false;
		c->drained = 0;
		c->deadline_us = mx_now_us() + CTL_CLIENT_TIMEOUT_US;
		ctl.n_clients++;
	}
}

/* The request is complete (or the peer finished sending): build the reply. */
static void client_answer(struct client *c)
{
	c->in[c->in_len] = '\0';
	if (c->kind == CLIENT_CONTROL) {
		char *nl = strpbrk(c->in, "\r\n");
		if (nl != NULL)
			*nl = '\0';
		control_answer(c->in, &c->out);
	} else {
		http_answer(c->in, &c->out);
	}
	if (c->out.full) {
		/* Better a clear error than a reply cut in the middle. */
		c->out.len = 0;
		c->out.full = false;
		if (c->kind == CLIENT_CONTROL)
			ob_printf(&c->out, "error: reply too large\n");
		else
			http_reply(&c->out, 500, "Internal Server Error", NULL, "text/plain");
	}
	c->replying = true;
}

static bool request_complete(const struct client *c)
{
	if (c->kind == CLIENT_CONTROL)
		return memchr(c->in, '\n', c->in_len) != NULL;
	/* HTTP/1.0 head ends with an empty line (RFC 1945 section 4.1); accept bare LF too. */
	char tmp[CTL_HTTP_REQ_MAX + 1];
	memcpy(tmp, c->in, c->in_len);
	tmp[c->in_len] = '\0';
	return strstr(tmp, "\r\n\r\n") != NULL || strstr(tmp, "\n\n") != NULL;
}

static int client_read(struct client *c)
{
	size_t limit = c->kind == CLIENT_CONTROL ? CTL_REQ_MAX : CTL_HTTP_REQ_MAX;
	ssize_t n = read(c->fd, c->in + c->in_len, limit - c->in_len);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0) {
		/* The peer finished: answer what it sent (mxctl may shut down its side). */
		if (c->in_len == 0)
			return -1;
		client_answer(c);
		return 1;
	}
	c->in_len += (size_t)n;
	if (request_complete(c)) {
		client_answer(c);
		return 1;
	}
	if (c->in_len == limit) {
		ctl.ctr.too_long++;
		ctl.ctr.errors++;
		if (c->kind == CLIENT_CONTROL)
			ob_printf(&c->out, "error: request too long (max %d bytes)\n", CTL_REQ_MAX);
		else
			http_reply(&c->out, 431, "Request Header Fields Too Large", NULL,
				   "text/plain");
		c->replying = true;
		return 1;
	}
	return 0;
}

/* 0 while the peer still sends, -1 once it closed or sent too much. */
static int client_drain(struct client *c)
{
	char buf[4096];
	ssize_t n = read(c->fd, buf, sizeof(buf));
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	c->drained += (size_t)n;
	return n == 0 || c->drained > 16 * CTL_HTTP_REQ_MAX ? -1 : 0;
}

/* 1 while more is to be written, 0 when done, -1 on error. */
static int client_write(struct client *c)
{
	while (c->out_off < c->out.len) {
		ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 1 : -1;
		c->out_off += (size_t)n;
	}
	return 0;
}

int control_start(const struct relay_config *conf, const struct net_dataplane *dp,
		  const char *config_path)
{
	const struct relay_control_conf *cc = &conf->control;
	int fd;

	ctl.conf = conf;
	ctl.dp = dp;
	ctl.config_path = config_path;
	ctl.start_us = mx_now_us();
	ctl.max_clients = (unsigned)cc->max_clients;
	ctl.clients = calloc(ctl.max_clients, sizeof(*ctl.clients));
	if (ctl.clients == NULL)
		return -ENOMEM;
	for (unsigned i = 0; i < ctl.max_clients; i++)
		ctl.clients[i].fd = -1;
	ctl.event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ctl.event_fd < 0) {
		MX_ERR("control: eventfd: %s", strerror(errno));
		free(ctl.clients);
		ctl.clients = NULL;
		return -errno;
	}
	if (cc->socket[0]) {
		fd = open_unix(cc->socket);
		if (fd < 0) {
			MX_WARN("control: socket %s: %s; control socket off", cc->socket,
				fd == -EADDRINUSE ? "another relay answers on it" : strerror(-fd));
		} else {
			ctl.unix_fd = fd;
			snprintf(ctl.unix_path, sizeof(ctl.unix_path), "%s", cc->socket);
			MX_INFO("control: socket %s", cc->socket);
		}
	}
	if (cc->http_listen[0]) {
		fd = open_http(cc->http_listen);
		if (fd < 0) {
			MX_WARN("control: http_listen %s: %s; Prometheus endpoint off",
				cc->http_listen, strerror(-fd));
		} else {
			ctl.http_fd = fd;
			MX_INFO("control: Prometheus metrics on http://%s/metrics",
				cc->http_listen);
		}
	}
	pthread_mutex_lock(&ctl.lock);
	ctl.tel_closed = false;
	pthread_mutex_unlock(&ctl.lock);
	/* Commands stay registered for the life of the process (EAL has no unregister). */
	if (!ctl.tel_registered) {
		if (rte_telemetry_register_cmd("/mxrelay/stats", tel_stats,
					       "Every counter, summed over workers") != 0 ||
		    rte_telemetry_register_cmd(
			    "/mxrelay/worker_stats", tel_worker_stats,
			    "Every counter of one worker. Parameters: int worker") != 0 ||
		    rte_telemetry_register_cmd("/mxrelay/status", tel_status,
					       "Version, uptime, workers, sessions, spool") != 0)
			MX_WARN("control: cannot register the telemetry commands");
		ctl.tel_registered = true;
	}
	ctl.started = true;
	return 0;
}

int control_poll(int timeout_ms)
{
	struct pollfd pfd[3 + 1024];
	struct client *who[3 + 1024];
	unsigned n = 0;
	int answered = 0;

	if (!ctl.started) {
		poll(NULL, 0, timeout_ms);
		return 0;
	}
	pfd[n] = (struct pollfd){.fd = ctl.event_fd, .events = POLLIN};
	who[n++] = NULL;
	if (ctl.unix_fd >= 0) {
		pfd[n] = (struct pollfd){.fd = ctl.unix_fd, .events = POLLIN};
		who[n++] = NULL;
	}
	if (ctl.http_fd >= 0) {
		pfd[n] = (struct pollfd){.fd = ctl.http_fd, .events = POLLIN};
		who[n++] = NULL;
	}
	for (unsigned i = 0; i < ctl.max_clients && n < sizeof(pfd) / sizeof(pfd[0]); i++) {
		struct client *c = &ctl.clients[i];
		if (c->fd < 0)
			continue;
		pfd[n] = (struct pollfd){.fd = c->fd,
					 .events = c->replying && !c->draining ? POLLOUT : POLLIN};
		who[n++] = c;
	}
	if (poll(pfd, n, timeout_ms) < 0)
		return 0;
	uint64_t now = mx_now_us();
	if (now - ctl.last_reclaim_us > 1000000) {
		ctl.last_reclaim_us = now;
		workers_reclaim(); /* configurations replaced by a reload */
	}
	for (unsigned i = 0; i < n; i++) {
		struct client *c = who[i];
		if (c == NULL) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			if (pfd[i].fd == ctl.event_fd)
				tel_serve();
			else
				accept_clients(pfd[i].fd, pfd[i].fd == ctl.unix_fd ? CLIENT_CONTROL
										   : CLIENT_HTTP);
			continue;
		}
		int rc = 0;
		if (c->draining) {
			if ((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    client_drain(c) < 0) {
				client_close(c);
				continue;
			}
		} else {
			if (!c->replying && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
				rc = client_read(c);
				if (rc > 0)
					answered++;
			}
			if (rc >= 0 && c->replying)
				rc = client_write(c);
			if (rc < 0) {
				client_close(c);
				continue;
			}
			if (c->replying && c->out_off == c->out.len) {
				shutdown(c->fd, SHUT_WR);
				c->draining = true;
				/* A peer that neither reads nor closes gets a short grace. */
				if (c->deadline_us > now + 1000000)
					c->deadline_us = now + 1000000;
			}
		}
		if (now > c->deadline_us) {
			if (!c->draining)
				ctl.ctr.timeouts++;
			client_close(c);
		}
	}
	return answered;
}

void control_stop(void)
{
	if (!ctl.started)
		return;
	pthread_mutex_lock(&ctl.lock);
	ctl.tel_closed = true;
	pthread_cond_broadcast(&ctl.cond);
	pthread_mutex_unlock(&ctl.lock);
	for (unsigned i = 0; i < ctl.max_clients; i++)
		if (ctl.clients[i].fd >= 0)
			client_close(&ctl.clients[i]);
	if (ctl.unix_fd >= 0) {
		close(ctl.unix_fd);
		unlink(ctl.unix_path);
		ctl.unix_fd = -1;
	}
	if (ctl.http_fd >= 0) {
		close(ctl.http_fd);
		ctl.http_fd = -1;
	}
	free(ctl.clients);
	ctl.clients = NULL;
	ctl.started = false;
	MX_INFO("control: stopped after %llu request(s), %llu error(s), %llu telemetry",
		(unsigned long long)(ctl.ctr.requests + ctl.ctr.http_requests),
		(unsigned long long)ctl.ctr.errors, (unsigned long long)ctl.ctr.telemetry_requests);
}
