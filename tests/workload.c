/* Test workload with exact, known syscall counts.
 *
 *   workload <cgroup dir | -> <command> [args...]
 *
 * Moves itself into the cgroup first (so the loader's and libc's start-up calls are not
 * counted there), then runs one command:
 *   getpid N          N getpid() calls
 *   getppid N         N getppid() calls
 *   open-missing N    N openat() calls that fail with ENOENT
 *   fork N            N fork()s; each child exits at once
 *   usleep V...       usleep(V) for each V (microseconds)
 *   kill N SIG        N kill(self, SIG) calls (SIG 0 delivers nothing)
 *   jobs N            N firings of the USDT probe workload:job(i % 3, i * 1000); built
 *                     with -DWORKLOAD_SEMAPHORE, only while a tracer raised its semaphore
 *   connect-timeout A P N  N non-blocking TCP connects to A:P at once, each of which must
 *                     fail with ETIMEDOUT (the caller makes A drop packets); prints the
 *                     retransmits the kernel counted for them (TCP_INFO)
 *   udp-overflow N    N datagrams to a socket that reads none until the end; prints how
 *                     many its full receive queue dropped
 *   spin MS N         N children pinned to CPU 0 spin for MS ms; prints the run-queue
 *                     wait (ns) and runs the kernel accounted to them and to itself
 *   direct-write F N S  N O_DIRECT writes of S bytes over the existing file F
 *   pagecache F MIB   writes MIB MiB to F through the page cache, then fsyncs it
 *   unix N            N UNIX stream connects to a listener at /tmp/kebpf-unix.sock, each
 *                     accepted and closed
 *   traced-sleep N HI LO SPAN  N 1 ms nanosleeps under parent span SPAN of trace HI:LO (hex),
 *                     as a traced application announces it to sched-trace (USDT probes
 *                     ebpf_exporter:sched_set_parent_span / sched_clear_parent_span), then
 *                     N more sleeps with no parent
 * WORKLOAD_SLEEP_US=N sleeps that long first (a container's life before its last calls).
 * With WORKLOAD_HOLD=1 it then waits until killed, so its pid stays resolvable.
 */
#ifdef WORKLOAD_SEMAPHORE
/* As `dtrace -G` builds do: the probe is skipped unless its semaphore is raised (and
 * sys/sdt.h then wants a <provider>_<name>_semaphore for every probe). */
#define _SDT_HAS_SEMAPHORES 1
unsigned short workload_job_semaphore __attribute__((unused, section(".probes")));
unsigned short ebpf_exporter_sched_set_parent_span_semaphore __attribute__((unused, section(".probes")));
unsigned short ebpf_exporter_sched_clear_parent_span_semaphore __attribute__((unused, section(".probes")));
#define JOB_ENABLED() (*(volatile unsigned short *)&workload_job_semaphore != 0)
#else
#define JOB_ENABLED() 1
#endif
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/sdt.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* /proc/<pid>/schedstat (pid 0: this process): time on CPU, time waiting on a run
 * queue, times run. */
static int schedstat(pid_t pid, unsigned long long *run_delay, unsigned long long *runs)
{
	unsigned long long on_cpu;
	char path[64];
	FILE *f;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/schedstat");
	f = fopen(path, "r");
	int n = f ? fscanf(f, "%llu %llu %llu", &on_cpu, run_delay, runs) : 0;

	if (f)
		fclose(f);
	return n == 3 ? 0 : -1;
}

static void join_cgroup(const char *dir)
{
	char path[4096];
	int fd;

	if (strcmp(dir, "-") == 0)
		return;
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	fd = open(path, O_WRONLY);
	/* "0" is the writer itself: no getpid() to skew the counts. */
	if (fd < 0 || write(fd, "0", 1) != 1) {
		perror(path);
		exit(2);
	}
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s <cgroup dir|-> <command> [args...]\n", argv[0]);
		return 2;
	}
	join_cgroup(argv[1]);
	/* Also a cgroup v1 memory cgroup, for memory limits on hybrid hosts. */
	if (getenv("WORKLOAD_MEMORY_CGROUP"))
		join_cgroup(getenv("WORKLOAD_MEMORY_CGROUP"));
	const char *cmd = argv[2];
	if (getenv("WORKLOAD_SLEEP_US"))
		usleep((useconds_t)atol(getenv("WORKLOAD_SLEEP_US")));
	long n = argc > 3 ? atol(argv[3]) : 0;

	if (strcmp(cmd, "getpid") == 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getpid);
	} else if (strcmp(cmd, "getppid") == 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
	} else if (strcmp(cmd, "getpgid") == 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getpgid, 0);
	} else if (strcmp(cmd, "getsid") == 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getsid, 0);
	} else if (strcmp(cmd, "fsync") == 0) {
		char path[] = "/tmp/kebpf-workload-XXXXXX";
		int fd = mkstemp(path);

		if (fd < 0)
			return 3;
		unlink(path);
		for (long i = 0; i < n; i++)
			if (fsync(fd) != 0)
				return 3;
		close(fd);
	} else if (strcmp(cmd, "connect") == 0) {
		/* connect <port> <n>: n TCP connects to 127.0.0.1:<port>, each closed at once. */
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)n),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		long count = argc > 4 ? atol(argv[4]) : 0;

		for (long i = 0; i < count; i++) {
			int s = socket(AF_INET, SOCK_STREAM, 0);

			if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof(to)) != 0)
				return 3;
			close(s);
		}
	} else if (strcmp(cmd, "unix") == 0) {
		struct sockaddr_un at = { .sun_family = AF_UNIX, .sun_path = "/tmp/kebpf-unix.sock" };
		int l = socket(AF_UNIX, SOCK_STREAM, 0);

		unlink(at.sun_path);
		if (l < 0 || bind(l, (struct sockaddr *)&at, sizeof(at)) != 0 || listen(l, 4) != 0)
			return 3;
		for (long i = 0; i < n; i++) {
			int c = socket(AF_UNIX, SOCK_STREAM, 0), a;

			if (c < 0 || connect(c, (struct sockaddr *)&at, sizeof(at)) != 0)
				return 3;
			a = accept(l, NULL, NULL);
			if (a < 0)
				return 3;
			close(a);
			close(c);
		}
		close(l);
		unlink(at.sun_path);
	} else if (strcmp(cmd, "udp") == 0) {
		/* udp <port> <n>: n datagrams to 127.0.0.1:<port>. */
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)n),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		long count = argc > 4 ? atol(argv[4]) : 0;
		int s = socket(AF_INET, SOCK_DGRAM, 0);

		for (long i = 0; i < count; i++)
			if (s < 0 || sendto(s, "x", 1, 0, (struct sockaddr *)&to, sizeof(to)) != 1)
				return 3;
		close(s);
	} else if (strcmp(cmd, "lifecycle") == 0) {
		/* lifecycle <n>: n children that exec /bin/true, n that exit with code 3 and
		 * n killed by SIGKILL. */
		for (long i = 0; i < 3 * n; i++) {
			pid_t child = fork();

			if (child == 0) {
				if (i < n)
					execl("/bin/true", "true", (char *)NULL);
				if (i < 2 * n)
					_exit(3);
				pause();
				_exit(0);
			}
			if (child < 0)
				return 3;
			if (i >= 2 * n)
				kill(child, SIGKILL);
			if (waitpid(child, NULL, 0) != child)
				return 3;
		}
	} else if (strcmp(cmd, "oom") == 0) {
		/* oom: touch memory until the memory limit's OOM killer ends us. */
		for (;;) {
			char *p = malloc(1 << 20);

			if (!p)
				return 3;
			memset(p, 1, 1 << 20);
		}
	} else if (strcmp(cmd, "connect-timeout") == 0) {
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4])) };
		long count = argc > 5 ? atol(argv[5]) : 0;
		struct pollfd fds[64];

		if (count > 64 || inet_pton(AF_INET, argv[3], &to.sin_addr) != 1)
			return 2;
		for (long i = 0; i < count; i++) {
			fds[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
			fds[i].events = POLLOUT;
			if (fds[i].fd < 0 || connect(fds[i].fd, (struct sockaddr *)&to, sizeof(to)) == 0 ||
			    errno != EINPROGRESS)
				return 3;
		}
		long retransmits = 0;

		for (long i = 0; i < count; i++) {
			int err = 0;
			socklen_t len = sizeof(err);
			struct tcp_info info;
			socklen_t info_len = sizeof(info);

			while (poll(&fds[i], 1, -1) != 1)
				;
			getsockopt(fds[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (err != ETIMEDOUT) {
				fprintf(stderr, "connect: %s, not ETIMEDOUT\n", strerror(err));
				return 3;
			}
			if (getsockopt(fds[i].fd, IPPROTO_TCP, TCP_INFO, &info, &info_len))
				return 3;
			retransmits += info.tcpi_total_retrans;
			close(fds[i].fd);
		}
		printf("%ld\n", retransmits);
	} else if (strcmp(cmd, "udp-overflow") == 0) {
		struct sockaddr_in at = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof(at);
		int rcvbuf = 1, in = socket(AF_INET, SOCK_DGRAM, 0), out = socket(AF_INET, SOCK_DGRAM, 0);
		char byte;
		long received = 0;

		/* The smallest buffer the kernel allows: a few datagrams fit. */
		if (in < 0 || out < 0 || setsockopt(in, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) ||
		    bind(in, (struct sockaddr *)&at, sizeof(at)) || getsockname(in, (struct sockaddr *)&at, &len))
			return 3;
		for (long i = 0; i < n; i++)
			if (sendto(out, "x", 1, 0, (struct sockaddr *)&at, sizeof(at)) != 1)
				return 3;
		while (recv(in, &byte, 1, MSG_DONTWAIT) == 1)
			received++;
		printf("%ld\n", n - received);
	} else if (strcmp(cmd, "spin") == 0) {
		/* The kernel's own run-queue accounting (sched_info) of the children and of
		 * this process from here on: total run_delay (ns) and times run (pcount).
		 * A child's is read once it is a zombie, when it can wait no more: the waits
		 * of its way out count too. */
		long children = argc > 4 ? atol(argv[4]) : 0;
		unsigned long long delay = 0, runs = 0, d, r;
		pid_t pids[64];

		if (children > 64 || schedstat(0, &d, &r))
			return 3;
		delay -= d, runs -= r;
		for (long i = 0; i < children; i++) {
			pids[i] = fork();
			if (pids[i] == 0) {
				cpu_set_t one;
				struct timespec start, now;

				CPU_ZERO(&one);
				CPU_SET(0, &one);
				if (sched_setaffinity(0, sizeof(one), &one))
					_exit(3);
				clock_gettime(CLOCK_MONOTONIC, &start);
				do
					clock_gettime(CLOCK_MONOTONIC, &now);
				while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < n);
				_exit(0);
			}
			if (pids[i] < 0)
				return 3;
		}
		for (long i = 0; i < children; i++) {
			siginfo_t info;
			int status;

			if (waitid(P_PID, pids[i], &info, WEXITED | WNOWAIT) || info.si_status != 0 ||
			    schedstat(pids[i], &d, &r) || waitpid(pids[i], &status, 0) != pids[i])
				return 3;
			delay += d, runs += r;
		}
		if (schedstat(0, &d, &r))
			return 3;
		printf("%llu %llu\n", delay + d, runs + r);
	} else if (strcmp(cmd, "direct-write") == 0) {
		long count = atol(argv[4]), size = argc > 5 ? atol(argv[5]) : 0;
		int fd = open(argv[3], O_WRONLY | O_DIRECT);
		void *buf;

		if (fd < 0 || posix_memalign(&buf, 4096, size))
			return 3;
		memset(buf, 7, size);
		for (long i = 0; i < count; i++)
			if (pwrite(fd, buf, size, i * size) != size)
				return 3;
		close(fd);
	} else if (strcmp(cmd, "pagecache") == 0) {
		long mib = argc > 4 ? atol(argv[4]) : 0;
		int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
		static char chunk[1 << 20];

		if (fd < 0)
			return 3;
		memset(chunk, 1, sizeof(chunk));
		for (long i = 0; i < mib; i++)
			if (write(fd, chunk, sizeof(chunk)) != sizeof(chunk))
				return 3;
		if (fsync(fd))
			return 3;
		close(fd);
	} else if (strcmp(cmd, "open-missing") == 0) {
		for (long i = 0; i < n; i++)
			if (open("/nonexistent/kube-ebpf-exporter-test", O_RDONLY) >= 0 || errno != ENOENT)
				return 3;
	} else if (strcmp(cmd, "fork") == 0) {
		for (long i = 0; i < n; i++) {
			pid_t child = fork();
			if (child == 0)
				_exit(0);
			if (child < 0 || waitpid(child, NULL, 0) != child)
				return 3;
		}
	} else if (strcmp(cmd, "usleep") == 0) {
		for (int i = 3; i < argc; i++)
			usleep((useconds_t)atol(argv[i]));
	} else if (strcmp(cmd, "kill") == 0) {
		int sig = argc > 4 ? atoi(argv[4]) : 0;
		pid_t self = getpid();

		for (long i = 0; i < n; i++)
			if (kill(self, sig) != 0)
				return 3;
	} else if (strcmp(cmd, "traced-sleep") == 0) {
		uint64_t hi = strtoull(argv[4], NULL, 16), lo = strtoull(argv[5], NULL, 16);
		uint64_t span = strtoull(argv[6], NULL, 16);

		/* nanosleep, not usleep: usleep-durations counts usleep calls. */
		struct timespec ms = { .tv_nsec = 1000000 };

		STAP_PROBE3(ebpf_exporter, sched_set_parent_span, hi, lo, span);
		for (long i = 0; i < n; i++)
			nanosleep(&ms, NULL);
		STAP_PROBE(ebpf_exporter, sched_clear_parent_span);
		for (long i = 0; i < n; i++)
			nanosleep(&ms, NULL);
	} else if (strcmp(cmd, "jobs") == 0) {
		for (long i = 0; i < n; i++) {
			int kind = i % 3;
			long cost = i * 1000;

			if (JOB_ENABLED())
				STAP_PROBE2(workload, job, kind, cost);
		}
	} else {
		fprintf(stderr, "unknown command %s\n", cmd);
		return 2;
	}
	if (getenv("WORKLOAD_HOLD")) {
		/* Tell the test we are done, then wait to be killed. */
		puts("done");
		fflush(stdout);
		pause();
	}
	return 0;
}
