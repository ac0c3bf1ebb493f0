/*
 * port.c - DPDK ports: setup, flow steering, burst RX/TX, fault injection.
 *
 * Steering.  A multi-queue port with RSS gets one RX/TX queue pair per
 * worker and a symmetric Toeplitz key, so both directions of a flow hash to
 * the same worker; the redirection table is programmed and mirrored here so
 * that net_port_flow_owner() predicts the NIC exactly (same hash bits).  A
 * single-queue port (net_af_packet) is read by worker 0 alone, which
 * computes the same hash in software and hands each packet to its owner
 * over an rte_ring; net_tap wants as many RX as TX queues, so there each
 * worker reads the queue the kernel filled and re-dispatches the same way
 * (net_memif too: each RX queue pairs with the peer's TX queue of that
 * number).  ARP frames go to every worker, since each keeps its own ARP
 * cache.  Every worker has its own TX queue.
 *
 * Fault injection (off by default) drops, duplicates, reorders and corrupts
 * packets per mille, per direction, from a seeded generator, so loss tests
 * are repeatable.  This kernel has no netem; this is how loss is made.
 *
 * net_tap without a signal per packet: see tap_signal_off() below.  The
 * environment variable MX_NET_TAP_SIGNAL=keep leaves DPDK's scheme as it is.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* F_GETSIG, dladdr */
#endif
#include "stack_priv.h"
#include "core.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_byteorder.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_malloc.h>
#include <rte_tcp.h>
#include <rte_thash.h>
#include <rte_udp.h>

#define NET_RX_DESC 1024
#define NET_TX_DESC 1024

/* 0x6d5a repeated: Toeplitz with this key is symmetric in (src, dst). */
static const uint8_t symmetric_rss_key[40] = {
	0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
	0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
	0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
};

uint32_t net_port_flow_hash(const struct net_port *p, uint32_t saddr, uint32_t daddr,
			    uint16_t sport, uint16_t dport)
{
	uint32_t tuple[3] = {saddr, daddr, ((uint32_t)sport << 16) | dport};
	return rte_softrss(tuple, 3, p->rss_key);
}

unsigned net_port_flow_owner(const struct net_port *p, uint32_t saddr, uint32_t daddr,
			     uint16_t sport, uint16_t dport)
{
	if (p->n_workers <= 1)
		return 0;
	uint32_t h = net_port_flow_hash(p, saddr, daddr, sport, dport);
	return p->reta[h & p->reta_mask];
}

static int setup_reta(struct net_port *p, const struct rte_eth_dev_info *info, char *err,
		      size_t errlen)
{
	uint16_t size = p->software_rss ? NET_RETA_SIZE : info->reta_size;
	if (size == 0 || size > NET_RETA_SIZE || (size & (size - 1)) != 0) {
		snprintf(err, errlen, "port %u: unsupported RETA size %u", p->port_id, size);
		return -ENOTSUP;
	}
	p->reta_mask = size - 1;
	for (uint16_t i = 0; i < size; i++)
		p->reta[i] = i % p->n_workers;
	if (p->software_rss)
		return 0;
	struct rte_eth_rss_reta_entry64 conf[NET_RETA_SIZE / RTE_ETH_RETA_GROUP_SIZE];
	memset(conf, 0, sizeof(conf));
	for (uint16_t i = 0; i < size; i++) {
		conf[i / RTE_ETH_RETA_GROUP_SIZE].mask |= 1ull << (i % RTE_ETH_RETA_GROUP_SIZE);
		conf[i / RTE_ETH_RETA_GROUP_SIZE].reta[i % RTE_ETH_RETA_GROUP_SIZE] = p->reta[i];
	}
	int rc = rte_eth_dev_rss_reta_update(p->port_id, conf, size);
	if (rc != 0) {
		snprintf(err, errlen, "port %u: RETA update failed: %s", p->port_id,
			 rte_strerror(-rc));
		return rc;
	}
	return 0;
}

/* ---- net_tap: the Rx trigger without a signal per packet ---------------- */

#define TAP_MAX_FDS 256 /* tun fds examined: 16 queues per port at most, and keep-alive fds */

static const char *const tap_mode_names[] = {"none", "signal off", "signal kept", "no trigger"};

/* Is fn, a signal handler, code of DPDK's net_tap PMD (its .so, or our binary if linked in)? */
static bool tap_handler_is_pmd(void (*fn)(int), const char **where)
{
	Dl_info h, self;
	*where = "?";
	if (dladdr((void *)(uintptr_t)fn, &h) == 0 || h.dli_fname == NULL)
		return false;
	*where = h.dli_fname;
	if (strstr(h.dli_fname, "net_tap") != NULL)
		return true;
	/* DPDK linked statically: the handler is in the same object as this code. */
	return dladdr((void *)(uintptr_t)net_port_setup, &self) != 0 &&
	       self.dli_fbase == h.dli_fbase;
}

/*
 * DPDK 22.11's net_tap opens every queue's /dev/net/tun fd with O_ASYNC,
 * F_SETSIG to a real-time signal it picked at probe (the first free one
 * from SIGRTMIN+1) and F_SETOWN to the process, and that signal's handler
 * only moves a static counter (tap_trigger).  pmd_rx_burst() returns 0
 * without a read() when the counter has not moved since its last short
 * read.  So every frame the kernel queues on the TAP raises a signal in
 * this process, delivered to whichever thread does not block it: under
 * load that was ~0.4 of a CPU of wake-ups of the sleeping main lcore and
 * EAL's threads, on the CPU the TAP's client uses.
 *
 * Here, once the port is started, the queue fds are found without
 * touching the PMD's private structures (/dev/net/tun fds of this process
 * with O_ASYNC, owned by us, all on one real-time signal whose handler
 * lives in the PMD), O_ASYNC is cleared on them, and the handler is kept:
 * net_port_rx() calls it before each burst, so the burst reads until the
 * queue is empty (one failed readv when it is), and no signal is raised.
 * The idle worker still sleeps in epoll on the same fds (rx interrupts):
 * poll readiness does not depend on O_ASYNC.  Several workers calling the
 * handler at once may lose an increment (it is not atomic); a lost one
 * costs one burst that returns 0, and the next turn reads (the fd stays
 * readable, so an epoll sleep still wakes).
 *
 * Anything unexpected (another signal, a handler not in the PMD, a
 * secondary process: its fds belong to the primary) leaves the PMD as it
 * is, with one log line; net_stack_stats_foreach() shows the mode.
 */
static void tap_signal_off(struct net_port *p)
{
	int fds[TAP_MAX_FDS], fls[TAP_MAX_FDS];
	unsigned n = 0;
	int sig = 0;
	const char *why = NULL, *where = "?";
	const char *env = getenv("MX_NET_TAP_SIGNAL");

	p->tap_mode = NET_TAP_SIGNAL_KEPT;
	if (env != NULL && strcmp(env, "keep") == 0) {
		why = "MX_NET_TAP_SIGNAL=keep";
		goto kept;
	}
	if (rte_eal_process_type() != RTE_PROC_PRIMARY) {
		why = "secondary process";
		goto kept;
	}
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL) {
		why = "cannot list /proc/self/fd";
		goto kept;
	}
	pid_t self = getpid();
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end, path[64], target[32];
		long fd = strtol(de->d_name, &end, 10);
		if (end == de->d_name || *end != '\0' || fd < 0 || fd > INT_MAX || fd == dirfd(d))
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%ld", fd);
		ssize_t len = readlink(path, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = '\0';
		if (strcmp(target, "/dev/net/tun") != 0)
			continue;
		int fl = fcntl((int)fd, F_GETFL);
		if (fl < 0 || !(fl & O_ASYNC) || fcntl((int)fd, F_GETOWN) != self)
			continue;
		int s = fcntl((int)fd, F_GETSIG);
		if (s < SIGRTMIN || s > SIGRTMAX || (sig != 0 && s != sig)) {
			why = "tun fds with another signal";
			break;
		}
		if (n == TAP_MAX_FDS) {
			why = "too many tun fds";
			break;
		}
		sig = s;
		fds[n] = (int)fd;
		fls[n++] = fl;
	}
	closedir(d);
	if (why != NULL)
		goto kept;
	if (n == 0) {
		/* No free real-time signal at probe: the PMD reads on every burst. */
		p->tap_mode = NET_TAP_NO_TRIGGER;
		MX_INFO("port %u: net_tap has no Rx signal (it reads on every burst)", p->port_id);
		return;
	}
	struct sigaction sa;
	if (sigaction(sig, NULL, &sa) != 0 || (sa.sa_flags & SA_SIGINFO) ||
	    sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN ||
	    !tap_handler_is_pmd(sa.sa_handler, &where)) {
		why = "the signal's handler is not net_tap's";
		goto kept;
	}
	for (unsigned i = 0; i < n; i++) {
		if (fcntl(fds[i], F_SETFL, fls[i] & ~O_ASYNC) != 0) {
			while (i-- > 0)
				fcntl(fds[i], F_SETFL, fls[i]);
			why = "F_SETFL failed";
			goto kept;
		}
	}
	p->rx_trigger = sa.sa_handler;
	p->rx_trigger_sig = sig;
	p->tap_fds_quiet = (uint16_t)n;
	p->tap_mode = NET_TAP_SIGNAL_OFF;
	p->rx_trigger(sig); /* the first burst reads what queued meanwhile */
	MX_INFO("port %u: net_tap Rx signal %d off on %u tun fd(s); the stack moves the trigger "
		"(handler in %s)",
		p->port_id, sig, n, where);
	return;
kept:
	MX_WARN("port %u: net_tap Rx signal kept (%s): a signal per received packet", p->port_id,
		why);
}

const char *net_port_tap_mode(const struct net_port *p)
{
	return p->tap_mode < sizeof(tap_mode_names) / sizeof(tap_mode_names[0])
		       ? tap_mode_names[p->tap_mode]
		       : "?";
}

int net_port_setup(struct net_port **out, const struct net_port_conf *conf, unsigned n_workers,
		   struct rte_mempool *pool, char *err, size_t errlen)
{
	struct rte_eth_dev_info info;
	uint16_t pid = conf->port_id;
	int rc;

	if (n_workers == 0 || n_workers > NET_MAX_WORKERS) {
		snprintf(err, errlen, "port %u: bad worker count %u", pid, n_workers);
		return -EINVAL;
	}
	if (!rte_eth_dev_is_valid_port(pid)) {
		snprintf(err, errlen, "port %u: no such DPDK port (check [eal] args --vdev)", pid);
		return -ENODEV;
	}
	rc = rte_eth_dev_info_get(pid, &info);
	if (rc != 0) {
		snprintf(err, errlen, "port %u: info: %s", pid, rte_strerror(-rc));
		return rc;
	}
	struct net_port *p = rte_zmalloc("net_port", sizeof(*p), RTE_CACHE_LINE_SIZE);
	if (p == NULL) {
		snprintf(err, errlen, "port %u: out of memory", pid);
		return -ENOMEM;
	}
	p->port_id = pid;
	p->addr = conf->addr;
	p->netmask = conf->prefix_len ? ~0u << (32 - conf->prefix_len) : 0;
	p->gateway = conf->gateway;
	p->n_workers = n_workers;
	p->fault = conf->fault;
	p->host_ifindex = info.if_index;
	memcpy(p->rss_key, symmetric_rss_key, sizeof(p->rss_key));

	uint64_t rss_hf = info.flow_type_rss_offloads &
			  (RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_NONFRAG_IPV4_TCP | RTE_ETH_RSS_NONFRAG_IPV4_UDP);
	/* The kernel picks a TAP queue by its own flow hash, not Toeplitz. */
	bool is_tap = info.driver_name != NULL && strcmp(info.driver_name, "net_tap") == 0;
	p->software_rss = n_workers == 1 || is_tap || info.max_rx_queues < n_workers ||
			  rss_hf == 0 || info.reta_size == 0;
	/*
	 * Software steering reads one RX queue, except where the device has a
	 * queue per worker: net_tap wants as many RX as TX queues (the kernel
	 * fills them by its own flow hash), and net_memif pairs each of our RX
	 * queues with the peer's TX queue of the same number (both ends must
	 * have equal counts).  Then every worker reads its own queue and
	 * re-dispatches by our hash.
	 */
	bool is_memif = info.driver_name != NULL && strcmp(info.driver_name, "net_memif") == 0;
	uint16_t nb_rx =
		(!p->software_rss || is_tap || (is_memif && info.max_rx_queues >= n_workers))
			? (uint16_t)n_workers
			: 1;
	p->nb_rx = nb_rx;
	uint16_t nb_tx = (uint16_t)n_workers;
	if (info.max_tx_queues < nb_tx) {
		snprintf(err, errlen, "port %u: %u TX queues needed, device has %u", pid, nb_tx,
			 info.max_tx_queues);
		rc = -ENOTSUP;
		goto fail;
	}

	struct rte_eth_conf ec;
	memset(&ec, 0, sizeof(ec));
	if (!p->software_rss) {
		ec.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		ec.rx_adv_conf.rss_conf.rss_key = p->rss_key;
		ec.rx_adv_conf.rss_conf.rss_key_len = sizeof(p->rss_key);
		ec.rx_adv_conf.rss_conf.rss_hf = rss_hf;
	}
	uint64_t want_tx = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM |
			   RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
	/* net_tap's "offload" is a software checksum in the PMD: no gain. */
	if (!is_tap && (info.tx_offload_capa & want_tx) == want_tx)
		ec.txmode.offloads = p->tx_offloads = want_tx;
	ec.intr_conf.rxq = 1;
	rc = rte_eth_dev_configure(pid, nb_rx, nb_tx, &ec);
	if (rc != 0) {
		ec.intr_conf.rxq = 0;
		rc = rte_eth_dev_configure(pid, nb_rx, nb_tx, &ec);
	}
	if (rc != 0) {
		snprintf(err, errlen, "port %u: configure: %s", pid, rte_strerror(-rc));
		goto fail;
	}
	p->rx_intr = ec.intr_conf.rxq != 0;
	uint16_t nrxd = NET_RX_DESC, ntxd = NET_TX_DESC;
	rte_eth_dev_adjust_nb_rx_tx_desc(pid, &nrxd, &ntxd);
	int socket = rte_eth_dev_socket_id(pid);
	if (socket < 0)
		socket = 0;
	for (uint16_t q = 0; q < nb_rx; q++) {
		rc = rte_eth_rx_queue_setup(pid, q, nrxd, socket, NULL, pool);
		if (rc != 0) {
			snprintf(err, errlen, "port %u: RX queue %u: %s", pid, q, rte_strerror(-rc));
			goto fail;
		}
	}
	for (uint16_t q = 0; q < nb_tx; q++) {
		struct rte_eth_txconf txc = info.default_txconf;
		txc.offloads = ec.txmode.offloads;
		rc = rte_eth_tx_queue_setup(pid, q, ntxd, socket, &txc);
		if (rc != 0) {
			snprintf(err, errlen, "port %u: TX queue %u: %s", pid, q, rte_strerror(-rc));
			goto fail;
		}
	}
	rc = rte_eth_dev_start(pid);
	if (rc != 0) {
		snprintf(err, errlen, "port %u: start: %s", pid, rte_strerror(-rc));
		goto fail;
	}
	rte_eth_macaddr_get(pid, &p->mac);
	if (is_tap)
		tap_signal_off(p);
	if ((rc = setup_reta(p, &info, err, errlen)) != 0)
		goto fail_stop;
	if (p->software_rss && n_workers > 1) {
		for (unsigned w = nb_rx > 1 ? 0 : 1; w < n_workers; w++) {
			char name[RTE_RING_NAMESIZE];
			snprintf(name, sizeof(name), "net_p%u_w%u", pid, w);
			/* Several readers may hand packets to one worker. */
			unsigned flags = RING_F_SC_DEQ | (nb_rx > 1 ? 0 : RING_F_SP_ENQ);
			p->to_worker[w] = rte_ring_create(name, NET_DISPATCH_RING, socket, flags);
			if (p->to_worker[w] == NULL) {
				snprintf(err, errlen, "port %u: dispatch ring: %s", pid,
					 rte_strerror(rte_errno));
				rc = -ENOMEM;
				goto fail_stop;
			}
		}
	}
	*out = p;
	return 0;
fail_stop:
	rte_eth_dev_stop(pid);
fail:
	for (unsigned w = 0; w < NET_MAX_WORKERS; w++)
		rte_ring_free(p->to_worker[w]);
	rte_free(p);
	return rc < 0 ? rc : -EIO;
}

const char *net_port_steering(const struct net_port *p)
{
	if (p->n_workers == 1)
		return "single worker";
	return p->software_rss ? "software" : "rss";
}

unsigned net_port_host_ifindex(const struct net_port *p)
{
	return p->host_ifindex;
}

void net_port_close(struct net_port *p)
{
	if (p == NULL)
		return;
	rte_eth_dev_stop(p->port_id);
	rte_eth_dev_close(p->port_id);
	for (unsigned w = 0; w < NET_MAX_WORKERS; w++)
		rte_ring_free(p->to_worker[w]);
	rte_free(p);
}

/* ---- fault injection ---------------------------------------------------- */

static inline uint64_t fault_rand(struct net_fault *f)
{
	/* xorshift64*: fast, seeded, good enough to pick packets. */
	uint64_t x = f->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	f->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/*
 * Apply the port's faults to n packets; returns how many are in out
 * (capacity 2n + 1: duplicates and a released held packet).
 */
static unsigned fault_apply(struct net_stack_priv *sp, const struct net_fault_conf *fc,
			    struct net_fault *f, struct rte_mbuf **pkts, unsigned n,
			    struct rte_mbuf **out)
{
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++) {
		struct rte_mbuf *m = pkts[i];
		if (fault_rand(f) % 1000 < fc->drop) {
			rte_pktmbuf_free(m);
			sp->stats.fault_drops++;
			continue;
		}
		if (fc->corrupt && fault_rand(f) % 1000 < fc->corrupt &&
		    rte_pktmbuf_data_len(m) > RTE_ETHER_HDR_LEN) {
			uint16_t span = rte_pktmbuf_data_len(m) - RTE_ETHER_HDR_LEN;
			uint8_t *b = rte_pktmbuf_mtod(m, uint8_t *) + RTE_ETHER_HDR_LEN;
			b[fault_rand(f) % span] ^= (uint8_t)(1u << (fault_rand(f) % 8));
			sp->stats.fault_corrupts++;
		}
		if (fc->reorder && f->held == NULL && fault_rand(f) % 1000 < fc->reorder) {
			f->held = m;
			sp->stats.fault_reorders++;
			continue;
		}
		out[k++] = m;
		if (fc->dup && fault_rand(f) % 1000 < fc->dup) {
			struct rte_mbuf *c = rte_pktmbuf_copy(m, sp->pool, 0, UINT32_MAX);
			if (c != NULL) {
				out[k++] = c;
				sp->stats.fault_dups++;
			}
		}
		if (f->held != NULL) {
			out[k++] = f->held;
			f->held = NULL;
		}
	}
	return k;
}

static inline bool fault_on(const struct net_fault_conf *fc)
{
	return fc->drop | fc->dup | fc->reorder | fc->corrupt;
}

/* ---- receive ------------------------------------------------------------ */

/*
 * Which worker owns this frame?  IPv4 TCP/UDP by the flow hash; ARP is
 * everybody's (returns NET_MAX_WORKERS); everything else goes to worker 0.
 */
static unsigned classify(const struct net_port *p, struct rte_mbuf *m)
{
	if (rte_pktmbuf_data_len(m) < RTE_ETHER_HDR_LEN)
		return 0;
	const struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, const struct rte_ether_hdr *);
	if (eh->ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP))
		return NET_MAX_WORKERS;
	if (eh->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) ||
	    rte_pktmbuf_data_len(m) < RTE_ETHER_HDR_LEN + sizeof(struct rte_ipv4_hdr) + 4)
		return 0;
	const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eh + 1);
	unsigned ihl = (ip->version_ihl & 0xf) * 4u;
	if (ihl < sizeof(*ip) || rte_pktmbuf_data_len(m) < RTE_ETHER_HDR_LEN + ihl + 4 ||
	    (ip->next_proto_id != IPPROTO_TCP && ip->next_proto_id != IPPROTO_UDP) ||
	    (rte_be_to_cpu_16(ip->fragment_offset) & (RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK)))
		return 0;
	const uint16_t *ports = (const uint16_t *)((const uint8_t *)ip + ihl);
	return net_port_flow_owner(p, rte_be_to_cpu_32(ip->src_addr),
				   rte_be_to_cpu_32(ip->dst_addr), rte_be_to_cpu_16(ports[0]),
				   rte_be_to_cpu_16(ports[1]));
}

static void wake_worker(struct net_port *p, unsigned w)
{
	if (__atomic_load_n(&p->sleeping[w], __ATOMIC_SEQ_CST) && p->wake_fd[w] > 0) {
		uint64_t one = 1;
		ssize_t r = write(p->wake_fd[w], &one, sizeof(one));
		(void)r;
	}
}

static void dispatch(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	struct net_port *p = pc->port;
	unsigned owner = classify(p, m);
	if (owner == sp->worker) {
		net_eth_input(sp, pc, m);
		return;
	}
	if (owner == NET_MAX_WORKERS) {
		/* ARP: every worker learns; this one processes the original. */
		for (unsigned w = 0; w < p->n_workers; w++) {
			if (w == sp->worker)
				continue;
			rte_pktmbuf_refcnt_update(m, 1);
			if (rte_ring_enqueue(p->to_worker[w], m) != 0) {
				rte_pktmbuf_free(m);
				sp->stats.dispatch_full++;
			} else {
				sp->stats.dispatched++;
				wake_worker(p, w);
			}
		}
		net_eth_input(sp, pc, m);
		return;
	}
	if (rte_ring_enqueue(p->to_worker[owner], m) != 0) {
		rte_pktmbuf_free(m);
		sp->stats.dispatch_full++;
		return;
	}
	sp->stats.dispatched++;
	wake_worker(p, owner);
}

/*
 * Before a burst is processed, each TCP segment's connection-table bucket is
 * prefetched: with many connections the table and its chains are out of
 * cache, and one lookup per segment, each waiting for memory in turn, was the
 * relay's largest lib/net item.  Only a peek at plain Ethernet + IPv4 + TCP
 * headers, each bounds-checked; anything else is left to the input path.
 */
static void prefetch_tcp(struct net_stack_priv *sp, struct rte_mbuf **in, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *p = rte_pktmbuf_mtod(in[i], const uint8_t *);
		uint32_t len = rte_pktmbuf_data_len(in[i]);
		if (len < RTE_ETHER_HDR_LEN + 20 + 4 || p[12] != 0x08 || p[13] != 0x00)
			continue;
		const uint8_t *ip = p + RTE_ETHER_HDR_LEN;
		uint32_t ihl = (ip[0] & 0x0fu) * 4u;
		if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != IPPROTO_TCP ||
		    len < RTE_ETHER_HDR_LEN + ihl + 4)
			continue;
		const uint8_t *th = ip + ihl;
		uint32_t src = (uint32_t)ip[12] << 24 | (uint32_t)ip[13] << 16 |
			       (uint32_t)ip[14] << 8 | ip[15];
		uint32_t dst = (uint32_t)ip[16] << 24 | (uint32_t)ip[17] << 16 |
			       (uint32_t)ip[18] << 8 | ip[19];
		tcp_prefetch(sp->st->tcp, src, (uint16_t)(th[0] << 8 | th[1]), dst,
			     (uint16_t)(th[2] << 8 | th[3]));
	}
}

/*
 * Up to NET_RX_BURSTS bursts per poll, while they come back full.  One
 * burst a poll capped a worker at 32 packets per loop turn: a turn that
 * also started 64 connections or ran the SMTP work of a full burst took
 * long enough that a peer sending ~300k packets/s (mxgen's share of
 * fleet-plain at 85k messages/s) filled the 1024-slot memif ring, and the
 * drops cost the connections an RTO each.  A budget keeps one busy port
 * from starving the others and the timers (Linux's NAPI: 64 a poll).
 */
void net_port_rx(struct net_stack_priv *sp, struct net_port_ctx *pc)
{
	struct net_port *p = pc->port;
	struct rte_mbuf *pkts[NET_BURST], *faulted[2 * NET_BURST + 1];
	unsigned n;

	if (pc->reads_rx) {
		for (unsigned b = 0; b < NET_RX_BURSTS; b++) {
			struct rte_mbuf **in = pkts;
			/* net_tap reads only after a trigger (there is no signal) */
			if (p->rx_trigger != NULL)
				p->rx_trigger(p->rx_trigger_sig);
			unsigned got = n = rte_eth_rx_burst(p->port_id, pc->queue, pkts, NET_BURST);
			if (n == 0)
				break; /* a held (reordered) packet waits for the next one */
			if (p->fault.rx && fault_on(&p->fault)) {
				n = fault_apply(sp, &p->fault, &pc->fault_rx, pkts, n, faulted);
				in = faulted;
			}
			if (n > 1 && !(p->software_rss && p->n_workers > 1))
				prefetch_tcp(sp, in, n);
			for (unsigned i = 0; i < n; i++) {
				sp->stats.rx_pkts++;
				sp->stats.rx_bytes += rte_pktmbuf_pkt_len(in[i]);
				if (p->software_rss && p->n_workers > 1)
					dispatch(sp, pc, in[i]);
				else
					net_eth_input(sp, pc, in[i]);
			}
			if (got < NET_BURST)
				break;
		}
	}
	if (p->to_worker[sp->worker] != NULL) {
		n = rte_ring_dequeue_burst(p->to_worker[sp->worker], (void **)pkts, NET_BURST, NULL);
		sp->from_ring = true; /* ARP copies: learn, do not answer again */
		for (unsigned i = 0; i < n; i++) {
			sp->stats.rx_pkts++;
			sp->stats.rx_bytes += rte_pktmbuf_pkt_len(pkts[i]);
			net_eth_input(sp, pc, pkts[i]);
		}
		sp->from_ring = false;
	}
}

/* ---- transmit ----------------------------------------------------------- */

/*
 * Send what the turn produced in one tx_burst (two if more than 64).  A TX
 * queue that is full (a net_memif peer that is napping or descheduled, a
 * NIC ring that is behind) keeps the rest, in order, for the next flush,
 * up to NET_TX_HOLD packets (counted in tx_held): dropping them would cost
 * TCP a retransmission and a round of recovery for a pause of a few
 * microseconds.  Beyond that bound the newest are dropped (tx_drops), and
 * a queue that has taken nothing for NET_TX_HOLD_US (a link down, a memif
 * peer gone) has its held packets dropped too, so the worker, which does
 * not sleep while it holds packets, goes back to idling; TCP retransmits.
 * Fault injection sees every packet once, when it is first flushed.
 */
void net_port_flush(struct net_stack_priv *sp, struct net_port_ctx *pc)
{
	struct net_port *p = pc->port;
	struct rte_mbuf *faulted[NET_TX_HOLD + 2 * NET_BURST + 1];
	struct rte_mbuf **out = pc->tx;
	unsigned n = pc->tx_count;

	if (n == 0)
		return;
	if (pc->tx_held && sp->now_us - pc->tx_stuck_since_us > NET_TX_HOLD_US) {
		sp->stats.tx_drops += pc->tx_held;
		rte_pktmbuf_free_bulk(pc->tx, pc->tx_held);
		n -= pc->tx_held;
		memmove(pc->tx, pc->tx + pc->tx_held, n * sizeof(*pc->tx));
		pc->tx_count = (uint16_t)n;
		pc->tx_held = 0;
		if (n == 0)
			return;
	}
	if (p->fault.tx && fault_on(&p->fault) && n > pc->tx_held) {
		memcpy(faulted, pc->tx, pc->tx_held * sizeof(*faulted));
		n = pc->tx_held + fault_apply(sp, &p->fault, &pc->fault_tx, pc->tx + pc->tx_held,
					      n - pc->tx_held, faulted + pc->tx_held);
		out = faulted;
	}
	unsigned sent = 0;
	while (sent < n) {
		uint16_t k = rte_eth_tx_burst(p->port_id, pc->queue, out + sent,
					      (uint16_t)RTE_MIN(n - sent, 64u));
		if (k == 0)
			break;
		sent += k;
	}
	sp->stats.tx_pkts += sent;
	unsigned keep = RTE_MIN(n - sent, (unsigned)NET_TX_HOLD);
	if (sent + keep < n) {
		sp->stats.tx_drops += n - sent - keep;
		rte_pktmbuf_free_bulk(out + sent + keep, n - sent - keep);
	}
	if (keep > 0 && (sent > 0 || pc->tx_held == 0))
		pc->tx_stuck_since_us = sp->now_us;
	/* Packets at out[tx_held..] are held for the first time. */
	if (sent + keep > pc->tx_held)
		sp->stats.tx_held += sent + keep - RTE_MAX(sent, (unsigned)pc->tx_held);
	memmove(pc->tx, out + sent, keep * sizeof(*out));
	pc->tx_count = pc->tx_held = (uint16_t)keep;
}

void net_port_tx(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	sp->stats.tx_bytes += rte_pktmbuf_pkt_len(m);
	pc->tx[pc->tx_count++] = m;
	if (pc->tx_count - pc->tx_held == NET_BURST)
		net_port_flush(sp, pc);
}

void net_port_drop_held(struct net_stack_priv *sp, struct net_port_ctx *pc)
{
	if (pc->tx_count == 0)
		return;
	sp->stats.tx_drops += pc->tx_count;
	rte_pktmbuf_free_bulk(pc->tx, pc->tx_count);
	pc->tx_count = pc->tx_held = 0;
}
