//! Supervisor tests with small shell children; a pump task stands in for SIGCHLD.

use std::path::Path;

use super::*;
use crate::reaper::tests::CHILDREN;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn backoff_doubles_caps_and_resets_after_a_stable_run() {
    let mut b = Backoff::new(BackoffPolicy {
        initial: ms(100),
        max: ms(500),
        stable: Duration::from_secs(10),
    });
    let short = ms(10);
    let got: Vec<Duration> = (0..6).map(|_| b.after_exit(short)).collect();
    assert_eq!(got, [100, 200, 400, 500, 500, 500].map(ms));
    assert_eq!(b.after_exit(Duration::from_secs(11)), ms(100));
    assert_eq!(b.after_exit(short), ms(200));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pump(reaper: &Reaper) -> JoinHandle<()> {
    let r = reaper.clone();
    tokio::spawn(async move {
        loop {
            r.reap();
            tokio::time::sleep(ms(10)).await;
        }
    })
}

fn sh(name: &str, script: &str) -> Spec {
    let mut s = Spec::new(name, "/bin/sh");
    s.args = vec!["-c".into(), script.into()];
    s
}

#[test]
fn crashing_daemon_is_restarted_with_growing_delays_then_stopped() {
    let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    rt().block_on(async {
        let reaper = Reaper::new();
        let p = pump(&reaper);
        let mut sup = Supervisor::new(reaper.clone());
        let mut spec = sh("crasher", "echo starting; exit 3");
        spec.backoff = BackoffPolicy {
            initial: ms(50),
            max: ms(200),
            stable: Duration::from_secs(30),
        };
        let mut st = sup.start(spec);
        let mut delays = Vec::new();
        while delays.len() < 5 {
            st.changed().await.unwrap();
            if let DaemonState::Backoff {
                last,
                delay,
                restarts,
            } = st.borrow().clone()
            {
                assert_eq!(last, "exit code 3");
                assert_eq!(restarts as usize, delays.len() + 1);
                delays.push(delay);
            }
        }
        assert_eq!(delays, [50, 100, 200, 200, 200].map(ms));
        sup.stop_all(ms(500)).await;
        assert_eq!(*st.borrow(), DaemonState::Stopped);
        p.abort();
    });
}

#[test]
fn readiness_is_reported_and_stop_is_in_reverse_order_with_kill_after_grace() {
    let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    let d = tempfile::tempdir().unwrap();
    let order = d.path().join("order");
    let flag = d.path().join("ready");
    rt().block_on(async {
        let reaper = Reaper::new();
        let p = pump(&reaper);
        let mut sup = Supervisor::new(reaper.clone());
        let mut first = sh(
            "first",
            &format!(
                "trap 'echo first >> {o}; exit 0' TERM; sleep 0.2; touch {f}; \
                 while :; do sleep 0.05; done",
                o = order.display(),
                f = flag.display()
            ),
        );
        let f2 = flag.clone();
        first.ready = Some(Arc::new(move || {
            let f = f2.clone();
            Box::pin(async move { Path::new(&f).exists() })
        }));
        let mut st1 = sup.start(first);
        // Ignores SIGTERM: must be killed after the grace period.
        let second = sh(
            "second",
            &format!(
                "trap 'echo second >> {o}' TERM; while :; do sleep 0.05; done",
                o = order.display()
            ),
        );
        let st2 = sup.start(second);
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if matches!(*st1.borrow(), DaemonState::Ready { .. }) {
                    return;
                }
                st1.changed().await.unwrap();
            }
        })
        .await;
        assert!(ready.is_ok(), "never ready: {:?}", *st1.borrow());
        tokio::time::sleep(ms(100)).await;
        let t = Instant::now();
        sup.stop_all(ms(300)).await;
        // The second ignored TERM: it was killed after the grace period.
        assert!(t.elapsed() >= ms(300), "{:?}", t.elapsed());
        assert_eq!(*st1.borrow(), DaemonState::Stopped);
        assert_eq!(*st2.borrow(), DaemonState::Stopped);
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "second\nfirst\n");
        assert_eq!(reaper.waited_for(), 0);
        p.abort();
    });
}

#[test]
fn never_ready_counts_as_a_failed_run() {
    let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    rt().block_on(async {
        let reaper = Reaper::new();
        let p = pump(&reaper);
        let mut sup = Supervisor::new(reaper.clone());
        let mut spec = sh("sleepy", "exec sleep 100");
        spec.ready = Some(Arc::new(|| Box::pin(async { false })));
        spec.ready_timeout = ms(200);
        let mut st = sup.start(spec);
        let last = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                st.changed().await.unwrap();
                if let DaemonState::Backoff { last, .. } = st.borrow().clone() {
                    return last;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(last, "not ready in time");
        sup.stop_all(ms(200)).await;
        p.abort();
    });
}

#[test]
fn stop_by_name_stops_only_that_daemon() {
    let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    rt().block_on(async {
        let reaper = Reaper::new();
        let p = pump(&reaper);
        let mut sup = Supervisor::new(reaper.clone());
        let keep = sup.start(sh("keep", "while :; do sleep 0.05; done"));
        let gone = sup.start(sh("gone", "while :; do sleep 0.05; done"));
        tokio::time::sleep(ms(100)).await;
        sup.stop("gone", ms(300)).await;
        assert_eq!(*gone.borrow(), DaemonState::Stopped);
        assert!(matches!(*keep.borrow(), DaemonState::Running { pid, .. } if pid > 0));
        assert_eq!(sup.names(), ["keep"]);
        // Started again under the same name: supervised again.
        let again = sup.start(sh("gone", "while :; do sleep 0.05; done"));
        tokio::time::sleep(ms(100)).await;
        assert!(matches!(*again.borrow(), DaemonState::Running { pid, .. } if pid > 0));
        sup.stop_all(ms(300)).await;
        assert_eq!(*keep.borrow(), DaemonState::Stopped);
        assert_eq!(*again.borrow(), DaemonState::Stopped);
        p.abort();
    });
}
