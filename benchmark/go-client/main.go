// The baseline of benchmark/src/bin/exposition.rs: the same histogram series served by
// the Go client (client_golang 1.14, as cloudflare/ebpf_exporter and most exporters
// use it), with OpenMetrics and, with -native, native buckets at schema 3.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	series := flag.Int("series", 1000, "histogram series")
	listen := flag.String("listen", "127.0.0.1:9600", "address")
	native := flag.Bool("native", true, "native buckets beside the classic ones")
	flag.Parse()

	opts := prometheus.HistogramOpts{
		Name:    "ebpf_exporter_tcp_connect_latency_seconds",
		Help:    "TCP connect latency",
		Buckets: prometheus.ExponentialBuckets(1e-6, 2, 27),
	}
	if *native {
		// A factor of 1.1 picks schema 3, as the exporter's default.
		opts.NativeHistogramBucketFactor = 1.1
		opts.NativeHistogramMaxBucketNumber = 160
	}
	h := prometheus.NewHistogramVec(opts, []string{"app_container", "app_namespace", "app_pod", "node_id", "subnet"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(h)
	for i := 0; i < *series; i++ {
		o := h.WithLabelValues("c", fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("pod-%d", i), "bench", "127")
		for j := 0; j < 8; j++ {
			o.Observe(float64(latency(uint64(i), uint64(j))) * 1e-9)
		}
	}
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	log.Fatal(http.ListenAndServe(*listen, nil))
}

// latency matches the Rust side: 500 ns .. ~8 ms.
func latency(i, j uint64) uint64 {
	return 500 + ((i*8+j)*2654435761)%(1<<23)
}
