/* A static helper for the server's VM test: xattrs and fcntl locks from inside the
 * guest, one line of output per action so the test can assert on the console.
 *
 *   helper xset PATH NAME VALUE | xget PATH NAME | xlist PATH | xdel PATH NAME
 *   helper hold PATH SECONDS      write-lock the whole file, print HOLD:pid, sleep
 *   helper getlock PATH           F_GETLK for a write lock: GETLOCK:type:start:len:pid
 *   helper trylock PATH           F_SETLK: TRYLOCK:busy | TRYLOCK:granted
 *   helper waitlock PATH          F_SETLKW: WAITLOCK:granted
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

static int lockfd(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) { perror("open"); exit(2); }
    return fd;
}

static struct flock whole(short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    return fl;
}

int main(int argc, char **argv)
{
    char buf[4096];
    if (argc < 3) return 2;
    const char *op = argv[1], *path = argv[2];
    if (!strcmp(op, "xset") && argc == 5) {
        if (setxattr(path, argv[3], argv[4], strlen(argv[4]), 0)) { perror("setxattr"); return 1; }
        puts("XSET:ok");
    } else if (!strcmp(op, "xget") && argc == 4) {
        ssize_t n = getxattr(path, argv[3], buf, sizeof buf - 1);
        if (n < 0) { printf("XGET:errno=%d\n", errno); return 1; }
        buf[n] = 0;
        printf("XGET:%s\n", buf);
    } else if (!strcmp(op, "xlist")) {
        ssize_t n = listxattr(path, buf, sizeof buf);
        if (n < 0) { printf("XLIST:errno=%d\n", errno); return 1; }
        printf("XLIST:");
        for (ssize_t i = 0; i < n; i += strlen(buf + i) + 1)
            if (!strncmp(buf + i, "user.", 5)) printf("%s,", buf + i);
        puts("");
    } else if (!strcmp(op, "xdel") && argc == 4) {
        if (removexattr(path, argv[3])) { perror("removexattr"); return 1; }
        puts("XDEL:ok");
    } else if (!strcmp(op, "hold") && argc == 4) {
        int fd = lockfd(path);
        struct flock fl = whole(F_WRLCK);
        if (fcntl(fd, F_SETLKW, &fl)) { perror("hold"); return 1; }
        printf("HOLD:%d\n", (int)getpid());
        fflush(stdout);
        sleep(atoi(argv[3]));
    } else if (!strcmp(op, "getlock")) {
        int fd = lockfd(path);
        struct flock fl = whole(F_WRLCK);
        if (fcntl(fd, F_GETLK, &fl)) { perror("getlock"); return 1; }
        printf("GETLOCK:%s:%lld:%lld:%d\n", fl.l_type == F_WRLCK ? "W" : fl.l_type == F_RDLCK ? "R" : "U",
               (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
    } else if (!strcmp(op, "trylock")) {
        int fd = lockfd(path);
        struct flock fl = whole(F_WRLCK);
        puts(fcntl(fd, F_SETLK, &fl) ? "TRYLOCK:busy" : "TRYLOCK:granted");
    } else if (!strcmp(op, "waitlock")) {
        int fd = lockfd(path);
        struct flock fl = whole(F_WRLCK);
        if (fcntl(fd, F_SETLKW, &fl)) { printf("WAITLOCK:errno=%d\n", errno); return 1; }
        puts("WAITLOCK:granted");
    } else {
        return 2;
    }
    return 0;
}
