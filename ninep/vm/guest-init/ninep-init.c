/*
 * ninep-init: PID 1 of the ninep initramfs.  Mounts the real root over 9P2000.L
 * (or a block device) and switches to it.
 *
 * Kernel command line (see docs/diskless-boot.md):
 *   root=9p                     use 9P (root=/dev/XXX mounts a block device instead)
 *   ninep.src=URL               virtio-serial://NAME (default: ninep) | tcp://ADDR[:PORT]
 *                               | vsock://CID[:PORT] | virtio://TAG
 *   ninep.ip=ADDR/PREFIX        guest address for tcp (default 10.0.2.15/24)
 *   ninep.gw=ADDR               default route (default 10.0.2.2)
 *   ninep.msize=N               (default 512000)
 *   ninep.cache=MODE            none|loose|fscache|mmap (default loose)
 *   ninep.aname=PATH            attach name (default: empty, the server's default export)
 *   ninep.access=MODE           default client: the guest kernel checks permissions
 *   ninep.overlay=tmpfs         9P root read-only underneath a tmpfs upper layer
 *   ninep.timeout=SECONDS       give up connecting after this long (default 60)
 *   rootflags=OPTS ro rw init=PATH rootfstype=FS   as for the kernel
 * If /ninep.run exists in the initramfs, its text runs as `/bin/sh -c` in the new
 * root instead of init; its exit status is printed and the machine powers off.
 *
 * Style after sinit/tini: small functions that return a status, composed in main;
 * every failure says what was attempted and why it failed, then PID 1 exits, so the
 * kernel panics with our reason just above its own message.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
/* musl ships no kernel headers; this is linux/vm_sockets.h's layout. */
struct vsock_addr {
	sa_family_t svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

#define NEWROOT "/newroot"
#define LOWER "/lower"
#define OVERLAY "/overlay"
#define MODULE_LIST "/lib/modules/load.order"
#define RUN_SCRIPT "/ninep.run"
#define OPTS_MAX 1024

static struct config {
	const char *root, *src, *ip, *gw, *msize, *cache, *aname, *access;
	const char *overlay, *rootflags, *rootfstype, *init;
	int timeout_s, readonly;
} cfg = {
	.root = "", .src = "virtio-serial://ninep", .ip = "10.0.2.15/24",
	.gw = "10.0.2.2", .msize = "512000", .cache = "loose", .aname = "",
	.access = "client", .overlay = "", .rootflags = "", .rootfstype = "ext4",
	.init = "/sbin/init", .timeout_s = 60, .readonly = 0,
};

static char cmdline[4096];
static double deadline;
static int relaying; /* relay processes carry the 9P stream (virtio-serial) */
static int quiet;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof buf, "ninep-init: ");
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	if (write(2, buf, n) < 0) { /* nowhere left to complain */ }
}

#define note(...) do { if (!quiet) say(__VA_ARGS__); } while (0)

#ifdef NINEP_FUZZ
#include <setjmp.h>
static jmp_buf fuzz_refused; /* die() returns here: refusing the input is fine */
#endif

static void __attribute__((noreturn)) die(const char *fmt, ...)
{
	char buf[400];
	va_list ap;
#ifdef NINEP_FUZZ
	(void)fmt, (void)buf, (void)ap;
	longjmp(fuzz_refused, 1);
#endif
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	say("panic: %s", buf);
	sync();
	exit(1); /* PID 1 exiting makes the kernel panic, right below our reason */
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* Exponential backoff between connection attempts: 100 ms doubling to 2 s.
 * Returns 0 when ninep.timeout has run out. */
static int backoff(long *delay_ms)
{
	if (now() >= deadline)
		return 0;
	sleep_ms(*delay_ms);
	*delay_ms = *delay_ms * 2 > 2000 ? 2000 : *delay_ms * 2;
	return 1;
}

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, total = 0;
	if (fd < 0)
		return -1;
	while ((n = read(fd, buf + total, size - 1 - total)) > 0)
		total += n;
	close(fd);
	buf[total] = 0;
	return (int)total;
}

static void mount_early(void)
{
	mkdir("/proc", 0755);
	mkdir("/sys", 0755);
	mkdir("/dev", 0755);
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		die("mount /proc: %s", strerror(errno));
	if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		die("mount /sys: %s", strerror(errno));
	if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0)
		die("mount /dev: %s", strerror(errno));
	if (fcntl(2, F_GETFD) < 0) { /* no /dev/console in the cpio: open it now */
		int fd = open("/dev/console", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0), dup2(fd, 1), dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
}

/* A decimal number 0..max, or -1: atoi's silent 0 for "abc" and overflow are wrong here. */
static long parse_number(const char *text, long max)
{
	long value = 0;
	if (!*text)
		return -1;
	for (; *text; text++) {
		if (*text < '0' || *text > '9' || value > (max - (*text - '0')) / 10)
			return -1;
		value = value * 10 + (*text - '0');
	}
	return value;
}

/* Splits a kernel command line in place (double quotes group words) and takes our
 * keys into cfg.  No I/O; a bad value dies, which the fuzz build (fuzz/cmdline.c,
 * -DNINEP_FUZZ) turns into a refusal of its input. */
static void parse_cmdline_words(char *p)
{
	static const struct { const char *key; const char **value; } keys[] = {
		{ "root=", &cfg.root }, { "ninep.src=", &cfg.src }, { "ninep.ip=", &cfg.ip },
		{ "ninep.gw=", &cfg.gw }, { "ninep.msize=", &cfg.msize },
		{ "ninep.cache=", &cfg.cache }, { "ninep.aname=", &cfg.aname },
		{ "ninep.access=", &cfg.access }, { "ninep.overlay=", &cfg.overlay },
		{ "rootflags=", &cfg.rootflags }, { "rootfstype=", &cfg.rootfstype },
		{ "init=", &cfg.init },
	};
	while (*p) {
		char *word, *out;
		int quoted = 0;
		while (*p == ' ' || *p == '\n' || *p == '\t')
			p++;
		if (!*p)
			break;
		word = out = p;
		for (; *p && (quoted || (*p != ' ' && *p != '\n' && *p != '\t')); p++) {
			if (*p == '"')
				quoted = !quoted;
			else
				*out++ = *p;
		}
		if (*p)
			p++;
		*out = 0;
		if (!strcmp(word, "ro"))
			cfg.readonly = 1;
		else if (!strcmp(word, "rw"))
			cfg.readonly = 0;
		else if (!strcmp(word, "quiet"))
			quiet = 1;
		else if (!strncmp(word, "ninep.timeout=", 14) &&
			 (cfg.timeout_s = (int)parse_number(word + 14, 86400 * 365)) < 0)
			die("ninep.timeout=%s: expected seconds", word + 14);
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
			if (!strncmp(word, keys[i].key, strlen(keys[i].key)))
				*keys[i].value = word + strlen(keys[i].key);
	}
}

static void parse_cmdline(void)
{
	if (read_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		die("read /proc/cmdline: %s", strerror(errno));
	parse_cmdline_words(cmdline);
}

/* Loads the modules the builder listed, already in dependency order. */
static void load_modules(void)
{
	char list[8192], *line, *save = NULL;
	int loaded = 0;
	if (read_file(MODULE_LIST, list, sizeof list) < 0)
		return; /* a kernel with everything built in needs no list */
	for (line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("open module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			say("load module %s: %s", line, strerror(errno));
		else
			loaded++;
		close(fd);
	}
	note("loaded %d modules", loaded);
}

/* Splits "scheme://rest" into scheme (returned) and rest. */
static const char *split_url(const char *url, char *scheme, size_t size)
{
	const char *sep = strstr(url, "://");
	if (!sep || (size_t)(sep - url) >= size)
		die("ninep.src=%s: expected SCHEME://ADDRESS", url);
	memcpy(scheme, url, sep - url);
	scheme[sep - url] = 0;
	return sep + 3;
}

/* "host:port" -> host copied out, port returned (default_port when absent). */
static long split_host_port(const char *rest, char *host, size_t size, long default_port,
			    long max_port)
{
	const char *colon = strrchr(rest, ':');
	size_t len = colon ? (size_t)(colon - rest) : strlen(rest);
	long port = colon ? parse_number(colon + 1, max_port) : default_port;
	if (len >= size)
		die("address too long: %s", rest);
	if (port < 0)
		die("%s: expected a port 0..%ld after the ':'", rest, max_port);
	memcpy(host, rest, len);
	host[len] = 0;
	return port;
}

/* "A.B.C.D/PREFIX" (prefix 24 when absent) -> address and netmask. */
static void parse_ipv4_prefix(const char *text, struct in_addr *addr, struct in_addr *mask)
{
	char addr_text[64];
	char *slash;
	long prefix = 24;
	snprintf(addr_text, sizeof addr_text, "%s", text);
	if ((slash = strchr(addr_text, '/'))) {
		*slash = 0;
		prefix = parse_number(slash + 1, 32);
	}
	if (prefix < 0 || inet_pton(AF_INET, addr_text, addr) != 1)
		die("bad ninep.ip=%s: expected A.B.C.D/PREFIX, PREFIX 0..32", text);
	mask->s_addr = htonl(prefix ? 0xffffffffu << (32 - prefix) : 0);
}

static void mount_options(char *opts, const char *trans_opts)
{
	snprintf(opts, OPTS_MAX, "%s,version=9p2000.L,msize=%s,cache=%s,access=%s,posixacl%s%s%s%s",
		 trans_opts, cfg.msize, cfg.cache, cfg.access,
		 *cfg.aname ? ",aname=" : "", cfg.aname,
		 *cfg.rootflags ? "," : "", cfg.rootflags);
}

static int mount_9p(const char *source, const char *target, const char *trans_opts)
{
	char opts[OPTS_MAX];
	unsigned long flags = (cfg.readonly || *cfg.overlay) ? MS_RDONLY : 0;
	mount_options(opts, trans_opts);
	if (mount(source, target, "9p", flags, opts) < 0)
		return -errno;
	note("mounted 9p root %s on %s (%s)", cfg.src, target, opts);
	return 0;
}

/* ---- transports ---------------------------------------------------------- */

static int mount_over_fd(int fd, const char *target)
{
	char trans[64];
	snprintf(trans, sizeof trans, "trans=fd,rfdno=%d,wfdno=%d", fd, fd);
	return mount_9p("ninep", target, trans);
}

static int connect_vsock(const char *rest, const char *target)
{
	char cid_text[32];
	long port = split_host_port(rest, cid_text, sizeof cid_text, 564, 0xffffffffL);
	struct vsock_addr addr = { .svm_family = AF_VSOCK, .svm_port = port,
				   .svm_cid = (unsigned)strtoul(cid_text, NULL, 0) };
	long delay = 100;
	do {
		int fd = socket(AF_VSOCK, SOCK_STREAM, 0), err;
		if (fd < 0)
			die("socket AF_VSOCK: %s (is vmw_vsock_virtio_transport loaded?)", strerror(errno));
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
			say("connect vsock %s:%ld: %s", cid_text, port, strerror(errno));
			close(fd);
			continue;
		}
		err = mount_over_fd(fd, target);
		close(fd); /* the kernel holds its own reference once mounted */
		if (!err)
			return 0;
		say("mount 9p over vsock %s:%ld: %s", cid_text, port, strerror(-err));
	} while (backoff(&delay));
	return -ETIMEDOUT;
}

/* Copies bytes one way, from `in` to `out`, until either side closes.  The kernel's
 * 9p fd transport cannot drive a vport file itself (mount fails EINVAL), so a socket
 * goes to the kernel and two of these processes pump it to and from the port.  One
 * process per direction, with blocking I/O: a single process blocked writing one way
 * could stop reading the other way, and the host side would then wait on the guest. */
static void __attribute__((noreturn)) pump(int in, int out, const char *what, char *argv0)
{
	static char buf[65536];
	argv0[0] = '@'; /* systemd's shutdown spares processes whose argv[0] starts with '@' */
	prctl(PR_SET_NAME, "@ninep-relay");
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	for (;;) {
		ssize_t n = read(in, buf, sizeof buf), off = 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			say("relay: %s closed", what);
			_exit(0);
		}
		while (off < n) {
			ssize_t w = write(out, buf + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				_exit(1);
			off += w;
		}
	}
}

/* The child drops the kernel's end of the socketpair: it must see EOF when the kernel does. */
static void start_pump(int in, int out, int kernel_end, const char *what, char *argv0)
{
	pid_t child = fork();
	if (child < 0)
		die("fork relay: %s", strerror(errno));
	if (child == 0) {
		close(kernel_end);
		pump(in, out, what, argv0);
	}
}

static int find_vport(const char *name, char *dev, size_t size)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int found = 0;
	if (!dir)
		return 0;
	while (!found && (e = readdir(dir))) {
		char path[300], text[128];
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_file(path, text, sizeof text) > 0) {
			text[strcspn(text, "\n")] = 0;
			if (!strcmp(text, name)) {
				snprintf(dev, size, "/dev/%s", e->d_name);
				found = 1;
			}
		}
	}
	closedir(dir);
	return found;
}

static int connect_virtio_serial(const char *name, const char *target, char *argv0)
{
	char dev[300];
	int port = -1, sv[2], err, host_connected = 0;
	long delay = 100;
	/* The port opens only once, so it is opened once and kept by the relay. */
	do {
		if (port < 0 && find_vport(name, dev, sizeof dev))
			port = open(dev, O_RDWR | O_CLOEXEC);
		if (port < 0) {
			say("virtio-serial port '%s' not found yet", name);
			continue;
		}
		/* The port reports POLLHUP until the host side (the 9P server) is connected. */
		struct pollfd p = { port, POLLOUT, 0 };
		if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
			host_connected = 1;
			break;
		}
		say("virtio-serial port '%s': no 9P server connected on the host yet", name);
	} while (backoff(&delay));
	if (!host_connected)
		return -ETIMEDOUT;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	relaying = 1;
	start_pump(port, sv[1], sv[0], "virtio-serial port", argv0);
	start_pump(sv[1], port, sv[0], "kernel socket", argv0);
	close(port);
	close(sv[1]);
	do {
		err = mount_over_fd(sv[0], target);
		if (!err)
			break;
		say("mount 9p over virtio-serial %s: %s", dev, strerror(-err));
	} while (backoff(&delay));
	close(sv[0]);
	return err;
}

static int ifreq_ioctl(int sock, unsigned long request, const char *ifname,
		       const struct in_addr *addr, short flags)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (addr) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
		sin->sin_family = AF_INET;
		sin->sin_addr = *addr;
	} else {
		ifr.ifr_flags = flags;
	}
	return ioctl(sock, request, &ifr);
}

/* eth0 up with ninep.ip, lo up, default route via ninep.gw. */
static void configure_network(void)
{
	struct in_addr addr, mask, gw;
	struct rtentry route;
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	long delay = 100;
	parse_ipv4_prefix(cfg.ip, &addr, &mask);
	if (inet_pton(AF_INET, cfg.gw, &gw) != 1)
		die("bad ninep.gw=%s", cfg.gw);
	while (ifreq_ioctl(sock, SIOCSIFADDR, "eth0", &addr, 0) < 0) {
		say("configure eth0: %s", strerror(errno));
		if (!backoff(&delay))
			die("no eth0 (is virtio_net loaded and -device virtio-net-pci given?)");
	}
	if (ifreq_ioctl(sock, SIOCSIFNETMASK, "eth0", &mask, 0) < 0 ||
	    ifreq_ioctl(sock, SIOCSIFFLAGS, "eth0", NULL, IFF_UP | IFF_RUNNING) < 0 ||
	    ifreq_ioctl(sock, SIOCSIFFLAGS, "lo", NULL, IFF_UP | IFF_RUNNING | IFF_LOOPBACK) < 0)
		die("bring up eth0/lo: %s", strerror(errno));
	memset(&route, 0, sizeof route);
	((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
	((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
	((struct sockaddr_in *)&route.rt_gateway)->sin_family = AF_INET;
	((struct sockaddr_in *)&route.rt_gateway)->sin_addr = gw;
	route.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(sock, SIOCADDRT, &route) < 0 && errno != EEXIST)
		say("default route via %s: %s", cfg.gw, strerror(errno));
	close(sock);
	note("eth0 %s, gateway %s", cfg.ip, cfg.gw);
}

/* The socket is made here rather than by the kernel (trans=tcp) so it gets
 * TCP_NODELAY: a 9P request larger than one segment must not have its tail held
 * back by Nagle until the server acks the head.  The kernel drives it as trans=fd. */
static int connect_tcp(const char *rest, const char *target)
{
	char host[64];
	long port = split_host_port(rest, host, sizeof host, 564, 65535);
	int err = -ETIMEDOUT, one = 1;
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	long delay = 100;
	configure_network();
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
		die("ninep.src=%s: expected an IPv4 address", cfg.src);
	do {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die("socket: %s", strerror(errno));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
			err = -errno;
			say("connect tcp %s:%ld: %s", host, port, strerror(errno));
			close(fd);
			continue;
		}
		err = mount_over_fd(fd, target);
		close(fd); /* the kernel holds its own reference once mounted */
		if (!err)
			return 0;
		say("mount 9p over tcp %s:%ld: %s", host, port, strerror(-err));
	} while (backoff(&delay));
	return err;
}

static int connect_virtio(const char *tag, const char *target)
{
	long delay = 100;
	int err;
	do {
		err = mount_9p(tag, target, "trans=virtio");
		if (!err)
			return 0;
		say("mount 9p virtio tag '%s': %s", tag, strerror(-err));
	} while (backoff(&delay));
	return err;
}

static void mount_root_9p(const char *target, char *argv0)
{
	char scheme[32];
	const char *rest = split_url(cfg.src, scheme, sizeof scheme);
	int err;
	mkdir(target, 0755);
	if (!strcmp(scheme, "vsock"))
		err = connect_vsock(rest, target);
	else if (!strcmp(scheme, "virtio-serial"))
		err = connect_virtio_serial(rest, target, argv0);
	else if (!strcmp(scheme, "tcp"))
		err = connect_tcp(rest, target);
	else if (!strcmp(scheme, "virtio"))
		err = connect_virtio(rest, target);
	else
		die("ninep.src=%s: unknown transport '%s'", cfg.src, scheme);
	if (err)
		die("no 9P root from %s within %d s (%s)", cfg.src, cfg.timeout_s, strerror(-err));
}

/* overlayfs: the 9P root read-only below, a tmpfs for changes above. */
static void mount_overlay(void)
{
	char opts[256];
	if (strcmp(cfg.overlay, "tmpfs"))
		die("ninep.overlay=%s: only 'tmpfs' is supported", cfg.overlay);
	mkdir(OVERLAY, 0755);
	if (mount("tmpfs", OVERLAY, "tmpfs", 0, "mode=0755") < 0)
		die("mount tmpfs on " OVERLAY ": %s", strerror(errno));
	mkdir(OVERLAY "/upper", 0755);
	mkdir(OVERLAY "/work", 0755);
	mkdir(NEWROOT, 0755);
	/* index/xino/metacopy stay off: they need file handles a 9P lower lacks. */
	snprintf(opts, sizeof opts, "lowerdir=" LOWER ",upperdir=" OVERLAY "/upper,workdir="
		 OVERLAY "/work,index=off,xino=off,metacopy=off,redirect_dir=off");
	if (mount("overlay", NEWROOT, "overlay", 0, opts) < 0)
		die("mount overlay (%s): %s", opts, strerror(errno));
	note("overlay: tmpfs upper over the read-only 9P root");
}

static void mount_root_block(void)
{
	long delay = 100;
	unsigned long flags = cfg.readonly ? MS_RDONLY : 0;
	mkdir(NEWROOT, 0755);
	while (mount(cfg.root, NEWROOT, cfg.rootfstype, flags, cfg.rootflags) < 0) {
		say("mount %s (%s): %s", cfg.root, cfg.rootfstype, strerror(errno));
		if (!backoff(&delay))
			die("no root device %s", cfg.root);
	}
	note("mounted %s (%s) as root", cfg.root, cfg.rootfstype);
}

/* Frees the initramfs: deletes everything on its filesystem, not crossing mounts. */
static void delete_contents(int dirfd, dev_t rootdev)
{
	DIR *dir = fdopendir(dirfd);
	struct dirent *e;
	struct stat st;
	if (!dir)
		return;
	while ((e = readdir(dir))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != rootdev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				delete_contents(sub, rootdev);
			unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd, e->d_name, 0);
		}
	}
	closedir(dir);
}

static void move_mount_into_newroot(const char *path)
{
	char target[64];
	snprintf(target, sizeof target, NEWROOT "%s", path);
	if (mount(path, target, NULL, MS_MOVE, NULL) < 0)
		umount2(path, MNT_DETACH); /* no such directory in the new root */
}

static void switch_root(void)
{
	struct stat st;
	move_mount_into_newroot("/dev");
	move_mount_into_newroot("/proc");
	move_mount_into_newroot("/sys");
	if (chdir(NEWROOT) < 0)
		die("chdir " NEWROOT ": %s", strerror(errno));
	if (stat("/", &st) == 0)
		delete_contents(open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC), st.st_dev);
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		die("move " NEWROOT " to /: %s", strerror(errno));
	if (chroot(".") < 0 || chdir("/") < 0)
		die("chroot: %s", strerror(errno));
}

static char *read_run_script(void)
{
	static char script[16384];
	return read_file(RUN_SCRIPT, script, sizeof script) > 0 ? script : NULL;
}

/* Runs the launcher's command as PID 1's child, reports its status, powers off. */
static void __attribute__((noreturn)) run_and_power_off(const char *script)
{
	int status = 0, code;
	pid_t child = fork(), pid;
	if (child == 0) {
		setsid();
		ioctl(0, TIOCSCTTY, 0);
		setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
		setenv("HOME", "/root", 1);
		execl("/bin/sh", "sh", "-c", script, (char *)NULL);
		say("exec /bin/sh: %s", strerror(errno));
		_exit(127);
	}
	if (child < 0)
		die("fork: %s", strerror(errno));
	while ((pid = wait(&status)) != child)
		if (pid < 0 && errno != EINTR)
			break;
	code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	sync();
	say("run: exit status %d", code);
	reboot(RB_POWER_OFF);
	die("power off: %s", strerror(errno));
}

#ifndef NINEP_FUZZ
int main(int argc, char **argv)
{
	char *script;
	(void)argc;
	mount_early();
	parse_cmdline();
	deadline = now() + cfg.timeout_s;
	script = read_run_script();
	load_modules();
	if (!strcmp(cfg.root, "9p")) {
		mount_root_9p(*cfg.overlay ? LOWER : NEWROOT, argv[0]);
		if (*cfg.overlay)
			mount_overlay();
	} else if (!strncmp(cfg.root, "/dev/", 5) || !strcmp(cfg.rootfstype, "virtiofs")) {
		mount_root_block(); /* a virtiofs root is mounted by its tag, like a device */
	} else {
		die("root=%s: expected root=9p, root=/dev/DEVICE or root=TAG rootfstype=virtiofs",
		    cfg.root);
	}
	switch_root();
	if (script)
		run_and_power_off(script);
	/* systemd-shutdown's last kill phase SIGSTOPs every process, the relays too, and
	 * only then calls in_initrd() for the first time: access("/etc/initrd-release"),
	 * a lookup v9fs must ask the server (it caches no negative dentries), which no
	 * relay carries while stopped: the power-off hung there.  We are past the initrd,
	 * so say so up front; PID 1's environment goes on to systemd-shutdown. */
	if (relaying)
		setenv("SYSTEMD_IN_INITRD", "0", 1);
	argv[0] = (char *)cfg.init;
	execv(cfg.init, argv);
	die("exec %s: %s", cfg.init, strerror(errno));
}
#endif /* NINEP_FUZZ: fuzz/cmdline.c includes this file and drives the parser */
