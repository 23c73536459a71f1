//! Training checkpoints: model, optimizer state, step, schedule and RNG state, written so that
//! an interrupted save never damages the latest good checkpoint.
//!
//! Layout under `<dir>`:
//!
//! * `step-00000120/` with `model.safetensors` (every variable, BN statistics included),
//!   `optimizer.safetensors` ([`Sgd::save_state`]) and `state.json` ([`TrainState`]);
//! * `latest` and `best`: one line naming a step directory.
//!
//! A checkpoint is written into `.step-00000120.partial/`, its files synced, then renamed
//! into place; only then is `latest` replaced (write to a temporary file, sync, rename). A
//! kill at any moment leaves `latest` naming a complete directory, except during the first
//! save, between its rename and its `latest`: a resume then takes that one directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use candle_core::Tensor;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::optimizer::{Sgd, SgdConfig};
use crate::schedule::LrSchedule;

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer updates done.
    pub step: usize,
    /// The run's seed; with `step` it fixes every later random draw.
    pub seed: u64,
    /// State of the run's step generator (`Rng::derive(seed, "step", step, 0)`), for checks.
    pub rng_state: u64,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// Optimizer settings.
    pub sgd: SgdConfig,
    /// Micro-batches per update.
    pub accumulate: usize,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Best validation metric so far and its step.
    pub best: Option<(f64, usize)>,
    /// Free-form description of the run (model config, recipe flags).
    #[serde(default)]
    pub run: serde_json::Value,
}

/// Name of the step directory.
pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// Replaces `path` with `contents` through a synced temporary file (created exclusively under
/// an unpredictable name, see [`r38_data::output`]) and a rename.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(r38_data::output::write_durably(path, contents)?)
}

/// All variables of `varmap` by name, on the CPU.
pub fn varmap_tensors(varmap: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    data.iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.as_tensor().to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect()
}

/// Sets every variable of `varmap` from `tensors`; missing or misshapen tensors are errors.
pub fn restore_varmap(varmap: &VarMap, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .with_context(|| format!("checkpoint lacks {name}"))?;
        if t.dims() != var.dims() {
            bail!("{name}: checkpoint {:?}, model {:?}", t.dims(), var.dims());
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// A checkpoint directory.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints under `dir`, keeping the `keep` newest (at least 1) plus the best.
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pointer(&self, name: &str) -> Option<PathBuf> {
        self.read_pointer(name).ok()
    }

    /// The step directory the pointer file `name` names, or why it names none. Only a plain
    /// `step-NNNNNNNN` name inside this folder is followed, never a path elsewhere.
    fn read_pointer(&self, name: &str) -> std::result::Result<PathBuf, String> {
        let file = self.dir.join(name);
        let text = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let target = std::str::from_utf8(&text)
            .ok()
            .map(str::trim)
            .filter(|t| {
                t.strip_prefix("step-")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .ok_or_else(|| {
                format!(
                    "{}: does not name a step directory of this run",
                    file.display()
                )
            })?;
        let p = self.dir.join(target);
        if p.join("state.json").is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{}: names {}, which holds no complete checkpoint",
                file.display(),
                p.display()
            ))
        }
    }

    /// The checkpoint a resumed run continues from, `None` when the folder holds no complete
    /// checkpoint yet. Without `latest`, a single complete checkpoint is the one a first save
    /// was killed after renaming into place, before writing `latest`. An error, never a fresh
    /// start over the old run, when `latest` is unreadable, names no complete checkpoint of
    /// this folder, or is missing beside several complete checkpoints.
    pub fn resume_point(&self) -> Result<Option<PathBuf>> {
        if self.dir.join("latest").exists() {
            return self
                .read_pointer("latest")
                .map(Some)
                .map_err(|why| crate::error::train_error!("cannot resume: {why}"));
        }
        let complete: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("step-")
                    && e.path().join("state.json").is_file()
            })
            .map(|e| e.path())
            .collect();
        if let [only] = complete.as_slice() {
            return Ok(Some(only.clone()));
        }
        if !complete.is_empty() {
            bail!(
                "cannot resume: {} holds checkpoints but no `latest`; restore it (one line naming \
                 a step directory) or pass --overwrite to start afresh",
                self.dir.display()
            );
        }
        Ok(None)
    }

    /// The latest complete checkpoint, if any.
    pub fn latest(&self) -> Option<PathBuf> {
        self.pointer("latest")
    }

    /// The best checkpoint, if any.
    pub fn best(&self) -> Option<PathBuf> {
        self.pointer("best")
    }

    /// Writes a checkpoint and points `latest` (and `best` when `is_best`) at it.
    pub fn save(
        &self,
        varmap: &VarMap,
        sgd: &Sgd,
        state: &TrainState,
        metadata: &BTreeMap<String, String>,
        is_best: bool,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let name = step_dir_name(state.step);
        // A fresh folder of our own (exclusive create, unpredictable name): nothing planted in
        // the run folder is written through. Removed when dropped, unless kept below.
        let prefix = format!(".{name}.");
        let mut staging = tempfile::Builder::new();
        staging.prefix(&prefix).suffix(".partial");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            staging.permissions(std::fs::Permissions::from_mode(0o777));
        }
        let staging = staging.tempdir_in(&self.dir).with_context(|| {
            format!(
                "cannot create a checkpoint folder in {}",
                self.dir.display()
            )
        })?;
        let tmp = staging.path().to_path_buf();
        let written = (|| -> Result<()> {
            let model = tmp.join("model.safetensors");
            r38_model::weights::save_safetensors(&model, &varmap_tensors(varmap)?, metadata)?;
            let opt = tmp.join("optimizer.safetensors");
            sgd.save_state(&opt)
                .with_context(|| format!("cannot write {}", opt.display()))?;
            let st = tmp.join("state.json");
            std::fs::write(&st, serde_json::to_vec_pretty(state)?)
                .with_context(|| format!("cannot write {}", st.display()))?;
            for f in [&model, &opt, &st] {
                sync_file(f)?;
            }
            sync_dir(&tmp);
            Ok(())
        })();
        // A failed save (a full disk) leaves no half checkpoint taking up space: dropping
        // `staging` removes it.
        written?;
        let tmp = staging.keep();
        let final_dir = self.dir.join(&name);
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        sync_dir(&self.dir);
        write_file_atomically(&self.dir.join("latest"), format!("{name}\n").as_bytes())?;
        if is_best {
            write_file_atomically(&self.dir.join("best"), format!("{name}\n").as_bytes())?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Removes step directories beyond the `keep` newest, never `latest` or `best`, and what
    /// killed saves left: `.step-N.partial` folders and pointer temporaries.
    fn prune(&self) -> Result<()> {
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".step-") && n.ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            } else if (n.starts_with(".latest.") || n.starts_with(".best."))
                && (n.ends_with(".tmp") || n.ends_with(".partial"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let protect: Vec<PathBuf> = [self.latest(), self.best()].into_iter().flatten().collect();
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            })
            .collect();
        steps.sort();
        let n = steps.len();
        for p in steps.into_iter().take(n.saturating_sub(self.keep)) {
            if !protect.contains(&p) {
                std::fs::remove_dir_all(&p)?;
            }
        }
        Ok(())
    }

    /// Reads a checkpoint's state.
    pub fn read_state(path: &Path) -> Result<TrainState> {
        let bytes = std::fs::read(path.join("state.json"))
            .with_context(|| format!("cannot read {}/state.json", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Loads a checkpoint into `varmap` and `sgd`; returns its state.
    pub fn restore(path: &Path, varmap: &VarMap, sgd: &mut Sgd) -> Result<TrainState> {
        let state = Self::read_state(path)?;
        let model = candle_core::safetensors::load(
            path.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .with_context(|| format!("cannot read {}/model.safetensors", path.display()))?;
        restore_varmap(varmap, &model.into_iter().collect())?;
        sgd.load_state(path.join("optimizer.safetensors"))?;
        if sgd.num_update() != state.step {
            bail!(
                "{}: optimizer has {} updates, state says step {}",
                path.display(),
                sgd.num_update(),
                state.step
            );
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::MultiplierPolicy;
    use candle_core::{DType, Device, Var};

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            seed: 1,
            rng_state: 0,
            schedule: LrSchedule::Fixed { base: 0.1 },
            sgd: SgdConfig::segmentation(1),
            accumulate: 1,
            batch_size: 1,
            best: None,
            run: serde_json::Value::Null,
        }
    }

    #[test]
    fn an_interrupted_save_leaves_latest_intact() {
        let dir = std::env::temp_dir().join(format!("r38-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let varmap = VarMap::new();
        varmap.data().lock().unwrap().insert(
            "conv1a_weight".into(),
            Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap(),
        );
        let sgd = Sgd::new(
            &varmap,
            SgdConfig::segmentation(1),
            &MultiplierPolicy::alex(),
        );
        let ck = Checkpoints::new(&dir, 2);
        assert!(ck.latest().is_none());
        let advanced = |n: usize| {
            let mut s = sgd.clone();
            let none = Tensor::new(0f32, &Device::Cpu).unwrap().backward().unwrap();
            for _ in 0..n {
                s.step_lr(&none, 0.1).unwrap();
            }
            s
        };
        let sgd1 = advanced(1);
        let first = ck
            .save(&varmap, &sgd1, &state(1), &BTreeMap::new(), true)
            .unwrap();
        // A save killed half-way: a partial directory and a temporary pointer file.
        std::fs::create_dir_all(dir.join(".step-00000002.partial")).unwrap();
        std::fs::write(
            dir.join(".step-00000002.partial/model.safetensors"),
            b"garbage",
        )
        .unwrap();
        std::fs::write(dir.join(".latest.123.tmp"), b"step-00000002").unwrap();
        assert_eq!(ck.latest().unwrap(), first);
        let mut fresh = sgd.clone();
        assert_eq!(
            Checkpoints::restore(&first, &varmap, &mut fresh)
                .unwrap()
                .step,
            1
        );
        // The next save replaces the partial directory; old steps are pruned, best kept.
        for step in 2..=4 {
            let s = advanced(step);
            ck.save(&varmap, &s, &state(step), &BTreeMap::new(), false)
                .unwrap();
        }
        assert!(ck.latest().unwrap().ends_with("step-00000004"));
        assert_eq!(ck.best().unwrap(), first);
        assert!(first.exists());
        assert!(!dir.join("step-00000002").exists());
        assert!(!dir.join(".step-00000002.partial").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_first_save_killed_before_latest_is_resumed_from() {
        let dir = std::env::temp_dir().join(format!("r38-ckpt-first-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ck = Checkpoints::new(&dir, 2);
        let complete = |name: &str| {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("state.json"), b"{}").unwrap();
        };
        // Renamed into place, killed before `latest` was written.
        complete("step-00000003");
        assert_eq!(ck.resume_point().unwrap(), Some(dir.join("step-00000003")));
        // Several complete checkpoints and no `latest` cannot come from a kill: refused.
        complete("step-00000006");
        let err = ck.resume_point().unwrap_err().to_string();
        assert!(err.contains("no `latest`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
