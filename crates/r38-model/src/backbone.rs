//! The backbone: stem `conv1a`, levels B2..B7 of pre-activation units, final `bn7` + ReLU.

use crate::config::{BackboneConfig, Downsample, PoolPadding};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use r38_ops::{BatchNormMode, Conv2d, ConvSpec, MaxPool, PreActivation, ResidualUnit, UnitSpec};

/// One level: an optional max-pool, then its residual units.
#[derive(Debug, Clone)]
pub struct Level {
    level: usize,
    pool: Option<MaxPool>,
    units: Vec<ResidualUnit>,
}

impl Level {
    /// The paper's level number (2..=7 for the released family).
    pub fn level(&self) -> usize {
        self.level
    }

    /// The max-pool in front of the first unit (Models A and A2).
    pub fn pool(&self) -> Option<&MaxPool> {
        self.pool.as_ref()
    }

    /// The residual units, first (projection) unit first.
    pub fn units(&self) -> &[ResidualUnit] {
        &self.units
    }

    /// The level's output and the pre-activation of its first unit.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.forward_owned(x.clone(), train)
    }

    /// [`Self::forward_t`] taking the input by value, so that every unit's input can be
    /// released as early as the unit allows ([`ResidualUnit::forward_owned`]).
    pub fn forward_owned(&self, x: Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let x = match &self.pool {
            Some(pool) => pool.forward(&x)?,
            None => x,
        };
        let (mut x, pre_activated) = self.units[0].forward_owned(x, train)?;
        for unit in &self.units[1..] {
            x = unit.forward_output(x, train)?;
        }
        Ok((x, pre_activated))
    }
}

/// Features after each level, pre-activated as the next unit sees them.
#[derive(Debug, Clone)]
pub struct LevelFeatures {
    /// `(level, features)`: for every level but the last, `ReLU(BN)` of the next level's first
    /// unit (after its pooling, if any); for the last level, `relu7`.
    pub levels: Vec<(usize, Tensor)>,
}

impl LevelFeatures {
    /// The features of one level, by its number.
    pub fn get(&self, level: usize) -> Option<&Tensor> {
        self.levels
            .iter()
            .find(|(l, _)| *l == level)
            .map(|(_, t)| t)
    }

    /// The final `relu7` features.
    pub fn last(&self) -> &Tensor {
        &self.levels.last().expect("at least one level").1
    }
}

/// A ResNet-38-family feature extractor.
#[derive(Debug, Clone)]
pub struct Backbone {
    config: BackboneConfig,
    stem: Conv2d,
    levels: Vec<Level>,
    bn7: PreActivation,
}

impl Backbone {
    /// Build the stem, the levels and `bn7` from `config`, reading the tensors through `vb`.
    pub fn new(config: &BackboneConfig, vb: &VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let eps = config.bn_eps;
        let stem_spec = ConvSpec::new(3, config.stem.channels, config.stem.kernel);
        let stem = Conv2d::new(stem_spec, vb, "conv1a")?;

        let mut dilation = 1;
        let mut in_channels = config.stem.channels;
        let mut levels = Vec::with_capacity(config.levels.len());
        for lc in &config.levels {
            let mut pool = None;
            let mut stride = 1;
            let mut first_dilation = dilation;
            match (lc.downsample, lc.dilate) {
                (Downsample::MaxPool, false) => {
                    let pad = match config.pool_padding {
                        PoolPadding::Same => 1,
                        PoolPadding::Caffe => 0,
                    };
                    pool = Some(MaxPool::downsample(pad));
                }
                (Downsample::MaxPool, true) => {
                    pool = Some(MaxPool::dilated(dilation));
                    dilation *= 2;
                    first_dilation = dilation;
                }
                (Downsample::StridedUnit, false) => stride = 2,
                // The first conv keeps the old dilation; everything after it doubles.
                (Downsample::StridedUnit, true) => dilation *= 2,
                (Downsample::None, _) => {}
            }
            let kernels = lc.unit.kernels().to_vec();
            let mut units = Vec::with_capacity(lc.units);
            for (i, name) in lc.unit_names().into_iter().enumerate() {
                let first = i == 0;
                let spec = UnitSpec {
                    name,
                    in_channels,
                    kernels: kernels.clone(),
                    widths: lc.widths.clone(),
                    stride: if first { stride } else { 1 },
                    first_dilation: if first { first_dilation } else { dilation },
                    dilation,
                    projection: first,
                    dropout: lc.dropout,
                    bn_eps: eps,
                };
                units.push(ResidualUnit::new(spec, vb)?);
                in_channels = lc.out_channels();
            }
            levels.push(Level {
                level: lc.level,
                pool,
                units,
            });
        }
        let bn7 = PreActivation::new(in_channels, eps, vb, "bn7")?;
        Ok(Self {
            config: config.clone(),
            stem,
            levels,
            bn7,
        })
    }

    /// The configuration the backbone was built from.
    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }

    /// The levels B2..B7 in order.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The stem convolution `conv1a`.
    pub fn stem(&self) -> &Conv2d {
        &self.stem
    }

    /// Frozen (global statistics, the fine-tuning default) or batch-statistics BN everywhere.
    pub fn set_bn_mode(&mut self, mode: BatchNormMode) {
        for level in &mut self.levels {
            for unit in &mut level.units {
                unit.set_bn_mode(mode);
            }
        }
        self.bn7.set_mode(mode);
    }

    /// The final `relu7` features, `(N, feature_channels, H / s, W / s)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        for level in &self.levels {
            x = level.forward_owned(x, train)?.0;
        }
        self.bn7.forward_t(&x, train)
    }

    /// `relu7(bn7(x))` on the last level's output: the features the heads read.
    pub fn final_pre_activation(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn7.forward_t(x, train)
    }

    /// Features after every level (see [`LevelFeatures`]).
    pub fn forward_levels(&self, x: &Tensor, train: bool) -> Result<LevelFeatures> {
        let mut x = self.stem.forward(x)?;
        let mut features = Vec::with_capacity(self.levels.len());
        for (i, level) in self.levels.iter().enumerate() {
            let (out, pre_activated) = level.forward_t(&x, train)?;
            if i > 0 {
                features.push((self.levels[i - 1].level, pre_activated));
            }
            x = out;
        }
        let last = self.levels.last().expect("validated: at least one level");
        features.push((last.level, self.bn7.forward_t(&x, train)?));
        Ok(LevelFeatures { levels: features })
    }
}

impl candle_nn::ModuleT for Backbone {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Backbone::forward_t(self, x, train)
    }
}
