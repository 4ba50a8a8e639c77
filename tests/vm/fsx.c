/* Guest-side file exerciser for the data-integrity VM tests, in the spirit of fsx.
 *
 *   fsx run FILE SEED OPS REOPEN_EVERY MAXLEN
 *       Random writes, reads, truncates, copy_file_range and mapped reads/writes on one
 *       file, every byte checked against an in-memory model.  Every REOPEN_EVERY
 *       operations the file is closed, the guest's caches are dropped (dirty pages stay,
 *       dentries and clean inodes go) and the file is opened and checked again: that is
 *       where a client that builds a second inode for the same file loses data.
 *       Prints "FSX:done ..." with the model's size and FNV-1a hash for the host to
 *       compare, or "FSX:fail ..." with the last operations, and exits 1.
 *   fsx repro FILE
 *       The fixed sequence behind the stale-size bug: extend, fsync, extend again by
 *       write and by mmap, close, drop caches, reopen; prints REPRO:ok or REPRO:fail.
 *   fsx statloop FILE N      N stat() calls on one cached path: "STAT:<ns per call>"
 *   fsx lookups DIR N        N files made, caches dropped, each stat()ed once (a lookup
 *                            that must reach the server): "LOOKUP:<ns per call>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HISTORY 24

static const char *path;
static int fd = -1;
static unsigned char *model, *scratch;
static long model_size, max_len;
static uint64_t rng_state;
static long page_size;
static int map_writes_ok = 1, copy_ok = 1;
static long n_map_writes, n_copies, n_copy_fallbacks, n_reopens;
static char history[HISTORY][96];
static long op_number;

static uint64_t next_random(void)
{
	/* xorshift64*: small, and the same sequence for the same seed everywhere */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static long random_below(long n)
{
	return n > 0 ? (long)(next_random() % (uint64_t)n) : 0;
}

static void note(const char *fmt, long a, long b)
{
	snprintf(history[op_number % HISTORY], sizeof history[0], "%ld: ", op_number);
	size_t used = strlen(history[op_number % HISTORY]);
	snprintf(history[op_number % HISTORY] + used, sizeof history[0] - used, fmt, a, b);
}

static void fail(const char *fmt, long a, long b)
{
	printf("FSX:fail op=%ld seed-state=%" PRIx64 " ", op_number, rng_state);
	printf(fmt, a, b);
	printf(" errno=%s\n", strerror(errno));
	for (long i = op_number - HISTORY + 1; i <= op_number; i++)
		if (i >= 0 && history[i % HISTORY][0])
			printf("FSX:history %s\n", history[i % HISTORY]);
	fflush(stdout);
	exit(1);
}

static void fill(unsigned char *buf, long len)
{
	uint64_t word = next_random();
	for (long i = 0; i < len; i++) {
		if ((i & 7) == 0)
			word = next_random();
		buf[i] = (unsigned char)(word >> ((i & 7) * 8));
	}
}

static void check_bytes(const unsigned char *got, long offset, long len, const char *how)
{
	for (long i = 0; i < len; i++)
		if (got[i] != model[offset + i]) {
			printf("FSX:mismatch %s at 0x%lx: got 0x%02x want 0x%02x\n", how, offset + i,
			       got[i], model[offset + i]);
			fail("data error in %ld bytes at 0x%lx", len, offset);
		}
}

static void drop_caches(void)
{
	int d = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (d < 0 || write(d, "3\n", 2) != 2)
		fail("drop_caches failed (%ld %ld)", d, 0);
	close(d);
}

static void open_file(int flags)
{
	fd = open(path, O_RDWR | flags, 0644);
	if (fd < 0)
		fail("open failed (%ld %ld)", flags, 0);
}

static void check_size(void)
{
	struct stat by_fd, by_path;
	if (fstat(fd, &by_fd) < 0 || stat(path, &by_path) < 0)
		fail("stat failed (%ld %ld)", 0, 0);
	if (by_fd.st_size != model_size)
		fail("size error: expected 0x%lx fstat 0x%lx", model_size, (long)by_fd.st_size);
	if (by_path.st_size != model_size)
		fail("size error: expected 0x%lx stat 0x%lx", model_size, (long)by_path.st_size);
}

static void check_all(const char *how)
{
	check_size();
	long done = 0;
	while (done < model_size) {
		ssize_t n = pread(fd, scratch, (size_t)(model_size - done), done);
		if (n <= 0)
			fail("short read at 0x%lx (got %ld)", done, (long)n);
		check_bytes(scratch, done, n, how);
		done += n;
	}
	if (pread(fd, scratch, 1, model_size) != 0)
		fail("read past the end at 0x%lx returned data (%ld)", model_size, 0);
}

static void do_write(long offset, long len)
{
	note("write 0x%lx +0x%lx", offset, len);
	fill(model + offset, len);
	if (pwrite(fd, model + offset, (size_t)len, offset) != len)
		fail("pwrite 0x%lx +0x%lx", offset, len);
	if (offset + len > model_size)
		model_size = offset + len;
}

static void do_read(long offset, long len)
{
	note("read 0x%lx +0x%lx", offset, len);
	ssize_t n = pread(fd, scratch, (size_t)len, offset);
	long want = offset >= model_size ? 0 : (offset + len > model_size ? model_size - offset : len);
	if (n != want)
		fail("pread returned %ld, want %ld", (long)n, want);
	check_bytes(scratch, offset, want, "read");
}

static void do_truncate(long size)
{
	note("truncate 0x%lx (from 0x%lx)", size, model_size);
	/* past the end the model stays zero, as a hole reads */
	if (size < model_size)
		memset(model + size, 0, (size_t)(model_size - size));
	if (ftruncate(fd, size) < 0)
		fail("ftruncate 0x%lx (%ld)", size, 0);
	model_size = size;
}

static void *map_range(long offset, long len, int prot, long *delta)
{
	long start = offset & ~(page_size - 1);
	*delta = offset - start;
	/* A read-only mapping is private: cache=none allows no shared mapping of a
	 * file opened for writing, and a private one still shows the file's pages. */
	int flags = (prot & PROT_WRITE) ? MAP_SHARED : MAP_PRIVATE;
	return mmap(NULL, (size_t)(len + *delta), prot, flags, fd, start);
}

static void do_map_read(long offset, long len)
{
	long delta;
	note("mapread 0x%lx +0x%lx", offset, len);
	unsigned char *p = map_range(offset, len, PROT_READ, &delta);
	if (p == MAP_FAILED)
		fail("mmap read 0x%lx +0x%lx", offset, len);
	check_bytes(p + delta, offset, len, "mapread");
	munmap(p, (size_t)(len + delta));
}

static void do_map_write(long offset, long len)
{
	long delta;
	if (offset + len > model_size)  /* a mapping cannot extend a file: grow it first */
		do_truncate(offset + len);
	note("mapwrite 0x%lx +0x%lx", offset, len);
	unsigned char *p = map_range(offset, len, PROT_READ | PROT_WRITE, &delta);
	if (p == MAP_FAILED) {
		if (n_map_writes == 0 && (errno == EINVAL || errno == EACCES || errno == ENODEV)) {
			map_writes_ok = 0;  /* cache=none: the client maps files read-only */
			printf("FSX:note mapped writes refused: %s\n", strerror(errno));
			return;
		}
		fail("mmap write 0x%lx +0x%lx", offset, len);
	}
	fill(model + offset, len);
	memcpy(p + delta, model + offset, (size_t)len);
	if (next_random() & 1)
		if (msync(p, (size_t)(len + delta), MS_SYNC) < 0)
			fail("msync 0x%lx +0x%lx", offset, len);
	munmap(p, (size_t)(len + delta));
	n_map_writes++;
}

static void do_copy(long src, long dst, long len)
{
	note("copy 0x%lx -> 0x%lx", src, dst);
	loff_t in = src, out = dst;
	long done = 0;
	while (copy_ok && done < len) {
		long n = syscall(SYS_copy_file_range, fd, &in, fd, &out, (size_t)(len - done), 0);
		if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) {
			copy_ok = 0;
			printf("FSX:note copy_file_range unsupported: %s\n", strerror(errno));
			break;
		}
		if (n <= 0)
			fail("copy_file_range 0x%lx -> 0x%lx", src, dst);
		done += n;
	}
	if (done < len) {  /* the same bytes by read and write */
		n_copy_fallbacks++;
		if (pread(fd, scratch, (size_t)(len - done), src + done) != len - done ||
		    pwrite(fd, scratch, (size_t)(len - done), dst + done) != len - done)
			fail("copy fallback 0x%lx -> 0x%lx", src, dst);
	}
	memmove(model + dst, model + src, (size_t)len);
	if (dst + len > model_size)
		model_size = dst + len;
	n_copies++;
}

static void reopen(void)
{
	note("reopen at size 0x%lx%.0ld", model_size, 0);
	if (close(fd) < 0)
		fail("close (%ld %ld)", 0, 0);
	drop_caches();
	open_file(0);
	check_all("after reopen");
	n_reopens++;
}

static void one_operation(void)
{
	long room = max_len, offset, len;
	switch (random_below(10)) {
	case 0: case 1: case 2:  /* writes, a third of them extending the file */
		offset = (next_random() % 3 == 0 && model_size < room) ? model_size : random_below(room);
		len = 1 + random_below(room - offset < 65536 ? room - offset : 65536);
		do_write(offset, len > room - offset ? room - offset : len);
		break;
	case 3: case 4:
		offset = random_below(model_size + 4096);
		do_read(offset, 1 + random_below(65536));
		break;
	case 5:
		do_truncate(random_below(room + 1));
		break;
	case 6:
		if (model_size) {
			offset = random_below(model_size);
			len = 1 + random_below(model_size - offset);
			do_map_read(offset, len > 65536 ? 65536 : len);
		}
		break;
	case 7: case 8:
		if (map_writes_ok) {
			offset = random_below(room - 1);
			len = 1 + random_below(room - offset < 65536 ? room - offset : 65536);
			do_map_write(offset, len);
		}
		break;
	case 9:
		if (model_size > 1) {
			long src = random_below(model_size - 1);
			len = 1 + random_below(model_size - src < 65536 ? model_size - src : 65536);
			long dst = random_below(room - len + 1);
			if (dst + len <= src || src + len <= dst)  /* overlapping copies are EINVAL */
				do_copy(src, dst, len);
		}
		break;
	}
}

static uint64_t fnv1a(const unsigned char *data, long len)
{
	uint64_t hash = 1469598103934665603ULL;
	for (long i = 0; i < len; i++)
		hash = (hash ^ data[i]) * 1099511628211ULL;
	return hash;
}

static int run(long seed, long ops, long reopen_every)
{
	rng_state = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + 1;
	model = calloc(1, (size_t)max_len);
	scratch = malloc((size_t)max_len + 65536);
	if (!model || !scratch)
		return 2;
	unlink(path);
	open_file(O_CREAT | O_EXCL);
	for (op_number = 1; op_number <= ops; op_number++) {
		one_operation();
		if (reopen_every > 0 && op_number % reopen_every == 0)
			reopen();
	}
	check_all("at the end");
	if (fsync(fd) < 0 || close(fd) < 0)
		fail("fsync/close at the end (%ld %ld)", 0, 0);
	printf("FSX:done ops=%ld size=%ld fnv=%016" PRIx64 " reopens=%ld mapwrites=%ld "
	       "copies=%ld copyfallbacks=%ld\n", ops, model_size, fnv1a(model, model_size),
	       n_reopens, n_map_writes, n_copies, n_copy_fallbacks);
	return 0;
}

/* The sequence the outside exerciser hit, without randomness. */
static int repro(void)
{
	max_len = 256 * 1024;
	model = calloc(1, (size_t)max_len);
	scratch = malloc((size_t)max_len);
	rng_state = 42;
	unlink(path);
	open_file(O_CREAT | O_EXCL);
	do_write(0, 64 * 1024);             /* reaches the server: its size and mtime move */
	if (fsync(fd) < 0)
		fail("fsync (%ld %ld)", 0, 0);
	do_write(64 * 1024, 23 * 1024 + 7); /* extends again: dirty pages under cache=loose */
	do_map_write(120 * 1024, 9000);     /* and dirty mapped pages under every cached mode */
	if (close(fd) < 0)
		fail("close (%ld %ld)", 0, 0);
	drop_caches();
	open_file(0);
	check_all("after reopen");
	close(fd);
	printf("REPRO:ok size=%ld fnv=%016" PRIx64 " mapwrites=%ld\n", model_size,
	       fnv1a(model, model_size), n_map_writes);
	return 0;
}

static long elapsed_ns(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1000000000L + (b->tv_nsec - a->tv_nsec);
}

static int stat_loop(long n)
{
	struct stat st;
	struct timespec t0, t1;
	if (stat(path, &st) < 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++)
		if (stat(path, &st) < 0)
			return 1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("STAT:%ld\n", elapsed_ns(&t0, &t1) / n);
	return 0;
}

static int lookups(long n)
{
	char name[4096];
	struct stat st;
	struct timespec t0, t1;
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return 1;
	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof name, "%s/f%ld", path, i);
		int f = open(name, O_CREAT | O_WRONLY, 0644);
		if (f < 0)
			return 1;
		close(f);
	}
	sync();
	drop_caches();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		snprintf(name, sizeof name, "%s/f%ld", path, i);
		if (stat(name, &st) < 0)
			return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("LOOKUP:%ld\n", elapsed_ns(&t0, &t1) / n);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	page_size = sysconf(_SC_PAGESIZE);
	if (argc >= 3)
		path = argv[2];
	if (argc == 7 && !strcmp(argv[1], "run")) {
		max_len = atol(argv[6]);
		return run(atol(argv[3]), atol(argv[4]), atol(argv[5]));
	}
	if (argc == 3 && !strcmp(argv[1], "repro"))
		return repro();
	if (argc == 4 && !strcmp(argv[1], "statloop"))
		return stat_loop(atol(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "lookups"))
		return lookups(atol(argv[3]));
	fprintf(stderr, "usage: fsx run FILE SEED OPS REOPEN_EVERY MAXLEN | repro FILE | "
	        "statloop FILE N | lookups DIR N\n");
	return 2;
}
