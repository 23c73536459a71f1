//! The device check on the CPU: the device side takes the path a GPU takes (candle's exact
//! convolutions and BN), so the check itself is tested, against the fast engine.

use candle_core::{DType, Device};
use r38_bench::device_check::{gradients, parity, PARITY_CASES};

#[test]
fn the_exact_path_passes_the_device_check_on_the_cpu() {
    let rows = parity(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(rows.len(), PARITY_CASES.len());
    for r in &rows {
        println!("{r:?}");
        assert_eq!(r.passed, Some(true), "{r:?}");
        assert!(r.vs_mxnet <= 1e-4, "{r:?}");
    }
    let half = parity(&Device::Cpu, DType::F16).unwrap();
    for r in &half {
        println!("{r:?}");
        assert_eq!(r.passed, None);
        // f16 keeps about three digits.
        assert!(r.vs_cpu < 5e-2, "{r:?}");
    }
    let step = gradients(&Device::Cpu, 16, 48).unwrap();
    println!("{step:?}");
    assert!(step.passed && step.compared > 50, "{step:?}");
}
