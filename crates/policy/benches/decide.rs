//! Decision latency of the default policy pack against a single trivial Cedar policy.
//!
//! Run with `cargo bench -p clover-policy --bench decide`. Besides criterion's estimates, the
//! bench prints the median and the 99th percentile of 20,000 timed decisions of each kind, all
//! in the same run and interleaved, so that the pack can be read as a ratio of the trivial policy.
//!
//! - `trivial`: one policy, `permit (principal, action, resource);`, same schema and request.
//! - `pack/allow_full`: an in-region read, allowed in full (one Cedar evaluation).
//! - `pack/deny_outside`: a read from Singapore, refused for a full view and for a pseudonymised
//!   one (two evaluations, the worst case of a read).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use clover_policy::pack::{DEFAULT_SCHEMA, PackRequest, PolicyPack};
use criterion::{Criterion, criterion_group, criterion_main};

fn request() -> PackRequest {
    clover_testkit::fixtures::read_profile_request()
}

/// Times 20,000 decisions of each case, interleaved (one of each in turn) so that the machine's
/// drift over the run weighs on every case alike; returns each case's median and p99 in µs.
fn percentiles(cases: &[(&str, &PolicyPack, &PackRequest)]) -> Vec<(f64, f64)> {
    for _ in 0..2_000 {
        for (_, pack, request) in cases {
            black_box(pack.decide(request));
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(20_000); cases.len()];
    for _ in 0..20_000 {
        for ((_, pack, request), times) in cases.iter().zip(samples.iter_mut()) {
            let started = Instant::now();
            black_box(pack.decide(black_box(request)));
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    cases
        .iter()
        .zip(samples.iter_mut())
        .map(|((name, _, _), times)| {
            times.sort_by(f64::total_cmp);
            let (median, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
            println!("{name:<22} median {median:8.2} µs   p99 {p99:8.2} µs");
            (median, p99)
        })
        .collect()
}

fn decide(c: &mut Criterion) {
    let pack = PolicyPack::default_pack().unwrap();
    let trivial = PolicyPack::from_sources(
        DEFAULT_SCHEMA,
        &[("trivial.cedar".into(), "@id(\"all\") permit (principal, action, resource);".into())],
    )
    .unwrap();
    let allow = request();
    let mut outside = request();
    outside.origin = Some(("singapore-1".into(), "sg".into()));
    assert_eq!(pack.decide(&allow).effect(), "allow");
    assert_eq!(pack.decide(&outside).effect(), "deny");
    assert_eq!(trivial.decide(&allow).effect(), "allow");

    println!("decision latency, 20,000 decisions each, interleaved, same run:");
    let timed = percentiles(&[
        ("trivial", &trivial, &allow),
        ("pack/allow_full", &pack, &allow),
        ("pack/deny_outside", &pack, &outside),
    ]);
    let [(t_med, t_p99), (a_med, a_p99), (d_med, d_p99)] = timed[..] else { unreachable!() };
    println!(
        "ratios to trivial: allow_full median {:.2}x p99 {:.2}x; deny_outside median {:.2}x p99 {:.2}x",
        a_med / t_med,
        a_p99 / t_p99,
        d_med / t_med,
        d_p99 / t_p99
    );

    let mut group = c.benchmark_group("decision");
    group.sample_size(20);
    group.bench_function("trivial", |b| b.iter(|| trivial.decide(black_box(&allow))));
    group.bench_function("pack/allow_full", |b| b.iter(|| pack.decide(black_box(&allow))));
    group.bench_function("pack/deny_outside", |b| b.iter(|| pack.decide(black_box(&outside))));
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
