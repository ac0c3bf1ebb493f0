/*
 * mxpasswd - add or replace a user in an AUTH credentials file.
 *
 *	mxpasswd FILE USER            (the password is read from stdin)
 *
 * Lines are "user:$pbkdf2-sha256$ITERATIONS$SALT$HASH" (lib/smtp auth.c);
 * the file is rewritten through a temporary file and rename(2), mode 0600.
 * The relay reads it at start ([smtp] users = FILE).
 */
#include "smtp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ITERATIONS 100000

int main(int argc, char **argv)
{
	char pass[1024], line[2048], tmp[4096];
	if (argc != 3 || strchr(argv[2], ':') != NULL || argv[2][0] == '\0') {
		fprintf(stderr, "usage: mxpasswd FILE USER   (password on stdin; USER without ':')\n");
		return 2;
	}
	if (fgets(pass, sizeof(pass), stdin) == NULL) {
		fprintf(stderr, "mxpasswd: no password on stdin\n");
		return 2;
	}
	pass[strcspn(pass, "\r\n")] = '\0';
	if (pass[0] == '\0') {
		fprintf(stderr, "mxpasswd: empty password\n");
		return 2;
	}
	int n = smtp_cred_make_line(line, sizeof(line), argv[2], pass, ITERATIONS);
	memset(pass, 0, sizeof(pass));
	if (n < 0) {
		fprintf(stderr, "mxpasswd: %s\n", strerror(-n));
		return 1;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", argv[1], (int)getpid());
	FILE *out = fopen(tmp, "w");
	if (out == NULL) {
		fprintf(stderr, "mxpasswd: %s: %s\n", tmp, strerror(errno));
		return 1;
	}
	fchmod(fileno(out), 0600);
	FILE *in = fopen(argv[1], "r");
	size_t ulen = strlen(argv[2]);
	if (in != NULL) {
		char old[4096];
		while (fgets(old, sizeof(old), in) != NULL)
			if (!(strncmp(old, argv[2], ulen) == 0 && old[ulen] == ':'))
				fputs(old, out);
		fclose(in);
	}
	fprintf(out, "%s\n", line);
	if (fclose(out) != 0 || rename(tmp, argv[1]) != 0) {
		fprintf(stderr, "mxpasswd: %s: %s\n", argv[1], strerror(errno));
		unlink(tmp);
		return 1;
	}
	return 0;
}
