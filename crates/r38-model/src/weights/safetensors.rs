//! Safetensors reading and writing: the project's own export format.
//!
//! Reading goes through the `safetensors` crate, which validates the header (size limit, JSON,
//! offsets that tile the data section exactly, shape × dtype = byte length with checked
//! arithmetic) before any tensor is touched. Float tensors (f32, f64, f16, bf16) are converted to
//! `f32`; other dtypes are refused. Names with a `.` are PyTorch keys and are translated like a
//! `.pth` file's ([`names::to_canonical`]); the `__metadata__` map is returned as is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ::safetensors::{Dtype, SafeTensors};
use candle_core::{DType, Tensor};

use super::{
    atomic_write, cpu_contiguous, f32_tensor, insert_unique, names, FloatKind, Loaded, SkipReason,
    WeightError,
};

/// Parses a safetensors file held in memory.
pub(crate) fn read_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightError> {
    let st_err = |e: ::safetensors::SafeTensorError| WeightError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let mut tensors = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut skipped = Vec::new();
    for (name, view) in entries {
        let canonical = match names::to_canonical(&name) {
            Some(c) => c,
            None if name.ends_with(names::BATCH_COUNTER) => {
                skipped.push((name, SkipReason::BatchCounter));
                continue;
            }
            None if name.contains('.') => {
                skipped.push((name, SkipReason::NoCanonicalName));
                continue;
            }
            None => {
                return Err(WeightError::InvalidName {
                    path: path.to_path_buf(),
                    name,
                    reason: "empty after removing the arg:/aux: prefix",
                })
            }
        };
        let kind = match view.dtype() {
            Dtype::F32 => FloatKind::F32,
            Dtype::F64 => FloatKind::F64,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
            other => {
                return Err(WeightError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        // The crate has checked that data().len() == elements × element size.
        let tensor = f32_tensor(path, &name, kind.decode(view.data()), view.shape())?;
        insert_unique(path, &mut tensors, &mut sources, canonical, &name, tensor)?;
    }
    Ok(Loaded {
        tensors,
        metadata,
        skipped,
    })
}

/// Writes tensors and a `__metadata__` map as a safetensors file, atomically (temporary file in
/// the same directory, flushed, renamed), so that an interrupted save never leaves a
/// half-written file under `path`. Tensors keep their dtype and are copied to the CPU.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightError> {
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        // candle cannot serialise its storage-less sub-byte dtypes (it would panic).
        if matches!(
            t.dtype(),
            DType::F6E2M3 | DType::F6E3M2 | DType::F4 | DType::F8E8M0
        ) {
            return Err(WeightError::Unrepresentable {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                reason: format!("dtype {:?} is not written", t.dtype()),
            });
        }
        cpu.push((name.as_str(), cpu_contiguous(path, name, t, t.dtype())?));
    }
    let info: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let bytes = ::safetensors::serialize(cpu.iter().map(|(n, t)| (*n, t)), info).map_err(|e| {
        WeightError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    atomic_write(path, |w| w.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{load, load_bytes, WeightFormat};
    use candle_core::Device;

    #[test]
    fn round_trip_with_metadata() {
        let dir = std::env::temp_dir().join(format!("r38-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        let dev = Device::Cpu;
        let mut tensors = BTreeMap::new();
        let w = Tensor::arange(0f32, 12., &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        tensors.insert("linear3_weight".to_string(), w.clone());
        tensors.insert(
            "bn7_gamma".to_string(),
            Tensor::new(&[0.5f32, 2.0], &dev)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        );
        tensors.insert("fc.t".to_string(), w.t().unwrap()); // non-contiguous, no canonical name
        let mut meta = BTreeMap::new();
        meta.insert("arch".to_string(), "a1".to_string());
        meta.insert("source".to_string(), "unit test".to_string());
        save_safetensors(&p, &tensors, &meta).unwrap();
        let f = load(&p).unwrap();
        assert_eq!(f.format, WeightFormat::Safetensors);
        assert_eq!(f.metadata, meta);
        assert_eq!(f.tensors.len(), 2);
        assert_eq!(
            f.get("linear3_weight").unwrap().to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        let g = f.get("bn7_gamma").unwrap();
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.to_vec1::<f32>().unwrap(), vec![0.5, 2.0]);
        assert_eq!(
            f.skipped,
            vec![("fc.t".to_string(), SkipReason::NoCanonicalName)]
        );

        // PyTorch-style keys are translated.
        let mut torch = BTreeMap::new();
        torch.insert("b4_3.conv_branch2a.weight".to_string(), w.clone());
        torch.insert(
            "b4_3.bn_branch2a.num_batches_tracked".to_string(),
            Tensor::new(&[3i64], &dev).unwrap(),
        );
        save_safetensors(&p, &torch, &BTreeMap::new()).unwrap();
        let f = load(&p).unwrap();
        assert!(f.metadata.is_empty());
        assert!(f.get("res4b3_branch2a_weight").is_some());
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.skipped[0].1, SkipReason::BatchCounter);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_headers() {
        let p = Path::new("h.safetensors");
        let file = |header: &str, data: &[u8]| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(header.as_bytes());
            b.extend(data);
            b
        };
        // Declared shape far larger than the data.
        let b = file(
            r#"{"x":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(matches!(
            load_bytes(p, &b),
            Err(WeightError::Safetensors { .. })
        ));
        // Offsets past the end.
        let b = file(
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8000000000]}}"#,
            &[0; 8],
        );
        assert!(matches!(
            load_bytes(p, &b),
            Err(WeightError::Safetensors { .. })
        ));
        // Integer dtype.
        let b = file(
            r#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(matches!(
            load_bytes(p, &b),
            Err(WeightError::UnsupportedDtype { .. })
        ));
        // Not JSON.
        let b = file("{not json at all", &[]);
        assert!(matches!(
            load_bytes(p, &b),
            Err(WeightError::Safetensors { .. })
        ));
        // Header length larger than the file is not detected as safetensors at all.
        let mut b = (1u64 << 40).to_le_bytes().to_vec();
        b.extend(b"{}");
        assert!(load_bytes(p, &b).is_err());
    }
}
