/*
 * hostif.c - configure a kernel interface: the host side of a net_tap port.
 *
 * Control plane only, at start-up: an ioctl on an AF_INET datagram socket
 * sets the address, netmask and IFF_UP.  No traffic ever passes through
 * this socket; the data path is DPDK's.
 */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static void set_sin(struct sockaddr *sa, uint32_t addr)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(addr)};
	memcpy(sa, &sin, sizeof(sin));
}

int mx_hostif_set_addr(unsigned ifindex, uint32_t addr, uint8_t prefix_len)
{
	struct ifreq ifr;
	int rc = 0;

	memset(&ifr, 0, sizeof(ifr));
	if (if_indextoname(ifindex, ifr.ifr_name) == NULL)
		return -errno;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	set_sin(&ifr.ifr_addr, addr);
	if (ioctl(fd, SIOCSIFADDR, &ifr) < 0 && errno != EEXIST) {
		rc = -errno;
		goto out;
	}
	set_sin(&ifr.ifr_netmask, prefix_len ? ~0u << (32 - prefix_len) : 0);
	if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0) {
		rc = -errno;
		goto out;
	}
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
		rc = -errno;
		goto out;
	}
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		rc = -errno;
out:
	close(fd);
	return rc;
}
