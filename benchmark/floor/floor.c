/* The floor: a minimal libbpf ring buffer consumer that loads an object, attaches its
 * programs, and only counts records (polling with a 10 ms timeout, as the exporter's
 * timer drains). Prints the count on SIGINT/SIGTERM. Given a record size, a sample
 * counts as its size over that many records (a batching program's). Rings named
 * with commas (a sharded program's) are all read, through one epoll set.
 *
 *   cc -O2 -o floor floor.c -lbpf
 *   ./floor object.bpf.o ring[,ring...] [record_size]
 */
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop;
static unsigned long long records;
static size_t record_size;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx; (void)data;
	records += record_size ? size / record_size : 1;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s object.bpf.o ring [record_size]\n", argv[0]);
		return 2;
	}
	if (argc == 4)
		record_size = strtoul(argv[3], NULL, 10);
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "cannot load %s\n", argv[1]);
		return 1;
	}
	struct bpf_program *prog;
	bpf_object__for_each_program(prog, obj)
		if (!bpf_program__attach(prog)) {
			fprintf(stderr, "cannot attach %s\n", bpf_program__name(prog));
			return 1;
		}
	struct ring_buffer *rb = NULL;
	for (char *name = strtok(argv[2], ","); name; name = strtok(NULL, ",")) {
		int fd = bpf_object__find_map_fd_by_name(obj, name);

		if (fd < 0 || (rb ? ring_buffer__add(rb, fd, on_record, NULL) : !(rb = ring_buffer__new(fd, on_record, NULL, NULL)))) {
			fprintf(stderr, "no ring %s\n", name);
			return 1;
		}
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("ready\n");
	fflush(stdout);
	while (!stop)
		ring_buffer__poll(rb, 10);
	ring_buffer__consume(rb);
	printf("%llu\n", records);
	return 0;
}
