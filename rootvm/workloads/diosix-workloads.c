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
 * Built static (`riscv64-linux-gnu-gcc -static -O2`) by xtask/src/rootvm/workloads.rs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
int main(void)
{
	cpu_set_t set;
	pid_t pid;
	int status;

	setvbuf(stdout, NULL, _IOLBF, 0);
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0)
		die("sched_setaffinity");
	pid = fork();
	if (pid < 0)
		die("fork");
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
