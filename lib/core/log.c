/*
 * log.c - one line per event, one write(2) per line.
 *
 * Lines look like "2026-11-23T16:10:57.123456Z mxrelay[pid]: info: text".
 * Each line is formatted into a stack buffer (truncated at 2 KiB, never
 * overflowed) and written with a single write(2), so lines from different
 * lcores never interleave.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;
static enum mx_log_level log_level = MX_LOG_INFO;
static const char *const level_names[] = {"error", "warning", "info", "debug"};

void mx_log_set_level(enum mx_log_level level)
{
	log_level = level;
}

enum mx_log_level mx_log_get_level(void)
{
	return log_level;
}

int mx_log_parse_level(const char *s, enum mx_log_level *out)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum mx_log_level)i;
			return 0;
		}
	if (strcmp(s, "err") == 0 || strcmp(s, "warn") == 0) {
		*out = s[0] == 'e' ? MX_LOG_ERR : MX_LOG_WARN;
		return 0;
	}
	return -EINVAL;
}

int mx_log_open(const char *path)
{
	if (path == NULL || strcmp(path, "-") == 0 || strcmp(path, "stderr") == 0) {
		log_fd = 2;
		return 0;
	}
	if (strcmp(path, "stdout") == 0) {
		log_fd = 1;
		return 0;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	log_fd = fd;
	return 0;
}

void mx_vlog(enum mx_log_level level, const char *fmt, va_list ap)
{
	char buf[2048];
	struct timespec ts;
	struct tm tm;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ mxrelay[%d]: %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000, (int)getpid(), level_names[level]);
	if (n < 0)
		return;
	int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(buf) - 2)
		len = sizeof(buf) - 2;
	buf[len++] = '\n';
	ssize_t w = write(log_fd, buf, len);
	(void)w;
}

void mx_log(enum mx_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mx_vlog(level, fmt, ap);
	va_end(ap);
}
