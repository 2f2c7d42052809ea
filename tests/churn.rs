//! Pod churn: 500 short-lived pod cgroups (lifetimes 50 ms to 2 s), each making a known
//! number of events at the end of its life, its cgroup removed the moment it exits (as
//! a runtime does). Every event must be counted under exactly its own pod. Needs root.

#[macro_use]
mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{samples, Cgroups, Exporter, Pod, TempDir};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }]
metrics:
  counters:
    - name: churn_getpid_calls_total
      help: getpid() calls of short-lived pods
      ring: events
"#;

const PODS: usize = 500;
const PARALLEL: usize = 32;

#[test]
fn every_event_of_500_short_lived_pods_is_counted_under_its_own_pod() {
    privileged!("every_event_of_500_short_lived_pods_is_counted_under_its_own_pod");
    let dir = TempDir::new("churn");
    std::fs::write(dir.0.join("churn.bpf.c"), test_support::GETPID_RING).unwrap();
    test_support::compile_bpf(&dir.0.join("churn.bpf.c"), &dir.0.join("churn.bpf.o"), &[]);
    std::fs::write(dir.0.join("churn.yaml"), CONFIG).unwrap();
    let cgroups = Arc::new(Mutex::new(Cgroups::new("churn")));
    let names: Vec<&'static str> = (0..PODS)
        .map(|i| &*Box::leak(format!("churn-{i:03}-x7k2p").into_boxed_str()))
        .collect();
    let pods: Vec<Pod> = names.iter().map(|n| Pod::new("churn", n, "app")).collect();
    let mut flags = pods[0].logs(&dir.0);
    for pod in &pods[1..] {
        pod.logs(&dir.0);
    }
    flags.extend(
        [
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "churn",
            "--config.strict",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("exporter.log"));

    let events = |i: usize| 5 + i % 11;
    let lifetime = |i: usize| Duration::from_millis(50 + (i as u64 * 389) % 1950);
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0usize));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (next, cgroups, pods) = (
                next.clone(),
                cgroups.clone(),
                &pods as *const Vec<Pod> as usize,
            );
            std::thread::spawn(move || {
                // SAFETY: `pods` outlives the workers (joined below).
                let pods = unsafe { &*(pods as *const Vec<Pod>) };
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    if i >= PODS {
                        return;
                    }
                    let cg = pods[i].cgroup(&mut cgroups.lock().unwrap());
                    let status = std::process::Command::new(common::workload())
                        .args([cg.to_str().unwrap(), "getpid", &events(i).to_string()])
                        .env("WORKLOAD_SLEEP_US", lifetime(i).as_micros().to_string())
                        .status()
                        .unwrap();
                    assert!(status.success());
                    // The runtime removes the container's cgroup as soon as it exits.
                    std::fs::remove_dir(&cg).unwrap();
                    let _ = std::fs::remove_dir(cg.parent().unwrap());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let churn = started.elapsed();

    let total: usize = (0..PODS).map(events).sum();
    let name = "ebpf_exporter_churn_getpid_calls_total";
    let ours = |page: &str| -> f64 {
        samples(page, name)
            .iter()
            .filter(|(l, _)| l.contains("app_namespace=\"churn\""))
            .map(|(_, v)| v)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut page = exporter.metrics();
    while ours(&page) < total as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        page = exporter.metrics();
    }
    let exact = pods
        .iter()
        .enumerate()
        .filter(|(i, pod)| {
            let labels = format!("{},node_id=\"{}\"", pod.labels(), common::node());
            common::sample(&page, name, &labels) == Some(events(*i) as f64)
        })
        .count();
    let wrong: Vec<String> = samples(&page, name)
        .iter()
        .filter(|(l, _)| l.contains("churn-") && !l.contains("app_namespace=\"churn\""))
        .map(|(l, v)| format!("{l} {v}"))
        .collect();
    eprintln!(
        "churn: {PODS} pods in {:.1} s, {total} events: {exact}/{PODS} pods counted exactly ({:.1} %), {} of {total} events attributed",
        churn.as_secs_f64(),
        exact as f64 * 100.0 / PODS as f64,
        ours(&page)
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(exact, PODS, "{page}");
}
