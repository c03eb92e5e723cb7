/*
 * diosix-workloads: the Linux workload benchmarks of `cargo xtask bench`.
 *
 * The Root VM's /etc/init.d/rcS runs this (as /usr/bin/diosix-workloads) when the
 * kernel command line has `diosix.bench=workloads`, then powers off. xtask boots the
 * same kernel, initramfs and command line as the Root VM under Diosix and on QEMU's
 * OpenSBI, under `-icount shift=0` (one guest nanosecond is one instruction), and
 * compares the figures (xtask/src/bench.rs, `linux_workload_bench`).
 *
 * Each workload is one loop, after a short untimed warm-up, timed with
 * clock_gettime(CLOCK_MONOTONIC) (the vDSO: a read of the `time` CSR) around the whole
 * loop and around each batch of a few iterations within it. It prints one line per
 * workload:
 *
 *     diosix-workload <name> <iterations> <elapsed_ns> <batch_iterations> <median_batch_ns>
 *
 * <elapsed_ns> is the whole loop, everything included; the median batch leaves out
 * the batches something else landed in (a tick, the other hart's work, which under
 * icount advances the clock too), so it moves less when unrelated changes shift when
 * those happen. For page_fault an iteration is a page: every round of mmap, touch,
 * munmap faults FAULT_PAGES of them. `diosix-workloads done` ends the output; nothing is
 * printed while a loop runs.
 *
 * `diosix-workloads devices` (rcS runs it for `diosix.bench=devices`, with a fresh
 * disk attached as /dev/vda) measures the virtio-blk disk instead, read-only, through
 * the same kind of lines (xtask/src/bench.rs, `linux_device_bench`):
 *
 *     diosix-workload seq_read_1MiB 64 <elapsed_ns> 1 <median_1MiB_ns>
 *     diosix-workload rand_read_4KiB <n> <elapsed_ns> <batch> <median_batch_ns>
 *     diosix-workload dd_64MiB 1 <elapsed_ns> 1 <elapsed_ns>
 *
 * the first a 64 MiB sequential read in 1 MiB O_DIRECT reads, the second 4 KiB
 * O_DIRECT reads at pseudo-random offsets one at a time (each one request to the
 * device: one notify and one completion interrupt), the third busybox
 * `dd if=/dev/vda of=/dev/null bs=1M count=64`, whose own output follows as
 * `diosix-dd <line>` lines. Each is followed by the same line for `<name>_cpu`, with
 * the time the benchmark cost its hart instead of the time it took (see `soak`), and
 * by `diosix-device <name> <requests> <sectors> <interrupts>`: what the disk
 * completed in it (/sys/block/vda/stat) and the interrupts its virtio transport took
 * (/proc/interrupts, every CPU).
 *
 * `diosix-workloads perf N` is a small `perf stat`: it counts its own retired
 * instructions and CPU cycles (perf_event_open, hardware events, kernel included:
 * guests without Sscofpmf cannot exclude modes) around a loop of exactly 2*N
 * instructions and prints
 *
 *     diosix-perf instructions <count> cycles <count> loop <2*N>
 *
 * (the `linux-perf-smp1` test checks the count against the loop, alone and with
 * another VM computing on the same host hart).
 *
 * `diosix-workloads tcp ADDRESS PORT MIB` sends MIB MiB of zeros over one TCP
 * connection to ADDRESS:PORT in 64 KiB writes, half-closes it and waits for the peer
 * to close (so everything arrived), timed from the connect to that close:
 *
 *     diosix-workload tcp_send_<MIB>MiB 1 <elapsed_ns> 1 <elapsed_ns>
 *
 * (`cargo xtask bench`: the Root VM to the host through QEMU's user networking, and a
 * child to its parent over dsx's virtio-net; `linux_net_bench`).
 *
 * Built static (`riscv64-linux-gnu-gcc -static -O2`) by xtask/src/rootvm/workloads.rs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * Iteration counts: the whole set takes about half a second of guest time (on OpenSBI
 * at 2 harts: fork_exec_wait ~560 us, syscall_getppid ~250 ns, page_fault ~3.5 us a
 * page, usleep_1000 ~1.05 ms, cpu_arith 6 ns).
 */
#define SPAWN_ITERS 300      /* fork + exec /bin/true + waitpid */
#define SYSCALL_ITERS 200000 /* getppid through syscall(2) */
#define SYSCALL_BATCH 1000
#define FAULT_ITERS 300      /* rounds of mmap, touch every page, munmap */
#define FAULT_PAGES 64       /* pages per mapping (256 KiB with 4 KiB pages) */
#define SLEEP_ITERS 100      /* usleep(1000) */
#define CPU_ITERS 10000000   /* arithmetic only (about six instructions an iteration) */
#define CPU_BATCH 100000
#define MAX_BATCHES 300

static uint64_t now_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("diosix-workloads: clock_gettime");
		exit(1);
	}
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "diosix-workloads: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Process creation: fork, exec a static busybox applet, wait for it. */
static void spawn_loop(long n)
{
	static char *const argv[] = {"true", NULL};
	static char *const envp[] = {NULL};

	for (long i = 0; i < n; i++) {
		int status;
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			execve("/bin/true", argv, envp);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) != pid)
			die("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "diosix-workloads: /bin/true failed (status %#x)\n", status);
			exit(1);
		}
	}
}

/* A system call that does next to nothing, not cached by libc. */
static void syscall_loop(long n)
{
	for (long i = 0; i < n; i++)
		(void)syscall(SYS_getppid);
}

/* Page faults: fresh anonymous memory each round, every page written once. */
static void fault_loop(long n)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)page * FAULT_PAGES;

	for (long i = 0; i < n; i++) {
		volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == (volatile char *)MAP_FAILED)
			die("mmap");
		for (size_t off = 0; off < len; off += (size_t)page)
			p[off] = (char)off;
		if (munmap((void *)p, len) != 0)
			die("munmap");
	}
}

static void sleep_loop(long n)
{
	for (long i = 0; i < n; i++)
		usleep(1000);
}

/* Arithmetic only: no memory traffic beyond registers, no system calls. */
static uint64_t cpu_sink;

static void cpu_loop(long n)
{
	uint64_t x = 0x9e3779b97f4a7c15u;

	for (long i = 0; i < n; i++) {
		x = x * 6364136223846793005u + 1442695040888963407u;
		x ^= x >> 29;
	}
	cpu_sink = x;
}

struct workload {
	const char *name;
	void (*run)(long);
	long iters;
	/* Iterations per timed batch; iters is a multiple of it. */
	long batch;
	long warmup;
	/* What an iteration counts as in the report: page_fault reports pages. */
	long per_iter;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Every workload, one after the other, each reported as soon as it is done. */
static void run_all(void)
{
	static const struct workload w[] = {
		{"fork_exec_wait", spawn_loop, SPAWN_ITERS, 1, 2, 1},
		{"syscall_getppid", syscall_loop, SYSCALL_ITERS, SYSCALL_BATCH, 100, 1},
		{"page_fault", fault_loop, FAULT_ITERS, 1, 2, FAULT_PAGES},
		{"usleep_1000", sleep_loop, SLEEP_ITERS, 1, 2, 1},
		{"cpu_arith", cpu_loop, CPU_ITERS, CPU_BATCH, 1000, 1},
	};
	static uint64_t batch_ns[MAX_BATCHES];

	for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
		long batches = w[i].iters / w[i].batch;
		uint64_t t0, t1, b0;

		if (batches > MAX_BATCHES || batches * w[i].batch != w[i].iters) {
			fprintf(stderr, "diosix-workloads: %s: bad batch size\n", w[i].name);
			exit(1);
		}
		w[i].run(w[i].warmup);
		t0 = b0 = now_ns();
		for (long b = 0; b < batches; b++) {
			uint64_t b1;

			w[i].run(w[i].batch);
			b1 = now_ns();
			batch_ns[b] = b1 - b0;
			b0 = b1;
		}
		t1 = b0;
		qsort(batch_ns, (size_t)batches, sizeof(batch_ns[0]), cmp_u64);
		printf("diosix-workload %s %ld %llu %ld %llu\n", w[i].name,
		       w[i].iters * w[i].per_iter, (unsigned long long)(t1 - t0),
		       w[i].batch * w[i].per_iter,
		       (unsigned long long)batch_ns[batches / 2]);
		fflush(stdout);
	}
}

/*
 * The device benchmarks: /dev/vda, read only (its contents do not matter), always with
 * O_DIRECT so that every read goes to the device, never to the page cache.
 */
#define DISK "/dev/vda"
#define SEQ_CHUNK (1u << 20) /* bytes per sequential read */
#define SEQ_CHUNKS 64        /* 64 MiB in all */
#define RAND_SIZE 4096u      /* bytes per random read */
#define RAND_ITERS 2000
#define RAND_BATCH 10
#define RAND_WARMUP 20
#define RAND_SPAN (64u << 20) /* random offsets within the first 64 MiB */

/* What the disk has done so far: requests and sectors read, and its interrupts. */
struct disk_counts {
	unsigned long long reads, sectors, irqs;
};

/* The name of vda's virtio device (`virtio0`), as /proc/interrupts shows it. */
static char virtio_name[64];

static void find_virtio_name(void)
{
	char link[256];
	ssize_t n = readlink("/sys/block/vda/device", link, sizeof(link) - 1);

	if (n < 0)
		die("readlink /sys/block/vda/device");
	link[n] = '\0';
	snprintf(virtio_name, sizeof(virtio_name), "%s", basename(link));
}

static struct disk_counts disk_counts(void)
{
	struct disk_counts c = {0, 0, 0};
	unsigned long long merges;
	char line[512];
	FILE *f = fopen("/sys/block/vda/stat", "r");

	if (!f)
		die("/sys/block/vda/stat");
	if (fscanf(f, "%llu %llu %llu", &c.reads, &merges, &c.sectors) != 3) {
		fprintf(stderr, "diosix-workloads: cannot parse /sys/block/vda/stat\n");
		exit(1);
	}
	fclose(f);
	f = fopen("/proc/interrupts", "r");
	if (!f)
		die("/proc/interrupts");
	while (fgets(line, sizeof(line), f)) {
		size_t len = strcspn(line, "\n"), name_len = strlen(virtio_name);
		char *p;

		line[len] = '\0';
		/* `  9:  12  3  RISC-V INTC? ... virtio0`: the name ends the line. */
		if (len < name_len || strcmp(line + len - name_len, virtio_name) != 0 ||
		    (len > name_len && line[len - name_len - 1] != ' '))
			continue;
		p = strchr(line, ':');
		if (!p)
			continue;
		for (p++;;) {
			char *end;
			unsigned long long v = strtoull(p, &end, 10);

			if (end == p)
				break;
			c.irqs += v;
			p = end;
		}
	}
	fclose(f);
	return c;
}

static void report_counts(const char *name, struct disk_counts a, struct disk_counts b)
{
	printf("diosix-device %s %llu %llu %llu\n", name, b.reads - a.reads,
	       b.sectors - a.sectors, b.irqs - a.irqs);
	fflush(stdout);
}

static void read_at(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread(fd, buf, len, off);

	if (n < 0)
		die("pread " DISK);
	if ((size_t)n != len) {
		fprintf(stderr, "diosix-workloads: short read of " DISK " (%zd of %zu bytes)\n",
			n, len);
		exit(1);
	}
}

/*
 * The soaker: a SCHED_IDLE thread on the benchmark's hart that spins, counting, whenever
 * nothing else wants the hart, so the hart never idles while a request is in flight.
 * Under icount, an idle machine's clock jumps to the next timer deadline, and whether
 * the guest idles before QEMU's I/O thread has finished a request depends on the host's
 * wall clock, so elapsed times per request swing from run to run. The soaker's count,
 * at its rate when alone on the hart (measured first, ticks included), says how much of
 * the elapsed time it had; the rest is what the benchmark cost the hart, interrupts
 * included (its own CPU time would not do: Linux charges an interrupt, and the
 * hypervisor's work in it, to whatever task it interrupted, which is the soaker).
 */
static volatile int soak_stop, soak_started;
static volatile uint64_t soak_count;
static pthread_t soak_thread;
static double soak_per_ns;

static void *soak(void *arg)
{
	struct sched_param sp = {0};

	(void)arg;
	if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0) {
		fprintf(stderr, "diosix-workloads: SCHED_IDLE refused\n");
		exit(1);
	}
	soak_started = 1;
	while (!soak_stop)
		soak_count = soak_count + 1;
	return NULL;
}

static void soak_start(void)
{
	soak_stop = 0;
	soak_started = 0;
	if (pthread_create(&soak_thread, NULL, soak, NULL) != 0) {
		fprintf(stderr, "diosix-workloads: cannot start the soaker\n");
		exit(1);
	}
	while (!soak_started)
		sched_yield();
}

static void soak_end(void)
{
	soak_stop = 1;
	pthread_join(soak_thread, NULL);
}

/* The soaker's rate alone on the hart: this thread sleeps 50 ms while it counts. */
static void soak_calibrate(void)
{
	uint64_t t0, t1, c0, c1;

	soak_start();
	t0 = now_ns();
	c0 = soak_count;
	usleep(50000);
	t1 = now_ns();
	c1 = soak_count;
	soak_end();
	soak_per_ns = (double)(c1 - c0) / (double)(t1 - t0);
	printf("diosix-soak %llu %llu\n", (unsigned long long)(c1 - c0),
	       (unsigned long long)(t1 - t0));
	if (soak_per_ns <= 0) {
		fprintf(stderr, "diosix-workloads: the soaker did not run\n");
		exit(1);
	}
}

/* Of `elapsed` ns in which the soaker counted `counted`, what it did not have. */
static uint64_t busy_of(uint64_t elapsed, uint64_t counted)
{
	double soaked = (double)counted / soak_per_ns;

	return soaked >= (double)elapsed ? 0 : elapsed - (uint64_t)soaked;
}

/* One benchmark's line, and its `_cpu` line (the time the soaker did not get). */
static void print_figures(const char *name, long iters, uint64_t elapsed, uint64_t busy,
			  long batch, uint64_t *batch_ns, uint64_t *busy_ns, long batches)
{
	qsort(batch_ns, (size_t)batches, sizeof(batch_ns[0]), cmp_u64);
	qsort(busy_ns, (size_t)batches, sizeof(busy_ns[0]), cmp_u64);
	printf("diosix-workload %s %ld %llu %ld %llu\n", name, iters,
	       (unsigned long long)elapsed, batch, (unsigned long long)batch_ns[batches / 2]);
	printf("diosix-workload %s_cpu %ld %llu %ld %llu\n", name, iters,
	       (unsigned long long)busy, batch, (unsigned long long)busy_ns[batches / 2]);
	fflush(stdout);
}

/*
 * Runs op(fd, buf, i) for i in [-warmup, iters), timing batches of `batch` from 0 on,
 * with the soaker running; prints the figures and the disk's counts.
 */
static void measure(const char *name, void (*op)(int, void *, long), int fd, void *buf,
		    long iters, long batch, long warmup)
{
	static uint64_t batch_ns[MAX_BATCHES], busy_ns[MAX_BATCHES];
	long batches = iters / batch;
	struct disk_counts a, b;
	uint64_t t0 = 0, b0 = 0, s0 = 0, sb0 = 0;

	if (batches > MAX_BATCHES || batches * batch != iters) {
		fprintf(stderr, "diosix-workloads: %s: bad batch size\n", name);
		exit(1);
	}
	soak_start();
	for (long i = -warmup; i < iters; i++) {
		if (i == 0) {
			a = disk_counts();
			t0 = b0 = now_ns();
			s0 = sb0 = soak_count;
		}
		op(fd, buf, i);
		if (i >= 0 && (i + 1) % batch == 0) {
			uint64_t b1 = now_ns(), sb1 = soak_count;

			batch_ns[i / batch] = b1 - b0;
			busy_ns[i / batch] = busy_of(b1 - b0, sb1 - sb0);
			b0 = b1;
			sb0 = sb1;
		}
	}
	b = disk_counts();
	print_figures(name, iters, b0 - t0, busy_of(b0 - t0, sb0 - s0), batch, batch_ns, busy_ns,
		      batches);
	report_counts(name, a, b);
	soak_end();
}

/* Sequential: 1 MiB at i MiB; the warm-up reads past the 64 MiB measured. */
static void seq_op(int fd, void *buf, long i)
{
	long chunk = i < 0 ? SEQ_CHUNKS - i : i;

	read_at(fd, buf, SEQ_CHUNK, (off_t)chunk * SEQ_CHUNK);
}

/*
 * Random: 4 KiB at a time, waiting for each, at 4 KiB-aligned offsets from a fixed
 * sequence (the same in both runs).
 */
static uint64_t rand_state = 0x2545f4914f6cdd1du;

static void rand_op(int fd, void *buf, long i)
{
	(void)i;
	rand_state = rand_state * 6364136223846793005u + 1442695040888963407u;
	read_at(fd, buf, RAND_SIZE,
		(off_t)((rand_state >> 33) % (RAND_SPAN / RAND_SIZE)) * RAND_SIZE);
}

/* busybox dd, through the page cache as anyone would run it; its output echoed. */
static void dd_op(int fd, void *buf, long i)
{
	char line[256];
	FILE *p;

	(void)fd;
	(void)buf;
	(void)i;
	p = popen("dd if=" DISK " of=/dev/null bs=1M count=64 2>&1", "r");
	if (!p)
		die("popen dd");
	while (fgets(line, sizeof(line), p))
		printf("diosix-dd %s", line);
	if (pclose(p) != 0) {
		fprintf(stderr, "diosix-workloads: dd failed\n");
		exit(1);
	}
}

static void run_devices(void)
{
	void *buf;
	int fd;

	find_virtio_name();
	soak_calibrate();
	if (posix_memalign(&buf, 4096, SEQ_CHUNK) != 0) {
		fprintf(stderr, "diosix-workloads: out of memory\n");
		exit(1);
	}
	memset(buf, 0, SEQ_CHUNK);
	fd = open(DISK, O_RDONLY | O_DIRECT);
	if (fd < 0)
		die("open " DISK);
	measure("seq_read_1MiB", seq_op, fd, buf, SEQ_CHUNKS, 1, 1);
	measure("rand_read_4KiB", rand_op, fd, buf, RAND_ITERS, RAND_BATCH, RAND_WARMUP);
	close(fd);
	free(buf);
	/* One dd of 64 MiB: an iteration of it is 1 MiB. */
	measure("dd_64MiB", dd_op, -1, NULL, 1, 1, 0);
}

/*
 * The workloads run on hart 0 only, in a process that has never run anywhere else.
 * Linux on RISC-V remembers every hart an address space has run on (mm_cpumask) and
 * sends each later TLB flush of it (munmap, the copy-on-write set-up of fork) to all of
 * them as a remote SBI fence. A process that the scheduler happened to move would pay
 * that on every flush, and under icount QEMU runs the harts in turn, so the caller
 * spins until the other hart gets its turn: on OpenSBI fork_exec_wait and page_fault
 * came out about 3.4 times as long. Whether it happens depends on where the shell's
 * child first ran and on whether the scheduler moved it, so the affinity is set first
 * and the workloads run in a child forked after it, whose new address space has only
 * ever been on hart 0 (as have the processes it forks).
 */
/* One hardware counter of this task (any CPU), opened disabled. */
static int perf_open(uint64_t config)
{
	struct perf_event_attr attr;
	long fd;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_HARDWARE;
	attr.config = config;
	attr.disabled = 1;
	fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
	if (fd < 0)
		die("perf_event_open");
	return (int)fd;
}

static uint64_t perf_read(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		die("read counter");
	return v;
}

/* `perf N`: counts a loop of exactly 2*N instructions (an add and a branch each). */
static int run_perf(long n)
{
	int ins = perf_open(PERF_COUNT_HW_INSTRUCTIONS);
	int cyc = perf_open(PERF_COUNT_HW_CPU_CYCLES);
	long left = n;

	ioctl(ins, PERF_EVENT_IOC_RESET, 0);
	ioctl(cyc, PERF_EVENT_IOC_RESET, 0);
	ioctl(cyc, PERF_EVENT_IOC_ENABLE, 0);
	ioctl(ins, PERF_EVENT_IOC_ENABLE, 0);
	__asm__ volatile("1: addi %0, %0, -1\n\tbnez %0, 1b" : "+r"(left));
	ioctl(ins, PERF_EVENT_IOC_DISABLE, 0);
	ioctl(cyc, PERF_EVENT_IOC_DISABLE, 0);
	printf("diosix-perf instructions %llu cycles %llu loop %llu\n",
	       (unsigned long long)perf_read(ins), (unsigned long long)perf_read(cyc),
	       (unsigned long long)(2 * n));
	return 0;
}

static int run_tcp(const char *address, const char *port, long mib)
{
	static char chunk[64 * 1024];
	struct sockaddr_in to = { .sin_family = AF_INET };
	long long left = (long long)mib << 20;
	uint64_t start, elapsed;
	char sink[256];
	int s;

	to.sin_port = htons((uint16_t)atoi(port));
	if (inet_pton(AF_INET, address, &to.sin_addr) != 1) {
		fprintf(stderr, "diosix-workloads: %s is not an IPv4 address\n", address);
		return 2;
	}
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	start = now_ns();
	if (connect(s, (struct sockaddr *)&to, sizeof(to)) != 0)
		die("connect");
	while (left > 0) {
		ssize_t n = write(s, chunk, left < (long long)sizeof(chunk) ? (size_t)left : sizeof(chunk));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		left -= n;
	}
	if (shutdown(s, SHUT_WR) != 0)
		die("shutdown");
	while (read(s, sink, sizeof(sink)) > 0)
		;
	elapsed = now_ns() - start;
	close(s);
	printf("diosix-workload tcp_send_%ldMiB 1 %llu 1 %llu\n", mib,
	       (unsigned long long)elapsed, (unsigned long long)elapsed);
	printf("diosix-workloads done (tcp)\n");
	return 0;
}

/*
 * `usleep SECONDS`: usleep(1000) over and over for SECONDS by the monotonic clock,
 * nothing else (the exit-rate benchmark counts what a timer-driven sleeper costs).
 */
static int run_usleep(long seconds)
{
	uint64_t end = now_ns() + (uint64_t)seconds * 1000000000u;
	long n = 0;

	while (now_ns() < end) {
		usleep(1000);
		n++;
	}
	printf("diosix-workloads done (usleep %ld s, %ld sleeps)\n", seconds, n);
	return 0;
}

int main(int argc, char **argv)
{
	cpu_set_t set;
	pid_t pid;
	int status;
	int devices = argc > 1 && strcmp(argv[1], "devices") == 0;

	if (argc == 3 && strcmp(argv[1], "perf") == 0 && atol(argv[2]) > 0)
		return run_perf(atol(argv[2]));
	if (argc == 5 && strcmp(argv[1], "tcp") == 0 && atol(argv[4]) > 0)
		return run_tcp(argv[2], argv[3], atol(argv[4]));
	if (argc == 3 && strcmp(argv[1], "usleep") == 0 && atol(argv[2]) > 0)
		return run_usleep(atol(argv[2]));
	if (argc > 1 && !devices) {
		fprintf(stderr, "usage: diosix-workloads [devices | perf N | tcp ADDRESS PORT MIB | usleep SECONDS]\n");
		return 2;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0)
		die("sched_setaffinity");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0 && devices) {
		run_devices();
		printf("diosix-workloads done (devices)\n");
		fflush(stdout);
		_exit(0);
	}
	if (pid == 0) {
		run_all();
		printf("diosix-workloads done (cpu result %llx)\n",
		       (unsigned long long)cpu_sink);
		fflush(stdout);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
