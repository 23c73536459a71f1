//! Typed architecture configuration, mirroring the authors' generic `rna_feat` definition:
//! a stem, then levels 2..7, each a stack of pre-activation residual units.

use serde::{Deserialize, Serialize};

/// The residual unit shape of a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Two 3x3 convolutions ("b33").
    Basic,
    /// 1x1, 3x3, 1x1 convolutions ("b131").
    Bottleneck,
}

impl UnitKind {
    /// Kernel size of each convolution of the residual branch.
    pub fn kernels(self) -> &'static [usize] {
        match self {
            UnitKind::Basic => &[3, 3],
            UnitKind::Bottleneck => &[1, 3, 1],
        }
    }
}

/// How a level reduces the resolution of its input by 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downsample {
    /// 3x3/2 max-pooling before the first unit (Model A; Model A2's levels 2 and 3).
    MaxPool,
    /// Stride 2 on the first conv of the first unit and on its projection shortcut (Model A1).
    StridedUnit,
    /// The level keeps its input resolution.
    None,
}

/// Padding of Model A's 3x3/2 max-pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolPadding {
    /// Pad 1 (padded cells never win), floor rounding: the authors' training-time default.
    #[default]
    Same,
    /// Pad 0, floor rounding: `--pool-top-infer-style caffe`, used for the published Model A numbers.
    Caffe,
}

/// The stem: one plain convolution on the normalised image, no BN or ReLU after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StemConfig {
    /// Output channels of `conv1a` (64 in ResNet-38).
    pub channels: usize,
    /// Kernel size of `conv1a` (3 in ResNet-38).
    pub kernel: usize,
}

/// One level (B2..B7) of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelConfig {
    /// The paper's level number, 2..=7; names the units (`4a`, `4b1`, ...).
    pub level: usize,
    /// Basic (3-3) or bottleneck (1-3-1) units.
    pub unit: UnitKind,
    /// Number of residual units; the first one always has a projection shortcut.
    pub units: usize,
    /// Output channels of each convolution of the residual branch.
    pub widths: Vec<usize>,
    /// How the level reduces the resolution of its input.
    pub downsample: Downsample,
    /// Trade this level's down-sampling for doubled dilation from here on (output stride < 32).
    #[serde(default)]
    pub dilate: bool,
    /// Dropout before the last conv of each unit, active only in training.
    #[serde(default)]
    pub dropout: f32,
}

impl LevelConfig {
    /// Channels of the level's output (its last width).
    pub fn out_channels(&self) -> usize {
        *self.widths.last().expect("validated: a level has widths")
    }

    /// Unit ids in the checkpoint naming: `4a`, `4b1`, `4b2`, ...
    pub fn unit_names(&self) -> Vec<String> {
        (0..self.units)
            .map(|i| match i {
                0 => format!("{}a", self.level),
                i => format!("{}b{}", self.level, i),
            })
            .collect()
    }
}

/// Everything needed to build a backbone: stem, levels and BN epsilon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneConfig {
    /// The stem convolution.
    pub stem: StemConfig,
    /// Levels in order, B2 first.
    pub levels: Vec<LevelConfig>,
    /// Padding of the max-pools (Models A and A2).
    #[serde(default)]
    pub pool_padding: PoolPadding,
    /// BN epsilon (the authors': 1.001e-5).
    #[serde(default = "default_bn_eps")]
    pub bn_eps: f64,
}

/// The authors' BN epsilon (chosen "for cudnn v5 compatibility").
pub const BN_EPS: f64 = 1.001e-5;

fn default_bn_eps() -> f64 {
    BN_EPS
}

/// A named architecture of the released family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Max-pool down-sampling (`rna-a`).
    A,
    /// Strided first units (`rna-a1`); every released segmentation model.
    A1,
    /// Pools after the stem and B2, strided units in B4..B6 (Places / Cityscapes test server).
    A2,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Ok(Arch::A),
            "a1" => Ok(Arch::A1),
            "a2" => Ok(Arch::A2),
            other => Err(format!(
                "unknown architecture `{other}` (expected a, a1 or a2)"
            )),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::A => "a",
            Arch::A1 => "a1",
            Arch::A2 => "a2",
        })
    }
}

/// Bounds on a configuration, checked by [`BackboneConfig::validate`] before anything is
/// allocated. Each is far above the released family (shown in brackets) and low enough that
/// the names and shapes a configuration implies can be listed without running out of memory;
/// a file beyond them is refused, not built. To raise one, change it here.
pub mod limits {
    /// Channels of any convolution (64..4096).
    pub const MAX_CHANNELS: usize = 65_536;
    /// Residual units in one level (1..6).
    pub const MAX_UNITS: usize = 256;
    /// Levels (6).
    pub const MAX_LEVELS: usize = 16;
    /// Level number (2..7); it names the tensors (`res4b2_...`).
    pub const MAX_LEVEL_NUMBER: usize = 99;
    /// Kernel size of the stem and of the head (3).
    pub const MAX_KERNEL: usize = 15;
    /// Smallest BN epsilon (1.001e-5): below it, `1 / sqrt(var + eps)` of a dead channel
    /// overflows f32 arithmetic.
    pub const MIN_BN_EPS: f64 = 1e-10;
    /// Largest BN epsilon: beyond it BN no longer normalises.
    pub const MAX_BN_EPS: f64 = 0.1;
}

/// A configuration the network cannot be built from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid backbone configuration: {0}")]
pub struct ConfigError(pub String);

impl BackboneConfig {
    /// A preset of the released family at the given output stride.
    pub fn preset(arch: Arch, output_stride: usize) -> Result<Self, ConfigError> {
        let allowed: &[usize] = match arch {
            Arch::A => &[16, 32],
            Arch::A1 | Arch::A2 => &[8, 16, 32],
        };
        if !allowed.contains(&output_stride) {
            return Err(ConfigError(format!(
                "Model {arch} has no output-stride-{output_stride} variant (allowed: {allowed:?})"
            )));
        }
        use Downsample::*;
        let down: [Downsample; 6] = match arch {
            Arch::A => [MaxPool, MaxPool, MaxPool, MaxPool, MaxPool, None],
            Arch::A1 => [
                StridedUnit,
                StridedUnit,
                StridedUnit,
                StridedUnit,
                StridedUnit,
                None,
            ],
            Arch::A2 => [
                MaxPool,
                MaxPool,
                StridedUnit,
                StridedUnit,
                StridedUnit,
                None,
            ],
        };
        let mut cfg = Self::with_downsampling(down);
        cfg.set_output_stride(output_stride)?;
        Ok(cfg)
    }

    /// Model A (max-pool down-sampling) at output stride 16 or 32.
    pub fn model_a(output_stride: usize) -> Result<Self, ConfigError> {
        Self::preset(Arch::A, output_stride)
    }
    /// Model A1 (strided first units) at output stride 8, 16 or 32.
    pub fn model_a1(output_stride: usize) -> Result<Self, ConfigError> {
        Self::preset(Arch::A1, output_stride)
    }
    /// Model A2 (pools, then strided units) at output stride 8, 16 or 32.
    pub fn model_a2(output_stride: usize) -> Result<Self, ConfigError> {
        Self::preset(Arch::A2, output_stride)
    }

    /// The ResNet-38 widths and unit counts with the given down-sampling of levels 2..7.
    fn with_downsampling(down: [Downsample; 6]) -> Self {
        let spec: [(UnitKind, usize, &[usize]); 6] = [
            (UnitKind::Basic, 3, &[128, 128]),
            (UnitKind::Basic, 3, &[256, 256]),
            (UnitKind::Basic, 6, &[512, 512]),
            (UnitKind::Basic, 3, &[512, 1024]),
            (UnitKind::Bottleneck, 1, &[512, 1024, 2048]),
            (UnitKind::Bottleneck, 1, &[1024, 2048, 4096]),
        ];
        let levels = spec
            .iter()
            .zip(down)
            .enumerate()
            .map(|(i, (&(unit, units, widths), downsample))| LevelConfig {
                level: i + 2,
                unit,
                units,
                widths: widths.to_vec(),
                downsample,
                dilate: false,
                dropout: 0.0,
            })
            .collect();
        BackboneConfig {
            stem: StemConfig {
                channels: 64,
                kernel: 3,
            },
            levels,
            pool_padding: PoolPadding::Same,
            bn_eps: BN_EPS,
        }
    }

    /// Trade the last down-sampling levels for dilation until the output stride is reached.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<(), ConfigError> {
        for level in &mut self.levels {
            level.dilate = false;
        }
        let mut stride = self.output_stride();
        let mut downsampling: Vec<&mut LevelConfig> = self
            .levels
            .iter_mut()
            .filter(|l| l.downsample != Downsample::None)
            .collect();
        while stride > output_stride {
            match downsampling.pop() {
                Some(level) => level.dilate = true,
                None => break,
            }
            stride /= 2;
        }
        if stride != output_stride {
            let max = 1usize
                << self
                    .levels
                    .iter()
                    .filter(|l| l.downsample != Downsample::None)
                    .count();
            return Err(ConfigError(format!(
                "output stride {output_stride} is not reachable: this network's output strides are the powers of 2 up to {max}"
            )));
        }
        Ok(())
    }

    /// Overall down-sampling factor of the final features.
    pub fn output_stride(&self) -> usize {
        self.levels
            .iter()
            .filter(|l| l.downsample != Downsample::None && !l.dilate)
            .map(|_| 2)
            .product()
    }

    /// Dropout rates of levels 6 and 7, as the segmentation model uses them (0.3, 0.5).
    pub fn with_dropout(mut self, rates: &[(usize, f32)]) -> Self {
        for &(level, p) in rates {
            if let Some(l) = self.levels.iter_mut().find(|l| l.level == level) {
                l.dropout = p;
            }
        }
        self
    }

    /// The same architecture with every channel count divided by `divisor` (for small fixtures).
    pub fn narrowed(mut self, divisor: usize) -> Self {
        self.stem.channels = (self.stem.channels / divisor).max(1);
        for level in &mut self.levels {
            for w in &mut level.widths {
                *w = (*w / divisor).max(1);
            }
        }
        self
    }

    /// Channels of the final (bn7) features.
    pub fn feature_channels(&self) -> usize {
        self.levels
            .last()
            .map(LevelConfig::out_channels)
            .unwrap_or(self.stem.channels)
    }

    /// Check that the network can be built: widths match unit kinds, levels increase, etc.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        let err = |m: String| Err(ConfigError(m));
        let s = &self.stem;
        if s.channels == 0 || s.channels > MAX_CHANNELS {
            return err(format!(
                "stem channels {} not in 1..={MAX_CHANNELS}",
                s.channels
            ));
        }
        if s.kernel.is_multiple_of(2) || s.kernel > MAX_KERNEL {
            return err(format!(
                "stem kernel {} is not odd and at most {MAX_KERNEL}",
                s.kernel
            ));
        }
        if self.levels.is_empty() || self.levels.len() > MAX_LEVELS {
            return err(format!(
                "{} levels, expected 1..={MAX_LEVELS}",
                self.levels.len()
            ));
        }
        if !(MIN_BN_EPS..=MAX_BN_EPS).contains(&self.bn_eps) {
            return err(format!(
                "bn_eps {} not in [{MIN_BN_EPS:e}, {MAX_BN_EPS}]",
                self.bn_eps
            ));
        }
        for (i, l) in self.levels.iter().enumerate() {
            if l.level > MAX_LEVEL_NUMBER {
                return err(format!(
                    "level number {} exceeds {MAX_LEVEL_NUMBER}",
                    l.level
                ));
            }
            if i > 0 && l.level <= self.levels[i - 1].level {
                return err("level numbers must increase".into());
            }
            if l.units == 0 || l.units > MAX_UNITS {
                return err(format!(
                    "level {} has {} units, expected 1..={MAX_UNITS}",
                    l.level, l.units
                ));
            }
            if l.widths.len() != l.unit.kernels().len() || l.widths.contains(&0) {
                return err(format!(
                    "level {}: a {:?} unit needs {} non-zero widths, got {:?}",
                    l.level,
                    l.unit,
                    l.unit.kernels().len(),
                    l.widths
                ));
            }
            if let Some(w) = l.widths.iter().find(|&&w| w > MAX_CHANNELS) {
                return err(format!(
                    "level {}: width {w} exceeds {MAX_CHANNELS}",
                    l.level
                ));
            }
            if !(0.0..1.0).contains(&l.dropout) {
                return err(format!(
                    "level {}: dropout {} is not in [0, 1)",
                    l.level, l.dropout
                ));
            }
            if l.dilate && l.downsample == Downsample::None {
                return err(format!(
                    "level {} cannot trade a stride it does not have",
                    l.level
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_reach_their_output_stride() {
        for (arch, strides) in [
            (Arch::A, &[16, 32][..]),
            (Arch::A1, &[8, 16, 32][..]),
            (Arch::A2, &[8, 16, 32][..]),
        ] {
            for &s in strides {
                let cfg = BackboneConfig::preset(arch, s).unwrap();
                cfg.validate().unwrap();
                assert_eq!(cfg.output_stride(), s, "{arch} s{s}");
            }
        }
        assert!(BackboneConfig::preset(Arch::A, 8).is_err());
    }

    #[test]
    fn a1_s8_dilates_levels_5_and_6() {
        let cfg = BackboneConfig::model_a1(8).unwrap();
        let dilated: Vec<usize> = cfg
            .levels
            .iter()
            .filter(|l| l.dilate)
            .map(|l| l.level)
            .collect();
        assert_eq!(dilated, vec![5, 6]);
    }

    #[test]
    fn limits_are_checked_before_building() {
        let base = BackboneConfig::model_a1(8).unwrap();
        type Mutation = fn(&mut BackboneConfig);
        let cases: [(&str, Mutation); 8] = [
            ("stem channels", |c| c.stem.channels = 1 << 62),
            ("stem kernel", |c| c.stem.kernel = 0),
            ("units", |c| c.levels[0].units = 1_000_000_000),
            ("width", |c| c.levels[1].widths[0] = 1 << 40),
            ("bn_eps", |c| c.bn_eps = 0.0),
            ("bn_eps", |c| c.bn_eps = 1e308),
            ("bn_eps", |c| c.bn_eps = f64::NAN),
            ("levels", |c| {
                let l = c.levels[0].clone();
                c.levels = (0..17)
                    .map(|i| LevelConfig {
                        level: i,
                        ..l.clone()
                    })
                    .collect();
            }),
        ];
        for (what, mutate) in cases {
            let mut c = base.clone();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn json_round_trip() {
        let cfg = BackboneConfig::model_a2(8)
            .unwrap()
            .with_dropout(&[(6, 0.3), (7, 0.5)]);
        let json = serde_json::to_string(&cfg).unwrap();
        let back: BackboneConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
    }
}
