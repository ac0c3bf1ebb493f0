/*
 * mxctl - ask the running relay over its control socket.
 *
 *	mxctl [-s SOCKET] [-t SECONDS] COMMAND [ARGS...]
 *
 *	status | stats [json] | help
 *	reload                        read the configuration file again
 *	queue [DEST] | show ID | flush [DEST] | suspend DEST | resume DEST
 *	dns lookup NAME [TYPE] | dns flush [NAME]
 *
 * The words are sent as one request line; the relay's reply is printed as
 * is.  Exit status: 0 success, 1 the relay answered "error: ...", 2 no
 * answer (no relay on the socket, timeout) or bad usage.  The socket is
 * [control] socket of the relay's configuration (app/mxrelay/control.c).
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/mxrelay/control.sock"
#define REQ_MAX 1024

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mxctl [-s SOCKET] [-t SECONDS] COMMAND [ARGS...]\n"
		"       commands: status, stats [json], help, reload,\n"
		"                 queue [DEST], show ID, flush [DEST], suspend DEST, resume DEST,\n"
		"                 dns lookup NAME [TYPE], dns flush [NAME]\n"
		"       socket default: %s\n",
		DEFAULT_SOCKET);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	const char *path = DEFAULT_SOCKET;
	long timeout_s = 10;
	char req[REQ_MAX];
	size_t len = 0;
	int opt;

	while ((opt = getopt(argc, argv, "+s:t:h")) != -1) {
		switch (opt) {
		case 's':
			path = optarg;
			break;
		case 't':
			timeout_s = strtol(optarg, NULL, 10);
			if (timeout_s <= 0 || timeout_s > 3600) {
				fprintf(stderr, "mxctl: -t %s: expected 1..3600 seconds\n", optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind == argc) {
		usage(stderr);
		return 2;
	}
	for (int i = optind; i < argc; i++) {
		size_t n = strlen(argv[i]);
		if (strpbrk(argv[i], "\r\n") != NULL || len + n + 2 > sizeof(req)) {
			fprintf(stderr, "mxctl: request too long or has a line break\n");
			return 2;
		}
		if (i > optind)
			req[len++] = ' ';
		memcpy(req + len, argv[i], n);
		len += n;
	}
	req[len++] = '\n';

	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "mxctl: socket path too long: %s\n", path);
		return 2;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		fprintf(stderr, "mxctl: cannot connect to %s: %s (is mxrelay running?)\n", path,
			strerror(errno));
		return 2;
	}
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, req + off, len - off);
		if (n < 0) {
			fprintf(stderr, "mxctl: %s: %s\n", path, strerror(errno));
			return 2;
		}
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);

	/* Print the reply as it comes; remember whether it starts with "error:". */
	char buf[65536], head[7];
	size_t head_len = 0, total = 0;
	long long deadline = now_ms() + timeout_s * 1000;
	for (;;) {
		long long left = deadline - now_ms();
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (left <= 0 || poll(&p, 1, (int)left) == 0) {
			fprintf(stderr, "mxctl: %s: no answer within %ld s\n", path, timeout_s);
			return 2;
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "mxctl: %s: %s\n", path, strerror(errno));
			return 2;
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n && head_len < sizeof(head) - 1; i++)
			head[head_len++] = buf[i];
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
			return 2;
		total += (size_t)n;
	}
	close(fd);
	if (total == 0) {
		fprintf(stderr, "mxctl: %s: empty answer\n", path);
		return 2;
	}
	head[head_len] = '\0';
	return strcmp(head, "error:") == 0 ? 1 : 0;
}
