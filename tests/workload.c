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
 * WORKLOAD_SLEEP_US=N sleeps that long first (a container's life before its last calls).
 * With WORKLOAD_HOLD=1 it then waits until killed, so its pid stays resolvable.
 */
#ifdef WORKLOAD_SEMAPHORE
/* As `dtrace -G` builds do: the probe is skipped unless its semaphore is raised. */
#define _SDT_HAS_SEMAPHORES 1
unsigned short workload_job_semaphore __attribute__((unused, section(".probes")));
#define JOB_ENABLED() (*(volatile unsigned short *)&workload_job_semaphore != 0)
#else
#define JOB_ENABLED() 1
#endif
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/sdt.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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
