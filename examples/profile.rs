//! Heap profiling, end to end: a program with two known allocation sites
//! writes its heap profile, reads it back, and sets the sampled figures
//! beside the truth it counted itself.
//!
//! ```text
//! cargo run --release --example profile [-- <path>]   # default: target/profile-example.pb.gz
//! go tool pprof -top target/release/examples/profile target/profile-example.pb.gz
//! ```
//!
//! `build_index` makes 1.5 million small strings (24 to 1000 bytes),
//! `load_blobs` 48 buffers of 1 to 4 MiB, about 890 MiB in all (the
//! program peaks near 1 GiB of RSS and runs in about a second). A quarter
//! of the strings and half of the buffers are dropped before the profile
//! is written, so `inuse_*` differs from `alloc_*`.
//!
//! Profiling is on by default, sampling once every 512 KiB allocated on
//! average; `SCAVALLOC_PROF_RATE` sets another interval (`0`: off, and
//! the example has nothing to show).
//!
//! The profile holds addresses, not names: tools symbolize them from the
//! executable (`go tool pprof`, as printed at the end). Here each sample
//! is given to a site by comparing its frames with the addresses of this
//! file's own functions.

#[path = "../tests/support/profile_proto.rs"]
mod profile_proto;

use profile_proto::{PbSample, Profile};
use prost::Message;

#[global_allocator]
static GLOBAL: scavalloc::Scavalloc = scavalloc::Scavalloc;

/// A site's alloc_objects, alloc_space, inuse_objects and inuse_space: the
/// order of the profile's sample types.
type Figures = [f64; 4];

/// What a site allocated and still holds, as the program counts it, and
/// the variance of the profile's estimate of each figure.
#[derive(Default)]
struct Counted {
    figures: Figures,
    variance: Figures,
}

impl Counted {
    /// Counts `size` bytes allocated (`inuse` 1) or freed (`alloc` 0,
    /// `inuse` -1) at a mean sampling interval of `rate` bytes.
    fn add(&mut self, size: usize, rate: usize, alloc: f64, inuse: f64) {
        // An object is sampled with probability p = 1 - e^(-size/rate) and
        // then counts as 1/p objects: the estimate's variance is (1-p)/p
        // objects, or that times size^2 bytes.
        let v = if rate <= 1 { 0.0 } else { 1.0 / (size as f64 / rate as f64).exp_m1() };
        let s = size as f64;
        let change = [(alloc, 1.0, v), (alloc, s, s * s * v), (inuse, 1.0, v), (inuse, s, s * s * v)];
        for (i, (sign, amount, var)) in change.into_iter().enumerate() {
            self.figures[i] += sign * amount;
            self.variance[i] += sign * var;
        }
    }
}

/// Many small keys: one exactly sized `String` per record, in an index
/// whose own array is one more (large) object.
#[inline(never)]
fn build_index(records: usize, rate: usize, counted: &mut Counted) -> Vec<String> {
    let mut index = Vec::with_capacity(records);
    counted.add(records * size_of::<String>(), rate, 1.0, 1.0);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..records {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 24 + (x % 977) as usize;
        index.push(String::from_utf8(vec![b'a' + (x % 26) as u8; len]).expect("ASCII"));
        counted.add(len, rate, 1.0, 1.0);
    }
    index
}

/// A few large buffers: 1, 2, 3 and 4 MiB in turn, each filled.
#[inline(never)]
fn load_blobs(count: usize, rate: usize, counted: &mut Counted) -> Vec<Vec<u8>> {
    let mut blobs = Vec::with_capacity(count);
    counted.add(count * size_of::<Vec<u8>>(), rate, 1.0, 1.0);
    for i in 0..count {
        let len = (1 + i % 4) << 20;
        blobs.push(vec![i as u8; len]);
        counted.add(len, rate, 1.0, 1.0);
    }
    blobs
}

/// The site a sample belongs to: the frame `main` called. Frames are
/// innermost first, so it is the one just before the first frame in
/// `main`; a frame is in the known function that starts nearest below it.
fn site_of(profile: &Profile, sample: &PbSample) -> &'static str {
    let known = [build_index as *const () as u64, load_blobs as *const () as u64, main as *const () as u64];
    let function = |address: u64| known.iter().filter(|&&start| start <= address).max().copied();
    let address = |id: &u64| profile.location.iter().find(|l| l.id == *id).map_or(0, |l| l.address);
    let frames: Vec<u64> = sample.location_id.iter().map(address).collect();
    let site = frames.windows(2).find(|w| function(w[1]) == Some(known[2])).and_then(|w| function(w[0]));
    match site {
        Some(f) if f == known[0] => "build_index",
        Some(f) if f == known[1] => "load_blobs",
        _ => "(elsewhere)",
    }
}

// Never inlined, so that the sites' caller is a frame of its own.
#[inline(never)]
fn main() {
    // Profiling is on by default (512 KiB, Go's and jemalloc's interval);
    // `SCAVALLOC_PROF_RATE` sets another.
    let rate = scavalloc::profile::stats().rate;
    if rate == 0 {
        eprintln!("SCAVALLOC_PROF_RATE turns profiling off: no profile to show");
        return;
    }
    let path = std::env::args().nth(1).unwrap_or_else(|| "target/profile-example.pb.gz".into());
    let (mut index_counted, mut blobs_counted) = (Counted::default(), Counted::default());
    let mut index = build_index(1_500_000, rate, &mut index_counted);
    let mut blobs = load_blobs(48, rate, &mut blobs_counted);

    // Drop every fourth key and every other buffer: no longer in use, still
    // counted as allocated.
    let mut i = 0;
    index.retain(|key| {
        i += 1;
        let keep = i % 4 != 0;
        if !keep {
            index_counted.add(key.capacity(), rate, 0.0, -1.0);
        }
        keep
    });
    for blob in blobs.iter_mut().skip(1).step_by(2) {
        blobs_counted.add(std::mem::take(blob).capacity(), rate, 0.0, -1.0);
    }

    let mut gz = Vec::new();
    scavalloc::profile::write_pprof(&mut gz).expect("write the profile");
    std::fs::write(&path, &gz).unwrap_or_else(|e| panic!("{path}: {e}"));

    // Read it back: gzip is a 10-byte header, a deflate stream and an
    // 8-byte trailer; the stream holds one profile.proto message.
    let raw = miniz_oxide::inflate::decompress_to_vec(&gz[10..gz.len() - 8]).expect("a deflate stream");
    let profile = Profile::decode(raw.as_slice()).expect("a profile.proto message");
    let mut sites = [("build_index", [0.0; 4]), ("load_blobs", [0.0; 4]), ("(elsewhere)", [0.0; 4])];
    for sample in &profile.sample {
        let site = site_of(&profile, sample);
        let (_, figures) = sites.iter_mut().find(|(name, _)| *name == site).expect("a site");
        figures.iter_mut().zip(&sample.value).for_each(|(f, &v)| *f += v as f64);
    }

    println!(
        "wrote {path} ({} KiB): {} entries (call stack and size class), mean sampling interval {} KiB",
        gz.len().div_ceil(1024),
        profile.sample.len(),
        profile.period >> 10
    );
    println!(
        "\n{:<12} {:<8} {:>13} {:>14} {:>13} {:>14}",
        "site", "", "inuse_space", "inuse_objects", "alloc_space", "alloc_objects"
    );
    let row = |site: &str, what: &str, f: &Figures| {
        let mib = |b: f64| format!("{:.1} MiB", b / (1 << 20) as f64);
        println!("{site:<12} {what:<8} {:>13} {:>14.0} {:>13} {:>14.0}", mib(f[3]), f[2], mib(f[1]), f[0]);
    };
    for ((site, figures), counted) in sites.iter().zip([Some(&index_counted), Some(&blobs_counted), None]) {
        row(site, "profile", figures);
        if let Some(c) = counted {
            row("", "true", &c.figures);
            row("", "± 1 sd", &c.variance.map(f64::sqrt));
        }
    }
    let stats = scavalloc::profile::stats();
    println!(
        "\nprofiler: {} KiB of stack table ({} entries), {} sampled small objects in {} KiB of slots, {} samples dropped",
        stats.table_bytes >> 10,
        stats.stacks,
        stats.sampled_objects,
        stats.sampled_bytes >> 10,
        stats.dropped
    );
    let exe = std::env::current_exe().expect("the executable's path");
    println!("\nwith names (pprof reads them from the executable):");
    println!("  go tool pprof -top -sample_index=inuse_space {} {path}", exe.display());
    println!("  go tool pprof -http=:8080 {} {path}", exe.display());
    drop((index, blobs));
}
