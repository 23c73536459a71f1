//! Deterministic random weights for any configuration, built in Rust.
//!
//! The names and shapes come from building the real model on a [`VarBuilder`]; each tensor's
//! values are drawn from a generator seeded by the tensor's name, so every process (and every
//! engine) gets the same network without writing weight files.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// splitmix64: small, fast, good enough for test weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// FNV-1a of a name, mixed with a global seed.
pub fn seed_of(name: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values for the tensor `name` of `shape`: MSRA-normal conv weights, uniform FC, BN statistics
/// near identity with some spread (so that BN folding is actually exercised).
pub fn values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed_of(name, seed));
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let gen = |f: &mut dyn FnMut(&mut Rng) -> f32, rng: &mut Rng| -> Vec<f32> {
        (0..n).map(|_| f(rng)).collect()
    };
    if name.ends_with("_gamma") || name.ends_with("_moving_var") {
        gen(&mut |r| 0.8 + 0.4 * r.uniform(), &mut rng)
    } else if name.ends_with("_beta") || name.ends_with("_moving_mean") || name.ends_with("_bias") {
        gen(&mut |r| 0.05 * r.normal(), &mut rng)
    } else if shape.len() == 4 {
        let std = (2.0 / fan_in as f64).sqrt() as f32;
        gen(&mut |r| std * r.normal(), &mut rng)
    } else {
        let bound = 1.0 / (fan_in as f32).sqrt();
        gen(&mut |r| bound * (2.0 * r.uniform() - 1.0), &mut rng)
    }
}

/// A weight source for [`VarBuilder`]: every tensor a model asks for is filled with [`values`]
/// on first request and cached, so building several modules over the same names shares one
/// copy. The tensors are plain (not candle `Var`s): no autograd is tracked and the fast engine
/// applies. No full-size init values are generated and thrown away, so the peak RSS stays that
/// of the weights themselves.
#[derive(Clone)]
pub struct RandomWeights {
    seed: u64,
    trainable: bool,
    cache: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            trainable: false,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same values as trainable [`candle_core::Var`]s, except the BN statistics, which
    /// the fine-tuning recipe freezes (for the training-step case).
    pub fn trainable(seed: u64) -> Self {
        Self {
            trainable: true,
            ..Self::new(seed)
        }
    }

    /// A builder drawing from (and filling) this source.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    /// Every tensor handed out so far, by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.cache.lock().expect("weights lock").clone()
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut cache = self.cache.lock().expect("weights lock");
        if let Some(t) = cache.get(name) {
            if t.shape() != &s {
                candle_core::bail!("{name}: asked for {s:?}, made {:?}", t.shape());
            }
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let t = Tensor::from_vec(values(name, s.dims(), self.seed), s, dev)?.to_dtype(dtype)?;
        let t = if self.trainable && !name.contains("_moving_") {
            candle_core::Var::from_tensor(&t)?.as_tensor().clone()
        } else {
            t
        };
        cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.cache.lock().expect("weights lock").get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("{name}: shape unknown before first use"),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A deterministic N(0, 1) input.
pub fn random_input(
    shape: (usize, usize, usize, usize),
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let mut rng = Rng::new(seed_of("input", seed));
    let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, device)
}

/// Write tensors as `<stem>.bin` (all values, f32 little-endian, back to back) and `<stem>.json`
/// (`{name: {"offset": floats, "shape": [..]}}`), which NumPy reads with one `fromfile`
/// (candle's `write_npz` takes minutes for the 0.5 GB of a full network).
pub fn write_raw(tensors: &HashMap<String, Tensor>, stem: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let file = std::fs::File::create(stem.with_extension("bin"))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    let mut index = serde_json::Map::new();
    let mut offset = 0usize;
    for name in names {
        let t = &tensors[name];
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in &v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        out.write_all(&bytes)?;
        index.insert(
            name.clone(),
            serde_json::json!({"offset": offset, "shape": t.dims()}),
        );
        offset += v.len();
    }
    out.flush()?;
    std::fs::write(
        stem.with_extension("json"),
        serde_json::Value::Object(index).to_string(),
    )?;
    Ok(())
}
