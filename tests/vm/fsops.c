/* Guest-side helper for the VM tests: the file operations busybox lacks (flock,
 * POSIX record locks, xattrs).  Prints one word per result so tests can match lines.
 *   fsops flock-hold FILE SECONDS | flock-try FILE
 *   fsops lock-hold FILE SECONDS  | lock-try FILE        (fcntl F_SETLK write locks)
 *   fsops setxattr FILE NAME VALUE | getxattr FILE NAME
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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
