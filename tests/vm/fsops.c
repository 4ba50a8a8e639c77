/* Guest-side helper for the VM tests: the file operations busybox lacks (flock,
 * POSIX record locks, xattrs).  Prints one word per result so tests can match lines.
 *   fsops flock-hold FILE SECONDS | flock-try FILE
 *   fsops lock-hold FILE SECONDS  | lock-try FILE        (fcntl F_SETLK write locks)
 *   fsops setxattr FILE NAME VALUE | getxattr FILE NAME
 *   fsops chown-keep FILE     chown(FILE, -1, -1): prints ctime-moved or ctime-same
 *   fsops mksock FILE         bind a Unix socket there (a socket node)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

static int record_lock(int fd, int cmd)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	return fcntl(fd, cmd, &fl);
}

int main(int argc, char **argv)
{
	int fd;
	if (argc < 3)
		return 2;
	if (!strcmp(argv[1], "chown-keep")) {
		struct stat before, after;
		if (stat(argv[2], &before) < 0)
			return 1;
		usleep(20000);
		if (chown(argv[2], (uid_t)-1, (gid_t)-1) < 0) {
			printf("chown-failed:%s\n", strerror(errno));
			return 1;
		}
		if (stat(argv[2], &after) < 0)
			return 1;
		puts(after.st_ctim.tv_sec != before.st_ctim.tv_sec ||
		     after.st_ctim.tv_nsec != before.st_ctim.tv_nsec ? "ctime-moved" : "ctime-same");
		return 0;
	}
	if (!strcmp(argv[1], "mksock")) {
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		int s = socket(AF_UNIX, SOCK_STREAM, 0);
		strncpy(addr.sun_path, argv[2], sizeof(addr.sun_path) - 1);
		if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			printf("mksock-failed:%s\n", strerror(errno));
			return 1;
		}
		puts("socket");
		return 0;
	}
	if (!strcmp(argv[1], "setxattr") && argc == 5) {
		if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) < 0) {
			printf("setxattr-failed:%s\n", strerror(errno));
			return 1;
		}
		puts("set");
		return 0;
	}
	if (!strcmp(argv[1], "getxattr") && argc == 4) {
		char value[256];
		ssize_t n = getxattr(argv[2], argv[3], value, sizeof value - 1);
		if (n < 0) {
			printf("getxattr-failed:%s\n", strerror(errno));
			return 1;
		}
		value[n] = 0;
		puts(value);
		return 0;
	}
	fd = open(argv[2], O_RDWR | O_CREAT, 0644);
	if (fd < 0) {
		printf("open-failed:%s\n", strerror(errno));
		return 1;
	}
	if (!strcmp(argv[1], "flock-hold") || !strcmp(argv[1], "lock-hold")) {
		int err = argv[1][0] == 'f' ? flock(fd, LOCK_EX) : record_lock(fd, F_SETLKW);
		printf("%s\n", err < 0 ? strerror(errno) : "held");
		fflush(stdout);
		sleep(argc > 3 ? atoi(argv[3]) : 1);
		return err < 0;
	}
	if (!strcmp(argv[1], "flock-try") || !strcmp(argv[1], "lock-try")) {
		int err = argv[1][0] == 'f' ? flock(fd, LOCK_EX | LOCK_NB) : record_lock(fd, F_SETLK);
		if (err == 0)
			puts("acquired");
		else if (errno == EWOULDBLOCK || errno == EAGAIN || errno == EACCES)
			puts("busy");
		else
			printf("error:%s\n", strerror(errno));
		return 0;
	}
	return 2;
}
