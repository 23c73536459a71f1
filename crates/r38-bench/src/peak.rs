//! The machine's measured floating-point peak: independent FMA chains on every thread.
//!
//! Each thread runs `CHAINS` independent accumulator chains `acc = acc * a + b` in the widest
//! vector registers the CPU has (AVX-512 or AVX2, both with FMA, detected at run time); with
//! more chains than the FMA latency times the FMA units, nothing but the units' throughput
//! limits it. A convolution can reach this only in its GEMM micro-kernels, so the fraction of
//! it that a whole network reaches says how much room is left.

use crate::stats::median;
use std::sync::Barrier;
use std::time::Instant;

/// Independent accumulators per thread: more than FMA latency (4 cycles) x FMA units (2).
const CHAINS: usize = 12;

/// Inner iterations per timed run (each: `CHAINS` FMAs per thread).
const ITERATIONS: u64 = 50_000_000;

/// The vector instruction set a peak was measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

impl Isa {
    /// The widest of AVX-512F and AVX2 + FMA this CPU has.
    pub fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// f32 lanes per register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Scalar => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512 FMA",
            Isa::Avx2 => "AVX2 FMA",
            Isa::Scalar => "scalar",
        }
    }
}

/// GFLOP/s of the FMA chains on `threads` threads at once: the best and the median of `runs`
/// runs (the best is the limit; on a shared host the others lose time to other processes).
pub fn fma_peak_gflops(isa: Isa, threads: usize, runs: usize) -> (f64, f64) {
    let threads = threads.max(1);
    let mut rates: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let barrier = Barrier::new(threads + 1);
            let seconds = std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            std::hint::black_box(chains(isa, std::hint::black_box(ITERATIONS)));
                        })
                    })
                    .collect();
                barrier.wait();
                let t = Instant::now();
                for w in workers {
                    w.join().expect("FMA worker");
                }
                t.elapsed().as_secs_f64()
            });
            let flops = 2.0 * (threads as u64 * ITERATIONS * CHAINS as u64) as f64;
            flops * isa.lanes() as f64 / seconds / 1e9
        })
        .collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    (best, median(&mut rates))
}

/// `iterations` rounds of [`CHAINS`] FMAs; returns a sum so nothing is optimised away.
fn chains(isa: Isa, iterations: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `Isa::widest` found the features these are compiled with.
        Isa::Avx512 => return unsafe { x86::avx512(iterations) },
        Isa::Avx2 => return unsafe { x86::avx2(iterations) },
        Isa::Scalar => {}
    }
    let _ = isa;
    let mut acc = [std::hint::black_box(1f32); CHAINS];
    for _ in 0..iterations {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-6);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iterations: u64) -> f32 {
        let (a, b) = (
            _mm512_set1_ps(black_box(0.999_999)),
            _mm512_set1_ps(black_box(1e-6)),
        );
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS];
        for _ in 0..iterations {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iterations: u64) -> f32 {
        let (a, b) = (
            _mm256_set1_ps(black_box(0.999_999)),
            _mm256_set1_ps(black_box(1e-6)),
        );
        let mut acc = [_mm256_set1_ps(black_box(1.0)); CHAINS];
        for _ in 0..iterations {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|&v| {
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
}
