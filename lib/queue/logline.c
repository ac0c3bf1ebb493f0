/*
 * logline.c - the Postfix-style delivery log line, one per delivery attempt
 * per recipient:
 *
 *   ID: to=<rcpt>, relay=host[addr]:port, delay=1.2, delays=a/b/c/d,
 *       dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X)
 *
 * Operators grep and parse these lines with the tools they use for Postfix
 * (pflogsumm and the like), so the format is exact and tested.
 */
#include <stdio.h>
#include <string.h>

#include "queue.h"
#include "queue_internal.h"

/*
 * Postfix prints delays with two significant digits below 10 s and whole
 * seconds above, and 0 for anything under 10 ms.
 */
static void fmt_delay(char *buf, size_t cap, double v)
{
	if (!(v >= 0.01)) /* also NaN and negatives */
		snprintf(buf, cap, "0");
	else if (v >= 10)
		snprintf(buf, cap, "%.0f", v);
	else if (v >= 1)
		snprintf(buf, cap, "%.1f", v);
	else
		snprintf(buf, cap, "%.2g", v);
}

int queue_log_line(char *buf, size_t cap, const struct queue_log_info *li)
{
	char relay[400], d[5][32], to[300], orig[320], reply[QUEUE_REPLY_MAX];

	qi_sanitize(to, sizeof(to), li->rcpt ? li->rcpt : "");
	orig[0] = 0;
	if (li->orcpt && li->orcpt[0]) {
		const char *o = strchr(li->orcpt, ';');
		o = o ? o + 1 : li->orcpt;
		if (strcasecmp(o, to) != 0) {
			char tmp[300];
			qi_sanitize(tmp, sizeof(tmp), o);
			snprintf(orig, sizeof(orig), ", orig_to=<%s>", tmp);
		}
	}
	if (li->relay_host && li->relay_host[0]) {
		char host[260];
		qi_sanitize(host, sizeof(host), li->relay_host);
		snprintf(relay, sizeof(relay), "%s[%u.%u.%u.%u]:%u", host, li->relay_addr >> 24,
			 (li->relay_addr >> 16) & 255, (li->relay_addr >> 8) & 255,
			 li->relay_addr & 255, li->relay_port);
	} else {
		snprintf(relay, sizeof(relay), "none");
	}
	fmt_delay(d[0], sizeof(d[0]), li->delay);
	for (int i = 0; i < 4; i++)
		fmt_delay(d[i + 1], sizeof(d[i + 1]), li->delays[i]);
	qi_sanitize(reply, sizeof(reply), li->reply ? li->reply : "");
	return snprintf(buf, cap,
			"%s: to=<%s>%s, relay=%s, delay=%s, delays=%s/%s/%s/%s, dsn=%s, "
			"status=%s%s%s%s",
			li->id ? li->id : "NOQUEUE", to, orig, relay, d[0], d[1], d[2], d[3], d[4],
			li->dsn && li->dsn[0] ? li->dsn : "4.0.0", li->status ? li->status : "?",
			reply[0] ? " (" : "", reply, reply[0] ? ")" : "");
}
