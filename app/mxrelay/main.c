/*
 * main.c - the mxrelay daemon.
 *
 *	mxrelay --config FILE        run
 *	mxrelay --check-config FILE  validate, print every error as file:line, exit 0/1
 *
 * The main lcore reads the configuration, brings up EAL and the ports
 * (net_dataplane_start: EAL options come from [eal] args), launches one
 * worker per remaining lcore and then only does control work: signals and
 * periodic counters.  Workers run to completion (worker.c).
 *
 * Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads the configuration
 * file (control_reload; a bad file changes nothing).
 */
#include "control.h"
#include "relay.h"
#include "worker.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>

static volatile sig_atomic_t got_signal;
static volatile sig_atomic_t got_hup;

static void on_signal(int sig)
{
	got_signal = sig;
}

static void on_hup(int sig)
{
	(void)sig;
	got_hup = 1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: mxrelay --config FILE\n"
		   "       mxrelay --check-config FILE\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	bool check_only = false;
	int opt;

	while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'k':
			path = optarg;
			check_only = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (path == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	mx_alloc_init();

	static struct relay_config conf;
	struct cfg_report rep = {0};
	if (relay_config_load(path, 1, &conf, &rep) != 0) {
		fputs(rep.text, stderr);
		fprintf(stderr, "%s: %u error(s)\n", path, rep.count);
		return 1;
	}
	if (check_only) {
		printf("%s: ok\n", path);
		return 0;
	}
	if (conf.log_file[0] && mx_log_open(conf.log_file) != 0) {
		fprintf(stderr, "cannot open log file %s\n", conf.log_file);
		return 1;
	}
	mx_log_set_level(conf.log_level);

	static struct net_dataplane dp;
	char err[512];
	if (net_dataplane_start(&dp, &conf.net, argv[0], err, sizeof(err)) != 0) {
		MX_ERR("startup failed: %s", err);
		return 1;
	}
	for (unsigned i = 0; i < conf.net.n_ports; i++)
		MX_INFO("port %u: %u.%u.%u.%u/%u, %u worker(s), steering: %s", i,
			conf.net.ports[i].addr >> 24, (conf.net.ports[i].addr >> 16) & 255,
			(conf.net.ports[i].addr >> 8) & 255, conf.net.ports[i].addr & 255,
			conf.net.ports[i].prefix_len, dp.n_workers, net_port_steering(dp.ports[i]));

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	/* sigaction without SA_RESTART: a SIGHUP ends control_poll's wait at once. */
	struct sigaction hup = {.sa_handler = on_hup};
	sigemptyset(&hup.sa_mask);
	sigaction(SIGHUP, &hup, NULL);
	if (workers_start(&conf, &dp) != 0) {
		MX_ERR("startup failed: workers");
		net_dataplane_stop(&dp);
		return 1;
	}
	/* Control plane (control.c): the main loop waits in poll() for requests. */
	control_start(&conf, &dp, path);
	MX_INFO("mxrelay running (%s)", path);
	while (!got_signal) {
		control_poll(100);
		if (got_hup) {
			got_hup = 0;
			control_reload("SIGHUP");
		}
	}
	MX_INFO("signal %d: draining: new connections get 421, open sessions have %llu s",
		(int)got_signal, (unsigned long long)(conf.shutdown_timeout_us / 1000000));
	got_signal = 0;
	/* Open sessions finish their transactions; a second signal stops at once. */
	bool clean = false;
	for (uint64_t end = mx_now_us() + conf.shutdown_timeout_us; !got_signal;) {
		control_poll(0);
		uint64_t step = mx_now_us() + 100000;
		if (workers_drain(step < end ? step : end)) {
			clean = true;
			break;
		}
		if (mx_now_us() >= end)
			break;
	}
	MX_INFO("%s; stopping", clean ? "all sessions finished" : "open sessions are cut off");
	control_stop();
	workers_stop();
	net_dataplane_stop(&dp);
	MX_INFO("stopped");
	return 0;
}
